//! A connection turned into a stream of catalog events.

use super::{Connection, End};
use memseal_proto::name::validate_prefix;
use memseal_proto::tokio_io::Socket;
use memseal_proto::{ErrorCode, FrameError, Response};
use std::io;
use std::time::Duration;
use tokio::io::Interest;
use tokio::time::timeout;
use tracing::debug;

/// How long an event may wait for room in a watcher's socket before the
/// watcher counts as fallen behind.
const WATCH_SEND_GRACE: Duration = Duration::from_millis(100);

impl Connection {
    /// Stream published and removed versions under `prefix` until the
    /// client closes the connection or falls too far behind.
    pub(super) async fn watch(&mut self, prefix: String) -> Result<(), End> {
        use tokio::sync::broadcast::error::RecvError;
        if let Err(e) = validate_prefix(&prefix) {
            let reply = Response::error(ErrorCode::InvalidName, format!("invalid prefix: {e}"));
            return self.reply(reply, None).await;
        }
        // Subscribe before answering, so no change after the answer is missed.
        let mut events = self.state.subscribe();
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
}
