//! Where the daemon's socket lives.
//!
//! The daemon and every client resolve the default the same way, so a user
//! who starts `memseald` with no options reaches it with `memseal` with no
//! options:
//!
//! 1. `MEMSEAL_SOCKET`, when set and not empty;
//! 2. [`SYSTEM_SOCKET`] for root (the system service);
//! 3. `$XDG_RUNTIME_DIR/memseal/memseald.sock` for anyone else;
//! 4. `/tmp/memseal-<uid>/memseald.sock` when `XDG_RUNTIME_DIR` is unset.
//!
//! An explicit `--socket` flag on either side overrides all of these.

use std::path::PathBuf;

/// The environment variable that overrides the default socket path.
pub const SOCKET_ENV: &str = "MEMSEAL_SOCKET";

/// The system service's socket, used by root and by the systemd units.
pub const SYSTEM_SOCKET: &str = "/run/memseal/memseald.sock";

/// The socket file name inside the per-user directory.
const SOCKET_FILE: &str = "memseald.sock";

/// The default socket path, honouring [`SOCKET_ENV`].
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os(SOCKET_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => builtin_socket_path(),
    }
}

/// The default socket path when no environment variable overrides it.
pub fn builtin_socket_path() -> PathBuf {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("memseal").join(SOCKET_FILE),
        _ => PathBuf::from(format!("/tmp/memseal-{}", uid.as_raw())).join(SOCKET_FILE),
    }
}
