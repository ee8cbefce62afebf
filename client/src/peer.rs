//! Who is behind a socket: `SO_PEERCRED`, the client's only `unsafe` code
//! besides `map`.
//!
//! rustix's `socket_peercred` cannot be used: its `UCred` holds the pid as
//! a non-zero `Pid`, but the kernel reports pid 0 when the peer runs in a
//! PID namespace this process cannot see (a daemon on the host seen from a
//! container, or a daemon in a container of its own), and reading that
//! into a non-zero type is undefined behaviour (it surfaced as a bogus
//! error).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The uid the process behind `socket` ran as when it called `listen` or
/// `connect`, as this process's user namespace sees it.
pub(crate) fn peer_uid(socket: BorrowedFd<'_>) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred of exactly `len` bytes, and every
    // bit pattern is a valid ucred.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}
