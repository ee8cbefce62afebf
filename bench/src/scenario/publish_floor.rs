//! The floors of the two copying publishes: the least any process can do
//! to get the same bytes into a new memfd the same way, with no daemon,
//! no protocol and no hash.
//!
//! - stream: one thread sends the bytes on a Unix socket pair with
//!   `send`, as a client does; another splices them from the socket into
//!   a pipe and from the pipe into a memfd, as the daemon does. Two
//!   copies, one on each side.
//! - file: `sendfile` from the file into a memfd, one kernel-side copy, as
//!   the daemon does for a descriptor publish;
//! - file on two threads: the same copy split between two threads in
//!   alternate steps, each splicing through a pipe of its own (what
//!   `sendfile` does inside): whether a second CPU would buy a file
//!   publish anything on this machine. (Little: tmpfs takes the file's
//!   inode lock for each write into it, so the two threads' copies into
//!   one memfd mostly take turns.)
//! - pages only: `fallocate` of a memfd of the same size, its pages
//!   taken and nothing copied into them: what of a copy's time is the
//!   fresh memory alone.
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

/// Take the pages of a new memfd of `size` bytes, copying nothing.
pub fn pages_only(size: usize) -> io::Result<()> {
    let target = rustix::fs::memfd_create("bench-floor", MemfdFlags::CLOEXEC)?;
    rustix::fs::fallocate(&target, rustix::fs::FallocateFlags::empty(), 0, size as u64)?;
    Ok(())
}

/// Bytes each thread of [`file_on_two_threads`] copies at a time.
const TWO_THREAD_STEP: usize = 16 << 20;

/// Copy `size` bytes of `source` into a memfd on two threads, the steps of
/// [`TWO_THREAD_STEP`] alternating between them.
pub fn file_on_two_threads(source: BorrowedFd<'_>, size: usize) -> io::Result<()> {
    let target = memfd(size)?;
    let target = target.as_fd();
    std::thread::scope(|scope| {
        let second = scope.spawn(move || copy_every_other_step(source, target, size, 1));
        let first = copy_every_other_step(source, target, size, 0);
        let second = second
            .join()
            .map_err(|_| io::Error::other("the second copying thread panicked"))?;
        first.and(second)
    })
}

/// Copy steps `first`, `first + 2`, ... of `source` into `target` at the
/// same offsets, through a pipe: the file's pages into the pipe by
/// reference, then one copy into the memfd.
fn copy_every_other_step(
    source: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    size: usize,
    first: usize,
) -> io::Result<()> {
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_CAPACITY);
    let mut step = first;
    while step * TWO_THREAD_STEP < size {
        let mut from = (step * TWO_THREAD_STEP) as u64;
        let mut to = from;
        let end = (from as usize + TWO_THREAD_STEP).min(size) as u64;
        while from < end {
            let want = ((end - from) as usize).min(PIPE_CAPACITY);
            let mut waiting = rustix::pipe::splice(
                source,
                Some(&mut from),
                &write,
                None,
                want,
                SpliceFlags::MOVE,
            )?;
            if waiting == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            while waiting > 0 {
                waiting -= rustix::pipe::splice(
                    &read,
                    None,
                    target,
                    Some(&mut to),
                    waiting,
                    SpliceFlags::MOVE,
                )?;
            }
        }
        step += 2;
    }
    Ok(())
}
