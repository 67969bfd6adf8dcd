//! `distillery-worker inspect`: which ONNX file a server would serve from an artifact, and its
//! sha256 — what identifies a model to the operator (a ModelDeployment's `status.resolvedModel`).
//!
//! It decides exactly as `distillery-server` does at start-up ([`ServedArtifact::load`]): the
//! manifest picks the variant, the file's sha256 must match the manifest's, and the tokenizer and
//! labels must load. An artifact the server would refuse is refused here with the same message.
//! An `s3://` artifact is first downloaded into the work directory (`artifacts/<manifest
//! sha256>`), every file checked against the manifest, as a server downloads it.

use std::path::PathBuf;

use distillery_crds::manifest::{MANIFEST_FILE, sha256_file};
use distillery_model::artifact::{self, ArtifactError, ServedArtifact, VariantChoice};
use serde::{Deserialize, Serialize};

use crate::store::{Resolver, StoreError, block_on, is_remote};

/// What `inspect` prints (one JSON line) and leaves as its termination message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ModelInspection {
    /// The artifact's URI or path, as given.
    pub model_uri: String,
    /// The variant a server would serve: `fp32` or `int8` (`auto` resolved).
    pub variant: String,
    /// Lower-case hex sha256 of the served ONNX file (checked against the manifest).
    pub model_digest: String,
    /// Lower-case hex sha256 of the artifact's manifest, `distillery.json`.
    pub manifest_digest: String,
}

/// Why an artifact cannot be inspected (or served). Every message names the URI.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A store this worker does not read.
    #[error(
        "{uri}: only s3:// and file:// URIs and local paths can be inspected; {scheme}:// artifacts are not supported"
    )]
    Unsupported {
        /// The URI as given.
        uri: String,
        /// Its scheme.
        scheme: String,
    },
    /// The `s3://` artifact could not be downloaded, or does not match its manifest (the
    /// message names the URI).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server would refuse the artifact.
    #[error("{uri}: {source}")]
    Artifact {
        /// The URI as given.
        uri: String,
        /// Why.
        source: ArtifactError,
    },
    /// The manifest could not be read back for its digest.
    #[error("{uri}: {path}: {source}")]
    Manifest {
        /// The URI as given.
        uri: String,
        /// The manifest.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Resolves `uri` the way a server would serve it with `choice`; an `s3://` artifact is reached
/// with the environment's settings ([`Resolver::for_spec`]).
pub fn inspect(uri: &str, choice: VariantChoice) -> Result<ModelInspection, InspectError> {
    inspect_with(uri, choice, &Resolver::for_spec(None)?)
}

/// [`inspect`], an `s3://` artifact downloaded by `resolver`.
pub fn inspect_with(uri: &str, choice: VariantChoice, resolver: &Resolver) -> Result<ModelInspection, InspectError> {
    if is_remote(uri) {
        let dir = block_on(resolver.fetch_artifact(uri))?;
        return inspect_dir(uri, &dir, choice);
    }
    let dir = artifact::resolve(uri).map_err(|source| match source {
        ArtifactError::UnsupportedUri(_) => {
            InspectError::Unsupported { uri: uri.into(), scheme: uri.split("://").next().unwrap_or_default().into() }
        }
        source => InspectError::Artifact { uri: uri.into(), source },
    })?;
    inspect_dir(uri, &dir, choice)
}

fn inspect_dir(uri: &str, dir: &std::path::Path, choice: VariantChoice) -> Result<ModelInspection, InspectError> {
    let (served, _bytes) =
        ServedArtifact::load(dir, choice).map_err(|source| InspectError::Artifact { uri: uri.into(), source })?;
    let path = dir.join(MANIFEST_FILE);
    let manifest_digest =
        sha256_file(&path).map_err(|source| InspectError::Manifest { uri: uri.into(), path, source })?;
    Ok(ModelInspection { model_uri: uri.into(), variant: served.variant, model_digest: served.digest, manifest_digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_stores_are_refused_as_not_supported() {
        let err = inspect("https://example.com/models/a", VariantChoice::Auto).unwrap_err().to_string();
        assert!(
            err.starts_with("https://example.com/models/a: ") && err.contains("https:// artifacts are not supported"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_directory_is_named() {
        let err = inspect("file:///nonexistent/artifact", VariantChoice::Auto).unwrap_err().to_string();
        assert!(err.contains("file:///nonexistent/artifact") && err.contains("no such artifact directory"), "{err}");
    }

    #[test]
    fn the_json_uses_the_operators_field_names() {
        let i = ModelInspection {
            model_uri: "file:///a".into(),
            variant: "int8".into(),
            model_digest: "ab".into(),
            manifest_digest: "cd".into(),
        };
        assert_eq!(
            serde_json::to_string(&i).unwrap(),
            r#"{"modelUri":"file:///a","variant":"int8","modelDigest":"ab","manifestDigest":"cd"}"#
        );
    }
}
