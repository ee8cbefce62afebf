//! A cap on the agent's download rate (`--max-rate`), shared by every
//! piece of every download, so that a node pulling a large version leaves
//! room on its link for the work it serves.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Paces byte counts to at most `bytes_per_second`.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_second: u64,
    /// When the bytes admitted so far will have been "spent" at the rate.
    next_free: Mutex<Instant>,
}

/// How far ahead of the rate a burst may run: one second's worth.
const BURST: Duration = Duration::from_secs(1);

impl RateLimit {
    /// A limit of `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: u64) -> RateLimit {
        RateLimit {
            bytes_per_second: bytes_per_second.max(1),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Wait until `bytes` more may go through.
    pub async fn admit(&self, bytes: usize) {
        let wait = {
            let mut next_free = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
            *next_free = (*next_free).max(now) + cost;
            next_free.saturating_duration_since(now + BURST)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}
