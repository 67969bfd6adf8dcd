//! A BERT-family encoder (Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional
//! Transformers for Language Understanding") for training in candle: teacher and student share it.
//!
//! candle-transformers' `BertModel` cannot be used for training here: its fast LayerNorm has no
//! backward pass (no Var before a LayerNorm would receive a gradient) and it keeps per-layer hidden
//! states private (feature alignment needs them). This copy runs its LayerNorms, GELUs, biases and
//! attention softmaxes through [`crate::model::fused`] (one pass forward, one backward) and its dense
//! layers as single 2-D matrix products, and returns every layer's output. Tensor names follow HuggingFace's BERT, so
//! teacher weights load unchanged and a saved student is a HuggingFace-layout model.
//! Dropout is left out so that a fixed seed gives the same result on every run.

use crate::model::fused;
use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder, embedding};
use serde::{Deserialize, Serialize};

/// The HuggingFace `config.json` fields of a BERT-family encoder.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Longest input.
    pub max_position_embeddings: usize,
    /// Segment vocabulary.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Activation; only `gelu` (erf) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Model type, `bert`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Width of a factorized word-embedding table (ALBERT's `embedding_size`): token ids look up
    /// `(vocab, embedding_size)` rows that a bias-free projection `word_projection` maps to the
    /// hidden width. Unset: the table is `(vocab, hidden)`, as in BERT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_model_type() -> String {
    "bert".into()
}

impl EncoderConfig {
    /// Parameter count of an encoder of this shape (embeddings and layers, no pooler or head).
    pub fn parameters(&self) -> u64 {
        let (v, h, i, p, t) = (
            self.vocab_size as u64,
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.max_position_embeddings as u64,
            self.type_vocab_size as u64,
        );
        let word = match self.embedding_size {
            Some(e) => v * e as u64 + e as u64 * h,
            None => v * h,
        };
        let embeddings = word + (p + t) * h + 2 * h;
        let attention = 4 * (h * h + h) + 2 * h;
        let feed_forward = (h * i + i) + (i * h + h) + 2 * h;
        embeddings + self.num_hidden_layers as u64 * (attention + feed_forward)
    }
}

/// LayerNorm from plain ops, so that gradients flow through it.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias, eps: eps as f32 })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fused::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// A fully connected layer over the last dimension, HuggingFace names `weight` `(out, in)` and
/// `bias` `(out)`.
///
/// candle_nn's `Linear` multiplies a `(batch, seq, in)` input by the weight broadcast to
/// `(batch, in, out)`: its backward pass then forms one weight gradient per example and sums them.
/// Flattening the leading dimensions first makes the weight's gradient a single matrix product.
pub struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    /// Loads (or, from a `VarMap`, creates) a layer `in_dim → out_dim`, with a bias or without.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        let bias = match bias {
            true => Some(vb.get_with_hints(out_dim, "bias", candle_nn::Init::Uniform { lo: -bound, up: bound })?),
            false => None,
        };
        Ok(Self { weight, bias })
    }
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let in_dim = dims.pop().unwrap_or(1);
        let rows: usize = dims.iter().product();
        let mut y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?;
        if let Some(bias) = &self.bias {
            y = fused::bias_add(&y, bias)?;
        }
        dims.push(self.weight.dim(0)?);
        y.reshape(dims)
    }
}

struct Embeddings {
    word: Embedding,
    /// `(embedding_size → hidden)` when the word table is factorized.
    word_projection: Option<Dense>,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
}

impl Embeddings {
    fn new(c: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let width = c.embedding_size.unwrap_or(c.hidden_size);
        let word_projection = match c.embedding_size {
            Some(e) => Some(Dense::new(e, c.hidden_size, false, vb.pp("word_projection"))?),
            None => None,
        };
        Ok(Self {
            word: embedding(c.vocab_size, width, vb.pp("word_embeddings"))?,
            word_projection,
            position: embedding(c.max_position_embeddings, c.hidden_size, vb.pp("position_embeddings"))?,
            token_type: embedding(c.type_vocab_size, c.hidden_size, vb.pp("token_type_embeddings"))?,
            norm: LayerNorm::new(c.hidden_size, c.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor) -> Result<Tensor> {
        let seq = input_ids.dim(1)?;
        let positions = Tensor::arange(0u32, seq as u32, input_ids.device())?;
        let mut words = self.word.forward(input_ids)?;
        if let Some(projection) = &self.word_projection {
            words = projection.forward(&words)?;
        }
        let x = words.broadcast_add(&self.position.forward(&positions)?)?;
        let x = (x + self.token_type.forward(token_type_ids)?)?;
        self.norm.forward(&x)
    }
}

struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
    heads: usize,
}

impl Layer {
    fn new(c: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let attention = vb.pp("attention");
        Ok(Self {
            query: Dense::new(h, h, true, attention.pp("self").pp("query"))?,
            key: Dense::new(h, h, true, attention.pp("self").pp("key"))?,
            value: Dense::new(h, h, true, attention.pp("self").pp("value"))?,
            attention_out: Dense::new(h, h, true, attention.pp("output").pp("dense"))?,
            attention_norm: LayerNorm::new(h, c.layer_norm_eps, attention.pp("output").pp("LayerNorm"))?,
            intermediate: Dense::new(h, i, true, vb.pp("intermediate").pp("dense"))?,
            output: Dense::new(i, h, true, vb.pp("output").pp("dense"))?,
            output_norm: LayerNorm::new(h, c.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: c.num_attention_heads,
        })
    }

    /// `x`: (batch, seq, hidden); `mask_bias`: (batch, seq), 0 for real tokens and a large
    /// negative number for padding.
    fn forward(&self, x: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let d = h / self.heads;
        let split = |t: Tensor| t.reshape((b, s, self.heads, d))?.transpose(1, 2)?.contiguous();
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let probs = fused::attention_softmax(&q.matmul(&k.t()?)?, mask_bias, 1.0 / (d as f64).sqrt())?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?;
        let x = self.attention_norm.forward(&(self.attention_out.forward(&context)? + x)?)?;
        let ff = self.output.forward(&fused::gelu(&self.intermediate.forward(&x)?)?)?;
        self.output_norm.forward(&(ff + x)?)
    }
}

/// A BERT-family encoder.
pub struct Encoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    /// Its configuration.
    pub config: EncoderConfig,
}

/// What a forward pass returns.
pub struct EncoderOutput {
    /// Output of every layer, `(batch, seq, hidden)` each; the last is the encoder's output.
    pub hidden_states: Vec<Tensor>,
}

impl EncoderOutput {
    /// The last layer's output.
    pub fn last(&self) -> &Tensor {
        self.hidden_states.last().expect("an encoder has at least one layer")
    }
}

impl Encoder {
    /// Builds the encoder from `vb` (HuggingFace names: `embeddings.*`, `encoder.layer.N.*`).
    pub fn new(config: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        if config.hidden_act != "gelu" {
            candle_core::bail!("unsupported hidden_act {:?}: only gelu is supported", config.hidden_act);
        }
        let embeddings = Embeddings::new(config, vb.pp("embeddings"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::new(config, vb.pp("encoder").pp("layer").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self { embeddings, layers, config: config.clone() })
    }

    /// Runs the encoder on `input_ids` and `attention_mask` (both `(batch, seq)` u32; segment ids
    /// are all 0 for single texts).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<EncoderOutput> {
        self.forward_from(0, None, input_ids, attention_mask)
    }

    /// The output of the embeddings and layers `..end`, with no gradient: frozen lower layers.
    pub fn frozen_lower(&self, end: usize, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let mask_bias = mask_bias(attention_mask)?;
        let mut x = self.embeddings.forward(input_ids, &input_ids.zeros_like()?)?.detach();
        for layer in &self.layers[..end] {
            x = layer.forward(&x, &mask_bias)?.detach();
        }
        Ok(x)
    }

    /// Runs layers `start..` on `hidden` (the output of layer `start − 1`), or from the
    /// embeddings when `hidden` is `None`. Lets frozen lower layers be computed once and cached.
    pub fn forward_from(
        &self,
        start: usize,
        hidden: Option<&Tensor>,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<EncoderOutput> {
        let mask_bias = mask_bias(attention_mask)?;
        let mut x = match hidden {
            Some(h) => h.clone(),
            None => self.embeddings.forward(input_ids, &input_ids.zeros_like()?)?,
        };
        let mut hidden_states = Vec::with_capacity(self.layers.len());
        for layer in &self.layers[start..] {
            x = layer.forward(&x, &mask_bias)?;
            hidden_states.push(x.clone());
        }
        Ok(EncoderOutput { hidden_states })
    }
}

/// The additive attention bias of `attention_mask` `(batch, seq)`: `(batch, seq)`, 0 for real
/// tokens and a large negative number for padding.
fn mask_bias(attention_mask: &Tensor) -> Result<Tensor> {
    (attention_mask.to_dtype(DType::F32)? - 1.0)? * 1e4
}

/// Mean of token states over real tokens: `(batch, seq, hidden)` → `(batch, hidden)`.
pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let mask = attention_mask.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    summed.broadcast_div(&mask.sum(1)?.clamp(1e-9, f64::MAX)?)
}

/// The first token's state: `(batch, seq, hidden)` → `(batch, hidden)`.
pub fn cls_pool(hidden: &Tensor) -> Result<Tensor> {
    hidden.narrow(1, 0, 1)?.squeeze(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use candle_nn::{Optimizer, VarMap};

    fn tiny() -> EncoderConfig {
        EncoderConfig {
            vocab_size: 50,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 32,
            max_position_embeddings: 32,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
            model_type: "bert".into(),
            embedding_size: None,
        }
    }

    #[test]
    fn parameter_formula_matches_the_built_model() {
        for config in [tiny(), EncoderConfig { embedding_size: Some(6), ..tiny() }] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            Encoder::new(&config, vb).unwrap();
            let built: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
            assert_eq!(built as u64, config.parameters(), "{config:?}");
        }
    }

    #[test]
    fn every_variable_gets_a_gradient_and_padding_is_ignored() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let encoder = Encoder::new(&tiny(), vb).unwrap();
        let ids = Tensor::new(&[[2u32, 7, 9, 0], [3, 4, 0, 0]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 0], [1, 1, 0, 0]], &Device::Cpu).unwrap();
        let out = encoder.forward(&ids, &mask).unwrap();
        assert_eq!(out.hidden_states.len(), 2);
        let pooled = mean_pool(out.last(), &mask).unwrap();
        let loss = pooled.sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let vars = varmap.all_vars();
        let missing = vars.iter().filter(|v| grads.get(v.as_tensor()).is_none()).count();
        // Position 3 and the token_type row 1 are never used, but the tables still get a gradient.
        assert_eq!(missing, 0, "{missing} of {} variables got no gradient", vars.len());

        // Changing a padded token changes nothing the pooled output sees.
        let ids2 = Tensor::new(&[[2u32, 7, 9, 42], [3, 4, 17, 5]], &Device::Cpu).unwrap();
        let pooled2 = mean_pool(encoder.forward(&ids2, &mask).unwrap().last(), &mask).unwrap();
        let diff = (pooled - pooled2).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "padding leaked into the output: {diff}");
    }

    #[test]
    fn a_few_steps_reduce_a_loss_through_every_layer() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let encoder = Encoder::new(&tiny(), vb).unwrap();
        let ids = Tensor::new(&[[2u32, 7, 9], [3, 4, 5]], &Device::Cpu).unwrap();
        let mask = Tensor::ones((2, 3), DType::U32, &Device::Cpu).unwrap();
        // Zero-mean targets a LayerNorm output can reach: alternating signs, and their negation.
        let alternating: Vec<f32> = (0..16).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let negated: Vec<f32> = alternating.iter().map(|v| -v).collect();
        let target = Tensor::new(vec![alternating, negated], &Device::Cpu).unwrap();
        let first_layer_weight: Var =
            varmap.data().lock().unwrap().get("encoder.layer.0.attention.self.query.weight").unwrap().clone();
        let before = first_layer_weight.as_tensor().copy().unwrap();
        let mut opt =
            candle_nn::AdamW::new(varmap.all_vars(), candle_nn::ParamsAdamW { lr: 1e-2, ..Default::default() })
                .unwrap();
        let loss_at = |e: &Encoder| {
            let pooled = cls_pool(e.forward(&ids, &mask).unwrap().last()).unwrap();
            candle_nn::loss::mse(&pooled, &target).unwrap()
        };
        let first = loss_at(&encoder).to_scalar::<f32>().unwrap();
        for _ in 0..30 {
            opt.backward_step(&loss_at(&encoder)).unwrap();
        }
        let last = loss_at(&encoder).to_scalar::<f32>().unwrap();
        assert!(last < first * 0.2, "loss {first} -> {last}");
        let moved = (first_layer_weight.as_tensor() - before).unwrap().abs().unwrap().sum_all().unwrap();
        assert!(moved.to_scalar::<f32>().unwrap() > 0.0, "the first layer (before a LayerNorm) did not train");
    }
}
