//! Opening a connection: reach the socket, check who is behind it, greet.

use crate::client::Client;
use crate::connection::Connection;
use crate::error::Error;
use crate::protocol;
use crate::watch::Watcher;
use memseal_proto::paths::default_socket_path;
use rustix::net::sockopt::socket_peercred;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// How long one read or write on the socket may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which user the daemon must run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerPolicy {
    /// Root (the system service) or the caller's own effective uid (a
    /// daemon the user started): anyone else could be an impostor serving
    /// bytes of their choosing under trusted names.
    RootOrSelf,
    /// Exactly this uid, for a system service running under its own user.
    Exactly(u32),
}

impl PeerPolicy {
    fn allows(self, uid: u32) -> bool {
        match self {
            PeerPolicy::RootOrSelf => uid == 0 || uid == rustix::process::geteuid().as_raw(),
            PeerPolicy::Exactly(expected) => uid == expected,
        }
    }

    fn describe(self) -> String {
        match self {
            PeerPolicy::RootOrSelf => {
                let me = rustix::process::geteuid().as_raw();
                if me == 0 {
                    "root".to_owned()
                } else {
                    format!("root or uid {me}")
                }
            }
            PeerPolicy::Exactly(uid) => format!("uid {uid}"),
        }
    }
}

/// How to connect to memseald: a builder that ends in [`ConnectOptions::connect`].
///
/// ```no_run
/// use std::time::Duration;
/// let client = memseal::ConnectOptions::new()
///     .socket("/run/memseal/memseald.sock")
///     .client_name("thumbnailer")
///     .timeout(Some(Duration::from_secs(5)))
///     .connect()?;
/// # Ok::<(), memseal::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    socket: Option<PathBuf>,
    client_name: Option<String>,
    peer: PeerPolicy,
    timeout: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectOptions {
    /// The defaults: the socket from [`default_socket_path`] (which honours
    /// `MEMSEAL_SOCKET`), a daemon running as root or as the caller, and a
    /// timeout of [`DEFAULT_TIMEOUT`].
    pub fn new() -> Self {
        ConnectOptions {
            socket: None,
            client_name: None,
            peer: PeerPolicy::RootOrSelf,
            timeout: Some(DEFAULT_TIMEOUT),
        }
    }

    /// Connect to the socket at `path` instead of the default.
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// The name the daemon shows for this client in its logs. Defaults to
    /// the program's name.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// Require the daemon to run as exactly `uid`, instead of root or the
    /// caller's own user.
    pub fn expect_server_uid(mut self, uid: u32) -> Self {
        self.peer = PeerPolicy::Exactly(uid);
        self
    }

    /// The longest one read from or write to the socket may block; `None`
    /// waits forever.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connect, check the daemon's user, and perform the handshake.
    pub fn connect(&self) -> Result<Client, Error> {
        let path = self.socket_path();
        let stream = UnixStream::connect(&path).map_err(|source| Error::Connect {
            path: path.clone(),
            source,
        })?;
        let mut connection = Connection::new(stream, self.timeout).map_err(Error::Io)?;

        // Before a single byte goes out: the name we are about to fetch is
        // only as trustworthy as whoever answers.
        self.check_peer(connection.socket())?;

        let hello = protocol::hello(self.greeting_name());
        let (server, limits) =
            connection.exchange(|conn| protocol::welcome(conn.call_plain(&hello)))?;
        Ok(Client::new(connection, path, server, limits, self.clone()))
    }

    /// Connect and turn the connection into a watch of the names that start
    /// with `prefix`; see [`Client::watch`].
    pub fn watch(&self, prefix: &str) -> Result<Watcher, Error> {
        self.connect()?.into_watcher(prefix)
    }

    /// The socket to connect to.
    pub(crate) fn socket_path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket_path)
    }

    /// The client name to greet the daemon with.
    pub(crate) fn greeting_name(&self) -> String {
        self.client_name.clone().unwrap_or_else(program_name)
    }

    /// Refuse a daemon that runs as a user this policy does not trust.
    pub(crate) fn check_peer(&self, socket: BorrowedFd<'_>) -> Result<(), Error> {
        let peer = socket_peercred(socket).map_err(|e| Error::Io(e.into()))?;
        let uid = peer.uid.as_raw();
        if !self.peer.allows(uid) {
            return Err(Error::PeerRejected {
                uid,
                expected: self.peer.describe(),
            });
        }
        Ok(())
    }
}

/// The running program's file name, the default client name.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "memseal".to_owned())
}
