//! Blobs whose bytes failed verification, remembered for a while so that
//! asking for them again does not download them again.
//!
//! A blob the agent refused (its bytes hash to something else, its size is
//! not the manifest's, the store sent too much, or memseald hashed the
//! adopted memfd differently) cost a whole download. It stays bad until
//! someone repairs the store, and meanwhile anyone can ask for it again:
//! under pull-through every fetch of its name by any local user would be
//! another download of the same bad bytes, and so would every poll. So a
//! refused blob is remembered by its hash, and a pull of it fails at once,
//! after its manifest was read but before a byte of the blob is asked for,
//! until its wait is over. The first wait is `--retry-refused-after`; each
//! refusal of the same blob after a wait doubles it, up to
//! [`LONGEST_WAIT`]. A name whose manifest is repointed at other content is
//! pulled at once, since the memory is of content, not of names. The
//! memory lives as long as the process: a one-shot `memseal-fleet pull`
//! starts with none, which is how an operator retries at once.

use memseal::Hash;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most blobs remembered. Each entry was paid for by a whole download,
/// so the limit is reached only by a store full of bad blobs; the one
/// whose wait ends first is forgotten to make room.
pub const MOST_REMEMBERED: usize = 1024;

/// However often a blob is refused again, it is tried at least this often.
pub const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// The refused blobs, shared by every pull of one agent.
#[derive(Debug)]
pub struct RefusedBlobs {
    first_wait: Duration,
    refused: Mutex<HashMap<Hash, Refusal>>,
}

/// Why and until when one blob is not downloaded.
#[derive(Debug, Clone)]
struct Refusal {
    /// What was wrong with its bytes, in words.
    problem: String,
    /// When it was last refused.
    at: Instant,
    /// How long after `at` it may be downloaded again.
    wait: Duration,
}

/// A pull that is not tried, because its blob was refused lately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StillRefused {
    /// What was wrong with its bytes the last time.
    pub problem: String,
    /// How long ago that was.
    pub ago: Duration,
    /// How long until it is tried again.
    pub left: Duration,
}

impl RefusedBlobs {
    /// None yet; a refused blob is first tried again after `first_wait`.
    pub fn new(first_wait: Duration) -> RefusedBlobs {
        RefusedBlobs {
            first_wait,
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `hash` may not be downloaded yet, and why.
    pub fn check(&self, hash: &Hash) -> Option<StillRefused> {
        self.check_at(hash, Instant::now())
    }

    /// Remember that the bytes of `hash` were refused for `problem`.
    pub fn refuse(&self, hash: Hash, problem: String) {
        self.refuse_at(hash, problem, Instant::now());
    }

    /// Forget `hash`: its bytes were verified after all (repaired).
    pub fn forget(&self, hash: &Hash) {
        self.lock().remove(hash);
    }

    fn check_at(&self, hash: &Hash, now: Instant) -> Option<StillRefused> {
        let refused = self.lock();
        let refusal = refused.get(hash)?;
        let ago = now.saturating_duration_since(refusal.at);
        let left = refusal
            .wait
            .checked_sub(ago)
            .filter(|left| !left.is_zero())?;
        Some(StillRefused {
            problem: refusal.problem.clone(),
            ago,
            left,
        })
    }

    fn refuse_at(&self, hash: Hash, problem: String, now: Instant) {
        let mut refused = self.lock();
        let wait = match refused.get(&hash) {
            // Refused again once its wait was over: wait twice as long.
            Some(earlier) if now >= earlier.at + earlier.wait => {
                (earlier.wait * 2).min(LONGEST_WAIT)
            }
            // Two downloads of the same content (under two names) that
            // ran at once both failed: one refusal.
            Some(earlier) => earlier.wait,
            None => self.first_wait.min(LONGEST_WAIT),
        };
        if refused.len() >= MOST_REMEMBERED && !refused.contains_key(&hash) {
            let soonest = refused
                .iter()
                .min_by_key(|(_, refusal)| refusal.at + refusal.wait)
                .map(|(hash, _)| *hash);
            if let Some(soonest) = soonest {
                refused.remove(&soonest);
            }
        }
        refused.insert(
            hash,
            Refusal {
                problem,
                at: now,
                wait,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hash, Refusal>> {
        // Nothing panics while holding it; a poisoned map is still whole.
        self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_refused_blob_waits_and_each_new_refusal_doubles_the_wait() {
        let blobs = RefusedBlobs::new(MINUTE);
        let start = Instant::now();
        assert_eq!(blobs.check_at(&[1; 32], start), None);

        blobs.refuse_at([1; 32], "bad bytes".into(), start);
        let still = blobs.check_at(&[1; 32], start + 10 * Duration::from_secs(1));
        assert_eq!(
            still,
            Some(StillRefused {
                problem: "bad bytes".into(),
                ago: Duration::from_secs(10),
                left: Duration::from_secs(50),
            })
        );
        assert_eq!(blobs.check_at(&[2; 32], start), None, "other content");
        assert_eq!(
            blobs.check_at(&[1; 32], start + MINUTE),
            None,
            "tried again"
        );

        // Bad again: two minutes, then four, up to the ceiling.
        blobs.refuse_at([1; 32], "still bad".into(), start + MINUTE);
        assert!(blobs.check_at(&[1; 32], start + 2 * MINUTE).is_some());
        assert_eq!(blobs.check_at(&[1; 32], start + 3 * MINUTE), None);
        let mut at = start + 3 * MINUTE;
        for _ in 0..10 {
            blobs.refuse_at([1; 32], "still bad".into(), at);
            at += LONGEST_WAIT;
        }
        let last = at - LONGEST_WAIT;
        assert_eq!(
            blobs.check_at(&[1; 32], last).map(|still| still.left),
            Some(LONGEST_WAIT)
        );

        blobs.forget(&[1; 32]);
        assert_eq!(blobs.check_at(&[1; 32], last), None, "repaired");
    }

    #[test]
    fn the_memory_is_bounded_and_drops_the_wait_that_ends_first() {
        let blobs = RefusedBlobs::new(MINUTE);
        let start = Instant::now();
        for i in 0..MOST_REMEMBERED {
            let mut hash = [0; 32];
            hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
            blobs.refuse_at(hash, "bad".into(), start + Duration::from_secs(i as u64));
        }
        blobs.refuse_at([0xff; 32], "bad".into(), start + MINUTE);
        assert_eq!(blobs.lock().len(), MOST_REMEMBERED);
        assert_eq!(blobs.check_at(&[0; 32], start), None, "the first to end");
        assert!(blobs.check_at(&[0xff; 32], start + MINUTE).is_some());
    }
}
