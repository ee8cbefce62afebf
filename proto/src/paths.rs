//! Where the daemon's socket lives, and which socket directories can be
//! trusted.
//!
//! The daemon and every client resolve the defaults the same way, so a
//! user who starts `memseald` with no options reaches it with `memseal`
//! with no options, and a user who runs none reaches the system service.
//!
//! The daemon listens on (see [`builtin_socket_path`]):
//!
//! 1. `MEMSEAL_SOCKET`, when set and not empty, or its `--socket` flag;
//! 2. [`SYSTEM_SOCKET`] when it runs as root (the system service);
//! 3. [`per_user_socket_path`] otherwise:
//!    `$XDG_RUNTIME_DIR/memseal/memseald.sock`, or
//!    `/tmp/memseal-<uid>/memseald.sock` when `XDG_RUNTIME_DIR` is unset.
//!
//! A client connects to (see [`client_socket`]):
//!
//! 1. the path it was given, or `MEMSEAL_SOCKET` ([`SocketChoice::Explicit`]);
//! 2. [`SYSTEM_SOCKET`] when it runs as root;
//! 3. the per-user socket, if it exists ([`SocketChoice::PerUser`]); it must
//!    then be a socket owned by the caller in a directory that
//!    [`check_private_dir`] accepts, or the client refuses it;
//! 4. otherwise [`SYSTEM_SOCKET`] ([`SocketChoice::System`]).
//!
//! A per-user directory under `/tmp` can be created by anyone, first: the
//! owner and mode checks are what stop another user from planting a
//! directory or a socket there to intercept a user's clients.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The environment variable that overrides the default socket path.
pub const SOCKET_ENV: &str = "MEMSEAL_SOCKET";

/// The system service's socket, used by root and by the systemd units.
pub const SYSTEM_SOCKET: &str = "/run/memseal/memseald.sock";

/// The socket file name inside the per-user directory.
const SOCKET_FILE: &str = "memseald.sock";

/// Mode bits that let group or others change a directory's entries.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// The sticky bit: in such a directory only an entry's owner may remove or
/// rename it.
const STICKY: u32 = 0o1000;

/// The socket given by `MEMSEAL_SOCKET`, if set and not empty.
pub fn socket_from_env() -> Option<PathBuf> {
    std::env::var_os(SOCKET_ENV)
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

/// The daemon's default socket path, honouring [`SOCKET_ENV`].
pub fn default_socket_path() -> PathBuf {
    socket_from_env().unwrap_or_else(builtin_socket_path)
}

/// The daemon's default socket path when no environment variable
/// overrides it.
pub fn builtin_socket_path() -> PathBuf {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    per_user_socket_path(uid.as_raw())
}

/// The socket of a daemon that user `uid` runs for itself.
pub fn per_user_socket_path(uid: u32) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("memseal").join(SOCKET_FILE),
        _ => PathBuf::from(format!("/tmp/memseal-{uid}")).join(SOCKET_FILE),
    }
}

/// Which socket a client uses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketChoice {
    /// The caller named it, or `MEMSEAL_SOCKET` did.
    Explicit(PathBuf),
    /// The user's own daemon, found at [`per_user_socket_path`] and owned
    /// by the user.
    PerUser(PathBuf),
    /// The system service, at [`SYSTEM_SOCKET`].
    System(PathBuf),
}

impl SocketChoice {
    /// The path to connect to.
    pub fn path(&self) -> &Path {
        match self {
            SocketChoice::Explicit(path)
            | SocketChoice::PerUser(path)
            | SocketChoice::System(path) => path,
        }
    }

    /// How the path was chosen, in words.
    pub fn describe(&self) -> &'static str {
        match self {
            SocketChoice::Explicit(_) => "given explicitly",
            SocketChoice::PerUser(_) => "this user's own daemon",
            SocketChoice::System(_) => "the system service",
        }
    }
}

/// The socket a client without an explicit path should use (see the
/// module documentation); an error when the per-user socket exists but
/// cannot be trusted.
pub fn client_socket() -> Result<SocketChoice, String> {
    if let Some(path) = socket_from_env() {
        return Ok(SocketChoice::Explicit(path));
    }
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return Ok(SocketChoice::System(PathBuf::from(SYSTEM_SOCKET)));
    }
    let uid = uid.as_raw();
    let path = per_user_socket_path(uid);
    match fs::symlink_metadata(&path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(format!(
                    "{} is not a socket; refusing it (remove it, or set {SOCKET_ENV})",
                    path.display()
                ));
            }
            if meta.uid() != uid {
                return Err(format!(
                    "{} belongs to uid {}, not to you (uid {uid}): another user may have put it \
                     there to intercept your requests; refusing it (remove it, or set \
                     {SOCKET_ENV})",
                    path.display(),
                    meta.uid()
                ));
            }
            let dir = path.parent().unwrap_or(Path::new("/"));
            check_private_dir(dir, uid)?;
            Ok(SocketChoice::PerUser(path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(SocketChoice::System(PathBuf::from(SYSTEM_SOCKET)))
        }
        Err(e) => Err(format!("cannot inspect {}: {e}", path.display())),
    }
}

/// Accept `dir` as the home of a private socket only if it is a real
/// directory (not a symbolic link), owned by `uid`, and neither its group
/// nor others may change its entries. The error says what is wrong and
/// why it matters.
pub fn check_private_dir(dir: &Path, uid: u32) -> Result<(), String> {
    let shown = dir.display();
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("cannot inspect {shown}: {e}"))?;
    if !meta.file_type().is_dir() {
        return Err(format!(
            "{shown} is not a directory (a symbolic link, perhaps); refusing to use it for a socket"
        ));
    }
    if meta.uid() != uid {
        return Err(format!(
            "{shown} belongs to uid {}, not to uid {uid}: another user may have created it to \
             intercept the socket; refusing it (remove it, or choose another path)",
            meta.uid()
        ));
    }
    if meta.mode() & WRITABLE_BY_OTHERS != 0 {
        return Err(format!(
            "{shown} has mode {:04o}: its group or others could replace the socket in it; \
             refusing it (chmod go-w it, or choose another path)",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Is `dir` a shared directory that still protects each user's entries:
/// owned by root and sticky, like `/tmp`? A daemon may listen there when
/// told to explicitly: nobody else can remove or rename its socket.
pub fn is_sticky_root_dir(dir: &Path) -> bool {
    fs::symlink_metadata(dir)
        .is_ok_and(|meta| meta.file_type().is_dir() && meta.uid() == 0 && meta.mode() & STICKY != 0)
}

/// The uid that owns the directory holding `socket`, which the system
/// service's clients also trust as the daemon's (only root can create
/// directories in `/run`).
pub fn socket_dir_owner(socket: &Path) -> Option<u32> {
    let dir = socket.parent()?;
    fs::symlink_metadata(dir)
        .ok()
        .filter(|meta| meta.file_type().is_dir())
        .map(|meta| meta.uid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("memseal-paths-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn private_directories_are_accepted_and_others_refused() {
        let me = rustix::process::geteuid().as_raw();
        let dir = temp_dir("private");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(check_private_dir(&dir, me), Ok(()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_private_dir(&dir, me).unwrap_err();
        assert!(err.contains("mode 0777"), "{err}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let err = check_private_dir(&dir, me + 1).unwrap_err();
        assert!(err.contains(&format!("belongs to uid {me}")), "{err}");
        let link = dir.with_extension("link");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = check_private_dir(&link, me).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
        fs::remove_file(&link).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn socket_choices_describe_themselves() {
        let choice = SocketChoice::System(PathBuf::from(SYSTEM_SOCKET));
        assert_eq!(choice.path(), Path::new(SYSTEM_SOCKET));
        assert_eq!(choice.describe(), "the system service");
    }
}
