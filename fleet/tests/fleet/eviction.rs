//! Pulled content is a cache: it makes room for new pulls, least recently
//! used first, and what was published on the node itself never goes.

use crate::support::{Node, S3Server};
use memseal::{ErrorCode, Selector};
use memseal_tests::{pattern, Daemon};

const MIB: usize = 1 << 20;

#[test]
fn pulled_versions_make_room_least_recently_used_first() {
    let Some(server) = S3Server::start("pulled_versions_make_room_least_recently_used_first")
    else {
        return;
    };
    let a = Node::new(&server);
    // B holds at most 24 MiB.
    let b = Node::with_daemon(
        &server,
        Daemon::builder().args(["--max-total-bytes", "24M"]).start(),
    );
    let assets: Vec<(String, Vec<u8>)> = ["p/one", "p/two", "p/three"]
        .iter()
        .enumerate()
        .map(|(i, name)| (name.to_string(), pattern(8 * MIB, 50 + i as u64)))
        .collect();
    for (name, bytes) in &assets {
        a.publish_and_push(name, bytes);
    }
    a.publish_and_push("p/big", &pattern(20 * MIB, 60));
    a.publish_and_push("p/huge", &pattern(30 * MIB, 61));

    // 6 MiB published on B itself, then two pulls: 22 of 24 MiB in use.
    let mut client = b.daemon.client();
    let local = pattern(6 * MIB, 70);
    client.publish_bytes("local/keep", &local).unwrap();
    b.fleet_ok(["pull", "p/one"]);
    b.fleet_ok(["pull", "p/two"]);
    let held = client.fetch("p/one").unwrap();

    // The third needs 8 MiB: p/one, the least recently pulled, makes way.
    let out = b.fleet_output(["pull", "p/three"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("evicted p/one version 1"),
        "the eviction is logged:\n{stderr}"
    );
    assert_eq!(b.counter("evictions"), 1);
    let gone = client.stat("p/one", Selector::Latest).unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::NotFound));
    for name in ["p/two", "p/three", "local/keep"] {
        client.stat(name, Selector::Latest).unwrap();
    }
    assert!(
        held[..] == assets[0].1[..],
        "a reader of the evicted version keeps its bytes"
    );

    // 20 MiB cannot fit even if every pulled version went (2 + 16 < 20):
    // the pull is refused before anything is evicted or fetched.
    let gets = server.requests("GET", "blobs/");
    let out = b.fleet_output(["pull", "p/big"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("would not be enough"), "{stderr}");
    assert_eq!(server.requests("GET", "blobs/"), gets, "nothing fetched");
    for name in ["p/two", "p/three", "local/keep"] {
        client.stat(name, Selector::Latest).unwrap();
    }

    // 30 MiB is more than the daemon's largest asset (its whole budget).
    let out = b.fleet_output(["pull", "p/huge"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("more than memseald's largest asset"),
        "{stderr}"
    );
    assert_eq!(server.requests("GET", "blobs/"), gets, "nothing fetched");

    let kept = client.fetch("local/keep").unwrap();
    assert!(
        kept[..] == local[..],
        "what B published itself is never evicted"
    );
}
