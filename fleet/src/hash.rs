//! BLAKE3 of content that arrives in pieces, in parallel, in any order.
//!
//! A download is split into pieces of one power-of-two length (the last
//! one shorter), fetched side by side. BLAKE3 is a tree hash, and a piece
//! of that shape, aligned to its own length, is a whole subtree of the
//! content's tree. So each piece is hashed as its bytes arrive, by a hasher
//! of its own told where the piece starts, and the pieces' chaining values
//! are merged into the root hash at the end, as the tree prescribes:
//! the same result as hashing the whole content in one go, without reading
//! the bytes a second time.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use blake3::{Hasher, CHUNK_LEN};
use memseal::Hash;
use std::ops::Range;

/// How content of a given size is cut into pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pieces {
    total: u64,
    len: u64,
}

/// The hash of one finished piece: the root hash itself when the content
/// is a single piece, a chaining value otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceDigest([u8; 32]);

impl Pieces {
    /// Cut `total` bytes into pieces of about `wanted` bytes: the power of
    /// two at or above it, and at least one BLAKE3 chunk.
    pub fn new(total: u64, wanted: u64) -> Pieces {
        let len = wanted.max(CHUNK_LEN as u64).next_power_of_two();
        Pieces { total, len }
    }

    /// How many pieces there are; empty content is one empty piece.
    pub fn count(&self) -> usize {
        usize::try_from(self.total.div_ceil(self.len).max(1)).unwrap_or(usize::MAX)
    }

    /// The byte range of piece `index`.
    pub fn range(&self, index: usize) -> Range<u64> {
        let start = index as u64 * self.len;
        start..(start + self.len).min(self.total)
    }

    /// A fresh hasher for piece `index`, to be fed exactly its bytes.
    pub fn hasher(&self, index: usize) -> Hasher {
        let mut hasher = Hasher::new();
        if self.count() > 1 {
            hasher.set_input_offset(self.range(index).start);
        }
        hasher
    }

    /// The digest of a piece whose hasher has been fed all of its bytes.
    pub fn digest(&self, hasher: &Hasher) -> PieceDigest {
        if self.count() == 1 {
            PieceDigest(*hasher.finalize().as_bytes())
        } else {
            PieceDigest(hasher.finalize_non_root())
        }
    }

    /// The BLAKE3 hash of the whole content, from the digests of every
    /// piece in order.
    pub fn root(&self, digests: &[PieceDigest]) -> Hash {
        assert_eq!(digests.len(), self.count(), "one digest per piece");
        if digests.len() == 1 {
            return digests[0].0;
        }
        let left = left_subtree_len(self.total);
        let root = merge_subtrees_root(
            &self.subtree(0, left, digests),
            &self.subtree(left, self.total - left, digests),
            Mode::Hash,
        );
        *root.as_bytes()
    }

    /// The chaining value of the subtree of `len` bytes at `start`. Every
    /// split the tree makes above piece size falls on a piece boundary:
    /// the left part is the largest power-of-two number of chunks below
    /// `len`, so when `len` exceeds one piece it is a multiple of pieces.
    fn subtree(&self, start: u64, len: u64, digests: &[PieceDigest]) -> ChainingValue {
        if len <= self.len {
            return digests[(start / self.len) as usize].0;
        }
        let left = left_subtree_len(len);
        merge_subtrees_non_root(
            &self.subtree(start, left, digests),
            &self.subtree(start + left, len - left, digests),
            Mode::Hash,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Hash piece by piece, the pieces in reverse order to show that the
    /// order does not matter, and compare with the one-shot hash.
    fn check(len: usize, piece: u64) {
        let bytes = content(len);
        let pieces = Pieces::new(len as u64, piece);
        let mut digests = vec![PieceDigest([0; 32]); pieces.count()];
        for index in (0..pieces.count()).rev() {
            let range = pieces.range(index);
            let mut hasher = pieces.hasher(index);
            // Feed in uneven slices, as a network stream would.
            for part in bytes[range.start as usize..range.end as usize].chunks(999) {
                hasher.update(part);
            }
            digests[index] = pieces.digest(&hasher);
        }
        assert_eq!(
            pieces.root(&digests),
            *blake3::hash(&bytes).as_bytes(),
            "{len} bytes in pieces of {piece}"
        );
    }

    #[test]
    fn matches_the_one_shot_hash() {
        for piece in [1024, 2048, 4096, 16384] {
            for len in [
                0, 1, 1023, 1024, 1025, 2047, 2048, 2049, 3000, 4096, 5000, 8191, 8192, 8193,
                12288, 20000, 65536, 65537, 100_000, 300_001,
            ] {
                check(len, piece);
            }
        }
    }

    #[test]
    fn piece_length_is_a_power_of_two_of_whole_chunks() {
        assert_eq!(Pieces::new(10, 1).range(0), 0..10);
        assert_eq!(
            Pieces::new(1 << 30, 5_000_000).range(1),
            (1 << 23)..(2 << 23)
        );
        assert_eq!(Pieces::new(0, 8 << 20).count(), 1);
        assert_eq!(Pieces::new((8 << 20) + 1, 8 << 20).count(), 2);
    }
}
