//! [`Daemon`]: the real `memseald`, started for a test or a measurement,
//! in a private temporary directory, and stopped when dropped. The one
//! launcher of the workspace: the end-to-end tests, the async client's
//! tests and the benchmark harness all start the daemon through it.

use crate::{bin, rss_kib_of, SPAWN_LOCK};
use std::fs;
use std::io;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a daemon may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(20);

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
    /// The `memseald` executable, when not the one built beside the test.
    binary: Option<PathBuf>,
    /// Wait for READY=1 on a notification socket, as a service manager
    /// would, instead of for the socket to accept.
    notify: bool,
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

    /// Start this `memseald` instead of the one built beside the test.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Give the daemon a notification socket, as systemd would, and count
    /// it started when it says READY=1 there ([`Daemon::ready_after`]).
    pub fn ready_by_notification(mut self) -> Self {
        self.notify = true;
        self
    }

    /// The command that starts the daemon, wrapper included.
    fn command(&self) -> Command {
        let daemon = self.binary.clone().unwrap_or_else(|| bin("memseald"));
        match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(daemon);
                command
            }
            None => Command::new(daemon),
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
        self.try_start_in(dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start it with its socket in `dir`, and wait until it serves, or say
    /// why it did not.
    pub fn try_start_in(self, dir: &Path) -> io::Result<Daemon> {
        let own = tempfile::Builder::new().prefix("memseal-test-").tempdir()?;
        Daemon::spawn(self, own, dir.join("memseald.sock"))
    }

    /// Start it and wait until it serves.
    pub fn start(self) -> Daemon {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start it and wait until it serves, or say why it did not.
    pub fn try_start(self) -> io::Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("memseal-test-").tempdir()?;
        let socket = dir.path().join("memseald.sock");
        if let Some(uid) = self.user {
            let owner = Some(rustix::process::Uid::from_raw(uid));
            let group = Some(rustix::process::Gid::from_raw(uid));
            rustix::fs::chown(dir.path(), owner, group)?;
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
    /// Just before the process was spawned.
    pub started_at: Instant,
    /// From `started_at` to READY=1, with
    /// [`DaemonBuilder::ready_by_notification`].
    pub ready_after: Option<Duration>,
    /// The thread that keeps reading the notification socket (the daemon's
    /// status updates would otherwise fill it and block the sender).
    notifications: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
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

    fn spawn(
        builder: DaemonBuilder,
        dir: tempfile::TempDir,
        socket: PathBuf,
    ) -> io::Result<Daemon> {
        let log = dir.path().join("memseald.log");
        let config = dir.path().join("memseald.toml");
        if !config.exists() {
            fs::write(&config, "")?;
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
            .stderr(fs::File::create(&log)?);
        let notify = match builder.notify {
            true => {
                let path = dir.path().join("notify.sock");
                let notify = UnixDatagram::bind(&path)?;
                notify.set_read_timeout(Some(Duration::from_millis(200)))?;
                command.env("NOTIFY_SOCKET", &path);
                Some(notify)
            }
            false => None,
        };
        for (key, value) in &builder.env {
            command.env(key, value);
        }
        let started_at = Instant::now();
        let child = {
            let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            command
                .spawn()
                .map_err(|e| io::Error::new(e.kind(), format!("cannot start memseald: {e}")))?
        };
        let mut daemon = Daemon {
            child: Some(child),
            socket,
            log,
            builder,
            dir,
            started_at,
            ready_after: None,
            notifications: None,
        };
        match notify {
            Some(notify) => daemon.wait_for_ready(notify)?,
            None => daemon.wait_until_serving()?,
        }
        Ok(daemon)
    }

    /// Fail with the daemon's log if it exited or the time is up.
    fn check_starting(&mut self) -> io::Result<()> {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            return Err(io::Error::other(format!(
                "memseald exited during start-up ({status}):\n{}",
                self.logs()
            )));
        }
        if self.started_at.elapsed() > START_TIMEOUT {
            return Err(io::Error::other(format!(
                "memseald did not serve within {START_TIMEOUT:?}:\n{}",
                self.logs()
            )));
        }
        Ok(())
    }

    fn wait_until_serving(&mut self) -> io::Result<()> {
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            self.check_starting()?;
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for READY=1, then keep draining the socket on a thread.
    fn wait_for_ready(&mut self, notify: UnixDatagram) -> io::Result<()> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let drain = {
            let stop = stop.clone();
            std::thread::spawn(move || drain_notifications(notify, ready_tx, stop))
        };
        self.notifications = Some((stop, drain));
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(at) => {
                    self.ready_after = Some(at - self.started_at);
                    return Ok(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.check_starting()?,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("the notification socket failed"))
                }
            }
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
        self.started_at = Instant::now();
        self.wait_until_serving().unwrap_or_else(|e| panic!("{e}"));
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
        if let Some((stop, drain)) = self.notifications.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = drain.join();
        }
    }
}

/// Read datagrams until told to stop; report when READY=1 arrived.
fn drain_notifications(socket: UnixDatagram, ready: mpsc::Sender<Instant>, stop: Arc<AtomicBool>) {
    let mut buffer = [0u8; 4096];
    let mut told = false;
    while !stop.load(Ordering::Relaxed) {
        let Ok(len) = socket.recv(&mut buffer) else {
            continue;
        };
        let at = Instant::now();
        let text = String::from_utf8_lossy(&buffer[..len]);
        if !told && text.lines().any(|line| line == "READY=1") {
            told = true;
            let _ = ready.send(at);
        }
    }
}
