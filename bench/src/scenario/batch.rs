//! Measurement 7, many assets in one round trip: `fetch_many` of 64
//! assets beside 64 single fetches of the same assets and beside one
//! fetch, all from one client in this process, alternating in rounds so a
//! slow patch of the machine hits all three alike.
//!
//! Every asset is 4 KiB of its own content (64 memfds, no de-duplication),
//! and each is verified and mapped exactly as a single fetch would.

use crate::harness::Bench;
use crate::report::{col, num, text, Kind, Section, Target};
use crate::stats::{ratio, Summary};
use memseal::{Asset, MapOptions, Selector};
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Assets in the batch, as in the target.
const BATCH: usize = 64;

/// Size of each batched asset.
const ASSET_SIZE: usize = 4 << 10;

/// Rounds the series are split into, alternating methods.
const ROUNDS: usize = 4;

/// A batch of [`BATCH`] may take at most this multiple of one fetch.
const TARGET_RATIO: f64 = 3.0;

/// Run the batch table.
pub fn run(bench: &Bench) -> io::Result<(Section, Vec<Target>)> {
    let mut client =
        memseal::Client::connect_to(bench.daemon.socket()).map_err(io::Error::other)?;
    let names: Vec<String> = (0..BATCH).map(|i| format!("batch/{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        let mut bytes = crate::data::content(ASSET_SIZE + 3 + i);
        bytes.truncate(ASSET_SIZE);
        client
            .publish_bytes(name, &bytes)
            .map_err(io::Error::other)?;
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
    let mut local = Vec::new();
    let fetch_one = |client: &mut memseal::Client| -> io::Result<()> {
        client.fetch(&names[0]).map(drop).map_err(io::Error::other)
    };
    for _ in 0..per_round {
        fetch_one(&mut client)?;
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
            batched.push(timed(|| {
                let results = client
                    .fetch_many(&items, &options)
                    .map_err(io::Error::other)?;
                for result in results {
                    result.map_err(io::Error::other)?;
                }
                Ok(())
            })?);
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
    }
    drop(held);
    for name in &names {
        client.remove(name, None).map_err(io::Error::other)?;
    }
    let one = Summary::sequential(&mut one);
    let singles = Summary::sequential(&mut singles);
    let batched = Summary::sequential(&mut batched);
    let local = Summary::sequential(&mut local);

    let mut section = Section::new(
        "Many assets in one round trip",
        "One client process fetches 64 distinct 4 KiB assets: in one fetch_many call (one \
         request, one reply carrying the 64 descriptors, each verified and mapped as a \
         single fetch is), as 64 single fetches, and a single fetch of one of them for \
         scale. Each operation's assets are unmapped and closed before the next. The \
         last row is the client's share of a batch alone, without the daemon: dup, \
         verify (F_GET_SEALS, fstat), map, unmap and close each of 64 descriptors it \
         already holds. The four alternate in rounds; medians of the whole operation. \
         No pinning.",
        vec![
            col("operation", Kind::Text),
            col("assets", Kind::Number),
            col("p50 us", Kind::Number),
            col("p99 us", Kind::Number),
            col("p50 per asset us", Kind::Number),
            col("p50 / one fetch p50", Kind::Ratio),
        ],
    );
    for (label, assets, summary) in [
        ("one fetch", 1, &one),
        ("64 single fetches", BATCH, &singles),
        ("fetch_many of 64", BATCH, &batched),
        ("client's part of 64, no daemon", BATCH, &local),
    ] {
        section.push(vec![
            text(label),
            num(assets as f64),
            num(summary.p50_us),
            num(summary.p99_us),
            num(summary.p50_us / assets as f64),
            num(ratio(summary.p50_us, one.p50_us)),
        ]);
    }
    let r = ratio(batched.p50_us, one.p50_us).unwrap_or(f64::INFINITY);
    let target = Target {
        what: format!("fetch_many of {BATCH} assets vs one fetch"),
        goal: format!("<= {TARGET_RATIO}x"),
        measured: format!(
            "{r:.2}x ({:.1} us vs {:.1} us; 64 single fetches {:.1} us; the client's \
             per-descriptor work alone {:.1} us = {:.2}x one fetch)",
            batched.p50_us,
            one.p50_us,
            singles.p50_us,
            local.p50_us,
            local.p50_us / one.p50_us
        ),
        met: r <= TARGET_RATIO,
    };
    Ok((section, vec![target]))
}

/// How long `op` takes.
fn timed(op: impl FnOnce() -> io::Result<()>) -> io::Result<Duration> {
    let start = Instant::now();
    op()?;
    Ok(start.elapsed())
}
