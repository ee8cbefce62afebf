//! The daemon's only `unsafe` code: a short-lived writable mapping that
//! lets a new memfd of the daemon's own be backed by huge pages, two
//! socket queries that rustix does not wrap (`SO_PEERGROUPS`, `SIOCOUTQ`),
//! taking ownership of descriptors the service manager passed, registering
//! a socket with tokio's event loop for one kind of readiness, and one
//! setting of the C allocator.
//!
//! `SO_PEERCRED` is read with tokio's `UnixStream::peer_cred`, not
//! rustix's `socket_peercred`, which is unsound here: its `UCred` holds the
//! pid as a non-zero `Pid`, and the kernel reports pid 0 for a peer in a
//! PID namespace the daemon cannot see, such as a client in another
//! container.
//!
//! Each function is a small safe wrapper; callers never see a raw pointer.
//! Nothing here maps a descriptor a client sent (see [`crate::blob`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Make the C allocator give every buffer of 256 KiB or more its own
/// mapping, returned to the kernel when it is freed. By default glibc
/// raises that threshold each time such a buffer is freed, after which
/// the upload and hashing buffers (1 to 4 MiB, one per publish at a time)
/// come from the heap and stay resident long after the publish.
pub fn return_large_buffers_to_the_kernel() {
    const THRESHOLD: libc::c_int = 256 << 10;
    // SAFETY: mallopt takes no pointers and changes one setting of the
    // allocator, under the allocator's own lock.
    let accepted = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
    if accepted != 1 {
        eprintln!(
            "memseald: the allocator refused M_MMAP_THRESHOLD; large buffers may stay resident"
        );
    }
}

/// Register `stream` with tokio's event loop for `interest` only (tokio's
/// own `UnixStream` always asks for reading and writing). Needs the
/// runtime.
pub fn register(stream: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    // A std `UnixStream` owns its descriptor and returns that same one
    // from every `as_raw_fd` until it is dropped.
    // SAFETY: so it stays valid while registered; the owning `AsyncFd` deregisters first.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(io::Error::from)
}

/// The supplementary groups of a Unix socket's peer (`SO_PEERGROUPS`), as
/// they were when it connected.
pub fn peer_groups(socket: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is a writable buffer of exactly `len` bytes and
        // `len` is a valid in/out length for getsockopt.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: the buffer was too small and `len` now holds the size needed.
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
    }
}

/// Bytes sent on a Unix stream socket that the peer has not read yet
/// (`SIOCOUTQ`). Replies a stalled client never reads pile up here, and
/// with them the descriptors they carry.
pub fn unread_bytes(socket: BorrowedFd<'_>) -> io::Result<usize> {
    let mut pending: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int through the pointer, which points
    // to a live, writable c_int.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut pending) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pending.max(0) as usize)
}

/// Take ownership of the descriptors the service manager passed in
/// `LISTEN_FDS`, with their names from `LISTEN_FDNAMES`.
///
/// Owning a descriptor number is sound only if nothing else in the process
/// owns it: `sd_notify::listen_fds_with_names` checked that `LISTEN_PID`
/// names this process (so the numbers were opened for it), and this
/// function hands them out once per process, however often it is called;
/// later calls get none.
pub fn take_inherited_fds() -> io::Result<Vec<(String, OwnedFd)>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let passed: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()?.collect();
    Ok(passed
        .into_iter()
        .map(|(raw, name)| {
            // The service manager opened this descriptor for this process
            // (LISTEN_PID matched), and the flag above lets each number be
            // taken only once.
            // SAFETY: so nothing else in the process owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            (name, fd)
        })
        .collect())
}

/// Fault the first `len` bytes of an empty memfd in through a temporary
/// shared writable mapping marked `MADV_HUGEPAGE`, then unmap it. `len` is
/// a multiple of 2 MiB and at most the file's size.
///
/// The kernel places shared mappings of shmem files at 2 MiB-aligned
/// addresses when huge pages are possible, which the huge allocation needs.
pub fn fault_in_huge_pages(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    use rustix::mm::{madvise, mmap, munmap, Advice, MapFlags, ProtFlags};
    let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
    // The mapping is never turned into a Rust reference, only advised and unmapped below.
    // SAFETY: a fresh mapping at an address the kernel picks (null hint) replaces and aliases
    // nothing; `len` does not exceed the file's size, which cannot shrink: only we hold the file.
    let addr = unsafe {
        mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )
    }?;
    // SAFETY: `addr..addr+len` is the mapping made just above; the advice
    // only changes the size of the pages behind it.
    let mut advised = unsafe { madvise(addr, len, Advice::LinuxHugepage) };
    if advised.is_ok() {
        // The memfd is new and empty, so no byte anyone relies on changes.
        // SAFETY: the same mapping; populating allocates its pages zero-filled, as a first write
        // would.
        advised = unsafe { madvise(addr, len, Advice::LinuxPopulateWrite) };
    }
    // SAFETY: unmaps exactly the mapping made above, which nothing else
    // refers to. It must be gone before the memfd is sealed.
    let unmapped = unsafe { munmap(addr, len) };
    advised?;
    unmapped?;
    Ok(())
}
