//! The floors of the two copying publishes: the least any process can do
//! to get the same bytes into a new memfd the same way, with no daemon,
//! no protocol and no hash.
//!
//! - stream: one thread sends the bytes on a Unix socket pair with
//!   `send`, as a client does; another splices them from the socket into
//!   a pipe and from the pipe into a memfd, as the daemon does. Two
//!   copies, one on each side.
//! - file: `sendfile` from the file into a memfd, one kernel-side copy, as
//!   the daemon does for a descriptor publish.
//!
//! Beside `cp` they show what the copies alone cost on this machine, so a
//! publish's distance from `cp` splits into the copies' and the daemon's.

use rustix::fs::MemfdFlags;
use rustix::pipe::{PipeFlags, SpliceFlags};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// The pipe capacity the daemon asks for.
const PIPE_CAPACITY: usize = 1 << 20;

/// A new memfd of `size` bytes.
fn memfd(size: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("bench-floor", MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, size as u64)?;
    Ok(fd)
}

/// Send `bytes` over a socket pair and splice them into a memfd.
pub fn stream(bytes: &[u8]) -> io::Result<()> {
    let (mut sender, receiver) = UnixStream::pair()?;
    let size = bytes.len();
    std::thread::scope(|scope| {
        let receiving = scope.spawn(move || splice_into_memfd(receiver.as_fd(), size));
        let sent = sender.write_all(bytes);
        let received = receiving
            .join()
            .map_err(|_| io::Error::other("the receiving thread panicked"))?;
        sent.and(received)
    })
}

fn splice_into_memfd(socket: BorrowedFd<'_>, size: usize) -> io::Result<()> {
    let target = memfd(size)?;
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_CAPACITY);
    let mut offset = 0u64;
    while (offset as usize) < size {
        let want = (size - offset as usize).min(PIPE_CAPACITY);
        let mut waiting =
            rustix::pipe::splice(socket, None, &write, None, want, SpliceFlags::MOVE)?;
        if waiting == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        while waiting > 0 {
            let moved = rustix::pipe::splice(
                &read,
                None,
                &target,
                Some(&mut offset),
                waiting,
                SpliceFlags::MOVE,
            )?;
            waiting -= moved;
        }
    }
    Ok(())
}

/// Copy `size` bytes of `source` into a memfd with `sendfile`.
pub fn file(source: BorrowedFd<'_>, size: usize) -> io::Result<()> {
    let target = memfd(size)?;
    let mut offset = 0u64;
    while (offset as usize) < size {
        let want = (size - offset as usize).min(16 << 20);
        if rustix::fs::sendfile(&target, source, Some(&mut offset), want)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}
