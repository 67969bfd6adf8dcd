//! The causal-LM student as an ONNX graph (opset 17): the same computation as
//! [`crate::model::decoder::Decoder`], node for node, with the trained weights as initializers;
//! its parity check against candle in ONNX Runtime; and the `export` of a causal-LM artifact
//! directory, as [`super::artifact::export_artifact`] does for a classifier.
//!
//! Inputs `input_ids` and `attention_mask`, int64 `(batch, sequence)` with both axes dynamic
//! (padding on the right, as the decoder assumes). Output `logits` `(batch, sequence, vocab)`:
//! next-token logits at every position.
//!
//! - Projections keep their HuggingFace names (`model.layers.N.self_attn.q_proj.weight`, …),
//!   stored transposed, `(in, out)`, as `MatMul` wants them (the quantizer finds them there).
//! - RMSNorm is written `x / sqrt(mean(x²) + ε) · w` (`Pow`, `ReduceMean`, `Add`, `Sqrt`, `Div`,
//!   `Mul`): opset 17 has no RMS norm, and this is the pattern ONNX Runtime fuses into its
//!   `SimplifiedLayerNormalization`. At opset 17 `ReduceMean` still takes `axes` as an
//!   attribute (an input only from opset 18).
//! - Rotary embeddings: the decoder's own `(max_position_embeddings, head_dim)` cos/sin tables as
//!   initializers ([`ROPE_COS`], [`ROPE_SIN`]), their first `seq` rows sliced off as the
//!   classifier's position table is — the very f32 values candle uses, so no trigonometry is
//!   redone in the runtime. `rotate_half` is `Split`, `Neg`, `Concat`.
//! - Grouped-query attention repeats each key/value head (`Unsqueeze`, `Expand`, `Reshape`), query
//!   head `h` reading kv head `h / n_rep`, as HuggingFace's `repeat_kv`.
//! - The attention bias is the decoder's: `MASKED` (−1e9) above the diagonal (built from `Range`
//!   over `seq` and `Greater`, no `(max, max)` initializer) plus `(mask − 1) · 1e9` on padded
//!   keys, added to the scaled scores before `Softmax`.
//! - Tied embeddings (every student): the output layer is `MatMul` by `Transpose` of the same
//!   [`EMBED_TOKENS`] initializer the `Gather` reads, so the file holds the table once. Untied:
//!   `lm_head.weight`, transposed like the projections.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_onnx::onnx::ModelProto;
use candle_onnx::onnx::tensor_proto::DataType;
use distillery_crds::manifest::{FP32_MODEL, OnnxVariant};
use distillery_model::session::{INPUTS, LOGITS, Padded, build_session};
use ort::session::Session;
use prost::Message;

use super::OnnxError;
use super::artifact::{PARITY_TOLERANCE, artifact_error, eval_threads, read_json, update_manifest};
use super::export::ExportError;
use super::graph::{Attr, Dim, GraphBuilder};
use super::runtime::{self, RunBatch, RuntimeError};
use crate::model::decoder::{Decoder, DecoderConfig, MASKED, rotary_tables};
use crate::progress::{Event, ProgressStage, Reporter};
use crate::store::sha256;

/// The decoder graph's inputs, in order: the classifier's first two (a decoder has no segment ids).
pub const DECODER_INPUTS: [&str; 2] = [INPUTS[0], INPUTS[1]];
/// The token embedding: the `Gather`'s table, and (tied) the output layer's weight, transposed.
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
/// The untied output layer's weight.
pub const LM_HEAD: &str = "lm_head.weight";
/// The rotary cosine table `(max_position_embeddings, head_dim)`.
pub const ROPE_COS: &str = "model.rotary_emb.cos";
/// The rotary sine table `(max_position_embeddings, head_dim)`.
pub const ROPE_SIN: &str = "model.rotary_emb.sin";
/// Sequences per batch in the parity check (the causal-LM pipeline's scoring batch: a batch's
/// logits are `batch · seq · vocab` floats, twice, candle's and ONNX Runtime's).
pub const PARITY_BATCH: usize = 4;
/// Sequences timed one at a time for the manifest's batch-1 latency.
pub(crate) const LATENCY_SINGLES: usize = 16;
/// The manifest's `servedVariantReason` of an exported decoder (`servedVariant` stays unset).
pub const NOT_SERVED: &str =
    "causal-lm: model.onnx is exported and checked against candle; distillery-server serves classifiers only";

/// What the exporter needs to know about a trained decoder.
pub struct DecoderWeights<'a> {
    /// The decoder's configuration.
    pub config: &'a DecoderConfig,
    /// Every tensor by HuggingFace name (`model.embed_tokens.weight`, `model.layers.N.*`,
    /// `model.norm.weight`, and `lm_head.weight` when untied), as `model.safetensors` holds them.
    pub tensors: &'a HashMap<String, Tensor>,
}

/// Graph constants every layer shares, created once.
struct Shared {
    /// `(b, t, heads·d)` → `(b, t, heads, d)`.
    split_q: String,
    /// `(b, t, kv·d)` → `(b, t, kv, d)`.
    split_kv: String,
    /// `(b, t, heads, d)` → `(b, t, heads·d)`.
    merge: String,
    /// `1 / sqrt(d)`.
    scale: String,
    /// `Unsqueeze` axis 2, `Expand` shape `(1, 1, n_rep, 1, 1)` and `Reshape` to
    /// `(b, heads, t, d)`: grouped-query attention's head repetition; `None` when `n_rep` is 1.
    repeat: Option<(String, String, String)>,
}

struct Exporter<'a> {
    b: GraphBuilder,
    w: &'a DecoderWeights<'a>,
}

impl Exporter<'_> {
    fn tensor(&self, name: &str, want: &[usize]) -> Result<&Tensor, ExportError> {
        let t = self.w.tensors.get(name).ok_or_else(|| ExportError::Missing(name.into()))?;
        if t.dims() != want {
            return Err(ExportError::Shape { name: name.into(), got: t.dims().to_vec(), want: want.to_vec() });
        }
        Ok(t)
    }

    /// A tensor as an fp32 initializer under its own name.
    fn constant(&mut self, name: &str, want: &[usize]) -> Result<String, ExportError> {
        let values = self.tensor(name, want)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.b.f32(name, want, &values))
    }

    /// A HuggingFace `(out, in)` weight, transposed to `(in, out)`.
    fn weight(&mut self, name: &str, out: usize, inp: usize) -> Result<String, ExportError> {
        let values =
            self.tensor(name, &[out, inp])?.to_dtype(DType::F32)?.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.b.f32(name, &[inp, out], &values))
    }

    /// `x · Wᵀ` for the bias-free HuggingFace layer `prefix` (`prefix.weight`).
    fn linear(&mut self, x: &str, prefix: &str, inp: usize, out: usize) -> Result<String, ExportError> {
        let w = self.weight(&format!("{prefix}.weight"), out, inp)?;
        Ok(self.b.node(prefix, "MatMul", &[x, &w], vec![]))
    }

    fn scalar(&mut self, name: &str, v: f32) -> String {
        self.b.f32(name, &[], &[v])
    }

    /// `x / sqrt(mean(x²) + ε) · w` over the last axis, `prefix.weight` as `w`.
    fn rms_norm(&mut self, x: &str, prefix: &str) -> Result<String, ExportError> {
        let c = self.w.config;
        let w = self.constant(&format!("{prefix}.weight"), &[c.hidden_size])?;
        let two = self.scalar(&format!("{prefix}/two"), 2.0);
        // candle adds ε as `affine(1, ε)` on f32: ε rounded to f32, as here.
        let eps = self.scalar(&format!("{prefix}/eps"), c.rms_norm_eps as f32);
        let sq = self.b.node(prefix, "Pow", &[x, &two], vec![]);
        let keep = vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))];
        let mean = self.b.node(prefix, "ReduceMean", &[&sq], keep);
        let var = self.b.node(prefix, "Add", &[&mean, &eps], vec![]);
        let rms = self.b.node(prefix, "Sqrt", &[&var], vec![]);
        let y = self.b.node(prefix, "Div", &[x, &rms], vec![]);
        Ok(self.b.node(prefix, "Mul", &[&y, &w], vec![]))
    }

    /// The sequence length, a 1-D int64 tensor `[seq]`.
    fn seq_len(&mut self) -> String {
        self.b.node("positions", "Shape", &["input_ids"], vec![("start", Attr::Int(1)), ("end", Attr::Int(2))])
    }

    /// The first `seq` rows of the rotary tables, `(seq, head_dim)` each: `(cos, sin)`.
    fn rotary(&mut self, seq: &str) -> Result<(String, String), ExportError> {
        let c = self.w.config;
        let (positions, d) = (c.max_position_embeddings, c.head_dim());
        let (cos, sin) = rotary_tables(d, c.rope_theta, positions, DType::F32, &Device::Cpu)?;
        let cos = self.b.f32(ROPE_COS, &[positions, d], &cos.flatten_all()?.to_vec1::<f32>()?);
        let sin = self.b.f32(ROPE_SIN, &[positions, d], &sin.flatten_all()?.to_vec1::<f32>()?);
        let zero = self.b.i64("rotary/zero", &[1], &[0]);
        let cos = self.b.node("rotary", "Slice", &[&cos, &zero, seq, &zero], vec![]);
        let sin = self.b.node("rotary", "Slice", &[&sin, &zero, seq, &zero], vec![]);
        Ok((cos, sin))
    }

    /// The additive attention bias `(batch, 1, seq, seq)`: `MASKED` where key `j` is after query
    /// `i` and again where key `j` is padding, 0 elsewhere — the decoder's `attention_bias`, sum
    /// for sum.
    fn attention_bias(&mut self, seq: &str) -> String {
        let m = "attention_bias";
        let axis0 = self.b.i64("attention_bias/axis0", &[1], &[0]);
        let axis1 = self.b.i64("attention_bias/axis1", &[1], &[1]);
        // Range wants 0-D bounds.
        let n = self.b.node(m, "Squeeze", &[seq, &axis0], vec![]);
        let start = self.b.i64("attention_bias/start", &[], &[0]);
        let step = self.b.i64("attention_bias/step", &[], &[1]);
        let positions = self.b.node(m, "Range", &[&start, &n, &step], vec![]);
        let queries = self.b.node(m, "Unsqueeze", &[&positions, &axis1], vec![]);
        let keys = self.b.node(m, "Unsqueeze", &[&positions, &axis0], vec![]);
        let future = self.b.node(m, "Greater", &[&keys, &queries], vec![]);
        let masked = self.scalar("attention_bias/masked", MASKED);
        let open = self.scalar("attention_bias/open", 0.0);
        let causal = self.b.node(m, "Where", &[&future, &masked, &open], vec![]);
        // (mask − 1) · 1e9: 0 for real tokens, −1e9 for padding, as a bias on keys (batch, 1, 1, seq).
        let mask = self.b.node(m, "Cast", &["attention_mask"], vec![("to", Attr::Int(DataType::Float as i64))]);
        let one = self.scalar("attention_bias/one", 1.0);
        let big = self.scalar("attention_bias/scale", -MASKED);
        let padding = self.b.node(m, "Sub", &[&mask, &one], vec![]);
        let padding = self.b.node(m, "Mul", &[&padding, &big], vec![]);
        let axes = self.b.i64("attention_bias/axes", &[2], &[1, 2]);
        let padding = self.b.node(m, "Unsqueeze", &[&padding, &axes], vec![]);
        self.b.node(m, "Add", &[&causal, &padding], vec![])
    }

    /// `(b, t, n·d)` → `(b, n, t, d)`.
    fn heads(&mut self, p: &str, y: &str, split: &str) -> String {
        let y = self.b.node(p, "Reshape", &[y, split], vec![]);
        self.b.node(p, "Transpose", &[&y], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))])
    }

    /// `x · cos + rotate_half(x) · sin`, `rotate_half(x) = [−x₂, x₁]` (HuggingFace's layout).
    fn rotate(&mut self, p: &str, x: &str, cos: &str, sin: &str) -> String {
        let (x1, x2) = (self.b.fresh(p, "first_half"), self.b.fresh(p, "second_half"));
        // No `split` input: two equal halves (head_dim is even; the config is validated).
        self.b.node_into(p, "Split", &[x], &[&x1, &x2], vec![("axis", Attr::Int(-1))]);
        let neg = self.b.node(p, "Neg", &[&x2], vec![]);
        let rotated = self.b.node(p, "Concat", &[&neg, &x1], vec![("axis", Attr::Int(-1))]);
        let a = self.b.node(p, "Mul", &[x, cos], vec![]);
        let b = self.b.node(p, "Mul", &[&rotated, sin], vec![]);
        self.b.node(p, "Add", &[&a, &b], vec![])
    }

    /// `(b, kv, t, d)` → `(b, kv·n_rep, t, d)`, each kv head repeated `n_rep` times in place.
    fn repeat_kv(&mut self, p: &str, x: &str, s: &Shared) -> String {
        let Some((axis, expand, merge)) = &s.repeat else { return x.to_string() };
        let y = self.b.node(p, "Unsqueeze", &[x, axis], vec![]);
        let y = self.b.node(p, "Expand", &[&y, expand], vec![]);
        self.b.node(p, "Reshape", &[&y, merge], vec![])
    }

    fn layer(
        &mut self,
        i: usize,
        x: &str,
        cos: &str,
        sin: &str,
        bias: &str,
        s: &Shared,
    ) -> Result<String, ExportError> {
        let c = self.w.config;
        let (h, heads, kv, d) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        let normed = self.rms_norm(x, &format!("{p}.input_layernorm"))?;
        let q = self.linear(&normed, &format!("{a}.q_proj"), h, heads * d)?;
        let k = self.linear(&normed, &format!("{a}.k_proj"), h, kv * d)?;
        let v = self.linear(&normed, &format!("{a}.v_proj"), h, kv * d)?;
        let q = self.heads(&a, &q, &s.split_q);
        let k = self.heads(&a, &k, &s.split_kv);
        let v = self.heads(&a, &v, &s.split_kv);
        let q = self.rotate(&a, &q, cos, sin);
        let k = self.rotate(&a, &k, cos, sin);
        let k = self.repeat_kv(&a, &k, s);
        let v = self.repeat_kv(&a, &v, s);
        let kt = self.b.node(&a, "Transpose", &[&k], vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))]);
        let scores = self.b.node(&a, "MatMul", &[&q, &kt], vec![]);
        let scores = self.b.node(&a, "Mul", &[&scores, &s.scale], vec![]);
        let scores = self.b.node(&a, "Add", &[&scores, bias], vec![]);
        let probs = self.b.node(&a, "Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
        let context = self.b.node(&a, "MatMul", &[&probs, &v], vec![]);
        let context = self.b.node(&a, "Transpose", &[&context], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
        let context = self.b.node(&a, "Reshape", &[&context, &s.merge], vec![]);
        let attn = self.linear(&context, &format!("{a}.o_proj"), heads * d, h)?;
        let x = self.b.node(&p, "Add", &[x, &attn], vec![]);

        let f = format!("{p}.mlp");
        let normed = self.rms_norm(&x, &format!("{p}.post_attention_layernorm"))?;
        let gate = self.linear(&normed, &format!("{f}.gate_proj"), h, c.intermediate_size)?;
        // SiLU: x · σ(x) (opset 17 has no SiLU).
        let sigmoid = self.b.node(&f, "Sigmoid", &[&gate], vec![]);
        let gate = self.b.node(&f, "Mul", &[&gate, &sigmoid], vec![]);
        let up = self.linear(&normed, &format!("{f}.up_proj"), h, c.intermediate_size)?;
        let inner = self.b.node(&f, "Mul", &[&gate, &up], vec![]);
        let down = self.linear(&inner, &format!("{f}.down_proj"), c.intermediate_size, h)?;
        Ok(self.b.node(&p, "Add", &[&x, &down], vec![]))
    }

    fn shared(&mut self) -> Shared {
        let c = self.w.config;
        let (heads, kv, d) = (c.num_attention_heads as i64, c.num_key_value_heads as i64, c.head_dim() as i64);
        let n_rep = heads / kv;
        let repeat = (n_rep > 1).then(|| {
            (
                self.b.i64("attention/repeat_axis", &[1], &[2]),
                self.b.i64("attention/repeat_shape", &[5], &[1, 1, n_rep, 1, 1]),
                self.b.i64("attention/repeat_merge", &[4], &[0, heads, -1, d]),
            )
        });
        Shared {
            split_q: self.b.i64("attention/split_q", &[4], &[0, 0, heads, d]),
            split_kv: self.b.i64("attention/split_kv", &[4], &[0, 0, kv, d]),
            merge: self.b.i64("attention/merge", &[3], &[0, 0, heads * d]),
            // candle multiplies by `1 / sqrt(d)` computed in f64, rounded to f32 by `affine`.
            scale: self.scalar("attention/scale", (1.0 / (d as f64).sqrt()) as f32),
            repeat,
        }
    }
}

/// Builds the ONNX model of a trained decoder (see the module documentation).
pub fn export_decoder(weights: &DecoderWeights) -> Result<ModelProto, ExportError> {
    let c = weights.config;
    c.validate().map_err(|e| ExportError::Unsupported(e.to_string()))?;
    let (vocab, h) = (c.vocab_size, c.hidden_size);
    let mut e = Exporter { b: GraphBuilder::default(), w: weights };
    let tokens = [Dim::Named("batch"), Dim::Named("sequence")];
    for name in DECODER_INPUTS {
        e.b.input(name, DataType::Int64, &tokens);
    }
    let table = e.constant(EMBED_TOKENS, &[vocab, h])?;
    let mut x = e.b.node("model.embed_tokens", "Gather", &[&table, "input_ids"], vec![]);
    let seq = e.seq_len();
    let (cos, sin) = e.rotary(&seq)?;
    let bias = e.attention_bias(&seq);
    let shared = e.shared();
    for i in 0..c.num_hidden_layers {
        x = e.layer(i, &x, &cos, &sin, &bias, &shared)?;
    }
    let x = e.rms_norm(&x, "model.norm")?;
    let head = if c.tie_word_embeddings {
        e.b.node("lm_head", "Transpose", &[&table], vec![("perm", Attr::Ints(vec![1, 0]))])
    } else {
        e.weight(LM_HEAD, vocab, h)?
    };
    let logits = e.b.node("lm_head", "MatMul", &[&x, &head], vec![]);
    e.b.node_into("lm_head", "Identity", &[&logits], &[LOGITS], vec![]);
    e.b.output(LOGITS, DataType::Float, &[Dim::Named("batch"), Dim::Named("sequence"), Dim::Fixed(vocab as i64)]);
    let config = serde_json::to_string(c).expect("decoder configs serialize");
    Ok(e.b.finish("distillery-causal-lm-student", &[("task", "causal-lm".to_string()), ("config", config)]))
}

fn ort_error(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Ort(e.to_string())
}

/// One batch's logits, row-major `(batch, longest, vocab)`.
pub struct BatchLogits {
    /// The values.
    pub values: Vec<f32>,
    /// The padded length.
    pub longest: usize,
    /// The vocabulary size.
    pub vocab: usize,
}

impl BatchLogits {
    /// The logits of sequence `row` at `position`.
    pub fn at(&self, row: usize, position: usize) -> &[f32] {
        let start = (row * self.longest + position) * self.vocab;
        &self.values[start..start + self.vocab]
    }
}

/// One ONNX Runtime session of an exported decoder, in this process's environment.
pub struct OnnxDecoder {
    session: Session,
}

impl OnnxDecoder {
    /// A session over the serialized model `bytes`, with the options every exported graph runs
    /// under ([`build_session`]), on `threads` intra-op threads. [`runtime::init`] must have
    /// succeeded.
    pub fn new(bytes: &[u8], threads: usize) -> Result<Self, RuntimeError> {
        Ok(Self { session: build_session(&runtime::environment()?, bytes, threads)? })
    }

    /// Logits of one batch, padded on the right to its longest sequence.
    pub fn run(&mut self, batch: &[&[u32]]) -> Result<BatchLogits, RuntimeError> {
        let (ids, mask, longest) = decoder_inputs(batch)?;
        let outputs =
            self.session.run(ort::inputs![DECODER_INPUTS[0] => ids, DECODER_INPUTS[1] => mask]).map_err(ort_error)?;
        let (dims, values) = outputs[LOGITS].try_extract_tensor::<f32>().map_err(ort_error)?;
        if dims.len() != 3 || dims[0] != batch.len() as i64 || dims[1] != longest as i64 {
            return Err(RuntimeError::Ort(format!(
                "logits of shape {:?} for a batch of {} sequences of {} tokens",
                &dims[..],
                batch.len(),
                longest
            )));
        }
        Ok(BatchLogits { values: values.to_vec(), longest, vocab: dims[2] as usize })
    }
}

impl RunBatch for OnnxDecoder {
    /// Runs the batch without copying its logits out: what latency is measured on (a sequence's
    /// logits are `length · vocab` floats, whose copy is no part of the model's time).
    fn run_batch(&mut self, batch: &[&[u32]]) -> Result<(), RuntimeError> {
        let (ids, mask, _) = decoder_inputs(batch)?;
        let _outputs =
            self.session.run(ort::inputs![DECODER_INPUTS[0] => ids, DECODER_INPUTS[1] => mask]).map_err(ort_error)?;
        Ok(())
    }
}

/// A batch padded on the right as the decoder graph's int64 inputs `(input_ids, attention_mask)`,
/// and its padded length.
fn decoder_inputs(batch: &[&[u32]]) -> Result<(ort::value::Tensor<i64>, ort::value::Tensor<i64>, usize), RuntimeError> {
    let padded = Padded::new(batch);
    let shape = [batch.len(), padded.longest];
    let to_i64 = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<i64>>();
    let ids = ort::value::Tensor::from_array((shape, to_i64(&padded.ids))).map_err(ort_error)?;
    let mask = ort::value::Tensor::from_array((shape, to_i64(&padded.mask))).map_err(ort_error)?;
    Ok((ids, mask, padded.longest))
}

/// What the parity check measured, over every real (unpadded) position of the sequences.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DecoderParity {
    /// Largest absolute logit difference (NaN when either side produced a NaN).
    pub max_diff: f64,
    /// Positions whose most likely next token differs.
    pub disagreements: usize,
    /// Of those, the ones where candle's own margin between the two tokens is within that
    /// position's largest |Δlogit| (a near-tie, not a wrong graph).
    pub near_ties: usize,
    /// Positions compared.
    pub positions: usize,
    /// Sequences compared.
    pub sequences: usize,
    /// Next-token top-1 accuracy of the ONNX model (positions that have a next token).
    pub top1: f64,
}

impl DecoderParity {
    /// Within [`PARITY_TOLERANCE`] everywhere, the same argmax at every position, no NaN, and at
    /// least one position compared.
    pub fn passed(&self) -> bool {
        !self.max_diff.is_nan() && self.max_diff <= PARITY_TOLERANCE && self.disagreements == 0 && self.positions > 0
    }
}

/// The index of the largest value (the last of equal ones, as `train::predictions`).
pub(crate) fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// Runs `sequences` through `onnx` and through candle's `decoder`, `batch` at a time (padded on
/// the right, the same batches on both sides), and measures their agreement at every real
/// position. Only running figures are kept: a batch's logits are `batch · seq · vocab` floats.
pub fn compare_with_candle(
    onnx: &mut OnnxDecoder,
    decoder: &Decoder,
    sequences: &[Vec<u32>],
    batch: usize,
) -> Result<DecoderParity, OnnxError> {
    let device = decoder.embed_tokens().device().clone();
    let mut p = DecoderParity { sequences: sequences.len(), ..Default::default() };
    let (mut correct, mut scored) = (0usize, 0usize);
    let non_empty: Vec<&[u32]> = sequences.iter().filter(|s| !s.is_empty()).map(Vec::as_slice).collect();
    for rows in non_empty.chunks(batch.max(1)) {
        let ours = onnx.run(rows)?;
        let padded = Padded::new(rows);
        let (n, t) = (rows.len(), padded.longest);
        let ids = Tensor::from_vec(padded.ids, (n, t), &device)?;
        let mask = Tensor::from_vec(padded.mask, (n, t), &device)?;
        let reference = decoder.forward(&ids, Some(&mask))?.flatten_all()?.to_vec1::<f32>()?;
        let vocab = ours.vocab;
        if ours.longest != t || reference.len() != n * t * vocab {
            return Err(RuntimeError::Ort(format!(
                "ONNX Runtime's logits are ({n}, {}, {vocab}), candle's {} values for ({n}, {t}, vocab)",
                ours.longest,
                reference.len()
            ))
            .into());
        }
        for (r, seq) in rows.iter().enumerate() {
            for pos in 0..seq.len() {
                let a = ours.at(r, pos);
                let start = (r * t + pos) * vocab;
                let b = &reference[start..start + vocab];
                let d = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| f64::from((x - y).abs()))
                    .fold(0f64, |m, v| if m.is_nan() || v.is_nan() { f64::NAN } else { m.max(v) });
                p.max_diff = if p.max_diff.is_nan() || d.is_nan() { f64::NAN } else { p.max_diff.max(d) };
                let (ia, ib) = (argmax(a), argmax(b));
                if ia != ib {
                    p.disagreements += 1;
                    if f64::from(b[ib] - b[ia]) <= d {
                        p.near_ties += 1;
                    }
                }
                if let Some(&next) = seq.get(pos + 1) {
                    scored += 1;
                    correct += usize::from(ia == next as usize);
                }
                p.positions += 1;
            }
        }
    }
    p.top1 = correct as f64 / scored.max(1) as f64;
    Ok(p)
}

/// [`compare_with_candle`], refusing the export ([`OnnxError::DecoderParity`]) unless it
/// [`passed`](DecoderParity::passed).
pub fn check_parity(
    onnx: &mut OnnxDecoder,
    decoder: &Decoder,
    sequences: &[Vec<u32>],
    batch: usize,
) -> Result<DecoderParity, OnnxError> {
    let p = compare_with_candle(onnx, decoder, sequences, batch)?;
    if !p.passed() {
        return Err(OnnxError::DecoderParity {
            max_diff: p.max_diff,
            disagreements: p.disagreements,
            near_ties: p.near_ties,
            positions: p.positions,
            sequences: p.sequences,
        });
    }
    Ok(p)
}

/// A trained decoder read back from a causal-LM artifact directory.
pub struct DecoderArtifact {
    /// Its configuration (`config.json`, HuggingFace's `LlamaForCausalLM` fields).
    pub config: DecoderConfig,
    /// Every tensor of `model.safetensors`, on the CPU.
    pub tensors: HashMap<String, Tensor>,
}

impl DecoderArtifact {
    /// Reads `config.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, OnnxError> {
        let config_path = dir.join("config.json");
        let config: DecoderConfig =
            serde_json::from_value(read_json(&config_path)?).map_err(|e| artifact_error(&config_path, e))?;
        let weights = dir.join("model.safetensors");
        let tensors =
            candle_core::safetensors::load(&weights, &Device::Cpu).map_err(|e| artifact_error(&weights, e))?;
        Ok(Self { config, tensors })
    }

    /// What the exporter reads.
    pub fn weights(&self) -> DecoderWeights<'_> {
        DecoderWeights { config: &self.config, tensors: &self.tensors }
    }

    /// candle's decoder over these weights, on the CPU (the reference the export must match).
    pub fn decoder(&self) -> Result<Decoder, OnnxError> {
        let vb = VarBuilder::from_tensors(self.tensors.clone(), DType::F32, &Device::Cpu);
        Decoder::new(&self.config, vb)
            .map_err(|e| ExportError::Unsupported(format!("candle cannot build the decoder: {e}")).into())
    }
}

/// Mean wall time of one sequence alone (the first [`LATENCY_SINGLES`] of `sequences`), best of
/// three passes after a warm-up, in milliseconds.
fn latency_batch1(model: &mut OnnxDecoder, sequences: &[Vec<u32>]) -> Result<f64, OnnxError> {
    let singles: Vec<&[u32]> =
        sequences.iter().filter(|s| !s.is_empty()).take(LATENCY_SINGLES).map(Vec::as_slice).collect();
    let pass = |m: &mut OnnxDecoder| -> Result<Duration, RuntimeError> {
        let start = Instant::now();
        for &s in &singles {
            m.run(&[s])?;
        }
        Ok(start.elapsed() / singles.len().max(1) as u32)
    };
    pass(&mut *model)?;
    let mut best = f64::MAX;
    for _ in 0..3 {
        best = best.min(pass(&mut *model)?.as_secs_f64() * 1e3);
    }
    Ok(best)
}

/// Exports `dir`'s decoder to `model.onnx`, checks it against candle at every position of
/// `held_out` ([`check_parity`]: refused, and nothing written, unless within
/// [`PARITY_TOLERANCE`] with the same argmax everywhere), and records it in the manifest:
/// `accuracy` is ONNX Runtime's next-token top-1 on `held_out`, `label_agreement` the share of
/// positions whose argmax is candle's. Nothing is served yet: the server runs classifiers only,
/// so `servedVariant` stays unset and its reason says why.
pub fn export_decoder_artifact(
    dir: &Path,
    held_out: &[Vec<u32>],
    reporter: &mut dyn Reporter,
) -> Result<OnnxVariant, OnnxError> {
    runtime::init(None)?;
    let model = DecoderArtifact::load(dir)?;
    let proto = export_decoder(&model.weights())?;
    let bytes = proto.encode_to_vec();
    let decoder = model.decoder()?;
    let mut session = OnnxDecoder::new(&bytes, eval_threads())?;
    let parity = check_parity(&mut session, &decoder, held_out, PARITY_BATCH)?;
    drop(session);
    let b1 = latency_batch1(&mut OnnxDecoder::new(&bytes, 1)?, held_out)?;
    let path = dir.join(FP32_MODEL);
    std::fs::write(&path, &bytes).map_err(|e| artifact_error(&path, e))?;
    let variant = OnnxVariant {
        file: Some(FP32_MODEL.into()),
        size_bytes: bytes.len() as u64,
        sha256: sha256(&bytes),
        accuracy: parity.top1,
        latency_ms_batch1: b1,
        // Not measured: see the field's doc.
        latency_ms_batch32: None,
        max_abs_logit_diff: Some(parity.max_diff),
        label_agreement: Some(1.0 - parity.disagreements as f64 / parity.positions.max(1) as f64),
        ..Default::default()
    };
    reporter.report(&Event::Stage {
        stage: ProgressStage::Exporting,
        message: format!(
            "{FP32_MODEL}: {:.1} MB; on {} held-out positions ({} sequences) its logits are within {:.1e} of candle's and every argmax is the same; next-token top-1 {:.2}% in ONNX Runtime, {b1:.1} ms per sequence alone",
            bytes.len() as f64 / 1e6,
            parity.positions,
            parity.sequences,
            parity.max_diff,
            parity.top1 * 100.0
        ),
    });
    update_manifest(dir, |m| {
        m.variants.insert("fp32".into(), variant.clone());
        m.variants.remove("int8");
        m.served_variant = None;
        m.served_variant_reason = Some(NOT_SERVED.into());
    })?;
    Ok(variant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decoder::StudentShape;
    use crate::onnx::graph::f32_values;
    use crate::onnx::quantize::{QuantizeOptions, quantizable, quantize};
    use crate::student::decoder::random_decoder;
    use crate::train::runner;
    use candle_onnx::onnx::TensorProto;

    fn tiny(tied: bool, kv_heads: usize) -> DecoderConfig {
        DecoderConfig {
            tie_word_embeddings: tied,
            max_position_embeddings: 16,
            initializer_range: 0.3,
            ..DecoderConfig::student(&StudentShape {
                layers: 2,
                hidden: 24,
                heads: 3,
                kv_heads,
                intermediate: 40,
                vocab: 50,
            })
        }
    }

    fn weights(config: &DecoderConfig, seed: u64) -> HashMap<String, Tensor> {
        let map = random_decoder(config, seed, &Device::Cpu).unwrap();
        runner::snapshot(&[&map]).unwrap()
    }

    fn count(proto: &ModelProto, op: &str) -> usize {
        proto.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type == op).count()
    }

    #[test]
    fn the_graph_has_the_decoder_interface_and_every_weight_once() {
        for (tied, kv) in [(true, 1), (false, 3)] {
            let c = tiny(tied, kv);
            let tensors = weights(&c, 3);
            let proto = export_decoder(&DecoderWeights { config: &c, tensors: &tensors }).unwrap();
            assert_eq!(proto.opset_import[0].version, 17);
            let g = proto.graph.as_ref().unwrap();
            let inputs: Vec<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
            assert_eq!(inputs, ["input_ids", "attention_mask"]);
            assert_eq!(g.output.len(), 1);
            assert_eq!(g.output[0].name, LOGITS);
            // Every tensor of the model is an initializer under its own name (lm_head only when
            // untied), plus the two rotary tables.
            let names: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
            for name in tensors.keys() {
                assert_eq!(names.iter().filter(|n| **n == name.as_str()).count(), 1, "{name}");
            }
            assert_eq!(names.contains(&LM_HEAD), !tied);
            let table = g.initializer.iter().find(|t| t.name == ROPE_COS).unwrap();
            assert_eq!(table.dims, vec![16, 8]);
            // Per layer: Q, K, V, O, gate, up, down by a weight, and the two attention products;
            // then the output layer.
            assert_eq!(count(&proto, "MatMul"), 2 * 9 + 1);
            assert_eq!(count(&proto, "ReduceMean"), 2 * 2 + 1, "two RMSNorms per layer and the final one");
            assert_eq!(count(&proto, "Expand"), if kv == 1 { 2 * 2 } else { 0 }, "K and V repeated when grouped");
            assert_eq!(count(&proto, "Transpose") - 2 * 5, usize::from(tied), "the tied head transposes the table");
        }
    }

    #[test]
    fn the_quantizer_would_take_the_seven_projections_per_layer_and_nothing_else() {
        let c = tiny(true, 1);
        let tensors = weights(&c, 4);
        let proto = export_decoder(&DecoderWeights { config: &c, tensors: &tensors }).unwrap();
        let q = quantizable(&proto);
        assert_eq!(q.len(), 2 * 7, "{q:?}");
        assert!(q.iter().all(|w| w.starts_with("model.layers.") && w.ends_with("_proj.weight")), "{q:?}");
        // The tied output layer multiplies by a Transpose's output, not an initializer: it is
        // quantized with the table, per row (next test), not as a projection.
        assert!(!q.iter().any(|w| w == EMBED_TOKENS));
    }

    fn initializer<'m>(proto: &'m ModelProto, name: &str) -> Option<&'m TensorProto> {
        proto.graph.as_ref().unwrap().initializer.iter().find(|t| t.name == name)
    }

    /// The nodes reading `value`, by op.
    fn readers<'m>(proto: &'m ModelProto, value: &str) -> Vec<&'m str> {
        let g = proto.graph.as_ref().unwrap();
        g.node.iter().filter(|n| n.input.iter().any(|i| i == value)).map(|n| n.op_type.as_str()).collect()
    }

    #[test]
    fn int8_keeps_the_whole_token_table_once_for_the_lookup_and_the_tied_head() {
        let c = tiny(true, 1);
        let tensors = weights(&c, 6);
        let proto = export_decoder(&DecoderWeights { config: &c, tensors: &tensors }).unwrap();
        let q = quantize(&proto, &QuantizeOptions::default()).unwrap();
        assert_eq!(q.quantized.len(), 1 + 2 * 7, "the table and seven projections per layer: {:?}", q.quantized);
        assert_eq!(q.quantized[0], EMBED_TOKENS, "graph order: the lookup comes first");
        let (table, scales) = (format!("{EMBED_TOKENS}.int8"), format!("{EMBED_TOKENS}.scale"));
        // The full table, once, in int8; no fp32 copy left and nothing reading one.
        let int8 = initializer(&q.model, &table).unwrap();
        assert_eq!((int8.dims.clone(), int8.data_type), (vec![50, 24], DataType::Int8 as i32));
        assert_eq!(int8.raw_data.len(), 50 * 24);
        assert!(initializer(&q.model, EMBED_TOKENS).is_none() && readers(&q.model, EMBED_TOKENS).is_empty());
        let g = q.model.graph.as_ref().unwrap();
        assert_eq!(
            g.initializer.iter().filter(|t| t.name.starts_with(EMBED_TOKENS)).count(),
            3,
            "values, scales, axis"
        );
        // The lookup gathers rows by input_ids; the head multiplies by the transposed int8 table.
        assert_eq!(readers(&q.model, &table), ["Gather", "Transpose"]);
        let gather = g.node.iter().find(|n| n.op_type == "Gather" && n.input[0] == table).unwrap();
        assert_eq!(gather.input[1], "input_ids");
        let transposed = &g.node.iter().find(|n| n.op_type == "Transpose" && n.input[0] == table).unwrap().output[0];
        assert_eq!(readers(&q.model, transposed), ["MatMulInteger"]);
        assert_eq!(readers(&q.model, &scales), ["Gather", "Mul"], "one scale per row serves both");
        assert_eq!(count(&q.model, "MatMul"), 2 * 2, "only the attention products stay fp32 MatMuls");
        // Every row dequantizes to within half a step of the fp32 row.
        let fp32 = f32_values(initializer(&proto, EMBED_TOKENS).unwrap()).unwrap();
        let s = f32_values(initializer(&q.model, &scales).unwrap()).unwrap();
        assert_eq!(s.len(), 50);
        for (i, (&v, &b)) in fp32.iter().zip(&int8.raw_data).enumerate() {
            let back = f32::from(b as i8) * s[i / 24];
            assert!((back - v).abs() <= s[i / 24] / 2.0 + 1e-7, "row {}: {v} -> {back}", i / 24);
        }

        // Kept fp32 (the gate's retry): the table and both its readers as exported.
        let kept = quantize(&proto, &QuantizeOptions { keep_fp32: [EMBED_TOKENS.to_string()].into() }).unwrap();
        assert!(!kept.quantized.iter().any(|w| w == EMBED_TOKENS) && kept.quantized.len() == 2 * 7);
        assert!(initializer(&kept.model, EMBED_TOKENS).is_some() && initializer(&kept.model, &table).is_none());
        assert_eq!(readers(&kept.model, EMBED_TOKENS), ["Gather", "Transpose"]);

        // Untied: the table is only looked up, and lm_head is a projection like the others.
        let c = tiny(false, 3);
        let tensors = weights(&c, 6);
        let proto = export_decoder(&DecoderWeights { config: &c, tensors: &tensors }).unwrap();
        let q = quantize(&proto, &QuantizeOptions::default()).unwrap();
        assert_eq!(q.quantized.len(), 1 + 2 * 7 + 1, "{:?}", q.quantized);
        assert!(q.quantized.iter().any(|w| w == LM_HEAD));
        assert_eq!(readers(&q.model, &table), ["Gather"]);
    }

    #[test]
    fn missing_or_misshapen_weights_and_unsupported_configs_are_refused() {
        let c = tiny(true, 1);
        let mut tensors = weights(&c, 5);
        tensors.remove("model.layers.1.mlp.up_proj.weight");
        let err = export_decoder(&DecoderWeights { config: &c, tensors: &tensors }).err().unwrap();
        assert!(matches!(&err, ExportError::Missing(n) if n == "model.layers.1.mlp.up_proj.weight"), "{err}");
        let mut tensors = weights(&c, 5);
        tensors.insert("model.norm.weight".into(), Tensor::ones(23, DType::F32, &Device::Cpu).unwrap());
        let err = export_decoder(&DecoderWeights { config: &c, tensors: &tensors }).err().unwrap();
        assert!(matches!(&err, ExportError::Shape { name, .. } if name == "model.norm.weight"), "{err}");
        let gelu = DecoderConfig { hidden_act: "gelu".into(), ..c };
        let err = export_decoder(&DecoderWeights { config: &gelu, tensors: &tensors }).err().unwrap();
        assert!(matches!(err, ExportError::Unsupported(_)), "{err}");
    }

    #[test]
    fn parity_needs_a_tolerance_a_matching_argmax_and_a_number() {
        let ok = DecoderParity { max_diff: 3e-6, positions: 10, sequences: 2, ..Default::default() };
        assert!(ok.passed());
        assert!(!DecoderParity { max_diff: 2e-4, ..ok }.passed());
        assert!(!DecoderParity { disagreements: 1, ..ok }.passed());
        assert!(!DecoderParity { max_diff: f64::NAN, ..ok }.passed());
        assert!(!DecoderParity { positions: 0, ..ok }.passed(), "nothing compared is not a pass");
    }
}
