//! The memfd a download lands in: created at its final size, written at
//! offsets by the pieces as they arrive, then sealed and handed to the
//! daemon, which adopts it without copying a byte.
//!
//! Until it is sealed nobody but this process holds it, so a download that
//! fails, or an agent that dies, leaves nothing behind: the kernel frees
//! the memory with the last descriptor.

use rustix::fs::{MemfdFlags, Mode, SealFlags};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The seals a published memfd carries: no writes, no growing, no
/// shrinking, and no change to the seals themselves.
const SEALS: SealFlags = SealFlags::WRITE
    .union(SealFlags::GROW)
    .union(SealFlags::SHRINK)
    .union(SealFlags::SEAL);

/// A memfd being filled. Dropping it discards the bytes.
#[derive(Debug)]
pub struct Filling {
    fd: OwnedFd,
    size: u64,
}

/// A memfd whose bytes can no longer change.
#[derive(Debug)]
pub struct Sealed {
    fd: OwnedFd,
}

impl Filling {
    /// A new memfd of exactly `size` bytes (zeros until written; the pages
    /// are only allocated as they are written).
    pub fn new(name: &str, size: u64) -> io::Result<Filling> {
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        // MFD_NOEXEC_SEAL (Linux 6.3) keeps the memfd from ever becoming
        // executable; older kernels refuse the flag, so retry without it.
        let fd = match rustix::fs::memfd_create(name, flags | MemfdFlags::NOEXEC_SEAL) {
            Err(rustix::io::Errno::INVAL) => rustix::fs::memfd_create(name, flags)?,
            other => other?,
        };
        rustix::fs::ftruncate(&fd, size)?;
        Ok(Filling { fd, size })
    }

    /// Write all of `bytes` at `offset`. Safe to call from many threads at
    /// once for disjoint ranges.
    pub fn write_at(&self, mut offset: u64, mut bytes: &[u8]) -> io::Result<()> {
        if offset.saturating_add(bytes.len() as u64) > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a write of {} bytes at {offset} goes past the end ({} bytes)",
                    bytes.len(),
                    self.size
                ),
            ));
        }
        while !bytes.is_empty() {
            match rustix::io::pwrite(&self.fd, bytes, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    bytes = &bytes[written..];
                    offset += written as u64;
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Seal it and make it read-only for everyone (mode 0444), so that not
    /// even a reopen through `/proc/self/fd` can be writable.
    pub fn seal(self) -> io::Result<Sealed> {
        rustix::fs::fcntl_add_seals(&self.fd, SEALS)?;
        rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(0o444))?;
        Ok(Sealed { fd: self.fd })
    }
}

impl AsFd for Sealed {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_at_offsets_then_sealed() {
        let filling = Filling::new("test", 10).unwrap();
        filling.write_at(5, b"world").unwrap();
        filling.write_at(0, b"hello").unwrap();
        assert!(filling.write_at(8, b"xyz").is_err(), "past the end");
        let sealed = filling.seal().unwrap();
        let seals = rustix::fs::fcntl_get_seals(&sealed).unwrap();
        assert!(seals.contains(SEALS));
        let stat = rustix::fs::fstat(&sealed).unwrap();
        assert_eq!(stat.st_mode & 0o777, 0o444);
        let mut buf = [0u8; 10];
        rustix::io::pread(&sealed, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"helloworld");
        assert!(rustix::io::pwrite(&sealed, b"x", 0).is_err(), "sealed");
    }
}
