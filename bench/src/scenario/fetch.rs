//! Measurement 1, fetch latency: memseal against the floor, one client
//! and several.
//!
//! Both fetch the same sizes with the same placement in the same run, from
//! client processes of their own (a fresh, small process, as a real client
//! is). With one client, memseal and the floor alternate in rounds, so a
//! slow patch of the machine hits both alike.

use crate::affinity::Placement;
use crate::data::size_label;
use crate::harness::Bench;
use crate::report::{col, num, text, Kind, Section, Target};
use crate::stats::{ratio, Summary};
use crate::worker::{self, Worker};
use crate::workload::Method;
use serde_json::Value;
use std::io;
use std::time::Duration;

/// Rounds the one-client series are split into, alternating methods.
const ROUNDS: usize = 4;

/// Largest ratio of memseal's p50 to the floor's that meets the target.
const TARGET_RATIO: f64 = 1.2;

fn columns() -> Vec<crate::report::Column> {
    vec![
        col("size", Kind::Text),
        col("placement", Kind::Text),
        col("clients", Kind::Number),
        col("memseal p50 us", Kind::Number),
        col("memseal p99 us", Kind::Number),
        col("floor p50 us", Kind::Number),
        col("floor p99 us", Kind::Number),
        col("memseal / floor (p50)", Kind::Ratio),
        col("memseal fetches/s", Kind::Number),
        col("floor fetches/s", Kind::Number),
    ]
}

fn row(size: usize, placement: Placement, clients: usize, m: &Summary, f: &Summary) -> Vec<Value> {
    vec![
        text(size_label(size)),
        text(placement.to_string()),
        Value::from(clients),
        num(m.p50_us),
        num(m.p99_us),
        num(f.p50_us),
        num(f.p99_us),
        num(ratio(m.p50_us, f.p50_us)),
        num(m.per_sec),
        num(f.per_sec),
    ]
}

/// Run the one-client and the concurrent tables.
pub fn run(bench: &Bench) -> io::Result<(Vec<Section>, Vec<Target>)> {
    let mut single = Section::new(
        "Fetch latency, one client",
        "One connected client process fetches the asset over and over: request, receive the \
         descriptor, verify the seals, fstat, map PROT_READ/MAP_PRIVATE, then unmap and \
         close. No page of the asset is touched. The floor does the least that can do \
         the same (8-byte request, reply of the size with the memfd as SCM_RIGHTS, \
         F_GET_SEALS, fstat, mmap, munmap, close), its server in a separate process. \
         \"same CPU\" pins the client and every thread of the server to CPU 0; \
         \"default\" leaves placement to the scheduler.",
        columns(),
    );
    let mut targets = Vec::new();
    let effort = &bench.effort;
    for placement in Placement::ALL {
        bench.place(placement)?;
        for &size in &bench.sizes {
            let (m, f) = one_client(bench, size)?;
            let r = ratio(m.p50_us, f.p50_us).unwrap_or(f64::INFINITY);
            targets.push(Target {
                what: format!("fetch p50 vs floor, {}, {placement}", size_label(size)),
                goal: format!("<= {TARGET_RATIO}x"),
                measured: format!("{:.2}x ({:.1} us vs {:.1} us)", r, m.p50_us, f.p50_us),
                met: r <= TARGET_RATIO,
            });
            single.push(row(size, placement, 1, &m, &f));
        }
    }

    let mut concurrent = Section::new(
        &format!("Fetch latency, {} concurrent clients", effort.clients),
        "The same fetch, from several client processes at once, each with its own \
         connection, all started together. Latencies of all clients are pooled; \
         fetches/s is the total over the wall-clock time of the slowest client. \
         \"same CPU\" puts every client and the server on CPU 0.",
        columns(),
    );
    for placement in Placement::ALL {
        bench.place(placement)?;
        for &size in &bench.sizes {
            let (clients, fetches) = (effort.clients, effort.concurrent_fetches);
            let m = concurrent_clients(bench, Method::Memseal, size, clients, fetches)?;
            let f = concurrent_clients(bench, Method::Floor, size, clients, fetches)?;
            concurrent.push(row(size, placement, effort.clients, &m, &f));
        }
    }
    Ok((vec![single, concurrent], targets))
}

/// memseal and the floor, one client process each, alternating rounds.
fn one_client(bench: &Bench, size: usize) -> io::Result<(Summary, Summary)> {
    let effort = &bench.effort;
    let per_round = (effort.fetches / ROUNDS).max(1);
    let start = |method| {
        let spec = bench.spec(method, size).expect("spec for a loaded size");
        Worker::start(&worker::fetch_args(&spec, effort.warmup, per_round, false))
    };
    let mut memseal = start(Method::Memseal)?;
    let mut floor = start(Method::Floor)?;
    let mut m = Vec::new();
    let mut f = Vec::new();
    for _ in 0..ROUNDS {
        m.extend(memseal.round()?.latencies_ns);
        f.extend(floor.round()?.latencies_ns);
    }
    memseal.finish()?;
    floor.finish()?;
    let durations = |ns: Vec<u64>| ns.into_iter().map(Duration::from_nanos).collect::<Vec<_>>();
    Ok((
        Summary::sequential(&mut durations(m)),
        Summary::sequential(&mut durations(f)),
    ))
}

/// `clients` worker processes fetching at once, `fetches` timed fetches
/// each.
pub fn concurrent_clients(
    bench: &Bench,
    method: Method,
    size: usize,
    clients: usize,
    fetches: usize,
) -> io::Result<Summary> {
    let spec = bench.spec(method, size).expect("spec for a loaded size");
    let args = worker::fetch_args(&spec, bench.effort.warmup / 4, fetches, false);
    let mut workers = (0..clients)
        .map(|_| Worker::start(&args))
        .collect::<io::Result<Vec<_>>>()?;
    for worker in &mut workers {
        worker.go()?;
    }
    let mut latencies = Vec::new();
    let mut wall = Duration::ZERO;
    for mut worker in workers {
        let report = worker.report()?;
        worker.finish()?;
        latencies.extend(report.latencies_ns.into_iter().map(Duration::from_nanos));
        wall = wall.max(Duration::from_nanos(report.wall_ns));
    }
    Ok(Summary::new(&mut latencies, wall))
}
