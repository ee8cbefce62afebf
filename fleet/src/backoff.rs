//! Waiting between attempts, and spreading periodic work, with jitter.
//!
//! A thousand agents that lost the same store at the same moment must not
//! come back at the same moment, and a thousand agents polling every 30
//! seconds must not poll in step. Every delay here is therefore drawn at
//! random from a range rather than fixed.

use std::time::Duration;

/// Exponential backoff with jitter: each delay is drawn from the upper half
/// of a window that doubles after every failure, up to a ceiling.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    window: Duration,
    max: Duration,
}

impl Backoff {
    /// Start with delays around `initial`, never more than `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            window: initial,
            max,
        }
    }

    /// The delay before the next attempt; each call widens the window.
    pub fn next_delay(&mut self) -> Duration {
        let delay = between(self.window / 2, self.window);
        self.window = (self.window * 2).min(self.max);
        delay
    }

    /// Back to the shortest delays, after a success.
    pub fn reset(&mut self) {
        self.window = self.initial;
    }
}

impl Default for Backoff {
    /// From about 200 ms up to 30 s between attempts.
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
    }
}

/// `interval`, moved at random by up to a fifth either way: the poll
/// interval each agent actually waits.
pub fn jittered(interval: Duration) -> Duration {
    between(interval.mul_f64(0.8), interval.mul_f64(1.2))
}

/// A random moment within the first `interval`: when an agent that just
/// started makes its first check, so that a fleet that boots at once does
/// not poll at once.
pub fn first_offset(interval: Duration) -> Duration {
    between(Duration::ZERO, interval)
}

/// A duration drawn uniformly from `low..=high`.
fn between(low: Duration, high: Duration) -> Duration {
    if high <= low {
        return low;
    }
    low + (high - low).mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_ceiling_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let windows = [100, 200, 400, 800, 800];
        for window in windows {
            let delay = backoff.next_delay();
            let window = Duration::from_millis(window);
            assert!(
                delay >= window / 2 && delay <= window,
                "{delay:?} in {window:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..1000 {
            let delay = jittered(Duration::from_secs(30));
            assert!(delay >= Duration::from_secs(24) && delay <= Duration::from_secs(36));
        }
    }
}
