//! A connection turned into the resolver of some prefixes (pull-through,
//! see [`crate::resolvers`]).
//!
//! After `Resolving`, the daemon sends one `Wanted` per missing name a
//! client waits for, and the resolver sends nothing but `Unresolved` for
//! those it cannot supply; it publishes what it can on another connection,
//! which wakes the waiters like any publish. Closing the connection ends
//! the registration, and the pulls it had fail at once.

use super::{Connection, End};
use crate::policy::Write;
use memseal_proto::codec::decode_request;
use memseal_proto::name::validate_prefix;
use memseal_proto::{ErrorCode, FrameError, Request, Response};
use tracing::info;

/// Prefixes one resolver may register at most.
const MAX_PREFIXES: usize = 64;

impl Connection {
    pub(super) async fn resolve(&mut self, prefixes: Vec<String>) -> Result<(), End> {
        if prefixes.is_empty() || prefixes.len() > MAX_PREFIXES {
            let reply = Response::error(
                ErrorCode::InvalidName,
                format!(
                    "a resolver names 1 to {MAX_PREFIXES} prefixes, not {}",
                    prefixes.len()
                ),
            );
            return self.reply(reply, None).await;
        }
        for prefix in &prefixes {
            if let Err(e) = validate_prefix(prefix) {
                let reply = Response::error(ErrorCode::InvalidName, format!("invalid prefix: {e}"));
                return self.reply(reply, None).await;
            }
            // A resolver publishes what it resolves, so it needs the right
            // to publish every name under its prefixes.
            let policy = self.state.policy();
            if let Err(why) = policy.check_write(&self.peer, Write::Publish, prefix) {
                let reply = Response::error(
                    ErrorCode::PermissionDenied,
                    format!("may not resolve '{prefix}': {why}"),
                );
                return self.reply(reply, None).await;
            }
        }
        let (id, mut wanted) = self.state.resolvers().register(prefixes.clone());
        // Within the log budget: a user may resolve its own prefix, on as
        // many connections, one after another, as it likes.
        if let Some(note) = self.state.may_log(&self.peer) {
            info!(peer = %self.peer, ?prefixes, "resolving{note}");
        }
        let served = self.serve_resolver(id, &mut wanted).await;
        self.state.resolvers().unregister(id);
        if let Some(note) = self.state.may_log(&self.peer) {
            info!(peer = %self.peer, "no longer resolving{note}");
        }
        served
    }

    async fn serve_resolver(
        &mut self,
        id: u64,
        wanted: &mut tokio::sync::mpsc::Receiver<crate::resolvers::Wanted>,
    ) -> Result<(), End> {
        self.reply(Response::Resolving, None).await?;
        loop {
            tokio::select! {
                next = wanted.recv() => {
                    let Some(next) = next else { return Err(End::Shutdown) };
                    let announcement = Response::Wanted {
                        name: next.name,
                        selector: next.selector,
                    };
                    self.reply(announcement, None).await?;
                }
                frame = self.next_frame(None) => {
                    let frame = frame?;
                    match decode_request(&frame.payload, frame.fds) {
                        Ok(decoded) => match decoded.message {
                            Request::Unresolved { name, selector, error } => {
                                self.state.resolvers().unresolved(id, &name, selector, error);
                            }
                            other => {
                                let e = FrameError::Protocol(format!(
                                    "a resolving connection sends only 'unresolved', not '{}'",
                                    other.kind()
                                ));
                                return Err(self.protocol_error(e).await);
                            }
                        },
                        Err(e) => return Err(self.protocol_error(e).await),
                    }
                }
            }
        }
    }
}
