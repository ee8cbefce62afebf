//! The client library against a daemon that lies.
//!
//! A client maps whatever descriptor the daemon hands it, so everything it
//! receives must be checked before it is trusted. Each test here runs a
//! fake daemon, written in the test over the real protocol crate and a
//! real Unix socket, that greets the client properly and then answers its
//! fetch with something wrong: an unsealed memfd, a memfd sealed with
//! FUTURE_WRITE instead of WRITE, one without SHRINK, a regular file, a
//! memfd smaller or larger than announced, a pipe, two descriptors, none,
//! a frame of 4 GiB. Another test puts a process of an unexpected user
//! behind the socket.
//!
//! Every time the client must return a typed error, map nothing (no line
//! of /proc/self/maps names the file), never touch a page past the end of
//! a file (a SIGBUS would kill the test process), and keep no descriptor
//! of the file: counted in /proc/self/fd while the client is still alive,
//! because a connection object that holds on to a refused descriptor leaks
//! it for as long as the program keeps the connection.

use memseal::proto::codec::{decode_request, encode_response};
use memseal::proto::wire::{FrameReader, FrameWriter};
use memseal::proto::{
    AssetInfo, FetchResult, FrameError, Limits, Request, Response, SessionLimits, PROTOCOL_VERSION,
    PROTOCOL_VERSION_2,
};
use memseal::{ConnectOptions, Error, MapOptions, Selector, VerifyError};
use memseal_tests::{bin, is_root, skip};
use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
use sendfd::SendWithFd;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The size every fake answer announces.
const ANNOUNCED: u64 = 8192;

/// How the fake daemon answers one fetch (or batch): it writes whatever it likes on
/// the stream and drops its own copies of any descriptor before returning.
type Answer = Box<dyn Fn(&UnixStream) + Send>;

/// A fake daemon serving one connection.
struct FakeDaemon {
    path: PathBuf,
    /// One message per fetch answered, sent once the fake has closed its
    /// own descriptors, so the test can count what the client kept.
    answered: mpsc::Receiver<()>,
    /// How many bytes arrived on the connection in all (to show that a
    /// refused peer was sent nothing).
    received: mpsc::Receiver<usize>,
    _dir: tempfile::TempDir,
}

impl FakeDaemon {
    fn start(answer: Answer) -> FakeDaemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memseald.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (answered_tx, answered) = mpsc::channel();
        let (received_tx, received) = mpsc::channel();
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let total = serve(&stream, &answer, &answered_tx);
            let _ = received_tx.send(total);
        });
        FakeDaemon {
            path,
            answered,
            received,
            _dir: dir,
        }
    }

    fn connect(&self) -> Result<memseal::Client, Error> {
        ConnectOptions::new()
            .socket(&self.path)
            .timeout(Some(Duration::from_secs(5)))
            .connect()
    }

    /// Wait until the fake has answered (and closed its copies).
    fn wait_answered(&self) {
        self.answered
            .recv_timeout(Duration::from_secs(5))
            .expect("the fake daemon answered");
    }
}

/// Greet, then answer every fetch with `answer` until the client leaves.
/// Returns how many bytes the client sent.
fn serve(stream: &UnixStream, answer: &Answer, answered: &mpsc::Sender<()>) -> usize {
    let mut reader = FrameReader::new();
    let mut total = 0;
    loop {
        let Ok(frame) = reader.read_frame(stream.as_fd()) else {
            return total;
        };
        total += 4 + frame.payload.len();
        let Ok(request) = decode_request(&frame.payload, frame.fds) else {
            return total;
        };
        let limits = Limits {
            max_frame_len: memseal::proto::MAX_FRAME_LEN,
            max_asset_size: 1 << 30,
            max_total_bytes: 1 << 30,
            max_name_len: 255,
            keep_versions: 1,
        };
        match request.message {
            Request::Hello { version, .. } if version >= PROTOCOL_VERSION_2 => send(
                stream,
                &Response::Greeting {
                    version: PROTOCOL_VERSION_2,
                    server: "fake-memseald".into(),
                    limits,
                    session: SessionLimits {
                        max_unread_descriptors: 8,
                        max_fetch_many: 8,
                    },
                },
                None,
            ),
            Request::Hello { .. } => send(
                stream,
                &Response::Welcome {
                    version: PROTOCOL_VERSION,
                    server: "fake-memseald".into(),
                    limits,
                },
                None,
            ),
            Request::Fetch { .. } | Request::FetchMany { .. } => {
                answer(stream);
                let _ = answered.send(());
            }
            _ => send(
                stream,
                &Response::Status(memseal::ServerStatus {
                    server: "fake-memseald".into(),
                    uptime_ms: 0,
                    names: 0,
                    versions: 0,
                    blobs: 0,
                    bytes: 0,
                    connections: 1,
                }),
                None,
            ),
        }
    }
}

fn send(stream: &UnixStream, response: &Response, fd: Option<std::os::fd::BorrowedFd<'_>>) {
    let frame = encode_response(response).unwrap();
    let _ = FrameWriter::new(frame, fd).write_all(stream);
}

fn info(size: u64) -> AssetInfo {
    AssetInfo {
        name: "hostile/asset".into(),
        version: 1,
        size,
        hash: [0; 32],
        published_ms: 0,
        publisher_uid: 0,
    }
}

/// A memfd named `name` holding `len` bytes, sealed with `seals`.
fn memfd(name: &str, len: usize, seals: SealFlags) -> OwnedFd {
    let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    let file = std::fs::File::from(fd);
    file.write_all_at(&vec![0x42; len], 0).unwrap();
    let fd = OwnedFd::from(file);
    if !seals.is_empty() {
        fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

/// Descriptors of this process that point at a file whose name contains
/// `name`.
fn open_fds_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains(name))
        .count()
}

/// Mappings of this process of a file whose name contains `name`.
fn mappings_named(name: &str) -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|line| line.contains(name))
        .count()
}

/// Fetch from a fake daemon that answers with `answer`, through both the
/// mapping and the private-copy paths of the library, and check that each
/// failed with an error `expected` accepts, mapped nothing and kept
/// nothing of the file named `name`.
fn refused(name: &str, answer: Answer, expected: impl Fn(&Error) -> bool) -> Error {
    let fake = FakeDaemon::start(answer);
    let mut client = fake.connect().expect("the handshake succeeds");
    let err = client
        .fetch("hostile/asset")
        .expect_err("the fetch must fail");
    fake.wait_answered();
    eprintln!("[{name}] fetch: {err}");
    assert!(expected(&err), "[{name}] unexpected error: {err:?}");
    assert_eq!(mappings_named(name), 0, "[{name}] something stayed mapped");
    assert_eq!(
        open_fds_named(name),
        0,
        "[{name}] the client kept the descriptor"
    );
    // A verification failure leaves the connection usable: try the private
    // copy path too, on the same connection.
    if matches!(err, Error::Verify(_)) {
        let err = client
            .fetch_private("hostile/asset", Selector::Latest, &MapOptions::new())
            .expect_err("the private fetch must fail");
        fake.wait_answered();
        assert!(expected(&err), "[{name}] private copy: {err:?}");
        assert_eq!(mappings_named(name), 0, "[{name}] private copy mapped");
        assert_eq!(open_fds_named(name), 0, "[{name}] private copy kept it");
        assert!(client.status().is_ok(), "[{name}] connection unusable");
    }
    drop(client);
    err
}

/// An answer that sends `Asset(info(announced))` with `fd` attached.
fn asset_with(make: impl Fn() -> OwnedFd + Send + 'static, announced: u64) -> Answer {
    Box::new(move |stream| {
        let fd = make();
        send(stream, &Response::Asset(info(announced)), Some(fd.as_fd()));
    })
}

fn missing_seals(err: &Error, seal: SealFlags) -> bool {
    matches!(
        err,
        Error::Verify(VerifyError::MissingSeals { missing, .. }) if missing & seal.bits() != 0
    )
}

#[test]
fn an_unsealed_memfd_is_refused() {
    let name = "hostile-unsealed";
    refused(
        name,
        asset_with(
            move || memfd(name, ANNOUNCED as usize, SealFlags::empty()),
            ANNOUNCED,
        ),
        |e| missing_seals(e, SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK),
    );
}

#[test]
fn future_write_does_not_stand_in_for_write() {
    // FUTURE_WRITE refuses new writes, but a writable shared mapping made
    // before it keeps writing, and the client cannot know whether one
    // exists: only WRITE (which cannot be set while one does) will do.
    let name = "hostile-future-write";
    let answer: Answer = Box::new(move |stream| {
        let fd = memfd(name, ANNOUNCED as usize, SealFlags::empty());
        let file = std::fs::File::from(fd.try_clone().unwrap());
        fcntl_add_seals(
            &fd,
            SealFlags::FUTURE_WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
        )
        .unwrap();
        assert!(
            file.write_at(b"x", 0).is_err(),
            "FUTURE_WRITE blocks write()"
        );
        send(stream, &Response::Asset(info(ANNOUNCED)), Some(fd.as_fd()));
    });
    refused(name, answer, |e| missing_seals(e, SealFlags::WRITE));
}

#[test]
fn a_memfd_without_shrink_is_refused() {
    // Without SHRINK the sender could truncate the file under a reader's
    // mapping, and the reader would die of SIGBUS.
    let name = "hostile-no-shrink";
    let answer: Answer = Box::new(move |stream| {
        let fd = memfd(name, ANNOUNCED as usize, SealFlags::WRITE | SealFlags::GROW);
        send(stream, &Response::Asset(info(ANNOUNCED)), Some(fd.as_fd()));
        // ...and it does, right away: the refused client has nothing mapped.
        rustix::fs::ftruncate(&fd, 0).unwrap();
    });
    refused(name, answer, |e| missing_seals(e, SealFlags::SHRINK));
}

#[test]
fn a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile-regular-file");
    std::fs::write(&path, vec![0x42; ANNOUNCED as usize]).unwrap();
    let answer: Answer = Box::new(move |stream| {
        let file = std::fs::File::open(&path).unwrap();
        send(
            stream,
            &Response::Asset(info(ANNOUNCED)),
            Some(file.as_fd()),
        );
    });
    // On a disk file system F_GET_SEALS fails; on tmpfs it succeeds with
    // no seal that matters. Either way: refused.
    refused("hostile-regular-file", answer, |e| {
        matches!(
            e,
            Error::Verify(VerifyError::NotSealable(_) | VerifyError::MissingSeals { .. })
        )
    });
}

#[test]
fn a_fifo_is_refused() {
    // A named FIFO rather than a pipe, so its descriptors can be told
    // apart from the pipes other tests open.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile-fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let answer: Answer = Box::new(move |stream| {
        // Read-write, so opening does not wait for a writer.
        let fifo = rustix::fs::open(
            &path,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        send(
            stream,
            &Response::Asset(info(ANNOUNCED)),
            Some(fifo.as_fd()),
        );
    });
    refused("hostile-fifo", answer, |e| {
        matches!(e, Error::Verify(VerifyError::NotRegularFile { .. }))
    });
}

#[test]
fn a_memfd_smaller_than_announced_is_refused_without_sigbus() {
    // Mapping the announced size and touching the end would raise SIGBUS
    // and kill this test.
    let name = "hostile-short";
    let seals = SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL;
    refused(
        name,
        asset_with(move || memfd(name, 100, seals), ANNOUNCED),
        |e| {
            matches!(
                e,
                Error::Verify(VerifyError::SizeMismatch {
                    declared: ANNOUNCED,
                    actual: 100
                })
            )
        },
    );
}

#[test]
fn a_memfd_larger_than_announced_is_refused() {
    let name = "hostile-long";
    let seals = SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL;
    refused(
        name,
        asset_with(
            move || memfd(name, 3 * ANNOUNCED as usize, seals),
            ANNOUNCED,
        ),
        |e| matches!(e, Error::Verify(VerifyError::SizeMismatch { .. })),
    );
}

#[test]
fn two_descriptors_are_refused_and_both_closed() {
    let name = "hostile-two";
    let answer: Answer = Box::new(move |stream| {
        let seals = SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK;
        let a = memfd(name, ANNOUNCED as usize, seals);
        let b = memfd(name, ANNOUNCED as usize, seals);
        let frame = encode_response(&Response::Asset(info(ANNOUNCED))).unwrap();
        let _ = stream.send_with_fd(&frame, &[a.as_raw_fd(), b.as_raw_fd()]);
    });
    refused(name, answer, |e| {
        matches!(
            e,
            Error::Protocol(FrameError::DescriptorCount { received: 2, .. })
        )
    });
}

#[test]
fn an_asset_without_its_descriptor_is_refused() {
    // The frame declares the descriptor, none comes.
    let answer: Answer = Box::new(|stream| {
        send(stream, &Response::Asset(info(ANNOUNCED)), None);
    });
    refused("hostile-none", answer, |e| {
        matches!(
            e,
            Error::Protocol(FrameError::DescriptorCount {
                declared: 1,
                received: 0
            })
        )
    });
    // The frame does not even declare it.
    let answer: Answer = Box::new(|stream| {
        let mut frame = encode_response(&Response::Asset(info(ANNOUNCED))).unwrap();
        frame[4] = 0;
        let _ = (&*stream).write_all(&frame);
    });
    refused("hostile-undeclared", answer, |e| {
        matches!(e, Error::Protocol(FrameError::DescriptorMismatch { .. }))
    });
}

#[test]
fn a_descriptor_on_an_answer_that_carries_none_is_closed() {
    // A status answer carrying a memfd: the client asked for a fetch, gets
    // the wrong kind, and must close the descriptor it did not ask for.
    let name = "hostile-stowaway";
    let answer: Answer = Box::new(move |stream| {
        let fd = memfd(name, 10, SealFlags::empty());
        let mut frame = encode_response(&Response::Removed { versions: 1 }).unwrap();
        frame[4] = 1;
        let _ = stream.send_with_fd(&frame, &[fd.as_raw_fd()]);
    });
    refused(name, answer, |e| {
        matches!(e, Error::Protocol(FrameError::DescriptorMismatch { .. }))
    });
}

#[test]
fn an_oversized_frame_is_refused_and_its_descriptor_closed() {
    // A length prefix of 4 GiB with a memfd riding on it.
    let name = "hostile-oversized";
    let answer: Answer = Box::new(move |stream| {
        let fd = memfd(name, 10, SealFlags::empty());
        let _ = stream.send_with_fd(&u32::MAX.to_le_bytes(), &[fd.as_raw_fd()]);
    });
    refused(name, answer, |e| {
        matches!(
            e,
            Error::Protocol(FrameError::TooLarge { len: u32::MAX, .. })
        )
    });
    // One byte over the cap, without a descriptor.
    let answer: Answer = Box::new(|stream| {
        let len = memseal::proto::MAX_FRAME_LEN + 1;
        let _ = (&*stream).write_all(&len.to_le_bytes());
    });
    refused("hostile-just-over", answer, |e| {
        matches!(e, Error::Protocol(FrameError::TooLarge { .. }))
    });
}

#[test]
fn a_peer_of_an_unexpected_uid_is_refused_before_anything_is_sent() {
    let me = rustix::process::geteuid().as_raw();
    let fake = FakeDaemon::start(Box::new(|_| {}));
    let err = ConnectOptions::new()
        .socket(&fake.path)
        .expect_server_uid(me.wrapping_add(1))
        .connect()
        .expect_err("the peer runs as another uid than expected");
    eprintln!("[unexpected uid] {err}");
    assert!(
        matches!(&err, Error::PeerRejected { uid, .. } if *uid == me),
        "{err:?}"
    );
    let sent = fake
        .received
        .recv_timeout(Duration::from_secs(5))
        .expect("the fake saw the client leave");
    assert_eq!(sent, 0, "the client talked to a peer it does not trust");
}

#[test]
fn an_impostor_run_by_another_user_is_refused_by_default() {
    if !is_root() {
        skip(
            "an_impostor_run_by_another_user_is_refused_by_default",
            "needs root to listen as another uid",
        );
        return;
    }
    // SO_PEERCRED of a connected client socket names whoever called
    // listen(): here nobody, which the default policy (root or the caller's
    // own uid) does not trust.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let path = dir.path().join("memseald.sock");
    let mut impostor = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin("memseal-test-peer"))
        .arg(&path)
        .arg("listen")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(impostor.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "listening");
    let err = ConnectOptions::new()
        .socket(&path)
        .connect()
        .expect_err("an impostor must be refused");
    eprintln!("[impostor] {err}");
    assert!(
        matches!(&err, Error::PeerRejected { uid: 65534, .. }),
        "{err:?}"
    );
    impostor.kill().unwrap();
    impostor.wait().unwrap();
}

/// An answer to a batch: `results` assets, each `info(ANNOUNCED)`, each
/// with a sealed memfd named `name`.
fn batch_of_sealed(name: String, results: usize) -> Answer {
    Box::new(move |stream| {
        let fds: Vec<OwnedFd> = (0..results)
            .map(|_| {
                memfd(
                    &name,
                    ANNOUNCED as usize,
                    SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK,
                )
            })
            .collect();
        let items = vec![FetchResult::Asset(info(ANNOUNCED)); results];
        let frame = encode_response(&Response::Assets { items }).unwrap();
        let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        stream.send_with_fd(&frame, &raw).unwrap();
    })
}

/// A batch answered with more or fewer results than items asked: the
/// results would land on the wrong names, so the whole call fails, and
/// every descriptor that came with it is closed.
#[test]
fn a_batch_answer_with_the_wrong_number_of_results_is_refused() {
    for (label, results) in [("one too few", 2), ("one too many", 4)] {
        let name = format!("hostile-batch-{results}");
        let fake = FakeDaemon::start(batch_of_sealed(name.clone(), results));
        let mut client = fake.connect().expect("the handshake succeeds");
        let asked = [
            ("hostile/a", Selector::Latest),
            ("hostile/b", Selector::Latest),
            ("hostile/c", Selector::Latest),
        ];
        let err = client
            .fetch_many(&asked, &MapOptions::new())
            .expect_err("the batch must fail");
        fake.wait_answered();
        eprintln!("[{label}] fetch_many: {err}");
        assert!(
            matches!(&err, Error::Protocol(FrameError::Protocol(why)) if why.contains("3 items")),
            "[{label}] unexpected error: {err:?}"
        );
        assert_eq!(
            mappings_named(&name),
            0,
            "[{label}] something stayed mapped"
        );
        assert_eq!(open_fds_named(&name), 0, "[{label}] a descriptor was kept");
    }
}

/// A sealed memfd answering for another asset than the one asked for: a
/// protocol error (the daemon, or whatever listens in its place, answered
/// a question nobody asked), and the descriptor is closed unmapped.
#[test]
fn an_answer_for_another_asset_is_refused() {
    let name = "hostile-another";
    refused(
        name,
        Box::new(move |stream| {
            let fd = memfd(
                name,
                ANNOUNCED as usize,
                SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK,
            );
            let other = AssetInfo {
                name: "hostile/other".into(),
                ..info(ANNOUNCED)
            };
            send(stream, &Response::Asset(other), Some(fd.as_fd()));
        }),
        |err| matches!(err, Error::Protocol(FrameError::Protocol(why)) if why.contains("'hostile/other'")),
    );
}

/// In a batch, a result that answers for another version than its item
/// asked for fails the whole batch, every descriptor closed.
#[test]
fn a_batch_result_for_another_version_is_refused() {
    let name = "hostile-batch-version";
    // Both answer version 1; the second item asks for version 2.
    let fake = FakeDaemon::start(batch_of_sealed(name.to_owned(), 2));
    let mut client = fake.connect().expect("the handshake succeeds");
    let asked = [
        ("hostile/asset", Selector::Latest),
        ("hostile/asset", Selector::Version(2)),
    ];
    let err = client
        .fetch_many(&asked, &MapOptions::new())
        .expect_err("the batch must fail");
    fake.wait_answered();
    assert!(
        matches!(&err, Error::Protocol(FrameError::Protocol(why)) if why.contains("version 2")),
        "unexpected error: {err:?}"
    );
    assert_eq!(mappings_named(name), 0, "something stayed mapped");
    assert_eq!(open_fds_named(name), 0, "a descriptor was kept");
}
