//! Where things live in the bucket: the key of every object the agent
//! reads or writes, and nothing else.
//!
//! ```text
//! PREFIX/blobs/<64 hex digits of BLAKE3>   the bytes of one asset version, immutable
//! PREFIX/names/<name>                      a JSON manifest: the latest version of <name>
//! ```
//!
//! FLEET.md describes the same layout for other tools.

use memseal::proto::message::hash_to_hex;
use memseal::Hash;
use object_store::path::Path;

/// The folder of content-addressed blobs, under the prefix.
const BLOBS: &str = "blobs";
/// The folder of manifests, under the prefix.
const NAMES: &str = "names";

/// The keys under one prefix of one bucket.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The prefix every key starts with; empty for the bucket's root.
    prefix: String,
}

impl Layout {
    /// The layout under `prefix` (`""`, `fleet`, `fleet/prod`; slashes at
    /// either end are ignored).
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.trim_matches('/').to_owned(),
        }
    }

    /// The prefix, without slashes at either end.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `PREFIX/blobs/<hex>`: the content whose BLAKE3 hash is `hash`.
    pub fn blob(&self, hash: &Hash) -> Path {
        self.key(&format!("{BLOBS}/{}", hash_to_hex(hash)))
    }

    /// `PREFIX/names/<name>`: the manifest of `name`.
    pub fn manifest(&self, name: &str) -> Path {
        self.key(&format!("{NAMES}/{name}"))
    }

    /// The folder to list to find every manifest whose name starts with
    /// `name_prefix`. Object stores list whole path segments (`models`
    /// finds `models/a` but `mod` finds nothing), so this is the folder of
    /// the prefix's last complete segment; [`Layout::name_of`] and a string
    /// comparison do the rest.
    pub fn manifests_folder(&self, name_prefix: &str) -> Path {
        match name_prefix.rfind('/') {
            Some(end) => self.key(&format!("{NAMES}/{}", &name_prefix[..end])),
            None => self.key(NAMES),
        }
    }

    /// The name whose manifest lives at `key`, if `key` is a manifest key.
    pub fn name_of(&self, key: &Path) -> Option<String> {
        let key = key.as_ref();
        let rest = if self.prefix.is_empty() {
            key
        } else {
            key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?
        };
        let name = rest.strip_prefix(NAMES)?.strip_prefix('/')?;
        Some(name.to_owned())
    }

    fn key(&self, relative: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(relative)
        } else {
            Path::from(format!("{}/{relative}", self.prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_under_a_prefix() {
        let layout = Layout::new("/fleet/prod/");
        let hash = [0xab; 32];
        assert_eq!(
            layout.blob(&hash).as_ref(),
            format!("fleet/prod/blobs/{}", "ab".repeat(32))
        );
        let manifest = layout.manifest("models/en/weights.bin");
        assert_eq!(manifest.as_ref(), "fleet/prod/names/models/en/weights.bin");
        assert_eq!(
            layout.name_of(&manifest).as_deref(),
            Some("models/en/weights.bin")
        );
        assert_eq!(layout.name_of(&layout.blob(&hash)), None);
        assert_eq!(layout.name_of(&Path::from("other/names/x")), None);
    }

    #[test]
    fn keys_at_the_root() {
        let layout = Layout::new("");
        assert_eq!(layout.manifest("a").as_ref(), "names/a");
        assert_eq!(
            layout.name_of(&Path::from("names/a/b")).as_deref(),
            Some("a/b")
        );
    }

    #[test]
    fn listing_folder_is_the_last_complete_segment() {
        let layout = Layout::new("p");
        assert_eq!(layout.manifests_folder("").as_ref(), "p/names");
        assert_eq!(layout.manifests_folder("mod").as_ref(), "p/names");
        assert_eq!(
            layout.manifests_folder("models/").as_ref(),
            "p/names/models"
        );
        assert_eq!(
            layout.manifests_folder("models/en").as_ref(),
            "p/names/models"
        );
    }
}
