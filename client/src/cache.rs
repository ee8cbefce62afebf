//! Fetches answered without a round trip: [`CachedClient`].
//!
//! A fetch costs one round trip to the daemon, tens of microseconds. A
//! program that fetches the same few assets again and again (once per
//! request it serves, say) can skip it: keep what it fetched and ask again
//! only when the daemon announces a change. The announcements come from a
//! [`Watcher`] on a second connection.
//!
//! The rule that keeps the cache honest: before it answers anything, the
//! cache reads every announcement that has already reached this process,
//! and drops what they make stale. A fetch that raced with an announcement
//! (sent before, answered after) is not kept. If the watch fails (the
//! daemon restarted, or this process fell so far behind that the daemon
//! gave up on the watch), changes may have been missed, so the cache
//! forgets everything and subscribes again.

use crate::asset::Asset;
use crate::client::Client;
use crate::error::Error;
use crate::options::MapOptions;
use crate::watch::Watcher;
use memseal_proto::{Event, Selector};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A [`Client`] whose fetches of the latest version are answered from a
/// cache kept fresh by a watch.
///
/// ```no_run
/// let mut cache = memseal::CachedClient::new(memseal::Client::connect()?, "config/")?;
/// let first = cache.fetch("config/limits.toml")?; // one round trip
/// let again = cache.fetch("config/limits.toml")?; // none, unless it changed
/// assert_eq!(first.version(), again.version());
/// # Ok::<(), memseal::Error>(())
/// ```
///
/// # What "fresh" means
///
/// A cached answer is never older than the last announcement that reached
/// this process: once the daemon's event about a newer version has arrived
/// on the watch connection, no fetch returns the older one. The daemon
/// sends that event as it makes the version visible, but on another
/// connection than the publisher's reply, so a process told "published" by
/// a third party may, for a few microseconds, still be answered from the
/// cache. [`CachedClient::client`] gives the uncached client for a fetch
/// that must see everything up to this instant.
pub struct CachedClient {
    client: Client,
    /// `None` after the watch failed and subscribing again did too; the
    /// next fetch tries again, and until then nothing is cached.
    watcher: Option<Watcher>,
    prefix: String,
    options: MapOptions,
    entries: HashMap<String, Arc<Asset>>,
    /// While a fetch is in flight: its name, and the events about that name
    /// that arrive meanwhile, which decide whether its answer may be kept.
    in_flight: Option<(String, Vec<Event>)>,
    hits: u64,
    resubscriptions: u64,
}

impl CachedClient {
    /// Cache the names that start with `prefix` (an empty prefix caches
    /// everything), fetching through `client`. Subscribes at once, on a
    /// second connection opened the way `client`'s was.
    pub fn new(client: Client, prefix: &str) -> Result<CachedClient, Error> {
        let watcher = client.watch(prefix)?;
        Ok(CachedClient {
            client,
            watcher: Some(watcher),
            prefix: prefix.to_owned(),
            options: MapOptions::new(),
            entries: HashMap::new(),
            in_flight: None,
            hits: 0,
            resubscriptions: 0,
        })
    }

    /// Map fetched assets with these options from now on.
    pub fn with_options(mut self, options: MapOptions) -> CachedClient {
        self.options = options;
        self
    }

    /// The latest version of `name`: from the cache if nothing announced
    /// a change since it was fetched, otherwise from the daemon. Names
    /// outside the prefix are always fetched.
    ///
    /// The asset is shared with the cache, hence the [`Arc`]; its bytes
    /// stay valid as long as any clone lives, whatever the daemon does.
    pub fn fetch(&mut self, name: &str) -> Result<Arc<Asset>, Error> {
        if self.client.is_lost() {
            // An earlier error (the daemon restarted, say) ended the
            // client's connection; the watch will have failed too.
            self.client = self.client.connect_options().connect()?;
        }
        self.catch_up();
        let cacheable = self.watcher.is_some() && name.starts_with(&self.prefix);
        if cacheable {
            if let Some(asset) = self.entries.get(name) {
                self.hits += 1;
                return Ok(Arc::clone(asset));
            }
        }
        let resubscriptions = self.resubscriptions;
        self.in_flight = Some((name.to_owned(), Vec::new()));
        let fetched = self
            .client
            .fetch_with_options(name, Selector::Latest, &self.options);
        // Whatever was announced while the fetch was in flight may be
        // newer than what it brought back.
        self.catch_up();
        let (_, announced) = self.in_flight.take().unwrap_or_default();
        let asset = Arc::new(fetched?);
        let superseded = announced.iter().any(|event| match event {
            Event::Published(info) => info.version > asset.version(),
            Event::Removed(info) => info.version == asset.version(),
        });
        if cacheable
            && self.watcher.is_some()
            && self.resubscriptions == resubscriptions
            && !superseded
        {
            self.entries.insert(name.to_owned(), Arc::clone(&asset));
        }
        Ok(asset)
    }

    /// Wait until an announcement from the daemon is waiting to be applied,
    /// for at most `timeout` (`None`: forever), without applying it: the
    /// next [`fetch`](CachedClient::fetch) does. True if one is waiting;
    /// also true if there is no watch (the next fetch starts one).
    pub fn wait_for_announcement(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        match &self.watcher {
            Some(watcher) => watcher.wait(timeout),
            None => Ok(true),
        }
    }

    /// The client underneath, for uncached fetches and every other request.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// How many fetches the cache answered without asking the daemon.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// How many requests went to the daemon, the watch not counted.
    pub fn requests_sent(&self) -> u64 {
        self.client.requests_sent()
    }

    /// How many times the watch failed and the cache started over.
    pub fn resubscriptions(&self) -> u64 {
        self.resubscriptions
    }

    /// How many assets the cache holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forget every cached asset (callers that still hold one keep it).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Apply every announcement that has arrived; if the watch has failed,
    /// start over with a new one.
    fn catch_up(&mut self) {
        // At most one new subscription per call, so a daemon that keeps
        // failing watches cannot keep this loop going.
        let mut may_resubscribe = true;
        if self.watcher.is_none() {
            self.resubscribe();
            may_resubscribe = false;
        }
        while let Some(watcher) = &mut self.watcher {
            match watcher.try_next_event() {
                Ok(Some(event)) => self.forget(event),
                Ok(None) => return,
                Err(_) if may_resubscribe => {
                    self.resubscribe();
                    may_resubscribe = false;
                }
                Err(_) => {
                    self.entries.clear();
                    self.watcher = None;
                }
            }
        }
    }

    /// Drop the cached version of a name if an event makes it stale: a
    /// newer version was published, or this very version was removed. (A
    /// removal of an older version, pushed out by the newer ones the daemon
    /// keeps, changes nothing for the latest.)
    fn forget(&mut self, event: Event) {
        let info = event.info();
        let stale = match (&event, self.entries.get(&info.name)) {
            (_, None) => false,
            (Event::Published(info), Some(cached)) => info.version > cached.version(),
            (Event::Removed(info), Some(cached)) => info.version == cached.version(),
        };
        if stale {
            self.entries.remove(&info.name);
        }
        if let Some((name, announced)) = &mut self.in_flight {
            if *name == info.name {
                announced.push(event);
            }
        }
    }

    /// Changes may have been missed: forget everything and watch again. If
    /// that fails too (the daemon is away), stay without a watch and cache
    /// nothing until a later call succeeds.
    fn resubscribe(&mut self) {
        self.entries.clear();
        self.resubscriptions += 1;
        self.watcher = None;
        if self.client.is_lost() {
            if let Ok(client) = self.client.connect_options().connect() {
                self.client = client;
            }
        }
        self.watcher = self.client.watch(&self.prefix).ok();
    }
}

impl fmt::Debug for CachedClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedClient")
            .field("prefix", &self.prefix)
            .field("cached", &self.entries.len())
            .field("watching", &self.watcher.is_some())
            .field("hits", &self.hits)
            .finish()
    }
}
