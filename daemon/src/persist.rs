//! Surviving restarts: the service manager's file descriptor store.
//!
//! A memfd lives only as long as some process holds it. Under systemd the
//! daemon hands every blob's memfd to the service manager (`FDSTORE=1`,
//! `FDNAME=blob-<hash>`), together with a sealed memfd holding a snapshot of
//! the catalog (`FDNAME=catalog-<generation>`, rewritten after every
//! change). When the daemon restarts or crashes, systemd passes them all
//! back in `LISTEN_FDS`; [`restore`] re-verifies each one (seals, size,
//! BLAKE3) and rebuilds names, versions and hashes exactly. Blobs no longer
//! referenced are dropped from the store (`FDSTOREREMOVE=1`), and so is
//! anything foreign or corrupt, with a log line; nothing unverified is ever
//! served.
//!
//! Order matters for crash safety: a new snapshot is stored before the
//! previous one is removed, and a blob is stored before any snapshot names
//! it, so at every instant the store holds a consistent catalog.

use crate::blob::{Blob, StreamIngest, IMMUTABLE};
use crate::catalog::{Catalog, Change};
use crate::store::{Observer, Store};
use memseal_proto::codec::{decode_snapshot, encode_snapshot};
use memseal_proto::message::hash_to_hex;
use memseal_proto::{Hash, Snapshot, SnapshotName};
use sd_notify::NotifyState;
use std::collections::HashMap;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::{info, warn};

/// The snapshot layout this daemon writes and reads.
const SNAPSHOT_FORMAT: u32 = 1;

const BLOB_PREFIX: &str = "blob-";
const CATALOG_PREFIX: &str = "catalog-";

fn blob_name(hash: &Hash) -> String {
    format!("{BLOB_PREFIX}{}", hash_to_hex(hash))
}

fn catalog_name(generation: u64) -> String {
    format!("{CATALOG_PREFIX}{generation}")
}

/// Is there a service manager to keep descriptors for us?
pub fn available() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn store_fd(name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
    sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &[fd])
}

fn remove_fd(name: &str) {
    if let Err(e) = sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)]) {
        warn!("cannot drop {name} from the fd store: {e}");
    }
}

/// Keeps the fd store in step with the catalog.
pub struct FdStore {
    generation: AtomicU64,
}

impl FdStore {
    /// An observer for [`Store::observe`]: store new blobs, drop dropped
    /// ones, then write a new snapshot.
    pub fn observer(self: Arc<Self>) -> Observer {
        Box::new(move |store, changes| self.apply(store, changes))
    }

    fn apply(&self, store: &Store, changes: &[Change]) {
        for change in changes {
            if let Change::BlobAdded(blob) = change {
                let name = blob_name(blob.hash());
                if let Err(e) = store_fd(&name, blob.fd()) {
                    warn!("cannot keep {name} in the fd store; it will not survive a restart: {e}");
                }
            }
        }
        self.write_snapshot(store);
        for change in changes {
            if let Change::BlobDropped(blob) = change {
                remove_fd(&blob_name(blob.hash()));
            }
        }
    }

    /// Store a fresh snapshot of the catalog, then drop the previous one.
    pub fn write_snapshot(&self, store: &Store) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let snapshot = store.with_catalog(|catalog| snapshot_of(catalog, generation));
        let bytes = encode_snapshot(&snapshot);
        let stored =
            sealed_memfd(&bytes).and_then(|blob| store_fd(&catalog_name(generation), blob.fd()));
        match stored {
            Ok(()) => {
                if generation > 1 {
                    remove_fd(&catalog_name(generation - 1));
                }
            }
            Err(e) => {
                warn!("cannot keep the catalog in the fd store; a restart would lose it: {e}")
            }
        }
    }
}

fn snapshot_of(catalog: &Catalog, generation: u64) -> Snapshot {
    Snapshot {
        format: SNAPSHOT_FORMAT,
        generation,
        names: catalog
            .entries()
            .map(|(name, last_version, versions)| SnapshotName {
                name: name.to_owned(),
                last_version,
                versions: versions.map(|v| v.info.clone()).collect(),
            })
            .collect(),
    }
}

fn sealed_memfd(bytes: &[u8]) -> io::Result<Blob> {
    let mut ingest = StreamIngest::new(bytes.len() as u64)?;
    ingest.write(bytes)?;
    ingest.finish()
}

/// Read a snapshot from a stored descriptor, refusing anything unsealed.
fn read_snapshot(fd: &OwnedFd) -> Result<Snapshot, String> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|e| format!("not a sealed memfd ({e})"))?;
    if !seals.contains(IMMUTABLE) {
        return Err("not sealed against writes".into());
    }
    let size = rustix::fs::fstat(fd).map_err(|e| e.to_string())?.st_size as usize;
    if size > memseal_proto::codec::MAX_SNAPSHOT_LEN + 8 {
        return Err(format!("{size} bytes is too large for a snapshot"));
    }
    let mut bytes = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        match rustix::io::pread(fd, &mut bytes[filled..], filled as u64) {
            Ok(0) => return Err("shorter than its size".into()),
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let snapshot = decode_snapshot(&bytes).map_err(|e| e.to_string())?;
    if snapshot.format != SNAPSHOT_FORMAT {
        return Err(format!("snapshot format {} is unknown", snapshot.format));
    }
    Ok(snapshot)
}

/// What [`restore`] brought back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub versions: usize,
    pub blobs: usize,
    /// Descriptors refused: foreign, unsealed, altered or unreferenced.
    pub dropped: usize,
}

/// Rebuild the catalog from descriptors the service manager passed back,
/// and return the fd store keeper, already holding a snapshot of the
/// result.
pub fn restore(store: &Store, stored: Vec<(String, OwnedFd)>) -> (Arc<FdStore>, Restored) {
    let mut restored = Restored::default();
    let mut catalogs: Vec<(u64, OwnedFd)> = Vec::new();
    let mut blobs: HashMap<Hash, OwnedFd> = HashMap::new();
    for (name, fd) in stored {
        if let Some(generation) = name
            .strip_prefix(CATALOG_PREFIX)
            .and_then(|g| g.parse().ok())
        {
            catalogs.push((generation, fd));
        } else if let Some(hash) = name
            .strip_prefix(BLOB_PREFIX)
            .and_then(memseal_proto::message::hash_from_hex)
        {
            if blobs.insert(hash, fd).is_some() {
                warn!("fd store holds {name} twice; keeping one");
            }
        } else {
            warn!("dropping a foreign descriptor from the fd store: '{name}'");
            remove_fd(&name);
            restored.dropped += 1;
        }
    }

    // The newest readable snapshot wins; every other one goes.
    catalogs.sort_by_key(|(generation, _)| std::cmp::Reverse(*generation));
    let mut snapshot = None;
    for (generation, fd) in &catalogs {
        if snapshot.is_none() {
            match read_snapshot(fd) {
                Ok(s) => {
                    snapshot = Some(s);
                    continue;
                }
                Err(e) => warn!("dropping catalog snapshot {generation} from the fd store: {e}"),
            }
        }
        remove_fd(&catalog_name(*generation));
    }
    let snapshot = snapshot.unwrap_or_else(|| Snapshot {
        format: SNAPSHOT_FORMAT,
        generation: 0,
        names: Vec::new(),
    });

    // Re-verify every blob a kept version refers to, once.
    let mut verified: HashMap<Hash, Option<Arc<Blob>>> = HashMap::new();
    store.with_catalog(|catalog| {
        for entry in &snapshot.names {
            catalog.restore_tombstone(&entry.name, entry.last_version);
            for info in &entry.versions {
                let blob = verified.entry(info.hash).or_insert_with(|| {
                    let fd = blobs.remove(&info.hash)?;
                    match Blob::reverify(fd, info.size, &info.hash) {
                        Ok(blob) => Some(Arc::new(blob)),
                        Err(e) => {
                            warn!("dropping {} from the fd store: {e}", blob_name(&info.hash));
                            remove_fd(&blob_name(&info.hash));
                            None
                        }
                    }
                });
                match blob {
                    Some(blob)
                        if catalog.restore(info.clone(), blob.clone(), entry.last_version) =>
                    {
                        restored.versions += 1;
                    }
                    _ => warn!(
                        name = %info.name,
                        version = info.version,
                        "a stored version could not be restored"
                    ),
                }
            }
        }
    });
    restored.blobs = verified.values().filter(|b| b.is_some()).count();
    restored.dropped += verified.values().filter(|b| b.is_none()).count();
    for hash in blobs.keys() {
        warn!(
            "dropping {} from the fd store: no stored version refers to it",
            blob_name(hash)
        );
        remove_fd(&blob_name(hash));
        restored.dropped += 1;
    }

    let keeper = Arc::new(FdStore {
        generation: AtomicU64::new(snapshot.generation),
    });
    keeper.write_snapshot(store);
    if restored != Restored::default() {
        info!(
            versions = restored.versions,
            blobs = restored.blobs,
            dropped = restored.dropped,
            "restored the catalog from the fd store"
        );
    }
    (keeper, restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_identify_blobs_and_catalogs() {
        let hash = [0xab; 32];
        let name = blob_name(&hash);
        let parsed = name
            .strip_prefix(BLOB_PREFIX)
            .and_then(memseal_proto::message::hash_from_hex);
        assert_eq!(parsed, Some(hash));
        assert_eq!(catalog_name(7), "catalog-7");
    }

    #[test]
    fn snapshots_round_trip_through_a_sealed_memfd() {
        let snapshot = Snapshot {
            format: SNAPSHOT_FORMAT,
            generation: 4,
            names: vec![],
        };
        let blob = sealed_memfd(&encode_snapshot(&snapshot)).unwrap();
        let fd = rustix::io::dup(blob.fd()).unwrap();
        assert_eq!(read_snapshot(&fd).unwrap(), snapshot);
        let unsealed = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::empty()).unwrap();
        assert!(read_snapshot(&unsealed).is_err());
    }
}
