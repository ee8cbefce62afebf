//! The [`Client`]: one request at a time, in order, over one connection.
//!
//! Each method builds one operation of `protocol` and hands it to the
//! blocking `connection`, which moves its frames; verification and mapping
//! of what a fetch returns are `verify`'s.

use crate::asset::Asset;
use crate::connect::{ConnectOptions, Opened};
use crate::connection::{Body, Bytes, Connection, NoBody, Reader};
use crate::error::Error;
use crate::options::MapOptions;
use crate::private::PrivateCopy;
use crate::protocol;
use crate::verify::{check_sealed, file_type_name, verify_private, verify_with};
use crate::watch::Watcher;
use memseal_proto::paths::SocketChoice;
use memseal_proto::{AssetInfo, Limits, Selector, ServerStatus, SessionLimits};
use rustix::fs::{fstat, FileType};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// A connection to memseald.
///
/// Requests are answered in order, one at a time, so methods take
/// `&mut self`; open one client per thread that needs its own, or share
/// fetched [`Asset`]s, which are `Send` and `Sync`.
///
/// When a request fails with [`Error::Server`] or [`Error::Verify`], the
/// client stays usable. After any other error the connection may be in the
/// middle of a frame, so the client stops using it and every later call
/// returns [`Error::ConnectionLost`]: connect again.
#[derive(Debug)]
pub struct Client {
    connection: Connection,
    socket: SocketChoice,
    server: String,
    limits: Limits,
    /// None from a daemon that speaks only protocol version 1.
    session: Option<SessionLimits>,
    /// How this client connected, so [`Client::watch`] can open a second
    /// connection the same way.
    options: ConnectOptions,
}

impl ConnectOptions {
    /// Connect, check the daemon's user, and perform the handshake.
    pub fn connect(&self) -> Result<Client, Error> {
        let Opened {
            connection,
            socket,
            welcome,
        } = self.open()?;
        Ok(Client {
            connection,
            socket,
            server: welcome.server,
            limits: welcome.limits,
            session: welcome.session,
            options: self.clone(),
        })
    }
}

impl Client {
    /// Give the client up for its connection (a resolver's).
    pub(crate) fn into_connection(self) -> Connection {
        self.connection
    }

    /// True once an error made this client give up its connection.
    pub(crate) fn is_lost(&self) -> bool {
        self.connection.is_lost()
    }

    /// How this client connected.
    pub(crate) fn connect_options(&self) -> &ConnectOptions {
        &self.options
    }

    /// Connect with the default [`ConnectOptions`].
    pub fn connect() -> Result<Client, Error> {
        ConnectOptions::new().connect()
    }

    /// Connect to the socket at `path`, with the other options at their
    /// defaults.
    pub fn connect_to(path: impl AsRef<Path>) -> Result<Client, Error> {
        ConnectOptions::new().socket(path.as_ref()).connect()
    }

    /// The socket this client is connected to.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// The socket this client is connected to, and why that one (named by
    /// the caller, the user's own daemon, or the system service).
    pub fn socket_choice(&self) -> &SocketChoice {
        &self.socket
    }

    /// The daemon's name and version, as it announced them.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The limits the daemon announced: largest asset, budget, name length.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What this connection may do at most (descriptors left unread, items
    /// per [`Client::fetch_many`]), as the daemon announced them; None from
    /// a daemon that speaks only protocol version 1.
    pub fn session_limits(&self) -> Option<&SessionLimits> {
        self.session.as_ref()
    }

    /// How many requests this client has sent to the daemon (each one a
    /// round trip), the handshake not counted. A listing counts once per
    /// page.
    pub fn requests_sent(&self) -> u64 {
        self.connection.requests()
    }

    /// Run one operation on this client's connection.
    fn run<O: protocol::Operation>(
        &mut self,
        operation: O,
        body: &mut dyn Body,
    ) -> Result<O::Output, Error> {
        self.connection.run(operation, body)
    }

    /// Publish `bytes` as the next version of `name`, streaming them over
    /// the socket.
    pub fn publish_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<AssetInfo, Error> {
        let publish = protocol::publish_stream(name, bytes.len() as u64);
        self.run(publish, &mut Bytes(bytes))
    }

    /// Publish exactly `size` bytes read from `reader` as the next version of
    /// `name`, streaming them over the socket.
    ///
    /// Reads no more than `size` bytes. If the reader fails or ends early,
    /// the publish is abandoned (the daemon discards the partial upload) and
    /// so is the connection, since the daemon still expects the rest.
    pub fn publish_reader(
        &mut self,
        name: &str,
        reader: impl Read,
        size: u64,
    ) -> Result<AssetInfo, Error> {
        let publish = protocol::publish_stream(name, size);
        self.run(publish, &mut Reader(reader, size))
    }

    /// Publish the whole of a regular file as the next version of `name`.
    ///
    /// The descriptor goes to the daemon, which copies the bytes (or adopts
    /// the file without a copy if it is a memfd sealed against writing,
    /// growing and shrinking). The file must not change while the daemon
    /// copies it.
    pub fn publish_file(&mut self, name: &str, file: &File) -> Result<AssetInfo, Error> {
        let size = regular_file_size(file)?;
        let publish = protocol::publish_descriptor(name, size, file.as_fd());
        self.run(publish, &mut NoBody)
    }

    /// Publish a memfd that the caller already sealed against writing,
    /// growing and shrinking. The daemon adopts it without copying a byte.
    ///
    /// The seals are checked here first, with the same rules as
    /// [`verify`](crate::verify), so a memfd the daemon would refuse is
    /// reported as [`Error::Verify`] without a round trip.
    pub fn publish_sealed(
        &mut self,
        name: &str,
        memfd: BorrowedFd<'_>,
    ) -> Result<AssetInfo, Error> {
        let size = check_sealed(memfd)?;
        self.run(protocol::publish_descriptor(name, size, memfd), &mut NoBody)
    }

    /// Fetch the latest version of `name`.
    pub fn fetch(&mut self, name: &str) -> Result<Asset, Error> {
        self.fetch_with(name, Selector::Latest)
    }

    /// Fetch the version of `name` that `selector` picks, verify its seals
    /// and map it read-only.
    pub fn fetch_with(&mut self, name: &str, selector: Selector) -> Result<Asset, Error> {
        self.fetch_with_options(name, selector, &MapOptions::new())
    }

    /// Fetch the version of `name` that `selector` picks, verify its seals,
    /// and bring it into memory as `options` say: populated up front, with
    /// access advice, aligned for huge pages, or copied if small.
    pub fn fetch_with_options(
        &mut self,
        name: &str,
        selector: Selector,
        options: &MapOptions,
    ) -> Result<Asset, Error> {
        let (info, fd) = self.fetch_descriptor(name, selector)?;
        let sealed = verify_with(fd, Some(info.size), options)?;
        Ok(Asset::new(info, sealed))
    }

    /// Fetch the version of `name` that `selector` picks, verify its seals,
    /// and map it as a private copy-on-write view that this process may
    /// write to without the asset, or any other reader, ever seeing it.
    /// `options` apply as for [`Client::fetch_with_options`], except
    /// [`MapOptions::copy_below`].
    pub fn fetch_private(
        &mut self,
        name: &str,
        selector: Selector,
        options: &MapOptions,
    ) -> Result<PrivateCopy, Error> {
        let (info, fd) = self.fetch_descriptor(name, selector)?;
        let (map, fd) = verify_private(fd, Some(info.size), options)?;
        Ok(PrivateCopy::new(info, map, fd))
    }

    /// Fetch several assets, each picked by its selector: in one round trip
    /// per [`SessionLimits::max_fetch_many`] items (one per item from a
    /// daemon that speaks only protocol version 1). Each result is what
    /// [`Client::fetch_with_options`] would give for that item; an item
    /// that fails (not found, an invalid name, a descriptor that fails
    /// verification) fails alone. The outer error is the connection's.
    pub fn fetch_many(
        &mut self,
        items: &[(&str, Selector)],
        options: &MapOptions,
    ) -> Result<Vec<Result<Asset, Error>>, Error> {
        let Some(per_request) = self.batch_size() else {
            return Ok(items
                .iter()
                .map(|(name, selector)| self.fetch_with_options(name, *selector, options))
                .collect());
        };
        let mut results = Vec::with_capacity(items.len());
        for chunk in items.chunks(per_request) {
            let batch = protocol::fetch_many(protocol::fetch_items(chunk));
            for item in self.run(batch, &mut NoBody)? {
                results.push(item.and_then(|(info, fd)| {
                    let sealed = verify_with(fd, Some(info.size), options)?;
                    Ok(Asset::new(info, sealed))
                }));
            }
        }
        Ok(results)
    }

    /// Items per batch request, if the daemon takes batches.
    fn batch_size(&self) -> Option<usize> {
        self.session
            .map(|session| session.max_fetch_many as usize)
            .filter(|max| *max > 1)
    }

    /// One fetch round trip: the metadata and the descriptor, not yet
    /// verified.
    fn fetch_descriptor(
        &mut self,
        name: &str,
        selector: Selector,
    ) -> Result<(AssetInfo, OwnedFd), Error> {
        self.run(protocol::fetch(name, selector), &mut NoBody)
    }

    /// The metadata of the version of `name` that `selector` picks.
    pub fn stat(&mut self, name: &str, selector: Selector) -> Result<AssetInfo, Error> {
        self.run(protocol::stat(name, selector), &mut NoBody)
    }

    /// Subscribe to changes of the names that start with `prefix` (all
    /// names for an empty prefix), on a connection of its own opened the
    /// way this client's was. This client stays usable.
    pub fn watch(&self, prefix: &str) -> Result<Watcher, Error> {
        self.options.watch(prefix)
    }

    /// Turn this client's connection into a watch of the names that start
    /// with `prefix`. [`Client::watch`] does the same on a new connection
    /// and leaves this one free for requests.
    pub fn into_watcher(self, prefix: &str) -> Result<Watcher, Error> {
        Watcher::on(self.connection, prefix)
    }

    /// The latest version of every name that starts with `prefix` (all names
    /// for an empty prefix), in name order. Follows the daemon's pages to
    /// the end.
    pub fn list(&mut self, prefix: &str) -> Result<Vec<AssetInfo>, Error> {
        self.run(protocol::list(prefix), &mut NoBody)
    }

    /// Remove one version of `name`, or every version when `version` is
    /// `None`. Returns how many versions were removed. Clients that already
    /// fetched a removed version keep their bytes.
    pub fn remove(&mut self, name: &str, version: Option<u64>) -> Result<u64, Error> {
        self.run(protocol::remove(name, version), &mut NoBody)
    }

    /// The daemon's counters.
    pub fn status(&mut self) -> Result<ServerStatus, Error> {
        self.run(protocol::status(), &mut NoBody)
    }
}

/// The size of a file that is about to be published by descriptor, which
/// must be a regular file.
pub(crate) fn regular_file_size(file: &File) -> Result<u64, Error> {
    let stat = fstat(file).map_err(|e| Error::Io(e.into()))?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if file_type != FileType::RegularFile {
        return Err(Error::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot publish a {} by descriptor, only a regular file; \
                 stream it with publish_reader instead",
                file_type_name(file_type)
            ),
        )));
    }
    // A regular file's size is never negative.
    Ok(u64::try_from(stat.st_size).unwrap_or(0))
}
