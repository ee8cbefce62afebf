//! Downloading a blob into a sealed memfd: ranged GETs in parallel, each
//! written straight into the memfd at its offset and hashed on the way,
//! with no buffer the size of the blob anywhere.
//!
//! ```text
//!            GET bytes=0-8388607 ──► pwrite at 0 ──► hasher of piece 0 ─┐
//! blob  ───► GET bytes=8388608-…  ──► pwrite at 8M ──► hasher of piece 1 ─┼─► root hash == key?
//!            …  (--connections at a time)                                ┘      │ yes
//!                                                                     seal, chmod 0444 ─► publish
//! ```
//!
//! A piece whose request fails, or whose body stops half-way, is asked for
//! again from the first byte it does not have yet, after a backoff; its
//! hasher simply continues. A piece gives up when it has made no progress
//! for `--retry-for`. The store's word on the object's size is checked
//! against the manifest before a byte is written, and every byte against
//! the hash at the end: a blob that is truncated, padded, corrupted or
//! swapped is refused and the memfd dropped, so nothing partial or wrong
//! ever reaches the daemon.

use crate::backoff::Backoff;
use crate::error::{
    is_transient_store_error, setup_problem, Error, Integrity, Problem, SetupProblem,
};
use crate::hash::{PieceDigest, Pieces};
use crate::memfd::{Filling, Sealed};
use crate::rate::RateLimit;
use futures::StreamExt;
use memseal::Hash;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How transfers are shaped.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// Bytes per ranged GET (rounded up to a power of two) and per part
    /// of a multipart upload.
    pub piece_size: u64,
    /// Requests in flight at once for one transfer.
    pub connections: usize,
    /// How long a transfer keeps retrying without making progress.
    pub retry_for: Duration,
    /// The cap on the download rate, shared by all downloads.
    pub rate: Option<Arc<RateLimit>>,
    /// How long a blob refused as corrupt is not downloaded again (the
    /// first time; doubled each time it is refused again).
    pub retry_refused_after: Duration,
}

/// One blob to fetch.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The name it will be published under, for messages.
    pub name: String,
    /// Its key in the bucket.
    pub key: Path,
    /// The hash its bytes must have.
    pub hash: Hash,
    /// Its size, as the manifest says.
    pub size: u64,
}

/// Everything one piece needs, shared by all pieces of a download.
struct Job {
    store: Arc<dyn ObjectStore>,
    wanted: Wanted,
    pieces: Pieces,
    memfd: Filling,
    transfer: Transfer,
    /// Set once the store has answered any piece's request with the
    /// object: from then on a missing object means the store lost it for a
    /// while (a restart, a failover), not that it was never there, and is
    /// worth waiting for.
    seen: AtomicBool,
}

/// Why one attempt at a piece ended early.
enum Attempt {
    /// Worth trying again from where it stopped.
    Retry(Error),
    /// Not worth trying again: the object is wrong, or missing.
    Fatal(Error),
}

/// Fetch `wanted` into a sealed memfd, verified against its hash.
pub async fn download(
    store: Arc<dyn ObjectStore>,
    wanted: Wanted,
    transfer: &Transfer,
) -> Result<Sealed, Error> {
    let memfd = Filling::new(&wanted.name, wanted.size)
        .map_err(|e| Error::io(format!("creating a memfd of {} bytes", wanted.size), e))?;
    let job = Arc::new(Job {
        store,
        pieces: Pieces::new(wanted.size, transfer.piece_size),
        wanted,
        memfd,
        transfer: transfer.clone(),
        seen: AtomicBool::new(false),
    });
    let digests = fetch_all(&job).await?;
    let actual = job.pieces.root(&digests);
    if actual != job.wanted.hash {
        return Err(job.refuse(Problem::Hash {
            expected: job.wanted.hash,
            actual,
        }));
    }
    let job = Arc::into_inner(job).expect("every piece task has finished");
    job.memfd
        .seal()
        .map_err(|e| Error::io("sealing the downloaded memfd", e))
}

/// Run the pieces, `connections` at a time; the first failure cancels the
/// rest (dropping the `JoinSet` aborts its tasks).
async fn fetch_all(job: &Arc<Job>) -> Result<Vec<PieceDigest>, Error> {
    let count = job.pieces.count();
    if job.wanted.size == 0 {
        // Nothing to fetch: the empty content's hash is known.
        return Ok(vec![job.pieces.digest(&job.pieces.hasher(0))]);
    }
    let mut digests: Vec<Option<PieceDigest>> = vec![None; count];
    let mut tasks = JoinSet::new();
    let mut next = 0;
    loop {
        while tasks.len() < job.transfer.connections.max(1) && next < count {
            tasks.spawn(fetch_piece(Arc::clone(job), next));
            next += 1;
        }
        match tasks.join_next().await {
            None => break,
            Some(Ok(Ok((index, digest)))) => digests[index] = Some(digest),
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => {
                return Err(Error::io(
                    "a download task",
                    std::io::Error::other(e.to_string()),
                ))
            }
        }
    }
    Ok(digests.into_iter().flatten().collect())
}

/// Fetch one piece, resuming after failures until it is complete or has
/// made no progress for `retry_for`.
async fn fetch_piece(job: Arc<Job>, index: usize) -> Result<(usize, PieceDigest), Error> {
    let range = job.pieces.range(index);
    let mut hasher = job.pieces.hasher(index);
    let mut at = range.start;
    let mut backoff = Backoff::default();
    let mut last_progress = Instant::now();
    loop {
        let before = at;
        let outcome = job.attempt(&mut at, range.end, &mut hasher).await;
        if at > before {
            last_progress = Instant::now();
            backoff.reset();
        }
        let error = match outcome {
            Ok(()) if at == range.end => return Ok((index, job.pieces.digest(&hasher))),
            Ok(()) => Error::io(
                format!("reading {}", job.wanted.key),
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the body ended early"),
            ),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(e)) => e,
        };
        if last_progress.elapsed() >= job.transfer.retry_for {
            return Err(error);
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            "{}: bytes {at}..{} of {} not received yet ({error}); retrying in {:.1} s",
            job.wanted.name,
            range.end,
            job.wanted.key,
            delay.as_secs_f64()
        );
        tokio::time::sleep(delay).await;
    }
}

impl Job {
    /// One ranged GET for `at..end`, written and hashed as it streams in;
    /// `at` follows the bytes received, whatever happens.
    async fn attempt(
        &self,
        at: &mut u64,
        end: u64,
        hasher: &mut blake3::Hasher,
    ) -> Result<(), Attempt> {
        let key = &self.wanted.key;
        let options = GetOptions {
            range: Some(GetRange::Bounded(*at..end)),
            ..GetOptions::default()
        };
        let result = match self.store.get_opts(key, options).await {
            Ok(result) => result,
            Err(e @ object_store::Error::NotFound { .. }) if !self.seen.load(Ordering::Relaxed) => {
                return Err(Attempt::Fatal(Error::NotFound(format!(
                    "the store has no blob {key} for {}: {e}",
                    self.wanted.name
                ))))
            }
            Err(e) => return Err(self.failed(e)),
        };
        if result.meta.size != self.wanted.size {
            return Err(Attempt::Fatal(self.refuse(Problem::Size {
                expected: self.wanted.size,
                actual: result.meta.size,
            })));
        }
        if result.range.start != *at || result.range.end > end {
            return Err(Attempt::Fatal(self.refuse(Problem::Overlong)));
        }
        self.seen.store(true, Ordering::Relaxed);
        let mut body = result.into_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.failed(e))?;
            if *at + chunk.len() as u64 > end {
                return Err(Attempt::Fatal(self.refuse(Problem::Overlong)));
            }
            if let Some(rate) = &self.transfer.rate {
                rate.admit(chunk.len()).await;
            }
            self.memfd
                .write_at(*at, &chunk)
                .map_err(|e| Attempt::Fatal(Error::io("writing into the memfd", e)))?;
            hasher.update(&chunk);
            *at += chunk.len() as u64;
        }
        Ok(())
    }

    /// Classify a failed request or body.
    fn failed(&self, error: object_store::Error) -> Attempt {
        let retry = is_transient_store_error(&error)
            || self.seen.load(Ordering::Relaxed) && vanished(&error);
        let error = Error::store(format!("downloading {}", self.wanted.key), error);
        if retry {
            Attempt::Retry(error)
        } else {
            Attempt::Fatal(error)
        }
    }

    /// The refusal of this blob.
    fn refuse(&self, problem: Problem) -> Error {
        Error::Integrity(Integrity {
            name: self.wanted.name.clone(),
            key: self.wanted.key.to_string(),
            problem,
        })
    }
}

/// True when the object, or its whole bucket, is not (or no longer) there.
fn vanished(error: &object_store::Error) -> bool {
    matches!(error, object_store::Error::NotFound { .. })
        || matches!(setup_problem(error), Some(SetupProblem::NoBucket(_)))
}
