//! `memseal exec`: assets handed to a program in another language as
//! inherited descriptors, which it maps or reopens read-only itself.

use memseal::proto::message::hash_to_hex;
use memseal_tests::{crc32, is_root, pattern, python3, skip, Daemon};
use std::path::{Path, PathBuf};
use std::process::Output;

/// A Python child that checks its descriptor as any careful reader would,
/// maps it privately and read-only, and prints what it saw.
const READER: &str = r#"
import fcntl, mmap, os, sys, zlib
var = sys.argv[1]
fd = int(os.environ["MEMSEAL_FD_" + var])
size = int(os.environ["MEMSEAL_SIZE_" + var])
seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
needed = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
assert seals & needed == needed, seals
assert os.fstat(fd).st_size == size
assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
view = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
# A fresh open file description: its offset is this process's own.
head = os.read(fd, 4)
print(size, zlib.crc32(view), os.environ["MEMSEAL_HASH_" + var], head.hex())
"#;

fn python_or_skip(test: &str) -> Option<PathBuf> {
    let python = python3();
    if python.is_none() {
        skip(test, "no python3 interpreter");
    }
    python
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_python_child_maps_the_inherited_descriptor() {
    let Some(python) = python_or_skip("a_python_child_maps_the_inherited_descriptor") else {
        return;
    };
    let daemon = Daemon::start();
    let data = pattern(3 << 20, 11);
    let info = daemon
        .client()
        .publish_bytes("models/en-small.bin", &data)
        .unwrap();

    let output = daemon
        .cli()
        .args(["exec", "--asset", "models/en-small.bin", "--"])
        .arg(&python)
        .args(["-c", READER, "MODELS_EN_SMALL_BIN"])
        .output()
        .unwrap();
    let expected = format!(
        "{} {} {} {}\n",
        data.len(),
        crc32(&data),
        hash_to_hex(&info.hash),
        hex(&data[..4])
    );
    assert_eq!(stdout(&output), expected);
}

#[test]
fn an_unprivileged_child_reopens_the_descriptor_read_only() {
    let Some(python) = python_or_skip("an_unprivileged_child_reopens_the_descriptor_read_only")
    else {
        return;
    };
    let daemon = Daemon::start();
    daemon.client().publish_bytes("conf/x", b"abcdef").unwrap();
    // As root, drop to nobody between `memseal exec` and the reader, as a
    // service launcher would; otherwise the caller is unprivileged already.
    let mut command = daemon.cli();
    command.args(["exec", "--asset", "conf/x=CONF", "--"]);
    if is_root() {
        command.args([
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
        ]);
    }
    let reader = r#"
import os
fd = os.environ["MEMSEAL_FD_CONF"]
with open("/proc/self/fd/" + fd, "rb") as f:
    data = f.read()
try:
    open("/proc/self/fd/" + fd, "r+b")
    verdict = "writable"
except PermissionError:
    verdict = "read-only"
print(os.getuid(), data.decode(), verdict)
"#;
    let output = command.arg(&python).args(["-c", reader]).output().unwrap();
    let text = stdout(&output);
    let uid = rustix::process::getuid().as_raw();
    let expected_uid = if is_root() { 65534 } else { uid };
    assert_eq!(text, format!("{expected_uid} abcdef read-only\n"));
}

#[test]
fn the_python_example_reader_works_under_exec() {
    let Some(python) = python_or_skip("the_python_example_reader_works_under_exec") else {
        return;
    };
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python");
    let script = clients.join("example_reader.py");
    if !script.exists() {
        skip(
            "the_python_example_reader_works_under_exec",
            "clients/python/example_reader.py is absent",
        );
        return;
    }
    let daemon = Daemon::start();
    daemon
        .client()
        .publish_bytes("greetings/hello.txt", b"hello, world\n")
        .unwrap();
    let output = daemon
        .cli()
        .args(["exec", "--asset", "greetings/hello.txt", "--"])
        .arg(&python)
        .arg(&script)
        .arg("greetings/hello.txt")
        // The reader must not need the daemon: point it nowhere.
        .env("MEMSEAL_SOCKET", daemon.dir().join("no-such-socket"))
        .env("PYTHONPATH", &clients)
        .output()
        .unwrap();
    let text = stdout(&output);
    assert!(
        text.contains("13 bytes from inherited descriptor"),
        "{text}"
    );
    assert!(text.contains("|hello, world.|"), "{text}");
}

#[test]
fn several_assets_and_explicit_variable_names() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    let a = client.publish_bytes("a/one", b"1").unwrap();
    let b = client.publish_bytes("b-two", b"22").unwrap();
    let output = daemon
        .cli()
        .args(["exec", "--asset", "a/one", "--asset", "b-two=SECOND", "--"])
        .args(["sh", "-c"])
        .arg(
            "echo $MEMSEAL_SIZE_A_ONE $MEMSEAL_VERSION_A_ONE $MEMSEAL_HASH_A_ONE; \
             echo $MEMSEAL_SIZE_SECOND $MEMSEAL_HASH_SECOND; \
             cat <&$MEMSEAL_FD_A_ONE; cat <&$MEMSEAL_FD_SECOND",
        )
        .output()
        .unwrap();
    assert_eq!(
        stdout(&output),
        format!(
            "1 1 {}\n2 {}\n122",
            hash_to_hex(&a.hash),
            hash_to_hex(&b.hash)
        )
    );
}

#[test]
fn failures_before_exec_run_nothing() {
    let daemon = Daemon::start();
    daemon.client().publish_bytes("x", b"x").unwrap();
    let marker = daemon.dir().join("ran");
    let touch = format!("touch {}", marker.display());

    let missing = daemon
        .cli()
        .args([
            "exec", "--asset", "x", "--asset", "absent", "--", "sh", "-c", &touch,
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(4), "{missing:?}");

    let clash = daemon
        .cli()
        .args([
            "exec", "--asset", "x", "--asset", "x=X", "--", "sh", "-c", &touch,
        ])
        .output()
        .unwrap();
    assert_eq!(clash.status.code(), Some(2), "{clash:?}");
    assert!(String::from_utf8_lossy(&clash.stderr).contains("MEMSEAL_FD_X"));

    let bad_var = daemon
        .cli()
        .args(["exec", "--asset", "x=a-b", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(bad_var.status.code(), Some(2));

    let not_found = daemon
        .cli()
        .args(["exec", "--asset", "x", "--", "/no/such/program"])
        .output()
        .unwrap();
    assert_eq!(not_found.status.code(), Some(127));
    assert!(!marker.exists(), "the command ran despite a failure");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
