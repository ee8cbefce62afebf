//! Moving frames and descriptors over a Unix stream socket.
//!
//! Descriptors ride as `SCM_RIGHTS` on the first byte of a frame. On a
//! stream socket the kernel may hand one `recvmsg` the tail of one frame and
//! the head of the next, but it ends the call right after the first chunk
//! that carries descriptors; the receiver uses that to tie descriptors to
//! the frame they started (see [`FrameReader`]), and refuses descriptors
//! that arrive in the middle of a frame.
//!
//! Every receive passes a control buffer with room for more descriptors
//! than any frame may carry (so surplus ones are seen and closed rather than
//! silently dropped by a plain `read`), sets `MSG_CMSG_CLOEXEC` so none
//! leaks into a child, and checks `MSG_CTRUNC`.
//!
//! [`FrameReader`] and [`FrameWriter`] are state machines that make progress
//! one system call at a time, so the same code drives the blocking client
//! and the daemon's non-blocking tokio sockets (which retry on
//! `WouldBlock`).

use crate::codec::{parse_header, HEADER_LEN};
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

/// A complete frame as received: its payload (length prefix stripped) and
/// the descriptors that arrived with its first byte.
#[derive(Debug)]
pub struct RawFrame {
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

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

/// Reassembles frames from a stream socket, one `recvmsg` at a time.
///
/// Each receive takes whatever the socket holds, up to the free room of a
/// small buffer (grown only while a large frame is being read), so a
/// request usually costs one system call whatever its length, and
/// pipelined frames are split from the buffer without further calls.
///
/// Descriptors are tied to frames by where they arrive. The kernel ends a
/// `recvmsg` right after the first chunk that carries descriptors, and a
/// sender attaches them to a frame's first byte, so descriptors that
/// arrive with a read belong to the last frame that *starts* within that
/// read. A read that starts no frame but brings descriptors is a protocol
/// error (they rode on a byte in the middle of a frame), and so is a second
/// batch for the same frame. Every descriptor not handed out is closed
/// when its error is returned or the reader is dropped.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Received bytes not yet handed out: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream offset of `buf[start]`, which is always a frame boundary.
    offset: u64,
    /// Descriptors waiting for the frame that starts at the given offset.
    pending: Vec<(u64, Vec<OwnedFd>)>,
    /// The last receive returned less than it had room for, and no
    /// descriptor: the socket held nothing more at that moment.
    drained: bool,
}

/// The smallest receive buffer: room for any common request or reply in
/// one read, small enough that idle connections cost little.
const MIN_BUFFER: usize = 1024;

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once any byte of a frame not yet returned has arrived.
    pub fn in_frame(&self) -> bool {
        self.end > self.start
    }

    /// True when the last receive emptied the socket (it returned fewer
    /// bytes than there was room for, and no descriptor, which would have
    /// ended it early). A non-blocking caller can then wait for readiness
    /// instead of trying a receive that would only say `WouldBlock`.
    pub fn socket_drained(&self) -> bool {
        self.drained && !self.has_frame()
    }

    /// True if a complete frame is buffered: the next `read_step` returns
    /// it without a system call.
    pub fn has_frame(&self) -> bool {
        matches!(self.buffered_frame_len(), Ok(Some(_)))
    }

    /// The length (prefix included) of the frame at `start`, if complete.
    fn buffered_frame_len(&self) -> Result<Option<usize>, FrameError> {
        let available = self.end - self.start;
        if available < HEADER_LEN {
            return Ok(None);
        }
        let header: [u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
            .try_into()
            .expect("four bytes");
        let total = HEADER_LEN + parse_header(header)?;
        Ok((available >= total).then_some(total))
    }

    /// Hand out the complete frame at the front of the buffer, if any.
    fn pop_frame(&mut self) -> Result<Option<RawFrame>, FrameError> {
        let Some(total) = self.buffered_frame_len()? else {
            return Ok(None);
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

    /// Make room for the next read: at least the rest of the current frame
    /// when its length is known, at least [`MIN_BUFFER`] otherwise.
    fn make_room(&mut self) -> Result<(), FrameError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let mut wanted = MIN_BUFFER;
        if self.end >= HEADER_LEN {
            let header: [u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().expect("four bytes");
            // Refuses a hostile length before allocating anything for it.
            wanted = wanted.max(HEADER_LEN + parse_header(header)?);
        }
        if self.buf.len() < wanted {
            self.buf.resize(wanted, 0);
        }
        Ok(())
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
            if self.end - at < HEADER_LEN {
                break;
            }
            let header: [u8; HEADER_LEN] = self.buf[at..at + HEADER_LEN]
                .try_into()
                .expect("four bytes");
            let total = HEADER_LEN + parse_header(header)?;
            boundary += total as u64;
            at += total;
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

    /// Return the next frame: from the buffer if one is complete, else
    /// after one `recvmsg`. `None` means more bytes are needed. On a
    /// non-blocking socket with nothing to read this returns
    /// `FrameError::Io(WouldBlock)` and may be called again later.
    pub fn read_step(&mut self, socket: BorrowedFd<'_>) -> Result<Option<RawFrame>, FrameError> {
        let step = self.step(socket);
        if matches!(&step, Err(e) if !e.is_would_block()) {
            // The stream is unusable now: close every descriptor at once
            // rather than when the reader is dropped.
            self.pending.clear();
        }
        step
    }

    fn step(&mut self, socket: BorrowedFd<'_>) -> Result<Option<RawFrame>, FrameError> {
        if let Some(frame) = self.pop_frame()? {
            return Ok(Some(frame));
        }
        self.make_room()?;
        let from = self.offset + (self.end - self.start) as u64;
        let room = self.buf.len() - self.end;
        self.drained = false;
        let received = recv_with_fds(socket, &mut self.buf[self.end..])?;
        if received.bytes == 0 {
            return Err(self.eof());
        }
        self.drained = received.bytes < room && received.fds.is_empty();
        self.end += received.bytes;
        if !received.fds.is_empty() {
            if received.fds.len() > crate::MAX_FDS_PER_FRAME as usize {
                return Err(FrameError::DescriptorCount {
                    declared: crate::MAX_FDS_PER_FRAME,
                    received: received.fds.len(),
                });
            }
            self.attach(from, from + received.bytes as u64, received.fds)?;
        }
        self.pop_frame()
    }

    /// Read a whole frame from a blocking socket.
    pub fn read_frame(&mut self, socket: BorrowedFd<'_>) -> Result<RawFrame, FrameError> {
        loop {
            if let Some(frame) = self.read_step(socket)? {
                return Ok(frame);
            }
        }
    }

    /// Take up to `out.len()` buffered bytes that follow the last frame, as
    /// raw data (the body of a streamed publish that arrived together with
    /// its request). Descriptors waiting in the buffer cannot belong to raw
    /// data: they are an error.
    pub fn take_raw(&mut self, out: &mut [u8]) -> Result<usize, FrameError> {
        if !self.pending.is_empty() {
            self.pending.clear();
            return Err(FrameError::MisplacedDescriptor);
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        self.offset += n as u64;
        Ok(n)
    }

    fn eof(&self) -> FrameError {
        let received = self.end - self.start;
        if received == 0 {
            return FrameError::Closed;
        }
        let expected = match self.buffered_frame_len() {
            _ if received < HEADER_LEN => HEADER_LEN,
            _ => {
                let header: [u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
                    .try_into()
                    .expect("four bytes");
                HEADER_LEN + parse_header(header).unwrap_or(0)
            }
        };
        FrameError::Truncated { received, expected }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_response, encode_response};
    use crate::message::Response;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    /// A memfd with a name unique to the test, and a way to count how many
    /// descriptors of this process point at it (robust against other tests
    /// opening files in parallel).
    fn marker(name: &str) -> OwnedFd {
        rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).unwrap()
    }

    fn open_count(name: &str) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().contains(name))
            .count()
    }

    #[test]
    fn frame_with_descriptor_round_trip() {
        let (a, b) = pair();
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let frame = encode_response(&Response::Continue).unwrap();
        // Declare one descriptor by hand: Continue calls for none, which the
        // codec rejects, but the wire layer delivers it faithfully.
        let mut declared = frame.clone();
        declared[4] = 1;
        FrameWriter::new(declared, Some(file.as_fd()))
            .write_all(&a)
            .unwrap();
        FrameWriter::new(frame, None).write_all(&a).unwrap();
        let mut reader = FrameReader::new();
        let first = reader.read_frame(b.as_fd()).unwrap();
        assert_eq!(first.fds.len(), 1);
        let flags = rustix::io::fcntl_getfd(&first.fds[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        assert!(matches!(
            decode_response(&first.payload, first.fds),
            Err(FrameError::DescriptorMismatch { .. })
        ));
        let second = reader.read_frame(b.as_fd()).unwrap();
        assert!(second.fds.is_empty());
        assert_eq!(
            decode_response(&second.payload, second.fds)
                .unwrap()
                .message,
            Response::Continue
        );
    }

    #[test]
    fn descriptor_on_a_later_byte_is_refused_and_closed() {
        let (a, b) = pair();
        let file = marker("memseal-test-misplaced");
        let frame = encode_response(&Response::Continue).unwrap();
        // Most of a frame, read by the receiver; then its last byte with a
        // descriptor on it. (Had both parts been waiting together, one read
        // would take them and the descriptor would count as the frame's:
        // the receiver cannot tell which byte of a read it rode on.)
        (&a).write_all(&frame[..frame.len() - 1]).unwrap();
        let mut reader = FrameReader::new();
        assert!(reader.read_step(b.as_fd()).unwrap().is_none());
        a.send_with_fd(&frame[frame.len() - 1..], &[file.as_raw_fd()])
            .unwrap();
        drop(file);
        let err = reader.read_frame(b.as_fd()).unwrap_err();
        assert!(matches!(err, FrameError::MisplacedDescriptor), "{err}");
        assert_eq!(open_count("memseal-test-misplaced"), 0);
    }

    #[test]
    fn a_flood_of_descriptors_is_refused_and_closed() {
        let (a, b) = pair();
        let file = marker("memseal-test-flood");
        let fds = vec![file.as_raw_fd(); 40];
        let frame = encode_response(&Response::Continue).unwrap();
        a.send_with_fd(&frame, &fds).unwrap();
        drop(file);
        let err = FrameReader::new().read_frame(b.as_fd()).unwrap_err();
        assert!(matches!(err, FrameError::ControlTruncated), "{err}");
        assert_eq!(open_count("memseal-test-flood"), 0);
    }

    #[test]
    fn pipelined_frames_come_out_one_by_one_with_their_descriptors() {
        let (a, b) = pair();
        let file = marker("memseal-test-pipelined");
        let plain = encode_response(&Response::Continue).unwrap();
        let mut declared = plain.clone();
        declared[4] = 1;
        // plain, plain+fd, plain: the kernel ends a read after the chunk
        // with the descriptor, so at most two reads deliver all three.
        (&a).write_all(&plain).unwrap();
        FrameWriter::new(declared, Some(file.as_fd()))
            .write_all(&a)
            .unwrap();
        (&a).write_all(&plain).unwrap();
        let mut reader = FrameReader::new();
        let counts: Vec<usize> = (0..3)
            .map(|_| reader.read_frame(b.as_fd()).unwrap().fds.len())
            .collect();
        assert_eq!(counts, [0, 1, 0]);
        assert!(!reader.in_frame());
    }

    #[test]
    fn raw_bytes_after_a_frame_are_taken_from_the_buffer() {
        let (a, b) = pair();
        let mut bytes = encode_response(&Response::Continue).unwrap();
        bytes.extend_from_slice(b"raw tail");
        (&a).write_all(&bytes).unwrap();
        let mut reader = FrameReader::new();
        reader.read_frame(b.as_fd()).unwrap();
        let mut out = [0u8; 3];
        assert_eq!(reader.take_raw(&mut out).unwrap(), 3);
        assert_eq!(&out, b"raw");
        let mut out = [0u8; 64];
        assert_eq!(reader.take_raw(&mut out).unwrap(), 5);
        assert_eq!(&out[..5], b" tail");
        assert_eq!(reader.take_raw(&mut out).unwrap(), 0);
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let (a, b) = pair();
        (&a).write_all(&(u32::MAX).to_le_bytes()).unwrap();
        let err = FrameReader::new().read_frame(b.as_fd()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn eof_inside_and_between_frames() {
        let (a, b) = pair();
        let frame = encode_response(&Response::Continue).unwrap();
        (&a).write_all(&frame).unwrap();
        (&a).write_all(&frame[..3]).unwrap();
        drop(a);
        let mut reader = FrameReader::new();
        reader.read_frame(b.as_fd()).unwrap();
        assert!(matches!(
            reader.read_frame(b.as_fd()),
            Err(FrameError::Truncated { received: 3, .. })
        ));
        let (a, b) = pair();
        drop(a);
        assert!(matches!(
            FrameReader::new().read_frame(b.as_fd()),
            Err(FrameError::Closed)
        ));
    }
}
