//! The catalog: which names exist, their versions, and the blobs behind
//! them, with the byte budget that bounds it all.
//!
//! The catalog is plain data behind one mutex (see [`crate::store`]); no
//! method blocks or does I/O, so holding the lock is always brief.
//!
//! Accounting works on distinct content: a blob shared by several names or
//! versions is counted once, and its bytes are released when the last
//! version that refers to it goes away (clients that still hold its
//! descriptor keep the memory alive, which the kernel charges to the daemon
//! regardless; budgets can only be honest about what the catalog holds).
//! Space is reserved *before* a memfd is created, so a publish that would
//! exceed the budget is refused without allocating anything, and nothing
//! is ever evicted to make room.

use crate::blob::Blob;
use memseal_proto::{AssetInfo, ErrorCode, Hash, Selector};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
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
    /// counted at its full size), unless exempt.
    pub max_bytes_per_uid: u64,
    /// Kept versions one uid may have published, unless exempt.
    pub max_assets_per_uid: u64,
    /// Distinct blobs (memfds) held at most. Each one also takes a slot
    /// in the service manager's fd store, which is bounded.
    pub max_blobs: u64,
}

/// Budget promised to one publish in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub size: u64,
    /// The publisher, or None when it is exempt from per-uid limits
    /// (root and the daemon's own uid).
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
}

#[derive(Debug, Default)]
struct NameEntry {
    /// The highest version ever given to this name. Kept after a remove so
    /// version numbers are never reused.
    last_version: u64,
    /// Oldest first.
    versions: VecDeque<Version>,
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
    Published(AssetInfo),
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
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
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

#[derive(Debug)]
pub struct Catalog {
    budget: Budget,
    names: BTreeMap<String, NameEntry>,
    blobs: HashMap<Hash, BlobEntry>,
    /// Bytes of distinct blobs held.
    bytes: u64,
    /// Bytes promised to publishes in progress.
    reserved: u64,
    /// Publishes in progress, each of which may add a blob.
    reserved_publishes: u64,
    /// Per publisher uid.
    usage: HashMap<u32, Usage>,
}

impl Catalog {
    pub fn new(budget: Budget) -> Self {
        Catalog {
            budget,
            names: BTreeMap::new(),
            blobs: HashMap::new(),
            bytes: 0,
            reserved: 0,
            reserved_publishes: 0,
            usage: HashMap::new(),
        }
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Promise `claim.size` bytes to a publish about to start, or refuse it.
    pub fn reserve(&mut self, claim: Claim) -> Result<(), CatalogError> {
        let size = claim.size;
        if size > self.budget.max_asset_size {
            return Err(CatalogError::new(
                ErrorCode::TooLarge,
                format!(
                    "{size} bytes exceeds the maximum asset size of {} bytes",
                    self.budget.max_asset_size
                ),
            ));
        }
        let in_use = self.bytes + self.reserved;
        if in_use.saturating_add(size) > self.budget.max_total_bytes {
            return Err(CatalogError::new(
                ErrorCode::OverBudget,
                format!(
                    "{size} bytes would exceed the total budget: {in_use} of {} bytes in use \
                     (remove assets to make room; nothing is evicted automatically)",
                    self.budget.max_total_bytes
                ),
            ));
        }
        let blobs = self.blobs.len() as u64 + self.reserved_publishes;
        if blobs >= self.budget.max_blobs {
            return Err(CatalogError::new(
                ErrorCode::OverBudget,
                format!(
                    "the daemon holds its maximum of {} distinct assets (max_blobs); remove some first",
                    self.budget.max_blobs
                ),
            ));
        }
        if let Some(uid) = claim.uid {
            let usage = self.usage.get(&uid).copied().unwrap_or_default();
            let bytes = usage.bytes + usage.reserved_bytes;
            if bytes.saturating_add(size) > self.budget.max_bytes_per_uid {
                return Err(CatalogError::new(
                    ErrorCode::OverBudget,
                    format!(
                        "{size} bytes would exceed the budget of uid {uid}: {bytes} of {} bytes in use",
                        self.budget.max_bytes_per_uid
                    ),
                ));
            }
            let versions = usage.versions + usage.reserved_versions;
            if versions >= self.budget.max_assets_per_uid {
                return Err(CatalogError::new(
                    ErrorCode::OverBudget,
                    format!(
                        "uid {uid} already holds {versions} of its {} asset versions",
                        self.budget.max_assets_per_uid
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
            }
        }
    }

    /// What `uid` holds and has in flight.
    pub fn usage(&self, uid: u32) -> Usage {
        self.usage.get(&uid).copied().unwrap_or_default()
    }

    fn charge(&mut self, info: &AssetInfo) {
        let usage = self.usage.entry(info.publisher_uid).or_default();
        usage.bytes += info.size;
        usage.versions += 1;
    }

    fn uncharge(&mut self, info: &AssetInfo) {
        if let Some(usage) = self.usage.get_mut(&info.publisher_uid) {
            usage.bytes -= info.size;
            usage.versions -= 1;
        }
    }

    /// Make `blob` the newest version of `name`, consuming a reservation of
    /// `blob.size()` bytes. Identical content already held is shared
    /// instead. Versions beyond the budget's `keep_versions` drop out.
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
        let entry = self.names.entry(name.to_owned()).or_default();
        entry.last_version += 1;
        let info = AssetInfo {
            name: name.to_owned(),
            version: entry.last_version,
            size: blob.size(),
            hash: *blob.hash(),
            published_ms,
            publisher_uid,
        };
        entry.versions.push_back(Version {
            info: info.clone(),
            blob,
        });
        let keep = self.budget.keep_versions.max(1);
        let excess = entry.versions.len().saturating_sub(keep);
        let superseded: Vec<Version> = entry.versions.drain(..excess).collect();
        self.charge(&info);
        changes.push(Change::Published(info.clone()));
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

    /// Restore a version exactly as it was (after a restart). Refuses a
    /// version older than one already present for the name.
    pub fn restore(&mut self, info: AssetInfo, blob: Arc<Blob>, last_version: u64) -> bool {
        let entry = self.names.entry(info.name.clone()).or_default();
        if entry
            .versions
            .back()
            .is_some_and(|v| v.info.version >= info.version)
        {
            return false;
        }
        entry.last_version = entry.last_version.max(last_version).max(info.version);
        self.charge(&info);
        let entry = self.names.get_mut(&info.name).expect("entry exists");
        entry.versions.push_back(Version {
            info,
            blob: blob.clone(),
        });
        let slot = self.blobs.entry(*blob.hash()).or_insert_with(|| BlobEntry {
            blob: blob.clone(),
            references: 0,
        });
        if slot.references == 0 {
            self.bytes += blob.size();
        }
        slot.references += 1;
        true
    }

    /// Remember that `name` once reached `last_version`, so a name whose
    /// versions were all removed never reuses a number after a restart.
    pub fn restore_tombstone(&mut self, name: &str, last_version: u64) {
        let entry = self.names.entry(name.to_owned()).or_default();
        entry.last_version = entry.last_version.max(last_version);
    }

    fn hold(&mut self, blob: Blob, changes: &mut Vec<Change>) -> Arc<Blob> {
        if let Some(existing) = self.blobs.get_mut(blob.hash()) {
            existing.references += 1;
            // The new memfd is dropped here: identical content is stored once.
            return existing.blob.clone();
        }
        let blob = Arc::new(blob);
        self.bytes += blob.size();
        self.blobs.insert(
            *blob.hash(),
            BlobEntry {
                blob: blob.clone(),
                references: 1,
            },
        );
        changes.push(Change::BlobAdded(blob.clone()));
        blob
    }

    fn unhold(&mut self, version: Version, changes: &mut Vec<Change>) {
        self.uncharge(&version.info);
        changes.push(Change::Removed(version.info));
        let hash = *version.blob.hash();
        let Some(entry) = self.blobs.get_mut(&hash) else {
            return;
        };
        entry.references -= 1;
        if entry.references == 0 {
            let entry = self.blobs.remove(&hash).expect("entry exists");
            self.bytes -= entry.blob.size();
            changes.push(Change::BlobDropped(entry.blob));
        }
    }

    /// The version a selector picks.
    pub fn find(&self, name: &str, selector: Selector) -> Result<&Version, CatalogError> {
        let versions = self
            .names
            .get(name)
            .map(|e| &e.versions)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                CatalogError::new(ErrorCode::NotFound, format!("no asset named '{name}'"))
            })?;
        let found = match selector {
            Selector::Latest => versions.back(),
            Selector::Version(n) => versions.iter().find(|v| v.info.version == n),
            Selector::Hash(h) => versions.iter().rev().find(|v| v.info.hash == h),
        };
        found.ok_or_else(|| {
            let what = match selector {
                Selector::Latest => unreachable!("a non-empty list has a last element"),
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
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let mut page = Vec::new();
        let mut matching = self
            .names
            .range((lower, Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .filter_map(|(_, entry)| entry.versions.back());
        for version in matching.by_ref().take(limit) {
            page.push(version.info.clone());
        }
        let next = match matching.next() {
            Some(_) => page.last().map(|info| info.name.clone()),
            None => None,
        };
        (page, next)
    }

    /// Remove one version, or every version of `name`.
    pub fn remove(
        &mut self,
        name: &str,
        version: Option<u64>,
    ) -> Result<(u64, Vec<Change>), CatalogError> {
        let not_found =
            || CatalogError::new(ErrorCode::NotFound, format!("no asset named '{name}'"));
        let entry = self.names.get_mut(name).ok_or_else(not_found)?;
        if entry.versions.is_empty() {
            return Err(not_found());
        }
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
        let mut changes = Vec::new();
        let count = removed.len() as u64;
        for old in removed {
            self.unhold(old, &mut changes);
        }
        Ok((count, changes))
    }

    pub fn totals(&self) -> Totals {
        let mut totals = Totals {
            blobs: self.blobs.len() as u64,
            bytes: self.bytes,
            ..Totals::default()
        };
        for entry in self.names.values().filter(|e| !e.versions.is_empty()) {
            totals.names += 1;
            totals.versions += entry.versions.len() as u64;
        }
        totals
    }

    /// Every name with its highest version number and kept versions, for
    /// the persisted snapshot.
    pub fn entries(&self) -> impl Iterator<Item = (&str, u64, impl Iterator<Item = &Version>)> {
        self.names
            .iter()
            .map(|(name, e)| (name.as_str(), e.last_version, e.versions.iter()))
    }

    /// Every distinct blob held.
    pub fn blobs(&self) -> impl Iterator<Item = &Arc<Blob>> {
        self.blobs.values().map(|e| &e.blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::StreamIngest;

    fn blob(bytes: &[u8]) -> Blob {
        let mut ingest = StreamIngest::new(bytes.len() as u64).unwrap();
        ingest.write(bytes).unwrap();
        ingest.finish().unwrap()
    }

    fn catalog(keep: usize, total: u64) -> Catalog {
        Catalog::new(Budget {
            max_asset_size: 100,
            max_total_bytes: total,
            keep_versions: keep,
            max_bytes_per_uid: 50,
            max_assets_per_uid: 3,
            max_blobs: 6,
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
