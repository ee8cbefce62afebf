//! The [`Client`]: one request at a time, in order, over one connection.

use crate::asset::Asset;
use crate::connect::ConnectOptions;
use crate::connection::Connection;
use crate::error::Error;
use crate::verify::{check_sealed, file_type_name, verify};
use memseal_proto::{
    AssetInfo, FrameError, Limits, PublishSource, Request, Response, Selector, ServerStatus,
};
use rustix::fs::{fstat, FileType};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// How many bytes of a reader go out per `send` in a streamed publish.
const STREAM_CHUNK: usize = 256 * 1024;

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
    socket_path: PathBuf,
    server: String,
    limits: Limits,
}

impl Client {
    pub(crate) fn new(
        connection: Connection,
        socket_path: PathBuf,
        server: String,
        limits: Limits,
    ) -> Client {
        Client {
            connection,
            socket_path,
            server,
            limits,
        }
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
        &self.socket_path
    }

    /// The daemon's name and version, as it announced them.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The limits the daemon announced: largest asset, budget, name length.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Publish `bytes` as the next version of `name`, streaming them over
    /// the socket.
    pub fn publish_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<AssetInfo, Error> {
        self.publish_stream(name, bytes.len() as u64, |connection| {
            connection.send_raw(bytes)
        })
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
        mut reader: impl Read,
        size: u64,
    ) -> Result<AssetInfo, Error> {
        self.publish_stream(name, size, |connection| {
            let mut buffer =
                vec![0u8; STREAM_CHUNK.min(usize::try_from(size).unwrap_or(usize::MAX))];
            let mut left = size;
            while left > 0 {
                let want = buffer
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                let got = match reader.read(&mut buffer[..want]) {
                    Ok(0) => {
                        return Err(Error::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "the data to publish ended after {} of {size} bytes",
                                size - left
                            ),
                        )))
                    }
                    Ok(got) => got,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(Error::Io(io::Error::new(
                            e.kind(),
                            format!("cannot read the data to publish: {e}"),
                        )))
                    }
                };
                connection.send_raw(&buffer[..got])?;
                left -= got as u64;
            }
            Ok(())
        })
    }

    /// Publish the whole of a regular file as the next version of `name`.
    ///
    /// The descriptor goes to the daemon, which copies the bytes kernel-side
    /// (or adopts the file without a copy if it is a memfd sealed against
    /// writing, growing and shrinking). The file must not change while the
    /// daemon copies it.
    pub fn publish_file(&mut self, name: &str, file: &File) -> Result<AssetInfo, Error> {
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
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        self.publish_descriptor(name, size, file.as_fd())
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
        self.publish_descriptor(name, size, memfd)
    }

    /// Fetch the latest version of `name`.
    pub fn fetch(&mut self, name: &str) -> Result<Asset, Error> {
        self.fetch_with(name, Selector::Latest)
    }

    /// Fetch the version of `name` that `selector` picks, verify its seals
    /// and map it read-only.
    pub fn fetch_with(&mut self, name: &str, selector: Selector) -> Result<Asset, Error> {
        let request = Request::Fetch {
            name: name.to_owned(),
            selector,
        };
        self.connection.exchange(|connection| {
            let decoded = connection.call(&request, None)?;
            match decoded.message {
                Response::Asset(info) => {
                    // The codec lets an `Asset` through only with exactly
                    // one descriptor; stay correct if that ever changed.
                    let fd = decoded
                        .fd
                        .ok_or(Error::Protocol(FrameError::DescriptorCount {
                            declared: 1,
                            received: 0,
                        }))?;
                    let sealed = verify(fd, Some(info.size))?;
                    Ok(Asset::new(info, sealed))
                }
                other => Err(unexpected("asset", &other)),
            }
        })
    }

    /// The metadata of the version of `name` that `selector` picks.
    pub fn stat(&mut self, name: &str, selector: Selector) -> Result<AssetInfo, Error> {
        let request = Request::Stat {
            name: name.to_owned(),
            selector,
        };
        self.connection
            .exchange(|connection| match connection.call_plain(&request)? {
                Response::Info(info) => Ok(info),
                other => Err(unexpected("info", &other)),
            })
    }

    /// The latest version of every name that starts with `prefix` (all names
    /// for an empty prefix), in name order. Follows the daemon's pages to
    /// the end.
    pub fn list(&mut self, prefix: &str) -> Result<Vec<AssetInfo>, Error> {
        let mut assets = Vec::new();
        let mut start_after: Option<String> = None;
        loop {
            let request = Request::List {
                prefix: prefix.to_owned(),
                start_after: start_after.clone(),
            };
            let (page, next) = self.connection.exchange(|connection| {
                match connection.call_plain(&request)? {
                    Response::Listing { assets, next } => Ok((assets, next)),
                    other => Err(unexpected("listing", &other)),
                }
            })?;
            assets.extend(page);
            match next {
                None => return Ok(assets),
                // Names come in order, so each cursor must pass the last;
                // a daemon that repeats one would keep this loop going forever.
                Some(cursor) if start_after.as_ref().is_some_and(|last| &cursor <= last) => {
                    self.connection.abandon();
                    return Err(Error::UnexpectedResponse {
                        expected: "a listing page that moves forward",
                        got: "a listing page that repeats an earlier one",
                    });
                }
                Some(cursor) => start_after = Some(cursor),
            }
        }
    }

    /// Remove one version of `name`, or every version when `version` is
    /// `None`. Returns how many versions were removed. Clients that already
    /// fetched a removed version keep their bytes.
    pub fn remove(&mut self, name: &str, version: Option<u64>) -> Result<u64, Error> {
        let request = Request::Remove {
            name: name.to_owned(),
            version,
        };
        self.connection
            .exchange(|connection| match connection.call_plain(&request)? {
                Response::Removed { versions } => Ok(versions),
                other => Err(unexpected("removed", &other)),
            })
    }

    /// The daemon's counters.
    pub fn status(&mut self) -> Result<ServerStatus, Error> {
        self.connection.exchange(
            |connection| match connection.call_plain(&Request::Status)? {
                Response::Status(status) => Ok(status),
                other => Err(unexpected("status", &other)),
            },
        )
    }

    /// A streamed publish: announce `size` bytes, wait for the daemon's
    /// go-ahead, let `body` send them, and read the outcome.
    fn publish_stream(
        &mut self,
        name: &str,
        size: u64,
        body: impl FnOnce(&mut Connection) -> Result<(), Error>,
    ) -> Result<AssetInfo, Error> {
        let request = Request::Publish {
            name: name.to_owned(),
            size,
            source: PublishSource::Stream,
        };
        self.connection.exchange(|connection| {
            match connection.call_plain(&request)? {
                Response::Continue => {}
                other => return Err(unexpected("continue", &other)),
            }
            if let Err(e) = body(connection) {
                return Err(reason_for_hangup(connection, e));
            }
            published(connection.receive()?.message)
        })
    }

    /// A publish whose bytes travel as a descriptor on the request.
    fn publish_descriptor(
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
        self.connection.exchange(|connection| {
            if let Err(e) = connection.send(&request, Some(fd)) {
                return Err(reason_for_hangup(connection, e));
            }
            published(connection.receive()?.message)
        })
    }
}

/// When the daemon hangs up in the middle of a publish, it has usually said
/// why first (over budget, too large, a bad name). That reason, if it is
/// still waiting in the socket, says more than "broken pipe".
fn reason_for_hangup(connection: &mut Connection, error: Error) -> Error {
    let hung_up = matches!(
        &error,
        Error::Io(e) if matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        )
    );
    if !hung_up {
        return error;
    }
    match connection.receive() {
        Err(reason @ Error::Server { .. }) => reason,
        _ => error,
    }
}

fn published(response: Response) -> Result<AssetInfo, Error> {
    match response {
        Response::Published(info) => Ok(info),
        other => Err(unexpected("published", &other)),
    }
}

fn unexpected(expected: &'static str, got: &Response) -> Error {
    Error::UnexpectedResponse {
        expected,
        got: got.kind(),
    }
}
