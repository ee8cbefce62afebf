//! Surviving restarts: the service manager's file descriptor store.
//!
//! A memfd lives only as long as some process holds it. Under systemd the
//! daemon hands every blob's memfd to the service manager, together with
//! what it needs to rebuild the catalog, under these names (`FDNAME=`):
//!
//! - `blob-<hash>-<owner uid>`: one blob's read-only memfd (older daemons
//!   wrote `blob-<hash>`, still understood);
//! - `catalog-<generation>`: a sealed memfd holding a [`Snapshot`];
//! - `journal-<generation>`: a memfd only this daemon and the service
//!   manager hold, to which every change since that snapshot is appended
//!   as a [`JournalEntry`].
//!
//! A change costs one `pwrite` to the journal: the service manager holds
//! the same file, so nothing is sent to it again. When the journal has
//! grown past the snapshot (and at least 1 MiB), a new snapshot
//! and an empty journal replace them, so the work per change stays
//! constant on average however large the catalog is. The snapshot is read
//! from the catalog one page at a time: a fetch never waits for more than
//! a page.
//!
//! When the daemon restarts or crashes, systemd passes everything back in
//! `LISTEN_FDS`; [`restore`] takes the newest snapshot, replays its
//! journal, re-verifies each blob (seals, size, owner, BLAKE3) and drops
//! from the store whatever is foreign, corrupt or no longer referenced,
//! with a log line; nothing unverified is ever served.
//!
//! Order matters for crash safety: a blob is stored before any journal
//! entry names it, a new journal before the snapshot it belongs to, and a
//! snapshot before the previous pair is removed, so at every instant the
//! store holds a consistent catalog.

use crate::blob::{Blob, BlobKey, BlobWriter};
use crate::catalog::{Catalog, Change, Version};
use crate::state::{Observer, State};
use memseal_proto::codec::{
    decode_journal, decode_snapshot, encode_journal_entry, encode_snapshot, MAX_SNAPSHOT_LEN,
};
use memseal_proto::message::{hash_from_hex, hash_to_hex};
use memseal_proto::persisted::SNAPSHOT_FORMAT;
use memseal_proto::{JournalEntry, Snapshot, StoredVersion};
use rustix::fs::MemfdFlags;
use sd_notify::NotifyState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

const BLOB_PREFIX: &str = "blob-";
const CATALOG_PREFIX: &str = "catalog-";
const JOURNAL_PREFIX: &str = "journal-";

/// The journal is compacted into a new snapshot once it is larger than
/// the snapshot and than this.
const JOURNAL_MIN: u64 = 1 << 20;

/// Names a snapshot reads from the catalog per hold of its lock.
const SNAPSHOT_PAGE: usize = 256;

/// A blob's name in the store: `blob-<hash>` for the daemon's own memfds
/// (the name older daemons gave every blob), `blob-<hash>-<owner>` for one
/// adopted from a user.
fn blob_name(key: &BlobKey) -> String {
    if key.owner == rustix::process::geteuid().as_raw() {
        format!("{BLOB_PREFIX}{}", hash_to_hex(&key.hash))
    } else {
        format!("{BLOB_PREFIX}{}-{}", hash_to_hex(&key.hash), key.owner)
    }
}

/// The hash and owner in a stored blob's name; the owner is None for the
/// daemon's own (and for every blob older daemons stored).
fn parse_blob_name(name: &str) -> Option<(memseal_proto::Hash, Option<u32>)> {
    let rest = name.strip_prefix(BLOB_PREFIX)?;
    match rest.split_once('-') {
        Some((hash, owner)) => Some((hash_from_hex(hash)?, Some(owner.parse().ok()?))),
        None => Some((hash_from_hex(rest)?, None)),
    }
}

fn catalog_name(generation: u64) -> String {
    format!("{CATALOG_PREFIX}{generation}")
}

fn journal_name(generation: u64) -> String {
    format!("{JOURNAL_PREFIX}{generation}")
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

/// The snapshot and journal currently in the store.
struct Generation {
    number: u64,
    journal: OwnedFd,
    journal_len: u64,
    snapshot_len: u64,
    /// An append failed: the journal may miss a change, so the next change
    /// writes a whole snapshot instead.
    broken: bool,
}

/// Keeps the fd store in step with the catalog.
pub struct FdStore {
    current: Mutex<Generation>,
}

impl FdStore {
    /// An observer for [`State::observe`]: store new blobs, journal the
    /// changes, drop dropped blobs.
    pub fn observer(self: Arc<Self>) -> Observer {
        Box::new(move |state, changes| self.apply(state, changes))
    }

    fn apply(&self, state: &State, changes: &[Change]) {
        let dropped = blob_names(changes, |change| match change {
            Change::BlobDropped(blob) => Some(blob),
            _ => None,
        });
        let mut records = Vec::new();
        for change in changes {
            match change {
                Change::BlobAdded(blob) => {
                    let name = blob_name(&blob.key());
                    // A broken blob replaced in the same batch by one of
                    // the same name: the old one goes first.
                    if dropped.contains(&name) {
                        remove_fd(&name);
                    }
                    if let Err(e) = store_fd(&name, blob.fd()) {
                        warn!(
                            "cannot keep {name} in the fd store; it will not survive a restart: {e}"
                        );
                    }
                }
                Change::Published(version) => {
                    records.extend(encode_journal_entry(&JournalEntry::Published(
                        stored_version(version),
                    )));
                }
                Change::Removed(info) => {
                    records.extend(encode_journal_entry(&JournalEntry::Removed {
                        name: info.name.clone(),
                        version: info.version,
                    }));
                }
                Change::BlobDropped(_) => {}
            }
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if !records.is_empty() {
            if let Err(e) = append(&current.journal, current.journal_len, &records) {
                warn!("cannot append to the catalog journal ({e}); writing a full snapshot");
                current.broken = true;
            }
            current.journal_len += records.len() as u64;
        }
        if current.broken || current.journal_len > current.snapshot_len.max(JOURNAL_MIN) {
            if let Err(e) = compact(state, &mut current) {
                warn!("cannot keep the catalog in the fd store; a restart would lose changes: {e}");
            }
        }
        drop(current);
        let added = blob_names(changes, |change| match change {
            Change::BlobAdded(blob) => Some(blob),
            _ => None,
        });
        for name in dropped.iter().filter(|name| !added.contains(name)) {
            remove_fd(name);
        }
    }
}

/// The store names of the blobs that `pick` selects from `changes`.
fn blob_names(changes: &[Change], pick: impl Fn(&Change) -> Option<&Arc<Blob>>) -> Vec<String> {
    changes
        .iter()
        .filter_map(pick)
        .map(|blob| blob_name(&blob.key()))
        .collect()
}

fn stored_version(version: &Version) -> StoredVersion {
    StoredVersion {
        info: version.info.clone(),
        owner: Some(version.blob.key().owner),
        charged: version.charged,
    }
}

/// Write `bytes` at `offset` of the journal.
fn append(journal: &OwnedFd, offset: u64, mut bytes: &[u8]) -> io::Result<()> {
    let mut at = offset;
    while !bytes.is_empty() {
        match rustix::io::pwrite(journal, bytes, at) {
            Ok(n) => {
                at += n as u64;
                bytes = &bytes[n..];
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Replace the snapshot and journal in the store with a new snapshot of
/// the catalog as it is now and an empty journal. The caller holds the
/// observers' order lock, so the catalog's names do not change meanwhile;
/// its lock is taken one page at a time.
fn compact(state: &State, current: &mut Generation) -> io::Result<()> {
    let number = current.number + 1;
    let mut snapshot = Snapshot {
        format: SNAPSHOT_FORMAT,
        generation: number,
        forgotten: Vec::new(),
        names: Vec::new(),
    };
    let mut cursor: Option<String> = None;
    loop {
        let (page, next) =
            state.with_catalog(|catalog| catalog.snapshot_page(cursor.as_deref(), SNAPSHOT_PAGE));
        snapshot.names.extend(page);
        match next {
            Some(name) => cursor = Some(name),
            None => break,
        }
    }
    snapshot.forgotten = state.with_catalog(|catalog| catalog.forgotten());
    let bytes = encode_snapshot(&snapshot);
    let sealed = sealed_memfd(&bytes)?;
    let journal = rustix::fs::memfd_create("memseal-journal", MemfdFlags::CLOEXEC)?;
    store_fd(&journal_name(number), journal.as_fd())?;
    if let Err(e) = store_fd(&catalog_name(number), sealed.fd()) {
        remove_fd(&journal_name(number));
        return Err(e);
    }
    if current.number > 0 {
        remove_fd(&catalog_name(current.number));
        remove_fd(&journal_name(current.number));
    }
    *current = Generation {
        number,
        journal,
        journal_len: 0,
        snapshot_len: bytes.len() as u64,
        broken: false,
    };
    Ok(())
}

fn sealed_memfd(bytes: &[u8]) -> io::Result<Blob> {
    let mut writer = BlobWriter::new(bytes.len() as u64)?;
    writer.write(bytes)?;
    writer.finish()
}

/// All of a stored file, refusing one larger than `limit`. Read with
/// `pread` (the daemon maps nothing it reads).
fn read_all(fd: &OwnedFd, limit: usize) -> Result<Vec<u8>, String> {
    let size = rustix::fs::fstat(fd).map_err(|e| e.to_string())?.st_size as usize;
    if size > limit {
        return Err(format!("{size} bytes is more than the {limit} allowed"));
    }
    let mut bytes = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        match rustix::io::pread(fd, &mut bytes[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// Read a snapshot from a stored descriptor, refusing anything unsealed.
fn read_snapshot(fd: &OwnedFd) -> Result<Snapshot, String> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|e| format!("not a sealed memfd ({e})"))?;
    if !seals.contains(crate::blob::IMMUTABLE) {
        return Err("not sealed against writes".into());
    }
    let bytes = read_all(fd, MAX_SNAPSHOT_LEN + 8)?;
    decode_snapshot(&bytes).map_err(|e| e.to_string())
}

/// What [`restore`] brought back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub versions: usize,
    pub blobs: usize,
    /// Descriptors refused: foreign, unsealed, altered or unreferenced.
    pub dropped: usize,
    /// Bytes of the blobs whose content was hashed again, and how long
    /// that took: the part of a restart that grows with the data.
    pub verified_bytes: u64,
    pub verifying: std::time::Duration,
}

/// What the service manager passed back, sorted by kind.
#[derive(Default)]
struct Stored {
    catalogs: BTreeMap<u64, OwnedFd>,
    journals: BTreeMap<u64, OwnedFd>,
    /// By the name they were stored under.
    blobs: HashMap<String, OwnedFd>,
}

impl Stored {
    fn sort(passed: Vec<(String, OwnedFd)>, restored: &mut Restored) -> Stored {
        let mut stored = Stored::default();
        for (name, fd) in passed {
            let generation = |prefix: &str| name.strip_prefix(prefix)?.parse::<u64>().ok();
            if let Some(generation) = generation(CATALOG_PREFIX) {
                stored.catalogs.insert(generation, fd);
            } else if let Some(generation) = generation(JOURNAL_PREFIX) {
                stored.journals.insert(generation, fd);
            } else if parse_blob_name(&name).is_some() {
                if stored.blobs.insert(name.clone(), fd).is_some() {
                    warn!("fd store holds {name} twice; keeping one");
                }
            } else {
                warn!("dropping a foreign descriptor from the fd store: '{name}'");
                remove_fd(&name);
                restored.dropped += 1;
            }
        }
        stored
    }

    /// The newest readable snapshot with the records of its journal; every
    /// other snapshot and journal is dropped from the store.
    fn newest_catalog(&mut self) -> (Snapshot, Vec<JournalEntry>) {
        let mut chosen = None;
        for (generation, fd) in self.catalogs.iter().rev() {
            if chosen.is_some() {
                remove_fd(&catalog_name(*generation));
                continue;
            }
            match read_snapshot(fd) {
                Ok(snapshot) => chosen = Some((*generation, snapshot)),
                Err(e) => {
                    warn!("dropping catalog snapshot {generation} from the fd store: {e}");
                    remove_fd(&catalog_name(*generation));
                }
            }
        }
        let Some((generation, snapshot)) = chosen else {
            for generation in self.journals.keys() {
                remove_fd(&journal_name(*generation));
            }
            return (empty_snapshot(), Vec::new());
        };
        let mut entries = Vec::new();
        for (number, fd) in &self.journals {
            if *number != generation {
                remove_fd(&journal_name(*number));
                continue;
            }
            // A journal never outgrows its snapshot by much before it is
            // compacted; anything far larger is not ours.
            match read_all(fd, MAX_SNAPSHOT_LEN) {
                Ok(bytes) => {
                    let (records, used) = decode_journal(&bytes);
                    if used < bytes.len() {
                        warn!(
                            "the catalog journal ends in {} unreadable byte(s) (a write cut \
                             short by a crash); the changes before them are restored",
                            bytes.len() - used
                        );
                    }
                    entries = records;
                }
                Err(e) => warn!("cannot read the catalog journal {number}: {e}"),
            }
        }
        if !self.journals.contains_key(&generation) {
            warn!("catalog snapshot {generation} has no journal; restoring the snapshot alone");
        }
        (snapshot, entries)
    }
}

fn empty_snapshot() -> Snapshot {
    Snapshot {
        format: SNAPSHOT_FORMAT,
        generation: 0,
        forgotten: Vec::new(),
        names: Vec::new(),
    }
}

/// Turns stored versions into catalog versions, verifying each blob once.
struct BlobResolver {
    /// Stored blobs not looked at yet, by name.
    stored: HashMap<String, OwnedFd>,
    /// Blobs looked at, by what versions name them: `None` if missing or
    /// refused.
    verified: HashMap<BlobId, Option<Arc<Blob>>>,
    /// Names of verified blobs that stay in the store as they are.
    kept: HashSet<String>,
    daemon_uid: u32,
    restored: Restored,
}

/// A stored blob taken out of the store to be verified for a version.
struct Claimed {
    id: BlobId,
    name: String,
    key: BlobKey,
    size: u64,
    fd: OwnedFd,
}

/// What a stored version names as its blob: the hash and, from format 2
/// on, the owner.
type BlobId = (memseal_proto::Hash, Option<u32>);

impl BlobResolver {
    /// Verify the blobs of all of `versions` at once, one per CPU at a
    /// time: a restart's time is nearly all this hashing, and blobs of a
    /// few MiB keep one CPU busy each only part of the time.
    fn verify_all<'a>(&mut self, versions: impl IntoIterator<Item = &'a StoredVersion>) {
        let claimed: Vec<Claimed> = versions
            .into_iter()
            .filter_map(|stored| self.claim(stored))
            .collect();
        if claimed.is_empty() {
            return;
        }
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(claimed.len());
        let mut shares: Vec<Vec<Claimed>> = (0..workers).map(|_| Vec::new()).collect();
        for (i, blob) in claimed.into_iter().enumerate() {
            shares[i % workers].push(blob);
        }
        let started = std::time::Instant::now();
        let outcomes: Vec<_> = std::thread::scope(|scope| {
            let running: Vec<_> = shares
                .into_iter()
                .map(|share| {
                    scope.spawn(move || {
                        share
                            .into_iter()
                            .map(|c| {
                                let verified = Blob::reverify(c.fd, c.size, c.key);
                                (c.id, c.name, c.key, c.size, verified)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            running
                .into_iter()
                .flat_map(|worker| worker.join().expect("a verifying thread panicked"))
                .collect()
        });
        self.restored.verifying += started.elapsed();
        for (id, name, key, size, verified) in outcomes {
            let blob = match verified {
                Ok(blob) => {
                    self.restored.verified_bytes += size;
                    // Under another name now (an adopted blob of a format 1
                    // daemon): stored again under it later.
                    if blob_name(&key) == name {
                        self.kept.insert(name);
                    } else {
                        remove_fd(&name);
                    }
                    Some(Arc::new(blob))
                }
                Err(e) => {
                    warn!("dropping {name} from the fd store: {e}");
                    remove_fd(&name);
                    self.restored.dropped += 1;
                    None
                }
            };
            self.verified.insert(id, blob);
        }
    }

    /// Take the stored blob that `stored` names out of the store for
    /// verifying, unless it was looked at already. A blob that is not
    /// there is settled at once, as missing.
    fn claim(&mut self, stored: &StoredVersion) -> Option<Claimed> {
        let info = &stored.info;
        let id = (info.hash, stored.owner);
        if self.verified.contains_key(&id) {
            return None;
        }
        // Settled as missing unless verified below.
        self.verified.insert(id, None);
        // Format 1 snapshots did not record owners; their blobs all have
        // the plain name, and the inode tells the owner.
        let name = blob_name(&BlobKey {
            hash: info.hash,
            owner: stored.owner.unwrap_or(self.daemon_uid),
        });
        let fd = self.stored.remove(&name)?;
        let owner = match stored.owner {
            Some(owner) => owner,
            None => rustix::fs::fstat(&fd).ok()?.st_uid,
        };
        Some(Claimed {
            id,
            name,
            key: BlobKey {
                hash: info.hash,
                owner,
            },
            size: info.size,
            fd,
        })
    }

    fn version(&mut self, stored: &StoredVersion) -> Option<Version> {
        let info = &stored.info;
        let id = (info.hash, stored.owner);
        if !self.verified.contains_key(&id) {
            self.verify_all([stored]);
        }
        let blob = self.verified.get(&id).cloned().flatten()?;
        // A version may only rest on the daemon's inode or its own
        // publisher's; anything else (older daemons deduplicated across
        // users) is copied into a memfd of the daemon's own.
        let owner = blob.key().owner;
        let blob = if owner == self.daemon_uid || owner == info.publisher_uid {
            blob
        } else {
            match blob.copy_owned() {
                Ok(copy) => {
                    info!(
                        name = %info.name,
                        version = info.version,
                        "copied a version that rested on uid {owner}'s memfd into one of the \
                         daemon's own"
                    );
                    Arc::new(copy)
                }
                Err(e) => {
                    warn!(name = %info.name, "cannot copy a version off uid {owner}'s memfd: {e}");
                    return None;
                }
            }
        };
        Some(Version {
            info: info.clone(),
            blob,
            // Format 1 charged root's versions only as root; never the
            // daemon's own uid.
            charged: stored.charged && info.publisher_uid != self.daemon_uid,
        })
    }
}

/// Rebuild the catalog from descriptors the service manager passed back,
/// and return the fd store keeper, already holding a fresh snapshot of the
/// result.
pub fn restore(state: &State, passed: Vec<(String, OwnedFd)>) -> (Arc<FdStore>, Restored) {
    let started = std::time::Instant::now();
    let mut restored = Restored::default();
    let mut stored = Stored::sort(passed, &mut restored);
    let (snapshot, journal) = stored.newest_catalog();
    let mut resolver = BlobResolver {
        stored: std::mem::take(&mut stored.blobs),
        verified: HashMap::new(),
        kept: HashSet::new(),
        daemon_uid: rustix::process::geteuid().as_raw(),
        restored,
    };
    let journaled = journal.iter().filter_map(|entry| match entry {
        JournalEntry::Published(stored) => Some(stored),
        JournalEntry::Removed { .. } => None,
    });
    resolver.verify_all(
        snapshot
            .names
            .iter()
            .flat_map(|entry| &entry.versions)
            .chain(journaled),
    );
    state.with_catalog(|catalog| {
        replay_snapshot(catalog, &snapshot, &mut resolver);
        replay_journal(catalog, &journal, &mut resolver);
    });
    let mut restored = settle_blobs(state, resolver);
    restored.versions = state.with_catalog(|catalog| catalog.totals().versions as usize);

    let mut current = Generation {
        number: snapshot.generation,
        journal: rustix::fs::memfd_create("memseal-journal", MemfdFlags::CLOEXEC)
            .expect("a memfd for the journal"),
        journal_len: 0,
        snapshot_len: 0,
        broken: true,
    };
    if let Err(e) = compact(state, &mut current) {
        warn!("cannot keep the catalog in the fd store; a restart would lose it: {e}");
    }
    if restored != Restored::default() {
        info!(
            versions = restored.versions,
            blobs = restored.blobs,
            dropped = restored.dropped,
            verified_bytes = restored.verified_bytes,
            verify_us = restored.verifying.as_micros() as u64,
            took_us = started.elapsed().as_micros() as u64,
            "restored the catalog from the fd store"
        );
    }
    (
        Arc::new(FdStore {
            current: Mutex::new(current),
        }),
        restored,
    )
}

/// Put back every version of the snapshot whose blob verifies; the
/// numbers of those that do not stay used.
fn replay_snapshot(catalog: &mut Catalog, snapshot: &Snapshot, resolver: &mut BlobResolver) {
    catalog.restore_forgotten(&snapshot.forgotten);
    for entry in &snapshot.names {
        for version in &entry.versions {
            let restored = resolver
                .version(version)
                .is_some_and(|v| catalog.restore(v, entry.last_version));
            if !restored {
                catalog.restore_number(&entry.name, entry.last_version);
                warn!(
                    name = %version.info.name,
                    version = version.info.version,
                    "a stored version could not be restored"
                );
            }
        }
    }
}

/// Apply the changes recorded since the snapshot, in order.
fn replay_journal(catalog: &mut Catalog, journal: &[JournalEntry], resolver: &mut BlobResolver) {
    for entry in journal {
        match entry {
            JournalEntry::Published(stored) => {
                let number = stored.info.version;
                let restored = resolver
                    .version(stored)
                    .is_some_and(|version| catalog.restore(version, number));
                if !restored {
                    // Its blob may be gone because a later entry removes
                    // it; either way the number stays used.
                    catalog.restore_number(&stored.info.name, number);
                }
            }
            JournalEntry::Removed { name, version } => {
                // Not found: a version that could not be restored.
                let _ = catalog.remove(name, Some(*version));
            }
        }
    }
}

/// Make the fd store hold exactly the blobs the catalog now holds, each
/// under its current name, and count what was dropped.
fn settle_blobs(state: &State, resolver: BlobResolver) -> Restored {
    let mut restored = resolver.restored;
    let held: Vec<Arc<Blob>> = state.with_catalog(|catalog| catalog.blobs().cloned().collect());
    let held_names: HashSet<String> = held.iter().map(|blob| blob_name(&blob.key())).collect();
    for blob in &held {
        let name = blob_name(&blob.key());
        if !resolver.kept.contains(&name) {
            if let Err(e) = store_fd(&name, blob.fd()) {
                warn!("cannot keep {name} in the fd store: {e}");
            }
        }
    }
    let unreferenced = resolver
        .kept
        .iter()
        .filter(|name| !held_names.contains(*name))
        .chain(resolver.stored.keys());
    for name in unreferenced {
        warn!("dropping {name} from the fd store: no stored version refers to it");
        remove_fd(name);
        restored.dropped += 1;
    }
    restored.blobs = held.len();
    restored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_identify_blobs_catalogs_and_journals() {
        let me = rustix::process::geteuid().as_raw();
        let key = BlobKey {
            hash: [0xab; 32],
            owner: me + 1,
        };
        let name = blob_name(&key);
        assert_eq!(parse_blob_name(&name), Some((key.hash, Some(me + 1))));
        let own = blob_name(&BlobKey { owner: me, ..key });
        assert_eq!(own, format!("blob-{}", hash_to_hex(&key.hash)));
        assert_eq!(parse_blob_name(&own), Some((key.hash, None)));
        assert_eq!(parse_blob_name("blob-zz"), None);
        assert_eq!(catalog_name(7), "catalog-7");
        assert_eq!(journal_name(7), "journal-7");
    }

    #[test]
    fn snapshots_round_trip_through_a_sealed_memfd() {
        let snapshot = Snapshot {
            generation: 4,
            ..empty_snapshot()
        };
        let blob = sealed_memfd(&encode_snapshot(&snapshot)).unwrap();
        let fd = rustix::io::dup(blob.fd()).unwrap();
        assert_eq!(read_snapshot(&fd).unwrap(), snapshot);
        let unsealed = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::empty()).unwrap();
        assert!(read_snapshot(&unsealed).is_err());
    }
}
