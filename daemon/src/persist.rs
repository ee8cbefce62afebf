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
//! grown past the snapshot (and at least 1 MiB), the daemon starts a new
//! journal at once and writes a new snapshot on a thread of its own
//! ([`snapshot_in_background`]), so the work per change stays constant on
//! average however large the catalog is, and no change ever waits for a
//! snapshot.
//! The snapshot is read from the catalog one page at a time: a fetch never
//! waits for more than a page.
//!
//! While that snapshot is written, changes go on: a page read after a
//! change holds it, and the new journal records it too. Replaying a
//! journal over a snapshot is therefore idempotent: a version the
//! snapshot already holds (or one newer) is not put back twice, and a
//! removal of a version that is not there removes nothing. That is sound
//! because a name's version numbers only grow: each `(name, version)` is
//! published once and removed at most once, so the last record of it in
//! the journal decides, whatever the snapshot held.
//!
//! When the daemon restarts or crashes, systemd passes everything back in
//! `LISTEN_FDS`; [`restore`] takes the newest snapshot, replays every
//! journal from its generation on, in order, re-verifies each blob (seals,
//! size, owner, BLAKE3) and drops from the store whatever is foreign,
//! corrupt or no longer referenced, with a log line; nothing unverified is
//! ever served.
//!
//! Order matters for crash safety: a blob is stored before any journal
//! entry names it; a new journal is stored before any change is appended
//! to it, and before the snapshot it begins is read; a snapshot is stored
//! before the snapshot and journals it replaces are removed. So at every
//! instant the newest stored snapshot and the journals from its generation
//! on hold the whole catalog.

use crate::blob::{Blob, BlobKey, BlobWriter};
use crate::catalog::{Catalog, Change, Version};
use crate::state::{Observer, State};
use memseal_proto::codec::{
    decode_journal, decode_snapshot, encode_journal_entry, EncodedSnapshot, SnapshotEncoder,
    MAX_SNAPSHOT_LEN,
};
use memseal_proto::message::{hash_from_hex, hash_to_hex};
use memseal_proto::persisted::SNAPSHOT_FORMAT;
use memseal_proto::{JournalEntry, Snapshot, StoredVersion};
use rustix::fs::MemfdFlags;
use sd_notify::NotifyState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};
use tracing::{info, warn};

const BLOB_PREFIX: &str = "blob-";
const CATALOG_PREFIX: &str = "catalog-";
const JOURNAL_PREFIX: &str = "journal-";

/// The journal is compacted into a new snapshot once it is larger than
/// the snapshot and than this.
const JOURNAL_MIN: u64 = 1 << 20;

/// The largest stored snapshot a restart reads: the encoding's limit and
/// its magic.
const SNAPSHOT_READ_LIMIT: usize = MAX_SNAPSHOT_LEN + memseal_proto::codec::SNAPSHOT_MAGIC.len();

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

/// The snapshots and journals in the store, and the journal changes go to.
struct Generation {
    /// The number of the journal changes are appended to. The snapshot of
    /// the same number is stored, being written, or failed to be written.
    number: u64,
    /// None until a journal could be started: `restore` starts one before
    /// anything is served.
    journal: Option<OwnedFd>,
    journal_len: u64,
    /// The newest snapshot in the store, and its length.
    snapshot: Option<u64>,
    snapshot_len: u64,
    /// Journals in the store, oldest first; the last is `journal` unless
    /// storing it failed.
    journals: Vec<u64>,
    /// An append failed: the journal may miss a change, so the next change
    /// starts a new snapshot, which will hold it.
    broken: bool,
    /// A snapshot of generation `number` is being written.
    compacting: bool,
}

impl Generation {
    /// A new snapshot is due and none is being written.
    fn compaction_due(&self) -> bool {
        !self.compacting && (self.broken || self.journal_len > self.snapshot_len.max(JOURNAL_MIN))
    }

    /// Append changes from now on to a new, empty journal, stored first.
    /// On failure nothing changes: the old journal goes on.
    fn start_journal(&mut self) -> io::Result<()> {
        let number = self.number + 1;
        let journal = rustix::fs::memfd_create("memseal-journal", MemfdFlags::CLOEXEC)?;
        store_fd(&journal_name(number), journal.as_fd())?;
        self.journals.push(number);
        self.number = number;
        self.journal = Some(journal);
        self.journal_len = 0;
        self.broken = false;
        Ok(())
    }

    /// Snapshot `number` is stored: drop the snapshot and journals it
    /// replaces from the store.
    fn snapshot_stored(&mut self, number: u64, len: u64) {
        if let Some(previous) = self.snapshot.replace(number) {
            remove_fd(&catalog_name(previous));
        }
        self.snapshot_len = len;
        for old in self.journals.iter().filter(|journal| **journal < number) {
            remove_fd(&journal_name(*old));
        }
        self.journals.retain(|journal| *journal >= number);
    }
}

/// Keeps the fd store in step with the catalog.
pub struct FdStore {
    current: Mutex<Generation>,
    /// The state whose catalog the snapshots hold; weak, for the state
    /// holds this keeper among its observers.
    state: Weak<State>,
}

impl FdStore {
    /// An observer for [`State::observe`]: store new blobs, journal the
    /// changes, drop dropped blobs.
    pub fn observer(self: Arc<Self>) -> Observer {
        Box::new(move |_, changes| self.apply(changes))
    }

    fn generation(&self) -> std::sync::MutexGuard<'_, Generation> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(self: &Arc<Self>, changes: &[Change]) {
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
        let mut current = self.generation();
        if !records.is_empty() {
            let appended = match &current.journal {
                Some(journal) => append(journal, current.journal_len, &records),
                None => Err(io::Error::other("no journal could be started")),
            };
            if let Err(e) = appended {
                warn!("cannot append to the catalog journal ({e}); writing a full snapshot");
                current.broken = true;
            }
            current.journal_len += records.len() as u64;
        }
        let mut snapshot_due = None;
        if current.compaction_due() {
            match current.start_journal() {
                Ok(()) => {
                    current.compacting = true;
                    snapshot_due = Some(current.number);
                }
                Err(e) => {
                    warn!("cannot start a new catalog journal ({e}); a restart would lose changes")
                }
            }
        }
        drop(current);
        if let Some(number) = snapshot_due {
            snapshot_in_background(self.clone(), number);
        }
        let added = blob_names(changes, |change| match change {
            Change::BlobAdded(blob) => Some(blob),
            _ => None,
        });
        for name in dropped.iter().filter(|name| !added.contains(name)) {
            remove_fd(name);
        }
    }

    /// Write snapshot `number` of the catalog as it is now and store it;
    /// the journal of the same number was started before this began.
    fn write_snapshot(&self, state: &State, number: u64) {
        let started = std::time::Instant::now();
        let outcome = snapshot_of(state, number).and_then(|encoded| {
            let sealed = sealed_memfd(&[&encoded.head, &encoded.names])?;
            store_fd(&catalog_name(number), sealed.fd())?;
            Ok(encoded.len() as u64)
        });
        let mut current = self.generation();
        match outcome {
            Ok(len) => {
                current.snapshot_stored(number, len);
                info!(
                    generation = number,
                    bytes = len,
                    took_ms = started.elapsed().as_millis() as u64,
                    "stored a snapshot of the catalog"
                );
            }
            // The older snapshot and every journal since stay: a restart
            // replays them all.
            Err(e) => warn!("cannot store a snapshot of the catalog in the fd store: {e}"),
        }
        current.compacting = false;
    }
}

/// Write snapshot `number` on a thread of its own, so that the change
/// that made it due, and every change after, only appends to the journal.
fn snapshot_in_background(store: Arc<FdStore>, number: u64) {
    let Some(state) = store.state.upgrade() else {
        // The daemon is going away: the journals in the store already
        // hold every change.
        store.generation().compacting = false;
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("memseal-snapshot".to_owned())
        .spawn({
            let (store, state) = (store.clone(), state.clone());
            move || store.write_snapshot(&state, number)
        });
    if let Err(e) = spawned {
        warn!("cannot start a thread for the catalog snapshot ({e}); writing it now");
        store.write_snapshot(&state, number);
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

/// The catalog, read one page at a time, encoded as snapshot `number`.
/// Changes may land between pages: the journal of the same number, started
/// before the first page was read, records them all. Each page is encoded
/// as soon as it is read, so the catalog is held once more only in its
/// encoding.
fn snapshot_of(state: &State, number: u64) -> io::Result<EncodedSnapshot> {
    let mut encoder = SnapshotEncoder::new(SNAPSHOT_FORMAT, number);
    let mut cursor: Option<String> = None;
    loop {
        let (page, next) =
            state.with_catalog(|catalog| catalog.snapshot_page(cursor.as_deref(), SNAPSHOT_PAGE));
        for name in &page {
            encoder.push(name);
        }
        match next {
            Some(name) => cursor = Some(name),
            None => break,
        }
    }
    let forgotten = state.with_catalog(|catalog| catalog.forgotten());
    let encoded = encoder.finish(&forgotten);
    if encoded.len() > SNAPSHOT_READ_LIMIT {
        return Err(io::Error::other(format!(
            "the snapshot is {} bytes, more than the {SNAPSHOT_READ_LIMIT} a restart reads",
            encoded.len()
        )));
    }
    Ok(encoded)
}

/// A sealed memfd holding `parts`, one after the other.
fn sealed_memfd(parts: &[&[u8]]) -> io::Result<Blob> {
    let size = parts.iter().map(|part| part.len() as u64).sum();
    let mut writer = BlobWriter::new(size)?;
    for part in parts {
        writer.write(part)?;
    }
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
    let bytes = read_all(fd, SNAPSHOT_READ_LIMIT)?;
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

    /// The newest readable snapshot with the records of every journal from
    /// its generation on, in order, and the generations of those journals;
    /// every older snapshot and journal is dropped from the store.
    fn newest_catalog(&mut self) -> (Snapshot, Vec<JournalEntry>, Vec<u64>) {
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
            return (empty_snapshot(), Vec::new(), Vec::new());
        };
        let mut entries = Vec::new();
        let mut replayed = Vec::new();
        for (number, fd) in &self.journals {
            if *number < generation {
                remove_fd(&journal_name(*number));
                continue;
            }
            // Journals follow one another without gaps: a new one is
            // stored before anything is appended to it.
            let expected = replayed.last().map_or(generation, |last| last + 1);
            if *number != expected {
                warn!(
                    "the fd store has no catalog journal {expected}; changes recorded there \
                     are lost"
                );
            }
            replayed.push(*number);
            // A journal never outgrows its snapshot by much before the
            // next is started; anything far larger is not ours.
            match read_all(fd, MAX_SNAPSHOT_LEN) {
                Ok(bytes) => {
                    let (records, used) = decode_journal(&bytes);
                    if used < bytes.len() {
                        warn!(
                            "the catalog journal {number} ends in {} unreadable byte(s) (a write \
                             cut short by a crash); the changes before them are restored",
                            bytes.len() - used
                        );
                    }
                    entries.extend(records);
                }
                Err(e) => warn!("cannot read the catalog journal {number}: {e}"),
            }
        }
        if !self.journals.contains_key(&generation) {
            warn!("catalog snapshot {generation} has no journal; restoring the snapshot alone");
        }
        (snapshot, entries, replayed)
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
pub fn restore(state: &Arc<State>, passed: Vec<(String, OwnedFd)>) -> (Arc<FdStore>, Restored) {
    let started = std::time::Instant::now();
    let mut restored = Restored::default();
    let mut stored = Stored::sort(passed, &mut restored);
    let (snapshot, journal, journals) = stored.newest_catalog();
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
        let missing = replay_snapshot(catalog, &snapshot, &mut resolver);
        replay_journal(catalog, &journal, &mut resolver);
        warn_of_lost_versions(missing, &journal);
    });
    let mut restored = settle_blobs(state, resolver);
    restored.versions = state.with_catalog(|catalog| catalog.totals().versions as usize);

    // The next generation comes after every one in the store; until its
    // snapshot is stored, the one restored and its journals stay.
    let number = journals
        .last()
        .copied()
        .unwrap_or(0)
        .max(snapshot.generation);
    let current = Generation {
        number,
        journal: None,
        journal_len: 0,
        snapshot: (snapshot.generation > 0).then_some(snapshot.generation),
        snapshot_len: 0,
        journals,
        broken: true,
        compacting: false,
    };
    let store = Arc::new(FdStore {
        current: Mutex::new(current),
        state: Arc::downgrade(state),
    });
    // The restore's own snapshot, before anything is served.
    let journal_started = store.generation().start_journal();
    match journal_started {
        Ok(()) => {
            let number = store.generation().number;
            store.write_snapshot(state, number);
        }
        Err(e) => warn!("cannot keep the catalog in the fd store; a restart would lose it: {e}"),
    }
    report(&restored, started);
    (store, restored)
}

/// The restore's log line, if it brought anything back or dropped anything.
fn report(restored: &Restored, started: std::time::Instant) {
    if *restored != Restored::default() {
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
}

/// Put back every version of the snapshot whose blob verifies; the
/// numbers of those that do not stay used. Returns the versions that could
/// not be put back.
fn replay_snapshot(
    catalog: &mut Catalog,
    snapshot: &Snapshot,
    resolver: &mut BlobResolver,
) -> Vec<(String, u64)> {
    catalog.restore_forgotten(&snapshot.forgotten);
    let mut missing = Vec::new();
    for entry in &snapshot.names {
        for version in &entry.versions {
            let restored = resolver
                .version(version)
                .is_some_and(|v| catalog.restore(v, entry.last_version));
            if !restored {
                catalog.restore_number(&entry.name, entry.last_version);
                missing.push((version.info.name.clone(), version.info.version));
            }
        }
    }
    missing
}

/// Apply the changes recorded since the snapshot, in order. A version the
/// catalog already holds, or a removal of one it does not, changes
/// nothing (see the module documentation).
fn replay_journal(catalog: &mut Catalog, journal: &[JournalEntry], resolver: &mut BlobResolver) {
    for entry in journal {
        match entry {
            JournalEntry::Published(stored) => {
                let number = stored.info.version;
                let restored = resolver
                    .version(stored)
                    .is_some_and(|version| catalog.restore(version, number));
                if !restored {
                    // Already held; or its blob is gone because a later
                    // entry removes it. Either way the number stays used.
                    catalog.restore_number(&stored.info.name, number);
                }
            }
            JournalEntry::Removed { name, version } => {
                // Not found: a version that could not be restored, or one
                // removed before the snapshot's page was read.
                let _ = catalog.remove(name, Some(*version));
            }
        }
    }
}

/// Warn of each snapshot version that could not be put back, unless the
/// journal removes it anyway (a snapshot written while changes went on
/// may hold a version whose blob left the store before a crash).
fn warn_of_lost_versions(missing: Vec<(String, u64)>, journal: &[JournalEntry]) {
    let removed: HashSet<(&str, u64)> = journal
        .iter()
        .filter_map(|entry| match entry {
            JournalEntry::Removed { name, version } => Some((name.as_str(), *version)),
            JournalEntry::Published(_) => None,
        })
        .collect();
    for (name, version) in missing {
        if !removed.contains(&(name.as_str(), version)) {
            warn!(name = %name, version, "a stored version could not be restored");
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
        let blob = sealed_memfd(&[&memseal_proto::codec::encode_snapshot(&snapshot)]).unwrap();
        let fd = rustix::io::dup(blob.fd()).unwrap();
        assert_eq!(read_snapshot(&fd).unwrap(), snapshot);
        let unsealed = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::empty()).unwrap();
        assert!(read_snapshot(&unsealed).is_err());
    }
}
