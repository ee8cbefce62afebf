//! The errors a [`Client`](crate::Client) returns.

use crate::verify::VerifyError;
use memseal_proto::{ErrorCode, FrameError};
use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong talking to memseald.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The socket could not be reached.
    Connect {
        /// The socket path that was tried.
        path: PathBuf,
        /// Why `connect` failed.
        source: io::Error,
    },
    /// The default socket cannot be trusted: the per-user socket or its
    /// directory belongs to someone else, or is writable by others.
    /// Nothing was sent.
    UntrustedSocket {
        /// What is wrong, in words.
        reason: String,
    },
    /// The process at the other end of the socket runs as a user this client
    /// does not trust to be memseald. Nothing was sent to it.
    PeerRejected {
        /// The peer's uid, from `SO_PEERCRED`.
        uid: u32,
        /// Who was expected, in words ("root or uid 1000").
        expected: String,
    },
    /// The daemon did not accept the handshake.
    Handshake(HandshakeError),
    /// The daemon refused a request.
    Server {
        /// What kind of failure, for programs.
        code: ErrorCode,
        /// The daemon's explanation, for people.
        message: String,
    },
    /// The daemon broke the framing rules (or closed the connection).
    Protocol(FrameError),
    /// The daemon answered with a response of the wrong kind.
    UnexpectedResponse {
        /// The response kind that fits the request.
        expected: &'static str,
        /// The kind that arrived.
        got: &'static str,
    },
    /// A fetched descriptor, or a memfd about to be published, is not sealed
    /// the way the protocol requires.
    Verify(VerifyError),
    /// The socket or the caller's reader failed, or the daemon did not
    /// answer within the timeout.
    Io(io::Error),
    /// An earlier error left the connection in an unknown state, so this
    /// client no longer uses it. Connect again.
    ConnectionLost,
}

/// Why the daemon did not accept the handshake.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The daemon answered the greeting with an error.
    Refused {
        /// What kind of refusal, for programs.
        code: ErrorCode,
        /// The daemon's explanation.
        message: String,
    },
    /// The daemon speaks another protocol version.
    Version {
        /// The version this library speaks.
        ours: u32,
        /// The version the daemon announced.
        theirs: u32,
    },
    /// The daemon answered the greeting with something other than a welcome.
    Unexpected {
        /// The response kind that arrived.
        got: &'static str,
    },
}

impl Error {
    /// The daemon's error code, for errors the daemon reported (a refused
    /// request or a refused handshake).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::Handshake(HandshakeError::Refused { code, .. }) => Some(*code),
            _ => None,
        }
    }

    /// True if the connection cannot be used after this error: the stream
    /// may be in the middle of a frame, or the daemon closes it.
    pub(crate) fn breaks_connection(&self) -> bool {
        match self {
            Error::Server { code, .. } => matches!(
                code,
                ErrorCode::ProtocolError | ErrorCode::UnsupportedVersion
            ),
            Error::Verify(_) => false,
            // Refused before a byte went out: the stream is where it was.
            Error::Protocol(
                memseal_proto::FrameError::Oversized { .. } | memseal_proto::FrameError::Encode(_),
            ) => false,
            _ => true,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { path, source } => {
                write!(f, "cannot reach memseald at {}: {source}", path.display())?;
                match source.kind() {
                    io::ErrorKind::PermissionDenied => write!(
                        f,
                        "; this user may not use that socket: ask the administrator for \
                         access, or run your own `memseald` and point MEMSEAL_SOCKET at it"
                    ),
                    _ => write!(
                        f,
                        "; is it running? Start it with `memseald`, or set MEMSEAL_SOCKET \
                         (or --socket) to where it listens"
                    ),
                }
            }
            Error::UntrustedSocket { reason } => write!(f, "{reason}"),
            Error::PeerRejected { uid, expected } => write!(
                f,
                "the process behind the socket runs as uid {uid}, but memseald is expected \
                 to run as {expected}; refusing to talk to it (another user may be \
                 impersonating the daemon)"
            ),
            Error::Handshake(e) => write!(f, "memseald refused the connection: {e}"),
            Error::Server { code, message } => write!(f, "{code}: {message}"),
            Error::Protocol(e) => write!(f, "protocol error talking to memseald: {e}"),
            Error::UnexpectedResponse { expected, got } => write!(
                f,
                "memseald answered with '{got}' where '{expected}' was expected (protocol error)"
            ),
            Error::Verify(e) => write!(f, "{e}"),
            Error::Io(e) => write!(f, "{e}"),
            Error::ConnectionLost => write!(
                f,
                "the connection to memseald was abandoned after an earlier error; connect again"
            ),
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Refused { code, message } => write!(f, "{code}: {message}"),
            HandshakeError::Version { ours, theirs } => write!(
                f,
                "it speaks protocol version {theirs} and this client speaks {ours}; \
                 use a client and daemon from the same release"
            ),
            HandshakeError::Unexpected { got } => {
                write!(f, "it answered the greeting with '{got}' (protocol error)")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } => Some(source),
            Error::Handshake(e) => Some(e),
            Error::Protocol(e) => Some(e),
            Error::Verify(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl std::error::Error for HandshakeError {}

impl From<VerifyError> for Error {
    fn from(e: VerifyError) -> Self {
        Error::Verify(e)
    }
}
