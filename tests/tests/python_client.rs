//! The Python client in `clients/python/`, written from PROTOCOL.md alone,
//! against the real daemon and the real Rust client library.
//!
//! If these tests pass, the document is enough to build a working client:
//! the Python code shares nothing with the Rust crates but the text. Each
//! test runs small Python scripts with the client importable, and passes
//! bytes to compare through files in the daemon's private directory.
//!
//! The package runs from its source directory (`PYTHONPATH`), so these
//! tests need no virtual environment: its core is standard-library Python.
//! Python 3.9 or newer must be on PATH as `python3`; without it every test
//! here fails and says so, rather than passing by skipping. The package's
//! own pytest suite (`clients/python/tests`) covers numpy and safetensors.

use memseal::{ErrorCode, Selector};
use memseal_proto::codec::encode_request;
use memseal_proto::{PublishSource, Request};
use memseal_tests::{pattern, Daemon, SPAWN_LOCK};
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The directory holding the `memseal` package and `example_reader.py`.
fn python_client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("clients")
        .join("python")
}

/// Fail loudly, in every test, if no suitable Python is installed.
fn require_python() {
    const TOO_OLD: &str = "python3 on PATH is older than 3.9; the Python client tests need \
                           3.9 or newer, as the memseal package does";
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let check = CHECK.get_or_init(|| {
        let probe = Command::new("python3")
            .args([
                "-c",
                "import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)",
            ])
            .status();
        match probe {
            Ok(status) if status.success() => Ok(()),
            Ok(_) => Err(TOO_OLD.to_owned()),
            Err(e) => Err(format!(
                "cannot run python3 ({e}); install Python 3.9 or newer to run the Python \
                 client tests"
            )),
        }
    });
    if let Err(why) = check {
        panic!("{why}");
    }
}

/// A `python3` command with the client importable, pointed at `socket`,
/// that leaves no bytecode behind in the source tree.
fn python(socket: &Path) -> Command {
    require_python();
    let mut command = Command::new("python3");
    command
        .env("PYTHONPATH", python_client_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("MEMSEAL_SOCKET", socket)
        .stdin(Stdio::null());
    command
}

/// Run `script` (Python source) with `args`; it must succeed. Returns stdout.
fn run_script(socket: &Path, script: &str, args: &[&OsStr]) -> String {
    let output = python(socket)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    expect_success(&output);
    String::from_utf8(output.stdout).expect("python output is UTF-8")
}

fn expect_success(output: &Output) {
    assert!(
        output.status.success(),
        "python failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The value printed on the line `key=value` of a script's output.
fn field<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no '{key}=' line in:\n{output}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn python_publishes_and_fetches_its_own_bytes() {
    let daemon = Daemon::start();
    let bytes = pattern(300_000, 1);
    let input = daemon.dir().join("input.bin");
    fs::write(&input, &bytes).unwrap();

    let out = run_script(
        daemon.socket(),
        r#"
import sys, memseal
data = open(sys.argv[1], "rb").read()
with memseal.Client(client_name="python-test") as client:
    info = client.publish_bytes("py/blob", data)
    assert info.size == len(data) and info.version == 1, info
    with client.fetch("py/blob") as asset:
        assert asset.info == info, (asset.info, info)
        assert len(asset) == len(data)
        assert asset.view == data, "fetched bytes differ from published bytes"
        try:
            asset.view[0] = 0
            raise AssertionError("the mapping accepted a write")
        except TypeError:
            pass
    assert client.stat("py/blob", hash=info.hash) == info
    assert client.stat("py/blob", version=1) == info
    empty = client.publish_bytes("py/empty", b"")
    with client.fetch("py/empty") as asset:
        assert len(asset) == 0 and bytes(asset) == b""
    print("hash=" + info.hash_hex)
    print("empty_hash=" + empty.hash_hex)
    print("server=" + client.server)
    print("max_frame_len=%d" % client.limits.max_frame_len)
"#,
        &[input.as_os_str()],
    );

    // The hash the Python client decoded is the daemon's BLAKE3 of the bytes.
    assert_eq!(field(&out, "hash"), hex(blake3::hash(&bytes).as_bytes()));
    assert_eq!(field(&out, "empty_hash"), hex(blake3::hash(b"").as_bytes()));
    assert!(field(&out, "server").starts_with("memseald "), "{out}");
    assert_eq!(field(&out, "max_frame_len"), "65536");

    // And the Rust library sees exactly what Python published.
    let mut client = daemon.client();
    let asset = client.fetch("py/blob").unwrap();
    assert!(asset[..] == bytes[..]);
}

#[test]
fn python_and_rust_read_each_others_assets() {
    let daemon = Daemon::start();
    let mut client = daemon.client();

    let from_rust = pattern((1 << 20) + 17, 2);
    let rust_info = client.publish_bytes("rust/asset", &from_rust).unwrap();
    let expected = daemon.dir().join("from-rust.bin");
    fs::write(&expected, &from_rust).unwrap();

    let from_python = pattern(70_000, 3);
    let for_python = daemon.dir().join("from-python.bin");
    fs::write(&for_python, &from_python).unwrap();

    let out = run_script(
        daemon.socket(),
        r#"
import fcntl, os, sys, memseal
expected = open(sys.argv[1], "rb").read()
with memseal.Client() as client:
    with client.fetch("rust/asset") as asset:
        assert asset.view == expected, "Python read different bytes than Rust published"
        print("version=%d" % asset.info.version)
        print("hash=" + asset.info.hash_hex)
    # A stream publish, and both kinds of descriptor publish.
    data = open(sys.argv[2], "rb").read()
    client.publish_bytes("py/stream", data)
    with open(sys.argv[2], "rb") as f:
        client.publish_fd("py/file", f.fileno())
    memfd = os.memfd_create("py-sealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(memfd, data)
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    client.publish_fd("py/memfd", memfd)
    os.close(memfd)
"#,
        &[expected.as_os_str(), for_python.as_os_str()],
    );
    assert_eq!(field(&out, "version"), rust_info.version.to_string());
    assert_eq!(field(&out, "hash"), hex(&rust_info.hash));

    for name in ["py/stream", "py/file", "py/memfd"] {
        let asset = client.fetch(name).unwrap();
        assert!(asset[..] == from_python[..], "{name} differs");
        assert_eq!(
            asset.hash(),
            blake3::hash(&from_python).as_bytes(),
            "{name}"
        );
    }
}

#[test]
fn python_listing_follows_every_page() {
    let daemon = Daemon::start();
    // More than two pages of 128, plus names outside the prefix.
    let out = run_script(
        daemon.socket(),
        r#"
import memseal
with memseal.Client() as client:
    for i in range(300):
        client.publish_bytes("many/%03d" % i, b"%d" % i)
    client.publish_bytes("other/x", b"x")
    client.publish_bytes("many/007", b"seven again")
    listed = client.list("many/")
    names = [a.name for a in listed]
    assert names == ["many/%03d" % i for i in range(300)], names[:5]
    assert listed[7].version == 2 and listed[7].size == 11, listed[7]
    assert len(client.list()) == 301
    assert client.list("nothing/") == []
    status = client.status()
    print("names=%d" % status.names)
    print("versions=%d" % status.versions)
    print("removed=%d" % client.remove("many/007"))
    print("left=%d" % len(client.list("many/")))
"#,
        &[],
    );
    assert_eq!(field(&out, "names"), "301");
    // keep_versions defaults to 1: the second publish of many/007 replaced the first.
    assert_eq!(field(&out, "versions"), "301");
    assert_eq!(field(&out, "removed"), "1");
    assert_eq!(field(&out, "left"), "299");
    assert_eq!(daemon.client().list("many/").unwrap().len(), 299);
}

#[test]
fn python_gets_typed_errors_and_keeps_its_connection() {
    let daemon = Daemon::builder().args(["--max-asset-size", "1K"]).start();
    let out = run_script(
        daemon.socket(),
        r#"
import memseal
from memseal import ErrorCode

def code_of(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except memseal.ServerError as e:
        assert e.message and str(e), e
        return e.code
    raise AssertionError("no error from %s" % call.__name__)

with memseal.Client() as client:
    print("fetch_missing=%s" % code_of(client.fetch, "no/such/asset").name)
    print("stat_missing_version=%s" % code_of(client.stat, "no/such/asset", version=9).name)
    print("remove_missing=%s" % code_of(client.remove, "no/such/asset").name)
    print("invalid_name=%s" % code_of(client.publish_bytes, "a/../b", b"x").name)
    print("invalid_prefix=%s" % code_of(client.list, "/abs").name)
    # Refused before Continue: the client must not send the 2 KiB.
    print("too_large=%s" % code_of(client.publish_bytes, "big", b"x" * 2048).name)
    assert isinstance(code_of(client.fetch, "missing"), ErrorCode)
    # Every refusal above left the connection usable.
    client.publish_bytes("small", b"fits")
    print("after=%d" % client.fetch("small").info.version)
    print("limit=%d" % client.limits.max_asset_size)
"#,
        &[],
    );
    assert_eq!(field(&out, "fetch_missing"), "NOT_FOUND");
    assert_eq!(field(&out, "stat_missing_version"), "NOT_FOUND");
    assert_eq!(field(&out, "remove_missing"), "NOT_FOUND");
    assert_eq!(field(&out, "invalid_name"), "INVALID_NAME");
    assert_eq!(field(&out, "invalid_prefix"), "INVALID_NAME");
    assert_eq!(field(&out, "too_large"), "TOO_LARGE");
    assert_eq!(field(&out, "after"), "1");
    assert_eq!(field(&out, "limit"), "1024");

    // The same codes, as the Rust library reports them.
    let err = daemon.client().fetch("no/such/asset").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}

#[test]
fn python_watches_changes_made_by_either_client() {
    let daemon = Daemon::start();
    let socket = daemon.socket().to_path_buf();
    let mut watcher = python(daemon.socket())
        .arg("-c")
        .arg(
            r#"
import signal, memseal
signal.alarm(60)  # never hang the test run: die if the events do not come
client = memseal.Client()
try:
    client.watch("/bad")
except memseal.ServerError as e:
    print("bad_prefix=%s" % e.code.name, flush=True)
events = client.watch("w/")
print("watching", flush=True)
for _ in range(4):
    kind, info = next(events)
    print("event=%s %s %d %d" % (kind, info.name, info.version, info.size), flush=True)
"#,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait for the watch to be confirmed, then change things from Rust.
    let mut stdout = BufReader::new(watcher.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("watching") {
        let mut line = String::new();
        let read = stdout.read_line(&mut line).unwrap();
        assert!(read > 0, "the watcher ended early: {seen}");
        seen.push_str(&line);
    }
    let mut client = memseal::Client::connect_to(&socket).unwrap();
    client.publish_bytes("w/a", b"1").unwrap();
    client.publish_bytes("other/x", b"not watched").unwrap();
    client.publish_bytes("w/a", b"22").unwrap();
    client.remove("w/a", None).unwrap();

    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let output = watcher.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the watcher failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = seen + &rest;
    assert_eq!(field(&out, "bad_prefix"), "INVALID_NAME");
    let events: Vec<&str> = out
        .lines()
        .filter_map(|line| line.strip_prefix("event="))
        .collect();
    // keep_versions is 1: the second publish pushes version 1 out.
    assert_eq!(
        events,
        [
            "published w/a 1 1",
            "published w/a 2 2",
            "removed w/a 1 1",
            "removed w/a 2 2"
        ]
    );
}

#[test]
fn python_reports_a_busy_daemon_and_an_untrusted_one() {
    let daemon = Daemon::builder().args(["--max-connections", "1"]).start();
    // The one allowed connection, held by the Rust library. The harness's
    // readiness probe may still occupy the slot for a moment: retry.
    let mut holder = None;
    let got_slot = daemon.eventually(Duration::from_secs(10), || {
        holder = memseal::Client::connect_to(daemon.socket()).ok();
        holder.is_some()
    });
    assert!(got_slot, "could not take the only connection slot");
    let out = run_script(
        daemon.socket(),
        r#"
import os, memseal
try:
    memseal.Client()
    raise AssertionError("connected past the connection limit")
except memseal.ServerError as e:
    print("busy=%s" % e.code.name)
try:
    memseal.Client(expect_server_uid=os.geteuid() + 1)
    raise AssertionError("trusted a daemon running as another uid")
except memseal.PeerRejected as e:
    print("rejected=%d" % e.uid)
"#,
        &[],
    );
    assert_eq!(field(&out, "busy"), "BUSY");
    assert_eq!(
        field(&out, "rejected"),
        rustix::process::geteuid().as_raw().to_string()
    );
    drop(holder);
}

#[test]
fn python_sends_the_same_bytes_as_the_reference_encoder() {
    let daemon = Daemon::start();
    // Print every frame the Python client sends, one hex line each.
    let out = run_script(
        daemon.socket(),
        r#"
import memseal
sent = []
def trace(direction, frame, fds):
    if direction == "send":
        sent.append(frame.hex())
with memseal.Client(client_name="trace-test", trace=trace) as client:
    client.publish_bytes("t/a", b"abc")
    info = client.stat("t/a")
    client.fetch("t/a").close()
    for call in (lambda: client.stat("t/a", version=300),
                 lambda: client.stat("t/a", version=1 << 40),
                 lambda: client.stat("t/a", hash=info.hash),
                 lambda: client.remove("t/none", version=70000),
                 lambda: client.remove("t/none")):
        try:
            call()
        except memseal.ServerError:
            pass
    client.list("t/")
    client.status()
for frame in sent:
    print("frame=" + frame)
"#,
        &[],
    );
    let sent: Vec<&str> = out
        .lines()
        .filter_map(|line| line.strip_prefix("frame="))
        .collect();
    let hash = *blake3::hash(b"abc").as_bytes();
    let name = |n: &str| n.to_owned();
    let expected = [
        Request::Hello {
            version: memseal_proto::PROTOCOL_VERSION_2,
            client: name("trace-test"),
        },
        Request::Publish {
            name: name("t/a"),
            size: 3,
            source: PublishSource::Stream,
        },
        Request::Stat {
            name: name("t/a"),
            selector: Selector::Latest,
        },
        Request::Fetch {
            name: name("t/a"),
            selector: Selector::Latest,
        },
        Request::Stat {
            name: name("t/a"),
            selector: Selector::Version(300),
        },
        Request::Stat {
            name: name("t/a"),
            selector: Selector::Version(1 << 40),
        },
        Request::Stat {
            name: name("t/a"),
            selector: Selector::Hash(hash),
        },
        Request::Remove {
            name: name("t/none"),
            version: Some(70_000),
        },
        Request::Remove {
            name: name("t/none"),
            version: None,
        },
        Request::List {
            prefix: name("t/"),
            start_after: None,
        },
        Request::Status,
    ];
    let expected: Vec<String> = expected
        .iter()
        .map(|request| hex(&encode_request(request).unwrap()))
        .collect();
    assert_eq!(sent, expected);
}

#[test]
fn example_reader_maps_fetched_and_inherited_descriptors() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client
        .publish_bytes("models/en.bin", b"hello, sealed world\n")
        .unwrap();
    let reader = python_client_dir().join("example_reader.py");

    let output = python(daemon.socket())
        .arg(&reader)
        .arg("models/en.bin")
        .output()
        .unwrap();
    expect_success(&output);
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.contains("models/en.bin: 20 bytes from memseald, version 1"),
        "{out}"
    );
    assert!(out.contains("68 65 6c 6c 6f 2c 20 73"), "{out}");

    // A descriptor the Rust library fetched and verified, handed to the
    // Python reader through the environment, with no daemon reachable.
    let asset = client.fetch("models/en.bin").unwrap();
    let fd = asset.into_fd();
    // `dup` gives a copy without close-on-exec, which the child inherits.
    let inheritable = rustix::io::dup(&fd).unwrap();
    let mut command = python(&daemon.dir().join("no-daemon-here.sock"));
    command
        .arg(&reader)
        .arg("models/en.bin")
        .arg("--count")
        .arg("5")
        .env(
            "MEMSEAL_FD_MODELS_EN_BIN",
            inheritable.as_raw_fd().to_string(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = {
        let _only_this_child_inherits = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let child = command.spawn().unwrap();
        drop(inheritable);
        child
    };
    let output = child.wait_with_output().unwrap();
    expect_success(&output);
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("20 bytes from inherited descriptor"), "{out}");
    assert!(
        out.contains("first 5 bytes: 68 65 6c 6c 6f |hello|"),
        "{out}"
    );
}

/// A stand-in for memseald that completes the handshake and then answers
/// each `Fetch` with a descriptor chosen by the requested name, most of
/// them unacceptable. Frames are built by hand from PROTOCOL.md.
const FAKE_SERVER: &str = r#"
import fcntl, os, socket, struct, sys

def varint(v):
    if v <= 250: return bytes([v])
    if v <= 0xffff: return b"\xfb" + struct.pack("<H", v)
    if v <= 0xffffffff: return b"\xfc" + struct.pack("<I", v)
    return b"\xfd" + struct.pack("<Q", v)

def string(s):
    data = s.encode()
    return varint(len(data)) + data

def frame(fd_count, message):
    return struct.pack("<I", 1 + len(message)) + bytes([fd_count]) + message

def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        try:
            chunk = conn.recv(n - len(data))
        except ConnectionResetError:
            # The client hung up on a reply it refused, unread bytes and all.
            return None
        if not chunk: return None
        data += chunk
    return data

def read_frame(conn):
    head = recv_exact(conn, 4)
    if head is None: return None
    return recv_exact(conn, struct.unpack("<I", head)[0])

def memfd(data, seals):
    fd = os.memfd_create("fake-asset", os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd

WRITE, GROW, SHRINK, SEAL, FUTURE_WRITE = 8, 4, 2, 1, 16
BODY = b"fake asset bytes"

def descriptors(kind):
    """The descriptors to send and the size to announce."""
    if kind == "sealed":
        return [memfd(BODY, WRITE | GROW | SHRINK | SEAL)], len(BODY)
    if kind == "unsealed":
        return [memfd(BODY, 0)], len(BODY)
    if kind == "no-shrink":
        return [memfd(BODY, WRITE | GROW)], len(BODY)
    if kind == "future-write":
        return [memfd(BODY, FUTURE_WRITE | GROW | SHRINK)], len(BODY)
    if kind == "wrong-size":
        return [memfd(BODY, WRITE | GROW | SHRINK)], 4096
    if kind == "regular-file":
        # The interpreter itself: a regular file on a disk file system,
        # which cannot carry seals at all.
        fd = os.open(sys.executable, os.O_RDONLY)
        return [fd], os.fstat(fd).st_size
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        return [r], 0
    if kind == "two-fds":
        return [memfd(BODY, WRITE | GROW | SHRINK) for _ in range(2)], len(BODY)
    if kind == "flood":
        # More than the frame declares: all 12 fit the receiver's room
        # (256, more than one message can carry), so the count is refused.
        return [memfd(BODY, WRITE | GROW | SHRINK) for _ in range(12)], len(BODY)
    raise ValueError(kind)

def asset_reply(name, size, fd_count):
    info = string(name) + varint(1) + varint(size) + bytes(32) + varint(0) + varint(0)
    return frame(fd_count, varint(3) + info)

listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(8)
while True:
    conn, _ = listener.accept()
    read_frame(conn)  # Hello
    limits = varint(65536) + varint(1 << 20) + varint(1 << 20) + varint(255) + varint(1)
    conn.sendall(frame(0, varint(0) + varint(1) + string("fake 0") + limits))
    while True:
        request = read_frame(conn)
        if request is None:
            break
        name = request[3 : 3 + request[2]].decode()
        if name == "stray-fd":
            # An Info reply (no descriptor declared) with a descriptor on it.
            fds, size = [memfd(BODY, WRITE | GROW | SHRINK)], len(BODY)
            reply = frame(0, varint(4) + asset_reply(name, size, 0)[6:])
        else:
            fds, size = descriptors(name)
            reply = asset_reply(name, size, 1)
        conn.sendmsg([reply], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))])
        for fd in fds:
            os.close(fd)
    conn.close()
"#;

/// Runs the fake server until dropped.
struct FakeServer {
    child: Child,
}

impl FakeServer {
    fn start(socket: &Path) -> FakeServer {
        let mut child = python(socket)
            .arg("-c")
            .arg(FAKE_SERVER)
            .arg(socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the fake server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the fake server exited early: {status}");
            }
            assert!(Instant::now() < deadline, "the fake server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        FakeServer { child }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn python_refuses_descriptors_that_are_not_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fake.sock");
    let _server = FakeServer::start(&socket);
    let out = run_script(
        &socket,
        r#"
import os, memseal

def memfds_open():
    """Descriptors and mappings of this process that name the fake memfd."""
    fds = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            if "fake-asset" in os.readlink("/proc/self/fd/" + entry):
                fds += 1
        except OSError:
            pass
    maps = sum("fake-asset" in line for line in open("/proc/self/maps"))
    return fds, maps

with memseal.Client() as client:
    with client.fetch("sealed") as asset:
        assert bytes(asset) == b"fake asset bytes"
        fds, maps = memfds_open()
        assert fds >= 1 and maps == 1, (fds, maps)
    assert memfds_open() == (0, 0), memfds_open()
    for kind in ("unsealed", "no-shrink", "future-write", "wrong-size", "regular-file", "pipe"):
        try:
            client.fetch(kind)
            raise AssertionError("accepted a %s descriptor" % kind)
        except memseal.VerifyError as e:
            print("%s=%s" % (kind, e))
        assert memfds_open() == (0, 0), (kind, memfds_open())
    # A refused descriptor leaves the stream at a frame boundary: go on.
    with client.fetch("sealed") as asset:
        assert len(asset) == 16

for kind in ("two-fds", "flood", "stray-fd"):
    client = memseal.Client()
    try:
        client.fetch(kind)
        raise AssertionError("accepted a %s reply" % kind)
    except memseal.ProtocolError as e:
        print("%s=%s" % (kind, e))
    assert memfds_open() == (0, 0), (kind, memfds_open())
"#,
        &[],
    );
    assert!(
        field(&out, "unsealed").contains("lacks SHRINK|GROW|WRITE"),
        "{out}"
    );
    assert!(field(&out, "no-shrink").contains("lacks SHRINK"), "{out}");
    assert!(field(&out, "future-write").contains("lacks WRITE"), "{out}");
    assert!(
        field(&out, "wrong-size").contains("announced 4096"),
        "{out}"
    );
    // "Not sealable" on a disk file system; where the root is tmpfs the
    // file answers F_GET_SEALS but carries no seals.
    let regular = field(&out, "regular-file");
    assert!(
        regular.contains("not a sealable file") || regular.contains("lacks SHRINK|GROW|WRITE"),
        "{out}"
    );
    assert!(field(&out, "pipe").contains("not a regular file"), "{out}");
    assert!(
        field(&out, "two-fds").contains("truncated")
            || field(&out, "two-fds").contains("2 arrived"),
        "{out}"
    );
    assert!(
        field(&out, "flood").contains("truncated") || field(&out, "flood").contains("12 arrived"),
        "{out}"
    );
    assert!(field(&out, "stray-fd").contains("declared 0"), "{out}");
}
