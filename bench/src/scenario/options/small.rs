//! Small assets: map them, or copy them with `pread`
//! (`MapOptions::copy_below`)? Both are timed from the fetch call through
//! reading every byte to the drop, around the library's `COPY_BREAK_EVEN`.

use super::{publish, sum_words, unpublish, Work, PREFIX};
use crate::affinity::Placement;
use crate::data::size_label;
use crate::harness::Bench;
use crate::report::{col, num, text, Kind, Section};
use crate::stats::{ratio, Summary};
use memseal::{MapOptions, Selector, COPY_BREAK_EVEN};
use std::io;
use std::time::{Duration, Instant};

/// The sizes compared.
const SIZES: [usize; 5] = [4 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20];

/// Rounds the series are split into, alternating the two methods.
const ROUNDS: usize = 4;

/// Run the small-asset table.
pub fn run(bench: &Bench, client: &mut memseal::Client, work: &Work) -> io::Result<Section> {
    let mapped = MapOptions::new();
    // Larger than every size here: always copies.
    let copied = MapOptions::new().copy_below(u64::MAX);
    bench.place(Placement::SameCpu)?;
    let mut results = Vec::new();
    for (index, &size) in SIZES.iter().enumerate() {
        let name = format!("{PREFIX}small-{size}");
        publish(client, &name, 100 + index as u64, size)?;
        let mut map_times = Vec::new();
        let mut copy_times = Vec::new();
        for options in [&mapped, &copied] {
            for _ in 0..work.warmup {
                read_once(client, &name, options)?;
            }
        }
        let per_round = (work.fetches / ROUNDS).max(1);
        for _ in 0..ROUNDS {
            for _ in 0..per_round {
                map_times.push(read_once(client, &name, &mapped)?);
            }
            for _ in 0..per_round {
                copy_times.push(read_once(client, &name, &copied)?);
            }
        }
        unpublish(client, &name)?;
        results.push((
            size,
            Summary::sequential(&mut map_times),
            Summary::sequential(&mut copy_times),
        ));
    }
    bench.place(Placement::Default)?;

    let verdict = verdict(&results);

    let mut section = Section::new(
        "Small assets: map or copy",
        &format!(
            "One connected client fetches the asset, reads every byte (as u64 words) and \
             drops it, timed from the fetch call to the drop. map: fetch_with_options with \
             the defaults (map, fault pages in as they are read, unmap). copy: \
             copy_below(u64::MAX) (pread into a new Vec after the same seal check, free). \
             Both pay the same round trip to the daemon. {} fetches per size and method in \
             {ROUNDS} alternating rounds; the client and the daemon pinned to CPU 0. {verdict}",
            per_round_total(work)
        ),
        vec![
            col("size", Kind::Text),
            col("map p50 us", Kind::Number),
            col("map p99 us", Kind::Number),
            col("copy p50 us", Kind::Number),
            col("copy p99 us", Kind::Number),
            col("copy / map (p50)", Kind::Ratio),
            col("faster", Kind::Text),
        ],
    );
    for (size, map, copy) in &results {
        section.push(vec![
            text(size_label(*size)),
            num(map.p50_us),
            num(map.p99_us),
            num(copy.p50_us),
            num(copy.p99_us),
            num(ratio(copy.p50_us, map.p50_us)),
            text(if copy_wins(map, copy) { "copy" } else { "map" }),
        ]);
    }
    Ok(section)
}

/// True when copying beat mapping (p50) at this size.
fn copy_wins(map: &Summary, copy: &Summary) -> bool {
    copy.p50_us < map.p50_us
}

/// Where this run puts the break-even, and whether `COPY_BREAK_EVEN`
/// agrees: it does when copying was faster at every size below it, so
/// the library never copies where mapping would have been faster.
fn verdict(results: &[(usize, Summary, Summary)]) -> String {
    let constant = COPY_BREAK_EVEN as usize;
    let crossing = results
        .iter()
        .find(|(_, map, copy)| !copy_wins(map, copy))
        .map(|(size, ..)| *size);
    let measured = match crossing {
        Some(size) => format!(
            "In this run copying was faster below {}, mapping at {}",
            size_label(size),
            size_label(size)
        ),
        None => "In this run copying was faster at every size measured".to_owned(),
    };
    let agrees = results
        .iter()
        .filter(|(size, ..)| *size < constant)
        .all(|(_, map, copy)| copy_wins(map, copy));
    let judgement = match (agrees, crossing) {
        (false, _) => "does not agree: mapping was faster at a size it copies".to_owned(),
        (true, Some(size)) if size <= constant => "agrees".to_owned(),
        (true, Some(size)) => format!(
            "agrees, conservatively: copying was also faster from it up to the crossing \
             at {}, sizes the library maps, which lets every reader share the pages \
             instead of holding a private copy",
            size_label(size)
        ),
        (true, None) => "is on the safe side: copying was faster at every size".to_owned(),
    };
    format!(
        "{measured}. COPY_BREAK_EVEN ({}, copied below, mapped from there up) {judgement}.",
        size_label(constant)
    )
}

/// Timed fetches per size and method.
fn per_round_total(work: &Work) -> usize {
    (work.fetches / ROUNDS).max(1) * ROUNDS
}

/// Fetch `name` as `options` say, read every byte, drop it: the time.
fn read_once(
    client: &mut memseal::Client,
    name: &str,
    options: &MapOptions,
) -> io::Result<Duration> {
    let start = Instant::now();
    let asset = client
        .fetch_with_options(name, Selector::Latest, options)
        .map_err(io::Error::other)?;
    sum_words(&asset);
    drop(asset);
    Ok(start.elapsed())
}
