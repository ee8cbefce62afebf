//! Measurement 5, the daemon's footprint: memory when idle and with many
//! idle clients, and how soon after exec it is ready and serving.
//!
//! Each start is a fresh daemon with one small declared asset. READY=1 is
//! timed on a `NOTIFY_SOCKET` the harness binds, as a service manager
//! would; the first served fetch is timed by a client that keeps trying
//! from the moment the daemon is spawned.

use crate::daemon::Daemon;
use crate::harness::Bench;
use crate::procfs;
use crate::report::{col, num, text, Kind, Section};
use std::io;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Idle connections held open for the second RSS reading.
const IDLE_CONNECTIONS: usize = 1000;

/// The declared asset every fresh daemon serves.
const PROBE_NAME: &str = "probe/4k";

/// Run the footprint table.
pub fn run(bench: &Bench) -> io::Result<Section> {
    let root = bench.dir.path().join("footprint");
    let assets = root.join("assets.d");
    std::fs::create_dir_all(&assets)?;
    std::fs::write(assets.join("probe.bin"), vec![7u8; 4096])?;
    std::fs::write(
        assets.join("probe.asset"),
        format!("name = \"{PROBE_NAME}\"\npath = \"probe.bin\"\n"),
    )?;

    let mut ready = Vec::new();
    let mut first_fetch = Vec::new();
    for start in 0..bench.effort.starts.max(1) {
        let dir = root.join(format!("start-{start}"));
        let (daemon, served) = start_and_probe(bench, &dir, &assets)?;
        ready.push(
            daemon
                .ready_after
                .expect("started with a notification socket"),
        );
        first_fetch.push(served);
    }

    let dir = root.join("rss");
    let (daemon, _) = start_and_probe(bench, &dir, &assets)?;
    std::thread::sleep(Duration::from_millis(200));
    let idle_kib = procfs::rss_kib(daemon.pid())?;
    let clients = (0..IDLE_CONNECTIONS)
        .map(|_| memseal::Client::connect_to(daemon.socket()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    std::thread::sleep(Duration::from_millis(200));
    let busy_kib = procfs::rss_kib(daemon.pid())?;
    drop(clients);
    drop(daemon);

    let mut section = Section::new(
        "Daemon footprint and start-up",
        "Start-up: from just before the daemon is spawned (exec included) to its READY=1 \
         datagram, and to the first fetch a polling client gets served (medians, with the \
         range, over several fresh starts, each with one 4 KiB declared asset). RSS: \
         VmRSS of a fresh daemon serving that asset, idle, then with idle connections \
         that completed the handshake.",
        vec![
            col("measure", Kind::Text),
            col("value", Kind::Number),
            col("unit", Kind::Text),
            col("range", Kind::Text),
        ],
    );
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    for (label, series) in [
        ("exec to READY=1", &mut ready),
        ("exec to first served fetch", &mut first_fetch),
    ] {
        series.sort_unstable();
        section.push(vec![
            text(label),
            num(ms(&series[series.len() / 2])),
            text("ms"),
            text(format!(
                "{:.2} - {:.2} ms over {} starts",
                ms(&series[0]),
                ms(&series[series.len() - 1]),
                series.len()
            )),
        ]);
    }
    section.push(vec![
        text("RSS, idle"),
        num(idle_kib as f64 / 1024.0),
        text("MiB"),
        text(""),
    ]);
    section.push(vec![
        text(format!("RSS, {IDLE_CONNECTIONS} idle connections")),
        num(busy_kib as f64 / 1024.0),
        text("MiB"),
        text(""),
    ]);
    section.push(vec![
        text("RSS per idle connection"),
        num(busy_kib.saturating_sub(idle_kib) as f64 / IDLE_CONNECTIONS as f64),
        text("KiB"),
        text(""),
    ]);
    Ok(section)
}

/// Start a fresh daemon in `dir` serving `assets`, with a client polling
/// for the first served fetch from before the spawn. Returns the daemon and
/// the time from its spawn to that fetch.
fn start_and_probe(bench: &Bench, dir: &Path, assets: &Path) -> io::Result<(Daemon, Duration)> {
    let socket = dir.join("memseald.sock");
    let (served_tx, served_rx) = mpsc::channel();
    let probe = std::thread::spawn(move || {
        let give_up = Instant::now() + Duration::from_secs(20);
        while Instant::now() < give_up {
            if let Ok(mut client) = memseal::Client::connect_to(&socket) {
                if client.fetch(PROBE_NAME).is_ok() {
                    let _ = served_tx.send(Instant::now());
                    return;
                }
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    });
    let daemon = crate::daemon::start(&bench.daemon_config, dir, Some(assets))?;
    let served_at = served_rx
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| io::Error::other("the probe client was never served"))?;
    let _ = probe.join();
    let served_after = served_at.saturating_duration_since(daemon.started_at);
    Ok((daemon, served_after))
}
