//! `memseal-fleet`: see the library's documentation, or `memseal-fleet --help`.

#![deny(unsafe_code)]

use clap::Parser;
use memseal_fleet::cli::{Cli, Command};
use memseal_fleet::commands::execute;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Run(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("memseal-fleet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memseal-fleet: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs go to stderr, filtered by `MEMSEAL_LOG`: `info` by default for the
/// agent, `warn` for the one-shot commands, whose results go to stdout.
/// Under systemd, journald adds its own timestamps, so ours are left out.
fn init_logging(agent: bool) {
    let default = if agent { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("MEMSEAL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
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
