//! Pull-through: `run` as memseald's resolver of the `--pull` prefixes.
//!
//! memseald announces each name a client asks for and does not hold,
//! under a prefix this agent registered for, once however many clients
//! wait for it (PROTOCOL.md, section 7.12), and parks the clients. The
//! agent answers an announcement with an ordinary [`Agent::pull`]: the
//! publish at its end wakes every waiter, so a plain fetch of a name that
//! only another node pushed is, for the client, one round trip that lasts
//! one download. What the agent cannot supply it says at once
//! (`Unresolved`, with the reason), so that clients learn `NotFound` or
//! `Unavailable` now rather than at the daemon's `resolve_timeout`.
//!
//! ```text
//! client ──Fetch──► memseald ──Wanted──────► serve: the registration's connection, always read
//!   ▲                │ ▲ ▲                      │ spawns, at most CONCURRENT_PULLS at once
//!   │                │ │ └──Unresolved──────────┤◄── the error, when a pull failed
//!   │                │ │                        ▼
//!   └──Asset─────────┘ └──publish_sealed──── Agent::pull (manifest, ranged GETs, verify, seal)
//!      (the publish wakes every waiter)
//! ```
//!
//! - What is asked for decides what is pulled: `Latest` pulls what the
//!   name's manifest names, and `Hash(h)` exactly that content, if the
//!   manifest names `h` now ([`Want::Named`]). Any local user may ask for
//!   any name, and the agent publishes with rights they lack: supplying
//!   any blob of the bucket under any name would let them repoint names
//!   (an old, known-bad version; another name's content). Other content
//!   is refused with `NotFound`; pinning it stays the operator's
//!   `pull --hash`. `Version(n)` is refused at once with `NotFound`:
//!   version numbers belong to each daemon, the store keeps one manifest
//!   per name (its latest), and nothing can make a download become this
//!   node's version `n`.
//! - The registration's connection carries nothing else, and keeps being
//!   read while pulls run, each in a task of its own; [`CONCURRENT_PULLS`]
//!   bounds the downloads, not the announcements (memseald bounds those:
//!   at most 1,024 pending per resolver).
//! - Pulls are recorded as a one-shot pull's are, so the poll loop keeps
//!   what came this way fresh and eviction may reclaim it.
//! - The agent never asks memseald in a way that would be announced back
//!   to itself (see [`crate::local`]): it would wait for its own answer.
//! - When the connection ends (memseald restarted, or dropped it), the
//!   agent registers again after a backoff. Pulls under way finish
//!   regardless, and their publish serves the clients that ask again.

use crate::agent::{Agent, Want};
use crate::backoff::Backoff;
use crate::error::Error;
use crate::rate::RateLimit;
use memseal::proto::message::hash_to_hex;
use memseal::{AsyncResolver, ErrorCode, Selector, Wanted};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// Wanted names downloaded at once; the others wait for their turn. Each
/// download has `--connections` requests in flight of its own.
pub const CONCURRENT_PULLS: usize = 4;

/// The longest reason sent to waiting clients (store errors can be long).
const MAX_REASON_BYTES: usize = 1024;

/// Warnings about pulls that failed (the store unreachable, no room), which
/// any local user can cause by asking: this many at once...
const WARNINGS_AT_ONCE: u64 = 20;
/// ... and then this many a minute. The rest are counted, and the next
/// warning written says how many were left out.
const WARNINGS_PER_MINUTE: u64 = 6;

/// The prefixes to register for: those given with `--pull`, or the empty
/// prefix, which covers every name, when none is given. memseald lets a
/// client resolve a prefix only if it may publish every name under it, so
/// the empty one needs the right to publish any name.
pub fn prefixes(pull: &[String]) -> Vec<String> {
    if pull.is_empty() {
        vec![String::new()]
    } else {
        pull.to_vec()
    }
}

/// Register with memseald as the resolver of `prefixes`, on a connection
/// of its own. At start, `run` ends on a refusal, which says what is wrong.
pub async fn register(agent: &Agent, prefixes: &[String]) -> Result<AsyncResolver, Error> {
    let doing = format!(
        "registering with memseald as the resolver of {} (pull-through; it needs the right \
         to publish every name under them)",
        describe_prefixes(prefixes)
    );
    let resolver = agent.local().resolver(prefixes, &doing).await?;
    tracing::info!(
        "memseald asks this agent for the names it lacks under {}; at most {CONCURRENT_PULLS} \
         are pulled at once",
        describe_prefixes(prefixes)
    );
    Ok(resolver)
}

/// Answer memseald's announcements forever, starting on `resolver` and
/// registering again whenever its connection ends.
pub async fn resolve(agent: Arc<Agent>, prefixes: Vec<String>, mut resolver: AsyncResolver) {
    let permits = Arc::new(Semaphore::new(CONCURRENT_PULLS));
    let mut backoff = Backoff::default();
    loop {
        let ended = serve(&agent, &mut resolver, &permits).await;
        tracing::warn!("memseald stopped announcing wanted names ({ended}); registering again");
        resolver = loop {
            tokio::time::sleep(backoff.next_delay()).await;
            match register(&agent, &prefixes).await {
                Ok(resolver) => break resolver,
                Err(e) => tracing::warn!("{e}; trying again"),
            }
        };
        backoff.reset();
    }
}

/// What the agent does about one announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// Pull this from the store.
    Pull(Want),
    /// Tell the waiters at once that it cannot be had.
    Refuse(ErrorCode, String),
}

fn answer(wanted: &Wanted) -> Answer {
    match wanted.selector {
        Selector::Latest => Answer::Pull(Want::Latest),
        Selector::Hash(hash) => Answer::Pull(Want::Named(hash)),
        Selector::Version(version) => Answer::Refuse(
            ErrorCode::NotFound,
            format!(
                "this node has no version {version} of {}, and memseal-fleet cannot supply a \
                 version by number: numbers belong to each node's memseald, and the store \
                 keeps only the latest manifest of a name; ask for the latest version or \
                 for the content's hash",
                wanted.name
            ),
        ),
    }
}

/// Serve one registration until its connection ends; returns why it did.
async fn serve(
    agent: &Arc<Agent>,
    resolver: &mut AsyncResolver,
    permits: &Arc<Semaphore>,
) -> memseal::Error {
    // Pulls that failed, for their waiters; the pulls of an earlier
    // registration report into a channel nobody reads any more.
    let (failures, mut failed) = mpsc::unbounded_channel::<(Wanted, Error)>();
    let per_second = WARNINGS_PER_MINUTE as f64 / 60.0;
    let warnings = RateLimit::with_burst(
        per_second,
        Duration::from_secs_f64(WARNINGS_AT_ONCE as f64 / per_second),
    );
    let mut left_out = 0u64;
    loop {
        let refusal = tokio::select! {
            // Cancel-safe: a partly received announcement stays buffered.
            next = resolver.next_wanted() => {
                let wanted = match next {
                    Ok(wanted) => wanted,
                    Err(e) => return e,
                };
                tracing::debug!("wanted: {} ({})", wanted.name, describe(wanted.selector));
                match answer(&wanted) {
                    Answer::Pull(want) => {
                        spawn_pull(agent, wanted, want, permits, &failures);
                        continue;
                    }
                    Answer::Refuse(code, reason) => (wanted, code, reason),
                }
            }
            Some((wanted, error)) = failed.recv() => {
                let what = format!("{} ({})", wanted.name, describe(wanted.selector));
                let line = format!("cannot supply {what} to the clients waiting for it: {error}");
                // A missing name is the clients' answer, not the agent's
                // problem; a repeated refusal was logged when it happened.
                if matches!(error, Error::NotFound(_)) || error.is_repeated_refusal() {
                    tracing::debug!("{line}");
                } else if warnings.try_admit(1) {
                    match std::mem::take(&mut left_out) {
                        0 => tracing::warn!("{line}"),
                        n => tracing::warn!("{line} ({n} such warning(s) left out before this one)"),
                    }
                } else {
                    left_out += 1;
                }
                let reason = format!(
                    "memseal-fleet could not supply it from {}: {error}",
                    agent.remote().url()
                );
                (wanted, error.code_for_waiters(), reason)
            }
        };
        let (wanted, code, reason) = refusal;
        if let Err(e) = resolver
            .unresolved(&wanted, code, bounded(&reason, MAX_REASON_BYTES))
            .await
        {
            return e;
        }
    }
}

/// Pull `want` for `wanted` in a task of its own, once a permit is free;
/// a failure goes back to `failures`.
fn spawn_pull(
    agent: &Arc<Agent>,
    wanted: Wanted,
    want: Want,
    permits: &Arc<Semaphore>,
    failures: &mpsc::UnboundedSender<(Wanted, Error)>,
) {
    let (agent, permits, failures) = (Arc::clone(agent), Arc::clone(permits), failures.clone());
    tokio::spawn(async move {
        let Ok(_permit) = permits.acquire_owned().await else {
            return; // Never closed.
        };
        match agent.pull(&wanted.name, want).await {
            Ok(pulled) => tracing::debug!(
                "supplied {} ({}) as version {}",
                wanted.name,
                describe(wanted.selector),
                pulled.info.version
            ),
            Err(e) => {
                let _ = failures.send((wanted, e));
            }
        }
    });
}

/// `selector` in words, for the log.
fn describe(selector: Selector) -> String {
    match selector {
        Selector::Latest => "the latest version".to_owned(),
        Selector::Version(version) => format!("version {version}"),
        Selector::Hash(hash) => format!("content blake3 {}", hash_to_hex(&hash)),
    }
}

/// `"models/", "dicts/"`, or `"" (every name)`.
fn describe_prefixes(prefixes: &[String]) -> String {
    prefixes
        .iter()
        .map(|p| {
            if p.is_empty() {
                "\"\" (every name)".to_owned()
            } else {
                format!("{p:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn bounded(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(selector: Selector) -> Wanted {
        Wanted {
            name: "models/a".into(),
            selector,
        }
    }

    #[test]
    fn every_name_unless_prefixes_are_given() {
        assert_eq!(prefixes(&[]), [""]);
        let given = ["models/".to_owned(), "dicts/".to_owned()];
        assert_eq!(prefixes(&given), given);
        assert_eq!(describe_prefixes(&prefixes(&[])), "\"\" (every name)");
    }

    #[test]
    fn latest_and_hashes_are_pulled_and_numbers_refused() {
        assert_eq!(
            answer(&wanted(Selector::Latest)),
            Answer::Pull(Want::Latest)
        );
        assert_eq!(
            answer(&wanted(Selector::Hash([7; 32]))),
            Answer::Pull(Want::Named([7; 32]))
        );
        let Answer::Refuse(code, reason) = answer(&wanted(Selector::Version(3))) else {
            panic!("a version is not pulled");
        };
        assert_eq!(code, ErrorCode::NotFound);
        assert!(reason.contains("no version 3 of models/a"), "{reason}");
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("short", 1024), "short");
        assert_eq!(bounded("ab\u{e9}", 3), "ab");
        assert_eq!(bounded(&"x".repeat(5000), 1024).len(), 1024);
    }
}
