//! Running the real `memseald` for the measurements.
//!
//! Each daemon gets its own socket, an empty settings file and an empty
//! assets directory (or one the caller fills), so nothing on the host
//! changes what is measured. It is given a `NOTIFY_SOCKET` bound here,
//! exactly as a service manager would, which tells when it is ready; a
//! thread keeps draining that socket, since the daemon's status updates
//! would otherwise fill it and block the sender.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a daemon may take to say READY=1.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The `memseald` executable.
    pub binary: PathBuf,
    /// Budget of distinct content (`--max-total-bytes`).
    pub max_total_bytes: u64,
    /// Largest asset (`--max-asset-size`).
    pub max_asset_size: u64,
}

/// A running daemon, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    child: Child,
    socket: PathBuf,
    /// Just before `spawn`.
    pub started_at: Instant,
    /// From just before `spawn` to the READY=1 datagram.
    pub ready_after: Duration,
    drain_stop: Arc<AtomicBool>,
    drain: Option<JoinHandle<()>>,
}

impl Daemon {
    /// Start a daemon whose files live in `dir` (created here), serving the
    /// assets declared in `assets_dir` if given (else an empty directory),
    /// and wait until it reports READY=1.
    pub fn start(
        config: &DaemonConfig,
        dir: &Path,
        assets_dir: Option<&Path>,
    ) -> io::Result<Daemon> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("memseald.sock");
        let settings = dir.join("memseald.toml");
        std::fs::write(&settings, "")?;
        let empty_assets = dir.join("assets.d");
        std::fs::create_dir_all(&empty_assets)?;
        let notify_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)?;
        notify.set_read_timeout(Some(Duration::from_millis(200)))?;
        let log = std::fs::File::create(dir.join("memseald.log"))?;

        let mut command = Command::new(&config.binary);
        command
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&settings)
            .arg("--assets-dir")
            .arg(assets_dir.unwrap_or(&empty_assets))
            .arg("--max-total-bytes")
            .arg(config.max_total_bytes.to_string())
            .arg("--max-asset-size")
            .arg(config.max_asset_size.to_string())
            .env("NOTIFY_SOCKET", &notify_path)
            .env("MEMSEAL_LOG", "warn")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let started = Instant::now();
        let mut child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", config.binary.display()),
            )
        })?;

        let (ready_tx, ready_rx) = mpsc::channel();
        let drain_stop = Arc::new(AtomicBool::new(false));
        let stop = drain_stop.clone();
        let drain = std::thread::spawn(move || drain_notifications(notify, ready_tx, stop));
        let ready_after = loop {
            match ready_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(at) => break at - started,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("the notification socket failed"))
                }
            }
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "memseald exited during start-up ({status}); see {}",
                    dir.join("memseald.log").display()
                )));
            }
            if started.elapsed() > READY_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "memseald did not report READY=1 within {READY_TIMEOUT:?}"
                )));
            }
        };
        Ok(Daemon {
            child,
            socket,
            started_at: started,
            ready_after,
            drain_stop,
            drain: Some(drain),
        })
    }

    /// The socket it serves on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drain_stop.store(true, Ordering::Relaxed);
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }
}

/// Read datagrams until told to stop; report the arrival of READY=1.
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
