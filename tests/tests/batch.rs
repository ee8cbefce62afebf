//! Many assets in one round trip (`Client::fetch_many`) and the
//! protocol-version-2 greeting that announces how many, against the real
//! daemon.

use memseal::{ErrorCode, MapOptions, Selector, REQUIRED_SEALS};
use memseal_proto::codec::encode_request;
use memseal_proto::{FetchItem, Request, Response};
use memseal_tests::{pattern, Daemon, RawPeer};
use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;

#[test]
fn a_batch_is_one_round_trip_with_a_result_per_item() {
    let daemon = Daemon::builder().args(["--max-connections", "64"]).start();
    let mut client = daemon.client();
    let session = *client.session_limits().expect("a version-2 greeting");
    assert_eq!(session.max_fetch_many, 64);
    assert!(session.max_unread_descriptors >= session.max_fetch_many);
    let shards: Vec<(String, Vec<u8>)> = (0..64)
        .map(|i| (format!("model/shard-{i:02}"), pattern(4096 + i, i as u64)))
        .collect();
    for (name, bytes) in &shards {
        client.publish_bytes(name, bytes).unwrap();
    }
    let mut items: Vec<(&str, Selector)> = shards
        .iter()
        .map(|(name, _)| (name.as_str(), Selector::Latest))
        .collect();
    let before = client.requests_sent();
    let fetched = client.fetch_many(&items, &MapOptions::new()).unwrap();
    assert_eq!(client.requests_sent() - before, 1, "one round trip");
    for ((name, bytes), asset) in shards.iter().zip(&fetched) {
        let asset = asset.as_ref().unwrap();
        assert_eq!(asset.name(), name);
        assert!(asset[..] == bytes[..]);
        let seals = rustix::fs::fcntl_get_seals(asset.as_fd()).unwrap();
        assert!(seals.contains(REQUIRED_SEALS));
    }
    // Items fail alone; the connection stays usable.
    items.truncate(2);
    items.push(("model/missing", Selector::Latest));
    items.push(("../bad", Selector::Latest));
    items.push(("model/shard-00", Selector::Version(99)));
    let mixed = client.fetch_many(&items, &MapOptions::new()).unwrap();
    assert!(mixed[0].is_ok() && mixed[1].is_ok());
    let codes: Vec<_> = mixed[2..]
        .iter()
        .map(|r| r.as_ref().unwrap_err().code())
        .collect();
    assert_eq!(
        codes,
        [
            Some(ErrorCode::NotFound),
            Some(ErrorCode::InvalidName),
            Some(ErrorCode::NotFound)
        ]
    );
    // More items than one request may name: split into several.
    let many: Vec<(&str, Selector)> = (0..150)
        .map(|i| (shards[i % 64].0.as_str(), Selector::Latest))
        .collect();
    let before = client.requests_sent();
    let results = client.fetch_many(&many, &MapOptions::new()).unwrap();
    assert_eq!(client.requests_sent() - before, 3);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(client.fetch("model/shard-07").unwrap()[..], shards[7].1[..]);
}

#[test]
fn a_batch_over_the_announced_limit_is_refused_and_the_connection_stays() {
    let daemon = Daemon::builder().args(["--max-connections", "64"]).start();
    daemon.client().publish_bytes("one", b"1").unwrap();
    let mut peer = RawPeer::handshake(daemon.socket());
    let items = (0..65)
        .map(|_| FetchItem {
            name: "one".into(),
            selector: Selector::Latest,
        })
        .collect();
    peer.send(&Request::FetchMany { items });
    match peer.recv() {
        Response::Error(reply) => {
            assert_eq!(reply.code, ErrorCode::TooLarge);
            assert!(
                reply.message.contains("max_fetch_many"),
                "{}",
                reply.message
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    peer.send(&Request::Status);
    assert!(matches!(peer.recv(), Response::Status(_)));
}

/// A client that asks for batch after batch without reading them is held
/// back after the first, then cut off, and a healthy client is served
/// meanwhile: a batch counts all its descriptors against the bound.
#[test]
fn unread_batches_are_held_back_then_cut_off() {
    let daemon = Daemon::builder()
        .args(["--max-connections", "64", "--io-timeout", "1s"])
        .start();
    let mut client = daemon.client();
    for i in 0..64 {
        client.publish_bytes(&format!("b/{i}"), &[i as u8]).unwrap();
    }
    let peer = RawPeer::handshake(daemon.socket());
    let items: Vec<FetchItem> = (0..64)
        .map(|i| FetchItem {
            name: format!("b/{i}"),
            selector: Selector::Latest,
        })
        .collect();
    let frame = encode_request(&Request::FetchMany { items }).unwrap();
    for _ in 0..20 {
        if (&peer.stream).write_all(&frame).is_err() {
            break;
        }
    }
    // The healthy client is served while the hoarder is held back.
    for _ in 0..50 {
        assert_eq!(client.fetch("b/3").unwrap()[..], [3]);
    }
    let cut = daemon.eventually(Duration::from_secs(10), || {
        daemon
            .logs()
            .contains("client left too many replies with descriptors unread")
    });
    assert!(cut, "{}", daemon.logs());
}
