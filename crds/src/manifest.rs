//! The artifact manifest, `distillery.json`, written beside every model artifact: lineage,
//! metrics, sizes and the sha256 of every file. The operator reads it to fill a DistillationJob's
//! `status.result`; the server reads it to pick and verify the variant it serves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// File name of the manifest inside an artifact directory.
pub const MANIFEST_FILE: &str = "distillery.json";

/// Current manifest schema version.
pub const MANIFEST_VERSION: u32 = 1;

/// The content of `distillery.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactManifest {
    /// Manifest schema version ([`MANIFEST_VERSION`]).
    pub manifest_version: u32,
    /// When the artifact was written (RFC 3339).
    pub created: String,
    /// Version of the worker that wrote it.
    pub worker_version: String,
    /// Where the model came from.
    pub lineage: Lineage,
    /// Measured figures.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Training-curve summaries by run (`teacher`, `student`, `label-only`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub training: BTreeMap<String, serde_json::Value>,
    /// Every file of the artifact (relative path → size and sha256), the manifest itself excepted.
    pub files: BTreeMap<String, FileEntry>,
    /// Which ONNX variant to serve for `variant: auto` (`fp32` or `int8`), when exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_variant: Option<String>,
    /// Why that variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_variant_reason: Option<String>,
}

/// Lineage of an artifact.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Lineage {
    /// Teacher model URI.
    pub teacher_uri: String,
    /// sha256 of the teacher's weights file.
    pub teacher_digest: String,
    /// How the task-specific teacher was prepared (head fitting, fine-tuning settings), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_preparation: Option<serde_json::Value>,
    /// Dataset URI.
    pub dataset_uri: String,
    /// sha256 of the dataset file.
    pub dataset_digest: String,
    /// sha256 of the canonical JSON of the DistillationJob spec that produced the artifact.
    pub spec_hash: String,
}

/// One file of an artifact.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// Size in bytes.
    pub size_bytes: u64,
    /// Lower-case hex sha256 of the content.
    pub sha256: String,
}
