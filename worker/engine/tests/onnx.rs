//! The ONNX exporter and int8 quantizer on tiny random students, run in the real ONNX Runtime
//! (the library scripts/setup.sh fetched, through `ORT_DYLIB_PATH` or the setup cache).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_onnx::onnx::ModelProto;
use distillery_crds::distillation::{Pooling, QuantizationSpec};
use distillery_crds::manifest::{ArtifactManifest, FP32_MODEL, INT8_MODEL, MANIFEST_FILE};
use distillery_worker::model::encoder::EncoderConfig;
use distillery_worker::onnx::artifact::{EvalSet, export_artifact, quantize_artifact};
use distillery_worker::onnx::export::{ClassifierWeights, export};
use distillery_worker::onnx::quantize::{QuantizeOptions, WORD_EMBEDDINGS, quantizable, quantize};
use distillery_worker::onnx::runtime::{self, OnnxModel};
use distillery_worker::progress::Silent;
use distillery_worker::student::init;
use distillery_worker::train::{self, runner};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn ort() {
    let lib = std::env::var_os("ORT_DYLIB_PATH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| distillery_crds::cache::cache_dir().join("onnxruntime/libonnxruntime.so.1.31.1"));
    runtime::init(Some(&lib)).expect("ONNX Runtime from the setup cache (run scripts/setup.sh)");
}

fn config(embedding_size: Option<usize>) -> EncoderConfig {
    EncoderConfig {
        vocab_size: 60,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 32,
        max_position_embeddings: 24,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_act: "gelu".into(),
        model_type: "bert".into(),
        embedding_size,
    }
}

/// A random classifier with weights of a trained model's scale (not an initializer's ±0.02, under
/// which every logit is near its bias and any export would pass).
fn tiny(config: &EncoderConfig, classes: usize, pooler: bool, seed: u64) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let encoder = init::random_encoder(config, seed, &dev).unwrap();
    let head = init::random_head(config.hidden_size, classes, seed, &dev).unwrap();
    if pooler {
        init::add_pooler(&head, None, config.hidden_size, seed, &dev).unwrap();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Values drawn in name order: the snapshot is a HashMap, whose order differs from run to run.
    let snapshot: BTreeMap<String, Tensor> = runner::snapshot(&[&encoder, &head]).unwrap().into_iter().collect();
    snapshot
        .into_iter()
        .map(|(name, t)| {
            let base = if name.ends_with("LayerNorm.weight") { 1.0 } else { 0.0 };
            let values: Vec<f32> = (0..t.elem_count()).map(|_| base + rng.random_range(-0.5f32..0.5)).collect();
            (name, Tensor::from_vec(values, t.dims(), &dev).unwrap())
        })
        .collect()
}

/// `n` random sequences of 1 to 20 tokens, starting with token 1 (a CLS stand-in).
fn sequences(n: usize, vocab: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(1..=20);
            std::iter::once(1).chain((1..len).map(|_| rng.random_range(2..vocab))).collect()
        })
        .collect()
}

fn candle_logits(
    c: &EncoderConfig,
    tensors: &HashMap<String, Tensor>,
    pooling: Pooling,
    classes: usize,
    ids: &[Vec<u32>],
) -> Vec<Vec<f32>> {
    let vb = candle_nn::VarBuilder::from_tensors(tensors.clone(), candle_core::DType::F32, &Device::Cpu);
    let model = distillery_worker::model::classifier::Classifier::new(c, classes, pooling, vb.clone(), vb).unwrap();
    let all: Vec<usize> = (0..ids.len()).collect();
    train::logits(&model, ids, &all, 8, &Device::Cpu).unwrap()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

fn labels(classes: usize) -> Vec<String> {
    (0..classes).map(|i| format!("class-{i}")).collect()
}

#[test]
fn a_tiny_random_student_round_trips_through_onnx_runtime_with_parity() {
    ort();
    let ids = sequences(200, 60, 7);
    for (pooling, embedding_size) in [(Pooling::Mean, None), (Pooling::Cls, Some(8)), (Pooling::Pooler, None)] {
        let c = config(embedding_size);
        let tensors = tiny(&c, 3, pooling == Pooling::Pooler, 11);
        let names = labels(3);
        let proto = export(&ClassifierWeights { config: &c, tensors: &tensors, pooling, labels: &names }).unwrap();
        let bytes = proto.encode_to_vec();
        // A serialized model decodes back to the same graph.
        assert_eq!(ModelProto::decode(bytes.as_slice()).unwrap(), proto);
        let expected = candle_logits(&c, &tensors, pooling, 3, &ids);
        // Batched by length (little padding) and in request order (much padding): same logits.
        let mut model = OnnxModel::new(&bytes, 1).unwrap();
        let sorted = model.logits(&ids, 16).unwrap();
        let arrival: Vec<Vec<f32>> =
            ids.chunks(16).flat_map(|c| model.run(&c.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap()).collect();
        for got in [&sorted, &arrival] {
            let d = max_diff(got, &expected);
            assert!(d <= 1e-4, "{pooling:?}, embeddings {embedding_size:?}: max |Δlogit| {d}");
            assert_eq!(train::predictions(got), train::predictions(&expected), "{pooling:?}: labels differ");
        }
        let spread = expected.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        assert!(spread > 0.5, "logits {spread} too small for the comparison to mean anything");
    }
}

#[test]
fn the_int8_graph_quantizes_every_dense_weight_but_the_head_and_stays_close_to_fp32() {
    ort();
    let c = config(Some(8));
    let tensors = tiny(&c, 3, false, 5);
    let names = labels(3);
    let fp32 =
        export(&ClassifierWeights { config: &c, tensors: &tensors, pooling: Pooling::Mean, labels: &names }).unwrap();
    let weights = quantizable(&fp32);
    // Projection + 6 per layer (Q, K, V, attention output, intermediate, output) × 2.
    assert_eq!(weights.len(), 13, "{weights:?}");
    assert!(!weights.iter().any(|w| w.starts_with("classifier")), "the head's last step stays fp32");
    let q = quantize(&fp32, &QuantizeOptions::default()).unwrap();
    assert_eq!(q.quantized.len(), 14, "13 dense weights and the embedding table");
    let graph = q.model.graph.as_ref().unwrap();
    let count = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!(count("MatMulInteger"), 13);
    // Q, K and V read one activation: one DynamicQuantizeLinear serves all three.
    assert_eq!(
        count("DynamicQuantizeLinear"),
        1 + 2 * 4,
        "projection + per layer: QKV, attention output, intermediate, output"
    );
    assert_eq!(count("LayerNormalization"), 5, "LayerNorms stay fp32");
    assert!(graph.initializer.iter().any(|t| t.name == "classifier.weight" && t.data_type == 1));
    assert!(!graph.initializer.iter().any(|t| t.name == WORD_EMBEDDINGS), "the fp32 table is gone");

    let ids = sequences(300, 60, 3);
    let fp32_logits = OnnxModel::new(&fp32.encode_to_vec(), 1).unwrap().logits(&ids, 16).unwrap();
    let int8_logits = OnnxModel::new(&q.model.encode_to_vec(), 1).unwrap().logits(&ids, 16).unwrap();
    let spread = fp32_logits.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let d = max_diff(&fp32_logits, &int8_logits);
    assert!(d > 0.0, "int8 logits equal fp32's exactly: the graph was not quantized");
    assert!(d < 0.1 * spread, "int8 drifted: max |Δ| {d} for logits up to {spread}");
    let agree = train::predictions(&fp32_logits)
        .iter()
        .zip(train::predictions(&int8_logits))
        .filter(|(a, b)| **a == *b)
        .count();
    assert!(agree as f64 >= 0.9 * ids.len() as f64, "only {agree} of {} labels agree", ids.len());

    // Keeping a weight in fp32 leaves its MatMul as it was.
    let keep = QuantizeOptions { keep_fp32: [weights[1].clone(), WORD_EMBEDDINGS.to_string()].into() };
    let partial = quantize(&fp32, &keep).unwrap();
    assert_eq!(partial.quantized.len(), 12);
    let g = partial.model.graph.unwrap();
    assert!(g.initializer.iter().any(|t| t.name == weights[1] && t.data_type == 1));
    assert!(g.initializer.iter().any(|t| t.name == WORD_EMBEDDINGS && t.data_type == 1));
}

/// Writes a tiny artifact directory: weights, config and a minimal manifest.
fn write_artifact(dir: &Path, c: &EncoderConfig, tensors: &HashMap<String, Tensor>, classes: usize) {
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
    let mut config = serde_json::to_value(c).unwrap();
    config["id2label"] =
        serde_json::json!((0..classes).map(|i| (i.to_string(), format!("class-{i}"))).collect::<BTreeMap<_, _>>());
    config["distillery"] = serde_json::json!({"pooling": "mean", "maxSequenceLength": 20});
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&ArtifactManifest::default()).unwrap()).unwrap();
}

fn read_manifest(dir: &Path) -> ArtifactManifest {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap()
}

#[test]
fn the_gate_falls_back_to_fp32_under_an_impossible_budget_and_says_why() {
    ort();
    let dir = tempfile::tempdir().unwrap();
    let c = config(None);
    let tensors = tiny(&c, 2, false, 9);
    write_artifact(dir.path(), &c, &tensors, 2);
    let ids = sequences(120, 60, 4);
    // Labels the fp32 model gets all right: int8 cannot beat 100%.
    let labels = train::predictions(&candle_logits(&c, &tensors, Pooling::Mean, 2, &ids));
    let eval = EvalSet { ids, labels };
    let fp32 = export_artifact(dir.path(), &eval, &mut Silent).unwrap();
    assert_eq!(fp32.accuracy, 1.0);
    assert!(fp32.max_abs_logit_diff.unwrap() <= 1e-4);
    assert!(dir.path().join(FP32_MODEL).is_file());

    // A budget that asks int8 to be a point better than a perfect fp32.
    let spec = QuantizationSpec { accuracy_budget: -0.01, speed_check: false, ..Default::default() };
    let outcome = quantize_artifact(dir.path(), &eval, &spec, &mut Silent).unwrap();
    assert_eq!(outcome.verdict.variant(), "fp32");
    let reason = outcome.verdict.reason();
    assert!(reason.contains("over the budget of -1.00 points"), "{reason}");
    assert!(reason.contains("most sensitive layers in fp32"), "the retry with fp32 layers ran: {reason}");
    assert!(!outcome.int8.fp32_layers.is_empty());
    assert_eq!(outcome.int8.passed_gate, Some(false));
    assert!(!dir.path().join(INT8_MODEL).exists(), "an int8 model that failed its gate is never written");
    let m = read_manifest(dir.path());
    assert_eq!(m.served_variant.as_deref(), Some("fp32"));
    assert_eq!(m.served_variant_reason.as_deref(), Some(reason));
    assert!(m.files.contains_key(FP32_MODEL) && !m.files.contains_key(INT8_MODEL));
    assert_eq!(m.variants["int8"].file, None);

    // The default budget passes the same model, and int8 is written and recorded.
    let spec = QuantizationSpec { speed_check: false, ..Default::default() };
    let outcome = quantize_artifact(dir.path(), &eval, &spec, &mut Silent).unwrap();
    assert_eq!(outcome.verdict.variant(), "int8", "{}", outcome.verdict.reason());
    let m = read_manifest(dir.path());
    assert_eq!(m.served_variant.as_deref(), Some("int8"));
    let written = std::fs::read(dir.path().join(INT8_MODEL)).unwrap();
    assert_eq!(m.files[INT8_MODEL].sha256, distillery_worker::store::sha256(&written));
    assert_eq!(m.variants["int8"].sha256, m.files[INT8_MODEL].sha256);
    assert!(m.variants["int8"].size_bytes < m.variants["fp32"].size_bytes);
}
