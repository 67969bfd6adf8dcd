//! The causal-LM decoder's ONNX export on tiny random students, run in the real ONNX Runtime (the
//! library scripts/setup.sh fetched, through `ORT_DYLIB_PATH` or the setup cache) and compared
//! with candle at every position; and its int8 version through the gate.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_onnx::onnx::ModelProto;
use distillery_crds::distillation::QuantizationSpec;
use distillery_crds::manifest::{ArtifactManifest, FP32_MODEL, INT8_MODEL, MANIFEST_FILE};
use distillery_worker::model::decoder::{Decoder, DecoderConfig, StudentShape};
use distillery_worker::onnx::OnnxError;
use distillery_worker::onnx::decoder_export::{
    DecoderWeights, EMBED_TOKENS, NOT_SERVED, OnnxDecoder, check_parity, export_decoder, export_decoder_artifact,
};
use distillery_worker::onnx::decoder_quantize::{compare_variants, held_out_figures, quantize_decoder_artifact};
use distillery_worker::onnx::graph::f32_values;
use distillery_worker::onnx::quantize::{QuantizeOptions, quantize};
use distillery_worker::onnx::runtime;
use distillery_worker::progress::Silent;
use distillery_worker::student::decoder::random_decoder;
use distillery_worker::train::runner;
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn ort() {
    let lib = std::env::var_os("ORT_DYLIB_PATH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| distillery_crds::cache::cache_dir().join("onnxruntime/libonnxruntime.so.1.31.1"));
    runtime::init(Some(&lib)).expect("ONNX Runtime from the setup cache (run scripts/setup.sh)");
}

/// Four query heads of width 8 over `kv_heads` key/value heads; 24 positions.
fn config(tied: bool, kv_heads: usize) -> DecoderConfig {
    DecoderConfig {
        tie_word_embeddings: tied,
        max_position_embeddings: 24,
        ..DecoderConfig::student(&StudentShape {
            layers: 2,
            hidden: 32,
            heads: 4,
            kv_heads,
            intermediate: 48,
            vocab: 60,
        })
    }
}

/// A random decoder with weights of a trained model's scale (not an initializer's ±0.02, under
/// which every logit is near 0 and any export would pass), norms around 1 but not 1.
fn tiny(config: &DecoderConfig, seed: u64) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let map = random_decoder(config, seed, &dev).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Values drawn in name order: the snapshot is a HashMap, whose order differs from run to run.
    let snapshot: BTreeMap<String, Tensor> = runner::snapshot(&[&map]).unwrap().into_iter().collect();
    snapshot
        .into_iter()
        .map(|(name, t)| {
            let base = if name.ends_with("norm.weight") { 1.0 } else { 0.0 };
            let values: Vec<f32> = (0..t.elem_count()).map(|_| base + rng.random_range(-0.5f32..0.5)).collect();
            (name, Tensor::from_vec(values, t.dims(), &dev).unwrap())
        })
        .collect()
}

fn candle(config: &DecoderConfig, tensors: &HashMap<String, Tensor>) -> Decoder {
    Decoder::new(config, VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu)).unwrap()
}

/// `n` random sequences of 1 to `max` tokens.
fn sequences(n: usize, vocab: u32, max: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| (0..rng.random_range(1..=max)).map(|_| rng.random_range(0..vocab)).collect()).collect()
}

fn bytes(c: &DecoderConfig, tensors: &HashMap<String, Tensor>) -> Vec<u8> {
    export_decoder(&DecoderWeights { config: c, tensors }).unwrap().encode_to_vec()
}

#[test]
fn a_tiny_random_decoder_matches_candle_at_every_position_in_onnx_runtime() {
    ort();
    let ids = sequences(60, 60, 24, 7);
    let tokens: usize = ids.iter().map(Vec::len).sum();
    // Grouped (1 and 2 key/value heads for 4 query heads) and not; tied and untied.
    for (tied, kv) in [(true, 1), (true, 2), (false, 4)] {
        let c = config(tied, kv);
        let tensors = tiny(&c, 11);
        let proto = export_decoder(&DecoderWeights { config: &c, tensors: &tensors }).unwrap();
        let bytes = proto.encode_to_vec();
        assert_eq!(ModelProto::decode(bytes.as_slice()).unwrap(), proto, "a serialized model decodes back");
        let decoder = candle(&c, &tensors);
        let mut model = OnnxDecoder::new(&bytes, 1).unwrap();
        // One at a time (no padding) and eight at a time (padded on the right to the longest).
        for batch in [1, 8] {
            let p = check_parity(&mut model, &decoder, &ids, batch).unwrap();
            assert!(p.max_diff <= 1e-4, "tied {tied}, {kv} kv heads, batch {batch}: {p:?}");
            assert_eq!((p.disagreements, p.positions, p.sequences), (0, tokens, ids.len()));
            assert!((0.0..=1.0).contains(&p.top1));
        }
        // The comparison means something: logits are far from 0 and differ between positions.
        let one = Tensor::new(ids[0].as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let reference = decoder.forward(&one, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let spread = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(spread > 1.0, "logits up to {spread}: too small for the comparison to mean anything");
        // Padding after a sequence changes none of its logits in ONNX Runtime either.
        let short = &ids[0][..ids[0].len().min(5)];
        let long = [3u32; 20];
        let alone = model.run(&[short]).unwrap();
        let padded = model.run(&[short, long.as_slice()]).unwrap();
        for pos in 0..short.len() {
            let d = alone.at(0, pos).iter().zip(padded.at(0, pos)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(d <= 1e-5, "position {pos}: padding moved a logit by {d}");
        }
    }
}

#[test]
fn a_graph_that_computes_something_else_is_refused_with_its_figures() {
    ort();
    let c = config(true, 2);
    let tensors = tiny(&c, 5);
    let mut proto = export_decoder(&DecoderWeights { config: &c, tensors: &tensors }).unwrap();
    // The final norm's weights 1% larger: every logit 1% larger.
    let graph = proto.graph.as_mut().unwrap();
    let norm = graph.initializer.iter_mut().find(|t| t.name == "model.norm.weight").unwrap();
    let scaled: Vec<f32> = f32_values(norm).unwrap().iter().map(|v| v * 1.01).collect();
    norm.raw_data = scaled.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut model = OnnxDecoder::new(&proto.encode_to_vec(), 1).unwrap();
    let ids = sequences(10, 60, 24, 3);
    let err = check_parity(&mut model, &candle(&c, &tensors), &ids, 4).unwrap_err();
    let message = err.to_string();
    let OnnxError::DecoderParity { max_diff, positions, sequences, .. } = err else { panic!("{message}") };
    assert!(max_diff > 1e-4, "{message}");
    assert_eq!((positions, sequences), (ids.iter().map(Vec::len).sum::<usize>(), 10));
    assert!(message.contains("model.onnx was not written"), "{message}");
    // Nothing to compare is no pass either.
    let mut model = OnnxDecoder::new(&bytes(&c, &tensors), 1).unwrap();
    let err = check_parity(&mut model, &candle(&c, &tensors), &[], 4).unwrap_err();
    assert!(matches!(err, OnnxError::DecoderParity { positions: 0, .. }), "{err}");
}

/// Writes a tiny causal-LM artifact directory: weights, config (as the pipeline writes it) and a
/// minimal manifest.
fn write_artifact(dir: &Path, c: &DecoderConfig, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
    let mut config = serde_json::to_value(c).unwrap();
    config["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    config["torch_dtype"] = serde_json::json!("float32");
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&ArtifactManifest::default()).unwrap()).unwrap();
}

#[test]
fn exporting_an_artifact_writes_model_onnx_and_records_it_unserved() {
    ort();
    let dir = tempfile::tempdir().unwrap();
    let c = config(true, 2);
    let tensors = tiny(&c, 9);
    write_artifact(dir.path(), &c, &tensors);
    let held_out = sequences(12, 60, 24, 4);
    let v = export_decoder_artifact(dir.path(), &held_out, &mut Silent).unwrap();
    assert!(v.max_abs_logit_diff.unwrap() <= 1e-4, "{v:?}");
    assert_eq!(v.label_agreement, Some(1.0));
    assert!(v.latency_ms_batch1 > 0.0 && (0.0..=1.0).contains(&v.accuracy));
    let written = std::fs::read(dir.path().join(FP32_MODEL)).unwrap();
    assert_eq!(v.sha256, distillery_worker::store::sha256(&written));
    let m: ArtifactManifest = serde_json::from_slice(&std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap()).unwrap();
    let recorded = &m.variants["fp32"];
    assert_eq!((recorded.file.as_deref(), recorded.sha256.as_str()), (Some(FP32_MODEL), v.sha256.as_str()));
    assert_eq!(m.files[FP32_MODEL].sha256, v.sha256);
    assert_eq!(m.served_variant, None, "the server runs classifiers only");
    assert_eq!(m.served_variant_reason.as_deref(), Some(NOT_SERVED));

    // A failed check writes nothing.
    let empty = tempfile::tempdir().unwrap();
    write_artifact(empty.path(), &c, &tensors);
    assert!(export_decoder_artifact(empty.path(), &[], &mut Silent).is_err());
    assert!(!empty.path().join(FP32_MODEL).exists());
}

#[test]
fn int8_keeps_the_whole_token_table_and_runs_in_onnx_runtime_close_to_fp32() {
    ort();
    let c = config(true, 2);
    let tensors = tiny(&c, 13);
    let proto = export_decoder(&DecoderWeights { config: &c, tensors: &tensors }).unwrap();
    let q = quantize(&proto, &QuantizeOptions::default()).unwrap();
    assert!(q.quantized.iter().any(|w| w == EMBED_TOKENS), "{:?}", q.quantized);
    // The lookup reads the full int8 table (every token, every dimension) by input_ids; the tied
    // head reads the same table, transposed.
    let g = q.model.graph.as_ref().unwrap();
    let table = g.initializer.iter().find(|t| t.name == format!("{EMBED_TOKENS}.int8")).unwrap();
    assert_eq!(table.dims, vec![60, 32]);
    assert_eq!(table.raw_data.len(), 60 * 32);
    let gather = g.node.iter().find(|n| n.op_type == "Gather" && n.input[0] == table.name).unwrap();
    assert_eq!(gather.input[1], "input_ids");
    assert!(g.node.iter().any(|n| n.op_type == "Transpose" && n.input[0] == table.name));
    let (fp32_bytes, int8_bytes) = (proto.encode_to_vec(), q.model.encode_to_vec());
    assert!(int8_bytes.len() < fp32_bytes.len(), "{} ≥ {} bytes", int8_bytes.len(), fp32_bytes.len());

    // It runs, every token id included, and stays close to fp32.
    let mut ids = sequences(20, 60, 24, 5);
    ids.push((0..24).map(|t| t * 59 / 23).collect());
    let mut fp32 = OnnxDecoder::new(&fp32_bytes, 1).unwrap();
    let mut int8 = OnnxDecoder::new(&int8_bytes, 1).unwrap();
    let a = compare_variants(&mut fp32, &mut int8, &ids).unwrap();
    assert_eq!(a.positions, ids.iter().map(Vec::len).sum::<usize>());
    let reference = fp32.run(&[ids[0].as_slice()]).unwrap().values;
    let spread = reference.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    assert!(a.max_abs_diff > 0.0 && a.max_abs_diff < spread / 2.0, "{a:?}, logits up to {spread}");
    assert!(a.argmax_agreement >= 0.5, "{a:?}");
    let (f, i) = (held_out_figures(&mut fp32, &ids, 4).unwrap(), held_out_figures(&mut int8, &ids, 1).unwrap());
    assert_eq!(f.tokens, i.tokens);
    assert!(i.perplexity.is_finite() && i.perplexity > 1.0, "{i:?}");
    assert!((0.0..=1.0).contains(&i.top1));
    assert!(f.perplexity != i.perplexity, "int8 moves the logits, so the perplexity: {f:?} {i:?}");
}

/// A tiny decoder artifact written and exported, with its held-out sequences.
fn exported(seed: u64) -> (tempfile::TempDir, Vec<Vec<u32>>) {
    let dir = tempfile::tempdir().unwrap();
    let c = config(true, 2);
    let tensors = tiny(&c, seed);
    write_artifact(dir.path(), &c, &tensors);
    let held_out = sequences(12, 60, 24, seed);
    export_decoder_artifact(dir.path(), &held_out, &mut Silent).unwrap();
    (dir, held_out)
}

fn read_manifest(dir: &Path) -> ArtifactManifest {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs()
}

#[test]
fn int8_within_generous_budgets_is_written_and_recorded_unserved() {
    ort();
    let (dir, held_out) = exported(17);
    let spec = QuantizationSpec {
        perplexity_budget: Some(1.0),
        accuracy_budget: 1.0,
        speed_check: false,
        ..Default::default()
    };
    let out = quantize_decoder_artifact(dir.path(), &held_out, &spec, &mut Silent).unwrap();
    let reason = out.verdict.reason().to_string();
    assert!(out.verdict.passed() && reason.ends_with("speed check off"), "{reason}");
    let (p32, p8) = (out.fp32.perplexity.unwrap(), out.int8.perplexity.unwrap());
    assert!(p8.is_finite() && p8 != p32 && p8 / p32 - 1.0 <= 1.0, "fp32 {p32}, int8 {p8}");
    assert!(out.int8.fp32_layers.is_empty(), "within budget at once: no retry");

    let written = std::fs::read(dir.path().join(INT8_MODEL)).unwrap();
    let m = read_manifest(dir.path());
    assert_eq!(m.files[INT8_MODEL].sha256, distillery_worker::store::sha256(&written));
    let v = &m.variants["int8"];
    assert_eq!((v.file.as_deref(), v.passed_gate), (Some(INT8_MODEL), Some(true)));
    assert_eq!((v.sha256.as_str(), v.size_bytes), (m.files[INT8_MODEL].sha256.as_str(), written.len() as u64));
    assert!(v.size_bytes < m.variants["fp32"].size_bytes);
    assert!(close(v.perplexity.unwrap(), p8) && close(m.variants["fp32"].perplexity.unwrap(), p32));
    assert!((0.0..=1.0).contains(&v.accuracy) && (0.0..=1.0).contains(&v.label_agreement.unwrap()));
    assert!(v.max_abs_logit_diff.unwrap() > 0.0 && v.latency_ms_batch1 > 0.0 && v.latency_ms_batch32.is_none());
    assert_eq!(v.gate_reason.as_deref(), Some(reason.as_str()));
    assert_eq!(m.served_variant, None, "the server runs classifiers only");
    assert_eq!(m.served_variant_reason.as_deref(), Some(NOT_SERVED));
    assert!(m.files.contains_key(FP32_MODEL));

    // With the speed check, the reason gives the speed per sequence whichever way it went (a tiny
    // graph need not be faster in int8), and the file is there only when int8 passed.
    let timed = QuantizationSpec { speed_check: true, ..spec };
    let out = quantize_decoder_artifact(dir.path(), &held_out, &timed, &mut Silent).unwrap();
    assert!(out.verdict.reason().contains("× fp32's speed per "), "{}", out.verdict.reason());
    assert_eq!(dir.path().join(INT8_MODEL).exists(), out.verdict.passed());
}

#[test]
fn int8_over_its_perplexity_budget_is_refused_and_only_fp32_is_written() {
    ort();
    let (dir, held_out) = exported(19);
    // Budget 0: any rise refuses int8 (the verdict follows the sign of the rise; that int8 moves
    // the perplexity at all is checked).
    let zero = QuantizationSpec {
        perplexity_budget: Some(0.0),
        accuracy_budget: 1.0,
        speed_check: false,
        ..Default::default()
    };
    let out = quantize_decoder_artifact(dir.path(), &held_out, &zero, &mut Silent).unwrap();
    let (p32, p8) = (out.fp32.perplexity.unwrap(), out.int8.perplexity.unwrap());
    assert!(p8 != p32, "int8 must move the perplexity for this test to mean anything: {p8}");
    assert_eq!(out.verdict.passed(), p8 < p32, "fp32 {p32}, int8 {p8}: {}", out.verdict.reason());

    // A budget that asks int8 for a tenth of fp32's perplexity: refused, even with the most
    // sensitive layers kept in fp32, and nothing but fp32 is left.
    let impossible = QuantizationSpec { perplexity_budget: Some(-0.9), ..zero };
    let out = quantize_decoder_artifact(dir.path(), &held_out, &impossible, &mut Silent).unwrap();
    let reason = out.verdict.reason();
    assert!(!out.verdict.passed());
    assert!(
        reason.starts_with("int8 held-out perplexity ") && reason.ends_with("over the budget of -90.00%"),
        "{reason}"
    );
    assert!(reason.contains("most sensitive layers in fp32") && !out.int8.fp32_layers.is_empty(), "{reason}");
    assert!(!dir.path().join(INT8_MODEL).exists(), "a refused int8 is never written, an earlier one is removed");
    let m = read_manifest(dir.path());
    assert!(m.files.contains_key(FP32_MODEL) && !m.files.contains_key(INT8_MODEL));
    let v = &m.variants["int8"];
    assert_eq!((v.file.as_deref(), v.passed_gate), (None, Some(false)));
    assert_eq!(v.gate_reason.as_deref(), Some(reason));
    assert_eq!(m.served_variant, None);
    assert_eq!(m.variants["fp32"].file.as_deref(), Some(FP32_MODEL));
}
