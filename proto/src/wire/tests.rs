//! The wire end to end: frames and descriptors through real socket pairs.

use super::*;
use crate::codec::{decode_response, encode_response};
use crate::error::FrameError;
use crate::message::Response;
use sendfd::SendWithFd;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

fn pair() -> (UnixStream, UnixStream) {
    UnixStream::pair().unwrap()
}

/// A memfd with a name unique to the test, and a way to count how many
/// descriptors of this process point at it (robust against other tests
/// opening files in parallel).
fn marker(name: &str) -> OwnedFd {
    rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).unwrap()
}

fn open_count(name: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains(name))
        .count()
}

#[test]
fn frame_with_descriptor_round_trip() {
    let (a, b) = pair();
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    let frame = encode_response(&Response::Continue).unwrap();
    // Declare one descriptor by hand: Continue calls for none, which the
    // codec rejects, but the wire layer delivers it faithfully.
    let mut declared = frame.clone();
    declared[4] = 1;
    FrameWriter::new(declared, Some(file.as_fd()))
        .write_all(&a)
        .unwrap();
    FrameWriter::new(frame, None).write_all(&a).unwrap();
    let mut reader = FrameReader::new();
    let first = reader.read_frame(b.as_fd()).unwrap();
    assert_eq!(first.fds.len(), 1);
    let flags = rustix::io::fcntl_getfd(&first.fds[0]).unwrap();
    assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    assert!(matches!(
        decode_response(&first.payload, first.fds),
        Err(FrameError::DescriptorMismatch { .. })
    ));
    let second = reader.read_frame(b.as_fd()).unwrap();
    assert!(second.fds.is_empty());
    assert_eq!(
        decode_response(&second.payload, second.fds)
            .unwrap()
            .message,
        Response::Continue
    );
}

#[test]
fn descriptor_on_a_later_byte_is_refused_and_closed() {
    let (a, b) = pair();
    let file = marker("memseal-test-misplaced");
    let frame = encode_response(&Response::Continue).unwrap();
    // Most of a frame, read by the receiver; then its last byte with a
    // descriptor on it. (Had both parts been waiting together, one read
    // would take them and the descriptor would count as the frame's:
    // the receiver cannot tell which byte of a read it rode on.)
    (&a).write_all(&frame[..frame.len() - 1]).unwrap();
    let mut reader = FrameReader::new();
    assert!(reader.read_step(b.as_fd()).unwrap().is_none());
    a.send_with_fd(&frame[frame.len() - 1..], &[file.as_raw_fd()])
        .unwrap();
    drop(file);
    let err = reader.read_frame(b.as_fd()).unwrap_err();
    assert!(matches!(err, FrameError::MisplacedDescriptor), "{err}");
    assert_eq!(open_count("memseal-test-misplaced"), 0);
}

#[test]
fn a_flood_of_descriptors_is_refused_and_closed() {
    let (a, b) = pair();
    let file = marker("memseal-test-flood");
    let fds = vec![file.as_raw_fd(); 40];
    let frame = encode_response(&Response::Continue).unwrap();
    a.send_with_fd(&frame, &fds).unwrap();
    drop(file);
    let err = FrameReader::new().read_frame(b.as_fd()).unwrap_err();
    assert!(matches!(err, FrameError::ControlTruncated), "{err}");
    assert_eq!(open_count("memseal-test-flood"), 0);
}

/// A reader of responses takes a batch's many descriptors with one frame,
/// and refuses more than one message may carry for it.
#[test]
fn a_batch_frame_brings_its_descriptors() {
    let (a, b) = pair();
    let file = marker("memseal-test-batch");
    let frame = encode_response(&Response::Continue).unwrap();
    let mut declared = frame.clone();
    declared[4] = 100;
    a.send_with_fd(&declared, &vec![file.as_raw_fd(); 100])
        .unwrap();
    drop(file);
    let mut buffer = FrameBuffer::new();
    receive(b.as_fd(), &mut buffer).unwrap();
    let got = buffer.next_frame().unwrap().expect("the frame");
    assert_eq!(got.fds.len(), 100);
    drop(got);
    assert_eq!(open_count("memseal-test-batch"), 0);
}

#[test]
fn pipelined_frames_come_out_one_by_one_with_their_descriptors() {
    let (a, b) = pair();
    let file = marker("memseal-test-pipelined");
    let plain = encode_response(&Response::Continue).unwrap();
    let mut declared = plain.clone();
    declared[4] = 1;
    // plain, plain+fd, plain: the kernel ends a read after the chunk
    // with the descriptor, so at most two reads deliver all three.
    (&a).write_all(&plain).unwrap();
    FrameWriter::new(declared, Some(file.as_fd()))
        .write_all(&a)
        .unwrap();
    (&a).write_all(&plain).unwrap();
    let mut reader = FrameReader::new();
    let counts: Vec<usize> = (0..3)
        .map(|_| reader.read_frame(b.as_fd()).unwrap().fds.len())
        .collect();
    assert_eq!(counts, [0, 1, 0]);
    assert!(!reader.in_frame());
}

#[test]
fn raw_bytes_after_a_frame_are_taken_from_the_buffer() {
    let (a, b) = pair();
    let mut bytes = encode_response(&Response::Continue).unwrap();
    bytes.extend_from_slice(b"raw tail");
    (&a).write_all(&bytes).unwrap();
    let mut reader = FrameReader::new();
    reader.read_frame(b.as_fd()).unwrap();
    let mut out = [0u8; 3];
    assert_eq!(reader.take_raw(&mut out).unwrap(), 3);
    assert_eq!(&out, b"raw");
    let mut out = [0u8; 64];
    assert_eq!(reader.take_raw(&mut out).unwrap(), 5);
    assert_eq!(&out[..5], b" tail");
    assert_eq!(reader.take_raw(&mut out).unwrap(), 0);
}

#[test]
fn oversized_length_is_refused_before_allocation() {
    let (a, b) = pair();
    (&a).write_all(&(u32::MAX).to_le_bytes()).unwrap();
    let err = FrameReader::new().read_frame(b.as_fd()).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
}

#[test]
fn eof_inside_and_between_frames() {
    let (a, b) = pair();
    let frame = encode_response(&Response::Continue).unwrap();
    (&a).write_all(&frame).unwrap();
    (&a).write_all(&frame[..3]).unwrap();
    drop(a);
    let mut reader = FrameReader::new();
    reader.read_frame(b.as_fd()).unwrap();
    assert!(matches!(
        reader.read_frame(b.as_fd()),
        Err(FrameError::Truncated { received: 3, .. })
    ));
    let (a, b) = pair();
    drop(a);
    assert!(matches!(
        FrameReader::new().read_frame(b.as_fd()),
        Err(FrameError::Closed)
    ));
}

/// The buffer on its own, fed by hand the way a receive would feed it.
#[test]
fn the_buffer_alone_reassembles_frames_and_ties_descriptors() {
    let frame = encode_response(&Response::Continue).unwrap();
    let mut declared = frame.clone();
    declared[4] = 1;
    let mut buffer = FrameBuffer::new();
    // A frame in two pieces, the descriptor on the first.
    let (head, tail) = declared.split_at(2);
    buffer.spare().unwrap()[..head.len()].copy_from_slice(head);
    buffer
        .received(head.len(), vec![marker("memseal-test-buffer")])
        .unwrap();
    assert!(buffer.in_frame() && !buffer.has_frame());
    assert!(buffer.next_frame().unwrap().is_none());
    buffer.spare().unwrap()[..tail.len()].copy_from_slice(tail);
    buffer.received(tail.len(), vec![]).unwrap();
    let got = buffer.next_frame().unwrap().expect("a whole frame");
    assert_eq!(got.fds.len(), 1);
    assert_eq!(got.payload, declared[4..]);
    drop(got);
    // A descriptor that arrives with no frame starting: refused, closed.
    let (head, tail) = frame.split_at(3);
    buffer.spare().unwrap()[..head.len()].copy_from_slice(head);
    buffer.received(head.len(), vec![]).unwrap();
    buffer.spare().unwrap()[..tail.len()].copy_from_slice(tail);
    let err = buffer
        .received(tail.len(), vec![marker("memseal-test-buffer-late")])
        .unwrap_err();
    assert!(matches!(err, FrameError::MisplacedDescriptor), "{err}");
    assert_eq!(open_count("memseal-test-buffer"), 0);
    // The end of the stream inside a frame.
    let mut buffer = FrameBuffer::new();
    buffer.spare().unwrap()[..3].copy_from_slice(&frame[..3]);
    buffer.received(3, vec![]).unwrap();
    assert!(matches!(
        buffer.received(0, vec![]),
        Err(FrameError::Truncated { received: 3, .. })
    ));
}
