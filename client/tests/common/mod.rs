//! A small stand-in for memseald, for testing the client without the real
//! daemon: it speaks the real protocol through `memseal_proto`, over a real
//! Unix socket, and serves real sealed memfds. Its catalog is a map in
//! memory, its hash is not BLAKE3, and it can be told to misbehave.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use memseal::proto::codec::{decode_request, encode_response};
use memseal::proto::name::validate_name;
use memseal::proto::wire::{recv_raw, FrameReader, FrameWriter};
use memseal::proto::{
    AssetInfo, ErrorCode, Hash, Limits, PublishSource, Request, Response, Selector, ServerStatus,
    PROTOCOL_VERSION,
};
use rustix::fs::{fcntl_add_seals, fcntl_get_seals, fstat, memfd_create, MemfdFlags, SealFlags};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The limits the fake daemon announces.
pub const LIMITS: Limits = Limits {
    max_frame_len: memseal::proto::MAX_FRAME_LEN,
    max_asset_size: 1 << 20,
    max_total_bytes: 16 << 20,
    max_name_len: 255,
    keep_versions: 4,
};

/// The server name in the fake daemon's welcome.
pub const SERVER_NAME: &str = "fake-memseald 0.0";

/// How many names a listing page holds: small, so paging is exercised.
const PAGE: usize = 2;

/// Ways the fake daemon can misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Follows the protocol.
    Honest,
    /// Answers every fetch with a fresh memfd that is not sealed.
    UnsealedFetch,
    /// Answers every fetch with a sealed memfd one byte shorter than announced.
    ShortFetch,
    /// Welcomes clients with a protocol version nobody speaks.
    WrongVersion,
    /// Refuses every handshake with `Busy`.
    RefuseHello,
    /// Welcomes clients, then never answers anything.
    Silent,
    /// Answers every listing with the same page and the same cursor.
    RepeatCursor,
}

/// How the bytes of a publish arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Streamed over the socket.
    Stream,
    /// A memfd sealed against write, grow and shrink, adopted as it is.
    SealedMemfd,
    /// A regular file, copied.
    RegularFile,
}

struct Stored {
    info: AssetInfo,
    memfd: OwnedFd,
}

#[derive(Default)]
struct Catalog {
    assets: BTreeMap<String, Vec<Stored>>,
    next_version: BTreeMap<String, u64>,
    arrivals: Vec<(String, Arrival)>,
}

/// A running fake daemon. Its socket lives in a temporary directory that
/// goes away with it.
pub struct FakeDaemon {
    /// The socket to connect to.
    pub path: PathBuf,
    catalog: Arc<Mutex<Catalog>>,
    _dir: tempfile::TempDir,
}

impl FakeDaemon {
    /// Start an honest fake daemon.
    pub fn start() -> FakeDaemon {
        FakeDaemon::with(Behaviour::Honest)
    }

    /// Start a fake daemon that behaves as told.
    pub fn with(behaviour: Behaviour) -> FakeDaemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memseald.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let catalog = Arc::new(Mutex::new(Catalog::default()));
        let connections = Arc::new(AtomicU64::new(0));
        let shared = Arc::clone(&catalog);
        // The thread lives as long as the test process; a test that ends
        // simply stops connecting.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let catalog = Arc::clone(&shared);
                let connections = Arc::clone(&connections);
                std::thread::spawn(move || {
                    connections.fetch_add(1, Ordering::SeqCst);
                    serve(stream, &catalog, behaviour, &connections);
                    connections.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        FakeDaemon {
            path,
            catalog,
            _dir: dir,
        }
    }

    /// How each publish so far arrived, in order.
    pub fn arrivals(&self) -> Vec<(String, Arrival)> {
        self.catalog.lock().unwrap().arrivals.clone()
    }
}

/// A memfd named `name` holding `bytes`, sealed with `seals`.
pub fn memfd_with(name: &str, bytes: &[u8], seals: SealFlags) -> OwnedFd {
    let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    let file = File::from(fd);
    file.write_all_at(bytes, 0).unwrap();
    let fd = OwnedFd::from(file);
    if !seals.is_empty() {
        fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

/// The seals the real daemon puts on every asset.
pub fn daemon_seals() -> SealFlags {
    SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL
}

/// A stand-in for BLAKE3: distinct for distinct test inputs, nothing more.
pub fn fake_hash(bytes: &[u8]) -> Hash {
    let mut hash = [0u8; 32];
    for (lane, chunk) in hash.chunks_exact_mut(8).enumerate() {
        let mut state: u64 = 0xcbf2_9ce4_8422_2325 ^ lane as u64;
        for &byte in bytes {
            state = (state ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    hash
}

/// How many descriptors of this process point at a memfd whose name
/// contains `name`.
pub fn open_fds_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains(name))
        .count()
}

/// How many mappings of this process name a file whose name contains `name`.
pub fn mappings_named(name: &str) -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|line| line.contains(name))
        .count()
}

fn serve(
    stream: UnixStream,
    catalog: &Mutex<Catalog>,
    behaviour: Behaviour,
    connections: &AtomicU64,
) {
    let peer_uid = rustix::net::sockopt::socket_peercred(&stream)
        .unwrap()
        .uid
        .as_raw();
    let started = SystemTime::now();
    let mut reader = FrameReader::new();
    let mut greeted = false;
    loop {
        let Ok(frame) = reader.read_frame(stream.as_fd()) else {
            return;
        };
        let Ok(decoded) = decode_request(&frame.payload, frame.fds) else {
            return;
        };
        let request = decoded.message;
        if greeted && behaviour == Behaviour::Silent {
            continue;
        }
        let (response, fd) = match request {
            Request::Hello { version, .. } => {
                greeted = true;
                match behaviour {
                    Behaviour::RefuseHello => (
                        Response::error(ErrorCode::Busy, "too many clients; try again later"),
                        None,
                    ),
                    _ if version != PROTOCOL_VERSION => (
                        Response::error(ErrorCode::UnsupportedVersion, "unknown version"),
                        None,
                    ),
                    Behaviour::WrongVersion => (welcome(PROTOCOL_VERSION + 41), None),
                    _ => (welcome(PROTOCOL_VERSION), None),
                }
            }
            Request::Publish { name, size, source } => {
                let bytes = match source {
                    PublishSource::Stream => {
                        send(&stream, &Response::Continue, None);
                        let mut body = vec![0u8; size as usize];
                        let mut filled = 0;
                        while filled < body.len() {
                            match recv_raw(stream.as_fd(), &mut body[filled..]) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => filled += n,
                            }
                        }
                        Ok((body, Arrival::Stream))
                    }
                    PublishSource::Descriptor => read_source(decoded.fd.unwrap(), size),
                };
                match bytes {
                    Err(reply) => (reply, None),
                    Ok((bytes, arrival)) => {
                        (publish(catalog, &name, &bytes, arrival, peer_uid), None)
                    }
                }
            }
            Request::Fetch { name, selector } => {
                let catalog = catalog.lock().unwrap();
                match find(&catalog, &name, selector) {
                    None => (not_found(&name), None),
                    Some(stored) => {
                        let content = read_all(&stored.memfd);
                        let fd = match behaviour {
                            Behaviour::UnsealedFetch => {
                                memfd_with("fake-unsealed-fetch", &content, SealFlags::empty())
                            }
                            Behaviour::ShortFetch => memfd_with(
                                "fake-short-fetch",
                                &content[..content.len().saturating_sub(1)],
                                daemon_seals(),
                            ),
                            _ => stored.memfd.try_clone().unwrap(),
                        };
                        (Response::Asset(stored.info.clone()), Some(fd))
                    }
                }
            }
            Request::Stat { name, selector } => {
                let catalog = catalog.lock().unwrap();
                match find(&catalog, &name, selector) {
                    None => (not_found(&name), None),
                    Some(stored) => (Response::Info(stored.info.clone()), None),
                }
            }
            Request::List {
                prefix,
                start_after,
            } => {
                let catalog = catalog.lock().unwrap();
                let mut names = catalog
                    .assets
                    .iter()
                    .filter(|(name, _)| name.starts_with(&prefix))
                    .filter(|(name, _)| match &start_after {
                        _ if behaviour == Behaviour::RepeatCursor => true,
                        Some(after) => *name > after,
                        None => true,
                    });
                let assets: Vec<AssetInfo> = names
                    .by_ref()
                    .take(PAGE)
                    .map(|(_, versions)| versions.last().unwrap().info.clone())
                    .collect();
                let next = names
                    .next()
                    .and_then(|_| assets.last().map(|info| info.name.clone()));
                (Response::Listing { assets, next }, None)
            }
            Request::Remove { name, version } => {
                let mut catalog = catalog.lock().unwrap();
                let Some(versions) = catalog.assets.get_mut(&name) else {
                    send(&stream, &not_found(&name), None);
                    continue;
                };
                let before = versions.len();
                versions.retain(|stored| version.is_some_and(|v| stored.info.version != v));
                let removed = (before - versions.len()) as u64;
                if versions.is_empty() {
                    catalog.assets.remove(&name);
                }
                if removed == 0 {
                    (not_found(&name), None)
                } else {
                    (Response::Removed { versions: removed }, None)
                }
            }
            Request::Status => {
                let catalog = catalog.lock().unwrap();
                let stored = catalog.assets.values().flatten();
                (
                    Response::Status(ServerStatus {
                        server: SERVER_NAME.to_owned(),
                        uptime_ms: started.elapsed().unwrap().as_millis() as u64,
                        names: catalog.assets.len() as u64,
                        versions: stored.clone().count() as u64,
                        blobs: stored.clone().count() as u64,
                        bytes: stored.map(|s| s.info.size).sum(),
                        connections: connections.load(Ordering::SeqCst),
                    }),
                    None,
                )
            }
            // The fake daemon does not stream events; the real one is
            // tested in tests/tests/watch.rs.
            Request::Watch { .. } => (
                Response::error(ErrorCode::Internal, "the fake daemon cannot watch"),
                None,
            ),
            // It greets in protocol version 1 only, so clients never batch
            // with it; the real daemon's batches are tested in tests/.
            Request::FetchMany { .. } => (
                Response::error(ErrorCode::Internal, "the fake daemon cannot batch"),
                None,
            ),
            Request::Resolve { .. } | Request::Unresolved { .. } => (
                Response::error(ErrorCode::Internal, "the fake daemon cannot resolve"),
                None,
            ),
        };
        send(&stream, &response, fd.as_ref().map(|fd| fd.as_fd()));
    }
}

fn welcome(version: u32) -> Response {
    Response::Welcome {
        version,
        server: SERVER_NAME.to_owned(),
        limits: LIMITS,
    }
}

fn not_found(name: &str) -> Response {
    Response::error(ErrorCode::NotFound, format!("no asset named '{name}'"))
}

fn send(stream: &UnixStream, response: &Response, fd: Option<std::os::fd::BorrowedFd<'_>>) {
    let frame = encode_response(response).unwrap();
    // A client that hung up is not the fake daemon's problem.
    let _ = FrameWriter::new(frame, fd).write_all(stream);
}

/// The bytes of a descriptor publish, the way the real daemon treats them:
/// a sealed memfd is adopted, a regular file copied, anything else refused.
fn read_source(fd: OwnedFd, size: u64) -> Result<(Vec<u8>, Arrival), Response> {
    let refuse = |why: &str| Response::error(ErrorCode::InvalidSource, why);
    let stat = fstat(&fd).map_err(|_| refuse("cannot stat"))?;
    if stat.st_size as u64 != size {
        return Err(refuse("the size does not match"));
    }
    let arrival = match fcntl_get_seals(&fd) {
        Ok(seals) if seals.contains(SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK) => {
            Arrival::SealedMemfd
        }
        _ if rustix::fs::FileType::from_raw_mode(stat.st_mode).is_file() => Arrival::RegularFile,
        _ => return Err(refuse("neither a regular file nor a sealed memfd")),
    };
    Ok((read_all(&fd), arrival))
}

fn read_all(fd: &OwnedFd) -> Vec<u8> {
    let size = fstat(fd).unwrap().st_size as usize;
    let mut bytes = vec![0u8; size];
    File::from(fd.try_clone().unwrap())
        .read_exact_at(&mut bytes, 0)
        .unwrap();
    bytes
}

fn publish(
    catalog: &Mutex<Catalog>,
    name: &str,
    bytes: &[u8],
    arrival: Arrival,
    uid: u32,
) -> Response {
    if let Err(e) = validate_name(name) {
        return Response::error(ErrorCode::InvalidName, e.to_string());
    }
    if bytes.len() as u64 > LIMITS.max_asset_size {
        return Response::error(ErrorCode::TooLarge, "larger than the maximum asset size");
    }
    let mut catalog = catalog.lock().unwrap();
    let version = {
        let next = catalog.next_version.entry(name.to_owned()).or_insert(1);
        *next += 1;
        *next - 1
    };
    let info = AssetInfo {
        name: name.to_owned(),
        version,
        size: bytes.len() as u64,
        hash: fake_hash(bytes),
        published_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64,
        publisher_uid: uid,
    };
    let memfd = memfd_with(&format!("fake-asset-{name}"), bytes, daemon_seals());
    let versions = catalog.assets.entry(name.to_owned()).or_default();
    versions.push(Stored {
        info: info.clone(),
        memfd,
    });
    catalog.arrivals.push((name.to_owned(), arrival));
    Response::Published(info)
}

fn find<'a>(catalog: &'a Catalog, name: &str, selector: Selector) -> Option<&'a Stored> {
    let versions = catalog.assets.get(name)?;
    match selector {
        Selector::Latest => versions.last(),
        Selector::Version(v) => versions.iter().find(|s| s.info.version == v),
        Selector::Hash(h) => versions.iter().rev().find(|s| s.info.hash == h),
    }
}
