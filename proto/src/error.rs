//! The one error type for everything that can go wrong between two peers
//! below the level of a request: framing, descriptors, decoding, I/O.

use std::{fmt, io};

/// A frame could not be sent or received.
///
/// Every variant but [`FrameError::Io`] with `WouldBlock` or `Interrupted`
/// leaves the stream at an unknown position: the connection must be closed.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection between two frames.
    Closed,
    /// The peer closed the connection in the middle of a frame.
    Truncated { received: usize, expected: usize },
    /// The length prefix is above the frame cap; nothing was allocated for it.
    TooLarge { len: u32, max: u32 },
    /// The length prefix is zero; every frame holds at least its descriptor count.
    Empty,
    /// The kernel had to drop descriptors because more arrived than the
    /// receiver has room for (`MSG_CTRUNC`). All that did arrive were closed.
    ControlTruncated,
    /// A descriptor arrived on a byte that is not the first of a frame.
    MisplacedDescriptor,
    /// A control message of a type other than `SCM_RIGHTS` arrived.
    UnexpectedControl,
    /// The frame declared one count of descriptors and another arrived.
    DescriptorCount { declared: u8, received: usize },
    /// The message kind calls for a different number of descriptors than the
    /// frame declared.
    DescriptorMismatch {
        kind: &'static str,
        expected: u8,
        declared: u8,
    },
    /// The payload is not a valid message; the text says why, as a
    /// sentence about the message.
    Decode(String),
    /// A valid message arrived where the protocol does not allow it (a
    /// second hello, anything before the hello).
    Protocol(String),
    /// A message could not be encoded.
    Encode(String),
    /// The payload holds bytes after the end of the message.
    TrailingBytes { extra: usize },
    /// A message is too large to fit in a frame.
    Oversized { len: usize, max: u32 },
    /// The socket failed.
    Io(io::Error),
}

impl FrameError {
    /// True for a non-blocking socket that has nothing to read or no room
    /// to write: the caller should wait for readiness and retry.
    pub fn is_would_block(&self) -> bool {
        matches!(self, FrameError::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Closed => write!(f, "connection closed by peer"),
            FrameError::Truncated { received, expected } => write!(
                f,
                "connection closed in the middle of a frame ({received} of {expected} bytes)"
            ),
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max}-byte limit")
            }
            FrameError::Empty => write!(f, "empty frame"),
            FrameError::ControlTruncated => write!(
                f,
                "too many descriptors arrived at once (control message truncated)"
            ),
            FrameError::MisplacedDescriptor => {
                write!(f, "a descriptor arrived on a byte that does not start a frame")
            }
            FrameError::UnexpectedControl => write!(f, "unexpected ancillary message"),
            FrameError::DescriptorCount { declared, received } => write!(
                f,
                "frame declared {declared} descriptor(s) but {received} arrived"
            ),
            FrameError::DescriptorMismatch {
                kind,
                expected,
                declared,
            } => write!(
                f,
                "a '{kind}' message carries {expected} descriptor(s) but the frame declared {declared}"
            ),
            FrameError::Decode(why) => write!(f, "malformed message: {why}"),
            FrameError::Protocol(why) => write!(f, "{why}"),
            FrameError::Encode(why) => write!(f, "cannot encode a message: {why}"),
            FrameError::TrailingBytes { extra } => {
                write!(f, "{extra} unexpected byte(s) after the message")
            }
            FrameError::Oversized { len, max } => {
                write!(f, "message of {len} bytes does not fit the {max}-byte frame limit")
            }
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

impl From<rustix::io::Errno> for FrameError {
    fn from(e: rustix::io::Errno) -> Self {
        FrameError::Io(e.into())
    }
}
