//! The catalog: which names exist, their versions, and the blobs behind
//! them, with the budgets that bound it all.
//!
//! The catalog is plain data behind one mutex (see [`crate::state`]). No
//! method blocks or does I/O, and none takes time that grows with the size
//! of the catalog, except on a path no client can trigger (a blob found
//! broken, see [`Catalog::publish`]): every lookup is a map access, a
//! listing is one bounded page, and the totals are kept as counters. So
//! however large the catalog, holding the lock is always brief.
//!
//! # Two indexes of names
//!
//! Names are kept twice, sharing one allocation per name: a hash map from
//! the name to its entry, which every fetch, publish and remove uses, and
//! an ordered set of the names, which only listings and snapshot pages
//! walk. A lookup in an ordered tree compares the name with a key at each
//! of its levels, and at a million names each of those keys is a miss to
//! cold memory; the hash map costs one probe whatever the size. It is
//! split into shards that grow one at a time, so no insert ever moves
//! more than a small share of the names (see `Names`).
//!
//! # Versions without tombstones
//!
//! A name exists while it has a kept version. When its last version goes,
//! the name is forgotten entirely, and the highest number it reached is
//! folded into one slot of a fixed table
//! ([`memseal_proto::persisted::FORGOTTEN_SLOTS`] numbers): a name that
//! appears (again, or for the first time) starts above its slot's number.
//! So a version number is never reused for a name, most new names still
//! start at 1, and a removed name costs nothing, whatever sequence of
//! publishes and removes a client sends.
//!
//! # Accounting
//!
//! Budgets count distinct content: a blob shared by several names or
//! versions is counted once, and its bytes are released when the last
//! version that refers to it goes away (clients that still hold its
//! descriptor keep the memory alive, which the kernel charges to its
//! writer regardless; budgets can only be honest about what the catalog
//! holds). Space is reserved *before* a memfd is created, so a publish
//! that would exceed a budget is refused without allocating anything, and
//! nothing is ever evicted to make room. Publishers may use every budget
//! to its end; everyone else together only up to the share left after
//! [`Budget::publisher_reserve_percent`], so no number of other users can
//! lock the publishers out.

use crate::blob::{Blob, BlobKey};
use memseal_proto::persisted::{forgotten_slot, FORGOTTEN_SLOTS};
use memseal_proto::{AssetInfo, ErrorCode, Selector, SnapshotName, StoredVersion};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::ops::Bound;
use std::sync::Arc;

/// Limits the catalog enforces.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Largest single asset.
    pub max_asset_size: u64,
    /// Total bytes of distinct content, reservations included.
    pub max_total_bytes: u64,
    /// Versions kept per name; older ones drop out as new ones arrive.
    pub keep_versions: usize,
    /// Bytes of kept versions one uid may have published (each version
    /// counted at its full size), unless it is a publisher.
    pub max_bytes_per_uid: u64,
    /// Kept versions one uid may have published, unless a publisher.
    pub max_assets_per_uid: u64,
    /// Distinct blobs (memfds) held at most. Each one also takes a slot
    /// in the service manager's fd store, which is bounded.
    pub max_blobs: u64,
    /// Kept versions over all names: what bounds the catalog's memory and
    /// the size of its persisted snapshot.
    pub max_versions: u64,
    /// The part of `max_total_bytes`, `max_blobs` and `max_versions` (and
    /// of the connection limit) that users who are not publishers cannot
    /// take, in percent.
    pub publisher_reserve_percent: u8,
}

impl Budget {
    /// What all non-publishers together may fill of `limit`.
    pub fn users_share(&self, limit: u64) -> u64 {
        let reserve = u128::from(limit) * u128::from(self.publisher_reserve_percent.min(100)) / 100;
        limit - reserve as u64
    }
}

/// Budget promised to one publish in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub size: u64,
    /// The publisher's uid, or None for a publisher (root, the daemon's
    /// uid, the configured publisher users and groups), which is held to
    /// the global limits only.
    pub uid: Option<u32>,
}

/// What one uid holds and has in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub versions: u64,
    pub reserved_bytes: u64,
    pub reserved_versions: u64,
}

/// One kept version of a name.
#[derive(Debug, Clone)]
pub struct Version {
    pub info: AssetInfo,
    pub blob: Arc<Blob>,
    /// Whether the version counts against its publisher's per-uid budget
    /// (it does unless the publisher was a publisher in the policy's sense).
    pub charged: bool,
}

#[derive(Debug)]
struct NameEntry {
    /// The highest version given to this name since it last appeared.
    last_version: u64,
    /// Oldest first; never empty (an entry without versions is removed).
    versions: VecDeque<Version>,
}

impl NameEntry {
    /// A name that appears, numbered from `floor` on.
    fn new(floor: u64) -> Self {
        NameEntry {
            last_version: floor,
            // Room for one version: most names keep only one, and a deque's
            // first growth would make room for four (over 300 bytes more
            // per name).
            versions: VecDeque::with_capacity(1),
        }
    }
}

/// The names that have at least one kept version, findable by name in one
/// probe and walkable in name order (see the module documentation). Every
/// change goes through [`Names::get_or_insert`] and [`Names::remove`], so the two
/// indexes always hold the same names.
///
/// The by-name index is split into [`NAME_SHARDS`] hash tables, each of
/// which grows on its own: a hash table that outgrows itself moves every
/// entry to a larger one at once, under the catalog's lock, and one table
/// of a million names took 217 ms to do it (every fetch waited). A shard
/// holds a 256th of the names, so its growth takes a 256th of that.
#[derive(Debug)]
struct Names {
    shards: Box<[HashMap<Arc<str>, NameEntry>]>,
    /// Picks a name's shard. Keyed, like the shards' own hashers: clients
    /// choose the names, and must not be able to pile them into one shard.
    picker: RandomState,
    len: usize,
    order: BTreeSet<Arc<str>>,
}

/// Shards of the by-name index (see [`Names`]).
const NAME_SHARDS: usize = 256;

impl Default for Names {
    fn default() -> Self {
        Names {
            shards: (0..NAME_SHARDS).map(|_| HashMap::new()).collect(),
            picker: RandomState::new(),
            len: 0,
            order: BTreeSet::new(),
        }
    }
}

impl Names {
    fn len(&self) -> usize {
        self.len
    }

    fn shard(&self, name: &str) -> usize {
        // The hash's top bits: the shard's own table uses its low bits.
        (self.picker.hash_one(name) >> (u64::BITS - NAME_SHARDS.ilog2())) as usize
    }

    fn get(&self, name: &str) -> Option<&NameEntry> {
        self.shards[self.shard(name)].get(name)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut NameEntry> {
        let shard = self.shard(name);
        self.shards[shard].get_mut(name)
    }

    /// The entry of `name`, added with `new` if the name has none.
    fn get_or_insert(&mut self, name: &str, new: impl FnOnce() -> NameEntry) -> &mut NameEntry {
        let shard = &mut self.shards[self.shard(name)];
        // Looked up before it is inserted, so that publishing a name that
        // exists allocates no key.
        if !shard.contains_key(name) {
            let key: Arc<str> = Arc::from(name);
            self.order.insert(key.clone());
            shard.insert(key, new());
            self.len += 1;
        }
        shard.get_mut(name).expect("inserted above")
    }

    fn remove(&mut self, name: &str) -> Option<NameEntry> {
        let shard = self.shard(name);
        let removed = self.shards[shard].remove(name)?;
        self.order.remove(name);
        self.len -= 1;
        Some(removed)
    }

    /// Whether both indexes hold exactly the same names, each in its shard.
    #[cfg(test)]
    fn agree(&self) -> bool {
        self.order.len() == self.len
            && self.shards.iter().map(HashMap::len).sum::<usize>() == self.len
            && self.order.iter().all(|name| {
                self.shards[self.shard(name)]
                    .get_key_value(&**name)
                    .is_some_and(|(key, _)| Arc::ptr_eq(key, name))
            })
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut NameEntry> {
        self.shards.iter_mut().flat_map(HashMap::values_mut)
    }

    /// Names after `lower`, in order, with their entries.
    fn range_from<'a>(
        &'a self,
        lower: Bound<&str>,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a NameEntry)> + 'a {
        self.order
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|name| (name, &self.shards[self.shard(name)][name]))
    }
}

#[derive(Debug)]
struct BlobEntry {
    blob: Arc<Blob>,
    /// How many kept versions refer to this blob.
    references: usize,
}

/// Something that changed, for whoever mirrors the catalog (the fd store,
/// watchers).
#[derive(Debug, Clone)]
pub enum Change {
    /// A blob not held before is now held.
    BlobAdded(Arc<Blob>),
    /// No kept version refers to this blob any more.
    BlobDropped(Arc<Blob>),
    /// A new version became visible.
    Published(Version),
    /// A version stopped being visible (removed or superseded).
    Removed(AssetInfo),
}

/// A refusal, with the wire code it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogError {
    pub code: ErrorCode,
    pub message: String,
}

impl CatalogError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CatalogError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Totals, for status lines and `memseal status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub names: u64,
    pub versions: u64,
    pub blobs: u64,
    pub bytes: u64,
}

/// Names, their kept versions and the deduplicated blobs behind them, with
/// the budgets and per-uid accounting that bound them.
#[derive(Debug)]
pub struct Catalog {
    budget: Budget,
    /// Only names with at least one kept version.
    names: Names,
    blobs: HashMap<BlobKey, BlobEntry>,
    /// Slot `forgotten_slot(name)` is at least the highest number any
    /// forgotten name of that slot reached.
    forgotten: Box<[u64]>,
    /// Kept versions over all names.
    versions: u64,
    /// Bytes of distinct blobs held.
    bytes: u64,
    /// Bytes promised to publishes in progress.
    reserved: u64,
    /// Publishes in progress, each of which may add a blob and a version.
    reserved_publishes: u64,
    /// Per non-publisher uid, only while it holds or reserves something.
    usage: HashMap<u32, Usage>,
    /// The owner of the memfds this process creates.
    daemon_uid: u32,
}

impl Catalog {
    pub fn new(budget: Budget) -> Self {
        Catalog {
            budget,
            names: Names::default(),
            blobs: HashMap::new(),
            forgotten: vec![0; FORGOTTEN_SLOTS].into_boxed_slice(),
            versions: 0,
            bytes: 0,
            reserved: 0,
            reserved_publishes: 0,
            usage: HashMap::new(),
            daemon_uid: rustix::process::geteuid().as_raw(),
        }
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Promise `claim.size` bytes to a publish about to start, or refuse it.
    pub fn reserve(&mut self, claim: Claim) -> Result<(), CatalogError> {
        let size = claim.size;
        let budget = self.budget;
        if size > budget.max_asset_size {
            return Err(CatalogError::new(
                ErrorCode::TooLarge,
                format!(
                    "{size} bytes exceeds the maximum asset size of {} bytes",
                    budget.max_asset_size
                ),
            ));
        }
        // Publishers may fill each limit; others only their shared part.
        let (limit_of, whose): (fn(&Budget, u64) -> u64, &str) = match claim.uid {
            None => (|_, limit| limit, ""),
            Some(_) => (
                Budget::users_share,
                " for users who are not publishers (the rest is reserved for publishers)",
            ),
        };
        let in_use = self.bytes + self.reserved;
        let bytes_limit = limit_of(&budget, budget.max_total_bytes);
        if in_use.saturating_add(size) > bytes_limit {
            return Err(CatalogError::new(
                ErrorCode::OverBudget,
                format!(
                    "{size} bytes would exceed the total budget{whose}: {in_use} of {bytes_limit} \
                     bytes in use (remove assets to make room; nothing is evicted automatically)"
                ),
            ));
        }
        let blobs = self.blobs.len() as u64 + self.reserved_publishes;
        let blobs_limit = limit_of(&budget, budget.max_blobs);
        if blobs >= blobs_limit {
            return Err(CatalogError::new(
                ErrorCode::OverBudget,
                format!(
                    "the daemon holds {blobs} of the {blobs_limit} distinct assets allowed{whose} \
                     (max_blobs); remove some first"
                ),
            ));
        }
        let versions = self.versions + self.reserved_publishes;
        let versions_limit = limit_of(&budget, budget.max_versions);
        if versions >= versions_limit {
            return Err(CatalogError::new(
                ErrorCode::OverBudget,
                format!(
                    "the catalog holds {versions} of the {versions_limit} versions allowed{whose} \
                     (max_versions); remove some first"
                ),
            ));
        }
        if let Some(uid) = claim.uid {
            let usage = self.usage.get(&uid).copied().unwrap_or_default();
            let bytes = usage.bytes + usage.reserved_bytes;
            if bytes.saturating_add(size) > budget.max_bytes_per_uid {
                return Err(CatalogError::new(
                    ErrorCode::OverBudget,
                    format!(
                        "{size} bytes would exceed the budget of uid {uid}: {bytes} of {} bytes in use",
                        budget.max_bytes_per_uid
                    ),
                ));
            }
            let versions = usage.versions + usage.reserved_versions;
            if versions >= budget.max_assets_per_uid {
                return Err(CatalogError::new(
                    ErrorCode::OverBudget,
                    format!(
                        "uid {uid} already holds {versions} of its {} asset versions",
                        budget.max_assets_per_uid
                    ),
                ));
            }
            let usage = self.usage.entry(uid).or_default();
            usage.reserved_bytes += size;
            usage.reserved_versions += 1;
        }
        self.reserved += size;
        self.reserved_publishes += 1;
        Ok(())
    }

    /// Give back a reservation whose publish failed, was abandoned or is
    /// being turned into a version.
    pub fn release(&mut self, claim: Claim) {
        debug_assert!(self.reserved >= claim.size);
        self.reserved -= claim.size;
        self.reserved_publishes -= 1;
        if let Some(uid) = claim.uid {
            if let Some(usage) = self.usage.get_mut(&uid) {
                usage.reserved_bytes -= claim.size;
                usage.reserved_versions -= 1;
                self.forget_idle(uid);
            }
        }
    }

    /// What `uid` holds and has in flight.
    #[cfg(test)]
    fn usage(&self, uid: u32) -> Usage {
        self.usage.get(&uid).copied().unwrap_or_default()
    }

    /// Drop the accounting of a uid that holds and reserves nothing, so
    /// the map stays as small as the set of users with assets.
    fn forget_idle(&mut self, uid: u32) {
        if self.usage.get(&uid) == Some(&Usage::default()) {
            self.usage.remove(&uid);
        }
    }

    fn charge(&mut self, version: &Version) {
        self.versions += 1;
        if version.charged {
            let usage = self.usage.entry(version.info.publisher_uid).or_default();
            usage.bytes += version.info.size;
            usage.versions += 1;
        }
    }

    fn uncharge(&mut self, version: &Version) {
        self.versions -= 1;
        let uid = version.info.publisher_uid;
        if let (true, Some(usage)) = (version.charged, self.usage.get_mut(&uid)) {
            usage.bytes -= version.info.size;
            usage.versions -= 1;
            self.forget_idle(uid);
        }
    }

    /// Make `blob` the newest version of `name`, consuming the reservation
    /// `claim` made for it. Identical content already held is shared
    /// instead (see [`BlobKey`] for when content counts as identical).
    /// Versions beyond the budget's `keep_versions` drop out.
    ///
    /// Before a held blob is shared, its seals and size are checked again;
    /// one that fails (which the kernel's seals should make impossible) is
    /// dropped from the catalog with every version that refers to it,
    /// never served again. That scan of every name is the one operation
    /// whose time grows with the catalog, and no client can cause it.
    pub fn publish(
        &mut self,
        name: &str,
        blob: Blob,
        claim: Claim,
        publisher_uid: u32,
        published_ms: u64,
    ) -> (AssetInfo, Vec<Change>) {
        debug_assert_eq!(claim.size, blob.size());
        self.release(claim);
        let mut changes = Vec::new();
        let blob = self.hold(blob, &mut changes);
        let floor = self.forgotten[forgotten_slot(name)];
        let entry = self.names.get_or_insert(name, || NameEntry::new(floor));
        entry.last_version += 1;
        let info = AssetInfo {
            name: name.to_owned(),
            version: entry.last_version,
            size: blob.size(),
            hash: *blob.hash(),
            published_ms,
            publisher_uid,
        };
        let version = Version {
            info: info.clone(),
            blob: blob.clone(),
            charged: claim.uid.is_some(),
        };
        // Superseded versions go before the new one comes, so a deque
        // never grows past the versions kept.
        let keep = self.budget.keep_versions.max(1);
        let excess = (entry.versions.len() + 1).saturating_sub(keep);
        let superseded: Vec<Version> = entry.versions.drain(..excess).collect();
        entry.versions.push_back(version.clone());
        self.charge(&version);
        changes.push(Change::Published(version));
        for old in superseded {
            self.unhold(old, &mut changes);
        }
        (info, changes)
    }

    /// Like [`Catalog::publish`], unless the newest version of `name`
    /// already has this content: then nothing changes and that version is
    /// returned with `false`. Declared assets are republished this way on
    /// every reload without piling up identical versions.
    pub fn publish_if_changed(
        &mut self,
        name: &str,
        blob: Blob,
        claim: Claim,
        publisher_uid: u32,
        published_ms: u64,
    ) -> ((AssetInfo, bool), Vec<Change>) {
        if let Ok(latest) = self.find(name, Selector::Latest) {
            if latest.info.hash == *blob.hash() {
                let info = latest.info.clone();
                self.release(claim);
                return ((info, false), Vec::new());
            }
        }
        let (info, changes) = self.publish(name, blob, claim, publisher_uid, published_ms);
        ((info, true), changes)
    }

    /// Restore a version exactly as it was (after a restart), with the
    /// name's highest number. Refuses a version not newer than the newest
    /// one present for the name.
    pub fn restore(&mut self, version: Version, last_version: u64) -> bool {
        let name = version.info.name.as_str();
        let newest = self.names.get(name).and_then(|entry| entry.versions.back());
        if newest.is_some_and(|v| v.info.version >= version.info.version) {
            return false;
        }
        let floor = self.forgotten[forgotten_slot(name)];
        let entry = self.names.get_or_insert(name, || NameEntry::new(floor));
        entry.last_version = entry
            .last_version
            .max(last_version)
            .max(version.info.version);
        entry.versions.push_back(version.clone());
        self.charge(&version);
        let slot = self
            .blobs
            .entry(version.blob.key())
            .or_insert_with(|| BlobEntry {
                blob: version.blob.clone(),
                references: 0,
            });
        if slot.references == 0 {
            self.bytes += version.blob.size();
        }
        slot.references += 1;
        true
    }

    /// Put back slots of the forgotten-names table (after a restart).
    pub fn restore_forgotten(&mut self, slots: &[(u32, u64)]) {
        for &(slot, number) in slots {
            if let Some(kept) = self.forgotten.get_mut(slot as usize) {
                *kept = (*kept).max(number);
            }
        }
    }

    /// The non-zero slots of the forgotten-names table, for the snapshot.
    pub fn forgotten(&self) -> Vec<(u32, u64)> {
        self.forgotten
            .iter()
            .enumerate()
            .filter(|(_, number)| **number > 0)
            .map(|(slot, number)| (slot as u32, *number))
            .collect()
    }

    /// Remember that `name` reached `number` although no version of that
    /// number could be restored (its blob was lost or refused), so the
    /// number is never given again.
    pub fn restore_number(&mut self, name: &str, number: u64) {
        match self.names.get_mut(name) {
            Some(entry) => entry.last_version = entry.last_version.max(number),
            None => self.forget(name, number),
        }
    }

    /// Fold a name that lost its last version into the forgotten table.
    fn forget(&mut self, name: &str, last_version: u64) {
        let slot = &mut self.forgotten[forgotten_slot(name)];
        *slot = (*slot).max(last_version);
    }

    /// The blob for a new version by `publisher`: an identical one already
    /// held, if one may stand in (the daemon's own, or one owned by the
    /// same user), else `blob` itself.
    fn hold(&mut self, blob: Blob, changes: &mut Vec<Change>) -> Arc<Blob> {
        let daemons = BlobKey {
            hash: *blob.hash(),
            owner: self.daemon_uid,
        };
        for key in [daemons, blob.key()] {
            let Some(existing) = self.blobs.get_mut(&key) else {
                continue;
            };
            if existing.blob.intact() {
                existing.references += 1;
                // The new memfd is dropped here: identical content is
                // stored once.
                return existing.blob.clone();
            }
            tracing::error!(
                blob = %memseal_proto::message::hash_to_hex(&key.hash),
                owner = key.owner,
                "a held blob lost its seals or its size; dropping it and every version that \
                 refers to it"
            );
            self.discard(key, changes);
        }
        let blob = Arc::new(blob);
        self.bytes += blob.size();
        self.blobs.insert(
            blob.key(),
            BlobEntry {
                blob: blob.clone(),
                references: 1,
            },
        );
        changes.push(Change::BlobAdded(blob.clone()));
        blob
    }

    /// Remove every version backed by the blob `key`, and the blob.
    fn discard(&mut self, key: BlobKey, changes: &mut Vec<Change>) {
        let mut doomed = Vec::new();
        for entry in self.names.values_mut() {
            let (bad, good): (VecDeque<Version>, VecDeque<Version>) =
                entry.versions.drain(..).partition(|v| v.blob.key() == key);
            entry.versions = good;
            doomed.extend(bad);
        }
        let emptied: Vec<(Arc<str>, u64)> = self
            .names
            .range_from(Bound::Unbounded)
            .filter(|(_, entry)| entry.versions.is_empty())
            .map(|(name, entry)| (name.clone(), entry.last_version))
            .collect();
        for (name, last_version) in emptied {
            self.names.remove(&name);
            self.forget(&name, last_version);
        }
        for version in doomed {
            self.unhold(version, changes);
        }
    }

    fn unhold(&mut self, version: Version, changes: &mut Vec<Change>) {
        self.uncharge(&version);
        changes.push(Change::Removed(version.info));
        let key = version.blob.key();
        let Some(entry) = self.blobs.get_mut(&key) else {
            return;
        };
        entry.references -= 1;
        if entry.references == 0 {
            let entry = self.blobs.remove(&key).expect("entry exists");
            self.bytes -= entry.blob.size();
            changes.push(Change::BlobDropped(entry.blob));
        }
    }

    /// The version a selector picks.
    pub fn find(&self, name: &str, selector: Selector) -> Result<&Version, CatalogError> {
        let versions = self.names.get(name).map(|e| &e.versions).ok_or_else(|| {
            CatalogError::new(ErrorCode::NotFound, format!("no asset named '{name}'"))
        })?;
        let found = match selector {
            Selector::Latest => versions.back(),
            Selector::Version(n) => versions.iter().find(|v| v.info.version == n),
            Selector::Hash(h) => versions.iter().rev().find(|v| v.info.hash == h),
        };
        found.ok_or_else(|| {
            let what = match selector {
                Selector::Latest => unreachable!("a kept name has a version"),
                Selector::Version(n) => format!("version {n}"),
                Selector::Hash(h) => format!("hash {}", memseal_proto::message::hash_to_hex(&h)),
            };
            let kept: Vec<String> = versions
                .iter()
                .map(|v| v.info.version.to_string())
                .collect();
            CatalogError::new(
                ErrorCode::NotFound,
                format!(
                    "'{name}' has no {what} (kept versions: {})",
                    kept.join(", ")
                ),
            )
        })
    }

    /// The latest version of each name starting with `prefix`, in name
    /// order, after `start_after`, at most `limit` of them. The second value
    /// is the cursor for the next page, if any.
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> (Vec<AssetInfo>, Option<String>) {
        let mut page = Vec::new();
        let mut matching = self
            .names_from(prefix, start_after)
            .map(|(_, entry)| entry.versions.back().expect("a kept name has a version"));
        for version in matching.by_ref().take(limit) {
            page.push(version.info.clone());
        }
        let next = match matching.next() {
            Some(_) => page.last().map(|info| info.name.clone()),
            None => None,
        };
        (page, next)
    }

    /// Names starting with `prefix` after `start_after`, in order.
    fn names_from<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&str>,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a NameEntry)> + 'a {
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.names
            .range_from(lower)
            .take_while(move |(name, _)| name.starts_with(prefix))
    }

    /// Remove one version, or every version of `name`.
    pub fn remove(
        &mut self,
        name: &str,
        version: Option<u64>,
    ) -> Result<(u64, Vec<Change>), CatalogError> {
        let entry = self.names.get_mut(name).ok_or_else(|| {
            CatalogError::new(ErrorCode::NotFound, format!("no asset named '{name}'"))
        })?;
        let removed: Vec<Version> = match version {
            None => entry.versions.drain(..).collect(),
            Some(n) => {
                let index = entry
                    .versions
                    .iter()
                    .position(|v| v.info.version == n)
                    .ok_or_else(|| {
                        CatalogError::new(
                            ErrorCode::NotFound,
                            format!("'{name}' has no version {n}"),
                        )
                    })?;
                entry.versions.remove(index).into_iter().collect()
            }
        };
        if entry.versions.is_empty() {
            // Forget the name; its numbers live on in its slot.
            let last_version = entry.last_version;
            self.names.remove(name);
            self.forget(name, last_version);
        }
        let mut changes = Vec::new();
        let count = removed.len() as u64;
        for old in removed {
            self.unhold(old, &mut changes);
        }
        Ok((count, changes))
    }

    pub fn totals(&self) -> Totals {
        Totals {
            names: self.names.len() as u64,
            versions: self.versions,
            blobs: self.blobs.len() as u64,
            bytes: self.bytes,
        }
    }

    /// Every distinct blob held.
    pub fn blobs(&self) -> impl Iterator<Item = &Arc<Blob>> {
        self.blobs.values().map(|entry| &entry.blob)
    }

    /// Up to `limit` names after `start_after` with their highest number
    /// and kept versions, for the persisted snapshot, which is written a
    /// page at a time so that no single hold of the lock grows with the
    /// catalog. The second value is the cursor for the next page.
    pub fn snapshot_page(
        &self,
        start_after: Option<&str>,
        limit: usize,
    ) -> (Vec<SnapshotName>, Option<String>) {
        let page: Vec<SnapshotName> = self
            .names_from("", start_after)
            .take(limit)
            .map(|(name, entry)| SnapshotName {
                name: name.to_string(),
                last_version: entry.last_version,
                versions: entry
                    .versions
                    .iter()
                    .map(|v| StoredVersion {
                        info: v.info.clone(),
                        owner: Some(v.blob.key().owner),
                        charged: v.charged,
                    })
                    .collect(),
            })
            .collect();
        let next = (page.len() == limit)
            .then(|| page.last().map(|n| n.name.clone()))
            .flatten();
        (page, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobWriter;

    fn blob(bytes: &[u8]) -> Blob {
        let mut writer = BlobWriter::new(bytes.len() as u64).unwrap();
        writer.write(bytes).unwrap();
        writer.finish().unwrap()
    }

    fn budget() -> Budget {
        Budget {
            max_asset_size: 100,
            max_total_bytes: 1000,
            keep_versions: 1,
            max_bytes_per_uid: 50,
            max_assets_per_uid: 3,
            max_blobs: 6,
            max_versions: 100,
            publisher_reserve_percent: 0,
        }
    }

    fn catalog(keep: usize, total: u64) -> Catalog {
        Catalog::new(Budget {
            keep_versions: keep,
            max_total_bytes: total,
            ..budget()
        })
    }

    fn claim(size: usize) -> Claim {
        Claim {
            size: size as u64,
            uid: None,
        }
    }

    fn publish(c: &mut Catalog, name: &str, bytes: &[u8]) -> AssetInfo {
        c.reserve(claim(bytes.len())).unwrap();
        c.publish(name, blob(bytes), claim(bytes.len()), 1000, 0).0
    }

    #[test]
    fn versions_grow_and_old_ones_drop_out() {
        let mut c = catalog(2, 1000);
        assert_eq!(publish(&mut c, "a", b"one").version, 1);
        assert_eq!(publish(&mut c, "a", b"two").version, 2);
        assert_eq!(publish(&mut c, "a", b"three").version, 3);
        assert!(c.find("a", Selector::Version(1)).is_err());
        assert_eq!(c.find("a", Selector::Latest).unwrap().info.version, 3);
        assert_eq!(c.totals().versions, 2);
        assert_eq!(c.totals().bytes, 8);
        c.remove("a", None).unwrap();
        assert_eq!(c.totals().bytes, 0);
        // Numbers are never reused.
        assert_eq!(publish(&mut c, "a", b"four").version, 4);
    }

    #[test]
    fn a_name_holds_room_for_its_kept_versions_only() {
        let mut c = catalog(1, 1000);
        for bytes in [b"1", b"2", b"3"] {
            publish(&mut c, "one", bytes);
        }
        assert_eq!(c.names.get("one").unwrap().versions.capacity(), 1);
        assert_eq!(c.find("one", Selector::Latest).unwrap().info.version, 3);
    }

    #[test]
    fn removed_names_cost_nothing_and_never_reuse_a_number() {
        let mut c = catalog(1, 1000);
        publish(&mut c, "keep", b"k");
        for i in 0..10_000 {
            let name = format!("churn/{i}");
            publish(&mut c, &name, b"x");
            c.remove(&name, None).unwrap();
        }
        // Only the live name is held: no tombstones, a fixed table.
        assert_eq!(c.names.len(), 1);
        assert_eq!(c.totals().names, 1);
        assert_eq!(c.forgotten.len(), FORGOTTEN_SLOTS);
        // A name seen before continues above every number it had.
        let again = publish(&mut c, "churn/7", b"y");
        assert!(again.version >= 2, "{again:?}");
        // A name that never went away keeps its own count.
        assert_eq!(publish(&mut c, "keep", b"k2").version, 2);
        // A name removed once comes back above its old numbers, and a name
        // never seen, in a slot no forgotten name uses, starts at 1.
        let mut c = catalog(1, 1000);
        publish(&mut c, "once", b"1");
        publish(&mut c, "once", b"2");
        c.remove("once", None).unwrap();
        assert_eq!(publish(&mut c, "once", b"3").version, 3);
        assert_ne!(forgotten_slot("fresh"), forgotten_slot("once"));
        assert_eq!(publish(&mut c, "fresh", b"f").version, 1);
        // Removing the newest of several versions keeps the name's count.
        let mut c = catalog(3, 1000);
        publish(&mut c, "a", b"1");
        publish(&mut c, "a", b"2");
        c.remove("a", Some(2)).unwrap();
        assert_eq!(publish(&mut c, "a", b"3").version, 3);
    }

    #[test]
    fn identical_content_is_stored_once() {
        let mut c = catalog(1, 1000);
        let a = publish(&mut c, "a", b"same");
        let b = publish(&mut c, "b", b"same");
        assert_eq!(a.hash, b.hash);
        assert_eq!(c.totals().blobs, 1);
        assert_eq!(c.totals().bytes, 4);
        let fa = c.find("a", Selector::Latest).unwrap().blob.clone();
        let fb = c.find("b", Selector::Latest).unwrap().blob.clone();
        assert!(Arc::ptr_eq(&fa, &fb));
        let (_, changes) = c.remove("a", None).unwrap();
        assert!(!changes
            .iter()
            .any(|ch| matches!(ch, Change::BlobDropped(_))));
        let (_, changes) = c.remove("b", None).unwrap();
        assert!(changes
            .iter()
            .any(|ch| matches!(ch, Change::BlobDropped(_))));
        assert_eq!(c.totals().bytes, 0);
    }

    #[test]
    fn budgets_refuse_before_allocation() {
        let mut c = catalog(1, 10);
        assert_eq!(c.reserve(claim(101)).unwrap_err().code, ErrorCode::TooLarge);
        c.reserve(claim(8)).unwrap();
        assert_eq!(c.reserve(claim(3)).unwrap_err().code, ErrorCode::OverBudget);
        c.release(claim(8));
        c.reserve(claim(10)).unwrap();
    }

    #[test]
    fn the_number_of_distinct_blobs_is_bounded() {
        let mut c = catalog(1, 1000);
        for i in 0..6u8 {
            publish(&mut c, &format!("b/{i}"), &[i]);
        }
        let err = c.reserve(claim(1)).unwrap_err();
        assert_eq!(err.code, ErrorCode::OverBudget);
        assert!(err.message.contains("max_blobs"), "{}", err.message);
        c.remove("b/0", None).unwrap();
        c.reserve(claim(1)).unwrap();
    }

    #[test]
    fn users_cannot_take_the_publishers_reserve() {
        let mut c = Catalog::new(Budget {
            max_blobs: 8,
            max_versions: 1000,
            max_assets_per_uid: 100,
            max_bytes_per_uid: 1000,
            publisher_reserve_percent: 25,
            ..budget()
        });
        // Many users together fill their share: 6 of 8 blobs.
        let mut filled = 0;
        for uid in 1..=10u32 {
            let user = Claim {
                size: 1,
                uid: Some(uid),
            };
            if c.reserve(user).is_ok() {
                c.publish(&format!("u/{uid}"), blob(&[uid as u8]), user, uid, 0);
                filled += 1;
            }
        }
        assert_eq!(filled, 6);
        let err = c
            .reserve(Claim {
                size: 1,
                uid: Some(99),
            })
            .unwrap_err();
        assert!(err.message.contains("reserved for publishers"), "{}", err);
        // The publishers still have theirs.
        publish(&mut c, "root/a", b"a");
        publish(&mut c, "root/b", b"b");
        assert_eq!(c.reserve(claim(1)).unwrap_err().code, ErrorCode::OverBudget);
        assert_eq!(Budget::users_share(&c.budget, 4000), 3000);
    }

    #[test]
    fn per_uid_budgets_count_kept_versions() {
        let mut c = catalog(1, 1000);
        let user = |size: usize| Claim {
            size: size as u64,
            uid: Some(7),
        };
        let put = |c: &mut Catalog, name: &str, bytes: &[u8]| {
            c.reserve(user(bytes.len()))?;
            Ok::<_, CatalogError>(c.publish(name, blob(bytes), user(bytes.len()), 7, 0).0)
        };
        put(&mut c, "u/a", &[1; 20]).unwrap();
        put(&mut c, "u/b", &[2; 20]).unwrap();
        // 40 of 50 bytes used: 20 more is refused, and so is a 4th version.
        let err = put(&mut c, "u/c", &[3; 20]).unwrap_err();
        assert_eq!(err.code, ErrorCode::OverBudget);
        assert!(err.message.contains("uid 7"), "{}", err.message);
        put(&mut c, "u/c", &[3; 5]).unwrap();
        assert_eq!(
            put(&mut c, "u/d", &[4; 1]).unwrap_err().code,
            ErrorCode::OverBudget
        );
        // Superseding frees the old version's share.
        put(&mut c, "u/a", &[5; 1]).unwrap_err();
        c.remove("u/a", None).unwrap();
        assert_eq!(c.usage(7).versions, 2);
        assert_eq!(c.usage(7).bytes, 25);
        put(&mut c, "u/d", &[4; 25]).unwrap();
        // Exempt claims ignore the per-uid limits.
        publish(&mut c, "root/x", &[9; 60]);
        assert_eq!(
            c.usage(7),
            Usage {
                bytes: 50,
                versions: 3,
                reserved_bytes: 0,
                reserved_versions: 0
            }
        );
        // A uid that holds nothing any more leaves no entry behind.
        for name in ["u/b", "u/c", "u/d"] {
            c.remove(name, None).unwrap();
        }
        assert!(c.usage.is_empty());
    }

    #[test]
    fn listing_pages_follow_name_order() {
        let mut c = catalog(1, 1000);
        for name in ["m/a", "m/b", "m/c", "n/a", "l"] {
            publish(&mut c, name, name.as_bytes());
        }
        let (page, next) = c.list("m/", None, 2);
        let names: Vec<_> = page.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["m/a", "m/b"]);
        assert_eq!(next.as_deref(), Some("m/b"));
        let (page, next) = c.list("m/", next.as_deref(), 2);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].name, "m/c");
        assert_eq!(next, None);
        assert_eq!(c.list("", None, 100).0.len(), 5);
    }

    #[test]
    fn snapshot_pages_cover_every_name_once() {
        let mut c = catalog(1, 1000);
        for i in 0..5 {
            publish(&mut c, &format!("s/{i}"), &[i]);
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = c.snapshot_page(cursor.as_deref(), 2);
            seen.extend(page.into_iter().map(|n| n.name));
            match next {
                Some(name) => cursor = Some(name),
                None => break,
            }
        }
        assert_eq!(seen, ["s/0", "s/1", "s/2", "s/3", "s/4"]);
    }

    #[test]
    fn both_name_indexes_always_agree() {
        let mut c = catalog(2, 1000);
        let mut random = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |below: u64| {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random % below
        };
        for _ in 0..2_000 {
            let name = format!("n/{}", next(12));
            match next(4) {
                0 | 1 => {
                    publish(&mut c, &name, &[next(4) as u8]);
                }
                2 => {
                    let _ = c.remove(&name, None);
                }
                _ => {
                    let _ = c.remove(&name, Some(next(40)));
                }
            }
            assert!(c.names.agree());
            let listed: Vec<String> = c
                .list("", None, 100)
                .0
                .into_iter()
                .map(|i| i.name)
                .collect();
            let mut found: Vec<String> = (0..12)
                .map(|i| format!("n/{i}"))
                .filter(|n| c.find(n, Selector::Latest).is_ok())
                .collect();
            found.sort();
            assert_eq!(listed, found);
            assert_eq!(c.totals().names as usize, listed.len());
        }
        // Restores, refused restores and a broken blob's discard keep them
        // in step too.
        let version = c.find("n/3", Selector::Latest).ok().cloned();
        if let Some(v) = version {
            assert!(!c.restore(v, 0));
        }
        let mut fresh = catalog(2, 1000);
        for (_, entry) in c.names.range_from(Bound::Unbounded) {
            for v in &entry.versions {
                assert!(fresh.restore(v.clone(), entry.last_version));
            }
        }
        assert!(fresh.names.agree());
        assert_eq!(fresh.list("", None, 100), c.list("", None, 100));
        let keys: Vec<BlobKey> = fresh.blobs().map(|b| b.key()).collect();
        let mut changes = Vec::new();
        for key in keys {
            fresh.discard(key, &mut changes);
            assert!(fresh.names.agree());
        }
        assert_eq!(fresh.totals(), Totals::default());
        assert!(fresh.names.order.is_empty());
    }

    #[test]
    fn selectors() {
        let mut c = catalog(3, 1000);
        let one = publish(&mut c, "a", b"one");
        publish(&mut c, "a", b"two");
        assert_eq!(
            c.find("a", Selector::Hash(one.hash)).unwrap().info.version,
            1
        );
        let err = c.find("a", Selector::Version(9)).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert!(
            err.message.contains("kept versions: 1, 2"),
            "{}",
            err.message
        );
        assert_eq!(
            c.find("zz", Selector::Latest).unwrap_err().code,
            ErrorCode::NotFound
        );
    }
}
