//! The artifact store: model, dataset and artifact URIs resolved to local paths. `file://` is the
//! embedded default (a mounted volume in a pod, a directory locally).

use std::path::{Path, PathBuf};

/// Why a URI cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not a URI this worker understands.
    #[error("{0}: unsupported URI; use file:///absolute/path")]
    Unsupported(String),
    /// `s3://` is part of the API but this build reads only `file://`.
    #[error("{0}: s3:// is not implemented in this worker yet; mount the data and use a file:// URI")]
    S3NotImplemented(String),
    /// A `file://` URI with a relative path.
    #[error("{0}: a file:// URI needs an absolute path (file:///…)")]
    Relative(String),
}

/// Resolves a URI to a local path.
pub fn local_path(uri: &str) -> Result<PathBuf, StoreError> {
    if let Some(path) = uri.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(StoreError::Relative(uri.into()));
        }
        return Ok(PathBuf::from(path));
    }
    if uri.starts_with("s3://") {
        return Err(StoreError::S3NotImplemented(uri.into()));
    }
    Err(StoreError::Unsupported(uri.into()))
}

pub use distillery_crds::manifest::{sha256, sha256_file};

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

    #[test]
    fn resolves_file_uris() {
        assert_eq!(local_path("file:///models/t").unwrap(), PathBuf::from("/models/t"));
        assert!(matches!(local_path("file://models/t"), Err(StoreError::Relative(_))));
        assert!(matches!(local_path("s3://b/k"), Err(StoreError::S3NotImplemented(_))));
        assert!(matches!(local_path("https://x"), Err(StoreError::Unsupported(_))));
    }
}
