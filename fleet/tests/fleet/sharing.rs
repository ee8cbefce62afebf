//! Node to node through the bucket.

use crate::support::{blob_key, key, read_object, Node, S3Server};
use memseal::{Event, Selector};
use memseal_tests::pattern;
use std::time::Duration;

const MIB: usize = 1 << 20;

#[test]
fn node_b_pulls_what_node_a_pushed() {
    let Some(mut server) = S3Server::start("node_b_pulls_what_node_a_pushed") else {
        return;
    };
    let (a, b) = (Node::new(&server), Node::new(&server));
    // 20 MiB: three ranged GETs of 8 MiB (the default piece size).
    let bytes = pattern(20 * MIB, 1);
    let published = a
        .daemon
        .client()
        .publish_bytes("models/weights.bin", &bytes)
        .unwrap();

    let out = a.fleet_ok(["push", "models/weights.bin"]);
    assert!(out.contains("pushed models/weights.bin version 1"), "{out}");
    assert!(out.contains("blob uploaded in 3 parts"), "{out}");
    let out = a.fleet_ok(["push", "models/weights.bin"]);
    assert!(
        out.contains("already names"),
        "a second push writes nothing: {out}"
    );

    // The bucket holds the blob under its BLAKE3 and a manifest anyone can read.
    let store = server.store();
    assert_eq!(
        read_object(&store, &blob_key(&bytes)).as_deref(),
        Some(&bytes[..])
    );
    let manifest = read_object(&store, &key("names/models/weights.bin")).expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["format"], 1);
    assert_eq!(manifest["name"], "models/weights.bin");
    assert_eq!(manifest["blake3"], blake3::hash(&bytes).to_hex().as_str());
    assert_eq!(manifest["size"], bytes.len());
    assert_eq!(manifest["published_ms"], published.published_ms);
    let listing = b.fleet_ok(["ls", "models/"]);
    assert!(listing.contains("models/weights.bin"), "{listing}");
    assert!(listing.contains("20.0 MiB"), "{listing}");

    let (manifest_gets, blob_gets) = (
        server.requests("GET", "names/models/weights.bin"),
        server.requests("GET", "blobs/"),
    );
    let out = b.fleet_ok(["pull", "models/weights.bin"]);
    assert!(
        out.contains("pulled models/weights.bin: version 1"),
        "{out}"
    );
    assert_eq!(
        server.requests("GET", "names/models/weights.bin") - manifest_gets,
        1
    );
    assert_eq!(
        server.requests("GET", "blobs/") - blob_gets,
        3,
        "one GET per 8 MiB piece"
    );

    let mut client = b.daemon.client();
    let asset = client.fetch("models/weights.bin").unwrap();
    assert!(asset[..] == bytes[..], "node B serves the same bytes");
    assert_eq!(
        asset.hash(),
        &published.hash,
        "B's daemon hashed the same content"
    );
    let status = client.status().unwrap();
    assert_eq!((status.blobs, status.versions), (1, 1), "one memfd on B");

    // Asked again, the agent sees the content is there and moves nothing.
    let blob_gets = server.requests("GET", "blobs/");
    let out = b.fleet_ok(["pull", "models/weights.bin"]);
    assert!(out.contains("already present"), "{out}");
    assert_eq!(server.requests("GET", "blobs/"), blob_gets);

    // Every later fetch on B is local: the store can be gone.
    server.kill();
    for _ in 0..3 {
        let again = client.fetch("models/weights.bin").unwrap();
        assert!(again[..] == bytes[..]);
    }
    assert_eq!(client.status().unwrap().blobs, 1);
}

#[test]
fn a_pin_by_hash_pulls_exactly_that_content() {
    let Some(server) = S3Server::start("a_pin_by_hash_pulls_exactly_that_content") else {
        return;
    };
    let (a, b) = (Node::new(&server), Node::new(&server));
    let old = pattern(MIB, 2);
    let new = pattern(MIB, 3);
    a.publish_and_push("dict/en", &old);
    a.publish_and_push("dict/en", &new);

    // The manifest names the new content; the pin asks for the old one.
    let old_hex = blake3::hash(&old).to_hex().to_string();
    let out = b.fleet_ok(["pull", "dict/en", "--hash", &old_hex]);
    assert!(out.contains(&old_hex), "{out}");
    let asset = b.daemon.client().fetch("dict/en").unwrap();
    assert!(asset[..] == old[..]);

    let out = b.fleet_output(["pull", "dict/en", "--hash", &"0".repeat(64)]);
    assert_eq!(out.status.code(), Some(4), "no such blob: {out:?}");
    let out = b.fleet_output(["pull", "dict/en", "--hash", "xyz"]);
    assert_eq!(out.status.code(), Some(2), "not a hash: {out:?}");
    let out = b.fleet_output(["pull", "dict/missing"]);
    assert_eq!(out.status.code(), Some(4), "no manifest: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no manifest for dict/missing"), "{stderr}");
}

#[test]
fn a_new_version_reaches_node_b_and_its_watchers() {
    let Some(server) = S3Server::start("a_new_version_reaches_node_b_and_its_watchers") else {
        return;
    };
    let (a, b) = (Node::new(&server), Node::new(&server));
    let store = server.store();
    let manifest_hash = || {
        read_object(&store, &key("names/models/m"))
            .map(|m| serde_json::from_slice::<serde_json::Value>(&m).unwrap()["blake3"].clone())
    };

    // A's agent pushes what is published under models/.
    let a_agent = a.spawn_fleet(["run", "--push", "models/"]);
    let v1 = pattern(3 * MIB, 10);
    a.daemon.client().publish_bytes("models/m", &v1).unwrap();
    let v1_hex = blake3::hash(&v1).to_hex().to_string();
    assert!(
        a.daemon
            .eventually(Duration::from_secs(30), || manifest_hash()
                == Some(v1_hex.as_str().into())),
        "A's agent did not push version 1:\n{}",
        a_agent.output()
    );

    // B pulls it once; its agent then keeps it fresh (and pushes its own
    // publishes under models/, which must not echo what it pulled).
    b.fleet_ok(["pull", "models/m"]);
    let b_agent = b.spawn_fleet([
        "run", "--pull", "models/", "--push", "models/", "--poll", "1s",
    ]);
    let mut watcher = b.daemon.client().watch("models/").unwrap();

    let v2 = pattern(3 * MIB, 11);
    a.daemon.client().publish_bytes("models/m", &v2).unwrap();
    let v2_hash = *blake3::hash(&v2).as_bytes();
    let seen = loop {
        match watcher.next_event(Some(Duration::from_secs(30))).unwrap() {
            Some(Event::Published(info)) if info.name == "models/m" => break info,
            Some(_) => continue,
            None => panic!(
                "B's watcher saw no new version within 30 s\nA:\n{}\nB:\n{}",
                a_agent.output(),
                b_agent.output()
            ),
        }
    };
    assert_eq!(seen.hash, v2_hash, "the watcher saw version 2");
    let asset = b
        .daemon
        .client()
        .fetch_with("models/m", Selector::Latest)
        .unwrap();
    assert!(asset[..] == v2[..]);

    // B's own pusher left the manifest alone: it still names A's push.
    let manifest = read_object(&store, &key("names/models/m")).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        read_object(&store, &key("names/models/m")).unwrap(),
        manifest
    );
    let b_log = b_agent.output();
    assert!(
        !b_log.contains("pushed models/m"),
        "B pushed back what it pulled:\n{b_log}"
    );
}
