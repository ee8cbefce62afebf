//! The `memseald` executable's command line, run for real.
//!
//! (This test also makes `cargo test --workspace` build `memseald`, which
//! the end-to-end tests in `tests/` drive.)

use std::process::Command;

fn memseald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_memseald"))
}

#[test]
fn help_documents_flags_environment_and_signals() {
    let out = memseald().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "--socket",
        "--config",
        "--keep-versions",
        "--max-asset-size",
        "--max-total-bytes",
        "--max-connections",
        "MEMSEAL_LOG",
        "SIGHUP",
    ] {
        assert!(help.contains(expected), "--help lacks {expected}:\n{help}");
    }
}

#[test]
fn bad_settings_are_refused_with_a_clear_message() {
    let out = memseald()
        .args(["--max-asset-size", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a size"), "{err}");

    let out = memseald()
        .args(["--config", "/nonexistent/memseald.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read settings file"), "{err}");
}

/// Start a daemon on `socket` and wait until it accepts connections.
fn serve(socket: &std::path::Path, config: &std::path::Path) -> std::process::Child {
    let child = memseald()
        .arg("--socket")
        .arg(socket)
        .arg("--config")
        .arg(config)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "memseald never served {}",
            socket.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child
}

#[test]
fn a_live_daemon_keeps_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let mut first = serve(&socket, &config);
    let second = memseald()
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already serving"), "{err}");

    // The first daemon died without cleaning up: its socket file is stale
    // and a new daemon replaces it.
    assert!(socket.exists());
    let mut third = serve(&socket, &config);
    third.kill().unwrap();
    third.wait().unwrap();
}
