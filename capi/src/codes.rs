//! Return codes, and how every failure of the Rust client becomes one.
//!
//! Codes -1 to -11 are the protocol's error codes (PROTOCOL.md, section
//! 6.3): the code for wire value `v` is `-1 - v`. Codes from -100 down are
//! failures the library detects on its own side of the socket. Each is
//! written as that subtraction, which the header shows in parentheses, so
//! that the macros expand safely anywhere in C (`x-MEMSEAL_E_BUSY`, `#if`).

use memseal::{Error, ErrorCode, HandshakeError};
use std::ffi::{c_int, CStr};
use std::io;

/// Success.
pub const MEMSEAL_OK: c_int = 0;

/// No such name, version or hash (protocol code 0).
#[allow(clippy::identity_op)] // `- 0`: the rule, as for the others
pub const MEMSEAL_E_NOT_FOUND: c_int = -1 - 0;
/// The name or prefix breaks the naming rules (protocol code 1); also a
/// name that is not UTF-8.
pub const MEMSEAL_E_INVALID_NAME: c_int = -1 - 1;
/// The asset is larger than the daemon accepts (protocol code 2).
pub const MEMSEAL_E_TOO_LARGE: c_int = -1 - 2;
/// A byte or count budget is used up (protocol code 3).
pub const MEMSEAL_E_OVER_BUDGET: c_int = -1 - 3;
/// The daemon's access policy refuses this caller (protocol code 4).
pub const MEMSEAL_E_PERMISSION_DENIED: c_int = -1 - 4;
/// The daemon or the library saw the protocol broken (protocol code 5).
pub const MEMSEAL_E_PROTOCOL: c_int = -1 - 5;
/// The daemon is at a limit; retry later, or watch again (protocol code 6).
/// As the answer to a request it leaves the client usable.
pub const MEMSEAL_E_BUSY: c_int = -1 - 6;
/// Something failed inside the daemon (protocol code 7).
pub const MEMSEAL_E_INTERNAL: c_int = -1 - 7;
/// The daemon speaks another protocol version (protocol code 8).
pub const MEMSEAL_E_UNSUPPORTED_VERSION: c_int = -1 - 8;
/// A descriptor to publish is not a readable regular file or sealed memfd
/// of the declared size (protocol code 9).
pub const MEMSEAL_E_INVALID_SOURCE: c_int = -1 - 9;
/// The asset is not held, and the resolver of its prefix did not supply it
/// in time; retry later (protocol code 10).
pub const MEMSEAL_E_UNAVAILABLE: c_int = -1 - 10;

/// The socket could not be reached: no daemon listens there, or this user
/// may not open it.
#[allow(clippy::identity_op)] // `- 0`: the rule, as for the others
pub const MEMSEAL_E_CONNECT: c_int = -100 - 0;
/// The process behind the socket runs as a user this client does not trust
/// to be memseald; nothing was sent to it.
pub const MEMSEAL_E_UNTRUSTED_PEER: c_int = -100 - 1;
/// A fetched descriptor is not sealed against writing, growing and
/// shrinking, or not of the announced size; it was closed unmapped.
pub const MEMSEAL_E_VERIFY: c_int = -100 - 2;
/// Reading or writing the socket, or the caller's descriptor, failed.
pub const MEMSEAL_E_IO: c_int = -100 - 3;
/// The daemon did not answer in time.
pub const MEMSEAL_E_TIMEOUT: c_int = -100 - 4;
/// An earlier failure left the connection in an unknown state; the client
/// no longer uses it. Close it and connect again.
pub const MEMSEAL_E_CONNECTION_LOST: c_int = -100 - 5;
/// An argument is NULL where a value is required, or otherwise unusable.
pub const MEMSEAL_E_BAD_ARGUMENT: c_int = -100 - 6;
/// A bug inside libmemseal was caught before it could cross into the
/// caller; the message says where.
pub const MEMSEAL_E_LIBRARY: c_int = -100 - 7;

/// Bytes in a BLAKE3 content hash.
pub const MEMSEAL_HASH_LEN: usize = 32;

/// A failed call: the code the caller gets and the message
/// `memseal_last_error` gives.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: c_int,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: c_int, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// A required argument was NULL.
    pub(crate) fn null(what: &str) -> Failure {
        Failure::new(MEMSEAL_E_BAD_ARGUMENT, format!("{what} must not be NULL"))
    }

    /// An argument that cannot be used.
    pub(crate) fn bad_argument(message: impl Into<String>) -> Failure {
        Failure::new(MEMSEAL_E_BAD_ARGUMENT, message)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure::new(code_of(&error), error.to_string())
    }
}

/// The code for an error of the Rust client.
fn code_of(error: &Error) -> c_int {
    match error {
        Error::Connect { .. } => MEMSEAL_E_CONNECT,
        Error::PeerRejected { .. } => MEMSEAL_E_UNTRUSTED_PEER,
        Error::Server { code, .. } | Error::Handshake(HandshakeError::Refused { code, .. }) => {
            wire(*code)
        }
        Error::Handshake(HandshakeError::Version { .. }) => MEMSEAL_E_UNSUPPORTED_VERSION,
        Error::Handshake(_) | Error::Protocol(_) | Error::UnexpectedResponse { .. } => {
            MEMSEAL_E_PROTOCOL
        }
        Error::Verify(_) => MEMSEAL_E_VERIFY,
        Error::Io(e) => match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => MEMSEAL_E_TIMEOUT,
            // The client's own refusal of an input, such as a pipe handed
            // to a publish by descriptor.
            io::ErrorKind::InvalidInput => MEMSEAL_E_BAD_ARGUMENT,
            _ => MEMSEAL_E_IO,
        },
        Error::ConnectionLost => MEMSEAL_E_CONNECTION_LOST,
        // A kind of error added to the client after this library was
        // written: something went wrong talking to the daemon.
        _ => MEMSEAL_E_IO,
    }
}

/// The code for a protocol error code: `-1 - wire value`.
fn wire(code: ErrorCode) -> c_int {
    match code {
        ErrorCode::NotFound => MEMSEAL_E_NOT_FOUND,
        ErrorCode::InvalidName => MEMSEAL_E_INVALID_NAME,
        ErrorCode::TooLarge => MEMSEAL_E_TOO_LARGE,
        ErrorCode::OverBudget => MEMSEAL_E_OVER_BUDGET,
        ErrorCode::PermissionDenied => MEMSEAL_E_PERMISSION_DENIED,
        ErrorCode::ProtocolError => MEMSEAL_E_PROTOCOL,
        ErrorCode::Busy => MEMSEAL_E_BUSY,
        ErrorCode::Internal => MEMSEAL_E_INTERNAL,
        ErrorCode::UnsupportedVersion => MEMSEAL_E_UNSUPPORTED_VERSION,
        ErrorCode::InvalidSource => MEMSEAL_E_INVALID_SOURCE,
        ErrorCode::Unavailable => MEMSEAL_E_UNAVAILABLE,
    }
}

/// What each code means, in a few words; the protocol's codes read as
/// `ErrorCode::as_str` does.
pub(crate) fn describe(code: c_int) -> &'static CStr {
    match code {
        MEMSEAL_OK => c"success",
        MEMSEAL_E_NOT_FOUND => c"not found",
        MEMSEAL_E_INVALID_NAME => c"invalid name",
        MEMSEAL_E_TOO_LARGE => c"too large",
        MEMSEAL_E_OVER_BUDGET => c"over budget",
        MEMSEAL_E_PERMISSION_DENIED => c"permission denied",
        MEMSEAL_E_PROTOCOL => c"protocol error",
        MEMSEAL_E_BUSY => c"busy",
        MEMSEAL_E_INTERNAL => c"internal error",
        MEMSEAL_E_UNSUPPORTED_VERSION => c"unsupported protocol version",
        MEMSEAL_E_INVALID_SOURCE => c"invalid source",
        MEMSEAL_E_UNAVAILABLE => c"unavailable",
        MEMSEAL_E_CONNECT => c"cannot connect to memseald",
        MEMSEAL_E_UNTRUSTED_PEER => c"memseald runs as an untrusted user",
        MEMSEAL_E_VERIFY => c"seal verification failed",
        MEMSEAL_E_IO => c"input/output error",
        MEMSEAL_E_TIMEOUT => c"timed out",
        MEMSEAL_E_CONNECTION_LOST => c"connection lost",
        MEMSEAL_E_BAD_ARGUMENT => c"bad argument",
        MEMSEAL_E_LIBRARY => c"internal error in libmemseal",
        _ => c"unknown error code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_WIRE_CODES: [ErrorCode; 11] = [
        ErrorCode::NotFound,
        ErrorCode::InvalidName,
        ErrorCode::TooLarge,
        ErrorCode::OverBudget,
        ErrorCode::PermissionDenied,
        ErrorCode::ProtocolError,
        ErrorCode::Busy,
        ErrorCode::Internal,
        ErrorCode::UnsupportedVersion,
        ErrorCode::InvalidSource,
        ErrorCode::Unavailable,
    ];

    #[test]
    fn protocol_codes_follow_the_wire_values() {
        for code in ALL_WIRE_CODES {
            assert_eq!(wire(code), -(code as c_int) - 1, "{code:?}");
        }
    }

    #[test]
    fn protocol_codes_read_as_the_protocol_names_them() {
        for code in ALL_WIRE_CODES {
            assert_eq!(describe(wire(code)).to_str().unwrap(), code.as_str());
        }
    }

    #[test]
    fn every_library_code_has_a_description() {
        for code in MEMSEAL_E_LIBRARY..=MEMSEAL_E_CONNECT {
            assert_ne!(describe(code), c"unknown error code", "code {code}");
        }
    }

    #[test]
    fn client_errors_map_to_their_codes() {
        let server = |code| Error::Server {
            code,
            message: String::new(),
        };
        assert_eq!(code_of(&server(ErrorCode::Busy)), MEMSEAL_E_BUSY);
        assert_eq!(code_of(&Error::ConnectionLost), MEMSEAL_E_CONNECTION_LOST);
        let timeout = Error::Io(io::ErrorKind::TimedOut.into());
        assert_eq!(code_of(&timeout), MEMSEAL_E_TIMEOUT);
        let reset = Error::Io(io::ErrorKind::ConnectionReset.into());
        assert_eq!(code_of(&reset), MEMSEAL_E_IO);
    }
}
