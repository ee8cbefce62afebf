//! The agent: pulling a name from the store into the local daemon, and
//! pushing a local version out to the store. The one-shot commands and the
//! `run` loop are thin layers over these two operations.
//!
//! # The path of a pull
//!
//! 1. The manifest `PREFIX/names/<name>` says which content is the latest
//!    version (or the caller pins the content by hash).
//! 2. If the daemon already holds that content under the name, nothing
//!    moves.
//! 3. The size is checked against the daemon's limits, and room is made by
//!    evicting the least recently used pulled versions if the budget needs
//!    it, all before a byte is fetched.
//! 4. `download` fetches the blob into a memfd, checks it against its hash
//!    and seals it.
//! 5. The daemon adopts the memfd (`publish_sealed`, zero copy) and hashes
//!    it itself; the two hashes must agree, or the version is removed.
//! 6. The state file records the pulled version, for eviction and for the
//!    poll loop.
//!
//! [`Agent::pull`] is the whole of it, and is what `run`'s resolver
//! ([`crate::resolver`]) calls for each name memseald reports as wanted.

use crate::download::{download, Transfer, Wanted};
use crate::error::{Error, Integrity, Problem};
use crate::local::Local;
use crate::manifest::Manifest;
use crate::metrics::{Counter, Metrics};
use crate::refused::RefusedBlobs;
use crate::remote::{ManifestRead, Remote};
use crate::state::{Record, State, PENDING};
use crate::upload::{upload, Uploaded};
use memseal::proto::message::{hash_to_hex, now_ms};
use memseal::proto::name::validate_name;
use memseal::{AssetInfo, Hash};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which content of a name to pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Whatever the name's manifest points at now.
    Latest,
    /// Exactly this content, whatever the manifest says (pinning: the
    /// operator's choice, `pull --hash`).
    Hash(Hash),
    /// This content, only if the name's manifest points at it now; what
    /// a client that asks for a hash gets through pull-through, since any
    /// local user may ask, and the agent must not publish under a name,
    /// with its own rights, content the name's publishers did not give it.
    Named(Hash),
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The local version that now holds the content.
    pub info: AssetInfo,
    /// How long the download took; `None` when the daemon already had it.
    pub downloaded_in: Option<Duration>,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The store holds the content and names it the latest version.
    Pushed {
        /// Whether the blob had to be uploaded.
        blob: Uploaded,
        /// Whether the manifest had to be written (false: it already
        /// pointed at this content).
        renamed: bool,
    },
    /// The version was removed locally before it could be read.
    Gone,
    /// The version came from the store: pushing it back would at best
    /// repoint the name at what it already names, and at worst at an older
    /// version than another node pushed since.
    PulledHere,
}

/// The content to pull for one name, and where it comes from.
#[derive(Debug, Clone)]
struct Target {
    hash: Hash,
    size: u64,
    /// The manifest's ETag, when the pull follows a manifest.
    etag: Option<String>,
    /// True for a pull by hash: never replaced by the poll loop.
    pinned: bool,
}

/// A node's agent.
#[derive(Debug)]
pub struct Agent {
    remote: Remote,
    local: Local,
    state: State,
    metrics: Arc<Metrics>,
    transfer: Transfer,
    /// This node's host name, written into the manifests it pushes.
    host: Option<String>,
    /// One lock per name being pulled, so that two requests for the same
    /// name (the poll loop and a one-shot pull, or many waiting clients)
    /// cause one download; the second finds the content present.
    pulling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Blobs refused lately, not downloaded again yet.
    refused: RefusedBlobs,
}

impl Agent {
    /// An agent between `local` and `remote`.
    pub fn new(
        remote: Remote,
        local: Local,
        state: State,
        metrics: Arc<Metrics>,
        transfer: Transfer,
    ) -> Agent {
        let host = rustix::system::uname()
            .nodename()
            .to_str()
            .ok()
            .map(str::to_owned);
        Agent {
            remote,
            local,
            state,
            metrics,
            host,
            pulling: Mutex::new(HashMap::new()),
            refused: RefusedBlobs::new(transfer.retry_refused_after),
            transfer,
        }
    }

    /// The store.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The local daemon.
    pub fn local(&self) -> &Local {
        &self.local
    }

    /// The state file.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Make `name` present in the local daemon: the content `want` picks
    /// in the store. The function the resolver calls for every name the
    /// daemon is asked for and does not hold.
    pub async fn pull(&self, name: &str, want: Want) -> Result<Pulled, Error> {
        check_name(name)?;
        let result = async {
            let target = self.target(name, want).await?;
            self.pull_target(name, target).await
        }
        .await;
        self.count_failure(result)
    }

    /// Pull the version a manifest just read announces (the poll loop's
    /// way in, which has read the manifest already).
    pub async fn pull_announced(
        &self,
        manifest: &Manifest,
        etag: Option<String>,
    ) -> Result<Pulled, Error> {
        let target = Target {
            hash: manifest.hash(),
            size: manifest.size,
            etag,
            pinned: false,
        };
        let result = self.pull_target(&manifest.name, target).await;
        self.count_failure(result)
    }

    /// Read the manifest of `name` (conditionally, given an ETag), counting
    /// a refused manifest like any other refusal.
    pub async fn read_manifest(
        &self,
        name: &str,
        etag: Option<&str>,
    ) -> Result<ManifestRead, Error> {
        let result = self.remote.manifest(name, etag).await;
        self.count_failure(result)
    }

    /// Count and log a refusal in one place, whatever path it came by.
    fn count_failure<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        match &result {
            Err(e) if e.is_repeated_refusal() => {
                self.metrics.add(Counter::RefusedWithoutDownload, 1);
            }
            Err(Error::Integrity(_)) => {
                self.metrics.add(Counter::IntegrityFailures, 1);
                tracing::error!(
                    "{} (integrity failures so far: {})",
                    result.as_ref().err().expect("an error"),
                    self.metrics.get(Counter::IntegrityFailures)
                );
            }
            Err(Error::Store { .. }) => self.metrics.add(Counter::StoreErrors, 1),
            Err(Error::NotFound(_)) => self.metrics.add(Counter::NotFound, 1),
            _ => {}
        }
        result
    }

    /// What `want` means for `name` in the store right now.
    async fn target(&self, name: &str, want: Want) -> Result<Target, Error> {
        match want {
            Want::Latest => self.named_target(name).await,
            Want::Named(hash) => {
                let target = self.named_target(name).await?;
                if target.hash != hash {
                    return Err(Error::NotFound(format!(
                        "the store's manifest for {name} names content {}, not {}; \
                         memseal-fleet supplies a hash only while it is the name's content \
                         (an operator pins other content with `memseal-fleet pull --hash`)",
                        hash_to_hex(&target.hash),
                        hash_to_hex(&hash)
                    )));
                }
                Ok(target)
            }
            Want::Hash(hash) => {
                let key = self.remote.layout().blob(&hash);
                match self.remote.object_size(&key).await? {
                    Some(size) => Ok(Target {
                        hash,
                        size,
                        etag: None,
                        pinned: true,
                    }),
                    None => Err(Error::NotFound(format!(
                        "the store has no blob {key} (content {} for {name})",
                        hash_to_hex(&hash)
                    ))),
                }
            }
        }
    }

    /// The content `name`'s manifest names now.
    async fn named_target(&self, name: &str) -> Result<Target, Error> {
        match self.remote.manifest(name, None).await? {
            ManifestRead::Found(manifest, etag) => Ok(Target {
                hash: manifest.hash(),
                size: manifest.size,
                etag,
                pinned: false,
            }),
            ManifestRead::Missing | ManifestRead::NotModified => Err(Error::NotFound(format!(
                "the store has no manifest for {name} ({} has no {})",
                self.remote.url(),
                self.remote.layout().manifest(name)
            ))),
        }
    }

    /// Steps 2 to 6 of a pull (see the module documentation).
    async fn pull_target(&self, name: &str, target: Target) -> Result<Pulled, Error> {
        let lock = self.name_lock(name);
        let _held = lock.lock().await;

        if let Some(info) = self.present(name, &target).await? {
            self.metrics.add(Counter::AlreadyPresent, 1);
            self.state.update(|records| {
                if let Some(record) = records
                    .iter_mut()
                    .find(|r| r.name == name && r.version == info.version)
                {
                    record.used_ms = now_ms();
                    if target.etag.is_some() {
                        record.etag = target.etag.clone();
                    }
                }
            })?;
            return Ok(Pulled {
                info,
                downloaded_in: None,
            });
        }

        let key = self.remote.layout().blob(&target.hash);
        // Before room is made: refused bytes are not worth evicting for.
        if let Some(still) = self.refused.check(&target.hash) {
            return Err(Error::Integrity(Integrity {
                name: name.to_owned(),
                key: key.to_string(),
                problem: Problem::StillRefused(still),
            }));
        }

        let limits = self.local.limits().await?;
        if target.size > limits.max_asset_size {
            return Err(Error::NoRoom(format!(
                "{name} is {} bytes, more than memseald's largest asset ({} bytes)",
                target.size, limits.max_asset_size
            )));
        }
        self.make_room(name, target.size).await?;

        let started = Instant::now();
        let wanted = Wanted {
            name: name.to_owned(),
            key: key.clone(),
            hash: target.hash,
            size: target.size,
        };
        let key = key.to_string();
        let sealed = match download(Arc::clone(self.remote.store()), wanted, &self.transfer).await {
            Ok(sealed) => sealed,
            Err(Error::Integrity(refused)) => return Err(self.refuse(&target, refused)),
            Err(e) => return Err(e),
        };
        let downloaded_in = started.elapsed();

        self.state
            .remember(Record::pending(name, &target.hash, target.size))?;
        let published = self.local.publish_sealed(name, sealed.as_fd()).await;
        let info = match published {
            Ok(info) => info,
            Err(e) => {
                self.state.forget(name, PENDING)?;
                return Err(e);
            }
        };
        if info.hash != target.hash {
            self.state.forget(name, PENDING)?;
            // Cannot happen unless the kernel or the daemon is broken; the
            // version must not stay visible either way.
            let _ = self.local.remove(name, info.version).await;
            let refused = Integrity {
                name: name.to_owned(),
                key,
                problem: Problem::DaemonDisagrees {
                    ours: target.hash,
                    daemons: info.hash,
                },
            };
            return Err(self.refuse(&target, refused));
        }
        self.refused.forget(&target.hash);
        let mut record = Record::pulled(&info, target.etag);
        record.pinned = target.pinned;
        self.state.remember(record)?;
        self.metrics.add(Counter::Pulls, 1);
        self.metrics.add(Counter::PulledBytes, info.size);
        tracing::info!(
            "pulled {name} from {key}: version {}, {} bytes, blake3 {}, in {:.2} s ({:.1} MiB/s)",
            info.version,
            info.size,
            hash_to_hex(&info.hash),
            downloaded_in.as_secs_f64(),
            info.size as f64 / (1 << 20) as f64 / downloaded_in.as_secs_f64().max(1e-9)
        );
        Ok(Pulled {
            info,
            downloaded_in: Some(downloaded_in),
        })
    }

    /// Remember that the download of `target` was refused, so that it is
    /// not downloaded again for a while (see [`crate::refused`]).
    fn refuse(&self, target: &Target, refused: Integrity) -> Error {
        self.refused
            .refuse(target.hash, refused.problem.to_string());
        Error::Integrity(refused)
    }

    /// The local version that already has the target's content, if it is
    /// the name's latest one. For a pull by hash, an older kept version
    /// with that content goes unnoticed (and is downloaded again, to
    /// become the latest): asking the daemon for a hash it lacks would,
    /// under pull-through, be announced to this agent and wait for itself
    /// (see [`crate::local`]).
    async fn present(&self, name: &str, target: &Target) -> Result<Option<AssetInfo>, Error> {
        let info = self.local.latest(name).await?;
        Ok(info.filter(|info| info.hash == target.hash))
    }

    /// The lock that serialises pulls of `name`.
    fn name_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut pulling = self.pulling.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the locks nobody holds or waits for, so the map stays small.
        pulling.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(pulling.entry(name.to_owned()).or_default())
    }

    /// Evict pulled versions, least recently used first, until `size`
    /// more bytes fit in the daemon's budget. Only versions this agent
    /// pulled (and that still hold the content it pulled) are candidates,
    /// never one of `name` itself, whose readers would otherwise find it
    /// missing until the new version lands. When even evicting all of them
    /// could not make room, nothing is evicted.
    async fn make_room(&self, name: &str, size: u64) -> Result<(), Error> {
        let limits = self.local.limits().await?;
        let free = |used: u64| limits.max_total_bytes.saturating_sub(used);
        let mut available = free(self.local.status().await?.bytes);
        if available >= size {
            return Ok(());
        }
        let mut candidates: Vec<Record> = self
            .state
            .records()?
            .into_iter()
            .filter(|r| r.name != name && r.version != PENDING)
            .collect();
        candidates.sort_by_key(|r| r.used_ms);
        let evictable: u64 = candidates.iter().map(|r| r.size).sum();
        if available.saturating_add(evictable) >= size {
            for record in candidates {
                if self.evict(&record).await? {
                    // Identical content held under another name stays, so
                    // ask what a removal really freed.
                    available = free(self.local.status().await?.bytes);
                    if available >= size {
                        return Ok(());
                    }
                }
            }
        }
        Err(Error::NoRoom(format!(
            "{name} needs {size} bytes but memseald has {available} of its {} free, and \
             evicting every version pulled from the store ({evictable} bytes) would not be enough",
            limits.max_total_bytes
        )))
    }

    /// Remove one pulled version, if the daemon still holds it as pulled.
    /// True if a version went.
    async fn evict(&self, record: &Record) -> Result<bool, Error> {
        let current = self.local.version(&record.name, record.version).await?;
        let still_ours = current.is_some_and(|info| record.holds(&info.hash));
        let removed = still_ours && self.local.remove(&record.name, record.version).await?;
        self.state.forget(&record.name, record.version)?;
        if removed {
            self.metrics.add(Counter::Evictions, 1);
            // A warning, so that it shows in the one-shot commands too:
            // someone may have expected that version to stay.
            tracing::warn!(
                "evicted {} version {} ({} bytes, pulled from the store, last used {} s ago) \
                 to make room",
                record.name,
                record.version,
                record.size,
                now_ms().saturating_sub(record.used_ms) / 1000
            );
        }
        Ok(removed)
    }

    /// Push the latest local version of `name`.
    pub async fn push_name(&self, name: &str) -> Result<(AssetInfo, Pushed), Error> {
        check_name(name)?;
        let info = self
            .local
            .latest(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("memseald has no asset named {name}")))?;
        let pushed = self.push(&info).await?;
        Ok((info, pushed))
    }

    /// Make the store hold `info`'s content and name it the latest version
    /// of its name. The bytes are read from a read-only mapping of the
    /// sealed asset.
    pub async fn push(&self, info: &AssetInfo) -> Result<Pushed, Error> {
        let result = self.push_inner(info).await;
        self.count_failure(result)
    }

    async fn push_inner(&self, info: &AssetInfo) -> Result<Pushed, Error> {
        // A pull of this name in this process records the version before
        // it lets go of the name's lock; one in another process records it
        // before it even publishes.
        let lock = self.name_lock(&info.name);
        let _held = lock.lock().await;
        if self.state.records()?.iter().any(|r| r.is_of(info)) {
            return Ok(Pushed::PulledHere);
        }
        let Some(asset) = self.local.fetch_version(&info.name, info.version).await? else {
            return Ok(Pushed::Gone);
        };
        // The blob first, so that a manifest never points at missing
        // content (and so that a push repairs a blob lost from the store).
        let key = self.remote.layout().blob(&info.hash);
        let blob = upload(self.remote.store(), &key, asset, &self.transfer).await?;
        match blob {
            Uploaded::Already => self.metrics.add(Counter::BlobsAlreadyStored, 1),
            Uploaded::Written { .. } => self.metrics.add(Counter::UploadedBytes, info.size),
        }
        let named = match self.remote.manifest(&info.name, None).await? {
            ManifestRead::Found(manifest, _) => manifest.hash() == info.hash,
            ManifestRead::Missing | ManifestRead::NotModified => false,
        };
        if !named {
            let manifest = Manifest::for_version(info, self.host.clone(), now_ms());
            self.remote.put_manifest(&manifest).await?;
            self.metrics.add(Counter::Pushes, 1);
            tracing::info!(
                "pushed {} version {} to {}: {blob}",
                info.name,
                info.version,
                self.remote.url(),
            );
        }
        Ok(Pushed::Pushed {
            blob,
            renamed: !named,
        })
    }
}

/// A name the daemon would accept, or a usage error that says why not.
fn check_name(name: &str) -> Result<(), Error> {
    validate_name(name).map_err(|e| Error::Usage(format!("{name:?}: {e}")))
}
