//! Measurement 3, memory: many processes reading the same asset.
//!
//! Each reader is its own process. Pss (proportional set size) splits
//! every shared page among the processes that map it, so the sum over all
//! readers and the daemon counts a shared page once. Pages that nobody maps
//! (a file sitting in tmpfs) appear in no Pss, so they are added by hand.

use crate::data::{self, size_label};
use crate::harness::Bench;
use crate::procfs;
use crate::report::{col, num, text, Kind, Section, Target};
use crate::worker::{self, Worker};
use crate::workload::{Method, Spec};
use std::io;

/// Most total memory, as a multiple of the asset, that meets the target.
const TARGET_RATIO: f64 = 1.1;

/// How the daemon's memfds appear in /proc/PID/smaps.
const MEMFD_NEEDLE: &str = "memfd:memseal";

/// What one group of readers costs.
struct Footprint {
    clients_pss_kib: u64,
    asset_pss_kib: u64,
    daemon_pss_kib: u64,
    unmapped_kib: u64,
}

impl Footprint {
    fn total_kib(&self) -> u64 {
        self.clients_pss_kib + self.daemon_pss_kib + self.unmapped_kib
    }
}

/// Run the memory table.
pub fn run(bench: &Bench) -> io::Result<(Section, Vec<Target>)> {
    let effort = &bench.effort;
    let size = effort.memory_size;
    let processes = effort.memory_processes;
    let name = "bench/memory";
    let bytes = data::content(size + 1);
    let bytes = &bytes[..size];
    let mut client =
        memseal::Client::connect_to(bench.daemon.socket()).map_err(io::Error::other)?;
    // Streamed, so the asset lives in a memfd of the daemon's own making.
    client
        .publish_bytes(name, bytes)
        .map_err(io::Error::other)?;
    let file = bench.dir.path().join("memory.bin");
    data::write_file(&file, bytes)?;

    let memseal = readers(
        bench,
        &Spec {
            method: Method::Memseal,
            path: bench.daemon.socket().to_owned(),
            key: name.to_owned(),
            size,
        },
        processes,
        Counted::Daemon,
    )?;
    let read = readers(
        bench,
        &Spec {
            method: Method::Read,
            path: file.clone(),
            key: String::new(),
            size,
        },
        processes,
        Counted::UnmappedFile(size as u64 / 1024),
    )?;
    std::fs::remove_file(&file)?;
    client.remove(name, None).map_err(io::Error::other)?;

    let mut section = Section::new(
        &format!(
            "Memory of {processes} readers of one {} asset",
            size_label(size)
        ),
        "Each reader process gets the whole asset and reads one byte of every page, \
         then holds it while Pss is read from /proc/PID/smaps_rollup. memseal: each \
         fetches the asset from the daemon and maps it. read(): each reads the file \
         from tmpfs into its own buffer; the file's own pages in tmpfs are mapped by \
         nobody, so they are added as \"unmapped\". \"asset mappings\" is the Pss of \
         the memfd mappings alone; the rest of the readers' Pss is their own \
         program (stack, heap, libraries).",
        vec![
            col("approach", Kind::Text),
            col("processes", Kind::Number),
            col("readers' Pss MiB", Kind::Number),
            col("of which asset mappings MiB", Kind::Number),
            col("daemon Pss MiB", Kind::Number),
            col("unmapped copies MiB", Kind::Number),
            col("total MiB", Kind::Number),
            col("total / asset size", Kind::Ratio),
        ],
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    let asset_kib = size as f64 / 1024.0;
    for (label, f) in [("memseal", &memseal), ("read() into a buffer", &read)] {
        section.push(vec![
            text(label),
            serde_json::Value::from(processes),
            num(mib(f.clients_pss_kib)),
            num(mib(f.asset_pss_kib)),
            num(mib(f.daemon_pss_kib)),
            num(mib(f.unmapped_kib)),
            num(mib(f.total_kib())),
            num(f.total_kib() as f64 / asset_kib),
        ]);
    }
    let r = memseal.total_kib() as f64 / asset_kib;
    let target = Target {
        what: format!(
            "memory of {processes} readers of {}, memseal",
            size_label(size)
        ),
        goal: format!("<= {TARGET_RATIO}x the asset"),
        measured: format!(
            "{r:.3}x ({:.1} MiB; read() approach {:.2}x)",
            mib(memseal.total_kib()),
            read.total_kib() as f64 / asset_kib
        ),
        met: r <= TARGET_RATIO,
    };
    Ok((section, vec![target]))
}

/// What counts beside the readers' own Pss.
enum Counted {
    /// The daemon's Pss (it holds the memfd the readers map).
    Daemon,
    /// A file of this many KiB in tmpfs, which no reader maps.
    UnmappedFile(u64),
}

/// Start `processes` readers of `spec`, measure them while they hold the
/// bytes, and let them go.
fn readers(bench: &Bench, spec: &Spec, processes: usize, also: Counted) -> io::Result<Footprint> {
    let args = worker::hold_args(spec);
    let workers = (0..processes)
        .map(|_| Worker::start(&args))
        .collect::<io::Result<Vec<_>>>()?;
    let mut clients_pss_kib = 0;
    let mut asset_pss_kib = 0;
    for w in &workers {
        clients_pss_kib += procfs::pss_kib(w.pid())?;
        asset_pss_kib += procfs::mapping_pss_kib(w.pid(), MEMFD_NEEDLE)?;
    }
    let (daemon_pss_kib, unmapped_kib) = match also {
        Counted::Daemon => (procfs::pss_kib(bench.daemon.pid())?, 0),
        Counted::UnmappedFile(kib) => (0, kib),
    };
    for w in workers {
        w.finish()?;
    }
    Ok(Footprint {
        clients_pss_kib,
        asset_pss_kib,
        daemon_pss_kib,
        unmapped_kib,
    })
}
