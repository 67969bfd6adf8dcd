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

use crate::common::{DURATION_PATTERN, EvalDataset, LocalObjectReference, ModelVariant, S3Settings, URI_PATTERN};

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
    /// How to reach the S3-compatible store of every `s3://` URI this deployment reads (the
    /// model, a DistillationJob's `s3://` artifact, the golden dataset): endpoint, region,
    /// addressing and the Secret keys holding the credentials. Unset: AWS's endpoint and the
    /// pod's own identity (IRSA, workload identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Settings>,
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
#[x_kube(validation = Rule::new("!has(self.distillationJobRef) || !has(self.volumeClaim)").message("model.volumeClaim is taken from the DistillationJob's output.volumeClaim; leave it unset with distillationJobRef").field_path(".volumeClaim"))]
#[x_kube(validation = Rule::new("!has(self.uri) || !self.uri.startsWith('s3://') || !has(self.volumeClaim)").message("model.volumeClaim is for file:// URIs: an s3:// model.uri is read through spec.s3, so leave volumeClaim unset").field_path(".volumeClaim"))]
pub struct ModelSource {
    /// A DistillationJob in this namespace; its `status.result.artifactUri` is served once it has
    /// succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation_job_ref: Option<LocalObjectReference>,
    /// An artifact directory: `file:///artifacts/my-student` on `volumeClaim`, or `s3://bucket/prefix/g1-0a1b2c3d` (downloaded by each server pod into its scratch space and checked against the manifest's sha256s before it is served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = URI_PATTERN))]
    pub uri: Option<String>,
    /// Which ONNX file to serve: `fp32`, `int8`, or `auto` (what the artifact's manifest says).
    #[serde(default)]
    pub variant: ModelVariant,
    /// For a `file://` uri in a cluster: the PersistentVolumeClaim holding the artifact, mounted
    /// read-only at the path's first segment (e.g. `/artifacts`) in the server pods. With
    /// `distillationJobRef` the job's `output.volumeClaim` is used and this must be unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub volume_claim: Option<String>,
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

/// Annotation that promotes the running canary at once, skipping the remaining steps and
/// analyses. Cleared by the operator when done.
pub const PROMOTE_ANNOTATION: &str = "distillery.dev/promote";
/// Annotation that aborts the running canary (weight 0, canary scaled to 0, phase RolledBack)
/// as if its analysis had failed. Cleared by the operator when done.
pub const ABORT_ANNOTATION: &str = "distillery.dev/abort";
/// Annotation that retries a rejected model (or resumes a Paused rollout) once. Cleared by the
/// operator when done.
pub const RETRY_ANNOTATION: &str = "distillery.dev/retry";

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
    /// Where the rollout stands, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Accepted, ModelReady, Available, Progressing, AnalysisPassing, RolledBack.
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
    /// When the current step started (its weight was first reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started: Option<Time>,
    /// The most recent canary analysis, with the evidence gathered over the whole rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisResult>,
    /// The model the last rollback rejected, and why. A rejected model is not tried again while
    /// the spec still names it (unless `distillery.dev/retry` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_model: Option<RejectedModel>,
    /// The model the spec names, once resolved (its served file's digest read from the artifact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_model: Option<ResolvedModel>,
    /// Highest model revision handed out so far; the next new model gets this plus one.
    #[serde(default)]
    pub last_revision: i64,
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
    /// Replicas are not ready, the model cannot be resolved or loaded, or the spec is invalid.
    Degraded,
    /// The last canary was rolled back; stable serves everything. `rejectedModel` says why.
    RolledBack,
}

/// A resolved model: an artifact, the variant served from it and that file's sha256.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedModel {
    /// Artifact location (as the pods see it).
    pub model_uri: String,
    /// The served variant (`fp32` or `int8`; `auto` resolved).
    pub variant: String,
    /// sha256 of the served ONNX file: what identifies the model.
    pub model_digest: String,
    /// The claim holding a `file://` artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim: Option<String>,
    /// What the model was resolved from (the spec's uri and variant, or the DistillationJob and
    /// its result): a resolution is reused only while this stays the same.
    pub source: String,
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
    /// The claim holding a `file://` artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim: Option<String>,
    /// Percent of traffic on this track, as achieved (with `replica-ratio`: the track's share of
    /// the ready replicas behind the Service).
    pub weight: i32,
    /// Server pods this track asks for.
    #[serde(default)]
    pub replicas: i32,
    /// Ready server pods.
    #[serde(default)]
    pub ready_replicas: i32,
}

/// How an analysis run ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AnalysisVerdict {
    /// Every check was proven to hold at the stated confidence: the step may be promoted.
    Passed,
    /// A check was proven to fail: counts toward `failureLimit`.
    Failed,
    /// The evidence so far proves neither: never promotes; the next run adds evidence.
    Inconclusive,
    /// A measurement could not be made (golden set unreadable, a track unreachable): counted
    /// apart, never promotes, never rolls back.
    Error,
}

/// Runs of the current rollout by verdict.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerdictCounts {
    /// Passed runs.
    #[serde(default)]
    pub passed: u32,
    /// Failed runs.
    #[serde(default)]
    pub failed: u32,
    /// Inconclusive runs.
    #[serde(default)]
    pub inconclusive: u32,
    /// Runs whose measurement could not be made.
    #[serde(default)]
    pub error: u32,
}

/// Golden-set evidence gathered over a rollout: both tracks answered the same labelled inputs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GoldenEvidence {
    /// Golden inputs both tracks answered.
    pub samples: u64,
    /// Inputs whose label the stable track predicted.
    pub stable_correct: u64,
    /// Inputs whose label the canary predicted.
    pub canary_correct: u64,
    /// Discordant pairs stable got right and canary wrong (b).
    pub stable_only: u64,
    /// Discordant pairs canary got right and stable wrong (c).
    pub canary_only: u64,
    /// Inputs on which both tracks predicted the same label.
    pub agreed: u64,
    /// Inputs with a label (accuracy is judged only on these).
    pub labelled: u64,
}

/// Figures of the most recent canary analysis. Golden-set figures cover every run of this
/// rollout (evidence accumulates); live-traffic figures cover the last interval.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisResult {
    /// When it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Revision of the canary it judged.
    #[serde(default)]
    pub canary_revision: i64,
    /// Number of this run within the rollout (1-based).
    #[serde(default)]
    pub run: u32,
    /// When this run's window started (its live-traffic figures cover the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<Time>,
    /// When the first Failed analysis of this rollout was due (the start of time-to-safety).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failure_due: Option<Time>,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<AnalysisVerdict>,
    /// One-sided confidence of every bound below (e.g. 0.99).
    #[serde(default)]
    pub confidence: f64,
    /// Golden inputs evaluated over the rollout.
    pub samples: u32,
    /// The golden-set counts over the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<GoldenEvidence>,
    /// Stable accuracy on the golden set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_accuracy: Option<f64>,
    /// Canary accuracy on the golden set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_accuracy: Option<f64>,
    /// Upper confidence bound of stable accuracy minus canary accuracy (paired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_drop_upper: Option<f64>,
    /// Lower confidence bound of stable accuracy minus canary accuracy (paired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_drop_lower: Option<f64>,
    /// Fraction of golden inputs on which both tracks predict the same label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// Lower confidence bound of the agreement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement_lower: Option<f64>,
    /// Live requests the canary answered over the last interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_requests: Option<u64>,
    /// Live requests the stable track answered over the last interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_requests: Option<u64>,
    /// Canary p99 latency in milliseconds over the last interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_latency_ms: Option<f64>,
    /// Stable p99 latency in milliseconds over the last interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_p99_latency_ms: Option<f64>,
    /// Canary server-error rate over the last interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// p-value of a chi-square test that canary and stable predict the classes in the same
    /// proportions on the live traffic each received (small: the class mix shifted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_mix_p_value: Option<f64>,
    /// Whether the verdict was Passed.
    pub passed: bool,
    /// Runs of this rollout by verdict.
    #[serde(default)]
    pub runs: VerdictCounts,
    /// Failed runs so far in this rollout (rollback at `failureLimit`).
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Every check with its figures and outcome, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub checks: Vec<String>,
    /// The checks that failed (or measurements that could not be made), in words.
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
    /// The checks that failed, each with its figures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub failed_checks: Vec<String>,
    /// When it was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}
