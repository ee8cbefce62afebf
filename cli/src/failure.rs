//! How a command fails: a message for stderr and an exit status for scripts.
//!
//! | status | meaning                                                        |
//! |--------|----------------------------------------------------------------|
//! | 0      | success                                                        |
//! | 1      | any other error (I/O, timeout, daemon busy or failing inside)  |
//! | 2      | usage error (bad arguments)                                    |
//! | 3      | cannot connect to the daemon, or it runs as an untrusted user  |
//! | 4      | no such asset, version or hash                                 |
//! | 5      | permission denied by the daemon's access policy                |
//! | 6      | input refused: invalid name, too large, over budget, bad source |
//! | 7      | protocol or verification failure: the daemon misbehaved        |
//! | 126    | `exec`: the command could not be run                           |
//! | 127    | `exec`: the command was not found                              |

use memseal::{Error, ErrorCode, HandshakeError};
use std::io;
use std::process::ExitCode;

/// The text of the exit status table, for `--help`.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  any other error (I/O, timeout, daemon busy or failing inside)
  2  usage error (bad arguments)
  3  cannot connect to the daemon, or it runs as an untrusted user
  4  no such asset, version or hash
  5  permission denied by the daemon's access policy
  6  input refused: invalid name, too large, over budget, invalid source
  7  protocol or verification failure: the daemon misbehaved
  8  unavailable: not held here, and the resolver of its prefix did not
     supply it in time (pull-through); retry later";

/// The exit statuses, by meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// Anything not covered below.
    Other = 1,
    /// The arguments make no sense together (clap catches the rest).
    Usage = 2,
    /// The daemon could not be reached or trusted.
    Unreachable = 3,
    /// The asset does not exist.
    NotFound = 4,
    /// The daemon's policy refused the request.
    Denied = 5,
    /// The input was refused.
    Refused = 6,
    /// The daemon broke the protocol or sent something unsafe.
    Misbehaved = 7,
    /// Not held, and not supplied in time by the resolver of its prefix.
    Unavailable = 8,
    /// `exec` could not run the command (as shells report it).
    CannotExec = 126,
    /// `exec` did not find the command (as shells report it).
    CommandNotFound = 127,
}

/// A failed command.
#[derive(Debug)]
pub struct Failure {
    /// The exit status.
    pub status: Status,
    /// What to print after `memseal: `; `None` prints nothing (a closed
    /// stdout pipe is not worth a message).
    pub message: Option<String>,
}

impl Failure {
    /// A failure with its status and message.
    pub fn new(status: Status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: Some(message.into()),
        }
    }

    /// Input refused before it reached the daemon.
    pub fn refused(message: impl Into<String>) -> Failure {
        Failure::new(Status::Refused, message)
    }

    /// A local I/O failure, with what was being done.
    pub fn io(doing: impl std::fmt::Display, error: io::Error) -> Failure {
        Failure::new(Status::Other, format!("{doing}: {error}"))
    }

    /// Writing output failed. When the reader of a pipe went away (as with
    /// `memseal get x | head`), stop quietly and successfully, like other
    /// filters do.
    pub fn output(error: io::Error) -> Failure {
        if error.kind() == io::ErrorKind::BrokenPipe {
            return Failure {
                status: Status::Ok,
                message: None,
            };
        }
        Failure::io("cannot write the output", error)
    }

    /// Print the message, if any, and give the exit status.
    pub fn report(self) -> ExitCode {
        if let Some(message) = self.message {
            eprintln!("memseal: {message}");
        }
        ExitCode::from(self.status as u8)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        let status = match &error {
            Error::Connect { .. } | Error::PeerRejected { .. } | Error::UntrustedSocket { .. } => {
                Status::Unreachable
            }
            Error::Server { code, .. } => for_code(*code),
            Error::Handshake(HandshakeError::Refused { code, .. }) => for_code(*code),
            Error::Handshake(_)
            | Error::Protocol(_)
            | Error::UnexpectedResponse { .. }
            | Error::Verify(_) => Status::Misbehaved,
            _ => Status::Other,
        };
        Failure::new(status, error.to_string())
    }
}

/// The exit status for an error code from the daemon.
fn for_code(code: ErrorCode) -> Status {
    match code {
        ErrorCode::NotFound => Status::NotFound,
        ErrorCode::PermissionDenied => Status::Denied,
        ErrorCode::InvalidName
        | ErrorCode::TooLarge
        | ErrorCode::OverBudget
        | ErrorCode::InvalidSource => Status::Refused,
        ErrorCode::ProtocolError | ErrorCode::UnsupportedVersion => Status::Misbehaved,
        ErrorCode::Busy | ErrorCode::Internal => Status::Other,
        ErrorCode::Unavailable => Status::Unavailable,
    }
}
