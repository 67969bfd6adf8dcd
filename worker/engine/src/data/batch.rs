//! Tokenization and batching: texts are tokenized once (truncated, never padded), and each batch
//! is padded only to its own longest sequence.

use candle_core::{Device, Result as CandleResult, Tensor};

pub use distillery_model::tokenize::{TokenizerError, encode_all, load_tokenizer, truncating};

/// `(input_ids, attention_mask)`, both `(batch, longest)` u32, padding with id 0.
pub fn pad(sequences: &[&[u32]], device: &Device) -> CandleResult<(Tensor, Tensor)> {
    let padded = Padded::new(sequences);
    let shape = (sequences.len(), padded.longest);
    Ok((Tensor::from_vec(padded.ids, shape, device)?, Tensor::from_vec(padded.mask, shape, device)?))
}

pub use distillery_model::session::Padded;

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
