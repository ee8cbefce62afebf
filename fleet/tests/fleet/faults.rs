//! The store or the agent failing, and a wrong set-up.

use crate::support::{Background, Node, S3Server};
use memseal::{ErrorCode, Selector};
use memseal_tests::pattern;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// A pull slow enough to interrupt: 48 MiB at 12 MiB/s, in 4 MiB pieces
/// two at a time, takes about four seconds.
const SLOW_PULL: [&str; 8] = [
    "--max-rate",
    "12M",
    "--piece-size",
    "4M",
    "--connections",
    "2",
    "--retry-for",
    "60s",
];

/// Nothing of `name` is visible on `node`.
fn assert_absent(node: &Node, name: &str) {
    let mut client = node.daemon.client();
    let error = client.stat(name, Selector::Latest).unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound));
    assert_eq!(client.status().unwrap().versions, 0);
}

/// Node A publishes and pushes 48 MiB of `seed`; node B starts a slow
/// pull of it. Returns once the agent has received a whole piece: the
/// third GET of the blob can only start after the first of the two pieces
/// in flight is complete. (A logged request alone does not prove that the
/// agent saw the answer before the store is killed.)
fn begin_slow_pull(server: &S3Server, seed: u64) -> (Node, Node, Vec<u8>, Background) {
    let (a, b) = (Node::new(server), Node::new(server));
    let bytes = pattern(48 * MIB, seed);
    a.publish_and_push("models/big", &bytes);
    let mut args = vec!["pull", "models/big"];
    args.extend(SLOW_PULL);
    let pull = b.spawn_fleet(args);
    assert!(
        b.daemon
            .eventually(Duration::from_secs(20), || server.requests("GET", "blobs/")
                > 2),
        "the download did not start:\n{}",
        server.log_text()
    );
    (a, b, bytes, pull)
}

#[test]
fn the_store_dies_mid_download_and_the_agent_recovers() {
    let Some(mut server) = S3Server::start("the_store_dies_mid_download_and_the_agent_recovers")
    else {
        return;
    };
    let (a, b, bytes, mut pull) = begin_slow_pull(&server, 40);
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    assert_absent(&b, "models/big");

    // The store comes back empty (moto keeps its state in memory); the
    // publisher pushes again, and the waiting pull finishes by itself.
    server.restart();
    a.fleet_ok(["push", "models/big"]);
    let status = pull.wait(Duration::from_secs(60));
    let output = pull.output();
    assert!(status.success(), "the pull recovered:\n{output}");
    assert!(
        output.contains("retrying"),
        "it said it was retrying:\n{output}"
    );
    let asset = b.daemon.client().fetch("models/big").unwrap();
    assert!(asset[..] == bytes[..], "the bytes are whole and right");
}

#[test]
fn an_agent_killed_mid_pull_leaves_nothing_and_the_next_pull_works() {
    let Some(server) =
        S3Server::start("an_agent_killed_mid_pull_leaves_nothing_and_the_next_pull_works")
    else {
        return;
    };
    let (_a, b, bytes, mut pull) = begin_slow_pull(&server, 41);
    pull.kill();
    assert_absent(&b, "models/big");

    b.fleet_ok(["pull", "models/big"]);
    let asset = b.daemon.client().fetch("models/big").unwrap();
    assert!(asset[..] == bytes[..]);
}

/// The agent, started against a wrong set-up, stops at once with one line
/// that says what is wrong, and no stack trace.
fn assert_one_clear_error(node: &Node, args: &[&str], status: i32, says: &str) {
    let started = Instant::now();
    let out = node.fleet_output(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(status), "{args:?}:\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line, not a loop:\n{stderr}");
    assert!(stderr.contains(says), "{args:?} says {says:?}:\n{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a refusal is not retried: {:?}",
        started.elapsed()
    );
}

#[test]
fn wrong_credentials_are_one_clear_error() {
    let Some(server) = S3Server::start_refusing_every_key("wrong_credentials_are_one_clear_error")
    else {
        return;
    };
    let node = Node::new(&server);
    for args in [
        &["run", "--pull", "models/"][..],
        &["pull", "models/x"],
        &["ls"],
    ] {
        assert_one_clear_error(&node, args, 8, "refused the credentials");
        assert_one_clear_error(&node, args, 8, "InvalidAccessKeyId");
    }
}

#[test]
fn a_missing_bucket_is_one_clear_error() {
    let Some(server) = S3Server::start("a_missing_bucket_is_one_clear_error") else {
        return;
    };
    let mut node = Node::new(&server);
    node.remote = "s3://no-such-bucket/fleet".into();
    for args in [&["run"][..], &["pull", "models/x"], &["ls"]] {
        assert_one_clear_error(
            &node,
            args,
            8,
            "the bucket \"no-such-bucket\" does not exist",
        );
    }
}
