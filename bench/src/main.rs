//! `memseal-bench`: measures memseal against the least work that could do
//! its job and against what people use today, and checks the performance
//! targets.
//!
//! One command runs everything: it starts its own `memseald` (with its own
//! socket, an empty settings file and a budget big enough for 1 GiB
//! assets), a floor server, and `redis-server`, loads the same bytes into
//! each of them and into files in tmpfs, measures them side by side in the
//! same run, prints Markdown tables with medians, p99 and ratios, and
//! writes the same results as JSON. No timing is asserted anywhere: a
//! missed target is reported, not failed.
//!
//! # Layout
//!
//! - [`harness`]: the options, the set-up shared by every measurement, and
//!   the order of the sections.
//! - [`scenario`]: the measurements, one module each: fetch latency
//!   against the floor, the comparison with Redis and read(), memory of
//!   many readers, publish throughput, the daemon's footprint, and what
//!   the client's mapping options buy.
//! - [`workload`]: the ways of getting an asset's bytes (memseal, floor,
//!   Redis, read) behind one trait, and the timing loop they share.
//! - [`floor`] and [`mapping`]: the minimal handoff that the fetch rows are
//!   measured against, with the harness's only `unsafe` code.
//! - [`daemon`] and [`redis`]: starting and stopping the real servers.
//! - [`worker`]: this binary started again as a client or server process
//!   of its own (subcommands `worker-fetch`, `worker-hold`,
//!   `floor-server`), so concurrency and memory are measured across real
//!   processes.
//! - [`affinity`]: pinning clients and servers to one CPU.
//! - [`procfs`], [`stats`], [`data`], [`report`]: reading /proc, summarising
//!   timings, making the test bytes, and printing the results.
//!
//! # The path of one measured fetch
//!
//! The harness pins itself and every thread of the daemon and the floor
//! server to CPU 0 (then repeats without pinning), opens a
//! `memseal::Client`, and calls `fetch` in a loop, timing each call from the
//! request to the drop of the returned asset (unmap and close). It does the
//! same against the floor server in alternating rounds, and reports both
//! side by side with their ratio.

// Unsafe code only where a module opts in: `mapping`.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

mod affinity;
mod daemon;
mod data;
mod floor;
mod harness;
#[allow(unsafe_code)]
mod mapping;
mod procfs;
mod redis;
mod report;
mod scenario;
mod stats;
mod worker;
mod workload;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Measure memseal against a minimal descriptor handoff, Redis and read().
#[derive(Debug, Parser)]
#[command(name = "memseal-bench", version, about)]
struct Cli {
    /// Small sizes and few iterations: finishes in seconds, proves the
    /// harness works, and measures nothing worth quoting.
    #[arg(long)]
    quick: bool,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Write the Markdown tables to this file as well as to stdout.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,

    /// The memseald to measure [default: memseald next to this program]
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,

    /// The redis-server to compare with [default: redis-server on the PATH]
    #[arg(long, value_name = "PATH")]
    redis_server: Option<PathBuf>,

    /// Run only these sections (repeat or separate with commas) [default: all]
    #[arg(long, value_name = "SECTION", value_delimiter = ',')]
    only: Vec<harness::Part>,

    #[command(subcommand)]
    role: Option<Role>,
}

/// The roles this binary plays when the harness starts it again.
#[derive(Debug, Subcommand)]
enum Role {
    /// Serve the floor's sealed memfds (harness internal).
    #[command(hide = true)]
    FloorServer {
        #[arg(long)]
        socket: PathBuf,
        /// Asset sizes in bytes, comma-separated.
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
    },
    /// Time fetches as a separate client process (harness internal).
    #[command(hide = true)]
    WorkerFetch {
        #[arg(long)]
        spec: String,
        #[arg(long)]
        warmup: usize,
        #[arg(long)]
        iterations: usize,
        #[arg(long)]
        touch: bool,
    },
    /// Fetch once and hold the bytes (harness internal).
    #[command(hide = true)]
    WorkerHold {
        #[arg(long)]
        spec: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(Role::FloorServer { socket, sizes }) => floor::serve(&socket, &sizes),
        Some(Role::WorkerFetch {
            spec,
            warmup,
            iterations,
            touch,
        }) => {
            parse_spec(&spec).and_then(|spec| worker::fetch_main(&spec, warmup, iterations, touch))
        }
        Some(Role::WorkerHold { spec }) => {
            parse_spec(&spec).and_then(|spec| worker::hold_main(&spec))
        }
        None => run(cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memseal-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_spec(spec: &str) -> std::io::Result<workload::Spec> {
    serde_json::from_str(spec).map_err(|e| std::io::Error::other(format!("bad --spec: {e}")))
}

/// The harness itself: set up, measure, print, save.
fn run(cli: Cli) -> std::io::Result<()> {
    let daemon = match cli.daemon {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("memseald"),
    };
    if !daemon.is_file() {
        return Err(std::io::Error::other(format!(
            "{} not found; build it (cargo build --release -p memseal-daemon) or pass --daemon",
            daemon.display()
        )));
    }
    let redis = cli.redis_server.or_else(redis::RedisServer::find);
    let parts = if cli.only.is_empty() {
        harness::Part::ALL.to_vec()
    } else {
        cli.only
    };
    let options = harness::Options {
        quick: cli.quick,
        daemon,
        redis,
        parts,
    };
    let report = harness::Bench::set_up(options)?.run()?;
    let markdown_text = report.markdown();
    println!("{markdown_text}");
    if let Some(path) = cli.markdown {
        std::fs::write(&path, &markdown_text)?;
    }
    if let Some(path) = cli.json {
        let mut text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(&path, text)?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}
