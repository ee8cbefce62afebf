//! The system calls of the wire: one `recvmsg` into a [`FrameBuffer`],
//! and sending a frame with its descriptor.

use super::{FrameBuffer, RawFrame};
use crate::error::FrameError;
use rustix::net::{
    recvmsg, send, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendFlags,
};
use sendfd::SendWithFd;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Room for this many descriptors in each receive. Anything above
/// [`crate::MAX_FDS_PER_FRAME`] is an error, but the extra room lets the
/// receiver see and close a few surplus descriptors instead of relying on
/// `MSG_CTRUNC` alone.
const FD_ROOM: usize = 8;

/// What one `recvmsg` delivered.
struct Received {
    bytes: usize,
    fds: Vec<OwnedFd>,
}

/// One `recvmsg` into `buf`, collecting descriptors. Errors (after closing
/// everything that arrived) on a truncated control message or a non-
/// `SCM_RIGHTS` control message.
fn recv_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Received, FrameError> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(FD_ROOM))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match recvmsg(
            socket,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    let mut foreign = false;
    for message in control.drain() {
        match message {
            RecvAncillaryMessage::ScmRights(received) => fds.extend(received),
            _ => foreign = true,
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(FrameError::ControlTruncated);
    }
    if foreign {
        return Err(FrameError::UnexpectedControl);
    }
    Ok(Received {
        bytes: msg.bytes,
        fds,
    })
}

/// One `recvmsg` into the spare room of `buffer`, and what arrived
/// recorded in it. On a non-blocking socket with nothing to read this
/// returns `FrameError::Io(WouldBlock)`, changing nothing; after any other
/// error the buffer's descriptors are closed.
pub fn receive(socket: BorrowedFd<'_>, buffer: &mut FrameBuffer) -> Result<(), FrameError> {
    let room = buffer.spare()?;
    match recv_with_fds(socket, room) {
        Ok(received) => buffer.received(received.bytes, received.fds),
        Err(e) => Err(buffer.fail(e)),
    }
}

/// A [`FrameBuffer`] read from a blocking socket (or, step by step, from a
/// non-blocking one).
#[derive(Debug, Default)]
pub struct FrameReader {
    buffer: FrameBuffer,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next frame: from the buffer if one is complete, else after one
    /// `recvmsg`. `None` means more bytes are needed.
    pub fn read_step(&mut self, socket: BorrowedFd<'_>) -> Result<Option<RawFrame>, FrameError> {
        if let Some(frame) = self.buffer.next_frame()? {
            return Ok(Some(frame));
        }
        receive(socket, &mut self.buffer)?;
        self.buffer.next_frame()
    }

    /// Read a whole frame from a blocking socket.
    pub fn read_frame(&mut self, socket: BorrowedFd<'_>) -> Result<RawFrame, FrameError> {
        loop {
            if let Some(frame) = self.read_step(socket)? {
                return Ok(frame);
            }
        }
    }

    /// True once any byte of a frame not yet returned has arrived.
    pub fn in_frame(&self) -> bool {
        self.buffer.in_frame()
    }

    /// Buffered raw bytes after the last frame; see
    /// [`FrameBuffer::take_raw`].
    pub fn take_raw(&mut self, out: &mut [u8]) -> Result<usize, FrameError> {
        self.buffer.take_raw(out)
    }
}

/// Receive exactly `buf.len()` raw bytes (the body of a streamed publish).
/// Returns how many bytes one `recvmsg` delivered; zero means the peer
/// closed. A descriptor riding on these bytes is an error and is closed.
pub fn recv_raw(socket: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, FrameError> {
    let received = recv_with_fds(socket, buf)?;
    if !received.fds.is_empty() {
        return Err(FrameError::MisplacedDescriptor);
    }
    Ok(received.bytes)
}

/// Sends one encoded frame, its descriptor on the first byte.
#[derive(Debug)]
pub struct FrameWriter<'a> {
    frame: Vec<u8>,
    sent: usize,
    fd: Option<BorrowedFd<'a>>,
}

impl<'a> FrameWriter<'a> {
    /// `frame` is the output of [`crate::codec::encode_request`] or
    /// [`crate::codec::encode_response`].
    pub fn new(frame: Vec<u8>, fd: Option<BorrowedFd<'a>>) -> Self {
        Self { frame, sent: 0, fd }
    }

    /// True once every byte is sent.
    pub fn is_done(&self) -> bool {
        self.sent == self.frame.len()
    }

    /// Make progress with one system call. The first call that sends
    /// anything sends the descriptor with it (sendfd's `sendmsg`); the rest
    /// goes out with `send(MSG_NOSIGNAL)`. On a non-blocking socket without
    /// room this returns `WouldBlock` and may be called again.
    pub fn write_step<S: SendWithFd + AsFd>(&mut self, socket: &S) -> io::Result<()> {
        let rest = &self.frame[self.sent..];
        let written = match self.fd {
            Some(fd) if self.sent == 0 => socket.send_with_fd(rest, &[fd.as_raw_fd()]),
            _ => send(socket, rest, SendFlags::NOSIGNAL).map_err(io::Error::from),
        };
        match written {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                self.sent += n;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Send the whole frame on a blocking socket.
    pub fn write_all<S: SendWithFd + AsFd>(mut self, socket: &S) -> io::Result<()> {
        while !self.is_done() {
            self.write_step(socket)?;
        }
        Ok(())
    }
}
