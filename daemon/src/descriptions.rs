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
//! connection keeps the last [`KEPT_PER_CONNECTION`] it opened: a client
//! that fetches the same asset again on its connection pays one short
//! scan. They are closed when the connection ends, which bounds them by
//! the connection limit; a kept description of a version removed since
//! holds its memory no longer than the client's own descriptor of it would.

use crate::blob::Blob;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};

/// Descriptions one connection keeps: few, so that all connections
/// together stay well inside the descriptor limit (1024 connections keep
/// at most 4096).
pub const KEPT_PER_CONNECTION: usize = 4;

/// One connection's descriptions, the most recently opened last.
#[derive(Default)]
pub struct Descriptions {
    kept: VecDeque<(Weak<Blob>, Arc<OwnedFd>)>,
}

impl Descriptions {
    /// A read-only description of `blob` for this connection, or None if
    /// a new one cannot be opened (an adopted memfd whose owner has since
    /// made it unreadable to the daemon): the caller then hands out the
    /// blob's own, which only readers of that owner's names get.
    pub fn of(&mut self, blob: &Arc<Blob>) -> Option<Arc<OwnedFd>> {
        // Forget descriptions of blobs the catalog has let go.
        self.kept.retain(|(kept, _)| kept.strong_count() > 0);
        let found = self
            .kept
            .iter()
            .position(|(kept, _)| std::ptr::eq(kept.as_ptr(), Arc::as_ptr(blob)));
        let index = match found {
            Some(index) => index,
            None => {
                let fd = Arc::new(blob.reopen().ok()?);
                if self.kept.len() == KEPT_PER_CONNECTION {
                    self.kept.pop_front();
                }
                self.kept.push_back((Arc::downgrade(blob), fd));
                self.kept.len() - 1
            }
        };
        Some(self.kept[index].1.clone())
    }

    /// Close them all (the connection is ending).
    pub fn clear(&mut self) {
        self.kept.clear();
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
        let (mut a, mut b) = (Descriptions::default(), Descriptions::default());
        let first = a.of(&blob).unwrap();
        assert!(
            Arc::ptr_eq(&a.of(&blob).unwrap(), &first),
            "kept for the next fetch"
        );
        rustix::fs::seek(&*first, rustix::fs::SeekFrom::Start(4)).unwrap();
        let other = b.of(&blob).unwrap();
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
        let mut kept = Descriptions::default();
        let blobs: Vec<Arc<Blob>> = (0..6u8).map(|i| blob(&[i])).collect();
        for blob in &blobs {
            kept.of(blob);
        }
        assert_eq!(kept.kept.len(), KEPT_PER_CONNECTION);
        drop(blobs);
        let other = blob(b"x");
        kept.of(&other);
        assert_eq!(kept.kept.len(), 1);
        kept.clear();
        assert!(kept.kept.is_empty());
    }
}
