//! memseal-fleet: one node's memseald tied to an S3-compatible bucket.
//!
//! memfds cannot leave a machine, so a fleet shares assets through the
//! storage it already runs. This agent runs beside memseald as an ordinary
//! publisher: it downloads a blob into a memfd, checks it against its
//! BLAKE3 hash, seals it and hands it to the daemon, which adopts it
//! without copying. The daemon itself never touches the network, and
//! everything it guarantees (its own hash, the seals, budgets, policy,
//! versions, watches) applies to pulled assets unchanged. The other way,
//! the agent uploads what is published locally, straight from a read-only
//! mapping of the sealed asset.
//!
//! The bucket holds content-addressed blobs, written once, and one small
//! JSON manifest per name (see [`layout`] and [`manifest`]; FLEET.md
//! describes both for other tools). The store is trusted to keep objects
//! available, never to keep them right: every download is verified before
//! anything is published.
//!
//! # Layout
//!
//! - [`cli`] and [`commands`]: the command line, and setting the agent up
//!   from it; `main.rs` only maps the outcome to an exit status.
//! - [`agent`]: pulling a name and pushing a version, the two operations
//!   everything else is made of. [`Agent::pull`](agent::Agent::pull) is the
//!   function the resolver calls for a wanted name.
//! - [`run`]: the long-running agent: the resolver that pulls the names
//!   local clients miss ([`resolver`], pull-through), watchers that queue
//!   local publishes, a pusher, and the poll loop that keeps pulled names
//!   fresh.
//! - [`remote`]: reaching the bucket, and manifests; [`layout`]: the keys.
//! - [`download`]: ranged GETs in parallel into a [`memfd`], hashed as they
//!   arrive with [`hash`]; [`upload`]: single or multipart PUTs from a
//!   mapping. [`rate`] caps the download rate (and the resolver's
//!   warnings), [`backoff`] spaces retries,
//!   and [`refused`] keeps a blob refused as corrupt from being downloaded
//!   again for a while.
//! - [`local`]: the daemon, through the client library's public API.
//! - [`state`]: what this node pulled (for eviction and freshness);
//!   [`metrics`]: counters; [`error`]: what can go wrong. Sizes, ages
//!   and tables for people come from `memseal-text`, as in the `memseal`
//!   command line.
//! - [`test_server`]: the S3-compatible server the tests and the benchmark
//!   start (moto_server); the agent never uses it.
//!
//! # The path of a pull
//!
//! ```text
//! manifest GET ─► already local? ─► refused lately? ─► fits the budget? (evict pulled LRU) ─► ranged GETs
//!     ─► pwrite into a memfd + BLAKE3 per piece ─► root hash == key? ─► seal, 0444
//!     ─► publish_sealed (the daemon adopts and hashes it; hashes must agree) ─► state
//! ```

#![deny(unsafe_code)]

pub mod agent;
pub mod backoff;
pub mod cli;
pub mod commands;
pub mod download;
pub mod error;
pub mod hash;
pub mod layout;
pub mod local;
pub mod manifest;
pub mod memfd;
pub mod metrics;
pub mod rate;
pub mod refused;
pub mod remote;
pub mod resolver;
pub mod run;
pub mod state;
pub mod test_server;
pub mod upload;
