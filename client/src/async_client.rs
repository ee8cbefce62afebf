//! The async client, for tokio programs (feature `tokio`).
//!
//! [`AsyncClient`] runs the same operations as the blocking
//! [`Client`](crate::Client), from `protocol`, and verifies descriptors
//! with the same [`verify_with`](crate::verify_with). Only the movement of
//! frames differs: it goes through `memseal_proto::tokio_io`, the driver
//! the daemon uses too, so a step that would block clears the socket's
//! readiness and the task sleeps until the socket is ready again.
//!
//! There is no built-in timeout: wrap calls in `tokio::time::timeout`. A
//! request abandoned half-way (its future dropped) leaves the stream at an
//! unknown position, so the client notices and every later request fails
//! with [`Error::ConnectionLost`]. [`AsyncWatcher::next_event`] is the
//! exception: it keeps a partly received event and resumes it, so it may
//! be cancelled freely.
//!
//! Verification and mapping run on the calling task; they take
//! microseconds, except a populated mapping of a large asset, which
//! faults in every page before returning.

use crate::asset::Asset;
use crate::client::regular_file_size;
use crate::connect::ConnectOptions;
use crate::error::{Error, HandshakeError};
use crate::options::MapOptions;
use crate::private::PrivateCopy;
use crate::protocol::{self, Action, Operation, Session, Step};
use crate::verify::{check_sealed, verify_private, verify_with};
use memseal_proto::codec::{self, Decoded};
use memseal_proto::tokio_io;
use memseal_proto::wire::FrameBuffer;
use memseal_proto::{
    AssetInfo, ErrorCode, Event, FrameError, Limits, Request, Response, Selector, ServerStatus,
    SessionLimits, PROTOCOL_VERSION, PROTOCOL_VERSION_2,
};
use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;

/// A connection to memseald for async code: the operations of
/// [`Client`](crate::Client), as futures.
///
/// ```no_run
/// # async fn example() -> Result<(), memseal::Error> {
/// let mut client = memseal::AsyncClient::connect(&memseal::ConnectOptions::new()).await?;
/// let asset = client.fetch("greetings/hello.txt").await?;
/// println!("{} bytes", asset.len());
/// # Ok(())
/// # }
/// ```
pub struct AsyncClient {
    socket: AsyncSocket,
    socket_path: PathBuf,
    server: String,
    limits: Limits,
    session: Option<SessionLimits>,
    options: ConnectOptions,
}

/// The socket, the frames arriving on it, and the session.
struct AsyncSocket {
    stream: UnixStream,
    buffer: FrameBuffer,
    session: Session,
}

/// The body of a streamed publish: exactly `size` bytes from a reader of
/// the caller's.
struct Reader<R> {
    source: R,
    size: u64,
}

/// The body type of operations that have none.
type NoBody = Option<Reader<tokio::io::Empty>>;

impl AsyncClient {
    /// Connect with `options`: check the daemon's user, then greet it in
    /// protocol version 2, or version 1 if the daemon speaks only that.
    pub async fn connect(options: &ConnectOptions) -> Result<AsyncClient, Error> {
        match AsyncClient::connect_with(options, PROTOCOL_VERSION_2).await {
            Err(Error::Handshake(HandshakeError::Refused {
                code: ErrorCode::UnsupportedVersion,
                ..
            })) => AsyncClient::connect_with(options, PROTOCOL_VERSION).await,
            other => other,
        }
    }

    async fn connect_with(options: &ConnectOptions, version: u32) -> Result<AsyncClient, Error> {
        let choice = options.choose_socket()?;
        let path = choice.path().to_path_buf();
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| Error::Connect {
                path: path.clone(),
                source,
            })?;
        // Before a single byte goes out, as in the blocking client.
        options.check_peer(stream.as_fd(), &choice)?;
        let mut socket = AsyncSocket {
            stream,
            buffer: FrameBuffer::new(),
            session: Session::default(),
        };
        let welcome = socket
            .run(
                protocol::hello(options.greeting_name(), version),
                NoBody::None,
            )
            .await?;
        Ok(AsyncClient {
            socket,
            socket_path: path,
            server: welcome.server,
            limits: welcome.limits,
            session: welcome.session,
            options: options.clone(),
        })
    }

    /// Connect to the socket at `path`, with the other options at their
    /// defaults.
    pub async fn connect_to(path: impl AsRef<Path>) -> Result<AsyncClient, Error> {
        AsyncClient::connect(&ConnectOptions::new().socket(path.as_ref())).await
    }

    /// The socket this client is connected to.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The daemon's name and version, as it announced them.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The limits the daemon announced.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The session's limits, as the daemon announced them; see
    /// [`Client::session_limits`](crate::Client::session_limits).
    pub fn session_limits(&self) -> Option<&SessionLimits> {
        self.session.as_ref()
    }

    /// How many requests this client has sent, the handshake not counted.
    pub fn requests_sent(&self) -> u64 {
        self.socket.session.requests()
    }

    /// Publish `bytes` as the next version of `name`, streaming them.
    pub async fn publish_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<AssetInfo, Error> {
        // A byte slice is an `AsyncRead` that never fails or ends early.
        self.publish_reader(name, bytes, bytes.len() as u64).await
    }

    /// Publish exactly `size` bytes read from `reader`, streaming them. See
    /// [`Client::publish_reader`](crate::Client::publish_reader): if the
    /// reader fails or ends early, the publish and the connection are
    /// abandoned.
    pub async fn publish_reader(
        &mut self,
        name: &str,
        reader: impl tokio::io::AsyncRead + Unpin,
        size: u64,
    ) -> Result<AssetInfo, Error> {
        let publish = protocol::publish_stream(name, size);
        self.socket
            .run(
                publish,
                Some(Reader {
                    source: reader,
                    size,
                }),
            )
            .await
    }

    /// Publish the whole of a regular file; the daemon copies it. See
    /// [`Client::publish_file`](crate::Client::publish_file).
    pub async fn publish_file(&mut self, name: &str, file: &File) -> Result<AssetInfo, Error> {
        let size = regular_file_size(file)?;
        let publish = protocol::publish_descriptor(name, size, file.as_fd());
        self.socket.run(publish, NoBody::None).await
    }

    /// Publish a memfd the caller sealed; the daemon adopts it without a
    /// copy. See [`Client::publish_sealed`](crate::Client::publish_sealed).
    pub async fn publish_sealed(
        &mut self,
        name: &str,
        memfd: BorrowedFd<'_>,
    ) -> Result<AssetInfo, Error> {
        let size = check_sealed(memfd)?;
        let publish = protocol::publish_descriptor(name, size, memfd);
        self.socket.run(publish, NoBody::None).await
    }

    /// Fetch the latest version of `name`.
    pub async fn fetch(&mut self, name: &str) -> Result<Asset, Error> {
        self.fetch_with_options(name, Selector::Latest, &MapOptions::new())
            .await
    }

    /// Fetch the version of `name` that `selector` picks.
    pub async fn fetch_with(&mut self, name: &str, selector: Selector) -> Result<Asset, Error> {
        self.fetch_with_options(name, selector, &MapOptions::new())
            .await
    }

    /// Fetch, verify, and bring the asset into memory as `options` say.
    pub async fn fetch_with_options(
        &mut self,
        name: &str,
        selector: Selector,
        options: &MapOptions,
    ) -> Result<Asset, Error> {
        let (info, fd) = self.fetch_descriptor(name, selector).await?;
        let sealed = verify_with(fd, Some(info.size), options)?;
        Ok(Asset::new(info, sealed))
    }

    /// Fetch, verify, and map a private copy-on-write view. See
    /// [`Client::fetch_private`](crate::Client::fetch_private).
    pub async fn fetch_private(
        &mut self,
        name: &str,
        selector: Selector,
        options: &MapOptions,
    ) -> Result<PrivateCopy, Error> {
        let (info, fd) = self.fetch_descriptor(name, selector).await?;
        let (map, fd) = verify_private(fd, Some(info.size), options)?;
        Ok(PrivateCopy::new(info, map, fd))
    }

    /// Fetch several assets; see
    /// [`Client::fetch_many`](crate::Client::fetch_many).
    pub async fn fetch_many(
        &mut self,
        items: &[(&str, Selector)],
        options: &MapOptions,
    ) -> Result<Vec<Result<Asset, Error>>, Error> {
        let per_request = self
            .session
            .map(|session| session.max_fetch_many as usize)
            .filter(|max| *max > 1);
        let Some(per_request) = per_request else {
            let mut results = Vec::with_capacity(items.len());
            for (name, selector) in items {
                results.push(self.fetch_with_options(name, *selector, options).await);
            }
            return Ok(results);
        };
        let mut results = Vec::with_capacity(items.len());
        for chunk in items.chunks(per_request) {
            let batch = protocol::fetch_many(protocol::fetch_items(chunk));
            for item in self.socket.run(batch, NoBody::None).await? {
                results.push(item.and_then(|(info, fd)| {
                    let sealed = verify_with(fd, Some(info.size), options)?;
                    Ok(Asset::new(info, sealed))
                }));
            }
        }
        Ok(results)
    }

    async fn fetch_descriptor(
        &mut self,
        name: &str,
        selector: Selector,
    ) -> Result<(AssetInfo, OwnedFd), Error> {
        self.socket
            .run(protocol::fetch(name, selector), NoBody::None)
            .await
    }

    /// The metadata of the version of `name` that `selector` picks.
    pub async fn stat(&mut self, name: &str, selector: Selector) -> Result<AssetInfo, Error> {
        self.socket
            .run(protocol::stat(name, selector), NoBody::None)
            .await
    }

    /// The latest version of every name under `prefix`, in name order.
    pub async fn list(&mut self, prefix: &str) -> Result<Vec<AssetInfo>, Error> {
        self.socket.run(protocol::list(prefix), NoBody::None).await
    }

    /// Remove one version of `name`, or all of them; returns how many went.
    pub async fn remove(&mut self, name: &str, version: Option<u64>) -> Result<u64, Error> {
        self.socket
            .run(protocol::remove(name, version), NoBody::None)
            .await
    }

    /// The daemon's counters.
    pub async fn status(&mut self) -> Result<ServerStatus, Error> {
        self.socket.run(protocol::status(), NoBody::None).await
    }

    /// Subscribe to the changes of the names under `prefix`, on a new
    /// connection opened the way this one was.
    pub async fn watch(&self, prefix: &str) -> Result<AsyncWatcher, Error> {
        AsyncClient::connect(&self.options)
            .await?
            .into_watcher(prefix)
            .await
    }

    /// Turn this connection into the resolver of `prefixes`; see
    /// [`Client::into_resolver`](crate::Client::into_resolver).
    pub async fn into_resolver(mut self, prefixes: &[&str]) -> Result<AsyncResolver, Error> {
        self.socket
            .run(protocol::resolve(prefixes), NoBody::None)
            .await?;
        Ok(AsyncResolver {
            socket: self.socket,
            prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        })
    }

    /// Turn this connection into a watch of the names under `prefix`.
    pub async fn into_watcher(mut self, prefix: &str) -> Result<AsyncWatcher, Error> {
        self.socket
            .run(protocol::watch(prefix), NoBody::None)
            .await?;
        Ok(AsyncWatcher {
            socket: self.socket,
            prefix: prefix.to_owned(),
        })
    }
}

impl fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncClient")
            .field("socket_path", &self.socket_path)
            .field("server", &self.server)
            .field("lost", &self.socket.session.is_lost())
            .finish()
    }
}

/// A subscription to the changes under a prefix, for async code. See
/// [`Watcher`](crate::Watcher).
pub struct AsyncWatcher {
    socket: AsyncSocket,
    prefix: String,
}

impl AsyncWatcher {
    /// The prefix this watcher follows.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The next event. Cancel-safe: dropping the future (say, in a
    /// `tokio::time::timeout` or `select!`) loses nothing, and the next
    /// call resumes a partly received event.
    ///
    /// An error ends the watch, as for
    /// [`Watcher::next_event`](crate::Watcher::next_event).
    pub async fn next_event(&mut self) -> Result<Event, Error> {
        if self.socket.session.is_lost() {
            return Err(Error::ConnectionLost);
        }
        // No `begin`/`end` here: `receive` keeps its progress in the frame
        // reader, so being dropped between two steps leaves nothing behind.
        let result = match self.socket.receive().await {
            Ok(answer) => protocol::event(answer.message),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.socket.abandon();
        }
        result
    }
}

impl AsFd for AsyncWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.stream.as_fd()
    }
}

impl fmt::Debug for AsyncWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncWatcher")
            .field("prefix", &self.prefix)
            .field("closed", &self.socket.session.is_lost())
            .finish()
    }
}

/// A resolving connection, for async code. See
/// [`Resolver`](crate::Resolver).
pub struct AsyncResolver {
    socket: AsyncSocket,
    prefixes: Vec<String>,
}

impl AsyncResolver {
    /// The prefixes this connection resolves.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// The next name a client waits for. Cancel-safe, like
    /// [`AsyncWatcher::next_event`]; an error ends the registration.
    pub async fn next_wanted(&mut self) -> Result<crate::Wanted, Error> {
        if self.socket.session.is_lost() {
            return Err(Error::ConnectionLost);
        }
        let result = match self.socket.receive().await {
            Ok(answer) => protocol::wanted(answer.message)
                .map(|(name, selector)| crate::Wanted { name, selector }),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.socket.abandon();
        }
        result
    }

    /// Tell the daemon that `wanted` cannot be supplied; see
    /// [`Resolver::unresolved`](crate::Resolver::unresolved).
    pub async fn unresolved(
        &mut self,
        wanted: &crate::Wanted,
        code: ErrorCode,
        message: &str,
    ) -> Result<(), Error> {
        let tell = protocol::unresolved(&wanted.name, wanted.selector, code, message);
        self.socket.run(tell, NoBody::None).await
    }
}

impl fmt::Debug for AsyncResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResolver")
            .field("prefixes", &self.prefixes)
            .field("closed", &self.socket.session.is_lost())
            .finish()
    }
}

impl AsyncSocket {
    /// Run one operation to its end: the async twin of the blocking
    /// driver's loop (see `protocol::Operation`).
    async fn run<O: Operation, R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        mut operation: O,
        mut body: Option<Reader<R>>,
    ) -> Result<O::Output, Error> {
        if let Err(e) = self.session.begin() {
            self.shut_down();
            return Err(e);
        }
        let mut step = operation.start();
        let result = loop {
            step = match step {
                Step::Done(result) => break result,
                Step::Next(Action::Send(request)) => {
                    self.session.count(&request);
                    let fd = (request.fd_count() > 0)
                        .then(|| operation.descriptor())
                        .flatten();
                    let sent = self.send(&request, fd).await;
                    operation.sent(sent)
                }
                Step::Next(Action::SendBody) => {
                    let reader = body.as_mut().expect("a streamed publish has a body");
                    let sent = self.send_body(reader).await;
                    operation.sent(sent)
                }
                Step::Next(Action::Receive) => {
                    let received = self.receive().await;
                    operation.received(received)
                }
            };
        };
        if self.session.end(&result) {
            self.shut_down();
        }
        result
    }

    /// Send every byte of a streamed publish's body.
    async fn send_body<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        body: &mut Reader<R>,
    ) -> Result<(), Error> {
        use tokio::io::AsyncReadExt;
        let mut upload = protocol::Upload::new(body.size);
        while let Some(room) = upload.room() {
            let read = loop {
                match body.source.read(room).await {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    read => break read,
                }
            };
            let chunk = upload.filled(read)?;
            tokio_io::write_raw(&self.stream, chunk)
                .await
                .map_err(Error::Io)?;
        }
        Ok(())
    }

    fn abandon(&mut self) {
        self.session.abandon();
        self.shut_down();
    }

    fn shut_down(&self) {
        let _ = rustix::net::shutdown(&self.stream, rustix::net::Shutdown::Both);
    }

    async fn send(&mut self, request: &Request, fd: Option<BorrowedFd<'_>>) -> Result<(), Error> {
        let frame = codec::encode_request(request).map_err(Error::Protocol)?;
        tokio_io::write_frame(&self.stream, frame, fd.as_slice())
            .await
            .map_err(Error::Io)
    }

    /// The next response; cancel-safe (progress stays in the buffer).
    async fn receive(&mut self) -> Result<Decoded<Response>, Error> {
        match tokio_io::next_frame(&self.stream, &mut self.buffer).await {
            Ok(frame) => protocol::decode(frame),
            Err(FrameError::Io(e)) => Err(Error::Io(e)),
            Err(e) => Err(Error::Protocol(e)),
        }
    }
}
