//! The structures C reads or fills in directly: what the daemon says about
//! a version (`memseal_info`), a change seen by a watch (`memseal_event`),
//! what a connection may do (`memseal_session_limits`), and one item of a
//! batch fetch (`memseal_fetch_item`).

use crate::boundary::c_string;
use crate::codes::MEMSEAL_HASH_LEN;
use memseal::proto::SessionLimits;
use memseal::{AssetInfo, Event};
use std::ffi::{c_char, c_int};

/// A watch event: a new version became visible, and is now the latest of
/// its name.
pub const MEMSEAL_EVENT_PUBLISHED: c_int = 1;
/// A watch event: a version stopped being visible (removed, or pushed out
/// by newer versions).
pub const MEMSEAL_EVENT_REMOVED: c_int = 2;

/// One version of one asset, as the daemon describes it. Read-only for the
/// caller; the library owns `name`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct memseal_info {
    /// The asset's name, NUL-terminated.
    pub name: *const c_char,
    /// Starts at 1 and grows by one with each publish of the name.
    pub version: u64,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 hash of the bytes, computed by the daemon.
    pub hash: [u8; MEMSEAL_HASH_LEN],
    /// When the version was published, in milliseconds since the Unix epoch.
    pub published_ms: u64,
    /// The uid of the process that published it, as the daemon saw it.
    pub publisher_uid: u32,
}

impl memseal_info {
    /// The C view of `info`. The name is copied into a C string that this
    /// value owns (freed by its `Drop`, in `raw`).
    pub(crate) fn new(info: &AssetInfo) -> memseal_info {
        memseal_info {
            name: c_string(info.name.as_bytes()).into_raw(),
            version: info.version,
            size: info.size,
            hash: info.hash,
            published_ms: info.published_ms,
            publisher_uid: info.publisher_uid,
        }
    }
}

/// A change to a watched name.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct memseal_event {
    /// `MEMSEAL_EVENT_PUBLISHED` or `MEMSEAL_EVENT_REMOVED`.
    pub kind: c_int,
    /// The version that appeared or went away.
    pub info: memseal_info,
}

impl memseal_event {
    pub(crate) fn new(event: &Event) -> memseal_event {
        let (kind, info) = match event {
            Event::Published(info) => (MEMSEAL_EVENT_PUBLISHED, info),
            Event::Removed(info) => (MEMSEAL_EVENT_REMOVED, info),
        };
        memseal_event {
            kind,
            info: memseal_info::new(info),
        }
    }
}

/// What one connection may do at most, as the daemon announced it when
/// the client connected. Read-only for the caller.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct memseal_session_limits {
    /// Descriptors the connection may leave unread before the daemon holds
    /// back further replies that carry one.
    pub max_unread_descriptors: u32,
    /// Items one request of `memseal_fetch_many` may name; the library
    /// splits a longer array into several requests.
    pub max_fetch_many: u32,
}

impl memseal_session_limits {
    pub(crate) fn new(limits: &SessionLimits) -> memseal_session_limits {
        memseal_session_limits {
            max_unread_descriptors: limits.max_unread_descriptors,
            max_fetch_many: limits.max_fetch_many,
        }
    }
}

/// One item of `memseal_fetch_many`, filled in by the caller: a name and
/// which of its versions. Set at most one of `version` and `hash`; with
/// neither (a zero-initialised item with only `name` set) the item asks
/// for the latest version.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct memseal_fetch_item {
    /// The asset's name, NUL-terminated. Required.
    pub name: *const c_char,
    /// The version to fetch, or 0 for none in particular.
    pub version: u64,
    /// The content hash to fetch (`MEMSEAL_HASH_LEN` bytes), or NULL for
    /// none in particular.
    pub hash: *const u8,
}
