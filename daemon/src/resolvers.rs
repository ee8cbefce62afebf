//! Pull-through: names the daemon does not hold, supplied on demand by a
//! resolver (the fleet agent, say) that publishes them.
//!
//! A client with publish rights for some prefixes registers as their
//! resolver (`Request::Resolve`). A fetch or stat of a missing name under
//! one of them then starts a *pull*: the resolver hears `Wanted` once,
//! however many clients wait for the same name and selector (single
//! flight), and every waiter is woken when a matching version is
//! published (by anyone, on any connection), when the resolver says it
//! cannot supply it (`Request::Unresolved`), when the resolver goes away,
//! or at the deadline. The daemon never waits on anything but this: the
//! network is the resolver's business, and local names are served as
//! always.
//!
//! What a resolver can be made to do is bounded: each has a queue of at
//! most [`MAX_PENDING_PULLS`] pulls, and a user who is not a publisher may
//! start only so many pulls at once and a second (`rate_budget::PULLS`),
//! joining a pull under way being free; a pull beyond either fails at once
//! with `Unavailable`. Where no resolver covers a name, nothing changes: a
//! fetch of a missing name answers `NotFound` at once, as it always did.

use crate::rate_budget::PULLS;
use memseal_proto::{AssetInfo, ErrorCode, ErrorReply, Selector};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Pulls one resolver may have announced and not yet finished.
pub const MAX_PENDING_PULLS: usize = 1024;

/// How a pull ended, for its waiters.
pub type Outcome = Result<(), ErrorReply>;

/// What a resolver is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub selector: Selector,
}

struct Registration {
    id: u64,
    prefixes: Vec<String>,
    wanted: mpsc::Sender<Wanted>,
}

struct Pull {
    resolver: u64,
    done: watch::Sender<Option<Outcome>>,
    expires: Instant,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    resolvers: Vec<Registration>,
    pulls: HashMap<(String, Selector), Pull>,
}

/// The resolvers connected now and the pulls in progress.
#[derive(Default)]
pub struct Resolvers {
    registry: Mutex<Registry>,
}

/// A waiter's side of a pull.
pub type Waiter = watch::Receiver<Option<Outcome>>;

impl Resolvers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a resolver of `prefixes`; its `Wanted` announcements come
    /// out of the returned receiver. Returns its id, for
    /// [`Resolvers::unregister`].
    pub fn register(&self, prefixes: Vec<String>) -> (u64, mpsc::Receiver<Wanted>) {
        let (wanted, receiver) = mpsc::channel(MAX_PENDING_PULLS);
        let mut registry = self.lock();
        registry.next_id += 1;
        let id = registry.next_id;
        registry.resolvers.push(Registration {
            id,
            prefixes,
            wanted,
        });
        (id, receiver)
    }

    /// The resolver `id` went away: its pulls fail now rather than at
    /// their deadline.
    pub fn unregister(&self, id: u64) {
        let mut registry = self.lock();
        registry.resolvers.retain(|r| r.id != id);
        registry.pulls.retain(|_, pull| {
            if pull.resolver == id {
                pull.done.send_replace(Some(Err(ErrorReply {
                    code: ErrorCode::Unavailable,
                    message: "the resolver of this name disconnected before supplying it"
                        .to_owned(),
                })));
            }
            pull.resolver != id
        });
    }

    /// Wait for `name` through its resolver, announcing it unless a pull
    /// of it is already under way: None when no resolver covers the name
    /// (nothing changes then), else the waiter, whose value turns Some
    /// when the pull ends. `timeout` bounds how long this pull is shared.
    /// `may_start` is asked only when a new pull would be announced: false
    /// fails this one at once (the asker is over its budget).
    pub fn pull(
        &self,
        name: &str,
        selector: Selector,
        timeout: Duration,
        may_start: impl FnOnce() -> bool,
    ) -> Option<Waiter> {
        let now = Instant::now();
        let mut registry = self.lock();
        registry.pulls.retain(|_, pull| pull.expires > now);
        let key = (name.to_owned(), selector);
        if let Some(pull) = registry.pulls.get(&key) {
            return Some(pull.done.subscribe());
        }
        // The resolver with the longest prefix of the name.
        let resolver = registry
            .resolvers
            .iter()
            .filter_map(|r| {
                let longest = r
                    .prefixes
                    .iter()
                    .filter(|p| name.starts_with(p.as_str()))
                    .map(String::len)
                    .max()?;
                Some((longest, r))
            })
            .max_by_key(|(longest, _)| *longest)
            .map(|(_, r)| (r.id, r.wanted.clone()))?;
        let (done, waiter) = watch::channel(None);
        if !may_start() {
            let (per_uid, users) = (PULLS.per_uid, PULLS.users);
            let _ = done.send(Some(Err(ErrorReply {
                code: ErrorCode::Unavailable,
                message: format!(
                    "'{name}' is not held here, and this user has asked for more missing \
                     names than memseald passes on to a resolver: {} at once and {} a \
                     second per user, {} and {} for all users who are not publishers; \
                     retry later",
                    per_uid.burst, per_uid.per_second, users.burst, users.per_second
                ),
            })));
            return Some(waiter);
        }
        let wanted = Wanted {
            name: name.to_owned(),
            selector,
        };
        if resolver.1.try_send(wanted).is_err() {
            let _ = done.send(Some(Err(ErrorReply {
                code: ErrorCode::Unavailable,
                message: format!(
                    "the resolver of '{name}' has {MAX_PENDING_PULLS} pulls pending; retry later"
                ),
            })));
            return Some(waiter);
        }
        registry.pulls.insert(
            key,
            Pull {
                resolver: resolver.0,
                done,
                expires: now + timeout,
            },
        );
        Some(waiter)
    }

    /// A version became visible: finish the pulls it satisfies.
    pub fn published(&self, info: &AssetInfo) {
        let mut registry = self.lock();
        if registry.pulls.is_empty() {
            return;
        }
        registry.pulls.retain(|(name, selector), pull| {
            let satisfied = name == &info.name
                && match selector {
                    Selector::Latest => true,
                    Selector::Version(v) => *v == info.version,
                    Selector::Hash(h) => *h == info.hash,
                };
            if satisfied {
                pull.done.send_replace(Some(Ok(())));
            }
            !satisfied
        });
    }

    /// The resolver `id` cannot supply `name`: its waiters get `error`.
    /// Ignored unless that resolver was asked for it.
    pub fn unresolved(&self, id: u64, name: &str, selector: Selector, error: ErrorReply) {
        let mut registry = self.lock();
        let key = (name.to_owned(), selector);
        if registry.pulls.get(&key).is_some_and(|p| p.resolver == id) {
            let pull = registry.pulls.remove(&key).expect("present");
            pull.done.send_replace(Some(Err(error)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, version: u64) -> AssetInfo {
        AssetInfo {
            name: name.into(),
            version,
            size: 0,
            hash: [version as u8; 32],
            published_ms: 0,
            publisher_uid: 0,
        }
    }

    #[test]
    fn one_announcement_however_many_wait_and_a_publish_ends_it() {
        let resolvers = Resolvers::default();
        assert!(resolvers
            .pull("models/a", Selector::Latest, Duration::from_secs(5), || {
                true
            })
            .is_none());
        let (_, mut wanted) = resolvers.register(vec!["models/".into()]);
        let waiters: Vec<Waiter> = (0..16)
            .map(|_| {
                resolvers
                    .pull("models/a", Selector::Latest, Duration::from_secs(5), || {
                        true
                    })
                    .unwrap()
            })
            .collect();
        assert_eq!(
            wanted.try_recv().unwrap(),
            Wanted {
                name: "models/a".into(),
                selector: Selector::Latest
            }
        );
        assert!(wanted.try_recv().is_err(), "announced once");
        resolvers.published(&info("models/b", 1));
        assert!(waiters.iter().all(|w| w.borrow().is_none()));
        resolvers.published(&info("models/a", 3));
        assert!(waiters.iter().all(|w| *w.borrow() == Some(Ok(()))));
    }

    #[test]
    fn a_refusal_or_a_departure_ends_the_pull_with_its_reason() {
        let resolvers = Resolvers::default();
        let (id, _wanted) = resolvers.register(vec!["m/".into()]);
        let waiter = resolvers
            .pull("m/x", Selector::Version(2), Duration::from_secs(5), || true)
            .unwrap();
        let error = ErrorReply {
            code: ErrorCode::NotFound,
            message: "not in the store".into(),
        };
        resolvers.unresolved(id, "m/x", Selector::Version(2), error.clone());
        assert_eq!(*waiter.borrow(), Some(Err(error)));
        let waiter = resolvers
            .pull("m/y", Selector::Latest, Duration::from_secs(5), || true)
            .unwrap();
        resolvers.unregister(id);
        let outcome = waiter.borrow().clone().unwrap().unwrap_err();
        assert_eq!(outcome.code, ErrorCode::Unavailable);
        assert!(resolvers
            .pull("m/z", Selector::Latest, Duration::from_secs(5), || true)
            .is_none());
    }

    #[test]
    fn a_pull_over_budget_is_not_announced_and_joining_one_is_free() {
        let resolvers = Resolvers::default();
        let (_, mut wanted) = resolvers.register(vec!["m/".into()]);
        let refused = resolvers
            .pull("m/x", Selector::Latest, Duration::from_secs(5), || false)
            .unwrap();
        let outcome = refused.borrow().clone().unwrap().unwrap_err();
        assert_eq!(outcome.code, ErrorCode::Unavailable);
        assert!(
            outcome.message.contains("retry later"),
            "{}",
            outcome.message
        );
        assert!(wanted.try_recv().is_err(), "not announced");

        let _started = resolvers
            .pull("m/x", Selector::Latest, Duration::from_secs(5), || true)
            .unwrap();
        let joined = resolvers.pull("m/x", Selector::Latest, Duration::from_secs(5), || {
            panic!("joining a pull under way is not asked for")
        });
        assert!(joined.is_some_and(|waiter| waiter.borrow().is_none()));
        assert_eq!(wanted.try_recv().unwrap().name, "m/x");
    }
}
