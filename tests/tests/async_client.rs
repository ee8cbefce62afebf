//! The async client (the `memseal` crate's feature `tokio`) against the
//! real `memseald`: the same operations, answers and checks as the
//! blocking client.

use memseal::{AsyncClient, Event, MapOptions, Selector};
use memseal_tests::Daemon;
use std::time::Duration;

#[tokio::test(flavor = "current_thread")]
async fn every_operation_works_as_in_the_blocking_client() {
    let daemon = Daemon::start();
    let mut client = AsyncClient::connect_to(daemon.socket()).await.unwrap();
    assert!(client.server().starts_with("memseald"));
    let mut watcher = client.watch("a/").await.unwrap();

    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let info = client.publish_bytes("a/one", &data).await.unwrap();
    let asset = client.fetch("a/one").await.unwrap();
    assert_eq!(&asset[..], &data[..]);
    assert_eq!(asset.hash(), &info.hash);

    let populated = client
        .fetch_with_options(
            "a/one",
            Selector::Version(1),
            &MapOptions::new().populate(true),
        )
        .await
        .unwrap();
    assert_eq!(&populated[..], &data[..]);
    let mut private = client
        .fetch_private("a/one", Selector::Latest, &MapOptions::new())
        .await
        .unwrap();
    private[0] ^= 0xff;
    assert_eq!(client.fetch("a/one").await.unwrap()[0], data[0]);

    let file = {
        let path = daemon.dir().join("source");
        std::fs::write(&path, b"from a file").unwrap();
        std::fs::File::open(&path).unwrap()
    };
    client.publish_file("a/two", &file).await.unwrap();
    assert_eq!(
        client.stat("a/two", Selector::Latest).await.unwrap().size,
        11
    );
    let names: Vec<String> = client
        .list("a/")
        .await
        .unwrap()
        .into_iter()
        .map(|info| info.name)
        .collect();
    assert_eq!(names, ["a/one", "a/two"]);
    assert_eq!(client.status().await.unwrap().names, 2);
    assert_eq!(client.remove("a/two", None).await.unwrap(), 1);

    let missing = client.fetch("a/two").await.unwrap_err();
    assert_eq!(missing.code(), Some(memseal::ErrorCode::NotFound));
    // A refused request leaves the connection usable.
    assert_eq!(client.fetch("a/one").await.unwrap().version(), 1);

    let mut events = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(10), watcher.next_event())
            .await
            .expect("an event within 10 s")
            .unwrap();
        events.push(event);
    }
    assert!(matches!(&events[0], Event::Published(i) if i.name == "a/one"));
    assert!(matches!(&events[1], Event::Published(i) if i.name == "a/two"));
    assert!(matches!(&events[2], Event::Removed(i) if i.name == "a/two"));

    // Cancelling a wait for an event loses nothing.
    let idle = tokio::time::timeout(Duration::from_millis(20), watcher.next_event()).await;
    assert!(idle.is_err());
    client.publish_bytes("a/three", b"3").await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), watcher.next_event())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(event, Event::Published(i) if i.name == "a/three"));
}

#[tokio::test(flavor = "current_thread")]
async fn publish_reader_streams_exactly_the_promised_bytes() {
    let daemon = Daemon::start();
    let mut client = AsyncClient::connect_to(daemon.socket()).await.unwrap();
    // More than one chunk, from any AsyncRead (a byte slice here).
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
    let info = client
        .publish_reader("r/streamed", &data[..], data.len() as u64)
        .await
        .unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(&client.fetch("r/streamed").await.unwrap()[..], &data[..]);

    // A reader that ends early abandons the publish: nothing becomes
    // visible, and the error says how far it got.
    let err = client
        .publish_reader("r/short", &data[..10], 20)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("after 10 of 20 bytes"), "{err}");
    let mut fresh = AsyncClient::connect_to(daemon.socket()).await.unwrap();
    let missing = fresh.fetch("r/short").await.unwrap_err();
    assert_eq!(missing.code(), Some(memseal::ErrorCode::NotFound));
}
