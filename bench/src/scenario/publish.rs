//! Measurement 4, publish throughput: the three ways bytes get into the
//! daemon, beside `cp` into tmpfs and the BLAKE3 hash rate of the same bytes.
//!
//! Every publish ends with the daemon hashing the asset, so no publish can
//! beat hashing alone: that is the floor for adoption, which copies
//! nothing. A file publish copies the file kernel-side into a new memfd,
//! the same work `cp` into tmpfs does, plus the hash.

use crate::data::{self, size_label};
use crate::harness::Bench;
use crate::report::{col, num, text, Kind, Section, Target};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

/// Sizes of the publish rows.
const SIZES: [usize; 2] = [64 << 20, 1 << 30];

/// A file publish must reach this share of `cp`'s throughput.
const FILE_VS_CP: f64 = 1.2;

/// A streamed publish must reach this share of `cp`'s throughput.
const STREAM_VS_CP: f64 = 1.0;

/// After the largest upload, the daemon's RSS must be back within this
/// many KiB of what it was before the table started.
const RSS_SLACK_KIB: u64 = 1024;

/// An adoption may take at most this multiple of hashing alone.
const ADOPT_VS_HASH: f64 = 1.2;

/// Run the publish table, and the table of where a publish's time goes.
pub fn run(bench: &Bench) -> io::Result<(Vec<Section>, Vec<Target>)> {
    let mut section = Section::new(
        "Publish throughput",
        "Median time of one publish, client call to reply, and the resulting rate. \
         stream: publish_bytes sends the bytes over the socket; the daemon splices them \
         into a new memfd and hashes them a step behind. file: publish_file sends the \
         descriptor of a file in tmpfs; the daemon copies it kernel-side (sendfile) into \
         a new memfd and hashes it a step behind. adopt: publish_sealed sends a memfd the publisher already \
         sealed; the daemon hashes it in place and copies nothing. cp: `cp` of the same \
         file to another file in tmpfs, process start included. floors: the copies of a \
         stream or a file publish alone, without daemon, protocol or hash: send on a \
         socket pair with splice into a memfd on the other end, and sendfile into a memfd, on one \
         thread and split over two; and the pages of a memfd alone (fallocate, nothing \
         copied). hash: BLAKE3 of the \
         same bytes already in memory, on one thread and on all CPUs. No pinning.",
        vec![
            col("size", Kind::Text),
            col("method", Kind::Text),
            col("p50 ms", Kind::Number),
            col("GB/s", Kind::Number),
            col("rate / cp rate", Kind::Ratio),
            col("time / hash time (all CPUs)", Kind::Ratio),
        ],
    );
    let mut stages_section = Section::new(
        "Where a publish's time goes",
        "Medians over the same publishes as the table above, from the line in which the \
         daemon says where each fill of a memfd spent its time. total: from the memfd's \
         creation to its seal. copying: in the system calls that moved the bytes into the \
         memfd (splice from the socket's pipe for a stream, sendfile for a file). hashing: \
         BLAKE3 of the memfd, on the thread that follows the writer a 4 MiB step behind, \
         overlapping the copy. hash tail: after the last byte, waiting for the hash to \
         catch up. waiting: the rest, mostly the stream's bytes not there yet (the \
         client copying them into the socket).",
        vec![
            col("size", Kind::Text),
            col("method", Kind::Text),
            col("total ms", Kind::Number),
            col("copying ms", Kind::Number),
            col("hashing ms", Kind::Number),
            col("hash tail ms", Kind::Number),
            col("waiting ms", Kind::Number),
        ],
    );
    let mut targets = Vec::new();
    let sizes: &[usize] = if bench.options.quick {
        &SIZES[..1]
    } else {
        &SIZES
    };
    let runs = bench.effort.publish_runs;
    let mut client =
        memseal::Client::connect_to(bench.daemon.socket()).map_err(io::Error::other)?;
    let idle_kib = crate::procfs::rss_kib(bench.daemon.pid())?;
    for &size in sizes {
        let label = size_label(size);
        eprintln!("  publishing {label}");
        // Content of its own, so it is not deduplicated against the fetch assets.
        let mut bytes = data::content(size + 2);
        bytes.truncate(size);
        let source = bench.dir.path().join("publish-source.bin");
        let copy = bench.dir.path().join("publish-copy.bin");
        data::write_file(&source, &bytes)?;
        let memfd = data::sealed_memfd("bench-adopt", &bytes)?;

        // Every way in, once per round, for as many rounds as runs: the
        // host's memory behaves differently from one second to the next
        // (fresh pages are slow to come by on some virtual machines), and
        // interleaving gives each way the same share of it.
        let mut rounds: [Vec<Duration>; 8] = Default::default();
        let mut stream_log = String::new();
        let mut file_log = String::new();
        for _ in 0..runs.max(1) {
            let logged = bench.daemon.logs().len();
            rounds[0].push(timed(|| {
                client
                    .publish_bytes("publish/stream", &bytes)
                    .map(drop)
                    .map_err(io::Error::other)
            })?);
            let log = bench.daemon.logs();
            stream_log.push_str(&log[logged..]);
            let logged = log.len();
            rounds[1].push(timed(|| {
                client
                    .publish_file("publish/file", &File::open(&source)?)
                    .map(drop)
                    .map_err(io::Error::other)
            })?);
            file_log.push_str(&bench.daemon.logs()[logged..]);
            rounds[2].push(timed(|| {
                client
                    .publish_sealed("publish/adopt", memfd.as_fd())
                    .map(drop)
                    .map_err(io::Error::other)
            })?);
            rounds[3].push(timed(|| {
                let status = Command::new("cp").arg(&source).arg(&copy).status()?;
                std::fs::remove_file(&copy)?;
                if status.success() {
                    Ok(())
                } else {
                    Err(io::Error::other(format!("cp failed: {status}")))
                }
            })?);
            rounds[4].push(timed(|| super::publish_floor::stream(&bytes))?);
            rounds[5].push(timed(|| {
                super::publish_floor::file(File::open(&source)?.as_fd(), size)
            })?);
            rounds[6].push(timed(|| {
                super::publish_floor::file_on_two_threads(File::open(&source)?.as_fd(), size)
            })?);
            rounds[7].push(timed(|| super::publish_floor::pages_only(size))?);
        }
        let [stream, file, adopt, cp, stream_floor, file_floor, file_floor_two, pages] =
            rounds.map(median);
        let hash_one = time(runs, || {
            std::hint::black_box(blake3::Hasher::new().update(&bytes).finalize());
            Ok(())
        })?;
        let hash_all = time(runs, || {
            std::hint::black_box(blake3::Hasher::new().update_rayon(&bytes).finalize());
            Ok(())
        })?;
        // The same bytes where an adopter finds them: in the sealed memfd,
        // reached through a fresh mapping whose pages must be faulted in.
        // No process can hash a memfd it did not fill for less.
        let hash_memfd = time(runs, || {
            let map = crate::mapping::SealedMap::new(memfd.as_fd())?;
            std::hint::black_box(
                blake3::Hasher::new()
                    .update_rayon(map.as_slice())
                    .finalize(),
            );
            Ok(())
        })?;
        for name in ["publish/stream", "publish/file", "publish/adopt"] {
            client.remove(name, None).map_err(io::Error::other)?;
        }
        drop(memfd);
        std::fs::remove_file(&source)?;
        std::thread::sleep(Duration::from_millis(200));
        let after_kib = crate::procfs::rss_kib(bench.daemon.pid())?;

        for (method, part) in [("stream", &stream_log), ("file", &file_log)] {
            let Some(stages) = Stages::median(part, size) else {
                eprintln!("  the daemon did not log where the {method} publishes spent their time");
                continue;
            };
            let waiting = stages.total - stages.copy - stages.hash_tail;
            stages_section.push(vec![
                text(&label),
                text(method),
                num(stages.total),
                num(stages.copy),
                num(stages.hash),
                num(stages.hash_tail),
                num(waiting.max(0.0)),
            ]);
        }

        let rate = |d: Duration| size as f64 / d.as_secs_f64() / 1e9;
        for (method, d) in [
            ("stream", stream),
            ("file", file),
            ("adopt", adopt),
            ("cp into tmpfs", cp),
            ("floor of stream: send + splice into a memfd", stream_floor),
            ("floor of file: sendfile into a memfd", file_floor),
            ("file's copy on two threads, into a memfd", file_floor_two),
            ("a memfd's pages alone (fallocate, no copy)", pages),
            ("BLAKE3, 1 thread", hash_one),
            ("BLAKE3, all CPUs", hash_all),
            ("BLAKE3 of the memfd, all CPUs", hash_memfd),
        ] {
            section.push(vec![
                text(&label),
                text(method),
                num(d.as_secs_f64() * 1e3),
                num(rate(d)),
                num(rate(d) / rate(cp)),
                num(d.as_secs_f64() / hash_all.as_secs_f64()),
            ]);
        }
        let vs_cp = |method: &str, took: Duration, floor: Duration, goal: f64| {
            let share = rate(took) / rate(cp);
            Target {
                what: format!("{method} publish vs cp into tmpfs, {label}"),
                goal: format!(">= {goal}x cp's rate"),
                measured: format!(
                    "{share:.2}x ({:.2} GB/s vs {:.2} GB/s); its copies alone (floor) {:.2}x cp, \
                     the publish {:.2}x its floor's rate",
                    rate(took),
                    rate(cp),
                    rate(floor) / rate(cp),
                    rate(took) / rate(floor)
                ),
                met: share >= goal,
            }
        };
        targets.push(vs_cp("streamed", stream, stream_floor, STREAM_VS_CP));
        let mut file_target = vs_cp("file", file, file_floor, FILE_VS_CP);
        file_target.measured += &format!(
            "; the copy split over two threads {:.2}x cp; the memfd's pages alone {:.2}x cp",
            rate(file_floor_two) / rate(cp),
            rate(pages) / rate(cp)
        );
        targets.push(file_target);
        let grown_kib = after_kib.saturating_sub(idle_kib);
        targets.push(Target {
            what: format!("daemon RSS after publishing {label} three ways, beyond idle"),
            goal: format!("<= {RSS_SLACK_KIB} KiB"),
            measured: format!(
                "{grown_kib} KiB ({:.1} MiB idle, {:.1} MiB after)",
                idle_kib as f64 / 1024.0,
                after_kib as f64 / 1024.0
            ),
            met: grown_kib <= RSS_SLACK_KIB,
        });
        let adopt_ratio = adopt.as_secs_f64() / hash_memfd.as_secs_f64();
        targets.push(Target {
            what: format!("adopt vs BLAKE3 of the same memfd on all CPUs, {label}"),
            goal: format!("<= {ADOPT_VS_HASH}x the hash time"),
            measured: format!(
                "{adopt_ratio:.2}x ({:.1} ms vs {:.1} ms; {:.2}x an in-memory buffer's hash of {:.1} ms; 1-thread {:.1} ms)",
                adopt.as_secs_f64() * 1e3,
                hash_memfd.as_secs_f64() * 1e3,
                adopt.as_secs_f64() / hash_all.as_secs_f64(),
                hash_all.as_secs_f64() * 1e3,
                hash_one.as_secs_f64() * 1e3
            ),
            met: adopt_ratio <= ADOPT_VS_HASH,
        });
    }
    Ok((vec![section, stages_section], targets))
}

/// Where the fills of one kind of publish spent their time, in ms.
struct Stages {
    total: f64,
    copy: f64,
    hash: f64,
    hash_tail: f64,
}

impl Stages {
    /// The medians of each field over the "fill stages" lines of `size`
    /// bytes in `log`.
    fn median(log: &str, size: usize) -> Option<Stages> {
        let size_field = format!("size={size} ");
        let lines: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("fill stages") && line.contains(&size_field))
            .collect();
        let median_ms = |key: &str| -> Option<f64> {
            let mut values = lines
                .iter()
                .map(|line| crate::daemon::log_number(line, key))
                .collect::<Option<Vec<u64>>>()?;
            values.sort_unstable();
            Some(*values.get(values.len() / 2)? as f64 / 1e3)
        };
        Some(Stages {
            total: median_ms("total_us=")?,
            copy: median_ms("copy_us=")?,
            hash: median_ms("hash_us=")?,
            hash_tail: median_ms("hash_tail_us=")?,
        })
    }
}

/// How long `op` took.
fn timed(op: impl FnOnce() -> io::Result<()>) -> io::Result<Duration> {
    let start = Instant::now();
    op()?;
    Ok(start.elapsed())
}

/// The median of some times.
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

/// The median time of `runs` runs of `op`.
fn time(runs: usize, mut op: impl FnMut() -> io::Result<()>) -> io::Result<Duration> {
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        times.push(timed(&mut op)?);
    }
    Ok(median(times))
}
