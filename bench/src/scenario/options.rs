//! Measurement 6, what the client's mapping options buy: each option of
//! `memseal::MapOptions`, the cache and the private view, beside the plain
//! fetch it replaces, in the same run.
//!
//! - [`large`]: one large asset (2 GiB; 64 MiB in a quick run). Random
//!   8-byte loads with 4 KiB pages and with huge pages, and a sequential
//!   scan with and without populate and access advice.
//! - [`small`]: small assets mapped or copied with `pread`, around the
//!   library's `COPY_BREAK_EVEN`.
//! - [`cached`]: `CachedClient::fetch` of an unchanged asset against
//!   `Client::fetch`, with the requests each sent.
//! - [`private`]: a private copy-on-write view written to, against a full
//!   copy into a `Vec`.
//!
//! Every measurement runs in the harness process itself, against the
//! run's daemon: what is compared is the work a client does on its side,
//! so a worker process would only add noise. Huge pages need the host's
//! help; [`huge_pages`] asks for it (as root) and gives it back, and
//! [`smaps`] checks in `/proc/self/smaps` what the kernel really did.

mod cached;
mod huge_pages;
mod large;
mod private;
mod small;
mod smaps;

use crate::harness::Bench;
use crate::report::Section;
use std::io::{self, Read};

/// The prefix of every asset this section publishes.
const PREFIX: &str = "bench/options/";

/// How much work the section does, full or quick.
#[derive(Debug, Clone, Copy)]
struct Work {
    /// Size of the large asset of the random-load and scan rows.
    large_size: usize,
    /// Timed batches of random loads per row.
    load_batches: usize,
    /// Random loads per batch.
    loads_per_batch: usize,
    /// Fetch-and-scan runs per variant.
    scans: usize,
    /// Timed fetches per size and method in the small-asset rows, and per
    /// client in the cache rows.
    fetches: usize,
    /// Untimed fetches before them.
    warmup: usize,
    /// Size of the private-view asset.
    private_size: usize,
    /// Timed runs of each private-view method.
    private_runs: usize,
}

impl Work {
    fn new(quick: bool) -> Work {
        if quick {
            Work {
                large_size: 64 << 20,
                load_batches: 20,
                loads_per_batch: 10_000,
                scans: 3,
                fetches: 200,
                warmup: 20,
                private_size: 64 << 20,
                private_runs: 3,
            }
        } else {
            Work {
                large_size: 2 << 30,
                load_batches: 200,
                loads_per_batch: 100_000,
                scans: 9,
                fetches: 10_000,
                warmup: 500,
                private_size: 64 << 20,
                private_runs: 30,
            }
        }
    }
}

/// Run every table of the section. Leaves the processes unpinned, as the
/// harness expects after its fetch sections.
pub fn run(bench: &Bench) -> io::Result<Vec<Section>> {
    let work = Work::new(bench.options.quick);
    let mut client = connect(bench)?;
    let mut sections = large::run(bench, &mut client, &work)?;
    sections.push(small::run(bench, &mut client, &work)?);
    sections.push(cached::run(bench, &mut client, &work)?);
    sections.push(private::run(bench, &mut client, &work)?);
    Ok(sections)
}

/// A client of the run's daemon.
fn connect(bench: &Bench) -> io::Result<memseal::Client> {
    memseal::Client::connect_to(bench.daemon.socket()).map_err(io::Error::other)
}

/// Publish `size` bytes of [`Pattern`] `seed` as `name`, streamed, so the
/// daemon fills a memfd of its own making (and prepares it for huge pages
/// where the host allows).
fn publish(client: &mut memseal::Client, name: &str, seed: u64, size: usize) -> io::Result<()> {
    client
        .publish_reader(name, Pattern::new(seed), size as u64)
        .map_err(io::Error::other)?;
    Ok(())
}

/// Remove every version of `name` again, so the daemon's budget is free
/// for whatever runs next.
fn unpublish(client: &mut memseal::Client, name: &str) -> io::Result<()> {
    client.remove(name, None).map_err(io::Error::other)?;
    Ok(())
}

/// Endless bytes to publish, made as they are sent so that a 2 GiB asset
/// never has to sit in the harness's own memory: a pseudo-random 64 KiB
/// block, different for every seed (the daemon merges assets with equal
/// bytes, and the rows here need distinct memfds), repeated.
struct Pattern {
    block: Vec<u8>,
    offset: usize,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        let mut state = 0x2545_f491_4f6c_dd1d ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut block = Vec::with_capacity(64 * 1024);
        while block.len() < 64 * 1024 {
            state = xorshift(state);
            block.extend_from_slice(&state.to_le_bytes());
        }
        Pattern { block, offset: 0 }
    }
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let take = buf.len().min(self.block.len() - self.offset);
        buf[..take].copy_from_slice(&self.block[self.offset..self.offset + take]);
        self.offset = (self.offset + take) % self.block.len();
        Ok(take)
    }
}

/// One step of xorshift64: cheap pseudo-random numbers for content and
/// for load addresses. Never returns 0 for a non-zero input.
fn xorshift(mut state: u64) -> u64 {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    state
}

/// The sum of all bytes read as little-endian `u64` words (and the tail
/// bytes): a reader that really reads every byte, at memory speed.
fn sum_words(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let mut sum = 0u64;
    for word in &mut words {
        sum = sum.wrapping_add(u64::from_le_bytes(word.try_into().expect("8 bytes")));
    }
    for &byte in words.remainder() {
        sum = sum.wrapping_add(u64::from(byte));
    }
    std::hint::black_box(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_by_seed_and_repeat_their_block() {
        let mut a = vec![0u8; 200_000];
        let mut b = vec![0u8; 200_000];
        Pattern::new(1).read_exact(&mut a).unwrap();
        Pattern::new(2).read_exact(&mut b).unwrap();
        assert_ne!(a[..4096], b[..4096]);
        assert_eq!(a[..1000], a[65536..66536]);
        assert!(a.iter().any(|&byte| byte != 0));
    }

    #[test]
    fn word_sums_count_every_byte() {
        let mut bytes = vec![0u8; 17];
        bytes[0] = 1;
        bytes[8] = 2;
        bytes[16] = 3;
        assert_eq!(sum_words(&bytes), 6);
    }
}
