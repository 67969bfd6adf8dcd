//! Spec pieces shared by more than one resource: URIs, dataset descriptions, secret references,
//! model variants and durations.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern every model, dataset and artifact URI must match: a `file://` path (a mounted volume or
/// host path, the embedded default) or an `s3://bucket/key` location, reached through the
/// resource's `spec.s3` settings.
pub const URI_PATTERN: &str = r"^(file|s3)://.+$";

/// Pattern of a duration such as `30s`, `5m`, `1h30m` or `250ms` (Go's `time.ParseDuration` units
/// without µs/ns).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Which file of a model artifact is meant: the fp32 ONNX graph, the int8 one, or whichever the
/// artifact's manifest says to serve.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ModelVariant {
    /// `model.onnx`, full precision.
    Fp32,
    /// `model.int8.onnx`, dynamically quantized.
    Int8,
    /// The variant the artifact's manifest names as the one to serve (int8 when it passed its
    /// accuracy and speed gate, fp32 otherwise).
    #[default]
    Auto,
}

/// How a dataset file is laid out.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// Comma-separated values with a header row naming the fields.
    #[default]
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// One text per line, no labels (only for unlabelled transfer sets).
    Text,
    /// A corpus for `causal-lm`: a directory of plain-text files (`*.txt`, searched
    /// recursively), one document each. Documents are tokenized, joined by the tokenizer's
    /// end-of-text token and packed into sequences of `maxSequenceLength` tokens; the held-out
    /// split is by document, so no document is on both sides.
    Documents,
}

/// How a dataset file is compressed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// Decided by the file name: `.gz` is gzip, `.bz2` is bzip2, anything else is plain.
    #[default]
    Auto,
    /// Not compressed.
    None,
    /// gzip.
    Gzip,
    /// bzip2.
    Bz2,
}

/// A labelled text dataset used for evaluation: a ModelDeployment's golden set or a Benchmark's
/// inputs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.uri.startsWith('s3://') || !has(self.volumeClaim)").message("volumeClaim is for file:// URIs: an s3:// uri is read through the resource's spec.s3, so leave volumeClaim unset").field_path(".volumeClaim"))]
#[x_kube(validation = Rule::new("self.format != 'documents'").message("format documents is a causal-lm training corpus; evaluation data is csv, jsonl or text").field_path(".format"))]
pub struct EvalDataset {
    /// Where the dataset lives: `file:///path/to/file.csv` or `s3://bucket/key.csv`.
    #[schemars(regex(pattern = URI_PATTERN))]
    pub uri: String,
    /// File layout: `csv` (header row) or `jsonl`.
    #[serde(default)]
    pub format: DataFormat,
    /// Compression of the file; `auto` decides by the file name.
    #[serde(default)]
    pub compression: Compression,
    /// Name of the field (CSV column or JSON key) holding the input text.
    #[serde(default = "default_text_field")]
    #[schemars(length(min = 1))]
    pub text_field: String,
    /// Name of the field holding the expected label. Leave empty for an unlabelled set (then only
    /// agreement, latency and throughput can be measured, not accuracy).
    #[serde(default = "default_label_field")]
    pub label_field: String,
    /// How many examples to use, taken in file order after a seeded shuffle; all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub samples: Option<u32>,
    /// For a `file://` dataset in a cluster: the PersistentVolumeClaim mounted (read-only) at the
    /// path's first segment (e.g. `/data` for `file:///data/golden.csv`) in the pods that read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub volume_claim: Option<String>,
}

pub(crate) fn default_text_field() -> String {
    "text".into()
}

pub(crate) fn default_label_field() -> String {
    "label".into()
}

/// A reference to a key of a Secret in the resource's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyReference {
    /// Name of the Secret (same namespace as the resource).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// How to reach an S3-compatible object store. Credentials only ever come from Secrets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.accessKeyId) == has(self.secretAccessKey)").message("set both s3.accessKeyId and s3.secretAccessKey, or neither").field_path(".accessKeyId"))]
pub struct S3Settings {
    /// Endpoint URL of the store (for MinIO, Ceph, R2 …); the AWS endpoint of `region` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://.+$"))]
    pub endpoint: Option<String>,
    /// Region of the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Use path-style addressing (`endpoint/bucket/key`), as most self-hosted stores need.
    #[serde(default)]
    pub force_path_style: bool,
    /// Secret key holding the access key id. Leave both keys unset to use the pod's own
    /// identity (IRSA, workload identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<SecretKeyReference>,
    /// Secret key holding the secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<SecretKeyReference>,
}

/// A reference to another object in the same namespace, by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}
