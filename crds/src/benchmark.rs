//! `Benchmark`: compare models side by side on accuracy, latency and throughput, run as a
//! `batch/v1` Job of the worker's load generator and evaluator.
#![allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) of #[kube] repeats type_ = ...; clippy reads them as one attribute list"
)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{DURATION_PATTERN, EvalDataset, ModelVariant, URI_PATTERN};
use crate::distillation::JobPhase;

/// Compare models side by side.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "distillery.dev",
    version = "v1alpha1",
    kind = "Benchmark",
    plural = "benchmarks",
    shortname = "bench",
    category = "distillery",
    namespaced,
    status = "BenchmarkStatus",
    doc = "Benchmark drives one or more models (live ModelDeployment tracks or artifacts) with the same inputs and load, and reports accuracy, latency percentiles, throughput and errors side by side.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Targets", type_ = "integer", json_path = ".status.targetCount"),
    printcolumn(name = "Report", type_ = "string", json_path = ".status.report", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("false").message("Benchmark resources are not run by the operator yet (the Benchmark controller is not built): compare models locally with `distillery-worker bench`"))]
#[x_kube(validation = Rule::new("!has(self.reportUri) || !self.reportUri.startsWith('s3://')").message("reportUri: s3:// URIs are not supported yet (the S3 artifact store is not built): use a file:// URI on a volumeClaim").field_path(".reportUri"))]
#[x_kube(validation = Rule::new("self.targets.all(a, self.targets.exists_one(b, b.name == a.name))").message("targets[].name must be unique").field_path(".targets"))]
pub struct BenchmarkSpec {
    /// The models to compare, each under its own name.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub targets: Vec<BenchmarkTarget>,
    /// The inputs sent to every target (labelled, for accuracy).
    pub dataset: EvalDataset,
    /// The load profile.
    #[serde(default)]
    pub load: LoadProfile,
    /// What to measure; all of them when unset.
    #[serde(default = "default_metrics")]
    #[schemars(length(min = 1))]
    pub metrics: Vec<BenchmarkMetric>,
    /// Worker container image; the operator's configured default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Where the full report is written; the operator's default artifact location when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = URI_PATTERN))]
    pub report_uri: Option<String>,
}

fn default_metrics() -> Vec<BenchmarkMetric> {
    vec![
        BenchmarkMetric::Accuracy,
        BenchmarkMetric::Latency,
        BenchmarkMetric::Throughput,
        BenchmarkMetric::Errors,
        BenchmarkMetric::ColdStart,
    ]
}

/// One model under test: a live ModelDeployment track, or an artifact the benchmark serves itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.deployment) != has(self.artifact)").message("each target sets exactly one of deployment or artifact"))]
pub struct BenchmarkTarget {
    /// Column name of this target in the results.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// A track of a ModelDeployment in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentTarget>,
    /// A model artifact, served by the benchmark's own server process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactTarget>,
}

/// A ModelDeployment track.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentTarget {
    /// Name of the ModelDeployment.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Which track: `stable` or `canary`.
    #[serde(default)]
    pub track: Track,
}

/// A rollout track.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Track {
    /// The track serving the current model.
    #[default]
    Stable,
    /// The track serving the new model during a rollout.
    Canary,
}

/// An artifact served for the benchmark.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.uri.startsWith('s3://')").message("artifact.uri: s3:// URIs are not supported yet (the S3 artifact store is not built): use a file:// URI on a volumeClaim").field_path(".uri"))]
pub struct ArtifactTarget {
    /// Artifact directory: `file:///artifacts/my-student` (`s3://` is refused until the S3 store is built).
    #[schemars(regex(pattern = URI_PATTERN))]
    pub uri: String,
    /// Which ONNX file.
    #[serde(default)]
    pub variant: ModelVariant,
}

/// The load profile.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.duration) && has(self.requests))").message("set load.duration or load.requests, not both").field_path(".requests"))]
pub struct LoadProfile {
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 4096))]
    pub concurrency: u32,
    /// How long to drive each target, e.g. `60s`. When neither this nor requests is set: 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub duration: Option<String>,
    /// How many requests to send to each target, instead of a duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests: Option<u64>,
    /// Requests sent before measuring, to warm caches and threads.
    #[serde(default = "default_warmup_requests")]
    #[schemars(range(min = 0, max = 100000))]
    pub warmup_requests: u32,
    /// Open-loop rate in requests per second; closed loop at `concurrency` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.1, max = 1000000.0))]
    pub rate: Option<f64>,
}

impl Default for LoadProfile {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            duration: None,
            requests: None,
            warmup_requests: default_warmup_requests(),
            rate: None,
        }
    }
}

fn default_concurrency() -> u32 {
    16
}
fn default_warmup_requests() -> u32 {
    50
}

/// A figure the benchmark can report.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BenchmarkMetric {
    /// Accuracy on the labelled dataset.
    Accuracy,
    /// p50, p95 and p99 latency.
    Latency,
    /// Requests per second.
    Throughput,
    /// Error rate.
    Errors,
    /// Time from process start to the first ready answer (artifact targets).
    ColdStart,
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BenchmarkStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the benchmark stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// Accepted, Progressing, Complete, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Name of the `batch/v1` Job running the load generator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Number of targets (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_count: Option<u32>,
    /// One entry per target, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<TargetResult>,
    /// Where the full report was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// When the load generator started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the benchmark finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// The figures of one target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetResult {
    /// The target's name from the spec.
    pub name: String,
    /// Requests measured (after warm-up).
    pub requests: u64,
    /// Accuracy on the labelled inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Median latency in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// 95th-percentile latency in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    /// 99th-percentile latency in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<f64>,
    /// Fraction of requests that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Milliseconds from process start to the first answer (artifact targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_ms: Option<f64>,
}
