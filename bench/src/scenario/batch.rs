//! Measurement 7, many assets in one round trip: `fetch_many` of 64
//! assets beside 64 single fetches of the same assets and beside one
//! fetch, and the floor server's batch of 64 (one request, one reply with
//! 64 descriptors) beside its one fetch, all from one client in this
//! process, alternating in rounds so a slow patch of the machine hits all
//! alike.
//!
//! Every asset is 4 KiB of its own content (64 memfds, no de-duplication),
//! and each is verified and mapped exactly as a single fetch would.

use crate::floor::FloorClient;
use crate::harness::Bench;
use crate::report::{col, num, text, Kind, Section, Target};
use crate::stats::{ratio, Summary};
use memseal::{Asset, MapOptions, Selector};
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Assets in the batch, as in the target.
pub const BATCH: usize = 64;

/// Size of each batched asset.
pub const ASSET_SIZE: usize = 4 << 10;

/// Rounds the series are split into, alternating methods.
const ROUNDS: usize = 4;

/// A batch of [`BATCH`] may take at most this multiple of one fetch.
const TARGET_RATIO: f64 = 3.0;

/// A batch may take at most this multiple of the floor's batch, as a
/// single fetch may of the floor's single fetch.
const FLOOR_RATIO: f64 = 1.2;

/// Run the batch table.
pub fn run(bench: &Bench) -> io::Result<(Section, Vec<Target>)> {
    let (connections, limit) = connections_for_whole_batches()?;
    let daemon = crate::daemon::start_with(
        &bench.daemon_config,
        &bench.dir.path().join("batch"),
        None,
        &["--max-connections".to_owned(), connections.to_string()],
    )?;
    let mut client = memseal::Client::connect_to(daemon.socket()).map_err(io::Error::other)?;
    // The harness's daemon, of 1024 connections, where this machine's
    // limit makes it split a batch.
    let mut split = memseal::Client::connect_to(bench.daemon.socket()).map_err(io::Error::other)?;
    let split_size = batch_size(&split);
    let names: Vec<String> = (0..BATCH).map(|i| format!("batch/{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        let mut bytes = crate::data::content(ASSET_SIZE + 3 + i);
        bytes.truncate(ASSET_SIZE);
        for client in [&mut client, &mut split] {
            client
                .publish_bytes(name, &bytes)
                .map_err(io::Error::other)?;
        }
    }
    if batch_size(&client) < BATCH {
        return Err(io::Error::other(format!(
            "a daemon of {connections} connections still splits a batch of {BATCH}"
        )));
    }
    let items: Vec<(&str, Selector)> = names
        .iter()
        .map(|name| (name.as_str(), Selector::Latest))
        .collect();
    let options = MapOptions::default();
    // Descriptors of the 64 assets, kept to time the client's own part of
    // a batch (verify, map, unmap, close) without the daemon.
    let held: Vec<OwnedFd> = client
        .fetch_many(&items, &options)
        .map_err(io::Error::other)?
        .into_iter()
        .map(|asset| asset.map(Asset::into_fd).map_err(io::Error::other))
        .collect::<io::Result<_>>()?;

    let per_round = (bench.effort.fetches / 10 / ROUNDS).max(5);
    let mut one = Vec::new();
    let mut singles = Vec::new();
    let mut batched = Vec::new();
    let mut split_batched = Vec::new();
    let mut local = Vec::new();
    let mut floor_one = Vec::new();
    let mut floor_batched = Vec::new();
    let mut floor = FloorClient::connect(&bench.floor_socket)?;
    let first = bench.floor_batch_first;
    let fetch_one = |client: &mut memseal::Client| -> io::Result<()> {
        client.fetch(&names[0]).map(drop).map_err(io::Error::other)
    };
    for _ in 0..per_round {
        fetch_one(&mut client)?;
        drop(floor.fetch_many(first, BATCH)?);
    }
    for _ in 0..ROUNDS {
        for _ in 0..per_round {
            one.push(timed(|| fetch_one(&mut client))?);
        }
        for _ in 0..per_round {
            singles.push(timed(|| {
                for name in &names {
                    client.fetch(name).map(drop).map_err(io::Error::other)?;
                }
                Ok(())
            })?);
        }
        for _ in 0..per_round {
            batched.push(timed(|| fetch_all(&mut client, &items, &options))?);
        }
        if split_size < BATCH {
            for _ in 0..per_round {
                split_batched.push(timed(|| fetch_all(&mut split, &items, &options))?);
            }
        }
        for _ in 0..per_round {
            local.push(timed(|| {
                for fd in &held {
                    let copy = fd.try_clone()?;
                    memseal::verify_with(copy, Some(ASSET_SIZE as u64), &options)
                        .map_err(io::Error::other)?;
                }
                Ok(())
            })?);
        }
        for _ in 0..per_round {
            floor_one.push(timed(|| floor.fetch(first).map(drop))?);
        }
        for _ in 0..per_round {
            floor_batched.push(timed(|| floor.fetch_many(first, BATCH).map(drop))?);
        }
    }
    drop(held);
    for name in &names {
        split.remove(name, None).map_err(io::Error::other)?;
    }
    drop(client);
    daemon.stop();
    let one = Summary::sequential(&mut one);
    let singles = Summary::sequential(&mut singles);
    let batched = Summary::sequential(&mut batched);
    let split_batched =
        (!split_batched.is_empty()).then(|| Summary::sequential(&mut split_batched));
    let local = Summary::sequential(&mut local);
    let floor_one = Summary::sequential(&mut floor_one);
    let floor_batched = Summary::sequential(&mut floor_batched);

    let split_label = format!("fetch_many of 64, {split_size} per reply");
    let mut section = Section::new(
        "Many assets in one round trip",
        &format!(
            "One client process fetches 64 distinct 4 KiB assets: in one fetch_many call (one \
             request, one reply carrying the 64 descriptors, each verified and mapped as a \
             single fetch is), as 64 single fetches, and a single fetch of one of them for \
             scale, from a daemon of --max-connections {connections}. A daemon lets each \
             connection leave unread at most its share of half the descriptor limit (and no \
             more than 64 replies); under this machine's limit of {limit} (the shipped \
             unit's is {UNIT_LIMIT}) that share is 64 only up to {connections} connections. \
             The row of {split_size} per reply is the harness's daemon of 1024 connections, \
             whose client splits the batch (absent where the limit allows 64). Each \
             operation's assets are unmapped and closed before the next. The \
         client's part is its share of a batch alone, without the daemon: dup, \
         verify (F_GET_SEALS, fstat), map, unmap and close each of 64 descriptors it \
         already holds. The floor rows are the floor server's (see the fetch table): one \
         fetch, and one request answered by one reply carrying 64 descriptors, each \
         checked and mapped as the floor's single fetch is. The last column divides by \
         the one fetch of the same server. All alternate in rounds; medians of the \
         whole operation. No pinning."
        ),
        vec![
            col("operation", Kind::Text),
            col("assets", Kind::Number),
            col("p50 us", Kind::Number),
            col("p99 us", Kind::Number),
            col("p50 per asset us", Kind::Number),
            col("p50 / one fetch p50", Kind::Ratio),
        ],
    );
    for (label, assets, summary, unit) in [
        ("one fetch", 1, &one, &one),
        ("64 single fetches", BATCH, &singles, &one),
        ("fetch_many of 64", BATCH, &batched, &one),
    ] {
        section.push(row(label, assets, summary, unit));
    }
    if let Some(summary) = &split_batched {
        section.push(row(&split_label, BATCH, summary, &one));
    }
    for (label, assets, summary, unit) in [
        ("client's part of 64, no daemon", BATCH, &local, &one),
        ("floor: one fetch", 1, &floor_one, &floor_one),
        ("floor: 64 in one reply", BATCH, &floor_batched, &floor_one),
    ] {
        section.push(row(label, assets, summary, unit));
    }
    let r = ratio(batched.p50_us, one.p50_us).unwrap_or(f64::INFINITY);
    let target = Target {
        what: format!("fetch_many of {BATCH} assets vs one fetch"),
        goal: format!("<= {TARGET_RATIO}x"),
        measured: format!(
            "{r:.2}x ({:.1} us vs {:.1} us; 64 single fetches {:.1} us; the client's \
             per-descriptor work alone {:.1} us = {:.2}x one fetch; the floor's 64 in one \
             reply {:.1} us = {:.2}x its one fetch, and memseal's batch {:.2}x the floor's)",
            batched.p50_us,
            one.p50_us,
            singles.p50_us,
            local.p50_us,
            local.p50_us / one.p50_us,
            floor_batched.p50_us,
            floor_batched.p50_us / floor_one.p50_us,
            batched.p50_us / floor_batched.p50_us
        ),
        met: r <= TARGET_RATIO,
    };
    let over_floor = ratio(batched.p50_us, floor_batched.p50_us).unwrap_or(f64::INFINITY);
    let against_floor = Target {
        what: format!("fetch_many of {BATCH} assets vs the floor's {BATCH} in one reply"),
        goal: format!("<= {FLOOR_RATIO}x"),
        measured: format!(
            "{over_floor:.2}x ({:.1} us vs {:.1} us)",
            batched.p50_us, floor_batched.p50_us
        ),
        met: over_floor <= FLOOR_RATIO,
    };
    Ok((section, vec![target, against_floor]))
}

/// The shipped unit's descriptor limit, for the table's text.
const UNIT_LIMIT: &str = "262,144";

/// The most connections a daemon may take and still answer a batch of
/// [`BATCH`] in one reply under this process's descriptor limit (which
/// the daemon inherits and raises to its hard value), and that limit.
fn connections_for_whole_batches() -> io::Result<(u64, u64)> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let limit = limit.maximum.or(limit.current).unwrap_or(u64::MAX);
    let connections = (limit / 2 / BATCH as u64).clamp(1, 1024);
    Ok((connections, limit))
}

/// Items per batch request on `client`'s connection.
fn batch_size(client: &memseal::Client) -> usize {
    client
        .session_limits()
        .map_or(1, |session| session.max_fetch_many as usize)
}

/// One row of the table.
fn row(label: &str, assets: usize, summary: &Summary, unit: &Summary) -> Vec<serde_json::Value> {
    vec![
        text(label),
        num(assets as f64),
        num(summary.p50_us),
        num(summary.p99_us),
        num(summary.p50_us / assets as f64),
        num(ratio(summary.p50_us, unit.p50_us)),
    ]
}

/// One `fetch_many` of `items`, every item found.
fn fetch_all(
    client: &mut memseal::Client,
    items: &[(&str, Selector)],
    options: &MapOptions,
) -> io::Result<()> {
    let results = client
        .fetch_many(items, options)
        .map_err(io::Error::other)?;
    for result in results {
        result.map_err(io::Error::other)?;
    }
    Ok(())
}

/// How long `op` takes.
fn timed(op: impl FnOnce() -> io::Result<()>) -> io::Result<Duration> {
    let start = Instant::now();
    op()?;
    Ok(start.elapsed())
}
