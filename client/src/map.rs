//! The one module that maps memory, and so the one that needs `unsafe`.
//!
//! A [`Mapping`] is a private view of a whole sealed file. Turning raw
//! memory into a `&[u8]` is sound only while nobody can change, grow or
//! shrink the bytes behind it, and that is a property of the *file*, not of
//! anything this module can see. So creating a mapping is an `unsafe fn`
//! whose contract is exactly that property; [`crate::verify`] is its single
//! caller, and it establishes the contract with `F_GET_SEALS` and `fstat`
//! just before.
//!
//! A [`MapPlan`] says how the view is laid out and prepared: read-only or
//! a private copy-on-write view, aligned for transparent huge pages or not,
//! faulted in up front or lazily, and what access pattern to announce to
//! the kernel. Every such step happens here, next to the `mmap` it refines.

use rustix::io::Errno;
use rustix::mm::{madvise, mmap, mmap_anonymous, munmap, Advice, MapFlags, ProtFlags};
use std::ffi::c_void;
use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::{self, NonNull};

/// The size of a PMD-level transparent huge page on x86-64 and arm64 with
/// 4 KiB base pages: the alignment a mapping needs for the kernel to map a
/// huge page of the file with one page-table entry.
pub(crate) const HUGE_PAGE_SIZE: usize = 2 << 20;

/// How to lay out and prepare a mapping. The public face of this is
/// [`crate::MapOptions`]; this is what the `mmap` code needs from it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MapPlan {
    /// `PROT_READ | PROT_WRITE` instead of `PROT_READ`. The mapping is
    /// always `MAP_PRIVATE`, so writes land in pages private to this
    /// process (copy-on-write) and never reach the file.
    pub writable: bool,
    /// Place the mapping at a 2 MiB boundary and mark it `MADV_HUGEPAGE`.
    pub huge_pages: bool,
    /// Fault every page in before returning (`MADV_POPULATE_READ`, or
    /// `MAP_POPULATE` on kernels older than 5.14).
    pub populate: bool,
    /// Access-pattern advice for the whole mapping, if any.
    pub advice: Option<Advice>,
}

/// A private mapping of a whole file, unmapped on drop.
///
/// A zero-length file has no mapping at all: the kernel refuses to map
/// zero bytes, and an empty slice needs no memory.
pub(crate) struct Mapping {
    /// Start of the mapping; dangling (never read) when `len` is zero.
    ptr: NonNull<u8>,
    /// Length of the mapping in bytes, equal to the file's size.
    len: usize,
    /// True when the pages may be written (a private copy-on-write view).
    writable: bool,
}

impl Mapping {
    /// Map the first `len` bytes of `fd` privately, laid out and prepared
    /// as `plan` says.
    ///
    /// `MAP_PRIVATE` rather than `MAP_SHARED`: some kernels refuse a shared
    /// mapping of a write-sealed memfd opened read-write, while a private
    /// one works everywhere. As long as a page is not written, no private
    /// copy of it is made: readers still share the file's pages.
    ///
    /// # Safety
    ///
    /// Until the returned value is dropped, nobody may write to, grow or
    /// shrink the file behind `fd` (its `F_SEAL_WRITE`, `F_SEAL_GROW` and
    /// `F_SEAL_SHRINK` seals are set), and `len` must not exceed its size,
    /// nor `isize::MAX`. Otherwise the slice handed out by
    /// [`Mapping::as_slice`] could change under a shared reference, or a
    /// read past the end of the file could raise `SIGBUS`.
    pub(crate) unsafe fn map(
        fd: BorrowedFd<'_>,
        len: usize,
        plan: &MapPlan,
    ) -> io::Result<Mapping> {
        if len == 0 {
            return Ok(Mapping {
                ptr: NonNull::dangling(),
                len: 0,
                writable: plan.writable,
            });
        }
        let addr = if plan.huge_pages {
            map_huge_aligned(fd, len, plan)?
        } else {
            // A null address lets the kernel choose fresh address space.
            // SAFETY: nothing existing is replaced or aliased, and what the new memory may be
            // used for is this function's own contract, which the caller upholds.
            unsafe {
                mmap(
                    ptr::null_mut(),
                    len,
                    plan.protection(),
                    MapFlags::PRIVATE,
                    fd,
                    0,
                )
            }?
        };
        // mmap reports failure as an error, and without MAP_FIXED it never
        // places a mapping at address zero; stay safe if it ever did.
        let ptr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null address"))?;
        // From here on, dropping `mapping` unmaps it, also on error.
        let mapping = Mapping {
            ptr,
            len,
            writable: plan.writable,
        };
        mapping.advise(plan)?;
        if plan.populate {
            mapping.populate(fd, plan)?;
        }
        Ok(mapping)
    }

    /// The mapped bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // `ptr` starts a live mapping of `len` readable bytes, unmapped only in `drop` (which
        // needs `&mut self`), and `len` is at most `isize::MAX`. The contract of `map` makes the
        // file immutable: the seals stop every other writer, and the file cannot shrink under the
        // mapping, so no read faults with SIGBUS. A writable mapping changes only through
        // `as_mut_slice`, which borrows `self` mutably, so no write happens while this lives.
        // SAFETY: by the above, the bytes are live, in bounds and unchanging for as long as the
        // returned slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes, writable, for a mapping made with
    /// [`MapPlan::writable`]; `None` for a read-only one.
    pub(crate) fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        if self.len == 0 {
            return Some(&mut []);
        }
        // As in `as_slice`, plus: the pages are mapped PROT_WRITE and MAP_PRIVATE, so writes go to
        // copies private to this process and never to the sealed file.
        // SAFETY: the bytes are live and in bounds, and `&mut self` makes this the only reference
        // to them while it lives.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }

    /// Apply the huge-page mark and the access advice of `plan`.
    fn advise(&self, plan: &MapPlan) -> io::Result<()> {
        let ptr = self.ptr.as_ptr().cast::<c_void>();
        if plan.huge_pages {
            // MADV_HUGEPAGE only lets the kernel use larger pages for the same bytes.
            // SAFETY: `ptr..ptr+len` is this live mapping, and the advice never changes what it
            // holds.
            match unsafe { madvise(ptr, self.len, Advice::LinuxHugepage) } {
                // A kernel built without transparent huge pages: the
                // mapping still works, with small pages.
                Ok(()) | Err(Errno::INVAL) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(advice) = plan.advice {
            // `MapOptions` limits the advice to normal, random, sequential and will-need.
            // SAFETY: `ptr..ptr+len` is this live mapping; access advice changes read-ahead and
            // reclaim decisions, never contents.
            unsafe { madvise(ptr, self.len, advice) }?;
        }
        Ok(())
    }

    /// Fault every page in now. `MADV_POPULATE_READ` maps the file's pages
    /// without copying them, even in a writable private view (a write
    /// fault later makes the private copy of just that page).
    fn populate(&self, fd: BorrowedFd<'_>, plan: &MapPlan) -> io::Result<()> {
        let ptr = self.ptr.as_ptr().cast::<c_void>();
        // SAFETY: `ptr..ptr+len` is this live mapping; populating reads
        // the file's pages into it and changes no byte.
        match unsafe { madvise(ptr, self.len, Advice::LinuxPopulateRead) } {
            Ok(()) => Ok(()),
            // Kernels before 5.14 do not know MADV_POPULATE_READ. Map the
            // same file again over this very range with MAP_POPULATE, which
            // every kernel knows; the fresh mapping has lost the advice of
            // the old one, so advise again.
            Err(Errno::INVAL) => {
                // No slice of the mapping can exist yet: it has not been handed out.
                // SAFETY: MAP_FIXED replaces exactly the range this value owns with a mapping of
                // the same file, offset, length and protection: nothing else is clobbered.
                unsafe {
                    mmap(
                        ptr,
                        self.len,
                        plan.protection(),
                        MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::POPULATE,
                        fd,
                        0,
                    )
                }?;
                self.advise(plan)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl MapPlan {
    fn protection(&self) -> ProtFlags {
        if self.writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        }
    }
}

/// Map `len` bytes of `fd` at an address that is a multiple of
/// [`HUGE_PAGE_SIZE`], so that each 2 MiB of the file can be mapped by one
/// page-table entry when the kernel backs it with a huge page.
///
/// `mmap` gives no way to ask for an alignment, so reserve `len` plus
/// 2 MiB of inaccessible address space, map the file with `MAP_FIXED` at
/// the first aligned address inside the reservation, and give back the
/// slack on either side.
fn map_huge_aligned(fd: BorrowedFd<'_>, len: usize, plan: &MapPlan) -> io::Result<*mut c_void> {
    let page = rustix::param::page_size();
    let span = len.next_multiple_of(page);
    let reserved = span
        .checked_add(HUGE_PAGE_SIZE)
        .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
    // SAFETY: a fresh, inaccessible, anonymous reservation at an address
    // the kernel picks; it aliases nothing.
    let base = unsafe {
        mmap_anonymous(
            ptr::null_mut(),
            reserved,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }?;
    let start = base as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE_SIZE);
    // `aligned - start < HUGE_PAGE_SIZE`, so the aligned range fits the reservation.
    // SAFETY: `aligned..aligned+span` lies inside the reservation made just above, which nothing
    // else uses, so MAP_FIXED replaces only our own inaccessible pages.
    let mapped = unsafe {
        mmap(
            aligned as *mut c_void,
            len,
            plan.protection(),
            MapFlags::PRIVATE | MapFlags::FIXED,
            fd,
            0,
        )
    };
    let head = aligned - start;
    let tail_start = aligned + span;
    let tail = start + reserved - tail_start;
    if let Err(e) = mapped {
        // SAFETY: the whole reservation is ours and nothing points into it.
        let _ = unsafe { munmap(base, reserved) };
        return Err(e.into());
    }
    // Failing to give the slack back would only leave some inaccessible
    // address space reserved, so those errors are not worth failing for.
    if head > 0 {
        // SAFETY: the part of the reservation before the file mapping; ours
        // and unused.
        let _ = unsafe { munmap(base, head) };
    }
    if tail > 0 {
        // SAFETY: the part of the reservation after the file mapping; ours
        // and unused.
        let _ = unsafe { munmap(tail_start as *mut c_void, tail) };
    }
    Ok(aligned as *mut c_void)
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: `ptr` and `len` describe exactly the mapping made in `map`, unmapped nowhere
        // else, and `&mut self` proves that no slice borrowed from it is still alive.
        let result = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
        // munmap of a range we mapped can only fail if that invariant broke.
        debug_assert!(result.is_ok(), "munmap failed: {result:?}");
    }
}

// SAFETY: a `Mapping` is an owned region (see `as_slice`). Moving it to
// another thread moves the only handle that reads, writes or unmaps it.
unsafe impl Send for Mapping {}

// SAFETY: through `&Mapping` every thread sees the same bytes, and nothing
// can change them while any `&Mapping` exists (writing needs `&mut`), so
// shared access from many threads is sound.
unsafe impl Sync for Mapping {}
