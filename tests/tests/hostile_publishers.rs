//! Hostile publishers: unprivileged users who use only the rights the
//! default policy gives everyone (publish under `user/<uid>/`) to crash,
//! poison, bloat or hijack the daemon.
//!
//! Each test attacks the real `memseald` from real processes running as
//! other users (through `setpriv`), mostly the `memseal-test-peer` program,
//! and then checks that the daemon is alive, that every other user's
//! assets are byte-identical and reachable, and that what the attack cost
//! stayed within a stated bound (memory, log lines, persisted bytes, the
//! latency of a victim's fetch). The figures are printed; see them with
//! `cargo test --test hostile_publishers -- --nocapture`.
//!
//! These tests need root (to act as several users) and report themselves
//! skipped otherwise (a failure where `MEMSEAL_REQUIRE_ALL=1`).

use memseal::{ErrorCode, Selector};
use memseal_proto::{PublishSource, Request, Response};
use memseal_tests::fake_systemd::FakeSystemd;
use memseal_tests::{as_user, bin, is_root, pattern, rss_kib_of, skip, Daemon, RawPeer};
use rustix::fs::OFlags;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The attacker: `nobody`.
const ATTACKER: u32 = 65534;
/// Another unprivileged user who only reads.
const READER: u32 = 65533;
/// The uid the daemon runs as in the tests of a non-root daemon.
const DAEMON_USER: u32 = 65532;

fn needs_root(test: &str) -> bool {
    if !is_root() {
        skip(test, "needs root to act as several users");
        return false;
    }
    true
}

/// Let other users reach the daemon's socket: the harness creates its
/// directory private to the daemon's user.
fn open_to_everyone(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the daemon's directory");
}

/// `memseal-test-peer SOCKET args...` as `uid`.
fn peer_as(uid: u32, socket: &Path, args: &[&str]) -> Command {
    let mut command = as_user(uid, &bin("memseal-test-peer"));
    command.arg(socket).args(args);
    command
}

/// The `memseal` CLI as `uid` against `daemon`.
fn cli_as(uid: u32, daemon: &Daemon, args: &[&str]) -> Output {
    let mut command = as_user(uid, &bin("memseal"));
    command.arg("--socket").arg(daemon.socket());
    if let Some(server) = daemon_uid(daemon) {
        command.arg("--server-uid").arg(server.to_string());
    }
    command
        .args(args)
        .env_remove("MEMSEAL_SOCKET")
        .output()
        .expect("run memseal")
}

/// The daemon's uid if it is not the test's.
fn daemon_uid(daemon: &Daemon) -> Option<u32> {
    let uid = std::fs::metadata(format!("/proc/{}", daemon.pid()))
        .expect("the daemon's /proc entry")
        .uid();
    (uid != rustix::process::geteuid().as_raw()).then_some(uid)
}

fn success(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A child's stdout, line by line.
struct Lines(std::io::Lines<BufReader<ChildStdout>>);

impl Lines {
    fn of(child: &mut Child) -> Lines {
        Lines(BufReader::new(child.stdout.take().expect("piped stdout")).lines())
    }

    fn next(&mut self) -> String {
        self.0
            .next()
            .expect("the peer ended early")
            .expect("read the peer's output")
    }
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// 1 and 2: the adoption race.

/// A publisher that shrinks and seals its memfd while the daemon checks it
/// (two threads, thousands of rounds) can neither crash the daemon (SIGBUS
/// from a mapping past the end) nor get a blob accepted whose size lies
/// (which de-duplication would then hand to others).
#[test]
fn racing_an_adoption_neither_crashes_nor_poisons() {
    if !needs_root("racing_an_adoption_neither_crashes_nor_poisons") {
        return;
    }
    let mut daemon = Daemon::start();
    open_to_everyone(daemon.dir());
    let probe = pattern(200_000, 9);
    daemon
        .client()
        .publish_bytes("healthy/probe", &probe)
        .unwrap();

    let name = format!("user/{ATTACKER}/race");
    // Past a page (the crash) and inside the last page (the poison).
    for shrink_to in ["4096", "65000"] {
        let started = Instant::now();
        let output = peer_as(
            ATTACKER,
            daemon.socket(),
            &["race-adopt", &name, "3000", shrink_to],
        )
        .output()
        .unwrap();
        let report = String::from_utf8_lossy(&output.stdout).into_owned();
        eprintln!(
            "[adoption race, shrink to {shrink_to}] {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            report.trim().replace('\n', "; ")
        );
        assert!(
            daemon.is_running(),
            "the daemon died during the race:\n{report}\n{}",
            daemon.logs()
        );
        assert!(output.status.success(), "{report}");
        // Whatever the race left published verifies: its size is true.
        let mut client = daemon.client();
        match client.fetch(&name) {
            Ok(asset) => assert!(asset.iter().all(|b| *b == 0)),
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}"),
        }
    }

    // A publisher's file whose tail within its last page is zeros, like
    // the attacker's: publishing it must not land on the attacker's blob.
    let archive = vec![0u8; 65536];
    let mut client = daemon.client();
    client
        .publish_bytes("shared/archive.tar", &archive)
        .unwrap();
    let fetched = cli_as(READER, &daemon, &["get", "shared/archive.tar"]);
    let bytes = success(&fetched, "the reader's fetch").into_bytes();
    assert_eq!(bytes.len(), archive.len());
    assert!(bytes.iter().all(|b| *b == 0));
    assert!(client.fetch("healthy/probe").unwrap()[..] == probe[..]);
}

// ---------------------------------------------------------------------------
// 3: adopted memfds stay their publisher's.

#[test]
fn adopted_content_affects_no_other_users_asset_root_daemon() {
    if !needs_root("adopted_content_affects_no_other_users_asset_root_daemon") {
        return;
    }
    adopted_content_affects_no_other_users_asset(Daemon::start());
}

#[test]
fn adopted_content_affects_no_other_users_asset_unprivileged_daemon() {
    if !needs_root("adopted_content_affects_no_other_users_asset_unprivileged_daemon") {
        return;
    }
    adopted_content_affects_no_other_users_asset(Daemon::builder().run_as(DAEMON_USER).start());
}

/// The attacker adopts a memfd with the same bytes as a font that root
/// publishes, then makes its memfd unreadable: root's asset, as every
/// reader gets it, is untouched: another inode, read-only, mode 0444,
/// reopenable through /proc, with none of the attacker's flags or offset.
fn adopted_content_affects_no_other_users_asset(daemon: Daemon) {
    open_to_everyone(daemon.dir());
    let font = pattern(100_000, 77);
    let file = daemon.dir().join("font.ttf");
    std::fs::write(&file, &font).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let own = format!("user/{ATTACKER}/font.ttf");
    let mut attacker = peer_as(
        ATTACKER,
        daemon.socket(),
        &["adopt", &own, file.to_str().unwrap()],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = Lines::of(&mut attacker);
    let line = lines.next();
    let attacker_inode: u64 = line
        .strip_prefix("published ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected: {line}"));

    let mut client = daemon.connect_options().connect().unwrap();
    client.publish_bytes("shared/font.ttf", &font).unwrap();
    let mut stdin = attacker.stdin.take().unwrap();
    writeln!(stdin, "chmod 0").unwrap();
    assert_eq!(lines.next(), "done");

    // What any reader receives for root's name.
    let asset = client.fetch("shared/font.ttf").unwrap();
    assert!(asset[..] == font[..]);
    let fd = asset.into_fd();
    let stat = rustix::fs::fstat(&fd).unwrap();
    assert_ne!(
        stat.st_ino, attacker_inode,
        "root's asset is the attacker's inode"
    );
    assert_eq!(stat.st_mode & 0o7777, 0o444);
    let flags = rustix::fs::fcntl_getfl(&fd).unwrap();
    assert_eq!(flags & OFlags::ACCMODE, OFlags::RDONLY, "{flags:?}");
    assert!(
        !flags.intersects(OFlags::APPEND | OFlags::NONBLOCK),
        "{flags:?}"
    );
    assert_eq!(rustix::fs::tell(&fd).unwrap(), 0);

    // Another unprivileged user reopens it through /proc, as the README
    // shows for `memseal exec`.
    let output = cli_as(
        READER,
        &daemon,
        &[
            "exec",
            "--asset",
            "shared/font.ttf=FONT",
            "--",
            "sh",
            "-c",
            "cat /proc/self/fd/$MEMSEAL_FD_FONT | wc -c",
        ],
    );
    let count = success(&output, "the reader's reopen through /proc");
    assert_eq!(count.trim(), font.len().to_string());

    // The attacker's own name is its own inode (adopted without a copy):
    // what it does to it reaches only the readers of its own names.
    let own_asset = client.fetch(&own).unwrap();
    let own_fd = own_asset.into_fd();
    assert_eq!(rustix::fs::fstat(&own_fd).unwrap().st_ino, attacker_inode);
    let own_flags = rustix::fs::fcntl_getfl(&own_fd).unwrap();
    assert_eq!(own_flags & OFlags::ACCMODE, OFlags::RDONLY);
    assert!(!own_flags.intersects(OFlags::APPEND | OFlags::NONBLOCK));
    drop(stdin);
    kill(attacker);
}

// ---------------------------------------------------------------------------
// 4: removed names.

/// One user publishes and removes tens of thousands of distinct names of
/// 255 bytes, with the fd store on, while four connections list every name
/// in a loop and a victim fetches: memory, persisted bytes and log lines
/// stay bounded, and the victim is served without waiting on them.
#[test]
fn publish_and_remove_floods_cost_nothing_once_removed() {
    if !needs_root("publish_and_remove_floods_cost_nothing_once_removed") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut systemd = FakeSystemd::new(dir.path(), false, &[]);
    systemd.start();
    systemd.wait_for(0, |n| n.get("READY") == Some("1"));
    open_to_everyone(dir.path());
    let socket = systemd.socket();
    let mut client = memseal::Client::connect_to(&socket).unwrap();
    let probe = pattern(4096, 3);
    client.publish_bytes("healthy/probe", &probe).unwrap();
    let prefix = format!("user/{ATTACKER}/churn/");
    // A first round, so that allocator caches and the journal exist.
    success(
        &peer_as(ATTACKER, &socket, &["churn", &prefix, "2000"])
            .output()
            .unwrap(),
        "warm-up churn",
    );
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = rss_kib_of(systemd.pid());
    let lines_before = systemd.logs().lines().count();

    let pairs = 15_000u32;
    let started = Instant::now();
    let churn = peer_as(ATTACKER, &socket, &["churn", &prefix, &pairs.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let listers: Vec<Child> = (0..4)
        .map(|_| {
            peer_as(ATTACKER, &socket, &["list-loop", "3"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // The victim: one connection, fetching the probe over and over.
    let mut samples = Vec::new();
    while samples.len() < 300 {
        let t = Instant::now();
        let asset = client.fetch("healthy/probe").unwrap();
        samples.push(t.elapsed());
        assert!(asset[..] == probe[..]);
        std::thread::sleep(Duration::from_millis(5));
    }
    for lister in listers {
        success(&lister.wait_with_output().unwrap(), "a lister");
    }
    success(&churn.wait_with_output().unwrap(), "the churn");
    let elapsed = started.elapsed();
    samples.sort();
    let (p50, p99) = (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    );

    std::thread::sleep(Duration::from_millis(200));
    let rss_after = rss_kib_of(systemd.pid());
    let status = client.status().unwrap();
    let persisted = systemd.stored_bytes("catalog-") + systemd.stored_bytes("journal-");
    let logs = systemd.logs();
    let request_lines = logs
        .lines()
        .skip(lines_before)
        .filter(|l| l.contains("published") || l.contains("removed"))
        .count();
    eprintln!(
        "[churn] {pairs} publish+remove pairs in {:.1} s; rss {rss_before} -> {rss_after} KiB; \
         names {}; persisted catalog {persisted} bytes; {request_lines} log lines about them; \
         victim fetch p50 {:.2} ms, p99 {:.2} ms",
        elapsed.as_secs_f64(),
        status.names,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
    );
    assert_eq!(status.names, 1, "removed names are still counted");
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "memory grew from {rss_before} to {rss_after} KiB"
    );
    // A journal compacted at 1 MiB plus one snapshot of one name.
    assert!(persisted < 2 << 20, "{persisted} bytes persisted");
    assert!(request_lines < 500, "{request_lines} lines logged");
    assert!(
        p50 < Duration::from_millis(50),
        "the victim waited: p50 {p50:?}"
    );

    // Versions still never repeat: a name that comes back continues.
    let again = format!("{prefix}again");
    client.publish_bytes(&again, b"1").unwrap();
    client.remove(&again, None).unwrap();
    let back = client.publish_bytes(&again, b"2").unwrap();
    assert!(back.version >= 2, "{back:?}");
    // And they survive a crash.
    drop(client);
    systemd.kill();
    let mark = systemd.notifications();
    systemd.start();
    systemd.wait_for(mark, |n| n.get("READY") == Some("1"));
    let mut client = memseal::Client::connect_to(&socket).unwrap();
    client.remove(&again, None).unwrap();
    let after_crash = client.publish_bytes(&again, b"3").unwrap();
    assert!(after_crash.version > back.version, "{after_crash:?}");
    assert!(client.fetch("healthy/probe").unwrap()[..] == probe[..]);
}

// ---------------------------------------------------------------------------
// 5: shared limits.

/// Start `fill` as each of `uids`; the total they got published.
fn fill_as(uids: &[u32], socket: &Path, size: usize) -> (u64, Vec<Child>) {
    let mut total = 0;
    let mut children = Vec::new();
    for uid in uids {
        let prefix = format!("user/{uid}/fill/");
        let mut child = peer_as(*uid, socket, &["fill", &prefix, &size.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Lines::of(&mut child);
        let count: u64 = lines
            .next()
            .strip_prefix("published ")
            .and_then(|n| n.parse().ok())
            .expect("a count");
        let refusal = lines.next();
        eprintln!("[fill] uid {uid}: {count}, then {refusal}");
        total += count;
        children.push(child);
    }
    (total, children)
}

/// However many users fill the shared limits (distinct blobs, bytes,
/// connections), the publishers keep their reserve; and an upload that
/// keeps the minimum rate still ends at the upload deadline.
#[test]
fn users_together_cannot_lock_out_the_publishers() {
    if !needs_root("users_together_cannot_lock_out_the_publishers") {
        return;
    }
    // Blobs: 40 at most, a quarter kept for publishers.
    let daemon = Daemon::builder()
        .args(["--max-blobs", "40", "--max-assets-per-uid", "1000"])
        .start();
    open_to_everyone(daemon.dir());
    let (total, children) = fill_as(&[65530, 65531, 65532, 65533], daemon.socket(), 16);
    assert_eq!(total, 30, "users together took {total} of 40 blobs");
    let mut client = daemon.client();
    for i in 0..10u8 {
        client
            .publish_bytes(&format!("root/blob/{i}"), &[i; 20])
            .expect("a publisher's publish within the reserve");
    }
    children.into_iter().for_each(kill);
    drop(daemon);

    // Bytes: 1 MiB, eight users of 128 KiB each.
    let daemon = Daemon::builder()
        .args(["--max-total-bytes", "1M", "--max-bytes-per-uid", "512K"])
        .start();
    open_to_everyone(daemon.dir());
    let uids: Vec<u32> = (65520..65528).collect();
    let mut total = 0;
    let mut children = Vec::new();
    for uid in &uids {
        let (count, child) = fill_as(&[*uid], daemon.socket(), 128 << 10);
        total += count;
        children.extend(child);
    }
    assert_eq!(total, 6, "users together took {total} x 128 KiB of 1 MiB");
    daemon
        .client()
        .publish_bytes("root/bytes", &vec![1u8; 256 << 10])
        .expect("a publisher's publish within the reserve");
    children.into_iter().for_each(kill);
    drop(daemon);

    // Connections: 64, at most 16 per uid, four users holding theirs.
    let daemon = Daemon::builder()
        .args(["--max-connections", "64", "--max-connections-per-uid", "16"])
        .start();
    open_to_everyone(daemon.dir());
    let mut client = daemon.client();
    client.publish_bytes("healthy/probe", b"probe").unwrap();
    let mut holders = Vec::new();
    let mut welcomed = 0;
    for uid in [65530, 65531, 65532, 65533] {
        let mut child = peer_as(uid, daemon.socket(), &["hold", "16"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Lines::of(&mut child);
        loop {
            match lines.next().as_str() {
                "held" => break,
                "welcome" => welcomed += 1,
                _ => {}
            }
        }
        holders.push(child);
    }
    assert_eq!(
        welcomed, 48,
        "users together hold {welcomed} of 64 connections"
    );
    let mut served = 0;
    for _ in 0..16 {
        let mut root = daemon.client();
        if root.fetch("healthy/probe").is_ok() {
            served += 1;
        }
    }
    assert_eq!(served, 16, "root was locked out");
    holders.into_iter().for_each(kill);
    drop(daemon);

    // An upload at the minimum rate is cut at the upload deadline and its
    // reservation released.
    let daemon = Daemon::builder()
        .args([
            "--upload-timeout",
            "2s",
            "--io-timeout",
            "1s",
            "--max-bytes-per-uid",
            "1M",
        ])
        .start();
    open_to_everyone(daemon.dir());
    let name = format!("user/{ATTACKER}/slow");
    let started = Instant::now();
    let trickle = peer_as(
        ATTACKER,
        daemon.socket(),
        &["trickle", &name, "1048576", "65536", "500"],
    )
    .output()
    .unwrap();
    let took = started.elapsed();
    let report = success(&trickle, "the trickle");
    eprintln!("[slow upload] {} in {took:?}", report.trim());
    assert!(took < Duration::from_secs(6), "held for {took:?}");
    assert!(
        daemon.logs().contains("did not finish within"),
        "{}",
        daemon.logs()
    );
    // The whole per-uid budget is free again.
    let file = daemon.dir().join("full");
    std::fs::write(&file, vec![3u8; 1 << 20]).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli_as(
        ATTACKER,
        &daemon,
        &["publish", &name, file.to_str().unwrap()],
    );
    success(&out, "publishing the whole per-uid budget after the drop");
}

// ---------------------------------------------------------------------------
// 6: the per-user socket directory.

/// A uid with no entry in the password database and no runtime directory,
/// so its default socket is `/tmp/memseal-<uid>/memseald.sock`.
const VICTIM: u32 = 65519;

fn victim_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/tmp/memseal-{VICTIM}"))
}

/// `program` as the victim, with the default socket (no MEMSEAL_SOCKET, no
/// XDG_RUNTIME_DIR).
fn as_victim(program: &str) -> Command {
    let mut command = as_user(VICTIM, &bin(program));
    command
        .env_remove("MEMSEAL_SOCKET")
        .env_remove("XDG_RUNTIME_DIR");
    command
}

fn make_dir(path: &Path, uid: u32, mode: u32) {
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir(path).unwrap();
    let owner = Some(rustix::process::Uid::from_raw(uid));
    rustix::fs::chown(path, owner, None).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The daemon refuses a default socket directory another user made or
/// others can write; the client refuses a per-user socket or directory
/// that is not the user's, and a root daemon on the per-user path unless
/// asked; an explicit sticky directory like /tmp is fine, and the socket's
/// mode never comes from a chmod of its path.
#[test]
fn socket_directories_others_control_are_refused() {
    if !needs_root("socket_directories_others_control_are_refused") {
        return;
    }
    let dir = victim_dir();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::set_permissions(config.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let daemon_as_victim = || {
        let mut command = as_victim("memseald");
        command.arg("--config").arg(config.path());
        command
    };

    // (a) The daemon: a directory made first by the attacker, or by the
    // victim but writable by all, is refused with a reason.
    for (owner, mode, why) in [
        (ATTACKER, 0o777, format!("belongs to uid {ATTACKER}")),
        (VICTIM, 0o777, "mode 0777".to_owned()),
    ] {
        make_dir(&dir, owner, mode);
        let out = daemon_as_victim().output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the daemon used {dir:?} ({mode:o})");
        assert!(err.contains(&why), "{err}");
        assert!(!dir.join("memseald.sock").exists());
    }
    // No directory: the daemon makes its own, private, and the socket has
    // its mode from the start.
    let _ = std::fs::remove_dir_all(&dir);
    let daemon = daemon_as_victim().stderr(Stdio::null()).spawn().unwrap();
    let socket = dir.join("memseald.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the victim's daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (VICTIM, 0o700));
    assert_eq!(
        std::fs::symlink_metadata(&socket).unwrap().mode() & 0o777,
        0o666
    );
    // The victim's own client finds it without being told.
    let out = as_victim("memseal").arg("status").output().unwrap();
    let text = success(&out, "the victim's status");
    assert!(text.contains("this user's own daemon"), "{text}");
    kill(daemon);

    // (b) The client: the attacker's directory with the attacker's socket
    // in it (an impostor), or a symbolic link to another daemon.
    make_dir(&dir, ATTACKER, 0o777);
    let mut impostor = peer_as(ATTACKER, &dir.join("memseald.sock"), &["listen"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(Lines::of(&mut impostor).next(), "listening");
    let out = as_victim("memseal").arg("status").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("belongs to uid {ATTACKER}")), "{err}");
    kill(impostor);
    let root_daemon = Daemon::start();
    open_to_everyone(root_daemon.dir());
    make_dir(&dir, ATTACKER, 0o777);
    std::os::unix::fs::symlink(root_daemon.socket(), dir.join("memseald.sock")).unwrap();
    let out = as_victim("memseal").arg("status").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("not a socket"), "{err}");

    // A socket that is the victim's in the victim's directory, but with
    // root's daemon behind it: refused unless the victim asks for root.
    make_dir(&dir, VICTIM, 0o700);
    std::fs::rename(root_daemon.socket(), dir.join("memseald.sock")).unwrap();
    rustix::fs::chown(
        dir.join("memseald.sock"),
        Some(rustix::process::Uid::from_raw(VICTIM)),
        None,
    )
    .unwrap();
    let out = as_victim("memseal").arg("status").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("uid 0"), "{err}");
    let out = as_victim("memseal")
        .args(["--server-uid", "0", "status"])
        .output()
        .unwrap();
    success(&out, "the victim's status with --server-uid 0");
    drop(root_daemon);
    let _ = std::fs::remove_dir_all(&dir);

    // (c) With no per-user daemon the client goes to the system socket.
    let out = as_victim("memseal").arg("status").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if !Path::new(memseal_proto::paths::SYSTEM_SOCKET).exists() {
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains(memseal_proto::paths::SYSTEM_SOCKET), "{err}");
    }

    // (d) An explicit path in a sticky root directory is accepted; in a
    // directory anyone can write, it is not.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sticky = Daemon::builder().start_in(shared.path());
    assert_eq!(
        std::fs::symlink_metadata(sticky.socket()).unwrap().mode() & 0o777,
        0o666
    );
    drop(sticky);
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(bin("memseald"))
        .arg("--socket")
        .arg(shared.path().join("open.sock"))
        .arg("--config")
        .arg(config.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("mode 0777"), "{err}");
}

// ---------------------------------------------------------------------------
// 7: errors a person can read.

#[test]
fn protocol_errors_and_aborted_uploads_read_as_sentences() {
    let daemon = Daemon::start();
    // A request kind that does not exist.
    let mut peer = RawPeer::handshake(daemon.socket());
    let mut frame = vec![2, 0, 0, 0, 0, 200];
    frame[..4].copy_from_slice(&2u32.to_le_bytes());
    peer.stream.write_all(&frame).unwrap();
    let Response::Error(reply) = peer.recv() else {
        panic!("expected an error")
    };
    eprintln!("[unknown kind] {}", reply.message);
    assert_eq!(reply.code, ErrorCode::ProtocolError);
    assert!(
        reply.message.contains("unknown request kind 200"),
        "{}",
        reply.message
    );
    // A list whose cursor is marked neither present nor absent.
    let mut peer = RawPeer::handshake(daemon.socket());
    let payload = [0u8, 4, 0, 2];
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&payload);
    peer.stream.write_all(&frame).unwrap();
    let Response::Error(reply) = peer.recv() else {
        panic!("expected an error")
    };
    eprintln!("[bad option] {}", reply.message);
    assert!(
        reply.message.contains("'list' request"),
        "{}",
        reply.message
    );
    for noise in ["OtherString", "UnexpectedVariant", "Option<T>", "{"] {
        assert!(!reply.message.contains(noise), "{}", reply.message);
    }

    // An upload abandoned half-way is logged as what it is.
    let mut peer = RawPeer::handshake(daemon.socket());
    peer.send(&Request::Publish {
        name: "half".into(),
        size: 1000,
        source: PublishSource::Stream,
    });
    assert_eq!(peer.recv(), Response::Continue);
    peer.stream.write_all(&[1u8; 500]).unwrap();
    drop(peer);
    let logged = daemon.eventually(Duration::from_secs(5), || {
        daemon
            .logs()
            .contains("after sending 500 of the 1000 bytes")
    });
    assert!(logged, "{}", daemon.logs());
    let mut client = daemon.client();
    assert_eq!(
        client
            .fetch_with("half", Selector::Latest)
            .unwrap_err()
            .code(),
        Some(ErrorCode::NotFound)
    );
}

// ---------------------------------------------------------------------------
// Readers do not share a file description.

/// A reader that moves the offset of the descriptor it received, or sets
/// its status flags, changes nothing for any other reader: every
/// connection gets a description of its own.
#[test]
fn a_reader_cannot_move_another_readers_offset_or_flags() {
    let daemon = Daemon::start();
    let mut publisher = daemon.client();
    publisher
        .publish_bytes("shared/table", &pattern(10_000, 5))
        .unwrap();
    let mut first = daemon.client();
    let mine = first.fetch("shared/table").unwrap().into_fd();
    rustix::fs::seek(&mine, rustix::fs::SeekFrom::Start(4096)).unwrap();
    rustix::fs::fcntl_setfl(&mine, OFlags::APPEND | OFlags::NONBLOCK).unwrap();
    // The same connection fetching again gets its own description back.
    let again = first.fetch("shared/table").unwrap().into_fd();
    assert_eq!(rustix::fs::tell(&again).unwrap(), 4096);
    let mut second = daemon.client();
    let theirs = second.fetch("shared/table").unwrap().into_fd();
    assert_eq!(rustix::fs::tell(&theirs).unwrap(), 0);
    let flags = rustix::fs::fcntl_getfl(&theirs).unwrap();
    assert!(
        !flags.intersects(OFlags::APPEND | OFlags::NONBLOCK),
        "{flags:?}"
    );
    assert_eq!(
        rustix::fs::fstat(&theirs).unwrap().st_ino,
        rustix::fs::fstat(&mine).unwrap().st_ino
    );
}
