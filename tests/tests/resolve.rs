//! Pull-through against the real daemon: a resolver registered for a
//! prefix hears of each missing name once, however many clients wait, and
//! they are served as soon as it publishes, or told why not.

use memseal::{Client, ErrorCode, Resolver, Selector};
use memseal_tests::{pattern, Daemon};
use std::os::fd::AsFd;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn resolver(daemon: &Daemon, prefixes: &[&str]) -> Resolver {
    daemon.client().into_resolver(prefixes).unwrap()
}

#[test]
fn sixteen_waiters_one_announcement_one_blob() {
    let daemon = Daemon::start();
    let mut resolver = resolver(&daemon, &["pull/"]);
    let bytes = Arc::new(pattern(1 << 20, 11));
    let start = Arc::new(Barrier::new(17));
    let waiters: Vec<_> = (0..16)
        .map(|_| {
            let (socket, start, bytes) = (daemon.socket().to_owned(), start.clone(), bytes.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect_to(&socket).unwrap();
                start.wait();
                let asset = client.fetch("pull/big").unwrap();
                assert!(asset[..] == bytes[..]);
                rustix::fs::fstat(asset.as_fd()).unwrap().st_ino
            })
        })
        .collect();
    start.wait();
    let wanted = resolver
        .next_wanted(Some(Duration::from_secs(10)))
        .unwrap()
        .expect("announced");
    assert_eq!(wanted.name, "pull/big");
    assert_eq!(wanted.selector, Selector::Latest);
    // Local fetches are served at once meanwhile.
    let mut local = daemon.client();
    local.publish_bytes("local/x", b"here").unwrap();
    assert_eq!(&local.fetch("local/x").unwrap()[..], b"here");
    // Let every waiter register before the name appears.
    std::thread::sleep(Duration::from_millis(200));
    local.publish_bytes("pull/big", &bytes).unwrap();
    let inodes: Vec<u64> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        inodes.windows(2).all(|w| w[0] == w[1]),
        "one blob: {inodes:?}"
    );
    // Exactly one announcement.
    assert_eq!(
        resolver
            .next_wanted(Some(Duration::from_millis(200)))
            .unwrap(),
        None
    );
}

#[test]
fn an_unresolvable_name_fails_at_once_with_the_resolvers_reason() {
    let daemon = Daemon::start();
    let mut resolver = resolver(&daemon, &["pull/"]);
    let socket = daemon.socket().to_owned();
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let err = Client::connect_to(&socket)
            .unwrap()
            .stat("pull/none", Selector::Version(3))
            .unwrap_err();
        (err, started.elapsed())
    });
    let wanted = resolver
        .next_wanted(Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    assert_eq!(wanted.selector, Selector::Version(3));
    resolver
        .unresolved(&wanted, ErrorCode::NotFound, "no such object in the store")
        .unwrap();
    let (err, took) = waiter.join().unwrap();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    assert!(
        err.to_string().contains("no such object in the store"),
        "{err}"
    );
    eprintln!("[unresolved] answered after {took:?}");
    // Outside the prefix nothing changed: NotFound at once.
    let err = daemon.client().fetch("elsewhere/x").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}

#[test]
fn a_silent_or_departed_resolver_ends_in_unavailable() {
    let daemon = Daemon::builder()
        .args(["--resolve-timeout", "300ms"])
        .start();
    let resolver = resolver(&daemon, &["pull/"]);
    let err = daemon.client().fetch("pull/slow").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unavailable));
    assert!(
        err.to_string().contains("did not supply it within"),
        "{err}"
    );
    // A resolver that goes away fails its pulls at once.
    drop(resolver);
    std::thread::sleep(Duration::from_millis(100));
    let _again = resolver_for_departure(&daemon);
    let err = daemon.client().fetch("pull/gone").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unavailable));
    assert!(err.to_string().contains("disconnected"), "{err}");
}

/// A resolver that leaves as soon as it is asked for something.
fn resolver_for_departure(daemon: &Daemon) -> std::thread::JoinHandle<()> {
    let mut resolver = resolver(daemon, &["pull/"]);
    std::thread::spawn(move || {
        let _ = resolver.next_wanted(Some(Duration::from_secs(10)));
        drop(resolver);
    })
}

#[test]
fn a_batch_pulls_its_missing_items_together() {
    let daemon = Daemon::builder().args(["--max-connections", "64"]).start();
    let mut resolver = resolver(&daemon, &["shard/"]);
    let socket = daemon.socket().to_owned();
    let batch = std::thread::spawn(move || {
        let mut client = Client::connect_to(&socket).unwrap();
        let items = [("shard/a", Selector::Latest), ("shard/b", Selector::Latest)];
        client
            .fetch_many(&items, &memseal::MapOptions::new())
            .unwrap()
            .into_iter()
            .map(|r| r.map(|a| a.to_vec()))
            .collect::<Vec<_>>()
    });
    let mut publisher = daemon.client();
    for _ in 0..2 {
        let wanted = resolver
            .next_wanted(Some(Duration::from_secs(10)))
            .unwrap()
            .unwrap();
        publisher
            .publish_bytes(&wanted.name, wanted.name.as_bytes())
            .unwrap();
    }
    let results = batch.join().unwrap();
    assert_eq!(results[0].as_ref().unwrap(), b"shard/a");
    assert_eq!(results[1].as_ref().unwrap(), b"shard/b");
}

/// A daemon whose socket other users can reach, for a test that connects
/// as one; None (and the test skipped) unless the tests run as root.
fn daemon_for_other_users(test: &str) -> Option<Daemon> {
    if !memseal_tests::is_root() {
        memseal_tests::skip(test, "needs root to connect as another uid");
        return None;
    }
    let daemon = Daemon::start();
    std::fs::set_permissions(
        daemon.dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    Some(daemon)
}

#[test]
fn only_a_publisher_of_a_prefix_may_resolve_it() {
    let Some(daemon) = daemon_for_other_users("only_a_publisher_of_a_prefix_may_resolve_it") else {
        return;
    };
    let out = memseal_tests::as_user(65534, &memseal_tests::bin("memseal-test-peer"))
        .arg(daemon.socket())
        .args(["resolve", "shared/", "user/65534/"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("shared/: refused: permission denied"),
        "{text}"
    );
    assert!(text.contains("user/65534/: resolving"), "{text}");
}

#[test]
fn a_user_asking_for_missing_name_after_name_starts_only_its_budget_of_pulls() {
    let Some(daemon) = daemon_for_other_users(
        "a_user_asking_for_missing_name_after_name_starts_only_its_budget_of_pulls",
    ) else {
        return;
    };
    // A resolver that answers every announcement at once: not in the store.
    let mut resolver = resolver(&daemon, &["pull/"]);
    // It answers until told to stop, then reports every name it heard.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answering = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut announced = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let wait = Some(Duration::from_millis(100));
                if let Some(wanted) = resolver.next_wanted(wait).unwrap() {
                    resolver
                        .unresolved(&wanted, ErrorCode::NotFound, "not in the store")
                        .unwrap();
                    announced.push(wanted.name);
                }
            }
            announced
        }
    });

    // An ordinary user asks for 400 names nobody has, as fast as it can.
    let started = Instant::now();
    let out = memseal_tests::as_user(65534, &memseal_tests::bin("memseal-test-peer"))
        .arg(daemon.socket())
        .args(["misses", "pull/user-", "400"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let tally = |code: &str| -> usize {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{code} "))?.split_once(':'))
            .map_or(0, |(n, _)| n.parse().unwrap())
    };
    let (not_found, unavailable) = (tally("NotFound"), tally("Unavailable"));
    // 128 at once, then 16 a second.
    let allowed = 128 + (16.0 * took.as_secs_f64()).ceil() as usize;
    eprintln!(
        "[pull budget] 400 misses in {took:?}: {not_found} passed on, {unavailable} refused \
         (budget {allowed})"
    );
    assert_eq!(not_found + unavailable, 400, "{text}");
    assert!(
        (128..=allowed).contains(&not_found),
        "{not_found} passed on to the resolver, budget {allowed}:\n{text}"
    );
    // The refused ones were told why, and the log says so, within its
    // own budget (20 lines at once for one uid).
    assert!(text.contains("Unavailable"), "{text}");
    assert!(text.contains("per user"), "{text}");
    let logged = daemon.logs().matches("over the pull budget").count();
    assert!(
        (1..=21).contains(&logged),
        "{logged} lines about the budget"
    );

    // A publisher (this test's root) is not held to it.
    let mut publisher = daemon.client();
    for i in 0..200 {
        let error = publisher.fetch(&format!("pull/root-{i}")).unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::NotFound), "{error}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let announced = answering.join().unwrap();
    let from_user = announced
        .iter()
        .filter(|n| n.starts_with("pull/user-"))
        .count();
    assert_eq!(
        from_user, not_found,
        "each name passed on was announced once"
    );
    assert_eq!(announced.len() - from_user, 200);
}
