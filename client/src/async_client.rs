//! The async client, for tokio programs (feature `tokio`).
//!
//! [`AsyncClient`] makes the same requests as the blocking
//! [`Client`](crate::Client) and accepts the same answers: both build and
//! check them in `protocol`, and both verify descriptors with
//! [`verify_with`](crate::verify_with). Only the movement of bytes differs.
//! Frames go out through the same `FrameWriter` and come in through the
//! same `FrameReader` (`recvmsg` with `MSG_CMSG_CLOEXEC`), each step run
//! inside tokio's `try_io`, so a step that would block clears the socket's
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
use crate::error::Error;
use crate::options::MapOptions;
use crate::private::PrivateCopy;
use crate::protocol;
use crate::verify::{check_sealed, verify_private, verify_with};
use memseal_proto::codec::{self, Decoded};
use memseal_proto::wire::{FrameReader, FrameWriter};
use memseal_proto::{
    AssetInfo, Event, FrameError, Limits, PublishSource, Request, Response, Selector, ServerStatus,
};
use rustix::net::{send, SendFlags};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use tokio::io::Interest;
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
    options: ConnectOptions,
    requests: u64,
}

/// The socket and the frame being read from it, with the bookkeeping that
/// tells whether the stream's position is still known.
struct AsyncSocket {
    stream: UnixStream,
    reader: FrameReader,
    /// Set when an exchange starts and cleared when it ends; still set at
    /// the start of the next one means the last was dropped half-way.
    in_flight: bool,
    /// Set once an error or a dropped exchange left the stream unusable.
    lost: bool,
}

impl AsyncClient {
    /// Connect with `options`: check the daemon's user, then greet it.
    pub async fn connect(options: &ConnectOptions) -> Result<AsyncClient, Error> {
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
            reader: FrameReader::new(),
            in_flight: false,
            lost: false,
        };
        let hello = protocol::hello(options.greeting_name());
        socket.begin()?;
        let answer = socket.call_plain(&hello).await;
        let (server, limits) = socket.end(protocol::welcome(answer))?;
        Ok(AsyncClient {
            socket,
            socket_path: path,
            server,
            limits,
            options: options.clone(),
            requests: 0,
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

    /// How many requests this client has sent, the handshake not counted.
    pub fn requests_sent(&self) -> u64 {
        self.requests
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
        mut reader: impl tokio::io::AsyncRead + Unpin,
        size: u64,
    ) -> Result<AssetInfo, Error> {
        use tokio::io::AsyncReadExt;
        let request = Request::Publish {
            name: name.to_owned(),
            size,
            source: PublishSource::Stream,
        };
        self.requests += 1;
        let socket = &mut self.socket;
        socket.begin()?;
        let result = async {
            protocol::proceed(socket.call_plain(&request).await?)?;
            let mut buffer = protocol::stream_buffer(size);
            let mut left = size;
            while left > 0 {
                let want = buffer
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                let got = match reader.read(&mut buffer[..want]).await {
                    Ok(0) => return Err(protocol::upload_ended(size - left, size)),
                    Ok(got) => got,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(protocol::upload_unreadable(e)),
                };
                if let Err(e) = socket.send_raw(&buffer[..got]).await {
                    return Err(socket.reason_for_hangup(e).await);
                }
                left -= got as u64;
            }
            protocol::published(socket.receive().await?.message)
        }
        .await;
        socket.end(result)
    }

    /// Publish the whole of a regular file; the daemon copies it
    /// kernel-side. See [`Client::publish_file`](crate::Client::publish_file).
    pub async fn publish_file(&mut self, name: &str, file: &File) -> Result<AssetInfo, Error> {
        let size = regular_file_size(file)?;
        self.publish_descriptor(name, size, file.as_fd()).await
    }

    /// Publish a memfd the caller sealed; the daemon adopts it without a
    /// copy. See [`Client::publish_sealed`](crate::Client::publish_sealed).
    pub async fn publish_sealed(
        &mut self,
        name: &str,
        memfd: BorrowedFd<'_>,
    ) -> Result<AssetInfo, Error> {
        let size = check_sealed(memfd)?;
        self.publish_descriptor(name, size, memfd).await
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

    /// The metadata of the version of `name` that `selector` picks.
    pub async fn stat(&mut self, name: &str, selector: Selector) -> Result<AssetInfo, Error> {
        let request = protocol::stat(name, selector);
        self.requests += 1;
        self.socket.begin()?;
        let answer = self.socket.call_plain(&request).await;
        self.socket.end(answer.and_then(protocol::info))
    }

    /// The latest version of every name under `prefix`, in name order.
    pub async fn list(&mut self, prefix: &str) -> Result<Vec<AssetInfo>, Error> {
        let mut assets = Vec::new();
        let mut start_after: Option<String> = None;
        loop {
            let request = protocol::list(prefix, start_after.clone());
            self.requests += 1;
            self.socket.begin()?;
            let answer = self.socket.call_plain(&request).await;
            let (page, next) = self
                .socket
                .end(answer.and_then(|answer| protocol::listing(answer, start_after.as_ref())))?;
            assets.extend(page);
            match next {
                None => return Ok(assets),
                Some(cursor) => start_after = Some(cursor),
            }
        }
    }

    /// Remove one version of `name`, or all of them; returns how many went.
    pub async fn remove(&mut self, name: &str, version: Option<u64>) -> Result<u64, Error> {
        let request = protocol::remove(name, version);
        self.requests += 1;
        self.socket.begin()?;
        let answer = self.socket.call_plain(&request).await;
        self.socket.end(answer.and_then(protocol::removed))
    }

    /// The daemon's counters.
    pub async fn status(&mut self) -> Result<ServerStatus, Error> {
        self.requests += 1;
        self.socket.begin()?;
        let answer = self.socket.call_plain(&Request::Status).await;
        self.socket.end(answer.and_then(protocol::status))
    }

    /// Subscribe to the changes of the names under `prefix`, on a new
    /// connection opened the way this one was.
    pub async fn watch(&self, prefix: &str) -> Result<AsyncWatcher, Error> {
        AsyncClient::connect(&self.options)
            .await?
            .into_watcher(prefix)
            .await
    }

    /// Turn this connection into a watch of the names under `prefix`.
    pub async fn into_watcher(mut self, prefix: &str) -> Result<AsyncWatcher, Error> {
        let request = protocol::watch(prefix);
        self.socket.begin()?;
        let answer = self.socket.call_plain(&request).await;
        self.socket.end(answer.and_then(protocol::watching))?;
        Ok(AsyncWatcher {
            socket: self.socket,
            prefix: prefix.to_owned(),
        })
    }

    async fn fetch_descriptor(
        &mut self,
        name: &str,
        selector: Selector,
    ) -> Result<(AssetInfo, OwnedFd), Error> {
        let request = protocol::fetch(name, selector);
        self.requests += 1;
        self.socket.begin()?;
        let answer = self.socket.call(&request, None).await;
        self.socket.end(answer.and_then(protocol::asset))
    }

    async fn publish_descriptor(
        &mut self,
        name: &str,
        size: u64,
        fd: BorrowedFd<'_>,
    ) -> Result<AssetInfo, Error> {
        let request = Request::Publish {
            name: name.to_owned(),
            size,
            source: PublishSource::Descriptor,
        };
        self.requests += 1;
        let socket = &mut self.socket;
        socket.begin()?;
        let result = async {
            if let Err(e) = socket.send(&request, Some(fd)).await {
                return Err(socket.reason_for_hangup(e).await);
            }
            protocol::published(socket.receive().await?.message)
        }
        .await;
        socket.end(result)
    }
}

impl fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncClient")
            .field("socket_path", &self.socket_path)
            .field("server", &self.server)
            .field("lost", &self.socket.lost)
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
        if self.socket.lost {
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
            .field("closed", &self.socket.lost)
            .finish()
    }
}

impl AsyncSocket {
    /// Start an exchange, refusing if the stream's position is unknown.
    fn begin(&mut self) -> Result<(), Error> {
        if self.in_flight {
            // The previous exchange's future was dropped before it ended.
            self.abandon();
        }
        if self.lost {
            return Err(Error::ConnectionLost);
        }
        self.in_flight = true;
        Ok(())
    }

    /// End an exchange; an error that leaves the stream unusable ends the
    /// connection, by the same rule as the blocking client.
    fn end<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        self.in_flight = false;
        if let Err(e) = &result {
            if e.breaks_connection() {
                self.abandon();
            }
        }
        result
    }

    fn abandon(&mut self) {
        self.lost = true;
        self.in_flight = false;
        let _ = rustix::net::shutdown(&self.stream, rustix::net::Shutdown::Both);
    }

    async fn send(&mut self, request: &Request, fd: Option<BorrowedFd<'_>>) -> Result<(), Error> {
        let frame = codec::encode_request(request).map_err(Error::Protocol)?;
        let mut writer = FrameWriter::new(frame, fd);
        while !writer.is_done() {
            self.stream.writable().await.map_err(Error::Io)?;
            // The first step sends the descriptor through sendfd, which
            // runs its own `try_io`; nesting it in this one is harmless.
            match self
                .stream
                .try_io(Interest::WRITABLE, || writer.write_step(&self.stream))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        Ok(())
    }

    async fn send_raw(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        while !bytes.is_empty() {
            self.stream.writable().await.map_err(Error::Io)?;
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                send(&self.stream, bytes, SendFlags::NOSIGNAL).map_err(io::Error::from)
            });
            match sent {
                Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => bytes = &bytes[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        Ok(())
    }

    async fn receive(&mut self) -> Result<Decoded<Response>, Error> {
        loop {
            let fd = self.stream.as_fd();
            // A frame that arrived with an earlier read waits in the
            // reader's buffer, where no readiness will announce it.
            if self.reader.has_frame() {
                match self.reader.read_step(fd) {
                    Ok(Some(frame)) => return protocol::decode(frame),
                    Ok(None) => {}
                    Err(e) => return Err(Error::Protocol(e)),
                }
                continue;
            }
            self.stream.readable().await.map_err(Error::Io)?;
            // Only an I/O error travels as the `try_io` error, so that
            // `WouldBlock` clears tokio's readiness; framing errors ride in
            // the success value.
            let step = self
                .stream
                .try_io(Interest::READABLE, || match self.reader.read_step(fd) {
                    Err(FrameError::Io(e)) => Err(e),
                    other => Ok(other),
                });
            match step {
                Ok(Ok(Some(frame))) => return protocol::decode(frame),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(Error::Protocol(e)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    async fn call(
        &mut self,
        request: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Decoded<Response>, Error> {
        self.send(request, fd).await?;
        self.receive().await
    }

    async fn call_plain(&mut self, request: &Request) -> Result<Response, Error> {
        Ok(self.call(request, None).await?.message)
    }

    /// See the blocking client: a daemon that hung up during a publish has
    /// usually said why first.
    async fn reason_for_hangup(&mut self, error: Error) -> Error {
        if !protocol::is_hangup(&error) {
            return error;
        }
        match self.receive().await {
            Err(reason @ Error::Server { .. }) => reason,
            _ => error,
        }
    }
}
