//! The command line: `memseal-fleet run | push | pull | ls`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
The store:
  --remote s3://BUCKET/PREFIX names the bucket and the prefix under which the
  fleet keeps its objects: PREFIX/blobs/<blake3> (content, written once) and
  PREFIX/names/<name> (a JSON manifest per name). FLEET.md describes them.
  Endpoint and credentials come from the environment, as for other S3 tools:
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN
    AWS_REGION             (default us-east-1)
    AWS_ENDPOINT_URL       another S3-compatible store (MinIO, Ceph RGW, R2, ...)
    AWS_ALLOW_HTTP=true    permit a plain-HTTP endpoint, such as a test server

Environment:
  MEMSEAL_SOCKET            memseald's socket (as --socket)
  MEMSEAL_FLEET_REMOTE      the store (as --remote)
  MEMSEAL_FLEET_STATE_DIR   the state directory (as --state-dir)
  MEMSEAL_LOG               log filter, e.g. info, debug (default: info for
                            run, warn for the one-shot commands)

Exit status:
  0 success; 1 other error; 2 usage; 3 cannot reach memseald; 4 not found (in
  the store, or locally for push); 5 permission denied by memseald; 6 refused
  by memseald (too large, over budget, invalid name) or no room even after
  evicting pulled versions; 7 refused: the store's bytes or manifest failed
  verification, nothing was published; 8 the store failed or refused the
  set-up (credentials, bucket).";

/// memseal-fleet: share a node's memseald assets through an S3-compatible
/// bucket, verified by BLAKE3, published without copying.
#[derive(Debug, Parser)]
#[command(name = "memseal-fleet", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// memseald's socket [default: as the memseal command finds it]
    #[arg(long, global = true, env = "MEMSEAL_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// The bucket and prefix, s3://BUCKET/PREFIX
    #[arg(long, global = true, env = "MEMSEAL_FLEET_REMOTE", value_name = "URL")]
    pub remote: Option<String>,

    /// Where the agent remembers what it pulled; one per daemon [default:
    /// $STATE_DIRECTORY, /var/lib/memseal-fleet for root, else
    /// ~/.local/state/memseal-fleet]
    #[arg(
        long,
        global = true,
        env = "MEMSEAL_FLEET_STATE_DIR",
        value_name = "DIR"
    )]
    pub state_dir: Option<PathBuf>,

    /// Write the agent's counters to FILE in Prometheus' text format after
    /// every change
    #[arg(long, global = true, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,

    /// Requests in flight at once for one download or upload
    #[arg(long, global = true, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub connections: u16,

    /// Bytes per ranged GET (rounded up to a power of two) and per uploaded
    /// part (at least 5MiB), e.g. 8M, 64MiB
    #[arg(long, global = true, value_name = "BYTES", default_value = "8MiB",
          value_parser = parse_size)]
    pub piece_size: u64,

    /// Cap on the download rate in bytes per second, shared by every
    /// download (e.g. 100M) [default: no cap]
    #[arg(long, global = true, value_name = "BYTES", value_parser = parse_size)]
    pub max_rate: Option<u64>,

    /// How long a transfer keeps retrying a store that makes no progress
    /// (e.g. 30s, 5m)
    #[arg(long, global = true, value_name = "DURATION", default_value = "5m",
          value_parser = parse_duration)]
    pub retry_for: Duration,

    /// How long `run` waits before it downloads again a blob it refused
    /// because its bytes failed verification; the wait doubles each time
    /// the same blob is refused again, up to an hour. Until then, pulls of
    /// it fail at once, after reading the manifest (e.g. 30s, 10m)
    #[arg(long, global = true, value_name = "DURATION", default_value = "5m",
          value_parser = parse_duration)]
    pub retry_refused_after: Duration,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: supply missing names, push local publishes, keep
    /// pulled names fresh.
    ///
    /// Pull-through: the agent registers with memseald as the resolver of
    /// the --pull prefixes (every name if none is given), so that a client's
    /// fetch of a name this node lacks waits for one download from the
    /// store instead of failing, however many clients ask at once. A name
    /// the store does not have fails at once (not found), and so do a hash
    /// the name's manifest does not name and a version asked for by
    /// number; a store that cannot be reached, or a download refused as
    /// corrupt, fails the waiting clients with "unavailable" and the
    /// reason, and a refused blob is not downloaded again before
    /// --retry-refused-after, whoever asks. Clients wait at most memseald's resolve_timeout (30 s by
    /// default); a longer download still finishes, for the next fetch.
    /// Resolving a prefix needs the right to publish every name under it
    /// (the empty prefix: any name).
    ///
    /// Every version published locally under a --push prefix is uploaded
    /// (its blob unless the store has it, then its manifest). Every name
    /// this node pulled under a --pull prefix (all pulled names if none is
    /// given) has its manifest re-checked every --poll, with a conditional
    /// GET; a new version is pulled and published, so local watchers see
    /// it as an ordinary publish. Stops on SIGTERM or SIGINT.
    Run(RunArgs),
    /// Push the latest local version of NAME to the store.
    Push {
        /// The asset name
        name: String,
    },
    /// Pull NAME from the store into memseald.
    ///
    /// Without --hash, the version the store's manifest names; with it,
    /// exactly that content (pinned: `run` never replaces it). The bytes
    /// are verified against their BLAKE3 hash before anything is
    /// published.
    Pull {
        /// The asset name
        name: String,
        /// Pull exactly this content (64 hex digits of BLAKE3)
        #[arg(long, value_name = "HEX")]
        hash: Option<String>,
    },
    /// List the names the store holds manifests for.
    Ls {
        /// Only names that start with PREFIX
        #[arg(default_value = "")]
        prefix: String,
        /// One JSON manifest per line instead of a table
        #[arg(long)]
        json: bool,
    },
}

/// `memseal-fleet run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pull the names local clients miss under PREFIX, and keep fresh the
    /// pulled names there (repeatable) [default: every name, which needs
    /// the right to publish any name]
    #[arg(long, value_name = "PREFIX")]
    pub pull: Vec<String>,

    /// Push every version published locally under PREFIX (repeatable; ""
    /// for every name)
    #[arg(long, value_name = "PREFIX")]
    pub push: Vec<String>,

    /// How often to re-check the manifests of pulled names; each wait is
    /// moved at random by up to a fifth (e.g. 30s, 2m, 500ms)
    #[arg(long, value_name = "DURATION", default_value = "30s",
          value_parser = parse_duration)]
    pub poll: Duration,
}

/// `500ms`, `30s`, `2m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("'{text}' is not a duration ({e}; examples: 500ms, 30s, 2m)"))
}

/// `4096`, `64K`, `8M`, `8MiB`, `1.5G`: binary multiples.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("'{text}' is not a size (examples: 4096, 64K, 8MiB, 1.5G)");
    let lower = text.trim().to_ascii_lowercase();
    let number_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(number_end);
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(invalid()),
    };
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = Cli::try_parse_from([
            "memseal-fleet",
            "run",
            "--socket",
            "/s",
            "--remote",
            "s3://b/p",
            "--pull",
            "models/",
            "--pull",
            "dicts/",
            "--push",
            "local/",
            "--poll",
            "2s",
        ])
        .unwrap();
        assert_eq!(cli.global.remote.as_deref(), Some("s3://b/p"));
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.pull, ["models/", "dicts/"]);
        assert_eq!(run.push, ["local/"]);
        assert_eq!(run.poll, Duration::from_secs(2));
    }
}
