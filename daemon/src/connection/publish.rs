//! Publishing: checks, the budget reservation, and the bytes, streamed
//! over the socket or handed over as a descriptor.
//!
//! Every publish holds a budget reservation from before its memfd exists
//! until its version is visible or it has failed, and that time is bounded
//! on every path a client controls: a streamed upload must keep a minimum
//! rate and finish within `upload_timeout`. A descriptor publish is read
//! by a blocking thread, which a hostile file (one on a FUSE file system
//! that never answers, say) could stall in the kernel for as long as it
//! likes; the thread then keeps the reservation, so the budget stays
//! honest, and users who are not publishers share a bounded number of
//! such threads ([`USER_INGESTS`]), so they cannot take the ones the
//! publishers need.

use super::{Connection, End};
use crate::blob::{self, Blob, BlobWriter, IngestError, Ingested};
use crate::policy::Write;
use crate::state::Reservation;
use memseal_proto::tokio_io::{self, Socket};
use memseal_proto::{ErrorCode, PublishSource, Response};
use rustix::pipe::{PipeFlags, SpliceFlags};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use tokio::io::Interest;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Largest read of a streamed upload at once.
const UPLOAD_CHUNK: usize = 1 << 20;

/// Uploads at least this large are spliced from the socket into a pipe and
/// from the pipe into the memfd: the kernel hands the socket's pages to
/// the pipe, so each byte is copied once in the daemon instead of twice
/// (socket to buffer, buffer to memfd). Below it, the pipe's set-up costs
/// more than the copy it saves.
const SPLICE_MIN: u64 = 1 << 20;

/// The capacity asked for the pipe of a spliced upload (the most an
/// unprivileged process may have by default, `fs.pipe-max-size`).
const PIPE_CAPACITY: usize = 1 << 20;

/// Room for the bytes of a spliced upload that arrived together with its
/// request, which are in the daemon's buffer already and are written from
/// there, this much at a time.
const EARLY_BYTES: usize = 64 << 10;

/// Bytes the progress deadline of an upload asks for: each 64 KiB (or the
/// rest of the upload, if less) must arrive within the I/O timeout.
const UPLOAD_PROGRESS: u64 = 64 << 10;

/// Blobs at least this large are let go of on a blocking thread when a
/// publish turns out to duplicate content already held (see
/// `Connection::publish`); smaller ones free their pages in microseconds.
const FREE_ASIDE_MIN: u64 = 1 << 20;

/// Descriptor publishes that users who are not publishers may have in
/// progress at once, all together: each takes a blocking thread, of which
/// the runtime has 512.
pub const USER_INGESTS: usize = 64;

impl Connection {
    pub(super) async fn publish(
        &mut self,
        name: String,
        size: u64,
        source: PublishSource,
        fd: Option<OwnedFd>,
    ) -> Result<(), End> {
        if let Err(reply) = self.check_write(Write::Publish, &name) {
            return self.reply(reply, None).await;
        }
        let exempt = self.state.policy().is_publisher(&self.peer);
        let reservation = match self.state.reserve(size, self.peer.uid, exempt) {
            Ok(r) => r,
            // A streamed publish is refused before the client was told to
            // send, so there is nothing to drain.
            Err(e) => return self.reply_error(e).await,
        };
        let started = std::time::Instant::now();
        let outcome = match (source, fd) {
            (PublishSource::Stream, None) => self
                .receive_stream(&name, size)
                .await?
                .map(|blob| (blob, reservation)),
            (PublishSource::Descriptor, Some(fd)) => {
                self.ingest_descriptor(fd, size, exempt, reservation).await
            }
            // decode_request guarantees the descriptor matches the source.
            _ => Err(Response::error(
                ErrorCode::ProtocolError,
                "the publish request's descriptor does not match its source",
            )),
        };
        match outcome {
            Ok((blob, reservation)) => {
                // A memfd's pages are freed when its last descriptor
                // closes. The catalog drops the new blob under its lock if
                // identical content is held already; this descriptor makes
                // that drop cheap, and is closed after the reply on a
                // blocking thread, so neither the lock every fetch takes
                // nor this client's next request waits for the freeing of
                // up to `max_asset_size` bytes.
                let freed_aside = (blob.size() >= FREE_ASIDE_MIN)
                    .then(|| blob.fd().try_clone_to_owned().ok())
                    .flatten();
                let info = self.state.publish(reservation, &name, blob);
                if let Some(note) = self.state.log_budget().allow(&self.peer, exempt) {
                    tracing::info!(
                        peer = %self.peer,
                        name = %info.name,
                        version = info.version,
                        size = info.size,
                        hash = %&memseal_proto::message::hash_to_hex(&info.hash)[..16],
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "published{note}"
                    );
                }
                let replied = self.reply(Response::Published(info), None).await;
                if let Some(fd) = freed_aside {
                    tokio::task::spawn_blocking(move || drop(fd));
                }
                replied
            }
            Err(reply) => self.reply(reply, None).await,
        }
    }

    /// Make a blob of a descriptor on a blocking thread that owns the
    /// reservation until it is done (see the module documentation).
    async fn ingest_descriptor(
        &mut self,
        fd: OwnedFd,
        size: u64,
        exempt: bool,
        reservation: Reservation,
    ) -> Result<(Blob, Reservation), Response> {
        let permit = if exempt {
            None
        } else {
            let slots = self.state.user_ingests();
            let waited = tokio::time::timeout(self.config.io_timeout, slots.acquire_owned()).await;
            match waited {
                Ok(Ok(permit)) => Some(permit),
                _ => {
                    return Err(Response::error(
                        ErrorCode::Busy,
                        format!(
                            "all {USER_INGESTS} descriptor publishes that users who are not \
                             publishers may run at once are in progress; retry later"
                        ),
                    ))
                }
            }
        };
        let publisher = self.peer.uid;
        let work = tokio::task::spawn_blocking(move || {
            let made = blob::from_descriptor(fd, size, publisher);
            drop(permit);
            (made, reservation)
        });
        match work.await {
            Ok((Ok((blob, how)), reservation)) => {
                match how {
                    Ingested::Copied(Some(why)) => {
                        debug!(peer = %self.peer, "copied a sealed memfd instead of adopting it: {why}")
                    }
                    how => debug!(peer = %self.peer, ?how, "descriptor ingested"),
                }
                Ok((blob, reservation))
            }
            Ok((Err(e), _)) => {
                let code = match e {
                    IngestError::Io(_) => ErrorCode::Internal,
                    _ => ErrorCode::InvalidSource,
                };
                Err(Response::error(code, e.to_string()))
            }
            Err(e) => Err(Response::error(
                ErrorCode::Internal,
                format!("the daemon failed while reading the descriptor: {e}"),
            )),
        }
    }

    /// Receive a streamed upload into a new memfd. The outer error ends the
    /// connection (the peer stalled or vanished: the partial memfd is
    /// dropped with `writer`); the inner one is a reply.
    pub(super) async fn receive_stream(
        &mut self,
        name: &str,
        size: u64,
    ) -> Result<Result<Blob, Response>, End> {
        let mut writer = match BlobWriter::new(size) {
            Ok(writer) => writer,
            Err(e) => {
                let message = format!("cannot create a memfd of {size} bytes: {e}");
                if let Some(note) = self.state.may_log(&self.peer) {
                    warn!(peer = %self.peer, "{message}{note}");
                }
                return Ok(Err(Response::error(ErrorCode::Internal, message)));
            }
        };
        self.reply(Response::Continue, None).await?;
        let mut intake = Intake::for_upload(size);
        // A deadline per gap between reads would let a peer that sends a
        // byte now and then hold its slot, its reservation and a partial
        // memfd forever; asking for steady progress, and for the whole
        // upload to end in time, does not.
        let finish_by = Instant::now() + self.config.upload_timeout;
        let mut deadline = (Instant::now() + self.config.io_timeout).min(finish_by);
        let mut owed = UPLOAD_PROGRESS.min(size);
        while writer.remaining() > 0 {
            let want = (writer.remaining() as usize).min(UPLOAD_CHUNK);
            let received = size - writer.remaining();
            let got = match self
                .receive_some(&mut intake, &mut writer, want, deadline)
                .await
            {
                Ok(0) => {
                    return Err(End::Abandoned(format!(
                        "the client closed the connection after sending {received} of the \
                         {size} bytes of its upload of '{name}'; nothing was published"
                    )))
                }
                Ok(got) => got,
                Err(End::Timeout(_)) if Instant::now() >= finish_by => {
                    return Err(End::Abandoned(format!(
                        "the upload of '{name}' did not finish within {:?} ({received} of {size} \
                         bytes received); nothing was published",
                        self.config.upload_timeout
                    )))
                }
                Err(other) => return Err(other),
            };
            owed = owed.saturating_sub(got as u64);
            if owed == 0 {
                deadline = (Instant::now() + self.config.io_timeout).min(finish_by);
                owed = UPLOAD_PROGRESS.min(writer.remaining());
            }
        }
        match writer.finish() {
            Ok(blob) => Ok(Ok(blob)),
            Err(e) => {
                let message = format!("cannot seal the new asset: {e}");
                if let Some(note) = self.state.may_log(&self.peer) {
                    warn!(peer = %self.peer, "{message}{note}");
                }
                Ok(Err(Response::error(ErrorCode::Internal, message)))
            }
        }
    }

    /// Move up to `want` more upload bytes into `writer`, waiting at most
    /// until `deadline`; 0 when the peer closed the connection. Bytes that
    /// arrived together with the publish request come first.
    async fn receive_some(
        &mut self,
        intake: &mut Intake,
        writer: &mut BlobWriter,
        want: usize,
        deadline: Instant,
    ) -> Result<usize, End> {
        let got = match intake {
            Intake::Buffer(buffer) => {
                let got = self.read_raw(&mut buffer[..want], deadline).await?;
                writer.write(&buffer[..got])?;
                got
            }
            Intake::Pipe { read, write, early } => {
                let got = self.buffer.take_raw(&mut early[..want.min(EARLY_BYTES)])?;
                if got > 0 {
                    writer.write(&early[..got])?;
                    return Ok(got);
                }
                let got = self.splice_raw(write.as_fd(), want, deadline).await?;
                writer.splice_from(read.as_fd(), got)?;
                got
            }
        };
        Ok(got)
    }

    /// Splice up to `len` raw upload bytes from the socket into the empty
    /// pipe `pipe`, waiting at most until `deadline`; 0 when the peer
    /// closed the connection. The kernel closes a descriptor riding on
    /// these bytes unread.
    async fn splice_raw(
        &self,
        pipe: BorrowedFd<'_>,
        len: usize,
        deadline: Instant,
    ) -> Result<usize, End> {
        let spliced = async {
            loop {
                self.stream.ready(Interest::READABLE).await?;
                let moved = self.stream.try_io(Interest::READABLE, || {
                    rustix::pipe::splice(
                        &self.stream,
                        None,
                        pipe,
                        None,
                        len,
                        SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
                    )
                    .map_err(io::Error::from)
                });
                match moved {
                    Ok(n) => return Ok(n),
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        };
        tokio::time::timeout_at(deadline, spliced)
            .await
            .map_err(|_| End::Timeout("upload too slow or stalled"))?
            .map_err(End::from)
    }

    /// Read some raw upload bytes, waiting at most until `deadline`; 0 when
    /// the peer closed the connection. Bytes that arrived together with
    /// the publish request come first.
    pub(super) async fn read_raw(
        &mut self,
        buffer: &mut [u8],
        deadline: Instant,
    ) -> Result<usize, End> {
        let read = tokio_io::read_raw(&self.stream, &mut self.buffer, buffer);
        tokio::time::timeout_at(deadline, read)
            .await
            .map_err(|_| End::Timeout("upload too slow or stalled"))?
            .map_err(End::Peer)
    }
}

/// Where the bytes of a streamed upload go on their way into the memfd.
enum Intake {
    /// Read into a buffer, then written (small uploads).
    Buffer(Vec<u8>),
    /// Spliced into a pipe, then from the pipe into the memfd.
    Pipe {
        read: OwnedFd,
        write: OwnedFd,
        /// For the bytes that came with the request.
        early: Vec<u8>,
    },
}

impl Intake {
    /// A pipe for a large upload, if one can be had; a buffer otherwise.
    fn for_upload(size: u64) -> Intake {
        if size >= SPLICE_MIN {
            match rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) {
                Ok((read, write)) => {
                    // Past the per-user pipe allowance the kernel refuses a
                    // larger pipe; the default one still works.
                    if let Err(e) = rustix::pipe::fcntl_setpipe_size(&write, PIPE_CAPACITY) {
                        debug!("an upload's pipe keeps its default size: {e}");
                    }
                    return Intake::Pipe {
                        read,
                        write,
                        early: vec![0u8; EARLY_BYTES],
                    };
                }
                Err(e) => debug!("no pipe for an upload ({e}); reading it into a buffer"),
            }
        }
        Intake::Buffer(vec![0u8; (size as usize).clamp(1, UPLOAD_CHUNK)])
    }
}
