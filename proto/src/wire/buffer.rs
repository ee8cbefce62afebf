//! [`FrameBuffer`]: reassembling frames from received bytes and
//! descriptors, without touching a socket.

use super::RawFrame;
use crate::codec::{parse_header, HEADER_LEN};
use crate::error::FrameError;
use std::os::fd::OwnedFd;

/// The smallest receive buffer: room for any common request or reply in
/// one read, small enough that idle connections cost little.
const MIN_BUFFER: usize = 1024;

/// Reassembles frames from the bytes and descriptors a stream socket
/// delivers.
///
/// A receiver asks for [`spare`](FrameBuffer::spare) room, receives into it
/// (one `recvmsg`: [`super::receive`]), reports what arrived with
/// [`received`](FrameBuffer::received), and takes complete frames with
/// [`next_frame`](FrameBuffer::next_frame). The room is whatever is free in
/// a small buffer (grown only while a large frame is being read), so a
/// request usually costs one system call whatever its length, and
/// pipelined frames come out of the buffer without further calls.
///
/// Descriptors are tied to frames by where they arrive. The kernel ends a
/// `recvmsg` right after the first chunk that carries descriptors, and a
/// sender attaches them to a frame's first byte, so descriptors that
/// arrive with a read belong to the last frame that *starts* within that
/// read. A read that starts no frame but brings descriptors is a protocol
/// error (they rode on a byte in the middle of a frame), and so is a second
/// batch for the same frame. After any error every descriptor not handed
/// out is closed at once; the stream is unusable.
#[derive(Debug)]
pub struct FrameBuffer {
    /// Received bytes not yet handed out: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream offset of `buf[start]`, which is always a frame boundary.
    offset: u64,
    /// Descriptors waiting for the frame that starts at the given offset.
    pending: Vec<(u64, Vec<OwnedFd>)>,
    /// The room the last `spare` offered.
    offered: usize,
    /// The most descriptors one frame may bring; more are refused (and
    /// closed) as they arrive.
    max_fds: u8,
    /// The last receive returned less than it had room for, and no
    /// descriptor: the socket held nothing more at that moment.
    drained: bool,
}

impl Default for FrameBuffer {
    fn default() -> Self {
        Self::with_descriptor_limit(crate::MAX_FDS_PER_FRAME)
    }
}

impl FrameBuffer {
    /// A buffer for frames of either side: up to
    /// [`crate::MAX_FDS_PER_FRAME`] descriptors each.
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer whose frames may carry at most `max_fds` descriptors: the
    /// daemon reads requests, which carry at most
    /// [`crate::MAX_REQUEST_FDS`].
    pub fn with_descriptor_limit(max_fds: u8) -> Self {
        FrameBuffer {
            buf: Vec::new(),
            start: 0,
            end: 0,
            offset: 0,
            pending: Vec::new(),
            offered: 0,
            max_fds,
            drained: false,
        }
    }

    /// The most descriptors one frame may bring.
    pub fn max_fds(&self) -> u8 {
        self.max_fds
    }

    /// True once any byte of a frame not yet returned has arrived.
    pub fn in_frame(&self) -> bool {
        self.end > self.start
    }

    /// True if a complete frame is buffered: [`FrameBuffer::next_frame`]
    /// returns it, and no receive is needed.
    pub fn has_frame(&self) -> bool {
        matches!(self.frame_len_at(self.start), Ok(Some(_)))
    }

    /// True when the last receive emptied the socket: it returned fewer
    /// bytes than there was room for, and no descriptor (which would have
    /// ended it early). Frames it brought may still be buffered; once they
    /// are served, a non-blocking caller can wait for readiness instead of
    /// trying a receive that would only say `WouldBlock`.
    pub fn socket_drained(&self) -> bool {
        self.drained
    }

    /// The length prefix of the frame that starts at `at`, if its four
    /// bytes have arrived; refuses a hostile length.
    fn header_at(&self, at: usize) -> Result<Option<usize>, FrameError> {
        let Some(bytes) = self
            .buf
            .get(at..at + HEADER_LEN)
            .filter(|_| at + HEADER_LEN <= self.end)
        else {
            return Ok(None);
        };
        let header: [u8; HEADER_LEN] = bytes.try_into().expect("four bytes");
        parse_header(header).map(Some)
    }

    /// The whole length (prefix included) of the frame at `at`, if all of
    /// it has arrived.
    fn frame_len_at(&self, at: usize) -> Result<Option<usize>, FrameError> {
        Ok(self
            .header_at(at)?
            .map(|len| HEADER_LEN + len)
            .filter(|total| self.end - at >= *total))
    }

    /// Room for the next receive: at least the rest of the current frame
    /// when its length is known, at least a kilobyte otherwise. A length
    /// above the frame cap is refused here, before anything is allocated.
    pub fn spare(&mut self) -> Result<&mut [u8], FrameError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let wanted = match self.header_at(0) {
            Ok(len) => MIN_BUFFER.max(HEADER_LEN + len.unwrap_or(0)),
            Err(e) => return Err(self.fail(e)),
        };
        if self.buf.len() < wanted {
            // Exactly: the usual doubling could allocate up to twice the
            // largest frame.
            self.buf.reserve_exact(wanted - self.buf.len());
            self.buf.resize(wanted, 0);
        }
        self.offered = self.buf.len() - self.end;
        Ok(&mut self.buf[self.end..])
    }

    /// Record that a receive put `bytes` bytes into the spare room, with
    /// `fds` arriving alongside. Zero bytes means the peer closed the
    /// connection: [`FrameError::Closed`] between frames,
    /// [`FrameError::Truncated`] inside one.
    pub fn received(&mut self, bytes: usize, fds: Vec<OwnedFd>) -> Result<(), FrameError> {
        debug_assert!(bytes <= self.offered, "more than the spare room");
        if bytes == 0 {
            return Err(self.fail(self.eof()));
        }
        let from = self.offset + (self.end - self.start) as u64;
        self.drained = bytes < self.offered && fds.is_empty();
        self.end += bytes;
        if fds.is_empty() {
            return Ok(());
        }
        if fds.len() > self.max_fds as usize {
            return Err(self.fail(FrameError::DescriptorCount {
                declared: self.max_fds,
                received: fds.len(),
            }));
        }
        self.attach(from, from + bytes as u64, fds)
            .map_err(|e| self.fail(e))
    }

    /// The complete frame at the front of the buffer, if any.
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, FrameError> {
        let total = match self.frame_len_at(self.start) {
            Ok(Some(total)) => total,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.fail(e)),
        };
        let payload = self.buf[self.start + HEADER_LEN..self.start + total].to_vec();
        let fds = match self.pending.iter().position(|(at, _)| *at == self.offset) {
            Some(index) => self.pending.swap_remove(index).1,
            None => Vec::new(),
        };
        self.start += total;
        self.offset += total as u64;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // A large frame grew the buffer; give the memory back.
            if self.buf.len() > 4 * MIN_BUFFER {
                self.buf = Vec::new();
            }
        }
        Ok(Some(RawFrame { payload, fds }))
    }

    /// Take up to `out.len()` buffered bytes that follow the last frame, as
    /// raw data (the body of a streamed publish that arrived together with
    /// its request). Descriptors waiting in the buffer cannot belong to raw
    /// data: they are an error.
    pub fn take_raw(&mut self, out: &mut [u8]) -> Result<usize, FrameError> {
        if !self.pending.is_empty() {
            return Err(self.fail(FrameError::MisplacedDescriptor));
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        self.offset += n as u64;
        Ok(n)
    }

    /// Close every descriptor not handed out, and pass `error` on: after
    /// an error the stream's position is unknown, and nothing that arrived
    /// on it will be used.
    pub fn fail(&mut self, error: FrameError) -> FrameError {
        if !error.is_would_block() {
            self.pending.clear();
        }
        error
    }

    /// Tie descriptors that arrived with the bytes at stream offsets
    /// `[from, to)` to the last frame starting in that range.
    fn attach(&mut self, from: u64, to: u64, fds: Vec<OwnedFd>) -> Result<(), FrameError> {
        let mut boundary = self.offset;
        let mut at = self.start;
        let mut owner = None;
        while boundary < to {
            if boundary >= from {
                owner = Some(boundary);
            }
            let Some(len) = self.header_at(at)? else {
                break;
            };
            boundary += (HEADER_LEN + len) as u64;
            at += HEADER_LEN + len;
            if at > self.end {
                break;
            }
        }
        let owner = owner.ok_or(FrameError::MisplacedDescriptor)?;
        if self.pending.iter().any(|(at, _)| *at == owner) {
            return Err(FrameError::MisplacedDescriptor);
        }
        self.pending.push((owner, fds));
        Ok(())
    }

    /// What the end of the stream means here.
    fn eof(&self) -> FrameError {
        let received = self.end - self.start;
        if received == 0 {
            return FrameError::Closed;
        }
        let expected = match self.header_at(self.start) {
            Ok(Some(len)) => HEADER_LEN + len,
            _ => HEADER_LEN,
        };
        FrameError::Truncated { received, expected }
    }
}
