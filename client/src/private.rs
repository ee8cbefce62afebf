//! A private, writable view of an asset: [`PrivateCopy`].

use crate::map::Mapping;
use memseal_proto::{AssetInfo, Hash};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// One version of an asset, fetched, verified and mapped copy-on-write:
/// readable and writable, with every write staying in this process.
///
/// The mapping is `MAP_PRIVATE` with `PROT_READ | PROT_WRITE`. Until a page
/// is written it is the daemon's page, shared with every other reader; the
/// first write to it makes a copy private to this process (one page, not
/// the whole asset), and only that copy changes. The asset itself cannot
/// change: its memfd is sealed, and other readers never see these writes.
///
/// Useful for loading a large table and patching a few entries locally
/// (normalising, relocating) without paying for a full copy. Get one from
/// [`Client::fetch_private`](crate::Client::fetch_private).
pub struct PrivateCopy {
    info: AssetInfo,
    // Declared before `fd` so the mapping goes first on drop.
    map: Mapping,
    fd: OwnedFd,
}

impl PrivateCopy {
    pub(crate) fn new(info: AssetInfo, map: Mapping, fd: OwnedFd) -> PrivateCopy {
        PrivateCopy { info, map, fd }
    }

    /// Everything the daemon said about this version. The hash is of the
    /// published bytes, not of any local changes.
    pub fn info(&self) -> &AssetInfo {
        &self.info
    }

    /// The asset's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The version number.
    pub fn version(&self) -> u64 {
        self.info.version
    }

    /// The size in bytes, equal to the length of the slice.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// The BLAKE3 hash of the asset as published.
    pub fn hash(&self) -> &Hash {
        &self.info.hash
    }
}

impl Deref for PrivateCopy {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.map.as_slice()
    }
}

impl DerefMut for PrivateCopy {
    fn deref_mut(&mut self) -> &mut [u8] {
        // Always writable: `Client::fetch_private` maps it that way.
        self.map.as_mut_slice().unwrap_or(&mut [])
    }
}

impl AsRef<[u8]> for PrivateCopy {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for PrivateCopy {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl AsFd for PrivateCopy {
    /// The sealed descriptor of the asset as published, without any of the
    /// local changes.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl fmt::Debug for PrivateCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateCopy")
            .field("info", &self.info)
            .field("fd", &self.fd)
            .finish()
    }
}
