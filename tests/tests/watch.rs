//! Watching a prefix: events arrive in order, filtered, on their own
//! connection.

use memseal_proto::{Event, Request, Response};
use memseal_tests::{Daemon, RawPeer};

fn next_event(peer: &mut RawPeer) -> Event {
    match peer.recv() {
        Response::Event(event) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[test]
fn watchers_see_publishes_and_removals_in_order() {
    let daemon = Daemon::builder().args(["--keep-versions", "2"]).start();
    let mut watcher = RawPeer::handshake(daemon.socket());
    watcher.send(&Request::Watch {
        prefix: "w/".into(),
    });
    assert_eq!(watcher.recv(), Response::Watching);

    let mut client = daemon.client();
    let one = client.publish_bytes("w/a", b"1").unwrap();
    client.publish_bytes("elsewhere", b"x").unwrap();
    let two = client.publish_bytes("w/a", b"2").unwrap();
    let three = client.publish_bytes("w/a", b"3").unwrap();
    client.remove("w/a", Some(three.version)).unwrap();

    assert_eq!(next_event(&mut watcher), Event::Published(one.clone()));
    assert_eq!(next_event(&mut watcher), Event::Published(two.clone()));
    // The third version pushes the first out (two are kept).
    let mut batch = vec![next_event(&mut watcher), next_event(&mut watcher)];
    batch.sort_by_key(|e| matches!(e, Event::Published(_)));
    assert_eq!(
        batch,
        [Event::Removed(one), Event::Published(three.clone())]
    );
    assert_eq!(next_event(&mut watcher), Event::Removed(three));
}

#[test]
fn a_bad_prefix_is_refused_and_the_client_may_leave() {
    let daemon = Daemon::start();
    let mut watcher = RawPeer::handshake(daemon.socket());
    watcher.send(&Request::Watch {
        prefix: "/abs".into(),
    });
    assert!(
        matches!(watcher.recv(), Response::Error(e) if e.code == memseal_proto::ErrorCode::InvalidName)
    );
    watcher.send(&Request::Watch { prefix: "".into() });
    assert_eq!(watcher.recv(), Response::Watching);
    drop(watcher);
    let mut client = daemon.client();
    assert!(
        daemon.eventually(std::time::Duration::from_secs(5), || client
            .status()
            .unwrap()
            .connections
            == 1)
    );
}
