//! A fetched asset: its metadata and its verified, mapped bytes.

use crate::verify::Sealed;
use memseal_proto::{AssetInfo, Hash};
use std::fmt;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// One version of an asset, fetched and verified.
///
/// Dereferences to the asset's bytes, which live in the daemon's sealed
/// memfd: no copy was made (unless a small asset was copied on request,
/// see [`MapOptions::copy_below`](crate::MapOptions::copy_below)), and the
/// kernel guarantees they cannot change while this value lives. It stays valid after the [`Client`](crate::Client)
/// that fetched it is dropped, even if the daemon removes the asset or
/// exits. It is `Send` and `Sync`, so threads can share one fetch.
pub struct Asset {
    info: AssetInfo,
    sealed: Sealed,
}

impl Asset {
    pub(crate) fn new(info: AssetInfo, sealed: Sealed) -> Asset {
        Asset { info, sealed }
    }

    /// Everything the daemon said about this version.
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

    /// The BLAKE3 hash the daemon computed when the version was published.
    pub fn hash(&self) -> &Hash {
        &self.info.hash
    }

    /// True when the bytes are a mapping of the daemon's memfd, false when
    /// they were copied because the asset is smaller than
    /// [`MapOptions::copy_below`](crate::MapOptions::copy_below).
    pub fn is_mapped(&self) -> bool {
        self.sealed.is_mapped()
    }

    /// Unmap the bytes and keep the sealed descriptor, for example to pass
    /// it to another process (which should check it with
    /// [`verify`](crate::verify) in turn).
    pub fn into_fd(self) -> OwnedFd {
        self.sealed.into_fd()
    }
}

impl Deref for Asset {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.sealed
    }
}

impl AsRef<[u8]> for Asset {
    fn as_ref(&self) -> &[u8] {
        &self.sealed
    }
}

impl AsFd for Asset {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sealed.as_fd()
    }
}

impl fmt::Debug for Asset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Asset")
            .field("info", &self.info)
            .field("sealed", &self.sealed)
            .finish()
    }
}
