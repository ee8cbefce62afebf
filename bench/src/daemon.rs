//! Running the real `memseald` for the measurements, through the
//! workspace's one launcher (`memseal_tests::Daemon`).
//!
//! Each daemon gets its own socket, an empty settings file and an empty
//! assets directory (or one the caller fills), so nothing on the host
//! changes what is measured. It is given a notification socket, exactly as
//! a service manager would, which tells when it is ready.

use std::io;
use std::path::{Path, PathBuf};

pub use memseal_tests::Daemon;

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The `memseald` executable.
    pub binary: PathBuf,
    /// Budget of distinct content (`--max-total-bytes`).
    pub max_total_bytes: u64,
    /// Largest asset (`--max-asset-size`).
    pub max_asset_size: u64,
}

/// Start a daemon listening on `dir`/memseald.sock (`dir` created here), serving
/// the assets declared in `assets_dir` if given (else an empty directory),
/// and wait until it reports READY=1.
pub fn start(config: &DaemonConfig, dir: &Path, assets_dir: Option<&Path>) -> io::Result<Daemon> {
    start_with(config, dir, assets_dir, &[])
}

/// [`start`], with `more_args` after the configuration's own.
pub fn start_with(
    config: &DaemonConfig,
    dir: &Path,
    assets_dir: Option<&Path>,
    more_args: &[String],
) -> io::Result<Daemon> {
    let empty_assets = dir.join("assets.d");
    std::fs::create_dir_all(&empty_assets)?;
    let assets = assets_dir.unwrap_or(&empty_assets);
    Daemon::builder()
        .binary(&config.binary)
        .ready_by_notification()
        // Warnings, and the line in which each fill of a memfd says where
        // its time went (read by the publish table).
        .env("MEMSEAL_LOG", "warn,memseal::stages=debug")
        .args([
            "--assets-dir".to_owned(),
            assets.display().to_string(),
            "--max-total-bytes".to_owned(),
            config.max_total_bytes.to_string(),
            "--max-asset-size".to_owned(),
            config.max_asset_size.to_string(),
        ])
        .args(more_args.iter().cloned())
        .try_start_in(dir)
}

/// The number logged after `key` (like `took_us=`) in one line of a
/// daemon's log.
pub fn log_number(line: &str, key: &str) -> Option<u64> {
    let start = line.find(key)? + key.len();
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}
