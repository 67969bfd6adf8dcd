//! `DistillationJob`: distil a teacher model into a smaller student by knowledge distillation,
//! then quantize it, on a worker pod the operator launches as a `batch/v1` Job.
#![allow(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) of #[kube] repeats type_ = ...; clippy reads them as one attribute list"
)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Compression, DataFormat, S3Settings, URI_PATTERN};

/// Distil a teacher model into a smaller student, then quantize it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "distillery.dev",
    version = "v1alpha1",
    kind = "DistillationJob",
    plural = "distillationjobs",
    shortname = "dj",
    category = "distillery",
    namespaced,
    status = "DistillationJobStatus",
    doc = "DistillationJob trains a small student model from a large teacher by knowledge distillation, then quantizes it to int8, on a GPU worker pod. The result is a model artifact a ModelDeployment can serve.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Task", type_ = "string", json_path = ".spec.task"),
    printcolumn(name = "Step", type_ = "integer", json_path = ".status.progress.step"),
    printcolumn(name = "Loss", type_ = "number", json_path = ".status.progress.loss"),
    printcolumn(
        name = "Retention",
        type_ = "number",
        json_path = ".status.result.retention",
        description = "student accuracy / teacher accuracy on the held-out split"
    ),
    printcolumn(name = "Served", type_ = "string", json_path = ".status.result.servedVariant"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.task != 'embedding'").message("task: embedding is not built yet; sequence-classification and causal-lm run").field_path(".task"))]
#[x_kube(validation = Rule::new("(self.task == 'causal-lm') == (self.dataset.format == 'documents')").message("dataset.format: causal-lm trains on format documents (a directory of .txt files), and only causal-lm does").field_path(".dataset.format"))]
#[x_kube(validation = Rule::new("!has(self.student.architecture) || (self.student.architecture.family == 'llama') == (self.task == 'causal-lm')").message("student.architecture.family: llama decoders are for causal-lm, bert encoders for sequence-classification").field_path(".student.architecture.family"))]
#[x_kube(validation = Rule::new("self.task != 'causal-lm' || !has(self.teacher.head)").message("teacher.head prepares an encoder teacher for classification; a causal-lm teacher is distilled from as it is, so leave it unset").field_path(".teacher.head"))]
#[x_kube(validation = Rule::new("self.task != 'causal-lm' || self.teacher.pooling == 'mean'").message("teacher.pooling applies to encoders; leave it unset for causal-lm").field_path(".teacher.pooling"))]
#[x_kube(validation = Rule::new("self.task != 'causal-lm' || !has(self.student.embeddingSize)").message("student.embeddingSize: factorized embeddings are not built yet for causal-lm; leave it unset").field_path(".student.embeddingSize"))]
#[x_kube(validation = Rule::new("self.task != 'causal-lm' || !has(self.loss.featureAlignment)").message("loss.featureAlignment: feature alignment is not built yet for causal-lm; leave it unset").field_path(".loss.featureAlignment"))]
#[x_kube(validation = Rule::new("self.task != 'causal-lm' || !has(self.dataset.transferSet)").message("dataset.transferSet is for classification; a causal-lm corpus has no labels to begin with, so put every document in dataset.uri").field_path(".dataset.transferSet"))]
#[x_kube(validation = Rule::new("self.task == 'causal-lm' || !has(self.teacherOutputs)").message("teacherOutputs (top-k teacher log-probabilities, computed in shards) applies to causal-lm only").field_path(".teacherOutputs"))]
#[x_kube(validation = Rule::new("self.task == 'causal-lm' || !has(self.quantization) || !has(self.quantization.perplexityBudget)").message("quantization.perplexityBudget: a perplexity budget applies to causal-lm only (a classifier's int8 is judged on quantization.accuracyBudget); leave it unset").field_path(".quantization.perplexityBudget"))]
#[x_kube(validation = Rule::new("!has(self.teacherOutputs) || self.teacherOutputs.parallelism <= 1 || self.output.uri.startsWith('s3://') || has(self.output.volumeClaim)").message("teacherOutputs.parallelism above 1 runs the teacher in several pods, each writing a shard the training pod then reads, so the shards need a place every pod reaches: set output.uri to an s3:// location, or output.volumeClaim to a PersistentVolumeClaim every pod can mount (ReadWriteMany when they may land on different nodes); or set parallelism 1").field_path(".teacherOutputs.parallelism"))]
#[x_kube(validation = Rule::new("self.task != 'causal-lm' || !self.student.pruneVocabulary").message("student.pruneVocabulary: vocabulary pruning is not built yet for causal-lm; leave it false").field_path(".student.pruneVocabulary"))]
pub struct DistillationJobSpec {
    /// What the student learns: `sequence-classification` (text → label), `embedding`
    /// (text → vector) or `causal-lm` (next-token prediction).
    pub task: Task,
    /// The model to learn from.
    pub teacher: TeacherSpec,
    /// The model to train.
    pub student: StudentSpec,
    /// The training data and how to split it.
    pub dataset: DatasetSpec,
    /// How student and teacher outputs are compared.
    #[serde(default)]
    pub loss: LossSpec,
    /// Optimiser and schedule.
    #[serde(default)]
    pub training: TrainingSpec,
    /// Post-training quantization and its accuracy and speed gate.
    #[serde(default)]
    pub quantization: QuantizationSpec,
    /// What the worker pod asks of the cluster.
    #[serde(default)]
    pub resources: WorkerResources,
    /// Where the resulting artifact is written.
    pub output: OutputSpec,
    /// `causal-lm` only: how the teacher's outputs on the training sequences are computed and
    /// cached before the students train — how many log-probabilities are kept per position, and
    /// how many pods compute them (`parallelism`: above 1, an Indexed Job of teacher pods runs
    /// first, then the training Job). Defaults when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_outputs: Option<TeacherOutputsSpec>,
    /// How to reach the S3-compatible store of every `s3://` URI in this spec (teacher, dataset,
    /// transfer set, output): endpoint, region, addressing and the Secret keys holding the
    /// credentials. Unset: AWS's endpoint and the pod's own identity (IRSA, workload identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Settings>,
    /// Worker container image; when unset, the operator's configured default — its CUDA build
    /// (`--worker-cuda-image`) when `resources.gpu.count` is above 0. An image named here must
    /// be a CUDA build to train on GPUs: a worker without CUDA refuses a job that asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// How many times a failed worker pod is retried before the job fails. A retried worker
    /// resumes from its last checkpoint when the output is a `file://` claim (with an `s3://`
    /// output it starts again: its checkpoints were in the failed pod's scratch space). With
    /// `teacherOutputs.parallelism` above 1, each teacher-outputs shard is retried this many times
    /// on its own (the Indexed Job's `backoffLimitPerIndex`), and the training pod as well.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: i32,
    /// Wall-clock limit for the whole job, in seconds; no limit when unset. With
    /// `teacherOutputs.parallelism` above 1 the teacher-outputs Job and the training Job that
    /// follows it each get this limit (Kubernetes counts it per Job, from its start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// Pause the job: no worker pod runs while true. Training resumes from its last checkpoint
    /// when set back to false; teacher-outputs shards already complete are kept, the others run
    /// again.
    #[serde(default)]
    pub suspend: bool,
}

fn default_backoff_limit() -> i32 {
    3
}

/// The learning task.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Text classification: the student learns the teacher's class distribution.
    SequenceClassification,
    /// Sentence embeddings: the student learns the teacher's pooled embedding.
    Embedding,
    /// Causal language modelling: the student learns the teacher's next-token distribution.
    CausalLm,
}

/// The teacher model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.uri.startsWith('s3://') || !has(self.volumeClaim)").message("teacher.volumeClaim is for file:// URIs: an s3:// teacher.uri is read through spec.s3, so leave volumeClaim unset").field_path(".volumeClaim"))]
pub struct TeacherSpec {
    /// A HuggingFace-layout model directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json`): `file:///models/all-minilm-l6-v2`, or an `s3://bucket/prefix` holding those files.
    /// For `causal-lm`: a llama-architecture GGUF file (`file:///models/SmolLM2-135M-Instruct.Q4_1.gguf`,
    /// any quantization candle reads), dequantized to f32 once; its tokenizer is rebuilt from the
    /// GGUF's vocabulary and merges.
    #[schemars(regex(pattern = URI_PATTERN))]
    pub uri: String,
    /// How to pool token states into one vector, for encoders (leave unset for `causal-lm`): `mean` (sentence-transformers
    /// models), `cls`, or `pooler` (BERT's pooler over `[CLS]`: what a HuggingFace
    /// `BertForSequenceClassification` head reads).
    #[serde(default)]
    pub pooling: Pooling,
    /// How to make a task-specific teacher when the model has no task head (a bare encoder such as
    /// all-MiniLM-L6-v2). The prepared teacher is cached by a hash of everything that produced it.
    /// Required for `sequence-classification` when the model directory has no classifier; must be
    /// left out when it has one (`classifier.weight`, as a `BertForSequenceClassification`
    /// checkpoint ships): that teacher is distilled from as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<TeacherHeadSpec>,
    /// For a `file://` teacher in a cluster: the PersistentVolumeClaim mounted (read-only) at the
    /// path's first segment (e.g. `/models`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub volume_claim: Option<String>,
}

/// How token states are pooled into a sentence vector.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Mean of the token states, weighted by the attention mask.
    #[default]
    Mean,
    /// The state of the first (`[CLS]`) token.
    Cls,
    /// BERT's pooler: `tanh(dense(state of [CLS]))`, with the model's `pooler.dense` weights
    /// (trained with the head when the model has none).
    Pooler,
}

/// How to prepare a task-specific teacher from a bare encoder.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'fine-tune' || !has(self.trainableLayers)").message("teacher.head.trainableLayers applies only to mode fine-tune").field_path(".trainableLayers"))]
pub struct TeacherHeadSpec {
    /// `linear-probe` fits only a linear head on the training split with the encoder frozen;
    /// `fine-tune` trains the encoder (all layers, or the top `trainableLayers`) with the head.
    pub mode: HeadMode,
    /// With `fine-tune`: how many of the top encoder layers are trained; the frozen lower layers'
    /// outputs are computed once and cached. All layers when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 96))]
    pub trainable_layers: Option<u32>,
    /// Passes over the training split.
    #[serde(default = "default_head_epochs")]
    #[schemars(range(min = 1, max = 100))]
    pub epochs: u32,
    /// Peak learning rate.
    #[serde(default = "default_head_lr")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub learning_rate: f64,
    /// Examples per step.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 4096))]
    pub batch_size: u32,
}

fn default_head_epochs() -> u32 {
    2
}

fn default_head_lr() -> f64 {
    5e-5
}

/// How the teacher's head is prepared.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HeadMode {
    /// Encoder frozen, linear head fitted on its pooled output.
    LinearProbe,
    /// Encoder and head trained together.
    FineTune,
}

/// The student model: either a fresh architecture or layers taken from the teacher.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.architecture) != has(self.initFromTeacher)").message("set exactly one of student.architecture or student.initFromTeacher"))]
#[x_kube(validation = Rule::new("!has(self.embeddingSize) || !has(self.architecture) || self.embeddingSize < self.architecture.hiddenSize").message("student.embeddingSize must be smaller than student.architecture.hiddenSize").field_path(".embeddingSize"))]
pub struct StudentSpec {
    /// A fresh BERT-family configuration, randomly initialised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<StudentArchitecture>,
    /// Build the student from chosen teacher layers (DistilBERT style): same widths, fewer layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from_teacher: Option<InitFromTeacher>,
    /// Restrict the vocabulary to the tokens the training split and the transfer set use (plus
    /// special tokens and single characters), shrinking the embedding table; the exported
    /// tokenizer is rewritten to match. Not built for `causal-lm` yet.
    #[serde(default)]
    pub prune_vocabulary: bool,
    /// Factorize the word-embedding table through this width (ALBERT style): `vocab ×
    /// embeddingSize` rows and an `embeddingSize → hidden` projection instead of `vocab × hidden`.
    /// With initFromTeacher both start from a truncated SVD of the teacher's table. Must be smaller
    /// than the hidden size. Unset: no factorization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8))]
    pub embedding_size: Option<u32>,
}

/// A fresh student architecture.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.hiddenSize % self.attentionHeads == 0").message("student.architecture.hiddenSize must be a multiple of attentionHeads").field_path(".hiddenSize"))]
#[x_kube(validation = Rule::new("!has(self.keyValueHeads) || self.family == 'llama'").message("student.architecture.keyValueHeads applies to llama decoders").field_path(".keyValueHeads"))]
#[x_kube(validation = Rule::new("!has(self.keyValueHeads) || self.attentionHeads % self.keyValueHeads == 0").message("student.architecture.keyValueHeads must divide attentionHeads").field_path(".keyValueHeads"))]
#[x_kube(validation = Rule::new("self.family != 'llama' || (self.hiddenSize / self.attentionHeads) % 2 == 0").message("student.architecture: a llama decoder's head width (hiddenSize / attentionHeads) must be even for rotary position embeddings").field_path(".hiddenSize"))]
pub struct StudentArchitecture {
    /// Model family: `bert` covers BERT, MiniLM and DistilBERT-style encoders (for
    /// `sequence-classification`); `llama` is a Llama-family decoder (RMSNorm, rotary positions,
    /// SwiGLU, grouped-query attention, tied embeddings) for `causal-lm`.
    #[serde(default)]
    pub family: ModelFamily,
    /// Number of transformer layers.
    #[schemars(range(min = 1, max = 48))]
    pub layers: u32,
    /// Width of the hidden states.
    #[schemars(range(min = 8, max = 8192))]
    pub hidden_size: u32,
    /// Attention heads per layer; must divide hiddenSize.
    #[schemars(range(min = 1, max = 128))]
    pub attention_heads: u32,
    /// Width of the feed-forward layer; 4 × hiddenSize when unset (llama: 3 × hiddenSize, the
    /// SwiGLU layer having three matrices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 32768))]
    pub intermediate_size: Option<u32>,
    /// Llama only: key/value heads (grouped-query attention); must divide attentionHeads.
    /// attentionHeads (plain multi-head attention) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 128))]
    pub key_value_heads: Option<u32>,
}

/// A model family.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ModelFamily {
    /// BERT-family encoder.
    #[default]
    Bert,
    /// Llama-family decoder (SmolLM2, Qwen2), for causal-lm.
    Llama,
}

/// A student made of chosen teacher layers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.layers.all(l, self.layers.exists_one(m, m == l))").message("student.initFromTeacher.layers must not repeat a layer").field_path(".layers"))]
pub struct InitFromTeacher {
    /// Zero-based teacher layer indices to copy, in order, e.g. `[0, 2, 4]`.
    #[schemars(length(min = 1, max = 48), inner(range(min = 0, max = 95)))]
    pub layers: Vec<u32>,
}

/// The training data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.validationSplit.byGroup || size(self.groupField) > 0").message("dataset.validationSplit.byGroup needs dataset.groupField").field_path(".groupField"))]
#[x_kube(validation = Rule::new("self.format != 'text'").message("dataset.format text has no labels; use it only for transferSet").field_path(".format"))]
#[x_kube(validation = Rule::new("!self.uri.startsWith('s3://') || !has(self.volumeClaim)").message("dataset.volumeClaim is for file:// URIs: an s3:// dataset.uri is read through spec.s3, so leave volumeClaim unset").field_path(".volumeClaim"))]
pub struct DatasetSpec {
    /// Where the data lives: `file:///data/reviews.csv.bz2` or `s3://bucket/reviews.csv.bz2`.
    #[schemars(regex(pattern = URI_PATTERN))]
    pub uri: String,
    /// File layout: `csv` (header row) or `jsonl`; `documents` (a directory of `.txt` files,
    /// packed into `maxSequenceLength`-token sequences) for `causal-lm`.
    #[serde(default)]
    pub format: DataFormat,
    /// Compression; `auto` decides by the file name (`.gz`, `.bz2`).
    #[serde(default)]
    pub compression: Compression,
    /// Field holding the input text (csv and jsonl).
    #[serde(default = "crate::common::default_text_field")]
    #[schemars(length(min = 1))]
    pub text_field: String,
    /// Field holding the label.
    #[serde(default = "crate::common::default_label_field")]
    #[schemars(length(min = 1))]
    pub label_field: String,
    /// Field that groups related rows (e.g. `movie_name`), so a group-wise split keeps every group
    /// on one side. Empty when there is none.
    #[serde(default)]
    pub group_field: String,
    /// The label values, in class-index order. Discovered from the data and sorted when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 10000))]
    pub labels: Option<Vec<String>>,
    /// Label values whose rows are dropped on purpose (e.g. `plot` rows in a review corpus). Any
    /// other value not in `labels` is an error naming the row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_labels: Vec<String>,
    /// How the held-out split is made.
    #[serde(default)]
    pub validation_split: ValidationSplit,
    /// Texts are truncated to this many tokens; with `documents`, the length of the packed
    /// training sequences.
    #[serde(default = "default_max_sequence_length")]
    #[schemars(range(min = 8, max = 8192))]
    pub max_sequence_length: u32,
    /// Use at most this many labelled examples — packed sequences with `documents` — (after the
    /// split, from each side in proportion); handy for smoke tests. All when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2))]
    pub max_examples: Option<u32>,
    /// Extra unlabelled texts: the student learns the teacher's outputs on them too (the soft-label
    /// and feature-alignment terms only; the label-only baseline takes as many steps on the
    /// labelled data). The teacher's outputs on them are computed once and cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_set: Option<TransferSet>,
    /// For a `file://` dataset in a cluster: the PersistentVolumeClaim mounted (read-only) at the
    /// path's first segment (e.g. `/data`); a transfer set under the same segment is read from it
    /// too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub volume_claim: Option<String>,
}

fn default_max_sequence_length() -> u32 {
    128
}

/// How the held-out split is made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationSplit {
    /// Fraction of the data (or of the groups, with `byGroup`) held out for evaluation.
    #[serde(default = "default_validation_fraction")]
    #[schemars(range(min = 0.01, max = 0.9))]
    pub fraction: f64,
    /// Split by `dataset.groupField` so that no group is on both sides.
    #[serde(default)]
    pub by_group: bool,
    /// Seed of the split's shuffle.
    #[serde(default)]
    pub seed: u64,
}

impl Default for ValidationSplit {
    fn default() -> Self {
        Self { fraction: default_validation_fraction(), by_group: false, seed: 0 }
    }
}

fn default_validation_fraction() -> f64 {
    0.2
}

/// Unlabelled texts for transfer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.format != 'documents'").message("dataset.transferSet.format documents is a causal-lm corpus; a transfer set is text, csv or jsonl").field_path(".format"))]
pub struct TransferSet {
    /// Where the texts live.
    #[schemars(regex(pattern = URI_PATTERN))]
    pub uri: String,
    /// File layout: `text` (one per line), `csv` or `jsonl`.
    #[serde(default = "default_transfer_format")]
    pub format: DataFormat,
    /// Compression; `auto` decides by the file name.
    #[serde(default)]
    pub compression: Compression,
    /// Field holding the text (csv and jsonl only).
    #[serde(default = "crate::common::default_text_field")]
    pub text_field: String,
}

fn default_transfer_format() -> DataFormat {
    DataFormat::Text
}

/// The distillation loss: `alpha · CE(student, labels) + (1 − alpha) · T² · KL(teacher_T ‖
/// student_T)` plus `featureAlignment.weight` × a feature-alignment term.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LossSpec {
    /// Weight of the hard-label cross-entropy; `1 − alpha` weighs the soft-label KL term.
    /// `alpha: 1` trains on labels alone (no distillation).
    #[serde(default = "default_alpha")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub alpha: f64,
    /// Softmax temperature over training.
    #[serde(default)]
    pub temperature: TemperatureSchedule,
    /// Match intermediate representations as well as outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_alignment: Option<FeatureAlignment>,
}

impl Default for LossSpec {
    fn default() -> Self {
        Self { alpha: default_alpha(), temperature: TemperatureSchedule::default(), feature_alignment: None }
    }
}

fn default_alpha() -> f64 {
    0.5
}

/// A temperature that moves from `start` to `end` over training: high early (soft targets carry
/// more of the teacher's dark knowledge), low late.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.start >= self.end").message("loss.temperature.start must be greater than or equal to end").field_path(".start"))]
#[x_kube(validation = Rule::new("self.end > 0.0").message("loss.temperature.end must be greater than 0").field_path(".end"))]
pub struct TemperatureSchedule {
    /// Temperature at the first step.
    #[serde(default = "default_t_start")]
    #[schemars(range(max = 100.0))]
    pub start: f64,
    /// Temperature at the last step; must be > 0 and ≤ start.
    #[serde(default = "default_t_end")]
    #[schemars(range(max = 100.0))]
    pub end: f64,
    /// Shape of the curve from start to end; `constant` keeps `start` throughout.
    #[serde(default)]
    pub schedule: Schedule,
}

impl Default for TemperatureSchedule {
    fn default() -> Self {
        Self { start: default_t_start(), end: default_t_end(), schedule: Schedule::default() }
    }
}

fn default_t_start() -> f64 {
    4.0
}

fn default_t_end() -> f64 {
    1.0
}

/// The shape of a schedule over training steps.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// The starting value throughout.
    Constant,
    /// A straight line from start to end.
    Linear,
    /// Half a cosine from start to end.
    #[default]
    Cosine,
}

/// Feature alignment between student and teacher representations.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind != 'hidden-mse' || size(self.layerMap) > 0").message("loss.featureAlignment.layerMap must list at least one student/teacher layer pair for kind hidden-mse").field_path(".layerMap"))]
pub struct FeatureAlignment {
    /// Weight of the alignment term in the total loss.
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub weight: f64,
    /// `hidden-mse`: MSE between mapped hidden states (through a learned projection when widths
    /// differ); `pooled-cosine`: cosine distance between pooled embeddings.
    #[serde(default)]
    pub kind: AlignmentKind,
    /// Which student layer learns which teacher layer (hidden-mse only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 96))]
    pub layer_map: Vec<LayerPair>,
}

/// The feature-alignment term.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AlignmentKind {
    /// Hidden-state MSE over `layerMap`.
    HiddenMse,
    /// Cosine distance of pooled embeddings.
    #[default]
    PooledCosine,
}

/// A student layer aligned to a teacher layer (zero-based; the embedding output is layer −1 in
/// neither: use the transformer layers).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LayerPair {
    /// Student layer index.
    #[schemars(range(min = 0, max = 95))]
    pub student: u32,
    /// Teacher layer index.
    #[schemars(range(min = 0, max = 95))]
    pub teacher: u32,
}

/// Optimiser and schedule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.epochs) && has(self.maxSteps))").message("set training.epochs or training.maxSteps, not both").field_path(".maxSteps"))]
pub struct TrainingSpec {
    /// Passes over the training data. When neither this nor maxSteps is set: 3 epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub epochs: Option<u32>,
    /// Total optimiser steps, instead of epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_steps: Option<u64>,
    /// Examples per step.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 4096))]
    pub batch_size: u32,
    /// Peak learning rate of AdamW.
    #[serde(default = "default_lr")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub learning_rate: f64,
    /// AdamW weight decay.
    #[serde(default = "default_weight_decay")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub weight_decay: f64,
    /// Fraction of the steps spent warming the learning rate up linearly from 0.
    #[serde(default = "default_warmup")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub warmup_fraction: f64,
    /// Learning-rate decay after warm-up.
    #[serde(default)]
    pub schedule: Schedule,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    #[serde(default = "default_clip")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub gradient_clip_norm: f64,
    /// Seed of initialisation and data order; the same seed gives the same result.
    #[serde(default)]
    pub seed: u64,
    /// Write a checkpoint every this many steps; a restarted worker resumes from the last one.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(range(min = 1))]
    pub checkpoint_interval: u32,
}

impl Default for TrainingSpec {
    fn default() -> Self {
        Self {
            epochs: None,
            max_steps: None,
            batch_size: default_batch_size(),
            learning_rate: default_lr(),
            weight_decay: default_weight_decay(),
            warmup_fraction: default_warmup(),
            schedule: Schedule::default(),
            gradient_clip_norm: default_clip(),
            seed: 0,
            checkpoint_interval: default_checkpoint_interval(),
        }
    }
}

fn default_batch_size() -> u32 {
    32
}
fn default_lr() -> f64 {
    5e-4
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_warmup() -> f64 {
    0.06
}
fn default_clip() -> f64 {
    1.0
}
fn default_checkpoint_interval() -> u32 {
    200
}

/// Post-training quantization.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuantizationSpec {
    /// `int8-dynamic`: int8 weights per output channel, activations quantized at run time (a
    /// causal-lm student's tied token embedding: one int8 table with a scale per token, read by
    /// both the lookup and the output layer); `none`: serve fp32 only.
    #[serde(default)]
    pub mode: QuantizationMode,
    /// Largest accuracy drop (absolute, 0.01 = one point) int8 may cost on the held-out split:
    /// classification accuracy for `sequence-classification`, next-token top-1 accuracy for
    /// `causal-lm`. Over budget, the most sensitive layers stay fp32; still over, fp32 is served
    /// (for causal-lm: `model.int8.onnx` is not written).
    #[serde(default = "default_accuracy_budget")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub accuracy_budget: f64,
    /// `causal-lm` only: largest rise of held-out perplexity int8 may cost, relative to fp32's
    /// (0.02: int8's perplexity at most 2% above fp32's), checked before `accuracyBudget`. Over
    /// budget, the most sensitive layers stay fp32; still over, int8 is refused and only
    /// `model.onnx` is written. Unset: 0.02.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub perplexity_budget: Option<f64>,
    /// Serve int8 only when it is measurably faster than fp32 on the worker's CPU (for
    /// causal-lm: per held-out sequence, alone).
    #[serde(default = "default_true")]
    pub speed_check: bool,
}

/// The relative perplexity rise a causal-lm student's int8 may cost when
/// `quantization.perplexityBudget` is unset: 2%.
pub const DEFAULT_PERPLEXITY_BUDGET: f64 = 0.02;

impl QuantizationSpec {
    /// `perplexityBudget`, or [`DEFAULT_PERPLEXITY_BUDGET`] when unset.
    pub fn perplexity_budget_or_default(&self) -> f64 {
        self.perplexity_budget.unwrap_or(DEFAULT_PERPLEXITY_BUDGET)
    }
}

impl Default for QuantizationSpec {
    fn default() -> Self {
        Self {
            mode: QuantizationMode::default(),
            accuracy_budget: default_accuracy_budget(),
            perplexity_budget: None,
            speed_check: true,
        }
    }
}

fn default_accuracy_budget() -> f64 {
    0.01
}
fn default_true() -> bool {
    true
}

/// Quantization mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum QuantizationMode {
    /// No quantization; fp32 is served.
    None,
    /// Dynamic int8 quantization of the ONNX graph.
    #[default]
    Int8Dynamic,
}

/// What the worker pod asks of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerResources {
    /// GPUs for the worker.
    #[serde(default)]
    pub gpu: GpuRequest,
    /// CPU request and limit, e.g. `4` or `3500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory request and limit, e.g. `16Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Node labels the worker pod must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the worker pod tolerates (GPU nodes are often tainted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// A GPU request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuRequest {
    /// Number of GPUs; 0 trains on CPU. Above 0 the worker runs the operator's CUDA image and
    /// fails (without retries) if it finds no usable GPU; it never falls back to the CPU.
    #[serde(default = "default_gpu_count")]
    #[schemars(range(min = 0, max = 16))]
    pub count: u32,
    /// Extended resource name the device plugin advertises.
    #[serde(default = "default_gpu_resource")]
    #[schemars(regex(
        pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[a-z0-9]([-a-z0-9._]*[a-z0-9])?$"
    ))]
    pub resource_name: String,
}

impl Default for GpuRequest {
    fn default() -> Self {
        Self { count: default_gpu_count(), resource_name: default_gpu_resource() }
    }
}

fn default_gpu_count() -> u32 {
    1
}
fn default_gpu_resource() -> String {
    "nvidia.com/gpu".into()
}

/// Where the artifact goes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.uri.startsWith('s3://') || !has(self.volumeClaim)").message("output.volumeClaim is for file:// URIs: an s3:// output.uri is read through spec.s3, so leave volumeClaim unset").field_path(".volumeClaim"))]
pub struct OutputSpec {
    /// Artifact location: a directory `file:///artifacts/my-student` (a mounted volume) or an
    /// `s3://bucket/prefix` (files uploaded first, the manifest last, so a half-written
    /// artifact never looks complete; the worker trains in its pod's scratch space, so a retried
    /// pod starts again from the teacher — a `file://` output keeps the prepared teacher and the
    /// checkpoints on its claim, where a retry resumes). Artifacts are immutable, so each run writes a new one under
    /// it, at `<uri>/g<metadata.generation>-<first 8 hex digits of metadata.uid>` (e.g.
    /// `file:///artifacts/my-student/g2-7f3a09c1`), which `status.result.artifactUri` names: a
    /// retried pod resumes in the same directory; a changed spec or a recreated object writes a
    /// new one, never over an artifact that may be serving.
    #[schemars(regex(pattern = URI_PATTERN))]
    pub uri: String,
    /// For `file://` outputs in a cluster: the PersistentVolumeClaim mounted at the path's first
    /// segment (e.g. `/artifacts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim: Option<String>,
}

/// The most teacher-outputs pods one DistillationJob may run (`teacherOutputs.parallelism`):
/// the schema's bound, and what the operator leaves room for in the teacher Job's name (its pods'
/// hostnames append `-<index>`).
pub const MAX_TEACHER_SHARDS: u32 = 64;

/// How a causal-lm teacher's outputs on the training sequences are computed and cached.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TeacherOutputsSpec {
    /// Log-probabilities kept per position: the teacher's `topK` most likely next tokens, and the
    /// rest of its probability mass as one remainder, so the cache holds `topK + 1` numbers per
    /// token instead of the whole vocabulary. The KL term is computed over those `topK + 1`
    /// buckets (the student's probabilities of the other tokens summed into the remainder).
    #[serde(default = "default_top_k")]
    #[schemars(range(min = 1, max = 4096))]
    pub top_k: u32,
    /// Pods computing them, 1 to 64. With 1 (the default) the training pod runs the teacher
    /// itself before it trains. Above 1, the operator first runs an Indexed Job
    /// (`<name>-teacher`) of this many teacher pods, each computing a deterministic shard of the
    /// training sequences (pod `i` of `n` the same sequences on every retry, so a retried shard
    /// rewrites the same file) into `<output.uri>/teacher-outputs/<run id>`; only once every
    /// shard is complete does it create the training Job, whose pod joins the shards instead of
    /// running the teacher. Worth it with a large teacher, whose forward passes over the corpus
    /// cost more than training the student: they are spread over `parallelism` pods (each asking
    /// for `resources`, GPUs included). Needs an `s3://` `output.uri` or an `output.volumeClaim`
    /// every pod can mount, where the shards are shared; progress shows in the condition
    /// `TeacherOutputsReady` and `status.teacherOutputs`.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 64))]
    pub parallelism: u32,
}

impl Default for TeacherOutputsSpec {
    fn default() -> Self {
        Self { top_k: default_top_k(), parallelism: default_parallelism() }
    }
}

fn default_top_k() -> u32 {
    32
}
fn default_parallelism() -> u32 {
    1
}

/// Observed state, written by the operator (and `progress` by the worker).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DistillationJobStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Summary of where the job stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// Accepted, Progressing, Complete, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Name of the `batch/v1` Job running the worker (the training Job; with
    /// `teacherOutputs.parallelism` above 1, set once the teacher-outputs Job has completed and
    /// the training Job is created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// With `teacherOutputs.parallelism` above 1: the teacher-outputs stage that runs before
    /// training — its Job, where its shards go and how many are complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_outputs: Option<TeacherOutputsStatus>,
    /// Live training progress, reported by the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// When the worker first started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job succeeded or failed for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// What the job produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<DistillationResult>,
}

/// The teacher-outputs stage of a DistillationJob whose `teacherOutputs.parallelism` is above 1:
/// an Indexed Job of teacher pods, one shard each, that runs before the training Job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TeacherOutputsStatus {
    /// Name of the Indexed `batch/v1` Job whose pods compute the shards (`<name>-teacher`).
    pub job_name: String,
    /// Where the shards are written: `<spec.output.uri>/teacher-outputs/<run id>`, pod `i` of `n`
    /// writing `shard-<i>-of-<n>.safetensors` and `shard-<i>-of-<n>.json`; the training pod reads
    /// them all from there.
    pub uri: String,
    /// How many shards the run computes: `spec.teacherOutputs.parallelism`.
    pub shards: u32,
    /// How many of them are complete (the Job's `status.completedIndexes`).
    pub completed: u32,
}

/// Where a DistillationJob or Benchmark stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum JobPhase {
    /// Accepted; no worker pod is running yet.
    Pending,
    /// A worker pod is running (for a DistillationJob with `teacherOutputs.parallelism` above 1,
    /// a teacher-outputs pod, then the training pod).
    Running,
    /// `spec.suspend` is true.
    Suspended,
    /// Finished; the result is in status.
    Succeeded,
    /// Failed for good (invalid spec, retries or deadline exhausted).
    Failed,
}

/// What a distillation run is doing, in the order a run passes the stages (a stage may be
/// skipped: a cached teacher is not prepared again, `training-label-only` only runs when the spec
/// asks for the comparison, `quantizing` only for `int8-dynamic`). Workers before this enum wrote
/// `data`, `teacher`, `student`, `eval`, `artifact`, `export` and `quantize`; those still read, as
/// aliases, so an operator upgraded mid-run can read the DistillationJobs they wrote.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProgressStage {
    /// The spec was read and checked; the run begins.
    Starting,
    /// Reading the dataset (and transfer set) and splitting it.
    #[serde(alias = "data")]
    ReadingData,
    /// Fine-tuning the teacher (or loading the prepared one from the cache).
    #[serde(alias = "teacher")]
    PreparingTeacher,
    /// Running the teacher once over the training texts and caching its outputs.
    CachingTeacherOutputs,
    /// Training the student by distillation.
    #[serde(alias = "student")]
    Training,
    /// Training the same student without the teacher, for the comparison: on labels alone (for
    /// causal-lm, on the corpus alone).
    TrainingLabelOnly,
    /// Measuring the trained models on the held-out split.
    #[serde(alias = "eval")]
    Evaluating,
    /// Writing the artifact's files and manifest.
    #[serde(alias = "artifact")]
    WritingArtifact,
    /// Exporting to ONNX and checking it against the trained model.
    #[serde(alias = "export")]
    Exporting,
    /// Quantizing to int8 within the accuracy budget.
    #[serde(alias = "quantize")]
    Quantizing,
}

impl ProgressStage {
    /// Every stage, in order.
    pub const ALL: [ProgressStage; 10] = [
        Self::Starting,
        Self::ReadingData,
        Self::PreparingTeacher,
        Self::CachingTeacherOutputs,
        Self::Training,
        Self::TrainingLabelOnly,
        Self::Evaluating,
        Self::WritingArtifact,
        Self::Exporting,
        Self::Quantizing,
    ];

    /// The value as written in status (`preparing-teacher`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::ReadingData => "reading-data",
            Self::PreparingTeacher => "preparing-teacher",
            Self::CachingTeacherOutputs => "caching-teacher-outputs",
            Self::Training => "training",
            Self::TrainingLabelOnly => "training-label-only",
            Self::Evaluating => "evaluating",
            Self::WritingArtifact => "writing-artifact",
            Self::Exporting => "exporting",
            Self::Quantizing => "quantizing",
        }
    }
}

impl std::fmt::Display for ProgressStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Live training progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// What the worker is doing now (see [`ProgressStage`] for the values, in the order a run
    /// passes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<ProgressStage>,
    /// Optimiser steps done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// Total optimiser steps planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u64>,
    /// Current epoch (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    /// Training loss, smoothed over recent steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// When the worker last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<Time>,
}

/// What a finished DistillationJob produced, measured on the held-out split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DistillationResult {
    /// Location of the artifact directory.
    pub artifact_uri: String,
    /// sha256 of the artifact's manifest (`distillery.json`), which lists the sha256 of every file.
    pub artifact_digest: String,
    /// Teacher parameters and accuracy.
    pub teacher: ModelFigures,
    /// Student parameters and accuracy.
    pub student: ModelFigures,
    /// Accuracy of the same student trained on labels alone (the value of distillation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_only_accuracy: Option<f64>,
    /// causal-lm: held-out perplexity of the same student trained on the corpus alone (the
    /// value of distillation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus_only_perplexity: Option<f64>,
    /// causal-lm: the share of the gap between the corpus-only student and the teacher that
    /// distillation closed, in log-perplexity (1: the teacher's perplexity; 0: no gain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_closed: Option<f64>,
    /// Student accuracy / teacher accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<f64>,
    /// Teacher parameters / student parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_ratio: Option<f64>,
    /// The int8 model's figures, when quantization ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<Int8Figures>,
    /// Which variant a ModelDeployment with `variant: auto` serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_variant: Option<String>,
    /// Why that variant (e.g. "int8 within budget (−0.3 points) and 2.1× faster").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_variant_reason: Option<String>,
    /// Results to look at before shipping the model: a teacher no better than the bag-of-words
    /// baseline, or a distilled student no better than the label-only one. Also the
    /// `QualityWarning` condition and a Warning Event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<crate::manifest::QualityWarning>,
}

/// Size and quality of one model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelFigures {
    /// Parameter count.
    pub parameters: u64,
    /// Held-out accuracy in [0, 1] (classification tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Held-out perplexity (causal-lm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
}

/// The int8 model's figures.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Int8Figures {
    /// Size of `model.int8.onnx` in bytes.
    pub size_bytes: u64,
    /// Held-out accuracy in [0, 1] (causal-lm: next-token top-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// fp32 latency / int8 latency at batch 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speedup: Option<f64>,
    /// Whether int8 passed its accuracy and speed gate.
    pub passed_gate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_schema_bounds_teacher_outputs_parallelism_by_max_teacher_shards() {
        let crd = serde_json::to_value(DistillationJob::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let parallelism = &spec["properties"]["teacherOutputs"]["properties"]["parallelism"];
        assert_eq!(parallelism["maximum"].as_f64(), Some(f64::from(MAX_TEACHER_SHARDS)), "{parallelism}");
        assert_eq!(parallelism["minimum"].as_f64(), Some(1.0), "{parallelism}");
    }
}
