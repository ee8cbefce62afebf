//! Fetching and stat: one asset, or many in one round trip, and the wait
//! for a resolver when the daemon does not hold a name.
//!
//! A fetch answers with a descriptor of the version's blob; a batch
//! answers with one result per item and one descriptor per item found,
//! all on one frame. Each descriptor is a description of this
//! connection's own (see [`crate::descriptions`]), and `blob` references
//! keep every memfd open until the reply is sent, even if a version is
//! removed meanwhile.
//!
//! A name the daemon does not hold, under a prefix some client resolves
//! (see [`crate::resolvers`]), is pulled: the request waits until the
//! name appears, the resolver gives up, or `resolve_timeout` passes, and
//! then answers as usual, or `Unavailable` with the reason.

use super::{invalid_name, Connection, End};
use crate::blob::Blob;
use crate::catalog::CatalogError;
use crate::resolvers::Waiter;
use memseal_proto::{AssetInfo, ErrorCode, ErrorReply, FetchItem, FetchResult, Response, Selector};
use std::sync::Arc;
use tokio::time::Instant;

/// The most items one batch may name, whatever the descriptor budget
/// allows: a model's shards or a font family fit, and the answer stays
/// well inside one frame.
pub const MAX_FETCH_MANY: usize = 64;

/// A version found, or why not.
type Found = Result<(AssetInfo, Arc<Blob>), CatalogError>;

impl Connection {
    /// Items a batch may name on this connection: never more descriptors
    /// than it may leave unread (see `unread`).
    pub(super) fn max_fetch_many(&self) -> usize {
        MAX_FETCH_MANY.min(self.unread_limit.replies)
    }

    pub(super) async fn fetch(&mut self, name: &str, selector: Selector) -> Result<(), End> {
        match self.find(name, selector).await {
            Ok((info, blob)) => {
                let blobs = [blob];
                match self.descriptions.handout(&blobs) {
                    Ok(handout) => self.reply_with(Response::Asset(info), handout.fds()).await,
                    Err(e) => self.reply(self.no_description(e), None).await,
                }
            }
            Err(e) => self.reply_error(e).await,
        }
    }

    pub(super) async fn stat(&mut self, name: &str, selector: Selector) -> Result<(), End> {
        let reply = match self.find(name, selector).await {
            Ok((info, _)) => Response::Info(info),
            Err(e) => Response::error(e.code, e.message),
        };
        self.reply(reply, None).await
    }

    /// Answer a batch: one result per item, in order; an item that fails
    /// (an invalid name, nothing found) fails alone. Missing items are
    /// pulled together, under one deadline.
    pub(super) async fn fetch_many(&mut self, items: Vec<FetchItem>) -> Result<(), End> {
        let max = self.max_fetch_many();
        if items.len() > max {
            let reply = Response::error(
                ErrorCode::TooLarge,
                format!(
                    "a batch of {} items exceeds this connection's limit of {max} \
                     (announced as max_fetch_many); split it",
                    items.len()
                ),
            );
            return self.reply(reply, None).await;
        }
        let deadline = Instant::now() + self.config.resolve_timeout;
        // First every lookup, starting the pulls of what is missing; then
        // the waits, so that the pulls run at the same time.
        let started: Vec<Result<Found, (Waiter, Found)>> = items
            .iter()
            .map(|item| match invalid_name(&item.name) {
                Err(Response::Error(reply)) => {
                    Ok(Err(CatalogError::new(reply.code, reply.message)))
                }
                _ => self.start_find(&item.name, item.selector),
            })
            .collect();
        let mut found = Vec::with_capacity(items.len());
        for (item, start) in items.iter().zip(started) {
            found.push(match start {
                Ok(done) => done,
                Err((waiter, missing)) => {
                    self.finish_find(&item.name, item.selector, waiter, missing, deadline)
                        .await
                }
            });
        }
        let (response, blobs) = self.assets_answer(found);
        match self.descriptions.handout(&blobs) {
            Ok(handout) => self.reply_with(response, handout.fds()).await,
            Err(e) => self.reply(self.no_description(e), None).await,
        }
    }

    /// The answer to a batch whose items came to `found`, and the blobs
    /// whose descriptors go with it, in order.
    pub(super) fn assets_answer(&self, found: Vec<Found>) -> (Response, Vec<Arc<Blob>>) {
        let mut results = Vec::with_capacity(found.len());
        let mut blobs = Vec::new();
        for item in found {
            match item {
                Ok((info, blob)) => {
                    results.push(FetchResult::Asset(info));
                    blobs.push(blob);
                }
                Err(e) => results.push(FetchResult::Error(ErrorReply {
                    code: e.code,
                    message: e.message,
                })),
            }
        }
        (Response::Assets { items: results }, blobs)
    }

    /// The version `selector` picks, pulled through the resolver of its
    /// prefix if the daemon does not hold it.
    async fn find(&self, name: &str, selector: Selector) -> Found {
        let deadline = Instant::now() + self.config.resolve_timeout;
        match self.start_find(name, selector) {
            Ok(done) => done,
            Err((waiter, missing)) => {
                self.finish_find(name, selector, waiter, missing, deadline)
                    .await
            }
        }
    }

    /// Look the version up; if it is missing and a resolver covers it,
    /// start (or join) its pull and hand back the waiter with the
    /// original `NotFound`.
    fn start_find(&self, name: &str, selector: Selector) -> Result<Found, (Waiter, Found)> {
        let missing = match self.state.fetch(name, selector) {
            Err(e) if e.code == ErrorCode::NotFound => Err(e),
            done => return Ok(done),
        };
        let resolvers = self.state.resolvers();
        let over_budget = std::cell::Cell::new(false);
        let may_start = || {
            let allowed = self.state.may_start_pull(&self.peer);
            over_budget.set(!allowed);
            allowed
        };
        let Some(waiter) = resolvers.pull(name, selector, self.config.resolve_timeout, may_start)
        else {
            return Ok(missing);
        };
        // Logged here, not under the resolvers' lock, which a slow journal
        // must not hold up.
        if over_budget.get() {
            if let Some(note) = self.state.may_log(&self.peer) {
                tracing::info!(
                    peer = %self.peer,
                    name,
                    "not passed on to the resolver: over the pull budget{note}"
                );
            }
        }
        // It may have been published after the lookup and before the pull
        // was registered, when no publish would wake the waiter.
        match self.state.fetch(name, selector) {
            Ok(found) => Ok(Ok(found)),
            Err(_) => Err((waiter, missing)),
        }
    }

    /// Wait for a pull to end (or the deadline, or shutdown), then look
    /// the version up again.
    async fn finish_find(
        &self,
        name: &str,
        selector: Selector,
        mut waiter: Waiter,
        missing: Found,
        deadline: Instant,
    ) -> Found {
        let mut shutdown = self.shutdown.clone();
        let ended = tokio::select! {
            ended = tokio::time::timeout_at(deadline, waiter.wait_for(Option::is_some)) => ended,
            _ = shutdown.wait_for(|stop| *stop) => {
                return Err(CatalogError::new(
                    ErrorCode::Unavailable,
                    format!("memseald is shutting down; '{name}' was not supplied"),
                ))
            }
        };
        let outcome = match ended {
            Ok(Ok(outcome)) => outcome.clone(),
            Ok(Err(_)) => None,
            Err(_) => {
                return Err(CatalogError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "'{name}' is not held here, and the resolver of its prefix did not \
                         supply it within {:?}; retry later",
                        self.config.resolve_timeout
                    ),
                ))
            }
        };
        match outcome {
            Some(Ok(())) => self.state.fetch(name, selector),
            Some(Err(reply)) => Err(CatalogError::new(reply.code, reply.message)),
            None => missing,
        }
    }

    /// The answer when the daemon cannot open a description of its own for
    /// a reader (out of descriptors): busy, rather than the blob's shared
    /// one. Logged within the peer's log budget.
    fn no_description(&self, error: std::io::Error) -> Response {
        if let Some(note) = self.state.may_log(&self.peer) {
            tracing::warn!(
                peer = %self.peer,
                "cannot open a read-only description for a reader: {error}{note}"
            );
        }
        Response::error(
            ErrorCode::Busy,
            format!(
                "memseald cannot open a descriptor for this asset right now ({error}); \
                 retry shortly"
            ),
        )
    }
}
