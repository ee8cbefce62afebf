//! Following changes as they happen: [`Watcher`].
//!
//! A watch takes a connection of its own. The client asks once,
//! `Request::Watch { prefix }`; the daemon answers `Watching` and from then
//! on sends one `Event` per change to a name under the prefix, in the order
//! the changes happened, and accepts no further requests on that
//! connection. A watcher that falls more than a few thousand events behind
//! is told so (`busy`) and disconnected: it has missed changes, so it must
//! watch again and re-read whatever it keeps.

use crate::connect::ConnectOptions;
use crate::connection::{Connection, NoBody};
use crate::error::Error;
use crate::protocol;
use memseal_proto::Event;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// A subscription to the changes of the names under a prefix.
///
/// ```no_run
/// use memseal::{Client, Event};
/// use std::time::Duration;
///
/// let client = Client::connect()?;
/// let mut watcher = client.watch("models/")?;
/// while let Some(event) = watcher.next_event(Some(Duration::from_secs(60)))? {
///     match event {
///         Event::Published(info) => println!("{} is now version {}", info.name, info.version),
///         Event::Removed(info) => println!("version {} of {} is gone", info.version, info.name),
///     }
/// }
/// # Ok::<(), memseal::Error>(())
/// ```
///
/// It is also an [`Iterator`] that blocks for each event and ends after the
/// first error. Its descriptor ([`AsFd`]) becomes readable when an event
/// is waiting, for programs that wait on many things at once with `poll`.
pub struct Watcher {
    connection: Connection,
    prefix: String,
}

impl ConnectOptions {
    /// Connect and turn the connection into a watch of the names that
    /// start with `prefix`; see [`Client::watch`](crate::Client::watch).
    pub fn watch(&self, prefix: &str) -> Result<Watcher, Error> {
        Watcher::on(self.open()?.connection, prefix)
    }
}

impl Watcher {
    /// Ask for a watch of `prefix` on `connection`, which becomes the
    /// watcher's.
    pub(crate) fn on(mut connection: Connection, prefix: &str) -> Result<Watcher, Error> {
        connection.run(protocol::watch(prefix), &mut NoBody)?;
        Ok(Watcher {
            connection,
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix this watcher follows.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The next event, waiting at most `timeout` for it (`None`: as long
    /// as it takes). `Ok(None)` means none arrived in time; the watch goes
    /// on.
    ///
    /// An error ends the watch: [`Error::Server`] with
    /// [`ErrorCode::Busy`](crate::ErrorCode::Busy) if the watcher fell too
    /// far behind, [`Error::Protocol`] with `Closed` if the daemon went
    /// away. Every later call returns [`Error::ConnectionLost`]. Changes may
    /// have been missed: watch again, then re-read what you keep.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, Error> {
        // A deadline beyond what `Instant` can represent is no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        // Whatever goes wrong ends the watch: the daemon no longer sends
        // this watcher events it can rely on (a `busy` is followed by a
        // hang-up). `receive_by` gives the connection up on any error.
        let event = match self.connection.receive_by(deadline)? {
            Some(decoded) => protocol::event(decoded.message),
            None => return Ok(None),
        };
        if event.is_err() {
            self.connection.abandon();
        }
        event.map(Some)
    }

    /// The next event if one has already arrived, without waiting.
    pub fn try_next_event(&mut self) -> Result<Option<Event>, Error> {
        self.next_event(Some(Duration::ZERO))
    }

    /// Wait until an event (or the end of the watch) is waiting to be read,
    /// for at most `timeout` (`None`: forever), without reading it. True if
    /// something is waiting.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        if self.is_closed() {
            return Ok(true);
        }
        self.connection.wait_readable(timeout)
    }

    /// True once an error has ended the watch.
    pub fn is_closed(&self) -> bool {
        self.connection.is_lost()
    }
}

impl Iterator for Watcher {
    type Item = Result<Event, Error>;

    /// Block until the next event. After an error has been returned once,
    /// the iterator ends.
    fn next(&mut self) -> Option<Self::Item> {
        if self.is_closed() {
            return None;
        }
        self.next_event(None).transpose()
    }
}

impl AsFd for Watcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.connection.socket()
    }
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("prefix", &self.prefix)
            .field("closed", &self.is_closed())
            .finish()
    }
}
