//! The node's memseald, through the client library's public API: one
//! connection, shared by the agent's tasks one request at a time, opened
//! again after the daemon restarts.

use crate::error::Error;
use memseal::{Asset, AssetInfo, AsyncClient, AsyncWatcher, ConnectOptions, ErrorCode, Limits};
use memseal::{Selector, ServerStatus};
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

    /// Run `op` on the connection, reconnecting first if the last one
    /// broke, and forgetting the connection if this call breaks it.
    async fn call<T>(
        &self,
        doing: impl FnOnce() -> String,
        op: impl AsyncFnOnce(&mut AsyncClient) -> Result<T, memseal::Error>,
    ) -> Result<T, Error> {
        let mut slot = self.client.lock().await;
        if slot.is_none() {
            let client = AsyncClient::connect(&self.options)
                .await
                .map_err(|e| Error::local("reconnecting to memseald", e))?;
            *slot = Some(client);
        }
        let client = slot.as_mut().expect("connected just above");
        let result = op(client).await;
        if let Err(e) = &result {
            if breaks_connection(e) {
                *slot = None;
            }
        }
        result.map_err(|e| Error::local(doing(), e))
    }

    /// [`Local::call`] for a request about something that may be absent:
    /// the daemon's `NotFound` becomes `None`.
    async fn call_if_present<T>(
        &self,
        doing: impl FnOnce() -> String,
        op: impl AsyncFnOnce(&mut AsyncClient) -> Result<T, memseal::Error>,
    ) -> Result<Option<T>, Error> {
        match self.call(doing, op).await {
            Ok(value) => Ok(Some(value)),
            Err(Error::Local { source, .. }) if source.code() == Some(ErrorCode::NotFound) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The limits the daemon announced when this connection opened.
    pub async fn limits(&self) -> Result<Limits, Error> {
        self.call(
            || "asking memseald for its limits".into(),
            async |c| Ok(*c.limits()),
        )
        .await
    }

    /// The daemon's counters (bytes in use among them).
    pub async fn status(&self) -> Result<ServerStatus, Error> {
        self.call(
            || "asking memseald for its status".into(),
            async |c| c.status().await,
        )
        .await
    }

    /// The version of `name` that `selector` picks, or `None`.
    pub async fn stat(&self, name: &str, selector: Selector) -> Result<Option<AssetInfo>, Error> {
        self.call_if_present(
            || format!("looking up {name} in memseald"),
            async |c| c.stat(name, selector).await,
        )
        .await
    }

    /// Fetch (map read-only) the version of `name` that `selector` picks,
    /// or `None` if the daemon no longer has it.
    pub async fn fetch(&self, name: &str, selector: Selector) -> Result<Option<Asset>, Error> {
        self.call_if_present(
            || format!("fetching {name} from memseald"),
            async |c| c.fetch_with(name, selector).await,
        )
        .await
    }

    /// The latest version of every name under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<AssetInfo>, Error> {
        self.call(
            || format!("listing {prefix:?} in memseald"),
            async |c| c.list(prefix).await,
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
        self.call(
            || format!("publishing {name} to memseald"),
            async |c| c.publish_sealed(name, memfd).await,
        )
        .await
    }

    /// Remove one version of `name`; `false` if it was already gone.
    pub async fn remove(&self, name: &str, version: u64) -> Result<bool, Error> {
        let removed = self
            .call_if_present(
                || format!("removing version {version} of {name} from memseald"),
                async |c| c.remove(name, Some(version)).await,
            )
            .await?;
        Ok(removed.is_some_and(|count| count > 0))
    }

    /// Follow the changes under `prefix`, on a connection of its own.
    pub async fn watch(&self, prefix: &str) -> Result<AsyncWatcher, Error> {
        let client = AsyncClient::connect(&self.options)
            .await
            .map_err(|e| Error::local("connecting to memseald", e))?;
        client
            .into_watcher(prefix)
            .await
            .map_err(|e| Error::local(format!("watching {prefix:?} in memseald"), e))
    }
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
