//! Filling a new memfd of the daemon's own, and hashing it as it fills.
//!
//! A [`BlobWriter`] holds the only writable descriptor of a memfd the
//! daemon has just created, whose size is fixed from the start (it is
//! sized, then sealed against growing and shrinking, before any byte goes
//! in). Bytes enter through the kernel, each copied once on its way: from
//! a buffer with `pwrite`, from a pipe that a client's socket was spliced
//! into ([`BlobWriter::splice_from`]), or straight from a publisher's file
//! with `sendfile` ([`BlobWriter::send_file_from`]). The writer only ever
//! appends: a byte once written is never written again.
//!
//! The hash follows the writer. Below [`HASH_STEP`] everything is hashed
//! at the end; above it, each completed step is handed to a hashing
//! thread of the upload's own, so the hash of one step overlaps the
//! receiving of the next and the publisher waits, after its last byte,
//! only for the last step's hash. The hash reads the memfd through a
//! private, read-only mapping of the written range, so it costs no copy.
//!
//! # The one mapping, and why it is sound
//!
//! This is the only place the daemon maps file contents, and only its own
//! memfd, never a publisher's (see [`crate::blob`], rule 2). The mapping
//! can neither fault nor see bytes change underneath the slice made of
//! it, because:
//!
//! - the file cannot shrink: it carries `F_SEAL_SHRINK` from creation, so
//!   no page of the mapped range can vanish (`SIGBUS`);
//! - nothing writes the mapped range: only this writer holds a writable
//!   descriptor (the hashing thread's duplicate is only mapped), and it
//!   maps only bytes it has already written, which it never writes again;
//! - the mapping is private and read-only, so it is not a writable shared
//!   mapping, which would make the final `F_SEAL_WRITE` fail with `EBUSY`,
//!   and it is unmapped before the hash step returns.

use super::{create_memfd, daemon_uid, hash_update, seal, Blob, BlobKey};
use memseal_proto::Hash;
use rustix::io::Errno;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes hashed per step behind the writer: the most the publisher waits
/// to be hashed after its last byte arrived. Also the threshold below
/// which an upload is hashed at its end, on the caller's thread.
pub const HASH_STEP: u64 = 4 << 20;

/// Target of the debug line in which each fill says where its time went
/// (the benchmarks turn it on alone): from the memfd's creation to its
/// seal (`total_us`), in the system calls that moved bytes into it
/// (`copy_us`), hashing on whichever thread did it (`hash_us`), and after
/// the last byte, waiting for the hash to catch up (`hash_tail_us`). The
/// rest of the total is time spent waiting for the bytes to arrive.
pub const STAGES_TARGET: &str = "memseal::stages";

/// Writes the bytes of a new blob into a fresh memfd, hashing them a step
/// behind. Dropped before [`BlobWriter::finish`], it leaves nothing behind.
pub struct BlobWriter {
    fd: OwnedFd,
    size: u64,
    written: u64,
    /// The description's own file offset, where `sendfile` writes.
    position: u64,
    hash: TrailingHash,
    created: Instant,
    copying: Duration,
}

impl BlobWriter {
    /// Create the memfd for `size` bytes. The caller has already reserved
    /// `size` bytes of budget.
    pub fn new(size: u64) -> io::Result<BlobWriter> {
        Ok(BlobWriter {
            fd: create_memfd(size)?,
            size,
            written: 0,
            position: 0,
            hash: TrailingHash::new(),
            created: Instant::now(),
            copying: Duration::ZERO,
        })
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.size - self.written
    }

    /// Append bytes. The caller never passes more than
    /// [`BlobWriter::remaining`].
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        debug_assert!(bytes.len() as u64 <= self.remaining());
        while !bytes.is_empty() {
            let started = Instant::now();
            let wrote = rustix::io::pwrite(&self.fd, bytes, self.written);
            self.copying += started.elapsed();
            match wrote {
                Ok(n) => {
                    self.advance(n);
                    bytes = &bytes[n..];
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Append exactly `len` bytes waiting in `pipe`, moved by the kernel
    /// from the pipe's pages into the memfd's (`splice`). The caller never
    /// passes more than [`BlobWriter::remaining`].
    pub fn splice_from(&mut self, pipe: BorrowedFd<'_>, mut len: usize) -> io::Result<()> {
        debug_assert!(len as u64 <= self.remaining());
        while len > 0 {
            let mut offset = self.written;
            let started = Instant::now();
            let moved = rustix::pipe::splice(
                pipe,
                None,
                &self.fd,
                Some(&mut offset),
                len,
                rustix::pipe::SpliceFlags::MOVE,
            );
            self.copying += started.elapsed();
            match moved {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.advance(n);
                    len -= n;
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Append up to `len` bytes of `source` read at `offset`, copied
    /// kernel-side (`sendfile`); the source's file offset is left alone.
    /// Returns the bytes appended: 0 when the source ends at `offset`. An
    /// error of `EINVAL` means the source's file system cannot be read
    /// this way; nothing was appended and the caller reads it instead.
    pub fn send_file_from(
        &mut self,
        source: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> io::Result<usize> {
        debug_assert!(len as u64 <= self.remaining());
        // `sendfile` writes at the description's file offset (only this
        // writer uses the description); `pwrite` and `splice` do not move it.
        if self.position != self.written {
            rustix::fs::seek(&self.fd, rustix::fs::SeekFrom::Start(self.written))?;
            self.position = self.written;
        }
        let mut from = offset;
        loop {
            let started = Instant::now();
            let sent = rustix::fs::sendfile(&self.fd, source, Some(&mut from), len);
            self.copying += started.elapsed();
            match sent {
                Ok(n) => {
                    self.position += n as u64;
                    self.advance(n);
                    return Ok(n);
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Count `n` more bytes written, and let the hash follow.
    fn advance(&mut self, n: usize) {
        self.written += n as u64;
        self.hash.written(self.fd.as_fd(), self.written);
    }

    /// Seal the complete memfd into a blob.
    pub fn finish(self) -> io::Result<Blob> {
        debug_assert_eq!(self.written, self.size);
        let tail_started = Instant::now();
        let (hash, hashing) = self.hash.finish(self.fd.as_fd(), self.size)?;
        let hash_tail = tail_started.elapsed();
        let blob = Blob {
            fd: seal(self.fd)?,
            size: self.size,
            key: BlobKey {
                hash,
                owner: daemon_uid(),
            },
        };
        tracing::debug!(
            target: STAGES_TARGET,
            size = self.size,
            total_us = self.created.elapsed().as_micros() as u64,
            copy_us = self.copying.as_micros() as u64,
            hash_us = hashing.as_micros() as u64,
            hash_tail_us = hash_tail.as_micros() as u64,
            "fill stages"
        );
        Ok(blob)
    }
}

/// The hash of a memfd being filled, a step behind its writer: on the
/// caller's thread until the first full step, then on a thread of its own.
struct TrailingHash {
    /// Bytes already hashed or handed to the thread.
    dispatched: u64,
    follower: Option<Follower>,
    /// A thread was asked for (once: if none could start, the caller's
    /// thread hashes everything at the end).
    follower_tried: bool,
}

/// The hashing thread of one upload: told how far the memfd is written,
/// it hashes up to there.
struct Follower {
    written_to: mpsc::Sender<u64>,
    abandoned: Arc<AtomicBool>,
    done: JoinHandle<io::Result<(blake3::Hasher, Duration)>>,
}

impl TrailingHash {
    fn new() -> TrailingHash {
        TrailingHash {
            dispatched: 0,
            follower: None,
            follower_tried: false,
        }
    }

    /// The memfd `fd` is written up to `written`: hand each full step on.
    fn written(&mut self, fd: BorrowedFd<'_>, written: u64) {
        let reached = written - written % HASH_STEP;
        if reached <= self.dispatched {
            return;
        }
        if !self.follower_tried {
            self.follower_tried = true;
            self.follower = Follower::start(fd);
        }
        match &self.follower {
            // The thread reads the step only after the write that completed
            // it has returned.
            Some(follower) if follower.written_to.send(reached).is_ok() => {}
            // No thread (it could not start, or it failed): the caller's
            // thread hashes at the end, so the error, if any, is seen there.
            _ => return,
        }
        self.dispatched = reached;
    }

    /// The hash of all `size` bytes of `fd`, and the time spent hashing.
    fn finish(mut self, fd: BorrowedFd<'_>, size: u64) -> io::Result<(Hash, Duration)> {
        let (mut hasher, mut time) = match self.follower.take() {
            Some(follower) => {
                drop(follower.written_to);
                let joined = follower
                    .done
                    .join()
                    .map_err(|_| io::Error::other("the hashing thread panicked"))?;
                joined?
            }
            None => (blake3::Hasher::new(), Duration::ZERO),
        };
        // Whatever is left is waited for: every CPU may help.
        let started = Instant::now();
        hash_written_range(fd, hasher.count(), size, &mut hasher, true)?;
        time += started.elapsed();
        Ok((*hasher.finalize().as_bytes(), time))
    }
}

impl Follower {
    /// Start the thread, on a duplicate of `fd` it only maps. `None` if
    /// the process cannot have another thread now.
    fn start(fd: BorrowedFd<'_>) -> Option<Follower> {
        let fd = fd.try_clone_to_owned().ok()?;
        let (written_to, reached) = mpsc::channel::<u64>();
        let abandoned = Arc::new(AtomicBool::new(false));
        let stop = abandoned.clone();
        let done = std::thread::Builder::new()
            .name("memseal-hash".to_owned())
            .spawn(move || {
                let mut hasher = blake3::Hasher::new();
                let mut time = Duration::ZERO;
                for end in reached {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let started = Instant::now();
                    // One thread: the other CPUs are busy receiving and
                    // copying the next steps.
                    hash_written_range(fd.as_fd(), hasher.count(), end, &mut hasher, false)?;
                    time += started.elapsed();
                }
                Ok((hasher, time))
            })
            .ok()?;
        Some(Follower {
            written_to,
            abandoned,
            done,
        })
    }
}

impl Drop for TrailingHash {
    fn drop(&mut self) {
        // Dropped before `finish` (an upload that ended early): the thread
        // stops at its next step instead of hashing what no one will
        // publish.
        if let Some(follower) = &self.follower {
            follower.abandoned.store(true, Ordering::Relaxed);
        }
    }
}

/// Feed bytes `start..end` of the writer's memfd `fd` to `hasher`, through
/// a private read-only mapping of just that range, on this thread alone
/// or (large ranges) on every CPU. `start` is a multiple of the page size
/// (a multiple of [`HASH_STEP`], or 0).
fn hash_written_range(
    fd: BorrowedFd<'_>,
    start: u64,
    end: u64,
    hasher: &mut blake3::Hasher,
    on_all_cpus: bool,
) -> io::Result<()> {
    use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
    let Ok(len) = usize::try_from(end - start) else {
        return Err(io::ErrorKind::FileTooLarge.into());
    };
    if len == 0 {
        return Ok(());
    }
    // The module documentation gives why the range stays valid and
    // unchanged while it is mapped: the memfd is sealed against shrinking,
    // and nothing writes bytes the writer has already written.
    // SAFETY: a new mapping at an address the kernel picks aliases nothing.
    let addr = unsafe {
        mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ,
            MapFlags::PRIVATE | MapFlags::POPULATE,
            fd,
            start,
        )
    }?;
    // `addr` starts the `len`-byte readable mapping made above, whose
    // contents do not change while it is mapped (module documentation).
    // SAFETY: so the slice is valid, and it does not outlive this function.
    let bytes = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len) };
    if on_all_cpus {
        hash_update(hasher, bytes);
    } else {
        hasher.update(bytes);
    }
    // SAFETY: unmaps exactly the mapping made above; `bytes`, the only
    // reference into it, is not used again.
    unsafe { munmap(addr, len) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Content that differs at every offset, so a step hashed twice or
    /// skipped changes the result.
    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 4096) as u8).collect()
    }

    #[test]
    fn every_way_in_gives_the_hash_of_the_bytes() {
        for len in [
            0,
            1,
            4096,
            HASH_STEP as usize,
            HASH_STEP as usize * 3 + 12345,
        ] {
            let bytes = content(len);
            let expected = *blake3::hash(&bytes).as_bytes();

            let mut writer = BlobWriter::new(len as u64).unwrap();
            // Uneven pieces, so steps end in the middle of writes.
            for piece in bytes.chunks(1_000_003) {
                writer.write(piece).unwrap();
            }
            assert_eq!(writer.finish().unwrap().hash(), &expected, "{len} written");

            let mut source = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut source, &bytes).unwrap();
            let mut writer = BlobWriter::new(len as u64).unwrap();
            while writer.remaining() > 0 {
                let offset = len as u64 - writer.remaining();
                let want = (writer.remaining() as usize).min(3 << 20);
                assert!(writer.send_file_from(source.as_fd(), offset, want).unwrap() > 0);
            }
            assert_eq!(writer.finish().unwrap().hash(), &expected, "{len} sent");

            let (read, write) = rustix::pipe::pipe().unwrap();
            let mut writer = BlobWriter::new(len as u64).unwrap();
            for piece in bytes.chunks(65536) {
                rustix::io::write(&write, piece).unwrap();
                writer.splice_from(read.as_fd(), piece.len()).unwrap();
            }
            assert_eq!(writer.finish().unwrap().hash(), &expected, "{len} spliced");
        }
    }

    #[test]
    fn a_large_fill_is_hashed_by_a_thread_behind_the_writer() {
        let bytes = content(HASH_STEP as usize * 4);
        let mut writer = BlobWriter::new(bytes.len() as u64).unwrap();
        writer.write(&bytes).unwrap();
        assert!(writer.hash.follower.is_some(), "a hashing thread follows");
        assert_eq!(writer.hash.dispatched, bytes.len() as u64);
        let blob = writer.finish().unwrap();
        assert_eq!(blob.hash(), blake3::hash(&bytes).as_bytes());
    }

    #[test]
    fn the_memfd_cannot_change_size_while_it_is_filled() {
        let writer = BlobWriter::new(8192).unwrap();
        assert!(rustix::fs::ftruncate(&writer.fd, 4096).is_err());
        assert!(rustix::fs::ftruncate(&writer.fd, 16384).is_err());
    }
}
