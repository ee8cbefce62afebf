//! A deliberately misbehaving memseal client, for tests that need a real
//! process to die or stall at a chosen point.
//!
//! `memseal-test-peer SOCKET upload NAME SIZE SEND` handshakes, starts a
//! streamed publish of SIZE bytes, sends the first SEND of them, prints
//! `sent` on stdout and then sleeps until it is killed.

use memseal_proto::codec::{decode_response, encode_request};
use memseal_proto::wire::{FrameReader, FrameWriter};
use memseal_proto::{PublishSource, Request, Response, PROTOCOL_VERSION};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

fn request(stream: &UnixStream, request: &Request) -> Response {
    let frame = encode_request(request).expect("encode");
    FrameWriter::new(frame, None)
        .write_all(stream)
        .expect("send");
    let raw = FrameReader::new()
        .read_frame(stream.as_fd())
        .expect("receive");
    decode_response(&raw.payload, raw.fds)
        .expect("decode")
        .message
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: memseal-test-peer SOCKET upload NAME SIZE SEND";
    if args.len() != 6 || args[2] != "upload" {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let size: u64 = args[4].parse().expect("SIZE");
    let send: u64 = args[5].parse().expect("SEND");
    let stream = UnixStream::connect(&args[1]).expect("connect");
    let hello = Request::Hello {
        version: PROTOCOL_VERSION,
        client: "test-peer".into(),
    };
    assert!(matches!(request(&stream, &hello), Response::Welcome { .. }));
    let publish = Request::Publish {
        name: args[3].clone(),
        size,
        source: PublishSource::Stream,
    };
    let answer = request(&stream, &publish);
    assert_eq!(answer, Response::Continue, "daemon refused the upload");
    let chunk = vec![0x5a; 64 << 10];
    let mut left = send.min(size);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        (&stream).write_all(&chunk[..n]).expect("upload");
        left -= n as u64;
    }
    println!("sent");
    std::io::stdout().flush().expect("stdout");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
