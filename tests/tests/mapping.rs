//! Mapping options, checked by their effect on the real mapping as the
//! kernel reports it in `/proc/self/smaps`: resident pages for populate,
//! `VmFlags` for advice, `ShmemPmdMapped` for huge pages, private dirty
//! pages for the copy-on-write view.

use memseal::{Access, MapOptions, Selector, COPY_BREAK_EVEN};
use memseal_tests::{
    is_root, mapping_stats, pattern, selected_shmem_setting, skip, Daemon, ShmemHugePagesGuard,
};

const MIB: usize = 1 << 20;

#[test]
fn populate_faults_every_page_in_before_the_fetch_returns() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    let data = pattern(16 * MIB, 1);
    client.publish_bytes("map/populate", &data).unwrap();

    let lazy = client.fetch("map/populate").unwrap();
    let before = mapping_stats(lazy.as_ptr()).expect("the lazy mapping is in smaps");
    assert!(
        before.get("Rss") < 1024,
        "nothing was touched, yet {} KiB are resident:\n{before:?}",
        before.get("Rss")
    );

    let options = MapOptions::new().populate(true);
    let eager = client
        .fetch_with_options("map/populate", Selector::Latest, &options)
        .unwrap();
    let after = mapping_stats(eager.as_ptr()).expect("the populated mapping is in smaps");
    assert_eq!(
        after.get("Rss"),
        16 * 1024,
        "every page should be mapped:\n{after:?}"
    );
    // Populating maps the daemon's pages; it copies nothing.
    assert_eq!(after.get("Anonymous"), 0);
    assert_eq!(&eager[..], &data[..]);
}

#[test]
fn access_advice_is_applied_to_the_mapping() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client
        .publish_bytes("map/advice", &pattern(MIB, 2))
        .unwrap();
    let fetch = |client: &mut memseal::Client, access| {
        client
            .fetch_with_options(
                "map/advice",
                Selector::Latest,
                &MapOptions::new().access(access),
            )
            .unwrap()
    };
    let random = fetch(&mut client, Access::Random);
    let sequential = fetch(&mut client, Access::Sequential);
    let normal = fetch(&mut client, Access::Normal);
    let will_need = fetch(&mut client, Access::WillNeed);

    // `rr` is VM_RAND_READ, `sr` VM_SEQ_READ.
    let random = mapping_stats(random.as_ptr()).unwrap();
    assert!(
        random.has_flag("rr") && !random.has_flag("sr"),
        "{random:?}"
    );
    let sequential = mapping_stats(sequential.as_ptr()).unwrap();
    assert!(
        sequential.has_flag("sr") && !sequential.has_flag("rr"),
        "{sequential:?}"
    );
    let normal_stats = mapping_stats(normal.as_ptr()).unwrap();
    assert!(!normal_stats.has_flag("sr") && !normal_stats.has_flag("rr"));
    // MADV_WILLNEED leaves no flag; it only starts bringing in pages that
    // are not resident, and a memfd's pages are.
    assert_eq!(&will_need[..], &normal[..]);
}

#[test]
fn huge_pages_back_a_large_asset_where_the_host_allows_them() {
    if !is_root() {
        skip(
            "huge_pages_back_a_large_asset_where_the_host_allows_them",
            "needs root to select 'advise' in shmem_enabled",
        );
        return;
    }
    // Restored when the test ends, however it ends.
    let _setting = ShmemHugePagesGuard::set("advise").expect("select advise");
    let daemon = Daemon::start();
    let mut client = daemon.client();
    let data = pattern(8 * MIB, 3);
    client.publish_bytes("map/huge", &data).unwrap();

    let options = MapOptions::new().huge_pages(true).populate(true);
    let asset = client
        .fetch_with_options("map/huge", Selector::Latest, &options)
        .unwrap();
    assert_eq!(asset.as_ptr() as usize % (2 * MIB), 0, "not 2 MiB-aligned");
    let stats = mapping_stats(asset.as_ptr()).unwrap();
    assert!(stats.has_flag("hg"), "not marked MADV_HUGEPAGE: {stats:?}");
    assert_eq!(
        stats.get("ShmemPmdMapped"),
        8 * 1024,
        "every 2 MiB of the asset should be one huge page:\n{stats:?}"
    );
    assert_eq!(&asset[..], &data[..]);

    // A size that is not a multiple of 2 MiB: the whole blocks are huge,
    // the tail is not, and nothing past the end is mapped.
    let odd = pattern(5 * MIB + 12_345, 4);
    client.publish_bytes("map/huge-odd", &odd).unwrap();
    let asset = client
        .fetch_with_options("map/huge-odd", Selector::Latest, &options)
        .unwrap();
    let stats = mapping_stats(asset.as_ptr()).unwrap();
    assert_eq!(stats.get("ShmemPmdMapped"), 4 * 1024, "{stats:?}");
    assert_eq!(&asset[..], &odd[..]);
}

#[test]
fn without_host_support_huge_pages_are_explained_and_harmless() {
    let _setting = if selected_shmem_setting().as_deref() == Some("never") {
        ShmemHugePagesGuard::hold()
    } else if is_root() {
        ShmemHugePagesGuard::set("never").expect("select never")
    } else {
        skip(
            "without_host_support_huge_pages_are_explained_and_harmless",
            "shmem huge pages are enabled here and only root may turn them off",
        );
        return;
    };
    let daemon = Daemon::start();
    let mut client = daemon.client();
    let data = pattern(4 * MIB, 5);
    client.publish_bytes("map/small-pages", &data).unwrap();

    assert!(
        daemon
            .logs()
            .contains("transparent huge pages are off for shared memory"),
        "the daemon should say once why large assets get small pages:\n{}",
        daemon.logs()
    );
    let stat = daemon
        .cli()
        .args(["stat", "map/small-pages"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stat.stdout);
    assert!(
        text.contains("huge pages  unavailable (shmem_enabled=never)"),
        "{text}"
    );

    let options = MapOptions::new().huge_pages(true).populate(true);
    let asset = client
        .fetch_with_options("map/small-pages", Selector::Latest, &options)
        .unwrap();
    let stats = mapping_stats(asset.as_ptr()).unwrap();
    assert_eq!(stats.get("ShmemPmdMapped"), 0);
    assert_eq!(stats.get("Rss"), 4 * 1024);
    assert_eq!(&asset[..], &data[..]);
}

#[test]
fn private_copy_writes_stay_in_this_process() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    let data = pattern(MIB, 6);
    let info = client.publish_bytes("map/private", &data).unwrap();

    let mut private = client
        .fetch_private("map/private", Selector::Latest, &MapOptions::new())
        .unwrap();
    assert_eq!(&private[..], &data[..]);
    // One byte in each of three pages.
    for offset in [0, 100_000, MIB - 1] {
        private[offset] = !data[offset];
    }
    assert_eq!(private[100_000], !data[100_000]);

    // Only the written pages were copied.
    let stats = mapping_stats(private.as_ptr()).unwrap();
    assert_eq!(stats.get("Anonymous"), 3 * 4, "{stats:?}");

    // Another reader, in this process or another, sees the asset as
    // published, and so does the daemon.
    let other = daemon.client().fetch("map/private").unwrap();
    assert_eq!(&other[..], &data[..]);
    let copied = daemon.dir().join("copy");
    let status = daemon
        .cli()
        .args(["get", "map/private", "-o"])
        .arg(&copied)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(&copied).unwrap(), data);
    assert_eq!(
        client.stat("map/private", Selector::Latest).unwrap().hash,
        info.hash
    );
}

#[test]
fn small_assets_are_copied_below_the_break_even() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    let small = pattern(4096, 7);
    let large = pattern(COPY_BREAK_EVEN as usize, 8);
    client.publish_bytes("map/small", &small).unwrap();
    client.publish_bytes("map/large", &large).unwrap();
    client.publish_bytes("map/empty", b"").unwrap();

    let options = MapOptions::new().copy_below(COPY_BREAK_EVEN);
    let copied = client
        .fetch_with_options("map/small", Selector::Latest, &options)
        .unwrap();
    assert!(!copied.is_mapped());
    assert_eq!(&copied[..], &small[..]);
    // The bytes live on the heap, not in a mapping of the memfd.
    let stats = mapping_stats(copied.as_ptr()).unwrap();
    assert!(!stats.header.contains("memfd:"), "{}", stats.header);

    let mapped = client
        .fetch_with_options("map/large", Selector::Latest, &options)
        .unwrap();
    assert!(mapped.is_mapped());
    assert!(mapping_stats(mapped.as_ptr())
        .unwrap()
        .header
        .contains("memfd:"));
    assert_eq!(&mapped[..], &large[..]);

    let empty = client
        .fetch_with_options("map/empty", Selector::Latest, &options)
        .unwrap();
    assert!(empty.is_empty());
}

#[test]
fn every_option_together_on_an_empty_and_a_tiny_asset() {
    let daemon = Daemon::start();
    let mut client = daemon.client();
    client.publish_bytes("map/e", b"").unwrap();
    client.publish_bytes("map/t", b"x").unwrap();
    let options = MapOptions::new()
        .populate(true)
        .huge_pages(true)
        .access(Access::Random);
    for name in ["map/e", "map/t"] {
        let asset = client
            .fetch_with_options(name, Selector::Latest, &options)
            .unwrap();
        let private = client
            .fetch_private(name, Selector::Latest, &options)
            .unwrap();
        assert_eq!(&asset[..], &private[..]);
    }
}
