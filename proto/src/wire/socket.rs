//! The system calls of the wire: one `recvmsg` into a [`FrameBuffer`],
//! and sending a frame with its descriptor.

use super::{FrameBuffer, RawFrame};
use crate::error::FrameError;
use rustix::net::{
    recvmsg, send, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Descriptors one receive has room for above the frame's limit: seeing a
/// few surplus ones lets the receiver close them and name the error
/// precisely rather than rely on `MSG_CTRUNC` alone.
const SURPLUS_ROOM: usize = 7;

/// Room for a receiver of requests (one descriptor at most).
const REQUEST_ROOM: usize = crate::MAX_REQUEST_FDS as usize + SURPLUS_ROOM;

/// Room for a receiver of any frame: what one message may carry.
const FRAME_ROOM: usize = crate::MAX_FDS_PER_FRAME as usize + 3;

/// What one `recvmsg` delivered.
struct Received {
    bytes: usize,
    fds: Vec<OwnedFd>,
}

/// One `recvmsg` into `buf`, collecting descriptors. Errors (after closing
/// everything that arrived) on a truncated control message or a non-
/// `SCM_RIGHTS` control message.
fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    space: &mut [MaybeUninit<u8>],
) -> Result<Received, FrameError> {
    let mut control = RecvAncillaryBuffer::new(space);
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
    let mut small = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(REQUEST_ROOM))];
    let mut large = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(FRAME_ROOM))];
    let space: &mut [MaybeUninit<u8>] = match buffer.max_fds() <= crate::MAX_REQUEST_FDS {
        true => &mut small,
        false => &mut large,
    };
    let room = buffer.spare()?;
    match recv_with_fds(socket, room, space) {
        Ok(received) => buffer.received(received.bytes, received.fds),
        Err(e) => Err(buffer.fail(e)),
    }
}

/// A [`FrameBuffer`] read from a blocking socket (or, step by step, from a
/// non-blocking one), for frames that carry at most one descriptor (every
/// request, every response but a batch).
#[derive(Debug)]
pub struct FrameReader {
    buffer: FrameBuffer,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            buffer: FrameBuffer::with_descriptor_limit(crate::MAX_REQUEST_FDS),
        }
    }
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
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(REQUEST_ROOM))];
    let received = recv_with_fds(socket, buf, &mut space)?;
    if !received.fds.is_empty() {
        return Err(FrameError::MisplacedDescriptor);
    }
    Ok(received.bytes)
}

/// Sends one encoded frame, its descriptors on the first byte.
#[derive(Debug)]
pub struct FrameWriter<'a> {
    frame: Vec<u8>,
    sent: usize,
    fds: Vec<BorrowedFd<'a>>,
}

impl<'a> FrameWriter<'a> {
    /// `frame` is the output of [`crate::codec::encode_request`] or
    /// [`crate::codec::encode_response`].
    pub fn new(frame: Vec<u8>, fd: Option<BorrowedFd<'a>>) -> Self {
        Self::with_fds(frame, fd.into_iter().collect())
    }

    /// A frame that carries several descriptors (a batch answer).
    pub fn with_fds(frame: Vec<u8>, fds: Vec<BorrowedFd<'a>>) -> Self {
        Self {
            frame,
            sent: 0,
            fds,
        }
    }

    /// True once every byte is sent.
    pub fn is_done(&self) -> bool {
        self.sent == self.frame.len()
    }

    /// Make progress with one system call. The first call that sends
    /// anything sends the descriptors with it (`sendmsg`); the rest goes
    /// out with `send`. Both pass `MSG_NOSIGNAL`. On a non-blocking socket
    /// without room this returns `WouldBlock` and may be called again.
    pub fn write_step(&mut self, socket: &impl AsFd) -> io::Result<()> {
        let rest = &self.frame[self.sent..];
        let written = if self.sent == 0 && !self.fds.is_empty() {
            send_with_fds(socket.as_fd(), rest, &self.fds)
        } else {
            send(socket, rest, SendFlags::NOSIGNAL).map_err(io::Error::from)
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
    pub fn write_all(mut self, socket: &impl AsFd) -> io::Result<()> {
        while !self.is_done() {
            self.write_step(socket)?;
        }
        Ok(())
    }
}

/// `sendmsg` of `bytes` with `fds` as `SCM_RIGHTS`, with `MSG_NOSIGNAL`: a
/// peer that hung up is an error (`EPIPE`), never a `SIGPIPE` that would
/// kill the sending process, which may be any program linking the client
/// library (C programs keep SIGPIPE's default action). sendfd's
/// `send_with_fd` cannot pass that flag.
fn send_with_fds(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit();
        rustix::cmsg_space!(ScmRights(crate::MAX_FDS_PER_FRAME as usize))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if fds.len() > crate::MAX_FDS_PER_FRAME as usize
        || !control.push(SendAncillaryMessage::ScmRights(fds))
    {
        return Err(io::Error::other(format!(
            "a frame carries at most {} descriptors, not {}",
            crate::MAX_FDS_PER_FRAME,
            fds.len()
        )));
    }
    Ok(sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}
