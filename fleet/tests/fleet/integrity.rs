//! The store is trusted to keep objects, never to keep them right.

use crate::support::{blob_key, key, read_object, write_object, Node, S3Server};
use memseal::{ErrorCode, Selector};
use memseal_tests::pattern;
use std::process::Output;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// A pull that must be refused: exit status 7, one log line saying why,
/// the counter at one, and nothing visible on the node.
fn assert_refused(node: &Node, out: &Output, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "refused with status 7:\n{stderr}"
    );
    assert!(stderr.contains("refused models/x from"), "{stderr}");
    assert!(
        stderr.contains(why),
        "the reason ({why}) is given:\n{stderr}"
    );
    assert!(stderr.contains("nothing was published"), "{stderr}");
    assert!(stderr.contains("integrity failures so far: 1"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(node.counter("integrity_failures"), 1);
    assert_eq!(node.counter("pulls"), 0);
    let mut client = node.daemon.client();
    let error = client.stat("models/x", Selector::Latest).unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound), "nothing visible");
    let status = client.status().unwrap();
    assert_eq!((status.versions, status.blobs), (0, 0), "nothing held");
}

#[test]
fn corrupted_truncated_and_swapped_objects_are_refused() {
    let Some(server) = S3Server::start("corrupted_truncated_and_swapped_objects_are_refused")
    else {
        return;
    };
    let (a, b) = (Node::new(&server), Node::new(&server));
    let x = pattern(3 * MIB + 123, 20);
    let y = pattern(3 * MIB + 123, 21);
    a.publish_and_push("models/x", &x);
    a.publish_and_push("models/y", &y);
    let store = server.store();
    let x_key = blob_key(&x);

    // One bit flipped in the middle, the size unchanged.
    let mut corrupted = x.clone();
    corrupted[x.len() / 2] ^= 0x10;
    write_object(&store, &x_key, corrupted);
    let out = b.fleet_output(["pull", "models/x", "--piece-size", "1M"]);
    assert_refused(&b, &out, "corrupted or swapped");

    // Cut short.
    write_object(&store, &x_key, x[..x.len() - 4096].to_vec());
    let out = b.fleet_output(["pull", "models/x"]);
    assert_refused(&b, &out, "truncated");

    // Another asset's bytes, of the same size, under x's key.
    write_object(&store, &x_key, y.clone());
    let out = b.fleet_output(["pull", "models/x"]);
    assert_refused(&b, &out, "corrupted or swapped");

    // A manifest that is not one.
    let manifest_key = key("names/models/x");
    let manifest = read_object(&store, &manifest_key).unwrap();
    write_object(
        &store,
        &manifest_key,
        b"{\"format\": 1, \"name\": ".to_vec(),
    );
    let out = b.fleet_output(["pull", "models/x"]);
    assert_refused(&b, &out, "the manifest is not valid");

    // Repaired, the same pull goes through.
    write_object(&store, &manifest_key, manifest);
    write_object(&store, &x_key, x.clone());
    b.fleet_ok(["pull", "models/x"]);
    let asset = b.daemon.client().fetch("models/x").unwrap();
    assert!(asset[..] == x[..]);
}

#[test]
fn a_push_restores_a_blob_the_store_lost() {
    let Some(server) = S3Server::start("a_push_restores_a_blob_the_store_lost") else {
        return;
    };
    let (a, b) = (Node::new(&server), Node::new(&server));
    let bytes = pattern(MIB, 30);
    a.publish_and_push("models/x", &bytes);
    let store = server.store();
    write_object(&store, &blob_key(&bytes), bytes[..1000].to_vec());

    // The manifest already names the content, but the blob is wrong: the
    // push writes the blob again, and the manifest stays.
    let out = a.fleet_ok(["push", "models/x"]);
    assert!(out.contains("already names models/x"), "{out}");
    assert!(out.contains("blob uploaded"), "{out}");
    assert_eq!(
        read_object(&store, &blob_key(&bytes)).as_deref(),
        Some(&bytes[..])
    );
    b.fleet_ok(["pull", "models/x"]);
}

#[test]
fn the_poll_loop_does_not_download_a_refused_version_again() {
    let Some(server) = S3Server::start("the_poll_loop_does_not_download_a_refused_version_again")
    else {
        return;
    };
    let (a, b) = (Node::new(&server), Node::new(&server));
    let (old, new) = (pattern(3 * MIB, 24), pattern(3 * MIB, 25));
    a.publish_and_push("models/x", &old);
    b.fleet_ok(["pull", "models/x"]);
    a.publish_and_push("models/x", &new);
    let store = server.store();
    let mut corrupted = new.clone();
    corrupted[MIB] ^= 0x04;
    write_object(&store, &blob_key(&new), corrupted);
    let new_key = format!("blobs/{}", blake3::hash(&new).to_hex());

    // Polls every 300 ms: the new version is downloaded once, refused,
    // and each later poll fails at once without asking for the blob.
    let agent = b.spawn_fleet(["run", "--poll", "300ms"]);
    b.wait_for_counter("integrity_failures", 1);
    let downloaded = server.requests("GET", &new_key);
    assert!(downloaded >= 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.counter("pulls_refused_without_download") < 3 {
        assert!(Instant::now() < deadline, "{}", agent.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        server.requests("GET", &new_key),
        downloaded,
        "downloaded once"
    );
    assert_eq!(b.counter("integrity_failures"), 1);
    let output = agent.output();
    assert_eq!(
        output.matches("corrupted or swapped").count(),
        1,
        "{output}"
    );

    // The node keeps serving the version it had.
    let asset = b.daemon.client().fetch("models/x").unwrap();
    assert!(asset[..] == old[..]);
}
