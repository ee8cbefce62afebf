//! The `memseal` binary against the fake daemon of `common`: what it prints,
//! how it sends each kind of input, and its exit statuses.

// The fake daemon the library's own tests use.
#[path = "../../client/tests/common/mod.rs"]
mod common;

use common::{Arrival, Behaviour, FakeDaemon};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `memseal --socket SOCKET ARGS...` with nothing on standard input.
fn memseal(socket: &Path, args: &[&str]) -> Output {
    memseal_with_input(socket, args, Stdio::null())
}

fn memseal_with_input(socket: &Path, args: &[&str], stdin: Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memseal"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("MEMSEAL_SOCKET")
        .stdin(stdin)
        .output()
        .unwrap()
}

/// `memseal ARGS...` fed `input` through a pipe.
fn memseal_piped(socket: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_memseal"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("MEMSEAL_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // memseal may stop reading early (an input over the limit); that is its answer.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

fn status(output: &Output) -> i32 {
    output
        .status
        .code()
        .expect("memseal was killed by a signal")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn json(output: &Output) -> Value {
    assert_eq!(status(output), 0, "{}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_pipe_is_published_as_a_sealed_memfd() {
    let daemon = FakeDaemon::start();
    let out = memseal_piped(&daemon.path, &["publish", "piped/one"], b"through a pipe");
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("published piped/one version 1: 14 B (14 bytes), blake3 "),
        "{text}"
    );
    assert_eq!(
        daemon.arrivals(),
        [("piped/one".to_owned(), Arrival::SealedMemfd)]
    );

    let got = memseal(&daemon.path, &["get", "piped/one"]);
    assert_eq!(status(&got), 0, "{}", stderr(&got));
    assert_eq!(got.stdout, b"through a pipe");
}

#[test]
fn a_file_goes_as_a_descriptor_by_path_or_on_stdin() {
    let daemon = FakeDaemon::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.bin");
    std::fs::write(&path, b"a regular file").unwrap();

    let out = memseal(
        &daemon.path,
        &["publish", "files/by-path", path.to_str().unwrap()],
    );
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let stdin = std::fs::File::open(&path).unwrap();
    let out = memseal_with_input(&daemon.path, &["publish", "files/on-stdin"], stdin.into());
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(
        daemon.arrivals(),
        [
            ("files/by-path".to_owned(), Arrival::RegularFile),
            ("files/on-stdin".to_owned(), Arrival::RegularFile),
        ]
    );
}

#[test]
fn the_socket_can_come_from_the_environment() {
    let daemon = FakeDaemon::start();
    let out = Command::new(env!("CARGO_BIN_EXE_memseal"))
        .args(["status", "--json"])
        .env("MEMSEAL_SOCKET", &daemon.path)
        .output()
        .unwrap();
    assert_eq!(json(&out)["socket"], daemon.path.to_str().unwrap());
}

#[test]
fn get_selects_versions_and_writes_files() {
    let daemon = FakeDaemon::start();
    for body in [&b"first"[..], b"second"] {
        let out = memseal_piped(&daemon.path, &["--json", "publish", "doc"], body);
        json(&out);
    }
    let first = json(&memseal(
        &daemon.path,
        &["stat", "doc", "--version", "1", "--json"],
    ));
    let hash = first["hash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 64);

    let by_hash = memseal(&daemon.path, &["get", "doc", "--hash", &hash]);
    assert_eq!(by_hash.stdout, b"first");
    let latest = memseal(&daemon.path, &["get", "doc"]);
    assert_eq!(latest.stdout, b"second");

    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.bin");
    std::fs::write(&target, b"something much longer that must be truncated").unwrap();
    let out = memseal(
        &daemon.path,
        &[
            "get",
            "doc",
            "--version",
            "1",
            "-o",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read(&target).unwrap(), b"first");
}

#[test]
fn ls_stat_rm_and_status() {
    let daemon = FakeDaemon::start();
    for name in ["m/a", "m/b", "m/c", "other"] {
        json(&memseal_piped(
            &daemon.path,
            &["--json", "publish", name],
            name.as_bytes(),
        ));
    }

    let listed = json(&memseal(&daemon.path, &["ls", "m/", "--json"]));
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m/a", "m/b", "m/c"]);

    let table = stdout(&memseal(&daemon.path, &["ls"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(lines[4].starts_with("other "), "{table}");
    assert!(lines[4].contains(" 5 B "), "{table}");

    let stat = stdout(&memseal(&daemon.path, &["stat", "m/b"]));
    for field in [
        "name",
        "version",
        "size",
        "blake3",
        "published",
        "publisher",
    ] {
        assert!(
            stat.lines().any(|l| l.starts_with(field)),
            "{field} missing: {stat}"
        );
    }
    assert!(stat.contains(" UTC ("), "{stat}");

    let removed = json(&memseal(&daemon.path, &["--json", "rm", "m/b"]));
    assert_eq!(removed["removed"], 1);
    let out = memseal(&daemon.path, &["rm", "m/a", "--version", "1"]);
    assert_eq!(stdout(&out), "removed version 1 of m/a\n");

    let counters = json(&memseal(&daemon.path, &["status", "--json"]));
    assert_eq!(counters["server"], common::SERVER_NAME);
    assert_eq!(counters["names"], 2);
    assert_eq!(
        counters["limits"]["max_asset_size"],
        common::LIMITS.max_asset_size
    );
    let text = stdout(&memseal(&daemon.path, &["status"]));
    assert!(text.contains("connections"), "{text}");
}

#[test]
fn exit_statuses() {
    let daemon = FakeDaemon::start();

    let out = memseal(&daemon.path, &["get", "missing"]);
    assert_eq!(status(&out), 4);
    assert_eq!(
        stderr(&out),
        "memseal: not found: no asset named 'missing'\n"
    );

    let out = memseal_piped(&daemon.path, &["publish", "bad//name"], b"x");
    assert_eq!(status(&out), 6, "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("memseal: invalid asset name"),
        "{}",
        stderr(&out)
    );

    let too_big = vec![0u8; common::LIMITS.max_asset_size as usize + 1];
    let out = memseal_piped(&daemon.path, &["publish", "big"], &too_big);
    assert_eq!(status(&out), 6, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("larger than the daemon's limit"),
        "{}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let out = memseal(&dir.path().join("absent.sock"), &["status"]);
    assert_eq!(status(&out), 3);
    assert!(
        stderr(&out).starts_with("memseal: cannot reach memseald at "),
        "{}",
        stderr(&out)
    );

    let out = memseal(&daemon.path, &["get"]);
    assert_eq!(status(&out), 2);
    let out = memseal(
        &daemon.path,
        &["stat", "x", "--version", "1", "--hash", "00"],
    );
    assert_eq!(status(&out), 2);

    let help = stdout(&memseal(&daemon.path, &["--help"]));
    assert!(
        help.contains("7  protocol or verification failure"),
        "{help}"
    );
}

#[test]
fn an_unsealed_asset_is_a_verification_failure() {
    let daemon = FakeDaemon::with(Behaviour::UnsealedFetch);
    json(&memseal_piped(
        &daemon.path,
        &["--json", "publish", "x"],
        b"bytes",
    ));
    let out = memseal(&daemon.path, &["get", "x"]);
    assert_eq!(status(&out), 7);
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("lacks the seal(s) WRITE, GROW, SHRINK"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_closed_stdout_pipe_is_not_an_error() {
    let daemon = FakeDaemon::start();
    let body = vec![7u8; 512 * 1024];
    json(&memseal_piped(
        &daemon.path,
        &["--json", "publish", "large"],
        &body,
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_memseal"))
        .args(["--socket", daemon.path.to_str().unwrap(), "get", "large"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end without reading: the write fails with EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(out.stderr.is_empty());
}
