//! int8 of a causal-LM student, through the gate a classifier's int8 passes ([`super::gate`]).
//!
//! `model.onnx` is quantized by [`super::quantize`] as a classifier is: the projections int8 per
//! output channel, activations quantized at run time, and the token embedding int8 per row — one
//! table, read by both the lookup and the output layer tied to it (see the quantizer's module
//! documentation). fp32 and the int8 candidate then run in ONNX Runtime over the held-out
//! sequences, and int8 passes only when
//!
//! - its held-out perplexity is at most `quantization.perplexityBudget` above fp32's (relative:
//!   0.02 is 2% higher),
//! - its next-token top-1 is at most `quantization.accuracyBudget` below fp32's (absolute), and
//! - with `speedCheck`, it is faster than fp32 per held-out sequence alone, single-threaded.
//!
//! Over budget, the most sensitive weights stay fp32 as for a classifier
//! ([`gate::keep_sensitive_fp32`], ranked by the perplexity each recovers); still over, int8 is
//! refused: `model.int8.onnx` is not written (an earlier one is removed), and `variants.int8`
//! keeps the candidate's figures with `passedGate: false` and the failed check, with its
//! figures, in `gateReason`. A passed int8 is written and recorded the same way. Either way
//! `servedVariant` stays unset: the server runs classifiers only.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_onnx::onnx::ModelProto;
use distillery_crds::distillation::QuantizationSpec;
use distillery_crds::manifest::{FP32_MODEL, INT8_MODEL, OnnxVariant};
use prost::Message;

use super::OnnxError;
use super::artifact::{artifact_error, eval_threads, update_manifest};
use super::decoder_export::{BatchLogits, LATENCY_SINGLES, NOT_SERVED, OnnxDecoder, PARITY_BATCH, argmax};
use super::gate::{self, DecoderQuality, Quality, Timing, Verdict};
use super::quantize::{QuantizeOptions, quantize};
use super::runtime::{self, batches, compare_latency};
use crate::evaluate::lm::{LmFigures, Tally};
use crate::progress::{Event, ProgressStage, Reporter};
use crate::store::sha256;

/// Sequences per run when evaluating an int8 candidate: one. Dynamic int8 quantizes activations
/// per run, so a sequence's int8 logits move with its batch-mates; alone, they are what a lone
/// request gets, so the recorded figures are the ones a server would give.
const INT8_EVAL_BATCH: usize = 1;
/// Rounds of the latency comparison (after a warm-up round each).
const LATENCY_ROUNDS: usize = 3;

/// Held-out figures of an ONNX decoder: perplexity and next-token top-1 over every position that
/// has a next token, `batch` sequences per run (padded on the right; padding is never scored).
/// The math is [`Tally`]'s, the one candle's students are evaluated with.
pub fn held_out_figures(model: &mut OnnxDecoder, sequences: &[Vec<u32>], batch: usize) -> Result<LmFigures, OnnxError> {
    let mut tally = Tally::default();
    let scored: Vec<&[u32]> = sequences.iter().filter(|s| s.len() > 1).map(Vec::as_slice).collect();
    for rows in scored.chunks(batch.max(1)) {
        let out = model.run(rows)?;
        let (values, targets) = predicted(&out, rows);
        let n = targets.len();
        let logits = Tensor::from_vec(values, (n, out.vocab), &Device::Cpu)?;
        let targets = Tensor::from_vec(targets, n, &Device::Cpu)?;
        tally.add(&logits, &targets, None)?;
    }
    Ok(tally.figures(false))
}

/// The logits at every position of `rows` that has a next token, row-major
/// `(positions, vocab)`, and those next tokens.
fn predicted(out: &BatchLogits, rows: &[&[u32]]) -> (Vec<f32>, Vec<u32>) {
    let positions: usize = rows.iter().map(|s| s.len().saturating_sub(1)).sum();
    let mut values = Vec::with_capacity(positions * out.vocab);
    let mut targets = Vec::with_capacity(positions);
    for (r, seq) in rows.iter().enumerate() {
        for (pos, &next) in seq.iter().enumerate().skip(1) {
            values.extend_from_slice(out.at(r, pos - 1));
            targets.push(next);
        }
    }
    (values, targets)
}

/// How far int8's logits are from fp32's on the held-out sequences.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Agreement {
    /// Largest |Δlogit| at any real position (NaN when either side produced a NaN).
    pub max_abs_diff: f64,
    /// Share of real positions whose most likely next token is the same.
    pub argmax_agreement: f64,
    /// Positions compared.
    pub positions: usize,
}

/// The largest `|a − b|`, NaN when any difference is.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0f64, |m, v| if m.is_nan() || v.is_nan() { f64::NAN } else { m.max(v) })
}

/// Runs `fp32` and `int8` on each of `sequences` alone (as the int8 figures are measured) and
/// compares their logits at every real position.
pub fn compare_variants(
    fp32: &mut OnnxDecoder,
    int8: &mut OnnxDecoder,
    sequences: &[Vec<u32>],
) -> Result<Agreement, OnnxError> {
    let (mut max, mut same, mut positions) = (0f64, 0usize, 0usize);
    for seq in sequences.iter().filter(|s| !s.is_empty()) {
        let (a, b) = (fp32.run(&[seq.as_slice()])?, int8.run(&[seq.as_slice()])?);
        for pos in 0..seq.len() {
            let (x, y) = (a.at(0, pos), b.at(0, pos));
            let d = max_abs_diff(x, y);
            max = if max.is_nan() || d.is_nan() { f64::NAN } else { max.max(d) };
            same += usize::from(argmax(x) == argmax(y));
            positions += 1;
        }
    }
    Ok(Agreement { max_abs_diff: max, argmax_agreement: same as f64 / positions.max(1) as f64, positions })
}

/// fp32's and int8's mean time per held-out sequence alone (the first [`LATENCY_SINGLES`]),
/// single-threaded, measured alternately as a classifier's are ([`compare_latency`]).
fn time_per_sequence(fp32: &[u8], int8: &[u8], sequences: &[Vec<u32>]) -> Result<Timing, OnnxError> {
    let singles = batches(sequences, 1, LATENCY_SINGLES);
    let tokens: usize = singles.iter().flatten().map(|s| s.len()).sum();
    let length = tokens / singles.len().max(1);
    let (mut a, mut b) = (OnnxDecoder::new(fp32, 1)?, OnnxDecoder::new(int8, 1)?);
    let (f, i) = compare_latency(&mut a, &mut b, &singles, LATENCY_ROUNDS)?;
    Ok(Timing {
        at: format!("per {length}-token sequence"),
        fp32_ms: f.as_secs_f64() * 1e3,
        int8_ms: i.as_secs_f64() * 1e3,
    })
}

/// One int8 candidate: its serialized model, the weights it made int8, its held-out figures and
/// its quality against fp32's and the budgets.
struct Candidate {
    bytes: Vec<u8>,
    quantized: Vec<String>,
    figures: LmFigures,
    quality: DecoderQuality,
}

impl gate::Evaluated for Candidate {
    type Figures = DecoderQuality;

    fn quantized(&self) -> &[String] {
        &self.quantized
    }

    fn quality(&self) -> DecoderQuality {
        self.quality
    }
}

/// What the decoder's int8 gate decided.
pub struct DecoderQuantizeOutcome {
    /// fp32's figures: perplexity and next-token top-1 in ONNX Runtime, latency re-measured
    /// beside int8's.
    pub fp32: OnnxVariant,
    /// int8's figures (`file` is `None` when it was refused).
    pub int8: OnnxVariant,
    /// [`Verdict::Int8`] when int8 passed (and was written), [`Verdict::Fp32`] when refused;
    /// nothing is served either way.
    pub verdict: Verdict,
}

/// `dir`'s `model.onnx`, serialized and decoded.
fn read_fp32(dir: &Path) -> Result<(Vec<u8>, ModelProto), OnnxError> {
    let path = dir.join(FP32_MODEL);
    let bytes = std::fs::read(&path)
        .map_err(|e| artifact_error(&path, format!("{e}; the decoder must be exported to ONNX first")))?;
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| artifact_error(&path, e))?;
    Ok((bytes, model))
}

/// Quantizes `dir`'s decoder `model.onnx`, judges the int8 candidate on `held_out` (see the
/// module documentation) and records the outcome in the manifest.
pub fn quantize_decoder_artifact(
    dir: &Path,
    held_out: &[Vec<u32>],
    spec: &QuantizationSpec,
    reporter: &mut dyn Reporter,
) -> Result<DecoderQuantizeOutcome, OnnxError> {
    runtime::init(None)?;
    let (fp32_bytes, fp32_model) = read_fp32(dir)?;
    let mut stage = |message: String| reporter.report(&Event::Stage { stage: ProgressStage::Quantizing, message });
    let threads = eval_threads();
    let fp32 = held_out_figures(&mut OnnxDecoder::new(&fp32_bytes, threads)?, held_out, PARITY_BATCH)?;
    if fp32.tokens == 0 {
        return Err(artifact_error(dir, "no held-out sequence of two tokens or more to judge int8 on"));
    }
    let (perplexity_budget, top1_budget) = (spec.perplexity_budget_or_default(), spec.accuracy_budget);
    let evaluate = |keep: &BTreeSet<String>| -> Result<Candidate, OnnxError> {
        let q = quantize(&fp32_model, &QuantizeOptions { keep_fp32: keep.clone() })?;
        let bytes = q.model.encode_to_vec();
        let figures = held_out_figures(&mut OnnxDecoder::new(&bytes, threads)?, held_out, INT8_EVAL_BATCH)?;
        let quality = DecoderQuality::new(
            (fp32.perplexity, fp32.top1),
            (figures.perplexity, figures.top1),
            perplexity_budget,
            top1_budget,
        );
        Ok(Candidate { bytes, quantized: q.quantized, figures, quality })
    };
    let first = evaluate(&BTreeSet::new())?;
    stage(format!(
        "{} weights int8: {} (fp32: perplexity {:.2}, top-1 {:.2}%; budgets: perplexity +{:.2}%, top-1 −{:.2} points)",
        first.quantized.len(),
        first.quality.brief(),
        fp32.perplexity,
        fp32.top1 * 100.0,
        perplexity_budget * 100.0,
        top1_budget * 100.0
    ));
    let (candidate, keep) = gate::keep_sensitive_fp32(first, evaluate, &mut stage)?;
    let agreement = compare_variants(
        &mut OnnxDecoder::new(&fp32_bytes, threads)?,
        &mut OnnxDecoder::new(&candidate.bytes, threads)?,
        held_out,
    )?;
    let timing = time_per_sequence(&fp32_bytes, &candidate.bytes, held_out)?;
    let verdict =
        gate::judge(&candidate.quality, keep.len(), spec.speed_check.then_some(std::slice::from_ref(&timing)));
    write_or_remove_int8(dir, verdict.passed(), &candidate.bytes)?;
    stage(format!("int8 {}: {}", if verdict.passed() { "kept" } else { "refused" }, verdict.reason()));
    let int8 = int8_variant(&candidate, keep, agreement, &timing, &verdict);
    let fp32 = record(dir, &fp32_bytes, fp32, &timing, &int8)?;
    Ok(DecoderQuantizeOutcome { fp32, int8, verdict })
}

/// Writes `model.int8.onnx` when int8 `passed`; otherwise removes one an earlier run left.
fn write_or_remove_int8(dir: &Path, passed: bool, bytes: &[u8]) -> Result<(), OnnxError> {
    let path = dir.join(INT8_MODEL);
    if passed {
        std::fs::write(&path, bytes).map_err(|e| artifact_error(&path, e))?;
    } else if path.exists() {
        std::fs::remove_file(&path).map_err(|e| artifact_error(&path, e))?;
    }
    Ok(())
}

/// The manifest's `variants.int8` for the final candidate.
fn int8_variant(
    candidate: &Candidate,
    keep: BTreeSet<String>,
    agreement: Agreement,
    timing: &Timing,
    verdict: &Verdict,
) -> OnnxVariant {
    OnnxVariant {
        file: verdict.passed().then(|| INT8_MODEL.to_string()),
        size_bytes: candidate.bytes.len() as u64,
        sha256: sha256(&candidate.bytes),
        accuracy: candidate.figures.top1,
        perplexity: Some(candidate.figures.perplexity),
        latency_ms_batch1: timing.int8_ms,
        // Not measured for decoders: see the field's doc.
        latency_ms_batch32: None,
        max_abs_logit_diff: Some(agreement.max_abs_diff),
        label_agreement: Some(agreement.argmax_agreement),
        fp32_layers: keep.into_iter().collect(),
        passed_gate: Some(verdict.passed()),
        gate_reason: Some(verdict.reason().to_string()),
    }
}

/// Records `int8` and fp32's ONNX Runtime figures (perplexity, top-1, latency measured beside
/// int8's) in `dir`'s manifest, `servedVariant` left unset; returns fp32's variant as recorded.
fn record(
    dir: &Path,
    fp32_bytes: &[u8],
    fp32: LmFigures,
    timing: &Timing,
    int8: &OnnxVariant,
) -> Result<OnnxVariant, OnnxError> {
    let mut recorded = OnnxVariant::default();
    update_manifest(dir, |m| {
        let v = m.variants.entry("fp32".into()).or_insert_with(|| OnnxVariant {
            file: Some(FP32_MODEL.into()),
            size_bytes: fp32_bytes.len() as u64,
            sha256: sha256(fp32_bytes),
            ..Default::default()
        });
        v.accuracy = fp32.top1;
        v.perplexity = Some(fp32.perplexity);
        v.latency_ms_batch1 = timing.fp32_ms;
        recorded = v.clone();
        m.variants.insert("int8".into(), int8.clone());
        m.served_variant = None;
        m.served_variant_reason = Some(NOT_SERVED.into());
    })?;
    Ok(recorded)
}

/// Records that `dir`'s decoder is not quantized (`quantization.mode: none`): no int8 variant,
/// no `model.int8.onnx`.
pub fn decoder_not_quantized(dir: &Path) -> Result<(), OnnxError> {
    write_or_remove_int8(dir, false, &[])?;
    update_manifest(dir, |m| {
        m.variants.remove("int8");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positions_with_a_next_token_are_scored() {
        // Two sequences (3 and 1 tokens) padded to 3, vocabulary 2: logits = [position, row].
        let values: Vec<f32> = (0..2).flat_map(|r| (0..3).flat_map(move |p| [p as f32, r as f32])).collect();
        let out = BatchLogits { values, longest: 3, vocab: 2 };
        let (long, short): (&[u32], &[u32]) = (&[5, 6, 7], &[9]);
        let (values, targets) = predicted(&out, &[long, short]);
        assert_eq!(targets, vec![6, 7], "positions 0 and 1 of the first sequence; none of the second");
        assert_eq!(values, vec![0.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn differences_are_the_largest_and_nan_sticks() {
        assert_eq!(max_abs_diff(&[1.0, -2.0], &[1.5, -1.0]), 1.0);
        assert!(max_abs_diff(&[f32::NAN, 0.0], &[0.0, 3.0]).is_nan());
    }
}
