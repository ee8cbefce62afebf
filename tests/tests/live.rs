//! Following changes live: the library's watcher, `memseal watch`, and the
//! cache that a watch keeps fresh.

use memseal::{CachedClient, ConnectOptions, ErrorCode, Event};
use memseal_tests::Daemon;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

const SOON: Option<Duration> = Some(Duration::from_secs(10));

#[test]
fn a_watcher_receives_publishes_and_removals_in_order() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    let mut watcher = client.watch("live/").unwrap();
    assert_eq!(watcher.prefix(), "live/");

    // Nothing has happened yet: a short wait comes back empty.
    assert!(watcher
        .next_event(Some(Duration::from_millis(50)))
        .unwrap()
        .is_none());

    let one = client.publish_bytes("live/a", b"1").unwrap();
    client.publish_bytes("elsewhere", b"x").unwrap();
    let removed = client.remove("live/a", None).unwrap();
    assert_eq!(removed, 1);
    // The watch has a connection of its own: this one still serves.
    assert_eq!(client.status().unwrap().names, 1);

    assert_eq!(
        watcher.next_event(SOON).unwrap(),
        Some(Event::Published(one.clone()))
    );
    assert_eq!(watcher.next_event(SOON).unwrap(), Some(Event::Removed(one)));
    assert!(watcher.try_next_event().unwrap().is_none());
}

#[test]
fn a_watcher_reports_the_daemon_going_away() {
    let daemon = Daemon::start();
    let mut watcher = daemon.client().watch("").unwrap();
    drop(daemon);
    let error = watcher.next_event(SOON).unwrap_err();
    assert!(
        matches!(error, memseal::Error::Protocol(_) | memseal::Error::Io(_)),
        "{error:?}"
    );
    assert!(watcher.is_closed());
    assert!(watcher.next().is_none(), "the iterator ends after an error");
}

#[test]
fn the_watch_command_prints_each_event_as_it_happens() {
    let daemon = Daemon::start();
    let mut child = daemon
        .cli()
        .args(["--json", "watch", "live/"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut client = daemon.client();
    wait_for_watchers(&daemon, 1);

    // Each line must arrive before the next change is made: the command
    // flushes after every event.
    let one = client.publish_bytes("live/a", b"one").unwrap();
    let line = lines.next().unwrap().unwrap();
    let version = format!("\"version\":{}", one.version);
    for field in ["\"event\":\"published\"", "\"name\":\"live/a\"", &version] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");

    client.remove("live/a", None).unwrap();
    let line = lines.next().unwrap().unwrap();
    for field in ["\"event\":\"removed\"", &version] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Text lines, one per event.
    let mut child = daemon
        .cli()
        .args(["watch"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    wait_for_watchers(&daemon, 2);
    client.publish_bytes("other/b", &[0u8; 3 << 20]).unwrap();
    let line = lines.next().unwrap().unwrap();
    assert!(
        line.starts_with("published other/b version 1 (3.0 MiB, blake3 "),
        "{line}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Wait until the daemon has logged `count` watches in place: a change made
/// before that would not be reported to the newest watcher.
fn wait_for_watchers(daemon: &Daemon, count: usize) {
    assert!(
        daemon.eventually(Duration::from_secs(10), || daemon
            .logs()
            .matches("watching peer")
            .count()
            >= count),
        "the watch command did not start watching:\n{}",
        daemon.logs()
    );
}

#[test]
fn the_cache_answers_without_a_round_trip_until_the_asset_changes() {
    let daemon = Daemon::start();
    let mut publisher = daemon.client();
    publisher.publish_bytes("cfg/a", b"version one").unwrap();
    let mut cache = CachedClient::new(daemon.client(), "cfg/").unwrap();

    let first = cache.fetch("cfg/a").unwrap();
    assert_eq!(&first[..], b"version one");
    let sent = cache.requests_sent();
    assert_eq!(sent, 1);
    for _ in 0..100 {
        let again = cache.fetch("cfg/a").unwrap();
        assert_eq!(again.version(), first.version());
    }
    assert_eq!(
        cache.requests_sent(),
        sent,
        "cached fetches went to the daemon"
    );
    assert_eq!(cache.hits(), 100);

    // The daemon is frozen: a fetch that needed it would time out, a
    // cached one does not notice.
    daemon.signal(rustix::process::Signal::STOP);
    let started = Instant::now();
    let frozen = cache.fetch("cfg/a");
    daemon.signal(rustix::process::Signal::CONT);
    assert_eq!(frozen.unwrap().version(), first.version());
    assert!(started.elapsed() < Duration::from_secs(1));

    // A new version: once its announcement has arrived, the very next
    // fetch goes to the daemon and returns it.
    let two = publisher.publish_bytes("cfg/a", b"version two").unwrap();
    assert!(cache.wait_for_announcement(SOON).unwrap());
    let fresh = cache.fetch("cfg/a").unwrap();
    assert_eq!(fresh.version(), two.version);
    assert_eq!(&fresh[..], b"version two");
    assert_eq!(cache.requests_sent(), sent + 1);
    // And it is cached in turn.
    cache.fetch("cfg/a").unwrap();
    assert_eq!(cache.requests_sent(), sent + 1);
    // The asset fetched before stays intact for whoever still holds it.
    assert_eq!(&first[..], b"version one");

    // A removal is announced too: the cache does not keep serving it.
    publisher.remove("cfg/a", None).unwrap();
    assert!(cache.wait_for_announcement(SOON).unwrap());
    let gone = cache.fetch("cfg/a").unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::NotFound));

    // Names outside the prefix are never cached.
    publisher.publish_bytes("other", b"o").unwrap();
    cache.fetch("other").unwrap();
    cache.fetch("other").unwrap();
    assert_eq!(cache.requests_sent(), sent + 4);
}

#[test]
fn the_cache_starts_over_when_its_watch_falls_behind() {
    let daemon = Daemon::start();
    let mut publisher = daemon.client();
    publisher.publish_bytes("lag/watched", b"v1").unwrap();
    let mut cache = CachedClient::new(daemon.client(), "").unwrap();
    cache.fetch("lag/watched").unwrap();
    assert_eq!(cache.len(), 1);

    // While the cache reads nothing, flood its watch far past the daemon's
    // backlog of 4096 events (each publish also removes the version it
    // replaces: two events).
    for i in 0..3_000u32 {
        publisher
            .publish_bytes("lag/noise", &i.to_le_bytes())
            .unwrap();
    }
    let newest = publisher.publish_bytes("lag/watched", b"v2").unwrap();

    // The cache finds its watch ended, forgets everything, subscribes again
    // and asks the daemon.
    let asset = cache.fetch("lag/watched").unwrap();
    assert_eq!(asset.version(), newest.version);
    assert!(cache.resubscriptions() >= 1);
    assert!(
        daemon.logs().contains("fell"),
        "the daemon should have dropped the lagging watcher:\n{}",
        daemon
            .logs()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Cached again under the new watch.
    let sent = cache.requests_sent();
    cache.fetch("lag/watched").unwrap();
    assert_eq!(cache.requests_sent(), sent);
}

#[test]
fn the_cache_recovers_after_the_daemon_restarts() {
    let mut daemon = Daemon::start();
    let options = ConnectOptions::new()
        .socket(daemon.socket())
        .timeout(Some(Duration::from_secs(5)));
    let mut cache = CachedClient::new(options.connect().unwrap(), "").unwrap();
    daemon.client().publish_bytes("r/a", b"before").unwrap();
    assert!(cache.wait_for_announcement(SOON).unwrap());
    assert_eq!(&cache.fetch("r/a").unwrap()[..], b"before");

    daemon.restart_after_kill();
    // The catalog did not survive a kill without a service manager.
    daemon.client().publish_bytes("r/a", b"after").unwrap();
    // The first fetch may meet the dead connection; the cache must not
    // answer with the old bytes, and must recover by the next call.
    let answer = cache.fetch("r/a");
    if let Ok(asset) = &answer {
        assert_eq!(&asset[..], b"after");
    }
    let asset = cache.fetch("r/a").unwrap();
    assert_eq!(&asset[..], b"after");
}
