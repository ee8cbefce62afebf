//! The shared state every connection works on: the catalog behind its
//! lock, the access policy, and counters.
//!
//! Connection tasks never touch the catalog directly; they call these
//! methods, which keep each critical section short and hand every change
//! to the observers (the persistence layer) after the lock is released.

use crate::blob::Blob;
use crate::catalog::{Budget, Catalog, CatalogError, Change, Claim, Totals};
use crate::connection::USER_INGESTS;
use crate::policy::{Peer, Policy};
use crate::rate_budget::{Note, RateBudget, LOG_LINES, PULLS};
use crate::resolvers::Resolvers;
use memseal_proto::message::now_ms;
use memseal_proto::{AssetInfo, Event, Selector, ServerStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

/// Called with every batch of catalog changes, in order, outside the lock.
pub type Observer = Box<dyn Fn(&State, &[Change]) + Send + Sync>;

/// The daemon's shared state: the catalog and everything connections use
/// together. See the module documentation.
pub struct State {
    catalog: Mutex<Catalog>,
    policy: RwLock<Arc<Policy>>,
    observers: RwLock<Vec<Observer>>,
    started: Instant,
    connections: AtomicU64,
    /// Serialises observer calls so batches are seen in catalog order.
    observe_order: Mutex<()>,
    /// Published and removed versions, for watchers, in catalog order.
    events: tokio::sync::broadcast::Sender<Event>,
    /// Which per-request log lines are written.
    log_budget: RateBudget,
    pull_budget: RateBudget,
    /// Resolvers of missing names, and the pulls under way.
    resolvers: Resolvers,
    /// Descriptor publishes users who are not publishers may run at once.
    user_ingests: Arc<tokio::sync::Semaphore>,
}

/// How many events a watcher may fall behind before it is dropped (it
/// must then resubscribe and assume it missed changes).
pub const WATCH_BACKLOG: usize = 4096;

impl State {
    pub fn new(budget: Budget, policy: Policy) -> Arc<State> {
        Arc::new(State {
            catalog: Mutex::new(Catalog::new(budget)),
            policy: RwLock::new(Arc::new(policy)),
            observers: RwLock::new(Vec::new()),
            started: Instant::now(),
            connections: AtomicU64::new(0),
            observe_order: Mutex::new(()),
            events: tokio::sync::broadcast::channel(WATCH_BACKLOG).0,
            log_budget: RateBudget::new(LOG_LINES),
            pull_budget: RateBudget::new(PULLS),
            resolvers: Resolvers::default(),
            user_ingests: Arc::new(tokio::sync::Semaphore::new(USER_INGESTS)),
        })
    }

    /// Register a function that sees every later change.
    pub fn observe(&self, observer: Observer) {
        self.observers
            .write()
            .expect("observer lock")
            .push(observer);
    }

    fn catalog(&self) -> MutexGuard<'_, Catalog> {
        // A panic while holding the lock would leave a poisoned mutex; the
        // catalog's methods keep it consistent at every return, so keep
        // serving rather than take the whole daemon down.
        self.catalog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on the catalog, then tell the observers what changed. The
    /// order lock is taken before the catalog lock and held while the
    /// observers run, so they see batches in the order they happened.
    fn change<T>(&self, f: impl FnOnce(&mut Catalog) -> (T, Vec<Change>)) -> T {
        let _order = self.observe_order.lock().unwrap_or_else(|e| e.into_inner());
        let (value, changes) = f(&mut self.catalog());
        if !changes.is_empty() {
            for observer in self.observers.read().expect("observer lock").iter() {
                observer(self, &changes);
            }
            for change in changes {
                let event = match change {
                    Change::Published(version) => {
                        self.resolvers.published(&version.info);
                        Event::Published(version.info)
                    }
                    Change::Removed(info) => Event::Removed(info),
                    Change::BlobAdded(_) | Change::BlobDropped(_) => continue,
                };
                // No receiver means no watcher: nothing to do.
                let _ = self.events.send(event);
            }
        }
        value
    }

    /// Resolvers of missing names (pull-through).
    pub fn resolvers(&self) -> &Resolvers {
        &self.resolvers
    }

    /// Which per-request log lines are written.
    pub fn log_budget(&self) -> &RateBudget {
        &self.log_budget
    }

    /// May a line about a request of `peer` be written now? Publishers
    /// draw on a budget of their own (see `rate_budget`).
    pub fn may_log(&self, peer: &Peer) -> Option<Note> {
        let publisher = self.policy().is_publisher(peer);
        self.log_budget.allow(peer, publisher)
    }

    /// May `peer` start a pull through a resolver now (see
    /// `rate_budget`)? Publishers always may.
    pub fn may_start_pull(&self, peer: &Peer) -> bool {
        let publisher = self.policy().is_publisher(peer);
        self.pull_budget.allow(peer, publisher).is_some()
    }

    /// Slots for descriptor publishes by users who are not publishers.
    pub fn user_ingests(&self) -> Arc<tokio::sync::Semaphore> {
        self.user_ingests.clone()
    }

    /// Receive every later published or removed version.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("policy lock").clone()
    }

    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().expect("policy lock") = Arc::new(policy);
    }

    pub fn budget(&self) -> Budget {
        *self.catalog().budget()
    }

    /// Reserve room for a publish of `size` bytes by `uid`; released when
    /// the returned guard is dropped without being used. `exempt`
    /// publishers (see `Policy::is_publisher`) are held to the total
    /// budget only.
    pub fn reserve(
        self: &Arc<Self>,
        size: u64,
        uid: u32,
        exempt: bool,
    ) -> Result<Reservation, CatalogError> {
        let claim = Claim {
            size,
            uid: (!exempt).then_some(uid),
        };
        self.catalog().reserve(claim)?;
        Ok(Reservation {
            state: self.clone(),
            claim: Some(claim),
            uid,
        })
    }

    /// Make `blob` visible as the next version of `name`.
    pub fn publish(&self, reservation: Reservation, name: &str, blob: Blob) -> AssetInfo {
        let (claim, uid) = reservation.hand_over(&blob);
        self.change(|catalog| catalog.publish(name, blob, claim, uid, now_ms()))
    }

    /// Make `blob` the next version of `name` unless the newest version
    /// already holds the same bytes. True when a version was added.
    pub fn publish_if_changed(
        &self,
        reservation: Reservation,
        name: &str,
        blob: Blob,
    ) -> (AssetInfo, bool) {
        let (claim, uid) = reservation.hand_over(&blob);
        self.change(|catalog| catalog.publish_if_changed(name, blob, claim, uid, now_ms()))
    }

    /// Run `f` on the catalog without telling the observers: for restoring
    /// persisted state (the fd store already holds it) and for reading it
    /// a page at a time.
    pub fn with_catalog<T>(&self, f: impl FnOnce(&mut Catalog) -> T) -> T {
        f(&mut self.catalog())
    }

    pub fn fetch(
        &self,
        name: &str,
        selector: Selector,
    ) -> Result<(AssetInfo, Arc<Blob>), CatalogError> {
        let catalog = self.catalog();
        let version = catalog.find(name, selector)?;
        Ok((version.info.clone(), version.blob.clone()))
    }

    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> (Vec<AssetInfo>, Option<String>) {
        self.catalog().list(prefix, start_after, limit)
    }

    pub fn remove(&self, name: &str, version: Option<u64>) -> Result<u64, CatalogError> {
        self.change(|catalog| match catalog.remove(name, version) {
            Ok((count, changes)) => (Ok(count), changes),
            Err(e) => (Err(e), Vec::new()),
        })
    }

    pub fn totals(&self) -> Totals {
        self.catalog().totals()
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> ServerStatus {
        let totals = self.totals();
        ServerStatus {
            server: server_name(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            names: totals.names,
            versions: totals.versions,
            blobs: totals.blobs,
            bytes: totals.bytes,
            connections: self.connections(),
        }
    }

    /// A one-line summary for the service manager's STATUS= and logs.
    pub fn summary(&self) -> String {
        let totals = self.totals();
        format!(
            "serving {} asset(s), {} version(s), {} in {} blob(s); {} connection(s)",
            totals.names,
            totals.versions,
            memseal_text::human_size(totals.bytes),
            totals.blobs,
            self.connections()
        )
    }
}

/// Budget promised to a publish in progress, given back when dropped
/// unless the catalog took it over.
pub struct Reservation {
    state: Arc<State>,
    /// None once handed over to the catalog.
    claim: Option<Claim>,
    uid: u32,
}

impl Reservation {
    /// Give the claim to the catalog, which releases it as it inserts the
    /// version.
    fn hand_over(mut self, blob: &Blob) -> (Claim, u32) {
        let claim = self
            .claim
            .take()
            .expect("a reservation is handed over once");
        assert_eq!(claim.size, blob.size(), "reservation matches the blob");
        (claim, self.uid)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            self.state.catalog().release(claim);
        }
    }
}

/// `memseald <version>`, as announced in the handshake.
pub fn server_name() -> String {
    format!("memseald {}", env!("CARGO_PKG_VERSION"))
}
