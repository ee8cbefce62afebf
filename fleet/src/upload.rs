//! Uploading a local version's bytes as a blob, straight from the
//! read-only mapping of the fetched asset: every request body is a slice of
//! that mapping (`Bytes::from_owner`), so nothing is copied into a buffer
//! on the way.
//!
//! A blob is written once. The agent first asks whether the store already
//! has it (any node that pushed the same content before) and uploads
//! nothing if so. Small blobs go up in one PUT with `If-None-Match: *`
//! (object_store's `PutMode::Create`), so two nodes racing to write the
//! same blob cannot both write it. Larger ones go up in parts; S3 has no
//! "create only" for a multipart upload that object_store exposes, so two
//! nodes racing there both write, which is harmless: the key is the hash of
//! the content, so both write the same bytes.

use crate::download::Transfer;
use crate::error::Error;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use memseal::Asset;
use object_store::path::Path;
use object_store::{
    MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions,
    PutPayload,
};
use std::sync::Arc;

/// S3 refuses parts smaller than 5 MiB (except the last) and uploads of
/// more than 10,000 parts.
const MIN_PART: u64 = 5 << 20;
const MAX_PARTS: u64 = 10_000;

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploaded {
    /// The store already had the blob; nothing was sent.
    Already,
    /// The blob was written in this many requests.
    Written {
        /// 1 for a single PUT, the part count for a multipart upload.
        parts: u64,
    },
}

impl std::fmt::Display for Uploaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Uploaded::Already => write!(f, "the store already had the blob"),
            Uploaded::Written { parts: 1 } => write!(f, "blob uploaded"),
            Uploaded::Written { parts } => write!(f, "blob uploaded in {parts} parts"),
        }
    }
}

/// Make sure the store holds `asset`'s bytes at `key`.
pub async fn upload(
    store: &Arc<dyn ObjectStore>,
    key: &Path,
    asset: Asset,
    transfer: &Transfer,
) -> Result<Uploaded, Error> {
    let size = asset.size();
    let mut mode = PutMode::Create;
    match store.head(key).await {
        Ok(meta) if meta.size == size => return Ok(Uploaded::Already),
        Ok(meta) => {
            // Content-addressed: the only right bytes for this key are
            // these, and pullers refuse what is there now.
            tracing::warn!(
                "the store's {key} holds {} bytes where its content has {size}: replacing it",
                meta.size
            );
            mode = PutMode::Overwrite;
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(Error::store(format!("looking up {key}"), e)),
    }
    let bytes = Bytes::from_owner(asset);
    if size <= transfer.piece_size.max(MIN_PART) {
        put_once(store, key, bytes, mode).await
    } else {
        put_in_parts(store, key, bytes, transfer).await
    }
}

/// One PUT, create-only unless replacing a damaged blob.
async fn put_once(
    store: &Arc<dyn ObjectStore>,
    key: &Path,
    bytes: Bytes,
    mode: PutMode,
) -> Result<Uploaded, Error> {
    let options = PutOptions {
        mode,
        ..PutOptions::default()
    };
    match store.put_opts(key, PutPayload::from(bytes), options).await {
        Ok(_) => Ok(Uploaded::Written { parts: 1 }),
        // Another node wrote the same content first.
        Err(object_store::Error::AlreadyExists { .. }) => Ok(Uploaded::Already),
        Err(e) => Err(Error::store(format!("uploading {key}"), e)),
    }
}

/// A multipart upload, `connections` parts in flight at once.
async fn put_in_parts(
    store: &Arc<dyn ObjectStore>,
    key: &Path,
    bytes: Bytes,
    transfer: &Transfer,
) -> Result<Uploaded, Error> {
    let size = bytes.len() as u64;
    let part = transfer
        .piece_size
        .max(MIN_PART)
        .max(size.div_ceil(MAX_PARTS));
    let doing = || format!("uploading {key} in parts");
    let mut upload = store
        .put_multipart_opts(key, PutMultipartOptions::default())
        .await
        .map_err(|e| Error::store(doing(), e))?;
    match send_parts(upload.as_mut(), &bytes, part, transfer.connections.max(1)).await {
        Ok(parts) => {
            upload
                .complete()
                .await
                .map_err(|e| Error::store(doing(), e))?;
            Ok(Uploaded::Written { parts })
        }
        Err(e) => {
            // Best effort: a store keeps abandoned parts (and bills for
            // them) until they are aborted or a lifecycle rule drops them.
            let _ = upload.abort().await;
            Err(Error::store(doing(), e))
        }
    }
}

/// Send every part; returns how many.
async fn send_parts(
    upload: &mut dyn MultipartUpload,
    bytes: &Bytes,
    part: u64,
    connections: usize,
) -> Result<u64, object_store::Error> {
    let size = bytes.len() as u64;
    let count = size.div_ceil(part);
    let mut in_flight = FuturesUnordered::new();
    for index in 0..count {
        if in_flight.len() >= connections {
            in_flight.next().await.transpose()?;
        }
        let start = (index * part) as usize;
        let end = ((index + 1) * part).min(size) as usize;
        in_flight.push(upload.put_part(PutPayload::from(bytes.slice(start..end))));
    }
    while let Some(result) = in_flight.next().await {
        result?;
    }
    Ok(count)
}
