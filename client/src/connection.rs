//! One blocking connection to memseald: frames out, frames in.
//!
//! This is the only module that touches the socket. It sends requests with
//! [`wire::FrameWriter`] and receives every byte through
//! [`wire::FrameReader`], which uses `recvmsg` with `MSG_CMSG_CLOEXEC`: a
//! plain or buffered read on a socket that carries descriptors would
//! silently drop them.
//!
//! The connection also remembers when it became unusable. After most
//! failures (a timeout, a malformed frame, a publish cut off half-way) the
//! stream may sit in the middle of a frame, and a later answer could be
//! mistaken for the answer to a later request. Such a connection is shut
//! down and every further call fails with [`Error::ConnectionLost`].

use crate::error::Error;
use crate::protocol;
use memseal_proto::codec::{self, Decoded};
use memseal_proto::wire::{FrameReader, FrameWriter};
use memseal_proto::{FrameError, Request, Response};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{send, SendFlags};
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// A connected socket and the state of the frame being read from it.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: UnixStream,
    /// Holds a partly received frame between system calls.
    reader: FrameReader,
    /// The socket's read and write timeout, quoted in timeout errors.
    timeout: Option<Duration>,
    /// Set once an error left the stream at an unknown position.
    lost: bool,
}

impl Connection {
    /// Wrap a connected stream, applying `timeout` to every read and write.
    pub(crate) fn new(stream: UnixStream, timeout: Option<Duration>) -> io::Result<Connection> {
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        Ok(Connection {
            stream,
            reader: FrameReader::new(),
            timeout,
            lost: false,
        })
    }

    /// The socket, for peer credentials.
    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Run one exchange with the daemon. Refuses to start on a lost
    /// connection, and marks the connection lost if the exchange fails in a
    /// way that leaves the stream unusable.
    pub(crate) fn exchange<T>(
        &mut self,
        work: impl FnOnce(&mut Connection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        if self.lost {
            return Err(Error::ConnectionLost);
        }
        let result = work(self);
        if let Err(e) = &result {
            if e.breaks_connection() {
                self.abandon();
            }
        }
        result
    }

    /// Give up on the connection. Shutting the socket down tells the daemon
    /// at once, rather than when the client is dropped, that nothing more
    /// is coming (for example the rest of a publish).
    pub(crate) fn abandon(&mut self) {
        self.lost = true;
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Send one request frame, with `fd` attached when the request carries a
    /// descriptor.
    pub(crate) fn send(
        &mut self,
        request: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), Error> {
        let frame = codec::encode_request(request).map_err(Error::Protocol)?;
        FrameWriter::new(frame, fd)
            .write_all(&self.stream)
            .map_err(|e| self.io_error(e, "accept the request"))
    }

    /// Send raw bytes: the body of a streamed publish.
    ///
    /// `MSG_NOSIGNAL` turns a daemon that hung up into an `EPIPE` error
    /// instead of a `SIGPIPE` that would kill the calling program.
    pub(crate) fn send_raw(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        while !bytes.is_empty() {
            match send(&self.stream, bytes, SendFlags::NOSIGNAL) {
                Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => bytes = &bytes[n..],
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(self.io_error(e.into(), "accept the data")),
            }
        }
        Ok(())
    }

    /// Receive one response. A [`Response::Error`] becomes [`Error::Server`].
    pub(crate) fn receive(&mut self) -> Result<Decoded<Response>, Error> {
        let frame = self
            .reader
            .read_frame(self.stream.as_fd())
            .map_err(|e| match e {
                FrameError::Io(e) => self.io_error(e, "answer"),
                other => Error::Protocol(other),
            })?;
        protocol::decode(frame)
    }

    /// Receive one message if it completes by `deadline` (`None`: wait as
    /// long as it takes), or `Ok(None)` if it does not. A frame that has
    /// only partly arrived stays in the reader, and the next call resumes
    /// it, so giving up at a deadline never loses the stream's position.
    ///
    /// Waits with `poll` rather than the socket timeout, so that a watcher
    /// can wait for events far longer than one request may take. Once a
    /// frame has begun to arrive, though, its rest is awaited for up to
    /// the socket timeout even past `deadline`: the daemon writes each frame
    /// at once, so the rest is microseconds away, and a caller asking "has
    /// anything arrived?" must not be told "no" about a frame in transit.
    pub(crate) fn receive_by(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Decoded<Response>>, Error> {
        loop {
            // A frame that arrived with an earlier read waits in the
            // reader's buffer, not in the socket: take it without polling.
            if !self.reader.has_frame() {
                let left = match (deadline, self.reader.in_frame()) {
                    (None, _) => None,
                    (Some(_), true) => self.timeout,
                    (Some(deadline), false) => {
                        Some(deadline.saturating_duration_since(Instant::now()))
                    }
                };
                if !readable_within(self.stream.as_fd(), left).map_err(Error::Io)? {
                    if self.reader.in_frame() {
                        return Err(
                            self.io_error(io::ErrorKind::TimedOut.into(), "finish a message")
                        );
                    }
                    return Ok(None);
                }
            }
            // Buffered, or the socket is readable: this returns at once.
            match self.reader.read_step(self.stream.as_fd()) {
                Ok(Some(frame)) => return protocol::decode(frame).map(Some),
                Ok(None) => {}
                Err(FrameError::Io(e)) => return Err(self.io_error(e, "answer")),
                Err(other) => return Err(Error::Protocol(other)),
            }
        }
    }

    /// Send a request and receive its response.
    pub(crate) fn call(
        &mut self,
        request: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Decoded<Response>, Error> {
        self.send(request, fd)?;
        self.receive()
    }

    /// Send a request that must not carry a descriptor, and receive a
    /// response that must not carry one either.
    pub(crate) fn call_plain(&mut self, request: &Request) -> Result<Response, Error> {
        let decoded = self.call(request, None)?;
        // The codec already refuses a descriptor on a response kind that
        // does not call for one; this only covers `Asset`, which the caller
        // then reports as the wrong kind.
        drop::<Option<OwnedFd>>(decoded.fd);
        Ok(decoded.message)
    }

    /// Wait until something can be read, for at most `timeout` (`None`:
    /// forever), without reading it.
    pub(crate) fn wait_readable(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        if self.reader.has_frame() {
            return Ok(true);
        }
        readable_within(self.stream.as_fd(), timeout).map_err(Error::Io)
    }

    /// Whether the daemon has closed this connection or given up on it.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost
    }

    /// Describe a socket error; a timeout names the timeout and what the
    /// daemon failed to do within it.
    fn io_error(&self, e: io::Error, what: &str) -> Error {
        let timed_out = matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        );
        match (timed_out, self.timeout) {
            (true, Some(timeout)) => Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "memseald did not {what} within {:.1} s",
                    timeout.as_secs_f64()
                ),
            )),
            _ => Error::Io(e),
        }
    }
}

/// Wait until `socket` is readable (or closed, or failed: the next receive
/// then says which), for at most `timeout` (`None`: forever). False if the
/// time ran out first.
fn readable_within(socket: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let timespec = timeout.map(|t| Timespec {
        tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    let mut fds = [PollFd::new(&socket, PollFlags::IN)];
    loop {
        match poll(&mut fds, timespec.as_ref()) {
            Ok(ready) => return Ok(ready > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
