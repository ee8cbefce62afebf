//! Bounded logging of what clients do.
//!
//! A client can send thousands of requests a second, and a line for each
//! (published, removed, denied, dropped) would let any local user fill the
//! journal and push everything else out of it. So those lines go through a
//! [`LogBudget`]: token buckets, one per uid and one for all users who are
//! not publishers together, and one for publishers, so that no flood by
//! users can silence the publishers' lines. A line over budget is counted,
//! not written; the next line that is written says how many similar lines
//! were left out before it.
//!
//! With the rates below, all non-publishers together write at most
//! [`USERS_BURST`] lines at once and [`USERS_PER_SECOND`] a second after
//! that, whatever they send.

use crate::policy::Peer;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

/// Lines all users who are not publishers may write at once.
pub const USERS_BURST: f64 = 100.0;
/// ... and per second after that.
pub const USERS_PER_SECOND: f64 = 10.0;
/// Lines one such uid may write at once, and per second.
const UID_BURST: f64 = 20.0;
const UID_PER_SECOND: f64 = 2.0;
/// Lines publishers together may write at once, and per second: generous,
/// since they are trusted, but still bounded.
const PUBLISHERS_BURST: f64 = 1000.0;
const PUBLISHERS_PER_SECOND: f64 = 100.0;
/// Per-uid buckets kept at most; full ones are forgotten first.
const MAX_UID_BUCKETS: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    updated: Instant,
}

impl Bucket {
    fn new(burst: f64, per_second: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            burst,
            per_second,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.updated = now;
    }

    fn has_token(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

struct Buckets {
    publishers: Bucket,
    users: Bucket,
    per_uid: HashMap<u32, Bucket>,
    /// Lines left out since the last one written, per class.
    suppressed_publishers: u64,
    suppressed_users: u64,
}

/// Decides which per-request log lines are written.
pub struct LogBudget {
    buckets: Mutex<Buckets>,
}

/// Returned for a line that may be written: displays as nothing, or as a
/// note of how many lines were left out before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note(u64);

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(
                f,
                " ({n} similar line(s) left out before this one: log rate limit)"
            ),
        }
    }
}

impl Default for LogBudget {
    fn default() -> Self {
        let now = Instant::now();
        LogBudget {
            buckets: Mutex::new(Buckets {
                publishers: Bucket::new(PUBLISHERS_BURST, PUBLISHERS_PER_SECOND, now),
                users: Bucket::new(USERS_BURST, USERS_PER_SECOND, now),
                per_uid: HashMap::new(),
                suppressed_publishers: 0,
                suppressed_users: 0,
            }),
        }
    }
}

impl LogBudget {
    /// May a line about `peer` be written now? `publisher` says whether
    /// the policy counts it as one.
    pub fn allow(&self, peer: &Peer, publisher: bool) -> Option<Note> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let buckets = &mut *buckets;
        if publisher {
            if !buckets.publishers.has_token(now) {
                buckets.suppressed_publishers += 1;
                return None;
            }
            buckets.publishers.take();
            return Some(Note(std::mem::take(&mut buckets.suppressed_publishers)));
        }
        if buckets.per_uid.len() >= MAX_UID_BUCKETS && !buckets.per_uid.contains_key(&peer.uid) {
            // A full bucket carries nothing worth remembering.
            buckets.per_uid.retain(|_, bucket| {
                bucket.refill(now);
                bucket.tokens < bucket.burst
            });
            if buckets.per_uid.len() >= MAX_UID_BUCKETS {
                buckets.suppressed_users += 1;
                return None;
            }
        }
        let own = buckets
            .per_uid
            .entry(peer.uid)
            .or_insert_with(|| Bucket::new(UID_BURST, UID_PER_SECOND, now));
        if !own.has_token(now) || !buckets.users.has_token(now) {
            buckets.suppressed_users += 1;
            return None;
        }
        own.take();
        buckets.users.take();
        Some(Note(std::mem::take(&mut buckets.suppressed_users)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> Peer {
        Peer {
            pid: 1,
            uid,
            gid: uid,
            groups: vec![],
        }
    }

    #[test]
    fn a_flood_is_cut_to_the_burst_and_counted() {
        let budget = LogBudget::default();
        let written = (0..10_000)
            .filter(|_| budget.allow(&peer(1000), false).is_some())
            .count();
        // One uid is held to its own burst (plus what refills meanwhile).
        assert!(written >= UID_BURST as usize && written < UID_BURST as usize + 5);
        // Many uids together are held to the users' burst.
        let written = (0..10_000)
            .filter(|i| budget.allow(&peer(2000 + i), false).is_some())
            .count();
        assert!(written <= USERS_BURST as usize, "{written}");
        // Publishers are not silenced by any of it.
        let note = budget.allow(&peer(0), true).expect("a publisher's line");
        assert_eq!(note, Note(0));
    }

    #[test]
    fn the_next_line_written_counts_what_was_left_out() {
        let budget = LogBudget::default();
        {
            let mut buckets = budget.buckets.lock().unwrap();
            buckets.users.tokens = 0.0;
        }
        assert!(budget.allow(&peer(1), false).is_none());
        assert!(budget.allow(&peer(1), false).is_none());
        budget.buckets.lock().unwrap().users.tokens = 5.0;
        let note = budget.allow(&peer(1), false).unwrap();
        assert_eq!(note, Note(2));
        assert!(note.to_string().contains("2 similar line(s) left out"));
    }
}
