//! A stand-in for the parts of systemd that memseald talks to, played by
//! the test itself: the notification socket (`NOTIFY_SOCKET`: READY=1,
//! STATUS=, STOPPING=1, and the fd store's FDSTORE=1 / FDSTOREREMOVE=1) and
//! the hand-over of descriptors at start (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`), following systemd's documented protocol
//! (sd_notify(3), sd_listen_fds(3), the FILE_DESCRIPTOR_STORE document).
//!
//! Descriptors reach the daemon at 3, 4, ... in the order of
//! `LISTEN_FDNAMES`: the listening socket first (`listen`), then every
//! stored descriptor. `bash` places them (`exec 3<&100 ...`; dash only
//! knows single-digit descriptors) and exports
//! LISTEN_PID as its own pid before exec'ing the daemon, which keeps it.
//!
//! Like systemd, the fake takes in every notification a dead daemon sent
//! before it starts the next one, so a descriptor stored just before a
//! crash is never missed.

use crate::{bin, SPAWN_LOCK};
use rustix::io::FdFlags;
use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One notification message, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// `KEY=VALUE` lines.
    pub fields: Vec<(String, String)>,
    /// How many descriptors came with it.
    pub fds: usize,
}

impl Notification {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    /// The fd store: names and descriptors, in the order they were stored.
    store: Vec<(String, OwnedFd)>,
    /// Every notification, oldest first.
    log: VecDeque<Notification>,
}

/// The fake service manager.
pub struct FakeSystemd {
    dir: PathBuf,
    notify_path: PathBuf,
    listener: Option<UnixListener>,
    /// The notification socket and what arrived on it, shared with the
    /// thread that keeps reading it.
    inbox: Arc<Inbox>,
    child: Option<Child>,
    args: Vec<String>,
    /// The `memseald` it starts.
    binary: PathBuf,
    /// The daemon's `MEMSEAL_LOG`.
    log_level: String,
}

impl FakeSystemd {
    /// A fake systemd in `dir`. With `activate`, it binds the daemon's
    /// socket itself and passes it, as a `.socket` unit would.
    pub fn new(dir: &Path, activate: bool, args: &[&str]) -> FakeSystemd {
        let notify_path = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        let listener = activate
            .then(|| UnixListener::bind(dir.join("memseald.sock")).expect("bind listen socket"));
        notify
            .set_nonblocking(true)
            .expect("non-blocking notify socket");
        let inbox = Arc::new(Inbox {
            notify,
            state: Mutex::default(),
        });
        // The daemon's notifications are blocking sends: keep reading them,
        // as a service manager does, or a full queue would stall it.
        let reader = Arc::downgrade(&inbox);
        std::thread::spawn(move || {
            while let Some(inbox) = reader.upgrade() {
                drop(inbox.pump());
                drop(inbox);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        FakeSystemd {
            dir: dir.to_path_buf(),
            notify_path,
            listener,
            inbox,
            child: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            binary: bin("memseald"),
            log_level: "debug".to_owned(),
        }
    }

    /// Start `binary` instead of the workspace's `memseald`.
    pub fn with_binary(mut self, binary: &Path) -> FakeSystemd {
        self.binary = binary.to_path_buf();
        self
    }

    /// Log at `level` (`MEMSEAL_LOG`) instead of `debug`.
    pub fn with_log_level(mut self, level: &str) -> FakeSystemd {
        self.log_level = level.to_owned();
        self
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("memseald.sock")
    }

    /// Start the daemon with the listening socket (if activating) and every
    /// stored descriptor.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let state = self.inbox.pump();
        let mut passed: Vec<(String, OwnedFd)> = Vec::new();
        if let Some(listener) = &self.listener {
            passed.push(("listen".into(), inheritable(listener.as_fd())));
        }
        for (name, fd) in &state.store {
            passed.push((name.clone(), inheritable(fd.as_fd())));
        }
        drop(state);
        let mut script = String::from("export LISTEN_PID=$$; exec \"$0\" \"$@\"");
        for (i, (_, fd)) in passed.iter().enumerate() {
            script.push_str(&format!(
                " {}<&{} {}<&-",
                3 + i,
                fd.as_raw_fd(),
                fd.as_raw_fd()
            ));
        }
        let names: Vec<&str> = passed.iter().map(|(n, _)| n.as_str()).collect();
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(script)
            .arg(&self.binary)
            .arg("--socket")
            .arg(self.socket())
            .arg("--config")
            .arg(self.dir.join("memseald.toml"))
            .args(&self.args)
            .env("NOTIFY_SOCKET", &self.notify_path)
            .env("MEMSEAL_LOG", &self.log_level)
            .env_remove("MEMSEAL_SOCKET")
            .stdin(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("memseald.log"))
                    .expect("log"),
            );
        if passed.is_empty() {
            command
                .env_remove("LISTEN_FDS")
                .env_remove("LISTEN_FDNAMES");
        } else {
            command
                .env("LISTEN_FDS", passed.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        if !self.dir.join("memseald.toml").exists() {
            std::fs::write(self.dir.join("memseald.toml"), "").expect("config");
        }
        self.child = Some(command.spawn().expect("spawn memseald"));
        // `passed` drops here, closing the parent's inheritable copies.
    }

    /// SIGKILL the daemon and reap it (a crash, as far as it can tell).
    /// Like systemd, take in every notification the dead process sent
    /// before doing anything else, so no descriptor it stored is missed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(self.inbox.pump());
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        child.wait().unwrap()
    }

    /// Send a signal to the running daemon.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let child = self.child.as_ref().expect("running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("memseald.log")).unwrap_or_default()
    }

    /// Wait until a notification after position `from` in the log matches,
    /// and return its position.
    pub fn wait_for(&self, from: usize, what: impl Fn(&Notification) -> bool) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(i) = self.inbox.pump().log.iter().skip(from).position(&what) {
                return from + i;
            }
            assert!(
                Instant::now() < deadline,
                "notification not received; daemon log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The notification at position `index`.
    pub fn notification(&self, index: usize) -> Notification {
        self.inbox.pump().log[index].clone()
    }

    /// How many notifications arrived so far.
    pub fn notifications(&self) -> usize {
        self.inbox.pump().log.len()
    }

    /// Names in the fd store, sorted.
    pub fn stored_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inbox
            .pump()
            .store
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// Bytes held by the stored descriptors whose names start with
    /// `prefix` (their file sizes).
    pub fn stored_bytes(&self, prefix: &str) -> u64 {
        self.inbox
            .pump()
            .store
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, fd)| rustix::fs::fstat(fd).map_or(0, |st| st.st_size as u64))
            .sum()
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Take every descriptor stored under a name starting with `prefix`
    /// out of the store.
    pub fn take(&self, prefix: &str) -> Vec<(String, OwnedFd)> {
        let mut state = self.inbox.pump();
        let (taken, kept) = std::mem::take(&mut state.store)
            .into_iter()
            .partition(|(name, _)| name.starts_with(prefix));
        state.store = kept;
        taken
    }

    /// Replace the descriptor stored under `name` (or add one).
    pub fn put(&self, name: &str, fd: OwnedFd) {
        let mut state = self.inbox.pump();
        state.store.retain(|(n, _)| n != name);
        state.store.push((name.to_owned(), fd));
    }
}

/// The notification socket and the state built from it.
struct Inbox {
    notify: UnixDatagram,
    state: Mutex<State>,
}

impl Inbox {
    /// Take in every notification waiting on the socket, in order, and
    /// return the state with them applied: FDSTORE=1 keeps the descriptors
    /// under their FDNAME, FDSTOREREMOVE=1 drops that name. Messages are
    /// only ever received under the lock, so once a caller holds it, none
    /// is half-applied.
    fn pump(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap();
        let mut buffer = [0u8; 8192];
        loop {
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(32))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let Ok(msg) = recvmsg(
                &self.notify,
                &mut [IoSliceMut::new(&mut buffer)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) else {
                // EAGAIN: nothing more waiting.
                return state;
            };
            let mut fds: Vec<OwnedFd> = Vec::new();
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            let text = String::from_utf8_lossy(&buffer[..msg.bytes]).into_owned();
            let fields: Vec<(String, String)> = text
                .lines()
                .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect();
            let notification = Notification {
                fields,
                fds: fds.len(),
            };
            let name = notification.get("FDNAME").unwrap_or("stored").to_owned();
            if notification.get("FDSTORE") == Some("1") {
                for fd in fds {
                    state.store.push((name.clone(), fd));
                }
            } else if notification.get("FDSTOREREMOVE") == Some("1") {
                state.store.retain(|(n, _)| *n != name);
            }
            state.log.push_back(notification);
        }
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A duplicate of `fd` above the low numbers, without CLOEXEC, so a child
/// inherits it (under [`SPAWN_LOCK`], so no other child does).
fn inheritable(fd: std::os::fd::BorrowedFd<'_>) -> OwnedFd {
    let copy = rustix::io::fcntl_dupfd_cloexec(fd, 100).expect("dup");
    rustix::io::fcntl_setfd(&copy, FdFlags::empty()).expect("clear CLOEXEC");
    copy
}
