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

use crate::common::{DURATION_PATTERN, EvalDataset, LocalObjectReference, ModelVariant, S3Settings, URI_PATTERN};
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
    printcolumn(name = "Best-Accuracy", type_ = "string", json_path = ".status.bestAccuracy"),
    printcolumn(name = "Best-P99", type_ = "string", json_path = ".status.bestP99"),
    printcolumn(name = "Report", type_ = "string", json_path = ".status.report", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.reportUri) || self.targets.exists(t, has(t.artifact))").message("set reportUri: with no artifact target there is no artifact location to write the report beside").field_path(".reportUri"))]
#[x_kube(validation = Rule::new("!self.metrics.exists(m, m == 'accuracy' || m == 'robustness') || self.dataset.labelField != ''").message("metrics accuracy and robustness need labelled inputs: set dataset.labelField, or leave them out of metrics").field_path(".dataset.labelField"))]
#[x_kube(validation = Rule::new("!has(self.reportUri) || !self.reportUri.startsWith('s3://') || !has(self.reportVolumeClaim)").message("reportVolumeClaim is for file:// URIs: an s3:// reportUri is written through spec.s3, so leave reportVolumeClaim unset").field_path(".reportVolumeClaim"))]
#[x_kube(validation = Rule::new("self.targets.all(a, self.targets.exists_one(b, b.name == a.name))").message("targets[].name must be unique").field_path(".targets"))]
pub struct BenchmarkSpec {
    /// The models to compare, each under its own name; the first is the one the others are
    /// compared with (paired accuracy difference).
    #[schemars(length(min = 1, max = 8))]
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
    /// Directory the report (`report.md`, `report.html`, `results.json`) is written to. Unset:
    /// beside the first artifact target's artifact, in `benchmarks/<name>/` of its parent
    /// directory (on that target's claim, mounted read-write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = URI_PATTERN))]
    pub report_uri: Option<String>,
    /// For a `file://` reportUri in a cluster: the PersistentVolumeClaim mounted (read-write) at
    /// the path's first segment in the benchmark pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub report_volume_claim: Option<String>,
    /// How to reach the S3-compatible store of every `s3://` URI this benchmark reads or writes
    /// (artifacts, dataset, report): endpoint, region, addressing and the Secret keys holding
    /// the credentials. Unset: AWS's endpoint and the pod's own identity (IRSA, workload identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Settings>,
}

/// Where the report of Benchmark `name` goes: `spec.reportUri`, else `benchmarks/<name>` beside
/// `first_artifact` (the first artifact target's resolved URI); `None` when neither is known.
pub fn report_uri(spec: &BenchmarkSpec, name: &str, first_artifact: Option<&str>) -> Option<String> {
    if let Some(uri) = &spec.report_uri {
        return Some(uri.trim_end_matches('/').to_string());
    }
    let (parent, _) = first_artifact?.trim_end_matches('/').rsplit_once('/')?;
    // An artifact at the root of a bucket (`s3://bucket`) or of the file system has no parent
    // to write beside: the spec must name a reportUri.
    if parent.ends_with(":/") || parent.ends_with("://") {
        return None;
    }
    Some(format!("{parent}/benchmarks/{name}"))
}

fn default_metrics() -> Vec<BenchmarkMetric> {
    vec![
        BenchmarkMetric::Accuracy,
        BenchmarkMetric::Latency,
        BenchmarkMetric::Throughput,
        BenchmarkMetric::Errors,
        BenchmarkMetric::ColdStart,
        BenchmarkMetric::Robustness,
        BenchmarkMetric::Resources,
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

/// An artifact served for the benchmark: a DistillationJob's result, or an artifact directory.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.distillationJobRef) != has(self.uri)").message("set exactly one of artifact.distillationJobRef or artifact.uri"))]
#[x_kube(validation = Rule::new("!has(self.distillationJobRef) || !has(self.volumeClaim)").message("artifact.volumeClaim is taken from the DistillationJob's output.volumeClaim; leave it unset with distillationJobRef").field_path(".volumeClaim"))]
#[x_kube(validation = Rule::new("!has(self.uri) || !self.uri.startsWith('s3://') || !has(self.volumeClaim)").message("artifact.volumeClaim is for file:// URIs: an s3:// artifact.uri is read through spec.s3, so leave volumeClaim unset").field_path(".volumeClaim"))]
pub struct ArtifactTarget {
    /// A DistillationJob in this namespace: its `status.result.artifactUri`, once it has
    /// succeeded (the benchmark waits until then), on its `output.volumeClaim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation_job_ref: Option<LocalObjectReference>,
    /// Artifact directory: `file:///artifacts/my-student` on `volumeClaim`, or `s3://bucket/prefix/g1-0a1b2c3d` (downloaded and verified before its server starts; the download is not part of the cold start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = URI_PATTERN))]
    pub uri: Option<String>,
    /// Which ONNX file: `fp32`, `int8`, or `auto` (what the artifact's manifest says to serve).
    #[serde(default)]
    pub variant: ModelVariant,
    /// For a `file://` uri in a cluster: the PersistentVolumeClaim holding the artifact, mounted
    /// read-only at the path's first segment (e.g. `/artifacts`) in the benchmark pod. With
    /// `distillationJobRef` the job's `output.volumeClaim` is used and this must be unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub volume_claim: Option<String>,
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
    /// Time from process start to the first answer (artifact targets).
    ColdStart,
    /// Accuracy on seeded perturbations of the same inputs (typos, casing, punctuation, dropped
    /// words).
    Robustness,
    /// CPU seconds per 1,000 requests and peak resident memory of each server.
    Resources,
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
    /// Where the full report was written (a directory holding `report.html`, `report.md` and
    /// `results.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// The target with the highest accuracy (ties: the earliest in the spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_accuracy: Option<String>,
    /// The target with the lowest p99 latency (ties: the earliest in the spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "bestP99")]
    pub best_p99: Option<String>,
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
    /// Accuracy on the perturbed inputs (the same inputs with seeded typos, casing, punctuation
    /// and dropped words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robust_accuracy: Option<f64>,
    /// This target's accuracy compared with the first target's on the same inputs (absent on the
    /// first target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_vs_first: Option<PairedDifference>,
    /// Server CPU seconds per 1,000 measured requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "cpuSecondsPer1kRequests")]
    pub cpu_seconds_per_1k_requests: Option<f64>,
    /// Peak resident memory of the server, bytes (the largest of a track's pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
}

/// A paired accuracy comparison of a target with the first target: on how many inputs exactly
/// one of them was right, and a 95% confidence interval on the accuracy difference (this target
/// minus the first), as canary analysis computes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PairedDifference {
    /// Inputs the first target got right and this one wrong.
    pub first_only_correct: u64,
    /// Inputs this target got right and the first one wrong.
    pub this_only_correct: u64,
    /// Lower end of the 95% interval on this target's accuracy minus the first's.
    pub low: f64,
    /// Upper end of that interval.
    pub high: f64,
}

/// What the benchmark pod leaves in its termination message for the operator to copy into
/// status: the report's location and the figures of every target, in spec order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BenchmarkSummary {
    /// Where the report was written.
    pub report: String,
    /// One entry per target, in spec order.
    pub results: Vec<TargetResult>,
}

impl BenchmarkSummary {
    /// The target with the highest accuracy and the one with the lowest p99 (the earliest on a
    /// tie); `None` where no target has the figure.
    pub fn winners(&self) -> (Option<String>, Option<String>) {
        fn best(results: &[TargetResult], key: impl Fn(&TargetResult) -> Option<f64>) -> Option<String> {
            let mut best: Option<(&str, f64)> = None;
            for r in results {
                if let Some(v) = key(r).filter(|v| v.is_finite())
                    && best.is_none_or(|(_, b)| v > b)
                {
                    best = Some((&r.name, v));
                }
            }
            best.map(|(name, _)| name.to_string())
        }
        (best(&self.results, |r| r.accuracy), best(&self.results, |r| r.p99_ms.map(|p| -p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, accuracy: Option<f64>, p99: Option<f64>) -> TargetResult {
        TargetResult { name: name.into(), accuracy, p99_ms: p99, ..Default::default() }
    }

    #[test]
    fn the_winners_are_the_best_accuracy_and_the_lowest_p99_earliest_on_a_tie() {
        let s = BenchmarkSummary {
            report: "file:///r".into(),
            results: vec![
                result("a", Some(0.9), Some(10.0)),
                result("b", Some(0.95), Some(4.0)),
                result("c", Some(0.95), Some(4.0)),
                result("d", None, None),
            ],
        };
        assert_eq!(s.winners(), (Some("b".into()), Some("b".into())));
        let none = BenchmarkSummary { report: String::new(), results: vec![result("d", None, None)] };
        assert_eq!(none.winners(), (None, None));
    }

    #[test]
    fn the_largest_summary_fits_a_termination_message() {
        // Eight targets (the most the schema allows) with 63-character names and every figure
        // at its widest: the kubelet keeps 4096 bytes of a termination message.
        let wide = TargetResult {
            name: "x".repeat(63),
            requests: 1_000_000_000,
            accuracy: Some(0.123_456),
            p50_ms: Some(12_345.678),
            p95_ms: Some(12_345.678),
            p99_ms: Some(12_345.678),
            throughput: Some(123_456.78),
            error_rate: Some(0.123_456),
            cold_start_ms: Some(123_456.78),
            robust_accuracy: Some(0.123_456),
            accuracy_vs_first: Some(PairedDifference {
                first_only_correct: 1_000_000,
                this_only_correct: 1_000_000,
                low: -0.123_456,
                high: 0.123_456,
            }),
            cpu_seconds_per_1k_requests: Some(12_345.678),
            peak_memory_bytes: Some(123_456_789_012),
        };
        let summary = BenchmarkSummary { report: format!("file:///{}", "r".repeat(200)), results: vec![wide; 8] };
        let bytes = serde_json::to_vec(&summary).unwrap().len();
        assert!(bytes <= 4000, "{bytes} bytes");
    }

    #[test]
    fn the_report_goes_beside_the_first_artifact_unless_the_spec_says_where() {
        let spec: BenchmarkSpec = serde_json::from_value(serde_json::json!({
            "targets": [
                {"name": "live", "deployment": {"name": "reviews"}},
                {"name": "int8", "artifact": {"uri": "file:///artifacts/minilm/", "variant": "int8"}}
            ],
            "dataset": {"uri": "file:///data/golden.csv"}
        }))
        .unwrap();
        let first = spec.targets[1].artifact.as_ref().and_then(|a| a.uri.clone());
        let first = first.as_deref();
        assert_eq!(report_uri(&spec, "cmp", first).as_deref(), Some("file:///artifacts/benchmarks/cmp"));
        assert_eq!(report_uri(&spec, "cmp", None), None);
        let beside = |artifact: &str| report_uri(&spec, "cmp", Some(artifact));
        assert_eq!(beside("s3://models/students/g1-0a1b2c3d").as_deref(), Some("s3://models/students/benchmarks/cmp"));
        assert_eq!(beside("s3://models"), None, "a bucket's root has no parent to write beside");
        assert_eq!(beside("file:///minilm"), None);
        let spec = BenchmarkSpec { report_uri: Some("file:///reports/x/".into()), ..spec };
        assert_eq!(report_uri(&spec, "cmp", first).as_deref(), Some("file:///reports/x"));
    }
}
