//! Moving frames and descriptors over a Unix stream socket.
//!
//! Descriptors ride as `SCM_RIGHTS` on the first byte of a frame. On a
//! stream socket the kernel may hand one `recvmsg` the tail of one frame and
//! the head of the next, descriptors included, so the receiver here never
//! asks for more than the rest of the current frame: first exactly the
//! 4-byte length prefix, then exactly the payload. Descriptors can then
//! never cross from one frame into another: they are accepted only from the
//! call that reads the frame's first byte (which, if the sender split the
//! prefix, may also carry the next prefix bytes and their descriptors), and
//! a descriptor arriving with any payload byte is a protocol error.
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

/// Reassembles one frame at a time from a stream socket.
#[derive(Debug, Default)]
pub struct FrameReader {
    header: [u8; HEADER_LEN],
    header_filled: usize,
    payload: Vec<u8>,
    payload_filled: usize,
    fds: Vec<OwnedFd>,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once any byte of the current frame has arrived.
    pub fn in_frame(&self) -> bool {
        self.header_filled > 0
    }

    /// Make progress with one `recvmsg`. Returns the frame once it is
    /// complete, `None` if more bytes are needed. On a non-blocking socket
    /// with nothing to read this returns `FrameError::Io(WouldBlock)` and
    /// may be called again later.
    pub fn read_step(&mut self, socket: BorrowedFd<'_>) -> Result<Option<RawFrame>, FrameError> {
        if self.header_filled < HEADER_LEN {
            let first_byte = self.header_filled == 0;
            let received = recv_with_fds(socket, &mut self.header[self.header_filled..])?;
            if received.bytes == 0 {
                return Err(self.eof());
            }
            if !received.fds.is_empty() {
                if !first_byte {
                    return Err(FrameError::MisplacedDescriptor);
                }
                if received.fds.len() > crate::MAX_FDS_PER_FRAME as usize {
                    return Err(FrameError::DescriptorCount {
                        declared: crate::MAX_FDS_PER_FRAME,
                        received: received.fds.len(),
                    });
                }
                self.fds = received.fds;
            }
            self.header_filled += received.bytes;
            if self.header_filled < HEADER_LEN {
                return Ok(None);
            }
            // Refuses a hostile length before allocating anything for it.
            let len = parse_header(self.header)?;
            self.payload = vec![0; len];
            self.payload_filled = 0;
        }
        let received = recv_with_fds(socket, &mut self.payload[self.payload_filled..])?;
        if received.bytes == 0 {
            return Err(self.eof());
        }
        if !received.fds.is_empty() {
            return Err(FrameError::MisplacedDescriptor);
        }
        self.payload_filled += received.bytes;
        if self.payload_filled < self.payload.len() {
            return Ok(None);
        }
        self.header_filled = 0;
        self.payload_filled = 0;
        Ok(Some(RawFrame {
            payload: std::mem::take(&mut self.payload),
            fds: std::mem::take(&mut self.fds),
        }))
    }

    /// Read a whole frame from a blocking socket.
    pub fn read_frame(&mut self, socket: BorrowedFd<'_>) -> Result<RawFrame, FrameError> {
        loop {
            if let Some(frame) = self.read_step(socket)? {
                return Ok(frame);
            }
        }
    }

    fn eof(&self) -> FrameError {
        if self.header_filled == 0 {
            return FrameError::Closed;
        }
        let received = self.header_filled + self.payload_filled;
        let expected = if self.header_filled < HEADER_LEN {
            HEADER_LEN
        } else {
            HEADER_LEN + self.payload.len()
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
        // The length prefix alone, then the payload with a descriptor on it.
        (&a).write_all(&frame[..4]).unwrap();
        a.send_with_fd(&frame[4..], &[file.as_raw_fd()]).unwrap();
        drop(file);
        let mut reader = FrameReader::new();
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
