//! Per-user budgets on how often something a client causes may happen:
//! the log lines about its requests, and the pulls it starts through a
//! resolver.
//!
//! A client can send thousands of requests a second. A log line for each
//! (published, removed, denied, dropped) would let any local user fill the
//! journal and push everything else out of it; an announcement to the
//! resolver for each missing name would let any local user make the fleet
//! agent ask the object store for name after name. So both go through a
//! [`RateBudget`]: token buckets, one per uid and one for all users who are
//! not publishers together, and one for publishers (or none: publishers
//! are trusted with pulls), so that no flood by users can use up what the
//! publishers need. What is over budget does not happen and is counted;
//! the next that happens carries the count (a log line says how many
//! similar lines were left out before it).
//!
//! With the rates below ([`LOG_LINES`], [`PULLS`]), all non-publishers
//! together write at most 100 lines at once and 10 a second after that,
//! whatever they send, and start at most 512 pulls at once and 64 a
//! second; SECURITY.md's table of budgets lists them all.

use crate::policy::Peer;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

/// So many at once, then so many a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub burst: f64,
    pub per_second: f64,
}

/// The rates of one budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Each uid that is not a publisher.
    pub per_uid: Rate,
    /// All of those together.
    pub users: Rate,
    /// Publishers together; None: not limited.
    pub publishers: Option<Rate>,
}

/// Log lines about clients' requests.
pub const LOG_LINES: Rates = Rates {
    per_uid: Rate {
        burst: 20.0,
        per_second: 2.0,
    },
    users: Rate {
        burst: 100.0,
        per_second: 10.0,
    },
    // Generous, since publishers are trusted, but still bounded.
    publishers: Some(Rate {
        burst: 1000.0,
        per_second: 100.0,
    }),
};

/// Pulls started through a resolver (a fetch, a stat or a batch item of a
/// name the daemon lacks, which no pull is under way for). A burst holds
/// two batches of the most items one may name (64).
pub const PULLS: Rates = Rates {
    per_uid: Rate {
        burst: 128.0,
        per_second: 16.0,
    },
    users: Rate {
        burst: 512.0,
        per_second: 64.0,
    },
    publishers: None,
};

/// Per-uid buckets kept at most; full ones are forgotten first.
const MAX_UID_BUCKETS: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    rate: Rate,
    updated: Instant,
}

impl Bucket {
    fn new(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            rate,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
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
    publishers: Option<Bucket>,
    users: Bucket,
    per_uid: HashMap<u32, Bucket>,
    /// Refusals since the last allowance, per class.
    refused_publishers: u64,
    refused_users: u64,
}

/// One budget: decides what may happen now.
pub struct RateBudget {
    rates: Rates,
    buckets: Mutex<Buckets>,
}

/// Returned when something may happen: displays as nothing, or as a note
/// of how many similar log lines were left out before it.
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

impl RateBudget {
    /// Full buckets at `rates`.
    pub fn new(rates: Rates) -> RateBudget {
        let now = Instant::now();
        RateBudget {
            rates,
            buckets: Mutex::new(Buckets {
                publishers: rates.publishers.map(|rate| Bucket::new(rate, now)),
                users: Bucket::new(rates.users, now),
                per_uid: HashMap::new(),
                refused_publishers: 0,
                refused_users: 0,
            }),
        }
    }

    /// May it happen for `peer` now? `publisher` says whether the policy
    /// counts it as one.
    pub fn allow(&self, peer: &Peer, publisher: bool) -> Option<Note> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let buckets = &mut *buckets;
        if publisher {
            let Some(bucket) = &mut buckets.publishers else {
                return Some(Note(0));
            };
            if !bucket.has_token(now) {
                buckets.refused_publishers += 1;
                return None;
            }
            bucket.take();
            return Some(Note(std::mem::take(&mut buckets.refused_publishers)));
        }
        if buckets.per_uid.len() >= MAX_UID_BUCKETS && !buckets.per_uid.contains_key(&peer.uid) {
            // A full bucket carries nothing worth remembering.
            buckets.per_uid.retain(|_, bucket| {
                bucket.refill(now);
                bucket.tokens < bucket.rate.burst
            });
            if buckets.per_uid.len() >= MAX_UID_BUCKETS {
                buckets.refused_users += 1;
                return None;
            }
        }
        let own = buckets
            .per_uid
            .entry(peer.uid)
            .or_insert_with(|| Bucket::new(self.rates.per_uid, now));
        if !own.has_token(now) || !buckets.users.has_token(now) {
            buckets.refused_users += 1;
            return None;
        }
        own.take();
        buckets.users.take();
        Some(Note(std::mem::take(&mut buckets.refused_users)))
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
        let budget = RateBudget::new(LOG_LINES);
        let written = (0..10_000)
            .filter(|_| budget.allow(&peer(1000), false).is_some())
            .count();
        // One uid is held to its own burst (plus what refills meanwhile).
        let burst = LOG_LINES.per_uid.burst as usize;
        assert!(written >= burst && written < burst + 5);
        // Many uids together are held to the users' burst.
        let written = (0..10_000)
            .filter(|i| budget.allow(&peer(2000 + i), false).is_some())
            .count();
        assert!(written <= LOG_LINES.users.burst as usize, "{written}");
        // Publishers are not silenced by any of it.
        let note = budget.allow(&peer(0), true).expect("a publisher's line");
        assert_eq!(note, Note(0));
    }

    #[test]
    fn the_next_line_written_counts_what_was_left_out() {
        let budget = RateBudget::new(LOG_LINES);
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

    #[test]
    fn publishers_may_start_any_number_of_pulls() {
        let budget = RateBudget::new(PULLS);
        let started = (0..10_000)
            .filter(|_| budget.allow(&peer(1000), false).is_some())
            .count();
        assert!((128..133).contains(&started), "{started}");
        assert!((0..10_000).all(|_| budget.allow(&peer(0), true).is_some()));
    }
}
