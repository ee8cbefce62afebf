//! End-to-end behaviour of the core: the real memseald, the real client
//! library and CLI, real memfds.

use memseal::{ErrorCode, Selector};
use memseal_tests::{is_root, pattern, Daemon};
use rustix::fs::SealFlags;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ALL_SEALS: SealFlags = SealFlags::WRITE
    .union(SealFlags::GROW)
    .union(SealFlags::SHRINK)
    .union(SealFlags::SEAL);

#[test]
fn round_trips_are_byte_identical_at_every_size() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    for (i, size) in [0, 1, 4095, 4096, (1 << 20) + 1, 64 << 20]
        .into_iter()
        .enumerate()
    {
        let bytes = pattern(size, i as u64);
        let name = format!("sizes/{size}");
        let info = client.publish_bytes(&name, &bytes).unwrap();
        assert_eq!(info.size, size as u64);
        assert_eq!(info.version, 1);
        assert_eq!(&info.hash, blake3::hash(&bytes).as_bytes());
        let asset = client.fetch(&name).unwrap();
        assert_eq!(asset.len(), size);
        assert!(asset[..] == bytes[..], "bytes differ at size {size}");
        assert_eq!(asset.info(), &info);
    }
}

#[test]
fn fetched_descriptor_is_sealed_and_unwritable() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.publish_bytes("sealed", &pattern(10_000, 7)).unwrap();
    let asset = client.fetch("sealed").unwrap();
    let fd = asset.as_fd();

    let seals = rustix::fs::fcntl_get_seals(fd).unwrap();
    assert!(seals.contains(ALL_SEALS), "seals: {seals:?}");
    let mode = rustix::fs::fstat(fd).unwrap().st_mode & 0o777;
    assert_eq!(mode, 0o444);

    assert!(rustix::io::write(fd, b"x").is_err(), "write() succeeded");
    assert!(
        rustix::io::pwrite(fd, b"x", 0).is_err(),
        "pwrite() succeeded"
    );
    assert!(
        rustix::fs::ftruncate(fd, 1).is_err(),
        "ftruncate() succeeded"
    );
    assert!(
        rustix::fs::ftruncate(fd, 1 << 20).is_err(),
        "growing succeeded"
    );

    // A writable shared mapping is refused (EACCES on a read-only
    // description, EPERM on a write-sealed one).
    // No reference into the mapping is ever made; if the kernel wrongly grants it, it is unmapped
    // at once below.
    // SAFETY: a fresh mapping at an address the kernel picks (null hint) aliases nothing.
    let mapped = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            10_000,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            fd,
            0,
        )
    };
    if let Ok(addr) = mapped {
        // SAFETY: exactly the mapping made above, used by nothing.
        unsafe { rustix::mm::munmap(addr, 10_000) }.unwrap();
        panic!("a writable shared mapping of a sealed asset succeeded");
    }

    // Reopening through /proc/self/fd: read-only works, read-write does not.
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::File::open(&path).expect("read-only reopen");
    if is_root() {
        // Root bypasses mode bits, so check as an unprivileged user that
        // inherits the descriptor, and check that even root's writable
        // reopen cannot write.
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path);
        if let Ok(mut file) = rw {
            assert!(file.write_all(b"x").is_err(), "root wrote through a reopen");
        }
        let inherited = rustix::io::dup(fd).unwrap(); // no CLOEXEC: the child gets it
        let n = inherited.as_raw_fd();
        let status = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["sh", "-c", &format!("(exec 9</proc/self/fd/{n}) 2>/dev/null || exit 10; (exec 8<>/proc/self/fd/{n}) 2>/dev/null && exit 11; exit 0")])
            .stderr(Stdio::null())
            .status()
            .expect("setpriv");
        assert_eq!(
            status.code(),
            Some(0),
            "unprivileged reopen: 10 = read refused, 11 = write allowed"
        );
    } else {
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path);
        assert!(rw.is_err(), "read-write reopen succeeded");
    }
}

#[test]
fn identical_content_shares_one_memfd() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    let bytes = pattern(300_000, 3);
    let a = client.publish_bytes("dedup/a", &bytes).unwrap();
    let b = client.publish_bytes("dedup/b", &bytes).unwrap();
    assert_eq!(a.hash, b.hash);
    let status = client.status().unwrap();
    assert_eq!(status.blobs, 1);
    assert_eq!(status.bytes, bytes.len() as u64);
    let fa = client.fetch("dedup/a").unwrap();
    let fb = client.fetch("dedup/b").unwrap();
    let (sa, sb) = (
        rustix::fs::fstat(fa.as_fd()).unwrap(),
        rustix::fs::fstat(fb.as_fd()).unwrap(),
    );
    assert_eq!(
        (sa.st_dev, sa.st_ino),
        (sb.st_dev, sb.st_ino),
        "not the same memfd"
    );
}

#[test]
fn versions_selectors_and_old_mappings() {
    let daemon = Daemon::builder().args(["--keep-versions", "3"]).start();
    let mut client = daemon.client();
    let contents: Vec<Vec<u8>> = (0..4).map(|i| pattern(5000 + i, i as u64)).collect();
    let infos: Vec<_> = contents
        .iter()
        .map(|c| client.publish_bytes("model", c).unwrap())
        .collect();
    let versions: Vec<u64> = infos.iter().map(|i| i.version).collect();
    assert_eq!(versions, [1, 2, 3, 4]);

    // Three kept: version 1 is gone, 2..4 selectable by number and hash.
    let err = client
        .fetch_with("model", Selector::Version(1))
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    let v2 = client.fetch_with("model", Selector::Version(2)).unwrap();
    assert!(v2[..] == contents[1][..]);
    let by_hash = client
        .fetch_with("model", Selector::Hash(infos[2].hash))
        .unwrap();
    assert_eq!(by_hash.version(), 3);
    assert_eq!(client.fetch("model").unwrap().version(), 4);

    // A client holding an old version keeps a valid, unchanged mapping
    // after newer versions push it out and after it is removed.
    let held = client.fetch_with("model", Selector::Version(2)).unwrap();
    client.publish_bytes("model", b"five").unwrap();
    client.publish_bytes("model", b"six").unwrap();
    assert_eq!(
        client
            .fetch_with("model", Selector::Version(2))
            .unwrap_err()
            .code(),
        Some(ErrorCode::NotFound)
    );
    client.remove("model", None).unwrap();
    assert!(held[..] == contents[1][..]);
    assert_eq!(
        client.fetch("model").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    // Numbers are never reused after a remove.
    assert_eq!(client.publish_bytes("model", b"seven").unwrap().version, 7);
}

#[test]
fn list_stat_and_remove() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    for name in ["fonts/a.ttf", "fonts/b.ttf", "models/x", "fontsy"] {
        client.publish_bytes(name, name.as_bytes()).unwrap();
    }
    let names: Vec<String> = client
        .list("fonts/")
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["fonts/a.ttf", "fonts/b.ttf"]);
    assert_eq!(client.list("").unwrap().len(), 4);

    let stat = client.stat("models/x", Selector::Latest).unwrap();
    assert_eq!(stat.size, 8);
    assert_eq!(&stat.hash, blake3::hash(b"models/x").as_bytes());
    assert_eq!(stat.publisher_uid, rustix::process::geteuid().as_raw());

    assert_eq!(client.remove("fonts/a.ttf", None).unwrap(), 1);
    assert_eq!(client.list("fonts/").unwrap().len(), 1);
    assert_eq!(
        client.remove("fonts/a.ttf", None).unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
}

#[test]
fn listing_pages_through_many_names() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    for i in 0..300 {
        client
            .publish_bytes(&format!("many/{i:04}"), &[i as u8])
            .unwrap();
    }
    let listed = client.list("many/").unwrap();
    assert_eq!(listed.len(), 300);
    assert!(listed.windows(2).all(|w| w[0].name < w[1].name));
}

#[test]
fn not_found_and_invalid_names() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    assert_eq!(
        client.fetch("nothing").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    let long = "n".repeat(256);
    for bad in [
        "",
        "/etc/passwd",
        "a/../b",
        "a//b",
        "trailing/",
        "sp ace",
        long.as_str(),
    ] {
        let err = client.publish_bytes(bad, b"x").unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidName), "{bad:?}: {err}");
    }
    // A name that can never exist is refused as such on reads too.
    for bad in ["/etc/passwd", "a/../b", ""] {
        let err = client.fetch(bad).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidName), "{bad:?}: {err}");
        let err = client.stat(bad, Selector::Latest).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidName), "{bad:?}: {err}");
    }
    // The connection stays usable after refusals.
    client.publish_bytes("fine", b"x").unwrap();
}

#[test]
fn publishing_from_a_file_and_an_adopted_memfd() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    let bytes = pattern(3 << 20, 11);
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&bytes).unwrap();
    let info = client.publish_file("from/file", &file).unwrap();
    assert_eq!(&info.hash, blake3::hash(&bytes).as_bytes());
    assert!(client.fetch("from/file").unwrap()[..] == bytes[..]);

    let memfd = rustix::fs::memfd_create("adopt", rustix::fs::MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::io::write(&memfd, &bytes[..1000]).unwrap();
    rustix::fs::fcntl_add_seals(
        &memfd,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK,
    )
    .unwrap();
    let info = client.publish_sealed("from/memfd", memfd.as_fd()).unwrap();
    assert_eq!(&info.hash, blake3::hash(&bytes[..1000]).as_bytes());
    let fetched = client.fetch("from/memfd").unwrap();
    assert!(fetched[..] == bytes[..1000]);
    // Adopted, not copied: the client receives the very same inode.
    let (a, b) = (
        rustix::fs::fstat(&memfd).unwrap(),
        rustix::fs::fstat(fetched.as_fd()).unwrap(),
    );
    assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
}

#[test]
fn concurrent_publishers_and_fetchers() {
    let daemon = Daemon::start();
    let socket = daemon.socket().to_path_buf();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut client = memseal::Client::connect_to(&socket).unwrap();
                for round in 0..20u64 {
                    let bytes = pattern(10_000 + (t * 100) as usize, t * 1000 + round);
                    let name = format!("concurrent/{}", (t + round) % 8);
                    client.publish_bytes(&name, &bytes).unwrap();
                    let fetched = client.fetch(&format!("concurrent/{}", (t * 3 + round) % 8));
                    if let Ok(asset) = fetched {
                        // Whatever version we got, its bytes match its hash.
                        assert_eq!(blake3::hash(&asset).as_bytes(), asset.hash());
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut client = daemon.client();
    assert_eq!(client.list("concurrent/").unwrap().len(), 8);
}

#[test]
fn a_publisher_killed_mid_upload_leaves_nothing_behind() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    let before = client.status().unwrap();
    let mut peer = Command::new(memseal_tests::bin("memseal-test-peer"))
        .arg(daemon.socket())
        .args([
            "upload",
            "half/done",
            &(8 << 20).to_string(),
            &(3 << 20).to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(peer.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "sent");
    // Mid-upload: nothing visible yet.
    assert_eq!(
        client.fetch("half/done").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    peer.kill().unwrap();
    peer.wait().unwrap();
    assert!(daemon.eventually(Duration::from_secs(5), || client
        .status()
        .unwrap()
        .connections
        == 1));
    let after = client.status().unwrap();
    assert_eq!(after.bytes, before.bytes);
    assert_eq!(
        client.fetch("half/done").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    // The reservation was released: the whole budget is usable again.
    client
        .publish_bytes("half/done", &pattern(8 << 20, 1))
        .unwrap();
}

#[test]
fn ten_thousand_fetches_leak_no_descriptor() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client
        .publish_bytes("leak/check", &pattern(4096, 5))
        .unwrap();
    drop(client.fetch("leak/check").unwrap());
    let before = daemon.settled_fds();
    for _ in 0..10_000 {
        let asset = client.fetch("leak/check").unwrap();
        assert_eq!(asset.len(), 4096);
    }
    assert_eq!(
        daemon.settled_fds(),
        before,
        "daemon descriptor count changed"
    );
}

#[test]
fn cli_round_trips_a_64_mib_file() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    let bytes = pattern(64 << 20, 64);
    std::fs::write(&input, &bytes).unwrap();

    let publish = daemon
        .cli()
        .args(["publish", "cli/big"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        publish.status.success(),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );
    let get = daemon
        .cli()
        .args(["get", "cli/big", "-o"])
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert!(std::fs::read(&output).unwrap() == bytes);

    // stdin from a pipe, stdout to a pipe.
    let mut publish = daemon
        .cli()
        .args(["publish", "cli/piped", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    publish
        .stdin
        .take()
        .unwrap()
        .write_all(&bytes[..100_000])
        .unwrap();
    assert!(publish.wait().unwrap().success());
    let get = daemon.cli().args(["get", "cli/piped"]).output().unwrap();
    assert!(get.status.success());
    assert!(get.stdout == bytes[..100_000]);
}

#[test]
fn cli_reports_errors_with_exit_codes() {
    let daemon = Daemon::start();
    let out = daemon.cli().args(["get", "missing"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing"), "{err}");

    let out = daemon
        .cli()
        .args(["publish", "bad//name", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(memseal_tests::bin("memseal"))
        .args(["--socket", "/nonexistent/memseald.sock", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memseald"), "{err}");
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let daemon = Daemon::start();
    let socket = daemon.socket().to_path_buf();
    let mut idle = daemon.client();
    idle.status().unwrap();
    // One that keeps fetching, so that its connection is served by a fast
    // lane (blocking receives) when the signal comes.
    let mut busy = daemon.client();
    busy.publish_bytes("stop/asset", b"bytes").unwrap();
    let fetching = std::thread::spawn(move || {
        let started = Instant::now();
        while busy.fetch("stop/asset").is_ok() {
            assert!(started.elapsed() < Duration::from_secs(10), "never stopped");
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    let status = daemon.stop();
    let took = asked.elapsed();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket file left behind");
    fetching.join().unwrap();
    assert!(took < Duration::from_secs(2), "stopping took {took:?}");
}
