//! memseald as a service: socket activation, readiness, the fd store that
//! carries every asset across a crash, and reloads. The service manager's
//! side is played by `systemd-socket-activate` (the real tool) and by
//! [`FakeSystemd`], which follows systemd's documented protocol; the
//! real-systemd run lives in tests/systemd/.

use memseal::proto::codec::{encode_journal_entry, encode_snapshot};
use memseal::proto::persisted::SNAPSHOT_FORMAT;
use memseal::proto::{AssetInfo, JournalEntry, Snapshot, SnapshotName, StoredVersion};
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

// ---------------------------------------------------------------------------
// Snapshots written while changes go on, and crashes in the middle of one.
//
// The catalog's snapshot is written on a thread of its own after a new
// journal is started (daemon/src/persist.rs). The fd store a crash leaves
// behind is built here exactly, from blobs a real daemon stored, to cover
// each point a crash can fall on; the last test kills a daemon while it is
// writing a snapshot under load.

/// A sealed memfd holding `bytes`, as the daemon stores a snapshot.
fn sealed_memfd(bytes: &[u8]) -> std::os::fd::OwnedFd {
    use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
    let fd = memfd_create("crafted", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::io::write(&fd, bytes).unwrap();
    fcntl_add_seals(
        &fd,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )
    .unwrap();
    fd
}

/// A journal memfd holding `entries`, as the daemon appends them.
fn journal_memfd(entries: &[JournalEntry]) -> std::os::fd::OwnedFd {
    let fd = rustix::fs::memfd_create("crafted-journal", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let bytes: Vec<u8> = entries.iter().flat_map(encode_journal_entry).collect();
    rustix::io::write(&fd, &bytes).unwrap();
    fd
}

/// A snapshot of `generation` holding `names`: (name, highest number,
/// kept versions).
fn snapshot_memfd(generation: u64, names: &[(&str, u64, &[&AssetInfo])]) -> std::os::fd::OwnedFd {
    let snapshot = Snapshot {
        format: SNAPSHOT_FORMAT,
        generation,
        forgotten: Vec::new(),
        names: names
            .iter()
            .map(|(name, last_version, versions)| SnapshotName {
                name: name.to_string(),
                last_version: *last_version,
                versions: versions.iter().map(|info| stored(info)).collect(),
            })
            .collect(),
    };
    sealed_memfd(&encode_snapshot(&snapshot))
}

fn stored(info: &AssetInfo) -> StoredVersion {
    StoredVersion {
        info: info.clone(),
        owner: Some(rustix::process::geteuid().as_raw()),
        charged: false,
    }
}

fn published(info: &AssetInfo) -> JournalEntry {
    JournalEntry::Published(stored(info))
}

fn removed(info: &AssetInfo) -> JournalEntry {
    JournalEntry::Removed {
        name: info.name.clone(),
        version: info.version,
    }
}

/// A daemon under the fake service manager that published x v1 (bytes
/// "A"), x v2 ("B") and y v1 ("C") and was killed; its catalog and
/// journals are taken out of the store, its blobs are left in.
struct Crafted {
    _dir: tempfile::TempDir,
    systemd: FakeSystemd,
    x1: AssetInfo,
    x2: AssetInfo,
    y1: AssetInfo,
}

impl Crafted {
    fn new() -> Crafted {
        let dir = tempfile::tempdir().unwrap();
        let mut systemd = FakeSystemd::new(dir.path(), true, &["--keep-versions", "4"]);
        systemd.start();
        systemd.wait_for(0, |n| n.get("READY") == Some("1"));
        let mut client = connect(&systemd.socket());
        let x1 = client.publish_bytes("x", b"A").unwrap();
        let x2 = client.publish_bytes("x", b"B").unwrap();
        let y1 = client.publish_bytes("y", b"C").unwrap();
        drop(client);
        systemd.kill();
        systemd.take("catalog-");
        systemd.take("journal-");
        Crafted {
            _dir: dir,
            systemd,
            x1,
            x2,
            y1,
        }
    }

    /// Start the daemon on the store as crafted; a client of it.
    fn restart(&mut self) -> memseal::Client {
        let mark = self.systemd.notifications();
        self.systemd.start();
        self.systemd.wait_for(mark, |n| n.get("READY") == Some("1"));
        connect(&self.systemd.socket())
    }

    /// The catalogs and journals in the store.
    fn generations(&self) -> Vec<String> {
        self.systemd
            .stored_names()
            .into_iter()
            .filter(|name| !name.starts_with("blob-"))
            .collect()
    }
}

/// Every kept version of `name`, by number.
fn versions_of(client: &mut memseal::Client, name: &str) -> Vec<(u64, Vec<u8>)> {
    snapshot(client)
        .into_iter()
        .filter(|((n, _), _)| n == name)
        .map(|((_, version), (bytes, _))| (version, bytes))
        .collect()
}

#[test]
fn a_crash_before_the_new_snapshot_is_stored_replays_both_journals() {
    let mut crafted = Crafted::new();
    let (x1, x2, y1) = (&crafted.x1, &crafted.x2, &crafted.y1);
    // Snapshot 1 and its journal; journal 2 was started, and a change
    // appended to it, but the daemon died before snapshot 2 was stored.
    crafted
        .systemd
        .put("catalog-1", snapshot_memfd(1, &[("x", 1, &[x1])]));
    crafted
        .systemd
        .put("journal-1", journal_memfd(&[published(x2), removed(x1)]));
    crafted
        .systemd
        .put("journal-2", journal_memfd(&[published(y1)]));

    let mut client = crafted.restart();
    assert_eq!(versions_of(&mut client, "x"), [(2, b"B".to_vec())]);
    assert_eq!(versions_of(&mut client, "y"), [(1, b"C".to_vec())]);
    assert_eq!(client.status().unwrap().versions, 2);
    assert_eq!(client.publish_bytes("x", b"next").unwrap().version, 3);
    // The restore's own snapshot replaced all three.
    assert_eq!(crafted.generations(), ["catalog-3", "journal-3"]);
    let logs = crafted.systemd.logs();
    assert!(!logs.contains("could not be restored"), "{logs}");
}

#[test]
fn a_snapshot_written_while_changes_went_on_takes_its_journal_once() {
    let mut crafted = Crafted::new();
    let (x1, x2, y1) = (&crafted.x1, &crafted.x2, &crafted.y1);
    // Snapshot 2 was stored, the daemon died before removing generation
    // 1. Journal 2 began before snapshot 2's pages were read: x's page
    // was read after x v2 came (so both hold it) and before x v1 left;
    // y's page was read after y v1 came.
    crafted.systemd.put("catalog-1", snapshot_memfd(1, &[]));
    // Replayed, this would take y away: it must not be.
    crafted
        .systemd
        .put("journal-1", journal_memfd(&[removed(y1)]));
    crafted.systemd.put(
        "catalog-2",
        snapshot_memfd(2, &[("x", 2, &[x1, x2]), ("y", 1, &[y1])]),
    );
    crafted.systemd.put(
        "journal-2",
        journal_memfd(&[published(x2), published(y1), removed(x1), published(x2)]),
    );

    let mut client = crafted.restart();
    assert_eq!(versions_of(&mut client, "x"), [(2, b"B".to_vec())]);
    assert_eq!(versions_of(&mut client, "y"), [(1, b"C".to_vec())]);
    // Counted once each: a version put back twice would count twice.
    assert_eq!(client.status().unwrap().versions, 2);
    assert_eq!(client.publish_bytes("y", b"next").unwrap().version, 2);
    assert_eq!(crafted.generations(), ["catalog-3", "journal-3"]);
}

#[test]
fn a_version_whose_blob_left_before_the_crash_is_removed_quietly() {
    let mut crafted = Crafted::new();
    let (x1, x2, y1) = (&crafted.x1, &crafted.x2, &crafted.y1);
    // Snapshot 2's page of y was read before y v1 was removed; the
    // removal dropped the blob from the store and went to journal 2.
    let y_blob = format!("blob-{}", memseal::proto::message::hash_to_hex(&y1.hash));
    assert_eq!(crafted.systemd.take(&y_blob).len(), 1);
    crafted.systemd.put(
        "catalog-2",
        snapshot_memfd(2, &[("x", 2, &[x1, x2]), ("y", 1, &[y1])]),
    );
    crafted
        .systemd
        .put("journal-2", journal_memfd(&[removed(y1)]));

    let mut client = crafted.restart();
    assert_eq!(versions_of(&mut client, "y"), []);
    assert_eq!(client.status().unwrap().versions, 2);
    assert_eq!(client.publish_bytes("y", b"back").unwrap().version, 2);
    let logs = crafted.systemd.logs();
    assert!(!logs.contains("could not be restored"), "{logs}");
}

/// A client publishes and removes names of 200 bytes in a loop; the
/// daemon is killed while it writes a snapshot, seen in the store as a
/// journal newer than every snapshot. Everything the client was told is
/// there after the restart, and nothing it removed.
#[test]
fn a_crash_while_a_snapshot_is_written_loses_no_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut systemd =
        FakeSystemd::new(dir.path(), true, &["--keep-versions", "1"]).with_log_level("info");
    systemd.start();
    systemd.wait_for(0, |n| n.get("READY") == Some("1"));
    let socket = systemd.socket();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut client = connect(&socket);
            let mut kept = BTreeMap::new();
            // A remove the kill left unanswered: the daemon may have
            // carried it out (and journaled it) before it died, or not.
            let mut unanswered_remove = None;
            for i in 0u64.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let name = format!("n/{i:07}/{}", "p".repeat(190));
                let bytes = (i % 3).to_le_bytes();
                match client.publish_bytes(&name, &bytes) {
                    Ok(info) => kept.insert(name.clone(), (info.version, bytes.to_vec())),
                    Err(_) => break,
                };
                if i % 4 == 0 {
                    match client.remove(&name, None) {
                        Ok(_) => kept.remove(&name),
                        Err(_) => {
                            unanswered_remove = kept.remove(&name).map(|kept| (name, kept));
                            break;
                        }
                    };
                }
            }
            (kept, unanswered_remove)
        }
    });

    // A snapshot is being written while a journal newer than the newest
    // snapshot is in the store.
    let generation = |names: &[String], prefix: &str| {
        names
            .iter()
            .filter_map(|name| name.strip_prefix(prefix)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = 0;
    loop {
        let names = systemd.stored_names();
        if generation(&names, "journal-") > generation(&names, "catalog-") {
            // Not the restore's own snapshot at start: one under load.
            if generation(&names, "catalog-") >= 2 {
                break;
            }
        }
        seen += 1;
        assert!(
            Instant::now() < deadline && !writer.is_finished(),
            "no snapshot under way seen in {seen} looks at the store"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    systemd.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (kept, unanswered_remove) = writer.join().unwrap();
    assert!(kept.len() > 1000, "{} names", kept.len());

    let mark = systemd.notifications();
    systemd.start();
    systemd.wait_for(mark, |n| n.get("READY") == Some("1"));
    let mut client = connect(&systemd.socket());
    for (name, (version, bytes)) in &kept {
        let asset = client
            .fetch(name)
            .unwrap_or_else(|e| panic!("{name} v{version} was acknowledged: {e}"));
        assert_eq!((asset.info().version, &asset[..]), (*version, &bytes[..]));
    }
    // The name of an unanswered remove is gone, or still the version its
    // publish acknowledged.
    if let Some((name, (version, bytes))) = &unanswered_remove {
        if let Ok(asset) = client.fetch(name) {
            assert_eq!((asset.info().version, &asset[..]), (*version, &bytes[..]));
        }
    }
    // At most the one change in flight at the kill beyond those kept: an
    // unanswered publish, or the name of an unanswered remove.
    let names = client.status().unwrap().names;
    assert!(
        names == kept.len() as u64 || names == kept.len() as u64 + 1,
        "{names} names after the restart, {} acknowledged",
        kept.len()
    );
    let logs = systemd.logs();
    assert!(!logs.contains("could not be restored"), "{logs}");
}
