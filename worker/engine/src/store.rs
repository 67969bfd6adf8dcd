//! The artifact store as the worker uses it: every URI a spec names — a teacher directory, a
//! dataset, a transfer set, an artifact, a golden set, a benchmark report — is `file://` (read
//! where it is) or `s3://` (read and written through [`distillery_store`]).
//!
//! The worker reads local files, so an `s3://` input is first downloaded into the **work
//! directory** ([`work_dir`]: `$DISTILLERY_WORK_DIR`, the scratch volume the operator mounts in
//! every pod, else `<setup cache>/work`), which is laid out as
//!
//! - `inputs/<bucket>/<key>`: inputs ([`Resolver::fetch`]): a file downloaded again on every
//!   run; a directory (a teacher) keeps each file already there while its object's entity tag
//!   is the one recorded at download (`.distillery-sources.json`);
//! - `artifacts/<sha256 of the manifest>`: artifacts to inspect or benchmark, each file checked
//!   against the manifest ([`Resolver::fetch_artifact`]);
//! - `runs/<bucket>/<key>`: a distillation run writing to `s3://` trains here (checkpoints
//!   included), and the artifact is published from here once complete;
//! - `reports/<bucket>/<key>`: a benchmark report written here, then uploaded.
//!
//! How to reach the store ([`S3Settings`]): the spec's `s3` block for a spec that has one, else
//! the environment the operator sets (`DISTILLERY_S3_ENDPOINT`, `DISTILLERY_S3_REGION`,
//! `DISTILLERY_S3_FORCE_PATH_STYLE`); credentials always from the environment
//! (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, else the default chain).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

pub use distillery_crds::manifest::{sha256, sha256_file};
pub use distillery_store::{Listed, Location, S3Settings, Store, StoreError};

/// The file in a downloaded directory that records each file's entity tag at download.
const SOURCES: &str = ".distillery-sources.json";

/// The environment variable naming the work directory.
pub const WORK_DIR_ENV: &str = "DISTILLERY_WORK_DIR";

/// `$DISTILLERY_WORK_DIR` (when set and not empty), else `work` in the setup cache.
pub fn work_dir() -> PathBuf {
    match std::env::var_os(WORK_DIR_ENV).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => distillery_crds::cache::cache_dir().join("work"),
    }
}

/// Whether `uri` is in an object store rather than on a local file system.
pub fn is_remote(uri: &str) -> bool {
    uri.starts_with("s3://")
}

/// What a URI names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One file (a dataset, a transfer set, a golden set).
    File,
    /// A directory: every file under it (a teacher model).
    Directory,
}

/// Resolves URIs to local paths, downloading `s3://` ones into a work directory, and writes
/// back to the store.
#[derive(Clone, Debug)]
pub struct Resolver {
    store: Store,
    work_dir: PathBuf,
}

impl Resolver {
    /// Reaches S3 with `settings` and downloads into `work_dir`.
    pub fn new(settings: S3Settings, work_dir: PathBuf) -> Self {
        Self { store: Store::new(settings), work_dir }
    }

    /// Settings from the spec's `s3` block when it has one, else from the environment
    /// ([`S3Settings::from_env`]); the work directory from [`work_dir`].
    pub fn for_spec(s3: Option<&distillery_crds::common::S3Settings>) -> Result<Self, StoreError> {
        let settings = match s3 {
            Some(s3) => S3Settings::from(s3),
            None => S3Settings::from_env()?,
        };
        Ok(Self::new(settings, work_dir()))
    }

    /// The store itself.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The work directory.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Where an `s3://` URI's local copy goes under `area` of the work directory:
    /// `<work dir>/<area>/<bucket>/<key>`. A key with an empty, `.` or `..` segment is refused.
    pub fn staging(&self, area: &str, uri: &str) -> Result<PathBuf, StoreError> {
        let Location::S3 { bucket, key } = Location::parse(uri)? else {
            return Err(StoreError::BadUri { uri: uri.into(), why: "not an s3:// URI" });
        };
        let mut path = self.work_dir.join(area).join(&bucket);
        if !key.is_empty() {
            path.push(relative(uri, &key)?);
        }
        Ok(path)
    }

    /// The local path of `uri`: a plain path or a `file://` URI as it is; an `s3://` object
    /// downloaded into `inputs/` of the work directory — a [`Kind::File`] on every call, a
    /// [`Kind::Directory`] (every object under the prefix, folder markers left out) keeping the
    /// files already there whose objects have not changed since (same entity tag and size).
    pub async fn fetch(&self, uri: &str, kind: Kind) -> Result<PathBuf, StoreError> {
        if !uri.contains("://") {
            return Ok(PathBuf::from(uri));
        }
        let key = match Location::parse(uri)? {
            Location::File(path) => return Ok(path),
            Location::S3 { key, .. } => key,
        };
        let local = self.staging("inputs", uri)?;
        let started = std::time::Instant::now();
        let (mut files, mut bytes, mut kept) = (0, 0u64, 0);
        match kind {
            Kind::File => {
                if uri.ends_with('/') || key.is_empty() {
                    return Err(StoreError::BadUri { uri: uri.into(), why: "names a bucket or prefix, not a file" });
                }
                bytes = self.store.download(uri, &local).await?;
                files = 1;
            }
            Kind::Directory => {
                let listed = self.store.list_objects(uri).await?;
                if listed.is_empty() {
                    return Err(StoreError::NotFound {
                        uri: uri.into(),
                        message: "no objects under this prefix".into(),
                    });
                }
                // A file downloaded before is kept while its object's entity tag is the one
                // recorded then: a re-uploaded object of the same size is downloaded again.
                let record_path = local.join(SOURCES);
                let recorded: BTreeMap<String, String> = std::fs::read(&record_path)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .unwrap_or_default();
                let mut record = BTreeMap::new();
                let base = uri.trim_end_matches('/');
                for Listed { name, size, e_tag } in listed {
                    let object = format!("{base}/{name}");
                    let path = local.join(relative(&object, &name)?);
                    let unchanged = e_tag.is_some() && recorded.get(&name) == e_tag.as_ref();
                    if unchanged && std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == size) {
                        kept += 1;
                    } else {
                        bytes += self.store.download(&object, &path).await?;
                        files += 1;
                    }
                    if let Some(tag) = e_tag {
                        record.insert(name, tag);
                    }
                }
                let json = serde_json::to_vec_pretty(&record).expect("a map of strings serializes");
                write_atomically(&record_path, &json)
                    .map_err(|source| StoreError::Io { path: record_path.clone(), source })?;
            }
        }
        eprintln!(
            "distillery-worker: {uri}: downloaded {files} file(s), {:.1} MB, in {:.1} s{} into {}",
            bytes as f64 / 1e6,
            started.elapsed().as_secs_f64(),
            if kept > 0 { format!(" ({kept} already there)") } else { String::new() },
            local.display()
        );
        Ok(local)
    }

    /// [`Resolver::fetch`], blocking (for the worker's synchronous code).
    pub fn materialize(&self, uri: &str, kind: Kind) -> Result<PathBuf, StoreError> {
        block_on(self.fetch(uri, kind))
    }

    /// The artifact at `uri` as a local directory: a plain path or `file://` URI as it is; an
    /// `s3://` artifact downloaded into `artifacts/<manifest sha256>` of the work directory with
    /// every file checked against its manifest (reused when already there).
    pub async fn fetch_artifact(&self, uri: &str) -> Result<PathBuf, StoreError> {
        if !uri.contains("://") {
            return Ok(PathBuf::from(uri));
        }
        let cache = self.work_dir.join("artifacts");
        self.store.fetch_artifact(uri, &cache).await
    }

    /// Uploads the files `names` of the local directory `dir` under the prefix `uri` (a
    /// `file://` prefix: copies them there).
    pub async fn upload_files(&self, dir: &Path, names: &[&str], uri: &str) -> Result<(), StoreError> {
        let base = uri.trim_end_matches('/');
        for name in names {
            self.store.put_file(&dir.join(name), &format!("{base}/{name}")).await?;
        }
        Ok(())
    }
}

/// `key` as a relative path, refusing segments that would leave the directory it goes under.
fn relative(uri: &str, key: &str) -> Result<PathBuf, StoreError> {
    let trimmed = key.trim_matches('/');
    if trimmed.is_empty() || trimmed.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(StoreError::BadUri {
            uri: uri.into(),
            why: "a key with an empty, `.` or `..` segment has no local path in the work directory",
        });
    }
    Ok(PathBuf::from(trimmed))
}

/// Runs `future` to completion from synchronous code: on a small runtime of its own, on another
/// thread when called from inside a runtime (which cannot block on a second one).
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    let run = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime starts")
            .block_on(future)
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(run).join().expect("the store's thread does not panic"))
    } else {
        run()
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory renamed over it, so a
/// reader (or a worker killed mid-write) sees the old content or the new, never half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staging = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&staging, bytes)?;
    std::fs::rename(&staging, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("distillery.json");
        std::fs::write(&path, b"old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn file_digest_matches_the_digest_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        // sha256("abc"), FIPS 180-2 appendix B.1.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&path).unwrap(), abc);
        assert_eq!(sha256(b"abc"), abc);
    }

    fn resolver(work: &Path) -> Resolver {
        Resolver::new(S3Settings::default(), work.to_path_buf())
    }

    #[test]
    fn file_uris_and_paths_are_used_where_they_are() {
        let r = resolver(Path::new("/work"));
        assert_eq!(r.materialize("file:///models/t", Kind::Directory).unwrap(), PathBuf::from("/models/t"));
        assert_eq!(r.materialize("/data/d.csv", Kind::File).unwrap(), PathBuf::from("/data/d.csv"));
        for bad in ["file://models/t", "https://x/y", "s3:///key"] {
            let e = r.materialize(bad, Kind::File).unwrap_err();
            assert!(matches!(e, StoreError::BadUri { .. }) && e.is_permanent(), "{bad}: {e}");
        }
    }

    #[test]
    fn s3_copies_go_under_the_work_directory_by_bucket_and_key() {
        let r = resolver(Path::new("/work"));
        assert_eq!(
            r.staging("runs", "s3://artifacts/small/g1-0a1b2c3d").unwrap(),
            PathBuf::from("/work/runs/artifacts/small/g1-0a1b2c3d")
        );
        assert_eq!(r.staging("inputs", "s3://models/minilm/").unwrap(), PathBuf::from("/work/inputs/models/minilm"));
        for bad in ["s3://b/../../etc", "s3://b/a//c", "s3://b/./a", "file:///x"] {
            let e = r.staging("inputs", bad).unwrap_err();
            assert!(matches!(e, StoreError::BadUri { .. }) && e.is_permanent(), "{bad}: {e}");
        }
        let e = r.materialize("s3://bucket-only", Kind::File).unwrap_err();
        assert!(e.to_string().contains("not a file"), "{e}");
    }

    #[test]
    fn blocking_works_inside_a_runtime_too() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let r = resolver(Path::new("/work"));
        let path = runtime.block_on(async { r.materialize("file:///a", Kind::File) }).unwrap();
        assert_eq!(path, PathBuf::from("/a"));
    }
}
