//! Requests, responses and error codes.
//!
//! These types are the protocol: their field order and variant order define
//! the bytes on the wire (see PROTOCOL.md). Append new variants at the end of
//! an enum and never reorder existing ones, or old peers will misread them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A BLAKE3 digest of an asset's bytes, computed by the daemon.
pub type Hash = [u8; 32];

/// What a client asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum Request {
    /// First frame on every connection. `version` is the protocol version the
    /// client speaks; `client` is a free-form name for the daemon's logs.
    Hello { version: u32, client: String },
    /// Publish `size` bytes under `name`, creating its next version.
    ///
    /// With [`PublishSource::Stream`] the daemon answers [`Response::Continue`]
    /// and the client then sends exactly `size` raw bytes (no framing). With
    /// [`PublishSource::Descriptor`] the frame carries one descriptor: a
    /// regular file the daemon copies kernel-side, or a memfd already sealed
    /// against writing, growing and shrinking, which it adopts as is.
    Publish {
        name: String,
        size: u64,
        source: PublishSource,
    },
    /// Ask for a descriptor of one version of `name`.
    Fetch { name: String, selector: Selector },
    /// Ask for the metadata of one version of `name`, without a descriptor.
    Stat { name: String, selector: Selector },
    /// List the latest version of every name starting with `prefix`, in name
    /// order, one page at a time. `start_after` is the `next` cursor of the
    /// previous page.
    List {
        prefix: String,
        start_after: Option<String>,
    },
    /// Remove one version of `name`, or every version when `version` is None.
    Remove { name: String, version: Option<u64> },
    /// Ask for the daemon's counters.
    Status,
    /// Turn this connection into a stream of [`Event`]s about names
    /// starting with `prefix`. The daemon answers [`Response::Watching`],
    /// then sends one [`Response::Event`] per change, in the order the
    /// changes happened. The client sends nothing more; closing the
    /// connection ends the watch.
    Watch { prefix: String },
    /// Ask for descriptors of several assets at once: at most the
    /// daemon's [`SessionLimits::max_fetch_many`] items (sent only to a
    /// daemon that announced it, in a [`Response::Greeting`]). The daemon
    /// answers [`Response::Assets`], one result per item, in order.
    FetchMany { items: Vec<FetchItem> },
    /// Become the resolver of the names under these prefixes: a fetch or
    /// stat of a name the daemon does not hold, under one of them, is then
    /// announced on this connection ([`Response::Wanted`]) and waits until
    /// the name appears (published on another connection) or a deadline
    /// passes. The daemon answers [`Response::Resolving`]; the client may
    /// then send only [`Request::Unresolved`].
    Resolve { prefixes: Vec<String> },
    /// On a resolving connection: this wanted name cannot be supplied, and
    /// `error` says why (its code is what the waiting clients get).
    Unresolved {
        name: String,
        selector: Selector,
        error: ErrorReply,
    },
}

/// One asset of a [`Request::FetchMany`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct FetchItem {
    pub name: String,
    pub selector: Selector,
}

impl Request {
    /// [`Request::kind`] of each variant, in wire order: index `n` is the
    /// kind whose variant number is `n`.
    pub const KINDS: [&'static str; 11] = [
        "hello",
        "publish",
        "fetch",
        "stat",
        "list",
        "remove",
        "status",
        "watch",
        "fetch_many",
        "resolve",
        "unresolved",
    ];

    /// How many descriptors must travel with this request.
    pub fn fd_count(&self) -> u8 {
        match self {
            Request::Publish {
                source: PublishSource::Descriptor,
                ..
            } => 1,
            _ => 0,
        }
    }

    /// A short name of the request kind, for logs and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Publish { .. } => "publish",
            Request::Fetch { .. } => "fetch",
            Request::Stat { .. } => "stat",
            Request::List { .. } => "list",
            Request::Remove { .. } => "remove",
            Request::Status => "status",
            Request::Watch { .. } => "watch",
            Request::FetchMany { .. } => "fetch_many",
            Request::Resolve { .. } => "resolve",
            Request::Unresolved { .. } => "unresolved",
        }
    }
}

/// Where the bytes of a publish come from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode,
)]
pub enum PublishSource {
    /// Raw bytes follow on the socket once the daemon says [`Response::Continue`].
    Stream,
    /// One descriptor rides with the request frame.
    Descriptor,
}

/// Which version of a name a fetch or stat wants.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
pub enum Selector {
    /// The newest version.
    Latest,
    /// An exact version number.
    Version(u64),
    /// The kept version whose content has this BLAKE3 hash.
    Hash(Hash),
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum Response {
    /// Handshake accepted.
    Welcome {
        version: u32,
        server: String,
        limits: Limits,
    },
    /// A stream publish was accepted: send the bytes now.
    Continue,
    /// The asset is published and visible.
    Published(AssetInfo),
    /// Answer to a fetch. Carries exactly one descriptor: a read-only memfd
    /// sealed with WRITE, GROW, SHRINK and SEAL, of exactly `size` bytes.
    Asset(AssetInfo),
    /// Answer to a stat.
    Info(AssetInfo),
    /// One page of a listing. `next` is set when more names follow.
    Listing {
        assets: Vec<AssetInfo>,
        next: Option<String>,
    },
    /// How many versions a remove dropped.
    Removed { versions: u64 },
    /// Answer to a status request.
    Status(ServerStatus),
    /// The request failed; the connection stays usable unless `code` is
    /// [`ErrorCode::ProtocolError`] or [`ErrorCode::UnsupportedVersion`].
    Error(ErrorReply),
    /// The watch is established; events follow.
    Watching,
    /// Something changed under a watched prefix.
    Event(Event),
    /// Handshake accepted, for a client that asked for protocol version 2:
    /// the [`Response::Welcome`] of version 1 and the session's limits.
    Greeting {
        version: u32,
        server: String,
        limits: Limits,
        session: SessionLimits,
    },
    /// Answer to a fetch of several assets: one result per item asked
    /// for, in order. Carries one descriptor per [`FetchResult::Asset`], in
    /// the same order: read-only memfds as for [`Response::Asset`].
    Assets { items: Vec<FetchResult> },
    /// The connection resolves names under its prefixes; [`Response::Wanted`]
    /// frames follow.
    Resolving,
    /// On a resolving connection: a client waits for this name, which the
    /// daemon does not hold. Sent once however many clients wait.
    Wanted { name: String, selector: Selector },
}

/// One item of a [`Response::Assets`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum FetchResult {
    /// Found; its descriptor rides with the frame.
    Asset(AssetInfo),
    /// This item failed (not found, an invalid name...); the others stand.
    Error(ErrorReply),
}

/// What a connection may do at most, announced in [`Response::Greeting`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode,
)]
pub struct SessionLimits {
    /// Descriptors this connection may leave unread in its socket before
    /// the daemon holds further replies that carry descriptors back (and
    /// drops the connection if they stay unread past the I/O deadline).
    pub max_unread_descriptors: u32,
    /// Items one [`Request::FetchMany`] may name.
    pub max_fetch_many: u32,
}

/// A change in the catalog, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum Event {
    /// A new version became visible (it is now the latest of its name).
    Published(AssetInfo),
    /// A version stopped being visible: removed, or pushed out by newer
    /// versions beyond the daemon's `keep_versions`.
    Removed(AssetInfo),
}

impl Event {
    /// The version the event is about.
    pub fn info(&self) -> &AssetInfo {
        match self {
            Event::Published(info) | Event::Removed(info) => info,
        }
    }
}

impl Response {
    /// [`Response::kind`] of each variant, in wire order.
    pub const KINDS: [&'static str; 15] = [
        "welcome",
        "continue",
        "published",
        "asset",
        "info",
        "listing",
        "removed",
        "status",
        "error",
        "watching",
        "event",
        "greeting",
        "assets",
        "resolving",
        "wanted",
    ];

    /// How many descriptors must travel with this response.
    pub fn fd_count(&self) -> u8 {
        match self {
            Response::Asset(_) => 1,
            Response::Assets { items } => {
                let found = items
                    .iter()
                    .filter(|item| matches!(item, FetchResult::Asset(_)))
                    .count();
                // More than a frame may carry is refused when encoding;
                // saturating keeps that refusal, rather than wrapping.
                u8::try_from(found).unwrap_or(u8::MAX)
            }
            _ => 0,
        }
    }

    /// A short name of the response kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Welcome { .. } => "welcome",
            Response::Continue => "continue",
            Response::Published(_) => "published",
            Response::Asset(_) => "asset",
            Response::Info(_) => "info",
            Response::Listing { .. } => "listing",
            Response::Removed { .. } => "removed",
            Response::Status(_) => "status",
            Response::Error(_) => "error",
            Response::Watching => "watching",
            Response::Event(_) => "event",
            Response::Greeting { .. } => "greeting",
            Response::Assets { .. } => "assets",
            Response::Resolving => "resolving",
            Response::Wanted { .. } => "wanted",
        }
    }

    /// Shorthand for an error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error(ErrorReply {
            code,
            message: message.into(),
        })
    }
}

/// Everything a client learns about one version of an asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct AssetInfo {
    pub name: String,
    /// Grows by one with each publish of the name and is never reused for
    /// it, even after a remove (see PROTOCOL.md, "Versions").
    pub version: u64,
    /// Exact size in bytes; the memfd is never larger or smaller.
    pub size: u64,
    /// BLAKE3 of the bytes, computed by the daemon.
    pub hash: Hash,
    /// When this version was published, in milliseconds since the Unix epoch.
    pub published_ms: u64,
    /// The uid of the process that published it.
    pub publisher_uid: u32,
}

/// The wall clock as [`AssetInfo::published_ms`] counts it: milliseconds
/// since the Unix epoch (0 for a clock set before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Limits the daemon announces in its handshake.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode,
)]
pub struct Limits {
    /// Largest control frame it accepts, length prefix excluded.
    pub max_frame_len: u32,
    /// Largest asset it accepts.
    pub max_asset_size: u64,
    /// Total bytes of distinct content it keeps at most.
    pub max_total_bytes: u64,
    /// Longest name, in bytes.
    pub max_name_len: u32,
    /// How many versions of one name it keeps.
    pub keep_versions: u32,
}

/// The daemon's counters, as `memseal status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct ServerStatus {
    /// Name and version of the server program.
    pub server: String,
    pub uptime_ms: u64,
    /// Names with at least one kept version.
    pub names: u64,
    /// Kept versions, over all names.
    pub versions: u64,
    /// Distinct memfds (identical content is stored once).
    pub blobs: u64,
    /// Bytes of distinct content held.
    pub bytes: u64,
    /// Open client connections, this one included.
    pub connections: u64,
}

/// A failed request: a code a program can act on and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Why a request failed. The discriminants are the wire values.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
pub enum ErrorCode {
    /// No such name, version or hash.
    NotFound = 0,
    /// The name breaks the rules in [`crate::name`].
    InvalidName = 1,
    /// The asset is larger than the daemon's maximum asset size.
    TooLarge = 2,
    /// Accepting the asset would exceed a byte or count budget.
    OverBudget = 3,
    /// The access policy does not allow this peer to do this.
    PermissionDenied = 4,
    /// The peer broke the protocol; the daemon closes the connection.
    ProtocolError = 5,
    /// The daemon is at a limit (connections, in-flight work); retry later.
    Busy = 6,
    /// Something failed inside the daemon.
    Internal = 7,
    /// The handshake named a protocol version the daemon does not speak.
    UnsupportedVersion = 8,
    /// A publish descriptor is neither a regular file nor a sealed memfd,
    /// cannot be read, or does not have the declared size.
    InvalidSource = 9,
    /// The name is not held here, and the resolver of its prefix did not
    /// supply it in time (or could not reach its source, or there is none
    /// connected); the message says which. Retry later.
    Unavailable = 10,
}

impl ErrorCode {
    /// The stable lower-case name used in logs and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not found",
            ErrorCode::InvalidName => "invalid name",
            ErrorCode::TooLarge => "too large",
            ErrorCode::OverBudget => "over budget",
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::ProtocolError => "protocol error",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal error",
            ErrorCode::UnsupportedVersion => "unsupported protocol version",
            ErrorCode::InvalidSource => "invalid source",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lower-case hexadecimal of a hash, as the CLI prints it.
pub fn hash_to_hex(hash: &Hash) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(64);
    for byte in hash {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Parse 64 hexadecimal digits (either case) into a hash.
pub fn hash_from_hex(text: &str) -> Option<Hash> {
    let text = text.as_bytes();
    if text.len() != 64 || !text.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(text.chunks_exact(2)) {
        let digits = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let hash: Hash = std::array::from_fn(|i| (i * 7) as u8);
        let text = hash_to_hex(&hash);
        assert_eq!(text.len(), 64);
        assert_eq!(hash_from_hex(&text), Some(hash));
        assert_eq!(hash_from_hex(&text.to_uppercase()), Some(hash));
        assert_eq!(hash_from_hex(&text[..62]), None);
        assert_eq!(hash_from_hex(&"zz".repeat(32)), None);
        assert_eq!(hash_from_hex(&"+1".repeat(32)), None);
    }

    #[test]
    fn only_asset_responses_and_descriptor_publishes_carry_fds() {
        let info = AssetInfo {
            name: "a".into(),
            version: 1,
            size: 0,
            hash: [0; 32],
            published_ms: 0,
            publisher_uid: 0,
        };
        assert_eq!(Response::Asset(info.clone()).fd_count(), 1);
        assert_eq!(Response::Info(info).fd_count(), 0);
        let publish = |source| Request::Publish {
            name: "a".into(),
            size: 1,
            source,
        };
        assert_eq!(publish(PublishSource::Descriptor).fd_count(), 1);
        assert_eq!(publish(PublishSource::Stream).fd_count(), 0);
        assert_eq!(Request::Status.fd_count(), 0);
    }
}
