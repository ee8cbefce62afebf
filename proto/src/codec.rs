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
//!
//! Frames go through bincode's own `Encode`/`Decode` derives, the catalog's
//! snapshot and journal through serde. The bytes are the same (a test
//! checks every kind of message), but serde hands a `[u8; 32]` hash over a
//! byte at a time: decoding a fetch's reply took 3,290 instructions that
//! way and 1,170 with the derives.

use crate::error::FrameError;
use crate::message::{Request, Response};
use crate::persisted::{JournalEntry, Snapshot, SnapshotName, SnapshotV1, SNAPSHOT_FORMAT};
use crate::{MAX_FDS_PER_FRAME, MAX_FRAME_LEN, MAX_REQUEST_FDS};
use serde::Serialize;
use std::os::fd::OwnedFd;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// What bincode's count of claimed bytes may exceed the frame by. It
/// counts in memory terms (a variant as 4 bytes, a length as 8, however
/// few bytes their encodings take), so a valid frame claims a few dozen
/// bytes more than it holds, and a limit of exactly the frame cap would
/// refuse the largest valid frames (seen from 65,519 bytes on).
const DECODE_SLACK: usize = 64;

/// The decoder's limit for a frame: every frame that fits the cap
/// decodes, and a length inside the payload can make it allocate at most
/// the cap and the slack before the read fails.
const DECODE_LIMIT: usize = MAX_FRAME_LEN as usize + DECODE_SLACK;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
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

fn encode<T: bincode::Encode>(fds: u8, message: &T) -> Result<Vec<u8>, FrameError> {
    if fds > MAX_FDS_PER_FRAME {
        return Err(FrameError::Encode(format!(
            "a frame carries at most {MAX_FDS_PER_FRAME} descriptors, not {fds}"
        )));
    }
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&[0; HEADER_LEN]);
    frame.push(fds);
    bincode::encode_into_std_write(message, &mut frame, config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
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
    let _ = bincode::encode_into_std_write(response, &mut counter, bincode::config::standard());
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

/// The largest catalog snapshot accepted: above any catalog the daemon's
/// `max_versions` allows (a million versions of 255-byte names take about
/// 330 MiB), far below anything that could hurt.
pub const MAX_SNAPSHOT_LEN: usize = 512 << 20;

/// Leading bytes of an encoded snapshot, so a foreign memfd is recognised
/// before any decoding.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"MSEALCAT";

/// Encode a catalog snapshot: [`SNAPSHOT_MAGIC`], then bincode.
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    let mut encoder = SnapshotEncoder::new(snapshot.format, snapshot.generation);
    for name in &snapshot.names {
        encoder.push(name);
    }
    encoder.finish(&snapshot.forgotten).into_bytes()
}

/// Encodes a snapshot one name at a time, into the very bytes
/// [`encode_snapshot`] writes for a whole [`Snapshot`]: a daemon writing a
/// snapshot of a large catalog holds its encoding only, never every name
/// decoded as well.
pub struct SnapshotEncoder {
    format: u32,
    generation: u64,
    /// The names encoded so far, one after the other.
    names: Vec<u8>,
    count: u64,
}

impl SnapshotEncoder {
    pub fn new(format: u32, generation: u64) -> SnapshotEncoder {
        SnapshotEncoder {
            format,
            generation,
            names: Vec::new(),
            count: 0,
        }
    }

    /// Append the next name; names go in the order they are pushed.
    pub fn push(&mut self, name: &SnapshotName) {
        encode_into(name, &mut self.names);
        self.count += 1;
    }

    /// The snapshot, with the table of forgotten names, which the encoding
    /// puts before the names.
    pub fn finish(self, forgotten: &[(u32, u64)]) -> EncodedSnapshot {
        let mut head = SNAPSHOT_MAGIC.to_vec();
        // The fields of `Snapshot` in their order; a sequence's length is
        // encoded as a u64 before its items.
        encode_into(&(self.format, self.generation, forgotten), &mut head);
        encode_into(&self.count, &mut head);
        EncodedSnapshot {
            head,
            names: self.names,
        }
    }
}

/// An encoded snapshot in two parts: its bytes are `head`, then `names`.
pub struct EncodedSnapshot {
    pub head: Vec<u8>,
    pub names: Vec<u8>,
}

impl EncodedSnapshot {
    pub fn len(&self) -> usize {
        self.head.len() + self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        let mut bytes = self.head;
        bytes.extend_from_slice(&self.names);
        bytes
    }
}

/// Append the standard bincode encoding of `value` to `out`.
fn encode_into(value: &impl Serialize, out: &mut Vec<u8>) {
    bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
        .expect("encoding into a Vec cannot fail");
}

/// Decode a catalog snapshot written by [`encode_snapshot`], or by an
/// older daemon in format 1 (converted).
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, FrameError> {
    let body = bytes
        .strip_prefix(SNAPSHOT_MAGIC)
        .ok_or_else(|| FrameError::Decode("not a memseal catalog snapshot".into()))?;
    let config = bincode::config::standard().with_limit::<MAX_SNAPSHOT_LEN>();
    // Every format starts with its number.
    let (format, _): (u32, usize) = bincode::serde::decode_from_slice(body, config)
        .map_err(|e| FrameError::Decode(describe(&e)))?;
    let (snapshot, used) = match format {
        1 => {
            let (old, used): (SnapshotV1, usize) = bincode::serde::decode_from_slice(body, config)
                .map_err(|e| FrameError::Decode(describe(&e)))?;
            (Snapshot::from(old), used)
        }
        SNAPSHOT_FORMAT => bincode::serde::decode_from_slice(body, config)
            .map_err(|e| FrameError::Decode(describe(&e)))?,
        other => {
            return Err(FrameError::Decode(format!(
                "snapshot format {other} is not one this daemon knows (1 or {SNAPSHOT_FORMAT})"
            )))
        }
    };
    if used != body.len() {
        return Err(FrameError::TrailingBytes {
            extra: body.len() - used,
        });
    }
    Ok(snapshot)
}

/// A decoding failure in words about the message, not about the decoder.
/// Reads as the end of a sentence: "a 'fetch' request ...".
fn describe(error: &bincode::error::DecodeError) -> String {
    use bincode::error::DecodeError as E;
    match error {
        E::UnexpectedEnd { additional } => {
            format!("ends too early: at least {additional} more byte(s) were needed")
        }
        E::LimitExceeded => "declares a length larger than any frame can hold (64 KiB)".to_owned(),
        E::InvalidIntegerType { .. } | E::OutsideUsizeRange(_) => {
            "holds a number that does not fit its field".to_owned()
        }
        E::UnexpectedVariant {
            type_name, found, ..
        } if type_name.starts_with("Option") || type_name.contains("::Option<") => format!(
            "has an optional field marked {found}; the mark must be 0 (absent) or 1 (present)"
        ),
        E::UnexpectedVariant { found, .. } => {
            format!("has a field whose kind {found} is not one of its defined kinds")
        }
        E::Utf8 { .. } => "has a text field that is not valid UTF-8".to_owned(),
        E::InvalidBooleanValue(value) => {
            format!("has a yes/no field holding {value}; it must be 0 or 1")
        }
        E::InvalidCharEncoding(_) => "has a character field that is not valid".to_owned(),
        E::OtherString(text) if text.contains("expected variant index") => {
            // serde's wording for an enum variant number out of range.
            let found = text
                .split('`')
                .nth(1)
                .map(|n| format!(" {n}"))
                .unwrap_or_default();
            format!("has a field whose kind{found} is not one of its defined kinds")
        }
        _ => "is not a valid message of its kind".to_owned(),
    }
}

/// Bytes before each journal record: its payload length (`u32` LE) and a
/// check value of the payload (`u64` LE, FNV-1a).
pub const JOURNAL_HEADER_LEN: usize = 12;

/// The largest journal record: one version with the longest name.
const MAX_JOURNAL_RECORD: usize = 4096;

/// FNV-1a: catches a record torn by a crash in the middle of its write.
/// The journal is only ever written by the daemon, so this guards against
/// accidents, not adversaries.
fn check_value(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One journal record, header included, ready to append.
pub fn encode_journal_entry(entry: &JournalEntry) -> Vec<u8> {
    let mut out = vec![0; JOURNAL_HEADER_LEN];
    bincode::serde::encode_into_std_write(entry, &mut out, bincode::config::standard())
        .expect("encoding into a Vec cannot fail");
    let len = (out.len() - JOURNAL_HEADER_LEN) as u32;
    let check = check_value(&out[JOURNAL_HEADER_LEN..]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..JOURNAL_HEADER_LEN].copy_from_slice(&check.to_le_bytes());
    out
}

/// The records of a journal, in order, and how many bytes they span. Stops
/// at the first record that is incomplete or fails its check (a write cut
/// short by a crash): everything before it is returned, nothing after.
pub fn decode_journal(bytes: &[u8]) -> (Vec<JournalEntry>, usize) {
    let config = bincode::config::standard().with_limit::<MAX_JOURNAL_RECORD>();
    let mut entries = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + JOURNAL_HEADER_LEN) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let check = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
        let start = at + JOURNAL_HEADER_LEN;
        let Some(payload) = bytes.get(start..start.saturating_add(len)) else {
            break;
        };
        if len > MAX_JOURNAL_RECORD || check_value(payload) != check {
            break;
        }
        match bincode::serde::decode_from_slice::<JournalEntry, _>(payload, config) {
            Ok((entry, used)) if used == len => entries.push(entry),
            _ => break,
        }
        at = start + len;
    }
    (entries, at)
}

/// A decoded message and the descriptor that came with it, if its kind
/// calls for one.
#[derive(Debug)]
pub struct Decoded<T> {
    pub message: T,
    /// The descriptor of a message that carries one.
    pub fd: Option<OwnedFd>,
    /// The descriptors of a [`Response::Assets`], in the order of its
    /// items that found an asset.
    pub batch: Vec<OwnedFd>,
}

/// Decode a request from a frame's payload (the bytes after the length
/// prefix) and the descriptors that arrived with its first byte.
pub fn decode_request(payload: &[u8], fds: Vec<OwnedFd>) -> Result<Decoded<Request>, FrameError> {
    decode(
        payload,
        fds,
        MAX_REQUEST_FDS,
        (Request::fd_count, Request::kind),
        ("request", &Request::KINDS),
    )
}

/// Decode a response; see [`decode_request`].
pub fn decode_response(payload: &[u8], fds: Vec<OwnedFd>) -> Result<Decoded<Response>, FrameError> {
    decode(
        payload,
        fds,
        MAX_FDS_PER_FRAME,
        (Response::fd_count, Response::kind),
        ("response", &Response::KINDS),
    )
}

/// How a message kind says how many descriptors it carries, and its name.
type KindRules<T> = (fn(&T) -> u8, fn(&T) -> &'static str);

fn decode<T: bincode::Decode<()>>(
    payload: &[u8],
    mut fds: Vec<OwnedFd>,
    max_fds: u8,
    (expected_fds, kind): KindRules<T>,
    (what, kinds): (&str, &[&str]),
) -> Result<Decoded<T>, FrameError> {
    // On every error path `fds` is dropped, which closes each descriptor.
    let (&declared, body) = payload.split_first().ok_or(FrameError::Empty)?;
    if declared > max_fds || declared as usize != fds.len() {
        return Err(FrameError::DescriptorCount {
            declared,
            received: fds.len(),
        });
    }
    // The variant number comes first: an unknown one gets a sentence that
    // names the kinds this side knows, not a decoder's internals.
    let variant = bincode::decode_from_slice::<u32, _>(body, config())
        .ok()
        .map(|(variant, _)| variant);
    if let Some(variant) = variant {
        if variant as usize >= kinds.len() {
            return Err(FrameError::Decode(format!(
                "unknown {what} kind {variant} (this side knows {} kinds, 0 to {}: {})",
                kinds.len(),
                kinds.len() - 1,
                kinds.join(", ")
            )));
        }
    }
    let (message, used): (T, usize) = bincode::decode_from_slice(body, config()).map_err(|e| {
        let kind = variant
            .and_then(|n| kinds.get(n as usize).copied())
            .unwrap_or(what);
        FrameError::Decode(format!("a '{kind}' {what} {}", describe(&e)))
    })?;
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
    // Only a batch answer carries its descriptors as a list.
    let (fd, batch) = match kind(&message) {
        "assets" => (None, fds),
        _ => (fds.pop(), Vec::new()),
    };
    Ok(Decoded { message, fd, batch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;
    use crate::persisted::StoredVersion;

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
            Request::Watch { prefix: "".into() },
            Request::Stat {
                name: "s".into(),
                selector: Selector::Latest,
            },
        ];
        for request in requests {
            let frame = encode_request(&request).unwrap();
            let decoded = decode_request(payload(&frame), Vec::new()).unwrap();
            assert_eq!(decoded.message, request);
            assert!(decoded.fd.is_none());
            // The variant number is the kind's index in KINDS.
            assert_eq!(Request::KINDS[payload(&frame)[1] as usize], request.kind());
        }
    }

    /// One message of every kind, with numbers of every varint width.
    fn every_kind() -> (Vec<Request>, Vec<Response>) {
        let info = |n: u64| AssetInfo {
            name: format!("name/{n}"),
            version: n,
            size: n.wrapping_mul(3),
            hash: [n as u8; 32],
            published_ms: u64::MAX - n,
            publisher_uid: n as u32,
        };
        let error = ErrorReply {
            code: ErrorCode::Unavailable,
            message: "no".into(),
        };
        let limits = Limits {
            max_frame_len: 65_536,
            max_asset_size: 1 << 40,
            max_total_bytes: u64::MAX,
            max_name_len: 251,
            keep_versions: 250,
        };
        let requests = vec![
            Request::Hello {
                version: 2,
                client: "c".into(),
            },
            Request::Publish {
                name: "p".into(),
                size: 1 << 33,
                source: PublishSource::Descriptor,
            },
            Request::Fetch {
                name: "f".into(),
                selector: Selector::Hash([9; 32]),
            },
            Request::Stat {
                name: "s".into(),
                selector: Selector::Version(65_535),
            },
            Request::List {
                prefix: "l/".into(),
                start_after: Some("l/a".into()),
            },
            Request::Remove {
                name: "r".into(),
                version: None,
            },
            Request::Status,
            Request::Watch { prefix: "".into() },
            Request::FetchMany {
                items: vec![
                    FetchItem {
                        name: "a".into(),
                        selector: Selector::Latest,
                    };
                    300
                ],
            },
            Request::Resolve {
                prefixes: vec!["models/".into()],
            },
            Request::Unresolved {
                name: "u".into(),
                selector: Selector::Latest,
                error: error.clone(),
            },
        ];
        let responses = vec![
            Response::Welcome {
                version: 1,
                server: "s".into(),
                limits,
            },
            Response::Continue,
            Response::Published(info(1)),
            Response::Asset(info(250)),
            Response::Info(info(251)),
            Response::Listing {
                assets: (0..300).map(info).collect(),
                next: Some("n".into()),
            },
            Response::Removed { versions: 70_000 },
            Response::Status(ServerStatus {
                server: "s".into(),
                uptime_ms: 1 << 50,
                names: 1,
                versions: 2,
                blobs: 3,
                bytes: 4,
                connections: 5,
            }),
            Response::Error(error.clone()),
            Response::Watching,
            Response::Event(Event::Removed(info(65_536))),
            Response::Greeting {
                version: 2,
                server: "s".into(),
                limits,
                session: SessionLimits {
                    max_unread_descriptors: 64,
                    max_fetch_many: 64,
                },
            },
            Response::Assets {
                items: vec![FetchResult::Asset(info(7)), FetchResult::Error(error)],
            },
            Response::Resolving,
            Response::Wanted {
                name: "w".into(),
                selector: Selector::Version(u64::MAX),
            },
        ];
        (requests, responses)
    }

    #[test]
    fn the_wire_is_the_standard_encoding_of_every_kind() {
        // Frames are encoded and decoded by bincode's own derives (fast on
        // the 32-byte hashes, which serde hands over a byte at a time); the
        // bytes must stay those of its serde encoding, which PROTOCOL.md
        // describes and other clients implement.
        let (requests, responses) = every_kind();
        assert_eq!(requests.len(), Request::KINDS.len());
        assert_eq!(responses.len(), Response::KINDS.len());
        for request in &requests {
            let frame = encode_request(request).unwrap();
            assert_eq!(&payload(&frame)[1..], serde_bytes(request), "{request:?}");
            let decoded = decode_request(payload(&frame), descriptors(request.fd_count()));
            assert_eq!(&decoded.unwrap().message, request);
        }
        for response in &responses {
            let frame = encode_response(response).unwrap();
            let kind = response.kind();
            assert_eq!(&payload(&frame)[1..], serde_bytes(response), "{kind}");
            assert_eq!(encoded_response_len(response), frame.len());
            let decoded = decode_response(payload(&frame), descriptors(response.fd_count()));
            assert_eq!(&decoded.unwrap().message, response);
        }
    }

    /// bincode's serde encoding of `message`, standard configuration.
    fn serde_bytes(message: &impl Serialize) -> Vec<u8> {
        bincode::serde::encode_to_vec(message, bincode::config::standard()).unwrap()
    }

    /// `count` descriptors to receive with a frame.
    fn descriptors(count: u8) -> Vec<OwnedFd> {
        (0..count)
            .map(|_| rustix::io::dup(std::io::stdin()).unwrap())
            .collect()
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
        let info = AssetInfo {
            name: "a".into(),
            version: 3,
            size: 1,
            hash: [7; 32],
            published_ms: 5,
            publisher_uid: 1000,
        };
        let snapshot = Snapshot {
            format: SNAPSHOT_FORMAT,
            generation: 9,
            forgotten: vec![(3, 12)],
            names: vec![SnapshotName {
                name: "a".into(),
                last_version: 4,
                versions: vec![StoredVersion {
                    info: info.clone(),
                    owner: Some(0),
                    charged: false,
                }],
            }],
        };
        let bytes = encode_snapshot(&snapshot);
        assert_eq!(decode_snapshot(&bytes).unwrap(), snapshot);
        // Name by name, the encoding is the whole struct's, whatever the
        // number of names (a sequence's length is a varint).
        for count in [0, 1, 250, 251, 70_000] {
            let many = Snapshot {
                names: vec![snapshot.names[0].clone(); count],
                ..snapshot.clone()
            };
            let mut whole = SNAPSHOT_MAGIC.to_vec();
            encode_into(&many, &mut whole);
            assert_eq!(encode_snapshot(&many), whole, "{count} names");
        }
        assert!(decode_snapshot(b"hello").is_err());
        assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_err());

        // Format 1: tombstones go into the forgotten table, owners are
        // unknown.
        let old = SnapshotV1 {
            format: 1,
            generation: 3,
            names: vec![
                crate::persisted::SnapshotNameV1 {
                    name: "a".into(),
                    last_version: 4,
                    versions: vec![info.clone()],
                },
                crate::persisted::SnapshotNameV1 {
                    name: "gone".into(),
                    last_version: 8,
                    versions: vec![],
                },
            ],
        };
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bincode::serde::encode_into_std_write(&old, &mut bytes, bincode::config::standard())
            .unwrap();
        let upgraded = decode_snapshot(&bytes).unwrap();
        let slot = crate::persisted::forgotten_slot("gone") as u32;
        assert_eq!(upgraded.forgotten, [(slot, 8)]);
        assert_eq!(upgraded.names.len(), 1);
        assert_eq!(upgraded.names[0].versions[0].owner, None);
    }

    #[test]
    fn journal_records_round_trip_and_a_torn_tail_is_dropped() {
        let entries = [
            JournalEntry::Removed {
                name: "x".into(),
                version: 2,
            },
            JournalEntry::Published(StoredVersion {
                info: AssetInfo {
                    name: "y".into(),
                    version: 1,
                    size: 3,
                    hash: [1; 32],
                    published_ms: 0,
                    publisher_uid: 0,
                },
                owner: Some(7),
                charged: true,
            }),
        ];
        let mut journal = Vec::new();
        for entry in &entries {
            journal.extend(encode_journal_entry(entry));
        }
        let whole = journal.len();
        assert_eq!(decode_journal(&journal), (entries.to_vec(), whole));
        // A crash in the middle of the second record: only the first counts.
        let first = encode_journal_entry(&entries[0]).len();
        for cut in first..whole {
            assert_eq!(
                decode_journal(&journal[..cut]),
                (entries[..1].to_vec(), first)
            );
        }
        // A flipped bit fails the check.
        journal[whole - 1] ^= 1;
        assert_eq!(decode_journal(&journal).1, first);
    }

    #[test]
    fn every_frame_up_to_the_cap_decodes() {
        // From a little under the cap to exactly the cap, for the request
        // with the most fixed fields around its name.
        for len in 65_400..=65_530 {
            let request = Request::List {
                prefix: "a".repeat(len),
                start_after: None,
            };
            let frame = encode_request(&request).unwrap();
            assert!(frame.len() - HEADER_LEN <= MAX_FRAME_LEN as usize);
            let decoded = decode_request(&frame[HEADER_LEN..], vec![]).unwrap();
            assert_eq!(decoded.message, request);
        }
        for len in 65_400..=65_516 {
            let request = Request::Publish {
                name: "p".repeat(len),
                size: u64::MAX,
                source: PublishSource::Stream,
            };
            if let Ok(frame) = encode_request(&request) {
                let decoded = decode_request(&frame[HEADER_LEN..], vec![]).unwrap();
                assert_eq!(decoded.message, request);
            }
        }
        let too_long = Request::List {
            prefix: "a".repeat(65_531),
            start_after: None,
        };
        assert!(matches!(
            encode_request(&too_long),
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn decoding_failures_read_as_sentences() {
        let mut frame = vec![0u8];
        frame.push(Request::KINDS.len() as u8); // one past the last kind
        let err = decode_request(&frame, vec![]).unwrap_err().to_string();
        let unknown = format!("unknown request kind {}", Request::KINDS.len());
        assert!(err.contains(&unknown), "{err}");
        assert!(err.contains("hello, publish"), "{err}");
        // A list request whose cursor option is marked 2.
        let mut frame = vec![0u8, 4, 0, 2];
        let err = decode_request(&frame, vec![]).unwrap_err().to_string();
        assert!(err.contains("'list' request"), "{err}");
        assert!(err.contains("optional field"), "{err}");
        frame.truncate(3);
        let err = decode_request(&frame, vec![]).unwrap_err().to_string();
        assert!(err.contains("ends too early"), "{err}");
        for text in ["OtherString", "UnexpectedVariant", "Option<T>"] {
            assert!(!err.contains(text), "{err}");
        }
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
