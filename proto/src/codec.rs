//! Encoding and decoding of frames. The only module that calls bincode.
//!
//! A frame on the wire is:
//!
//! ```text
//! +----------------+-----------+---------------------------------+
//! | length: u32 LE | fds: u8   | message: bincode, standard cfg  |
//! +----------------+-----------+---------------------------------+
//!                  |<------------- length bytes --------------->|
//! ```
//!
//! `length` counts the descriptor byte and the message, never itself, and is
//! at most [`MAX_FRAME_LEN`]. `fds` is how many descriptors ride on the
//! frame's first byte (0 or 1). bincode's standard configuration is
//! little-endian with variable-length integers; PROTOCOL.md spells it out.
//!
//! Decoding runs with a bincode byte limit equal to the frame cap, so a
//! hostile length inside the payload (a string claiming 4 GiB) fails instead
//! of allocating.

use crate::error::FrameError;
use crate::message::{Request, Response, Snapshot};
use crate::{MAX_FDS_PER_FRAME, MAX_FRAME_LEN};
use serde::{de::DeserializeOwned, Serialize};
use std::os::fd::OwnedFd;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_FRAME_LEN as usize }>()
}

/// Read the length prefix, refusing empty and oversized frames.
pub fn parse_header(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len as usize)
}

fn encode<T: Serialize>(fds: u8, message: &T) -> Result<Vec<u8>, FrameError> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&[0; HEADER_LEN]);
    frame.push(fds);
    bincode::serde::encode_into_std_write(message, &mut frame, config())
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    let len = frame.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN as usize {
        return Err(FrameError::Oversized {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    frame[..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(frame)
}

/// Frame a request, length prefix included.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, FrameError> {
    encode(request.fd_count(), request)
}

/// Frame a response, length prefix included.
pub fn encode_response(response: &Response) -> Result<Vec<u8>, FrameError> {
    encode(response.fd_count(), response)
}

/// How many bytes `response` takes on the wire, length prefix included.
pub fn encoded_response_len(response: &Response) -> usize {
    let mut counter = ByteCounter(0);
    // Encoding into a counter cannot fail for lack of space; the limit
    // would make it fail above the frame cap, which is what callers check.
    let _ =
        bincode::serde::encode_into_std_write(response, &mut counter, bincode::config::standard());
    HEADER_LEN + 1 + counter.0
}

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The largest catalog snapshot accepted: far above any real catalog
/// (a million names of 255 bytes), far below anything that could hurt.
pub const MAX_SNAPSHOT_LEN: usize = 512 << 20;

/// Leading bytes of an encoded snapshot, so a foreign memfd is recognised
/// before any decoding.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"MSEALCAT";

/// Encode a catalog snapshot: [`SNAPSHOT_MAGIC`], then bincode.
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    let mut out = SNAPSHOT_MAGIC.to_vec();
    bincode::serde::encode_into_std_write(snapshot, &mut out, bincode::config::standard())
        .expect("encoding into a Vec cannot fail");
    out
}

/// Decode a catalog snapshot written by [`encode_snapshot`].
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, FrameError> {
    let body = bytes
        .strip_prefix(SNAPSHOT_MAGIC)
        .ok_or_else(|| FrameError::Decode("not a memseal catalog snapshot".into()))?;
    let config = bincode::config::standard().with_limit::<MAX_SNAPSHOT_LEN>();
    let (snapshot, used): (Snapshot, usize) = bincode::serde::decode_from_slice(body, config)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::TrailingBytes {
            extra: body.len() - used,
        });
    }
    Ok(snapshot)
}

/// A decoded message and the descriptor that came with it, if its kind
/// calls for one.
#[derive(Debug)]
pub struct Decoded<T> {
    pub message: T,
    pub fd: Option<OwnedFd>,
}

/// Decode a request from a frame's payload (the bytes after the length
/// prefix) and the descriptors that arrived with its first byte.
pub fn decode_request(payload: &[u8], fds: Vec<OwnedFd>) -> Result<Decoded<Request>, FrameError> {
    decode(payload, fds, Request::fd_count, Request::kind)
}

/// Decode a response; see [`decode_request`].
pub fn decode_response(payload: &[u8], fds: Vec<OwnedFd>) -> Result<Decoded<Response>, FrameError> {
    decode(payload, fds, Response::fd_count, Response::kind)
}

fn decode<T: DeserializeOwned>(
    payload: &[u8],
    mut fds: Vec<OwnedFd>,
    expected_fds: fn(&T) -> u8,
    kind: fn(&T) -> &'static str,
) -> Result<Decoded<T>, FrameError> {
    // On every error path `fds` is dropped, which closes each descriptor.
    let (&declared, body) = payload.split_first().ok_or(FrameError::Empty)?;
    if declared > MAX_FDS_PER_FRAME || declared as usize != fds.len() {
        return Err(FrameError::DescriptorCount {
            declared,
            received: fds.len(),
        });
    }
    let (message, used): (T, usize) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::TrailingBytes {
            extra: body.len() - used,
        });
    }
    let expected = expected_fds(&message);
    if expected != declared {
        return Err(FrameError::DescriptorMismatch {
            kind: kind(&message),
            expected,
            declared,
        });
    }
    Ok(Decoded {
        message,
        fd: fds.pop(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;

    fn payload(frame: &[u8]) -> &[u8] {
        let len = parse_header(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        &frame[4..]
    }

    #[test]
    fn request_round_trip() {
        let requests = [
            Request::Hello {
                version: 1,
                client: "test".into(),
            },
            Request::Fetch {
                name: "a/b".into(),
                selector: Selector::Hash([7; 32]),
            },
            Request::List {
                prefix: "a/".into(),
                start_after: Some("a/b".into()),
            },
            Request::Remove {
                name: "x".into(),
                version: Some(300),
            },
            Request::Status,
        ];
        for request in requests {
            let frame = encode_request(&request).unwrap();
            let decoded = decode_request(payload(&frame), Vec::new()).unwrap();
            assert_eq!(decoded.message, request);
            assert!(decoded.fd.is_none());
        }
    }

    #[test]
    fn known_bytes_of_a_hello() {
        // PROTOCOL.md quotes these bytes; keep them in sync.
        let frame = encode_request(&Request::Hello {
            version: 1,
            client: "cli".into(),
        })
        .unwrap();
        assert_eq!(frame, [7, 0, 0, 0, 0, 0, 1, 3, b'c', b'l', b'i']);
    }

    #[test]
    fn descriptor_counts_are_enforced() {
        let frame = encode_response(&Response::Asset(AssetInfo {
            name: "a".into(),
            version: 1,
            size: 1,
            hash: [0; 32],
            published_ms: 0,
            publisher_uid: 0,
        }))
        .unwrap();
        // Declared one, none arrived.
        assert!(matches!(
            decode_response(payload(&frame), Vec::new()),
            Err(FrameError::DescriptorCount {
                declared: 1,
                received: 0
            })
        ));
        // A status frame that declares a descriptor it does not call for.
        let mut frame = encode_request(&Request::Status).unwrap();
        frame[4] = 1;
        let fd = rustix::io::dup(std::io::stdin()).unwrap();
        assert!(matches!(
            decode_request(payload(&frame), vec![fd]),
            Err(FrameError::DescriptorMismatch { kind: "status", .. })
        ));
    }

    #[test]
    fn hostile_lengths_are_refused() {
        assert!(matches!(
            parse_header(u32::MAX.to_le_bytes()),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(parse_header([0; 4]), Err(FrameError::Empty)));
        // A Hello whose client string claims 4 GiB.
        let body = [0u8, 0, 1, 252, 0, 0, 0, 255];
        assert!(matches!(
            decode_request(&body, Vec::new()),
            Err(FrameError::Decode(_))
        ));
        let mut frame = encode_request(&Request::Status).unwrap();
        frame.push(0);
        assert!(matches!(
            decode_request(&frame[4..], Vec::new()),
            Err(FrameError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn error_codes_travel_as_their_discriminants() {
        // serde encodes the variant's position; PROTOCOL.md documents the
        // discriminants. They must stay equal.
        use ErrorCode::*;
        for code in [
            NotFound,
            InvalidName,
            TooLarge,
            OverBudget,
            PermissionDenied,
            ProtocolError,
            Busy,
            Internal,
            UnsupportedVersion,
            InvalidSource,
        ] {
            let frame = encode_response(&Response::error(code, "")).unwrap();
            // length (4), fds (1), Response::Error index (1), then the code.
            assert_eq!(frame[6], code as u8, "{code:?}");
        }
    }

    #[test]
    fn snapshot_round_trip_and_foreign_bytes() {
        let snapshot = Snapshot {
            format: 1,
            generation: 9,
            names: vec![SnapshotName {
                name: "a".into(),
                last_version: 3,
                versions: vec![],
            }],
        };
        let bytes = encode_snapshot(&snapshot);
        assert_eq!(decode_snapshot(&bytes).unwrap(), snapshot);
        assert!(decode_snapshot(b"hello").is_err());
        assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn oversized_messages_are_not_framed() {
        let listing = Response::Listing {
            assets: vec![
                AssetInfo {
                    name: "n".repeat(255),
                    version: 1,
                    size: 1,
                    hash: [0; 32],
                    published_ms: 0,
                    publisher_uid: 0,
                };
                400
            ],
            next: None,
        };
        assert!(encoded_response_len(&listing) > MAX_FRAME_LEN as usize);
        assert!(encode_response(&listing).is_err());
    }
}
