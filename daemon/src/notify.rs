//! Talking to the service manager: readiness, status, watchdog, stopping.
//!
//! Every call is a no-op when `NOTIFY_SOCKET` is unset, so the same binary
//! runs by hand, under systemd, or under a test harness that plays
//! systemd's side of the protocol.

use crate::state::State;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        warn!("cannot notify the service manager: {e}");
    }
}

/// The socket serves: tell the service manager, with a first status line.
pub fn ready(state: &State) {
    let status = state.summary();
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// A reload of the declared assets has begun (systemd waits for READY=1).
pub fn reloading() {
    let now = sd_notify::NotifyState::monotonic_usec_now();
    match now {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Refresh STATUS= now and then, and ping the watchdog when one is set.
pub fn spawn_heartbeat(state: Arc<State>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    // Ping at half the watchdog interval, as sd_watchdog_enabled(3) advises;
    // refresh the status line every few seconds otherwise.
    let period = watchdog
        .map(|w| w / 2)
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        let mut last = String::new();
        loop {
            ticker.tick().await;
            let status = state.summary();
            let mut states = Vec::with_capacity(2);
            if watchdog.is_some() {
                states.push(NotifyState::Watchdog);
            }
            if status != last {
                states.push(NotifyState::Status(&status));
            }
            if !states.is_empty() {
                send(&states);
            }
            last = status;
        }
    });
}
