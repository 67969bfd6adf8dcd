//! Dynamic int8 quantization of an exported graph, as ONNX Runtime's CPU kernels run it fastest:
//!
//! - every `MatMul` by a weight (the head's last step excepted) gets int8 weights, one symmetric
//!   scale per output channel (zero point 0, range ±127), and its input quantized at run time to
//!   **u8** with a per-tensor scale and zero point (`DynamicQuantizeLinear`), then
//!   `MatMulInteger` (u8 × s8 → i32) and one multiply by `input scale × channel scales`. ONNX
//!   Runtime fuses that pattern into one kernel. Unsigned activations and signed weights are the
//!   pairing its x86 kernels expect; signed activations with per-tensor zero points are the
//!   signedness choice users report collapsing accuracy;
//! - the word-embedding table becomes int8 with one scale per row, dequantized after the `Gather`
//!   (rows of rare and common tokens differ widely in norm);
//! - LayerNorm, Softmax, GELU, attention products and the classifier stay fp32.
//!
//! The math ([`quantize_columns`], [`quantize_rows`], [`dynamic_quantize_u8`]) is pure and tested
//! against hand-computed values; [`quantize`] rewrites the graph.

use std::collections::{BTreeSet, HashMap};

use candle_onnx::onnx::tensor_proto::DataType;
use candle_onnx::onnx::{GraphProto, ModelProto, NodeProto};

use super::export::HEAD_WEIGHT;
use super::graph::{Attr, GraphBuilder, f32_values};

/// The largest int8 magnitude used: the range is symmetric, ±127 (−128 is never produced).
pub const QMAX: f32 = 127.0;
/// The word-embedding table's initializer.
pub const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

/// int8 values and their scales (one per channel): `value ≈ q · scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct PerChannel {
    /// Quantized values, in the layout of the input.
    pub values: Vec<i8>,
    /// One scale per channel.
    pub scales: Vec<f32>,
}

/// The symmetric scale for values whose largest magnitude is `absmax` (1 for an all-zero
/// channel, which then quantizes to zeros).
pub fn symmetric_scale(absmax: f32) -> f32 {
    if absmax > 0.0 { absmax / QMAX } else { 1.0 }
}

/// `round(v / scale)`, ties to even (as ONNX's QuantizeLinear), saturated to ±127.
pub fn quantize_value(v: f32, scale: f32) -> i8 {
    (v / scale).round_ties_even().clamp(-QMAX, QMAX) as i8
}

/// Quantizes a row-major `(rows, cols)` matrix per column: for a `MatMul` weight `(in, out)`,
/// one scale per output channel.
pub fn quantize_columns(w: &[f32], rows: usize, cols: usize) -> PerChannel {
    assert_eq!(w.len(), rows * cols, "a {rows}×{cols} matrix");
    let mut absmax = vec![0f32; cols];
    for row in w.chunks_exact(cols) {
        for (m, v) in absmax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    let scales: Vec<f32> = absmax.into_iter().map(symmetric_scale).collect();
    let values = w.iter().enumerate().map(|(i, &v)| quantize_value(v, scales[i % cols])).collect();
    PerChannel { values, scales }
}

/// Quantizes a row-major `(rows, cols)` matrix per row: for an embedding table, one scale per
/// token.
pub fn quantize_rows(w: &[f32], rows: usize, cols: usize) -> PerChannel {
    assert_eq!(w.len(), rows * cols, "a {rows}×{cols} matrix");
    let mut values = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(rows);
    for row in w.chunks_exact(cols) {
        let scale = symmetric_scale(row.iter().fold(0f32, |m, v| m.max(v.abs())));
        values.extend(row.iter().map(|&v| quantize_value(v, scale)));
        scales.push(scale);
    }
    PerChannel { values, scales }
}

/// What ONNX's `DynamicQuantizeLinear` computes for an activation at run time: u8 values, a
/// per-tensor scale `(max(0, max x) − min(0, min x)) / 255` and zero point
/// `round(−min(0, min x) / scale)`, so that 0 is exactly representable. Reference for the tests;
/// ONNX Runtime does this inside its kernels.
pub fn dynamic_quantize_u8(x: &[f32]) -> (Vec<u8>, f32, u8) {
    let lo = x.iter().fold(0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(0f32, |m, &v| m.max(v));
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0);
    let values = x.iter().map(|&v| ((v / scale).round_ties_even() + zero_point).clamp(0.0, 255.0) as u8).collect();
    (values, scale, zero_point as u8)
}

/// Which parts to quantize.
#[derive(Clone, Debug, Default)]
pub struct QuantizeOptions {
    /// Weights (initializer names) to leave in fp32: the most sensitive layers, when the gate
    /// asks for them ([`WORD_EMBEDDINGS`] keeps the embedding table fp32).
    pub keep_fp32: BTreeSet<String>,
}

/// The quantized model and what was quantized.
pub struct Quantized {
    /// The int8 model.
    pub model: ModelProto,
    /// The weights now int8, in graph order.
    pub quantized: Vec<String>,
}

/// Why a graph could not be quantized.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// The model has no graph, or a weight is not stored as fp32 raw data.
    #[error("not a graph this quantizer wrote or can read: {0}")]
    Unsupported(String),
}

/// The weights of `model` that [`quantize`] makes int8 by default: every 2-D fp32 initializer a
/// `MatMul` multiplies by, except the classifier's.
pub fn quantizable(model: &ModelProto) -> Vec<String> {
    let Some(graph) = &model.graph else { return vec![] };
    let matrices: HashMap<&str, usize> = graph
        .initializer
        .iter()
        .filter(|t| t.dims.len() == 2 && t.data_type == DataType::Float as i32)
        .map(|t| (t.name.as_str(), t.dims.len()))
        .collect();
    graph
        .node
        .iter()
        .filter(|n| n.op_type == "MatMul" && n.input.len() == 2)
        .map(|n| n.input[1].as_str())
        .filter(|w| matrices.contains_key(w) && *w != HEAD_WEIGHT)
        .map(str::to_string)
        .collect()
}

/// Rewrites `model` with int8 weights (see the module documentation).
pub fn quantize(model: &ModelProto, options: &QuantizeOptions) -> Result<Quantized, QuantizeError> {
    let graph = model.graph.as_ref().ok_or_else(|| QuantizeError::Unsupported("no graph".into()))?;
    let targets: BTreeSet<String> = quantizable(model).into_iter().filter(|w| !options.keep_fp32.contains(w)).collect();
    let initializers: HashMap<&str, usize> =
        graph.initializer.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
    let matrix = |name: &str| -> Result<(Vec<f32>, usize, usize), QuantizeError> {
        let t = &graph.initializer[initializers[name]];
        let values = f32_values(t).ok_or_else(|| QuantizeError::Unsupported(format!("{name} is not fp32 raw data")))?;
        Ok((values, t.dims[0] as usize, t.dims[1] as usize))
    };
    let mut b = GraphBuilder::from_graph(GraphProto { node: vec![], ..graph.clone() });
    let mut replaced = BTreeSet::new();
    let mut quantized = vec![];
    // One DynamicQuantizeLinear per activation, shared by the MatMuls that read it (Q, K, V).
    let mut activations: HashMap<String, [String; 3]> = HashMap::new();
    let embed = !options.keep_fp32.contains(WORD_EMBEDDINGS) && initializers.contains_key(WORD_EMBEDDINGS);
    for node in &graph.node {
        let weight = node.input.get(1).filter(|w| node.op_type == "MatMul" && targets.contains(w.as_str()));
        if let Some(w) = weight {
            let (values, rows, cols) = matrix(w)?;
            let q = quantize_columns(&values, rows, cols);
            let p = format!("{w}/int8");
            let wq = b.i8(&format!("{w}.int8"), &[rows, cols], &q.values);
            let ws = b.f32(&format!("{w}.scale"), &[cols], &q.scales);
            let x = &node.input[0];
            let [xq, xs, xz] = activations
                .entry(x.clone())
                .or_insert_with(|| {
                    let outs = [b.fresh(x, "u8"), b.fresh(x, "scale"), b.fresh(x, "zero_point")];
                    b.node_into(x, "DynamicQuantizeLinear", &[x], &[&outs[0], &outs[1], &outs[2]], vec![]);
                    outs
                })
                .clone();
            let acc = b.node(&p, "MatMulInteger", &[&xq, &wq, &xz], vec![]);
            let acc = b.node(&p, "Cast", &[&acc], vec![("to", Attr::Int(DataType::Float as i64))]);
            let scale = b.node(&p, "Mul", &[&xs, &ws], vec![]);
            b.node_into(&p, "Mul", &[&acc, &scale], &[&node.output[0]], vec![]);
            replaced.insert(w.clone());
            quantized.push(w.clone());
        } else if embed && node.op_type == "Gather" && node.input.first().is_some_and(|t| t == WORD_EMBEDDINGS) {
            let (values, rows, cols) = matrix(WORD_EMBEDDINGS)?;
            let q = quantize_rows(&values, rows, cols);
            let p = format!("{WORD_EMBEDDINGS}/int8");
            let tq = b.i8(&format!("{WORD_EMBEDDINGS}.int8"), &[rows, cols], &q.values);
            let ts = b.f32(&format!("{WORD_EMBEDDINGS}.scale"), &[rows], &q.scales);
            let ids = &node.input[1];
            let rows_q = b.node(&p, "Gather", &[&tq, ids], vec![]);
            let rows_f = b.node(&p, "Cast", &[&rows_q], vec![("to", Attr::Int(DataType::Float as i64))]);
            let scales = b.node(&p, "Gather", &[&ts, ids], vec![]);
            let last = b.i64(&format!("{WORD_EMBEDDINGS}.last_axis"), &[1], &[-1]);
            let scales = b.node(&p, "Unsqueeze", &[&scales, &last], vec![]);
            b.node_into(&p, "Mul", &[&rows_f, &scales], &[&node.output[0]], vec![]);
            replaced.insert(WORD_EMBEDDINGS.to_string());
            quantized.push(WORD_EMBEDDINGS.to_string());
        } else {
            b.graph.node.push(NodeProto { ..node.clone() });
        }
    }
    b.graph.initializer.retain(|t| !replaced.contains(&t.name));
    let out = ModelProto { graph: Some(b.graph), ..model.clone() };
    Ok(Quantized { model: out, quantized })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_scales_and_values_match_hand_computed_ones() {
        // W (in 2, out 3), row-major. Column maxima |·|: 31.75, 0.5, 0 (an all-zero channel).
        let w = [0.375, -0.5, 0.0, -31.75, -0.125, 0.0];
        let q = quantize_columns(&w, 2, 3);
        assert_eq!(q.scales, vec![0.25, 0.5 / 127.0, 1.0], "31.75 / 127 = 0.25; an all-zero channel keeps scale 1");
        // 0.375 / 0.25 = 1.5 → 2 (ties to even); −0.5 → −127; −31.75 / 0.25 = −127;
        // −0.125 / (0.5 / 127) = −31.75 → −32.
        assert_eq!(q.values, vec![2, -127, 0, -127, -32, 0]);
        // Every value comes back within half a step of its channel's scale.
        for (i, &v) in w.iter().enumerate() {
            let back = q.values[i] as f32 * q.scales[i % 3];
            assert!((back - v).abs() <= q.scales[i % 3] / 2.0 + 1e-7, "{v} -> {back}");
        }
    }

    #[test]
    fn symmetric_range_never_produces_minus_128() {
        assert_eq!(quantize_value(-1.0, 1.0 / 127.0), -127);
        assert_eq!(quantize_value(-1.01, 1.0 / 127.0), -127, "saturates");
        assert_eq!(quantize_value(0.5, 1.0), 0, "0.5 ties to even: 0");
        assert_eq!(quantize_value(1.5, 1.0), 2, "1.5 ties to even: 2");
    }

    #[test]
    fn per_row_quantization_gives_each_row_its_own_scale() {
        // Rows with maxima 0.01 and 10: one shared scale would zero the first row.
        let w = [0.01, -0.004, 10.0, 2.5];
        let q = quantize_rows(&w, 2, 2);
        assert_eq!(q.scales, vec![0.01 / 127.0, 10.0 / 127.0]);
        // −0.004 / (0.01 / 127) = −50.8 → −51; 2.5 / (10 / 127) = 31.75 → 32.
        assert_eq!(q.values, vec![127, -51, 127, 32]);
    }

    #[test]
    fn dynamic_activation_quantization_matches_the_onnx_definition() {
        // ONNX DynamicQuantizeLinear example: x = [0, 2, −3, −2.5, 1.34, 0.5]:
        // scale = (2 − (−3)) / 255 = 0.019607844, zero point = round(3 / scale) = 153,
        // y = [153, 255, 0, 26, 221, 179].
        let (y, scale, zp) = dynamic_quantize_u8(&[0.0, 2.0, -3.0, -2.5, 1.34, 0.5]);
        assert!((scale - 0.019_607_844).abs() < 1e-8);
        assert_eq!(zp, 153);
        assert_eq!(y, vec![153, 255, 0, 26, 221, 179]);
        // All-positive input: the range still includes 0, so the zero point is 0.
        let (y, scale, zp) = dynamic_quantize_u8(&[1.0, 2.55]);
        assert_eq!(zp, 0);
        assert!((scale - 0.01).abs() < 1e-8);
        assert_eq!(y, vec![100, 255]);
    }
}
