//! memseald: the daemon that keeps immutable assets in sealed memfds and
//! hands out read-only descriptors to them.
//!
//! # Layout
//!
//! - [`config`]: flags, settings file and defaults.
//! - `listener`: the listening socket, inherited from systemd or bound here.
//! - `server`: the accept loop, connection limit and graceful shutdown.
//! - `connection`: one client: handshake, requests, deadlines.
//! - `state`: the state connections share (catalog, policy, counters).
//! - `catalog`: names, versions, deduplicated blobs and the byte budget.
//! - `blob`: making sealed memfds from uploads, files and adopted memfds.
//! - `descriptions`: the read-only descriptions readers receive, one per
//!   connection, so no reader can move another's offset or flags.
//! - `policy`: who may publish and remove which names.
//! - `resolvers`: pull-through: missing names announced to the client
//!   that resolves their prefix, and the clients that wait for them.
//! - `rate_budget`: how often a user's requests may be logged, and start
//!   pulls through a resolver.
//! - `notify`: readiness, status and watchdog for the service manager.
//! - `persist`: the service manager's fd store, so a restart or a crash
//!   loses no asset.
//! - `assets`: assets declared as files, published at start and on reload.
//! - `sys`: the few `unsafe` system calls, each behind a safe function.
//!
//! # The path of a publish
//!
//! The client sends `Publish`; `connection` checks the name and the
//! `policy`, reserves the size in the `catalog`'s budget (refusing
//! before anything is allocated), then fills a fresh memfd from the socket
//! or reads the client's file into one with `pread` (`blob`); a sealed
//! memfd of the publisher's own may be adopted instead. The memfd is set to
//! mode 0444 and sealed with WRITE, GROW, SHRINK and SEAL; the daemon
//! hashes it itself; only then does `state` insert it into the catalog,
//! sharing the memfd of identical content, and the new version becomes
//! visible. A publisher that vanishes before that leaves nothing behind.
//!
//! # The path of a fetch
//!
//! The client sends `Fetch`; the catalog finds the version; the connection
//! sends its read-only memfd as `SCM_RIGHTS` on the reply's first byte. The
//! client library checks the seals before mapping. The daemon copies no
//! byte of the asset: a fetch costs the same for 4 KiB and 4 GiB. A
//! client that keeps fetching is served in a fast lane, a thread that
//! waits for its requests itself (one `poll`, one `recvmsg` and one
//! `sendmsg` per fetch), until it asks for something else or falls idle.

// Unsafe code only where a module opts in: `sys`.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

mod assets;
mod blob;
mod catalog;
pub mod config;
mod connection;
mod descriptions;
mod listener;
mod notify;
mod persist;
mod policy;
mod rate_budget;
mod resolvers;
mod server;
mod state;
#[allow(unsafe_code)]
mod sys;

use catalog::Budget;
use config::Config;
use policy::Policy;
use state::State;
use std::sync::Arc;
use tracing::{info, warn};

/// Run the daemon until SIGTERM or SIGINT. Errors are fatal start-up
/// problems, worded for the person who started it.
pub fn run(config: Config) -> Result<(), String> {
    raise_descriptor_limit();
    sys::return_large_buffers_to_the_kernel();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("memseald")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> Result<(), String> {
    let listening = listener::listen(&config.socket, config.socket_explicit)?;
    let (policy, warnings) = Policy::from_config(&config.policy);
    for warning in warnings {
        warn!("policy: {warning}");
    }
    let state = State::new(
        Budget {
            max_asset_size: config.max_asset_size,
            max_total_bytes: config.max_total_bytes,
            keep_versions: config.keep_versions,
            max_bytes_per_uid: config.max_bytes_per_uid,
            max_assets_per_uid: config.max_assets_per_uid,
            max_blobs: config.max_blobs,
            max_versions: config.max_versions,
            publisher_reserve_percent: config.publisher_reserve,
        },
        policy,
    );
    if persist::available() {
        let (keeper, _) = persist::restore(&state, listening.stored);
        state.observe(keeper.observer());
    } else if !listening.stored.is_empty() {
        warn!(
            count = listening.stored.len(),
            "closing descriptors passed without a service manager to keep them"
        );
    }
    if let Some(dir) = &config.assets_dir {
        assets::publish_declared(&state, dir).await;
    }
    let listener = tokio::net::UnixListener::from_std(listening.listener)
        .map_err(|e| format!("cannot register the listening socket: {e}"))?;
    let config = Arc::new(config);
    match &listening.owned_path {
        Some(path) => info!(socket = %path.display(), "listening"),
        None => info!("listening on the socket passed by the service manager"),
    }
    info!(
        max_asset_size = config.max_asset_size,
        max_total_bytes = config.max_total_bytes,
        keep_versions = config.keep_versions,
        max_connections = config.max_connections,
        "ready"
    );
    // Signal handlers before READY=1: a SIGTERM or SIGHUP sent right after
    // it must not meet the default action, which kills the process.
    let stop = stop_signal();
    spawn_reloader(state.clone(), config.clone());
    notify::ready(&state);
    notify::spawn_heartbeat(state.clone());
    server::serve(listener, state.clone(), config.clone(), stop).await;
    notify::stopping();
    if let Some(path) = &listening.owned_path {
        if let Err(e) = std::fs::remove_file(path) {
            warn!("cannot remove the socket {}: {e}", path.display());
        }
    }
    info!("stopped");
    Ok(())
}

/// On SIGHUP: read the access policy again and republish the declared
/// assets, telling the service manager when the reload starts and ends.
fn spawn_reloader(state: Arc<State>, config: Arc<Config>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        warn!("cannot handle SIGHUP; reloads are disabled");
        return;
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            info!("SIGHUP received: reloading");
            notify::reloading();
            if let Some(path) = &config.config_file {
                match config::reread_policy(path) {
                    Ok(policy) => {
                        let (policy, warnings) = Policy::from_config(&policy);
                        for warning in warnings {
                            warn!("policy: {warning}");
                        }
                        state.set_policy(policy);
                    }
                    Err(e) => warn!("keeping the current policy: {e}"),
                }
            }
            if let Some(dir) = &config.assets_dir {
                assets::publish_declared(&state, dir).await;
            }
            notify::ready(&state);
        }
    });
}

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed
/// when this is called, not when the future is first polled.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
    }
}

/// Descriptors are the daemon's main resource: one per distinct asset, one
/// per connection, and one per reply in flight. Raise the soft limit to
/// the hard one; where that is forbidden (a seccomp filter), keep going.
fn raise_descriptor_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            eprintln!("memseald: cannot raise the descriptor limit: {e}");
        }
    }
}
