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

    /// Set an environment variable for the daemon.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Start it and wait until it serves.
    pub fn start(self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("memseal-test-")
            .tempdir()
            .expect("temporary directory");
        let socket = dir.path().join("memseald.sock");
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
        let mut command = Command::new(bin("memseald"));
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

    /// A connected client library handle.
    pub fn client(&self) -> memseal::Client {
        memseal::Client::connect_to(&self.socket).expect("connect to memseald")
    }

    /// The `memseal` CLI, pointed at this daemon.
    pub fn cli(&self) -> Command {
        let mut command = Command::new(bin("memseal"));
        command.arg("--socket").arg(&self.socket);
        command.env_remove("MEMSEAL_SOCKET");
        command
    }

    /// How many descriptors the daemon has open.
    pub fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// The daemon's resident set size, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
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
        let mut command = Command::new(bin("memseald"));
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
