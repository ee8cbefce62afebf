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

use memseal_proto::codec::{decode_response, encode_request};
use memseal_proto::wire::{FrameReader, FrameWriter};
use memseal_proto::{FrameError, PublishSource, Request, Response, PROTOCOL_VERSION};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};

const USAGE: &str = "usage: memseal-test-peer SOCKET upload NAME SIZE SEND
       memseal-test-peer SOCKET hold COUNT
       memseal-test-peer SOCKET listen";

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
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

fn request(stream: &UnixStream, request: &Request) -> Result<Response, FrameError> {
    let frame = encode_request(request).expect("encode");
    FrameWriter::new(frame, None).write_all(stream)?;
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
