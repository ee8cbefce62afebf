//! The wire on tokio sockets, for the daemon and the async client alike
//! (feature `tokio`).
//!
//! Each function waits for readiness, then makes progress with the same
//! system calls as the blocking code ([`wire::receive`], [`FrameWriter`]),
//! run inside `try_io` so that a `WouldBlock` clears tokio's readiness.
//! They are cancel-safe where a driver needs it: reading keeps all its
//! progress in the [`FrameBuffer`], so a dropped future (a deadline, a
//! `select!`) loses nothing and the next call resumes the frame.
//! Deadlines are the caller's: wrap a call in `tokio::time::timeout`.
//!
//! They work on any [`Socket`]: tokio's `UnixStream` (the async client),
//! or the daemon's own, which the event loop watches for reading only (a
//! socket becomes writable each time its peer reads what was sent, so a
//! server registered for writing too is woken once more per reply for an
//! event it has no use for).

use crate::error::FrameError;
use crate::wire::{self, FrameBuffer, FrameWriter, RawFrame};
use rustix::net::{send, SendFlags};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// A non-blocking Unix stream socket known to tokio's event loop: what
/// the functions of this module need of it.
pub trait Socket: AsFd + Sync {
    /// What descriptors are sent through.
    type Sender: AsFd;

    /// The socket to send on.
    fn sender(&self) -> &Self::Sender;

    /// Wait until the socket may be ready for `interest` (one of
    /// `READABLE` or `WRITABLE`).
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<()>> + Send;

    /// Run the non-blocking call `f` for `interest`; a `WouldBlock` from
    /// it makes the next [`Socket::ready`] wait for a new event.
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

impl Socket for UnixStream {
    type Sender = UnixStream;

    fn sender(&self) -> &UnixStream {
        self
    }

    async fn ready(&self, interest: Interest) -> io::Result<()> {
        UnixStream::ready(self, interest).await.map(drop)
    }

    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        UnixStream::try_io(self, interest, f)
    }
}

/// Receive once: wait until the socket is readable, then one `recvmsg`
/// into `buffer`. Returns when something arrived (or the peer closed:
/// an error). Cancel-safe.
pub async fn receive(stream: &impl Socket, buffer: &mut FrameBuffer) -> Result<(), FrameError> {
    loop {
        stream.ready(Interest::READABLE).await?;
        // Only an I/O error travels as the `try_io` error, so that
        // `WouldBlock` clears the readiness; framing errors ride in the
        // success value.
        let step = stream.try_io(Interest::READABLE, || {
            match wire::receive(stream.as_fd(), buffer) {
                Err(FrameError::Io(e)) => Err(e),
                other => Ok(other),
            }
        });
        match step {
            Ok(result) => {
                if result.is_ok() && buffer.socket_drained() {
                    // The read came up short: the socket is empty, so
                    // forget the readiness now instead of paying a receive
                    // that would only say EAGAIN next time (frames this
                    // read brought are served from the buffer first).
                    // Tokio keeps the readiness if a new event arrived
                    // meanwhile, and never clears a hang-up it has seen,
                    // so neither a request nor an EOF is lost.
                    let _ = stream.try_io(Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
                return result;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(buffer.fail(FrameError::Io(e))),
        }
    }
}

/// The next frame: from the buffer if one is complete, else after as many
/// receives as it takes. Cancel-safe.
pub async fn next_frame(
    stream: &impl Socket,
    buffer: &mut FrameBuffer,
) -> Result<RawFrame, FrameError> {
    loop {
        if let Some(frame) = buffer.next_frame()? {
            return Ok(frame);
        }
        receive(stream, buffer).await?;
    }
}

/// Raw bytes (the body of a streamed publish) into `out`: first those
/// already buffered behind the last frame, else what one receive brings.
/// Zero means the peer closed the connection. A descriptor riding on raw
/// bytes is an error (and closed).
pub async fn read_raw(
    stream: &impl Socket,
    buffer: &mut FrameBuffer,
    out: &mut [u8],
) -> Result<usize, FrameError> {
    let buffered = buffer.take_raw(out)?;
    if buffered > 0 || out.is_empty() {
        return Ok(buffered);
    }
    loop {
        stream.ready(Interest::READABLE).await?;
        match stream.try_io(Interest::READABLE, || {
            match wire::recv_raw(stream.as_fd(), out) {
                Err(FrameError::Io(e)) => Err(e),
                other => Ok(other),
            }
        }) {
            Ok(result) => return result,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
}

/// Send one encoded frame, `fds` on its first byte.
pub async fn write_frame(
    stream: &impl Socket,
    frame: Vec<u8>,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut writer = FrameWriter::with_fds(frame, fds.to_vec());
    while !writer.is_done() {
        stream.ready(Interest::WRITABLE).await?;
        match stream.try_io(Interest::WRITABLE, || writer.write_step(stream.sender())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Send raw bytes. `MSG_NOSIGNAL` turns a peer that hung up into `EPIPE`
/// instead of a `SIGPIPE` that would kill the process.
pub async fn write_raw(stream: &impl Socket, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.ready(Interest::WRITABLE).await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            send(stream, bytes, SendFlags::NOSIGNAL).map_err(io::Error::from)
        });
        match sent {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
