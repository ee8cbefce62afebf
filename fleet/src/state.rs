//! What this node pulled: the agent's only state, one small JSON file in
//! the state directory (`/var/lib/memseal-fleet` under systemd).
//!
//! It answers two questions the daemon cannot. Which local versions came
//! from the store, and so may be evicted when a pull needs room (a version
//! published on this node never is)? And which names to keep fresh, with
//! the ETag of the manifest last seen for each, so that a poll is a
//! conditional GET? The one-shot `pull` and a running agent share it:
//! every change is made under an exclusive `flock` and written by rename,
//! so readers never see half a file.
//!
//! One state directory belongs to one daemon.

use crate::error::Error;
use memseal::proto::message::{hash_to_hex, now_ms};
use memseal::AssetInfo;
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The file's format.
const FORMAT: u32 = 1;
const FILE: &str = "pulled.json";
const LOCK: &str = "pulled.lock";

/// One version this node pulled from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The asset name.
    pub name: String,
    /// The version the local daemon gave it.
    pub version: u64,
    /// BLAKE3 of its content, hex.
    pub blake3: String,
    /// Its size in bytes.
    pub size: u64,
    /// When this node last fetched it from the store, or found it wanted
    /// and already there; the eviction order (oldest first).
    pub used_ms: u64,
    /// The manifest's ETag when this version was pulled or last polled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Pulled by hash: the poll loop leaves it alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

/// The version number of a pending record: written before the download
/// is published, so that a pusher on this node that sees the publish
/// already knows the version came from the store (and does not push it
/// back), even when the pull ran in another process.
pub const PENDING: u64 = 0;

impl Record {
    /// The record of a pull of `hash` into `name` about to be published.
    pub fn pending(name: &str, hash: &memseal::Hash, size: u64) -> Record {
        Record {
            name: name.to_owned(),
            version: PENDING,
            blake3: hash_to_hex(hash),
            size,
            used_ms: now_ms(),
            etag: None,
            pinned: false,
        }
    }

    /// True if the recorded content is `hash`.
    pub fn holds(&self, hash: &memseal::Hash) -> bool {
        self.blake3 == hash_to_hex(hash)
    }

    /// True if this records `info`: the same content under the same name,
    /// in that very version or in a pull still being published.
    pub fn is_of(&self, info: &AssetInfo) -> bool {
        self.name == info.name
            && self.holds(&info.hash)
            && (self.version == info.version || self.version == PENDING)
    }

    /// The record of `info`, just pulled.
    pub fn pulled(info: &AssetInfo, etag: Option<String>) -> Record {
        Record {
            name: info.name.clone(),
            version: info.version,
            blake3: hash_to_hex(&info.hash),
            size: info.size,
            used_ms: now_ms(),
            etag,
            pinned: false,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Contents {
    format: u32,
    pulled: Vec<Record>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct State {
    dir: PathBuf,
}

impl State {
    /// Use (and create if needed) the state directory `dir`.
    pub fn open(dir: &Path) -> Result<State, Error> {
        fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating the state directory {}", dir.display()), e))?;
        Ok(State {
            dir: dir.to_owned(),
        })
    }

    /// The default directory: `$STATE_DIRECTORY` (set by systemd's
    /// `StateDirectory=`), `/var/lib/memseal-fleet` for root, else
    /// `$XDG_STATE_HOME/memseal-fleet` or `~/.local/state/memseal-fleet`.
    pub fn default_dir() -> PathBuf {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(dir) = var("STATE_DIRECTORY") {
            return dir;
        }
        if rustix::process::geteuid().is_root() {
            return PathBuf::from("/var/lib/memseal-fleet");
        }
        var("XDG_STATE_HOME")
            .or_else(|| var("HOME").map(|home| home.join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."))
            .join("memseal-fleet")
    }

    /// Every record.
    pub fn records(&self) -> Result<Vec<Record>, Error> {
        self.update(|records| records.clone())
    }

    /// Change the records under the lock and write them back.
    pub fn update<R>(&self, change: impl FnOnce(&mut Vec<Record>) -> R) -> Result<R, Error> {
        let lock_path = self.dir.join(LOCK);
        let lock = File::create(&lock_path)
            .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| Error::io(format!("locking {}", lock_path.display()), e.into()))?;
        let path = self.dir.join(FILE);
        let mut records = read(&path)?;
        let before = records.clone();
        let result = change(&mut records);
        if records != before {
            write(&path, records)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        Ok(result)
        // The lock goes with `lock`.
    }

    /// Remember a version just pulled, replacing the pending record of
    /// its pull and any older record of the same version number (the
    /// daemon may reuse numbers after losing its catalog).
    pub fn remember(&self, record: Record) -> Result<(), Error> {
        self.update(|records| {
            records.retain(|r| {
                !(r.name == record.name
                    && (r.version == record.version
                        || r.version == PENDING && r.blake3 == record.blake3))
            });
            records.push(record);
        })
    }

    /// Forget one version.
    pub fn forget(&self, name: &str, version: u64) -> Result<(), Error> {
        self.update(|records| records.retain(|r| !(r.name == name && r.version == version)))
    }
}

fn read(path: &Path) -> Result<Vec<Record>, Error> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let contents: Contents = serde_json::from_slice(&text).map_err(|e| {
        Error::io(
            format!("reading {}", path.display()),
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })?;
    if contents.format != FORMAT {
        return Err(Error::io(
            format!("reading {}", path.display()),
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("format {} is not {FORMAT}", contents.format),
            ),
        ));
    }
    Ok(contents.pulled)
}

fn write(path: &Path, pulled: Vec<Record>) -> io::Result<()> {
    let contents = Contents {
        format: FORMAT,
        pulled,
    };
    let temporary = path.with_extension("json.new");
    let mut file = File::create(&temporary)?;
    file.write_all(&serde_json::to_vec_pretty(&contents).map_err(io::Error::other)?)?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        assert!(state.records().unwrap().is_empty());
        let info = AssetInfo {
            name: "a".into(),
            version: 2,
            size: 5,
            hash: [7; 32],
            published_ms: 0,
            publisher_uid: 0,
        };
        state
            .remember(Record::pulled(&info, Some("\"e1\"".into())))
            .unwrap();
        state
            .remember(Record::pulled(&info, Some("\"e2\"".into())))
            .unwrap();
        let again = State::open(dir.path()).unwrap().records().unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].etag.as_deref(), Some("\"e2\""));
        state.forget("a", 2).unwrap();
        assert!(state.records().unwrap().is_empty());
    }
}
