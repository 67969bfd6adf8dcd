//! A Llama-family decoder (Touvron et al., 2023, "LLaMA: Open and Efficient Foundation Language
//! Models") for causal-LM distillation in candle: the frozen teacher and the trainable student share
//! it.
//!
//! candle-transformers' causal LMs cannot be used here: every one of their `forward`s returns the
//! last position's logits only (token-level distillation needs every position), and they run fused
//! kernels that have no backward pass (`candle_nn::ops::rms_norm`, `softmax_last_dim`,
//! `rotary_emb::rope`/`rope_i`: applied with `apply_op*_no_bwd`, so `backward()` succeeds and
//! silently gives no gradient to anything before them). This copy is written with differentiable
//! tensor ops only: RMSNorm as `x · (mean(x²) + ε)^-½ · w`, softmax as
//! [`candle_nn::ops::softmax`] (max, sub, exp, sum, div), rotary embeddings as
//! `x · cos + rotate_half(x) · sin`, SiLU as [`Tensor::silu`] (which has a backward pass).
//!
//! Layout and names are HuggingFace's `LlamaForCausalLM` (`model.embed_tokens.weight`,
//! `model.layers.N.self_attn.q_proj.weight`, …, `lm_head.weight` unless the embeddings are tied),
//! with HF's non-interleaved ("rotate_half") rotary embedding. A llama.cpp GGUF stores Q and K rows
//! permuted for interleaved rotary embedding; `crate::teacher::gguf` un-permutes them on load, so
//! the same code serves a teacher read from GGUF, from HF safetensors, and a student in a `VarMap`.
//!
//! Positions are `0..seq` in every row: pad on the right. Dropout is left out.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

/// The additive attention bias of a masked (future or padding) key. Finite, not `-inf`: a query
/// whose keys are all masked (a left-padding position) then gets a uniform distribution instead of
/// NaN (`-inf − -inf`), and `exp(-1e9 − max)` is exactly 0 in f32, so unmasked rows are unchanged.
pub(crate) const MASKED: f32 = -1e9;

/// The HuggingFace `config.json` fields of a Llama-family decoder.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Vocabulary size (rows of the embedding and of the output layer).
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// Width of the gated feed-forward layer.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Rotary embedding base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Longest sequence the rotary table covers.
    pub max_position_embeddings: usize,
    /// Whether the output layer is the transposed token embedding (no `lm_head.weight`).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Activation of the gated feed-forward layer; only `silu` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Model type, `llama`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Standard deviation of the normal initialisation of new (student) weights.
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Per-head width when it is not `hidden_size / num_attention_heads`; only that value is
    /// supported, so this is checked, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Rotary scaling (Llama 3, YaRN …): not supported, must be absent or null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Biases on the attention projections: not supported, must be false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attention_bias: bool,
    /// Biases on the feed-forward projections: not supported, must be false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mlp_bias: bool,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_act() -> String {
    "silu".into()
}
fn default_model_type() -> String {
    "llama".into()
}
fn default_init_range() -> f64 {
    0.02
}

/// The shape of a student decoder: what a distillation job chooses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StudentShape {
    /// Decoder layers.
    pub layers: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Feed-forward width.
    pub intermediate: usize,
    /// Vocabulary size; token-level distillation needs the teacher's.
    pub vocab: usize,
}

/// Why a decoder cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    /// The configuration describes something this decoder does not implement, or is inconsistent.
    #[error("invalid decoder config: {0}")]
    Config(String),
    /// A student shape does not fit its teacher.
    #[error("student does not fit the teacher: {0}")]
    Student(String),
    /// candle failed (a missing or misshapen weight, most often).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DecoderConfig {
    /// A student of `shape` with HuggingFace's defaults: RMSNorm ε 1e-5, rotary base 10 000,
    /// 2 048 positions, tied embeddings, no special token ids.
    pub fn student(shape: &StudentShape) -> Self {
        Self {
            vocab_size: shape.vocab,
            hidden_size: shape.hidden,
            intermediate_size: shape.intermediate,
            num_hidden_layers: shape.layers,
            num_attention_heads: shape.heads,
            num_key_value_heads: shape.kv_heads,
            rms_norm_eps: 1e-5,
            rope_theta: default_rope_theta(),
            max_position_embeddings: 2048,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_id: None,
            hidden_act: default_act(),
            model_type: default_model_type(),
            initializer_range: default_init_range(),
            head_dim: None,
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
        }
    }

    /// A student of `shape` for `teacher`: the teacher's vocabulary (which `shape` must repeat),
    /// RMSNorm ε, rotary base, positions and special token ids; tied embeddings.
    pub fn student_of(teacher: &DecoderConfig, shape: &StudentShape) -> std::result::Result<Self, DecoderError> {
        if shape.vocab != teacher.vocab_size {
            return Err(DecoderError::Student(format!(
                "vocabulary {} differs from the teacher's {}: token-level distillation compares distributions over the same tokens",
                shape.vocab, teacher.vocab_size
            )));
        }
        let config = Self {
            rms_norm_eps: teacher.rms_norm_eps,
            rope_theta: teacher.rope_theta,
            max_position_embeddings: teacher.max_position_embeddings,
            bos_token_id: teacher.bos_token_id,
            eos_token_id: teacher.eos_token_id,
            ..Self::student(shape)
        };
        config.validate()?;
        Ok(config)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Checks that this decoder implements the configuration.
    pub fn validate(&self) -> std::result::Result<(), DecoderError> {
        let fail = |m: String| Err(DecoderError::Config(m));
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.intermediate_size == 0
            || self.num_hidden_layers == 0
            || self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || self.max_position_embeddings == 0
        {
            return fail(format!("every size must be positive: {self:?}"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return fail(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(format!("head width {} is odd: rotary embedding rotates pairs", self.head_dim()));
        }
        if let Some(h) = self.head_dim
            && h != self.head_dim()
        {
            return fail(format!("head_dim {h} differs from hidden_size / num_attention_heads = {}", self.head_dim()));
        }
        if self.hidden_act != "silu" {
            return fail(format!("hidden_act {:?}: only silu is supported", self.hidden_act));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return fail("rope_scaling is not supported".into());
        }
        if self.attention_bias || self.mlp_bias {
            return fail("attention_bias / mlp_bias are not supported".into());
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 || self.rms_norm_eps.is_nan() || self.rms_norm_eps < 0.0 {
            return fail(format!("rope_theta {} / rms_norm_eps {} out of range", self.rope_theta, self.rms_norm_eps));
        }
        Ok(())
    }

    /// Parameter count of a decoder of this shape (the tied output layer counted once).
    pub fn parameters(&self) -> u64 {
        let (v, h, i) = (self.vocab_size as u64, self.hidden_size as u64, self.intermediate_size as u64);
        let head = self.head_dim() as u64;
        let q = self.num_attention_heads as u64 * head;
        let kv = self.num_key_value_heads as u64 * head;
        let attention = h * q + 2 * h * kv + q * h;
        let feed_forward = 3 * h * i;
        let norms = 2 * h;
        let output = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + output + self.num_hidden_layers as u64 * (attention + feed_forward + norms) + h
    }
}

/// `x · wᵀ` over the last dimension of `x`, as one 2-D matrix product: the weight's gradient is then
/// a single product too (a broadcast weight would get one gradient per batch row, summed).
fn dense(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let in_dim = *dims.last().ok_or_else(|| candle_core::Error::msg("dense: scalar input"))?;
    let rows = x.elem_count() / in_dim.max(1);
    let y = x.reshape((rows, in_dim))?.matmul(&weight.t()?)?;
    *dims.last_mut().expect("non-empty") = weight.dim(0)?;
    y.reshape(dims)
}

/// A bias-free projection, HuggingFace name `weight` `(out, in)`.
#[derive(Clone, Debug)]
struct Projection {
    weight: Tensor,
}

impl Projection {
    fn new(in_dim: usize, out_dim: usize, init_std: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", Init::Randn { mean: 0.0, stdev: init_std })?;
        Ok(Self { weight })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        dense(x, &self.weight)
    }
}

/// RMSNorm from plain ops (`candle_nn::ops::rms_norm` has no backward pass), computed in f32 as
/// HuggingFace's `LlamaRMSNorm` does.
#[derive(Clone, Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        Ok(Self { weight, eps })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &self.weight, self.eps)
    }
}

/// `x · (mean(x²) + ε)^-½ · w` over the last dimension, differentiable.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv_rms)?.to_dtype(dtype)?.broadcast_mul(weight)
}

/// Rotary embedding in HuggingFace's layout (pairs `i` and `i + d/2`), differentiable:
/// `x · cos + rotate_half(x) · sin` for `x` `(batch, heads, seq, d)` and `cos`, `sin`
/// `(1, 1, seq, d)` (each half of the last dimension holding the same angles).
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d - d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// The rotary tables `(positions, head_dim)`, both halves of a row holding the angles
/// `p · base^(−2i/d)`, computed in f32 as HuggingFace and candle's `quantized_llama` do. The ONNX
/// export stores these very tables (`crate::onnx::decoder_export`).
pub(crate) fn rotary_tables(
    head_dim: usize,
    base: f64,
    positions: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| 1f32 / (base as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
    let mut cos = Vec::with_capacity(positions * head_dim);
    let mut sin = Vec::with_capacity(positions * head_dim);
    for p in 0..positions {
        for _ in 0..2 {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    let cos = Tensor::from_vec(cos, (positions, head_dim), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (positions, head_dim), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// Repeats each key/value head `n_rep` times, `(b, kv, t, d)` → `(b, kv·n_rep, t, d)`, query head
/// `h` reading kv head `h / n_rep` (HuggingFace's `repeat_kv`). `cat` and `reshape` have backward
/// passes.
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv, t, d) = x.dims4()?;
    Tensor::cat(&vec![&x; n_rep], 2)?.reshape((b, kv * n_rep, t, d))
}

/// The additive attention bias `(batch or 1, 1, seq, seq)`: 0 where query `i` may read key `j`
/// (`j ≤ i` and key `j` is not padding), [`MASKED`] elsewhere. `attention_mask` is `(batch, seq)`
/// of 0/1 in any dtype.
fn attention_bias(batch: usize, seq: usize, attention_mask: Option<&Tensor>, device: &Device) -> Result<Tensor> {
    let causal: Vec<f32> = (0..seq).flat_map(|i| (0..seq).map(move |j| if j > i { MASKED } else { 0.0 })).collect();
    let causal = Tensor::from_vec(causal, (1, 1, seq, seq), device)?;
    let Some(mask) = attention_mask else { return Ok(causal) };
    let (b, t) = mask.dims2()?;
    if (b, t) != (batch, seq) {
        candle_core::bail!("attention_mask is {:?}, input_ids ({batch}, {seq})", mask.dims());
    }
    // (mask − 1) · 1e9: 0 for real tokens, −1e9 for padding, as a bias on keys.
    let padding = ((mask.to_dtype(DType::F32)? - 1.0)? * (-(MASKED as f64)))?.reshape((batch, 1, 1, seq))?;
    causal.broadcast_add(&padding)
}

#[derive(Clone, Debug)]
struct Attention {
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(c: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let (h, hd, std) = (c.hidden_size, c.head_dim(), c.initializer_range);
        Ok(Self {
            q_proj: Projection::new(h, c.num_attention_heads * hd, std, vb.pp("q_proj"))?,
            k_proj: Projection::new(h, c.num_key_value_heads * hd, std, vb.pp("k_proj"))?,
            v_proj: Projection::new(h, c.num_key_value_heads * hd, std, vb.pp("v_proj"))?,
            o_proj: Projection::new(c.num_attention_heads * hd, h, std, vb.pp("o_proj"))?,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
        })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor, heads: usize| y.reshape((b, t, heads, self.head_dim))?.transpose(1, 2)?.contiguous();
        let q = split(self.q_proj.forward(x)?, self.heads)?;
        let k = split(self.k_proj.forward(x)?, self.kv_heads)?;
        let v = split(self.v_proj.forward(x)?, self.kv_heads)?;
        let q = apply_rotary(&q, cos, sin)?;
        let k = apply_rotary(&k, cos, sin)?;
        let n_rep = self.heads / self.kv_heads;
        let k = repeat_kv(k, n_rep)?;
        let v = repeat_kv(v, n_rep)?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (self.head_dim as f64).sqrt()))?;
        // Softmax in f32 whatever the weights' dtype; `ops::softmax` is max/sub/exp/sum/div, all
        // differentiable (`softmax_last_dim` is not).
        let scores = scores.to_dtype(DType::F32)?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?;
        let y = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, self.heads * self.head_dim))?;
        self.o_proj.forward(&y)
    }
}

#[derive(Clone, Debug)]
struct FeedForward {
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
}

impl FeedForward {
    fn new(c: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i, std) = (c.hidden_size, c.intermediate_size, c.initializer_range);
        Ok(Self {
            gate_proj: Projection::new(h, i, std, vb.pp("gate_proj"))?,
            up_proj: Projection::new(h, i, std, vb.pp("up_proj"))?,
            down_proj: Projection::new(i, h, std, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?.silu()?;
        let up = self.up_proj.forward(x)?;
        self.down_proj.forward(&(gate * up)?)
    }
}

#[derive(Clone, Debug)]
struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: FeedForward,
}

impl Layer {
    fn new(c: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::new(c.hidden_size, c.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(c, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(c.hidden_size, c.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            mlp: FeedForward::new(c, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.input_layernorm.forward(x)?, cos, sin, bias)?)?;
        &x + self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)?
    }

    fn tensors(&self) -> [&Tensor; 9] {
        [
            &self.input_layernorm.weight,
            &self.self_attn.q_proj.weight,
            &self.self_attn.k_proj.weight,
            &self.self_attn.v_proj.weight,
            &self.self_attn.o_proj.weight,
            &self.post_attention_layernorm.weight,
            &self.mlp.gate_proj.weight,
            &self.mlp.up_proj.weight,
            &self.mlp.down_proj.weight,
        ]
    }
}

/// A Llama-family decoder.
#[derive(Clone, Debug)]
pub struct Decoder {
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// `(vocab, hidden)`: `embed_tokens` itself when the embeddings are tied.
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
    config: DecoderConfig,
}

/// What [`Decoder::forward_with_hidden`] returns.
#[derive(Clone, Debug)]
pub struct DecoderOutput {
    /// Next-token logits at every position, `(batch, seq, vocab)`, in the weights' dtype.
    pub logits: Tensor,
    /// The residual stream `(batch, seq, hidden)` at each requested index, in the order asked:
    /// 0 is the embedding output, `k` the output of decoder layer `k` (1-based), before the final
    /// norm for the last layer too (HuggingFace's `hidden_states[-1]` is after it).
    pub hidden_states: Vec<Tensor>,
}

impl Decoder {
    /// Builds the decoder from `vb` with HuggingFace names (`model.embed_tokens.weight`,
    /// `model.layers.N.*`, `model.norm.weight`, `lm_head.weight` unless tied). From a `VarMap`
    /// the weights are created: normal(0, `initializer_range`), norms at 1.
    pub fn new(config: &DecoderConfig, vb: VarBuilder) -> std::result::Result<Self, DecoderError> {
        config.validate()?;
        let c = config;
        let model = vb.pp("model");
        let embed_tokens = model.pp("embed_tokens").get_with_hints(
            (c.vocab_size, c.hidden_size),
            "weight",
            Init::Randn { mean: 0.0, stdev: c.initializer_range },
        )?;
        let layers =
            (0..c.num_hidden_layers).map(|i| Layer::new(c, model.pp("layers").pp(i))).collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(c.hidden_size, c.rms_norm_eps, model.pp("norm"))?;
        let lm_head = if c.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            Projection::new(c.hidden_size, c.vocab_size, c.initializer_range, vb.pp("lm_head"))?.weight
        };
        let (cos, sin) = rotary_tables(c.head_dim(), c.rope_theta, c.max_position_embeddings, vb.dtype(), vb.device())?;
        Ok(Self { embed_tokens, layers, norm, lm_head, cos, sin, config: c.clone() })
    }

    /// Its configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The token embedding `(vocab, hidden)` (also the output layer when tied).
    pub fn embed_tokens(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// Parameter count of the built model (the tied output layer counted once).
    pub fn parameters(&self) -> u64 {
        let mut n = self.embed_tokens.elem_count() + self.norm.weight.elem_count();
        if !self.config.tie_word_embeddings {
            n += self.lm_head.elem_count();
        }
        for layer in &self.layers {
            n += layer.tensors().iter().map(|t| t.elem_count()).sum::<usize>();
        }
        n as u64
    }

    /// Next-token logits `(batch, seq, vocab)` at every position for `input_ids` `(batch, seq)`
    /// (u32), with `attention_mask` `(batch, seq)` of 0/1 (padding on the right) or none.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.forward_with_hidden(input_ids, attention_mask, &[])?.logits)
    }

    /// The output layer's weight `(vocab, hidden)` (the token embedding itself when tied).
    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    /// The final norm's output `(batch, seq, hidden)`: what the output layer turns into logits.
    pub fn final_hidden(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.run(input_ids, attention_mask, &[])?.0)
    }

    /// [`Self::forward`], also returning the residual stream at `hidden_layers` (see
    /// [`DecoderOutput::hidden_states`]).
    pub fn forward_with_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        hidden_layers: &[usize],
    ) -> Result<DecoderOutput> {
        let (normed, hidden_states) = self.run(input_ids, attention_mask, hidden_layers)?;
        Ok(DecoderOutput { logits: dense(&normed, &self.lm_head)?, hidden_states })
    }

    /// The final norm's output, and the residual stream at `hidden_layers`.
    fn run(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        hidden_layers: &[usize],
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (b, t) = input_ids.dims2()?;
        if t == 0 || t > self.config.max_position_embeddings {
            candle_core::bail!("sequence length {t} outside 1..={}", self.config.max_position_embeddings);
        }
        if let Some(&k) = hidden_layers.iter().find(|&&k| k > self.layers.len()) {
            candle_core::bail!("hidden state {k} asked of a decoder with {} layers", self.layers.len());
        }
        let hd = self.config.head_dim();
        let cos = self.cos.narrow(0, 0, t)?.reshape((1, 1, t, hd))?;
        let sin = self.sin.narrow(0, 0, t)?.reshape((1, 1, t, hd))?;
        let bias = attention_bias(b, t, attention_mask, input_ids.device())?;

        let mut x =
            self.embed_tokens.index_select(&input_ids.flatten_all()?, 0)?.reshape((b, t, self.config.hidden_size))?;
        let mut kept: Vec<(usize, Tensor)> = Vec::with_capacity(hidden_layers.len());
        let mut keep = |k: usize, x: &Tensor| {
            if hidden_layers.contains(&k) {
                kept.push((k, x.clone()));
            }
        };
        keep(0, &x);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &cos, &sin, &bias)?;
            keep(i + 1, &x);
        }
        let hidden_states = hidden_layers
            .iter()
            .map(|k| kept.iter().find(|(j, _)| j == k).map(|(_, t)| t.clone()).expect("kept every requested layer"))
            .collect();
        Ok((self.norm.forward(&x)?, hidden_states))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{IndexOp, Var};
    use candle_nn::{Optimizer, VarMap};
    // INTEGRATION: the GGUF reader's module path.
    use crate::teacher::gguf::{self, testing};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    fn tiny(tied: bool) -> DecoderConfig {
        DecoderConfig {
            tie_word_embeddings: tied,
            max_position_embeddings: 16,
            // A larger init than 0.02 so that a tiny random model's logits are not all ~0.
            initializer_range: 0.2,
            ..DecoderConfig::student(&StudentShape {
                layers: 2,
                hidden: 24,
                heads: 3,
                kv_heads: 1,
                intermediate: 40,
                vocab: 50,
            })
        }
    }

    fn smollm2_135m() -> DecoderConfig {
        DecoderConfig {
            rope_theta: 100_000.0,
            max_position_embeddings: 8192,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            ..DecoderConfig::student(&StudentShape {
                layers: 30,
                hidden: 576,
                heads: 9,
                kv_heads: 3,
                intermediate: 1536,
                vocab: 49_152,
            })
        }
    }

    #[test]
    fn parameter_formula_matches_the_built_model_and_smollm2() {
        for config in [tiny(true), tiny(false)] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let decoder = Decoder::new(&config, vb).unwrap();
            let built: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
            assert_eq!(built as u64, config.parameters(), "{config:?}");
            assert_eq!(decoder.parameters(), config.parameters());
        }
        // SmolLM2-135M: 28,311,552 in the (tied) embedding, 3,540,096 per layer, 576 final norm.
        assert_eq!(smollm2_135m().parameters(), 134_515_008);
    }

    #[test]
    fn config_round_trips_through_hf_json_and_rejects_what_it_does_not_implement() {
        let config = smollm2_135m();
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<DecoderConfig>(&json).unwrap(), config);
        // A real HF config.json (SmolLM2-135M-Instruct's fields) parses; unknown fields are ignored.
        let hf = r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,"attention_dropout":0.0,
            "bos_token_id":1,"eos_token_id":2,"hidden_act":"silu","hidden_size":576,"initializer_range":0.041666666666666664,
            "intermediate_size":1536,"max_position_embeddings":8192,"mlp_bias":false,"model_type":"llama",
            "num_attention_heads":9,"num_hidden_layers":30,"num_key_value_heads":3,"pretraining_tp":1,
            "rms_norm_eps":1e-05,"rope_scaling":null,"rope_theta":100000,"tie_word_embeddings":true,
            "torch_dtype":"bfloat16","use_cache":true,"vocab_size":49152}"#;
        let parsed: DecoderConfig = serde_json::from_str(hf).unwrap();
        parsed.validate().unwrap();
        assert_eq!(parsed.parameters(), 134_515_008);
        let mut llama3 = parsed.clone();
        llama3.rope_scaling = Some(serde_json::json!({"rope_type": "llama3", "factor": 8.0}));
        assert!(matches!(llama3.validate(), Err(DecoderError::Config(_))));
        let shape = StudentShape { layers: 4, hidden: 128, heads: 4, kv_heads: 2, intermediate: 256, vocab: 100 };
        assert!(matches!(DecoderConfig::student_of(&parsed, &shape), Err(DecoderError::Student(_))));
        let student = DecoderConfig::student_of(&parsed, &StudentShape { vocab: 49_152, ..shape }).unwrap();
        assert_eq!((student.rope_theta, student.eos_token_id, student.tie_word_embeddings), (100_000.0, Some(2), true));
    }

    /// Every trainable variable receives a non-zero gradient, tied and untied.
    ///
    /// What would break it (each is applied with `apply_op*_no_bwd` in candle-nn 0.11.1, so
    /// `backward()` still succeeds): `candle_nn::ops::rms_norm` (or `RmsNorm`'s `Module::forward`
    /// on contiguous input) in place of [`rms_norm`] cuts every variable before the final norm —
    /// all layers, and the embedding except through a tied output layer; `ops::softmax_last_dim`
    /// in place of `ops::softmax` cuts `q_proj` and `k_proj`; `rotary_emb::rope` / `rope_i` in
    /// place of [`apply_rotary`] cuts `q_proj` and `k_proj` too. The test below
    /// (`fused_candle_ops_cut_gradients_ours_do_not`) shows each of those ops dropping the gradient.
    #[test]
    fn every_variable_gets_a_nonzero_gradient() {
        for tied in [true, false] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let decoder = Decoder::new(&tiny(tied), vb).unwrap();
            let ids = Tensor::new(&[[3u32, 7, 9, 11, 0], [4, 5, 6, 0, 0]], &Device::Cpu).unwrap();
            let mask = Tensor::new(&[[1u32, 1, 1, 1, 0], [1, 1, 1, 0, 0]], &Device::Cpu).unwrap();
            let logits = decoder.forward(&ids, Some(&mask)).unwrap();
            assert_eq!(logits.dims(), &[2, 5, 50]);
            let loss = (logits * random(&[2, 5, 50], 1)).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let data = varmap.data().lock().unwrap();
            assert_eq!(data.len(), if tied { 20 } else { 21 });
            let mut problems = Vec::new();
            for (name, var) in data.iter() {
                match grads.get(var.as_tensor()) {
                    None => problems.push(format!("{name}: no gradient")),
                    Some(g) => {
                        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                        if !(norm > 0.0 && norm.is_finite()) {
                            problems.push(format!("{name}: gradient norm² {norm}"));
                        }
                    }
                }
            }
            assert!(problems.is_empty(), "tied={tied}: {problems:?}");
        }
    }

    /// The four candle ops the TOOLCHAIN notes warn about drop the gradient; the forms used here
    /// compute the same values and keep it.
    #[test]
    fn fused_candle_ops_cut_gradients_ours_do_not() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&random(&[2, 3, 4, 8], 2)).unwrap();
        let w = random(&[8], 3);
        let (cos, sin) = rotary_tables(8, 10_000.0, 4, DType::F32, &dev).unwrap();
        let (cos_half, sin_half) =
            (cos.narrow(1, 0, 4).unwrap().contiguous().unwrap(), sin.narrow(1, 0, 4).unwrap().contiguous().unwrap());
        let (cos4, sin4) = (cos.reshape((1, 1, 4, 8)).unwrap(), sin.reshape((1, 1, 4, 8)).unwrap());
        let r = random(&[2, 3, 4, 8], 4);
        let has_grad =
            |y: &Tensor| (y * &r).unwrap().sum_all().unwrap().backward().unwrap().get(x.as_tensor()).is_some();

        let fused = candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap();
        let ours = rms_norm(&x, &w, 1e-5).unwrap();
        assert!(max_diff(&fused, &ours) < 1e-5);
        assert!(!has_grad(&fused), "candle_nn::ops::rms_norm now has a backward pass");
        assert!(has_grad(&ours));

        let fused = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let ours = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
        assert!(max_diff(&fused, &ours) < 1e-6);
        assert!(!has_grad(&fused), "softmax_last_dim now has a backward pass");
        assert!(has_grad(&ours));

        // HF layout: candle's `rope` (fused), `rope_slow` and ours agree.
        let fused = candle_nn::rotary_emb::rope(&x, &cos_half, &sin_half).unwrap();
        let slow = candle_nn::rotary_emb::rope_slow(&x, &cos_half, &sin_half).unwrap();
        let ours = apply_rotary(&x, &cos4, &sin4).unwrap();
        assert!(max_diff(&fused, &ours) < 1e-6);
        assert!(max_diff(&slow, &ours) < 1e-6);
        assert!(!has_grad(&fused), "rotary_emb::rope now has a backward pass");
        assert!(has_grad(&slow) && has_grad(&ours));

        let fused = candle_nn::rotary_emb::rope_i(&x, &cos_half, &sin_half).unwrap();
        let slow = candle_nn::rotary_emb::rope_i_slow(&x, &cos_half, &sin_half).unwrap();
        assert!(max_diff(&fused, &slow) < 1e-6);
        assert!(!has_grad(&fused), "rotary_emb::rope_i now has a backward pass");
        assert!(has_grad(&slow));
    }

    #[test]
    fn outputs_are_causal_padding_is_masked_and_hidden_states_are_returned() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let decoder = Decoder::new(&tiny(false), vb).unwrap();
        let dev = Device::Cpu;
        // Causal: changing token 2 changes nothing before it.
        let a = decoder.forward(&Tensor::new(&[[3u32, 7, 9, 11]], &dev).unwrap(), None).unwrap();
        let b = decoder.forward(&Tensor::new(&[[3u32, 7, 30, 11]], &dev).unwrap(), None).unwrap();
        assert!(max_diff(&a.i((.., 0..2)).unwrap(), &b.i((.., 0..2)).unwrap()) < 1e-6);
        assert!(max_diff(&a.i((.., 2..)).unwrap(), &b.i((.., 2..)).unwrap()) > 1e-4);
        // A padded key is not read: with position 0 masked (left padding), its token does not
        // matter to the other positions, and the all-masked query 0 gives finite logits.
        let mask = Tensor::new(&[[0u32, 1, 1, 1]], &dev).unwrap();
        let a = decoder.forward(&Tensor::new(&[[5u32, 7, 9, 11]], &dev).unwrap(), Some(&mask)).unwrap();
        let b = decoder.forward(&Tensor::new(&[[40u32, 7, 9, 11]], &dev).unwrap(), Some(&mask)).unwrap();
        assert!(max_diff(&a.i((.., 1..)).unwrap(), &b.i((.., 1..)).unwrap()) < 1e-6);
        let finite = a.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite());
        assert!(finite, "a fully masked query row produced NaN/inf");
        // Hidden states: in the order asked, the embedding output at 0.
        let ids = Tensor::new(&[[3u32, 7, 9]], &dev).unwrap();
        let out = decoder.forward_with_hidden(&ids, None, &[2, 0]).unwrap();
        assert_eq!(out.hidden_states.len(), 2);
        let embedded =
            decoder.embed_tokens().index_select(&ids.flatten_all().unwrap(), 0).unwrap().unsqueeze(0).unwrap();
        assert!(max_diff(&out.hidden_states[1], &embedded) < 1e-7);
        assert_eq!(out.hidden_states[0].dims(), &[1, 3, 24]);
        assert!(decoder.forward_with_hidden(&ids, None, &[3]).is_err());
    }

    /// A student trained by token-level KD (KL at T = 1) on a frozen random teacher gets closer to
    /// it: the training pattern of the distillation loop, end to end.
    #[test]
    fn a_few_kd_steps_bring_the_student_closer_to_a_frozen_teacher() {
        let dev = Device::Cpu;
        let teacher_map = VarMap::new();
        let teacher = Decoder::new(&tiny(true), VarBuilder::from_varmap(&teacher_map, DType::F32, &dev)).unwrap();
        // Freeze: plain tensors (not Vars) carry no gradient.
        let frozen =
            teacher_map.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
        let teacher = Decoder::new(teacher.config(), VarBuilder::from_tensors(frozen, DType::F32, &dev)).unwrap();
        let student_map = VarMap::new();
        let student_config = DecoderConfig { num_hidden_layers: 1, ..tiny(true) };
        let student = Decoder::new(&student_config, VarBuilder::from_varmap(&student_map, DType::F32, &dev)).unwrap();
        let ids = Tensor::new(&[[3u32, 7, 9, 11, 13, 2], [4, 5, 6, 8, 10, 12]], &dev).unwrap();
        let t_logp = candle_nn::ops::log_softmax(&teacher.forward(&ids, None).unwrap(), D::Minus1).unwrap().detach();
        let t_p = t_logp.exp().unwrap();
        let kl = |s: &Decoder| {
            let s_logp = candle_nn::ops::log_softmax(&s.forward(&ids, None).unwrap(), D::Minus1).unwrap();
            ((&t_p * (&t_logp - s_logp).unwrap()).unwrap().sum_all().unwrap() / 12.0).unwrap()
        };
        let mut opt =
            candle_nn::AdamW::new(student_map.all_vars(), candle_nn::ParamsAdamW { lr: 1e-2, ..Default::default() })
                .unwrap();
        let first = kl(&student).to_scalar::<f32>().unwrap();
        for _ in 0..40 {
            opt.backward_step(&kl(&student)).unwrap();
        }
        let last = kl(&student).to_scalar::<f32>().unwrap();
        assert!(last < 0.5 * first, "KL {first} -> {last}");
    }

    /// Against candle-transformers' `quantized_llama` on a synthetic GGUF (tiny random llama, F32
    /// tensors, Q/K permuted as llama.cpp's converter does): every position's logits agree. F32
    /// GGUF tensors make `QMatMul` a plain f32 matmul, so the tolerance is float rounding (1e-4 of
    /// the largest |logit|).
    #[test]
    fn matches_quantized_llama_on_a_synthetic_gguf() {
        use candle_transformers::models::quantized_llama::ModelWeights;
        let dev = Device::Cpu;
        for tied in [true, false] {
            let model = testing::synthetic_llama(tied, 7);
            let bytes = testing::write_gguf(&model);
            let content = candle_core::quantized::gguf_file::Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
            let config = gguf::decoder_config(&content).unwrap();
            let tensors = gguf::dequantize_llama(&content, &mut std::io::Cursor::new(&bytes), &config, &dev).unwrap();
            let ours = Decoder::new(&config, VarBuilder::from_tensors(tensors, DType::F32, &dev)).unwrap();
            let ids: Vec<u32> = vec![1, 9, 4, 33, 17, 2, 25, 8];
            let input = Tensor::new(ids.as_slice(), &dev).unwrap().unsqueeze(0).unwrap();
            let logits = ours.forward(&input, None).unwrap().i(0).unwrap();
            let mut reference = ModelWeights::from_gguf(content, &mut std::io::Cursor::new(&bytes), &dev).unwrap();
            for k in 1..=ids.len() {
                // `forward(prefix, 0)` returns `(1, vocab)`: the logits of the prefix's last position.
                let prefix = Tensor::new(&ids[..k], &dev).unwrap().unsqueeze(0).unwrap();
                let expected = reference.forward(&prefix, 0).unwrap().squeeze(0).unwrap();
                let diff = max_diff(&logits.i(k - 1).unwrap(), &expected);
                let scale = expected.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
                assert!(
                    diff < 1e-4 * scale,
                    "tied={tied} position {}: max |Δlogit| {diff} (largest |logit| {scale})",
                    k - 1
                );
            }
        }
    }

    /// Logit agreement statistics of one position.
    fn compare(ours: &[f32], reference: &[f32]) -> (f32, f32, usize, usize, f32) {
        let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap();
        let max_abs = ours.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let (lo, hi) = reference.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let (a, r) = (argmax(ours), argmax(reference));
        // How far below the reference's best the reference puts our best token.
        let gap = reference[r] - reference[a];
        (max_abs, hi - lo, a, r, gap)
    }

    /// The real teacher, dequantized to f32 and run by this decoder, against candle-transformers'
    /// `quantized_llama` running the Q4_1/Q8_0 weights directly, at every position of a real
    /// sentence.
    ///
    /// They cannot agree to float rounding: `QMatMul` on Q4_1 weights quantizes the *activations*
    /// to Q8_1 (blocks of 32, 8-bit) before each dot product, and the tied Q8_0 output layer
    /// quantizes them to Q8_0; we multiply the dequantized weights by unquantized f32 activations.
    /// That is about 0.4% relative error per activation, compounding over 30 layers. Tolerance:
    /// max |Δlogit| ≤ 5% of the reference's logit range at each position, and the same argmax
    /// except at a near-tie (reference margin between the two tokens ≤ the observed max |Δ|).
    /// The exact-arithmetic check on the same weights is the next test.
    #[test]
    fn real_teacher_matches_quantized_llama_within_quantization_error() {
        use candle_transformers::models::quantized_llama::ModelWeights;
        let dev = Device::Cpu;
        let path = testing::teacher_gguf_path();
        let teacher = gguf::load_llama_gguf(&path, &dev).unwrap();
        assert_eq!(teacher.config, smollm2_135m());
        let ours = Decoder::new(&teacher.config, VarBuilder::from_tensors(teacher.tensors, DType::F32, &dev)).unwrap();
        // "The quick brown fox jumps over the lazy dog." in SmolLM2's tokenizer (see
        // tokenizer_from_gguf's tests for where these ids come from).
        let ids: Vec<u32> = vec![504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30];
        let input = Tensor::new(ids.as_slice(), &dev).unwrap().unsqueeze(0).unwrap();
        let logits = ours.forward(&input, None).unwrap().i(0).unwrap();

        let (content, mut file) = gguf::read_header(&path).unwrap();
        let mut reference = ModelWeights::from_gguf(content, &mut file, &dev).unwrap();
        for k in 1..=ids.len() {
            reference.clear_kv_cache();
            let prefix = Tensor::new(&ids[..k], &dev).unwrap().unsqueeze(0).unwrap();
            let expected = reference.forward(&prefix, 0).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
            let got = logits.i(k - 1).unwrap().to_vec1::<f32>().unwrap();
            let (max_abs, range, a, r, gap) = compare(&got, &expected);
            eprintln!("position {}: max |Δ| {max_abs:.4}, range {range:.2}, argmax ours {a} ref {r}", k - 1);
            assert!(max_abs <= 0.05 * range, "position {}: max |Δlogit| {max_abs} > 5% of range {range}", k - 1);
            assert!(a == r || gap <= max_abs, "position {}: argmax {a} vs {r}, reference margin {gap}", k - 1);
        }
    }

    /// Exact-arithmetic parity on the real weights: the first two layers of the teacher, written
    /// back as an F32 GGUF *in llama.cpp's layout* (Q/K permuted, interleaved rope), run by
    /// `quantized_llama` (F32 tensors: plain matmuls) and by this decoder (the loader's
    /// un-permuted weights, HF rope). Any error in the un-permutation, rope base, norm or GQA
    /// shows up far above the tolerance (1e-4 of the largest |logit|: f32 rounding with a different
    /// summation order is ~1e-6 relative).
    #[test]
    fn real_teacher_weights_match_quantized_llama_exactly_in_f32() {
        use candle_core::quantized::gguf_file::{Content, Value};
        use candle_transformers::models::quantized_llama::ModelWeights;
        let dev = Device::Cpu;
        let path = testing::teacher_gguf_path();
        let (content, mut file) = gguf::read_header(&path).unwrap();
        let layers = 2;
        let mut metadata: Vec<(String, Value)> = content
            .metadata
            .iter()
            .filter(|(k, _)| *k != "llama.block_count")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        metadata.push(("llama.block_count".into(), Value::U32(layers as u32)));
        let mut tensors = Vec::new();
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let keep = !name.starts_with("blk.") || name.split('.').nth(1).unwrap().parse::<usize>().unwrap() < layers;
            if keep {
                // Dequantized as stored: llama.cpp's layout, Q/K still permuted.
                tensors.push((name.clone(), content.tensor(&mut file, name, &dev).unwrap().dequantize(&dev).unwrap()));
            }
        }
        let bytes = testing::write_gguf_parts(&metadata, &tensors);
        drop(tensors);
        let small = Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
        let config = gguf::decoder_config(&small).unwrap();
        assert_eq!(config.num_hidden_layers, layers);
        let weights = gguf::dequantize_llama(&small, &mut std::io::Cursor::new(&bytes), &config, &dev).unwrap();
        let ours = Decoder::new(&config, VarBuilder::from_tensors(weights, DType::F32, &dev)).unwrap();
        let mut reference = ModelWeights::from_gguf(small, &mut std::io::Cursor::new(&bytes), &dev).unwrap();

        let ids: Vec<u32> = vec![1, 4093, 198, 1780, 314, 216, 33, 34, 27, 39, 47, 2];
        let input = Tensor::new(ids.as_slice(), &dev).unwrap().unsqueeze(0).unwrap();
        let logits = ours.forward(&input, None).unwrap().i(0).unwrap();
        for k in 1..=ids.len() {
            let prefix = Tensor::new(&ids[..k], &dev).unwrap().unsqueeze(0).unwrap();
            let expected = reference.forward(&prefix, 0).unwrap().squeeze(0).unwrap();
            let diff = max_diff(&logits.i(k - 1).unwrap(), &expected);
            let scale = expected.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
            eprintln!("position {}: max |Δlogit| {diff:.2e}, largest |logit| {scale:.2}", k - 1);
            assert!(diff < 1e-4 * scale, "position {}: max |Δlogit| {diff} (largest |logit| {scale})", k - 1);
        }
    }
}
