//! libmemseal: the memseal client as a C library.
//!
//! C and C++ programs, and every language with a C FFI, get what the Rust
//! crate `memseal` gives: assets fetched from memseald as read-only
//! mappings of sealed memfds, checked by the library before they are
//! mapped, and a way to publish new versions. This crate is a thin layer
//! over that crate's public API; the protocol, the seal checks and the
//! choice of socket all live there, once.
//!
//! The C interface is `include/memseal.h`, generated from this crate by
//! cbindgen (`tests/header.rs` fails when the committed copy is stale); its
//! preamble states the conventions every function follows: return codes,
//! out-parameters, NULL, ownership and threads.
//!
//! # Layout
//!
//! - [`exports`]: the functions C calls. Each turns its raw arguments into
//!   Rust values through `raw`, runs its work inside `boundary::call`, and
//!   writes its results.
//! - `raw`: the crate's unsafe code (C strings, buffers, handles,
//!   out-parameters, borrowed descriptors), each use justified by the
//!   header's contract. `exports` also needs `unsafe` for `#[no_mangle]`
//!   and to call into `raw`; every other module denies it.
//! - `boundary`: panics caught before they reach C, failures turned into
//!   codes, and each thread's last error message.
//! - [`codes`]: the return codes, and the mapping of every client error to
//!   one; the protocol's codes keep their wire order.
//! - [`handles`]: the objects behind the opaque handles (client, asset,
//!   list, watcher) and the work of each call, in safe Rust.
//! - [`info`]: the structures C reads or fills in directly
//!   (`memseal_info`, `memseal_event`, `memseal_session_limits`,
//!   `memseal_fetch_item`).
//!
//! # The path of a fetch
//!
//! `memseal_fetch` checks its pointers in `raw`, takes the client's lock
//! and calls `Client::fetch_with`, which receives the descriptor, verifies
//! the seals and maps it. The `memseal::Asset` moves into a heap-allocated
//! `memseal_asset` whose pointer C receives; `memseal_asset_data` borrows
//! the mapping, and `memseal_asset_free` drops it, which unmaps and closes.
//! The asset holds no reference to the client, so it outlives it.
//!
//! `memseal_fetch_many` reads its items into names and selectors, hands
//! them to `Client::fetch_many` under one turn of the lock (the Rust
//! client splits them into requests of at most `max_fetch_many` items and
//! verifies each descriptor as a single fetch does), and writes one asset
//! or one code per item into the caller's arrays.
//!
//! # Building and installing
//!
//! Cargo builds `libmemseal_capi.so` (soname `libmemseal.so.0`, set by
//! `build.rs`) and `libmemseal_capi.a`; `scripts/install-capi.sh PREFIX`
//! builds them and installs `libmemseal.so.*`, `libmemseal.a`,
//! `memseal.h`, `memseal.hpp` and `memseal.pc` under a prefix.

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod boundary;
pub mod codes;
#[allow(unsafe_code)]
pub mod exports;
pub mod handles;
pub mod info;
#[allow(unsafe_code)]
mod raw;
