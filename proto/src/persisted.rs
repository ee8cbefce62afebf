//! What the daemon keeps about its catalog across restarts, in memfds held
//! by the service manager's fd store. Never sent over a socket; defined
//! here so that every bincode call stays in [`crate::codec`].
//!
//! The catalog is kept as a [`Snapshot`] (sealed, written now and then)
//! followed by a journal of [`JournalEntry`] records, one per change since
//! that snapshot, appended as they happen. Replaying the journal over the
//! snapshot gives the catalog as it was at the last change.

use crate::message::AssetInfo;
use serde::{Deserialize, Serialize};

/// The snapshot layout written today. Format 1 (no floor, no owners, a
/// tombstone per removed name) is still read, so an upgrade keeps assets.
pub const SNAPSHOT_FORMAT: u32 = 2;

/// The whole catalog at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_FORMAT`] when written; a daemon refuses formats it does
    /// not know instead of misreading them.
    pub format: u32,
    /// Increases with every snapshot; the newest readable one wins, and
    /// its journal carries the same number.
    pub generation: u64,
    /// The non-zero slots of the table of forgotten names (see
    /// [`forgotten_slot`]): `(slot, highest number)`.
    pub forgotten: Vec<(u32, u64)>,
    /// Every name with at least one kept version.
    pub names: Vec<SnapshotName>,
}

/// How many slots the table of forgotten names has.
///
/// A name with no kept version is forgotten, and the highest number it
/// reached is folded into slot [`forgotten_slot`] of a fixed table (the
/// slot keeps the largest number folded into it). A name that appears
/// starts above its slot's number: never below a number it had before,
/// and usually at 1, since most names share their slot with no forgotten
/// name. The table's size is fixed, so forgetting costs nothing however
/// many names come and go.
pub const FORGOTTEN_SLOTS: usize = 4096;

/// The slot of `name` in the table of forgotten names: FNV-1a of its
/// bytes, modulo [`FORGOTTEN_SLOTS`]. Part of the persisted format: it
/// must never change.
pub fn forgotten_slot(name: &str) -> usize {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % FORGOTTEN_SLOTS as u64) as usize
}

/// One name in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotName {
    pub name: String,
    /// The highest version given to the name (it may exceed the newest
    /// kept one, if that was removed).
    pub last_version: u64,
    /// Kept versions, oldest first.
    pub versions: Vec<StoredVersion>,
}

/// One kept version and which blob holds its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    pub info: AssetInfo,
    /// The uid that owns the blob's inode; with the hash, it names the
    /// blob. None when read from a format 1 snapshot, which did not record
    /// it: the blob's descriptor tells.
    pub owner: Option<u32>,
    /// Whether the version counts against its publisher's per-uid budget
    /// (false for publishers in the policy's sense).
    pub charged: bool,
}

/// One change to the catalog after its snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalEntry {
    /// A version became visible.
    Published(StoredVersion),
    /// A version stopped being visible (removed or superseded).
    Removed { name: String, version: u64 },
}

/// Snapshot format 1, as older daemons wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotV1 {
    pub format: u32,
    pub generation: u64,
    pub names: Vec<SnapshotNameV1>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotNameV1 {
    pub name: String,
    pub last_version: u64,
    pub versions: Vec<AssetInfo>,
}

impl From<SnapshotV1> for Snapshot {
    /// Names without versions were tombstones: they go into the table of
    /// forgotten names.
    fn from(old: SnapshotV1) -> Snapshot {
        let mut table = vec![0u64; FORGOTTEN_SLOTS];
        let mut names = Vec::new();
        for name in old.names {
            if name.versions.is_empty() {
                let slot = &mut table[forgotten_slot(&name.name)];
                *slot = (*slot).max(name.last_version);
                continue;
            }
            names.push(SnapshotName {
                name: name.name,
                last_version: name.last_version,
                versions: name
                    .versions
                    .into_iter()
                    .map(|info| StoredVersion {
                        // Format 1 charged every uid but root's.
                        charged: info.publisher_uid != 0,
                        info,
                        owner: None,
                    })
                    .collect(),
            });
        }
        Snapshot {
            format: SNAPSHOT_FORMAT,
            generation: old.generation,
            forgotten: table
                .into_iter()
                .enumerate()
                .filter(|(_, number)| *number > 0)
                .map(|(slot, number)| (slot as u32, number))
                .collect(),
            names,
        }
    }
}
