//! The one module that maps memory, and so the one that needs `unsafe`.
//!
//! A [`Mapping`] is a private, read-only view of a whole sealed file. Turning
//! raw memory into a `&[u8]` is sound only while nobody can change, grow or
//! shrink the bytes behind it, and that is a property of the *file*, not of
//! anything this module can see. So creating a mapping is an `unsafe fn`
//! whose contract is exactly that property; [`crate::verify`] is its single
//! caller, and it establishes the contract with `F_GET_SEALS` and `fstat`
//! just before.

use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::{self, NonNull};

/// A read-only, private mapping of a whole file, unmapped on drop.
///
/// A zero-length file has no mapping at all: the kernel refuses to map
/// zero bytes, and an empty slice needs no memory.
pub(crate) struct Mapping {
    /// Start of the mapping; dangling (never read) when `len` is zero.
    ptr: NonNull<u8>,
    /// Length of the mapping in bytes, equal to the file's size.
    len: usize,
}

impl Mapping {
    /// Map the first `len` bytes of `fd` with `PROT_READ` and `MAP_PRIVATE`.
    ///
    /// `MAP_PRIVATE` rather than `MAP_SHARED`: some kernels refuse a shared
    /// mapping of a write-sealed memfd opened read-write, while a private,
    /// read-only one works everywhere. Since the pages are never written,
    /// no private copy is ever made: readers still share the file's pages.
    ///
    /// # Safety
    ///
    /// Until the returned value is dropped, nobody may write to, grow or
    /// shrink the file behind `fd` (its `F_SEAL_WRITE`, `F_SEAL_GROW` and
    /// `F_SEAL_SHRINK` seals are set), and `len` must not exceed its size,
    /// nor `isize::MAX`. Otherwise the slice handed out by
    /// [`Mapping::as_slice`] could change under a shared reference, or a
    /// read past the end of the file could raise `SIGBUS`.
    pub(crate) unsafe fn map_sealed(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Ok(Mapping {
                ptr: NonNull::dangling(),
                len: 0,
            });
        }
        // SAFETY: a null address lets the kernel choose fresh address space,
        // so no existing memory or Rust object is replaced or aliased. What
        // the new memory may be used for is governed by this function's own
        // contract, which the caller upholds.
        let addr = unsafe {
            mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::PRIVATE,
                fd,
                0,
            )
        }?;
        // mmap reports failure as an error, and without MAP_FIXED it never
        // places a mapping at address zero; stay safe if it ever did.
        let ptr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null address"))?;
        Ok(Mapping { ptr, len })
    }

    /// The mapped bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is the start of a live mapping of `len` readable
        // bytes (it is unmapped only in `drop`, which needs `&mut self`), and
        // `len` is at most `isize::MAX`. The contract of `map_sealed` makes
        // the bytes immutable: the seals stop every writer, the file cannot
        // shrink under the mapping (so no read faults with SIGBUS), and
        // `PROT_READ` stops this process too. The slice borrows `self`, so it
        // cannot outlive the mapping.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: `ptr` and `len` describe exactly the mapping made in
        // `map_sealed`, unmapped nowhere else, and `&mut self` proves that no
        // slice borrowed from it is still alive.
        let result = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
        // munmap of a range we mapped can only fail if that invariant broke.
        debug_assert!(result.is_ok(), "munmap failed: {result:?}");
    }
}

// SAFETY: a `Mapping` is an owned, immutable region (see `as_slice`). Moving
// it to another thread moves the only handle that unmaps it.
unsafe impl Send for Mapping {}

// SAFETY: every thread sees the same immutable bytes through `&Mapping`;
// nothing mutates them, so shared access from many threads is sound.
unsafe impl Sync for Mapping {}
