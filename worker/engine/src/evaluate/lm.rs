//! Held-out figures of a causal LM on packed sequences: perplexity (the exponential of the mean
//! next-token negative log-likelihood), next-token top-1 accuracy, and the KL divergence from
//! the teacher (over the teacher's top-k buckets at temperature 1, see
//! [`crate::train::token_kd`]).

use candle_core::{D, Device, Result, Tensor};
use candle_nn::ops::log_softmax;
use serde::{Deserialize, Serialize};

use crate::model::decoder::Decoder;
use crate::train::lm::{batch_tensors, cache_rows, predicted_logits};
use crate::train::token_kd::{TopK, bucket_kl};

/// A model's figures on held-out sequences.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LmFigures {
    /// `exp(mean negative log-likelihood)` of the next token.
    pub perplexity: f64,
    /// Fraction of positions whose most likely next token is the actual one.
    pub top1: f64,
    /// Mean KL(teacher ‖ model) per position over the teacher's top-k buckets at T = 1 (absent
    /// for the teacher itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_to_teacher: Option<f64>,
    /// Positions scored.
    pub tokens: usize,
}

/// Running sums of [`LmFigures`]. Sums of disjoint positions add up ([`Tally::merge`]): the
/// figures of shards joined are those of one pass over them all. Serialized as its raw sums (a
/// teacher-outputs shard's record carries them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Total negative log-likelihood of the next tokens.
    nll: f64,
    /// Positions whose most likely next token is the actual one.
    correct: usize,
    /// Total KL(teacher ‖ model) over the positions (0 without a teacher).
    kl: f64,
    /// Positions scored.
    tokens: usize,
}

impl Tally {
    /// Adds the sums of other positions (another shard's).
    pub fn merge(&mut self, other: &Tally) {
        self.nll += other.nll;
        self.correct += other.correct;
        self.kl += other.kl;
        self.tokens += other.tokens;
    }

    /// Positions scored.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Adds positions with `logits` `(n, vocab)` and their `targets` `(n,)`, and the teacher's
    /// bucketed view of them when given.
    pub fn add(&mut self, logits: &Tensor, targets: &Tensor, teacher: Option<(&Tensor, &Tensor)>) -> Result<()> {
        let n = targets.dim(0)?;
        let log_p = log_softmax(logits, D::Minus1)?;
        let picked = log_p.gather(&targets.unsqueeze(1)?, D::Minus1)?;
        self.nll -= f64::from(picked.sum_all()?.to_scalar::<f32>()?);
        let best = logits.argmax(D::Minus1)?;
        self.correct += best.eq(targets)?.to_dtype(candle_core::DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize;
        if let Some((ids, log_probs)) = teacher {
            self.kl += f64::from(bucket_kl(logits, ids, log_probs, 1.0)?.to_scalar::<f32>()?) * n as f64;
        }
        self.tokens += n;
        Ok(())
    }

    /// The figures (with `kl_to_teacher` when the tally had a teacher).
    pub fn figures(&self, with_teacher: bool) -> LmFigures {
        let n = self.tokens.max(1) as f64;
        LmFigures {
            perplexity: (self.nll / n).exp(),
            top1: self.correct as f64 / n,
            kl_to_teacher: with_teacher.then_some(self.kl / n),
            tokens: self.tokens,
        }
    }
}

/// `decoder`'s figures on `sequences` (all of one length), `batch` sequences at a time; with the
/// teacher's top-k outputs on them (rows as [`cache_rows`] numbers them), the KL too.
pub fn evaluate(
    decoder: &Decoder,
    sequences: &[Vec<u32>],
    teacher: Option<&TopK>,
    batch: usize,
    device: &Device,
) -> Result<LmFigures> {
    let mut tally = Tally::default();
    let length = sequences.first().map_or(0, Vec::len);
    let all: Vec<usize> = (0..sequences.len()).collect();
    for chunk in all.chunks(batch.max(1)) {
        let (ids, targets) = batch_tensors(sequences, chunk, device)?;
        let logits = predicted_logits(decoder, &ids)?;
        let view = match teacher {
            Some(cache) => {
                let rows = cache_rows(chunk, length);
                Some((cache.ids_of(&rows, device)?, cache.log_probs(&rows, 1.0, device)?))
            }
            None => None,
        };
        tally.add(&logits, &targets, view.as_ref().map(|(a, b)| (a, b)))?;
    }
    Ok(tally.figures(teacher.is_some()))
}

/// The share of the gap between the corpus-only student and the teacher that distillation
/// closed, in log-perplexity (cross-entropy) terms: `(ln ppl_corpus − ln ppl_kd) / (ln
/// ppl_corpus − ln ppl_teacher)`; 1 is the teacher's perplexity, 0 no better than without it.
pub fn gap_closed(teacher: f64, distilled: f64, corpus_only: f64) -> f64 {
    (corpus_only.ln() - distilled.ln()) / (corpus_only.ln() - teacher.ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perplexity_and_top1_of_known_distributions() {
        let device = Device::Cpu;
        // Two positions over 4 tokens: uniform (ppl 4 there), and certain of token 2.
        let logits = Tensor::new(&[[0f32, 0., 0., 0.], [-100., -100., 0., -100.]], &device).unwrap();
        let targets = Tensor::new(&[1u32, 2], &device).unwrap();
        let mut tally = Tally::default();
        tally.add(&logits, &targets, None).unwrap();
        let f = tally.figures(false);
        assert!((f.perplexity - 2.0).abs() < 1e-4, "exp((ln 4 + 0) / 2) = 2: {f:?}");
        assert!((f.top1 - 0.5).abs() < 1e-9, "argmax of a uniform row is token 0: {f:?}");
        assert_eq!((f.tokens, f.kl_to_teacher), (2, None));
    }

    #[test]
    fn merged_tallies_give_the_figures_of_one_pass_over_all_positions() {
        let device = Device::Cpu;
        let logits = Tensor::new(&[[0f32, 1., 2.], [3., 0., 1.], [0., 0., 5.]], &device).unwrap();
        let targets = Tensor::new(&[2u32, 1, 2], &device).unwrap();
        let mut whole = Tally::default();
        whole.add(&logits, &targets, None).unwrap();
        let (mut first, mut second) = (Tally::default(), Tally::default());
        first.add(&logits.narrow(0, 0, 2).unwrap(), &targets.narrow(0, 0, 2).unwrap(), None).unwrap();
        second.add(&logits.narrow(0, 2, 1).unwrap(), &targets.narrow(0, 2, 1).unwrap(), None).unwrap();
        first.merge(&second);
        let (a, b) = (whole.figures(false), first.figures(false));
        assert!((a.perplexity - b.perplexity).abs() <= 1e-6 * a.perplexity, "{a:?} {b:?}");
        assert_eq!((a.top1, a.tokens), (b.top1, b.tokens));
        let json = serde_json::to_string(&first).unwrap();
        assert!(json.contains("\"nll\"") && json.contains("\"tokens\":3"), "{json}");
        assert_eq!(serde_json::from_str::<Tally>(&json).unwrap().tokens(), 3);
    }

    #[test]
    fn the_gap_closed_is_a_share_of_log_perplexity() {
        assert!((gap_closed(10.0, 10.0, 40.0) - 1.0).abs() < 1e-12);
        assert!(gap_closed(10.0, 40.0, 40.0).abs() < 1e-12);
        assert!((gap_closed(10.0, 20.0, 40.0) - 0.5).abs() < 1e-12);
    }
}
