//! Tokenization and batching: texts are tokenized once (truncated, never padded), and each batch
//! is padded only to its own longest sequence.

use std::path::Path;

use candle_core::{Device, Result as CandleResult, Tensor};
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

/// `tokenizer` set to truncate to `max_len` tokens and never pad: batches are padded by [`pad`]
/// to their own longest sequence.
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

/// `(input_ids, attention_mask)`, both `(batch, longest)` u32, padding with id 0.
pub fn pad(sequences: &[&[u32]], device: &Device) -> CandleResult<(Tensor, Tensor)> {
    let padded = Padded::new(sequences);
    let shape = (sequences.len(), padded.longest);
    Ok((Tensor::from_vec(padded.ids, shape, device)?, Tensor::from_vec(padded.mask, shape, device)?))
}

/// A batch padded to its longest sequence (at least 1), row-major `(batch, longest)`.
pub struct Padded {
    /// Token ids, 0 after each sequence's end.
    pub ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Vec<u32>,
    /// The padded length.
    pub longest: usize,
}

impl Padded {
    /// Pads `sequences` with id 0 to the longest of them.
    pub fn new(sequences: &[&[u32]]) -> Self {
        let longest = sequences.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(sequences.len() * longest);
        let mut mask = Vec::with_capacity(sequences.len() * longest);
        for s in sequences {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(0, longest - s.len()));
            mask.extend(std::iter::repeat_n(1u32, s.len()));
            mask.extend(std::iter::repeat_n(0u32, longest - s.len()));
        }
        Self { ids, mask, longest }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_the_longest_in_the_batch() {
        let (ids, mask) = pad(&[&[101, 7, 102], &[101, 102]], &Device::Cpu).unwrap();
        assert_eq!(ids.to_vec2::<u32>().unwrap(), [[101, 7, 102], [101, 102, 0]]);
        assert_eq!(mask.to_vec2::<u32>().unwrap(), [[1, 1, 1], [1, 1, 0]]);
    }
}
