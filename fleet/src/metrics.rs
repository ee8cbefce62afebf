//! The agent's counters, logged when it stops and, with `--metrics-file`,
//! written after every change in Prometheus' text format (the form
//! node_exporter's textfile collector reads).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// One counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Versions pulled from the store and published locally.
    Pulls,
    /// Bytes of those versions.
    PulledBytes,
    /// Pulls that found the content already present locally.
    AlreadyPresent,
    /// Downloads refused because the store's bytes or manifest failed
    /// verification.
    IntegrityFailures,
    /// Versions pushed (manifest written).
    Pushes,
    /// Bytes uploaded as new blobs.
    UploadedBytes,
    /// Pushes whose blob the store already had.
    BlobsAlreadyStored,
    /// Pulled versions removed to make room.
    Evictions,
    /// Manifest checks made by the poll loop.
    Polls,
    /// Of those, answered "not modified".
    PollsUnchanged,
    /// Store requests that failed after object_store's own retries.
    StoreErrors,
    /// Pulls that failed at once, without a download, because their blob
    /// was refused lately (see `refused`).
    RefusedWithoutDownload,
    /// Pulls of a name or content the store does not have.
    NotFound,
}

const ALL: [Counter; 13] = [
    Counter::Pulls,
    Counter::PulledBytes,
    Counter::AlreadyPresent,
    Counter::IntegrityFailures,
    Counter::Pushes,
    Counter::UploadedBytes,
    Counter::BlobsAlreadyStored,
    Counter::Evictions,
    Counter::Polls,
    Counter::PollsUnchanged,
    Counter::StoreErrors,
    Counter::RefusedWithoutDownload,
    Counter::NotFound,
];

impl Counter {
    /// The metric's name, without the `memseal_fleet_` prefix and the
    /// `_total` suffix.
    fn name(self) -> &'static str {
        match self {
            Counter::Pulls => "pulls",
            Counter::PulledBytes => "pulled_bytes",
            Counter::AlreadyPresent => "pulls_already_present",
            Counter::IntegrityFailures => "integrity_failures",
            Counter::Pushes => "pushes",
            Counter::UploadedBytes => "uploaded_bytes",
            Counter::BlobsAlreadyStored => "blobs_already_stored",
            Counter::Evictions => "evictions",
            Counter::Polls => "polls",
            Counter::PollsUnchanged => "polls_unchanged",
            Counter::StoreErrors => "store_errors",
            Counter::RefusedWithoutDownload => "pulls_refused_without_download",
            Counter::NotFound => "pulls_not_found",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Counter::Pulls => "Versions pulled from the store and published locally.",
            Counter::PulledBytes => "Bytes of the versions pulled.",
            Counter::AlreadyPresent => "Pulls that found the content already held locally.",
            Counter::IntegrityFailures => {
                "Downloads refused: the store's bytes or manifest failed verification."
            }
            Counter::Pushes => "Versions pushed to the store.",
            Counter::UploadedBytes => "Bytes uploaded as new blobs.",
            Counter::BlobsAlreadyStored => "Pushes whose blob the store already held.",
            Counter::Evictions => "Pulled versions removed locally to make room.",
            Counter::Polls => "Manifest checks by the poll loop.",
            Counter::PollsUnchanged => "Manifest checks answered 304 Not Modified.",
            Counter::StoreErrors => "Store requests that failed after retries.",
            Counter::RefusedWithoutDownload => {
                "Pulls failed at once because their blob was refused lately."
            }
            Counter::NotFound => "Pulls of a name or content the store does not have.",
        }
    }
}

/// The counters, and where to write them.
#[derive(Debug)]
pub struct Metrics {
    values: [AtomicU64; ALL.len()],
    file: Option<PathBuf>,
}

impl Metrics {
    /// Counters at zero, written to `file` (if any) on every change.
    pub fn new(file: Option<PathBuf>) -> Metrics {
        let metrics = Metrics {
            values: Default::default(),
            file,
        };
        metrics.write();
        metrics
    }

    /// Add `amount` to `counter`.
    pub fn add(&self, counter: Counter, amount: u64) {
        self.values[counter as usize].fetch_add(amount, Ordering::Relaxed);
        self.write();
    }

    /// The current value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize].load(Ordering::Relaxed)
    }

    /// One line for the log: every counter that is not zero.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = ALL
            .iter()
            .filter(|&&c| self.get(c) > 0)
            .map(|&c| format!("{} {}", c.name().replace('_', " "), self.get(c)))
            .collect();
        if parts.is_empty() {
            "nothing happened".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// The Prometheus text exposition of every counter.
    pub fn exposition(&self) -> String {
        let mut text = String::new();
        for counter in ALL {
            let metric = format!("memseal_fleet_{}_total", counter.name());
            let _ = writeln!(text, "# HELP {metric} {}", counter.help());
            let _ = writeln!(text, "# TYPE {metric} counter");
            let _ = writeln!(text, "{metric} {}", self.get(counter));
        }
        text
    }

    /// Write the file by rename, so a collector never reads half of it. A
    /// failure is logged, never fatal: metrics are for people.
    fn write(&self) {
        let Some(file) = &self.file else { return };
        let temporary = file.with_extension("prom.new");
        let result = std::fs::write(&temporary, self.exposition())
            .and_then(|()| std::fs::rename(&temporary, file));
        if let Err(e) = result {
            tracing::warn!("cannot write the metrics file {}: {e}", file.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_exposes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fleet.prom");
        let metrics = Metrics::new(Some(file.clone()));
        metrics.add(Counter::IntegrityFailures, 1);
        metrics.add(Counter::PulledBytes, 4096);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("\nmemseal_fleet_integrity_failures_total 1\n"));
        assert!(text.contains("\nmemseal_fleet_pulled_bytes_total 4096\n"));
        assert!(text.contains("\nmemseal_fleet_pulls_total 0\n"));
        assert_eq!(metrics.summary(), "pulled bytes 4096, integrity failures 1");
    }
}
