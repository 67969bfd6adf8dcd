//! `distillery-worker generate`: text sampled from a causal-LM artifact (its `model.safetensors`,
//! `config.json` and `tokenizer.json`), greedily or at a temperature, so a person can see what a
//! student learned. The whole sequence is run again for every new token (no key/value cache): a
//! distilled student is small and the generations short.

use std::path::Path;

use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use crate::model::decoder::{Decoder, DecoderConfig};

/// Why an artifact cannot generate.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A file of the artifact is missing or unreadable.
    #[error("{path}: {message}")]
    Artifact {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The model failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A causal LM ready to generate.
pub struct LanguageModel {
    /// The decoder.
    pub decoder: Decoder,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The token that ends a text, when the tokenizer has one.
    pub end_of_text: Option<u32>,
}

/// How to sample.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// New tokens at most.
    pub max_tokens: usize,
    /// 0: greedy (the most likely token every time); above: sample from `softmax(logits / t)`.
    pub temperature: f64,
    /// Seed of the sampler.
    pub seed: u64,
}

impl LanguageModel {
    /// Loads the causal-LM artifact in `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, GenerateError> {
        let artifact =
            |path: &Path, message: String| GenerateError::Artifact { path: path.display().to_string(), message };
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| artifact(&config_path, e.to_string()))?;
        let config: DecoderConfig = serde_json::from_str(&text).map_err(|e| {
            artifact(
                &config_path,
                format!("not a Llama-family decoder's config ({e}); generate needs a causal-lm artifact"),
            )
        })?;
        let weights = dir.join("model.safetensors");
        let tensors =
            candle_core::safetensors::load(&weights, device).map_err(|e| artifact(&weights, e.to_string()))?;
        let decoder = Decoder::new(&config, VarBuilder::from_tensors(tensors, DType::F32, device))
            .map_err(|e| artifact(&weights, e.to_string()))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| artifact(&tokenizer_path, e.to_string()))?;
        let end_of_text = crate::data::corpus::end_of_text(&tokenizer, config.eos_token_id);
        Ok(Self { decoder, tokenizer, end_of_text })
    }

    /// `prompt` continued by at most `sampling.max_tokens` tokens (fewer when the end-of-text
    /// token comes first); returns the continuation alone.
    pub fn generate(&self, prompt: &str, sampling: Sampling, device: &Device) -> Result<String, GenerateError> {
        continue_text(&self.decoder, &self.tokenizer, self.end_of_text, prompt, sampling, device)
    }
}

/// `prompt` continued by at most `sampling.max_tokens` tokens (fewer when the end-of-text
/// token comes first); returns the continuation alone.
/// `prompt` continued by `decoder` (see [`LanguageModel::generate`]).
pub fn continue_text(
    decoder: &Decoder,
    tokenizer: &Tokenizer,
    end_of_text: Option<u32>,
    prompt: &str,
    sampling: Sampling,
    device: &Device,
) -> Result<String, GenerateError> {
    let mut ids = tokenizer
        .encode(prompt, false)
        .map_err(|e| GenerateError::Artifact { path: "tokenizer.json".into(), message: e.to_string() })?
        .get_ids()
        .to_vec();
    let start = ids.len();
    let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed);
    let limit = decoder.config().max_position_embeddings;
    for _ in 0..sampling.max_tokens {
        let window = &ids[ids.len().saturating_sub(limit)..];
        let input = Tensor::new(window, device)?.unsqueeze(0)?;
        let logits = decoder.forward(&input, None)?.i((0, window.len() - 1))?;
        let next = if sampling.temperature <= 0.0 {
            logits.argmax(D::Minus1)?.to_scalar::<u32>()?
        } else {
            let p = candle_nn::ops::softmax(&(logits / sampling.temperature)?, D::Minus1)?.to_vec1::<f32>()?;
            let dist = WeightedIndex::new(&p).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            dist.sample(&mut rng) as u32
        };
        if Some(next) == end_of_text {
            break;
        }
        ids.push(next);
    }
    tokenizer
        .decode(&ids[start..], false)
        .map_err(|e| GenerateError::Artifact { path: "tokenizer.json".into(), message: e.to_string() })
}
