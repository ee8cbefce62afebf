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

pub mod fake_systemd;

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Held while spawning a child that must inherit descriptors, so that no
/// other test's child inherits them by accident.
pub static SPAWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The path of a workspace binary built by cargo (`memseald`, `memseal`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` (the test command in the README does)",
        path.display()
    );
    path
}

/// How to start a daemon.
#[derive(Debug, Default, Clone)]
pub struct DaemonBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// A program (and its arguments) that runs the daemon, such as
    /// `prlimit --nofile=64:64`; it must exec memseald in its own process.
    wrapper: Vec<String>,
    /// Run the daemon as this uid (and gid) instead of the test's user.
    user: Option<u32>,
}

impl DaemonBuilder {
    /// Add command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Start the daemon through `program args... memseald ...`, for
    /// wrappers that exec it in the same process (`prlimit`, `setpriv`),
    /// so that [`Daemon::pid`] stays the daemon's.
    pub fn wrapper<I, S>(mut self, program: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.wrapper = std::iter::once(program.to_owned())
            .chain(args.into_iter().map(Into::into))
            .collect();
        self
    }

    /// Run the daemon as `uid` (gid the same, no supplementary groups),
    /// through `setpriv`; its directory is given to that user. Needs root.
    pub fn run_as(mut self, uid: u32) -> Self {
        self.user = Some(uid);
        self.wrapper = [
            "setpriv".to_owned(),
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_owned(),
            "--".to_owned(),
        ]
        .into();
        self
    }

    /// The command that starts the daemon, wrapper included.
    fn command(&self) -> Command {
        match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(bin("memseald"));
                command
            }
            None => Command::new(bin("memseald")),
        }
    }

    /// Set an environment variable for the daemon.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Start it with its socket in `dir` (given explicitly, as `--socket`
    /// would be), and wait until it serves.
    pub fn start_in(self, dir: &Path) -> Daemon {
        let own = tempfile::Builder::new()
            .prefix("memseal-test-")
            .tempdir()
            .expect("temporary directory");
        Daemon::spawn(self, own, dir.join("memseald.sock"))
    }

    /// Start it and wait until it serves.
    pub fn start(self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("memseal-test-")
            .tempdir()
            .expect("temporary directory");
        let socket = dir.path().join("memseald.sock");
        if let Some(uid) = self.user {
            let owner = Some(rustix::process::Uid::from_raw(uid));
            let group = Some(rustix::process::Gid::from_raw(uid));
            rustix::fs::chown(dir.path(), owner, group).expect("give the daemon its directory");
        }
        Daemon::spawn(self, dir, socket)
    }
}

/// A running `memseald`, killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    builder: DaemonBuilder,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Start a daemon with default settings. `--config` points at an empty
    /// file in the daemon's directory, so the host's settings never leak in.
    pub fn start() -> Daemon {
        Daemon::builder().start()
    }

    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    fn spawn(builder: DaemonBuilder, dir: tempfile::TempDir, socket: PathBuf) -> Daemon {
        let log = dir.path().join("memseald.log");
        let config = dir.path().join("memseald.toml");
        if !config.exists() {
            fs::write(&config, "").expect("write empty config");
        }
        let mut command = builder.command();
        command
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .args(&builder.args)
            .env_remove("MEMSEAL_SOCKET")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env("MEMSEAL_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"));
        for (key, value) in &builder.env {
            command.env(key, value);
        }
        let child = {
            let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            command.spawn().expect("spawn memseald")
        };
        let mut daemon = Daemon {
            child: Some(child),
            socket,
            log,
            builder,
            dir,
        };
        daemon.wait_until_serving();
        daemon
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "memseald exited during start-up ({status}):\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "memseald did not serve within 20 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A private directory that lives as long as the daemon.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Everything the daemon logged so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How to connect to this daemon: its socket, and its uid when it
    /// runs as another user than the test's.
    pub fn connect_options(&self) -> memseal::ConnectOptions {
        let options = memseal::ConnectOptions::new().socket(&self.socket);
        match self.builder.user {
            Some(uid) => options.expect_server_uid(uid),
            None => options,
        }
    }

    /// A connected client library handle.
    pub fn client(&self) -> memseal::Client {
        self.connect_options()
            .connect()
            .expect("connect to memseald")
    }

    /// The `memseal` CLI, pointed at this daemon.
    pub fn cli(&self) -> Command {
        let mut command = Command::new(bin("memseal"));
        command.arg("--socket").arg(&self.socket);
        if let Some(uid) = self.builder.user {
            command.arg("--server-uid").arg(uid.to_string());
        }
        command.env_remove("MEMSEAL_SOCKET");
        command
    }

    /// How many descriptors the daemon has open.
    pub fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// How many descriptors the daemon has open once the count has stopped
    /// changing: connections that just ended (the harness's own probe of
    /// the socket at start, for one) may take a moment to close.
    pub fn settled_fds(&self) -> usize {
        let mut last = self.open_fds();
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(40));
            let now = self.open_fds();
            if now == last {
                return now;
            }
            last = now;
        }
        last
    }

    /// The daemon's resident set size, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid())
    }

    /// Poll `condition` for up to `timeout`; true if it became true.
    pub fn eventually(&self, timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        condition()
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Send a signal.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal memseald");
    }

    /// SIGTERM, then wait for the exit (at most 30 s).
    pub fn stop(mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        let mut child = self.child.take().expect("daemon running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "memseald did not stop within 30 s of SIGTERM:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and wait, then start a new daemon on the same socket with
    /// the same settings.
    pub fn restart_after_kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let fresh = Daemon::spawn_in_place(&self.builder, &self.socket, &self.log);
        self.child = Some(fresh);
        self.wait_until_serving();
    }

    fn spawn_in_place(builder: &DaemonBuilder, socket: &Path, log: &Path) -> Child {
        let config = log.with_file_name("memseald.toml");
        let mut command = builder.command();
        command
            .arg("--socket")
            .arg(socket)
            .arg("--config")
            .arg(&config)
            .args(&builder.args)
            .env_remove("MEMSEAL_SOCKET")
            .env("MEMSEAL_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                fs::OpenOptions::new()
                    .append(true)
                    .open(log)
                    .expect("log file"),
            );
        for (key, value) in &builder.env {
            command.env(key, value);
        }
        command.spawn().expect("spawn memseald")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
