//! End-to-end tests of memseal-fleet: two real memseald daemons play two
//! nodes sharing one bucket of a real S3-compatible server (moto_server,
//! over HTTP on 127.0.0.1), driven through the real memseal-fleet binary.
//!
//! - `sharing`: a version pushed from one node is pulled on the other,
//!   byte for byte, and reaches its watchers when a new one appears;
//! - `integrity`: corrupted, truncated and swapped objects are refused;
//! - `faults`: the store dying mid-download, the agent killed mid-pull,
//!   wrong credentials and a missing bucket;
//! - `eviction`: pulled content as a cache under a small budget;
//! - `pull_through`: `run` as memseald's resolver: a plain fetch on one
//!   node of what only the other pushed, single flight for many clients,
//!   and what waiting clients are told when a name cannot be had.
//!
//! `support` starts the server and the nodes.

mod eviction;
mod faults;
mod integrity;
mod pull_through;
mod sharing;
mod support;
