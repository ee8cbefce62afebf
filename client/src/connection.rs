//! One blocking connection to memseald: the driver that runs the
//! operations of [`protocol`] by moving their frames.
//!
//! This is the only module of the blocking client that touches the socket.
//! Requests go out through [`FrameWriter`]; every byte comes in through a
//! [`FrameBuffer`] fed by [`wire::receive`] (`recvmsg` with
//! `MSG_CMSG_CLOEXEC`): a plain or buffered read on a socket that carries
//! descriptors would silently drop them.
//!
//! After most failures (a timeout, a malformed frame, a publish cut off
//! half-way) the stream may sit in the middle of a frame, and a later
//! answer could be mistaken for the answer to a later request; the
//! [`Session`] notices, the socket is shut down, and every further call
//! fails with [`Error::ConnectionLost`].

use crate::error::Error;
use crate::protocol::{self, Action, Operation, Session, Step};
use memseal_proto::codec::{self, Decoded};
use memseal_proto::wire::{self, FrameBuffer, FrameWriter};
use memseal_proto::{FrameError, Request, Response};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{send, SendFlags};
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Where the body of a streamed publish comes from.
pub(crate) trait Body {
    /// Send every byte of the body on `connection`.
    fn send(&mut self, connection: &mut Connection) -> Result<(), Error>;
}

/// No body: for every operation but a streamed publish.
pub(crate) struct NoBody;

impl Body for NoBody {
    fn send(&mut self, _: &mut Connection) -> Result<(), Error> {
        unreachable!("only a streamed publish asks for a body")
    }
}

/// A body already in memory.
pub(crate) struct Bytes<'b>(pub &'b [u8]);

impl Body for Bytes<'_> {
    fn send(&mut self, connection: &mut Connection) -> Result<(), Error> {
        connection.send_raw(self.0)
    }
}

/// A body read from the caller's reader, exactly `size` bytes.
pub(crate) struct Reader<R>(pub R, pub u64);

impl<R: io::Read> Body for Reader<R> {
    fn send(&mut self, connection: &mut Connection) -> Result<(), Error> {
        let mut upload = protocol::Upload::new(self.1);
        while let Some(room) = upload.room() {
            let read = loop {
                match self.0.read(room) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    read => break read,
                }
            };
            let chunk = upload.filled(read)?;
            connection.send_raw(chunk)?;
        }
        Ok(())
    }
}

/// A connected socket, the frames arriving on it, and the session.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: UnixStream,
    /// Holds a partly received frame between system calls.
    buffer: FrameBuffer,
    /// The socket's read and write timeout, quoted in timeout errors.
    timeout: Option<Duration>,
    session: Session,
}

impl Connection {
    /// Wrap a connected stream, applying `timeout` to every read and write.
    pub(crate) fn new(stream: UnixStream, timeout: Option<Duration>) -> io::Result<Connection> {
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        Ok(Connection {
            stream,
            buffer: FrameBuffer::new(),
            timeout,
            session: Session::default(),
        })
    }

    /// The socket, for peer credentials and `poll`.
    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Requests sent so far, the handshake not counted.
    pub(crate) fn requests(&self) -> u64 {
        self.session.requests()
    }

    /// Run one operation to its end: the only loop the blocking client
    /// has (see [`Operation`]).
    pub(crate) fn run<O: Operation>(
        &mut self,
        mut operation: O,
        body: &mut dyn Body,
    ) -> Result<O::Output, Error> {
        if let Err(e) = self.session.begin() {
            self.shut_down();
            return Err(e);
        }
        let mut step = operation.start();
        let result = loop {
            step = match step {
                Step::Done(result) => break result,
                Step::Next(Action::Send(request)) => {
                    self.session.count(&request);
                    let fd = (request.fd_count() > 0)
                        .then(|| operation.descriptor())
                        .flatten();
                    let sent = self.send(&request, fd);
                    operation.sent(sent)
                }
                Step::Next(Action::SendBody) => {
                    let sent = body.send(self);
                    operation.sent(sent)
                }
                Step::Next(Action::Receive) => {
                    let received = self.receive();
                    operation.received(received)
                }
            };
        };
        if self.session.end(&result) {
            self.shut_down();
        }
        result
    }

    /// Give up on the connection. Shutting the socket down tells the daemon
    /// at once, rather than when the client is dropped, that nothing more
    /// is coming.
    pub(crate) fn abandon(&mut self) {
        self.session.abandon();
        self.shut_down();
    }

    fn shut_down(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Send one request frame, with `fd` attached when it carries one.
    fn send(&mut self, request: &Request, fd: Option<BorrowedFd<'_>>) -> Result<(), Error> {
        let frame = codec::encode_request(request).map_err(Error::Protocol)?;
        FrameWriter::new(frame, fd)
            .write_all(&self.stream)
            .map_err(|e| self.io_error(e, "accept the request"))
    }

    /// Send raw bytes: the body of a streamed publish.
    ///
    /// `MSG_NOSIGNAL` turns a daemon that hung up into an `EPIPE` error
    /// instead of a `SIGPIPE` that would kill the calling program.
    fn send_raw(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
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
    fn receive(&mut self) -> Result<Decoded<Response>, Error> {
        loop {
            if let Some(frame) = self.buffer.next_frame().map_err(Error::Protocol)? {
                return protocol::decode(frame);
            }
            wire::receive(self.stream.as_fd(), &mut self.buffer).map_err(|e| match e {
                FrameError::Io(e) => self.io_error(e, "answer"),
                other => Error::Protocol(other),
            })?;
        }
    }

    /// Receive one message if it completes by `deadline` (`None`: wait as
    /// long as it takes), or `Ok(None)` if it does not. A frame that has
    /// only partly arrived stays in the buffer, and the next call resumes
    /// it, so giving up at a deadline never loses the stream's position.
    /// An error gives the connection up.
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
        if self.session.is_lost() {
            return Err(Error::ConnectionLost);
        }
        let result = self.receive_by_inner(deadline);
        if result.is_err() {
            self.abandon();
        }
        result
    }

    fn receive_by_inner(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Decoded<Response>>, Error> {
        loop {
            if let Some(frame) = self.buffer.next_frame().map_err(Error::Protocol)? {
                return protocol::decode(frame).map(Some);
            }
            let left = match (deadline, self.buffer.in_frame()) {
                (None, _) => None,
                (Some(_), true) => self.timeout,
                (Some(deadline), false) => Some(deadline.saturating_duration_since(Instant::now())),
            };
            if !readable_within(self.stream.as_fd(), left).map_err(Error::Io)? {
                if self.buffer.in_frame() {
                    return Err(self.io_error(io::ErrorKind::TimedOut.into(), "finish a message"));
                }
                return Ok(None);
            }
            // The socket is readable: this returns at once.
            wire::receive(self.stream.as_fd(), &mut self.buffer).map_err(|e| match e {
                FrameError::Io(e) => self.io_error(e, "answer"),
                other => Error::Protocol(other),
            })?;
        }
    }

    /// Wait until something can be read, for at most `timeout` (`None`:
    /// forever), without reading it.
    pub(crate) fn wait_readable(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        if self.buffer.has_frame() {
            return Ok(true);
        }
        readable_within(self.stream.as_fd(), timeout).map_err(Error::Io)
    }

    /// Whether the daemon has closed this connection or given up on it.
    pub(crate) fn is_lost(&self) -> bool {
        self.session.is_lost()
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
