//! The client's socket as the event loop sees it: registered for reading
//! only.
//!
//! A Unix stream socket becomes writable each time its peer reads what was
//! sent. Registered for writing as well (as tokio's `UnixStream` always
//! is), the daemon would wake once more per reply, for an event it has no
//! use for: a reply goes into an empty socket buffer nearly always, since
//! a client reads one before it asks again. So replies go straight to the
//! kernel, and only when one would block (a client that does not read,
//! with its buffer full) is writability watched, on a duplicate of the
//! descriptor registered for that wait alone and dropped after it.

use crate::sys;
use memseal_proto::tokio_io::Socket;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A client's stream, registered with tokio for reading only, or, while
/// a fast lane serves it with blocking calls, not at all (see
/// [`ReadRegistered::unregister`]).
#[derive(Debug)]
pub struct ReadRegistered {
    registered: Option<AsyncFd<UnixStream>>,
    /// The stream while it is not registered.
    unregistered: Option<UnixStream>,
    /// The last send said `WouldBlock`: the next wait for writability must
    /// really wait.
    send_blocked: AtomicBool,
}

impl ReadRegistered {
    /// Take `stream` over from tokio's own registration. Needs the runtime.
    pub fn new(stream: tokio::net::UnixStream) -> io::Result<ReadRegistered> {
        let stream = stream.into_std()?;
        stream.set_nonblocking(true)?;
        Ok(ReadRegistered {
            registered: Some(sys::register(stream, Interest::READABLE)?),
            unregistered: None,
            send_blocked: AtomicBool::new(false),
        })
    }

    /// Wait until the client sent something (or hung up).
    pub async fn readable(&self) -> io::Result<()> {
        self.ready(Interest::READABLE).await
    }

    /// Take the stream out of the event loop, so that requests read with
    /// blocking calls no longer wake it too.
    pub fn unregister(&mut self) {
        if let Some(registered) = self.registered.take() {
            self.unregistered = Some(registered.into_inner());
        }
    }

    /// Put the stream back into the event loop. epoll reports data that
    /// is already waiting as soon as the socket is added, so nothing that
    /// arrived meanwhile is missed.
    pub fn register_again(&mut self) -> io::Result<()> {
        if let Some(stream) = self.unregistered.take() {
            self.registered = Some(sys::register(stream, Interest::READABLE)?);
        }
        Ok(())
    }

    fn stream(&self) -> &UnixStream {
        match (&self.registered, &self.unregistered) {
            (Some(registered), _) => registered.get_ref(),
            (None, Some(stream)) => stream,
            (None, None) => unreachable!("the stream is always held one way or the other"),
        }
    }

    fn registration(&self) -> io::Result<&AsyncFd<UnixStream>> {
        self.registered.as_ref().ok_or_else(|| {
            io::Error::other("the socket is served by a fast lane, not the event loop")
        })
    }
}

impl AsFd for ReadRegistered {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream().as_fd()
    }
}

impl Socket for ReadRegistered {
    type Sender = UnixStream;

    fn sender(&self) -> &UnixStream {
        self.stream()
    }

    async fn ready(&self, interest: Interest) -> io::Result<()> {
        if interest.is_readable() {
            return self.registration()?.readable().await.map(drop);
        }
        if !self.send_blocked.load(Ordering::Relaxed) {
            return Ok(());
        }
        // epoll reports a socket that is writable already as soon as it
        // is added, so no event can be missed between the failed send and
        // this registration.
        let duplicate = self.stream().try_clone()?;
        let waiter = sys::register(duplicate, Interest::WRITABLE)?;
        waiter.writable().await?.retain_ready();
        self.send_blocked.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        if interest.is_readable() {
            return self.registration()?.try_io(Interest::READABLE, |_| f());
        }
        let result = f();
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.send_blocked.store(true, Ordering::Relaxed);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memseal_proto::tokio_io::write_raw;
    use std::io::Read;

    #[tokio::test]
    async fn a_send_that_would_block_waits_for_the_reader() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let ours = ReadRegistered::new(ours).unwrap();
        let mut theirs = theirs.into_std().unwrap();
        theirs.set_nonblocking(false).unwrap();
        // Far more than a socket buffer holds: the send blocks until the
        // reader drains it, and then completes.
        let bytes = vec![7u8; 8 << 20];
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 1 << 16];
            while got.len() < 8 << 20 {
                let n = theirs.read(&mut chunk).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        write_raw(&ours, &bytes).await.unwrap();
        assert_eq!(reader.join().unwrap(), bytes);
        assert!(
            !ours.send_blocked.load(Ordering::Relaxed),
            "the wait for the reader ended the blocked state"
        );
    }
}
