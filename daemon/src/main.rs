//! The `memseald` executable: parse flags, set up logging, run the daemon.

use clap::Parser;
use memseal_daemon::config::{Args, Config};
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let config = match Config::resolve(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("memseald: {e}");
            return ExitCode::from(2);
        }
    };
    match memseal_daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("memseald: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `MEMSEAL_LOG` (default `info`). Under
/// systemd, journald adds its own timestamps, so ours are left out.
fn init_logging() {
    let filter = EnvFilter::try_from_env("MEMSEAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
