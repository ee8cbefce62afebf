//! The command line, as clap derives it.

use crate::failure::EXIT_STATUS_HELP;
use memseal::proto::message::hash_from_hex;
use memseal::{Hash, Selector};
use std::ffi::OsString;
use std::path::PathBuf;

/// Publish, fetch and inspect sealed, immutable assets held by memseald.
#[derive(Debug, clap::Parser)]
#[command(name = "memseal", version, after_help = EXIT_STATUS_HELP)]
pub struct Cli {
    /// The daemon's socket. Default: /run/memseal/memseald.sock for root;
    /// for other users their own daemon's socket,
    /// $XDG_RUNTIME_DIR/memseal/memseald.sock (or
    /// /tmp/memseal-UID/memseald.sock), if it exists and belongs to them,
    /// else the system service's /run/memseal/memseald.sock. `memseal
    /// status` shows which one was reached.
    #[arg(long, global = true, env = "MEMSEAL_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Trust only a daemon running as UID (by default: root or yourself on
    /// a named socket, yourself on your own per-user socket, root or the
    /// service's user on the system socket).
    #[arg(long, global = true, value_name = "UID")]
    pub server_uid: Option<u32>,

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
    /// Run COMMAND with assets open as inherited, read-only descriptors.
    ///
    /// Each asset is fetched and its seals checked, then COMMAND replaces
    /// this process with, for each asset, a descriptor it can map or read
    /// and the variables MEMSEAL_FD_<VAR> (the descriptor number),
    /// MEMSEAL_SIZE_<VAR> (bytes), MEMSEAL_HASH_<VAR> (BLAKE3, hex) and
    /// MEMSEAL_VERSION_<VAR>. VAR defaults to the name in upper case with
    /// every character that is not a letter or digit turned into `_`.
    #[command(after_help = EXEC_HELP)]
    Exec(ExecArgs),
    /// Print one line per change under PREFIX as it happens (JSON with --json).
    #[command(after_help = EXIT_STATUS_HELP)]
    Watch(WatchArgs),
    /// Print a completion script for SHELL to standard output.
    Completions(CompletionsArgs),
    /// Print the man page (roff) to standard output.
    Man,
}

/// The exit statuses of `memseal exec`, which adds two of its own.
const EXEC_HELP: &str = "\
Examples:
  memseal exec --asset models/en.bin -- python3 reader.py
  memseal exec --asset models/en.bin=MODEL --asset vocab.txt -- ./server

Exit status: that of COMMAND once it runs; before that, the statuses of the
other commands, and:
  126  COMMAND could not be run
  127  COMMAND was not found";

/// Arguments of `memseal exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// An asset to pass, optionally with the VAR part of its variables.
    #[arg(long = "asset", value_name = "NAME[=VAR]", required = true, value_parser = parse_asset_spec)]
    pub assets: Vec<AssetSpec>,
    /// The program to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// One `--asset NAME[=VAR]`.
#[derive(Debug, Clone)]
pub struct AssetSpec {
    /// The asset name.
    pub name: String,
    /// The suffix of its environment variables.
    pub var: String,
}

/// Arguments of `memseal watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Only names that start with this; every name without it.
    #[arg(default_value = "")]
    pub prefix: String,
}

/// Arguments of `memseal completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    pub shell: clap_complete::Shell,
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

/// The variable suffix for an asset name: upper case, and every byte that
/// is not an ASCII letter or digit turned into `_` (`models/en.bin` becomes
/// `MODELS_EN_BIN`), as PROTOCOL.md's convention for passing assets says.
pub fn default_var(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                b.to_ascii_uppercase() as char
            } else {
                '_'
            }
        })
        .collect()
}

fn parse_asset_spec(text: &str) -> Result<AssetSpec, String> {
    let (name, var) = match text.split_once('=') {
        Some((name, var)) => (name, var.to_owned()),
        None => (text, default_var(text)),
    };
    if name.is_empty() {
        return Err("the asset name is empty".to_owned());
    }
    if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "'{var}' cannot be part of an environment variable name: use letters, digits and _"
        ));
    }
    Ok(AssetSpec {
        name: name.to_owned(),
        var,
    })
}

fn parse_hash(text: &str) -> Result<Hash, String> {
    hash_from_hex(text).ok_or_else(|| {
        format!(
            "expected 64 hexadecimal digits (a full BLAKE3 hash), got {} characters",
            text.len()
        )
    })
}
