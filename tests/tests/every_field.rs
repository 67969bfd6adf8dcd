//! No CRD field is accepted and ignored. This test walks every field of every CRD's `spec` (from
//! the generated schemas, so a new field lands here whether or not anyone remembers) and requires
//! each to be one of:
//!
//! - **read**: the code that honours it is named (a file, where a needle is not unique the
//!   function, and the expression that reads it), and that expression is found there outside
//!   comments and unit tests — so removing the code that reads a field, or adding a field nobody
//!   reads, fails this test;
//! - a listed **exception**, with its reason.
//!
//! Values of a field that is read can still be refused (`task: causal-lm`): those are listed in
//! [`REFUSED_VALUES`], and setting one must be refused at admission (the CRD's schema and CEL
//! rules, the code the API server runs) with a message that names the field and says it is not
//! supported or not built yet. Status fields are the operator's and
//! worker's output, not input, and are not walked.

use std::collections::BTreeSet;

use distillery_crds::validation::{ValidationError, crd_schema, validate_document};
use distillery_crds::{Benchmark, DistillationJob, ModelDeployment};
use distillery_tests::{read_documents, repo_root};
use kube::CustomResourceExt;
use serde_json::{Value, json};

/// How a field is honoured.
enum Use {
    /// Read in `file` by code containing `needle`.
    Read(&'static str, &'static str),
    /// Read in `file`, inside the function whose signature contains the second string, by code
    /// containing the third: for a needle that also appears elsewhere in the file (the dataset's
    /// and the transfer set's `spec.format` are read by different functions).
    ReadIn(&'static str, &'static str, &'static str),
    /// Accepted and not read, for the reason given.
    Exception(&'static str),
}
use Use::*;

const DJ_BUILD: &str = "operator/src/distillation/build.rs";
const MD_BUILD: &str = "operator/src/modeldeployment/build.rs";
const MD_ROLLOUT: &str = "operator/src/modeldeployment/rollout.rs";
const MD_MOD: &str = "operator/src/modeldeployment/mod.rs";
const DATA: &str = "worker/engine/src/data/dataset.rs";
const INPUTS: &str = "worker/engine/src/data/inputs.rs";
const READ_DATASET: &str = "fn read_dataset(";
const READ_TRANSFER: &str = "fn read_transfer(";
const PIPELINE: &str = "worker/engine/src/pipeline/mod.rs";
const DISTILL: &str = "worker/engine/src/pipeline/classification.rs";
const TRAIN: &str = "worker/engine/src/train/mod.rs";
const PREPARE: &str = "worker/engine/src/teacher/prepare.rs";
const STUDENT: &str = "worker/engine/src/student/mod.rs";
const ANALYZE: &str = "worker/engine/src/serve/analyze.rs";
const JUDGE: &str = "crds/src/analysis.rs";
const READ_GOLDEN: &str = "pub async fn read_golden(";
const BENCH: &str = "worker/engine/src/serve/bench/mod.rs";
const BENCH_PLAN: &str = "worker/engine/src/serve/bench/plan.rs";
const BENCH_BUILD: &str = "operator/src/benchmark/build.rs";
const BENCH_OBSERVE: &str = "operator/src/benchmark/observe.rs";

/// Every spec field of every kind, and how it is honoured.
const FIELDS: &[(&str, &str, Use)] = &[
    // DistillationJob: the operator builds the Job and pod from these…
    ("DistillationJob", "spec.activeDeadlineSeconds", Read(DJ_BUILD, "spec.active_deadline_seconds")),
    ("DistillationJob", "spec.backoffLimit", Read(DJ_BUILD, "spec.backoff_limit")),
    ("DistillationJob", "spec.suspend", Read(DJ_BUILD, "spec.suspend")),
    ("DistillationJob", "spec.image", Read(DJ_BUILD, "spec.image")),
    ("DistillationJob", "spec.resources.cpu", Read(DJ_BUILD, "spec.resources.cpu")),
    ("DistillationJob", "spec.resources.memory", Read(DJ_BUILD, "spec.resources.memory")),
    ("DistillationJob", "spec.resources.gpu.count", Read(DJ_BUILD, "spec.resources.gpu.count")),
    ("DistillationJob", "spec.resources.gpu.resourceName", Read(DJ_BUILD, "spec.resources.gpu.resource_name")),
    ("DistillationJob", "spec.resources.nodeSelector", Read(DJ_BUILD, "spec.resources.node_selector")),
    // A core/v1 Toleration, copied into the pod spec whole.
    ("DistillationJob", "spec.resources.tolerations[].effect", Read(DJ_BUILD, "spec.resources.tolerations")),
    ("DistillationJob", "spec.resources.tolerations[].key", Read(DJ_BUILD, "spec.resources.tolerations")),
    ("DistillationJob", "spec.resources.tolerations[].operator", Read(DJ_BUILD, "spec.resources.tolerations")),
    ("DistillationJob", "spec.resources.tolerations[].tolerationSeconds", Read(DJ_BUILD, "spec.resources.tolerations")),
    ("DistillationJob", "spec.resources.tolerations[].value", Read(DJ_BUILD, "spec.resources.tolerations")),
    ("DistillationJob", "spec.teacher.volumeClaim", Read(DJ_BUILD, "spec.teacher.volume_claim")),
    ("DistillationJob", "spec.dataset.volumeClaim", Read(DJ_BUILD, "spec.dataset.volume_claim")),
    ("DistillationJob", "spec.output.volumeClaim", Read(DJ_BUILD, "spec.output.volume_claim")),
    ("DistillationJob", "spec.output.uri", Read(DJ_BUILD, "spec.output.uri")),
    // …and the worker runs the rest.
    ("DistillationJob", "spec.task", Read(PIPELINE, "job.spec.task")),
    ("DistillationJob", "spec.teacher.uri", Read("worker/engine/src/data/inputs.rs", "spec.teacher.uri")),
    ("DistillationJob", "spec.teacher.pooling", Read(PREPARE, ".pooling")),
    ("DistillationJob", "spec.teacher.head.mode", Read(PREPARE, "head_spec.mode")),
    ("DistillationJob", "spec.teacher.head.trainableLayers", Read(PREPARE, ".trainable_layers")),
    ("DistillationJob", "spec.teacher.head.epochs", Read(PREPARE, "head_spec.epochs")),
    ("DistillationJob", "spec.teacher.head.learningRate", Read(PREPARE, "head_spec.learning_rate")),
    ("DistillationJob", "spec.teacher.head.batchSize", Read(PREPARE, "head_spec.batch_size")),
    ("DistillationJob", "spec.student.architecture.layers", Read(STUDENT, "arch.layers")),
    ("DistillationJob", "spec.student.architecture.hiddenSize", Read(STUDENT, "arch.hidden_size")),
    ("DistillationJob", "spec.student.architecture.attentionHeads", Read(STUDENT, "arch.attention_heads")),
    ("DistillationJob", "spec.student.architecture.intermediateSize", Read(STUDENT, "arch.intermediate_size")),
    (
        "DistillationJob",
        "spec.student.architecture.family",
        Exception(
            "tied to spec.task at apply (llama for causal-lm, bert otherwise), and the task's pipeline builds that family",
        ),
    ),
    (
        "DistillationJob",
        "spec.student.architecture.keyValueHeads",
        Read("worker/engine/src/student/decoder.rs", "arch.key_value_heads"),
    ),
    ("DistillationJob", "spec.teacherOutputs.topK", Read("worker/engine/src/pipeline/causal_lm.rs", ".top_k")),
    // Above 1, the teacher-outputs Indexed Job's completions and parallelism, and the shard count
    // both Jobs' pods are told.
    ("DistillationJob", "spec.teacherOutputs.parallelism", Read(DJ_BUILD, "outputs.parallelism")),
    ("DistillationJob", "spec.student.initFromTeacher.layers", Read(STUDENT, "from.layers")),
    ("DistillationJob", "spec.student.pruneVocabulary", Read(STUDENT, "spec.prune_vocabulary")),
    ("DistillationJob", "spec.student.embeddingSize", Read(STUDENT, "spec.embedding_size")),
    (
        "DistillationJob",
        "spec.dataset.uri",
        ReadIn(INPUTS, "fn labelled_with(", "read_dataset(&resolver.materialize(&spec.uri, Kind::File)?"),
    ),
    ("DistillationJob", "spec.dataset.format", ReadIn(DATA, READ_DATASET, "spec.format")),
    ("DistillationJob", "spec.dataset.compression", ReadIn(DATA, READ_DATASET, "spec.compression")),
    ("DistillationJob", "spec.dataset.textField", ReadIn(DATA, READ_DATASET, "spec.text_field")),
    ("DistillationJob", "spec.dataset.labelField", ReadIn(DATA, READ_DATASET, "spec.label_field")),
    ("DistillationJob", "spec.dataset.groupField", ReadIn(DATA, READ_DATASET, "spec.group_field")),
    ("DistillationJob", "spec.dataset.labels", ReadIn(DATA, READ_DATASET, "&spec.labels")),
    ("DistillationJob", "spec.dataset.skipLabels", ReadIn(DATA, READ_DATASET, "spec.skip_labels")),
    ("DistillationJob", "spec.dataset.validationSplit.fraction", Read(DATA, ".fraction")),
    ("DistillationJob", "spec.dataset.validationSplit.byGroup", Read(DATA, ".by_group")),
    ("DistillationJob", "spec.dataset.validationSplit.seed", Read(DATA, "split.seed")),
    (
        "DistillationJob",
        "spec.dataset.maxSequenceLength",
        Read("worker/engine/src/data/inputs.rs", ".max_sequence_length"),
    ),
    ("DistillationJob", "spec.dataset.maxExamples", Read("worker/engine/src/data/inputs.rs", ".max_examples")),
    (
        "DistillationJob",
        "spec.dataset.transferSet.uri",
        ReadIn(INPUTS, "fn load_with(", "let path = resolver.materialize(&t.uri, Kind::File)?"),
    ),
    ("DistillationJob", "spec.dataset.transferSet.format", ReadIn(DATA, READ_TRANSFER, "spec.format")),
    ("DistillationJob", "spec.dataset.transferSet.compression", ReadIn(DATA, READ_TRANSFER, "spec.compression")),
    ("DistillationJob", "spec.dataset.transferSet.textField", ReadIn(DATA, READ_TRANSFER, "spec.text_field")),
    ("DistillationJob", "spec.loss.alpha", Read(DISTILL, ".alpha")),
    ("DistillationJob", "spec.loss.temperature.start", Read("worker/engine/src/train/schedule.rs", "spec.start")),
    ("DistillationJob", "spec.loss.temperature.end", Read("worker/engine/src/train/schedule.rs", "spec.end")),
    ("DistillationJob", "spec.loss.temperature.schedule", Read("worker/engine/src/train/schedule.rs", "spec.schedule")),
    ("DistillationJob", "spec.loss.featureAlignment.kind", Read(DISTILL, "f.kind")),
    ("DistillationJob", "spec.loss.featureAlignment.weight", Read(DISTILL, "f.weight")),
    ("DistillationJob", "spec.loss.featureAlignment.layerMap[].student", Read(DISTILL, "p.student")),
    ("DistillationJob", "spec.loss.featureAlignment.layerMap[].teacher", Read(DISTILL, "p.teacher")),
    ("DistillationJob", "spec.training.epochs", Read(TRAIN, "t.epochs")),
    ("DistillationJob", "spec.training.maxSteps", Read(TRAIN, "t.max_steps")),
    ("DistillationJob", "spec.training.batchSize", Read(TRAIN, "t.batch_size")),
    ("DistillationJob", "spec.training.learningRate", Read(TRAIN, "t.learning_rate")),
    ("DistillationJob", "spec.training.schedule", Read(TRAIN, "t.schedule")),
    ("DistillationJob", "spec.training.warmupFraction", Read(TRAIN, "t.warmup_fraction")),
    ("DistillationJob", "spec.training.weightDecay", Read(TRAIN, "t.weight_decay")),
    ("DistillationJob", "spec.training.gradientClipNorm", Read(TRAIN, "t.gradient_clip_norm")),
    ("DistillationJob", "spec.training.seed", Read(TRAIN, "t.seed")),
    ("DistillationJob", "spec.training.checkpointInterval", Read(DISTILL, ".checkpoint_interval")),
    ("DistillationJob", "spec.quantization.mode", Read(DISTILL, "q.mode")),
    (
        "DistillationJob",
        "spec.quantization.accuracyBudget",
        Read("worker/engine/src/onnx/artifact.rs", ".accuracy_budget"),
    ),
    ("DistillationJob", "spec.quantization.speedCheck", Read("worker/engine/src/onnx/artifact.rs", ".speed_check")),
    (
        "DistillationJob",
        "spec.quantization.perplexityBudget",
        Read("worker/engine/src/onnx/decoder_quantize.rs", "spec.perplexity_budget_or_default()"),
    ),
    // spec.s3 is handed whole to the pods' store environment (objects.rs `store_env`, whose
    // unit test checks each field lands in the env): the same for all three kinds.
    ("DistillationJob", "spec.s3.endpoint", Read(DJ_BUILD, "store_env(spec.s3.as_ref())")),
    ("DistillationJob", "spec.s3.region", Read(DJ_BUILD, "store_env(spec.s3.as_ref())")),
    ("DistillationJob", "spec.s3.forcePathStyle", Read(DJ_BUILD, "store_env(spec.s3.as_ref())")),
    ("DistillationJob", "spec.s3.accessKeyId.name", Read(DJ_BUILD, "store_env(spec.s3.as_ref())")),
    ("DistillationJob", "spec.s3.accessKeyId.key", Read(DJ_BUILD, "store_env(spec.s3.as_ref())")),
    ("DistillationJob", "spec.s3.secretAccessKey.name", Read(DJ_BUILD, "store_env(spec.s3.as_ref())")),
    ("DistillationJob", "spec.s3.secretAccessKey.key", Read(DJ_BUILD, "store_env(spec.s3.as_ref())")),
    // ModelDeployment.
    ("ModelDeployment", "spec.model.uri", Read(MD_BUILD, "md.spec.model.uri")),
    ("ModelDeployment", "spec.model.volumeClaim", Read(MD_BUILD, "md.spec.model.volume_claim")),
    ("ModelDeployment", "spec.model.variant", Read(MD_MOD, "md.spec.model.variant")),
    ("ModelDeployment", "spec.model.distillationJobRef.name", Read(MD_MOD, "md.spec.model.distillation_job_ref")),
    ("ModelDeployment", "spec.replicas", ReadIn(MD_ROLLOUT, "fn replicas(", "self.md.spec.replicas")),
    ("ModelDeployment", "spec.autoRollback", Read(MD_ROLLOUT, "spec.auto_rollback")),
    ("ModelDeployment", "spec.server.image", Read(MD_BUILD, "server.image")),
    ("ModelDeployment", "spec.server.threads", Read(MD_BUILD, "server.threads")),
    ("ModelDeployment", "spec.server.maxBatchSize", Read(MD_BUILD, "server.max_batch_size")),
    ("ModelDeployment", "spec.server.maxBatchDelayMs", Read(MD_BUILD, "server.max_batch_delay_ms")),
    // A core/v1 ResourceRequirements, copied into the server container whole.
    ("ModelDeployment", "spec.server.resources.limits", Read(MD_BUILD, "server.resources")),
    ("ModelDeployment", "spec.server.resources.requests", Read(MD_BUILD, "server.resources")),
    ("ModelDeployment", "spec.server.resources.claims[].name", Read(MD_BUILD, "server.resources")),
    ("ModelDeployment", "spec.server.resources.claims[].request", Read(MD_BUILD, "server.resources")),
    ("ModelDeployment", "spec.rollout.steps[].weight", Read(MD_ROLLOUT, "steps[step].weight")),
    ("ModelDeployment", "spec.rollout.steps[].pause", Read(MD_ROLLOUT, "steps[step].pause")),
    ("ModelDeployment", "spec.rollout.trafficRouting.method", Read(MD_ROLLOUT, "traffic_routing.method")),
    ("ModelDeployment", "spec.rollout.trafficRouting.httpRoute", Read(MD_MOD, ".http_route")),
    ("ModelDeployment", "spec.rollout.analysis.interval", Read(MD_ROLLOUT, "analysis.interval")),
    ("ModelDeployment", "spec.rollout.analysis.failureLimit", Read(MD_ROLLOUT, ".failure_limit")),
    ("ModelDeployment", "spec.rollout.analysis.maxAccuracyDrop", Read(JUDGE, "spec.max_accuracy_drop")),
    ("ModelDeployment", "spec.rollout.analysis.minAgreement", Read(JUDGE, "spec.min_agreement")),
    ("ModelDeployment", "spec.rollout.analysis.maxP99LatencyMs", Read(JUDGE, "spec.max_p99_latency_ms")),
    ("ModelDeployment", "spec.rollout.analysis.maxErrorRate", Read(JUDGE, "spec.max_error_rate")),
    ("ModelDeployment", "spec.rollout.analysis.goldenDataset.uri", Read(MD_BUILD, "golden.uri")),
    ("ModelDeployment", "spec.rollout.analysis.goldenDataset.volumeClaim", Read(MD_BUILD, "golden.volume_claim")),
    ("ModelDeployment", "spec.rollout.analysis.goldenDataset.format", Read(ANALYZE, "spec.format")),
    ("ModelDeployment", "spec.rollout.analysis.goldenDataset.compression", Read(ANALYZE, "spec.compression")),
    ("ModelDeployment", "spec.rollout.analysis.goldenDataset.textField", Read(ANALYZE, "spec.text_field")),
    ("ModelDeployment", "spec.rollout.analysis.goldenDataset.labelField", Read(ANALYZE, "spec.label_field")),
    ("ModelDeployment", "spec.rollout.analysis.goldenDataset.samples", Read(ANALYZE, "spec.samples")),
    ("ModelDeployment", "spec.s3.endpoint", Read(MD_BUILD, "store_env(md.spec.s3.as_ref())")),
    ("ModelDeployment", "spec.s3.region", Read(MD_BUILD, "store_env(md.spec.s3.as_ref())")),
    ("ModelDeployment", "spec.s3.forcePathStyle", Read(MD_BUILD, "store_env(md.spec.s3.as_ref())")),
    ("ModelDeployment", "spec.s3.accessKeyId.name", Read(MD_BUILD, "store_env(md.spec.s3.as_ref())")),
    ("ModelDeployment", "spec.s3.accessKeyId.key", Read(MD_BUILD, "store_env(md.spec.s3.as_ref())")),
    ("ModelDeployment", "spec.s3.secretAccessKey.name", Read(MD_BUILD, "store_env(md.spec.s3.as_ref())")),
    ("ModelDeployment", "spec.s3.secretAccessKey.key", Read(MD_BUILD, "store_env(md.spec.s3.as_ref())")),
    // Benchmark: the operator resolves targets and mounts claims…
    ("Benchmark", "spec.targets[].deployment.name", Read(BENCH_OBSERVE, "track_service(&d.name, d.track)")),
    ("Benchmark", "spec.targets[].deployment.track", Read(BENCH_OBSERVE, "track_status(md, d.track)")),
    (
        "Benchmark",
        "spec.targets[].artifact.distillationJobRef.name",
        Read(BENCH_OBSERVE, "artifact.distillation_job_ref"),
    ),
    ("Benchmark", "spec.targets[].artifact.volumeClaim", Read(BENCH_BUILD, "artifact.volume_claim")),
    ("Benchmark", "spec.dataset.volumeClaim", Read(BENCH_BUILD, "dataset\n        .volume_claim")),
    ("Benchmark", "spec.image", Read(BENCH_BUILD, "spec.image")),
    ("Benchmark", "spec.reportVolumeClaim", Read(BENCH_BUILD, "spec.report_volume_claim")),
    ("Benchmark", "spec.reportUri", Read("crds/src/benchmark.rs", "spec.report_uri")),
    ("Benchmark", "spec.s3.endpoint", Read(BENCH_BUILD, "store_env(spec.s3.as_ref())")),
    ("Benchmark", "spec.s3.region", Read(BENCH_BUILD, "store_env(spec.s3.as_ref())")),
    ("Benchmark", "spec.s3.forcePathStyle", Read(BENCH_BUILD, "store_env(spec.s3.as_ref())")),
    ("Benchmark", "spec.s3.accessKeyId.name", Read(BENCH_BUILD, "store_env(spec.s3.as_ref())")),
    ("Benchmark", "spec.s3.accessKeyId.key", Read(BENCH_BUILD, "store_env(spec.s3.as_ref())")),
    ("Benchmark", "spec.s3.secretAccessKey.name", Read(BENCH_BUILD, "store_env(spec.s3.as_ref())")),
    ("Benchmark", "spec.s3.secretAccessKey.key", Read(BENCH_BUILD, "store_env(spec.s3.as_ref())")),
    // …and the worker measures.
    ("Benchmark", "spec.targets[].name", Read(BENCH_PLAN, "let name = t.name.clone()")),
    ("Benchmark", "spec.targets[].artifact.uri", Read(BENCH_PLAN, "&a.uri")),
    ("Benchmark", "spec.targets[].artifact.variant", Read(BENCH_PLAN, "variant: a.variant")),
    ("Benchmark", "spec.dataset.uri", ReadIn(ANALYZE, READ_GOLDEN, "spec.uri")),
    ("Benchmark", "spec.dataset.format", ReadIn(ANALYZE, READ_GOLDEN, "spec.format")),
    ("Benchmark", "spec.dataset.compression", ReadIn(ANALYZE, READ_GOLDEN, "spec.compression")),
    ("Benchmark", "spec.dataset.textField", ReadIn(ANALYZE, READ_GOLDEN, "spec.text_field")),
    ("Benchmark", "spec.dataset.labelField", ReadIn(ANALYZE, READ_GOLDEN, "spec.label_field")),
    ("Benchmark", "spec.dataset.samples", Read(BENCH, "plan.dataset.samples")),
    ("Benchmark", "spec.load.concurrency", Read(BENCH_PLAN, "spec.load.concurrency")),
    ("Benchmark", "spec.load.rate", Read(BENCH_PLAN, "spec.load.rate")),
    ("Benchmark", "spec.load.duration", Read(BENCH_PLAN, "spec.load.duration")),
    ("Benchmark", "spec.load.requests", Read(BENCH_PLAN, "spec.load.requests")),
    ("Benchmark", "spec.load.warmupRequests", Read(BENCH_PLAN, "spec.load.warmup_requests")),
    ("Benchmark", "spec.metrics", Read(BENCH_PLAN, "spec.metrics.clone()")),
];

/// Values of read fields that are refused at admission: `(kind, field, value)`.
const REFUSED_VALUES: &[(&str, &str, &str)] = &[
    ("DistillationJob", "spec.task", r#""embedding""#),
    ("DistillationJob", "spec.student.pruneVocabulary", "true"),
    ("DistillationJob", "spec.student.embeddingSize", "64"),
];

/// What a refusal of something not built says.
const NOT_BUILT: [&str; 2] = ["not supported yet", "not built yet"];

/// The spec's leaf fields of a schema (objects with properties are walked; arrays of objects are
/// walked as `name[]`; maps and scalar arrays are leaves).
fn leaves(schema: &Value, path: &str, out: &mut BTreeSet<String>) {
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            leaves(sub, &format!("{path}.{name}"), out);
        }
    } else if schema["type"] == "array" && schema["items"]["properties"].is_object() {
        leaves(&schema["items"], &format!("{path}[]"), out);
    } else {
        out.insert(path.to_string());
    }
}

fn spec_fields(kind: &str) -> BTreeSet<String> {
    let crd = match kind {
        "DistillationJob" => DistillationJob::crd(),
        "ModelDeployment" => ModelDeployment::crd(),
        "Benchmark" => Benchmark::crd(),
        other => panic!("unknown kind {other}"),
    };
    let mut out = BTreeSet::new();
    leaves(&crd_schema(&crd)["properties"]["spec"], "spec", &mut out);
    out
}

/// The file's code: comment lines and the unit-test module left out.
fn code_of(file: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let code = text.split("#[cfg(test)]").next().unwrap();
    code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The body of the function in `code` whose signature contains `signature`: from there to the
/// next item at the same indentation (a closing brace at its start of line).
fn function_body(code: &str, signature: &str) -> Option<String> {
    let start = code.find(signature)?;
    let line_start = code[..start].rfind('\n').map_or(0, |i| i + 1);
    let indent: String = code[line_start..].chars().take_while(|c| c.is_whitespace()).collect();
    let end = code[start..].find(&format!("\n{indent}}}")).map_or(code.len(), |i| start + i);
    Some(code[start..end].to_string())
}

/// A valid object of `kind` to change one field of.
fn base(kind: &str) -> Value {
    let file = match kind {
        "DistillationJob" => "examples/01-distillationjob.yaml",
        "ModelDeployment" => "examples/02-modeldeployment.yaml",
        "Benchmark" => "examples/03-benchmark.yaml",
        other => panic!("no valid example of {other}"),
    };
    let doc = read_documents(&repo_root().join(file)).unwrap().remove(0);
    validate_document(&doc).unwrap_or_else(|e| panic!("{file} must be valid: {e}"));
    doc
}

/// The causal-lm example, valid.
fn causal_lm_base() -> Value {
    let file = "examples/local/distill-lm.yaml";
    let doc = read_documents(&repo_root().join(file)).unwrap().remove(0);
    validate_document(&doc).unwrap_or_else(|e| panic!("{file} must be valid: {e}"));
    doc
}

/// Sets `path` (dotted, `[]` meaning the first element) to `value`, creating what is missing.
fn set(doc: &mut Value, path: &str, value: Value) {
    let mut at = doc;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let (name, element) = match part.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (*part, false),
        };
        let map = at.as_object_mut().unwrap_or_else(|| panic!("{path}: {name}'s parent is not an object"));
        if last && !element {
            map.insert(name.to_string(), value);
            return;
        }
        let next = map.entry(name).or_insert_with(|| if element { json!([{}]) } else { json!({}) });
        at = if element { &mut next.as_array_mut().unwrap()[0] } else { next };
        if last {
            *at = value;
            return;
        }
    }
}

/// The refusal of `doc`, which must be refused for something not built, naming `field` or the
/// object it is part of.
fn refusal(doc: &Value, what: &str, field: &str) -> String {
    match validate_document(doc) {
        Ok(()) => panic!("{what} was accepted; it must be refused at apply"),
        Err(e @ ValidationError::Invalid { .. }) => {
            let message = e.to_string();
            assert!(
                NOT_BUILT.iter().any(|m| message.contains(m)),
                "{what} was refused, but not as something not built yet:\n{message}"
            );
            // The field itself, or the object it belongs to when that is refused whole — never
            // just `spec`, unless asked.
            let parts: Vec<&str> = field.split('.').collect();
            let names = |path: &str| {
                message
                    .match_indices(path)
                    .any(|(i, _)| !message[i + path.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_'))
            };
            let named = (parts.len().min(2)..=parts.len()).any(|n| names(&parts[..n].join(".")));
            assert!(named, "{what} was refused without naming {field}:\n{message}");
            message
        }
        Err(other) => panic!("{what} refused for the wrong reason: {other}"),
    }
}

#[test]
fn every_spec_field_is_read_or_refused_at_apply() {
    let mut problems = vec![];
    for kind in ["DistillationJob", "ModelDeployment", "Benchmark"] {
        let schema = spec_fields(kind);
        let listed: BTreeSet<String> =
            FIELDS.iter().filter(|(k, ..)| *k == kind).map(|(_, p, _)| p.to_string()).collect();
        for missing in schema.difference(&listed) {
            problems.push(format!(
                "{kind} {missing}: a field nobody says they read — read it, refuse it at apply, or list it here with a reason"
            ));
        }
        for stale in listed.difference(&schema) {
            problems.push(format!("{kind} {stale}: listed here but not in the CRD"));
        }
    }
    for (kind, path, how) in FIELDS {
        match how {
            Read(file, needle) => {
                if !code_of(file).contains(needle) {
                    problems.push(format!("{kind} {path}: {file} no longer reads it ({needle:?} not found)"));
                }
            }
            ReadIn(file, function, needle) => match function_body(&code_of(file), function) {
                None => problems.push(format!("{kind} {path}: {file} has no {function:?} any more")),
                Some(body) if !body.contains(needle) => problems
                    .push(format!("{kind} {path}: {function:?} in {file} no longer reads it ({needle:?} not found)")),
                Some(_) => {}
            },
            Exception(reason) => assert!(!reason.is_empty()),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn values_not_built_yet_are_refused_at_apply() {
    for (kind, path, value) in REFUSED_VALUES {
        // What is not built for causal-lm is refused on a causal-lm job.
        let causal = path.starts_with("spec.teacherOutputs")
            || ["spec.student.pruneVocabulary", "spec.student.embeddingSize"].contains(path);
        let mut doc = if causal { causal_lm_base() } else { base(kind) };
        set(&mut doc, path, serde_json::from_str(value).unwrap());
        if path.contains("transferSet") {
            doc["spec"]["dataset"]["transferSet"]["format"] = json!("text");
        }
        if path.contains("goldenDataset") && doc["spec"]["rollout"]["analysis"]["goldenDataset"]["labelField"].is_null()
        {
            doc["spec"]["rollout"]["analysis"]["goldenDataset"]["labelField"] = json!("label");
        }
        refusal(&doc, &format!("{kind} {path}: {value}"), path);
    }
}

/// The test above can fail: a field added to a schema and read by nobody is reported.
#[test]
fn an_unlisted_field_is_reported() {
    let mut schema = crd_schema(&DistillationJob::crd())["properties"]["spec"].clone();
    schema["properties"]["training"]["properties"]["dropout"] = json!({"type": "number"});
    let mut fields = BTreeSet::new();
    leaves(&schema, "spec", &mut fields);
    let listed: BTreeSet<&str> = FIELDS.iter().filter(|(k, ..)| *k == "DistillationJob").map(|(_, p, _)| *p).collect();
    let unlisted: Vec<&String> = fields.iter().filter(|f| !listed.contains(f.as_str())).collect();
    assert_eq!(unlisted, vec!["spec.training.dropout"]);
}
