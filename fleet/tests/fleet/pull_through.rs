//! Pull-through: `run` as memseald's resolver, so that a plain fetch on
//! node B of a name only node A pushed just works.
//!
//! Downloads are counted at the server: moto's access log has one line per
//! request, and one download of a blob is one GET of its key per piece
//! (`--piece-size`), each piece asked for once. A second download of the
//! object, or a piece asked for again, shows as more GETs than the object
//! has pieces; the agent's own `pulls` counter must say one as well.

use crate::support::{blob_key, write_object, Node, S3Server, REGISTERED};
use memseal::{Client, ErrorCode, Event, Selector};
use memseal_tests::pattern;
use std::os::fd::AsFd;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// How fast an answer the agent gives at once must arrive: far below
/// memseald's resolve_timeout (30 s), which is what a waiter would meet
/// if the agent said nothing.
const AT_ONCE: Duration = Duration::from_secs(5);

/// The GETs of blobs the server has answered so far.
fn blob_gets(server: &S3Server) -> usize {
    server.requests("GET", "blobs/")
}

/// Fetch `name` on a new connection to `node`'s daemon; the error and how
/// long it took to come, when it fails.
fn fetch_error(node: &Node, name: &str, selector: Selector) -> (memseal::Error, Duration) {
    let started = Instant::now();
    let error = node
        .daemon
        .client()
        .fetch_with(name, selector)
        .expect_err("the fetch fails");
    (error, started.elapsed())
}

#[test]
fn node_b_fetches_what_only_node_a_pushed() {
    let Some(mut server) = S3Server::start("node_b_fetches_what_only_node_a_pushed") else {
        return;
    };
    let (a, b) = (Node::new(&server), Node::new(&server));
    // 20 MiB: three 8 MiB pieces (the default piece size).
    let bytes = pattern(20 * MIB, 50);
    a.publish_and_push("models/weights.bin", &bytes);
    let _agent = b.spawn_resolver(["--poll", "1h"]);

    let gets = blob_gets(&server);
    let mut client = b.daemon.client();
    let requests = client.requests_sent();
    let asset = client.fetch("models/weights.bin").unwrap();
    assert_eq!(
        client.requests_sent() - requests,
        1,
        "one round trip for the client"
    );
    assert!(asset[..] == bytes[..], "the same bytes as on A");
    assert_eq!(asset.hash(), blake3::hash(&bytes).as_bytes());
    assert_eq!(
        blob_gets(&server) - gets,
        3,
        "one download: one GET per piece"
    );
    let status = client.status().unwrap();
    assert_eq!((status.blobs, status.versions), (1, 1), "one memfd on B");
    b.wait_for_counter("pulls", 1);

    // Every later fetch on B is local, by any client, even with the store gone.
    for _ in 0..3 {
        let again = b.daemon.client().fetch("models/weights.bin").unwrap();
        assert!(again[..] == bytes[..]);
    }
    assert_eq!(blob_gets(&server) - gets, 3, "no GET after the first fetch");
    server.kill();
    let again = client.fetch("models/weights.bin").unwrap();
    assert!(again[..] == bytes[..]);
    assert_eq!(client.status().unwrap().blobs, 1);
}

#[test]
fn sixteen_clients_missing_one_large_asset_cause_one_download() {
    let Some(server) =
        S3Server::start("sixteen_clients_missing_one_large_asset_cause_one_download")
    else {
        return;
    };
    let (a, b) = (Node::new(&server), Node::new(&server));
    // 256 MiB in 64 MiB pieces: one download is exactly four GETs. (moto
    // reads the whole object for every ranged GET, so fewer pieces keep
    // the test quick; the count means the same at any piece size.)
    let size = 256 * MIB;
    let pieces = 4;
    // One MiB of the pattern over and over (generating 256 MiB of it takes
    // seconds in a debug build), each copy stamped with its index.
    let mut bytes = pattern(MIB, 51).repeat(size / MIB);
    for (index, mib) in bytes.chunks_mut(MIB).enumerate() {
        mib[..8].copy_from_slice(&(index as u64).to_le_bytes());
    }
    let bytes = Arc::new(bytes);
    a.daemon
        .client()
        .publish_bytes("models/large.bin", &bytes)
        .unwrap();
    // Pushed in one PUT, the quickest way into moto.
    a.fleet_ok(["push", "models/large.bin", "--piece-size", "256M"]);
    let agent = b.spawn_resolver(["--pull", "models/", "--piece-size", "64M", "--poll", "1h"]);

    let gets = blob_gets(&server);
    let start = Arc::new(Barrier::new(16));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (socket, start, bytes) =
                (b.daemon.socket().to_owned(), start.clone(), bytes.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect_to(&socket).unwrap();
                start.wait();
                let asset = client.fetch("models/large.bin").unwrap();
                assert!(asset[..] == bytes[..], "every client gets the same bytes");
                rustix::fs::fstat(asset.as_fd()).unwrap().st_ino
            })
        })
        .collect();
    let inodes: Vec<u64> = clients
        .into_iter()
        .map(|c| c.join().expect("a client failed"))
        .collect();
    assert!(
        inodes.windows(2).all(|w| w[0] == w[1]),
        "one memfd for all: {inodes:?}"
    );
    assert_eq!(
        blob_gets(&server) - gets,
        pieces,
        "one download of the object, each of its {pieces} pieces asked for once:\n{}",
        agent.output()
    );
    b.wait_for_counter("pulls", 1);
    b.wait_for_counter("pulled_bytes", size as u64);
    assert_eq!(b.daemon.client().status().unwrap().blobs, 1);
}

#[test]
fn a_wanted_hash_is_supplied_while_the_manifest_names_it_and_a_number_never() {
    let Some(server) =
        S3Server::start("a_wanted_hash_is_supplied_while_the_manifest_names_it_and_a_number_never")
    else {
        return;
    };
    let (a, b) = (Node::new(&server), Node::new(&server));
    let (old, new) = (pattern(MIB, 52), pattern(MIB, 53));
    a.publish_and_push("dict/en", &old);
    a.publish_and_push("dict/en", &new);
    let _agent = b.spawn_resolver(["--pull", "dict/", "--poll", "1h"]);

    // The old content is still a blob in the bucket, but the manifest no
    // longer names it: any local user could ask, so it is refused, and
    // nothing is published.
    let old_hash = *blake3::hash(&old).as_bytes();
    let (error, took) = fetch_error(&b, "dict/en", Selector::Hash(old_hash));
    assert_eq!(error.code(), Some(ErrorCode::NotFound), "{error}");
    assert!(error.to_string().contains("names content"), "{error}");
    assert!(took < AT_ONCE, "refused at once: {took:?}");
    assert_eq!(b.daemon.client().status().unwrap().versions, 0);

    // The content the manifest names, asked for by its hash: exactly it.
    let new_hash = *blake3::hash(&new).as_bytes();
    let asset = b
        .daemon
        .client()
        .fetch_with("dict/en", Selector::Hash(new_hash))
        .unwrap();
    assert!(asset[..] == new[..], "exactly the content asked for");
    assert_eq!(asset.hash(), &new_hash);

    // A number means nothing to the store: refused at once.
    let (error, took) = fetch_error(&b, "dict/en", Selector::Version(7));
    assert_eq!(error.code(), Some(ErrorCode::NotFound), "{error}");
    assert!(error.to_string().contains("by number"), "{error}");
    assert!(
        took < AT_ONCE,
        "refused at once, not at the deadline: {took:?}"
    );
    assert_eq!(b.daemon.client().status().unwrap().versions, 1);
}

#[test]
fn what_the_store_lacks_is_not_found_at_once() {
    let Some(server) = S3Server::start("what_the_store_lacks_is_not_found_at_once") else {
        return;
    };
    let b = Node::new(&server);
    let agent = b.spawn_resolver(["--pull", "models/", "--poll", "1h"]);

    let (error, took) = fetch_error(&b, "models/none", Selector::Latest);
    assert_eq!(error.code(), Some(ErrorCode::NotFound), "{error}");
    assert!(
        error.to_string().contains("no manifest for models/none"),
        "{error}"
    );
    assert!(took < AT_ONCE, "at once, not at the deadline: {took:?}");

    // Each is counted; none is a warning in the agent's log, however
    // often local clients ask.
    for i in 0..40 {
        let (error, _) = fetch_error(&b, &format!("models/none-{i}"), Selector::Latest);
        assert_eq!(error.code(), Some(ErrorCode::NotFound), "{error}");
    }
    b.wait_for_counter("pulls_not_found", 41);
    let log = agent.output();
    assert!(!log.contains("cannot supply"), "{log}");

    // Outside the --pull prefixes the daemon answers alone, as ever.
    let (error, took) = fetch_error(&b, "other/none", Selector::Latest);
    assert_eq!(error.code(), Some(ErrorCode::NotFound), "{error}");
    assert!(!error.to_string().contains("memseal-fleet"), "{error}");
    assert!(took < AT_ONCE, "{took:?}");
}

#[test]
fn an_unreachable_store_or_a_corrupt_blob_fails_the_waiters_with_the_reason() {
    let Some(mut server) =
        S3Server::start("an_unreachable_store_or_a_corrupt_blob_fails_the_waiters_with_the_reason")
    else {
        return;
    };
    let (a, b) = (Node::new(&server), Node::new(&server));
    let (x, t) = (pattern(3 * MIB, 54), pattern(3 * MIB, 60));
    a.publish_and_push("models/x", &x);
    a.publish_and_push("models/t", &t);
    let agent_started = Instant::now();
    let agent = b.spawn_resolver(["--poll", "1h"]);

    // One bit flipped, or the end cut off: refused as ever, and the
    // waiter is told why.
    let store = server.store();
    let mut corrupted = x.clone();
    corrupted[x.len() / 2] ^= 0x01;
    write_object(&store, &blob_key(&x), corrupted);
    write_object(&store, &blob_key(&t), t[..t.len() - 4096].to_vec());
    for (name, why) in [("models/x", "corrupted"), ("models/t", "truncated")] {
        let (error, took) = fetch_error(&b, name, Selector::Latest);
        let message = error.to_string();
        assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{message}");
        assert!(message.contains(&format!("refused {name}")), "{message}");
        assert!(message.contains(why), "{message}");
        assert!(message.contains("nothing was published"), "{message}");
        assert!(took < AT_ONCE, "{took:?}");
    }
    let mut client = b.daemon.client();
    let status = client.status().unwrap();
    assert_eq!((status.versions, status.blobs), (0, 0), "nothing visible");
    b.wait_for_counter("integrity_failures", 2);

    // The store gone: unavailable, saying what failed and why.
    server.kill();
    let (error, took) = fetch_error(&b, "models/y", Selector::Latest);
    assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("could not supply it from s3://"),
        "{message}"
    );
    assert!(message.contains("manifest of models/y"), "{message}");
    assert!(message.contains("Connection refused"), "{message}");
    assert!(
        took < Duration::from_secs(25),
        "before the deadline: {took:?}"
    );
    assert_eq!(client.status().unwrap().versions, 0);

    // Local clients asking for name after name while the store is down
    // each get the reason, but the agent's log gets 20 such warnings at
    // once (this test's earlier failures took 3 of them) and then 6 a
    // minute.
    let askers: Vec<_> = (0..6)
        .map(|t| {
            let socket = b.daemon.socket().to_path_buf();
            std::thread::spawn(move || {
                for i in 0..5 {
                    let mut client = Client::connect_to(&socket).unwrap();
                    let name = format!("models/gone-{t}-{i}");
                    let error = client.fetch(&name).expect_err("the store is down");
                    assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
                }
            })
        })
        .collect();
    for asker in askers {
        asker.join().unwrap();
    }
    let lived = agent_started.elapsed();
    let output = agent.output();
    let warned = output.matches("cannot supply").count();
    let allowed = 20 + (6.0 * lived.as_secs_f64() / 60.0).ceil() as usize;
    eprintln!("[store down] 33 failed pulls in {lived:?}: {warned} warnings (budget {allowed})");
    assert!(
        warned <= allowed,
        "{warned} warnings, budget {allowed}:\n{output}"
    );
    assert!(output.matches("cannot supply models/gone-").count() < 30);
}

#[test]
fn a_refused_blob_is_not_downloaded_again_until_its_wait_is_over() {
    let Some(server) =
        S3Server::start("a_refused_blob_is_not_downloaded_again_until_its_wait_is_over")
    else {
        return;
    };
    let (a, b) = (Node::new(&server), Node::new(&server));
    let (x, t, u) = (
        pattern(3 * MIB, 70),
        pattern(3 * MIB, 71),
        pattern(3 * MIB, 72),
    );
    a.publish_and_push("models/x", &x);
    a.publish_and_push("models/t", &t);
    let wait = Duration::from_secs(8);
    let _agent = b.spawn_resolver(["--poll", "1h", "--retry-refused-after", "8s"]);
    let store = server.store();
    let mut corrupted = x.clone();
    corrupted[12345] ^= 0x80;
    write_object(&store, &blob_key(&x), corrupted);

    // The first fetch downloads the bad bytes and refuses them.
    let x_key = format!("blobs/{}", blake3::hash(&x).to_hex());
    let x_gets = || server.requests("GET", &x_key);
    // Taken before the fetch, so that the agent's wait surely ends no
    // earlier than `refused_at + wait`.
    let refused_at = Instant::now();
    let (error, _) = fetch_error(&b, "models/x", Selector::Latest);
    assert!(error.to_string().contains("corrupted"), "{error}");
    let downloaded = x_gets();
    assert!(downloaded >= 1, "the first fetch downloads");
    b.wait_for_counter("integrity_failures", 1);

    // Asking again, by any client, costs a manifest read, not a download,
    // and says why at once, even once the store holds good bytes again.
    for round in 0..4 {
        if round == 2 {
            write_object(&store, &blob_key(&x), x.clone());
        }
        let (error, took) = fetch_error(&b, "models/x", Selector::Latest);
        let message = error.to_string();
        assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{message}");
        assert!(message.contains("not downloaded again"), "{message}");
        assert!(message.contains("corrupted"), "the first reason: {message}");
        assert!(took < AT_ONCE, "{took:?}");
    }
    assert!(
        refused_at.elapsed() < wait,
        "the machine is too slow for this test's 8 s window"
    );
    assert_eq!(x_gets(), downloaded, "no second download");
    b.wait_for_counter("pulls_refused_without_download", 4);
    assert_eq!(b.counter("integrity_failures"), 1, "counted once");

    // The memory is of content: a name repointed at other content is
    // pulled at once.
    write_object(&store, &blob_key(&t), t[..t.len() - 1].to_vec());
    let (error, _) = fetch_error(&b, "models/t", Selector::Latest);
    assert!(error.to_string().contains("refused models/t"), "{error}");
    a.publish_and_push("models/t", &u);
    let asset = b.daemon.client().fetch("models/t").unwrap();
    assert!(asset[..] == u[..], "the new content, at once");

    // Once the wait is over, the repaired blob is downloaded and served.
    let served = loop {
        match b.daemon.client().fetch("models/x") {
            Ok(asset) => break asset,
            Err(e) => {
                assert!(e.to_string().contains("not downloaded again"), "{e}");
                assert!(refused_at.elapsed() < wait + AT_ONCE, "never retried: {e}");
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    };
    assert!(
        refused_at.elapsed() >= wait,
        "retried after {:?}",
        refused_at.elapsed()
    );
    assert!(served[..] == x[..]);
    assert_eq!(x_gets(), 2 * downloaded, "one more download of x");
}

#[test]
fn a_slow_pull_does_not_hold_up_another_name() {
    let Some(server) = S3Server::start("a_slow_pull_does_not_hold_up_another_name") else {
        return;
    };
    let (a, b) = (Node::new(&server), Node::new(&server));
    let large = pattern(48 * MIB, 55);
    let small = pattern(4096, 56);
    a.publish_and_push("models/slow", &large);
    a.publish_and_push("models/small", &small);
    // 48 MiB at 12 MiB/s: about four seconds.
    let agent = b.spawn_resolver([
        "--max-rate",
        "12M",
        "--piece-size",
        "4M",
        "--connections",
        "2",
        "--poll",
        "1h",
    ]);

    let socket = b.daemon.socket().to_owned();
    let slow = std::thread::spawn(move || {
        let asset = Client::connect_to(&socket)
            .unwrap()
            .fetch("models/slow")
            .unwrap();
        asset[..].to_vec()
    });
    assert!(
        b.daemon
            .eventually(Duration::from_secs(10), || blob_gets(&server) > 0),
        "the slow download did not start:\n{}",
        agent.output()
    );
    let started = Instant::now();
    let asset = b.daemon.client().fetch("models/small").unwrap();
    assert!(asset[..] == small[..]);
    assert!(
        !slow.is_finished(),
        "the small name came while the large one was still downloading ({:?}):\n{}",
        started.elapsed(),
        agent.output()
    );
    assert!(slow.join().unwrap() == large);
}

#[test]
fn names_pulled_through_are_kept_fresh() {
    let Some(server) = S3Server::start("names_pulled_through_are_kept_fresh") else {
        return;
    };
    let (a, b) = (Node::new(&server), Node::new(&server));
    let v1 = pattern(MIB, 57);
    a.publish_and_push("models/m", &v1);
    let agent = b.spawn_resolver(["--pull", "models/", "--poll", "1s"]);
    let asset = b.daemon.client().fetch("models/m").unwrap();
    assert!(asset[..] == v1[..]);

    let mut watcher = b.daemon.client().watch("models/").unwrap();
    let v2 = pattern(MIB, 58);
    a.publish_and_push("models/m", &v2);
    let seen = loop {
        match watcher.next_event(Some(Duration::from_secs(20))).unwrap() {
            Some(Event::Published(info)) if info.name == "models/m" => break info,
            Some(_) => continue,
            None => panic!("no new version within 20 s:\n{}", agent.output()),
        }
    };
    assert_eq!(&seen.hash, blake3::hash(&v2).as_bytes());
    let asset = b.daemon.client().fetch("models/m").unwrap();
    assert!(asset[..] == v2[..]);
}

#[test]
fn the_agent_registers_again_after_memseald_restarts() {
    let Some(server) = S3Server::start("the_agent_registers_again_after_memseald_restarts") else {
        return;
    };
    let (a, mut b) = (Node::new(&server), Node::new(&server));
    let bytes = pattern(MIB, 59);
    a.publish_and_push("models/r", &bytes);
    let agent = b.spawn_resolver(["--poll", "1h"]);

    // The restarted daemon holds nothing, and has no resolver until the
    // agent notices and registers again.
    b.daemon.restart_after_kill();
    agent.wait_for(REGISTERED, 2, Duration::from_secs(20));
    let asset = b.daemon.client().fetch("models/r").unwrap();
    assert!(asset[..] == bytes[..]);
    b.wait_for_counter("pulls", 1);
}

#[test]
fn a_refused_registration_ends_run_with_the_reason() {
    let Some(server) = S3Server::start("a_refused_registration_ends_run_with_the_reason") else {
        return;
    };
    let b = Node::new(&server);
    let out = b.fleet_output(["run", "--pull", "models//"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "refused by memseald:\n{stderr}");
    assert!(
        stderr.contains("as the resolver of \"models//\""),
        "{stderr}"
    );
    assert!(stderr.contains("invalid prefix"), "{stderr}");
}
