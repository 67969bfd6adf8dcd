//! Tokenization shared by the worker (training, evaluation, offline predictions) and the server,
//! so that a text becomes the same token ids in both: truncated to the model's length, never
//! padded (a batch is padded to its own longest sequence by [`crate::session::Padded`]).

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

/// Why a tokenizer could not be prepared or used.
#[derive(Debug, thiserror::Error)]
#[error("tokenizer {path}: {message}")]
pub struct TokenizerError {
    /// The tokenizer file.
    pub path: String,
    /// What failed.
    pub message: String,
}

/// Loads `tokenizer.json`, truncating to `max_len` tokens and never padding (all-MiniLM-L6-v2's
/// file pads every input to 128, which would waste most of each batch).
pub fn load_tokenizer(path: &Path, max_len: usize) -> Result<Tokenizer, TokenizerError> {
    let err = |message: String| TokenizerError { path: path.display().to_string(), message };
    let tokenizer = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
    truncating(tokenizer, max_len).map_err(|e| err(e.to_string()))
}

/// `tokenizer` set to truncate to `max_len` tokens and never pad.
pub fn truncating(mut tokenizer: Tokenizer, max_len: usize) -> tokenizers::Result<Tokenizer> {
    tokenizer.with_padding(None);
    tokenizer.with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))?;
    Ok(tokenizer)
}

/// Token ids of every text, with special tokens.
pub fn encode_all(tokenizer: &Tokenizer, texts: &[&str]) -> Result<Vec<Vec<u32>>, TokenizerError> {
    let encodings = tokenizer
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| TokenizerError { path: "(loaded)".into(), message: e.to_string() })?;
    Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
}
