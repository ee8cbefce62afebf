//! Caps on a rate: the agent's download rate (`--max-rate`), shared by
//! every piece of every download, so that a node pulling a large version
//! leaves room on its link for the work it serves; and the lines the agent
//! writes about what local clients ask for, so that no local user can fill
//! the journal by asking in a loop.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Paces amounts (bytes, lines) to at most `per_second`, letting a burst
/// of `burst`'s worth run ahead of the rate.
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    burst: Duration,
    /// When the amounts admitted so far will have been "spent" at the rate.
    next_free: Mutex<Instant>,
}

/// How far ahead of the rate a download may run: one second's worth.
const DOWNLOAD_BURST: Duration = Duration::from_secs(1);

impl RateLimit {
    /// A download limit of `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: u64) -> RateLimit {
        RateLimit::with_burst(bytes_per_second.max(1) as f64, DOWNLOAD_BURST)
    }

    /// A limit of `per_second` (more than 0; 0.1 is six a minute) that
    /// lets `burst`'s worth through at once.
    pub fn with_burst(per_second: f64, burst: Duration) -> RateLimit {
        RateLimit {
            per_second: per_second.max(f64::MIN_POSITIVE),
            burst,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Wait until `amount` more may go through.
    pub async fn admit(&self, amount: usize) {
        let wait = {
            let mut next_free = self.lock();
            let now = Instant::now();
            *next_free = (*next_free).max(now) + self.cost(amount);
            next_free.saturating_duration_since(now + self.burst)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Let `amount` more through if it may go now, without waiting; false
    /// (and nothing counted) if it would have to wait.
    pub fn try_admit(&self, amount: usize) -> bool {
        let mut next_free = self.lock();
        let now = Instant::now();
        let after = (*next_free).max(now) + self.cost(amount);
        if after > now + self.burst {
            return false;
        }
        *next_free = after;
        true
    }

    fn cost(&self, amount: usize) -> Duration {
        Duration::from_secs_f64(amount as f64 / self.per_second)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.next_free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_through_at_once_and_then_the_rate() {
        // 2 a second, 10 seconds' worth at once: 20 lines.
        let started = Instant::now();
        let lines = RateLimit::with_burst(2.0, Duration::from_secs(10));
        let admitted = (0..100).filter(|_| lines.try_admit(1)).count();
        assert_eq!(admitted, 20);
        std::thread::sleep(Duration::from_millis(600));
        let more = (0..100).filter(|_| lines.try_admit(1)).count();
        let earned = 2.0 * started.elapsed().as_secs_f64();
        assert!(more >= 1, "one more after half a second");
        assert!(more as f64 <= earned, "{more} more in {earned} lines' time");
    }
}
