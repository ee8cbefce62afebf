//! How a fetched asset is brought into memory: [`MapOptions`].
//!
//! By default a fetch maps the whole asset read-only and lets the kernel
//! fault pages in as they are first touched. That is the right choice for
//! most readers; these options exist for the others:
//!
//! - a reader that will touch everything anyway, and cannot afford page
//!   faults scattered over its hot path, asks to **populate** up front;
//! - a reader that knows its access pattern says so with [`Access`], which
//!   tunes read-ahead and reclaim (it matters most once pages have been
//!   swapped out, since the daemon keeps every asset in RAM);
//! - a reader that jumps around a large asset (a hash table, an index)
//!   asks for **huge pages**: one TLB entry then covers 2 MiB instead of
//!   4 KiB. They pay off only where the host lets shared memory use them
//!   (see [`ShmemHugePages`]);
//! - a reader of many small assets asks to **copy** them below a size:
//!   for a few KiB, a `pread` into a buffer is cheaper than setting up and
//!   tearing down a mapping ([`COPY_BREAK_EVEN`] says where the line lies).
//!
//! A private, writable copy-on-write view is not an option but a different
//! type, [`PrivateCopy`](crate::PrivateCopy), from
//! [`Client::fetch_private`](crate::Client::fetch_private).

use crate::map::{MapPlan, HUGE_PAGE_SIZE};
use rustix::mm::Advice;
use std::fmt;
use std::io;

/// The asset size below which copying with `pread` beat mapping, measured
/// for verifying a sealed memfd and then reading every cache line of it
/// once, on the machine memseal was developed on (2 vCPUs, kernel 6.18;
/// medians of 20,000 runs, round trip to the daemon excluded since both
/// pay it):
///
/// | size    | map, read, unmap | pread copy, read, free |
/// |---------|------------------|------------------------|
/// | 4 KiB   | 5.5 us           | 0.8 us                 |
/// | 64 KiB  | 9.8 us           | 6.6 us                 |
/// | 128 KiB | 20.9 us          | 14.8 us                |
/// | 256 KiB | 21.4 us          | 21.2 us                |
/// | 1 MiB   | 53 us            | 101 us                 |
///
/// Mapping costs a fixed few microseconds (`mmap`, a page fault per page
/// touched, `munmap` and the TLB flush that comes with it), while a copy
/// costs in proportion to the size. The lines cross near 256 KiB; below
/// 128 KiB the copy is clearly cheaper. Above it the mapping wins, and it
/// also shares the pages with every other reader instead of duplicating
/// them. Pass it to [`MapOptions::copy_below`] to take the faster path for
/// small assets.
pub const COPY_BREAK_EVEN: u64 = 128 * 1024;

/// How a reader will access an asset, passed to the kernel with `madvise`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Access {
    /// No advice: the kernel's default read-ahead.
    #[default]
    Normal,
    /// `MADV_RANDOM`: jumps around; read-ahead would be wasted.
    Random,
    /// `MADV_SEQUENTIAL`: front to back; read ahead aggressively, and
    /// pages already passed may be reclaimed first.
    Sequential,
    /// `MADV_WILLNEED`: all of it, soon; start bringing in whatever is not
    /// resident (swapped out) now, without waiting for it.
    WillNeed,
}

impl Access {
    fn advice(self) -> Option<Advice> {
        match self {
            Access::Normal => None,
            Access::Random => Some(Advice::Random),
            Access::Sequential => Some(Advice::Sequential),
            Access::WillNeed => Some(Advice::WillNeed),
        }
    }
}

/// How to bring a fetched asset into memory; the defaults map it read-only
/// and lazily, as [`Client::fetch`](crate::Client::fetch) does.
///
/// ```no_run
/// use memseal::{Access, MapOptions, Selector};
///
/// let mut client = memseal::Client::connect()?;
/// let options = MapOptions::new()
///     .populate(true)
///     .access(Access::Random)
///     .huge_pages(true);
/// let index = client.fetch_with_options("search/index.bin", Selector::Latest, &options)?;
/// # Ok::<(), memseal::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapOptions {
    populate: bool,
    access: Access,
    huge_pages: bool,
    copy_below: u64,
}

impl MapOptions {
    /// The defaults: map lazily, no advice, small pages, never copy.
    pub fn new() -> MapOptions {
        MapOptions::default()
    }

    /// Fault every page in before the fetch returns, so the first pass over
    /// the asset takes no page faults. Uses `MADV_POPULATE_READ`, or
    /// `MAP_POPULATE` on kernels before 5.14. The pages are the daemon's:
    /// this maps them, it does not copy them.
    pub fn populate(mut self, populate: bool) -> MapOptions {
        self.populate = populate;
        self
    }

    /// Tell the kernel how the asset will be read.
    pub fn access(mut self, access: Access) -> MapOptions {
        self.access = access;
        self
    }

    /// Map assets of 2 MiB and more at a 2 MiB-aligned address and mark
    /// the mapping `MADV_HUGEPAGE`, so that each 2 MiB the daemon's memfd
    /// holds in a huge page is mapped by a single page-table entry. Whether
    /// the memfd has huge pages at all is up to the host: see
    /// [`ShmemHugePages`]. Where it has none, this costs nothing and
    /// changes nothing.
    pub fn huge_pages(mut self, huge_pages: bool) -> MapOptions {
        self.huge_pages = huge_pages;
        self
    }

    /// Copy assets smaller than `bytes` into the heap with `pread` instead
    /// of mapping them; 0 (the default) always maps. The seals are checked
    /// either way. [`COPY_BREAK_EVEN`] is the measured break-even.
    pub fn copy_below(mut self, bytes: u64) -> MapOptions {
        self.copy_below = bytes;
        self
    }

    /// True when an asset of `size` bytes is to be copied rather than
    /// mapped.
    pub(crate) fn copies(&self, size: u64) -> bool {
        size < self.copy_below
    }

    /// What the mapping code needs to map `len` bytes.
    pub(crate) fn plan(&self, len: usize, writable: bool) -> MapPlan {
        MapPlan {
            writable,
            // Below one huge page there is nothing to align for.
            huge_pages: self.huge_pages && len >= HUGE_PAGE_SIZE,
            populate: self.populate,
            advice: self.access.advice(),
        }
    }
}

/// Where the kernel tells whether shared memory (memfds among it) may use
/// transparent huge pages.
pub const SHMEM_ENABLED_PATH: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// Whether this host lets memfds, and so memseal's assets, be backed by
/// transparent huge pages: the host's `shmem_enabled` setting.
///
/// The daemon fills its memfds so that they get huge pages wherever the
/// setting allows: with `always`, `within_size` and `force` the kernel
/// allocates them as the daemon writes; with `advise` the daemon asks for
/// them through a temporary mapping marked `MADV_HUGEPAGE`. With `never`
/// or `deny` there are none, and [`MapOptions::huge_pages`] cannot help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmemHugePages {
    /// The selected setting, like `advise` or `never`.
    pub setting: String,
}

impl ShmemHugePages {
    /// Read the host's setting.
    pub fn read() -> io::Result<ShmemHugePages> {
        let text = std::fs::read_to_string(SHMEM_ENABLED_PATH)?;
        ShmemHugePages::parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot tell the selected setting in {SHMEM_ENABLED_PATH}: {text:?}"),
            )
        })
    }

    /// Pick the selected setting, the one in brackets, out of the file's
    /// text (`always within_size advise [never] deny force`).
    pub fn parse(text: &str) -> Option<ShmemHugePages> {
        let start = text.find('[')? + 1;
        let end = start + text[start..].find(']')?;
        Some(ShmemHugePages {
            setting: text[start..end].to_owned(),
        })
    }

    /// True when the daemon's large memfds can be backed by huge pages.
    pub fn usable(&self) -> bool {
        matches!(
            self.setting.as_str(),
            "always" | "within_size" | "advise" | "force"
        )
    }
}

impl fmt::Display for ShmemHugePages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.usable() {
            write!(f, "available (shmem_enabled={})", self.setting)
        } else {
            write!(f, "unavailable (shmem_enabled={})", self.setting)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bracketed_setting_is_the_selected_one() {
        let never =
            ShmemHugePages::parse("always within_size advise [never] deny force\n").unwrap();
        assert_eq!(never.setting, "never");
        assert!(!never.usable());
        assert_eq!(never.to_string(), "unavailable (shmem_enabled=never)");
        let advise = ShmemHugePages::parse("always within_size [advise] never deny force").unwrap();
        assert!(advise.usable());
        assert_eq!(ShmemHugePages::parse("always never"), None);
    }

    #[test]
    fn small_assets_are_never_aligned_for_huge_pages() {
        let options = MapOptions::new().huge_pages(true);
        assert!(!options.plan(HUGE_PAGE_SIZE - 1, false).huge_pages);
        assert!(options.plan(HUGE_PAGE_SIZE, false).huge_pages);
        assert!(MapOptions::new().copy_below(10).copies(9));
        assert!(!MapOptions::new().copy_below(10).copies(10));
        assert!(!MapOptions::new().copies(0));
    }
}
