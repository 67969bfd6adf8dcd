//! The artifact manifest, `distillery.json`, written beside every model artifact: lineage,
//! metrics, sizes and the sha256 of every file. The operator reads it to fill a DistillationJob's
//! `status.result`; the server reads it to pick and verify the variant it serves.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    /// The exported ONNX models by variant (`fp32`, `int8`): file, size, digest, held-out
    /// accuracy and latency, and for int8 what its gate decided.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, OnnxVariant>,
    /// Which ONNX variant to serve for `variant: auto` (`fp32` or `int8`), when exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_variant: Option<String>,
    /// Why that variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_variant_reason: Option<String>,
    /// What a person should look at before shipping this model ([`quality_warnings`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<QualityWarning>,
}

/// A result that says distillation did not do what it is for, so that nobody ships the model
/// believing it did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QualityWarning {
    /// The cause: `TeacherNotBetterThanBaseline`, `StudentNotBetterThanMajority` or
    /// `NoDistillationGain`.
    pub reason: String,
    /// What was measured, and what to check.
    pub message: String,
}

/// The teacher is not better than the bag-of-words baseline.
pub const TEACHER_NOT_BETTER_THAN_BASELINE: &str = "TeacherNotBetterThanBaseline";
/// The distilled student is not better than the same student trained on labels alone.
pub const NO_DISTILLATION_GAIN: &str = "NoDistillationGain";
/// The distilled student is not better than always answering the most common training label.
pub const STUDENT_NOT_BETTER_THAN_MAJORITY: &str = "StudentNotBetterThanMajority";
/// The lead (accuracy, as a fraction) below which a model counts as no better than a baseline:
/// one point, about the noise of a held-out split of a few thousand texts.
pub const MIN_TEACHER_LEAD: f64 = 0.01;

/// The held-out accuracies a run measured, the ones its warnings are judged on (fractions, 0–1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeldOutAccuracies {
    /// The prepared teacher.
    pub teacher: f64,
    /// The bag-of-words logistic regression trained on the same labelled texts.
    pub bag_of_words: f64,
    /// Always answering the most common label of the training split.
    pub majority_class: f64,
    /// The distilled student.
    pub distilled: f64,
    /// The same student trained on labels alone, when that comparison was trained.
    pub label_only: Option<f64>,
}

/// The warnings held-out accuracies call for: a teacher less than [`MIN_TEACHER_LEAD`] ahead of
/// the bag-of-words baseline (it has little to teach), a distilled student less than that ahead
/// of always answering the majority class (it learned nothing), and a distilled student no better
/// than the label-only one (when that baseline was trained).
pub fn quality_warnings(a: &HeldOutAccuracies) -> Vec<QualityWarning> {
    let pct = |x: f64| format!("{:.2}%", x * 100.0);
    let mut warnings = vec![];
    if a.teacher - a.bag_of_words < MIN_TEACHER_LEAD {
        warnings.push(QualityWarning {
            reason: TEACHER_NOT_BETTER_THAN_BASELINE.into(),
            message: format!(
                "the teacher ({}) is not better than the bag-of-words baseline ({}) on this data — check the \
                 teacher's preparation (head epochs, trainable layers) and dataset.maxSequenceLength (truncation)",
                pct(a.teacher),
                pct(a.bag_of_words)
            ),
        });
    }
    if a.distilled - a.majority_class < MIN_TEACHER_LEAD {
        warnings.push(QualityWarning {
            reason: STUDENT_NOT_BETTER_THAN_MAJORITY.into(),
            message: format!(
                "the distilled student ({}) is not better than always answering the most common label ({}): it \
                 learned nothing usable — check the training steps, the learning rate and the labels",
                pct(a.distilled),
                pct(a.majority_class)
            ),
        });
    }
    if let Some(label_only) = a.label_only
        && a.distilled <= label_only
    {
        warnings.push(QualityWarning {
            reason: NO_DISTILLATION_GAIN.into(),
            message: format!(
                "the distilled student ({}) is no better than the same student trained on labels alone ({}): \
                 distillation did not help here — check the teacher, loss.alpha and the temperature",
                pct(a.distilled),
                pct(label_only)
            ),
        });
    }
    warnings
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

/// File name of the fp32 ONNX model.
pub const FP32_MODEL: &str = "model.onnx";
/// File name of the int8 ONNX model.
pub const INT8_MODEL: &str = "model.int8.onnx";

/// One exported ONNX model and what was measured of it in ONNX Runtime.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OnnxVariant {
    /// The file in the artifact; `None` for an int8 model that failed its gate and was not
    /// written (it is never shipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Size of the serialized model in bytes.
    pub size_bytes: u64,
    /// Lower-case hex sha256 of the serialized model.
    pub sha256: String,
    /// Held-out accuracy in [0, 1], in ONNX Runtime (causal-lm: next-token top-1).
    pub accuracy: f64,
    /// causal-lm only: held-out perplexity in ONNX Runtime, the exponential of the mean
    /// next-token negative log-likelihood over the held-out sequences (absent for classifiers, and
    /// for a decoder's fp32 until its int8 gate ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Mean latency of a batch of 1, single-threaded, in milliseconds.
    pub latency_ms_batch1: f64,
    /// Mean latency of a batch of 32, single-threaded, in milliseconds; absent where not
    /// measured (a causal-LM decoder: 32 sequences' logits at every position of a 49,152-token
    /// vocabulary are gigabytes, not a serving shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms_batch32: Option<f64>,
    /// Largest absolute difference of its logits on the held-out split from candle's (fp32) or,
    /// for a causal-lm student's int8, from the fp32 model's at every held-out position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_abs_logit_diff: Option<f64>,
    /// Share of held-out examples whose predicted label equals candle's (fp32) or the fp32
    /// model's (int8); for causal-lm, share of held-out positions whose most likely next token
    /// is the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_agreement: Option<f64>,
    /// int8 only: weights kept in fp32 because int8 cost them the most accuracy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fp32_layers: Vec<String>,
    /// int8 only: whether it passed its accuracy and speed gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed_gate: Option<bool>,
    /// int8 only: what its gate decided, with the figures — every check it passed, or the one
    /// it failed and by how much (a classifier's is also `servedVariantReason`; a causal-lm
    /// student's is only here, as decoders are not served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_reason: Option<String>,
}

/// Lower-case hex sha256 of a file's content, read in blocks: what [`FileEntry::sha256`] holds.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod quality_tests {
    use super::*;

    fn figures(teacher: f64, bag_of_words: f64, distilled: f64, label_only: Option<f64>) -> HeldOutAccuracies {
        HeldOutAccuracies { teacher, bag_of_words, majority_class: 0.5, distilled, label_only }
    }

    #[test]
    fn a_weak_teacher_and_a_student_that_gains_nothing_are_warned_about() {
        assert!(
            quality_warnings(&figures(0.85, 0.75, 0.82, Some(0.80))).is_empty(),
            "the main job's figures warn of nothing"
        );
        let w = quality_warnings(&figures(0.755, 0.75, 0.70, Some(0.71)));
        let reasons: Vec<&str> = w.iter().map(|w| w.reason.as_str()).collect();
        assert_eq!(reasons, [TEACHER_NOT_BETTER_THAN_BASELINE, NO_DISTILLATION_GAIN]);
        assert!(w[0].message.contains("75.50%") && w[0].message.contains("75.00%"), "{}", w[0].message);
        assert!(quality_warnings(&figures(0.85, 0.75, 0.80, None)).is_empty(), "no label-only run, no gain to judge");
        assert_eq!(
            quality_warnings(&figures(0.85, 0.75, 0.80, Some(0.80)))[0].reason,
            NO_DISTILLATION_GAIN,
            "equal is no gain"
        );
    }

    #[test]
    fn a_student_that_always_answers_one_label_is_warned_about() {
        let always_fresh =
            HeldOutAccuracies { majority_class: 0.62, distilled: 0.62, ..figures(0.85, 0.75, 0.0, None) };
        let w = quality_warnings(&always_fresh);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].reason, STUDENT_NOT_BETTER_THAN_MAJORITY);
        assert!(w[0].message.contains("62.00%"), "{}", w[0].message);
        let learned = HeldOutAccuracies { distilled: 0.70, ..always_fresh };
        assert!(quality_warnings(&learned).is_empty());
    }
}
