//! `memseal`, the command line of memseald: publish, fetch, list, inspect
//! and remove assets.
//!
//! ```text
//! memseal [--socket PATH] [--json] publish NAME [FILE|-]
//! memseal [--socket PATH] get NAME [-o FILE] [--version N | --hash HEX]
//! memseal [--socket PATH] [--json] ls [PREFIX]
//! memseal [--socket PATH] [--json] stat NAME [--version N | --hash HEX]
//! memseal [--socket PATH] [--json] rm NAME [--version N]
//! memseal [--socket PATH] [--json] status
//! memseal [--socket PATH] exec --asset NAME[=VAR]... -- COMMAND [ARGS]
//! memseal [--socket PATH] [--json] watch [PREFIX]
//! memseal completions SHELL
//! memseal man
//! ```
//!
//! Each run parses the command line ([`args`]), connects as the library
//! does by default (the socket it chooses, the daemon's user it trusts for
//! that socket; `--socket` and `--server-uid` say otherwise), runs one
//! command module, and maps any failure to a message on stderr,
//! `memseal: <message>`, and an exit status ([`failure`] has the table;
//! usage errors exit with 2, from clap).
//!
//! Results go to stdout through [`output`]: text for people, or JSON with
//! `--json`, where hashes are 64 hex digits and times are milliseconds since
//! the Unix epoch.

// The doc comments of `args` are also the `--help` text clap prints, where
// `MEMSEAL_FD_<VAR>` is plain text, not an HTML tag.
#![allow(rustdoc::invalid_html_tags)]

mod args;
mod exec;
mod failure;
mod format;
mod generate;
mod get;
mod ls;
mod memfd;
mod output;
mod progress;
mod publish;
mod rm;
mod stat;
mod status;
mod watch;

use args::{Cli, Command};
use clap::Parser;
use failure::Failure;
use memseal::{Client, ConnectOptions};
use output::Output;
use std::process::ExitCode;

/// Parse the command line, run the command, and give the exit status.
fn main() -> ExitCode {
    // On a usage error clap prints its message and exits with status 2.
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let mut out = Output::new(cli.json);
    // The commands that need no daemon, or take the connection over.
    match &cli.command {
        Command::Completions(args) => return generate::completions(args, &mut out),
        Command::Man => return generate::man(&mut out),
        Command::Exec(args) => return exec::run(connect(cli)?, args),
        Command::Watch(args) => return watch::run(connect(cli)?, args, &mut out),
        _ => {}
    }
    let mut client = connect(cli)?;
    match &cli.command {
        Command::Publish(args) => publish::run(&mut client, args, &mut out),
        Command::Get(args) => get::run(&mut client, args, &mut out),
        Command::Ls(args) => ls::run(&mut client, args, &mut out),
        Command::Stat(args) => stat::run(&mut client, args, &mut out),
        Command::Rm(args) => rm::run(&mut client, args, &mut out),
        Command::Status => status::run(&mut client, &mut out),
        Command::Exec(_) | Command::Watch(_) | Command::Completions(_) | Command::Man => {
            unreachable!("handled above")
        }
    }
}

fn connect(cli: &Cli) -> Result<Client, Failure> {
    let mut options =
        ConnectOptions::new().client_name(concat!("memseal-cli/", env!("CARGO_PKG_VERSION")));
    if let Some(uid) = cli.server_uid {
        options = options.expect_server_uid(uid);
    }
    if let Some(socket) = &cli.socket {
        options = options.socket(socket);
    }
    Ok(options.connect()?)
}
