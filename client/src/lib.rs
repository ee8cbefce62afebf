//! Client library for memseald: share immutable blobs between processes as
//! plain `&[u8]`, with one copy in RAM and a kernel guarantee that nobody can
//! change the bytes.
//!
//! The daemon keeps every asset in a memfd sealed against writing, growing
//! and shrinking, and hands each client a descriptor of it. This crate checks
//! those seals itself before it maps anything, so the slice it returns is
//! sound in safe Rust even if the daemon were compromised: the worst a
//! malicious daemon can do is serve wrong bytes, never change them under
//! a reader.
//!
//! ```no_run
//! use memseal::Client;
//!
//! let mut client = Client::connect()?;
//! let info = client.publish_bytes("greetings/hello.txt", b"hello, world\n")?;
//! println!("published version {} of {}", info.version, info.name);
//!
//! let asset = client.fetch("greetings/hello.txt")?;
//! assert_eq!(&asset[..], b"hello, world\n");
//! # Ok::<(), memseal::Error>(())
//! ```
//!
//! # Layout
//!
//! - [`connect`](ConnectOptions): finding the socket, checking with
//!   `SO_PEERCRED` that the process behind it runs as a trusted user, and
//!   the handshake.
//! - `connection`: the one module that touches the socket. Every frame goes
//!   out through `memseal_proto::wire::FrameWriter` and comes in through
//!   `FrameReader` (`recvmsg` with `MSG_CMSG_CLOEXEC`); a connection left in
//!   an unknown state by an error is shut down rather than reused.
//! - `protocol`: each request and the answers it accepts, shared by the
//!   blocking and the async client so that both follow the same rules.
//! - [`Client`]: the requests (publish, fetch, stat, list, remove, status),
//!   each one frame out and one frame in.
//! - [`verify()`] and [`verify_with`]: the checks that make a descriptor
//!   safe to map, usable on any descriptor, not only the daemon's.
//! - [`MapOptions`]: how a fetched asset is brought into memory: populated
//!   up front, with access advice, aligned for huge pages, or copied when
//!   small. [`ShmemHugePages`] tells whether the host allows huge pages.
//! - `map`: the `mmap`, `madvise` and `munmap` calls, the crate's
//!   `unsafe` code together with `peer` (`SO_PEERCRED`) and the calls into
//!   `map` that the verification makes once its checks have passed: a
//!   private mapping, unmapped on drop.
//! - [`Asset`]: a fetched asset, its metadata and its mapped bytes;
//!   [`PrivateCopy`]: the same mapped copy-on-write, writable in place.
//! - [`Resolver`]: pull-through: a connection that supplies names the
//!   daemon does not hold, under its prefixes, when clients ask for them.
//! - [`Watcher`]: a subscription to the changes under a prefix, on a
//!   connection of its own; [`CachedClient`]: fetches answered without a
//!   round trip while the watch says nothing changed.
//! - `AsyncClient` (feature `tokio`): the same requests for async code,
//!   built on the same protocol and verification code.
//! - [`Error`] and [`VerifyError`]: what can go wrong, in words a person can
//!   act on.
//!
//! # The path of a fetch
//!
//! [`Client::fetch`] sends `Request::Fetch`; the daemon answers
//! `Response::Asset` with one descriptor riding on the frame. The descriptor
//! arrives close-on-exec, is handed to [`verify()`], which checks the seals
//! first, then (with one `fstat`, now that nothing can change them) the file
//! type and the size, and maps exactly the file's
//! size with `PROT_READ` and `MAP_PRIVATE`. The result is an [`Asset`] that
//! dereferences to the mapped bytes and unmaps and closes them on drop. A
//! descriptor that fails any check is closed at once and never mapped.
//!
//! The `memseal` command-line tool (package `memseal-cli`) is built on the
//! same API; this library carries none of its dependencies.

// Unsafe code only where a module opts in: `map`, `verify` and `peer`.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod asset;
#[cfg(feature = "tokio")]
mod async_client;
mod cache;
mod client;
mod connect;
mod connection;
mod error;
#[allow(unsafe_code)]
mod map;
mod options;
#[allow(unsafe_code)]
mod peer;
mod private;
mod protocol;
mod resolver;
#[allow(unsafe_code)]
mod verify;
mod watch;

pub use asset::Asset;
#[cfg(feature = "tokio")]
pub use async_client::{AsyncClient, AsyncResolver, AsyncWatcher};
pub use cache::CachedClient;
pub use client::Client;
pub use connect::{ConnectOptions, DEFAULT_TIMEOUT};
pub use error::{Error, HandshakeError};
pub use options::{Access, MapOptions, ShmemHugePages, COPY_BREAK_EVEN, SHMEM_ENABLED_PATH};
pub use private::PrivateCopy;
pub use resolver::{Resolver, Wanted};
pub use verify::{verify, verify_with, Sealed, VerifyError, REQUIRED_SEALS};
pub use watch::Watcher;

pub use memseal_proto as proto;
pub use memseal_proto::{AssetInfo, ErrorCode, Event, Hash, Limits, Selector, ServerStatus};

// The README's examples are compiled as doctests, so they cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
