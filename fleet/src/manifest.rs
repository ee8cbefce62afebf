//! The manifest: a small JSON object at `PREFIX/names/<name>` that says
//! which content is the latest version of a name.
//!
//! ```json
//! {
//!   "format": 1,
//!   "name": "models/en.bin",
//!   "blake3": "705623214550d9324802735dda18c27e4a86307676d1fa4cdeee07a989f7679c",
//!   "size": 5000000,
//!   "published_ms": 1764670515123,
//!   "publisher": { "host": "node-a", "uid": 0, "version": 3 },
//!   "pushed_ms": 1764670515456,
//!   "agent": "memseal-fleet 0.1.0"
//! }
//! ```
//!
//! A manifest only points: the bytes are checked against `blake3` after
//! the download, so a wrong manifest can repoint a name (SECURITY.md) but
//! never make a node publish bytes whose hash differs from what it claims.
//! Readers refuse a `format` they do not know and ignore fields they do not
//! know, so later formats can add fields without breaking older agents.

use memseal::proto::message::{hash_from_hex, hash_to_hex};
use memseal::proto::name::validate_name;
use memseal::{AssetInfo, Hash};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The format this agent writes and the only one it reads.
pub const FORMAT: u32 = 1;

/// Manifests larger than this are refused unread: a real one is a few
/// hundred bytes, and the store is not trusted to be reasonable.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// One name's latest version, as stored in the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format: [`FORMAT`].
    pub format: u32,
    /// The asset name; must equal the key's `<name>`.
    pub name: String,
    /// BLAKE3 of the content, 64 lower-case hex digits: the blob's key.
    pub blake3: String,
    /// Size of the content in bytes.
    pub size: u64,
    /// When the version was published on the node it came from,
    /// milliseconds since the Unix epoch.
    pub published_ms: u64,
    /// Who published it, for people; never used to decide anything.
    #[serde(default)]
    pub publisher: Publisher,
    /// When it was pushed to the store, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_ms: Option<u64>,
    /// The program that wrote the manifest, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// Where a version was first published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publisher {
    /// The host name of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The uid that published it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Its version number there (numbers are per node, not global).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// Why bytes from the store are not a usable manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`].
    TooLarge(usize),
    /// Not JSON of the expected shape.
    Malformed(String),
    /// A format this agent does not read.
    Format(u32),
    /// The `name` field differs from the key it was stored under.
    WrongName { key: String, inside: String },
    /// The name is not a valid asset name.
    InvalidName(String),
    /// `blake3` is not 64 hex digits.
    BadHash(String),
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestError::TooLarge(len) => write!(
                f,
                "the manifest is {len} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have"
            ),
            ManifestError::Malformed(why) => write!(f, "the manifest is not valid: {why}"),
            ManifestError::Format(format) => write!(
                f,
                "the manifest has format {format}; this agent reads format {FORMAT} (upgrade it)"
            ),
            ManifestError::WrongName { key, inside } => write!(
                f,
                "the manifest stored for {key:?} names {inside:?}"
            ),
            ManifestError::InvalidName(why) => write!(f, "the manifest's name is invalid: {why}"),
            ManifestError::BadHash(text) => write!(
                f,
                "the manifest's blake3 {text:?} is not 64 hexadecimal digits"
            ),
        }
    }
}

impl std::error::Error for ManifestError {}

impl Manifest {
    /// The manifest that announces `info`, a version published on this
    /// node, pushed at `pushed_ms`.
    pub fn for_version(info: &AssetInfo, host: Option<String>, pushed_ms: u64) -> Manifest {
        Manifest {
            format: FORMAT,
            name: info.name.clone(),
            blake3: hash_to_hex(&info.hash),
            size: info.size,
            published_ms: info.published_ms,
            publisher: Publisher {
                host,
                uid: Some(info.publisher_uid),
                version: Some(info.version),
            },
            pushed_ms: Some(pushed_ms),
            agent: Some(concat!("memseal-fleet ", env!("CARGO_PKG_VERSION")).to_owned()),
        }
    }

    /// Parse and check the manifest stored under `name`'s key.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        // The format first, on its own, so that a newer manifest with a
        // different shape is reported as newer rather than as malformed.
        #[derive(Deserialize)]
        struct FormatOnly {
            format: u32,
        }
        let format: FormatOnly =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if format.format != FORMAT {
            return Err(ManifestError::Format(format.format));
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if manifest.name != name {
            return Err(ManifestError::WrongName {
                key: name.to_owned(),
                inside: manifest.name,
            });
        }
        validate_name(&manifest.name).map_err(|e| ManifestError::InvalidName(e.to_string()))?;
        if hash_from_hex(&manifest.blake3).is_none() {
            return Err(ManifestError::BadHash(manifest.blake3));
        }
        Ok(manifest)
    }

    /// The content hash.
    pub fn hash(&self) -> Hash {
        // `parse` and `for_version` only make manifests with a valid hash.
        hash_from_hex(&self.blake3).unwrap_or_default()
    }

    /// The JSON text stored in the bucket (pretty, so that people reading
    /// it with any S3 tool can).
    pub fn to_json(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self).unwrap_or_default();
        text.push(b'\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> AssetInfo {
        AssetInfo {
            name: "models/en.bin".into(),
            version: 3,
            size: 5,
            hash: *blake3::hash(b"hello").as_bytes(),
            published_ms: 1_764_670_515_123,
            publisher_uid: 1000,
        }
    }

    #[test]
    fn round_trip() {
        let manifest = Manifest::for_version(&info(), Some("node-a".into()), 1_764_670_515_456);
        let parsed = Manifest::parse("models/en.bin", &manifest.to_json()).unwrap();
        assert_eq!(parsed, manifest);
        assert_eq!(parsed.hash(), info().hash);
    }

    #[test]
    fn the_minimal_form_another_tool_may_write() {
        let text = br#"{"format":1,"name":"a","size":5,"published_ms":0,
            "blake3":"ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f",
            "something_new":[1,2]}"#;
        let manifest = Manifest::parse("a", text).unwrap();
        assert_eq!(manifest.hash(), *blake3::hash(b"hello").as_bytes());
        assert_eq!(manifest.publisher, Publisher::default());
    }

    #[test]
    fn refusals() {
        let good = Manifest::for_version(&info(), None, 0);
        let edited = |key: &str, edit: &dyn Fn(&mut serde_json::Value)| {
            let mut value = serde_json::to_value(&good).unwrap();
            edit(&mut value);
            Manifest::parse(key, &serde_json::to_vec(&value).unwrap())
        };
        let key = "models/en.bin";
        assert_eq!(
            edited(key, &|v| v["format"] = 2.into()),
            Err(ManifestError::Format(2))
        );
        assert!(matches!(
            edited(key, &|v| v["name"] = "models/other".into()),
            Err(ManifestError::WrongName { .. })
        ));
        assert!(matches!(
            edited("../x", &|v| v["name"] = "../x".into()),
            Err(ManifestError::InvalidName(_))
        ));
        assert!(matches!(
            edited(key, &|v| v["blake3"] = "abc".into()),
            Err(ManifestError::BadHash(_))
        ));
        assert!(matches!(
            edited(key, &|v| v["size"] = (-1).into()),
            Err(ManifestError::Malformed(_))
        ));
        assert!(matches!(
            Manifest::parse("a", b"not json"),
            Err(ManifestError::Malformed(_))
        ));
        assert!(matches!(
            Manifest::parse("a", &vec![b' '; MAX_MANIFEST_BYTES + 1]),
            Err(ManifestError::TooLarge(_))
        ));
    }
}
