//! Getting the listening socket: inherited from the service manager, or
//! bound here.
//!
//! Under systemd socket activation the socket arrives as a descriptor in
//! `LISTEN_FDS`, named by `LISTEN_FDNAMES` ([`LISTEN_FD_NAME`] in our
//! units); any other descriptor passed the same way comes from the fd store
//! and is returned for [`crate::persist`] to examine. Without activation the
//! daemon binds the path itself, replacing a stale socket file but refusing
//! to steal the path from a live daemon.

use memseal_proto::paths;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The `FileDescriptorName=` of the listening socket in memseald.socket.
pub const LISTEN_FD_NAME: &str = "listen";

/// Where the listening socket came from.
pub struct Listening {
    pub listener: UnixListener,
    /// The path we bound and must remove at exit; None when inherited.
    pub owned_path: Option<PathBuf>,
    /// Descriptors from the service manager's fd store, with their names.
    pub stored: Vec<(String, OwnedFd)>,
}

/// Find or make the listening socket. `explicit`: the path was given, not
/// the built-in default.
pub fn listen(path: &Path, explicit: bool) -> Result<Listening, String> {
    // sd-notify checks LISTEN_PID, and sets CLOEXEC on every descriptor so
    // none leaks into a child.
    let mut passed = crate::sys::take_inherited_fds()
        .map_err(|e| format!("invalid LISTEN_FDS from the service manager: {e}"))?;
    let position = passed.iter().position(|(name, fd)| {
        name == LISTEN_FD_NAME || (name == "unknown" && is_listening_socket(fd))
    });
    if let Some(index) = position {
        let (_, fd) = passed.remove(index);
        let listener = UnixListener::from(fd);
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot use the inherited socket: {e}"))?;
        return Ok(Listening {
            listener,
            owned_path: None,
            stored: passed,
        });
    }
    let listener = bind(path, explicit)?;
    Ok(Listening {
        listener,
        owned_path: Some(path.to_path_buf()),
        stored: passed,
    })
}

fn is_listening_socket(fd: &OwnedFd) -> bool {
    rustix::net::sockopt::socket_acceptconn(fd).unwrap_or(false)
}

fn bind(path: &Path, explicit: bool) -> Result<UnixListener, String> {
    let shown = path.display();
    let me = rustix::process::geteuid();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        // World-searchable for the system socket, private otherwise.
        let mode = if me.is_root() { 0o755 } else { 0o700 };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|e| format!("cannot create the socket directory {}: {e}", dir.display()))?;
    }
    let shared_ok = explicit && paths::is_sticky_root_dir(dir);
    if !shared_ok {
        paths::check_private_dir(dir, me.as_raw())
            .map_err(|e| format!("will not listen on {shown}: {e}"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() && meta.uid() == me.as_raw() => {
            match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(format!(
                    "another memseald is already serving {shown}; stop it first or pass --socket"
                ))
                }
                Err(_) => std::fs::remove_file(path)
                    .map_err(|e| format!("cannot remove the stale socket {shown}: {e}"))?,
            }
        }
        Ok(meta) if meta.file_type().is_socket() => {
            return Err(format!(
                "{shown} is a socket of uid {}, not ours; refusing to replace it",
                meta.uid()
            ))
        }
        Ok(_) => {
            return Err(format!(
                "{shown} exists and is not a socket; refusing to replace it"
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot inspect {shown}: {e}")),
    }
    // Anyone who can reach the directory may connect (mode 0666); the
    // access policy decides what each peer may do. The mode comes from
    // the umask at bind; the process-wide umask is changed for this one
    // call, at start-up, before anything else creates files.
    let previous = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o111));
    let bound = UnixListener::bind(path);
    rustix::process::umask(previous);
    let listener = bound.map_err(|e| format!("cannot listen on {shown}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot configure {shown}: {e}"))?;
    Ok(listener)
}
