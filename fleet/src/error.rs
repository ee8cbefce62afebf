//! What can go wrong, in words an operator can act on, and the exit status
//! each failure gives the one-shot commands.

use crate::manifest::ManifestError;
use crate::refused::StillRefused;
use memseal::proto::message::hash_to_hex;
use memseal::{ErrorCode, Hash};
use std::fmt;
use std::io;

/// Everything the agent reports as a failure.
#[derive(Debug)]
pub enum Error {
    /// The command line or the remote's address is wrong.
    Usage(String),
    /// The store's configuration is wrong: credentials refused, no such
    /// bucket. Retrying does not help.
    Setup(String),
    /// A request to the store failed (after object_store's own retries).
    Store {
        /// What the agent was doing, e.g. "reading the manifest of a/b".
        doing: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// memseald refused a request or could not be reached.
    Local {
        /// What the agent was doing.
        doing: String,
        /// The client library's error.
        source: memseal::Error,
    },
    /// The store has no manifest for the name, or no blob for the hash.
    NotFound(String),
    /// The store's bytes or manifest failed verification; nothing was
    /// published.
    Integrity(Integrity),
    /// The asset cannot fit in the daemon, even after evicting every pulled
    /// version that may go.
    NoRoom(String),
    /// A local system call failed.
    Io {
        /// What the agent was doing.
        doing: String,
        /// The error.
        source: io::Error,
    },
}

/// A refusal of what the store served.
#[derive(Debug)]
pub struct Integrity {
    /// The name being pulled.
    pub name: String,
    /// The object that failed, e.g. `fleet/blobs/ab12...`.
    pub key: String,
    /// What was wrong with it.
    pub problem: Problem,
}

/// What was wrong with an object from the store.
#[derive(Debug)]
pub enum Problem {
    /// Its BLAKE3 hash is not its key.
    Hash {
        /// The hash the key (and the manifest) promised.
        expected: Hash,
        /// The hash of the bytes that arrived.
        actual: Hash,
    },
    /// Its size is not the one the manifest promised.
    Size {
        /// The size the manifest promised.
        expected: u64,
        /// The size the store reported.
        actual: u64,
    },
    /// The store sent more bytes than the range it was asked for.
    Overlong,
    /// The daemon hashed the adopted memfd differently: the version it
    /// published was removed again.
    DaemonDisagrees {
        /// The hash the agent computed.
        ours: Hash,
        /// The hash memseald computed.
        daemons: Hash,
    },
    /// The manifest cannot be used.
    Manifest(ManifestError),
    /// The blob's bytes were refused lately and are not downloaded again
    /// yet (see [`crate::refused`]).
    StillRefused(StillRefused),
}

impl Error {
    /// A store error while `doing` something.
    pub fn store(doing: impl Into<String>, source: object_store::Error) -> Error {
        Error::Store {
            doing: doing.into(),
            source,
        }
    }

    /// A daemon error while `doing` something.
    pub fn local(doing: impl Into<String>, source: memseal::Error) -> Error {
        Error::Local {
            doing: doing.into(),
            source,
        }
    }

    /// A system call error while `doing` something.
    pub fn io(doing: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            doing: doing.into(),
            source,
        }
    }

    /// True when trying again later may succeed: the store or the daemon
    /// was unreachable, slow or overloaded. Refusals (bad bytes, no such
    /// name, no room, wrong credentials) are not retried.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store { source, .. } => is_transient_store_error(source),
            Error::Local { source, .. } => source
                .code()
                .is_none_or(|code| matches!(code, ErrorCode::Busy | ErrorCode::Internal)),
            Error::Io { .. } => true,
            _ => false,
        }
    }

    /// True for a pull refused at once because its blob was refused
    /// lately: the refusal was counted and logged when it happened, so
    /// a repeat is logged only at debug level, however often local
    /// clients ask.
    pub fn is_repeated_refusal(&self) -> bool {
        matches!(
            self,
            Error::Integrity(Integrity {
                problem: Problem::StillRefused(_),
                ..
            })
        )
    }

    /// The error code memseald's waiting clients get when this error kept
    /// the agent from supplying a name they asked for (pull-through):
    /// `NotFound` when the store has no such name or content, the daemon's
    /// own refusal of the publish when it refused (too large, over budget,
    /// not allowed), and `Unavailable` (try again later) for the rest: the
    /// store unreachable or failing, a download refused as corrupt.
    pub fn code_for_waiters(&self) -> ErrorCode {
        match self {
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::NoRoom(_) => ErrorCode::OverBudget,
            Error::Usage(_) => ErrorCode::InvalidName,
            Error::Local { source, .. } => match source.code() {
                Some(
                    code @ (ErrorCode::TooLarge
                    | ErrorCode::OverBudget
                    | ErrorCode::PermissionDenied
                    | ErrorCode::InvalidName),
                ) => code,
                _ => ErrorCode::Unavailable,
            },
            Error::Integrity(_) | Error::Setup(_) | Error::Store { .. } | Error::Io { .. } => {
                ErrorCode::Unavailable
            }
        }
    }

    /// The exit status of a one-shot command that failed with this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Local { source, .. } => match source {
                memseal::Error::Connect { .. } | memseal::Error::PeerRejected { .. } => 3,
                _ => match source.code() {
                    Some(ErrorCode::NotFound) => 4,
                    Some(ErrorCode::PermissionDenied) => 5,
                    Some(ErrorCode::TooLarge | ErrorCode::OverBudget | ErrorCode::InvalidName) => 6,
                    _ => 1,
                },
            },
            Error::NotFound(_) => 4,
            Error::NoRoom(_) => 6,
            Error::Integrity(_) => 7,
            Error::Setup(_) | Error::Store { .. } => 8,
            Error::Io { .. } => 1,
        }
    }
}

/// S3 error codes that mean the credentials are not accepted.
const CREDENTIAL_CODES: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
];

/// S3 error code for a bucket that does not exist.
const NO_SUCH_BUCKET: &str = "NoSuchBucket";

/// What a store error says about the set-up, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupProblem {
    /// The credentials were refused; the store's words.
    Credentials(String),
    /// The bucket does not exist; the store's words.
    NoBucket(String),
}

/// Recognise the errors that retrying cannot fix because the set-up is
/// wrong. object_store reports some of them as their own variants and
/// others (a listing of a missing bucket) as generic errors, so the S3
/// error document the store answered with (`<Code>` and `<Message>`, part
/// of the S3 API) is read from the error's text.
pub fn setup_problem(error: &object_store::Error) -> Option<SetupProblem> {
    let text = chain_text(error);
    let code = xml_element(&text, "Code");
    let words = match (&code, xml_element(&text, "Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.clone(),
        _ => innermost(error),
    };
    match code.as_deref() {
        Some(NO_SUCH_BUCKET) => Some(SetupProblem::NoBucket(words)),
        Some(code) if CREDENTIAL_CODES.contains(&code) => Some(SetupProblem::Credentials(words)),
        _ => match error {
            object_store::Error::Unauthenticated { .. }
            | object_store::Error::PermissionDenied { .. } => {
                Some(SetupProblem::Credentials(words))
            }
            _ => None,
        },
    }
}

/// The text between `<tag>` and `</tag>`, if present.
fn xml_element(text: &str, tag: &str) -> Option<String> {
    let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + text[start..].find(&format!("</{tag}>"))?;
    Some(text[start..end].to_owned())
}

/// Every layer of an error's text, outermost first.
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// The deepest cause of an error: for object_store, the request that
/// failed and the store's answer rather than the outline around them.
pub fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Whether a failed store request is worth repeating.
pub fn is_transient_store_error(error: &object_store::Error) -> bool {
    use object_store::Error as E;
    if setup_problem(error).is_some() {
        return false;
    }
    !matches!(
        error,
        E::NotFound { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::AlreadyExists { .. }
            | E::NotModified { .. }
            | E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::UnknownConfigurationKey { .. }
    )
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(message) | Error::Setup(message) => write!(f, "{message}"),
            Error::Store { doing, source } => {
                write!(f, "{doing}: {source}")?;
                // object_store's outline ("error sending request") leaves
                // out the cause an operator needs ("Connection refused").
                let cause = innermost(source);
                if !source.to_string().contains(&cause) {
                    write!(f, " ({})", cause.trim())?;
                }
                Ok(())
            }
            Error::Local { doing, source } => write!(f, "{doing}: {source}"),
            Error::NotFound(message) | Error::NoRoom(message) => write!(f, "{message}"),
            Error::Integrity(integrity) => write!(f, "{integrity}"),
            Error::Io { doing, source } => write!(f, "{doing}: {source}"),
        }
    }
}

impl fmt::Display for Integrity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused {} from {}: {}; nothing was published",
            self.name, self.key, self.problem
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Hash { expected, actual } => write!(
                f,
                "its bytes hash to blake3 {}, not {} (corrupted or swapped in the store)",
                hash_to_hex(actual),
                hash_to_hex(expected)
            ),
            Problem::Size { expected, actual } => write!(
                f,
                "the store holds {actual} bytes where the manifest promises {expected} \
                 (truncated or replaced)"
            ),
            Problem::Overlong => write!(f, "the store sent more bytes than were asked for"),
            Problem::DaemonDisagrees { ours, daemons } => write!(
                f,
                "memseald hashed the download as {}, the agent as {}; the version was removed",
                hash_to_hex(daemons),
                hash_to_hex(ours)
            ),
            Problem::Manifest(e) => write!(f, "{e}"),
            Problem::StillRefused(still) => write!(
                f,
                "not downloaded again: {} s ago {}; it is tried again in {} s",
                still.ago.as_secs(),
                still.problem,
                still.left.as_secs().max(1)
            ),
        }
    }
}

impl std::error::Error for Error {}
