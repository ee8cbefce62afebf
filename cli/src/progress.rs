//! Progress bars for transfers large enough to wait for.
//!
//! Drawn on standard error, and only when it is a terminal: a script that
//! captures the output, or a pipe, sees nothing extra.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Below this many bytes a transfer is over before a bar would be useful.
const WORTH_SHOWING: u64 = 32 << 20;

/// A progress bar, or nothing when it should not be drawn.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar for `total` bytes, labelled `what`.
    pub fn bytes(total: u64, what: &str) -> Progress {
        if !wanted(total) {
            return Progress(None);
        }
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        Progress(Some(bar))
    }

    /// A spinner for work of `total` bytes whose progress cannot be seen
    /// (the daemon copying a file), labelled `what`.
    pub fn waiting(total: u64, what: &str) -> Progress {
        if !wanted(total) {
            return Progress(None);
        }
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress(Some(bar))
    }

    /// Count `bytes` more as done.
    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(bytes);
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

fn wanted(total: u64) -> bool {
    total >= WORTH_SHOWING && std::io::stderr().is_terminal()
}
