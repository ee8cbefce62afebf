//! Checking that a descriptor is immutable before trusting it as `&[u8]`.
//!
//! A descriptor that arrives from another process proves nothing by itself:
//! its sender may keep a writable copy, truncate it later, or hand over
//! something that is not a file at all. [`verify`] asks the kernel what the
//! file really is, and maps it only if the kernel itself forbids every
//! change; its documentation lists the checks and why they come in that
//! order.
//!
//! Any failure drops the descriptor (closing it) and leaves nothing mapped.

use crate::map::Mapping;
use crate::options::MapOptions;
use rustix::fs::{fcntl_get_seals, fstat, FileType, SealFlags};
use rustix::io::Errno;
use std::fmt;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The seals that make a file's bytes immutable: nobody may write, and its
/// size may change in neither direction.
pub const REQUIRED_SEALS: SealFlags = SealFlags::WRITE
    .union(SealFlags::GROW)
    .union(SealFlags::SHRINK);

/// Why a descriptor cannot be trusted as immutable bytes.
#[derive(Debug)]
#[non_exhaustive]
pub enum VerifyError {
    /// The descriptor is not a regular file, so it cannot be a memfd.
    NotRegularFile {
        /// What it is instead ("directory", "socket", ...).
        kind: &'static str,
    },
    /// `F_GET_SEALS` failed: the file system does not support seals
    /// (`EINVAL` for anything that is not shmem), so nothing stops the
    /// owner of the file from changing it.
    NotSealable(Errno),
    /// The file supports seals but lacks some of [`REQUIRED_SEALS`].
    MissingSeals {
        /// The seals that are set (`F_SEAL_*` bits).
        have: u32,
        /// The required seals that are not set.
        missing: u32,
    },
    /// The file's size differs from the size the sender announced.
    SizeMismatch {
        /// The size the sender announced.
        declared: u64,
        /// The size `fstat` reports.
        actual: u64,
    },
    /// The file is larger than this process can address.
    TooLarge(u64),
    /// `mmap`, `madvise` or the `pread` of a copy failed (for example for
    /// lack of address space or memory).
    Map(io::Error),
    /// `fstat` failed.
    Stat(io::Error),
}

impl VerifyError {
    /// The `F_SEAL_*` names of the bits in `bits`, for messages.
    pub fn seal_names(bits: u32) -> String {
        const NAMES: [(SealFlags, &str); 6] = [
            (SealFlags::WRITE, "WRITE"),
            (SealFlags::GROW, "GROW"),
            (SealFlags::SHRINK, "SHRINK"),
            (SealFlags::SEAL, "SEAL"),
            (SealFlags::FUTURE_WRITE, "FUTURE_WRITE"),
            (SealFlags::EXEC, "EXEC"),
        ];
        let mut names: Vec<String> = NAMES
            .iter()
            .filter(|(flag, _)| bits & flag.bits() != 0)
            .map(|(_, name)| (*name).to_owned())
            .collect();
        let known = NAMES.iter().fold(0, |all, (flag, _)| all | flag.bits());
        if bits & !known != 0 {
            names.push(format!("{:#x}", bits & !known));
        }
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::NotRegularFile { kind } => write!(
                f,
                "the descriptor is a {kind}, not a sealed memfd; refusing to map it"
            ),
            VerifyError::NotSealable(errno) => write!(
                f,
                "the descriptor does not support seals (F_GET_SEALS: {errno}): it is not a \
                 memfd, so its owner could change the bytes; refusing to map it"
            ),
            VerifyError::MissingSeals { have, missing } => write!(
                f,
                "the descriptor lacks the seal(s) {} (it has: {}), so its bytes or size could \
                 still change; refusing to map it",
                Self::seal_names(*missing),
                Self::seal_names(*have)
            ),
            VerifyError::SizeMismatch { declared, actual } => write!(
                f,
                "the descriptor holds {actual} bytes but {declared} were announced; \
                 refusing to map it"
            ),
            VerifyError::TooLarge(size) => write!(
                f,
                "the descriptor holds {size} bytes, more than this process can address"
            ),
            VerifyError::Map(e) => write!(f, "cannot map the asset: {e}"),
            VerifyError::Stat(e) => write!(f, "cannot inspect the descriptor (fstat): {e}"),
        }
    }
}

impl std::error::Error for VerifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VerifyError::NotSealable(errno) => Some(errno),
            VerifyError::Map(e) | VerifyError::Stat(e) => Some(e),
            _ => None,
        }
    }
}

/// A descriptor verified to be sealed, with all of its bytes in memory:
/// a read-only mapping, or for small files a copy if
/// [`MapOptions::copy_below`] asked for one.
///
/// Dereferences to the file's bytes. Dropping it unmaps the bytes and closes
/// the descriptor.
pub struct Sealed {
    // Declared before `fd` so the mapping goes first on drop; the order does
    // not matter to the kernel, but it reads as the reverse of creation.
    bytes: Bytes,
    fd: OwnedFd,
}

/// Where the bytes of a [`Sealed`] live.
enum Bytes {
    /// The file's own pages, mapped read-only.
    Mapped(Mapping),
    /// A copy read with `pread`, for small files.
    Copied(Box<[u8]>),
}

impl Sealed {
    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True when the bytes are a mapping of the file's pages, false when
    /// they were copied (see [`MapOptions::copy_below`]).
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped(_))
    }

    /// True for a zero-length file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes; the same as dereferencing.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped(map) => map.as_slice(),
            Bytes::Copied(copy) => copy,
        }
    }

    /// Unmap the bytes and hand back the descriptor, for example to pass it
    /// on to another process.
    pub fn into_fd(self) -> OwnedFd {
        let Sealed { bytes, fd } = self;
        drop(bytes);
        fd
    }
}

impl Deref for Sealed {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Sealed {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsFd for Sealed {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("fd", &self.fd)
            .field("len", &self.len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

/// Check that `fd` is a sealed, immutable file and map it read-only.
///
/// `expected_size`, when given, must equal the file's size: it is what the
/// sender announced. The checks, in order:
///
/// 1. `F_GET_SEALS` says `F_SEAL_WRITE`, `F_SEAL_GROW` and `F_SEAL_SHRINK`
///    are all set. The call fails (`EINVAL`) on anything that is not shared
///    memory, which is reported as such after an `fstat` names what the
///    descriptor is. The test is a mask: extra seals such as `F_SEAL_SEAL`
///    or `F_SEAL_EXEC` are welcome, and `F_SEAL_FUTURE_WRITE` does not
///    stand in for `F_SEAL_WRITE`, because a writable mapping made before it
///    keeps writing;
/// 2. one `fstat`, *after* the seals are known, says it is a regular file
///    (a memfd is one) and gives the size that is compared with what the
///    sender announced and mapped. With `F_SEAL_SHRINK` and `F_SEAL_GROW` in
///    place that size is final; read before the seal check, it could have
///    changed in between;
/// 3. the whole file, and never more, is mapped `PROT_READ` and
///    `MAP_PRIVATE`.
///
/// On failure `fd` is closed and nothing stays mapped.
pub fn verify(fd: OwnedFd, expected_size: Option<u64>) -> Result<Sealed, VerifyError> {
    verify_with(fd, expected_size, &MapOptions::new())
}

/// [`verify`], then bring the bytes into memory as `options` say: mapped
/// (populated, advised, aligned for huge pages) or, for a small file,
/// copied. The checks are the same, in the same order.
pub fn verify_with(
    fd: OwnedFd,
    expected_size: Option<u64>,
    options: &MapOptions,
) -> Result<Sealed, VerifyError> {
    let len = checked_len(fd.as_fd(), expected_size)?;
    if options.copies(len as u64) {
        let copy = read_all(fd.as_fd(), len).map_err(VerifyError::Map)?;
        return Ok(Sealed {
            bytes: Bytes::Copied(copy),
            fd,
        });
    }
    // `checked_len` saw F_SEAL_WRITE, F_SEAL_GROW and F_SEAL_SHRINK set on this file, and seals
    // can never be removed: from then on nobody, through any descriptor or mapping, can write it
    // or change its size.
    // SAFETY: so the file is immutable, and `len` is its size measured after the seals were in
    // place, at most `isize::MAX`: exactly the contract of `Mapping::map`.
    let map = unsafe { Mapping::map(fd.as_fd(), len, &options.plan(len, false)) }
        .map_err(VerifyError::Map)?;
    Ok(Sealed {
        bytes: Bytes::Mapped(map),
        fd,
    })
}

/// [`verify`], then map the file as a private copy-on-write view: readable
/// and writable, with every write landing in a page private to this
/// process. `options.copy_below` does not apply.
pub(crate) fn verify_private(
    fd: OwnedFd,
    expected_size: Option<u64>,
    options: &MapOptions,
) -> Result<(Mapping, OwnedFd), VerifyError> {
    let len = checked_len(fd.as_fd(), expected_size)?;
    // Writes through this mapping cannot reach the file: it is MAP_PRIVATE, and sealed anyway.
    // SAFETY: as in `verify_with`: the seals freeze the file and `len` is its final size.
    let map = unsafe { Mapping::map(fd.as_fd(), len, &options.plan(len, true)) }
        .map_err(VerifyError::Map)?;
    Ok((map, fd))
}

/// Checks 1 and 2 of [`verify`]: the size to map, once the file is known to
/// be sealed and to hold what the sender announced.
fn checked_len(fd: BorrowedFd<'_>, expected_size: Option<u64>) -> Result<usize, VerifyError> {
    let size = check_sealed(fd)?;
    if let Some(declared) = expected_size {
        if declared != size {
            return Err(VerifyError::SizeMismatch {
                declared,
                actual: size,
            });
        }
    }
    usize::try_from(size)
        .ok()
        .filter(|&len| len <= isize::MAX as usize)
        .ok_or(VerifyError::TooLarge(size))
}

/// Read exactly `len` bytes from the start of a sealed file with `pread`.
fn read_all(fd: BorrowedFd<'_>, len: usize) -> io::Result<Box<[u8]>> {
    let mut copy = vec![0u8; len].into_boxed_slice();
    let mut filled = 0;
    while filled < len {
        match rustix::io::pread(fd, &mut copy[filled..], filled as u64) {
            // The file cannot shrink (F_SEAL_SHRINK), so an early end means
            // the kernel and the seals disagree; refuse rather than pad.
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the sealed file ended after {filled} of {len} bytes"),
                ))
            }
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(copy)
}

/// Checks 1 and 2 of [`verify`], then the file's final size.
///
/// Also used before publishing a caller's memfd, so the daemon is never sent
/// something it would refuse to adopt.
pub(crate) fn check_sealed(fd: BorrowedFd<'_>) -> Result<u64, VerifyError> {
    let regular = |stat: &rustix::fs::Stat| {
        let file_type = FileType::from_raw_mode(stat.st_mode);
        if file_type == FileType::RegularFile {
            Ok(())
        } else {
            Err(VerifyError::NotRegularFile {
                kind: file_type_name(file_type),
            })
        }
    };
    // The seals first: F_GET_SEALS succeeds only on shmem files, so on the
    // path every fetch takes a single fstat, made once the size can no
    // longer change, answers both "what is it" and "how large". A failure
    // pays for a second look to say what the descriptor is instead.
    let seals = match fcntl_get_seals(fd) {
        Ok(seals) => seals,
        Err(errno) => {
            regular(&fstat(fd).map_err(|e| VerifyError::Stat(e.into()))?)?;
            return Err(VerifyError::NotSealable(errno));
        }
    };
    if !seals.contains(REQUIRED_SEALS) {
        return Err(VerifyError::MissingSeals {
            have: seals.bits(),
            missing: REQUIRED_SEALS.difference(seals).bits(),
        });
    }
    let stat = fstat(fd).map_err(|e| VerifyError::Stat(e.into()))?;
    regular(&stat)?;
    // st_size of a regular file is never negative; treat it as a bad stat
    // rather than wrapping if a kernel ever said otherwise.
    u64::try_from(stat.st_size)
        .map_err(|_| VerifyError::Stat(io::Error::other("fstat reported a negative size")))
}

/// What to call a file type in a message.
pub(crate) fn file_type_name(file_type: FileType) -> &'static str {
    match file_type {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "pipe",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "file of unknown type",
    }
}
