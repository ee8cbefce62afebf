//! Blobs: sealed memfds and how they are made.
//!
//! A [`Blob`] is the unit of storage: one memfd, sealed with WRITE, GROW,
//! SHRINK and SEAL, read-only mode bits, and its BLAKE3 hash. Identical
//! content published under several names or versions shares one blob.
//!
//! Blobs come from three sources; each ends with the memfd sealed (or found
//! sealed) and hashed before the blob exists at all, so nothing
//! half-written is ever visible:
//!
//! - [`StreamIngest`]: bytes read from the client's socket, written with
//!   `pwrite` (never through a shared writable mapping, which would make
//!   `F_SEAL_WRITE` fail with `EBUSY`) and hashed on the way in;
//! - [`from_descriptor`] with a regular file: copied kernel-side with
//!   `copy_file_range`, or `sendfile` where the kernel refuses a copy
//!   across file systems;
//! - [`from_descriptor`] with a memfd that already carries the WRITE, GROW
//!   and SHRINK seals: adopted without copying.
//!
//! Memfds of 2 MiB and more are prepared so that transparent huge pages can
//! back them wherever the host allows it (see `prepare_huge_pages`):
//! readers that map such an asset 2 MiB-aligned then need one page-table
//! entry per 2 MiB instead of 512.

use crate::sys;
use memseal_proto::Hash;
use rustix::fs::{fstat, FileType, MemfdFlags, Mode, OFlags, SealFlags};
use rustix::io::Errno;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// The seals a descriptor must carry to be trusted as immutable: nobody can
/// write, grow or shrink it. Checked as a mask, since memfds created with
/// `MFD_NOEXEC_SEAL` also carry `F_SEAL_EXEC`.
pub const IMMUTABLE: SealFlags = SealFlags::WRITE
    .union(SealFlags::GROW)
    .union(SealFlags::SHRINK);

/// What the daemon applies to its own memfds: [`IMMUTABLE`] plus `SEAL`, so
/// no one can add or change seals afterwards.
const DAEMON_SEALS: SealFlags = IMMUTABLE.union(SealFlags::SEAL);

/// One sealed memfd and what the daemon knows about it.
#[derive(Debug)]
pub struct Blob {
    /// A read-only descriptor; this is what clients receive.
    fd: OwnedFd,
    size: u64,
    hash: Hash,
}

impl Blob {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn hash(&self) -> &Hash {
        &self.hash
    }

    /// Rebuild a blob from a descriptor the daemon handed to someone else
    /// earlier (the service manager's fd store): re-check the seals, the
    /// size and the hash, and refuse anything that does not match.
    pub fn reverify(fd: OwnedFd, size: u64, hash: &Hash) -> Result<Blob, IngestError> {
        check_regular(&fd)?;
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|_| IngestError::NotSealed)?;
        if !seals.contains(IMMUTABLE) {
            return Err(IngestError::NotSealed);
        }
        let actual = file_size(&fd)?;
        if actual != size {
            return Err(IngestError::SizeMismatch {
                declared: size,
                actual,
            });
        }
        let actual_hash = sys::hash_sealed(fd.as_fd(), size)?;
        if &actual_hash != hash {
            return Err(IngestError::HashMismatch);
        }
        Ok(Blob {
            fd,
            size,
            hash: actual_hash,
        })
    }
}

/// Why a blob could not be made.
#[derive(Debug)]
pub enum IngestError {
    /// The descriptor is not a regular file (a pipe, socket, directory...).
    NotRegular,
    /// The descriptor's size differs from the declared size.
    SizeMismatch { declared: u64, actual: u64 },
    /// The descriptor cannot be read (opened write-only, for example).
    Unreadable(io::Error),
    /// A stored descriptor lacks the immutability seals.
    NotSealed,
    /// A stored descriptor's content no longer matches its recorded hash.
    HashMismatch,
    /// The daemon failed to create, fill or seal its memfd.
    Io(io::Error),
}

impl fmt::Display for IngestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IngestError::NotRegular => {
                write!(f, "the descriptor is not a regular file or memfd")
            }
            IngestError::SizeMismatch { declared, actual } => write!(
                f,
                "declared size {declared} does not match the descriptor's size {actual}"
            ),
            IngestError::Unreadable(e) => write!(f, "the descriptor cannot be read: {e}"),
            IngestError::NotSealed => write!(f, "the descriptor is not sealed against writes"),
            IngestError::HashMismatch => write!(f, "the content does not match its recorded hash"),
            IngestError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for IngestError {
    fn from(e: io::Error) -> Self {
        IngestError::Io(e)
    }
}

impl From<Errno> for IngestError {
    fn from(e: Errno) -> Self {
        IngestError::Io(e.into())
    }
}

fn check_regular(fd: &impl AsFd) -> Result<(), IngestError> {
    let stat = fstat(fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(IngestError::NotRegular);
    }
    Ok(())
}

fn file_size(fd: &impl AsFd) -> Result<u64, IngestError> {
    Ok(fstat(fd)?.st_size as u64)
}

/// A new, empty, sealable memfd. `MFD_NOEXEC_SEAL` keeps it from ever being
/// executed (and lets it be created where `vm.memfd_noexec=2`); kernels
/// before 6.3 do not know the flag and answer `EINVAL`, so retry without it.
fn create_memfd(size: u64) -> io::Result<OwnedFd> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let fd = match rustix::fs::memfd_create("memseal", flags | MemfdFlags::NOEXEC_SEAL) {
        Ok(fd) => fd,
        Err(Errno::INVAL) => memfd::MemfdOptions::new()
            .allow_sealing(true)
            .close_on_exec(true)
            .create("memseal")
            .map_err(|e| match e {
                memfd::Error::Create(e) | memfd::Error::AddSeals(e) | memfd::Error::GetSeals(e) => {
                    e
                }
            })?
            .into_file()
            .into(),
        Err(e) => return Err(e.into()),
    };
    // Size it up front: one allocation of the inode size, and a publisher
    // that lies about its size is caught by the byte count, not by growth.
    rustix::fs::ftruncate(&fd, size)?;
    prepare_huge_pages(&fd, size);
    Ok(fd)
}

/// The size of a PMD-level transparent huge page (x86-64, arm64 with 4 KiB
/// pages).
const HUGE_PAGE: u64 = 2 << 20;

/// Where the host says whether shared memory, memfds included, may use
/// transparent huge pages.
const SHMEM_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// Let transparent huge pages back a new, empty memfd of `size` bytes, as
/// far as the host's `shmem_enabled` setting allows.
///
/// - `always`, `within_size`, `force`: the kernel allocates huge pages as
///   the memfd is written (the memfd already has its final size, which
///   `within_size` needs). Nothing to do.
/// - `advise`: the kernel gives shared memory huge pages only when they are
///   faulted in through a mapping marked `MADV_HUGEPAGE`, never through
///   `write`. So fault the whole 2 MiB blocks in through such a mapping
///   now, and unmap it before anything else happens: `F_SEAL_WRITE` fails
///   with `EBUSY` while a shared writable mapping exists. The later
///   `pwrite`s then fill pages that are already huge.
/// - `never`, `deny`: no huge pages. Said once in the logs, with the fix.
///
/// Huge pages are an optimisation: any failure here leaves small pages and
/// is logged at debug level, never reported to the publisher.
fn prepare_huge_pages(fd: &OwnedFd, size: u64) {
    let huge_len = size - size % HUGE_PAGE;
    if huge_len == 0 {
        return;
    }
    let setting = std::fs::read_to_string(SHMEM_ENABLED).ok();
    let selected = setting.as_deref().and_then(|text| {
        let start = text.find('[')? + 1;
        Some(&text[start..start + text[start..].find(']')?])
    });
    match selected {
        Some("always" | "within_size" | "force") => {}
        Some("advise") => {
            if let Err(e) = sys::fault_in_huge_pages(fd.as_fd(), huge_len) {
                tracing::debug!("cannot prepare huge pages for a {size}-byte memfd: {e}");
            }
        }
        other => {
            static EXPLAINED: std::sync::Once = std::sync::Once::new();
            EXPLAINED.call_once(|| {
                tracing::info!(
                    "large assets are kept in 4 KiB pages: transparent huge pages are off for \
                     shared memory ({SHMEM_ENABLED} selects {}); select 'advise' or \
                     'within_size' there to let readers map them with huge pages",
                    other.unwrap_or("nothing readable")
                );
            });
        }
    }
}

/// Make a filled memfd immutable and return the read-only descriptor that
/// clients will receive.
///
/// Mode 0444 first, so no holder can reopen it writable through
/// `/proc/self/fd` (the seals would refuse writes anyway; the mode makes
/// the refusal happen at open). Then the seals. Then a fresh read-only open
/// file description, so even the access mode of what clients get is
/// read-only; the writable descriptor is closed on return.
fn seal(fd: OwnedFd) -> io::Result<OwnedFd> {
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o444))?;
    rustix::fs::fcntl_add_seals(&fd, DAEMON_SEALS)?;
    reopen_read_only(&fd)
}

fn reopen_read_only(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Receives the bytes of a streamed publish into a fresh memfd.
pub struct StreamIngest {
    fd: OwnedFd,
    size: u64,
    written: u64,
    hasher: blake3::Hasher,
}

impl StreamIngest {
    /// Create the memfd for `size` bytes. The caller has already reserved
    /// `size` bytes of budget.
    pub fn new(size: u64) -> io::Result<StreamIngest> {
        Ok(StreamIngest {
            fd: create_memfd(size)?,
            size,
            written: 0,
            hasher: blake3::Hasher::new(),
        })
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.size - self.written
    }

    /// Append bytes received from the client. The caller never passes more
    /// than [`StreamIngest::remaining`].
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        debug_assert!(bytes.len() as u64 <= self.remaining());
        self.hasher.update(bytes);
        while !bytes.is_empty() {
            let n = rustix::io::pwrite(&self.fd, bytes, self.written)?;
            self.written += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Seal the complete memfd into a blob.
    pub fn finish(self) -> io::Result<Blob> {
        debug_assert_eq!(self.written, self.size);
        Ok(Blob {
            fd: seal(self.fd)?,
            size: self.size,
            hash: *self.hasher.finalize().as_bytes(),
        })
    }
}

/// How a descriptor publish was satisfied, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// A sealed memfd was adopted as is.
    Adopted,
    /// A file was copied kernel-side into a new memfd.
    Copied,
}

/// Make a blob from a descriptor a client sent. Blocking: run it off the
/// async executor.
pub fn from_descriptor(source: OwnedFd, declared: u64) -> Result<(Blob, Ingested), IngestError> {
    check_regular(&source)?;
    let actual = file_size(&source)?;
    if actual != declared {
        return Err(IngestError::SizeMismatch { declared, actual });
    }
    let access = rustix::fs::fcntl_getfl(&source)? & OFlags::ACCMODE;
    if access == OFlags::WRONLY {
        return Err(IngestError::Unreadable(io::Error::from_raw_os_error(
            libc::EBADF,
        )));
    }
    let sealed = matches!(rustix::fs::fcntl_get_seals(&source), Ok(s) if s.contains(IMMUTABLE));
    if sealed {
        return Ok((adopt(source, declared)?, Ingested::Adopted));
    }
    Ok((copy(&source, declared)?, Ingested::Copied))
}

/// Adopt a memfd that is already immutable. Its bytes cannot change, so the
/// daemon hashes them in place. It tries to tighten the mode and hand out a
/// read-only description; when the publisher owns the inode and the daemon
/// is unprivileged those steps may be refused, which is harmless because
/// the seals already forbid every write.
fn adopt(source: OwnedFd, size: u64) -> Result<Blob, IngestError> {
    let hash = sys::hash_sealed(source.as_fd(), size)?;
    let _ = rustix::fs::fchmod(&source, Mode::from_raw_mode(0o444));
    let _ = rustix::fs::fcntl_add_seals(&source, SealFlags::SEAL);
    let fd = reopen_read_only(&source).unwrap_or(source);
    Ok(Blob { fd, size, hash })
}

/// Copy a regular file into a new sealed memfd without a userspace copy.
fn copy(source: &OwnedFd, size: u64) -> Result<Blob, IngestError> {
    let target = create_memfd(size)?;
    let mut copied = 0u64;
    let mut use_sendfile = false;
    while copied < size {
        let want = (size - copied).min(1 << 30) as usize;
        let mut in_off = copied;
        let mut out_off = copied;
        let step = if use_sendfile {
            // sendfile writes at the target's file offset, which starts at
            // zero and only moves with these calls.
            rustix::fs::sendfile(&target, source, Some(&mut in_off), want)
        } else {
            rustix::fs::copy_file_range(
                source,
                Some(&mut in_off),
                &target,
                Some(&mut out_off),
                want,
            )
        };
        match step {
            Ok(0) => {
                // The file shrank while we copied it.
                return Err(IngestError::SizeMismatch {
                    declared: size,
                    actual: copied,
                });
            }
            Ok(n) => copied += n as u64,
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP)
                if !use_sendfile && copied == 0 =>
            {
                use_sendfile = true;
            }
            Err(Errno::INTR) => {}
            Err(Errno::BADF) => {
                return Err(IngestError::Unreadable(Errno::BADF.into()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let fd = seal(target)?;
    let hash = sys::hash_sealed(fd.as_fd(), size)?;
    Ok(Blob { fd, size, hash })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn seals_of(fd: BorrowedFd<'_>) -> SealFlags {
        rustix::fs::fcntl_get_seals(fd).unwrap()
    }

    #[test]
    fn stream_ingest_seals_and_hashes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut ingest = StreamIngest::new(data.len() as u64).unwrap();
        for chunk in data.chunks(7_000) {
            ingest.write(chunk).unwrap();
        }
        let blob = ingest.finish().unwrap();
        assert_eq!(blob.hash(), blake3::hash(&data).as_bytes());
        assert!(seals_of(blob.fd()).contains(DAEMON_SEALS));
        let flags = rustix::fs::fcntl_getfl(blob.fd()).unwrap();
        assert_eq!(flags & OFlags::ACCMODE, OFlags::RDONLY);
        assert_eq!(fstat(blob.fd()).unwrap().st_mode & 0o777, 0o444);
        assert_eq!(
            sys::hash_sealed(blob.fd(), blob.size()).unwrap(),
            *blob.hash()
        );
    }

    #[test]
    fn file_is_copied_and_sealed_memfd_is_adopted() {
        let mut file = tempfile();
        file.write_all(b"hello, sealed world").unwrap();
        let (blob, how) = from_descriptor(file.into(), 19).unwrap();
        assert_eq!(how, Ingested::Copied);
        assert_eq!(blob.hash(), blake3::hash(b"hello, sealed world").as_bytes());

        let memfd = rustix::fs::memfd_create("t", MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::io::write(&memfd, b"adopt me").unwrap();
        rustix::fs::fcntl_add_seals(&memfd, IMMUTABLE).unwrap();
        let (blob, how) = from_descriptor(memfd, 8).unwrap();
        assert_eq!(how, Ingested::Adopted);
        assert_eq!(blob.hash(), blake3::hash(b"adopt me").as_bytes());
    }

    #[test]
    fn bad_sources_are_refused() {
        let mut file = tempfile();
        file.write_all(b"abc").unwrap();
        assert!(matches!(
            from_descriptor(file.into(), 4),
            Err(IngestError::SizeMismatch {
                declared: 4,
                actual: 3
            })
        ));
        let (read_end, _write_end) = rustix::pipe::pipe().unwrap();
        assert!(matches!(
            from_descriptor(read_end, 0),
            Err(IngestError::NotRegular)
        ));
    }

    #[test]
    fn reverify_refuses_unsealed_and_altered() {
        let memfd = rustix::fs::memfd_create("t", MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::io::write(&memfd, b"x").unwrap();
        let hash = *blake3::hash(b"x").as_bytes();
        let copy = rustix::io::dup(&memfd).unwrap();
        assert!(matches!(
            Blob::reverify(copy, 1, &hash),
            Err(IngestError::NotSealed)
        ));
        rustix::fs::fcntl_add_seals(&memfd, IMMUTABLE).unwrap();
        let copy = rustix::io::dup(&memfd).unwrap();
        assert!(matches!(
            Blob::reverify(copy, 1, &[0; 32]),
            Err(IngestError::HashMismatch)
        ));
        assert!(Blob::reverify(memfd, 1, &hash).is_ok());
    }

    #[test]
    fn a_large_memfd_stays_sealable_after_huge_page_preparation() {
        // Whatever the host's setting, the temporary mapping is gone before
        // sealing, so F_SEAL_WRITE does not fail with EBUSY.
        let size = 3 * HUGE_PAGE + 5;
        let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let mut ingest = StreamIngest::new(size).unwrap();
        ingest.write(&data).unwrap();
        let blob = ingest.finish().unwrap();
        assert_eq!(blob.hash(), blake3::hash(&data).as_bytes());
        assert!(seals_of(blob.fd()).contains(DAEMON_SEALS));
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "memseal-blob-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }
}
