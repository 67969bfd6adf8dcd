//! Inspecting a teacher model directory (HuggingFace layout: `config.json`, `model.safetensors`,
//! `tokenizer.json`) with candle: its configuration, parameter count and tokenizer.

use std::path::{Path, PathBuf};

use candle_transformers::models::bert::Config as BertConfig;

/// What a teacher directory holds.
#[derive(Debug)]
pub struct TeacherInfo {
    /// The BERT-family configuration.
    pub config: BertConfig,
    /// Number of parameters in `model.safetensors`.
    pub parameters: u64,
    /// Number of tensors in `model.safetensors`.
    pub tensors: usize,
    /// Size of `model.safetensors` in bytes.
    pub weights_bytes: u64,
    /// Vocabulary size of `tokenizer.json`.
    pub tokenizer_vocab: usize,
    /// Whether the weights carry a classification head (`classifier.weight`).
    pub has_classifier: bool,
}

/// Why a teacher directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    /// A required file is missing.
    #[error(
        "teacher directory {dir} has no {file} (a HuggingFace model directory needs config.json, model.safetensors and tokenizer.json)"
    )]
    MissingFile {
        /// The directory.
        dir: PathBuf,
        /// The file.
        file: &'static str,
    },
    /// `config.json` is not a BERT-family configuration.
    #[error("{path}: not a BERT-family config: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The weights could not be read.
    #[error("{path}: cannot read safetensors: {source}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// candle's error.
        source: candle_core::Error,
    },
    /// The tokenizer could not be read.
    #[error("{path}: cannot load tokenizer: {message}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// The tokenizer's message.
        message: String,
    },
}

/// Reads a teacher directory's configuration, weights and tokenizer.
pub fn inspect(dir: &Path) -> Result<TeacherInfo, TeacherError> {
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        if !dir.join(file).is_file() {
            return Err(TeacherError::MissingFile { dir: dir.into(), file });
        }
    }
    let config_path = dir.join("config.json");
    let config: BertConfig = std::fs::read_to_string(&config_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .map_err(|message| TeacherError::Config { path: config_path.clone(), message })?;
    let weights_path = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights_path, &candle_core::Device::Cpu)
        .map_err(|source| TeacherError::Weights { path: weights_path.clone(), source })?;
    // Float tensors only: `embeddings.position_ids` is an integer buffer, not a parameter.
    let parameters = tensors.values().filter(|t| t.dtype().is_float()).map(|t| t.elem_count() as u64).sum();
    let has_classifier = tensors.keys().any(|k| k.starts_with("classifier."));
    let weights_bytes = std::fs::metadata(&weights_path).map(|m| m.len()).unwrap_or(0);
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| TeacherError::Tokenizer { path: tokenizer_path, message: e.to_string() })?;
    Ok(TeacherInfo {
        config,
        parameters,
        tensors: tensors.len(),
        weights_bytes,
        tokenizer_vocab: tokenizer.get_vocab_size(true),
        has_classifier,
    })
}
