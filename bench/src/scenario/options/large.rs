//! The large asset: random loads with and without huge pages, and a
//! sequential scan with and without populate and access advice.
//!
//! Two copies of the asset are published with different bytes (equal
//! bytes would be merged into one memfd): the first as the host is set,
//! which on most hosts means 4 KiB pages, the second after huge pages were
//! made available for shared memory, so the daemon fills it in huge pages.
//! Whether a mapping really got huge pages is read from
//! `/proc/self/smaps` (`ShmemPmdMapped`), not assumed.

use super::huge_pages::HostHugePages;
use super::smaps::{self, MappingUsage};
use super::{publish, sum_words, unpublish, xorshift, Work, PREFIX};
use crate::affinity::Placement;
use crate::data::{size_label, touch_pages};
use crate::harness::Bench;
use crate::report::{col, num, text, Kind, Section};
use crate::stats::{ratio, Summary};
use memseal::{Access, Asset, MapOptions, Selector, ShmemHugePages};
use serde_json::Value;
use std::io;
use std::time::{Duration, Instant};

/// The alignment, and the size, of a PMD-mapped huge page.
const HUGE_PAGE: usize = 2 << 20;

/// One published copy of the large asset.
struct LargeAsset {
    name: String,
    /// The host's `shmem_enabled` setting when the daemon filled it.
    filled_with: String,
}

impl LargeAsset {
    fn publish(
        client: &mut memseal::Client,
        which: &str,
        seed: u64,
        size: usize,
    ) -> io::Result<Self> {
        let filled_with =
            ShmemHugePages::read().map_or_else(|_| "unknown".to_owned(), |setting| setting.setting);
        let name = format!("{PREFIX}large-{which}");
        eprintln!(
            "  publishing the {} asset ({name}, shmem_enabled={filled_with})",
            size_label(size)
        );
        publish(client, &name, seed, size)?;
        Ok(LargeAsset { name, filled_with })
    }
}

/// Run the random-load and the scan tables.
pub fn run(bench: &Bench, client: &mut memseal::Client, work: &Work) -> io::Result<Vec<Section>> {
    let size = work.large_size;
    // As deployed: the scheduler places the harness and the daemon.
    bench.place(Placement::Default)?;
    let small_pages = LargeAsset::publish(client, "4k", 1, size)?;
    // The host's setting matters only while the daemon fills the memfd:
    // pages allocated huge stay huge, and a mapping of them gets PMD
    // entries whatever the setting says later (the smaps column checks
    // it). So the setting is borrowed for that publish alone and given
    // back before anything is measured.
    let (huge_pages, huge_page_note) = {
        let host = HostHugePages::borrow();
        let huge_pages = if host.available() {
            Some(LargeAsset::publish(client, "huge", 2, size)?)
        } else {
            None
        };
        (huge_pages, host.to_string())
    };
    let huge_pages = huge_pages.as_ref();
    let random = random_loads(client, work, &small_pages, huge_pages, &huge_page_note)?;
    let scan = scans(client, work, &small_pages, huge_pages, &huge_page_note)?;
    unpublish(client, &small_pages.name)?;
    if let Some(huge) = huge_pages {
        unpublish(client, &huge.name)?;
    }
    Ok(vec![random, scan])
}

/// One way of fetching the large asset for the random loads.
struct LoadVariant<'a> {
    asset: &'a LargeAsset,
    options: MapOptions,
    mapping: &'static str,
}

/// The random-load table.
fn random_loads(
    client: &mut memseal::Client,
    work: &Work,
    small_pages: &LargeAsset,
    huge_pages: Option<&LargeAsset>,
    host: &str,
) -> io::Result<Section> {
    let size = work.large_size;
    let loads = work.loads_per_batch;
    let populated = MapOptions::new().populate(true);
    let mut variants = vec![LoadVariant {
        asset: small_pages,
        options: populated.clone(),
        mapping: "populate(true)",
    }];
    if let Some(huge) = huge_pages {
        variants.push(LoadVariant {
            asset: huge,
            options: populated.clone(),
            mapping: "populate(true)",
        });
        variants.push(LoadVariant {
            asset: huge,
            options: populated.clone().huge_pages(true),
            mapping: "populate(true), huge_pages(true)",
        });
    }

    // Fetch every variant first and keep them all mapped, so the timed
    // batches can alternate between them: a slow patch of the machine then
    // hits every row alike.
    let mut fetched = Vec::new();
    for variant in &variants {
        let start = Instant::now();
        let asset = client
            .fetch_with_options(&variant.asset.name, Selector::Latest, &variant.options)
            .map_err(io::Error::other)?;
        let fetch_time = start.elapsed();
        // A seed of its own per row: two rows that read the same memfd
        // must not walk the same addresses, or the second would find the
        // first one's cache lines still warm.
        let mut state = 0x5eed_0000_0000_0001 + fetched.len() as u64 * 0x1_0000_0001;
        dependent_loads(&asset, loads, &mut state);
        fetched.push((asset, fetch_time, state, Vec::new()));
    }
    for _ in 0..work.load_batches {
        for (asset, _, state, batches) in &mut fetched {
            let start = Instant::now();
            dependent_loads(asset, loads, state);
            batches.push(start.elapsed());
        }
    }

    let mut section = Section::new(
        &format!("Random 8-byte loads over a {} asset", size_label(size)),
        &format!(
            "Each load reads 8 bytes at a pseudo-random offset that depends on the \
             previous load's value, so loads cannot overlap and each pays the full \
             latency of a TLB miss and a cache miss. The asset is fetched with populate \
             (so no row pays page faults), one batch of {loads} loads warms it up, then \
             {} batches per row alternate between the rows; ns/load is a batch's time \
             over its loads, p50 and p99 over the batches. \"memfd filled with\" is the \
             host's shmem_enabled when the daemon filled the memfd; \"huge pages \
             mapped\" is ShmemPmdMapped of the mapping in /proc/self/smaps after the \
             loads. fetch + populate is the fetch alone, pages mapped up front. No \
             pinning. Huge pages: {host}.",
            work.load_batches
        ),
        vec![
            col("memfd filled with", Kind::Text),
            col("fetched with", Kind::Text),
            col("huge pages mapped", Kind::Text),
            col("fetch + populate ms", Kind::Number),
            col("ns/load p50", Kind::Number),
            col("ns/load p99", Kind::Number),
            col("vs 4 KiB pages (p50)", Kind::Ratio),
        ],
    );
    let mut baseline_ns = None;
    for (variant, (asset, fetch_time, _, mut batches)) in variants.iter().zip(fetched) {
        let usage = smaps::usage_at(asset.as_ptr())?;
        let summary = Summary::sequential(&mut batches);
        let p50_ns = summary.p50_us * 1000.0 / loads as f64;
        let p99_ns = summary.p99_us * 1000.0 / loads as f64;
        let baseline = *baseline_ns.get_or_insert(p50_ns);
        section.push(vec![
            text(format!("shmem_enabled={}", variant.asset.filled_with)),
            text(variant.mapping),
            text(huge_pages_mapped(&asset, usage, &variant.asset.filled_with)),
            num(millis(fetch_time)),
            num(p50_ns),
            num(p99_ns),
            num(ratio(p50_ns, baseline)),
        ]);
    }
    if huge_pages.is_none() {
        section.push(skipped_row(host, 7));
    }
    Ok(section)
}

/// `loads` dependent 8-byte loads at pseudo-random word offsets of
/// `bytes`, continuing from `state`.
fn dependent_loads(bytes: &[u8], loads: usize, state: &mut u64) -> u64 {
    let words = (bytes.len() / 8) as u128;
    let mut x = *state;
    let mut sum = 0u64;
    for _ in 0..loads {
        x = xorshift(x);
        // Scale the random number into 0..words with a multiply, not a
        // division, which would cost more than the load's cache hit.
        let offset = ((u128::from(x) * words) >> 64) as usize * 8;
        let word = u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"));
        sum = sum.wrapping_add(word);
        // The next address depends on this load: no overlap. `| 1` keeps
        // xorshift away from its fixed point at zero.
        x = (x ^ word) | 1;
    }
    *state = x;
    std::hint::black_box(sum)
}

/// What the huge-pages column says for one mapping, with the reason when
/// there are none.
fn huge_pages_mapped(asset: &Asset, usage: MappingUsage, filled_with: &str) -> String {
    let mapped_mib = usage.shmem_pmd_mapped_kib / 1024;
    let size_mib = asset.len() / (1 << 20);
    if mapped_mib > 0 {
        return format!("yes ({mapped_mib} of {size_mib} MiB)");
    }
    let filled_small =
        ShmemHugePages::parse(&format!("[{filled_with}]")).is_some_and(|setting| !setting.usable());
    if filled_small {
        format!("no (memfd filled with shmem_enabled={filled_with})")
    } else if asset.as_ptr() as usize % HUGE_PAGE != 0 {
        "no (mapping not 2 MiB-aligned)".to_owned()
    } else {
        "no (aligned, but the kernel mapped 4 KiB pages)".to_owned()
    }
}

/// A row that says why the huge-page measurement did not run.
fn skipped_row(host: &str, width: usize) -> Vec<Value> {
    let mut row = vec![
        text("shmem_enabled=advise"),
        text("populate(true), huge_pages(true)"),
        text(format!("skipped ({host})")),
    ];
    row.resize(width, Value::Null);
    row
}

/// One way of fetching the large asset for the scans.
struct ScanVariant<'a> {
    asset: &'a LargeAsset,
    options: MapOptions,
    label: &'static str,
}

/// Timings of one scan variant.
#[derive(Default)]
struct ScanTimes {
    fetch: Vec<Duration>,
    page_scan: Vec<Duration>,
    full_read: Vec<Duration>,
}

/// The sequential-scan table.
fn scans(
    client: &mut memseal::Client,
    work: &Work,
    small_pages: &LargeAsset,
    huge_pages: Option<&LargeAsset>,
    host: &str,
) -> io::Result<Section> {
    let plain = MapOptions::new();
    let mut variants = vec![
        ScanVariant {
            asset: small_pages,
            options: plain.clone(),
            label: "fetch",
        },
        ScanVariant {
            asset: small_pages,
            options: plain.clone().populate(true),
            label: "populate(true)",
        },
        ScanVariant {
            asset: small_pages,
            options: plain.clone().access(Access::Sequential),
            label: "access(Sequential)",
        },
        ScanVariant {
            asset: small_pages,
            options: plain.clone().access(Access::WillNeed),
            label: "access(WillNeed)",
        },
    ];
    if let Some(huge) = huge_pages {
        variants.push(ScanVariant {
            asset: huge,
            options: plain.clone().huge_pages(true),
            label: "huge_pages(true)",
        });
    }

    let mut times: Vec<ScanTimes> = variants.iter().map(|_| ScanTimes::default()).collect();
    for _ in 0..work.scans {
        for (variant, times) in variants.iter().zip(&mut times) {
            // Each scan gets a fresh mapping, so each pays for its faults.
            let start = Instant::now();
            let asset = fetch(client, variant)?;
            times.fetch.push(start.elapsed());
            touch_pages(&asset);
            times.page_scan.push(start.elapsed());
            drop(asset);

            let start = Instant::now();
            let asset = fetch(client, variant)?;
            times.fetch.push(start.elapsed());
            sum_words(&asset);
            times.full_read.push(start.elapsed());
        }
    }

    let mut section = Section::new(
        &format!("Sequential scan of a {} asset", size_label(work.large_size)),
        &format!(
            "Each run fetches the asset afresh and reads it front to back, either one \
             byte of every 4 KiB page (page scan: the cost is the page faults) or every \
             byte as u64 words (full read: memory bandwidth as well). Times run from the \
             fetch call to the end of the scan; the unmap afterwards is not counted. \
             fetch ms is the fetch alone (populate moves the page-table work into it). \
             All rows but the last read the asset filled with shmem_enabled={}; the \
             huge-pages row reads the copy filled in huge pages. {} runs per row, the \
             rows alternating; max is the slowest run. No pinning. Huge pages: {host}.",
            small_pages.filled_with, work.scans
        ),
        vec![
            col("fetched with", Kind::Text),
            col("fetch ms p50", Kind::Number),
            col("fetch + page scan ms p50", Kind::Number),
            col("page scan max ms", Kind::Number),
            col("fetch + full read ms p50", Kind::Number),
            col("full read max ms", Kind::Number),
            col("page scan vs plain fetch", Kind::Ratio),
            col("full read vs plain fetch", Kind::Ratio),
        ],
    );
    let mut baseline = None;
    for (variant, mut times) in variants.iter().zip(times) {
        let fetch = Summary::sequential(&mut times.fetch);
        let page = Summary::sequential(&mut times.page_scan);
        let full = Summary::sequential(&mut times.full_read);
        let slowest = |series: &[Duration]| series.iter().max().copied().map(millis);
        let (page_base, full_base) = *baseline.get_or_insert((page.p50_us, full.p50_us));
        section.push(vec![
            text(variant.label),
            num(fetch.p50_us / 1000.0),
            num(page.p50_us / 1000.0),
            num(slowest(&times.page_scan)),
            num(full.p50_us / 1000.0),
            num(slowest(&times.full_read)),
            num(ratio(page.p50_us, page_base)),
            num(ratio(full.p50_us, full_base)),
        ]);
    }
    if huge_pages.is_none() {
        let mut row = vec![text(format!("huge_pages(true): skipped ({host})"))];
        row.resize(8, Value::Null);
        section.push(row);
    }
    Ok(section)
}

fn fetch(client: &mut memseal::Client, variant: &ScanVariant<'_>) -> io::Result<Asset> {
    client
        .fetch_with_options(&variant.asset.name, Selector::Latest, &variant.options)
        .map_err(io::Error::other)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
