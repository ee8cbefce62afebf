//! The bucket: how to reach it, and the few requests the agent makes on
//! manifests. Blobs are moved by `download` and `upload`.
//!
//! Endpoint and credentials come from the environment exactly as
//! object_store's `AmazonS3Builder::from_env` reads them (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, and the rest), the bucket and prefix
//! from the `s3://BUCKET/PREFIX` address.

use crate::error::{setup_problem, Error, Integrity, Problem, SetupProblem};
use crate::layout::Layout;
use crate::manifest::{Manifest, MAX_MANIFEST_BYTES};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    ClientConfigKey, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};
use std::sync::Arc;
use std::time::Duration;

/// How long object_store itself retries one request before the agent sees
/// the failure; the agent's own loops retry beyond that, with backoff.
const REQUEST_RETRY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many times object_store repeats one failing request.
const REQUEST_RETRIES: usize = 4;
/// Defaults for the HTTP client when the environment sets none: a dead
/// endpoint is noticed within seconds, and one request (a whole piece of a
/// download) may take a minute.
const CONNECT_TIMEOUT: &str = "5s";
const REQUEST_TIMEOUT: &str = "60s";

/// A bucket and a prefix in it.
#[derive(Debug, Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    layout: Layout,
    /// `s3://BUCKET/PREFIX`, as given, for messages.
    url: String,
    bucket: String,
}

/// What reading a manifest found.
#[derive(Debug)]
pub enum ManifestRead {
    /// The store has no manifest for the name.
    Missing,
    /// The manifest's ETag is still the one the caller had.
    NotModified,
    /// The current manifest, with its ETag.
    Found(Manifest, Option<String>),
}

impl Remote {
    /// The bucket at `url` (`s3://BUCKET` or `s3://BUCKET/PREFIX`), reached
    /// with the endpoint and credentials of the environment.
    pub fn from_env(url: &str) -> Result<Remote, Error> {
        let (bucket, prefix) = parse_url(url)?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in [
            (ClientConfigKey::ConnectTimeout, CONNECT_TIMEOUT),
            (ClientConfigKey::Timeout, REQUEST_TIMEOUT),
        ] {
            let key = AmazonS3ConfigKey::Client(key);
            if builder.get_config_value(&key).is_none() {
                builder = builder.with_config(key, value);
            }
        }
        let retry = RetryConfig {
            max_retries: REQUEST_RETRIES,
            retry_timeout: REQUEST_RETRY_TIMEOUT,
            ..RetryConfig::default()
        };
        let store = builder
            .with_retry(retry)
            .build()
            .map_err(|e| Error::Setup(format!("cannot use {url}: {e}")))?;
        Ok(Remote {
            store: Arc::new(store),
            layout: Layout::new(prefix),
            url: url.to_owned(),
            bucket: bucket.to_owned(),
        })
    }

    /// The object store, for moving blobs.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where things live in the bucket.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The address the remote was given as.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One request that proves the bucket exists and the credentials may
    /// read it. A refusal becomes one [`Error::Setup`] that says which of
    /// the two is wrong; an unreachable endpoint stays a (transient)
    /// [`Error::Store`].
    pub async fn check(&self) -> Result<(), Error> {
        let folder = self.layout.manifests_folder("");
        match self.store.list_with_delimiter(Some(&folder)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.setup_error(e, "list the bucket")),
        }
    }

    /// Turn the errors that mean "wrong credentials" or "no such bucket"
    /// into one clear [`Error::Setup`]; anything else stays a store error.
    pub fn setup_error(&self, error: object_store::Error, doing: &str) -> Error {
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .unwrap_or_else(|_| "the default AWS endpoint".to_owned());
        match setup_problem(&error) {
            Some(SetupProblem::Credentials(words)) => Error::Setup(format!(
                "the store at {endpoint} refused the credentials to {doing} {} ({words}); check \
                 AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) and the \
                 bucket's policy",
                self.url
            )),
            Some(SetupProblem::NoBucket(words)) => Error::Setup(format!(
                "the bucket {:?} does not exist at {endpoint} ({words}); create it, or fix \
                 --remote",
                self.bucket
            )),
            None => Error::store(format!("{doing} {}", self.url), error),
        }
    }

    /// The manifest of `name`; with `etag`, a conditional read that answers
    /// [`ManifestRead::NotModified`] without a body when nothing changed.
    pub async fn manifest(&self, name: &str, etag: Option<&str>) -> Result<ManifestRead, Error> {
        let key = self.layout.manifest(name);
        let options = GetOptions {
            if_none_match: etag.map(str::to_owned),
            ..GetOptions::default()
        };
        let doing = || format!("reading the manifest of {name} at {key}");
        let result = match self.store.get_opts(&key, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(ManifestRead::Missing),
            Err(object_store::Error::NotModified { .. }) => return Ok(ManifestRead::NotModified),
            Err(e) => return Err(Error::store(doing(), e)),
        };
        let integrity = |problem| {
            Error::Integrity(Integrity {
                name: name.to_owned(),
                key: key.to_string(),
                problem,
            })
        };
        if result.meta.size > MAX_MANIFEST_BYTES as u64 {
            return Err(integrity(Problem::Manifest(
                crate::manifest::ManifestError::TooLarge(result.meta.size as usize),
            )));
        }
        let etag = result.meta.e_tag.clone();
        let bytes = result.bytes().await.map_err(|e| Error::store(doing(), e))?;
        let manifest =
            Manifest::parse(name, &bytes).map_err(|e| integrity(Problem::Manifest(e)))?;
        Ok(ManifestRead::Found(manifest, etag))
    }

    /// Make `manifest` the latest version of its name. The last writer
    /// wins: manifests are pointers, and the blob they point at is
    /// already in place.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<(), Error> {
        let key = self.layout.manifest(&manifest.name);
        let options = PutOptions {
            mode: PutMode::Overwrite,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&key, PutPayload::from(manifest.to_json()), options)
            .await
            .map_err(|e| Error::store(format!("writing the manifest {key}"), e))?;
        Ok(())
    }

    /// The names under `prefix` that have a manifest, in key order.
    pub async fn names(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let folder = self.layout.manifests_folder(prefix);
        let objects: Vec<_> = self
            .store
            .list(Some(&folder))
            .try_collect()
            .await
            .map_err(|e| self.setup_error(e, "list the manifests of"))?;
        let mut names: Vec<String> = objects
            .iter()
            .filter_map(|meta| self.layout.name_of(&meta.location))
            .filter(|name| name.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The size of the blob `key`, or `None` if the store has none.
    pub async fn object_size(&self, key: &Path) -> Result<Option<u64>, Error> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store(format!("looking up {key}"), e)),
        }
    }
}

/// Split `s3://BUCKET/PREFIX` into the bucket and the prefix.
fn parse_url(url: &str) -> Result<(&str, &str), Error> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| {
        Error::Usage(format!(
            "the remote {url:?} is not an s3://BUCKET/PREFIX address"
        ))
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::Usage(format!("the remote {url:?} names no bucket")));
    }
    if prefix
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(Error::Usage(format!(
            "the remote {url:?} has a '.' or '..' segment in its prefix"
        )));
    }
    Ok((bucket, prefix.trim_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_url("s3://b").unwrap(), ("b", ""));
        assert_eq!(parse_url("s3://b/").unwrap(), ("b", ""));
        assert_eq!(
            parse_url("s3://b/fleet/prod/").unwrap(),
            ("b", "fleet/prod")
        );
        assert!(matches!(parse_url("http://b/x"), Err(Error::Usage(_))));
        assert!(matches!(parse_url("s3:///x"), Err(Error::Usage(_))));
        assert!(matches!(parse_url("s3://b/../x"), Err(Error::Usage(_))));
    }
}
