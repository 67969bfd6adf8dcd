//! `export` and `quantize` on an artifact directory — what `distillery-worker export` and
//! `distillery-worker quantize` run, and what `distill` runs after training:
//!
//! - **export** builds `model.onnx` from `model.safetensors` and `config.json`, runs it in ONNX
//!   Runtime on the held-out split and refuses it unless its logits are within
//!   [`PARITY_TOLERANCE`] of candle's and every predicted label is the same;
//! - **quantize** builds the int8 graph, evaluates it, and when it costs more accuracy than the
//!   budget, measures each quantized weight's sensitivity and keeps the most sensitive in fp32
//!   (1, 2, 4, … of them); then compares speed at batch 1 and 32, single-threaded. It writes
//!   `model.int8.onnx` only when int8 passed its gate; otherwise fp32 is served and the manifest
//!   says why.
//!
//! Both record file sizes, sha256, accuracy and latency in the manifest (`variants`), with the
//! variant to serve.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_onnx::onnx::ModelProto;
use distillery_crds::DistillationJob;
use distillery_crds::distillation::{Pooling, QuantizationSpec};
use distillery_crds::manifest::{ArtifactManifest, FP32_MODEL, FileEntry, INT8_MODEL, MANIFEST_FILE, OnnxVariant};
use prost::Message;
use serde_json::Value;

use super::OnnxError;
use super::export::{ClassifierWeights, export};
use super::gate::{self, Accuracies, AccuracyCheck, Latencies, Verdict};
use super::quantize::{QuantizeOptions, quantize};
use super::runtime::{self, OnnxModel, batches, compare_latency, time_per_batch};
use crate::data::batch::{encode_all, load_tokenizer};
use crate::data::inputs;
use crate::model::classifier::Classifier;
use crate::model::encoder::EncoderConfig;
use crate::progress::{Event, ProgressStage, Reporter};
use crate::store::sha256;
use crate::train::{accuracy, logits, predictions};

/// Largest absolute difference allowed between ONNX Runtime's logits and candle's.
pub const PARITY_TOLERANCE: f64 = 1e-4;
/// File name of the DistillationJob an artifact was made from (its data is what `export` and
/// `quantize` evaluate on).
pub const JOB_FILE: &str = "job.json";
/// Sequences per batch when evaluating.
const EVAL_BATCH: usize = 32;
/// Texts per run when evaluating an int8 candidate: one. Dynamic int8 quantizes activations per
/// run, so a text's int8 logits move with its batch-mates; alone, they are what a server gives a
/// lone request (and what a Benchmark measures), so the recorded int8 accuracy is the served one.
const INT8_EVAL_BATCH: usize = 1;

/// Held-out examples, tokenized with the artifact's tokenizer.
pub struct EvalSet {
    /// Token ids (truncated, unpadded).
    pub ids: Vec<Vec<u32>>,
    /// Class indices.
    pub labels: Vec<u32>,
}

/// A trained classifier read back from an artifact directory.
pub struct ArtifactModel {
    /// The encoder's configuration.
    pub config: EncoderConfig,
    /// Pooling.
    pub pooling: Pooling,
    /// Class names in logit order.
    pub labels: Vec<String>,
    /// The tokenizer's truncation length.
    pub max_sequence_length: usize,
    /// Every tensor of `model.safetensors`.
    pub tensors: HashMap<String, Tensor>,
}

pub(crate) fn artifact_error(path: &Path, message: impl std::fmt::Display) -> OnnxError {
    OnnxError::Artifact { path: path.display().to_string(), message: message.to_string() }
}

pub(crate) fn read_json(path: &Path) -> Result<Value, OnnxError> {
    let text = std::fs::read_to_string(path).map_err(|e| artifact_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| artifact_error(path, e))
}

impl ArtifactModel {
    /// Reads `config.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, OnnxError> {
        let config_path = dir.join("config.json");
        let raw = read_json(&config_path)?;
        let config: EncoderConfig = serde_json::from_value(raw.clone()).map_err(|e| artifact_error(&config_path, e))?;
        let pooling = serde_json::from_value(raw["distillery"]["pooling"].clone())
            .map_err(|e| artifact_error(&config_path, format!("distillery.pooling: {e}")))?;
        let max_sequence_length = raw["distillery"]["maxSequenceLength"]
            .as_u64()
            .ok_or_else(|| artifact_error(&config_path, "distillery.maxSequenceLength is missing"))?
            as usize;
        let id2label =
            raw["id2label"].as_object().ok_or_else(|| artifact_error(&config_path, "id2label is missing"))?;
        let labels = (0..id2label.len())
            .map(|i| id2label.get(&i.to_string()).and_then(Value::as_str).map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| artifact_error(&config_path, "id2label must map 0..n-1 to names"))?;
        let weights = dir.join("model.safetensors");
        let tensors =
            candle_core::safetensors::load(&weights, &Device::Cpu).map_err(|e| artifact_error(&weights, e))?;
        Ok(Self { config, pooling, labels, max_sequence_length, tensors })
    }

    /// What the exporter reads.
    pub fn weights(&self) -> ClassifierWeights<'_> {
        ClassifierWeights { config: &self.config, tensors: &self.tensors, pooling: self.pooling, labels: &self.labels }
    }

    /// candle's logits for `ids` (the reference the export must match).
    pub fn candle_logits(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, OnnxError> {
        let vb = VarBuilder::from_tensors(self.tensors.clone(), DType::F32, &Device::Cpu);
        let (encoder, head) = (vb.clone(), vb);
        let model = Classifier::new(&self.config, self.labels.len(), self.pooling, encoder, head)?;
        let all: Vec<usize> = (0..ids.len()).collect();
        Ok(logits(&model, ids, &all, EVAL_BATCH, &Device::Cpu)?)
    }
}

/// The held-out split of the artifact's job (`job.json` beside it, or `job` when given):
/// `(text, class index)` in split order.
pub fn held_out(dir: &Path, job: Option<&DistillationJob>) -> Result<Vec<(String, u32)>, OnnxError> {
    let loaded;
    let job = match job {
        Some(j) => j,
        None => {
            let path = dir.join(JOB_FILE);
            loaded =
                serde_json::from_value::<DistillationJob>(read_json(&path)?).map_err(|e| artifact_error(&path, e))?;
            &loaded
        }
    };
    let (dataset, split) = inputs::labelled(job)?;
    Ok(split.validation.iter().map(|&i| (dataset.examples[i].text.clone(), dataset.examples[i].label as u32)).collect())
}

/// The held-out split of the artifact's job ([`held_out`]), tokenized with the artifact's own
/// tokenizer.
pub fn eval_set(dir: &Path, job: Option<&DistillationJob>) -> Result<EvalSet, OnnxError> {
    let examples = held_out(dir, job)?;
    let config = read_json(&dir.join("config.json"))?;
    let max_len = config["distillery"]["maxSequenceLength"].as_u64().unwrap_or(128) as usize;
    let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), max_len)
        .map_err(|e| artifact_error(&dir.join("tokenizer.json"), e))?;
    let texts: Vec<&str> = examples.iter().map(|(t, _)| t.as_str()).collect();
    let ids = encode_all(&tokenizer, &texts).map_err(|e| artifact_error(&dir.join("tokenizer.json"), e))?;
    let labels = examples.iter().map(|&(_, l)| l).collect();
    Ok(EvalSet { ids, labels })
}

pub(crate) fn eval_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn agreement(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

/// Sequences timed at batch 1 and batches timed at batch 32.
const LATENCY_SINGLES: usize = 64;
const LATENCY_BATCHES: usize = 4;

/// Exports `dir`'s model to `model.onnx`, checks parity against candle on `eval`, and records it
/// in the manifest (served: fp32, until quantized).
pub fn export_artifact(dir: &Path, eval: &EvalSet, reporter: &mut dyn Reporter) -> Result<OnnxVariant, OnnxError> {
    runtime::init(None)?;
    let model = ArtifactModel::load(dir)?;
    let proto = export(&model.weights())?;
    let bytes = proto.encode_to_vec();
    let mut session = OnnxModel::new(&bytes, eval_threads())?;
    let onnx = session.logits(&eval.ids, EVAL_BATCH)?;
    let reference = model.candle_logits(&eval.ids)?;
    let max_diff = onnx
        .iter()
        .zip(&reference)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())))
        .fold(0f64, f64::max);
    let (ours, theirs) = (predictions(&onnx), predictions(&reference));
    let disagreements = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
    if max_diff > PARITY_TOLERANCE || disagreements > 0 || max_diff.is_nan() {
        return Err(OnnxError::Parity { max_diff, disagreements, examples: eval.ids.len() });
    }
    let acc = accuracy(&onnx, &eval.labels);
    let mut single = OnnxModel::new(&bytes, 1)?;
    let b1 = best_of(&mut single, &batches(&eval.ids, 1, LATENCY_SINGLES))?;
    let b32 = best_of(&mut single, &batches(&eval.ids, 32, LATENCY_BATCHES))?;
    let path = dir.join(FP32_MODEL);
    std::fs::write(&path, &bytes).map_err(|e| artifact_error(&path, e))?;
    let variant = OnnxVariant {
        file: Some(FP32_MODEL.into()),
        size_bytes: bytes.len() as u64,
        sha256: sha256(&bytes),
        accuracy: acc,
        latency_ms_batch1: b1,
        latency_ms_batch32: Some(b32),
        max_abs_logit_diff: Some(max_diff),
        label_agreement: Some(agreement(&ours, &theirs)),
        ..Default::default()
    };
    reporter.report(&Event::Stage {
        stage: ProgressStage::Exporting,
        message: format!(
            "{FP32_MODEL}: {:.1} MB, held-out accuracy {:.2}% in ONNX Runtime; logits within {max_diff:.1e} of candle's, every label the same",
            bytes.len() as f64 / 1e6,
            acc * 100.0
        ),
    });
    update_manifest(dir, |m| {
        m.variants.insert("fp32".into(), variant.clone());
        m.variants.remove("int8");
        m.served_variant = Some("fp32".into());
        m.served_variant_reason = Some("exported; not quantized".into());
    })?;
    Ok(variant)
}

fn best_of(model: &mut OnnxModel, batches: &[Vec<&[u32]>]) -> Result<f64, OnnxError> {
    time_per_batch(&mut *model, batches)?;
    let mut best = f64::MAX;
    for _ in 0..3 {
        best = best.min(time_per_batch(&mut *model, batches)?.as_secs_f64() * 1e3);
    }
    Ok(best)
}

/// One int8 candidate: its serialized model, the weights it quantized, its held-out accuracy
/// (against fp32's and the budget) and its predicted labels.
struct Candidate {
    bytes: Vec<u8>,
    quantized: Vec<String>,
    quality: AccuracyCheck,
    predictions: Vec<u32>,
}

impl gate::Evaluated for Candidate {
    type Figures = AccuracyCheck;

    fn quantized(&self) -> &[String] {
        &self.quantized
    }

    fn quality(&self) -> AccuracyCheck {
        self.quality
    }
}

/// What quantization decided.
pub struct QuantizeOutcome {
    /// The fp32 model's figures (latency re-measured beside int8's).
    pub fp32: OnnxVariant,
    /// The int8 candidate's figures (`file` is `None` when it failed its gate).
    pub int8: OnnxVariant,
    /// What is served, and why.
    pub verdict: Verdict,
}

/// Quantizes `dir`'s `model.onnx` (see the module documentation) and records the outcome.
pub fn quantize_artifact(
    dir: &Path,
    eval: &EvalSet,
    spec: &QuantizationSpec,
    reporter: &mut dyn Reporter,
) -> Result<QuantizeOutcome, OnnxError> {
    runtime::init(None)?;
    let fp32_path = dir.join(FP32_MODEL);
    let fp32_bytes = std::fs::read(&fp32_path)
        .map_err(|e| artifact_error(&fp32_path, format!("{e}; run `distillery-worker export` first")))?;
    let fp32_model = ModelProto::decode(fp32_bytes.as_slice()).map_err(|e| artifact_error(&fp32_path, e))?;
    let mut stage = |message: String| reporter.report(&Event::Stage { stage: ProgressStage::Quantizing, message });
    let threads = eval_threads();
    let fp32_logits = OnnxModel::new(&fp32_bytes, threads)?.logits(&eval.ids, EVAL_BATCH)?;
    let fp32_predictions = predictions(&fp32_logits);
    let fp32_accuracy = accuracy(&fp32_logits, &eval.labels);
    let budget = spec.accuracy_budget;
    let evaluate = |keep: &BTreeSet<String>| -> Result<Candidate, OnnxError> {
        let q = quantize(&fp32_model, &QuantizeOptions { keep_fp32: keep.clone() })?;
        let bytes = q.model.encode_to_vec();
        let l = OnnxModel::new(&bytes, threads)?.logits(&eval.ids, INT8_EVAL_BATCH)?;
        let figures = Accuracies { fp32: fp32_accuracy, int8: accuracy(&l, &eval.labels) };
        Ok(Candidate {
            bytes,
            quantized: q.quantized,
            quality: AccuracyCheck::classifier(figures, budget),
            predictions: predictions(&l),
        })
    };
    let first = evaluate(&BTreeSet::new())?;
    stage(format!(
        "{} weights int8: held-out accuracy {:.2}% (fp32 {:.2}%, budget {:.2} points)",
        first.quantized.len(),
        first.quality.figures.int8 * 100.0,
        fp32_accuracy * 100.0,
        budget * 100.0
    ));
    let (candidate, keep) = gate::keep_sensitive_fp32(first, evaluate, &mut stage)?;
    let Candidate { bytes, quality, predictions: int8_predictions, .. } = candidate;
    let int8_accuracy = quality.figures.int8;
    let mut fp32_single = OnnxModel::new(&fp32_bytes, 1)?;
    let mut int8_single = OnnxModel::new(&bytes, 1)?;
    let (f1, i1) = compare_latency(&mut fp32_single, &mut int8_single, &batches(&eval.ids, 1, LATENCY_SINGLES), 3)?;
    let (f32_, i32_) =
        compare_latency(&mut fp32_single, &mut int8_single, &batches(&eval.ids, 32, LATENCY_BATCHES), 3)?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let latencies =
        Latencies { fp32_batch1: ms(f1), int8_batch1: ms(i1), fp32_batch32: ms(f32_), int8_batch32: ms(i32_) };
    let accuracies = Accuracies { fp32: fp32_accuracy, int8: int8_accuracy };
    let verdict = gate::decide(accuracies, budget, keep.len(), spec.speed_check.then_some(latencies));
    let passed = verdict.passed();
    let int8_path = dir.join(INT8_MODEL);
    if passed {
        std::fs::write(&int8_path, &bytes).map_err(|e| artifact_error(&int8_path, e))?;
    } else if int8_path.exists() {
        std::fs::remove_file(&int8_path).map_err(|e| artifact_error(&int8_path, e))?;
    }
    stage(format!("serving {}: {}", verdict.variant(), verdict.reason()));
    let int8 = OnnxVariant {
        file: passed.then(|| INT8_MODEL.to_string()),
        size_bytes: bytes.len() as u64,
        sha256: sha256(&bytes),
        accuracy: int8_accuracy,
        latency_ms_batch1: latencies.int8_batch1,
        latency_ms_batch32: Some(latencies.int8_batch32),
        label_agreement: Some(agreement(&int8_predictions, &fp32_predictions)),
        fp32_layers: keep.into_iter().collect(),
        passed_gate: Some(passed),
        gate_reason: Some(verdict.reason().into()),
        ..Default::default()
    };
    let mut fp32 = OnnxVariant {
        file: Some(FP32_MODEL.into()),
        size_bytes: fp32_bytes.len() as u64,
        sha256: sha256(&fp32_bytes),
        accuracy: fp32_accuracy,
        latency_ms_batch1: latencies.fp32_batch1,
        latency_ms_batch32: Some(latencies.fp32_batch32),
        ..Default::default()
    };
    update_manifest(dir, |m| {
        if let Some(old) = m.variants.get("fp32") {
            fp32.max_abs_logit_diff = old.max_abs_logit_diff;
            fp32.label_agreement = old.label_agreement;
        }
        m.variants.insert("fp32".into(), fp32.clone());
        m.variants.insert("int8".into(), int8.clone());
        m.served_variant = Some(verdict.variant().into());
        m.served_variant_reason = Some(verdict.reason().into());
    })?;
    Ok(QuantizeOutcome { fp32, int8, verdict })
}

/// Records that `dir` serves fp32 without quantizing (`quantization.mode: none`).
pub fn serve_fp32_unquantized(dir: &Path) -> Result<(), OnnxError> {
    update_manifest(dir, |m| {
        m.variants.remove("int8");
        m.served_variant = Some("fp32".into());
        m.served_variant_reason = Some("spec.quantization.mode is none".into());
    })
}

/// Applies `change` to `dir`'s manifest and refreshes its entries for the ONNX files (added when
/// present, removed when not), then writes it back.
pub(crate) fn update_manifest(dir: &Path, change: impl FnOnce(&mut ArtifactManifest)) -> Result<(), OnnxError> {
    let path: PathBuf = dir.join(MANIFEST_FILE);
    let mut manifest: ArtifactManifest =
        serde_json::from_value(read_json(&path)?).map_err(|e| artifact_error(&path, e))?;
    change(&mut manifest);
    for name in [FP32_MODEL, INT8_MODEL] {
        let file = dir.join(name);
        if file.exists() {
            let bytes = std::fs::read(&file).map_err(|e| artifact_error(&file, e))?;
            manifest.files.insert(name.into(), FileEntry { size_bytes: bytes.len() as u64, sha256: sha256(&bytes) });
        } else {
            manifest.files.remove(name);
        }
    }
    let json = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
    crate::store::write_atomically(&path, &json).map_err(|e| artifact_error(&path, e))
}

/// fp32 and int8 side by side: size, accuracy, latency at batch 1 and 32.
pub fn variant_table(fp32: &OnnxVariant, int8: &OnnxVariant) -> String {
    let mut out =
        format!("{:<8} {:>9} {:>9} {:>12} {:>13}\n", "variant", "size", "accuracy", "batch 1 ms", "batch 32 ms");
    for (name, v) in [("fp32", fp32), ("int8", int8)] {
        out += &format!(
            "{name:<8} {:>6.1} MB {:>8.2}% {:>12.3} {:>13.2}\n",
            v.size_bytes as f64 / 1e6,
            v.accuracy * 100.0,
            v.latency_ms_batch1,
            v.latency_ms_batch32.unwrap_or(f64::NAN)
        );
    }
    out += &format!(
        "int8 / fp32: {:.2}× smaller, {:+.2} points, {:.2}× faster at batch 1, {:.2}× at batch 32 (ONNX Runtime, 1 thread)\n",
        fp32.size_bytes as f64 / int8.size_bytes as f64,
        (int8.accuracy - fp32.accuracy) * 100.0,
        fp32.latency_ms_batch1 / int8.latency_ms_batch1,
        fp32.latency_ms_batch32.unwrap_or(f64::NAN) / int8.latency_ms_batch32.unwrap_or(f64::NAN)
    );
    out
}
