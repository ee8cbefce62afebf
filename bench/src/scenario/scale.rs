//! Measurement 8, cost as the work grows: each table is a curve of a few
//! points measured in one run, with the ratio between its ends.
//!
//! - the catalog: fetch latency, publish rate and daemon RSS per name at
//!   10 to 1,000,000 names, with the fd store on, so every publish also
//!   pays its persistence;
//! - concurrency: fetch throughput and p99 with 1 to 64 client processes,
//!   beside the floor server under the same load;
//! - restarts: the time from exec to READY=1 of a daemon that restores
//!   its catalog from the fd store, against the number of assets and
//!   their bytes, with the part spent hashing the blobs again shown
//!   separately (the daemon logs it).
//!
//! The daemons here run under the test suite's stand-in for the service
//! manager ([`FakeSystemd`]), which keeps the fd store the way systemd
//! does.

use crate::data::{self, size_label};
use crate::harness::Bench;
use crate::procfs;
use crate::report::{col, num, text, Kind, Section, Target};
use crate::scenario::fetch::concurrent_clients;
use crate::stats::{ratio, Summary};
use crate::workload::Method;
use memseal_tests::fake_systemd::FakeSystemd;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// Catalog sizes of the catalog curve.
const CATALOG_POINTS: [usize; 4] = [10, 10_000, 100_000, 1_000_000];

/// Fetch p50 at the largest catalog may be at most this multiple of the
/// smallest's.
const CATALOG_TARGET: f64 = 1.2;

/// Client processes of the concurrency curve.
const CLIENT_POINTS: [usize; 4] = [1, 4, 16, 64];

/// (assets, size of each) of the restart curve.
const RESTART_POINTS: [(usize, usize); 4] = [
    (10, 1 << 20),
    (100, 1 << 20),
    (1000, 1 << 20),
    (10, 100 << 20),
];

/// The content every name of the catalog curve shares: one blob, so the
/// curve measures the catalog, not memfds.
const SHARED_CONTENT: &[u8] = b"one blob behind every name of the catalog curve";

/// Run the three curves.
pub fn run(bench: &Bench) -> io::Result<(Vec<Section>, Vec<Target>)> {
    eprintln!("  catalog size");
    let (catalog, target) = catalog(bench)?;
    eprintln!("  concurrent clients");
    let concurrency = concurrency(bench)?;
    eprintln!("  restarts");
    let restart = restart(bench)?;
    Ok((vec![catalog, concurrency, restart], vec![target]))
}

/// A daemon under a stand-in service manager (fd store on) in `dir`,
/// started and ready.
fn start_daemon(
    bench: &Bench,
    dir: &Path,
    log_level: &str,
    args: &[&str],
) -> io::Result<FakeSystemd> {
    std::fs::create_dir_all(dir)?;
    let mut systemd = FakeSystemd::new(dir, false, args)
        .with_binary(&bench.options.daemon)
        .with_log_level(log_level);
    systemd.start();
    systemd.wait_for(0, is_ready);
    Ok(systemd)
}

fn is_ready(notification: &memseal_tests::fake_systemd::Notification) -> bool {
    notification.get("READY") == Some("1")
}

fn connect(systemd: &FakeSystemd) -> io::Result<memseal::Client> {
    memseal::Client::connect_to(systemd.socket()).map_err(io::Error::other)
}

/// The catalog curve.
fn catalog(bench: &Bench) -> io::Result<(Section, Target)> {
    let points: &[usize] = if bench.options.quick {
        &[10, 1_000]
    } else {
        &CATALOG_POINTS
    };
    let largest = points[points.len() - 1];
    let max_versions = (largest + largest / 10).to_string();
    let systemd = start_daemon(
        bench,
        &bench.dir.path().join("scale-catalog"),
        "warn",
        &["--max-versions", &max_versions],
    )?;
    let pid = systemd.pid();
    let mut client = connect(&systemd)?;
    let idle_kib = procfs::rss_kib(pid)?;
    let fetches = (bench.effort.fetches / 4).max(100);
    let name = |i: usize| format!("scale/catalog/{i:07}");
    // The baseline: a second daemon that keeps the smallest catalog,
    // fetched in turn with the growing one at every point. This machine's
    // speed drifts over the minutes the curve takes; a baseline measured
    // once, at the start, would put that drift into the ratio.
    let smallest = points[0];
    let reference = start_daemon(
        bench,
        &bench.dir.path().join("scale-catalog-reference"),
        "warn",
        &[],
    )?;
    let mut reference_client = connect(&reference)?;
    for i in 0..smallest {
        reference_client
            .publish_bytes(&name(i), SHARED_CONTENT)
            .map_err(io::Error::other)?;
    }

    let mut section = Section::new(
        "Cost as the catalog grows",
        "One daemon with the fd store on (every publish appends to the journal in the \
         service manager's store; snapshots replace it as it grows). Names are added by \
         one client, each a publish_bytes of the same 47 bytes, so all names share one \
         blob and the curve measures the catalog itself. At each point: the publish rate \
         and latency of the names just added, the daemon's RSS and its growth per name \
         since it was idle, then fetches of names picked at random over the whole \
         catalog, in turn with fetches from a second daemon that holds the smallest \
         catalog throughout (the reference), so the ratio compares fetches of the same \
         minute. No pinning.",
        vec![
            col("names", Kind::Number),
            col("fetch p50 us", Kind::Number),
            col("fetch p99 us", Kind::Number),
            col("reference p50 us", Kind::Number),
            col("fetch p50 / reference p50", Kind::Ratio),
            col("publishes/s", Kind::Number),
            col("publish p50 us", Kind::Number),
            col("publish p99 us", Kind::Number),
            col("publish max ms", Kind::Number),
            col("daemon RSS MiB", Kind::Number),
            col("RSS bytes per name", Kind::Number),
        ],
    );
    let mut published = 0;
    let mut last_ratio = None;
    let mut random = 0x2545_f491_4f6c_dd1du64;
    for &point in points {
        let mut publishes = Vec::with_capacity(point - published);
        let started = Instant::now();
        while published < point {
            let one = Instant::now();
            client
                .publish_bytes(&name(published), SHARED_CONTENT)
                .map_err(io::Error::other)?;
            publishes.push(one.elapsed());
            published += 1;
        }
        let publish_wall = started.elapsed();
        let slowest = publishes.iter().max().copied().unwrap_or_default();
        let publish = Summary::new(&mut publishes, publish_wall);
        std::thread::sleep(Duration::from_millis(200));
        let rss_kib = procfs::rss_kib(pid)?;

        let mut latencies = Vec::with_capacity(fetches);
        let mut reference_latencies = Vec::with_capacity(fetches);
        for _ in 0..fetches {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            let wanted = name((random % point as u64) as usize);
            let one = Instant::now();
            client.fetch(&wanted).map_err(io::Error::other)?;
            latencies.push(one.elapsed());
            let wanted = name((random % smallest as u64) as usize);
            let one = Instant::now();
            reference_client.fetch(&wanted).map_err(io::Error::other)?;
            reference_latencies.push(one.elapsed());
        }
        let fetch = Summary::sequential(&mut latencies);
        let reference_fetch = Summary::sequential(&mut reference_latencies);
        last_ratio = ratio(fetch.p50_us, reference_fetch.p50_us);
        let grown = rss_kib.saturating_sub(idle_kib) as f64 * 1024.0;
        section.push(vec![
            num(point as f64),
            num(fetch.p50_us),
            num(fetch.p99_us),
            num(reference_fetch.p50_us),
            num(last_ratio),
            num(publish.per_sec),
            num(publish.p50_us),
            num(publish.p99_us),
            num(slowest.as_secs_f64() * 1e3),
            num(rss_kib as f64 / 1024.0),
            num(grown / point as f64),
        ]);
    }
    let r = last_ratio.unwrap_or(f64::INFINITY);
    let target = Target {
        what: format!("fetch p50 at {largest} names vs at {smallest} names, same minute"),
        goal: format!("<= {CATALOG_TARGET}x"),
        measured: format!("{r:.2}x"),
        met: r <= CATALOG_TARGET,
    };
    Ok((section, target))
}

/// The concurrency curve, on the shared daemon and floor server, 4 KiB.
fn concurrency(bench: &Bench) -> io::Result<Section> {
    let points: &[usize] = if bench.options.quick {
        &CLIENT_POINTS[..2]
    } else {
        &CLIENT_POINTS
    };
    let size = bench.sizes[0];
    // The same total work at every point, so each takes about as long.
    let total = bench.effort.concurrent_fetches * 4;
    let mut section = Section::new(
        &format!(
            "Fetch throughput as clients are added, {}",
            size_label(size)
        ),
        "Client processes, each with its own connection, fetch the asset at once, all \
         started together; the same total number of fetches at every point. fetches/s \
         is the total over the wall-clock time of the slowest client; latencies are \
         pooled. The floor server runs the same load. No pinning.",
        vec![
            col("clients", Kind::Number),
            col("memseal fetches/s", Kind::Number),
            col("memseal p50 us", Kind::Number),
            col("memseal p99 us", Kind::Number),
            col("floor fetches/s", Kind::Number),
            col("floor p50 us", Kind::Number),
            col("floor p99 us", Kind::Number),
            col("memseal / floor (fetches/s)", Kind::Ratio),
            col("memseal fetches/s / at 1 client", Kind::Ratio),
        ],
    );
    let mut single = None;
    for &clients in points {
        let fetches = (total / clients).max(100);
        let m = concurrent_clients(bench, Method::Memseal, size, clients, fetches)?;
        let f = concurrent_clients(bench, Method::Floor, size, clients, fetches)?;
        let one = *single.get_or_insert(m.per_sec);
        section.push(vec![
            num(clients as f64),
            num(m.per_sec),
            num(m.p50_us),
            num(m.p99_us),
            num(f.per_sec),
            num(f.p50_us),
            num(f.p99_us),
            num(ratio(m.per_sec, f.per_sec)),
            num(ratio(m.per_sec, one)),
        ]);
    }
    Ok(section)
}

/// The restart curve.
fn restart(bench: &Bench) -> io::Result<Section> {
    let points: &[(usize, usize)] = if bench.options.quick {
        &[(10, 64 << 10), (100, 64 << 10)]
    } else {
        &RESTART_POINTS
    };
    let restarts = bench.effort.starts.max(1);
    let mut section = Section::new(
        "Restart from the fd store",
        "A daemon under a stand-in service manager holds the assets (distinct content, so \
         one memfd each) and its catalog in the fd store; it is killed (SIGKILL) and \
         started again with everything passed back, several times. exec to READY=1 as \
         the service manager sees it; restore and re-hash as the daemon logs them (the \
         restore checks every blob's seals, size and owner and hashes its content again \
         before anything is served). Medians over the restarts. No pinning.",
        vec![
            col("assets", Kind::Number),
            col("asset size", Kind::Text),
            col("total", Kind::Text),
            col("exec to READY=1 ms", Kind::Number),
            col("restore ms", Kind::Number),
            col("of which re-hash ms", Kind::Number),
            col("re-hash GB/s", Kind::Number),
        ],
    );
    for (index, &(assets, size)) in points.iter().enumerate() {
        let total = assets * size;
        let dir = bench.dir.path().join(format!("scale-restart-{index}"));
        let budget = (total as u64 * 2 + (64 << 20)).to_string();
        let mut systemd = start_daemon(bench, &dir, "info", &["--max-total-bytes", &budget])?;
        {
            let mut client = connect(&systemd)?;
            for i in 0..assets {
                let mut bytes = data::content(size + 1 + i);
                bytes.truncate(size);
                client
                    .publish_bytes(&format!("scale/restart/{i:04}"), &bytes)
                    .map_err(io::Error::other)?;
            }
        }
        let mut ready = Vec::new();
        let mut restore = Vec::new();
        let mut rehash = Vec::new();
        for _ in 0..restarts {
            systemd.kill();
            let from = systemd.notifications();
            let started = Instant::now();
            systemd.start();
            systemd.wait_for(from, is_ready);
            ready.push(started.elapsed());
            let (took, verifying) = last_restore(&systemd.logs())
                .ok_or_else(|| io::Error::other("the restarted daemon did not log its restore"))?;
            restore.push(took);
            rehash.push(verifying);
        }
        let ms = |series: &mut Vec<Duration>| {
            series.sort_unstable();
            series[series.len() / 2].as_secs_f64() * 1e3
        };
        let rehash_ms = ms(&mut rehash);
        section.push(vec![
            num(assets as f64),
            text(size_label(size)),
            text(size_label(total)),
            num(ms(&mut ready)),
            num(ms(&mut restore)),
            num(rehash_ms),
            num(ratio(total as f64 / 1e6, rehash_ms)),
        ]);
    }
    Ok(section)
}

/// The restore time and the re-hash time of the last restore in a daemon
/// log (the `took_us` and `verify_us` fields of its "restored the catalog"
/// line).
fn last_restore(log: &str) -> Option<(Duration, Duration)> {
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("restored the catalog from the fd store"))?;
    let field = |key: &str| crate::daemon::log_number(line, key).map(Duration::from_micros);
    Some((field("took_us=")?, field("verify_us=")?))
}
