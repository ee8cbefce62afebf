//! The accept loop: connection limits, peer credentials, graceful shutdown.
//!
//! Each accepted connection gets a task. Three limits bound how many run
//! at once: a total one; one for all users who are not publishers
//! together, which leaves the publisher reserve (`publisher_reserve`, a
//! quarter by default) to publishers whatever the others do; and one per
//! uid (`UidSlots`), so that a single local user cannot take every slot
//! of the others. Publishers (root, the daemon's own uid, the configured
//! publisher users and groups) are held to the total only: they run the
//! service. A connection over a limit is told "busy", with the limit it
//! hit, and closed straight away, so a flood cannot queue up unbounded
//! work.
//!
//! Connections never take the daemon's last descriptors. The kernel gives
//! a new descriptor the lowest free number, so an accepted socket numbered
//! at or above [`descriptor_ceiling`] proves that many are open already:
//! it is told "busy" and closed. The numbers above the ceiling stay free
//! for what existing connections need (a reader's own description of an
//! asset, an uploaded memfd), so a flood of connections cannot turn a
//! connected client's next fetch into "out of descriptors". Running short
//! that way, or `accept` failing for lack of descriptors (EMFILE, ENFILE)
//! or memory, does not spin: the loop backs off, existing connections keep
//! being served, and accepting resumes once resources free up.
//!
//! On shutdown the loop stops accepting, tells every connection to finish
//! (idle ones close at once, busy ones complete their request), and waits
//! for them up to the grace period.

use crate::config::Config;
use crate::connection::{self, Connection, ReadRegistered};
use crate::descriptions::SharedKept;
use crate::policy::Peer;
use crate::state::State;
use memseal_proto::codec::encode_response;
use memseal_proto::{ErrorCode, Response};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

/// Serve until `stop` resolves, then shut down gracefully.
pub async fn serve(
    listener: UnixListener,
    state: Arc<State>,
    config: Arc<Config>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut server = Listener::new(listener, state, config);
    server.run(stop).await;
    server.shut_down().await;
}

/// The listening socket and everything the connections it accepts share.
struct Listener {
    listener: UnixListener,
    state: Arc<State>,
    config: Arc<Config>,
    admission: Admission,
    unread_limit: connection::UnreadLimit,
    /// What all connections share: kept descriptions, fast lanes.
    shared: connection::Shared,
    /// One task per connection.
    tasks: JoinSet<()>,
    /// Turns true to tell every connection to finish.
    shutdown: watch::Sender<bool>,
    /// Accepted sockets numbered this high are refused: the descriptors
    /// above are kept for the connections already served.
    descriptor_ceiling: RawFd,
}

impl Listener {
    fn new(listener: UnixListener, state: Arc<State>, config: Arc<Config>) -> Listener {
        let unread_limit = connection::unread_limit(config.max_connections, descriptor_limit());
        let ceiling = descriptor_ceiling(descriptor_limit());
        if usize::try_from(ceiling).is_ok_and(|ceiling| ceiling < config.max_connections) {
            warn!(
                "RLIMIT_NOFILE is {}: connections may use descriptors up to {ceiling} only, \
                 fewer than max_connections ({}); raise the limit (LimitNOFILE=) or lower \
                 max_connections",
                descriptor_limit(),
                config.max_connections
            );
        }
        let shared = connection::Shared {
            kept: SharedKept::for_descriptor_limit(descriptor_limit()),
            lanes: connection::Lanes::per_cpu(),
        };
        debug!(
            unread_replies = unread_limit.replies,
            unread_bytes = unread_limit.bytes,
            "bound on unread replies with descriptors, per connection"
        );
        Listener {
            listener,
            admission: Admission::new(&config),
            state,
            config,
            unread_limit,
            shared,
            tasks: JoinSet::new(),
            shutdown: watch::channel(false).0,
            descriptor_ceiling: ceiling,
        }
    }

    /// Accept and admit connections until `stop` resolves.
    async fn run(&mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            // Reap finished connection tasks so the set does not grow.
            while self.tasks.try_join_next().is_some() {}
            let stream = tokio::select! {
                _ = &mut stop => return,
                stream = self.accept() => stream,
            };
            if let Some(handler) = self.admit(stream) {
                self.tasks.spawn(handler.run());
            }
        }
    }

    /// The next connection. Running short of descriptors or memory (a
    /// failed accept, or a socket numbered at the descriptor ceiling, which
    /// is refused) pauses accepting, from 10 ms doubling up to a second,
    /// instead of spinning; other failures are retried at once.
    /// Cancel-safe.
    async fn accept(&self) -> UnixStream {
        let mut backoff = Duration::ZERO;
        loop {
            let shortage = match self.listener.accept().await {
                Ok((stream, _)) if stream.as_raw_fd() < self.descriptor_ceiling => return stream,
                Ok((stream, _)) => {
                    refuse_busy(
                        &stream,
                        "memseald is short of descriptors; retry shortly".to_string(),
                    );
                    format!(
                        "a new connection got descriptor {}, above the {} kept for the \
                         connections already served",
                        stream.as_raw_fd(),
                        self.descriptor_ceiling
                    )
                }
                Err(e) if is_exhaustion(&e) => format!("accept failed: {e}"),
                Err(e) => {
                    // A peer that vanished before it was accepted.
                    debug!("accept failed: {e}");
                    continue;
                }
            };
            if backoff.is_zero() {
                error!("{shortage}; pausing new connections until resources free up");
            }
            backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
            tokio::time::sleep(backoff).await;
        }
    }

    /// Read who connected and take its slots, or tell it why not.
    fn admit(&self, stream: UnixStream) -> Option<Handler> {
        let peer = match peer_of(&stream) {
            Ok(peer) => peer,
            Err(e) => {
                warn!("cannot read the credentials of a new client: {e}");
                return None;
            }
        };
        let publisher = self.state.policy().is_publisher(&peer);
        let slots = match self.admission.admit(peer.uid, publisher) {
            Ok(slots) => slots,
            Err(busy) => {
                refuse_busy(&stream, busy);
                return None;
            }
        };
        let stream = match ReadRegistered::new(stream) {
            Ok(stream) => stream,
            Err(e) => {
                warn!(peer = %peer, "cannot register a new client's socket: {e}");
                return None;
            }
        };
        debug!(peer = %peer, "accepted");
        Some(Handler {
            connection: Connection::new(
                stream,
                peer,
                self.state.clone(),
                self.config.clone(),
                self.unread_limit,
                self.shared.clone(),
                self.shutdown.subscribe(),
            ),
            state: self.state.clone(),
            _slots: slots,
        })
    }

    /// Stop accepting, tell every connection to finish, and wait for them
    /// up to the grace period.
    async fn shut_down(mut self) {
        info!(
            connections = self.state.connections(),
            "shutting down: no longer accepting"
        );
        drop(self.listener);
        let _ = self.shutdown.send(true);
        let tasks = &mut self.tasks;
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                remaining = self.tasks.len(),
                "requests still running after {:?}; closing them", self.config.shutdown_grace
            );
            self.tasks.shutdown().await;
        }
    }
}

/// One admitted connection and the slots it holds until it ends.
struct Handler {
    connection: Connection,
    state: Arc<State>,
    _slots: Slots,
}

impl Handler {
    async fn run(self) {
        self.state.connection_opened();
        self.connection.run().await;
        self.state.connection_closed();
        // The slots go back as `self` is dropped.
    }
}

/// The three connection limits.
struct Admission {
    total: Arc<Semaphore>,
    max_total: usize,
    /// All users who are not publishers together.
    users: Arc<Semaphore>,
    max_users: usize,
    per_uid: Arc<UidSlots>,
    max_per_uid: usize,
}

/// The slots one connection holds; given back when dropped.
struct Slots {
    _total: OwnedSemaphorePermit,
    _users: Option<OwnedSemaphorePermit>,
    _uid: UidSlot,
}

impl Admission {
    fn new(config: &Config) -> Admission {
        let max_users = users_connections(config);
        Admission {
            total: Arc::new(Semaphore::new(config.max_connections)),
            max_total: config.max_connections,
            users: Arc::new(Semaphore::new(max_users)),
            max_users,
            per_uid: Arc::new(UidSlots::new(config.max_connections_per_uid)),
            max_per_uid: config.max_connections_per_uid,
        }
    }

    /// Slots for one more connection of `uid`, or the refusal to send.
    fn admit(&self, uid: u32, publisher: bool) -> Result<Slots, String> {
        let total = self.total.clone().try_acquire_owned().map_err(|_| {
            format!(
                "memseald is at its limit of {} connections; retry later",
                self.max_total
            )
        })?;
        let users = match publisher {
            true => None,
            false => Some(self.users.clone().try_acquire_owned().map_err(|_| {
                format!(
                    "users who are not publishers hold all {} connections they may share \
                     (the rest of max_connections is reserved for publishers); retry later",
                    self.max_users
                )
            })?),
        };
        let uid_slot = self.per_uid.try_take(uid, publisher).ok_or_else(|| {
            format!(
                "uid {uid} is at its limit of {} connections to memseald \
                 (max_connections_per_uid); close some or retry later",
                self.max_per_uid
            )
        })?;
        Ok(Slots {
            _total: total,
            _users: users,
            _uid: uid_slot,
        })
    }
}

/// How many connections all users who are not publishers may hold
/// together: what the publisher reserve leaves of `max_connections`, but
/// at least one.
fn users_connections(config: &Config) -> usize {
    let reserve = config.max_connections * usize::from(config.publisher_reserve.min(100)) / 100;
    (config.max_connections - reserve).max(1)
}

/// Open connections per uid, bounded by `max_connections_per_uid`.
///
/// Publishers are not counted: they are the ones who run the service, and
/// a cap on them would only lock the administrator out.
struct UidSlots {
    max: usize,
    open: Mutex<HashMap<u32, usize>>,
}

impl UidSlots {
    fn new(max: usize) -> UidSlots {
        UidSlots {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection of `uid`, or None at the limit.
    fn try_take(self: &Arc<Self>, uid: u32, publisher: bool) -> Option<UidSlot> {
        if publisher {
            return Some(UidSlot {
                slots: self.clone(),
                uid: None,
            });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(uid).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(UidSlot {
            slots: self.clone(),
            uid: Some(uid),
        })
    }
}

/// One counted connection; gives its slot back when dropped.
struct UidSlot {
    slots: Arc<UidSlots>,
    /// None for an exempt uid, which was not counted.
    uid: Option<u32>,
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let Some(uid) = self.uid else { return };
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&uid) {
            *count -= 1;
            // Forget uids with no connection, so the map stays as small as
            // the set of users connected right now.
            if *count == 0 {
                open.remove(&uid);
            }
        }
    }
}

/// The soft RLIMIT_NOFILE the daemon runs with (already raised to the hard
/// limit at start where allowed).
fn descriptor_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// The lowest descriptor number a new connection may not have, under a
/// soft RLIMIT_NOFILE of `limit`: an eighth of the descriptors, at least 16
/// and at most 4,096, are kept for the connections already served (each
/// keeps a few descriptions of its own; see `descriptions`).
fn descriptor_ceiling(limit: u64) -> RawFd {
    let headroom = (limit / 8).clamp(16, 4096);
    RawFd::try_from(limit.saturating_sub(headroom)).unwrap_or(RawFd::MAX)
}

/// Whether `accept` failed for lack of descriptors or memory, which only
/// waiting mends.
fn is_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Tell a client over a limit why it is being closed, without waiting: the
/// frame fits any empty socket buffer, and a client that cannot take it
/// loses nothing it was promised.
fn refuse_busy(stream: &UnixStream, message: String) {
    debug!("refused a connection: {message}");
    if let Ok(frame) = encode_response(&Response::error(ErrorCode::Busy, message)) {
        let _ = stream.try_write(&frame);
    }
}

/// Who connected (`SO_PEERCRED`, read by tokio), as the daemon's
/// namespaces see it: the pid is 0 when the peer's PID namespace is not
/// visible from ours.
fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let groups = crate::sys::peer_groups(stream.as_fd()).unwrap_or_default();
    Ok(Peer {
        pid: cred.pid().unwrap_or(0),
        uid: cred.uid(),
        gid: cred.gid(),
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eighth_of_the_descriptors_is_kept_from_new_connections() {
        assert_eq!(descriptor_ceiling(64), 48);
        assert_eq!(descriptor_ceiling(1024), 896);
        assert_eq!(descriptor_ceiling(524_288), 524_288 - 4096);
        assert_eq!(descriptor_ceiling(u64::MAX), RawFd::MAX);
    }
}
