//! Turning a pile of timings into the numbers the tables quote.

use serde::Serialize;
use std::time::Duration;

/// The summary of one series of timed operations.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    /// How many operations were timed (warm-up excluded).
    pub samples: usize,
    /// Median latency, in microseconds.
    pub p50_us: f64,
    /// 99th-percentile latency, in microseconds.
    pub p99_us: f64,
    /// Operations completed per second of wall-clock time, over all clients.
    pub per_sec: f64,
}

impl Summary {
    /// Summarise `latencies` of operations that took `wall` in total, all
    /// clients together. `latencies` is sorted in place.
    pub fn new(latencies: &mut [Duration], wall: Duration) -> Summary {
        latencies.sort_unstable();
        let per_sec = if wall.is_zero() {
            0.0
        } else {
            latencies.len() as f64 / wall.as_secs_f64()
        };
        Summary {
            samples: latencies.len(),
            p50_us: micros(percentile(latencies, 50.0)),
            p99_us: micros(percentile(latencies, 99.0)),
            per_sec,
        }
    }

    /// Summarise operations run one after another: the wall-clock time is
    /// their sum.
    pub fn sequential(latencies: &mut [Duration]) -> Summary {
        let wall = latencies.iter().sum();
        Summary::new(latencies, wall)
    }
}

/// The nearest-rank percentile of sorted samples; zero when there are none.
fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `numerator / denominator`, or `None` when the denominator is zero.
pub fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0).then(|| numerator / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let summary = Summary::sequential(&mut samples);
        assert_eq!(summary.samples, 100);
        assert_eq!(summary.p50_us.round(), 50.0);
        assert_eq!(summary.p99_us.round(), 99.0);
        // 100 operations in 5050 us.
        assert!((summary.per_sec - 100.0 / 0.005050).abs() < 1.0);
    }

    #[test]
    fn empty_series_is_all_zero() {
        let summary = Summary::sequential(&mut []);
        assert_eq!(summary.samples, 0);
        assert_eq!(summary.p50_us, 0.0);
        assert_eq!(summary.per_sec, 0.0);
    }
}
