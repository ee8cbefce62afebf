//! The library against the fake daemon of `common`: the handshake, every
//! request, and what a client does when the daemon misbehaves.

mod common;

use common::{memfd_with, open_fds_named, Arrival, Behaviour, FakeDaemon};
use memseal::{Client, ConnectOptions, Error, ErrorCode, HandshakeError, Selector, VerifyError};
use rustix::fs::SealFlags;
use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

#[test]
fn handshake_reports_server_and_limits() {
    let daemon = FakeDaemon::start();
    let client = Client::connect_to(&daemon.path).unwrap();
    assert_eq!(client.server(), common::SERVER_NAME);
    assert_eq!(client.limits(), &common::LIMITS);
    assert_eq!(client.socket_path(), daemon.path);
}

#[test]
fn publish_then_fetch_maps_the_daemons_sealed_memfd() {
    let daemon = FakeDaemon::start();
    let mut client = Client::connect_to(&daemon.path).unwrap();
    let first = client.publish_bytes("greetings/hello", b"hello").unwrap();
    assert_eq!(
        (first.name.as_str(), first.version, first.size),
        ("greetings/hello", 1, 5)
    );
    let second = client
        .publish_bytes("greetings/hello", b"hello again")
        .unwrap();
    assert_eq!(second.version, 2);

    let latest = client.fetch("greetings/hello").unwrap();
    assert_eq!(&latest[..], b"hello again");
    assert_eq!(latest.info(), &second);
    assert_eq!(
        (
            latest.name(),
            latest.version(),
            latest.size(),
            latest.hash()
        ),
        ("greetings/hello", 2, 11, &second.hash)
    );

    let old = client
        .fetch_with("greetings/hello", Selector::Version(1))
        .unwrap();
    assert_eq!(&old[..], b"hello");
    let by_hash = client
        .fetch_with("greetings/hello", Selector::Hash(first.hash))
        .unwrap();
    assert_eq!(by_hash.version(), 1);

    // The asset outlives the client and the connection.
    drop(client);
    assert_eq!(latest.as_ref(), b"hello again");
    let fd = latest.into_fd();
    assert_eq!(&memseal::verify(fd, Some(11)).unwrap()[..], b"hello again");
    assert_eq!(daemon.arrivals()[0].1, Arrival::Stream);
}

#[test]
fn assets_are_send_and_sync_and_clients_send() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<memseal::Asset>();
    assert_send_sync::<memseal::Sealed>();
    fn assert_send<T: Send>() {}
    assert_send::<Client>();
}

#[test]
fn an_empty_asset_round_trips() {
    let daemon = FakeDaemon::start();
    let mut client = Client::connect_to(&daemon.path).unwrap();
    assert_eq!(client.publish_bytes("empty", b"").unwrap().size, 0);
    assert!(client.fetch("empty").unwrap().is_empty());
}

#[test]
fn publish_reader_sends_exactly_the_announced_size() {
    let daemon = FakeDaemon::start();
    let mut client = Client::connect_to(&daemon.path).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    // Longer than announced: only `size` bytes go.
    let info = client.publish_reader("big", &data[..], 299_999).unwrap();
    assert_eq!(info.size, 299_999);
    assert_eq!(&client.fetch("big").unwrap()[..], &data[..299_999]);
}

#[test]
fn a_short_reader_abandons_the_connection() {
    let daemon = FakeDaemon::start();
    let mut client = Client::connect_to(&daemon.path).unwrap();
    let err = client
        .publish_reader("short", &b"12345"[..], 10)
        .unwrap_err();
    match &err {
        Error::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
        other => panic!("wrong error: {other:?}"),
    }
    assert!(
        err.to_string().contains("ended after 5 of 10 bytes"),
        "{err}"
    );
    assert!(matches!(client.status(), Err(Error::ConnectionLost)));
    // The daemon saw the publish cut off and kept nothing.
    let mut fresh = Client::connect_to(&daemon.path).unwrap();
    assert_eq!(
        fresh.stat("short", Selector::Latest).unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
}

#[test]
fn publish_file_sends_the_descriptor() {
    let daemon = FakeDaemon::start();
    let mut client = Client::connect_to(&daemon.path).unwrap();
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(b"from a regular file").unwrap();
    let info = client.publish_file("files/one", &file).unwrap();
    assert_eq!(info.size, 19);
    assert_eq!(
        &client.fetch("files/one").unwrap()[..],
        b"from a regular file"
    );
    assert_eq!(
        daemon.arrivals(),
        [("files/one".to_owned(), Arrival::RegularFile)]
    );
}

#[test]
fn publish_file_refuses_a_pipe_locally() {
    let daemon = FakeDaemon::start();
    let mut client = Client::connect_to(&daemon.path).unwrap();
    let (reader, _writer) = rustix::pipe::pipe().unwrap();
    let err = client
        .publish_file("pipe", &std::fs::File::from(reader))
        .unwrap_err();
    assert!(err.to_string().contains("cannot publish a pipe"), "{err}");
    // Nothing was sent, so the connection is still fine.
    client.status().unwrap();
}

#[test]
fn publish_sealed_hands_over_the_memfd() {
    let daemon = FakeDaemon::start();
    let mut client = Client::connect_to(&daemon.path).unwrap();
    let memfd = memfd_with(
        "client-test-publish-sealed",
        b"adopt me",
        common::daemon_seals(),
    );
    let info = client.publish_sealed("sealed/one", memfd.as_fd()).unwrap();
    assert_eq!(info.size, 8);
    assert_eq!(
        daemon.arrivals(),
        [("sealed/one".to_owned(), Arrival::SealedMemfd)]
    );
}

#[test]
fn publish_sealed_checks_the_seals_first() {
    let daemon = FakeDaemon::start();
    let mut client = Client::connect_to(&daemon.path).unwrap();
    let memfd = memfd_with("client-test-publish-unsealed", b"open", SealFlags::SEAL);
    let err = client
        .publish_sealed("sealed/two", memfd.as_fd())
        .unwrap_err();
    assert!(
        matches!(err, Error::Verify(VerifyError::MissingSeals { .. })),
        "{err:?}"
    );
    assert!(daemon.arrivals().is_empty());
    client.status().unwrap();
}

#[test]
fn server_errors_carry_the_code_and_keep_the_connection() {
    let daemon = FakeDaemon::start();
    let mut client = Client::connect_to(&daemon.path).unwrap();
    let err = client.fetch("no/such/asset").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    assert!(matches!(&err, Error::Server { message, .. } if message.contains("no/such/asset")));
    assert_eq!(err.to_string(), "not found: no asset named 'no/such/asset'");

    let err = client.publish_bytes("../escape", b"x").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidName));
    client.publish_bytes("fine", b"x").unwrap();
}

#[test]
fn list_follows_every_page_in_order() {
    let daemon = FakeDaemon::start();
    let mut client = Client::connect_to(&daemon.path).unwrap();
    for name in ["b/3", "a/1", "b/1", "b/2", "b/4", "c/1"] {
        client.publish_bytes(name, name.as_bytes()).unwrap();
    }
    client.publish_bytes("b/2", b"newer").unwrap();
    let listed = client.list("b/").unwrap();
    let names: Vec<(&str, u64)> = listed
        .iter()
        .map(|i| (i.name.as_str(), i.version))
        .collect();
    assert_eq!(names, [("b/1", 1), ("b/2", 2), ("b/3", 1), ("b/4", 1)]);
    assert_eq!(client.list("").unwrap().len(), 6);
    assert!(client.list("zzz").unwrap().is_empty());
}

#[test]
fn a_listing_that_repeats_itself_is_refused() {
    let daemon = FakeDaemon::with(Behaviour::RepeatCursor);
    let mut client = Client::connect_to(&daemon.path).unwrap();
    for name in ["a", "b", "c"] {
        client.publish_bytes(name, b"x").unwrap();
    }
    let err = client.list("").unwrap_err();
    assert!(matches!(err, Error::UnexpectedResponse { .. }), "{err:?}");
}

#[test]
fn remove_and_status() {
    let daemon = FakeDaemon::start();
    let mut client = Client::connect_to(&daemon.path).unwrap();
    for body in [&b"one"[..], b"two", b"three"] {
        client.publish_bytes("doomed", body).unwrap();
    }
    let kept = client.fetch_with("doomed", Selector::Version(2)).unwrap();
    assert_eq!(client.remove("doomed", Some(2)).unwrap(), 1);
    assert_eq!(
        client
            .stat("doomed", Selector::Version(2))
            .unwrap_err()
            .code(),
        Some(ErrorCode::NotFound)
    );
    // A removed version stays readable for whoever fetched it.
    assert_eq!(&kept[..], b"two");

    let status = client.status().unwrap();
    assert_eq!((status.names, status.versions, status.bytes), (1, 2, 8));
    assert_eq!(status.server, common::SERVER_NAME);
    assert!(status.connections >= 1);

    assert_eq!(client.remove("doomed", None).unwrap(), 2);
    assert_eq!(client.status().unwrap().names, 0);
}

#[test]
fn an_unsealed_fetch_is_refused_and_closed() {
    let daemon = FakeDaemon::with(Behaviour::UnsealedFetch);
    let mut client = Client::connect_to(&daemon.path).unwrap();
    client.publish_bytes("asset", b"mutable?").unwrap();
    let err = client.fetch("asset").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Verify(VerifyError::MissingSeals { have: 0, .. })
        ),
        "{err:?}"
    );
    // The frame was complete, so the connection is still in step. Once the
    // daemon has answered the next request it has dropped its own copy, and
    // no descriptor of the unsealed memfd is left in this process.
    client.status().unwrap();
    assert_eq!(open_fds_named("fake-unsealed-fetch"), 0);
    assert_eq!(common::mappings_named("fake-unsealed-fetch"), 0);
}

#[test]
fn a_fetch_shorter_than_announced_is_refused() {
    let daemon = FakeDaemon::with(Behaviour::ShortFetch);
    let mut client = Client::connect_to(&daemon.path).unwrap();
    client.publish_bytes("asset", b"0123456789").unwrap();
    let err = client.fetch("asset").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Verify(VerifyError::SizeMismatch {
                declared: 10,
                actual: 9
            })
        ),
        "{err:?}"
    );
}

#[test]
fn the_peer_must_run_as_the_expected_user() {
    let daemon = FakeDaemon::start();
    let me = rustix::process::geteuid().as_raw();
    ConnectOptions::new()
        .socket(&daemon.path)
        .expect_server_uid(me)
        .connect()
        .unwrap();
    let stranger = me.wrapping_add(4242);
    let err = ConnectOptions::new()
        .socket(&daemon.path)
        .expect_server_uid(stranger)
        .connect()
        .unwrap_err();
    match &err {
        Error::PeerRejected { uid, expected } => {
            assert_eq!(*uid, me);
            assert_eq!(expected, &format!("uid {stranger}"));
        }
        other => panic!("wrong error: {other:?}"),
    }
}

#[test]
fn a_missing_socket_says_how_to_start_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody-listens.sock");
    let err = Client::connect_to(&path).unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains("is it running? Start it with `memseald`"),
        "{message}"
    );
}

#[test]
fn a_silent_daemon_times_out() {
    let daemon = FakeDaemon::with(Behaviour::Silent);
    let mut client = ConnectOptions::new()
        .socket(&daemon.path)
        .timeout(Some(Duration::from_millis(200)))
        .connect()
        .unwrap();
    let started = Instant::now();
    let err = client.status().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match &err {
        Error::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
        other => panic!("wrong error: {other:?}"),
    }
    assert!(
        err.to_string().contains("did not answer within 0.2 s"),
        "{err}"
    );
    // A late answer could now be taken for the answer to the next request.
    assert!(matches!(client.status(), Err(Error::ConnectionLost)));
}

#[test]
fn handshake_failures_are_typed() {
    let daemon = FakeDaemon::with(Behaviour::WrongVersion);
    let err = Client::connect_to(&daemon.path).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Handshake(HandshakeError::Version { theirs: 42, .. })
        ),
        "{err:?}"
    );

    let daemon = FakeDaemon::with(Behaviour::RefuseHello);
    let err = Client::connect_to(&daemon.path).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Busy));
    assert!(err.to_string().contains("too many clients"), "{err}");
}
