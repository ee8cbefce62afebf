//! The memseal wire protocol, shared by the daemon (`memseald`) and the
//! client library (`memseal`).
//!
//! memseal moves two kinds of things over one Unix stream socket: small
//! control messages, and file descriptors of sealed memfds riding on them as
//! `SCM_RIGHTS`. This crate owns everything both ends must agree on, and
//! nothing else: it knows no daemon state and maps no memory.
//!
//! # Layout
//!
//! - [`message`]: the requests, responses and error codes, as plain Rust
//!   types. Each message says how many descriptors must travel with it.
//! - [`codec`]: the only place that calls bincode. Turns a message into a
//!   frame (`u32` little-endian length, one byte of descriptor count, the
//!   bincode payload) and back, refusing any length above the frame cap
//!   before a byte is allocated for it. Also encodes the daemon's catalog
//!   snapshot, which it keeps across restarts.
//! - [`wire`]: moves frames over a socket. [`wire::FrameBuffer`] holds the
//!   framing and descriptor rules and never touches a socket: it offers room
//!   for a receive, is told what arrived, and hands out frames, turning a
//!   surplus descriptor or one on the wrong byte into a typed error after
//!   closing every descriptor it got. [`wire::receive`] is its one
//!   `recvmsg` (with `MSG_CMSG_CLOEXEC`, checking `MSG_CTRUNC`);
//!   [`wire::FrameWriter`] sends with `sendmsg`, the descriptor on the
//!   frame's first byte.
//! - `tokio_io` (feature `tokio`): the same on tokio sockets, the one
//!   driver the daemon and the async client share.
//! - [`name`]: which asset names are valid, and why.
//! - [`paths`]: where the daemon's socket lives by default, resolved the same
//!   way on both sides.
//! - [`persisted`]: the catalog snapshot and journal the daemon keeps across
//!   restarts (never sent over a socket).
//!
//! # The path of a fetch through this crate
//!
//! The client builds [`Request::Fetch`], [`codec::encode_request`] frames it
//! and a [`wire::FrameWriter`] writes it. The daemon's [`wire::FrameBuffer`]
//! reassembles the frame, [`codec::decode_request`] checks it, and the reply
//! [`Response::Asset`] goes back the same way with the memfd attached. The
//! client's buffer and decoder hand the descriptor over only if the frame
//! declared exactly one and the message calls for exactly one.
//!
//! PROTOCOL.md at the root of the repository describes every byte.

#![forbid(unsafe_code)]

pub mod codec;
pub mod error;
pub mod message;
pub mod name;
pub mod paths;
pub mod persisted;
#[cfg(feature = "tokio")]
pub mod tokio_io;
pub mod wire;

pub use error::FrameError;
pub use message::{
    AssetInfo, ErrorCode, ErrorReply, Event, FetchItem, FetchResult, Hash, Limits, PublishSource,
    Request, Response, Selector, ServerStatus, SessionLimits,
};
pub use persisted::{JournalEntry, Snapshot, SnapshotName, StoredVersion};

/// Protocol version 1, which every daemon and client speaks. A peer that
/// asks for a version the daemon does not know is refused during the
/// handshake with [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Protocol version 2: version 1, except that the daemon answers the
/// hello with [`Response::Greeting`], which also announces the session's
/// limits. A client that asks a version-1 daemon for it is refused
/// (`UnsupportedVersion`) and may greet it again with version 1.
pub const PROTOCOL_VERSION_2: u32 = 2;

/// The largest control frame (length prefix excluded) either side accepts.
///
/// Larger lengths are refused as soon as the 4-byte prefix is read, before
/// any buffer is allocated for the payload.
pub const MAX_FRAME_LEN: u32 = 64 * 1024;

/// The most descriptors a single frame may declare: what the kernel lets
/// one message carry (`SCM_MAX_FD`). Only [`Response::Assets`] carries
/// more than one.
pub const MAX_FDS_PER_FRAME: u8 = 253;

/// The most descriptors a request may carry: a publish's one.
pub const MAX_REQUEST_FDS: u8 = 1;
