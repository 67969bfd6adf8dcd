//! The training loop shared by teacher preparation (labels only) and distillation (labels and
//! teacher logits), and batched evaluation.
//!
//! The data order of every epoch is [`crate::data::dataset::epoch_order`] of the seed and the epoch, so a
//! run resumed at step `s` recomputes exactly the batches it had not done yet. Around it: one run
//! with checkpoints and progress ([`runner`]), the distillation loss ([`loss`]) and hidden-state
//! alignment ([`align`]), the optimiser ([`optim`]), the temperature and learning-rate schedules
//! ([`schedule`]) and checkpoints ([`checkpoint`]).

pub mod align;
pub mod checkpoint;
pub mod lm;
pub mod loss;
pub mod optim;
pub mod runner;
pub mod schedule;
pub mod token_kd;

use candle_core::{Device, Result, Tensor, Var};
use distillery_crds::distillation::{Schedule, TemperatureSchedule, TrainingSpec};

use crate::data::batch::pad;
use crate::data::dataset::bucketed_batches;
use crate::model::classifier::Classifier;
use crate::train::align::HiddenAlignment;
use crate::train::optim::{AdamWParams, StepStats, Trainer};
use crate::train::schedule::{LearningRate, temperature};

/// Optimisation settings of one training run.
#[derive(Clone, Debug)]
pub struct FitSettings {
    /// Passes over the training examples (ignored when `max_steps` is set).
    pub epochs: u64,
    /// Total optimiser steps instead of whole epochs.
    pub max_steps: Option<u64>,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Fraction of steps spent warming up.
    pub warmup_fraction: f64,
    /// Decay after warm-up.
    pub decay: Schedule,
    /// Global gradient-norm clip (0: none).
    pub clip_norm: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Seed of the data order.
    pub seed: u64,
    /// The embeddings and this many lower encoder layers run without gradients (their variables
    /// must not be trained): backpropagation stops above them.
    pub frozen_layers: usize,
}

/// Batches per length-sorting window (see [`bucketed_batches`]).
const BUCKET_WINDOW: usize = 50;

impl FitSettings {
    /// The spec's `training` settings (3 epochs when neither epochs nor maxSteps is set).
    pub fn from_spec(t: &TrainingSpec) -> Self {
        Self {
            epochs: u64::from(t.epochs.unwrap_or(3)),
            max_steps: t.max_steps,
            batch_size: t.batch_size as usize,
            learning_rate: t.learning_rate,
            warmup_fraction: t.warmup_fraction,
            decay: t.schedule,
            clip_norm: t.gradient_clip_norm,
            weight_decay: t.weight_decay,
            seed: t.seed,
            frozen_layers: 0,
        }
    }

    /// Steps per epoch for `n` training examples (the last, partial batch included).
    pub fn steps_per_epoch(&self, n: usize) -> u64 {
        n.div_ceil(self.batch_size) as u64
    }

    /// Total steps for `n` training examples.
    pub fn total_steps(&self, n: usize) -> u64 {
        self.max_steps.unwrap_or(self.steps_per_epoch(n) * self.epochs)
    }

    /// A fresh optimiser over `vars` with these settings' schedule, for `n` training examples.
    pub fn trainer(&self, vars: Vec<(String, Var)>, n: usize) -> Result<Trainer> {
        let total = self.total_steps(n);
        let schedule = LearningRate {
            peak: self.learning_rate,
            warmup: (self.warmup_fraction * total as f64).round() as u64,
            total,
            decay: self.decay,
        };
        let params = AdamWParams { weight_decay: self.weight_decay, ..AdamWParams::default() };
        Trainer::new(vars, params, schedule, self.clip_norm)
    }
}

/// What the loss is made of.
pub enum Objective<'a> {
    /// Cross-entropy on labels only.
    Labels,
    /// The distillation loss against cached teacher logits (one row per training example,
    /// indexed like the training examples).
    Distill {
        /// Teacher logits of every example (indexed by example index).
        teacher_logits: &'a [Vec<f32>],
        /// Teacher pooled embeddings of every example and the weight of the cosine distance
        /// between them and the student's (feature alignment), when used.
        pooled: Option<(&'a [Vec<f32>], f64)>,
        /// Hidden-state alignment with the teacher's cached layer outputs, when used.
        hidden: Option<&'a HiddenAlignment<'a>>,
        /// Weight of the hard-label term.
        alpha: f64,
        /// Temperature over training.
        temperature: &'a TemperatureSchedule,
    },
}

/// Tokenized examples with their labels, and which of them to train on.
#[derive(Clone, Copy)]
pub struct Examples<'a> {
    /// Token ids of every example.
    pub ids: &'a [Vec<u32>],
    /// Label of every example ([`loss::UNLABELLED`] for transfer-set texts, which only a
    /// distillation objective can train on).
    pub labels: &'a [u32],
    /// The examples to use (indices into `ids` and `labels`).
    pub indices: &'a [usize],
}

/// One step's report, for progress output.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// Steps done (1-based).
    pub step: u64,
    /// Steps planned.
    pub total_steps: u64,
    /// Epoch (1-based).
    pub epoch: u64,
    /// Examples in this step's batch.
    pub examples: usize,
    /// The optimiser's figures.
    pub stats: StepStats,
}

/// Trains the variables of `trainer` (which `model` is built over) on `examples`, continuing
/// after the `trainer.steps_done()` steps it has already taken: a trainer restored from a
/// checkpoint resumes exactly where the interrupted run stopped, since the batches of every epoch
/// follow from the seed alone. `on_step` runs after every step and may write a checkpoint; its
/// error stops training.
pub fn fit(
    model: &Classifier,
    trainer: &mut Trainer,
    examples: Examples,
    objective: &Objective,
    settings: &FitSettings,
    device: &Device,
    mut on_step: impl FnMut(StepReport, &Trainer) -> Result<()>,
) -> Result<()> {
    let train = examples.indices;
    let total = settings.total_steps(train.len());
    let lengths: Vec<usize> = train.iter().map(|&i| examples.ids[i].len()).collect();
    let mut step = 0u64;
    let mut epoch = 0u64;
    while step < total {
        for chunk in bucketed_batches(&lengths, settings.batch_size, BUCKET_WINDOW, settings.seed, epoch) {
            if step >= total {
                break;
            }
            step += 1;
            if step <= trainer.steps_done() {
                continue;
            }
            let batch: Vec<usize> = chunk.iter().map(|&i| train[i]).collect();
            let loss =
                batch_loss(model, examples, &batch, objective, (step - 1, total), settings.frozen_layers, device)?;
            let stats = trainer.backward_step(&loss)?;
            let report = StepReport { step, total_steps: total, epoch: epoch + 1, examples: batch.len(), stats };
            on_step(report, trainer)?;
        }
        epoch += 1;
    }
    Ok(())
}

/// The loss of one batch at `(step, total)` of training.
fn batch_loss(
    model: &Classifier,
    examples: Examples,
    batch: &[usize],
    objective: &Objective,
    (step, total): (u64, u64),
    frozen_layers: usize,
    device: &Device,
) -> Result<Tensor> {
    let (ids, labels) = (examples.ids, examples.labels);
    let sequences: Vec<&[u32]> = batch.iter().map(|&i| ids[i].as_slice()).collect();
    let (input_ids, mask) = pad(&sequences, device)?;
    let batch_labels: Vec<u32> = batch.iter().map(|&i| labels[i]).collect();
    let out = model.forward_frozen_below(frozen_layers, &input_ids, &mask)?;
    match objective {
        Objective::Labels => {
            if batch_labels.contains(&loss::UNLABELLED) {
                candle_core::bail!("an unlabelled (transfer-set) example cannot be trained on labels alone");
            }
            loss::hard_ce(&out.logits, &Tensor::new(batch_labels.as_slice(), device)?)
        }
        Objective::Distill { teacher_logits, pooled, hidden, alpha, temperature: t } => {
            let gather = |rows: &[Vec<f32>]| {
                let width = rows[batch[0]].len();
                Tensor::from_vec(
                    batch.iter().flat_map(|&i| rows[i].iter().copied()).collect(),
                    (batch.len(), width),
                    device,
                )
            };
            let teacher = gather(teacher_logits)?;
            let kd = loss::distillation_partly_labelled(
                &out.logits,
                &teacher,
                &batch_labels,
                *alpha,
                temperature(t, step, total),
            )?;
            let kd = match pooled {
                Some((targets, weight)) if *weight > 0.0 => {
                    (kd + (loss::cosine_distance(&out.pooled, &gather(targets)?)? * *weight)?)?
                }
                _ => kd,
            };
            match hidden {
                Some(alignment) if alignment.weight > 0.0 => kd + alignment.loss(&out, batch, &mask)?,
                _ => Ok(kd),
            }
        }
    }
}

/// Logits of examples `idx`, batch by batch (no gradients kept), in the order asked.
pub fn logits(
    model: &Classifier,
    ids: &[Vec<u32>],
    idx: &[usize],
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    Ok(outputs(model, ids, idx, batch_size, device)?.0)
}

/// One row of floats per example.
pub type Rows = Vec<Vec<f32>>;

/// Logits and pooled embeddings of examples `idx`, in the order asked. Examples are batched by
/// length so that little of each batch is padding.
pub fn outputs(
    model: &Classifier,
    ids: &[Vec<u32>],
    idx: &[usize],
    batch_size: usize,
    device: &Device,
) -> Result<(Rows, Rows)> {
    let mut order: Vec<usize> = (0..idx.len()).collect();
    order.sort_by_key(|&k| ids[idx[k]].len());
    let mut logits = vec![vec![]; idx.len()];
    let mut pooled = vec![vec![]; idx.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let sequences: Vec<&[u32]> = chunk.iter().map(|&k| ids[idx[k]].as_slice()).collect();
        let (input_ids, mask) = pad(&sequences, device)?;
        let out = model.forward(&input_ids, &mask)?;
        for ((&k, l), p) in chunk.iter().zip(out.logits.detach().to_vec2::<f32>()?).zip(out.pooled.detach().to_vec2()?)
        {
            logits[k] = l;
            pooled[k] = p;
        }
    }
    Ok((logits, pooled))
}

/// The predicted class of each row: the index of its largest logit.
pub fn predictions(logits: &[Vec<f32>]) -> Vec<u32> {
    logits
        .iter()
        .map(|row| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(u32::MAX, |(i, _)| i as u32))
        .collect()
}

/// Fraction of rows whose largest logit is the label.
pub fn accuracy(logits: &[Vec<f32>], labels: &[u32]) -> f64 {
    let correct = predictions(logits).iter().zip(labels).filter(|(p, l)| p == l).count();
    correct as f64 / labels.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::encoder::EncoderConfig;
    use crate::student::init::{named_vars, random_encoder, random_head};
    use candle_core::DType;
    use candle_nn::VarBuilder;
    use distillery_crds::distillation::Pooling;

    fn tiny() -> EncoderConfig {
        EncoderConfig {
            vocab_size: 20,
            hidden_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            intermediate_size: 32,
            max_position_embeddings: 16,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
            model_type: "bert".into(),
            embedding_size: None,
        }
    }

    /// Label 1 when token 5 occurs anywhere, else 0: needs attention over positions.
    fn task(n: usize) -> (Vec<Vec<u32>>, Vec<u32>) {
        let mut ids = vec![];
        let mut labels = vec![];
        for i in 0..n {
            let len = 3 + i % 5;
            let mut s: Vec<u32> = (0..len).map(|j| 6 + ((i * 7 + j * 3) % 13) as u32).collect();
            let positive = i % 2 == 0;
            if positive {
                s[(i / 2) % len] = 5;
            }
            ids.push(s);
            labels.push(u32::from(positive));
        }
        (ids, labels)
    }

    fn model(seed: u64) -> (Classifier, candle_nn::VarMap, candle_nn::VarMap) {
        let enc = random_encoder(&tiny(), seed, &Device::Cpu).unwrap();
        let head = random_head(16, 2, seed, &Device::Cpu).unwrap();
        let m = Classifier::new(
            &tiny(),
            2,
            Pooling::Mean,
            VarBuilder::from_varmap(&enc, DType::F32, &Device::Cpu),
            VarBuilder::from_varmap(&head, DType::F32, &Device::Cpu),
        )
        .unwrap();
        (m, enc, head)
    }

    fn settings() -> FitSettings {
        FitSettings {
            epochs: 15,
            max_steps: None,
            batch_size: 16,
            learning_rate: 3e-3,
            warmup_fraction: 0.1,
            decay: Schedule::Cosine,
            clip_norm: 1.0,
            weight_decay: 0.01,
            seed: 0,
            frozen_layers: 0,
        }
    }

    #[test]
    fn labels_only_learns_the_task_and_runs_are_reproducible() {
        let (ids, labels) = task(160);
        let train: Vec<usize> = (0..128).collect();
        let test: Vec<usize> = (128..160).collect();
        let run = || {
            let (m, enc, head) = model(1);
            let mut losses = vec![];
            let mut trainer = settings().trainer(named_vars(&[&enc, &head], |_| true), train.len()).unwrap();
            fit(
                &m,
                &mut trainer,
                Examples { ids: &ids, labels: &labels, indices: &train },
                &Objective::Labels,
                &settings(),
                &Device::Cpu,
                |r, _| {
                    losses.push(r.stats.loss);
                    Ok(())
                },
            )
            .unwrap();
            let test_labels: Vec<u32> = test.iter().map(|&i| labels[i]).collect();
            (accuracy(&logits(&m, &ids, &test, 32, &Device::Cpu).unwrap(), &test_labels), losses)
        };
        let (acc, losses) = run();
        assert_eq!(losses.len(), 15 * 8);
        assert!(acc >= 0.9, "held-out accuracy {acc}");
        let (acc2, losses2) = run();
        assert_eq!(losses, losses2, "same seed, same run");
        assert_eq!(acc, acc2);
    }

    #[test]
    fn distillation_follows_the_teacher() {
        // A "teacher" that knows the task perfectly (confident logits), and a student trained with
        // alpha = 0: it sees no labels at all, only the teacher.
        let (ids, labels) = task(160);
        let teacher_logits: Vec<Vec<f32>> =
            labels.iter().map(|&l| if l == 1 { vec![-3.0, 3.0] } else { vec![3.0, -3.0] }).collect();
        let t = TemperatureSchedule { start: 4.0, end: 1.0, schedule: Schedule::Linear };
        let objective = Objective::Distill {
            teacher_logits: &teacher_logits,
            pooled: None,
            hidden: None,
            alpha: 0.0,
            temperature: &t,
        };
        let (m, enc, head) = model(2);
        let train: Vec<usize> = (0..128).collect();
        let test: Vec<usize> = (128..160).collect();
        let mut trainer = settings().trainer(named_vars(&[&enc, &head], |_| true), train.len()).unwrap();
        fit(
            &m,
            &mut trainer,
            Examples { ids: &ids, labels: &labels, indices: &train },
            &objective,
            &settings(),
            &Device::Cpu,
            |_, _| Ok(()),
        )
        .unwrap();
        let test_labels: Vec<u32> = test.iter().map(|&i| labels[i]).collect();
        let acc = accuracy(&logits(&m, &ids, &test, 32, &Device::Cpu).unwrap(), &test_labels);
        assert!(acc >= 0.9, "a student taught only by the teacher reached {acc}");
    }

    #[test]
    fn logits_come_back_in_the_order_asked_whatever_the_batching() {
        let (ids, _) = task(40);
        let (m, _, _) = model(5);
        let idx: Vec<usize> = (0..40).rev().collect();
        let batched = logits(&m, &ids, &idx, 7, &Device::Cpu).unwrap();
        for (k, &i) in idx.iter().enumerate() {
            let one = logits(&m, &ids, &[i], 1, &Device::Cpu).unwrap().remove(0);
            let diff = one.iter().zip(&batched[k]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "example {i}: padded batch differs from alone by {diff}");
        }
    }

    #[test]
    fn alpha_decides_whether_labels_or_teacher_are_learned() {
        // A teacher that contradicts every label: alpha 0 must learn the teacher (low accuracy on
        // the labels), alpha 1 must ignore it (high accuracy).
        let (ids, labels) = task(160);
        let wrong: Vec<Vec<f32>> =
            labels.iter().map(|&l| if l == 1 { vec![3.0, -3.0] } else { vec![-3.0, 3.0] }).collect();
        let t = TemperatureSchedule { start: 2.0, end: 1.0, schedule: Schedule::Linear };
        let train: Vec<usize> = (0..128).collect();
        let test: Vec<usize> = (128..160).collect();
        let test_labels: Vec<u32> = test.iter().map(|&i| labels[i]).collect();
        let run = |alpha: f64| {
            let (m, enc, head) = model(3);
            let objective =
                Objective::Distill { teacher_logits: &wrong, pooled: None, hidden: None, alpha, temperature: &t };
            let examples = Examples { ids: &ids, labels: &labels, indices: &train };
            let mut trainer = settings().trainer(named_vars(&[&enc, &head], |_| true), train.len()).unwrap();
            fit(&m, &mut trainer, examples, &objective, &settings(), &Device::Cpu, |_, _| Ok(())).unwrap();
            accuracy(&logits(&m, &ids, &test, 32, &Device::Cpu).unwrap(), &test_labels)
        };
        let (labels_only, teacher_only) = (run(1.0), run(0.0));
        assert!(labels_only >= 0.9, "alpha 1: {labels_only}");
        assert!(teacher_only <= 0.1, "alpha 0 should follow the (wrong) teacher: {teacher_only}");
    }

    #[test]
    fn a_run_stopped_mid_way_and_resumed_from_its_state_ends_where_an_uninterrupted_run_ends() {
        let (ids, labels) = task(160);
        let train: Vec<usize> = (0..128).collect();
        let examples = Examples { ids: &ids, labels: &labels, indices: &train };
        let snapshot = |maps: &[&candle_nn::VarMap]| crate::train::runner::snapshot(maps).unwrap();
        // Uninterrupted.
        let (m, enc, head) = model(4);
        let mut trainer = settings().trainer(named_vars(&[&enc, &head], |_| true), train.len()).unwrap();
        fit(&m, &mut trainer, examples, &Objective::Labels, &settings(), &Device::Cpu, |_, _| Ok(())).unwrap();
        let full = snapshot(&[&enc, &head]);
        // Stopped after step 45 (mid-epoch: 8 steps per epoch), keeping what a checkpoint keeps.
        let (m, enc, head) = model(4);
        let mut trainer = settings().trainer(named_vars(&[&enc, &head], |_| true), train.len()).unwrap();
        let mut saved = None;
        let stopped = fit(&m, &mut trainer, examples, &Objective::Labels, &settings(), &Device::Cpu, |r, t| {
            if r.step == 45 {
                saved = Some((snapshot(&[&enc, &head]), t.state()));
                candle_core::bail!("killed");
            }
            Ok(())
        });
        assert!(stopped.is_err());
        let (vars, (optimizer, step)) = saved.unwrap();
        assert_eq!(step, 45);
        // A new process: fresh model over the saved variables, optimizer restored.
        let (m, enc, head) = model(99);
        for (name, t) in &vars {
            let map = if name.starts_with("classifier") { &head } else { &enc };
            map.data().lock().unwrap()[name].set(t).unwrap();
        }
        let mut trainer = settings().trainer(named_vars(&[&enc, &head], |_| true), train.len()).unwrap();
        trainer.load_state(&optimizer, step).unwrap();
        let mut resumed_steps = vec![];
        fit(&m, &mut trainer, examples, &Objective::Labels, &settings(), &Device::Cpu, |r, _| {
            resumed_steps.push(r.step);
            Ok(())
        })
        .unwrap();
        assert_eq!(resumed_steps.first(), Some(&46));
        assert_eq!(resumed_steps.len(), 120 - 45);
        for (name, t) in snapshot(&[&enc, &head]) {
            let d = (t - &full[&name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "{name} differs by {d} after resuming");
        }
    }

    #[test]
    fn accuracy_counts_argmax_matches() {
        assert_eq!(accuracy(&[vec![0.1, 0.9], vec![2.0, -1.0], vec![0.0, 1.0]], &[1, 0, 0]), 2.0 / 3.0);
    }
}
