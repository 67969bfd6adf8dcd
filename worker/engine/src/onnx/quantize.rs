//! Dynamic int8 quantization of an exported graph, as ONNX Runtime's CPU kernels run it fastest:
//!
//! - every `MatMul` by a weight (the head's last step excepted) gets int8 weights, one symmetric
//!   scale per output channel (zero point 0, range ±127), and its input quantized at run time to
//!   **u8** with a per-tensor scale and zero point (`DynamicQuantizeLinear`), then
//!   `MatMulInteger` (u8 × s8 → i32) and one multiply by `input scale × channel scales`. ONNX
//!   Runtime fuses that pattern into one kernel. Unsigned activations and signed weights are the
//!   pairing its x86 kernels expect; signed activations with per-tensor zero points are the
//!   signedness choice users report collapsing accuracy;
//! - the embedding table ([`EMBEDDING_TABLES`]: the classifier's word embeddings, a causal-LM
//!   student's token embeddings) becomes int8 with one scale per row, dequantized after the
//!   `Gather` (rows of rare and common tokens differ widely in norm);
//! - a causal-LM student's output layer tied to that table (`MatMul` by `Transpose` of it) reads
//!   the **same** int8 table: one scale per row of the table is one scale per output channel of
//!   its transpose, so the head is quantized exactly as a projection is (`MatMulInteger` by the
//!   transposed int8 table, times `input scale × row scales`) and the file holds the table once,
//!   in int8 — `vocab × hidden` bytes plus `4 × vocab` of scales instead of `4 × vocab × hidden`.
//!   ONNX Runtime folds the constant `Transpose` when it loads the model, so the `(hidden,
//!   vocab)` int8 copy exists in memory only. A table read any other way stays fp32 whole
//!   ([`table_uses`]);
//! - LayerNorm, RMSNorm, Softmax, GELU, SiLU, attention products and the classifier stay fp32.
//!
//! The math ([`quantize_columns`], [`quantize_rows`], [`dynamic_quantize_u8`]) is pure and tested
//! against hand-computed values; [`quantize`] rewrites the graph.

use std::collections::{BTreeSet, HashMap};

use candle_onnx::onnx::tensor_proto::DataType;
use candle_onnx::onnx::{GraphProto, ModelProto, NodeProto};

use super::decoder_export::EMBED_TOKENS;
use super::export::HEAD_WEIGHT;
use super::graph::{Attr, GraphBuilder, f32_values};

/// The largest int8 magnitude used: the range is symmetric, ±127 (−128 is never produced).
pub const QMAX: f32 = 127.0;
/// The word-embedding table's initializer.
pub const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";
/// The embedding tables quantized per row: the classifier's word embeddings and a causal-LM
/// student's token embeddings (its output layer's weight too, when tied).
pub const EMBEDDING_TABLES: [&str; 2] = [WORD_EMBEDDINGS, EMBED_TOKENS];

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
    /// asks for them (an [`EMBEDDING_TABLES`] name keeps that table fp32, for its lookup and its
    /// tied output layer alike).
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

/// The weights of `model` that [`quantize`] makes int8 per output channel by default: every 2-D
/// fp32 initializer a `MatMul` multiplies by, except the classifier's. (Embedding tables are
/// quantized per row besides, see [`table_uses`].)
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

/// How an embedding table is read in a graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableUses {
    /// `Gather`s of its rows (the lookup).
    pub gathers: usize,
    /// Outputs of `Transpose`s of it to `(hidden, vocab)` that only `MatMul`s read, as their
    /// weight: a tied output layer.
    pub tied_heads: Vec<String>,
}

/// Every `(node, input slot)` reading `value`.
fn readers<'g>(graph: &'g GraphProto, value: &str) -> Vec<(&'g NodeProto, usize)> {
    graph
        .node
        .iter()
        .flat_map(move |n| n.input.iter().enumerate().filter(move |(_, i)| *i == value).map(move |(k, _)| (n, k)))
        .collect()
}

/// A `Gather` along axis 0: a lookup of rows.
fn gathers_rows(node: &NodeProto) -> bool {
    node.op_type == "Gather" && !node.attribute.iter().any(|a| a.name == "axis" && a.i != 0)
}

/// A 2-D `Transpose` (`perm [1, 0]`).
fn transposes_2d(node: &NodeProto) -> bool {
    node.op_type == "Transpose"
        && node.output.len() == 1
        && node.attribute.iter().any(|a| a.name == "perm" && a.ints == [1, 0])
}

/// How `table` is read in `graph`, when every reader is one [`quantize`] can rewrite with a
/// per-row int8 table: a `Gather` of its rows, or a 2-D `Transpose` that only `MatMul`s multiply
/// by (a tied output layer). `None` when something else reads it, or nothing does: the table
/// then stays fp32 whole, so the lookup and the head never disagree about it.
pub fn table_uses(graph: &GraphProto, table: &str) -> Option<TableUses> {
    let mut uses = TableUses::default();
    for (node, slot) in readers(graph, table) {
        if slot == 0 && gathers_rows(node) {
            uses.gathers += 1;
        } else if slot == 0
            && transposes_2d(node)
            && readers(graph, &node.output[0]).iter().all(|(n, k)| n.op_type == "MatMul" && *k == 1)
        {
            uses.tied_heads.push(node.output[0].clone());
        } else {
            return None;
        }
    }
    (uses.gathers > 0 || !uses.tied_heads.is_empty()).then_some(uses)
}

/// A table's int8 initializers: values, one scale per row, and the `-1` axis its gathered scales
/// are unsqueezed on.
#[derive(Clone)]
struct TableInt8 {
    values: String,
    scales: String,
    last_axis: String,
}

/// What a node of the fp32 graph becomes.
enum Rewrite<'a> {
    /// `MatMul` by a weight quantized per output channel.
    Weight(&'a str),
    /// `MatMul` by the transpose of a quantized table (the tied output layer).
    TiedHead(&'a str),
    /// `Gather` of a quantized table's rows.
    Lookup(&'a str),
    /// The `Transpose` of a quantized table: now of its int8 values.
    TableTranspose(&'a str),
    /// Copied as it is.
    Keep,
}

/// The int8 graph under construction.
struct Rewriter<'g> {
    source: &'g GraphProto,
    index: HashMap<&'g str, usize>,
    b: GraphBuilder,
    /// One DynamicQuantizeLinear per activation, shared by the MatMuls that read it (Q, K, V).
    activations: HashMap<String, [String; 3]>,
    tables: HashMap<String, TableInt8>,
    replaced: BTreeSet<String>,
    quantized: Vec<String>,
}

impl<'g> Rewriter<'g> {
    fn new(source: &'g GraphProto) -> Self {
        Self {
            source,
            index: source.initializer.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect(),
            b: GraphBuilder::from_graph(GraphProto { node: vec![], ..source.clone() }),
            activations: HashMap::new(),
            tables: HashMap::new(),
            replaced: BTreeSet::new(),
            quantized: vec![],
        }
    }

    /// An fp32 initializer's values and its `(rows, cols)`.
    fn matrix(&self, name: &str) -> Result<(Vec<f32>, usize, usize), QuantizeError> {
        let i = self.index.get(name).ok_or_else(|| QuantizeError::Unsupported(format!("no initializer {name}")))?;
        let t = &self.source.initializer[*i];
        let values = f32_values(t).ok_or_else(|| QuantizeError::Unsupported(format!("{name} is not fp32 raw data")))?;
        if t.dims.len() != 2 {
            return Err(QuantizeError::Unsupported(format!("{name} has shape {:?}, not a matrix", t.dims)));
        }
        Ok((values, t.dims[0] as usize, t.dims[1] as usize))
    }

    /// `x` quantized at run time: `[u8 values, scale, zero point]`, once per activation.
    fn activation(&mut self, x: &str) -> [String; 3] {
        if let Some(outs) = self.activations.get(x) {
            return outs.clone();
        }
        let outs = [self.b.fresh(x, "u8"), self.b.fresh(x, "scale"), self.b.fresh(x, "zero_point")];
        self.b.node_into(x, "DynamicQuantizeLinear", &[x], &[&outs[0], &outs[1], &outs[2]], vec![]);
        self.activations.insert(x.to_string(), outs.clone());
        outs
    }

    /// `node` (a `MatMul`) as `MatMulInteger(x_u8, weight_int8) · (x_scale · channel_scales)`
    /// into the same output.
    fn int8_matmul(&mut self, prefix: &str, node: &NodeProto, weight: &str, channel_scales: &str) {
        let [xq, xs, xz] = self.activation(&node.input[0]);
        let acc = self.b.node(prefix, "MatMulInteger", &[&xq, weight, &xz], vec![]);
        let acc = self.b.node(prefix, "Cast", &[&acc], vec![("to", Attr::Int(DataType::Float as i64))]);
        let scale = self.b.node(prefix, "Mul", &[&xs, channel_scales], vec![]);
        self.b.node_into(prefix, "Mul", &[&acc, &scale], &[&node.output[0]], vec![]);
    }

    /// A `MatMul` by weight `w`, `w` int8 per output channel.
    fn weight(&mut self, node: &NodeProto, w: &str) -> Result<(), QuantizeError> {
        let (values, rows, cols) = self.matrix(w)?;
        let q = quantize_columns(&values, rows, cols);
        let wq = self.b.i8(&format!("{w}.int8"), &[rows, cols], &q.values);
        let ws = self.b.f32(&format!("{w}.scale"), &[cols], &q.scales);
        self.int8_matmul(&format!("{w}/int8"), node, &wq, &ws);
        self.replaced.insert(w.to_string());
        self.quantized.push(w.to_string());
        Ok(())
    }

    /// `table` int8 per row, made once however many nodes read it.
    fn table(&mut self, table: &str) -> Result<TableInt8, QuantizeError> {
        if let Some(t) = self.tables.get(table) {
            return Ok(t.clone());
        }
        let (values, rows, cols) = self.matrix(table)?;
        let q = quantize_rows(&values, rows, cols);
        let t = TableInt8 {
            values: self.b.i8(&format!("{table}.int8"), &[rows, cols], &q.values),
            scales: self.b.f32(&format!("{table}.scale"), &[rows], &q.scales),
            last_axis: self.b.i64(&format!("{table}.last_axis"), &[1], &[-1]),
        };
        self.tables.insert(table.to_string(), t.clone());
        self.replaced.insert(table.to_string());
        self.quantized.push(table.to_string());
        Ok(t)
    }

    /// A `Gather` of `table`'s rows: int8 rows times their scales.
    fn lookup(&mut self, node: &NodeProto, table: &str) -> Result<(), QuantizeError> {
        let t = self.table(table)?;
        let p = format!("{table}/int8");
        let ids = &node.input[1];
        let rows_q = self.b.node(&p, "Gather", &[&t.values, ids], vec![]);
        let rows_f = self.b.node(&p, "Cast", &[&rows_q], vec![("to", Attr::Int(DataType::Float as i64))]);
        let scales = self.b.node(&p, "Gather", &[&t.scales, ids], vec![]);
        let scales = self.b.node(&p, "Unsqueeze", &[&scales, &t.last_axis], vec![]);
        self.b.node_into(&p, "Mul", &[&rows_f, &scales], &[&node.output[0]], vec![]);
        Ok(())
    }

    /// The `Transpose` of `table` for a tied head: the same node over the int8 values (its
    /// output, now int8, is read only by the `MatMul`s [`Self::tied_head`] rewrites).
    fn table_transpose(&mut self, node: &NodeProto, table: &str) -> Result<(), QuantizeError> {
        let t = self.table(table)?;
        let mut input = node.input.clone();
        input[0] = t.values;
        self.b.graph.node.push(NodeProto { input, ..node.clone() });
        Ok(())
    }

    /// A `MatMul` by the transposed `table`: per output channel, the channel scales being the
    /// table's row scales.
    fn tied_head(&mut self, node: &NodeProto, table: &str) -> Result<(), QuantizeError> {
        let t = self.table(table)?;
        self.int8_matmul(&format!("{table}/head/int8"), node, &node.input[1], &t.scales);
        Ok(())
    }
}

/// A node's input `k`, or "" when it has none.
fn input(node: &NodeProto, k: usize) -> &str {
    node.input.get(k).map_or("", String::as_str)
}

/// Rewrites `model` with int8 weights (see the module documentation).
pub fn quantize(model: &ModelProto, options: &QuantizeOptions) -> Result<Quantized, QuantizeError> {
    let graph = model.graph.as_ref().ok_or_else(|| QuantizeError::Unsupported("no graph".into()))?;
    let targets: BTreeSet<String> = quantizable(model).into_iter().filter(|w| !options.keep_fp32.contains(w)).collect();
    let mut r = Rewriter::new(graph);
    let tables: HashMap<&str, TableUses> = EMBEDDING_TABLES
        .into_iter()
        .filter(|t| !options.keep_fp32.contains(*t) && r.index.contains_key(*t))
        .filter_map(|t| table_uses(graph, t).map(|u| (t, u)))
        .collect();
    let heads: HashMap<&str, &str> =
        tables.iter().flat_map(|(t, u)| u.tied_heads.iter().map(move |h| (h.as_str(), *t))).collect();
    for node in &graph.node {
        let rewrite = match node.op_type.as_str() {
            "MatMul" if targets.contains(input(node, 1)) => Rewrite::Weight(input(node, 1)),
            "MatMul" if heads.contains_key(input(node, 1)) => Rewrite::TiedHead(heads[input(node, 1)]),
            "Gather" if tables.contains_key(input(node, 0)) => Rewrite::Lookup(input(node, 0)),
            "Transpose" if tables.contains_key(input(node, 0)) => Rewrite::TableTranspose(input(node, 0)),
            _ => Rewrite::Keep,
        };
        match rewrite {
            Rewrite::Weight(w) => r.weight(node, w)?,
            Rewrite::TiedHead(t) => r.tied_head(node, t)?,
            Rewrite::Lookup(t) => r.lookup(node, t)?,
            Rewrite::TableTranspose(t) => r.table_transpose(node, t)?,
            Rewrite::Keep => r.b.graph.node.push(node.clone()),
        }
    }
    let Rewriter { mut b, replaced, quantized, .. } = r;
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
