//! `ModelDeployment`: serve a model with ONNX Runtime and roll new versions out as a canary that
//! is promoted step by step, judged on model quality, and rolled back automatically.
#![allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) of #[kube] repeats type_ = ...; clippy reads them as one attribute list"
)]

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{DURATION_PATTERN, EvalDataset, LocalObjectReference, ModelVariant, URI_PATTERN};

/// Serve a model and roll out new versions of it safely.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "distillery.dev",
    version = "v1alpha1",
    kind = "ModelDeployment",
    plural = "modeldeployments",
    shortname = "mdep",
    category = "distillery",
    namespaced,
    status = "ModelDeploymentStatus",
    doc = "ModelDeployment serves a model with ONNX Runtime (KServe V2 protocol) and rolls a new model out as a canary, promoted step by step while its accuracy and its agreement with the stable model hold, and rolled back automatically when they drift.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Stable",
        type_ = "string",
        json_path = ".status.stable.modelDigest",
        description = "digest of the model serving stable traffic"
    ),
    printcolumn(
        name = "Canary",
        type_ = "string",
        json_path = ".status.canary.modelDigest",
        description = "digest of the canary model"
    ),
    printcolumn(
        name = "Weight",
        type_ = "integer",
        json_path = ".status.canary.weight",
        description = "percent of traffic on the canary"
    ),
    printcolumn(name = "Agreement", type_ = "number", json_path = ".status.lastAnalysis.agreement", priority = 1),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.stable.readyReplicas"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentSpec {
    /// The model to serve. Changing it starts a canary rollout.
    pub model: ModelSource,
    /// Replicas of the stable track.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Inference server settings.
    #[serde(default)]
    pub server: ServerSpec,
    /// How a new model is rolled out.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// Roll back automatically when analysis fails `failureLimit` times; when false the rollout
    /// pauses instead (phase Paused) for a person to decide.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
}

fn default_replicas() -> i32 {
    1
}
fn default_true() -> bool {
    true
}

/// Where the model comes from: exactly one of a DistillationJob or a URI.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.distillationJobRef) != has(self.uri)").message("set exactly one of model.distillationJobRef or model.uri"))]
pub struct ModelSource {
    /// A DistillationJob in this namespace; its `status.result.artifactUri` is served once it has
    /// succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation_job_ref: Option<LocalObjectReference>,
    /// An artifact directory: `file:///artifacts/my-student` or `s3://bucket/my-student`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = URI_PATTERN))]
    pub uri: Option<String>,
    /// Which ONNX file to serve: `fp32`, `int8`, or `auto` (what the artifact's manifest says).
    #[serde(default)]
    pub variant: ModelVariant,
}

/// Inference server settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Server container image; the operator's configured default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// CPU/memory requests and limits of each server pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Largest batch the server forms from queued requests.
    #[serde(default = "default_max_batch_size")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_batch_size: u32,
    /// Longest a request waits for others to batch with, in milliseconds. 0 (the default): a
    /// batch is what queued while the model threads were busy, and an idle server answers at
    /// once. Raise it only where one run costs much more than the wait (large models, GPUs): on
    /// the embedded default's CPU model, 5 ms cut throughput at 16 clients by more than half.
    #[serde(default = "default_max_batch_delay_ms")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_batch_delay_ms: u32,
    /// ONNX Runtime intra-op threads per model thread.
    #[serde(default = "default_threads")]
    #[schemars(range(min = 1, max = 256))]
    pub threads: u32,
}

/// The same values a spec without `server` deserializes to. Derived, it would be all zeros,
/// and the schema's default for `server` (generated from it) would fail the schema's own minimums
/// on the API server.
impl Default for ServerSpec {
    fn default() -> Self {
        Self {
            image: None,
            resources: None,
            max_batch_size: default_max_batch_size(),
            max_batch_delay_ms: default_max_batch_delay_ms(),
            threads: default_threads(),
        }
    }
}

fn default_max_batch_size() -> u32 {
    32
}
fn default_max_batch_delay_ms() -> u32 {
    0
}
fn default_threads() -> u32 {
    1
}

/// How a new model is rolled out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.steps.map(s, s.weight).isSorted() && self.steps.all(a, self.steps.exists_one(b, b.weight == a.weight))").message("rollout.steps weights must be strictly increasing").field_path(".steps"))]
pub struct RolloutSpec {
    /// Canary steps: the canary takes `weight` percent of traffic, then waits `pause` with
    /// analysis running before the next step. After the last step the canary is promoted.
    #[serde(default = "default_steps")]
    #[schemars(length(min = 1, max = 20))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub steps: Vec<CanaryStep>,
    /// How traffic is split between stable and canary.
    #[serde(default)]
    pub traffic_routing: TrafficRouting,
    /// What the canary is judged on.
    #[serde(default)]
    pub analysis: AnalysisSpec,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self { steps: default_steps(), traffic_routing: TrafficRouting::default(), analysis: AnalysisSpec::default() }
    }
}

fn default_steps() -> Vec<CanaryStep> {
    [10, 50, 100].into_iter().map(|weight| CanaryStep { weight, pause: Some("2m".into()) }).collect()
}

/// One canary step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Percent of traffic sent to the canary at this step.
    #[schemars(range(min = 1, max = 100))]
    pub weight: i32,
    /// How long to hold this step (with analysis every interval) before the next, e.g. `5m`.
    /// When unset the step holds for one analysis interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub pause: Option<String>,
}

/// How traffic is split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.method != 'gateway-api' || has(self.httpRoute)").message("rollout.trafficRouting.httpRoute is required for method gateway-api").field_path(".httpRoute"))]
pub struct TrafficRouting {
    /// `replica-ratio`: one Service over both tracks, weights approximated by replica counts (no
    /// mesh or gateway needed); `gateway-api`: exact weights on an HTTPRoute's backendRefs.
    #[serde(default)]
    pub method: TrafficMethod,
    /// The Gateway API HTTPRoute (same namespace) whose rule the operator points at the stable and
    /// canary Services with weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub http_route: Option<String>,
}

/// Traffic-splitting method.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TrafficMethod {
    /// Weights approximated by replica counts behind one Service.
    #[default]
    ReplicaRatio,
    /// Weights set on a Gateway API HTTPRoute.
    GatewayApi,
}

/// Canary analysis: the canary is judged on labelled accuracy and on agreement with stable on a
/// golden set, as well as on latency and errors.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Time between analysis runs, e.g. `30s`.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: String,
    /// Labelled inputs both tracks answer at every analysis. Without it only latency and errors
    /// are judged, and the rollout says so in its conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden_dataset: Option<EvalDataset>,
    /// Largest drop of canary accuracy below stable accuracy on the golden set (absolute;
    /// 0.02 = two points).
    #[serde(default = "default_max_accuracy_drop")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_accuracy_drop: f64,
    /// Smallest fraction of golden inputs on which canary and stable predict the same label.
    #[serde(default = "default_min_agreement")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_agreement: f64,
    /// Largest canary p99 latency in milliseconds; not judged when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_p99_latency_ms: Option<f64>,
    /// Largest fraction of canary requests answered with a server error.
    #[serde(default = "default_max_error_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: f64,
    /// Failed analyses in a row that roll the canary back (or pause it without autoRollback).
    #[serde(default = "default_failure_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_limit: u32,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            golden_dataset: None,
            max_accuracy_drop: default_max_accuracy_drop(),
            min_agreement: default_min_agreement(),
            max_p99_latency_ms: None,
            max_error_rate: default_max_error_rate(),
            failure_limit: default_failure_limit(),
        }
    }
}

fn default_interval() -> String {
    "1m".into()
}
fn default_max_accuracy_drop() -> f64 {
    0.02
}
fn default_min_agreement() -> f64 {
    0.95
}
fn default_max_error_rate() -> f64 {
    0.01
}
fn default_failure_limit() -> u32 {
    2
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Summary of the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// Accepted, Available, Progressing, AnalysisPassing, RolledBack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The track serving the current model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<TrackStatus>,
    /// The track serving the new model during a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<TrackStatus>,
    /// Index of the canary step in progress (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<u32>,
    /// The most recent canary analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisResult>,
    /// The model the last rollback rejected, and why. Cleared when the spec names a new model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_model: Option<RejectedModel>,
}

/// Where a ModelDeployment stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    /// A canary is being stepped up.
    Progressing,
    /// One model serves all traffic from ready replicas.
    Healthy,
    /// The rollout waits for a person (analysis failed without autoRollback).
    Paused,
    /// Replicas are not ready or the model cannot load.
    Degraded,
    /// The last canary was rolled back; stable serves everything. `rejectedModel` says why.
    RolledBack,
}

/// One track (stable or canary).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackStatus {
    /// Revision counter of the model this track serves (increases with every new model).
    pub revision: i64,
    /// Artifact location.
    pub model_uri: String,
    /// sha256 of the served ONNX file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_digest: Option<String>,
    /// Served variant (`fp32` or `int8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Percent of traffic on this track.
    pub weight: i32,
    /// Ready server pods.
    #[serde(default)]
    pub ready_replicas: i32,
}

/// Figures of one canary analysis.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisResult {
    /// When it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Golden inputs evaluated.
    pub samples: u32,
    /// Stable accuracy on the golden set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_accuracy: Option<f64>,
    /// Canary accuracy on the golden set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_accuracy: Option<f64>,
    /// Fraction of golden inputs on which both tracks predict the same label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// Canary p99 latency in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_latency_ms: Option<f64>,
    /// Canary server-error rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Whether every threshold held.
    pub passed: bool,
    /// Failed analyses in a row so far.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Which thresholds failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A model a rollback rejected.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejectedModel {
    /// Artifact location of the rejected model.
    pub model_uri: String,
    /// sha256 of its served ONNX file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_digest: Option<String>,
    /// Why it was rejected (the failed thresholds with their figures).
    pub reason: String,
    /// When it was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}
