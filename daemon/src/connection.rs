//! One client connection: handshake, then requests one at a time.
//!
//! Reading goes through [`memseal_proto::wire::FrameReader`] on the
//! non-blocking socket, so descriptors are received with
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

use crate::blob::{self, StreamIngest};
use crate::catalog::CatalogError;
use crate::config::Config;
use crate::policy::{Peer, Write};
use crate::store::Store;
use crate::sys;
use memseal_proto::codec::{decode_request, encode_response};
use memseal_proto::name::{validate_name, validate_prefix};
use memseal_proto::wire::{recv_raw, FrameReader, FrameWriter, RawFrame};
use memseal_proto::{
    ErrorCode, FrameError, Limits, PublishSource, Request, Response, Selector, PROTOCOL_VERSION,
};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn};

/// Names listed per page: a page of the longest names stays well under
/// the 64 KiB frame cap.
const LIST_PAGE: usize = 128;

/// Largest read of a streamed upload at once.
const UPLOAD_CHUNK: usize = 1 << 20;

/// What the kernel charges (`SIOCOUTQ`, the sender's `sk_wmem_alloc`) for
/// one reply frame queued unread: measured 768 bytes on Linux 6.18 for a
/// frame of up to about 190 bytes, with or without a descriptor, and 1280
/// for the larger frames that the longest names make. The charge is per
/// queued message (the buffer's true size), not per byte of payload.
const QUEUED_REPLY_COST: usize = 768;

/// The most replies with descriptors one connection may leave unread.
/// The client library asks and reads one at a time; a pipelining client
/// is merely slowed down by this, never refused.
pub const MAX_UNREAD_REPLIES: usize = 64;

/// How long an event may wait for room in a watcher's socket before the
/// watcher counts as fallen behind.
const WATCH_SEND_GRACE: Duration = Duration::from_millis(100);

/// Bytes the progress deadline of an upload asks for: each 64 KiB (or the
/// rest of the upload, if less) must arrive within the I/O timeout.
const UPLOAD_PROGRESS: u64 = 64 << 10;

/// How many replies with descriptors each connection may leave unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnreadLimit {
    /// In replies, for people.
    pub replies: usize,
    /// In `SIOCOUTQ` bytes, what the check compares against.
    pub bytes: usize,
}

/// The bound on unread replies for a daemon of `max_connections` that may
/// hold `descriptor_limit` descriptors.
///
/// The kernel refuses to send a descriptor (`ETOOMANYREFS`) once the
/// sending user has more in flight than its RLIMIT_NOFILE, and that would
/// hit healthy clients too. So every connection together may leave at most
/// half of the limit unread, and each one at most [`MAX_UNREAD_REPLIES`],
/// but never fewer than one.
pub fn unread_limit(max_connections: usize, descriptor_limit: u64) -> UnreadLimit {
    let share = descriptor_limit / 2 / (max_connections.max(1) as u64);
    let replies = (share.min(MAX_UNREAD_REPLIES as u64) as usize).max(1);
    UnreadLimit {
        replies,
        // The check runs before each send and lets one more through while
        // the queue is at or under the bound, hence `replies - 1`.
        bytes: (replies - 1) * QUEUED_REPLY_COST,
    }
}

/// Why a connection ended early.
#[derive(Debug)]
enum End {
    /// The peer went away or broke the protocol; an error reply may have
    /// been sent already.
    Peer(FrameError),
    /// A deadline passed.
    Timeout(&'static str),
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
    stream: UnixStream,
    reader: FrameReader,
    /// Who the kernel says is at the other end; decides the policy.
    peer: Peer,
    store: Arc<Store>,
    config: Arc<Config>,
    /// How many replies with descriptors the peer may leave unread.
    unread_limit: UnreadLimit,
    /// Descriptor replies that may still be sent before the unread queue
    /// must be measured again: even if none of them is read, the bound
    /// holds. Saves a system call on nearly every fetch.
    unchecked_sends: std::sync::atomic::AtomicUsize,
    /// Turns true when the daemon stops.
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    /// Wrap an accepted stream; nothing is read until [`Connection::run`].
    pub fn new(
        stream: UnixStream,
        peer: Peer,
        store: Arc<Store>,
        config: Arc<Config>,
        unread_limit: UnreadLimit,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Connection {
            stream,
            reader: FrameReader::new(),
            peer,
            store,
            config,
            unread_limit,
            unchecked_sends: std::sync::atomic::AtomicUsize::new(0),
            shutdown,
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
        match self.serve().await {
            Ok(()) | Err(End::Peer(FrameError::Closed)) | Err(End::Shutdown) => {
                debug!(peer = %self.peer, "connection closed")
            }
            Err(End::Timeout(what)) => info!(peer = %self.peer, "dropping client: {what}"),
            Err(End::Peer(e)) => info!(peer = %self.peer, "dropping client: {e}"),
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
        loop {
            let frame = match self.next_frame(None).await {
                Ok(frame) => frame,
                Err(End::Peer(e)) => return Err(self.protocol_error(e).await),
                Err(other) => return Err(other),
            };
            let request = match decode_request(&frame.payload, frame.fds) {
                Ok(decoded) => decoded,
                Err(e) => return Err(self.protocol_error(e).await),
            };
            self.handle(request.message, request.fd).await?;
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
                    let e = FrameError::Decode(format!(
                        "expected a hello first, got a '{}' request",
                        other.kind()
                    ));
                    return Err(self.protocol_error(e).await);
                }
            },
            Err(e) => return Err(self.protocol_error(e).await),
        };
        if version != PROTOCOL_VERSION {
            let message = format!(
                "this daemon speaks memseal protocol version {PROTOCOL_VERSION} only; the client asked for version {version}"
            );
            self.reply(
                Response::error(ErrorCode::UnsupportedVersion, message.clone()),
                None,
            )
            .await?;
            return Err(End::Peer(FrameError::Decode(message)));
        }
        debug!(peer = %self.peer, client = %client.escape_debug(), "handshake");
        let budget = self.store.budget();
        let welcome = Response::Welcome {
            version: PROTOCOL_VERSION,
            server: crate::store::server_name(),
            limits: Limits {
                max_frame_len: memseal_proto::MAX_FRAME_LEN,
                max_asset_size: budget.max_asset_size,
                max_total_bytes: budget.max_total_bytes,
                max_name_len: memseal_proto::name::MAX_NAME_LEN as u32,
                keep_versions: budget.keep_versions as u32,
            },
        };
        self.reply(welcome, None).await
    }

    /// Tell the peer why it is being dropped (best effort) and end.
    async fn protocol_error(&mut self, error: FrameError) -> End {
        // The stream is broken: close whatever descriptor rode on the
        // half-read frame now, not when the connection finally goes.
        self.reader = FrameReader::new();
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
            if self.reader.has_frame() {
                match self.reader.read_step(self.stream.as_fd()) {
                    Ok(Some(frame)) => return Ok(frame),
                    Ok(None) => {}
                    Err(e) => return Err(End::Peer(e)),
                }
            }
            if self.reader.in_frame() && frame_deadline.is_none() {
                frame_deadline = Some(Instant::now() + self.config.io_timeout);
            }
            // The earlier of the two: a frame begun just before the
            // handshake deadline does not extend it.
            let deadline = match (frame_deadline, idle_deadline) {
                (Some(frame), Some(idle)) => Some(frame.min(idle)),
                (frame, idle) => frame.or(idle),
            };
            let stream = &self.stream;
            let reader = &mut self.reader;
            let shutdown = &mut self.shutdown;
            let ready = async {
                match deadline {
                    Some(at) => tokio::time::timeout_at(at, stream.readable())
                        .await
                        .map_err(|_| End::Timeout("request not received in time"))?,
                    None => stream.readable().await,
                }
                .map_err(End::from)
            };
            if frame_deadline.is_some() {
                ready.await?;
            } else {
                tokio::select! {
                    result = ready => result?,
                    _ = shutdown.wait_for(|stop| *stop) => return Err(End::Shutdown),
                }
            }
            let step = stream.try_io(Interest::READABLE, || {
                match reader.read_step(stream.as_fd()) {
                    Err(FrameError::Io(e)) => Err(e),
                    other => Ok(other),
                }
            });
            match step {
                Ok(Ok(Some(frame))) => {
                    if self.reader.socket_drained() {
                        // The read came up short: the socket is empty, so
                        // forget the readiness now instead of paying a
                        // receive that would only say EAGAIN next time.
                        // Tokio keeps the readiness if a new event arrived
                        // meanwhile, so no wake-up is lost.
                        let _ = self.stream.try_io(Interest::READABLE, || {
                            Err::<(), _>(io::ErrorKind::WouldBlock.into())
                        });
                    }
                    return Ok(frame);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(End::Peer(e)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(End::from(e)),
            }
        }
    }

    /// Send one response, its descriptor (if any) on the first byte.
    ///
    /// If the kernel refuses the descriptor because the daemon has too
    /// many in flight (`ETOOMANYREFS`; nothing was sent), the client gets a
    /// `Busy` error instead and the connection stays usable.
    async fn reply(&self, response: Response, fd: Option<BorrowedFd<'_>>) -> Result<(), End> {
        let frame = encode_response(&response)?;
        if fd.is_none() {
            return self.send(frame, None).await;
        }
        let unchecked = self
            .unchecked_sends
            .load(std::sync::atomic::Ordering::Relaxed);
        let unchecked = if unchecked == 0 {
            self.wait_for_reader().await?
        } else {
            unchecked
        };
        self.unchecked_sends
            .store(unchecked - 1, std::sync::atomic::Ordering::Relaxed);
        match self.send(frame, fd).await {
            Err(End::Peer(FrameError::Io(e))) if e.raw_os_error() == Some(libc::ETOOMANYREFS) => {
                warn!(
                    peer = %self.peer,
                    "cannot send a descriptor: the kernel says too many of this user's are in \
                     flight (ETOOMANYREFS); answering busy"
                );
                let busy = Response::error(
                    ErrorCode::Busy,
                    "memseald cannot pass another descriptor right now: too many of its \
                     descriptors sit unread in sockets (the kernel's per-user limit); \
                     retry shortly",
                );
                self.send(encode_response(&busy)?, None).await
            }
            other => other,
        }
    }

    /// Write one encoded frame within the I/O timeout.
    async fn send(&self, frame: Vec<u8>, fd: Option<BorrowedFd<'_>>) -> Result<(), End> {
        let mut writer = FrameWriter::new(frame, fd);
        let deadline = Instant::now() + self.config.io_timeout;
        while !writer.is_done() {
            tokio::time::timeout_at(deadline, self.stream.writable())
                .await
                .map_err(|_| End::Timeout("client does not read its replies"))??;
            match self
                .stream
                .try_io(Interest::WRITABLE, || writer.write_step(&self.stream))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(End::from(e)),
            }
        }
        Ok(())
    }

    /// Hold a descriptor reply back while the peer sits on unread replies.
    /// The kernel does not signal when a peer reads, so this polls, more
    /// and more slowly: a client that reads soon is served at once, one
    /// that never reads costs a few dozen wake-ups before it is dropped.
    /// Returns how many descriptor replies may go out before the next
    /// check (at least one): the bound minus those still unread.
    async fn wait_for_reader(&self) -> Result<usize, End> {
        let deadline = Instant::now() + self.config.io_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let unread = sys::unread_bytes(self.stream.as_fd())?;
            if unread <= self.unread_limit.bytes {
                // Every queued reply costs at least QUEUED_REPLY_COST.
                let queued = unread.div_ceil(QUEUED_REPLY_COST);
                return Ok(self.unread_limit.replies.saturating_sub(queued).max(1));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(End::Timeout(
                    "client left too many replies with descriptors unread",
                ));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    async fn reply_error(&self, error: CatalogError) -> Result<(), End> {
        self.reply(Response::error(error.code, error.message), None)
            .await
    }

    async fn handle(&mut self, request: Request, fd: Option<OwnedFd>) -> Result<(), End> {
        match request {
            Request::Hello { .. } => {
                let e = FrameError::Decode("hello sent twice".into());
                Err(self.protocol_error(e).await)
            }
            Request::Publish { name, size, source } => self.publish(name, size, source, fd).await,
            Request::Fetch { name, selector } => self.fetch(&name, selector).await,
            Request::Stat { name, selector } => {
                let reply = match self.store.stat(&name, selector) {
                    Ok(info) => Response::Info(info),
                    Err(e) => Response::error(e.code, e.message),
                };
                self.reply(reply, None).await
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
                let (assets, next) = self.store.list(&prefix, start_after.as_deref(), LIST_PAGE);
                self.reply(Response::Listing { assets, next }, None).await
            }
            Request::Remove { name, version } => {
                if let Err(reply) = self.check_write(Write::Remove, &name) {
                    return self.reply(reply, None).await;
                }
                let reply = match self.store.remove(&name, version) {
                    Ok(versions) => {
                        info!(peer = %self.peer, name, ?version, "removed");
                        Response::Removed { versions }
                    }
                    Err(e) => Response::error(e.code, e.message),
                };
                self.reply(reply, None).await
            }
            Request::Status => {
                self.reply(Response::Status(self.store.status()), None)
                    .await
            }
            Request::Watch { prefix } => self.watch(prefix).await,
        }
    }

    /// Stream published and removed versions under `prefix` until the
    /// client closes the connection or falls too far behind.
    async fn watch(&mut self, prefix: String) -> Result<(), End> {
        use tokio::sync::broadcast::error::RecvError;
        if let Err(e) = validate_prefix(&prefix) {
            let reply = Response::error(ErrorCode::InvalidName, format!("invalid prefix: {e}"));
            return self.reply(reply, None).await;
        }
        // Subscribe before answering, so no change after the answer is missed.
        let mut events = self.store.subscribe();
        self.reply(Response::Watching, None).await?;
        debug!(peer = %self.peer, prefix, "watching");
        enum Next {
            Event(Result<memseal_proto::Event, RecvError>),
            ClientSpoke,
            Shutdown,
        }
        loop {
            let next = tokio::select! {
                event = events.recv() => Next::Event(event),
                // A watching client sends nothing more: any byte, or EOF,
                // ends the watch.
                _ = self.stream.readable() => Next::ClientSpoke,
                _ = self.shutdown.wait_for(|stop| *stop) => Next::Shutdown,
            };
            match next {
                Next::Event(Ok(event)) => {
                    if event.info().name.starts_with(&prefix) {
                        // A watcher whose socket stays full has fallen
                        // behind: drop it at once rather than let it read
                        // stale events for seconds; it sees the connection
                        // end, and must watch again and refetch.
                        let sent =
                            timeout(WATCH_SEND_GRACE, self.reply(Response::Event(event), None));
                        match sent.await {
                            Ok(result) => result?,
                            Err(_) => {
                                return Err(End::Timeout(
                                    "watcher fell behind: it does not read its events",
                                ))
                            }
                        }
                    }
                }
                Next::Event(Err(RecvError::Lagged(missed))) => {
                    let reply = Response::error(
                        ErrorCode::Busy,
                        format!("the watcher fell {missed} events behind; watch again and refetch"),
                    );
                    let _ = timeout(Duration::from_secs(1), self.reply(reply, None)).await;
                    return Err(End::Timeout("watcher fell behind"));
                }
                Next::Event(Err(RecvError::Closed)) | Next::Shutdown => return Err(End::Shutdown),
                Next::ClientSpoke => {
                    // Readiness can be left over from the watch request
                    // itself; peek to see whether the client really spoke
                    // or left.
                    let peek = self.stream.try_io(Interest::READABLE, || {
                        let mut byte = [0u8; 1];
                        rustix::net::recv(&self.stream, &mut byte, rustix::net::RecvFlags::PEEK)
                            .map(|(n, _)| n)
                            .map_err(io::Error::from)
                    });
                    match peek {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        _ => return Err(End::Peer(FrameError::Closed)),
                    }
                }
            }
        }
    }

    /// Name rules and access policy for a write; the error is the reply.
    fn check_write(&self, action: Write, name: &str) -> Result<(), Response> {
        validate_name(name)
            .map_err(|e| Response::error(ErrorCode::InvalidName, format!("invalid name: {e}")))?;
        self.store
            .policy()
            .check_write(&self.peer, action, name)
            .map_err(|why| {
                info!(peer = %self.peer, name, "denied: {why}");
                Response::error(ErrorCode::PermissionDenied, why)
            })
    }

    async fn fetch(&self, name: &str, selector: Selector) -> Result<(), End> {
        match self.store.fetch(name, selector) {
            Ok((info, blob)) => {
                // `blob` keeps the memfd open until the reply is sent, even if
                // the version is removed meanwhile.
                self.reply(Response::Asset(info), Some(blob.fd())).await
            }
            Err(e) => self.reply_error(e).await,
        }
    }

    async fn publish(
        &mut self,
        name: String,
        size: u64,
        source: PublishSource,
        fd: Option<OwnedFd>,
    ) -> Result<(), End> {
        if let Err(reply) = self.check_write(Write::Publish, &name) {
            return self.reply(reply, None).await;
        }
        let exempt = self.store.policy().is_publisher(&self.peer);
        let reservation = match self.store.reserve(size, self.peer.uid, exempt) {
            Ok(r) => r,
            // A streamed publish is refused before the client was told to
            // send, so there is nothing to drain.
            Err(e) => return self.reply_error(e).await,
        };
        let started = std::time::Instant::now();
        let outcome = match (source, fd) {
            (PublishSource::Stream, None) => self.receive_stream(size).await?,
            (PublishSource::Descriptor, Some(fd)) => {
                match tokio::task::spawn_blocking(move || blob::from_descriptor(fd, size)).await {
                    Ok(Ok((blob, how))) => {
                        debug!(?how, "descriptor ingested");
                        Ok(blob)
                    }
                    Ok(Err(e)) => Err(Response::error(ErrorCode::InvalidSource, e.to_string())),
                    Err(e) => Err(Response::error(
                        ErrorCode::Internal,
                        format!("ingest failed: {e}"),
                    )),
                }
            }
            // decode_request guarantees the descriptor matches the source.
            _ => Err(Response::error(
                ErrorCode::ProtocolError,
                "descriptor mismatch",
            )),
        };
        match outcome {
            Ok(blob) => {
                let info = self.store.publish(reservation, &name, blob);
                info!(
                    peer = %self.peer,
                    name = %info.name,
                    version = info.version,
                    size = info.size,
                    hash = %&memseal_proto::message::hash_to_hex(&info.hash)[..16],
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "published"
                );
                self.reply(Response::Published(info), None).await
            }
            Err(reply) => {
                drop(reservation);
                self.reply(reply, None).await
            }
        }
    }

    /// Receive a streamed upload into a new memfd. The outer error ends the
    /// connection (the peer stalled or vanished: the partial memfd is
    /// dropped with `ingest`); the inner one is a reply.
    async fn receive_stream(&mut self, size: u64) -> Result<Result<blob::Blob, Response>, End> {
        let mut ingest = match StreamIngest::new(size) {
            Ok(ingest) => ingest,
            Err(e) => {
                let message = format!("cannot create a memfd of {size} bytes: {e}");
                warn!("{message}");
                return Ok(Err(Response::error(ErrorCode::Internal, message)));
            }
        };
        self.reply(Response::Continue, None).await?;
        let mut buffer = vec![0u8; (size as usize).clamp(1, UPLOAD_CHUNK)];
        // A deadline per gap between reads would let a peer that sends a
        // byte now and then hold its slot, its reservation and a partial
        // memfd forever; asking for steady progress does not.
        let mut deadline = Instant::now() + self.config.io_timeout;
        let mut owed = UPLOAD_PROGRESS.min(size);
        while ingest.remaining() > 0 {
            let want = (ingest.remaining() as usize).min(buffer.len());
            let got = self.read_raw(&mut buffer[..want], deadline).await?;
            if let Err(e) = ingest.write(&buffer[..got]) {
                return Err(End::Peer(FrameError::Io(e)));
            }
            owed = owed.saturating_sub(got as u64);
            if owed == 0 {
                deadline = Instant::now() + self.config.io_timeout;
                owed = UPLOAD_PROGRESS.min(ingest.remaining());
            }
        }
        match ingest.finish() {
            Ok(blob) => Ok(Ok(blob)),
            Err(e) => {
                let message = format!("cannot seal the new asset: {e}");
                warn!("{message}");
                Ok(Err(Response::error(ErrorCode::Internal, message)))
            }
        }
    }

    /// Read some raw upload bytes, waiting at most until `deadline`.
    /// Bytes that arrived together with the publish request come first.
    async fn read_raw(&mut self, buffer: &mut [u8], deadline: Instant) -> Result<usize, End> {
        let buffered = self.reader.take_raw(buffer).map_err(End::Peer)?;
        if buffered > 0 {
            return Ok(buffered);
        }
        loop {
            tokio::time::timeout_at(deadline, self.stream.readable())
                .await
                .map_err(|_| End::Timeout("upload too slow or stalled"))??;
            let step = self.stream.try_io(Interest::READABLE, || {
                match recv_raw(self.stream.as_fd(), buffer) {
                    Err(FrameError::Io(e)) => Err(e),
                    other => Ok(other),
                }
            });
            match step {
                Ok(Ok(0)) => {
                    return Err(End::Peer(FrameError::Truncated {
                        received: 0,
                        expected: buffer.len(),
                    }))
                }
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) => return Err(End::Peer(e)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(End::from(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unread_bound_fits_the_descriptor_limit() {
        // The shipped unit: LimitNOFILE=16384 shared by 1024 connections.
        let unit = unread_limit(1024, 16384);
        assert_eq!(unit.replies, 8);
        assert_eq!(unit.bytes, 7 * QUEUED_REPLY_COST);
        // Few connections, plenty of descriptors: the ceiling.
        assert_eq!(unread_limit(64, 20_000).replies, MAX_UNREAD_REPLIES);
        assert_eq!(unread_limit(1, u64::MAX).replies, MAX_UNREAD_REPLIES);
        // Starved: still one reply at a time, so fetching works at all.
        let starved = unread_limit(1024, 64);
        assert_eq!(starved.replies, 1);
        assert_eq!(starved.bytes, 0);
    }
}
