//! The frame decoder against hostile bytes.
//!
//! Everything a peer sends goes through [`FrameReader`] and then
//! [`decode_request`] or [`decode_response`], so these must hold for any
//! input whatsoever:
//!
//! - no panic;
//! - no allocation larger than the frame cap ([`MAX_FRAME_LEN`]), whatever
//!   lengths the bytes claim: a length prefix above the cap is refused with
//!   [`FrameError::TooLarge`] before anything is allocated for it;
//! - the frames delivered are exactly the ones the bytes describe, however
//!   the sender split them into `sendmsg` calls;
//! - every descriptor that arrives is either handed over with the frame it
//!   rode on or closed by the time the reader reports an error, never kept.
//!
//! The property tests feed arbitrary and mutated inputs through a real
//! socket pair; a global allocator records the largest single allocation
//! the reading thread makes. Inputs that are known to be sharp (and any
//! input that ever found a bug) are kept below as named tests.

use memseal_proto::codec::{decode_request, decode_response, encode_request, encode_response};
use memseal_proto::wire::FrameReader;
use memseal_proto::{
    AssetInfo, ErrorCode, FrameError, Limits, PublishSource, Request, Response, Selector,
    ServerStatus, MAX_FRAME_LEN,
};
use proptest::prelude::*;
use sendfd::SendWithFd;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

mod allocations {
    //! A global allocator that remembers the largest single allocation each
    //! thread made, so a test can check what decoding an input cost.

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// Forwards to [`System`], noting each request's size first.
    pub struct Tracking;

    thread_local! {
        // A const-initialised Cell needs no destructor and no allocation,
        // so the allocator may touch it from inside an allocation.
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        // `try_with`: while a thread is torn down its slot may be gone.
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    }

    // SAFETY: every method forwards its arguments unchanged to `System`,
    // which implements the `GlobalAlloc` contract; the bookkeeping only
    // reads and writes a thread-local integer and never allocates.
    unsafe impl GlobalAlloc for Tracking {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: the caller upholds `alloc`'s contract for `layout`.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: the caller upholds `alloc_zeroed`'s contract.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            // SAFETY: `ptr` was allocated by this allocator, i.e. by
            // `System`, with `layout`; the caller upholds the rest.
            unsafe { System.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` was allocated by `System` with `layout`.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    /// Run `f` and return what it returned together with the largest single
    /// allocation it made on this thread.
    pub fn largest_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let outer = LARGEST.with(|largest| largest.replace(0));
        let value = f();
        let inner = LARGEST.with(|largest| largest.replace(outer));
        LARGEST.with(|largest| largest.set(largest.get().max(inner)));
        (value, inner)
    }
}

#[global_allocator]
static ALLOCATOR: allocations::Tracking = allocations::Tracking;

/// The cap as a `usize`, for comparisons with lengths.
const CAP: usize = MAX_FRAME_LEN as usize;

/// The most the reader and decoder may allocate at once: one whole frame,
/// its 4-byte length prefix included (the reader buffers a frame in one
/// piece), and the decoder's slack above the frame (bincode counts fixed
/// fields at their size in memory, so a valid frame near the cap claims a
/// few dozen bytes more than it holds: PROTOCOL.md, section 3).
const ALLOCATION_CAP: usize = CAP + 64;

/// One `sendmsg`: some bytes, and how many descriptors ride on them.
#[derive(Debug, Clone)]
struct Chunk {
    bytes: Vec<u8>,
    fds: usize,
}

/// What reading an input produced.
#[derive(Debug)]
struct Outcome {
    /// Payloads of the frames delivered, in order.
    payloads: Vec<Vec<u8>>,
    /// The error that ended the stream.
    end: FrameError,
    /// The largest single allocation made while reading and decoding.
    largest_allocation: usize,
    /// Descriptors of the marker memfd still open in this process right
    /// after the reader reported its error, the reader still alive,
    /// not counting the marker itself.
    leaked_while_alive: usize,
}

/// A memfd with a name unique to the calling test, so its descriptors can
/// be counted while other tests run in parallel.
fn marker(name: &str) -> OwnedFd {
    rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).expect("memfd_create")
}

/// Descriptors of this process that point at a file whose name contains
/// `name`.
fn open_count(name: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains(name))
        .count()
}

/// Send `chunks` through a socket pair, attaching copies of a memfd named
/// `marker_name` where asked, close the sending end, and read frames until
/// the reader reports an error, decoding each frame both as a request and
/// as a response.
fn feed(chunks: &[Chunk], marker_name: &str) -> Outcome {
    let (sender, receiver) = UnixStream::pair().expect("socketpair");
    let file = marker(marker_name);
    // A writer thread, so an input larger than the socket buffer cannot
    // deadlock the test; its allocations do not count against the reader.
    let writer = {
        let chunks = chunks.to_vec();
        let fd = file.as_raw_fd();
        std::thread::spawn(move || {
            for chunk in chunks {
                let result = if chunk.fds == 0 {
                    (&sender).write_all(&chunk.bytes)
                } else {
                    // An empty chunk cannot carry descriptors on a stream
                    // socket; send one byte instead of none.
                    let bytes = if chunk.bytes.is_empty() {
                        vec![0]
                    } else {
                        chunk.bytes.clone()
                    };
                    sender
                        .send_with_fd(&bytes, &vec![fd; chunk.fds])
                        .and_then(|sent| {
                            (&sender).write_all(&bytes[sent..])?;
                            Ok(())
                        })
                };
                // The reader stops at the first error and may close its end.
                if result.is_err() {
                    return;
                }
            }
        })
    };
    let mut reader = FrameReader::new();
    let mut payloads = Vec::new();
    let ((end, leaked_while_alive), largest_allocation) = allocations::largest_during(|| loop {
        match reader.read_frame(receiver.as_fd()) {
            Ok(frame) => {
                assert!(frame.payload.len() <= CAP, "a frame above the cap");
                assert!(frame.fds.len() <= 1, "more than one descriptor");
                let copies: Vec<OwnedFd> = frame
                    .fds
                    .iter()
                    .map(|fd| fd.try_clone().expect("dup"))
                    .collect();
                // Decoding must not panic; its verdict does not matter here.
                let _ = decode_request(&frame.payload, frame.fds);
                let _ = decode_response(&frame.payload, copies);
                payloads.push(frame.payload);
            }
            Err(end) => {
                let leaked = open_count(marker_name) - 1;
                break (end, leaked);
            }
        }
    });
    drop(reader);
    drop(receiver);
    writer.join().expect("writer thread");
    drop(file);
    assert_eq!(
        open_count(marker_name),
        0,
        "a descriptor outlived the reader"
    );
    Outcome {
        payloads,
        end,
        largest_allocation,
        leaked_while_alive,
    }
}

/// How a byte stream, read as frames, must end.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Closed,
    Truncated { received: usize, expected: usize },
    TooLarge { len: u32 },
    Empty,
}

/// Split `bytes` into the frames they describe, and say how the stream
/// ends: the reference the reader is held to.
fn model(bytes: &[u8]) -> (Vec<Vec<u8>>, Expected) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            return (frames, Expected::Closed);
        }
        if rest.len() < 4 {
            let received = rest.len();
            return (
                frames,
                Expected::Truncated {
                    received,
                    expected: 4,
                },
            );
        }
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap());
        if len == 0 {
            return (frames, Expected::Empty);
        }
        if len > MAX_FRAME_LEN {
            return (frames, Expected::TooLarge { len });
        }
        let total = 4 + len as usize;
        if rest.len() < total {
            let received = rest.len();
            return (
                frames,
                Expected::Truncated {
                    received,
                    expected: total,
                },
            );
        }
        frames.push(rest[4..total].to_vec());
        at += total;
    }
}

fn matches_expected(end: &FrameError, expected: &Expected) -> bool {
    match (end, expected) {
        (FrameError::Closed, Expected::Closed) | (FrameError::Empty, Expected::Empty) => true,
        (FrameError::TooLarge { len, max }, Expected::TooLarge { len: want }) => {
            len == want && *max == MAX_FRAME_LEN
        }
        (
            FrameError::Truncated { received, expected },
            Expected::Truncated {
                received: r,
                expected: e,
            },
        ) => received == r && expected == e,
        _ => false,
    }
}

/// Check everything that holds for any input, and return the outcome for
/// further checks.
fn check_any(chunks: &[Chunk], marker_name: &str) -> Outcome {
    let outcome = feed(chunks, marker_name);
    assert!(
        outcome.largest_allocation <= ALLOCATION_CAP,
        "allocated {} bytes at once, above one whole frame ({ALLOCATION_CAP} bytes)",
        outcome.largest_allocation
    );
    assert_eq!(
        outcome.leaked_while_alive, 0,
        "the reader kept a descriptor after failing with: {}",
        outcome.end
    );
    let bytes: Vec<u8> = chunks
        .iter()
        .flat_map(|chunk| {
            if chunk.fds > 0 && chunk.bytes.is_empty() {
                vec![0]
            } else {
                chunk.bytes.clone()
            }
        })
        .collect();
    let (frames, expected) = model(&bytes);
    assert!(
        outcome.payloads.len() <= frames.len()
            && outcome.payloads[..] == frames[..outcome.payloads.len()],
        "the reader delivered frames the bytes do not describe"
    );
    if chunks.iter().all(|chunk| chunk.fds == 0) {
        // Without descriptors, the framing alone decides the outcome,
        // whatever the chunking.
        assert_eq!(outcome.payloads.len(), frames.len(), "frames lost");
        assert!(
            matches_expected(&outcome.end, &expected),
            "ended with {:?}, expected {expected:?}",
            outcome.end
        );
    }
    outcome
}

/// One well-formed frame of each shape the protocol has, as a corpus for
/// mutation.
fn corpus() -> Vec<Vec<u8>> {
    let info = AssetInfo {
        name: "models/en/tokenizer.json".into(),
        version: 300,
        size: 1 << 33,
        hash: [0xab; 32],
        published_ms: 1_700_000_000_000,
        publisher_uid: 1000,
    };
    let requests = [
        Request::Hello {
            version: 1,
            client: "decoder-test".into(),
        },
        Request::Publish {
            name: "a/b".into(),
            size: 4096,
            source: PublishSource::Stream,
        },
        Request::Publish {
            name: "a/b".into(),
            size: 4096,
            source: PublishSource::Descriptor,
        },
        Request::Fetch {
            name: "x".into(),
            selector: Selector::Hash([7; 32]),
        },
        Request::Stat {
            name: "x".into(),
            selector: Selector::Version(u64::MAX),
        },
        Request::List {
            prefix: "a/".into(),
            start_after: Some("a/b".into()),
        },
        Request::Remove {
            name: "x".into(),
            version: None,
        },
        Request::Status,
    ];
    let responses = [
        Response::Welcome {
            version: 1,
            server: "memseald".into(),
            limits: Limits {
                max_frame_len: MAX_FRAME_LEN,
                max_asset_size: 1 << 30,
                max_total_bytes: 1 << 32,
                max_name_len: 255,
                keep_versions: 3,
            },
        },
        Response::Continue,
        Response::Published(info.clone()),
        Response::Asset(info.clone()),
        Response::Listing {
            assets: vec![info.clone(); 3],
            next: Some("z".into()),
        },
        Response::Removed { versions: 2 },
        Response::Status(ServerStatus {
            server: "memseald".into(),
            uptime_ms: 5,
            names: 1,
            versions: 2,
            blobs: 3,
            bytes: 4,
            connections: 5,
        }),
        Response::error(ErrorCode::PermissionDenied, "no"),
    ];
    requests
        .iter()
        .map(|r| encode_request(r).expect("encode"))
        .chain(
            responses
                .iter()
                .map(|r| encode_response(r).expect("encode")),
        )
        .collect()
}

/// Lengths worth trying in a length prefix.
fn sharp_length() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(MAX_FRAME_LEN - 1),
        Just(MAX_FRAME_LEN),
        Just(MAX_FRAME_LEN + 1),
        Just(u32::MAX),
        Just(1 << 31),
        any::<u32>(),
        0..64u32,
    ]
}

/// How many descriptors ride on a chunk: mostly none, sometimes one,
/// sometimes more than any frame may carry, sometimes a flood.
fn descriptor_count() -> impl Strategy<Value = usize> {
    prop_oneof![
        12 => Just(0usize),
        3 => Just(1usize),
        1 => Just(2usize),
        1 => Just(9usize),
        1 => Just(250usize),
    ]
}

/// A frame-shaped piece of input: a mutated real message, a correct
/// length over random bytes, or a sharp length over a few bytes.
fn frame_like() -> impl Strategy<Value = Vec<u8>> {
    let corpus = corpus();
    let count = corpus.len();
    prop_oneof![
        // A real frame with some bytes overwritten and maybe cut short.
        (
            0..count,
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            prop::option::of(any::<prop::sample::Index>()),
        )
            .prop_map(move |(which, edits, cut)| {
                let mut frame = corpus[which].clone();
                for (index, byte) in edits {
                    let at = index.index(frame.len());
                    frame[at] = byte;
                }
                if let Some(cut) = cut {
                    frame.truncate(cut.index(frame.len() + 1));
                }
                frame
            }),
        // A correct length, a plausible descriptor count, random body.
        (0..2u8, prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(fds, body)| {
            let mut frame = ((body.len() + 1) as u32).to_le_bytes().to_vec();
            frame.push(fds);
            frame.extend(body);
            frame
        }),
        // A sharp length prefix over whatever follows.
        (sharp_length(), prop::collection::vec(any::<u8>(), 0..16)).prop_map(|(len, tail)| {
            let mut frame = len.to_le_bytes().to_vec();
            frame.extend(tail);
            frame
        }),
    ]
}

/// Cut `bytes` into chunks at the given points, each with a descriptor
/// count.
fn chunked(bytes: Vec<u8>, cuts: Vec<(prop::sample::Index, usize)>) -> Vec<Chunk> {
    let mut points: Vec<(usize, usize)> = cuts
        .into_iter()
        .map(|(index, fds)| (index.index(bytes.len() + 1), fds))
        .collect();
    points.sort();
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut fds = 0;
    for (point, next_fds) in points {
        if point > start {
            chunks.push(Chunk {
                bytes: bytes[start..point].to_vec(),
                fds,
            });
            start = point;
            fds = next_fds;
        }
    }
    chunks.push(Chunk {
        bytes: bytes[start..].to_vec(),
        fds,
    });
    chunks
}

fn stream_of_frames() -> impl Strategy<Value = Vec<Chunk>> {
    (
        prop::collection::vec(frame_like(), 1..6),
        descriptor_count(),
        prop::collection::vec((any::<prop::sample::Index>(), descriptor_count()), 0..6),
    )
        .prop_map(|(frames, first_fds, cuts)| {
            let mut chunks = chunked(frames.concat(), cuts);
            chunks[0].fds = first_fds;
            chunks
        })
}

fn arbitrary_chunks() -> impl Strategy<Value = Vec<Chunk>> {
    prop::collection::vec(
        (
            prop::collection::vec(any::<u8>(), 0..300),
            descriptor_count(),
        )
            .prop_map(|(bytes, fds)| Chunk { bytes, fds }),
        1..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        // Failures are kept below as named tests, not in a side file.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic_overallocate_or_leak(chunks in arbitrary_chunks()) {
        check_any(&chunks, "decoder-prop-arbitrary");
    }

    #[test]
    fn mutated_frames_never_panic_overallocate_or_leak(chunks in stream_of_frames()) {
        check_any(&chunks, "decoder-prop-frames");
    }

    #[test]
    fn chunking_does_not_change_the_frames(
        frames in prop::collection::vec(frame_like(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let bytes = frames.concat();
        let whole = check_any(&[Chunk { bytes: bytes.clone(), fds: 0 }], "decoder-prop-whole");
        let cuts = cuts.into_iter().map(|index| (index, 0)).collect();
        let split = check_any(&chunked(bytes, cuts), "decoder-prop-split");
        prop_assert_eq!(whole.payloads, split.payloads);
        prop_assert_eq!(whole.end.to_string(), split.end.to_string());
    }

    #[test]
    fn decoding_arbitrary_payloads_is_bounded(
        payload in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let (_, largest) = allocations::largest_during(|| {
            let _ = decode_request(&payload, Vec::new());
            let _ = decode_response(&payload, Vec::new());
        });
        prop_assert!(largest <= ALLOCATION_CAP, "decoding allocated {} bytes at once", largest);
    }
}

// Sharp inputs, kept as named tests. Each says what it guards against.

/// A length prefix of 4 GiB: refused as soon as the prefix is read, with
/// nothing allocated for it.
#[test]
fn a_four_gib_frame_allocates_nothing() {
    let outcome = check_any(
        &[Chunk {
            bytes: u32::MAX.to_le_bytes().to_vec(),
            fds: 0,
        }],
        "decoder-named-4gib",
    );
    assert!(matches!(
        outcome.end,
        FrameError::TooLarge { len: u32::MAX, .. }
    ));
    assert!(outcome.largest_allocation < 4096, "{outcome:?}");
}

/// Exactly the cap is a valid frame; one byte more is refused.
#[test]
fn the_cap_is_inclusive() {
    let mut at_cap = MAX_FRAME_LEN.to_le_bytes().to_vec();
    at_cap.resize(4 + CAP, 0);
    let outcome = check_any(
        &[Chunk {
            bytes: at_cap,
            fds: 0,
        }],
        "decoder-named-at-cap",
    );
    assert_eq!(outcome.payloads.len(), 1);
    assert!(matches!(outcome.end, FrameError::Closed));

    let mut above = (MAX_FRAME_LEN + 1).to_le_bytes().to_vec();
    above.resize(4 + CAP + 1, 0);
    let outcome = check_any(
        &[Chunk {
            bytes: above,
            fds: 0,
        }],
        "decoder-named-above-cap",
    );
    assert!(outcome.payloads.is_empty());
    assert!(matches!(outcome.end, FrameError::TooLarge { .. }));
}

/// A zero length would be a frame without even its descriptor count.
#[test]
fn a_zero_length_frame_is_refused() {
    let outcome = check_any(
        &[Chunk {
            bytes: vec![0, 0, 0, 0, 9, 9],
            fds: 0,
        }],
        "decoder-named-zero",
    );
    assert!(matches!(outcome.end, FrameError::Empty));
}

/// A listing that claims 2^60 entries inside a small frame: the limit on
/// the decoder must refuse it without reserving room for them.
#[test]
fn a_listing_claiming_too_many_entries_is_refused_cheaply() {
    // Variant 4 (Listing), then a varint u64 marker (253) and 2^60.
    let mut payload = vec![0u8, 4, 253];
    payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let (result, largest) =
        allocations::largest_during(|| decode_response(&payload, Vec::new()).map(|d| d.message));
    assert!(matches!(result, Err(FrameError::Decode(_))), "{result:?}");
    assert!(largest <= CAP, "reserved {largest} bytes");
}

/// A name string that claims 4 GiB inside a small frame.
#[test]
fn a_string_claiming_four_gib_is_refused_cheaply() {
    // Variant 2 (Fetch), then a varint u32 marker (252) and u32::MAX.
    let mut payload = vec![0u8, 2, 252];
    payload.extend_from_slice(&u32::MAX.to_le_bytes());
    let (result, largest) =
        allocations::largest_during(|| decode_request(&payload, Vec::new()).map(|d| d.message));
    assert!(matches!(result, Err(FrameError::Decode(_))), "{result:?}");
    assert!(largest <= CAP, "reserved {largest} bytes");
}

/// A descriptor riding on a length prefix that is then refused (too
/// large, empty, or cut short) must be closed when the error is reported,
/// not held by the reader until the reader itself is dropped: a client
/// keeps its reader for as long as it keeps the connection object.
#[test]
fn a_descriptor_on_a_refused_header_is_closed_at_once() {
    for (label, bytes) in [
        ("too-large", u32::MAX.to_le_bytes().to_vec()),
        ("empty", vec![0, 0, 0, 0]),
        ("cut-short", vec![9, 0, 0, 0, 0, 1]),
    ] {
        let name = format!("decoder-named-fd-on-{label}");
        let outcome = feed(&[Chunk { bytes, fds: 1 }], &name);
        assert_eq!(
            outcome.leaked_while_alive, 0,
            "{label}: the reader still holds the descriptor after: {}",
            outcome.end
        );
    }
}

/// 250 descriptors on one frame (close to the kernel's 253 per message):
/// refused, and every one of them closed.
#[test]
fn a_flood_of_descriptors_is_closed() {
    let frame = encode_request(&Request::Status).expect("encode");
    let outcome = check_any(
        &[Chunk {
            bytes: frame,
            fds: 250,
        }],
        "decoder-named-flood",
    );
    assert!(outcome.payloads.is_empty());
    assert!(
        matches!(outcome.end, FrameError::ControlTruncated),
        "{}",
        outcome.end
    );
}
