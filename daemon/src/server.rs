//! The accept loop: connection limit, peer credentials, graceful shutdown.
//!
//! Each accepted connection gets a task. A semaphore bounds how many run at
//! once; a connection over the limit is told "busy" and closed straight
//! away, so a flood cannot queue up unbounded work. `accept` failing for
//! lack of descriptors (EMFILE, ENFILE) or memory does not spin: the loop
//! backs off, existing connections keep being served, and accepting
//! resumes once resources free up.
//!
//! On shutdown the loop stops accepting, tells every connection to finish
//! (idle ones close at once, busy ones complete their request), and waits
//! for them up to the grace period.

use crate::config::Config;
use crate::connection::Connection;
use crate::policy::Peer;
use crate::store::Store;
use memseal_proto::codec::encode_response;
use memseal_proto::{ErrorCode, Response};
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

/// Serve until `stop` resolves, then shut down gracefully.
pub async fn serve(
    listener: UnixListener,
    store: Arc<Store>,
    config: Arc<Config>,
    stop: impl std::future::Future<Output = ()>,
) {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::ZERO;
    tokio::pin!(stop);
    loop {
        // Reap finished connection tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(e) => {
                backoff = accept_backoff(&e, backoff);
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            refuse_busy(&stream, config.max_connections);
            continue;
        };
        let peer = match peer_of(&stream) {
            Ok(peer) => peer,
            Err(e) => {
                warn!("cannot read the credentials of a new client: {e}");
                continue;
            }
        };
        debug!(peer = %peer, "accepted");
        let connection = Connection::new(
            stream,
            peer,
            store.clone(),
            config.clone(),
            shutdown_rx.clone(),
        );
        let store = store.clone();
        tasks.spawn(async move {
            store.connection_opened();
            connection.run().await;
            store.connection_closed();
            drop(permit);
        });
    }
    info!(
        connections = tasks.len(),
        "shutting down: no longer accepting"
    );
    drop(listener);
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            remaining = tasks.len(),
            "requests still running after {:?}; closing them", config.shutdown_grace
        );
        tasks.shutdown().await;
    }
}

/// How long to pause after a failed accept. Resource exhaustion backs off
/// up to a second; other errors (a peer that vanished before we accepted
/// it) retry at once.
fn accept_backoff(error: &io::Error, previous: Duration) -> Duration {
    let exhausted = matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    if !exhausted {
        debug!("accept failed: {error}");
        return Duration::ZERO;
    }
    let next = (previous * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
    if previous.is_zero() {
        error!("accept failed: {error}; pausing new connections until resources free up");
    }
    next
}

/// Tell a client over the limit why it is being closed, without waiting:
/// the frame fits any empty socket buffer, and a client that cannot take it
/// loses nothing it was promised.
fn refuse_busy(stream: &UnixStream, max: usize) {
    let reply = Response::error(
        ErrorCode::Busy,
        format!("memseald is at its limit of {max} connections; retry later"),
    );
    if let Ok(frame) = encode_response(&reply) {
        let _ = stream.try_write(&frame);
    }
    debug!("refused a connection: at the limit of {max}");
}

fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let cred = rustix::net::sockopt::socket_peercred(stream)?;
    let groups = crate::sys::peer_groups(stream.as_fd()).unwrap_or_default();
    Ok(Peer {
        pid: cred.pid.as_raw_nonzero().get(),
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
        groups,
    })
}
