//! Fetching: one asset, or many in one round trip.
//!
//! A fetch answers with a descriptor of the version's blob; a batch
//! answers with one result per item and one descriptor per item found,
//! all on one frame. Each descriptor is a description of this
//! connection's own (see [`crate::descriptions`]), and `blob` references
//! keep every memfd open until the reply is sent, even if a version is
//! removed meanwhile.

use super::{invalid_name, Connection, End};
use memseal_proto::{ErrorCode, FetchItem, FetchResult, Response, Selector};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// The most items one batch may name, whatever the descriptor budget
/// allows: a model's shards or a font family fit, and the answer stays
/// well inside one frame.
pub const MAX_FETCH_MANY: usize = 64;

impl Connection {
    /// Items a batch may name on this connection: never more descriptors
    /// than it may leave unread (see `unread`).
    pub(super) fn max_fetch_many(&self) -> usize {
        MAX_FETCH_MANY.min(self.unread_limit.replies)
    }

    pub(super) async fn fetch(&mut self, name: &str, selector: Selector) -> Result<(), End> {
        match self.state.fetch(name, selector) {
            Ok((info, blob)) => {
                let own = self.descriptions.of(&blob);
                let fd = own.as_deref().map_or(blob.fd(), |fd| fd.as_fd());
                self.reply(Response::Asset(info), Some(fd)).await
            }
            Err(e) => self.reply_error(e).await,
        }
    }

    /// Answer a batch: one result per item, in order; an item that fails
    /// (an invalid name, nothing found) fails alone.
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
        let mut results = Vec::with_capacity(items.len());
        let mut blobs = Vec::new();
        for item in &items {
            if let Err(Response::Error(reply)) = invalid_name(&item.name) {
                results.push(FetchResult::Error(reply));
                continue;
            }
            match self.state.fetch(&item.name, item.selector) {
                Ok((info, blob)) => {
                    results.push(FetchResult::Asset(info));
                    blobs.push(blob);
                }
                Err(e) => results.push(FetchResult::Error(memseal_proto::ErrorReply {
                    code: e.code,
                    message: e.message,
                })),
            }
        }
        let owned: Vec<Option<Arc<OwnedFd>>> = blobs
            .iter()
            .map(|blob| self.descriptions.of(blob))
            .collect();
        let fds: Vec<BorrowedFd<'_>> = owned
            .iter()
            .zip(&blobs)
            .map(|(own, blob)| own.as_deref().map_or(blob.fd(), OwnedFd::as_fd))
            .collect();
        self.reply_with(Response::Assets { items: results }, fds)
            .await
    }
}
