//! The cache: `CachedClient::fetch` of an asset that does not change,
//! against `Client::fetch`, with the requests each sent to the daemon.

use super::{publish, unpublish, Work, PREFIX};
use crate::affinity::Placement;
use crate::harness::Bench;
use crate::report::{col, num, text, Kind, Section};
use crate::stats::{ratio, Summary};
use serde_json::Value;
use std::io;
use std::time::{Duration, Instant};

/// Size of the cached asset. The cached fetch does not depend on it; the
/// uncached one barely does (it maps, touches nothing).
const SIZE: usize = 1 << 20;

/// Rounds the series are split into, alternating the two clients.
const ROUNDS: usize = 4;

/// A series of timed fetches and the requests they sent.
#[derive(Default)]
struct Series {
    latencies: Vec<Duration>,
    requests: u64,
}

/// Run the cache table.
pub fn run(bench: &Bench, client: &mut memseal::Client, work: &Work) -> io::Result<Section> {
    let name = format!("{PREFIX}cached");
    publish(client, &name, 200, SIZE)?;
    bench.place(Placement::SameCpu)?;
    let mut cache =
        memseal::CachedClient::new(super::connect(bench)?, PREFIX).map_err(io::Error::other)?;
    let mut uncached = Series::default();
    let mut cached = Series::default();
    for _ in 0..work.warmup {
        drop(client.fetch(&name).map_err(io::Error::other)?);
        drop(cache.fetch(&name).map_err(io::Error::other)?);
    }
    let per_round = (work.fetches / ROUNDS).max(1);
    for _ in 0..ROUNDS {
        let before = client.requests_sent();
        for _ in 0..per_round {
            let start = Instant::now();
            drop(client.fetch(&name).map_err(io::Error::other)?);
            uncached.latencies.push(start.elapsed());
        }
        uncached.requests += client.requests_sent() - before;

        let before = cache.requests_sent();
        for _ in 0..per_round {
            let start = Instant::now();
            drop(cache.fetch(&name).map_err(io::Error::other)?);
            cached.latencies.push(start.elapsed());
        }
        cached.requests += cache.requests_sent() - before;
    }
    let hits = cache.hits();
    drop(cache);
    bench.place(Placement::Default)?;
    unpublish(client, &name)?;

    let fetches = per_round * ROUNDS;
    let uncached_summary = Summary::sequential(&mut uncached.latencies);
    let cached_summary = Summary::sequential(&mut cached.latencies);
    let mut section = Section::new(
        "Cached fetch of an unchanged asset",
        &format!(
            "One client fetches the latest version of an unchanged 1 MiB asset over and \
             over, timed from the call to the drop of the result (nothing is touched). \
             Client::fetch: a round trip, seal check and map each time. \
             CachedClient::fetch: the cache, fed by a watch on a second connection, reads \
             any announcements waiting, then answers from what it holds. {fetches} timed \
             fetches each, after {} untimed ones, in {ROUNDS} alternating rounds; the \
             harness and the daemon pinned to CPU 0. requests sent counts the requests that \
             reached the daemon during the timed fetches (the watch not counted); the cache \
             answered {hits} fetches in all without one.",
            work.warmup
        ),
        vec![
            col("method", Kind::Text),
            col("fetches", Kind::Number),
            col("requests sent", Kind::Number),
            col("p50 us", Kind::Number),
            col("p99 us", Kind::Number),
            col("fetches/s", Kind::Number),
            col("Client::fetch / this (p50)", Kind::Ratio),
        ],
    );
    for (label, series, summary) in [
        ("Client::fetch", &uncached, &uncached_summary),
        ("CachedClient::fetch", &cached, &cached_summary),
    ] {
        section.push(vec![
            text(label),
            Value::from(fetches),
            Value::from(series.requests),
            num(summary.p50_us),
            num(summary.p99_us),
            num(summary.per_sec),
            num(ratio(uncached_summary.p50_us, summary.p50_us)),
        ]);
    }
    Ok(section)
}
