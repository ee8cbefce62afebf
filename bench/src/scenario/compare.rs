//! Measurement 2, against what people do today: GET from Redis, and
//! read() of a file in tmpfs into a buffer.
//!
//! These measure different things, and the table says so: a memseal fetch
//! maps the asset without touching a page (the bytes are read later, at
//! memory speed, by whoever needs them), while a Redis GET and a read()
//! copy every byte before they return. So the table also shows memseal's
//! "fetch + touch every page", the fairest like-for-like row.

use crate::affinity::Placement;
use crate::data::size_label;
use crate::harness::Bench;
use crate::report::{col, num, text, Kind, Section, Target};
use crate::stats::{ratio, Summary};
use crate::workload::{self, Method};
use std::io;

/// (size, least Redis p50 / memseal fetch p50) that the issue asks for.
const TARGETS: [(usize, f64); 2] = [(1 << 20, 3.0), (64 << 20, 500.0)];

/// Run the comparison table.
pub fn run(bench: &Bench) -> io::Result<(Section, Vec<Target>)> {
    let mut section = Section::new(
        "Fetch against Redis GET and read()",
        "memseal fetch: as in the fetch table (maps, touches nothing). fetch + touch: \
         the same, then one byte of every 4 KiB page is read, which faults every page \
         into the client. Redis GET: a real redis-server on a Unix socket, a minimal \
         Rust RESP client, the value copied into a new Vec. read(): open the tmpfs file \
         and read() it whole into a buffer allocated once (the cheapest way to use \
         read()). Ratios are p50 over p50, measured in the same run with the same \
         placement; above 1 means memseal is faster.",
        vec![
            col("size", Kind::Text),
            col("placement", Kind::Text),
            col("fetch p50 us", Kind::Number),
            col("fetch + touch p50 us", Kind::Number),
            col("Redis GET p50 us", Kind::Number),
            col("Redis GET p99 us", Kind::Number),
            col("read() p50 us", Kind::Number),
            col("Redis / fetch", Kind::Ratio),
            col("Redis / (fetch + touch)", Kind::Ratio),
            col("read() / fetch", Kind::Ratio),
            col("read() / (fetch + touch)", Kind::Ratio),
        ],
    );
    let mut targets = Vec::new();
    let effort = &bench.effort;
    for placement in Placement::ALL {
        bench.place(placement)?;
        for &size in &bench.sizes {
            let copies = effort.copies(size);
            let warmup = (copies / 20).clamp(1, 50);
            let fetches = effort.fetches.min(5_000);
            let fetch = measure(bench, Method::Memseal, size, effort.warmup, fetches, false)?
                .expect("memseal is always measured");
            let touch = measure(bench, Method::Memseal, size, warmup, copies, true)?
                .expect("memseal is always measured");
            let redis = measure(bench, Method::Redis, size, warmup, copies, false)?;
            let read = measure(bench, Method::Read, size, warmup, copies, false)?
                .expect("read is always measured");
            let redis_p50 = redis.map(|r| r.p50_us);
            let over = |x: Option<f64>, y: f64| x.and_then(|x| ratio(x, y));
            section.push(vec![
                text(size_label(size)),
                text(placement.to_string()),
                num(fetch.p50_us),
                num(touch.p50_us),
                num(redis_p50),
                num(redis.map(|r| r.p99_us)),
                num(read.p50_us),
                num(over(redis_p50, fetch.p50_us)),
                num(over(redis_p50, touch.p50_us)),
                num(ratio(read.p50_us, fetch.p50_us)),
                num(ratio(read.p50_us, touch.p50_us)),
            ]);
            for (target_size, least) in TARGETS {
                if target_size != size {
                    continue;
                }
                let Some(redis_p50) = redis_p50 else { continue };
                let r = redis_p50 / fetch.p50_us;
                targets.push(Target {
                    what: format!("fetch vs Redis GET, {}, {placement}", size_label(size)),
                    goal: format!(">= {least}x faster"),
                    measured: format!(
                        "{r:.0}x ({:.1} us vs {:.0} us; fetch + touch {:.0} us, {:.1}x)",
                        fetch.p50_us,
                        redis_p50,
                        touch.p50_us,
                        redis_p50 / touch.p50_us
                    ),
                    met: r >= least,
                });
            }
        }
    }
    Ok((section, targets))
}

/// Time `method` on the asset of `size` in this process; `None` when the
/// method is not available (no Redis).
fn measure(
    bench: &Bench,
    method: Method,
    size: usize,
    warmup: usize,
    iterations: usize,
    touch: bool,
) -> io::Result<Option<Summary>> {
    let Some(spec) = bench.spec(method, size) else {
        return Ok(None);
    };
    let mut fetcher = workload::open(&spec)?;
    let mut latencies = workload::time_fetches(fetcher.as_mut(), warmup, iterations, touch)?;
    Ok(Some(Summary::sequential(&mut latencies)))
}
