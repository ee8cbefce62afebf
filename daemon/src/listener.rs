//! Getting the listening socket: inherited from the service manager, or
//! bound here.
//!
//! Under systemd socket activation the socket arrives as a descriptor in
//! `LISTEN_FDS`, named by `LISTEN_FDNAMES` ([`LISTEN_FD_NAME`] in our
//! units); any other descriptor passed the same way comes from the fd store
//! and is returned for [`crate::persist`] to examine. Without activation the
//! daemon binds the path itself, replacing a stale socket file but refusing
//! to steal the path from a live daemon.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
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

/// Take the descriptors the service manager passed, if any.
fn inherited() -> io::Result<Vec<(String, OwnedFd)>> {
    // sd-notify checks LISTEN_PID, and sets CLOEXEC on every descriptor so
    // none leaks into a child.
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()?.collect();
    Ok(fds
        .into_iter()
        .map(|(raw, name)| (name, crate::sys::adopt_inherited_fd(raw)))
        .collect())
}

/// Find or make the listening socket.
pub fn listen(path: &Path) -> Result<Listening, String> {
    let mut passed =
        inherited().map_err(|e| format!("invalid LISTEN_FDS from the service manager: {e}"))?;
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
    let listener = bind(path)?;
    Ok(Listening {
        listener,
        owned_path: Some(path.to_path_buf()),
        stored: passed,
    })
}

fn is_listening_socket(fd: &OwnedFd) -> bool {
    rustix::net::sockopt::socket_acceptconn(fd).unwrap_or(false)
}

fn bind(path: &Path) -> Result<UnixListener, String> {
    let shown = path.display();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| {
                format!("cannot create the socket directory {}: {e}", dir.display())
            })?;
            // World-searchable for the system socket, private otherwise.
            let mode = if rustix::process::geteuid().is_root() {
                0o755
            } else {
                0o700
            };
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(format!(
                    "another memseald is already serving {shown}; stop it first or pass --socket"
                ))
            }
            Err(_) => std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove the stale socket {shown}: {e}"))?,
        },
        Ok(_) => {
            return Err(format!(
                "{shown} exists and is not a socket; refusing to replace it"
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot inspect {shown}: {e}")),
    }
    let listener =
        UnixListener::bind(path).map_err(|e| format!("cannot listen on {shown}: {e}"))?;
    // Anyone who can reach the directory may connect; the access policy
    // decides what each peer may do.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("cannot set the mode of {shown}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot configure {shown}: {e}"))?;
    Ok(listener)
}
