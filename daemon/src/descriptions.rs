//! The open file descriptions readers receive: one per connection and blob.
//!
//! A descriptor passed over a socket shares its open file description with
//! every other copy of it, and a description has state a holder can change:
//! its file offset (`lseek`, `read`) and status flags (`fcntl(F_SETFL)`:
//! `O_APPEND`, `O_NONBLOCK`, `O_DIRECT`...). Had every reader received the
//! blob's own description, one user could move the offset under another
//! user's `read` calls or change how they behave. So each connection gets
//! descriptions of its own, opened by the daemon, read-only.
//!
//! Opening one costs an `open` through `/proc/self/fd` (about 5 us), so a
//! connection keeps the ones it opened last: a client that fetches the
//! same assets again on its connection, one by one or in a batch, pays a
//! short scan instead. Every connection may keep [`KEPT_PER_CONNECTION`];
//! beyond that, up to a whole batch ([`MOST_KEPT_PER_CONNECTION`]), it
//! borrows from one pool all connections share ([`SharedKept`]), sized
//! from the descriptor limit, so that however many connections a user
//! opens, the daemon's descriptors stay bounded and every other
//! connection keeps its own few. They are closed when the connection ends;
//! a kept description of a version removed since holds its memory no
//! longer than the client's own descriptor of it would.

use crate::blob::Blob;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// Descriptions every connection may keep, whatever the others do: few,
/// so that all connections together stay well inside the descriptor limit
/// (1024 connections keep at most 4096).
pub const KEPT_PER_CONNECTION: usize = 4;

/// The most descriptions one connection keeps, the ones beyond
/// [`KEPT_PER_CONNECTION`] borrowed from the shared pool: as many as one
/// batch may name (`MAX_FETCH_MANY`), so a client that fetches the same
/// batch again opens nothing.
pub const MOST_KEPT_PER_CONNECTION: usize = 64;

/// The shared pool never holds more than this, however high the limit.
const MOST_SHARED: usize = 65_536;

/// Descriptions connections may keep beyond their own
/// [`KEPT_PER_CONNECTION`], shared by all of them.
#[derive(Debug)]
pub struct SharedKept {
    free: AtomicUsize,
}

impl SharedKept {
    /// A pool of `size` descriptions.
    pub fn new(size: usize) -> Arc<SharedKept> {
        Arc::new(SharedKept {
            free: AtomicUsize::new(size),
        })
    }

    /// The pool for a daemon that may hold `descriptor_limit` descriptors:
    /// an eighth of them (2,048 under a limit of 16,384), leaving the rest
    /// to blobs, connections and the guaranteed few per connection.
    pub fn for_descriptor_limit(descriptor_limit: u64) -> Arc<SharedKept> {
        let eighth = usize::try_from(descriptor_limit / 8).unwrap_or(usize::MAX);
        SharedKept::new(eighth.min(MOST_SHARED))
    }

    /// Take one from the pool, if any is left.
    fn take(&self) -> bool {
        self.free
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |free| {
                free.checked_sub(1)
            })
            .is_ok()
    }

    fn give_back(&self, count: usize) {
        self.free.fetch_add(count, Ordering::Relaxed);
    }
}

/// One connection's descriptions, the most recently opened last.
pub struct Descriptions {
    kept: VecDeque<(Weak<Blob>, Arc<OwnedFd>)>,
    shared: Arc<SharedKept>,
    /// How many of `kept` are borrowed from `shared`.
    borrowed: usize,
}

impl Descriptions {
    /// None yet, borrowing from `shared` beyond the connection's own few.
    pub fn new(shared: Arc<SharedKept>) -> Descriptions {
        Descriptions {
            kept: VecDeque::new(),
            shared,
            borrowed: 0,
        }
    }

    /// A read-only description of `blob` for this connection, or None if
    /// the daemon may not open one (an adopted memfd whose owner has since
    /// made it unreadable to the daemon): the caller then hands out the
    /// blob's own, which only readers of that owner's names get. Any other
    /// failure (out of descriptors) is an error: the blob's own
    /// description is never handed out for want of a new one.
    pub fn of(&mut self, blob: &Arc<Blob>) -> io::Result<Option<Arc<OwnedFd>>> {
        // Forget descriptions of blobs the catalog has let go.
        self.kept.retain(|(kept, _)| kept.strong_count() > 0);
        self.return_unused();
        let found = self
            .kept
            .iter()
            .position(|(kept, _)| std::ptr::eq(kept.as_ptr(), Arc::as_ptr(blob)));
        let index = match found {
            Some(index) => index,
            None => {
                let fd = match blob.reopen() {
                    Ok(fd) => Arc::new(fd),
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
                    Err(e) => return Err(e),
                };
                if self.kept.len() == KEPT_PER_CONNECTION + self.borrowed {
                    let may_borrow = self.kept.len() < MOST_KEPT_PER_CONNECTION;
                    if may_borrow && self.shared.take() {
                        self.borrowed += 1;
                    } else {
                        self.kept.pop_front();
                    }
                }
                self.kept.push_back((Arc::downgrade(blob), fd));
                self.kept.len() - 1
            }
        };
        Ok(Some(self.kept[index].1.clone()))
    }

    /// The descriptors for a reply that hands out `blobs`, in order.
    pub fn handout<'a>(&mut self, blobs: &'a [Arc<Blob>]) -> io::Result<Handout<'a>> {
        Ok(Handout {
            owned: blobs
                .iter()
                .map(|blob| self.of(blob))
                .collect::<io::Result<_>>()?,
            blobs,
        })
    }

    /// Give back to the pool what `kept` no longer needs.
    fn return_unused(&mut self) {
        let needed = self.kept.len().saturating_sub(KEPT_PER_CONNECTION);
        if self.borrowed > needed {
            self.shared.give_back(self.borrowed - needed);
            self.borrowed = needed;
        }
    }

    /// Close them all (the connection is ending).
    pub fn clear(&mut self) {
        self.kept.clear();
        self.return_unused();
    }
}

/// The descriptors one reply hands out: this connection's own
/// description of each blob, or the blob's own where none could be opened
/// (see [`Descriptions::of`]).
pub struct Handout<'a> {
    owned: Vec<Option<Arc<OwnedFd>>>,
    blobs: &'a [Arc<Blob>],
}

impl Handout<'_> {
    /// The descriptors, in the order of the blobs.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.owned
            .iter()
            .zip(self.blobs)
            .map(|(own, blob)| own.as_deref().map_or(blob.fd(), OwnedFd::as_fd))
            .collect()
    }
}

impl Drop for Descriptions {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobWriter;
    use std::os::fd::AsRawFd;

    fn blob(bytes: &[u8]) -> Arc<Blob> {
        let mut writer = BlobWriter::new(bytes.len() as u64).unwrap();
        writer.write(bytes).unwrap();
        Arc::new(writer.finish().unwrap())
    }

    #[test]
    fn each_connection_gets_its_own_description_of_the_same_file() {
        let blob = blob(b"some bytes");
        let shared = SharedKept::new(0);
        let (mut a, mut b) = (Descriptions::new(shared.clone()), Descriptions::new(shared));
        let first = a.of(&blob).unwrap().unwrap();
        assert!(
            Arc::ptr_eq(&a.of(&blob).unwrap().unwrap(), &first),
            "kept for the next fetch"
        );
        rustix::fs::seek(&*first, rustix::fs::SeekFrom::Start(4)).unwrap();
        let other = b.of(&blob).unwrap().unwrap();
        assert_ne!(first.as_raw_fd(), other.as_raw_fd());
        assert_eq!(
            rustix::fs::tell(&*other).unwrap(),
            0,
            "the offset is not shared"
        );
        assert_eq!(
            rustix::fs::fstat(&*other).unwrap().st_ino,
            rustix::fs::fstat(blob.fd()).unwrap().st_ino
        );
    }

    #[test]
    fn few_are_kept_and_none_for_blobs_let_go() {
        let mut kept = Descriptions::new(SharedKept::new(0));
        let blobs: Vec<Arc<Blob>> = (0..6u8).map(|i| blob(&[i])).collect();
        for blob in &blobs {
            kept.of(blob).unwrap();
        }
        assert_eq!(kept.kept.len(), KEPT_PER_CONNECTION);
        drop(blobs);
        let other = blob(b"x");
        kept.of(&other).unwrap();
        assert_eq!(kept.kept.len(), 1);
        kept.clear();
        assert!(kept.kept.is_empty());
    }

    #[test]
    fn a_batch_is_kept_while_the_shared_pool_lasts_and_given_back() {
        let shared = SharedKept::new(10);
        let blobs: Vec<Arc<Blob>> = (0..80u8).map(|i| blob(&[i])).collect();
        let mut first = Descriptions::new(shared.clone());
        for blob in &blobs[..20] {
            first.of(blob).unwrap();
        }
        // Its own 4 and all 10 of the pool.
        assert_eq!(first.kept.len(), KEPT_PER_CONNECTION + 10);
        assert_eq!(shared.free.load(Ordering::Relaxed), 0);
        let mut second = Descriptions::new(shared.clone());
        for blob in &blobs[20..40] {
            second.of(blob).unwrap();
        }
        assert_eq!(
            second.kept.len(),
            KEPT_PER_CONNECTION,
            "an empty pool still leaves every connection its own few"
        );
        // The most recent are the ones kept: fetching them again opens nothing.
        let again = second.of(&blobs[39]).unwrap().unwrap();
        assert!(Arc::ptr_eq(
            &again,
            &second.of(&blobs[39]).unwrap().unwrap()
        ));
        drop(first);
        assert_eq!(shared.free.load(Ordering::Relaxed), 10, "given back");
        for blob in &blobs {
            second.of(blob).unwrap();
        }
        assert_eq!(second.kept.len(), KEPT_PER_CONNECTION + 10);
        // Versions let go give their borrowed places back.
        drop(blobs);
        second.of(&blob(b"y")).unwrap();
        assert_eq!(second.kept.len(), 1);
        assert_eq!(shared.free.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn no_connection_keeps_more_than_a_batch() {
        let shared = SharedKept::new(1000);
        let blobs: Vec<Arc<Blob>> = (0..100u8).map(|i| blob(&[i])).collect();
        let mut kept = Descriptions::new(shared.clone());
        for blob in &blobs {
            kept.of(blob).unwrap();
        }
        assert_eq!(kept.kept.len(), MOST_KEPT_PER_CONNECTION);
        assert_eq!(
            shared.free.load(Ordering::Relaxed),
            1000 - (MOST_KEPT_PER_CONNECTION - KEPT_PER_CONNECTION)
        );
    }

    #[test]
    fn the_pool_is_an_eighth_of_the_descriptor_limit() {
        let pool = SharedKept::for_descriptor_limit(16_384);
        assert_eq!(pool.free.load(Ordering::Relaxed), 2048);
        let unlimited = SharedKept::for_descriptor_limit(u64::MAX);
        assert_eq!(unlimited.free.load(Ordering::Relaxed), MOST_SHARED);
    }
}
