//! The node's memseald, through the client library's public API: one
//! connection, shared by the agent's tasks one request at a time, opened
//! again after the daemon restarts; watches and the resolver registration
//! get connections of their own.
//!
//! # Lookups that never wait on pull-through
//!
//! Under pull-through (`run`, see [`crate::resolver`]) memseald does not
//! answer a fetch or stat of a missing name with `NotFound`: it announces
//! the name to its resolver, which is this very agent, and parks the
//! request until the name is published or the resolve timeout passes. An
//! agent that asked that way whether it already holds a name it is about
//! to pull would wait for itself, and hold the shared connection meanwhile.
//! So the agent asks only two kinds of question about a name:
//!
//! - [`Local::latest`], its latest version, from a listing, which the
//!   daemon always answers at once;
//! - [`Local::version`] and [`Local::fetch_version`], one numbered
//!   version, which the agent's resolver refuses at once when the daemon
//!   lacks it (a number cannot be pulled), so they do not wait either.

use crate::error::Error;
use memseal::{Asset, AssetInfo, AsyncClient, AsyncResolver, AsyncWatcher, ConnectOptions};
use memseal::{ErrorCode, Limits, Selector, ServerStatus};
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use tokio::sync::Mutex;

/// The local daemon.
#[derive(Debug)]
pub struct Local {
    options: ConnectOptions,
    /// The open connection, or `None` after one broke.
    client: Mutex<Option<AsyncClient>>,
}

impl Local {
    /// Connect to the daemon at `socket` (the default socket if `None`),
    /// so that a wrong path is reported at start.
    pub async fn connect(socket: Option<PathBuf>) -> Result<Local, Error> {
        let mut options = ConnectOptions::new().client_name("memseal-fleet");
        if let Some(socket) = socket {
            options = options.socket(socket);
        }
        let client = AsyncClient::connect(&options)
            .await
            .map_err(|e| Error::local("connecting to memseald", e))?;
        Ok(Local {
            options,
            client: Mutex::new(Some(client)),
        })
    }

    /// Send one request: `op` on the connection, reconnecting first if
    /// the last one broke, and forgetting the connection if this request
    /// breaks it.
    async fn once<T>(
        &self,
        op: impl AsyncFnOnce(&mut AsyncClient) -> Result<T, memseal::Error>,
    ) -> Result<T, Failure> {
        let mut slot = self.client.lock().await;
        let kept = slot.is_some();
        let client = match slot.as_mut() {
            Some(client) => client,
            None => slot.insert(
                AsyncClient::connect(&self.options)
                    .await
                    .map_err(Failure::Connect)?,
            ),
        };
        let result = op(client).await;
        result.map_err(|error| {
            if breaks_connection(&error) {
                *slot = None;
            }
            Failure::Request {
                stale: kept && is_gone(&error),
                error,
            }
        })
    }

    /// A request that changes nothing (`make` builds it afresh for each
    /// attempt). One that finds the kept connection gone (memseald
    /// restarted since the last request) is asked once more, on a new one.
    async fn question<T, Op>(
        &self,
        doing: impl FnOnce() -> String,
        make: impl Fn() -> Op,
    ) -> Result<T, Error>
    where
        Op: AsyncFnOnce(&mut AsyncClient) -> Result<T, memseal::Error>,
    {
        let result = match self.once(make()).await {
            Err(Failure::Request { stale: true, .. }) => self.once(make()).await,
            result => result,
        };
        result.map_err(|failure| failure.into_error(doing))
    }

    /// A request that publishes or removes: never sent twice, since a
    /// connection that broke under it may have carried it out.
    async fn change<T>(
        &self,
        doing: impl FnOnce() -> String,
        op: impl AsyncFnOnce(&mut AsyncClient) -> Result<T, memseal::Error>,
    ) -> Result<T, Error> {
        self.once(op)
            .await
            .map_err(|failure| failure.into_error(doing))
    }

    /// The limits the daemon announced when this connection opened.
    pub async fn limits(&self) -> Result<Limits, Error> {
        self.question(
            || "asking memseald for its limits".into(),
            || async |c: &mut AsyncClient| Ok(*c.limits()),
        )
        .await
    }

    /// The daemon's counters (bytes in use among them).
    pub async fn status(&self) -> Result<ServerStatus, Error> {
        self.question(
            || "asking memseald for its status".into(),
            || async |c: &mut AsyncClient| c.status().await,
        )
        .await
    }

    /// The latest version of `name`, or `None`, without ever waiting on
    /// pull-through (see the module documentation). The listing names
    /// every name that starts with `name`; `name` itself sorts first.
    pub async fn latest(&self, name: &str) -> Result<Option<AssetInfo>, Error> {
        let listed = self
            .question(
                || format!("looking up {name} in memseald"),
                || async |c: &mut AsyncClient| c.list(name).await,
            )
            .await?;
        Ok(listed.into_iter().find(|info| info.name == name))
    }

    /// Version `version` of `name`, or `None`.
    pub async fn version(&self, name: &str, version: u64) -> Result<Option<AssetInfo>, Error> {
        let selector = Selector::Version(version);
        if_present(
            self.question(
                || format!("looking up version {version} of {name} in memseald"),
                || async |c: &mut AsyncClient| c.stat(name, selector).await,
            )
            .await,
        )
    }

    /// Fetch (map read-only) version `version` of `name`, or `None` if the
    /// daemon no longer has it.
    pub async fn fetch_version(&self, name: &str, version: u64) -> Result<Option<Asset>, Error> {
        let selector = Selector::Version(version);
        if_present(
            self.question(
                || format!("fetching version {version} of {name} from memseald"),
                || async |c: &mut AsyncClient| c.fetch_with(name, selector).await,
            )
            .await,
        )
    }

    /// The latest version of every name under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<AssetInfo>, Error> {
        self.question(
            || format!("listing {prefix:?} in memseald"),
            || async |c: &mut AsyncClient| c.list(prefix).await,
        )
        .await
    }

    /// Publish a sealed memfd as the next version of `name`; the daemon
    /// adopts it without copying.
    pub async fn publish_sealed(
        &self,
        name: &str,
        memfd: BorrowedFd<'_>,
    ) -> Result<AssetInfo, Error> {
        self.change(
            || format!("publishing {name} to memseald"),
            async |c| c.publish_sealed(name, memfd).await,
        )
        .await
    }

    /// Remove one version of `name`; `false` if it was already gone.
    pub async fn remove(&self, name: &str, version: u64) -> Result<bool, Error> {
        let removed = if_present(
            self.change(
                || format!("removing version {version} of {name} from memseald"),
                async |c| c.remove(name, Some(version)).await,
            )
            .await,
        )?;
        Ok(removed.is_some_and(|count| count > 0))
    }

    /// Follow the changes under `prefix`, on a connection of its own.
    pub async fn watch(&self, prefix: &str) -> Result<AsyncWatcher, Error> {
        self.connect_another()
            .await?
            .into_watcher(prefix)
            .await
            .map_err(|e| Error::local(format!("watching {prefix:?} in memseald"), e))
    }

    /// Become the resolver of `prefixes` (pull-through), on a connection
    /// of its own; `doing` says what for, in the error if it fails.
    pub async fn resolver(&self, prefixes: &[String], doing: &str) -> Result<AsyncResolver, Error> {
        let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        self.connect_another()
            .await?
            .into_resolver(&prefixes)
            .await
            .map_err(|e| Error::local(doing, e))
    }

    /// A new connection, for a conversation that takes it over.
    async fn connect_another(&self) -> Result<AsyncClient, Error> {
        AsyncClient::connect(&self.options)
            .await
            .map_err(|e| Error::local("connecting to memseald", e))
    }
}

/// Why one request failed.
#[derive(Debug)]
enum Failure {
    /// There was no connection, and none could be opened.
    Connect(memseal::Error),
    /// The request failed; `stale` when it was sent on a kept connection
    /// that turned out to be gone.
    Request { error: memseal::Error, stale: bool },
}

impl Failure {
    fn into_error(self, doing: impl FnOnce() -> String) -> Error {
        match self {
            Failure::Connect(e) => Error::local("reconnecting to memseald", e),
            Failure::Request { error, .. } => Error::local(doing(), error),
        }
    }
}

/// The daemon's `NotFound` as `None`, for a request about something that
/// may be absent.
fn if_present<T>(result: Result<T, Error>) -> Result<Option<T>, Error> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(Error::Local { source, .. }) if source.code() == Some(ErrorCode::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `error` says the connection itself is gone (the daemon closed
/// it or restarted), rather than that the request was refused.
fn is_gone(error: &memseal::Error) -> bool {
    matches!(
        error,
        memseal::Error::Io(_) | memseal::Error::ConnectionLost
    )
}

/// Whether the client library stops using a connection after `error`: it
/// does after anything but a refused request or a failed seal check.
fn breaks_connection(error: &memseal::Error) -> bool {
    match error {
        memseal::Error::Server { code, .. } => matches!(
            code,
            ErrorCode::ProtocolError | ErrorCode::UnsupportedVersion | ErrorCode::Busy
        ),
        memseal::Error::Verify(_) => false,
        _ => true,
    }
}
