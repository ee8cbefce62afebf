//! The objects behind the C handles, and the work each call does, in safe
//! Rust over the client library's public API.
//!
//! C sees these types only as opaque pointers. A client's connection sits
//! behind a lock, so calls on one client from several threads take turns
//! instead of interleaving frames; a panic inside a request poisons the
//! lock and the client reports a lost connection from then on.

use crate::boundary::c_string;
use crate::codes::{Failure, MEMSEAL_E_PROTOCOL};
use crate::info::{memseal_event, memseal_info, memseal_session_limits};
use memseal::{Asset, AssetInfo, Client, ConnectOptions, Error, MapOptions, Selector, Watcher};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The items of a batch fetch, in the caller's order: each a name and a
/// selector to send, or the failure of an item that cannot be sent.
pub(crate) type Batch<'a> = Vec<Result<(&'a str, Selector), Failure>>;

/// A connection to memseald.
#[allow(non_camel_case_types)]
pub struct memseal_client {
    client: Mutex<Client>,
    socket_path: CString,
    server: CString,
    /// None from a daemon that speaks only protocol version 1.
    session_limits: Option<memseal_session_limits>,
}

/// How `memseal_connect_ex` was asked to connect.
#[derive(Debug, Default)]
pub(crate) struct ConnectRequest<'a> {
    pub(crate) socket: Option<&'a Path>,
    pub(crate) client_name: Option<&'a str>,
    /// `None`: the library's default; `Some(None)`: wait forever.
    pub(crate) timeout: Option<Option<Duration>>,
    pub(crate) server_uid: Option<u32>,
}

impl memseal_client {
    pub(crate) fn connect(request: &ConnectRequest<'_>) -> Result<memseal_client, Failure> {
        let mut options = ConnectOptions::new();
        if let Some(socket) = request.socket {
            options = options.socket(socket);
        }
        if let Some(name) = request.client_name {
            options = options.client_name(name);
        }
        if let Some(timeout) = request.timeout {
            options = options.timeout(timeout);
        }
        if let Some(uid) = request.server_uid {
            options = options.expect_server_uid(uid);
        }
        let client = options.connect()?;
        Ok(memseal_client {
            socket_path: c_string(client.socket_path().as_os_str().as_encoded_bytes()),
            server: c_string(client.server().as_bytes()),
            session_limits: client.session_limits().map(memseal_session_limits::new),
            client: Mutex::new(client),
        })
    }

    /// The socket this client reached.
    pub(crate) fn socket_path(&self) -> &CString {
        &self.socket_path
    }

    /// The daemon's name and version, as it announced them.
    pub(crate) fn server(&self) -> &CString {
        &self.server
    }

    /// What the connection may do at most, as the daemon announced it;
    /// None from a daemon that speaks only protocol version 1.
    pub(crate) fn session_limits(&self) -> Option<&memseal_session_limits> {
        self.session_limits.as_ref()
    }

    /// This client's connection, once no other thread uses it.
    fn lock(&self) -> Result<MutexGuard<'_, Client>, Failure> {
        lock(&self.client)
    }

    pub(crate) fn fetch(&self, name: &str, selector: Selector) -> Result<memseal_asset, Failure> {
        let asset = self.lock()?.fetch_with(name, selector)?;
        Ok(memseal_asset::new(asset))
    }

    /// Fetch many items, each as `fetch` would, in as few round trips as
    /// the daemon's limit allows: one result per item, in order. An item
    /// that already failed here (a name that is not UTF-8) is not sent and
    /// keeps its failure. The outer error is the connection's (or the
    /// daemon's refusal of the request as a whole).
    pub(crate) fn fetch_many(
        &self,
        items: Batch<'_>,
    ) -> Result<Vec<Result<memseal_asset, Failure>>, Failure> {
        let sent: Vec<(&str, Selector)> = items
            .iter()
            .filter_map(|item| item.as_ref().ok().copied())
            .collect();
        let answers = self.lock()?.fetch_many(&sent, &MapOptions::new())?;
        let answers = answers
            .into_iter()
            .map(|answer| match answer {
                Ok(asset) => Ok(Ok(memseal_asset::new(asset))),
                // What the daemon refused, or a descriptor that failed the
                // checks: this item's alone, and the client stays usable.
                Err(e @ (Error::Server { .. } | Error::Verify(_))) => Ok(Err(Failure::from(e))),
                // The connection failed under this item (a daemon of
                // protocol version 1 is asked one item per round trip):
                // the whole call's failure, as in a batch.
                Err(e) => Err(Failure::from(e)),
            })
            .collect::<Result<_, _>>()?;
        let unsent = items.into_iter().map(Result::err).collect();
        rejoin(unsent, answers)
    }

    pub(crate) fn publish_bytes(&self, name: &str, bytes: &[u8]) -> Result<AssetInfo, Failure> {
        Ok(self.lock()?.publish_bytes(name, bytes)?)
    }

    /// Publish a regular file or a sealed memfd by descriptor. The
    /// caller's descriptor stays the caller's: a duplicate travels.
    pub(crate) fn publish_file(
        &self,
        name: &str,
        fd: BorrowedFd<'_>,
    ) -> Result<AssetInfo, Failure> {
        let file = duplicate(fd)?;
        Ok(self.lock()?.publish_file(name, &file)?)
    }

    /// Publish exactly `size` bytes read from `fd` (a pipe, a socket, any
    /// readable descriptor), streamed over the socket.
    pub(crate) fn publish_stream(
        &self,
        name: &str,
        fd: BorrowedFd<'_>,
        size: u64,
    ) -> Result<AssetInfo, Failure> {
        let file = duplicate(fd)?;
        Ok(self.lock()?.publish_reader(name, &file, size)?)
    }

    pub(crate) fn stat(&self, name: &str) -> Result<memseal_info, Failure> {
        let info = self.lock()?.stat(name, Selector::Latest)?;
        Ok(memseal_info::new(&info))
    }

    pub(crate) fn list(&self, prefix: &str) -> Result<memseal_listing, Failure> {
        let infos = self.lock()?.list(prefix)?;
        Ok(memseal_listing {
            items: infos.iter().map(memseal_info::new).collect(),
        })
    }

    pub(crate) fn remove(&self, name: &str, version: Option<u64>) -> Result<u64, Failure> {
        Ok(self.lock()?.remove(name, version)?)
    }

    pub(crate) fn watch(&self, prefix: &str) -> Result<memseal_watcher, Failure> {
        let watcher = self.lock()?.watch(prefix)?;
        Ok(memseal_watcher {
            fd: watcher.as_fd().as_raw_fd(),
            watcher: Mutex::new(watcher),
        })
    }
}

/// A fetched asset: its description and its verified, read-only bytes.
/// Independent of the client that fetched it.
#[allow(non_camel_case_types)]
pub struct memseal_asset {
    asset: Asset,
    info: memseal_info,
}

impl memseal_asset {
    fn new(asset: Asset) -> memseal_asset {
        let info = memseal_info::new(asset.info());
        memseal_asset { asset, info }
    }

    /// The first byte. For an empty asset, a valid address all the same,
    /// so that C may pass it to `memcmp` and friends with a length of 0.
    pub(crate) fn data(&self) -> *const u8 {
        static EMPTY: u8 = 0;
        if self.asset.is_empty() {
            &EMPTY
        } else {
            self.asset.as_ptr()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.asset.len()
    }

    pub(crate) fn info(&self) -> &memseal_info {
        &self.info
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.asset.as_fd().as_raw_fd()
    }
}

/// The result of a listing: the latest version of each name, in name order.
#[allow(non_camel_case_types)]
pub struct memseal_listing {
    items: Vec<memseal_info>,
}

impl memseal_listing {
    pub(crate) fn items(&self) -> &[memseal_info] {
        &self.items
    }
}

/// A subscription to the changes under a prefix, on a connection of its own.
#[allow(non_camel_case_types)]
pub struct memseal_watcher {
    watcher: Mutex<Watcher>,
    /// The watch's socket, kept apart so that asking for it does not wait
    /// for a thread blocked in `next`.
    fd: RawFd,
}

impl memseal_watcher {
    /// The next event, waiting at most `timeout` (`None`: forever).
    /// `Ok(None)`: nothing arrived in time.
    pub(crate) fn next(&self, timeout: Option<Duration>) -> Result<Option<memseal_event>, Failure> {
        let event = lock(&self.watcher)?.next_event(timeout)?;
        Ok(event.as_ref().map(memseal_event::new))
    }

    /// The watch's socket, readable when an event is waiting.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }
}

/// The results of a batch in the caller's order: each item that was not
/// sent (`Some` failure in `unsent`) keeps its failure, and the others
/// take the answers in turn. An answer for every item sent, no more and no
/// fewer, or the daemon broke the protocol (and the assets are released).
fn rejoin<T>(
    unsent: Vec<Option<Failure>>,
    answers: Vec<Result<T, Failure>>,
) -> Result<Vec<Result<T, Failure>>, Failure> {
    let expected = unsent.iter().filter(|item| item.is_none()).count();
    if answers.len() != expected {
        return Err(Failure::new(
            MEMSEAL_E_PROTOCOL,
            format!(
                "the daemon answered a batch of {expected} items with {} results",
                answers.len()
            ),
        ));
    }
    let mut answers = answers.into_iter();
    Ok(unsent
        .into_iter()
        .map(|item| match item {
            Some(failure) => Err(failure),
            None => answers
                .next()
                .expect("one answer per item sent, counted above"),
        })
        .collect())
}

/// A descriptor of the caller's, duplicated so that the library can own it.
fn duplicate(fd: BorrowedFd<'_>) -> Result<File, Failure> {
    let owned = fd.try_clone_to_owned().map_err(|e| {
        Failure::bad_argument(format!(
            "cannot duplicate descriptor {}: {e}",
            fd.as_raw_fd()
        ))
    })?;
    Ok(File::from(owned))
}

/// The object behind a lock, once no other thread uses it. A panic while
/// it was held (caught at the boundary) may have left a request half done,
/// so the connection counts as lost from then on.
fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, Failure> {
    mutex
        .lock()
        .map_err(|_| Failure::from(memseal::Error::ConnectionLost))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::{MEMSEAL_E_INVALID_NAME, MEMSEAL_E_NOT_FOUND};

    fn not_found() -> Failure {
        Failure::new(MEMSEAL_E_NOT_FOUND, "no such name")
    }

    fn codes<T>(results: &[Result<T, Failure>]) -> Vec<Option<i32>> {
        results
            .iter()
            .map(|r| r.as_ref().err().map(|f| f.code))
            .collect()
    }

    #[test]
    fn rejoin_puts_unsent_failures_back_in_their_places() {
        let unsent = vec![
            Some(Failure::new(MEMSEAL_E_INVALID_NAME, "not UTF-8")),
            None,
            None,
            Some(Failure::new(MEMSEAL_E_INVALID_NAME, "not UTF-8")),
            None,
        ];
        let answers = vec![Ok(1), Err(not_found()), Ok(3)];
        let results = rejoin(unsent, answers).unwrap();
        assert_eq!(
            codes(&results),
            [
                Some(MEMSEAL_E_INVALID_NAME),
                None,
                Some(MEMSEAL_E_NOT_FOUND),
                Some(MEMSEAL_E_INVALID_NAME),
                None
            ]
        );
        assert_eq!(results[1].as_ref().ok(), Some(&1));
        assert_eq!(results[4].as_ref().ok(), Some(&3));
    }

    #[test]
    fn rejoin_refuses_a_batch_answered_with_too_many_or_too_few_results() {
        for answers in [vec![Ok(1)], vec![Ok(1), Ok(2), Ok(3)]] {
            let failure = rejoin(vec![None, None], answers).unwrap_err();
            assert_eq!(failure.code, MEMSEAL_E_PROTOCOL, "{}", failure.message);
        }
    }

    #[test]
    fn rejoin_of_nothing_sent_needs_no_answer() {
        let unsent = vec![Some(not_found())];
        let results = rejoin::<()>(unsent, Vec::new()).unwrap();
        assert_eq!(codes(&results), [Some(MEMSEAL_E_NOT_FOUND)]);
    }
}
