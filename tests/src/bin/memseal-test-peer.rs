//! A deliberately misbehaving memseal peer, for tests that need a real
//! process (often running as another user) to die, stall or hoard at a
//! chosen point.
//!
//! - `memseal-test-peer SOCKET upload NAME SIZE SEND` handshakes, starts a
//!   streamed publish of SIZE bytes, sends the first SEND of them, prints
//!   `sent` on stdout and then sleeps until it is killed.
//! - `memseal-test-peer SOCKET hold COUNT` opens COUNT connections one
//!   after the other and tries to handshake on each. It prints one line per
//!   connection (`welcome`, or `refused: ` and the daemon's message), then
//!   `held`, and keeps every connection that was welcomed open until it is
//!   killed.
//! - `memseal-test-peer SOCKET listen` binds SOCKET and listens on it
//!   without ever accepting, prints `listening` and sleeps until killed: a
//!   stand-in for an impostor daemon run by another user.
//! - `memseal-test-peer SOCKET race-adopt NAME ROUNDS SHRINK_TO` publishes
//!   ROUNDS memfds of 64 KiB for adoption while a second thread shrinks
//!   each to SHRINK_TO bytes and seals it, racing the daemon's checks. It
//!   prints `accepted N refused M` and the distinct refusals.
//! - `memseal-test-peer SOCKET adopt NAME FILE` publishes FILE's bytes as a
//!   sealed memfd of mode 0444 for adoption, prints `published INODE`, then
//!   waits for lines on stdin: `chmod MODE` (octal) changes the memfd's
//!   mode and answers `done`.
//! - `memseal-test-peer SOCKET churn PREFIX COUNT` publishes and removes
//!   COUNT distinct names of 255 bytes under PREFIX, then prints `done`.
//! - `memseal-test-peer SOCKET fill PREFIX SIZE` publishes distinct assets
//!   of SIZE bytes under PREFIX until the daemon refuses one, then prints
//!   `published N` and the refusal, and keeps its connection until killed.
//! - `memseal-test-peer SOCKET list-loop SECONDS` lists every name, page by
//!   page, over and over for SECONDS, then prints `listed N pages`.
//! - `memseal-test-peer SOCKET resolve PREFIX...` tries to become the
//!   resolver of each PREFIX on a connection of its own and prints
//!   `PREFIX: resolving` or `PREFIX: refused: ` and the daemon's reason.
//! - `memseal-test-peer SOCKET trickle NAME SIZE CHUNK INTERVAL_MS` starts
//!   a streamed publish of SIZE bytes and sends CHUNK bytes every
//!   INTERVAL_MS until the daemon drops it; prints `dropped after N bytes`.
//! - `memseal-test-peer SOCKET misses PREFIX COUNT` fetches COUNT distinct
//!   names PREFIX0, PREFIX1, ... that nobody published, one after the other
//!   on one connection, and prints one line per error code met: `CODE N:`
//!   and the last message with that code.

use memseal_proto::codec::{decode_response, encode_request};
use memseal_proto::wire::{FrameReader, FrameWriter};
use memseal_proto::{FrameError, PublishSource, Request, Response, PROTOCOL_VERSION};
use rustix::fs::{MemfdFlags, Mode, SealFlags};
use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

const USAGE: &str = "usage: memseal-test-peer SOCKET upload NAME SIZE SEND
       memseal-test-peer SOCKET hold COUNT
       memseal-test-peer SOCKET listen
       memseal-test-peer SOCKET race-adopt NAME ROUNDS SHRINK_TO
       memseal-test-peer SOCKET adopt NAME FILE
       memseal-test-peer SOCKET churn PREFIX COUNT
       memseal-test-peer SOCKET fill PREFIX SIZE
       memseal-test-peer SOCKET list-loop SECONDS
       memseal-test-peer SOCKET resolve PREFIX...
       memseal-test-peer SOCKET trickle NAME SIZE CHUNK INTERVAL_MS
       memseal-test-peer SOCKET misses PREFIX COUNT";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let words: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match words.as_slice() {
        [socket, "upload", name, size, send] => upload(
            socket,
            name,
            size.parse().expect("SIZE"),
            send.parse().expect("SEND"),
        ),
        [socket, "hold", count] => hold(socket, count.parse().expect("COUNT")),
        [socket, "listen"] => listen(socket),
        [socket, "race-adopt", name, rounds, shrink_to] => race_adopt(
            socket,
            name,
            rounds.parse().expect("ROUNDS"),
            shrink_to.parse().expect("SHRINK_TO"),
        ),
        [socket, "adopt", name, file] => adopt(socket, name, file),
        [socket, "churn", prefix, count] => churn(socket, prefix, count.parse().expect("COUNT")),
        [socket, "fill", prefix, size] => fill(socket, prefix, size.parse().expect("SIZE")),
        [socket, "list-loop", seconds] => list_loop(socket, seconds.parse().expect("SECONDS")),
        [socket, "resolve", prefixes @ ..] => resolve(socket, prefixes),
        [socket, "trickle", name, size, chunk, interval] => trickle(
            socket,
            name,
            size.parse().expect("SIZE"),
            chunk.parse().expect("CHUNK"),
            interval.parse().expect("INTERVAL_MS"),
        ),
        [socket, "misses", prefix, count] => misses(socket, prefix, count.parse().expect("COUNT")),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

fn request(stream: &UnixStream, request: &Request) -> Result<Response, FrameError> {
    request_with_fd(stream, request, None)
}

fn request_with_fd(
    stream: &UnixStream,
    request: &Request,
    fd: Option<BorrowedFd<'_>>,
) -> Result<Response, FrameError> {
    let frame = encode_request(request).expect("encode");
    FrameWriter::new(frame, fd).write_all(stream)?;
    let raw = FrameReader::new().read_frame(stream.as_fd())?;
    Ok(decode_response(&raw.payload, raw.fds)?.message)
}

fn hello() -> Request {
    Request::Hello {
        version: PROTOCOL_VERSION,
        client: "test-peer".into(),
    }
}

fn say(line: &str) {
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{line}").expect("stdout");
    stdout.flush().expect("stdout");
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn upload(socket: &str, name: &str, size: u64, send: u64) {
    let stream = UnixStream::connect(socket).expect("connect");
    let welcome = request(&stream, &hello()).expect("handshake");
    assert!(matches!(welcome, Response::Welcome { .. }), "{welcome:?}");
    let publish = Request::Publish {
        name: name.to_owned(),
        size,
        source: PublishSource::Stream,
    };
    let answer = request(&stream, &publish).expect("publish");
    assert_eq!(answer, Response::Continue, "daemon refused the upload");
    let chunk = vec![0x5a; 64 << 10];
    let mut left = send.min(size);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        (&stream).write_all(&chunk[..n]).expect("upload");
        left -= n as u64;
    }
    say("sent");
    sleep_forever();
}

fn hold(socket: &str, count: usize) {
    let mut held = Vec::new();
    for _ in 0..count {
        let stream = UnixStream::connect(socket).expect("connect");
        // The daemon refuses a connection over a limit before reading
        // anything, so the hello may meet a closed socket: the refusal is
        // then already waiting to be read.
        let frame = encode_request(&hello()).expect("encode");
        let _ = FrameWriter::new(frame, None).write_all(&stream);
        let answer = FrameReader::new()
            .read_frame(stream.as_fd())
            .and_then(|raw| decode_response(&raw.payload, raw.fds));
        match answer.map(|decoded| decoded.message) {
            Ok(Response::Welcome { .. }) => {
                say("welcome");
                held.push(stream);
            }
            Ok(Response::Error(reply)) => say(&format!("refused: {reply}")),
            Ok(other) => say(&format!("unexpected: {}", other.kind())),
            Err(e) => say(&format!("failed: {e}")),
        }
    }
    say("held");
    sleep_forever();
}

fn listen(socket: &str) {
    let _listener = UnixListener::bind(socket).expect("bind");
    say("listening");
    sleep_forever();
}

fn connect(socket: &str) -> UnixStream {
    let stream = UnixStream::connect(socket).expect("connect");
    let welcome = request(&stream, &hello()).expect("handshake");
    assert!(matches!(welcome, Response::Welcome { .. }), "{welcome:?}");
    stream
}

const SEALS: SealFlags = SealFlags::WRITE
    .union(SealFlags::GROW)
    .union(SealFlags::SHRINK)
    .union(SealFlags::SEAL);

fn memfd_with(bytes: &[u8]) -> OwnedFd {
    let memfd = rustix::fs::memfd_create("attack", MemfdFlags::ALLOW_SEALING).expect("memfd");
    let mut written = 0;
    while written < bytes.len() {
        written += rustix::io::write(&memfd, &bytes[written..]).expect("fill");
    }
    memfd
}

fn publish_fd(
    stream: &UnixStream,
    name: &str,
    size: u64,
    fd: BorrowedFd<'_>,
) -> Result<Response, FrameError> {
    let publish = Request::Publish {
        name: name.to_owned(),
        size,
        source: PublishSource::Descriptor,
    };
    request_with_fd(stream, &publish, Some(fd))
}

/// Race the daemon's adoption checks: while the publish is in flight, a
/// second thread shrinks the memfd and seals it, at a delay that varies
/// from round to round so that every gap between the daemon's calls is hit.
fn race_adopt(socket: &str, name: &str, rounds: u64, shrink_to: u64) {
    const SIZE: u64 = 64 << 10;
    let stream = connect(socket);
    let (mut accepted, mut refused) = (0u64, 0u64);
    let mut refusals = BTreeSet::new();
    for round in 0..rounds {
        // Sparse (a size, no pages): shrinking it then costs next to
        // nothing, which makes the racer's two calls fast.
        let memfd = Arc::new(memfd_with(&[]));
        rustix::fs::ftruncate(&*memfd, SIZE).expect("size");
        // Adoptable by a daemon that cannot change the mode itself.
        rustix::fs::fchmod(&*memfd, Mode::from_raw_mode(0o444)).expect("chmod");
        let go = Arc::new(Barrier::new(2));
        let stop = Arc::new(AtomicBool::new(false));
        let racer = {
            let (memfd, go, stop) = (memfd.clone(), go.clone(), stop.clone());
            std::thread::spawn(move || {
                go.wait();
                // Spin for a pseudo-random delay, from none to tens of
                // microseconds, so that every gap between the daemon's
                // calls is hit now and then.
                let spins = (round.wrapping_mul(2_654_435_761) >> 7) % 4096;
                for _ in 0..spins {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::hint::spin_loop();
                }
                // Back to back: the daemon's window between reading the
                // size and reading the seals is short.
                let _ = rustix::fs::ftruncate(&*memfd, shrink_to);
                let _ = rustix::fs::fcntl_add_seals(&*memfd, SEALS);
            })
        };
        go.wait();
        let answer = publish_fd(&stream, name, SIZE, memfd.as_fd());
        stop.store(true, Ordering::Relaxed);
        racer.join().expect("racer");
        let answer = answer.unwrap_or_else(|e| {
            say(&format!("the daemon hung up in round {round}: {e}"));
            std::process::exit(1)
        });
        match answer {
            Response::Published(_) => accepted += 1,
            Response::Error(reply) => {
                refused += 1;
                // The message names sizes that vary; keep its first words.
                let words: Vec<&str> = reply.message.split_whitespace().take(5).collect();
                refusals.insert(format!("{}: {}", reply.code, words.join(" ")));
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    say(&format!("accepted {accepted} refused {refused}"));
    for refusal in refusals {
        say(&refusal);
    }
}

/// Publish FILE as an adoptable memfd and keep it, for changes on request.
fn adopt(socket: &str, name: &str, file: &str) {
    let bytes = std::fs::read(file).expect("read FILE");
    let memfd = memfd_with(&bytes);
    rustix::fs::fchmod(&memfd, Mode::from_raw_mode(0o444)).expect("chmod");
    rustix::fs::fcntl_add_seals(&memfd, SEALS).expect("seal");
    // Flags and an offset of this description, which must never reach a
    // reader: the daemon hands out a description of its own.
    rustix::fs::fcntl_setfl(
        &memfd,
        rustix::fs::OFlags::APPEND | rustix::fs::OFlags::NONBLOCK,
    )
    .expect("flags");
    rustix::fs::seek(&memfd, rustix::fs::SeekFrom::Start(7)).expect("seek");
    let stream = connect(socket);
    match publish_fd(&stream, name, bytes.len() as u64, memfd.as_fd()).expect("publish") {
        Response::Published(_) => {}
        other => panic!("publish refused: {other:?}"),
    }
    let inode = rustix::fs::fstat(&memfd).expect("fstat").st_ino;
    say(&format!("published {inode}"));
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        if let Some(mode) = line.strip_prefix("chmod ") {
            let mode = u32::from_str_radix(mode.trim(), 8).expect("octal MODE");
            rustix::fs::fchmod(&memfd, Mode::from_raw_mode(mode)).expect("chmod");
            say("done");
        }
    }
}

/// A streamed publish of `bytes`; the daemon's answer.
fn publish_stream(stream: &UnixStream, name: &str, bytes: &[u8]) -> Response {
    let publish = Request::Publish {
        name: name.to_owned(),
        size: bytes.len() as u64,
        source: PublishSource::Stream,
    };
    match request(stream, &publish).expect("publish") {
        Response::Continue => {}
        refusal => return refusal,
    }
    stream_all(stream, bytes);
    let raw = FrameReader::new()
        .read_frame(stream.as_fd())
        .expect("reply");
    decode_response(&raw.payload, raw.fds)
        .expect("decode")
        .message
}

fn stream_all(mut stream: &UnixStream, bytes: &[u8]) {
    stream.write_all(bytes).expect("upload");
}

/// Publish distinct assets until one is refused.
fn fill(socket: &str, prefix: &str, size: usize) {
    let stream = connect(socket);
    let uid = rustix::process::getuid().as_raw();
    let mut published = 0u64;
    loop {
        let mut bytes = vec![0u8; size.max(16)];
        bytes[..8].copy_from_slice(&published.to_le_bytes());
        bytes[8..12].copy_from_slice(&uid.to_le_bytes());
        bytes.truncate(size.max(12));
        match publish_stream(&stream, &format!("{prefix}{published}"), &bytes) {
            Response::Published(_) => published += 1,
            Response::Error(reply) => {
                say(&format!("published {published}"));
                say(&format!("refused: {reply}"));
                break;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    sleep_forever();
}

/// Fetch `count` names nobody published; tally the answers.
fn misses(socket: &str, prefix: &str, count: usize) {
    let mut client = memseal::Client::connect_to(socket).expect("connect");
    let mut tally = std::collections::BTreeMap::new();
    for i in 0..count {
        let error = client
            .fetch(&format!("{prefix}{i}"))
            .expect_err("nobody published it");
        let code = error
            .code()
            .map_or("no code".to_owned(), |c| format!("{c:?}"));
        let (n, last) = tally.entry(code).or_insert((0u64, String::new()));
        *n += 1;
        *last = error.to_string();
    }
    for (code, (n, last)) in tally {
        say(&format!("{code} {n}: {last}"));
    }
}

/// List every name over and over.
fn list_loop(socket: &str, seconds: f64) {
    let stream = connect(socket);
    let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
    let mut pages = 0u64;
    while std::time::Instant::now() < until {
        let mut start_after = None;
        loop {
            let list = Request::List {
                prefix: String::new(),
                start_after: start_after.take(),
            };
            pages += 1;
            match request(&stream, &list).expect("list") {
                Response::Listing {
                    next: Some(next), ..
                } => start_after = Some(next),
                Response::Listing { next: None, .. } => break,
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }
    say(&format!("listed {pages} pages"));
}

/// Publish and remove COUNT distinct names, as fast as the daemon answers.
fn churn(socket: &str, prefix: &str, count: u64) {
    let stream = connect(socket);
    for i in 0..count {
        let mut name = format!("{prefix}{i:010}-");
        while name.len() < 255 {
            name.push('x');
        }
        match publish_stream(&stream, &name, &[i as u8]) {
            Response::Published(_) => {}
            other => panic!("publish refused: {other:?}"),
        }
        let remove = Request::Remove {
            name,
            version: None,
        };
        match request(&stream, &remove).expect("remove") {
            Response::Removed { .. } => {}
            other => panic!("remove refused: {other:?}"),
        }
    }
    say("done");
}

/// A streamed publish that keeps the minimum rate, forever.
fn trickle(socket: &str, name: &str, size: u64, chunk: usize, interval_ms: u64) {
    let stream = connect(socket);
    let publish = Request::Publish {
        name: name.to_owned(),
        size,
        source: PublishSource::Stream,
    };
    assert_eq!(
        request(&stream, &publish).expect("publish"),
        Response::Continue
    );
    say("started");
    let bytes = vec![0x77u8; chunk];
    let mut sent = 0u64;
    while sent < size {
        if (&stream).write_all(&bytes).is_err() {
            break;
        }
        sent += chunk as u64;
        std::thread::sleep(std::time::Duration::from_millis(interval_ms));
    }
    say(&format!("dropped after {sent} bytes"));
}

/// Ask to resolve each prefix, each on a connection of its own.
fn resolve(socket: &str, prefixes: &[&str]) {
    for prefix in prefixes {
        let stream = connect(socket);
        let request = Request::Resolve {
            prefixes: vec![(*prefix).to_owned()],
        };
        match request_with_fd(&stream, &request, None).expect("resolve") {
            Response::Resolving => say(&format!("{prefix}: resolving")),
            Response::Error(reply) => say(&format!("{prefix}: refused: {reply}")),
            other => say(&format!("{prefix}: unexpected {}", other.kind())),
        }
    }
}
