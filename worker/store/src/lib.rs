//! Distillery's artifact store: every URI a spec holds — a teacher directory, a dataset, an
//! artifact, a golden set, a benchmark report — is `file://` (a mounted volume, or a directory
//! locally) or `s3://bucket/key` (any S3-compatible store), and this crate reads and writes both.
//! S3 goes through the Apache Arrow project's `object_store` (its AWS backend): request signing,
//! retries with backoff on 5xx, 429 and timeouts, multipart uploads.
//!
//! - **Credentials** come from the environment only: `AWS_ACCESS_KEY_ID` and
//!   `AWS_SECRET_ACCESS_KEY`, which the operator sets from the Secret the spec names; without them
//!   the default chain (web identity / IRSA, the instance's metadata).
//! - **Publishing an artifact** ([`Store::publish_artifact`]) uploads every file its manifest lists
//!   first and the manifest last: a reader finds a manifest only once every file it names is in
//!   place, and an upload killed half-way leaves no manifest, so no artifact.
//! - **Reading an artifact** ([`Store::fetch_artifact`]) trusts only a manifest whose files have
//!   the sha256 it records: it downloads into a local cache keyed by the manifest's own digest,
//!   checks every file, and moves the directory into place only then; a restarted server finds it
//!   there and downloads nothing.
//! - **Errors** say which URI and what to check; [`StoreError::is_permanent`] tells a missing
//!   bucket or a refused credential (retrying cannot help) from the rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use distillery_crds::manifest::{ArtifactManifest, MANIFEST_FILE, sha256};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, PutPayload, RetryConfig, WriteMultipart};

/// Files at least this large are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
/// The size of each part of a multipart upload (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
/// The file in a cached directory that says it is complete.
const COMPLETE: &str = ".complete";

/// A parsed store URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local path (`file:///…`).
    File(PathBuf),
    /// An object or prefix in a bucket (`s3://bucket/key`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key (or prefix), without a leading or trailing `/`.
        key: String,
    },
}

impl Location {
    /// Parses `uri`: `file:///absolute/path` or `s3://bucket/key`.
    pub fn parse(uri: &str) -> Result<Self, StoreError> {
        if let Some(path) = uri.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(StoreError::BadUri {
                    uri: uri.into(),
                    why: "a file:// URI needs an absolute path (file:///…)",
                });
            }
            return Ok(Location::File(PathBuf::from(path)));
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreError::BadUri {
                    uri: uri.into(),
                    why: "an s3:// URI names a bucket: s3://bucket/key",
                });
            }
            return Ok(Location::S3 { bucket: bucket.into(), key: key.trim_matches('/').into() });
        }
        Err(StoreError::BadUri { uri: uri.into(), why: "use file:///absolute/path or s3://bucket/key" })
    }
}

/// How to reach an S3-compatible store (the spec's `s3` settings; credentials come from the
/// environment).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// Endpoint URL (MinIO, Ceph, SeaweedFS, a cloud's S3 endpoint); AWS's for the region when
    /// unset (or `AWS_ENDPOINT_URL` from the environment).
    pub endpoint: Option<String>,
    /// Region; `AWS_REGION`/`AWS_DEFAULT_REGION` from the environment, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-hosted stores need.
    pub force_path_style: bool,
    /// An access key id and secret given directly (tools and tests); unset, they come from the
    /// environment, which is how a pod gets them.
    pub credentials: Option<(String, String)>,
}

/// The environment variables [`S3Settings::from_env`] reads: what the operator sets in every pod
/// it creates from the resource's `spec.s3` (the credentials go in `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY`, read by the store itself).
pub const ENDPOINT_ENV: &str = "DISTILLERY_S3_ENDPOINT";
/// See [`ENDPOINT_ENV`].
pub const REGION_ENV: &str = "DISTILLERY_S3_REGION";
/// See [`ENDPOINT_ENV`]: `true` or `false`.
pub const FORCE_PATH_STYLE_ENV: &str = "DISTILLERY_S3_FORCE_PATH_STYLE";

impl S3Settings {
    /// The settings the environment gives: `DISTILLERY_S3_ENDPOINT`, `DISTILLERY_S3_REGION` and
    /// `DISTILLERY_S3_FORCE_PATH_STYLE` (`true` or `false`); an unset or empty variable is the
    /// default (no endpoint, no region, virtual-hosted style). Credentials are left to the store,
    /// which reads `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, else the default chain.
    pub fn from_env() -> Result<Self, StoreError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`S3Settings::from_env`] with `lookup` standing for the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, StoreError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let force_path_style = match get(FORCE_PATH_STYLE_ENV).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(StoreError::Setting {
                    variable: FORCE_PATH_STYLE_ENV,
                    message: format!("{other:?} is neither true nor false"),
                });
            }
        };
        if let Some(endpoint) = get(ENDPOINT_ENV)
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(StoreError::Setting {
                variable: ENDPOINT_ENV,
                message: format!("{endpoint:?} is not an http:// or https:// URL"),
            });
        }
        Ok(Self { endpoint: get(ENDPOINT_ENV), region: get(REGION_ENV), force_path_style, credentials: None })
    }
}

impl From<&distillery_crds::common::S3Settings> for S3Settings {
    fn from(s: &distillery_crds::common::S3Settings) -> Self {
        Self {
            endpoint: s.endpoint.clone(),
            region: s.region.clone(),
            force_path_style: s.force_path_style,
            credentials: None,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not a URI the store reads.
    #[error("{uri}: {why}")]
    BadUri {
        /// The URI.
        uri: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The store refused the credentials or the request (403/401).
    #[error(
        "{uri}: access denied ({message}); check the credentials (the Secret the spec names, or the pod's identity) and that they may read and write this bucket"
    )]
    Denied {
        /// The URI.
        uri: String,
        /// The store's message.
        message: String,
    },
    /// The bucket or object does not exist.
    #[error("{uri}: not found ({message}); check the bucket name, the key and the endpoint")]
    NotFound {
        /// The URI.
        uri: String,
        /// The store's message.
        message: String,
    },
    /// A downloaded file does not match the manifest.
    #[error(
        "{uri}: {file} has sha256 {actual}, but the manifest records {expected}; the artifact was changed or damaged, and is not used"
    )]
    DigestMismatch {
        /// The artifact.
        uri: String,
        /// The file.
        file: String,
        /// The manifest's digest.
        expected: String,
        /// The downloaded file's.
        actual: String,
    },
    /// An environment variable of the store's settings has a value it cannot take.
    #[error("{variable}: {message}")]
    Setting {
        /// The variable.
        variable: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// Anything else the store said, after its retries.
    #[error("{uri}: {message}")]
    Store {
        /// The URI.
        uri: String,
        /// What happened.
        message: String,
    },
    /// Local disk.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether retrying the same operation cannot help (a bad URI, denied access, a missing
    /// bucket or object, a damaged artifact).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, StoreError::Store { .. } | StoreError::Io { .. })
    }

    fn from_store(uri: &str, e: object_store::Error) -> Self {
        let uri = uri.to_string();
        match e {
            object_store::Error::PermissionDenied { source, .. }
            | object_store::Error::Unauthenticated { source, .. } => {
                StoreError::Denied { uri, message: source.to_string() }
            }
            object_store::Error::NotFound { source, .. } => StoreError::NotFound { uri, message: source.to_string() },
            other => {
                // object_store reports some refusals (a list's, for one) as generic errors: the
                // S3 error code or the status in the message says what they are.
                let message = other.to_string();
                if message.contains("NoSuchBucket") {
                    StoreError::NotFound { uri, message }
                } else if DENIED.iter().any(|code| message.contains(code)) {
                    StoreError::Denied { uri, message }
                } else {
                    StoreError::Store { uri, message }
                }
            }
        }
    }
}

/// What in a store's error says the credentials or the request were refused: S3's error codes
/// for bad, expired or unauthorised credentials, and the statuses themselves.
const DENIED: [&str; 9] = [
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "403 Forbidden",
    "401 Unauthorized",
];

/// The endpoint object_store is given for `bucket`. With path-style addressing, the store's own
/// endpoint. With virtual-hosted style object_store takes a configured endpoint as the bucket's
/// own address, so the bucket goes in front of the host (`https://bucket.minio.example`), as a
/// virtual-hosted store expects.
fn client_endpoint(endpoint: &str, bucket: &str, path_style: bool) -> String {
    if path_style {
        return endpoint.to_string();
    }
    match endpoint.split_once("://") {
        Some((scheme, host)) => format!("{scheme}://{bucket}.{host}"),
        None => format!("{bucket}.{endpoint}"),
    }
}

/// One object under a listed prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its key relative to the prefix.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its entity tag, which changes whenever the object does (`None` for local files).
    pub e_tag: Option<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// The retries every S3 request gets: up to 8, from 100 ms doubling to 5 s, within 2 minutes.
pub fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 8,
        retry_timeout: Duration::from_secs(120),
    }
}

/// A bucket (or the local file system) to read and write.
#[derive(Clone, Debug)]
pub struct Store {
    s3: S3Settings,
}

/// A bucket's client and the key under it.
struct Bucket {
    client: Arc<dyn ObjectStore>,
    key: String,
}

impl Store {
    /// A store reaching S3 with `s3` (ignored for `file://`).
    pub fn new(s3: S3Settings) -> Self {
        Self { s3 }
    }

    fn bucket(&self, uri: &str) -> Result<Option<Bucket>, StoreError> {
        let Location::S3 { bucket, key } = Location::parse(uri)? else { return Ok(None) };
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket).with_retry(retry_config());
        if let Some(endpoint) = &self.s3.endpoint {
            builder = builder
                .with_endpoint(client_endpoint(endpoint, &bucket, self.s3.force_path_style))
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &self.s3.region {
            builder = builder.with_region(region);
        }
        if let Some((id, secret)) = &self.s3.credentials {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
        }
        builder = builder.with_virtual_hosted_style_request(!self.s3.force_path_style);
        let client = builder.build().map_err(|e| StoreError::from_store(uri, e))?;
        Ok(Some(Bucket { client: Arc::new(client), key }))
    }

    /// The whole object at `uri` (a `file://` file is read from disk).
    pub async fn get(&self, uri: &str) -> Result<bytes::Bytes, StoreError> {
        match self.bucket(uri)? {
            None => {
                let Location::File(path) = Location::parse(uri)? else { unreachable!() };
                Ok(tokio::fs::read(&path).await.map_err(io(&path))?.into())
            }
            Some(b) => {
                let got = b
                    .client
                    .get(&ObjectPath::from(b.key.as_str()))
                    .await
                    .map_err(|e| StoreError::from_store(uri, e))?;
                got.bytes().await.map_err(|e| StoreError::from_store(uri, e))
            }
        }
    }

    /// Downloads the object at `uri` into the local file `to` (its directory made first): streamed
    /// into a temporary file beside it, renamed into place once complete, so `to` is never half
    /// written. A `file://` URI is a copy. Returns the bytes written.
    pub async fn download(&self, uri: &str, to: &Path) -> Result<u64, StoreError> {
        use tokio::io::AsyncWriteExt;
        if let Some(parent) = to.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
        }
        let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let partial = to.with_file_name(format!(".{name}.{}.partial", std::process::id()));
        let written = match self.bucket(uri)? {
            None => {
                let Location::File(from) = Location::parse(uri)? else { unreachable!() };
                match tokio::fs::copy(&from, &partial).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tokio::fs::remove_file(&partial).await;
                        return Err(io(&from)(e));
                    }
                }
            }
            Some(b) => {
                let got = b
                    .client
                    .get(&ObjectPath::from(b.key.as_str()))
                    .await
                    .map_err(|e| StoreError::from_store(uri, e))?;
                let mut file = tokio::fs::File::create(&partial).await.map_err(io(&partial))?;
                let mut stream = got.into_stream();
                let mut written = 0u64;
                let copied: Result<(), StoreError> = async {
                    while let Some(chunk) = stream.try_next().await.map_err(|e| StoreError::from_store(uri, e))? {
                        file.write_all(&chunk).await.map_err(io(&partial))?;
                        written += chunk.len() as u64;
                    }
                    file.flush().await.map_err(io(&partial))
                }
                .await;
                if let Err(e) = copied {
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(e);
                }
                written
            }
        };
        tokio::fs::rename(&partial, to).await.map_err(io(to))?;
        Ok(written)
    }

    /// Uploads the local file `from` to `uri` (in parts when large); a `file://` URI is a copy.
    pub async fn put_file(&self, from: &Path, uri: &str) -> Result<(), StoreError> {
        let Some(b) = self.bucket(uri)? else {
            let Location::File(to) = Location::parse(uri)? else { unreachable!() };
            if let Some(parent) = to.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
            }
            tokio::fs::copy(from, &to).await.map_err(io(&to))?;
            return Ok(());
        };
        let bytes = tokio::fs::read(from).await.map_err(io(from))?;
        let path = ObjectPath::from(b.key.as_str());
        let store_error = |e| StoreError::from_store(uri, e);
        if bytes.len() < MULTIPART_THRESHOLD {
            b.client.put(&path, PutPayload::from(bytes)).await.map_err(store_error)?;
            return Ok(());
        }
        let upload = b.client.put_multipart(&path).await.map_err(store_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        writer.write(&bytes);
        writer.finish().await.map_err(|e| StoreError::from_store(uri, e))?;
        Ok(())
    }

    /// Deletes the object (or `file://` file) at `uri`.
    pub async fn delete(&self, uri: &str) -> Result<(), StoreError> {
        match self.bucket(uri)? {
            None => {
                let Location::File(path) = Location::parse(uri)? else { unreachable!() };
                tokio::fs::remove_file(&path).await.map_err(io(&path))
            }
            Some(b) => {
                b.client.delete(&ObjectPath::from(b.key.as_str())).await.map_err(|e| StoreError::from_store(uri, e))
            }
        }
    }

    /// Every object under the prefix `uri`, as (path relative to it, size), sorted.
    pub async fn list(&self, uri: &str) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self.list_objects(uri).await?.into_iter().map(|o| (o.name, o.size)).collect())
    }

    /// Every object under the prefix `uri`, sorted by name. Folder markers — the empty objects
    /// consoles and sync tools create for a "directory" that holds other objects — are left
    /// out: they are not files.
    pub async fn list_objects(&self, uri: &str) -> Result<Vec<Listed>, StoreError> {
        let Some(b) = self.bucket(uri)? else {
            let Location::File(root) = Location::parse(uri)? else { unreachable!() };
            let mut out = Vec::new();
            list_local(&root, &root, &mut out)?;
            out.sort();
            return Ok(out.into_iter().map(|(name, size)| Listed { name, size, e_tag: None }).collect());
        };
        let prefix = ObjectPath::from(b.key.as_str());
        let objects: Vec<_> =
            b.client.list(Some(&prefix)).try_collect().await.map_err(|e| StoreError::from_store(uri, e))?;
        let mut out: Vec<Listed> = objects
            .into_iter()
            .filter_map(|o| {
                let full = o.location.to_string();
                let rest = full.strip_prefix(b.key.as_str())?.trim_start_matches('/').to_string();
                (!rest.is_empty()).then_some(Listed { name: rest, size: o.size, e_tag: o.e_tag })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<String> = out.iter().map(|o| o.name.clone()).collect();
        out.retain(|o| {
            let folder = format!("{}/", o.name);
            o.size > 0 || !names.iter().any(|n| n.starts_with(&folder))
        });
        Ok(out)
    }

    /// Publishes the artifact in the local directory `dir` to `uri`: every file its manifest
    /// lists, checked against the manifest first, then the manifest itself. Returns the
    /// manifest's sha256.
    pub async fn publish_artifact(&self, dir: &Path, uri: &str) -> Result<String, StoreError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest_bytes = tokio::fs::read(&manifest_path).await.map_err(io(&manifest_path))?;
        let manifest = parse_manifest(uri, &manifest_bytes)?;
        let base = uri.trim_end_matches('/');
        for (name, entry) in &manifest.files {
            let path = dir.join(name);
            let actual = distillery_crds::manifest::sha256_file(&path).map_err(io(&path))?;
            if actual != entry.sha256 {
                return Err(StoreError::DigestMismatch {
                    uri: format!("file://{}", dir.display()),
                    file: name.clone(),
                    expected: entry.sha256.clone(),
                    actual,
                });
            }
            self.put_file(&path, &format!("{base}/{name}")).await?;
        }
        // Last: only now does the artifact exist for a reader.
        self.put_file(&manifest_path, &format!("{base}/{MANIFEST_FILE}")).await?;
        Ok(sha256(&manifest_bytes))
    }

    /// The artifact at `uri` as a local directory: a `file://` artifact where it is, an `s3://`
    /// one downloaded into `cache` (under the manifest's digest) with every file checked against
    /// the manifest. A cached copy is used without downloading again.
    pub async fn fetch_artifact(&self, uri: &str, cache: &Path) -> Result<PathBuf, StoreError> {
        if let Location::File(path) = Location::parse(uri)? {
            return Ok(path);
        }
        let base = uri.trim_end_matches('/');
        let manifest_uri = format!("{base}/{MANIFEST_FILE}");
        let manifest_bytes = self.get(&manifest_uri).await?;
        let manifest = parse_manifest(uri, &manifest_bytes)?;
        let digest = sha256(&manifest_bytes);
        let dir = cache.join(&digest);
        if dir.join(COMPLETE).is_file() {
            return Ok(dir);
        }
        let staging = cache.join(format!(".{digest}.{}", std::process::id()));
        let _ = tokio::fs::remove_dir_all(&staging).await;
        tokio::fs::create_dir_all(&staging).await.map_err(io(&staging))?;
        for (name, entry) in &manifest.files {
            let bytes = self.get(&format!("{base}/{name}")).await?;
            let actual = sha256(&bytes);
            if actual != entry.sha256 {
                let _ = tokio::fs::remove_dir_all(&staging).await;
                return Err(StoreError::DigestMismatch {
                    uri: uri.into(),
                    file: name.clone(),
                    expected: entry.sha256.clone(),
                    actual,
                });
            }
            let path = staging.join(name);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
            }
            tokio::fs::write(&path, &bytes).await.map_err(io(&path))?;
        }
        let path = staging.join(MANIFEST_FILE);
        tokio::fs::write(&path, &manifest_bytes).await.map_err(io(&path))?;
        let path = staging.join(COMPLETE);
        tokio::fs::write(&path, b"").await.map_err(io(&path))?;
        match tokio::fs::rename(&staging, &dir).await {
            Ok(()) => Ok(dir),
            // Another process put the same artifact in place first: use it.
            Err(_) if dir.join(COMPLETE).is_file() => {
                let _ = tokio::fs::remove_dir_all(&staging).await;
                Ok(dir)
            }
            Err(e) => Err(StoreError::Io { path: dir, source: e }),
        }
    }
}

fn parse_manifest(uri: &str, bytes: &[u8]) -> Result<ArtifactManifest, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Store {
        uri: uri.into(),
        message: format!("{MANIFEST_FILE} is not an artifact manifest ({e})"),
    })
}

fn list_local(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(io(&path))?;
        if meta.is_dir() {
            list_local(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            out.push((rel, meta.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosted_endpoints_put_the_bucket_before_the_host() {
        assert_eq!(client_endpoint("http://minio:9000", "models", true), "http://minio:9000");
        assert_eq!(
            client_endpoint("https://abc.r2.cloudflarestorage.com", "models", false),
            "https://models.abc.r2.cloudflarestorage.com"
        );
    }

    #[test]
    fn refusals_object_store_reports_as_generic_errors_are_denials() {
        let generic = |text: &str| object_store::Error::Generic { store: "S3", source: text.to_string().into() };
        for text in [
            "Error performing list request: Server returned non-2xx status code: 403 Forbidden: <Code>SignatureDoesNotMatch</Code>",
            "Client error with status 400 Bad Request: <Code>ExpiredToken</Code>",
        ] {
            let e = StoreError::from_store("s3://b/k", generic(text));
            assert!(matches!(e, StoreError::Denied { .. }) && e.is_permanent(), "{e}");
            assert!(e.to_string().starts_with("s3://b/k: access denied"), "{e}");
        }
        let e =
            StoreError::from_store("s3://b/k", generic("Server returned non-2xx status code: 503 Service Unavailable"));
        assert!(matches!(e, StoreError::Store { .. }) && !e.is_permanent(), "{e}");
    }

    #[test]
    fn uris_are_file_paths_or_bucket_keys() {
        assert_eq!(Location::parse("file:///models/t").unwrap(), Location::File("/models/t".into()));
        assert_eq!(
            Location::parse("s3://models/teachers/minilm/").unwrap(),
            Location::S3 { bucket: "models".into(), key: "teachers/minilm".into() }
        );
        assert_eq!(
            Location::parse("s3://models").unwrap(),
            Location::S3 { bucket: "models".into(), key: String::new() }
        );
        for bad in ["file://models/t", "s3:///key", "https://x/y", "/plain/path"] {
            let e = Location::parse(bad).unwrap_err();
            assert!(e.is_permanent() && e.to_string().starts_with(bad), "{e}");
        }
    }

    #[test]
    fn only_store_and_disk_errors_are_worth_retrying() {
        let denied = StoreError::Denied { uri: "s3://b/k".into(), message: "403".into() };
        assert!(denied.is_permanent());
        assert!(denied.to_string().contains("s3://b/k") && denied.to_string().contains("credentials"));
        assert!(!StoreError::Store { uri: "s3://b/k".into(), message: "503".into() }.is_permanent());
        let e = StoreError::from_store(
            "s3://nope/k",
            object_store::Error::Generic {
                store: "S3",
                source: "NoSuchBucket: The specified bucket does not exist".into(),
            },
        );
        assert!(matches!(e, StoreError::NotFound { .. }), "{e:?}");
    }

    #[test]
    fn settings_come_from_the_operators_variables_and_a_bad_value_is_named() {
        fn env(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
            let pairs = pairs.to_vec();
            move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        }
        assert_eq!(S3Settings::from_lookup(env(&[])).unwrap(), S3Settings::default());
        let s = S3Settings::from_lookup(env(&[
            (ENDPOINT_ENV, "http://minio:9000"),
            (REGION_ENV, "eu-west-1"),
            (FORCE_PATH_STYLE_ENV, "true"),
        ]))
        .unwrap();
        assert_eq!(
            s,
            S3Settings {
                endpoint: Some("http://minio:9000".into()),
                region: Some("eu-west-1".into()),
                force_path_style: true,
                credentials: None
            }
        );
        let empty = env(&[(ENDPOINT_ENV, ""), (REGION_ENV, " "), (FORCE_PATH_STYLE_ENV, "false")]);
        assert_eq!(S3Settings::from_lookup(empty).unwrap(), S3Settings::default());
        for (variable, value) in [(FORCE_PATH_STYLE_ENV, "yes"), (ENDPOINT_ENV, "minio:9000")] {
            let e = S3Settings::from_lookup(env(&[(variable, value)])).unwrap_err();
            assert!(e.is_permanent() && e.to_string().starts_with(variable) && e.to_string().contains(value), "{e}");
        }
    }

    #[tokio::test]
    async fn a_download_lands_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), b"text,label\n").unwrap();
        let store = Store::new(S3Settings::default());
        let to = dir.path().join("sub/b.csv");
        let n = store.download(&format!("file://{}/a.csv", dir.path().display()), &to).await.unwrap();
        assert_eq!((n, std::fs::read(&to).unwrap()), (11, b"text,label\n".to_vec()));
        let e = store.download(&format!("file://{}/missing.csv", dir.path().display()), &to).await.unwrap_err();
        assert!(matches!(e, StoreError::Io { .. }), "{e}");
        let left: Vec<_> =
            std::fs::read_dir(dir.path().join("sub")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, ["b.csv"], "no partial file left behind");
    }

    #[tokio::test]
    async fn a_file_artifact_publishes_files_then_the_manifest_and_refuses_a_changed_file() {
        let from = tempfile::tempdir().unwrap();
        std::fs::write(from.path().join("model.onnx"), b"weights").unwrap();
        let mut manifest = ArtifactManifest::default();
        manifest.files.insert(
            "model.onnx".into(),
            distillery_crds::manifest::FileEntry { size_bytes: 7, sha256: sha256(b"weights") },
        );
        std::fs::write(from.path().join(MANIFEST_FILE), serde_json::to_vec(&manifest).unwrap()).unwrap();
        let to = tempfile::tempdir().unwrap();
        let uri = format!("file://{}/artifact", to.path().display());
        let store = Store::new(S3Settings::default());
        store.publish_artifact(from.path(), &uri).await.unwrap();
        let listed: Vec<String> = store.list(&uri).await.unwrap().into_iter().map(|(p, _)| p).collect();
        assert_eq!(listed, [MANIFEST_FILE, "model.onnx"]);
        std::fs::write(from.path().join("model.onnx"), b"changed").unwrap();
        let e = store.publish_artifact(from.path(), &format!("{uri}-2")).await.unwrap_err();
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        assert!(!to.path().join("artifact-2").join(MANIFEST_FILE).exists(), "no manifest for a bad artifact");
    }
}
