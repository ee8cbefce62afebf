//! How many replies with descriptors a client may leave unread.
//!
//! Descriptors queued in a socket that its reader never drains count
//! against the sender's RLIMIT_NOFILE; once the daemon's user has more in
//! flight than that, the kernel refuses every further descriptor
//! (`ETOOMANYREFS`), for healthy clients too. So each connection gets a
//! bound, and a reply that carries a descriptor waits while the client sits
//! on that many.

use super::{Connection, End};
use crate::sys;
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;
use tokio::time::Instant;

/// What the kernel charges (`SIOCOUTQ`, the sender's `sk_wmem_alloc`) for
/// one reply frame queued unread: measured 768 bytes on Linux 6.18 for a
/// frame of up to about 190 bytes, with or without a descriptor, and 1280
/// for the larger frames that the longest names make. The charge is per
/// queued message (the buffer's true size), not per byte of payload.
const QUEUED_REPLY_COST: usize = 768;

/// The most replies with descriptors one connection may leave unread.
/// The client library asks and reads one at a time; a pipelining client
/// is merely slowed down by this, never refused.
pub const MAX_UNREAD_REPLIES: usize = 64;

/// How many replies with descriptors each connection may leave unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnreadLimit {
    /// In replies, for people.
    pub replies: usize,
    /// In `SIOCOUTQ` bytes, what the check compares against.
    pub bytes: usize,
}

/// The bound on unread replies for a daemon of `max_connections` that may
/// hold `descriptor_limit` descriptors.
///
/// The kernel refuses to send a descriptor (`ETOOMANYREFS`) once the
/// sending user has more in flight than its RLIMIT_NOFILE, and that would
/// hit healthy clients too. So every connection together may leave at most
/// half of the limit unread, and each one at most [`MAX_UNREAD_REPLIES`],
/// but never fewer than one.
pub fn unread_limit(max_connections: usize, descriptor_limit: u64) -> UnreadLimit {
    let share = descriptor_limit / 2 / (max_connections.max(1) as u64);
    let replies = (share.min(MAX_UNREAD_REPLIES as u64) as usize).max(1);
    UnreadLimit {
        replies,
        // The check runs before each send and lets one more through while
        // the queue is at or under the bound, hence `replies - 1`.
        bytes: (replies - 1) * QUEUED_REPLY_COST,
    }
}

impl Connection {
    /// Wait until a reply carrying `descriptors` descriptors may go out.
    pub(super) async fn make_room_for(&self, descriptors: usize) -> Result<(), End> {
        while !self.try_make_room(descriptors)? {
            self.wait_for_room(descriptors).await?;
        }
        Ok(())
    }

    /// Take room for a reply carrying `descriptors` descriptors if the
    /// peer's queue leaves it now; false if it must wait.
    ///
    /// A single descriptor goes once the peer has fewer than the bound
    /// unread (measured now and then, see `unchecked_sends`). A batch of
    /// several goes only once the peer's queue is empty, and the next
    /// descriptor reply after it waits for that again: the queue's size
    /// in bytes cannot tell how many descriptors one queued frame holds,
    /// but an empty queue holds none. Batches are never larger than the
    /// bound, so the bound holds either way.
    pub(super) fn try_make_room(&self, descriptors: usize) -> io::Result<bool> {
        use std::sync::atomic::Ordering::Relaxed;
        if descriptors > 1 || self.batch_unread.load(Relaxed) {
            if sys::unread_bytes(self.stream.as_fd())? != 0 {
                return Ok(false);
            }
            self.batch_unread.store(descriptors > 1, Relaxed);
            self.unchecked_sends.store(0, Relaxed);
            return Ok(true);
        }
        let unchecked = match self.unchecked_sends.load(Relaxed) {
            0 => {
                let unread = sys::unread_bytes(self.stream.as_fd())?;
                if unread > self.unread_limit.bytes {
                    return Ok(false);
                }
                // Every queued reply costs at least QUEUED_REPLY_COST.
                let queued = unread.div_ceil(QUEUED_REPLY_COST);
                self.unread_limit.replies.saturating_sub(queued).max(1)
            }
            unchecked => unchecked,
        };
        self.unchecked_sends.store(unchecked - 1, Relaxed);
        Ok(true)
    }

    /// Hold a descriptor reply back while the peer sits on unread replies
    /// (for a batch, until it has read them all). The kernel does not
    /// signal when a peer reads, so this polls, more and more slowly: a
    /// client that reads soon is served at once, one that never reads
    /// costs a few dozen wake-ups before it is dropped.
    async fn wait_for_room(&self, descriptors: usize) -> Result<(), End> {
        use std::sync::atomic::Ordering::Relaxed;
        let batch = descriptors > 1 || self.batch_unread.load(Relaxed);
        let deadline = Instant::now() + self.config.io_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let unread = sys::unread_bytes(self.stream.as_fd())?;
            if (batch && unread == 0) || (!batch && unread <= self.unread_limit.bytes) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(End::Timeout(
                    "client left too many replies with descriptors unread",
                ));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn unread_bound_fits_the_descriptor_limit() {
        // The shipped unit: LimitNOFILE=262144 shared by 1024 connections.
        let unit = unread_limit(1024, 262_144);
        assert_eq!(unit.replies, MAX_UNREAD_REPLIES);
        // A container's systemd that could only give 16384.
        let lowered = unread_limit(1024, 16384);
        assert_eq!(lowered.replies, 8);
        assert_eq!(lowered.bytes, 7 * QUEUED_REPLY_COST);
        // Few connections, plenty of descriptors: the ceiling.
        assert_eq!(unread_limit(64, 20_000).replies, MAX_UNREAD_REPLIES);
        assert_eq!(unread_limit(1, u64::MAX).replies, MAX_UNREAD_REPLIES);
        // Starved: still one reply at a time, so fetching works at all.
        let starved = unread_limit(1024, 64);
        assert_eq!(starved.replies, 1);
        assert_eq!(starved.bytes, 0);
    }
}
