//! memseald as a service: socket activation, readiness, the fd store that
//! carries every asset across a crash, and reloads. The service manager's
//! side is played by `systemd-socket-activate` (the real tool) and by
//! [`FakeSystemd`], which follows systemd's documented protocol; the
//! real-systemd run lives in tests/systemd/.

use memseal::{ErrorCode, Selector};
use memseal_tests::fake_systemd::FakeSystemd;
use memseal_tests::{bin, pattern, skip};
use rustix::process::Signal;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn connect(socket: &std::path::Path) -> memseal::Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match memseal::Client::connect_to(socket) {
            Ok(client) => return client,
            Err(e) if Instant::now() > deadline => panic!("cannot connect: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn serves_on_a_socket_passed_by_systemd_socket_activate() {
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        skip(
            "socket activation",
            "systemd-socket-activate is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    std::fs::write(dir.path().join("empty.toml"), "").unwrap();
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg("--fdname=listen")
        .arg(bin("memseald"))
        .arg("--socket")
        .arg(dir.path().join("unused.sock"))
        .arg("--config")
        .arg(dir.path().join("empty.toml"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first connection starts the daemon, which accepts on the
    // inherited socket, not on the path it was given.
    let mut client = connect(&socket);
    client.publish_bytes("activated", b"hello").unwrap();
    assert_eq!(&client.fetch("activated").unwrap()[..], b"hello");
    assert!(!dir.path().join("unused.sock").exists());
    activator.kill().unwrap();
    activator.wait().unwrap();
}

/// What a client can observe of the catalog: every kept version's bytes.
fn snapshot(client: &mut memseal::Client) -> BTreeMap<(String, u64), (Vec<u8>, [u8; 32])> {
    let mut all = BTreeMap::new();
    for latest in client.list("").unwrap() {
        for version in 1..=latest.version {
            if let Ok(asset) = client.fetch_with(&latest.name, Selector::Version(version)) {
                all.insert(
                    (latest.name.clone(), version),
                    (asset.to_vec(), *asset.hash()),
                );
            }
        }
    }
    all
}

#[test]
fn every_asset_survives_a_crash_through_the_fd_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut systemd = FakeSystemd::new(dir.path(), true, &["--keep-versions", "2"]);
    systemd.start();
    systemd.wait_for(0, |n| n.get("READY") == Some("1"));
    let mut client = connect(&systemd.socket());
    client.publish_bytes("a", &pattern(10_000, 1)).unwrap();
    client.publish_bytes("a", &pattern(20_000, 2)).unwrap();
    client.publish_bytes("a", &pattern(30_000, 3)).unwrap(); // pushes version 1 out
    client.publish_bytes("b", &pattern(3 << 20, 4)).unwrap();
    client
        .publish_bytes("same-as-b", &pattern(3 << 20, 4))
        .unwrap();
    client.publish_bytes("empty", b"").unwrap();
    client
        .publish_bytes("gone", b"removed before the crash")
        .unwrap();
    client.remove("gone", None).unwrap();
    let before = snapshot(&mut client);
    assert_eq!(before.len(), 5, "{:?}", before.keys());
    drop(client);

    // One descriptor per distinct blob, plus the catalog.
    let stored = systemd.stored_names();
    let blobs = stored.iter().filter(|n| n.starts_with("blob-")).count();
    let catalogs = stored.iter().filter(|n| n.starts_with("catalog-")).count();
    assert_eq!((blobs, catalogs), (4, 1), "{stored:?}");

    systemd.kill();
    let mark = systemd.notifications();
    systemd.start();
    systemd.wait_for(mark, |n| n.get("READY") == Some("1"));
    let mut client = connect(&systemd.socket());
    assert_eq!(snapshot(&mut client), before);
    assert_eq!(
        client.fetch("gone").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    // Versions continue where they were.
    assert_eq!(client.publish_bytes("a", b"next").unwrap().version, 4);
    assert_eq!(client.publish_bytes("gone", b"back").unwrap().version, 2);
}

#[test]
fn foreign_and_unsealed_descriptors_in_the_store_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut systemd = FakeSystemd::new(dir.path(), true, &[]);
    systemd.start();
    systemd.wait_for(0, |n| n.get("READY") == Some("1"));
    let mut client = connect(&systemd.socket());
    let good = client.publish_bytes("good", b"good bytes").unwrap();
    let target = client.publish_bytes("target", b"target bytes").unwrap();
    drop(client);
    systemd.kill();

    // Swap the stored memfd of "target" for an unsealed one with the same
    // bytes, and slip in a descriptor of a name memseald never stores.
    let unsealed = rustix::fs::memfd_create("evil", rustix::fs::MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::io::write(&unsealed, b"target bytes").unwrap();
    let name = format!(
        "blob-{}",
        memseal::proto::message::hash_to_hex(&target.hash)
    );
    systemd.put(&name, unsealed);
    let foreign = rustix::fs::memfd_create("foreign", rustix::fs::MemfdFlags::empty()).unwrap();
    systemd.put("something-else", foreign);

    let mark = systemd.notifications();
    systemd.start();
    systemd.wait_for(mark, |n| n.get("READY") == Some("1"));
    let mut client = connect(&systemd.socket());
    assert_eq!(
        client.fetch("target").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(client.fetch("good").unwrap().info(), &good);
    let stored = systemd.stored_names();
    assert!(
        !stored.contains(&name),
        "unsealed descriptor kept: {stored:?}"
    );
    assert!(
        !stored.contains(&"something-else".to_string()),
        "{stored:?}"
    );
    let logs = systemd.logs();
    assert!(logs.contains("not sealed"), "{logs}");
    assert!(logs.contains("foreign"), "{logs}");
}

#[test]
fn ready_is_sent_only_once_the_socket_serves() {
    // The daemon binds the socket itself here: when READY=1 arrives, a
    // client must be served at once.
    let dir = tempfile::tempdir().unwrap();
    let mut systemd = FakeSystemd::new(dir.path(), false, &[]);
    systemd.start();
    let at = systemd.wait_for(0, |n| n.get("READY") == Some("1"));
    let mut client =
        memseal::Client::connect_to(systemd.socket()).expect("served right after READY=1");
    assert_eq!(client.status().unwrap().names, 0);
    // READY came with a first status line.
    let ready = systemd.notification(at);
    assert!(
        ready.get("STATUS").is_some_and(|s| s.contains("serving")),
        "{ready:?}"
    );
    let exit = systemd.stop();
    assert!(exit.success());
    systemd.wait_for(0, |n| n.get("STOPPING") == Some("1"));
}

#[test]
fn reload_republishes_changed_declared_assets() {
    let dir = tempfile::tempdir().unwrap();
    let assets = dir.path().join("assets.d");
    std::fs::create_dir(&assets).unwrap();
    std::fs::write(assets.join("greeting.txt"), "hello").unwrap();
    std::fs::write(
        assets.join("greeting.asset"),
        "name = \"config/greeting\"\npath = \"greeting.txt\"\n",
    )
    .unwrap();
    std::fs::write(
        assets.join("broken.asset"),
        "name = \"bad//name\"\npath = \"x\"\n",
    )
    .unwrap();
    let assets_arg = assets.to_str().unwrap().to_owned();
    let mut systemd = FakeSystemd::new(dir.path(), true, &["--assets-dir", &assets_arg]);
    systemd.start();
    systemd.wait_for(0, |n| n.get("READY") == Some("1"));
    let mut client = connect(&systemd.socket());
    let first = client.fetch("config/greeting").unwrap();
    assert_eq!(&first[..], b"hello");
    assert_eq!(first.version(), 1);

    std::fs::write(assets.join("greeting.txt"), "hello again").unwrap();
    let mark = systemd.notifications();
    systemd.signal(Signal::HUP);
    let reloading = systemd.wait_for(mark, |n| n.get("RELOADING") == Some("1"));
    systemd.wait_for(reloading, |n| n.get("READY") == Some("1"));
    let second = client.fetch("config/greeting").unwrap();
    assert_eq!(&second[..], b"hello again");
    assert_eq!(second.version(), 2);
    // The old mapping is untouched.
    assert_eq!(&first[..], b"hello");

    // Unchanged content keeps its version.
    let mark = systemd.notifications();
    systemd.signal(Signal::HUP);
    let reloading = systemd.wait_for(mark, |n| n.get("RELOADING") == Some("1"));
    systemd.wait_for(reloading, |n| n.get("READY") == Some("1"));
    assert_eq!(client.fetch("config/greeting").unwrap().version(), 2);
    assert!(systemd.logs().contains("broken.asset"));
}
