//! The training loop of a causal-LM student: packed token sequences in a seeded order per
//! epoch, next-token targets, and the token-level distillation loss against the teacher's cached
//! top-k outputs ([`crate::train::token_kd`]) — or next-token cross-entropy alone (the
//! corpus-only student, `alpha = 1`).

use candle_core::{D, Device, Result, Tensor};
use distillery_crds::distillation::TemperatureSchedule;

use crate::data::dataset::epoch_order;
use crate::model::decoder::Decoder;
use crate::train::optim::Trainer;
use crate::train::runner::StepCallback;
use crate::train::schedule::temperature;
use crate::train::token_kd::{TopK, fused_head_distillation};
use crate::train::{FitSettings, StepReport};

/// What a student learns from, besides the next tokens.
pub struct LmObjective<'a> {
    /// The teacher's top-k outputs at every predicted position of every training sequence
    /// (sequence `s`, position `p` is row `s · (length − 1) + p`); none for the corpus-only run.
    pub teacher: Option<&'a TopK>,
    /// Weight of the next-token cross-entropy; `1 − alpha` weighs the KL term.
    pub alpha: f64,
    /// The temperature over training.
    pub temperature: &'a TemperatureSchedule,
}

/// Rows of the teacher cache (predicted positions) of `sequences` of `length` tokens.
pub fn cache_rows(sequences: &[usize], length: usize) -> Vec<usize> {
    sequences.iter().flat_map(|&s| (0..length - 1).map(move |p| s * (length - 1) + p)).collect()
}

/// Inputs `(batch, length)` and next-token targets `(batch · (length − 1),)` of `batch`.
pub fn batch_tensors(sequences: &[Vec<u32>], batch: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
    let length = sequences[batch[0]].len();
    let ids: Vec<u32> = batch.iter().flat_map(|&s| sequences[s].iter().copied()).collect();
    let targets: Vec<u32> = batch.iter().flat_map(|&s| sequences[s][1..].iter().copied()).collect();
    Ok((
        Tensor::from_vec(ids, (batch.len(), length), device)?,
        Tensor::from_vec(targets, batch.len() * (length - 1), device)?,
    ))
}

/// The student's final hidden states at the predicted positions (all but the last),
/// `(batch · (length − 1), hidden)`: what the output layer turns into next-token logits.
pub fn predicted_hidden(decoder: &Decoder, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let hidden = decoder.final_hidden(ids, None)?;
    let width = hidden.dim(D::Minus1)?;
    hidden.narrow(1, 0, t - 1)?.reshape((b * (t - 1), width))
}

/// The student's logits at the predicted positions, `(batch · (length − 1), vocab)`.
pub fn predicted_logits(decoder: &Decoder, ids: &Tensor) -> Result<Tensor> {
    predicted_hidden(decoder, ids)?.matmul(&decoder.lm_head().t()?)
}

/// Trains `decoder` (whose variables `trainer` holds) on `sequences`, continuing after the
/// steps the trainer has already taken.
pub fn fit_lm(
    decoder: &Decoder,
    trainer: &mut Trainer,
    sequences: &[Vec<u32>],
    objective: &LmObjective,
    settings: &FitSettings,
    device: &Device,
    on_step: &mut StepCallback,
) -> Result<()> {
    let total = settings.total_steps(sequences.len());
    let length = sequences.first().map_or(0, Vec::len);
    let (mut step, mut epoch) = (0u64, 0u64);
    while step < total {
        let order = epoch_order(sequences.len(), settings.seed, epoch);
        for batch in order.chunks(settings.batch_size) {
            if step >= total {
                break;
            }
            step += 1;
            if step <= trainer.steps_done() {
                continue;
            }
            let (ids, targets) = batch_tensors(sequences, batch, device)?;
            let hidden = predicted_hidden(decoder, &ids)?;
            let t = temperature(objective.temperature, step - 1, total);
            let targets: Vec<u32> = targets.to_vec1()?;
            let loss = match objective.teacher {
                Some(cache) if objective.alpha < 1.0 => {
                    let rows = cache_rows(batch, length);
                    let (teacher_ids, log_probs) = (cache.bucket_ids(&rows), cache.bucket_log_probs(&rows, t));
                    fused_head_distillation(
                        &hidden,
                        decoder.lm_head(),
                        &targets,
                        Some((&teacher_ids, &log_probs)),
                        objective.alpha,
                        t,
                    )?
                }
                _ => fused_head_distillation(&hidden, decoder.lm_head(), &targets, None, 1.0, t)?,
            };
            let stats = trainer.backward_step(&loss)?;
            on_step(StepReport { step, total_steps: total, epoch: epoch + 1, examples: batch.len(), stats }, trainer)?;
        }
        epoch += 1;
    }
    Ok(())
}
