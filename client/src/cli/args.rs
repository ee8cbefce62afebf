//! The command line, as clap derives it.

use super::failure::EXIT_STATUS_HELP;
use memseal::proto::message::hash_from_hex;
use memseal::{Hash, Selector};
use std::path::PathBuf;

/// Publish, fetch and inspect sealed, immutable assets held by memseald.
#[derive(Debug, clap::Parser)]
#[command(name = "memseal", version, after_help = EXIT_STATUS_HELP)]
pub struct Cli {
    /// The daemon's socket. Default: /run/memseal/memseald.sock for root;
    /// $XDG_RUNTIME_DIR/memseal/memseald.sock (or /tmp/memseal-UID/memseald.sock)
    /// for other users.
    #[arg(long, global = true, env = "MEMSEAL_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Print results as JSON instead of text (`get` always writes the raw bytes).
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Publish a file, or standard input, as the next version of NAME.
    ///
    /// A regular file (also standard input redirected from one) is handed to
    /// the daemon as a descriptor and copied kernel-side. Anything else (a
    /// pipe, a terminal) is collected in a sealed memfd first, which the
    /// daemon adopts without a copy.
    #[command(after_help = EXIT_STATUS_HELP)]
    Publish(PublishArgs),
    /// Write the bytes of an asset to standard output or a file.
    #[command(after_help = EXIT_STATUS_HELP)]
    Get(GetArgs),
    /// List the latest version of every asset, or of those under PREFIX.
    #[command(after_help = EXIT_STATUS_HELP)]
    Ls(LsArgs),
    /// Show everything known about one version of an asset.
    #[command(after_help = EXIT_STATUS_HELP)]
    Stat(StatArgs),
    /// Remove one version of an asset, or all of its versions.
    #[command(after_help = EXIT_STATUS_HELP)]
    Rm(RmArgs),
    /// Show the daemon's counters and limits.
    #[command(after_help = EXIT_STATUS_HELP)]
    Status,
}

/// Arguments of `memseal publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The asset name, like models/en/tokenizer.json.
    pub name: String,
    /// The file to publish; `-` for standard input.
    #[arg(default_value = "-")]
    pub file: PathBuf,
}

/// Arguments of `memseal get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The asset name.
    pub name: String,
    /// Write to this file (created or truncated) instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Which version.
    #[command(flatten)]
    pub selector: SelectorArgs,
}

/// Arguments of `memseal ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only names that start with this, like models/.
    #[arg(default_value = "")]
    pub prefix: String,
}

/// Arguments of `memseal stat`.
#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// The asset name.
    pub name: String,
    /// Which version.
    #[command(flatten)]
    pub selector: SelectorArgs,
}

/// Arguments of `memseal rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The asset name.
    pub name: String,
    /// Remove only this version; without it, every version goes.
    #[arg(long, value_name = "N")]
    pub version: Option<u64>,
}

/// `--version N` or `--hash HEX`; the latest version without either.
#[derive(Debug, clap::Args)]
pub struct SelectorArgs {
    /// This version number instead of the latest.
    #[arg(long, value_name = "N", conflicts_with = "hash")]
    pub version: Option<u64>,
    /// The kept version with this BLAKE3 hash (64 hex digits).
    #[arg(long, value_name = "HEX", value_parser = parse_hash)]
    pub hash: Option<Hash>,
}

impl SelectorArgs {
    /// The protocol's selector for these flags.
    pub fn selector(&self) -> Selector {
        match (self.version, self.hash) {
            (Some(version), _) => Selector::Version(version),
            (None, Some(hash)) => Selector::Hash(hash),
            (None, None) => Selector::Latest,
        }
    }
}

fn parse_hash(text: &str) -> Result<Hash, String> {
    hash_from_hex(text).ok_or_else(|| {
        format!(
            "expected 64 hexadecimal digits (a full BLAKE3 hash), got {} characters",
            text.len()
        )
    })
}
