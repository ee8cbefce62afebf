//! Blobs: sealed memfds and how they are made.
//!
//! A [`Blob`] is the unit of storage: one memfd, sealed with WRITE, GROW,
//! SHRINK and SEAL, mode 0444, held through a read-only open file
//! description the daemon opened itself, and its BLAKE3 hash. Identical
//! content shares one blob, within the limits set by [`BlobKey`].
//!
//! Blobs come from three sources; each ends with the memfd sealed and
//! hashed before the blob exists at all, so nothing half-written is ever
//! visible:
//!
//! - [`BlobWriter`]: bytes from the client's socket, moved into a new
//!   memfd by the kernel (`splice` through a pipe, or `pwrite` for small
//!   uploads; never through a shared writable mapping, which would make
//!   `F_SEAL_WRITE` fail with `EBUSY`) and hashed a step behind, on a
//!   thread of their own (see `writer`);
//! - [`from_descriptor`] with a regular file: copied kernel-side
//!   (`sendfile`, or `pread` where the file system cannot) into the same
//!   kind of writer;
//! - [`from_descriptor`] with a memfd that already carries the WRITE, GROW
//!   and SHRINK seals: adopted without copying, when it can be made to
//!   look exactly like one of the daemon's own (see `adopt`).
//!
//! # Descriptors a publisher controls
//!
//! The publisher keeps its own descriptor of whatever it sends and can
//! change the file between any two of our system calls: shrink it, seal
//! it, change its mode. Two rules make that harmless:
//!
//! 1. **State is read only after the seals that freeze it.** The size of
//!    a descriptor counts only once `F_GET_SEALS` has shown GROW and
//!    SHRINK; before that it is at most a hint for an early refusal.
//! 2. **The daemon never maps a descriptor it did not create.** Every byte
//!    of a publisher's file is read by the kernel on the daemon's behalf
//!    (`sendfile`, `pread`), which reports a short read or an error and
//!    cannot fault. A mapping could: a page past the end of the file
//!    raises `SIGBUS`, and so can a sealed hugetlbfs memfd whose pages the
//!    host cannot supply, and reading a hole of a sparse memfd through a
//!    mapping allocates a page the daemon pays for. The one mapping of
//!    file contents in the daemon is of a memfd it created and is filling,
//!    sealed against shrinking from its creation (`writer` says why that
//!    is sound); stored blobs are read with `pread`.
//!
//! Memfds of 2 MiB and more are prepared so that transparent huge pages can
//! back them wherever the host allows it (see `prepare_huge_pages`):
//! readers that map such an asset 2 MiB-aligned then need one page-table
//! entry per 2 MiB instead of 512.

#[allow(unsafe_code)]
mod writer;

pub use writer::BlobWriter;

use crate::sys;
use memseal_proto::Hash;
use rustix::fs::{fstat, FileType, MemfdFlags, Mode, OFlags, SealFlags, Stat};
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

/// What every blob carries: [`IMMUTABLE`] plus `SEAL`, so no one can add
/// or change seals afterwards.
pub const BLOB_SEALS: SealFlags = IMMUTABLE.union(SealFlags::SEAL);

/// The mode of every blob's inode when it is published: readable by all,
/// writable and executable by nobody.
pub const BLOB_MODE: u32 = 0o444;

/// `f_type` of shmem file systems (tmpfs, and the internal mount memfds
/// live on). Only these are adopted: their pages are ordinary memory.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Which blobs may stand in for each other.
///
/// Two blobs are interchangeable when they hold the same bytes *and* the
/// same user owns their inode. The owner matters because it is the one
/// user who can still change the inode after the seals: its mode (whether
/// readers can reopen it through `/proc`), and whose memory cgroup pays
/// for it. Content a user adopted therefore never stands in for another
/// user's publish, while the daemon's own memfds (owned by the daemon's
/// uid) can stand in for anybody's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey {
    pub hash: Hash,
    /// The uid that owns the memfd's inode.
    pub owner: u32,
}

/// One sealed memfd and what the daemon knows about it.
#[derive(Debug)]
pub struct Blob {
    /// A read-only open file description the daemon opened itself; this is
    /// what clients receive. Never a description a publisher sent.
    fd: OwnedFd,
    size: u64,
    key: BlobKey,
}

impl Blob {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn hash(&self) -> &Hash {
        &self.key.hash
    }

    pub fn key(&self) -> BlobKey {
        self.key
    }

    /// Does the memfd still carry its seals and its size? Always true for
    /// a blob built here (seals cannot be removed, and a sealed size
    /// cannot change); checked anyway before a blob is shared with a new
    /// publish, because sharing is where a wrong blob would spread.
    pub fn intact(&self) -> bool {
        let sealed = rustix::fs::fcntl_get_seals(&self.fd).is_ok_and(|s| s.contains(BLOB_SEALS));
        sealed && fstat(&self.fd).is_ok_and(|st| st.st_size as u64 == self.size)
    }

    /// A new read-only open file description of the blob's inode, opened
    /// by the daemon (see [`crate::descriptions`]).
    pub fn reopen(&self) -> io::Result<OwnedFd> {
        reopen_read_only(&self.fd)
    }

    /// The same bytes in a new memfd of the daemon's own: for content that
    /// must no longer depend on an inode a user owns.
    pub fn copy_owned(&self) -> Result<Blob, IngestError> {
        copy(self.fd(), self.size)
    }

    /// Rebuild a blob from a descriptor the daemon handed to someone else
    /// earlier (the service manager's fd store): re-check everything a new
    /// blob must satisfy, the owner and the hash, and refuse anything that
    /// does not match.
    pub fn reverify(fd: OwnedFd, size: u64, key: BlobKey) -> Result<Blob, IngestError> {
        let stat = check_regular(&fd)?;
        if !on_shmem(&fd) {
            return Err(IngestError::NotSealed);
        }
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|_| IngestError::NotSealed)?;
        if !seals.contains(BLOB_SEALS) {
            return Err(IngestError::NotSealed);
        }
        // The seals are in place: the size read now is final.
        let actual = fstat(&fd)?.st_size as u64;
        if actual != size {
            return Err(IngestError::SizeMismatch {
                declared: size,
                actual,
            });
        }
        if stat.st_uid != key.owner {
            return Err(IngestError::OwnerMismatch {
                recorded: key.owner,
                actual: stat.st_uid,
            });
        }
        if hash_file(fd.as_fd(), size)? != key.hash {
            return Err(IngestError::HashMismatch);
        }
        Ok(Blob { fd, size, key })
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
    /// A stored descriptor lacks the seals every blob carries.
    NotSealed,
    /// A stored descriptor's content no longer matches its recorded hash.
    HashMismatch,
    /// A stored descriptor's inode belongs to another user than recorded.
    OwnerMismatch { recorded: u32, actual: u32 },
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
                "the publish declared {declared} bytes but the descriptor holds {actual}"
            ),
            IngestError::Unreadable(e) => write!(f, "the descriptor cannot be read: {e}"),
            IngestError::NotSealed => write!(
                f,
                "the descriptor is not sealed (it must be a memfd sealed against writing, \
                 growing and shrinking)"
            ),
            IngestError::HashMismatch => write!(f, "the content does not match its recorded hash"),
            IngestError::OwnerMismatch { recorded, actual } => write!(
                f,
                "the memfd belongs to uid {actual}, but uid {recorded} was recorded"
            ),
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

fn check_regular(fd: &impl AsFd) -> Result<Stat, IngestError> {
    let stat = fstat(fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(IngestError::NotRegular);
    }
    Ok(stat)
}

fn on_shmem(fd: &impl AsFd) -> bool {
    // `f_type` is i64 on x86-64 but narrower on other targets.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstatfs(fd).is_ok_and(|fs| fs.f_type as i64 == TMPFS_MAGIC)
}

/// The uid that owns the memfds this process creates.
fn daemon_uid() -> u32 {
    rustix::process::geteuid().as_raw()
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
    // Sealed at that size at once, so no page of it can ever vanish from
    // under the writer's hash (see `writer`).
    rustix::fs::ftruncate(&fd, size)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::GROW | SealFlags::SHRINK)?;
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
///   `pwrite`s then fill pages that are already huge. The mapping is of a
///   memfd this process just created and nobody else holds, so it cannot
///   fault past the end.
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
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(BLOB_MODE))?;
    add_seals_patiently(&fd)?;
    reopen_read_only(&fd)
}

/// Times `F_SEAL_WRITE` is tried again after `EBUSY`, and the pause before
/// each try.
const SEAL_RETRIES: u32 = 4;
const SEAL_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Add [`BLOB_SEALS`] to a memfd only the daemon holds, with no writable
/// shared mapping left. `F_SEAL_WRITE` also waits (about 150 ms)
/// for every page of the memfd to lose references other than the page
/// cache's, and fails with `EBUSY` if one keeps one: the kernel itself may
/// hold a page for a while (reclaim or memory monitoring isolating it; seen
/// once in a benchmark, on a 47-byte memfd, on a host running DAMON). That
/// passes, so a few more tries, after which the error stands. The pauses
/// block the calling thread; they happen on this rare path only.
fn add_seals_patiently(fd: &OwnedFd) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match rustix::fs::fcntl_add_seals(fd, BLOB_SEALS) {
            Err(Errno::BUSY) if tries < SEAL_RETRIES => {
                tries += 1;
                tracing::debug!("sealing a new memfd met EBUSY; trying again ({tries})");
                std::thread::sleep(SEAL_RETRY_PAUSE);
            }
            Err(Errno::INTR) => {}
            other => return other.map_err(io::Error::from),
        }
    }
}

/// A new open file description of the same inode, read-only, opened by
/// this process with its own credentials (so the inode's mode decides).
fn reopen_read_only(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Bytes read or hashed at a time: large enough for the multi-threaded
/// hash to pay off, small enough to stay in the caches.
const CHUNK: usize = 4 << 20;

/// Read up to `buf.len()` bytes at `offset`, retrying interrupted reads.
/// Fewer bytes means the file ended.
fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::io::pread(fd, &mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}

/// Inputs at least this long are hashed on every CPU (rayon). Below it,
/// handing work to other threads costs more than it saves.
const PARALLEL_HASH_MIN: usize = 1 << 20;

/// Feed `bytes` to `hasher`, multi-threaded above the size where threads
/// pay off. Every publish ends in this hash, and adopting a sealed memfd
/// is little but this hash, so it sets the daemon's publish rate.
fn hash_update(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    if bytes.len() >= PARALLEL_HASH_MIN {
        hasher.update_rayon(bytes);
    } else {
        hasher.update(bytes);
    }
}

/// BLAKE3 of the first `size` bytes of `fd`, read with `pread` (never
/// mapped: see the module documentation). Fails if the file is shorter.
pub fn hash_file(fd: BorrowedFd<'_>, size: u64) -> io::Result<Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; (size as usize).clamp(1, CHUNK)];
    let mut offset = 0u64;
    while offset < size {
        let want = ((size - offset) as usize).min(buffer.len());
        let got = pread_full(fd, &mut buffer[..want], offset)?;
        if got < want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file ended after {} of {size} bytes",
                    offset + got as u64
                ),
            ));
        }
        hash_update(&mut hasher, &buffer[..got]);
        offset += got as u64;
    }
    Ok(*hasher.finalize().as_bytes())
}

/// How a descriptor publish was satisfied, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// A sealed memfd was adopted as is.
    Adopted,
    /// The bytes were copied into a new memfd: a regular file, or a sealed
    /// memfd that could not be adopted (the reason is given).
    Copied(Option<&'static str>),
}

/// Make a blob from a descriptor a client running as `publisher` sent.
/// Blocking (it reads the whole file): run it off the async executor.
pub fn from_descriptor(
    source: OwnedFd,
    declared: u64,
    publisher: u32,
) -> Result<(Blob, Ingested), IngestError> {
    check_regular(&source)?;
    let access = rustix::fs::fcntl_getfl(&source)? & OFlags::ACCMODE;
    if access == OFlags::WRONLY {
        return Err(IngestError::Unreadable(Errno::BADF.into()));
    }
    let frozen = rustix::fs::fcntl_get_seals(&source).is_ok_and(|s| s.contains(IMMUTABLE));
    // Rule 1: until the seals are seen, the size is only a hint.
    let size = fstat(&source)?.st_size as u64;
    if size != declared {
        return Err(IngestError::SizeMismatch {
            declared,
            actual: size,
        });
    }
    if !frozen {
        return Ok((copy(source.as_fd(), declared)?, Ingested::Copied(None)));
    }
    match adopt(&source, declared, publisher)? {
        Ok(blob) => Ok((blob, Ingested::Adopted)),
        Err(why) => Ok((copy(source.as_fd(), declared)?, Ingested::Copied(Some(why)))),
    }
}

/// Adopt a memfd whose seals already freeze it, if it can be made
/// indistinguishable from one of the daemon's own: on shmem, owned by the
/// publisher (or the daemon), mode 0444, all four seals, held through a
/// read-only description the daemon opens itself. The inner error says why
/// not; the caller then copies it.
///
/// The owner rule keeps every version on an inode of its own publisher or
/// of the daemon: a memfd a user received from someone else (another user,
/// a daemon) is copied, so no user's asset rests on an inode another user
/// could change the mode of.
///
/// The daemon tightens the mode and adds `SEAL` where it may (it runs as
/// root, or owns the inode, and the publisher sent a writable
/// description); a publisher that wants zero-copy adoption by an
/// unprivileged daemon sets mode 0444 and all four seals itself.
fn adopt(
    source: &OwnedFd,
    declared: u64,
    publisher: u32,
) -> Result<Result<Blob, &'static str>, IngestError> {
    if !on_shmem(source) {
        return Ok(Err("not a shmem memfd"));
    }
    let owner = fstat(source)?.st_uid;
    if owner != publisher && owner != daemon_uid() {
        return Ok(Err("owned by another user than the publisher"));
    }
    // Rule 1: GROW and SHRINK are in place, so this size is final.
    let size = fstat(source)?.st_size as u64;
    if size != declared {
        return Err(IngestError::SizeMismatch {
            declared,
            actual: size,
        });
    }
    let _ = rustix::fs::fchmod(source, Mode::from_raw_mode(BLOB_MODE));
    let _ = rustix::fs::fcntl_add_seals(source, SealFlags::SEAL);
    // From here on the publisher's description is never used again: it may
    // be writable, or carry the publisher's flags and file offset.
    let Ok(fd) = reopen_read_only(source) else {
        return Ok(Err("the daemon may not open it (mode)"));
    };
    // Read what the daemon's own description sees, after every change the
    // daemon made. The owner could still change the mode later; that only
    // decides whether readers of the owner's own names can reopen it.
    let stat = fstat(&fd)?;
    if stat.st_uid != owner {
        return Ok(Err("its owner changed"));
    }
    if stat.st_mode & 0o7777 != BLOB_MODE {
        return Ok(Err("its mode is not 0444"));
    }
    let seals = rustix::fs::fcntl_get_seals(&fd)?;
    if !seals.contains(BLOB_SEALS) {
        return Ok(Err("F_SEAL_SEAL is missing"));
    }
    let hash = hash_file(fd.as_fd(), size)?;
    Ok(Ok(Blob {
        fd,
        size,
        key: BlobKey {
            hash,
            owner: stat.st_uid,
        },
    }))
}

/// Copy `size` bytes of a file into a new sealed memfd, kernel-side where
/// the file's file system allows it, hashed as it fills. A file that turns
/// out shorter is refused.
fn copy(source: BorrowedFd<'_>, size: u64) -> Result<Blob, IngestError> {
    let mut writer = BlobWriter::new(size)?;
    // Set once the file system turns out not to support `sendfile`.
    let mut buffer: Option<Vec<u8>> = None;
    while writer.remaining() > 0 {
        let offset = size - writer.remaining();
        let want = (writer.remaining() as usize).min(COPY_STEP);
        let got = match &mut buffer {
            None => match writer.send_file_from(source, offset, want) {
                Ok(got) => got,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    buffer = Some(vec![0u8; want]);
                    continue;
                }
                Err(e) => return Err(unreadable_if_badf(e)),
            },
            Some(buffer) => {
                let got =
                    pread_full(source, &mut buffer[..want], offset).map_err(unreadable_if_badf)?;
                writer.write(&buffer[..got])?;
                got
            }
        };
        if got == 0 {
            // The file shrank while we read it.
            return Err(IngestError::SizeMismatch {
                declared: size,
                actual: offset,
            });
        }
    }
    Ok(writer.finish()?)
}

/// Bytes a copy asks the kernel for at once: a few hash steps, so the
/// hash can follow closely.
const COPY_STEP: usize = 4 * writer::HASH_STEP as usize;

/// A read error, as the publisher's fault if its descriptor was not
/// readable at all.
fn unreadable_if_badf(e: io::Error) -> IngestError {
    if e.raw_os_error() == Some(libc::EBADF) {
        IngestError::Unreadable(e)
    } else {
        e.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn seals_of(fd: BorrowedFd<'_>) -> SealFlags {
        rustix::fs::fcntl_get_seals(fd).unwrap()
    }

    fn sealed_memfd(bytes: &[u8], seals: SealFlags, mode: u32) -> OwnedFd {
        let memfd = rustix::fs::memfd_create("t", MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::io::write(&memfd, bytes).unwrap();
        rustix::fs::fchmod(&memfd, Mode::from_raw_mode(mode)).unwrap();
        rustix::fs::fcntl_add_seals(&memfd, seals).unwrap();
        memfd
    }

    #[test]
    fn written_blobs_are_sealed_read_only_and_hashed() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut writer = BlobWriter::new(data.len() as u64).unwrap();
        for chunk in data.chunks(7_000) {
            writer.write(chunk).unwrap();
        }
        let blob = writer.finish().unwrap();
        assert_eq!(blob.hash(), blake3::hash(&data).as_bytes());
        assert!(seals_of(blob.fd()).contains(BLOB_SEALS));
        let flags = rustix::fs::fcntl_getfl(blob.fd()).unwrap();
        assert_eq!(flags & OFlags::ACCMODE, OFlags::RDONLY);
        assert_eq!(fstat(blob.fd()).unwrap().st_mode & 0o777, BLOB_MODE);
        assert_eq!(hash_file(blob.fd(), blob.size()).unwrap(), *blob.hash());
        assert_eq!(blob.key().owner, daemon_uid());
        assert!(blob.intact());
    }

    #[test]
    fn file_is_copied_and_sealed_memfd_is_adopted() {
        let mut file = tempfile();
        file.write_all(b"hello, sealed world").unwrap();
        let (blob, how) = from_descriptor(file.into(), 19, daemon_uid()).unwrap();
        assert_eq!(how, Ingested::Copied(None));
        assert_eq!(blob.hash(), blake3::hash(b"hello, sealed world").as_bytes());

        let memfd = sealed_memfd(b"adopt me", IMMUTABLE, 0o644);
        let (blob, how) = from_descriptor(memfd, 8, daemon_uid()).unwrap();
        assert_eq!(how, Ingested::Adopted);
        assert_eq!(blob.hash(), blake3::hash(b"adopt me").as_bytes());
        // The daemon made it look like its own.
        assert!(seals_of(blob.fd()).contains(BLOB_SEALS));
        assert_eq!(fstat(blob.fd()).unwrap().st_mode & 0o7777, BLOB_MODE);
    }

    #[test]
    fn an_adopted_blob_is_a_new_read_only_description() {
        let memfd = sealed_memfd(b"flags", BLOB_SEALS, 0o444);
        rustix::fs::fcntl_setfl(&memfd, OFlags::APPEND | OFlags::NONBLOCK).unwrap();
        rustix::fs::seek(&memfd, rustix::fs::SeekFrom::Start(3)).unwrap();
        let kept = rustix::io::dup(&memfd).unwrap();
        let (blob, how) = from_descriptor(memfd, 5, daemon_uid()).unwrap();
        assert_eq!(how, Ingested::Adopted);
        let flags = rustix::fs::fcntl_getfl(blob.fd()).unwrap();
        assert_eq!(flags & OFlags::ACCMODE, OFlags::RDONLY);
        assert!(!flags.contains(OFlags::APPEND) && !flags.contains(OFlags::NONBLOCK));
        // The publisher's offset did not travel with it.
        assert_eq!(rustix::fs::tell(blob.fd()).unwrap(), 0);
        assert_eq!(rustix::fs::tell(&kept).unwrap(), 3);
    }

    #[test]
    fn a_memfd_that_cannot_be_made_like_ours_is_copied() {
        // Sealed without SEAL and sent read-only: the daemon cannot add it.
        let memfd = sealed_memfd(b"copy me", IMMUTABLE, 0o444);
        let read_only = reopen_read_only(&memfd).unwrap();
        let (blob, how) = from_descriptor(read_only, 7, daemon_uid()).unwrap();
        assert!(matches!(how, Ingested::Copied(Some(_))), "{how:?}");
        assert_eq!(blob.key().owner, daemon_uid());
        assert!(seals_of(blob.fd()).contains(BLOB_SEALS));
        assert_ne!(
            fstat(blob.fd()).unwrap().st_ino,
            fstat(&memfd).unwrap().st_ino
        );
    }

    #[test]
    fn bad_sources_are_refused() {
        let mut file = tempfile();
        file.write_all(b"abc").unwrap();
        assert!(matches!(
            from_descriptor(file.into(), 4, daemon_uid()),
            Err(IngestError::SizeMismatch {
                declared: 4,
                actual: 3
            })
        ));
        let (read_end, _write_end) = rustix::pipe::pipe().unwrap();
        assert!(matches!(
            from_descriptor(read_end, 0, daemon_uid()),
            Err(IngestError::NotRegular)
        ));
        // A sealed memfd whose size is not the declared one.
        let memfd = sealed_memfd(b"short", BLOB_SEALS, 0o444);
        assert!(matches!(
            from_descriptor(memfd, 4096, daemon_uid()),
            Err(IngestError::SizeMismatch {
                declared: 4096,
                actual: 5
            })
        ));
    }

    #[test]
    fn hashing_a_short_file_fails_instead_of_reading_past_its_end() {
        let memfd = sealed_memfd(b"tiny", BLOB_SEALS, 0o444);
        let err = hash_file(memfd.as_fd(), 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn reverify_refuses_unsealed_altered_and_foreign() {
        let memfd = rustix::fs::memfd_create("t", MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::io::write(&memfd, b"x").unwrap();
        let key = BlobKey {
            hash: *blake3::hash(b"x").as_bytes(),
            owner: daemon_uid(),
        };
        let copy = rustix::io::dup(&memfd).unwrap();
        assert!(matches!(
            Blob::reverify(copy, 1, key),
            Err(IngestError::NotSealed)
        ));
        rustix::fs::fcntl_add_seals(&memfd, BLOB_SEALS).unwrap();
        let copy = rustix::io::dup(&memfd).unwrap();
        let wrong = BlobKey {
            hash: [0; 32],
            ..key
        };
        assert!(matches!(
            Blob::reverify(copy, 1, wrong),
            Err(IngestError::HashMismatch)
        ));
        let copy = rustix::io::dup(&memfd).unwrap();
        let other = BlobKey {
            owner: key.owner + 1,
            ..key
        };
        assert!(matches!(
            Blob::reverify(copy, 1, other),
            Err(IngestError::OwnerMismatch { .. })
        ));
        assert!(Blob::reverify(memfd, 1, key).is_ok());
    }

    #[test]
    fn a_large_memfd_stays_sealable_after_huge_page_preparation() {
        // Whatever the host's setting, the temporary mapping is gone before
        // sealing, so F_SEAL_WRITE does not fail with EBUSY.
        let size = 3 * HUGE_PAGE + 5;
        let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let mut writer = BlobWriter::new(size).unwrap();
        writer.write(&data).unwrap();
        let blob = writer.finish().unwrap();
        assert_eq!(blob.hash(), blake3::hash(&data).as_bytes());
        assert!(seals_of(blob.fd()).contains(BLOB_SEALS));
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
