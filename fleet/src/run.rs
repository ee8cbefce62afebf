//! `memseal-fleet run`: the agent as a service.
//!
//! Four kinds of task share one [`Agent`]:
//!
//! - the resolver ([`crate::resolver`]) is registered with memseald for
//!   the `--pull` prefixes (every name without one) and pulls each name a
//!   local client asks for and the daemon lacks, so that a plain fetch
//!   works on any node (pull-through);
//! - one watcher per `--push` prefix follows the local daemon's events
//!   and queues every version published there; on (re)connecting it also
//!   queues what was published while it was away;
//! - one pusher drains that queue, newest version of each name only, and
//!   puts a version back after a backoff when the store is unavailable;
//! - the poll loop re-reads, every `--poll` (with jitter, the first time at
//!   a random moment within the first interval), the manifest of
//!   each name this node pulled under the `--pull` prefixes (by the
//!   resolver or by a one-shot pull), as a conditional GET, and pulls the
//!   new version when one appears, so that local watchers see it as an
//!   ordinary publish.

use crate::agent::{Agent, Pushed};
use crate::backoff::{first_offset, jittered, Backoff};
use crate::error::Error;
use crate::metrics::Counter;
use crate::remote::ManifestRead;
use crate::resolver;
use crate::state::Record;
use memseal::{AssetInfo, Event};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Resolve the missing names under these prefixes, and keep fresh the
    /// pulled ones (every name if empty).
    pub pull: Vec<String>,
    /// Push every version published locally under these prefixes.
    pub push: Vec<String>,
    /// How often to re-check the manifests of pulled names.
    pub poll: Duration,
}

/// Run until SIGTERM or SIGINT. A refused registration as the resolver
/// (no right to publish under a `--pull` prefix) ends it at once.
pub async fn run(agent: Arc<Agent>, options: RunOptions) -> Result<(), Error> {
    tracing::info!(
        "memseal-fleet {} serving {}: pushing {}, supplying and keeping fresh what it pulls \
         under {} (manifests re-checked every {:?}, give or take a fifth)",
        env!("CARGO_PKG_VERSION"),
        agent.remote().url(),
        describe(&options.push, "nothing"),
        describe(&options.pull, "any prefix"),
        options.poll
    );
    let resolving = resolver::prefixes(&options.pull);
    let registered = resolver::register(&agent, &resolving).await?;
    let queue = Arc::new(PushQueue::default());
    let mut tasks = JoinSet::new();
    tasks.spawn(resolver::resolve(Arc::clone(&agent), resolving, registered));
    for prefix in &options.push {
        tasks.spawn(watch_for_pushes(
            Arc::clone(&agent),
            prefix.clone(),
            Arc::clone(&queue),
        ));
    }
    if !options.push.is_empty() {
        tasks.spawn(push_queued(Arc::clone(&agent), Arc::clone(&queue)));
    }
    tasks.spawn(keep_fresh(
        Arc::clone(&agent),
        options.pull.clone(),
        options.poll,
    ));
    tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!("{signal}: stopping ({})", agent.metrics().summary());
            Ok(())
        }
        ended = tasks.join_next() => Err(Error::io(
            "running the agent",
            std::io::Error::other(format!("a task ended unexpectedly: {ended:?}")),
        )),
    }
}

fn describe(prefixes: &[String], none: &str) -> String {
    if prefixes.is_empty() {
        none.to_owned()
    } else {
        prefixes
            .iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Wait for SIGTERM (systemd's stop) or SIGINT; returns its name.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action stops the process.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Versions waiting to be pushed: the newest of each name.
#[derive(Debug, Default)]
struct PushQueue {
    pending: Mutex<BTreeMap<String, AssetInfo>>,
    ready: Notify,
}

impl PushQueue {
    /// Queue `info`, unless a newer version of its name already waits.
    fn offer(&self, info: AssetInfo) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending
            .get(&info.name)
            .is_none_or(|queued| queued.version < info.version)
        {
            pending.insert(info.name.clone(), info);
        }
        drop(pending);
        self.ready.notify_one();
    }

    /// Wait for the next version to push.
    async fn take(&self) -> AssetInfo {
        loop {
            let next = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_first();
            if let Some((_, info)) = next {
                return info;
            }
            self.ready.notified().await;
        }
    }
}

/// Follow the local daemon's publishes under `prefix`, forever.
async fn watch_for_pushes(agent: Arc<Agent>, prefix: String, queue: Arc<PushQueue>) {
    let mut backoff = Backoff::default();
    loop {
        match agent.local().watch(&prefix).await {
            Ok(mut watcher) => {
                backoff.reset();
                // What was published before this watch began.
                match agent.local().list(&prefix).await {
                    Ok(assets) => assets.into_iter().for_each(|info| queue.offer(info)),
                    Err(e) => tracing::warn!("cannot list {prefix:?} in memseald: {e}"),
                }
                loop {
                    match watcher.next_event().await {
                        Ok(Event::Published(info)) => queue.offer(info),
                        Ok(Event::Removed(_)) => {}
                        Err(e) => {
                            tracing::warn!("the watch of {prefix:?} ended ({e}); watching again");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("{e}; trying again"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Push queued versions one at a time, forever.
async fn push_queued(agent: Arc<Agent>, queue: Arc<PushQueue>) {
    let mut backoff = Backoff::default();
    loop {
        let info = queue.take().await;
        match agent.push(&info).await {
            Ok(Pushed::Pushed { .. } | Pushed::Gone | Pushed::PulledHere) => {
                backoff.reset();
            }
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    "cannot push {} version {} yet ({e}); trying again in {:.1} s",
                    info.name,
                    info.version,
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
                queue.offer(info);
            }
            Err(e) => tracing::error!("not pushing {} version {}: {e}", info.name, info.version),
        }
    }
}

/// Re-check the manifests of the names this node pulled, forever.
async fn keep_fresh(agent: Arc<Agent>, prefixes: Vec<String>, poll: Duration) {
    tokio::time::sleep(first_offset(poll)).await;
    loop {
        match agent.state().records() {
            Ok(records) => {
                for record in names_to_refresh(records, &prefixes) {
                    refresh(&agent, &record).await;
                }
            }
            Err(e) => tracing::warn!("cannot read the state: {e}"),
        }
        tokio::time::sleep(jittered(poll)).await;
    }
}

/// The latest pulled version of each name under `prefixes` (all names if
/// there are none), leaving out versions pinned by hash and pulls still in
/// progress.
fn names_to_refresh(records: Vec<Record>, prefixes: &[String]) -> Vec<Record> {
    let mut latest: BTreeMap<String, Record> = BTreeMap::new();
    for record in records {
        if record.pinned || record.version == 0 {
            continue;
        }
        if !prefixes.is_empty() && !prefixes.iter().any(|p| record.name.starts_with(p.as_str())) {
            continue;
        }
        match latest.get(&record.name) {
            Some(kept) if kept.version >= record.version => {}
            _ => {
                latest.insert(record.name.clone(), record);
            }
        }
    }
    latest.into_values().collect()
}

/// One conditional GET of `record`'s manifest, and a pull if it changed.
/// A blob refused lately is not downloaded again (the agent remembers it;
/// see [`crate::refused`]): the pull fails at once until its wait is over.
async fn refresh(agent: &Agent, record: &Record) {
    let name = &record.name;
    agent.metrics().add(Counter::Polls, 1);
    let (manifest, etag) = match agent.read_manifest(name, record.etag.as_deref()).await {
        Ok(ManifestRead::NotModified) => {
            agent.metrics().add(Counter::PollsUnchanged, 1);
            return;
        }
        Ok(ManifestRead::Missing) => {
            tracing::debug!("{name}: the store has no manifest any more; keeping the local copy");
            return;
        }
        Ok(ManifestRead::Found(manifest, etag)) => (manifest, etag),
        Err(e) => {
            tracing::warn!("{name}: cannot check for a new version ({e})");
            return;
        }
    };
    if record.holds(&manifest.hash()) {
        // The same content under a new ETag (a push from another node that
        // carried the same bytes): remember the ETag, nothing to fetch.
        let result = agent.state().update(|records| {
            for r in records.iter_mut().filter(|r| r.name == *name) {
                r.etag = etag.clone();
            }
        });
        if let Err(e) = result {
            tracing::warn!("cannot update the state: {e}");
        }
        return;
    }
    if taken_over_locally(agent, record).await {
        return;
    }
    match agent.pull_announced(&manifest, etag.clone()).await {
        Ok(pulled) => {
            tracing::info!(
                "{name}: the store's new version is local version {}",
                pulled.info.version
            );
        }
        // Logged and counted by the agent when it happened.
        Err(Error::Integrity(_)) => {}
        Err(e) => tracing::warn!("{name}: cannot pull the new version yet ({e}); next poll"),
    }
}

/// True (and the name is forgotten) when a version newer than the pulled
/// one was published on this node itself: local publishers now own the
/// name, and the store must not overwrite their work.
async fn taken_over_locally(agent: &Agent, record: &Record) -> bool {
    let latest = match agent.local().latest(&record.name).await {
        Ok(latest) => latest,
        Err(e) => {
            tracing::warn!("{}: cannot look it up in memseald ({e})", record.name);
            return true;
        }
    };
    let Some(latest) = latest else { return false };
    if latest.version <= record.version || record.holds(&latest.hash) {
        return false;
    }
    tracing::info!(
        "{}: version {} was published on this node; the name is no longer kept fresh from \
         the store",
        record.name,
        latest.version
    );
    if let Err(e) = agent
        .state()
        .update(|records| records.retain(|r| r.name != record.name))
    {
        tracing::warn!("cannot update the state: {e}");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, version: u64) -> Record {
        Record {
            name: name.into(),
            version,
            blake3: String::new(),
            size: 0,
            used_ms: 0,
            etag: None,
            pinned: false,
        }
    }

    #[test]
    fn refreshes_the_latest_pulled_version_of_each_name_under_the_prefixes() {
        let mut pinned = record("models/pinned", 1);
        pinned.pinned = true;
        let records = vec![
            record("models/a", 1),
            record("models/a", 3),
            record("models/a", 2),
            record("models/pending", 0),
            pinned,
            record("other/b", 1),
        ];
        let chosen = names_to_refresh(records.clone(), &["models/".to_owned()]);
        let chosen: Vec<_> = chosen
            .iter()
            .map(|r| (r.name.as_str(), r.version))
            .collect();
        assert_eq!(chosen, [("models/a", 3)]);
        assert_eq!(names_to_refresh(records, &[]).len(), 2);
    }

    #[tokio::test]
    async fn the_queue_keeps_the_newest_version_of_each_name() {
        let queue = PushQueue::default();
        let info = |name: &str, version| AssetInfo {
            name: name.into(),
            version,
            size: 0,
            hash: [0; 32],
            published_ms: 0,
            publisher_uid: 0,
        };
        queue.offer(info("b", 1));
        queue.offer(info("a", 2));
        queue.offer(info("a", 1));
        queue.offer(info("a", 3));
        assert_eq!(queue.take().await.version, 3);
        assert_eq!(queue.take().await.name, "b");
    }
}
