//! One client connection: handshake, then requests one at a time.
//!
//! Reading goes through a [`memseal_proto::wire::FrameBuffer`] fed by
//! [`memseal_proto::tokio_io`] on the non-blocking socket, so descriptors are received with
//! `MSG_CMSG_CLOEXEC`, counted, and closed unless the request calls for
//! them. Every wait has a deadline: the handshake, each frame once its first
//! byte arrived, each 64 KiB of an upload, and each reply. A peer that
//! misses one is dropped; only the wait for the *next* request is
//! unbounded, since clients keep connections open to fetch fast.
//!
//! Replies that carry a descriptor are held back while the peer has too
//! many earlier replies unread ([`UnreadLimit`]): descriptors in flight
//! count against the daemon's RLIMIT_NOFILE, and a client that asks without
//! reading must not be able to exhaust it for everyone else. For the same
//! reason a connection that ends with replies still unread is shut down but
//! not closed at once: its descriptor and its connection slot are held
//! until the client has read or discarded what was queued ([`linger`]), so
//! a client cannot pile up descriptors in flight by reconnecting.
//!
//! [`linger`]: Connection::run
//!
//! This file holds the connection's life and the small requests; the
//! larger jobs live beside it: `fetch` (one asset, a batch, and the wait
//! for a resolver), `lane` (the fast lane a client that keeps fetching is
//! served in, with blocking calls), `publish` (reservation, streamed and
//! descriptor uploads), `watching` (the event stream), `resolving` (a
//! resolver's connection), `socket` (the socket as the event loop sees
//! it: registered for reading only) and `unread` (the bound on replies
//! left unread).

use crate::catalog::CatalogError;
use crate::config::Config;
use crate::descriptions::{Descriptions, SharedKept};
use crate::policy::{Peer, Write};
use crate::state::State;
use crate::sys;
use memseal_proto::codec::{decode_request, encode_response, Decoded};
use memseal_proto::name::{validate_name, validate_prefix};
use memseal_proto::tokio_io;
use memseal_proto::wire::{FrameBuffer, RawFrame};
use memseal_proto::{
    ErrorCode, FrameError, Limits, Request, Response, SessionLimits, PROTOCOL_VERSION,
    PROTOCOL_VERSION_2,
};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn};

mod fetch;
mod lane;
mod publish;
mod resolving;
mod socket;
mod unread;
mod watching;

pub use lane::Lanes;
pub use publish::USER_INGESTS;
pub use socket::ReadRegistered;

/// What all connections share besides the daemon's state.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Descriptions kept beyond each connection's own few.
    pub kept: Arc<SharedKept>,
    /// The fast lanes.
    pub lanes: Arc<Lanes>,
}
pub use unread::{unread_limit, UnreadLimit};

/// Names listed per page: a page of the longest names stays well under
/// the 64 KiB frame cap.
const LIST_PAGE: usize = 128;

/// Why a connection ended early.
#[derive(Debug)]
enum End {
    /// The peer went away or broke the protocol; an error reply may have
    /// been sent already.
    Peer(FrameError),
    /// A deadline passed.
    Timeout(&'static str),
    /// The peer gave up on a request half-way; the text says what happened.
    Abandoned(String),
    /// The daemon is shutting down.
    Shutdown,
}

impl From<FrameError> for End {
    fn from(e: FrameError) -> Self {
        End::Peer(e)
    }
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Peer(FrameError::Io(e))
    }
}

/// One accepted client, from the handshake to its last reply.
pub struct Connection {
    stream: ReadRegistered,
    /// Frames as they arrive, with their descriptors.
    buffer: FrameBuffer,
    /// Who the kernel says is at the other end; decides the policy.
    peer: Peer,
    state: Arc<State>,
    config: Arc<Config>,
    /// How many replies with descriptors the peer may leave unread.
    unread_limit: UnreadLimit,
    /// Descriptor replies that may still be sent before the unread queue
    /// must be measured again: even if none of them is read, the bound
    /// holds. Saves a system call on nearly every fetch.
    unchecked_sends: std::sync::atomic::AtomicUsize,
    /// A batch answer went out since the queue was last seen empty.
    batch_unread: std::sync::atomic::AtomicBool,
    /// Turns true when the daemon stops.
    shutdown: watch::Receiver<bool>,
    /// The read-only descriptions this connection's fetches hand out.
    descriptions: Descriptions,
    /// The fast lanes it may take (see `lane`).
    lanes: Arc<Lanes>,
}

impl Connection {
    /// Wrap an accepted stream; nothing is read until [`Connection::run`].
    pub fn new(
        stream: ReadRegistered,
        peer: Peer,
        state: Arc<State>,
        config: Arc<Config>,
        unread_limit: UnreadLimit,
        shared: Shared,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Connection {
            stream,
            buffer: FrameBuffer::with_descriptor_limit(memseal_proto::MAX_REQUEST_FDS),
            peer,
            state,
            config,
            unread_limit,
            unchecked_sends: std::sync::atomic::AtomicUsize::new(0),
            batch_unread: std::sync::atomic::AtomicBool::new(false),
            shutdown,
            descriptions: Descriptions::new(shared.kept),
            lanes: shared.lanes,
        }
    }

    /// Serve the connection until the peer leaves, misbehaves or the daemon
    /// stops. Never fails: problems are logged and end this connection only.
    ///
    /// A connection that ends while the peer still has replies queued
    /// unread is shut down (the peer reads what was queued, then end of
    /// file) but its socket stays open until that queue is empty: the
    /// descriptors in it are charged to the daemon until the peer reads or
    /// closes, and keeping the socket keeps them counted against this
    /// connection's slot instead of letting the peer reconnect and queue
    /// more.
    pub async fn run(mut self) {
        let served = self.serve().await;
        // What was sent stays valid; the daemon's copies go now, not when
        // a lingering socket finally closes.
        self.descriptions.clear();
        let why = match served {
            Ok(()) | Err(End::Peer(FrameError::Closed)) | Err(End::Shutdown) => {
                debug!(peer = %self.peer, "connection closed");
                None
            }
            Err(End::Timeout(what)) => Some(what.to_owned()),
            Err(End::Abandoned(what)) => Some(what),
            Err(End::Peer(e)) => Some(e.to_string()),
        };
        if let Some(why) = why {
            if let Some(note) = self.state.may_log(&self.peer) {
                info!(peer = %self.peer, "dropping client: {why}{note}");
            }
        }
        self.linger().await;
    }

    /// Hold the shut-down socket until the peer has taken (or discarded)
    /// every queued reply, or the daemon stops.
    async fn linger(&mut self) {
        let unread = sys::unread_bytes(self.stream.as_fd()).unwrap_or(0);
        if unread == 0 || *self.shutdown.borrow() {
            return;
        }
        let _ = rustix::net::shutdown(&self.stream, rustix::net::Shutdown::Both);
        debug!(peer = %self.peer, unread, "holding the connection until its replies are read");
        let mut pause = Duration::from_millis(10);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shutdown.wait_for(|stop| *stop) => return,
            }
            if sys::unread_bytes(self.stream.as_fd()).unwrap_or(0) == 0 {
                debug!(peer = %self.peer, "queued replies drained; closing");
                return;
            }
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    async fn serve(&mut self) -> Result<(), End> {
        self.handshake().await?;
        // A request the fast lane handed back, answered before reading on.
        let mut handed_back = None;
        loop {
            let request = match handed_back.take() {
                Some(request) => request,
                None => self.next_request().await?,
            };
            let lane_work = matches!(
                request.message,
                Request::Fetch { .. } | Request::Stat { .. } | Request::FetchMany { .. }
            );
            self.handle(request.message, request.fd).await?;
            if !lane_work {
                continue;
            }
            match self.ride_lane()? {
                None | Some(lane::Left::Waiting) => {}
                Some(lane::Left::Stopping) => return Err(End::Shutdown),
                Some(lane::Left::Request(request)) => handed_back = Some(request),
                Some(lane::Left::Broken(e)) => return Err(self.protocol_error(e).await),
            }
        }
    }

    /// The next request, decoded; a framing or decoding error ends the
    /// connection (the client is told why).
    async fn next_request(&mut self) -> Result<Decoded<Request>, End> {
        let frame = match self.next_frame(None).await {
            Ok(frame) => frame,
            Err(End::Peer(e)) => return Err(self.protocol_error(e).await),
            Err(other) => return Err(other),
        };
        match decode_request(&frame.payload, frame.fds) {
            Ok(decoded) => Ok(decoded),
            Err(e) => Err(self.protocol_error(e).await),
        }
    }

    async fn handshake(&mut self) -> Result<(), End> {
        let deadline = Instant::now() + self.config.handshake_timeout;
        let frame = match self.next_frame(Some(deadline)).await {
            Ok(frame) => frame,
            Err(End::Peer(e)) => return Err(self.protocol_error(e).await),
            Err(other) => return Err(other),
        };
        let hello = decode_request(&frame.payload, frame.fds);
        let (version, client) = match hello {
            Ok(decoded) => match decoded.message {
                Request::Hello { version, client } => (version, client),
                other => {
                    let e = FrameError::Protocol(format!(
                        "expected a hello first, got a '{}' request",
                        other.kind()
                    ));
                    return Err(self.protocol_error(e).await);
                }
            },
            Err(e) => return Err(self.protocol_error(e).await),
        };
        if version != PROTOCOL_VERSION && version != PROTOCOL_VERSION_2 {
            let message = format!(
                "this daemon speaks memseal protocol versions {PROTOCOL_VERSION} and \
                 {PROTOCOL_VERSION_2}; the client asked for version {version}"
            );
            self.reply(
                Response::error(ErrorCode::UnsupportedVersion, message.clone()),
                None,
            )
            .await?;
            return Err(End::Peer(FrameError::Protocol(message)));
        }
        debug!(peer = %self.peer, client = %client.escape_debug(), version, "handshake");
        let budget = self.state.budget();
        let limits = Limits {
            max_frame_len: memseal_proto::MAX_FRAME_LEN,
            max_asset_size: budget.max_asset_size,
            max_total_bytes: budget.max_total_bytes,
            max_name_len: memseal_proto::name::MAX_NAME_LEN as u32,
            keep_versions: budget.keep_versions as u32,
        };
        let server = crate::state::server_name();
        let answer = match version {
            PROTOCOL_VERSION => Response::Welcome {
                version,
                server,
                limits,
            },
            _ => Response::Greeting {
                version,
                server,
                limits,
                session: SessionLimits {
                    max_unread_descriptors: self.unread_limit.replies as u32,
                    max_fetch_many: self.max_fetch_many() as u32,
                },
            },
        };
        self.reply(answer, None).await
    }

    /// Tell the peer why it is being dropped (best effort) and end.
    async fn protocol_error(&mut self, error: FrameError) -> End {
        // The stream is broken: close whatever descriptor rode on the
        // half-read frame now, not when the connection finally goes.
        self.buffer = FrameBuffer::with_descriptor_limit(memseal_proto::MAX_REQUEST_FDS);
        if !matches!(
            error,
            FrameError::Closed | FrameError::Truncated { .. } | FrameError::Io(_)
        ) {
            let reply = Response::error(ErrorCode::ProtocolError, error.to_string());
            let _ = timeout(Duration::from_secs(1), self.reply(reply, None)).await;
        }
        End::Peer(error)
    }

    /// Wait for the next frame. Before its first byte, wait until
    /// `idle_deadline` (forever if None) or shutdown; after it, at most the
    /// I/O timeout for the rest.
    async fn next_frame(&mut self, idle_deadline: Option<Instant>) -> Result<RawFrame, End> {
        let mut frame_deadline = None;
        loop {
            // A frame that arrived with the previous read is served first,
            // without waiting for the socket.
            if let Some(frame) = self.buffer.next_frame()? {
                return Ok(frame);
            }
            if self.buffer.in_frame() && frame_deadline.is_none() {
                frame_deadline = Some(Instant::now() + self.config.io_timeout);
            }
            // The earlier of the two: a frame begun just before the
            // handshake deadline does not extend it.
            let deadline = match (frame_deadline, idle_deadline) {
                (Some(frame), Some(idle)) => Some(frame.min(idle)),
                (frame, idle) => frame.or(idle),
            };
            let receive = tokio_io::receive(&self.stream, &mut self.buffer);
            let received = async {
                match deadline {
                    Some(at) => tokio::time::timeout_at(at, receive)
                        .await
                        .map_err(|_| End::Timeout("request not received in time"))?,
                    None => receive.await,
                }
                .map_err(End::Peer)
            };
            // Shutdown ends only a connection between frames: a frame once
            // begun is finished (or its deadline passes). `receive` is
            // cancel-safe, so losing the race costs nothing.
            if frame_deadline.is_some() {
                received.await?;
            } else {
                tokio::select! {
                    result = received => result?,
                    _ = self.shutdown.wait_for(|stop| *stop) => return Err(End::Shutdown),
                }
            }
        }
    }

    /// Send one response, its descriptor (if any) on the first byte.
    async fn reply(&self, response: Response, fd: Option<BorrowedFd<'_>>) -> Result<(), End> {
        self.reply_with(response, fd.into_iter().collect()).await
    }

    /// Send one response with `fds` on its first byte, once the peer's
    /// unread replies leave room for them ([`Connection::make_room_for`]).
    ///
    /// If the kernel refuses the descriptors because the daemon has too
    /// many in flight (`ETOOMANYREFS`; nothing was sent), the client gets a
    /// `Busy` error instead and the connection stays usable.
    async fn reply_with(&self, response: Response, fds: Vec<BorrowedFd<'_>>) -> Result<(), End> {
        let frame = encode_response(&response)?;
        if fds.is_empty() {
            return self.send(frame, &[]).await;
        }
        self.make_room_for(fds.len()).await?;
        match self.send(frame, &fds).await {
            Err(End::Peer(FrameError::Io(e))) if e.raw_os_error() == Some(libc::ETOOMANYREFS) => {
                let busy = self.too_many_in_flight();
                self.send(encode_response(&busy)?, &[]).await
            }
            other => other,
        }
    }

    /// What a client gets when the kernel refused the descriptors of its
    /// reply because the daemon has too many in flight (`ETOOMANYREFS`;
    /// nothing was sent); logged within the peer's log budget.
    fn too_many_in_flight(&self) -> Response {
        if let Some(note) = self.state.may_log(&self.peer) {
            warn!(
                peer = %self.peer,
                "cannot send a descriptor: the kernel says too many of this user's are in \
                 flight (ETOOMANYREFS); answering busy{note}"
            );
        }
        Response::error(
            ErrorCode::Busy,
            "memseald cannot pass another descriptor right now: too many of its \
             descriptors sit unread in sockets (the kernel's per-user limit); \
             retry shortly",
        )
    }

    /// Write one encoded frame within the I/O timeout.
    async fn send(&self, frame: Vec<u8>, fds: &[BorrowedFd<'_>]) -> Result<(), End> {
        let deadline = Instant::now() + self.config.io_timeout;
        tokio::time::timeout_at(deadline, tokio_io::write_frame(&self.stream, frame, fds))
            .await
            .map_err(|_| End::Timeout("client does not read its replies"))??;
        Ok(())
    }

    async fn reply_error(&self, error: CatalogError) -> Result<(), End> {
        self.reply(Response::error(error.code, error.message), None)
            .await
    }

    async fn handle(&mut self, request: Request, fd: Option<OwnedFd>) -> Result<(), End> {
        match request {
            Request::Hello { .. } => {
                let e = FrameError::Protocol("hello sent twice".into());
                Err(self.protocol_error(e).await)
            }
            Request::Publish { name, size, source } => self.publish(name, size, source, fd).await,
            Request::Fetch { name, selector } => {
                if let Err(reply) = invalid_name(&name) {
                    return self.reply(reply, None).await;
                }
                self.fetch(&name, selector).await
            }
            Request::Stat { name, selector } => {
                if let Err(reply) = invalid_name(&name) {
                    return self.reply(reply, None).await;
                }
                self.stat(&name, selector).await
            }
            Request::List {
                prefix,
                start_after,
            } => {
                if let Err(e) = validate_prefix(&prefix) {
                    return self
                        .reply(
                            Response::error(ErrorCode::InvalidName, format!("invalid prefix: {e}")),
                            None,
                        )
                        .await;
                }
                let (assets, next) = self.state.list(&prefix, start_after.as_deref(), LIST_PAGE);
                self.reply(Response::Listing { assets, next }, None).await
            }
            Request::Remove { name, version } => {
                if let Err(reply) = self.check_write(Write::Remove, &name) {
                    return self.reply(reply, None).await;
                }
                let reply = match self.state.remove(&name, version) {
                    Ok(versions) => {
                        if let Some(note) = self.state.may_log(&self.peer) {
                            info!(peer = %self.peer, name, ?version, "removed{note}");
                        }
                        Response::Removed { versions }
                    }
                    Err(e) => Response::error(e.code, e.message),
                };
                self.reply(reply, None).await
            }
            Request::Status => {
                self.reply(Response::Status(self.state.status()), None)
                    .await
            }
            Request::Watch { prefix } => self.watch(prefix).await,
            Request::FetchMany { items } => self.fetch_many(items).await,
            Request::Resolve { prefixes } => self.resolve(prefixes).await,
            Request::Unresolved { .. } => {
                let e = FrameError::Protocol(
                    "'unresolved' is sent only on a resolving connection".into(),
                );
                Err(self.protocol_error(e).await)
            }
        }
    }

    /// Name rules and access policy for a write; the error is the reply.
    fn check_write(&self, action: Write, name: &str) -> Result<(), Response> {
        invalid_name(name)?;
        self.state
            .policy()
            .check_write(&self.peer, action, name)
            .map_err(|why| {
                if let Some(note) = self.state.log_budget().allow(&self.peer, false) {
                    info!(peer = %self.peer, name, "denied: {why}{note}");
                }
                Response::error(ErrorCode::PermissionDenied, why)
            })
    }
}

/// The name rules, as a reply: a name that breaks them can never exist,
/// so the client is told why rather than "not found".
pub(super) fn invalid_name(name: &str) -> Result<(), Response> {
    validate_name(name)
        .map_err(|e| Response::error(ErrorCode::InvalidName, format!("invalid name: {e}")))
}
