//! Publishing: checks, the budget reservation, and the bytes, streamed
//! over the socket or handed over as a descriptor.

use super::{Connection, End};
use crate::blob::{self, StreamIngest};
use crate::policy::Write;
use memseal_proto::wire::recv_raw;
use memseal_proto::{ErrorCode, FrameError, PublishSource, Response};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use tokio::io::Interest;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Largest read of a streamed upload at once.
const UPLOAD_CHUNK: usize = 1 << 20;

/// Bytes the progress deadline of an upload asks for: each 64 KiB (or the
/// rest of the upload, if less) must arrive within the I/O timeout.
const UPLOAD_PROGRESS: u64 = 64 << 10;

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
        let exempt = self.store.policy().is_publisher(&self.peer);
        let reservation = match self.store.reserve(size, self.peer.uid, exempt) {
            Ok(r) => r,
            // A streamed publish is refused before the client was told to
            // send, so there is nothing to drain.
            Err(e) => return self.reply_error(e).await,
        };
        let started = std::time::Instant::now();
        let outcome = match (source, fd) {
            (PublishSource::Stream, None) => self.receive_stream(size).await?,
            (PublishSource::Descriptor, Some(fd)) => {
                match tokio::task::spawn_blocking(move || blob::from_descriptor(fd, size)).await {
                    Ok(Ok((blob, how))) => {
                        debug!(?how, "descriptor ingested");
                        Ok(blob)
                    }
                    Ok(Err(e)) => Err(Response::error(ErrorCode::InvalidSource, e.to_string())),
                    Err(e) => Err(Response::error(
                        ErrorCode::Internal,
                        format!("ingest failed: {e}"),
                    )),
                }
            }
            // decode_request guarantees the descriptor matches the source.
            _ => Err(Response::error(
                ErrorCode::ProtocolError,
                "descriptor mismatch",
            )),
        };
        match outcome {
            Ok(blob) => {
                let info = self.store.publish(reservation, &name, blob);
                info!(
                    peer = %self.peer,
                    name = %info.name,
                    version = info.version,
                    size = info.size,
                    hash = %&memseal_proto::message::hash_to_hex(&info.hash)[..16],
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "published"
                );
                self.reply(Response::Published(info), None).await
            }
            Err(reply) => {
                drop(reservation);
                self.reply(reply, None).await
            }
        }
    }

    /// Receive a streamed upload into a new memfd. The outer error ends the
    /// connection (the peer stalled or vanished: the partial memfd is
    /// dropped with `ingest`); the inner one is a reply.
    pub(super) async fn receive_stream(
        &mut self,
        size: u64,
    ) -> Result<Result<blob::Blob, Response>, End> {
        let mut ingest = match StreamIngest::new(size) {
            Ok(ingest) => ingest,
            Err(e) => {
                let message = format!("cannot create a memfd of {size} bytes: {e}");
                warn!("{message}");
                return Ok(Err(Response::error(ErrorCode::Internal, message)));
            }
        };
        self.reply(Response::Continue, None).await?;
        let mut buffer = vec![0u8; (size as usize).clamp(1, UPLOAD_CHUNK)];
        // A deadline per gap between reads would let a peer that sends a
        // byte now and then hold its slot, its reservation and a partial
        // memfd forever; asking for steady progress does not.
        let mut deadline = Instant::now() + self.config.io_timeout;
        let mut owed = UPLOAD_PROGRESS.min(size);
        while ingest.remaining() > 0 {
            let want = (ingest.remaining() as usize).min(buffer.len());
            let got = self.read_raw(&mut buffer[..want], deadline).await?;
            if let Err(e) = ingest.write(&buffer[..got]) {
                return Err(End::Peer(FrameError::Io(e)));
            }
            owed = owed.saturating_sub(got as u64);
            if owed == 0 {
                deadline = Instant::now() + self.config.io_timeout;
                owed = UPLOAD_PROGRESS.min(ingest.remaining());
            }
        }
        match ingest.finish() {
            Ok(blob) => Ok(Ok(blob)),
            Err(e) => {
                let message = format!("cannot seal the new asset: {e}");
                warn!("{message}");
                Ok(Err(Response::error(ErrorCode::Internal, message)))
            }
        }
    }

    /// Read some raw upload bytes, waiting at most until `deadline`.
    /// Bytes that arrived together with the publish request come first.
    pub(super) async fn read_raw(
        &mut self,
        buffer: &mut [u8],
        deadline: Instant,
    ) -> Result<usize, End> {
        let buffered = self.reader.take_raw(buffer).map_err(End::Peer)?;
        if buffered > 0 {
            return Ok(buffered);
        }
        loop {
            tokio::time::timeout_at(deadline, self.stream.readable())
                .await
                .map_err(|_| End::Timeout("upload too slow or stalled"))??;
            let step = self.stream.try_io(Interest::READABLE, || {
                match recv_raw(self.stream.as_fd(), buffer) {
                    Err(FrameError::Io(e)) => Err(e),
                    other => Ok(other),
                }
            });
            match step {
                Ok(Ok(0)) => {
                    return Err(End::Peer(FrameError::Truncated {
                        received: 0,
                        expected: buffer.len(),
                    }))
                }
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) => return Err(End::Peer(e)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(End::from(e)),
            }
        }
    }
}
