//! Opening a connection: reach the socket, check who is behind it, greet.
//!
//! [`ConnectOptions::open`] ends with a greeted [`Connection`] and what
//! the daemon said in its welcome; [`Client`](crate::Client) and
//! [`Watcher`](crate::Watcher) are built on it in their own modules
//! (`ConnectOptions::connect`, `ConnectOptions::watch`), so this module
//! depends on neither.

use crate::connection::{Connection, NoBody};
use crate::error::{Error, HandshakeError};
use crate::protocol;
use memseal_proto::paths::{client_socket, socket_dir_owner, SocketChoice};
use memseal_proto::{ErrorCode, PROTOCOL_VERSION, PROTOCOL_VERSION_2};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// How long one read or write on the socket may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which user the daemon must run as, given how its socket was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerPolicy {
    /// Root (a system service) or the caller's own effective uid (a
    /// daemon the user started), on a path the caller named: anyone else
    /// could be an impostor serving bytes of their choosing under trusted
    /// names.
    RootOrSelf,
    /// The caller's own uid only: on the per-user path, a daemon of any
    /// other user (root included) is not the one the user expects to
    /// find there.
    OnlySelf,
    /// The system service: root (systemd listens for it), or the owner of
    /// the socket's directory, which only root can have created.
    System { service_uid: Option<u32> },
    /// Exactly this uid, as the caller asked.
    Exactly(u32),
}

impl PeerPolicy {
    fn allows(self, uid: u32) -> bool {
        let me = rustix::process::geteuid().as_raw();
        match self {
            PeerPolicy::RootOrSelf => uid == 0 || uid == me,
            PeerPolicy::OnlySelf => uid == me,
            PeerPolicy::System { service_uid } => uid == 0 || Some(uid) == service_uid,
            PeerPolicy::Exactly(expected) => uid == expected,
        }
    }

    fn describe(self) -> String {
        let me = rustix::process::geteuid().as_raw();
        match self {
            PeerPolicy::RootOrSelf if me == 0 => "root".to_owned(),
            PeerPolicy::RootOrSelf => format!("root or uid {me}"),
            PeerPolicy::OnlySelf => format!(
                "uid {me}, the owner of this per-user socket (ask for another uid explicitly \
                 to trust it)"
            ),
            PeerPolicy::System {
                service_uid: Some(uid),
            } if uid != 0 => format!("root or uid {uid}, the owner of the socket's directory"),
            PeerPolicy::System { .. } => "root".to_owned(),
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
    /// The daemon's uid, when the caller named it.
    server_uid: Option<u32>,
    timeout: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectOptions {
    /// The defaults: the socket [`client_socket`] chooses (`MEMSEAL_SOCKET`,
    /// else the user's own daemon if one runs, else the system service),
    /// the daemon's user checked as that choice requires, and a timeout
    /// of [`DEFAULT_TIMEOUT`].
    pub fn new() -> Self {
        ConnectOptions {
            socket: None,
            client_name: None,
            server_uid: None,
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

    /// Require the daemon to run as exactly `uid`, instead of the users
    /// the socket's choice implies (root or the caller's own user on a
    /// named path; the caller on the per-user path; root or the socket
    /// directory's owner on the system path).
    pub fn expect_server_uid(mut self, uid: u32) -> Self {
        self.server_uid = Some(uid);
        self
    }

    /// The longest one read from or write to the socket may block; `None`
    /// waits forever.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connect, check the daemon's user, and perform the handshake, in
    /// protocol version 2; a daemon that speaks only version 1 refuses it,
    /// and is greeted again, on a new connection, in version 1.
    pub(crate) fn open(&self) -> Result<Opened, Error> {
        match self.open_with(PROTOCOL_VERSION_2) {
            Err(Error::Handshake(HandshakeError::Refused {
                code: ErrorCode::UnsupportedVersion,
                ..
            })) => self.open_with(PROTOCOL_VERSION),
            other => other,
        }
    }

    fn open_with(&self, version: u32) -> Result<Opened, Error> {
        let socket = self.choose_socket()?;
        let path = socket.path();
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let mut connection = Connection::new(stream, self.timeout).map_err(Error::Io)?;

        // Before a single byte goes out: the name we are about to fetch is
        // only as trustworthy as whoever answers.
        self.check_peer(connection.socket(), &socket)?;

        let welcome =
            connection.run(protocol::hello(self.greeting_name(), version), &mut NoBody)?;
        Ok(Opened {
            connection,
            socket,
            welcome,
        })
    }

    /// The socket to connect to, and why that one.
    pub(crate) fn choose_socket(&self) -> Result<SocketChoice, Error> {
        match &self.socket {
            Some(path) => Ok(SocketChoice::Explicit(path.clone())),
            None => client_socket().map_err(|reason| Error::UntrustedSocket { reason }),
        }
    }

    /// The client name to greet the daemon with.
    pub(crate) fn greeting_name(&self) -> String {
        self.client_name.clone().unwrap_or_else(program_name)
    }

    /// Refuse a daemon that runs as a user not trusted for this socket.
    pub(crate) fn check_peer(
        &self,
        socket: BorrowedFd<'_>,
        choice: &SocketChoice,
    ) -> Result<(), Error> {
        let policy = match (self.server_uid, choice) {
            (Some(uid), _) => PeerPolicy::Exactly(uid),
            (None, SocketChoice::Explicit(_)) => PeerPolicy::RootOrSelf,
            (None, SocketChoice::PerUser(_)) => PeerPolicy::OnlySelf,
            (None, SocketChoice::System(path)) => PeerPolicy::System {
                service_uid: socket_dir_owner(path),
            },
        };
        let uid = crate::peer::peer_uid(socket).map_err(Error::Io)?;
        if !policy.allows(uid) {
            return Err(Error::PeerRejected {
                uid,
                expected: policy.describe(),
            });
        }
        Ok(())
    }
}

/// A greeted connection and what the daemon said in its welcome.
pub(crate) struct Opened {
    pub(crate) connection: Connection,
    pub(crate) socket: SocketChoice,
    pub(crate) welcome: protocol::Welcome,
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
