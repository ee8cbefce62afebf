//! The private view: `fetch_private` and writes that copy only the pages
//! they touch, against a fetch followed by a full copy into a `Vec`.

use super::smaps;
use super::{publish, unpublish, Work, PREFIX};
use crate::data::{size_label, PAGE};
use crate::harness::Bench;
use crate::report::{col, num, text, Kind, Section};
use crate::stats::{ratio, Summary};
use memseal::{MapOptions, Selector};
use std::io;
use std::ops::Deref;
use std::time::{Duration, Instant};

/// The sparse-writer rows write to one page in this many.
const SPARSE_STRIDE: usize = 64;

/// The ways of getting a view of the asset that this process may change.
#[derive(Debug, Clone, Copy)]
enum Method {
    /// The read-only fetch, one byte of every page read: the cost of the
    /// page faults alone, for reference.
    ReadOnly,
    /// `fetch_private`, one byte of every `stride`-th page written.
    Private { stride: usize },
    /// `fetch`, the bytes copied into a `Vec`, one byte of every page of
    /// the copy written.
    Copy,
}

impl Method {
    const ALL: [Method; 4] = [
        Method::ReadOnly,
        Method::Private { stride: 1 },
        Method::Private {
            stride: SPARSE_STRIDE,
        },
        Method::Copy,
    ];

    fn label(self) -> String {
        match self {
            Method::ReadOnly => "fetch + read a byte of every page (no copy)".to_owned(),
            Method::Private { stride: 1 } => {
                "fetch_private + write a byte of every page".to_owned()
            }
            Method::Private { stride } => {
                format!("fetch_private + write a byte of 1 page in {stride}")
            }
            Method::Copy => "fetch + copy into a Vec + write a byte of every page".to_owned(),
        }
    }

    /// Get the view, make the changes and drop it: the time this took,
    /// and, if `measure_memory`, how much memory the view held private to
    /// this process just before the drop.
    fn run(
        self,
        client: &mut memseal::Client,
        name: &str,
        measure_memory: bool,
    ) -> io::Result<(Duration, Option<u64>)> {
        let start = Instant::now();
        match self {
            Method::ReadOnly => {
                let asset = client.fetch(name).map_err(io::Error::other)?;
                crate::data::touch_pages(&asset);
                finish(asset, start, measure_memory)
            }
            Method::Private { stride } => {
                let mut view = client
                    .fetch_private(name, Selector::Latest, &MapOptions::new())
                    .map_err(io::Error::other)?;
                write_pages(&mut view, stride);
                finish(view, start, measure_memory)
            }
            Method::Copy => {
                let asset = client.fetch(name).map_err(io::Error::other)?;
                let mut copy = asset.to_vec();
                drop(asset);
                write_pages(&mut copy, 1);
                finish(copy, start, measure_memory)
            }
        }
    }
}

/// Drop `view`, which was begun at `start`, reading its private memory
/// first if asked. Reading smaps takes milliseconds and is no part of the
/// work, so its time is left out.
fn finish(
    view: impl Deref<Target = [u8]>,
    start: Instant,
    measure_memory: bool,
) -> io::Result<(Duration, Option<u64>)> {
    let before_reading = start.elapsed();
    let private_kib = if measure_memory {
        Some(smaps::usage_at(view.as_ptr())?.anonymous_kib)
    } else {
        None
    };
    let dropping = Instant::now();
    drop(view);
    Ok((before_reading + dropping.elapsed(), private_kib))
}

/// Run the private-view table.
pub fn run(_bench: &Bench, client: &mut memseal::Client, work: &Work) -> io::Result<Section> {
    let size = work.private_size;
    let name = format!("{PREFIX}private");
    publish(client, &name, 300, size)?;
    // The untimed first run of each also measures its private memory,
    // which is the same every time.
    let mut private_kib = Vec::new();
    for method in Method::ALL {
        let (_, kib) = method.run(client, &name, true)?;
        private_kib.push(kib.unwrap_or(0));
    }
    let mut times: Vec<Vec<Duration>> = Method::ALL.iter().map(|_| Vec::new()).collect();
    for _ in 0..work.private_runs {
        for (method, times) in Method::ALL.iter().zip(&mut times) {
            times.push(method.run(client, &name, false)?.0);
        }
    }
    unpublish(client, &name)?;

    let mut section = Section::new(
        &format!("Private copy-on-write view of a {} asset", size_label(size)),
        &format!(
            "Getting a view of the asset that this process may change. fetch_private maps \
             it MAP_PRIVATE and writable: the first write to a page copies that page alone. \
             The alternative fetches it read-only and copies all of it into a Vec. Each \
             run is timed from the fetch call to the drop of the view (unmap, or free of \
             the Vec), {} runs per row, the rows alternating; no pinning. private MiB is \
             the Anonymous memory of the view in /proc/self/smaps just before the drop: \
             the pages this process holds for itself.",
            work.private_runs
        ),
        vec![
            col("method", Kind::Text),
            col("p50 ms", Kind::Number),
            col("p99 ms", Kind::Number),
            col("private MiB", Kind::Number),
            col("time / full copy (p50)", Kind::Ratio),
        ],
    );
    let summaries: Vec<Summary> = times.iter_mut().map(|t| Summary::sequential(t)).collect();
    let copy_index = Method::ALL.len() - 1;
    let copy_p50 = summaries[copy_index].p50_us;
    for (index, method) in Method::ALL.iter().enumerate() {
        section.push(vec![
            text(method.label()),
            num(summaries[index].p50_us / 1000.0),
            num(summaries[index].p99_us / 1000.0),
            num(private_kib[index] as f64 / 1024.0),
            num(ratio(summaries[index].p50_us, copy_p50)),
        ]);
    }
    Ok(section)
}

/// Change one byte of every `stride`-th page.
fn write_pages(bytes: &mut [u8], stride: usize) {
    for page in bytes.chunks_mut(PAGE).step_by(stride) {
        page[0] = page[0].wrapping_add(1);
    }
    std::hint::black_box(bytes);
}
