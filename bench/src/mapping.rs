//! The harness's only `unsafe` code: the floor client's own mapping of a
//! sealed memfd, done the way any careful receiver would do it.
//!
//! The memseal rows map through the client library; the floor rows must
//! not, or the floor would measure memseal. So the floor has its own
//! `mmap`/`munmap`, kept to the same rules: `PROT_READ`, `MAP_PRIVATE`,
//! never longer than the file, and only once the seals are checked.

use rustix::fs::{fcntl_get_seals, fstat, SealFlags};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

/// The seals that freeze a file's bytes and size.
const FROZEN: SealFlags = SealFlags::WRITE
    .union(SealFlags::GROW)
    .union(SealFlags::SHRINK);

/// A read-only private mapping of a whole sealed file, unmapped on drop.
pub struct SealedMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl SealedMap {
    /// Check the seals (`F_GET_SEALS`, as a mask), take the size (`fstat`)
    /// and map that many bytes: the floor's whole receive path after
    /// `recvmsg`.
    pub fn new(fd: BorrowedFd<'_>) -> io::Result<SealedMap> {
        let seals = fcntl_get_seals(fd)?;
        if !seals.contains(FROZEN) {
            return Err(io::Error::other("the floor server sent an unsealed file"));
        }
        let len = usize::try_from(fstat(fd)?.st_size)
            .ok()
            .filter(|&len| len > 0 && len <= isize::MAX as usize)
            .ok_or_else(|| io::Error::other("the floor server sent an empty file"))?;
        // A null hint gets unused address space, so nothing existing is replaced.
        // SAFETY: the file is sealed against writes, growth and shrinking (checked above, and seals
        // never come off), so the `len` bytes measured after it stay valid and unchanged.
        let addr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::PRIVATE,
                fd,
                0,
            )?
        };
        let ptr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null address"))?;
        Ok(SealedMap { ptr, len })
    }

    /// The mapped bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` starts a live, readable mapping of `len` bytes that
        // only `drop` unmaps, and the seals keep every byte unchanged.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SealedMap {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`, unmapped nowhere else;
        // `&mut self` proves no slice of it is still borrowed.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
