//! The student as an ONNX graph (opset 17): the same computation as [`crate::model::encoder::Encoder`] and
//! [`crate::model::classifier::Classifier`], node for node, with the trained weights as initializers.
//!
//! Inputs `input_ids`, `attention_mask` and `token_type_ids` (BERT's segment ids; all zeros for
//! single texts), int64 `(batch, sequence)` with both axes dynamic. Outputs `logits`
//! `(batch, classes)` and `embedding` `(batch, hidden)`, the pooled embedding.
//!
//! Dense weights keep their HuggingFace names, stored transposed, `(in, out)`, as `MatMul` wants
//! them; the quantizer finds them there. The GELU is written out with `Erf` (opset 17 has no
//! `Gelu`; ONNX Runtime fuses the pattern back into one kernel).

use std::collections::HashMap;

use candle_core::Tensor;
use candle_onnx::onnx::ModelProto;
use candle_onnx::onnx::tensor_proto::DataType;
use distillery_crds::distillation::Pooling;

use super::graph::{Attr, Dim, GraphBuilder};
use crate::model::encoder::EncoderConfig;

pub use distillery_model::session::{EMBEDDING, INPUTS, LOGITS};
/// The classifier's weight: the head's last step, which quantization leaves in fp32.
pub const HEAD_WEIGHT: &str = "classifier.weight";

/// Why a model could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A weight the configuration calls for is missing.
    #[error("the model has no tensor {0}")]
    Missing(String),
    /// A weight has the wrong shape.
    #[error("{name}: shape {got:?}, expected {want:?}")]
    Shape {
        /// The tensor.
        name: String,
        /// Its shape.
        got: Vec<usize>,
        /// The shape the configuration implies.
        want: Vec<usize>,
    },
    /// The configuration cannot be exported.
    #[error("{0}")]
    Unsupported(String),
    /// Reading a tensor failed.
    #[error("reading weights: {0}")]
    Candle(#[from] candle_core::Error),
}

/// What the exporter needs to know about a trained classifier.
pub struct ClassifierWeights<'a> {
    /// The encoder's configuration.
    pub config: &'a EncoderConfig,
    /// Every tensor by HuggingFace name (`embeddings.*`, `encoder.layer.N.*`, `classifier.*`,
    /// `pooler.dense.*`), as `model.safetensors` holds them.
    pub tensors: &'a HashMap<String, Tensor>,
    /// How token states are pooled.
    pub pooling: Pooling,
    /// Class names, in logit order (stored as model metadata).
    pub labels: &'a [String],
}

struct Exporter<'a> {
    b: GraphBuilder,
    w: &'a ClassifierWeights<'a>,
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
        let values = self.tensor(name, want)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.b.f32(name, want, &values))
    }

    /// A HuggingFace `(out, in)` weight, transposed to `(in, out)`.
    fn weight(&mut self, name: &str, out: usize, inp: usize) -> Result<String, ExportError> {
        let values = self.tensor(name, &[out, inp])?.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.b.f32(name, &[inp, out], &values))
    }

    /// `x · Wᵀ (+ b)` for the HuggingFace layer `prefix` (`prefix.weight`, `prefix.bias`).
    fn dense(&mut self, x: &str, prefix: &str, inp: usize, out: usize, bias: bool) -> Result<String, ExportError> {
        let w = self.weight(&format!("{prefix}.weight"), out, inp)?;
        let y = self.b.node(prefix, "MatMul", &[x, &w], vec![]);
        if !bias {
            return Ok(y);
        }
        let b = self.constant(&format!("{prefix}.bias"), &[out])?;
        Ok(self.b.node(prefix, "Add", &[&y, &b], vec![]))
    }

    fn layer_norm(&mut self, x: &str, prefix: &str) -> Result<String, ExportError> {
        let h = self.w.config.hidden_size;
        let gamma = self.constant(&format!("{prefix}.weight"), &[h])?;
        let beta = self.constant(&format!("{prefix}.bias"), &[h])?;
        let eps = self.w.config.layer_norm_eps as f32;
        Ok(self.b.node(
            prefix,
            "LayerNormalization",
            &[x, &gamma, &beta],
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        ))
    }

    fn scalar(&mut self, name: &str, v: f32) -> String {
        self.b.f32(name, &[], &[v])
    }

    fn embeddings(&mut self) -> Result<String, ExportError> {
        let c = self.w.config;
        let (h, p) = ("embeddings", c.hidden_size);
        let width = c.embedding_size.unwrap_or(p);
        let table = self.constant("embeddings.word_embeddings.weight", &[c.vocab_size, width])?;
        let mut words = self.b.node(h, "Gather", &[&table, "input_ids"], vec![]);
        if c.embedding_size.is_some() {
            words = self.dense(&words, "embeddings.word_projection", width, p, false)?;
        }
        // Positions 0..seq: the first `seq` rows of the position table.
        let positions = self.constant("embeddings.position_embeddings.weight", &[c.max_position_embeddings, p])?;
        let seq = self.b.node(h, "Shape", &["input_ids"], vec![("start", Attr::Int(1)), ("end", Attr::Int(2))]);
        let zero = self.b.i64("embeddings/zero", &[1], &[0]);
        let rows = self.b.node(h, "Slice", &[&positions, &zero, &seq, &zero], vec![]);
        let types = self.constant("embeddings.token_type_embeddings.weight", &[c.type_vocab_size, p])?;
        let types = self.b.node(h, "Gather", &[&types, "token_type_ids"], vec![]);
        let x = self.b.node(h, "Add", &[&words, &rows], vec![]);
        let x = self.b.node(h, "Add", &[&x, &types], vec![]);
        self.layer_norm(&x, "embeddings.LayerNorm")
    }

    /// The additive attention mask `(batch, 1, 1, seq)`: 0 for real tokens, −10⁴ for padding.
    fn mask_bias(&mut self) -> String {
        let m = "attention_mask";
        let mask = self.b.node(m, "Cast", &["attention_mask"], vec![("to", Attr::Int(DataType::Float as i64))]);
        let one = self.scalar("mask/one", 1.0);
        let big = self.scalar("mask/scale", 1e4);
        let x = self.b.node(m, "Sub", &[&mask, &one], vec![]);
        let x = self.b.node(m, "Mul", &[&x, &big], vec![]);
        let axes = self.b.i64("mask/axes", &[2], &[1, 2]);
        self.b.node(m, "Unsqueeze", &[&x, &axes], vec![])
    }

    fn layer(&mut self, i: usize, x: &str, mask: &str) -> Result<String, ExportError> {
        let c = self.w.config;
        let (h, heads) = (c.hidden_size, c.num_attention_heads);
        let d = h / heads;
        let p = format!("encoder.layer.{i}");
        let split_shape = self.b.i64(&format!("{p}/split_shape"), &[4], &[0, 0, heads as i64, d as i64]);
        let merge_shape = self.b.i64(&format!("{p}/merge_shape"), &[3], &[0, 0, h as i64]);
        let heads_of = |e: &mut Self, name: &str, perm: Vec<i64>| -> Result<String, ExportError> {
            let y = e.dense(x, &format!("{p}.attention.self.{name}"), h, h, true)?;
            let y = e.b.node(&p, "Reshape", &[&y, &split_shape], vec![]);
            Ok(e.b.node(&p, "Transpose", &[&y], vec![("perm", Attr::Ints(perm))]))
        };
        let q = heads_of(self, "query", vec![0, 2, 1, 3])?;
        let k = heads_of(self, "key", vec![0, 2, 3, 1])?;
        let v = heads_of(self, "value", vec![0, 2, 1, 3])?;
        let scale = self.scalar(&format!("{p}/scale"), 1.0 / (d as f32).sqrt());
        let scores = self.b.node(&p, "MatMul", &[&q, &k], vec![]);
        let scores = self.b.node(&p, "Mul", &[&scores, &scale], vec![]);
        let scores = self.b.node(&p, "Add", &[&scores, mask], vec![]);
        let probs = self.b.node(&p, "Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
        let context = self.b.node(&p, "MatMul", &[&probs, &v], vec![]);
        let context = self.b.node(&p, "Transpose", &[&context], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
        let context = self.b.node(&p, "Reshape", &[&context, &merge_shape], vec![]);
        let attn = self.dense(&context, &format!("{p}.attention.output.dense"), h, h, true)?;
        let attn = self.b.node(&p, "Add", &[&attn, x], vec![]);
        let attn = self.layer_norm(&attn, &format!("{p}.attention.output.LayerNorm"))?;
        let inner = self.dense(&attn, &format!("{p}.intermediate.dense"), h, c.intermediate_size, true)?;
        let inner = self.gelu(&p, &inner);
        let out = self.dense(&inner, &format!("{p}.output.dense"), c.intermediate_size, h, true)?;
        let out = self.b.node(&p, "Add", &[&out, &attn], vec![]);
        self.layer_norm(&out, &format!("{p}.output.LayerNorm"))
    }

    /// `x · Φ(x)` with the exact (erf) normal CDF, as BERT's `gelu`.
    fn gelu(&mut self, p: &str, x: &str) -> String {
        let sqrt2 = self.scalar(&format!("{p}/sqrt2"), std::f32::consts::SQRT_2);
        let one = self.scalar(&format!("{p}/one"), 1.0);
        let half = self.scalar(&format!("{p}/half"), 0.5);
        let y = self.b.node(p, "Div", &[x, &sqrt2], vec![]);
        let y = self.b.node(p, "Erf", &[&y], vec![]);
        let y = self.b.node(p, "Add", &[&y, &one], vec![]);
        let y = self.b.node(p, "Mul", &[x, &y], vec![]);
        self.b.node(p, "Mul", &[&y, &half], vec![])
    }

    fn pool(&mut self, hidden: &str) -> Result<String, ExportError> {
        let h = self.w.config.hidden_size;
        let cls = |e: &mut Self| {
            let zero = e.b.i64("pool/first", &[], &[0]);
            e.b.node("pool", "Gather", &[hidden, &zero], vec![("axis", Attr::Int(1))])
        };
        Ok(match self.w.pooling {
            Pooling::Cls => cls(self),
            Pooling::Pooler => {
                let first = cls(self);
                let y = self.dense(&first, "pooler.dense", h, h, true)?;
                self.b.node("pool", "Tanh", &[&y], vec![])
            }
            Pooling::Mean => {
                let to = ("to", Attr::Int(DataType::Float as i64));
                let mask = self.b.node("pool", "Cast", &["attention_mask"], vec![to]);
                let axes = self.b.i64("pool/last", &[1], &[-1]);
                let mask = self.b.node("pool", "Unsqueeze", &[&mask, &axes], vec![]);
                let masked = self.b.node("pool", "Mul", &[hidden, &mask], vec![]);
                let seq_axis = self.b.i64("pool/seq", &[1], &[1]);
                let keep = ("keepdims", Attr::Int(0));
                let sum = self.b.node("pool", "ReduceSum", &[&masked, &seq_axis], vec![keep]);
                let count = self.b.node("pool", "ReduceSum", &[&mask, &seq_axis], vec![("keepdims", Attr::Int(0))]);
                let tiny = self.scalar("pool/tiny", 1e-9);
                let count = self.b.node("pool", "Max", &[&count, &tiny], vec![]);
                self.b.node("pool", "Div", &[&sum, &count], vec![])
            }
        })
    }
}

/// Builds the ONNX model of a trained classifier.
pub fn export(weights: &ClassifierWeights) -> Result<ModelProto, ExportError> {
    let c = weights.config;
    if c.hidden_act != "gelu" {
        return Err(ExportError::Unsupported(format!("hidden_act {:?}: only gelu is exported", c.hidden_act)));
    }
    if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
        return Err(ExportError::Unsupported(format!(
            "hidden size {} is not a multiple of {} heads",
            c.hidden_size, c.num_attention_heads
        )));
    }
    let classes = weights.labels.len();
    let mut e = Exporter { b: GraphBuilder::default(), w: weights };
    let tokens = [Dim::Named("batch"), Dim::Named("sequence")];
    for name in INPUTS {
        e.b.input(name, DataType::Int64, &tokens);
    }
    let mut x = e.embeddings()?;
    let mask = e.mask_bias();
    for i in 0..c.num_hidden_layers {
        x = e.layer(i, &x, &mask)?;
    }
    let pooled = e.pool(&x)?;
    e.b.node_into("pool", "Identity", &[&pooled], &[EMBEDDING], vec![]);
    let logits = e.dense(EMBEDDING, "classifier", c.hidden_size, classes, true)?;
    e.b.node_into("classifier", "Identity", &[&logits], &[LOGITS], vec![]);
    e.b.output(LOGITS, DataType::Float, &[Dim::Named("batch"), Dim::Fixed(classes as i64)]);
    e.b.output(EMBEDDING, DataType::Float, &[Dim::Named("batch"), Dim::Fixed(c.hidden_size as i64)]);
    let labels = serde_json::to_string(weights.labels).expect("labels serialize");
    let pooling = serde_json::to_value(weights.pooling).expect("pooling serializes");
    Ok(e.b.finish(
        "distillery-student",
        &[("labels", labels), ("pooling", pooling.as_str().unwrap_or_default().to_string())],
    ))
}
