//! Settings: command-line flags over a TOML file over built-in defaults.
//!
//! Every setting can be given in the file (`--config`, default
//! [`DEFAULT_CONFIG`]; a missing default file is not an error, a missing
//! explicit one is) and most also as a flag, which wins.

use clap::Parser;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the system service reads its settings.
pub const DEFAULT_CONFIG: &str = "/etc/memseal/memseald.toml";

/// Where the system service finds assets declared as files.
pub const DEFAULT_ASSETS_DIR: &str = "/etc/memseal/assets.d";

const AFTER_HELP: &str = "\
Sizes accept a suffix: K, M, G, T (powers of 1024), e.g. --max-asset-size 4G.

Environment:
  MEMSEAL_SOCKET   socket path (same as --socket)
  MEMSEAL_LOG      log filter, e.g. info, debug, memseal_daemon=trace (default: info)

Signals:
  SIGTERM, SIGINT  stop accepting, finish requests in flight, remove the socket, exit
  SIGHUP           republish the assets declared in --assets-dir

Under systemd the listening socket and the stored assets come from the
service manager (LISTEN_FDS); see the units in systemd/.";

/// memseald: serve immutable assets as sealed memfds over a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "memseald", version, about, after_help = AFTER_HELP)]
pub struct Args {
    /// Socket to listen on [default: /run/memseal/memseald.sock for root,
    /// $XDG_RUNTIME_DIR/memseal/memseald.sock otherwise]
    #[arg(long, env = "MEMSEAL_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Settings file [default: /etc/memseal/memseald.toml if it exists]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// How many versions of each name to keep [default: 1]
    #[arg(long, value_name = "N")]
    pub keep_versions: Option<u32>,

    /// Largest asset accepted [default: the total budget]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_asset_size: Option<u64>,

    /// Total bytes of distinct content held [default: a quarter of RAM]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_total_bytes: Option<u64>,

    /// Most simultaneous client connections [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most simultaneous connections of one uid other than root and the
    /// daemon's own [default: a quarter of --max-connections]
    #[arg(long, value_name = "N")]
    pub max_connections_per_uid: Option<usize>,

    /// Bytes of kept versions one non-publisher uid may hold
    /// [default: an eighth of the total budget]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_bytes_per_uid: Option<u64>,

    /// Kept versions one non-publisher uid may hold [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_assets_per_uid: Option<u64>,

    /// Distinct assets (memfds) held at most; under systemd keep it below
    /// the unit's FileDescriptorStoreMax [default: 4000]
    #[arg(long, value_name = "N")]
    pub max_blobs: Option<u64>,

    /// Kept versions over all names: bounds the catalog's memory and the
    /// size of its persisted snapshot [default: 200000]
    #[arg(long, value_name = "N")]
    pub max_versions: Option<u64>,

    /// Percentage of max-total-bytes, max-blobs, max-versions and
    /// max-connections that only publishers may use: all other users
    /// together can never take more than the rest [default: 25]
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub publisher_reserve: Option<u8>,

    /// Directory of *.asset files declaring assets to publish at start and
    /// on SIGHUP [default: /etc/memseal/assets.d if it exists]
    #[arg(long, value_name = "DIR")]
    pub assets_dir: Option<PathBuf>,

    /// How long a new client may take to send its complete hello, e.g.
    /// 500ms or 10s; a bare number is milliseconds [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,

    /// How long a frame may take once its first byte arrived, how long a
    /// reply may wait for the client to read it, and how long a streamed
    /// upload may take for each 64 KiB; a bare number is milliseconds
    /// [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub io_timeout: Option<Duration>,

    /// How long a fetch or stat of a missing name waits for the resolver of
    /// its prefix to supply it, when one is connected [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub resolve_timeout: Option<Duration>,

    /// How long a streamed upload may take in all, however steadily it
    /// progresses; its budget reservation is released when it ends
    /// [default: 300s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub upload_timeout: Option<Duration>,
}

/// A size in the config file: a number of bytes or a string with a suffix.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    fn bytes(&self, key: &str) -> Result<u64, String> {
        match self {
            SizeValue::Bytes(n) => Ok(*n),
            SizeValue::Text(text) => parse_size(text).map_err(|e| format!("{key}: {e}")),
        }
    }
}

/// A duration in the config file: milliseconds, or a string such as "10s".
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Millis(u64),
    Text(String),
}

impl DurationValue {
    fn duration(&self, key: &str) -> Result<Duration, String> {
        match self {
            DurationValue::Millis(ms) => Ok(Duration::from_millis(*ms)),
            DurationValue::Text(text) => parse_duration(text).map_err(|e| format!("{key}: {e}")),
        }
    }
}

/// The TOML file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    keep_versions: Option<u32>,
    max_asset_size: Option<SizeValue>,
    max_total_bytes: Option<SizeValue>,
    max_connections: Option<usize>,
    max_connections_per_uid: Option<usize>,
    max_bytes_per_uid: Option<SizeValue>,
    max_assets_per_uid: Option<u64>,
    max_blobs: Option<u64>,
    max_versions: Option<u64>,
    publisher_reserve: Option<u8>,
    assets_dir: Option<PathBuf>,
    handshake_timeout: Option<DurationValue>,
    io_timeout: Option<DurationValue>,
    upload_timeout: Option<DurationValue>,
    resolve_timeout: Option<DurationValue>,
    #[serde(default)]
    policy: PolicyConfig,
}

/// Who may do what; see `crate::policy`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Groups (names or numeric gids) whose members may publish and remove
    /// any name.
    #[serde(default = "default_publisher_groups")]
    pub publisher_groups: Vec<String>,
    /// Extra uids (names or numbers) that may publish and remove any name.
    #[serde(default)]
    pub publisher_users: Vec<String>,
    /// The prefix under which every user may publish and remove their own
    /// assets; `{uid}` is replaced by the peer's uid. Empty disables it.
    #[serde(default = "default_user_prefix")]
    pub user_prefix: String,
}

fn default_publisher_groups() -> Vec<String> {
    vec!["memseal".to_owned()]
}

fn default_user_prefix() -> String {
    "user/{uid}/".to_owned()
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            publisher_groups: default_publisher_groups(),
            publisher_users: Vec::new(),
            user_prefix: default_user_prefix(),
        }
    }
}

/// Resolved settings the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    /// Whether the socket path was given (flag, environment or file)
    /// rather than the built-in default: only then may it be in a shared
    /// sticky directory such as /tmp.
    pub socket_explicit: bool,
    pub keep_versions: usize,
    pub max_asset_size: u64,
    pub max_total_bytes: u64,
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub max_bytes_per_uid: u64,
    pub max_assets_per_uid: u64,
    pub max_blobs: u64,
    pub max_versions: u64,
    /// Percent of each global limit kept for publishers.
    pub publisher_reserve: u8,
    pub assets_dir: Option<PathBuf>,
    pub policy: PolicyConfig,
    /// The settings file that was read, re-read for its policy on reload.
    pub config_file: Option<PathBuf>,
    /// How long a client may take to complete the handshake.
    pub handshake_timeout: Duration,
    /// How long a frame may take once begun, a reply may wait for the
    /// client to read it, and a streamed upload may take per 64 KiB.
    pub io_timeout: Duration,
    /// How long a streamed upload may take in all.
    pub upload_timeout: Duration,
    /// How long a fetch of a missing name waits for its resolver.
    pub resolve_timeout: Duration,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace: Duration,
}

impl Config {
    /// Combine flags, the settings file and defaults.
    pub fn resolve(args: Args) -> Result<Config, String> {
        let config_file = match &args.config {
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        };
        let file = match &config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let max_total_bytes = match (args.max_total_bytes, &file.max_total_bytes) {
            (Some(n), _) => n,
            (None, Some(v)) => v.bytes("max_total_bytes")?,
            (None, None) => default_total_bytes(),
        };
        let max_asset_size = match (args.max_asset_size, &file.max_asset_size) {
            (Some(n), _) => n,
            (None, Some(v)) => v.bytes("max_asset_size")?,
            (None, None) => max_total_bytes,
        };
        let keep_versions = args.keep_versions.or(file.keep_versions).unwrap_or(1);
        if keep_versions == 0 {
            return Err("keep_versions must be at least 1".into());
        }
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(1024);
        if max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        let max_connections_per_uid = args
            .max_connections_per_uid
            .or(file.max_connections_per_uid)
            .unwrap_or((max_connections / 4).max(1));
        let max_bytes_per_uid = match (args.max_bytes_per_uid, &file.max_bytes_per_uid) {
            (Some(n), _) => n,
            (None, Some(v)) => v.bytes("max_bytes_per_uid")?,
            (None, None) => max_total_bytes / 8,
        };
        let max_assets_per_uid = args
            .max_assets_per_uid
            .or(file.max_assets_per_uid)
            .unwrap_or(1024);
        let assets_dir = args.assets_dir.or(file.assets_dir).or_else(|| {
            let default = Path::new(DEFAULT_ASSETS_DIR);
            default.is_dir().then(|| default.to_path_buf())
        });
        let handshake_timeout = match (args.handshake_timeout, &file.handshake_timeout) {
            (Some(d), _) => d,
            (None, Some(v)) => v.duration("handshake_timeout")?,
            (None, None) => DEFAULT_TIMEOUT,
        };
        let io_timeout = match (args.io_timeout, &file.io_timeout) {
            (Some(d), _) => d,
            (None, Some(v)) => v.duration("io_timeout")?,
            (None, None) => DEFAULT_TIMEOUT,
        };
        let upload_timeout = match (args.upload_timeout, &file.upload_timeout) {
            (Some(d), _) => d,
            (None, Some(v)) => v.duration("upload_timeout")?,
            (None, None) => DEFAULT_UPLOAD_TIMEOUT,
        };
        let resolve_timeout = match (args.resolve_timeout, &file.resolve_timeout) {
            (Some(d), _) => d,
            (None, Some(v)) => v.duration("resolve_timeout")?,
            (None, None) => DEFAULT_RESOLVE_TIMEOUT,
        };
        if handshake_timeout.is_zero() || io_timeout.is_zero() || upload_timeout.is_zero() {
            return Err(
                "handshake_timeout, io_timeout and upload_timeout must be longer than zero".into(),
            );
        }
        let publisher_reserve = args
            .publisher_reserve
            .or(file.publisher_reserve)
            .unwrap_or(DEFAULT_PUBLISHER_RESERVE);
        if publisher_reserve > 100 {
            return Err(format!(
                "publisher_reserve is a percentage (0 to 100), not {publisher_reserve}"
            ));
        }
        let given_socket = args.socket.or(file.socket);
        Ok(Config {
            socket_explicit: given_socket.is_some(),
            socket: given_socket.unwrap_or_else(memseal_proto::paths::builtin_socket_path),
            keep_versions: keep_versions as usize,
            max_asset_size,
            max_total_bytes,
            max_connections,
            max_connections_per_uid,
            max_bytes_per_uid,
            max_assets_per_uid,
            max_blobs: args.max_blobs.or(file.max_blobs).unwrap_or(4000),
            max_versions: args
                .max_versions
                .or(file.max_versions)
                .unwrap_or(DEFAULT_MAX_VERSIONS),
            publisher_reserve,
            assets_dir,
            policy: file.policy,
            config_file,
            handshake_timeout,
            io_timeout,
            upload_timeout,
            resolve_timeout,
            shutdown_grace: Duration::from_secs(10),
        })
    }
}

/// The handshake and I/O deadline when none is configured: long enough for
/// a loaded machine, short enough that a stalled peer lets go of its
/// connection slot soon.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a streamed upload may take when nothing else is set: gigabytes
/// at memory speed take seconds, and a publisher with a slow source can hand
/// the daemon a sealed memfd instead, which holds no reservation while it
/// fills.
const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Kept versions over all names when nothing else is set: about 600 bytes
/// of memory and 350 of snapshot each at most, so the catalog stays within
/// about 120 MiB and its snapshot far below the restore limit.
pub const DEFAULT_MAX_VERSIONS: u64 = 200_000;

/// How long a fetch of a missing name waits for its resolver by default:
/// long enough for a resolver to fetch gigabytes from a store nearby.
const DEFAULT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The share of each global limit that only publishers may use, in percent:
/// however many other users there are, the publishers keep a quarter.
pub const DEFAULT_PUBLISHER_RESERVE: u8 = 25;

/// Read the access policy again from the settings file (on reload).
pub fn reread_policy(path: &Path) -> Result<PolicyConfig, String> {
    Ok(read_file(path)?.policy)
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read settings file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid settings file {}: {e}", path.display()))
}

/// A quarter of physical memory: memfd pages are charged to the daemon and
/// cannot be dropped like page cache, so the default leaves most RAM to the
/// programs that use the assets.
fn default_total_bytes() -> u64 {
    // sysinfo(2) rather than /proc/meminfo: the hardened unit hides most of
    // /proc (ProcSubset=pid).
    let info = rustix::system::sysinfo();
    let total = (info.totalram as u64).saturating_mul(u64::from(info.mem_unit.max(1)));
    let page = rustix::param::page_size() as u64;
    (total / 4) / page * page
}

/// Parse `123`, `64K`, `1.5G`... (suffixes are powers of 1024; a trailing
/// `B` or `iB` is allowed).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let upper = trimmed.to_ascii_uppercase();
    let without_b = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match without_b.chars().last() {
        Some('K') => (&without_b[..without_b.len() - 1], 10),
        Some('M') => (&without_b[..without_b.len() - 1], 20),
        Some('G') => (&without_b[..without_b.len() - 1], 30),
        Some('T') => (&without_b[..without_b.len() - 1], 40),
        _ => (without_b, 0),
    };
    let invalid = || format!("'{trimmed}' is not a size (examples: 4096, 64K, 1.5G)");
    let value: f64 = digits.trim().parse().map_err(|_| invalid())?;
    if !value.is_finite() || value < 0.0 {
        return Err(invalid());
    }
    let bytes = value * (1u64 << shift) as f64;
    if bytes > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as u64)
}

/// Parse `250` (milliseconds), `250ms`, `10s` or `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let invalid = || format!("'{trimmed}' is not a duration (examples: 500ms, 10s, 250)");
    let (digits, scale) = if let Some(ms) = trimmed.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = trimmed.strip_suffix('s') {
        (s, 1.0)
    } else {
        (trimmed, 1e-3)
    };
    let value: f64 = digits.trim().parse().map_err(|_| invalid())?;
    let seconds = value * scale;
    if !seconds.is_finite() || seconds < 0.0 || seconds > u32::MAX as f64 {
        return Err(invalid());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn file_settings_are_parsed_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("memseal-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("memseald.toml");
        std::fs::write(
            &path,
            "keep_versions = 3\nmax_total_bytes = \"2G\"\nmax_asset_size = 1048576\n\
             io_timeout = \"250ms\"\nhandshake_timeout = 1500\n\
             [policy]\npublisher_groups = [\"staff\"]\n",
        )
        .unwrap();
        let args = Args::parse_from([
            "memseald",
            "--config",
            path.to_str().unwrap(),
            "--keep-versions",
            "5",
        ]);
        let config = Config::resolve(args).unwrap();
        assert_eq!(config.keep_versions, 5);
        assert_eq!(config.max_total_bytes, 2 << 30);
        assert_eq!(config.max_asset_size, 1 << 20);
        assert_eq!(config.policy.publisher_groups, ["staff"]);
        assert_eq!(config.io_timeout, Duration::from_millis(250));
        assert_eq!(config.handshake_timeout, Duration::from_millis(1500));
        assert_eq!(config.policy.user_prefix, "user/{uid}/");

        std::fs::write(&path, "bogus = 1\n").unwrap();
        let args = Args::parse_from(["memseald", "--config", path.to_str().unwrap()]);
        let err = Config::resolve(args).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
