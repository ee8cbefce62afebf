//! Supplying names the daemon does not hold: [`Resolver`] (pull-through).
//!
//! A client that may publish every name under some prefixes can become
//! their resolver: the daemon then announces each missing name a client
//! waits for, once, and the resolver fetches it from wherever it lives (an
//! object store, for the fleet agent), publishes it on another connection,
//! which wakes every waiter, or says it cannot with
//! [`Resolver::unresolved`]. Waiters give up at the daemon's
//! `resolve_timeout` with [`ErrorCode::Unavailable`](crate::ErrorCode).

use crate::client::Client;
use crate::connection::{Connection, NoBody};
use crate::error::Error;
use crate::protocol;
use memseal_proto::{ErrorCode, Selector};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// A name a client waits for, announced to its resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The name asked for.
    pub name: String,
    /// The version asked for.
    pub selector: Selector,
}

/// A connection that resolves missing names under its prefixes.
///
/// ```no_run
/// use memseal::{Client, ErrorCode};
/// use std::time::Duration;
///
/// let mut resolver = Client::connect()?.into_resolver(&["models/"])?;
/// let mut publisher = Client::connect()?;
/// while let Some(wanted) = resolver.next_wanted(Some(Duration::from_secs(60)))? {
///     match std::fs::read(format!("/srv/{}", wanted.name)) {
///         Ok(bytes) => drop(publisher.publish_bytes(&wanted.name, &bytes)?),
///         Err(e) => resolver.unresolved(&wanted, ErrorCode::NotFound, &e.to_string())?,
///     }
/// }
/// # Ok::<(), memseal::Error>(())
/// ```
pub struct Resolver {
    connection: Connection,
    prefixes: Vec<String>,
}

impl Client {
    /// Turn this connection into the resolver of `prefixes`; this needs
    /// the right to publish every name under them.
    pub fn into_resolver(self, prefixes: &[&str]) -> Result<Resolver, Error> {
        let mut connection = self.into_connection();
        connection.run(protocol::resolve(prefixes), &mut NoBody)?;
        Ok(Resolver {
            connection,
            prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        })
    }
}

impl Resolver {
    /// The prefixes this connection resolves.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// The next name a client waits for, waiting at most `timeout` for it
    /// (`None`: as long as it takes); `Ok(None)` if none came in time. An
    /// error ends the registration.
    pub fn next_wanted(&mut self, timeout: Option<Duration>) -> Result<Option<Wanted>, Error> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let Some(decoded) = self.connection.receive_by(deadline)? else {
            return Ok(None);
        };
        match protocol::wanted(decoded.message) {
            Ok((name, selector)) => Ok(Some(Wanted { name, selector })),
            Err(e) => {
                self.connection.abandon();
                Err(e)
            }
        }
    }

    /// Tell the daemon that `wanted` cannot be supplied: its waiters get
    /// `code` (`NotFound` if the source does not have it, `Unavailable` if
    /// the source cannot be reached) and `message`, now rather than at the
    /// deadline.
    pub fn unresolved(
        &mut self,
        wanted: &Wanted,
        code: ErrorCode,
        message: &str,
    ) -> Result<(), Error> {
        let tell = protocol::unresolved(&wanted.name, wanted.selector, code, message);
        self.connection.run(tell, &mut NoBody)
    }
}

impl AsFd for Resolver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.connection.socket()
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("prefixes", &self.prefixes)
            .field("closed", &self.connection.is_lost())
            .finish()
    }
}
