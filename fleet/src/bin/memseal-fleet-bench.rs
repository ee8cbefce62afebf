//! `memseal-fleet-bench`: how fast a pull is, against the plainest way of
//! reading the same object from the same store.
//!
//! It starts an S3-compatible server (moto_server, as installed by
//! scripts/s3-test-server.sh) and a memseald of its own, publishes and
//! pushes one asset per size, then alternates, round after round:
//!
//! - **plain GET**: `ObjectStore::get` of the blob and `bytes()`: one
//!   request, the whole object collected into memory, nothing checked;
//! - **pull**: `Agent::pull` of the name, the whole path a node takes: the
//!   manifest, the local checks, ranged GETs in parallel into a memfd,
//!   hashing, sealing, and the daemon adopting (and hashing) the memfd.
//!   The local version is removed between rounds, untimed.
//!
//! It prints a Markdown table of medians and the ratio of the pull's rate
//! to the plain GET's. Then, with the agent registered as the daemon's
//! resolver (pull-through), the latency a plain client fetch sees for a
//! 4 KiB asset the node does not hold (one round trip that lasts one
//! download) beside a local fetch of it. Nothing is asserted: a test
//! server's speed says little about a real store's, and the ratios are
//! what to read.

#![deny(unsafe_code)]

use clap::Parser;
use memseal::{Client, ConnectOptions};
use memseal_fleet::agent::{Agent, Want};
use memseal_fleet::cli::parse_size;
use memseal_fleet::download::Transfer;
use memseal_fleet::local::Local;
use memseal_fleet::metrics::Metrics;
use memseal_fleet::remote::Remote;
use memseal_fleet::state::State;
use memseal_fleet::test_server;
use object_store::ObjectStoreExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUCKET: &str = "bench";

/// Measure memseal-fleet pulls against plain object_store GETs.
#[derive(Debug, Parser)]
#[command(name = "memseal-fleet-bench", version, about)]
struct Args {
    /// Asset sizes to measure (bytes, or with K, M, G)
    #[arg(long, value_delimiter = ',', default_value = "64M,1G", value_parser = parse_size)]
    sizes: Vec<u64>,
    /// Measured rounds per size and method (after one untimed warm-up)
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The memseald to publish into [default: next to this program]
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// The moto_server to run [default: what scripts/s3-test-server.sh installs]
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
    /// Requests in flight per pull
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Bytes per ranged GET
    #[arg(long, default_value = "8M", value_parser = parse_size)]
    piece_size: u64,
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memseal-fleet-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (_server, port) = start_server(args.server.clone(), dir.path())?;
    let largest = args.sizes.iter().copied().max().unwrap_or(0);
    let (_daemon, socket) = start_daemon(args.daemon.clone(), dir.path(), largest)?;
    // The agent reads its store's address the way every S3 tool does.
    for (key, value) in [
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true"),
    ] {
        std::env::set_var(key, value);
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let remote = Remote::from_env(&format!("s3://{BUCKET}/fleet")).map_err(|e| e.to_string())?;
    let agent = runtime.block_on(async {
        let local = Local::connect(Some(socket.clone())).await?;
        let state = State::open(&dir.path().join("state"))?;
        let transfer = Transfer {
            piece_size: args.piece_size,
            connections: args.connections,
            retry_for: Duration::from_secs(60),
            rate: None,
            retry_refused_after: Duration::from_secs(60),
        };
        Ok::<_, memseal_fleet::error::Error>(Agent::new(
            remote.clone(),
            local,
            state,
            Arc::new(Metrics::new(None)),
            transfer,
        ))
    });
    let agent = Arc::new(agent.map_err(|e| e.to_string())?);
    let mut client = ConnectOptions::new()
        .socket(&socket)
        .connect()
        .map_err(|e| e.to_string())?;

    println!(
        "server: moto_server (Python) on 127.0.0.1; {} rounds, medians; \
         pull: {} connections, {} MiB pieces\n",
        args.rounds,
        args.connections,
        args.piece_size >> 20
    );
    println!("| size | plain GET into memory | pull into memseald | pull rate / GET rate |");
    println!("|---|---|---|---|");
    for &size in &args.sizes {
        let name = format!("bench/{size}");
        let bytes = content(size);
        let key = remote.layout().blob(blake3::hash(&bytes).as_bytes());
        client
            .publish_bytes(&name, &bytes)
            .map_err(|e| e.to_string())?;
        drop(bytes);
        runtime
            .block_on(agent.push_name(&name))
            .map_err(|e| e.to_string())?;
        let mut plain = Vec::new();
        let mut pulls = Vec::new();
        for round in 0..=args.rounds {
            remove_local(&mut client, &name)?;
            let started = Instant::now();
            let pulled = runtime.block_on(agent.pull(&name, Want::Latest));
            let pull_time = started.elapsed();
            pulled.map_err(|e| e.to_string())?;

            let started = Instant::now();
            let got = runtime.block_on(async { remote.store().get(&key).await?.bytes().await });
            let get_time = started.elapsed();
            let got = got.map_err(|e| e.to_string())?;
            if got.len() as u64 != size {
                return Err(format!("the plain GET returned {} bytes", got.len()));
            }
            drop(got);
            if round > 0 {
                plain.push(get_time);
                pulls.push(pull_time);
            }
        }
        let (plain, pull) = (median(&mut plain), median(&mut pulls));
        println!(
            "| {} MiB | {:.3} s ({:.0} MiB/s) | {:.3} s ({:.0} MiB/s) | {:.2}x |",
            size >> 20,
            plain.as_secs_f64(),
            rate(size, plain),
            pull.as_secs_f64(),
            rate(size, pull),
            plain.as_secs_f64() / pull.as_secs_f64()
        );
        remove_local(&mut client, &name)?;
    }
    miss_latency(args, &runtime, &agent, &mut client)
}

/// A plain fetch of a 4 KiB asset the daemon does not hold, supplied by
/// the agent as resolver, beside a local fetch of the same asset.
fn miss_latency(
    args: &Args,
    runtime: &tokio::runtime::Runtime,
    agent: &Arc<Agent>,
    client: &mut Client,
) -> Result<(), String> {
    const PREFIX: &str = "bench/miss/";
    let name = format!("{PREFIX}4k");
    client
        .publish_bytes(&name, &content(4096))
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(agent.push_name(&name))
        .map_err(|e| e.to_string())?;
    let prefixes = vec![PREFIX.to_owned()];
    let registered = runtime.block_on(memseal_fleet::resolver::register(agent, &prefixes));
    let resolver = registered.map_err(|e| e.to_string())?;
    runtime.spawn(memseal_fleet::resolver::resolve(
        Arc::clone(agent),
        prefixes,
        resolver,
    ));
    let rounds = args.rounds.max(1) * 4;
    let mut local = Vec::new();
    let mut misses = Vec::new();
    for round in 0..=rounds {
        remove_local(client, &name)?;
        let started = Instant::now();
        client.fetch(&name).map_err(|e| e.to_string())?;
        let miss = started.elapsed();
        let started = Instant::now();
        client.fetch(&name).map_err(|e| e.to_string())?;
        let hit = started.elapsed();
        if round > 0 {
            misses.push(miss);
            local.push(hit);
        }
    }
    let (local, miss) = (median(&mut local), median(&mut misses));
    println!("\n| 4 KiB asset, plain client fetch | median | / local fetch |");
    println!("|---|---|---|");
    println!(
        "| held by the node | {:.1} us | 1x |",
        local.as_secs_f64() * 1e6
    );
    println!(
        "| missing: pulled through the agent | {:.2} ms | {:.0}x |",
        miss.as_secs_f64() * 1e3,
        miss.as_secs_f64() / local.as_secs_f64()
    );
    remove_local(client, &name)
}

/// Remove every version of `name` from the daemon (none is fine).
fn remove_local(client: &mut Client, name: &str) -> Result<(), String> {
    match client.remove(name, None) {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(memseal::ErrorCode::NotFound) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn rate(size: u64, time: Duration) -> f64 {
    size as f64 / (1 << 20) as f64 / time.as_secs_f64()
}

/// Bytes that do not compress or repeat: BLAKE3's output stream.
fn content(size: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; size as usize];
    blake3::Hasher::new()
        .update(b"memseal-fleet-bench")
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

/// moto_server on a free port, with the bench's bucket.
fn start_server(program: Option<PathBuf>, dir: &Path) -> Result<(Process, u16), String> {
    let program = program
        .or_else(test_server::moto_server)
        .ok_or("moto_server could not be installed (scripts/s3-test-server.sh)")?;
    let (child, port) = test_server::start_on_free_port(&program, &[], &dir.join("moto.log"))
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
    let server = Process(child);
    test_server::create_bucket(port, BUCKET)?;
    Ok((server, port))
}

/// A memseald with room for the largest asset twice over.
fn start_daemon(
    program: Option<PathBuf>,
    dir: &Path,
    largest: u64,
) -> Result<(Process, PathBuf), String> {
    let program = program.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("memseald")))
            .unwrap_or_else(|| PathBuf::from("memseald"))
    });
    let socket = dir.join("memseald.sock");
    let config = dir.join("memseald.toml");
    std::fs::write(&config, "").map_err(|e| e.to_string())?;
    let budget = (largest * 2 + (64 << 20)).to_string();
    let child = Command::new(&program)
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&config)
        .args(["--max-total-bytes", &budget, "--max-asset-size", &budget])
        .env("MEMSEAL_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
    let daemon = Process(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if Instant::now() > deadline {
            return Err("memseald did not start within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((daemon, socket))
}
