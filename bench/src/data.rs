//! The bytes being shared, and the shapes they are shared in: a buffer, a
//! sealed memfd, a file in tmpfs.

use rustix::fs::{MemfdFlags, SealFlags};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

/// The page size the touch loops step by.
pub const PAGE: usize = 4096;

/// `size` bytes of content that differs between sizes (so the daemon's
/// deduplication never merges two assets) and is not all zeros (so no
/// layer can skip it). A pseudo-random block repeated: cheap to make even
/// at 1 GiB.
pub fn content(size: usize) -> Vec<u8> {
    let mut block = vec![0u8; 64 * 1024];
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ size as u64;
    for chunk in block.chunks_mut(8) {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let mut bytes = Vec::with_capacity(size);
    while bytes.len() < size {
        let take = block.len().min(size - bytes.len());
        bytes.extend_from_slice(&block[..take]);
    }
    bytes
}

/// Read one byte of every page, the way a reader that scans the whole
/// asset faults every page in. Returns a value derived from the bytes so
/// the reads cannot be optimised away.
pub fn touch_pages(bytes: &[u8]) -> u64 {
    let mut sum = 0u64;
    for page in bytes.chunks(PAGE) {
        sum = sum.wrapping_add(u64::from(std::hint::black_box(page[0])));
    }
    std::hint::black_box(sum)
}

/// A memfd holding `bytes`, sealed against writing, growing and shrinking.
pub fn sealed_memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    let fd = OwnedFd::from(file);
    rustix::fs::fcntl_add_seals(&fd, SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK)?;
    Ok(fd)
}

/// Write `bytes` to a new file at `path`.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    Ok(())
}

/// Human-readable size: "4 KiB", "64 MiB", "1 GiB".
pub fn size_label(size: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if size >= unit && size % unit == 0 {
            return format!("{} {name}", size / unit);
        }
    }
    format!("{size} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_has_the_size_asked_and_differs_between_sizes() {
        let a = content(100_000);
        let b = content(100_001);
        assert_eq!(a.len(), 100_000);
        assert_ne!(a[..4096], b[..4096]);
        assert!(a.iter().any(|&byte| byte != 0));
    }

    #[test]
    fn sealed_memfd_carries_the_seals() {
        let fd = sealed_memfd("bench-test", b"abc").unwrap();
        let seals = rustix::fs::fcntl_get_seals(&fd).unwrap();
        assert!(seals.contains(SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK));
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 3);
    }

    #[test]
    fn labels() {
        assert_eq!(size_label(4096), "4 KiB");
        assert_eq!(size_label(64 << 20), "64 MiB");
        assert_eq!(size_label(1 << 30), "1 GiB");
        assert_eq!(size_label(1000), "1000 B");
    }
}
