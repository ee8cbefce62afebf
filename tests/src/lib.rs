//! Harness for memseal's end-to-end tests.
//!
//! Every test here drives the real binaries: [`Daemon`] starts the real
//! `memseald` on a socket in a private temporary directory, waits until it
//! accepts connections, and kills it when dropped. [`bin`] finds the built
//! executables next to the test binary (`cargo test --workspace` builds them:
//! the daemon and client packages each carry an integration test that
//! needs their binary).
//!
//! The tests themselves live in `tests/tests/`, one file per subject.

mod daemon;
pub mod fake_systemd;

pub use daemon::{Daemon, DaemonBuilder};

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Held while spawning a child that must inherit descriptors, so that no
/// other test's child inherits them by accident.
pub static SPAWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The path of a workspace binary built by cargo (`memseald`, `memseal`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // A test: target/<profile>/deps/<test>; a program of the workspace
    // (the benchmark harness): target/<profile>/<program>. Either way the
    // binaries are in target/<profile>.
    let dir = exe.parent().expect("the executable's directory");
    let profile_dir = match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().expect("target/<profile>"),
        _ => dir,
    };
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` (the test command in the README does)",
        path.display()
    );
    path
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// True when the tests run as root (CI does); privileged tests need it.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A command that runs `program` as `uid` (gid the same, no
/// supplementary groups), through `setpriv`. Needs root.
pub fn as_user(uid: u32, program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "--"])
        .arg(program);
    command
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_kib_of(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Say loudly that a test was skipped, and why. Where every test must run
/// (`MEMSEAL_REQUIRE_ALL=1`, which `.ci/run` sets), a skip is a failure.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("MEMSEAL_REQUIRE_ALL").is_some_and(|v| v == "1") {
        panic!("{test} cannot run here and MEMSEAL_REQUIRE_ALL=1: {why}");
    }
    eprintln!("MEMSEAL-TEST-SKIPPED: {test}: {why}");
}

/// A client that speaks the protocol frame by frame, for tests that need
/// to see (or break) the exchange itself.
pub struct RawPeer {
    pub stream: UnixStream,
    reader: memseal_proto::wire::FrameReader,
}

impl RawPeer {
    /// Connect without a handshake.
    pub fn connect(socket: &Path) -> RawPeer {
        let stream = UnixStream::connect(socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        RawPeer {
            stream,
            reader: memseal_proto::wire::FrameReader::new(),
        }
    }

    /// Connect and complete the handshake.
    pub fn handshake(socket: &Path) -> RawPeer {
        let mut peer = RawPeer::connect(socket);
        peer.send(&memseal_proto::Request::Hello {
            version: memseal_proto::PROTOCOL_VERSION,
            client: "raw-test-peer".into(),
        });
        match peer.recv() {
            memseal_proto::Response::Welcome { .. } => peer,
            other => panic!("handshake refused: {other:?}"),
        }
    }

    pub fn send(&mut self, request: &memseal_proto::Request) {
        let frame = memseal_proto::codec::encode_request(request).expect("encode");
        memseal_proto::wire::FrameWriter::new(frame, None)
            .write_all(&self.stream)
            .expect("send");
    }

    /// The next response (descriptors, if any, are dropped).
    pub fn recv(&mut self) -> memseal_proto::Response {
        self.try_recv().expect("receive a response")
    }

    pub fn try_recv(&mut self) -> Result<memseal_proto::Response, memseal_proto::FrameError> {
        use std::os::fd::AsFd;
        let frame = self.reader.read_frame(self.stream.as_fd())?;
        Ok(memseal_proto::codec::decode_response(&frame.payload, frame.fds)?.message)
    }
}

/// What `/proc/self/smaps` says about the mapping that contains an address.
#[derive(Debug, Clone, Default)]
pub struct MappingStats {
    /// The header line: range, permissions, offset, device, inode, path.
    pub header: String,
    /// The size fields (`Rss`, `ShmemPmdMapped`, ...), in KiB.
    pub kib: std::collections::HashMap<String, u64>,
    /// The two-letter flags of `VmFlags` (`rd`, `hg`, `rr`, ...).
    pub flags: Vec<String>,
}

impl MappingStats {
    /// A size field in KiB; 0 if absent.
    pub fn get(&self, field: &str) -> u64 {
        self.kib.get(field).copied().unwrap_or(0)
    }

    /// True if `VmFlags` lists `flag`.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// The smaps entry of this process's mapping that contains `addr`.
pub fn mapping_stats(addr: *const u8) -> Option<MappingStats> {
    let addr = addr as usize;
    let text = fs::read_to_string("/proc/self/smaps").ok()?;
    let mut current: Option<MappingStats> = None;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                if current.is_some() {
                    break;
                }
                if (start..end).contains(&addr) {
                    current = Some(MappingStats {
                        header: line.to_owned(),
                        ..MappingStats::default()
                    });
                }
                continue;
            }
        }
        let Some(stats) = current.as_mut() else {
            continue;
        };
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            stats.flags = flags.split_whitespace().map(str::to_owned).collect();
        } else if let Some((key, value)) = line.split_once(':') {
            if let Some(kib) = value.trim().strip_suffix(" kB") {
                if let Ok(kib) = kib.trim().parse() {
                    stats.kib.insert(key.to_owned(), kib);
                }
            }
        }
    }
    current
}

/// The host's switch for transparent huge pages in shared memory.
pub const SHMEM_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// Serialises the tests of this binary that read or change the host's
/// shmem huge-page setting.
static SHMEM_SETTING_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the host's shmem huge-page setting for a test, and puts back the
/// setting it found when dropped, even if the test panics.
pub struct ShmemHugePagesGuard {
    previous: Option<String>,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl ShmemHugePagesGuard {
    /// Keep the setting as it is, but stop other tests of this binary from
    /// changing it meanwhile.
    pub fn hold() -> ShmemHugePagesGuard {
        ShmemHugePagesGuard {
            previous: None,
            _lock: SHMEM_SETTING_LOCK.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Select `mode` (`advise`, `never`, ...) until the guard is dropped.
    /// Needs root; an error says why it could not be changed.
    pub fn set(mode: &str) -> Result<ShmemHugePagesGuard, String> {
        let mut guard = ShmemHugePagesGuard::hold();
        let previous =
            selected_shmem_setting().ok_or_else(|| format!("cannot read {SHMEM_ENABLED}"))?;
        fs::write(SHMEM_ENABLED, mode)
            .map_err(|e| format!("cannot write '{mode}' to {SHMEM_ENABLED}: {e}"))?;
        guard.previous = Some(previous);
        Ok(guard)
    }
}

impl Drop for ShmemHugePagesGuard {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            if let Err(e) = fs::write(SHMEM_ENABLED, &previous) {
                eprintln!("could not restore {SHMEM_ENABLED} to '{previous}': {e}");
            }
        }
    }
}

/// The selected word of the shmem huge-page setting (`never`, `advise`...).
pub fn selected_shmem_setting() -> Option<String> {
    let text = fs::read_to_string(SHMEM_ENABLED).ok()?;
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_owned())
}

/// CRC-32 (IEEE), the checksum Python's `zlib.crc32` computes: lets a test
/// compare what a child program in another language read.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A Python 3 interpreter that any user can run, if there is one.
pub fn python3() -> Option<PathBuf> {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}
