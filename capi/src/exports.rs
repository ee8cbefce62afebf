//! The functions C calls. Each one turns its raw arguments into Rust values
//! through `raw`, does its work through [`crate::handles`] inside
//! `boundary::call` (which catches panics and records failures), and
//! writes its results to the out-parameters.
//!
//! The documentation of each function is the header's; the conventions
//! that hold for all of them are in the crate documentation.

use crate::boundary::{self, call, value};
use crate::codes::{self, Failure, MEMSEAL_E_INVALID_NAME, MEMSEAL_E_LIBRARY, MEMSEAL_OK};
use crate::handles::{
    memseal_asset, memseal_client, memseal_listing, memseal_watcher, Batch, ConnectRequest,
};
use crate::info::{memseal_event, memseal_fetch_item, memseal_info, memseal_session_limits};
use crate::raw;
use memseal::Selector;
use std::ffi::{c_char, c_int, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::time::Duration;

/// A name or prefix argument: names are ASCII, so text that is not even
/// UTF-8 is an invalid name.
fn text<'a>(value: &'a CStr, what: &str) -> Result<&'a str, Failure> {
    value
        .to_str()
        .map_err(|_| Failure::new(MEMSEAL_E_INVALID_NAME, format!("{what} is not valid UTF-8")))
}

fn path(value: &CStr) -> &Path {
    Path::new(OsStr::from_bytes(value.to_bytes()))
}

/// The body of an accessor: `read` the handle, or give `fallback` for NULL.
///
/// # Safety
/// `handle` is NULL or a live handle of type `T`.
unsafe fn accessor<T, R: Copy>(handle: *const T, fallback: R, read: impl FnOnce(&T) -> R) -> R {
    value(fallback, || {
        // SAFETY: the caller's contract.
        unsafe { raw::opt_handle(handle) }.map_or(fallback, read)
    })
}

/// The body of a `*_free` or `*_close` function.
///
/// # Safety
/// `handle` is NULL or a live handle of type `T` that nothing else uses
/// and that is not used again.
unsafe fn free<T>(handle: *mut T) {
    // SAFETY: the caller's contract.
    value((), || unsafe { raw::release(handle) })
}

// ------------------------------------------------------------------ errors

/// The message of the last call on this thread that failed, or "" if none
/// has. Never NULL.
///
/// The string belongs to the library and stays valid until the next
/// failing call on the same thread. A successful call leaves it as it was.
///
/// Thread safety: safe from any thread; each thread has its own message.
#[no_mangle]
pub extern "C" fn memseal_last_error() -> *const c_char {
    value(c"".as_ptr(), boundary::last_error)
}

/// A short description of a return code ("not found", "bad argument",
/// ...). Never NULL; a static string.
///
/// Thread safety: safe from any thread.
#[no_mangle]
pub extern "C" fn memseal_strerror(code: c_int) -> *const c_char {
    value(c"".as_ptr(), || codes::describe(code).as_ptr())
}

/// The library's version, such as "0.1.0". A static string.
///
/// Thread safety: safe from any thread.
#[no_mangle]
pub extern "C" fn memseal_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Write the 64 lower-case hexadecimal digits of a content hash
/// (`MEMSEAL_HASH_LEN` bytes at `hash`) and a terminating NUL to `out`,
/// which has room for `out_len` bytes (at least 65).
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `hash` is NULL or points to `MEMSEAL_HASH_LEN` bytes; `out` is NULL or
/// points to `out_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn memseal_hash_to_hex(
    hash: *const u8,
    out: *mut c_char,
    out_len: usize,
) -> c_int {
    call(|| {
        // SAFETY: the contract above.
        let hash = unsafe { raw::hash(hash, "hash")? };
        // SAFETY: the contract above.
        let out = unsafe { raw::buffer(out, out_len, "out")? };
        let hex = memseal::proto::message::hash_to_hex(&hash);
        if out.len() <= hex.len() {
            return Err(Failure::bad_argument(format!(
                "out has room for {out_len} bytes; a hash needs {}",
                hex.len() + 1
            )));
        }
        out[..hex.len()].copy_from_slice(hex.as_bytes());
        out[hex.len()] = 0;
        Ok(())
    })
}

// ------------------------------------------------------------- connecting

/// Connect to memseald at `socket_path`, or, if it is NULL, at the default
/// socket (MEMSEAL_SOCKET if set, else the per-user or system socket, the
/// same rule the `memseal` command follows). Checks that the daemon runs as
/// root or as the caller (else MEMSEAL_E_UNTRUSTED_PEER) and greets it.
/// Stores the new client in `*out` (NULL after a failure).
///
/// Returns MEMSEAL_OK, MEMSEAL_E_CONNECT when nothing listens there or the
/// socket may not be opened, MEMSEAL_E_UNTRUSTED_PEER, MEMSEAL_E_BUSY when
/// the daemon is at its connection limit or short of descriptors, or
/// another code.
///
/// Thread safety: safe from any thread. A client may be used from any
/// thread; calls on one client from several threads take turns.
///
/// # Safety
/// `socket_path` is NULL or a NUL-terminated string; `out` is NULL or
/// points to storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn memseal_connect(
    socket_path: *const c_char,
    out: *mut *mut memseal_client,
) -> c_int {
    call(|| {
        // SAFETY: the contract above.
        let out = unsafe { raw::out(out, "out", ptr::null_mut())? };
        // SAFETY: the contract above.
        let socket = unsafe { raw::opt_c_str(socket_path) }.map(path);
        let client = memseal_client::connect(&ConnectRequest {
            socket,
            ..ConnectRequest::default()
        })?;
        out.set(raw::into_handle(client));
        Ok(())
    })
}

/// `memseal_connect` with more choices:
/// - `client_name`: how the daemon's logs name this client (NULL: the
///   program's name);
/// - `timeout_ms`: the longest one read or write on the socket may block;
///   0 for the library's default (30 seconds), negative to wait forever;
/// - `server_uid`: the uid the daemon must run as, for a daemon that runs
///   neither as root nor as the caller (a container sees a daemon of the
///   host as the overflow uid, usually 65534); negative for the default
///   rule of `memseal_connect`.
///
/// Thread safety: as `memseal_connect`.
///
/// # Safety
/// `socket_path` and `client_name` are NULL or NUL-terminated strings;
/// `out` is NULL or points to storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn memseal_connect_ex(
    socket_path: *const c_char,
    client_name: *const c_char,
    timeout_ms: i64,
    server_uid: i64,
    out: *mut *mut memseal_client,
) -> c_int {
    call(|| {
        // SAFETY: the contract above.
        let out = unsafe { raw::out(out, "out", ptr::null_mut())? };
        // SAFETY: the contract above.
        let socket = unsafe { raw::opt_c_str(socket_path) }.map(path);
        // SAFETY: the contract above.
        let client_name = match unsafe { raw::opt_c_str(client_name) } {
            Some(name) => Some(
                name.to_str()
                    .map_err(|_| Failure::bad_argument("client_name is not valid UTF-8"))?,
            ),
            None => None,
        };
        let timeout = match timeout_ms {
            0 => None,
            ms if ms < 0 => Some(None),
            ms => Some(Some(Duration::from_millis(ms.unsigned_abs()))),
        };
        let server_uid = match server_uid {
            uid if uid < 0 => None,
            uid => Some(
                u32::try_from(uid)
                    .map_err(|_| Failure::bad_argument(format!("server_uid {uid} is not a uid")))?,
            ),
        };
        let client = memseal_client::connect(&ConnectRequest {
            socket,
            client_name,
            timeout,
            server_uid,
        })?;
        out.set(raw::into_handle(client));
        Ok(())
    })
}

/// Close the connection and free the client. Assets fetched through it
/// stay valid. NULL is ignored.
///
/// Thread safety: no other thread may be using this client, and it must
/// not be used afterwards.
///
/// # Safety
/// `client` is NULL or a client from `memseal_connect` not yet closed.
#[no_mangle]
pub unsafe extern "C" fn memseal_close(client: *mut memseal_client) {
    // SAFETY: the contract above, passed on.
    unsafe { free(client) }
}

/// The path of the socket this client reached (owned by the client, valid
/// until it is closed); NULL if `client` is NULL.
///
/// Thread safety: safe from any thread while the client is open.
///
/// # Safety
/// `client` is NULL or an open client.
#[no_mangle]
pub unsafe extern "C" fn memseal_client_socket_path(
    client: *const memseal_client,
) -> *const c_char {
    // SAFETY: the contract above, passed on.
    unsafe { accessor(client, ptr::null(), |c| c.socket_path().as_ptr()) }
}

/// The daemon's name and version as it announced them, such as
/// "memseald 0.1.0" (owned by the client); NULL if `client` is NULL.
///
/// Thread safety: safe from any thread while the client is open.
///
/// # Safety
/// `client` is NULL or an open client.
#[no_mangle]
pub unsafe extern "C" fn memseal_client_server(client: *const memseal_client) -> *const c_char {
    // SAFETY: the contract above, passed on.
    unsafe { accessor(client, ptr::null(), |c| c.server().as_ptr()) }
}

/// What the connection may do at most, as the daemon announced it when
/// the client connected (owned by the client): descriptors left unread,
/// and how many items one request of `memseal_fetch_many` may name. NULL
/// if `client` is NULL, or if the daemon speaks only protocol version 1
/// (then `memseal_fetch_many` asks for one item per round trip).
///
/// Thread safety: safe from any thread while the client is open.
///
/// # Safety
/// `client` is NULL or an open client.
#[no_mangle]
pub unsafe extern "C" fn memseal_client_session_limits(
    client: *const memseal_client,
) -> *const memseal_session_limits {
    let limits = |c: &memseal_client| {
        c.session_limits()
            .map_or(ptr::null(), |l| l as *const memseal_session_limits)
    };
    // SAFETY: the contract above, passed on.
    unsafe { accessor(client, ptr::null(), limits) }
}

// --------------------------------------------------------------- fetching

/// Fetch the latest version of `name`: the daemon hands over a descriptor,
/// the library checks that it is sealed against writing, growing and
/// shrinking and of the announced size, and maps it read-only. Stores the
/// asset in `*out` (NULL after a failure).
///
/// Returns MEMSEAL_OK, MEMSEAL_E_NOT_FOUND, MEMSEAL_E_INVALID_NAME,
/// MEMSEAL_E_VERIFY (the descriptor was closed unmapped), or another code.
///
/// Thread safety: safe from any thread; calls on one client take turns.
///
/// # Safety
/// `client` is NULL or an open client; `name` is NULL or a NUL-terminated
/// string; `out` is NULL or points to storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn memseal_fetch(
    client: *mut memseal_client,
    name: *const c_char,
    out: *mut *mut memseal_asset,
) -> c_int {
    // SAFETY: the contract above, passed on.
    unsafe { fetch(client, name, out, || Ok(Selector::Latest)) }
}

/// Fetch version `version` of `name`, if the daemon still keeps it.
/// Otherwise as `memseal_fetch`.
///
/// # Safety
/// As for `memseal_fetch`.
#[no_mangle]
pub unsafe extern "C" fn memseal_fetch_version(
    client: *mut memseal_client,
    name: *const c_char,
    version: u64,
    out: *mut *mut memseal_asset,
) -> c_int {
    // SAFETY: the contract above, passed on.
    unsafe { fetch(client, name, out, || Ok(Selector::Version(version))) }
}

/// Fetch the kept version of `name` whose content has the BLAKE3 hash at
/// `hash` (`MEMSEAL_HASH_LEN` bytes). The daemon computed the hash over the
/// sealed bytes, so this pins exact content. Otherwise as `memseal_fetch`.
///
/// # Safety
/// As for `memseal_fetch`; `hash` is NULL or points to `MEMSEAL_HASH_LEN`
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn memseal_fetch_hash(
    client: *mut memseal_client,
    name: *const c_char,
    hash: *const u8,
    out: *mut *mut memseal_asset,
) -> c_int {
    // SAFETY: the contract above.
    let selector = || Ok(Selector::Hash(unsafe { raw::hash(hash, "hash")? }));
    // SAFETY: the contract above, passed on.
    unsafe { fetch(client, name, out, selector) }
}

/// The three fetches, which differ only in the selector.
///
/// # Safety
/// As for `memseal_fetch`.
unsafe fn fetch(
    client: *mut memseal_client,
    name: *const c_char,
    out: *mut *mut memseal_asset,
    selector: impl FnOnce() -> Result<Selector, Failure>,
) -> c_int {
    call(|| {
        // SAFETY: the caller's contract.
        let (out, client, name) = unsafe {
            (
                raw::out(out, "out", ptr::null_mut())?,
                raw::handle(client, "client")?,
                raw::c_str(name, "name")?,
            )
        };
        let asset = client.fetch(text(name, "name")?, selector()?)?;
        out.set(raw::into_handle(asset));
        Ok(())
    })
}

/// Fetch `count` items (at least 1) at once: each is a name and a version,
/// a content hash, or neither for the latest (see `memseal_fetch_item`).
/// The library asks for up to `max_fetch_many` items per round trip (see
/// `memseal_client_session_limits`) and splits a longer array itself; each
/// asset is checked and mapped exactly as `memseal_fetch` does, and the
/// same name may appear more than once.
///
/// Item `i`'s result goes to `assets_out[i]` and `codes_out[i]`: the asset
/// and MEMSEAL_OK, or NULL and the code of that item's failure
/// (MEMSEAL_E_NOT_FOUND, MEMSEAL_E_INVALID_NAME, MEMSEAL_E_VERIFY, ...),
/// which leaves the other items and the client as they are. Free each
/// asset with `memseal_asset_free`. Unless `messages_out` is NULL,
/// `messages_out[i]` is NULL for an item fetched, or says in words why it
/// failed; those strings belong to the library and stay valid until this
/// thread calls `memseal_fetch_many` again. Failed items do not change
/// `memseal_last_error`: the call itself succeeded.
///
/// The call itself fails only for what is no single item's doing: an
/// argument refused with MEMSEAL_E_BAD_ARGUMENT (NULL `client`, `items`,
/// `assets_out` or `codes_out`, a `count` of 0, an item whose `name` is
/// NULL or that sets both `version` and `hash`; nothing is sent then), or
/// a failure of the connection (MEMSEAL_E_IO, MEMSEAL_E_TIMEOUT,
/// MEMSEAL_E_PROTOCOL, MEMSEAL_E_CONNECTION_LOST, ...). Then every
/// `assets_out[i]` is NULL (assets that an earlier round trip of the call
/// brought are released), every `codes_out[i]` holds the call's code, and
/// `memseal_last_error` says what happened.
///
/// Thread safety: safe from any thread; calls on one client take turns,
/// and the whole batch is one turn.
///
/// # Safety
/// `client` is NULL or an open client; `items` is NULL or points to
/// `count` items, each `name` NULL or a NUL-terminated string and each
/// `hash` NULL or pointing to `MEMSEAL_HASH_LEN` bytes; `assets_out` and
/// `codes_out` are NULL or point to `count` writable entries each, and so
/// is `messages_out` unless it is NULL; none of the arrays overlaps
/// another.
#[no_mangle]
pub unsafe extern "C" fn memseal_fetch_many(
    client: *mut memseal_client,
    items: *const memseal_fetch_item,
    count: usize,
    assets_out: *mut *mut memseal_asset,
    codes_out: *mut c_int,
    messages_out: *mut *const c_char,
) -> c_int {
    call(|| {
        if count == 0 {
            return Err(Failure::bad_argument("count must be at least 1"));
        }
        // Every entry is reset before any argument is refused, so that
        // after a failure the caller finds NULL assets and the call's code
        // in each entry. A panic caught at the boundary leaves
        // MEMSEAL_E_LIBRARY, the code the call then returns.
        // SAFETY: the contract above.
        let (assets_out, codes_out, messages_out) = unsafe {
            (
                raw::opt_out_array(assets_out, count, "assets_out", ptr::null_mut())?,
                raw::opt_out_array(codes_out, count, "codes_out", MEMSEAL_E_LIBRARY)?,
                raw::opt_out_array(messages_out, count, "messages_out", ptr::null())?,
            )
        };
        let codes_out = codes_out.ok_or_else(|| Failure::null("codes_out"))?;
        let outcome = match assets_out {
            // SAFETY: the contract above, passed on.
            Some(assets_out) => unsafe {
                fetch_many(client, items, assets_out, codes_out, messages_out)
            },
            None => Err(Failure::null("assets_out")),
        };
        if let Err(failure) = &outcome {
            codes_out.fill(failure.code);
        }
        outcome
    })
}

/// The work of `memseal_fetch_many` once its result arrays are reset: on
/// success every result written, on failure nothing handed out.
///
/// # Safety
/// As for `memseal_fetch_many`, with the arrays' length as `count`.
unsafe fn fetch_many(
    client: *mut memseal_client,
    items: *const memseal_fetch_item,
    assets_out: &mut [*mut memseal_asset],
    codes_out: &mut [c_int],
    messages_out: Option<&mut [*const c_char]>,
) -> Result<(), Failure> {
    let count = codes_out.len();
    // SAFETY: the caller's contract.
    let (client, requests) = unsafe { batch(client, items, count)? };
    let results = client.fetch_many(requests)?;
    // From here on nothing fails: every asset reaches the caller.
    if let Some(messages_out) = messages_out {
        let messages = results
            .iter()
            .map(|result| result.as_ref().err().map(|f| f.message.as_str()))
            .collect();
        messages_out.copy_from_slice(&boundary::keep_item_errors(messages));
    }
    for ((result, asset_out), code_out) in results.into_iter().zip(assets_out).zip(codes_out) {
        match result {
            Ok(asset) => {
                *asset_out = raw::into_handle(asset);
                *code_out = MEMSEAL_OK;
            }
            Err(failure) => *code_out = failure.code,
        }
    }
    Ok(())
}

/// The client and the requests of `memseal_fetch_many`, read from its
/// arguments. A NULL name, or an item that sets both a version and a
/// hash, fails the whole call; a name that is not UTF-8 fails only its
/// item (without being sent), as the daemon fails an invalid name.
///
/// # Safety
/// As for `memseal_fetch_many`.
unsafe fn batch<'a>(
    client: *mut memseal_client,
    items: *const memseal_fetch_item,
    count: usize,
) -> Result<(&'a memseal_client, Batch<'a>), Failure> {
    // SAFETY: the caller's contract.
    let (client, items) = unsafe {
        (
            raw::handle(client, "client")?,
            raw::array(items, count, "items")?,
        )
    };
    let mut requests = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let what = format!("items[{i}].name");
        // SAFETY: the caller's contract for each item's pointers.
        let name = unsafe { raw::c_str(item.name, &what)? };
        let selector = match (item.version, item.hash.is_null()) {
            (0, true) => Selector::Latest,
            (version, true) => Selector::Version(version),
            // SAFETY: the caller's contract for each item's pointers.
            (0, false) => Selector::Hash(unsafe { raw::hash(item.hash, "hash")? }),
            (_, false) => {
                return Err(Failure::bad_argument(format!(
                    "items[{i}] sets both a version and a hash; set at most one"
                )))
            }
        };
        requests.push(text(name, &what).map(|name| (name, selector)));
    }
    Ok((client, requests))
}

// ----------------------------------------------------------------- assets

/// The asset's bytes: `memseal_asset_len` of them, read-only (writing to
/// them crashes the process with SIGSEGV), valid until the asset is freed,
/// and guaranteed by the kernel never to change. Never NULL for an asset,
/// even an empty one; NULL if `asset` is NULL.
///
/// Thread safety: an asset may be read from any number of threads at once.
///
/// # Safety
/// `asset` is NULL or an asset not yet freed.
#[no_mangle]
pub unsafe extern "C" fn memseal_asset_data(asset: *const memseal_asset) -> *const u8 {
    // SAFETY: the contract above, passed on.
    unsafe { accessor(asset, ptr::null(), memseal_asset::data) }
}

/// The asset's size in bytes; 0 if `asset` is NULL.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `asset` is NULL or an asset not yet freed.
#[no_mangle]
pub unsafe extern "C" fn memseal_asset_len(asset: *const memseal_asset) -> usize {
    // SAFETY: the contract above, passed on.
    unsafe { accessor(asset, 0, memseal_asset::len) }
}

/// The asset's version number (1 or more); 0 if `asset` is NULL.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `asset` is NULL or an asset not yet freed.
#[no_mangle]
pub unsafe extern "C" fn memseal_asset_version(asset: *const memseal_asset) -> u64 {
    // SAFETY: the contract above, passed on.
    unsafe { accessor(asset, 0, |a| a.info().version) }
}

/// The asset's name (owned by the asset); NULL if `asset` is NULL.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `asset` is NULL or an asset not yet freed.
#[no_mangle]
pub unsafe extern "C" fn memseal_asset_name(asset: *const memseal_asset) -> *const c_char {
    // SAFETY: the contract above, passed on.
    unsafe { accessor(asset, ptr::null(), |a| a.info().name) }
}

/// The BLAKE3 hash of the asset's bytes, `MEMSEAL_HASH_LEN` bytes owned by
/// the asset; NULL if `asset` is NULL.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `asset` is NULL or an asset not yet freed.
#[no_mangle]
pub unsafe extern "C" fn memseal_asset_hash(asset: *const memseal_asset) -> *const u8 {
    // SAFETY: the contract above, passed on.
    unsafe { accessor(asset, ptr::null(), |a| a.info().hash.as_ptr()) }
}

/// Everything the daemon said about this version (owned by the asset);
/// NULL if `asset` is NULL.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `asset` is NULL or an asset not yet freed.
#[no_mangle]
pub unsafe extern "C" fn memseal_asset_info(asset: *const memseal_asset) -> *const memseal_info {
    // SAFETY: the contract above, passed on.
    unsafe { accessor(asset, ptr::null(), |a| a.info() as *const memseal_info) }
}

/// The sealed memfd behind the asset, read-only, owned by the asset (do not
/// close it), for `fstat`, `F_GET_SEALS`, or passing to another process
/// (which should check the seals in turn); -1 if `asset` is NULL.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `asset` is NULL or an asset not yet freed.
#[no_mangle]
pub unsafe extern "C" fn memseal_asset_fd(asset: *const memseal_asset) -> c_int {
    // SAFETY: the contract above, passed on.
    unsafe { accessor(asset, -1, memseal_asset::fd) }
}

/// Unmap the asset and close its descriptor. NULL is ignored. Pointers from
/// the asset's accessors are invalid afterwards.
///
/// Thread safety: no other thread may be using this asset.
///
/// # Safety
/// `asset` is NULL or an asset not yet freed; it must not be used again.
#[no_mangle]
pub unsafe extern "C" fn memseal_asset_free(asset: *mut memseal_asset) {
    // SAFETY: the contract above, passed on.
    unsafe { free(asset) }
}

// ------------------------------------------------------------- publishing

/// Publish `len` bytes at `data` as the next version of `name`, streaming
/// them to the daemon, which seals them in a memfd of its own. `data` may
/// be NULL when `len` is 0. Stores the new version number in
/// `*version_out` unless it is NULL.
///
/// Returns MEMSEAL_OK, MEMSEAL_E_PERMISSION_DENIED (the daemon's policy:
/// users other than publishers may publish only under `user/<uid>/`),
/// MEMSEAL_E_INVALID_NAME, MEMSEAL_E_TOO_LARGE, MEMSEAL_E_OVER_BUDGET, or
/// another code.
///
/// Thread safety: safe from any thread; calls on one client take turns.
/// The bytes must not change during the call.
///
/// # Safety
/// `client` is NULL or an open client; `name` is NULL or a NUL-terminated
/// string; `data` is NULL or points to `len` readable bytes;
/// `version_out` is NULL or points to storage for a `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn memseal_publish_bytes(
    client: *mut memseal_client,
    name: *const c_char,
    data: *const u8,
    len: usize,
    version_out: *mut u64,
) -> c_int {
    // SAFETY: the contract above.
    let bytes = || unsafe { raw::array(data, len, "data") };
    // SAFETY: the contract above, passed on.
    unsafe {
        publish(client, name, version_out, |client, name| {
            client.publish_bytes(name, bytes()?)
        })
    }
}

/// Publish the whole of the regular file open at `fd` as the next version
/// of `name`. The daemon copies it kernel-side, or, if it is a memfd sealed
/// against writing, growing and shrinking, adopts it without a copy. The
/// descriptor stays the caller's (a duplicate is sent). The file must not
/// change while the daemon copies it. A pipe or socket is refused with
/// MEMSEAL_E_BAD_ARGUMENT: use `memseal_publish_stream`. Otherwise as
/// `memseal_publish_bytes`.
///
/// # Safety
/// As for `memseal_publish_bytes`; `fd` is an open descriptor or negative.
#[no_mangle]
pub unsafe extern "C" fn memseal_publish_fd(
    client: *mut memseal_client,
    name: *const c_char,
    fd: c_int,
    version_out: *mut u64,
) -> c_int {
    // SAFETY: the contract above.
    let fd = || unsafe { raw::descriptor(fd, "fd") };
    // SAFETY: the contract above, passed on.
    unsafe {
        publish(client, name, version_out, |client, name| {
            client.publish_file(name, fd()?)
        })
    }
}

/// Publish exactly `size` bytes read from `fd` (a pipe, socket or any
/// readable descriptor), streamed to the daemon. If `fd` ends early or
/// fails, nothing is published and the client's connection is given up
/// (MEMSEAL_E_CONNECTION_LOST from then on: connect again). Otherwise as
/// `memseal_publish_bytes`.
///
/// # Safety
/// As for `memseal_publish_bytes`; `fd` is an open descriptor or negative.
#[no_mangle]
pub unsafe extern "C" fn memseal_publish_stream(
    client: *mut memseal_client,
    name: *const c_char,
    fd: c_int,
    size: u64,
    version_out: *mut u64,
) -> c_int {
    // SAFETY: the contract above.
    let fd = || unsafe { raw::descriptor(fd, "fd") };
    // SAFETY: the contract above, passed on.
    unsafe {
        publish(client, name, version_out, |client, name| {
            client.publish_stream(name, fd()?, size)
        })
    }
}

/// The three publishes, which differ only in where the bytes come from.
///
/// # Safety
/// As for `memseal_publish_bytes`.
unsafe fn publish(
    client: *mut memseal_client,
    name: *const c_char,
    version_out: *mut u64,
    publish: impl FnOnce(&memseal_client, &str) -> Result<memseal::AssetInfo, Failure>,
) -> c_int {
    call(|| {
        // SAFETY: the caller's contract.
        let (version_out, client, name) = unsafe {
            (
                raw::opt_out(version_out, 0),
                raw::handle(client, "client")?,
                raw::c_str(name, "name")?,
            )
        };
        let info = publish(client, text(name, "name")?)?;
        if let Some(version_out) = version_out {
            version_out.set(info.version);
        }
        Ok(())
    })
}

// --------------------------------------------------------------- catalog

/// Describe the latest version of `name` without fetching it. Stores a new
/// `memseal_info` in `*out` (NULL after a failure); free it with
/// `memseal_info_free`.
///
/// Thread safety: safe from any thread; calls on one client take turns.
///
/// # Safety
/// `client` is NULL or an open client; `name` is NULL or a NUL-terminated
/// string; `out` is NULL or points to storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn memseal_stat(
    client: *mut memseal_client,
    name: *const c_char,
    out: *mut *mut memseal_info,
) -> c_int {
    call(|| {
        // SAFETY: the contract above.
        let (out, client, name) = unsafe {
            (
                raw::out(out, "out", ptr::null_mut())?,
                raw::handle(client, "client")?,
                raw::c_str(name, "name")?,
            )
        };
        let info = client.stat(text(name, "name")?)?;
        out.set(raw::into_handle(info));
        Ok(())
    })
}

/// Free a `memseal_info` from `memseal_stat`. NULL is ignored. Not for the
/// infos owned by an asset, a list or an event.
///
/// # Safety
/// `info` is NULL or from `memseal_stat` and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn memseal_info_free(info: *mut memseal_info) {
    // SAFETY: the contract above, passed on.
    unsafe { free(info) }
}

/// List the latest version of every name that starts with `prefix` (every
/// name for ""), in name order. Stores the list in `*out` (NULL after a
/// failure); read it with `memseal_listing_len` and `memseal_listing_get`, free
/// it with `memseal_listing_free`.
///
/// Thread safety: safe from any thread; calls on one client take turns.
///
/// # Safety
/// `client` is NULL or an open client; `prefix` is NULL or a
/// NUL-terminated string; `out` is NULL or points to storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn memseal_list(
    client: *mut memseal_client,
    prefix: *const c_char,
    out: *mut *mut memseal_listing,
) -> c_int {
    call(|| {
        // SAFETY: the contract above.
        let (out, client, prefix) = unsafe {
            (
                raw::out(out, "out", ptr::null_mut())?,
                raw::handle(client, "client")?,
                raw::c_str(prefix, "prefix")?,
            )
        };
        let list = client.list(text(prefix, "prefix")?)?;
        out.set(raw::into_handle(list));
        Ok(())
    })
}

/// How many entries the list holds; 0 if `list` is NULL.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `list` is NULL or a list not yet freed.
#[no_mangle]
pub unsafe extern "C" fn memseal_listing_len(list: *const memseal_listing) -> usize {
    // SAFETY: the contract above, passed on.
    unsafe { accessor(list, 0, |l| l.items().len()) }
}

/// Entry `index` of the list (owned by the list), or NULL if `list` is NULL
/// or `index` is out of range.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `list` is NULL or a list not yet freed.
#[no_mangle]
pub unsafe extern "C" fn memseal_listing_get(
    list: *const memseal_listing,
    index: usize,
) -> *const memseal_info {
    let entry = |l: &memseal_listing| {
        l.items()
            .get(index)
            .map_or(ptr::null(), |info| info as *const memseal_info)
    };
    // SAFETY: the contract above, passed on.
    unsafe { accessor(list, ptr::null(), entry) }
}

/// Free a list and every entry in it. NULL is ignored.
///
/// # Safety
/// `list` is NULL or a list not yet freed, used by no other thread.
#[no_mangle]
pub unsafe extern "C" fn memseal_listing_free(list: *mut memseal_listing) {
    // SAFETY: the contract above, passed on.
    unsafe { free(list) }
}

/// Remove version `version` of `name`, or every version when `version` is
/// 0. Stores how many versions were removed in `*removed_out` unless it is
/// NULL. Processes that fetched a removed version keep their bytes.
///
/// Thread safety: safe from any thread; calls on one client take turns.
///
/// # Safety
/// `client` is NULL or an open client; `name` is NULL or a NUL-terminated
/// string; `removed_out` is NULL or points to storage for a `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn memseal_remove(
    client: *mut memseal_client,
    name: *const c_char,
    version: u64,
    removed_out: *mut u64,
) -> c_int {
    call(|| {
        // SAFETY: the contract above.
        let (removed_out, client, name) = unsafe {
            (
                raw::opt_out(removed_out, 0),
                raw::handle(client, "client")?,
                raw::c_str(name, "name")?,
            )
        };
        let version = (version != 0).then_some(version);
        let removed = client.remove(text(name, "name")?, version)?;
        if let Some(removed_out) = removed_out {
            removed_out.set(removed);
        }
        Ok(())
    })
}

// ---------------------------------------------------------------- watching

/// Subscribe to the changes of every name that starts with `prefix` (every
/// name for ""), on a new connection opened the way `client`'s was; the
/// client stays usable. Stores the watcher in `*out` (NULL after a
/// failure).
///
/// Thread safety: safe from any thread; a watcher, like a client, may be
/// used from any thread, one call at a time.
///
/// # Safety
/// `client` is NULL or an open client; `prefix` is NULL or a
/// NUL-terminated string; `out` is NULL or points to storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn memseal_watch(
    client: *mut memseal_client,
    prefix: *const c_char,
    out: *mut *mut memseal_watcher,
) -> c_int {
    call(|| {
        // SAFETY: the contract above.
        let (out, client, prefix) = unsafe {
            (
                raw::out(out, "out", ptr::null_mut())?,
                raw::handle(client, "client")?,
                raw::c_str(prefix, "prefix")?,
            )
        };
        let watcher = client.watch(text(prefix, "prefix")?)?;
        out.set(raw::into_handle(watcher));
        Ok(())
    })
}

/// Wait for the next change: at most `timeout_ms` milliseconds, not at all
/// for 0, as long as it takes when negative. Stores the event in `*out`,
/// or NULL if none arrived in time (the call still returns MEMSEAL_OK);
/// free it with `memseal_event_free`.
///
/// A failure ends the watch: MEMSEAL_E_BUSY if the watcher fell too far
/// behind, MEMSEAL_E_PROTOCOL or MEMSEAL_E_IO if the daemon went away;
/// every later call returns MEMSEAL_E_CONNECTION_LOST. Changes may have
/// been missed: watch again, then re-read what you keep.
///
/// Thread safety: one thread at a time per watcher (others wait).
///
/// # Safety
/// `watcher` is NULL or a watcher not yet closed; `out` is NULL or points
/// to storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn memseal_watch_next(
    watcher: *mut memseal_watcher,
    timeout_ms: i64,
    out: *mut *mut memseal_event,
) -> c_int {
    call(|| {
        // SAFETY: the contract above.
        let (out, watcher) = unsafe {
            (
                raw::out(out, "out", ptr::null_mut())?,
                raw::handle(watcher, "watcher")?,
            )
        };
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        if let Some(event) = watcher.next(timeout)? {
            out.set(raw::into_handle(event));
        }
        Ok(())
    })
}

/// The watch's socket, which becomes readable when an event is waiting,
/// for programs that `poll` many descriptors; owned by the watcher (do not
/// read from it or close it). -1 if `watcher` is NULL.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `watcher` is NULL or a watcher not yet closed.
#[no_mangle]
pub unsafe extern "C" fn memseal_watch_fd(watcher: *const memseal_watcher) -> c_int {
    // SAFETY: the contract above, passed on.
    unsafe { accessor(watcher, -1, memseal_watcher::fd) }
}

/// Free an event. NULL is ignored.
///
/// # Safety
/// `event` is NULL or from `memseal_watch_next` and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn memseal_event_free(event: *mut memseal_event) {
    // SAFETY: the contract above, passed on.
    unsafe { free(event) }
}

/// End the watch, close its connection and free the watcher. NULL is
/// ignored.
///
/// Thread safety: no other thread may be using this watcher.
///
/// # Safety
/// `watcher` is NULL or a watcher not yet closed; it must not be used
/// again.
#[no_mangle]
pub unsafe extern "C" fn memseal_watch_close(watcher: *mut memseal_watcher) {
    // SAFETY: the contract above, passed on.
    unsafe { free(watcher) }
}
