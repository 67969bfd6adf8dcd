//! One training run with everything around [`crate::train::fit`]: resuming from the run's last
//! checkpoint, writing a checkpoint every N steps and at the end, progress events, and the
//! training curve.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::model::classifier::Classifier;
use crate::progress::{Event, Reporter, StepClock};
use crate::student::init::named_vars;
use crate::train::checkpoint::{self, Checkpoint, CheckpointError, CheckpointState};
use crate::train::optim::Trainer;
use crate::train::{Examples, FitSettings, Objective, StepReport, fit};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A tensor operation failed.
    #[error("training {run}: {source}")]
    Candle {
        /// The run.
        run: String,
        /// The cause.
        source: Box<candle_core::Error>,
    },
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(Box<CheckpointError>),
}

impl From<CheckpointError> for RunError {
    fn from(e: CheckpointError) -> Self {
        Self::Checkpoint(Box::new(e))
    }
}

/// Where and how often a run checkpoints.
pub struct Checkpointing {
    /// The run's checkpoint directory.
    pub dir: PathBuf,
    /// Steps between checkpoints (the last step is always checkpointed).
    pub interval: u64,
    /// What the run is (its spec, data and teacher, hashed): a checkpoint of another run is
    /// refused.
    pub run_key: String,
}

/// What a run did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Steps trained (over all attempts).
    pub steps: u64,
    /// Mean loss of each epoch.
    pub epoch_losses: Vec<f64>,
    /// Mean loss of the first and the last 5% of steps.
    pub first_loss: f64,
    /// Mean loss of the last 5% of steps.
    pub last_loss: f64,
    /// Training seconds over all attempts.
    pub seconds: f64,
    /// The step this attempt resumed from, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u64>,
}

impl RunSummary {
    fn new(losses: &[f64], steps_per_epoch: u64, seconds: f64, resumed_from: Option<u64>) -> Self {
        let mean = |xs: &[f64]| if xs.is_empty() { f64::NAN } else { xs.iter().sum::<f64>() / xs.len() as f64 };
        let tail = (losses.len() / 20).max(1).min(losses.len());
        Self {
            steps: losses.len() as u64,
            epoch_losses: losses.chunks(steps_per_epoch.max(1) as usize).map(mean).collect(),
            first_loss: mean(&losses[..tail]),
            last_loss: mean(&losses[losses.len() - tail..]),
            seconds,
            resumed_from,
        }
    }
}

/// Trains the variables of `maps` that `trainable` keeps, as run `name`, resuming from and
/// writing checkpoints per `checkpointing`.
#[allow(clippy::too_many_arguments, reason = "one call site per run kind; a struct would only rename them")]
pub fn train(
    name: &str,
    model: &Classifier,
    maps: &[&VarMap],
    trainable: impl Fn(&str) -> bool,
    examples: Examples,
    objective: &Objective,
    settings: &FitSettings,
    checkpointing: Option<&Checkpointing>,
    device: &Device,
    reporter: &mut dyn Reporter,
) -> Result<RunSummary, RunError> {
    let run = Run { name, maps, settings, examples: examples.indices.len(), checkpointing, device };
    train_with(&run, trainable, reporter, |trainer, on_step| {
        fit(model, trainer, examples, objective, settings, device, on_step)
    })
}

/// What [`train_with`] trains.
pub struct Run<'a> {
    /// The run's name (progress events, errors).
    pub name: &'a str,
    /// The variables.
    pub maps: &'a [&'a VarMap],
    /// Steps, batch size, optimiser.
    pub settings: &'a FitSettings,
    /// Training examples per epoch (what the step count follows from).
    pub examples: usize,
    /// Where and how often to checkpoint.
    pub checkpointing: Option<&'a Checkpointing>,
    /// Where the checkpoint's tensors are loaded.
    pub device: &'a Device,
}

/// The training loop of a run: calls `on_step` after every optimiser step, skipping the steps
/// the trainer has already done (a resumed run).
pub type StepCallback<'a> = dyn FnMut(StepReport, &Trainer) -> candle_core::Result<()> + 'a;

/// [`train`] for any training loop: resuming from the run's checkpoint, checkpointing every N
/// steps, progress events and the summary around `fit`, which runs the steps (for a task's own
/// model and loss) and reports each to the callback it is given.
pub fn train_with(
    run: &Run,
    trainable: impl Fn(&str) -> bool,
    reporter: &mut dyn Reporter,
    fit: impl FnOnce(&mut Trainer, &mut StepCallback) -> candle_core::Result<()>,
) -> Result<RunSummary, RunError> {
    let Run { name, maps, settings, examples, checkpointing, device } = *run;
    let candle = |source| RunError::Candle { run: name.to_string(), source: Box::new(source) };
    let vars = named_vars(maps, &trainable);
    let mut trainer = settings.trainer(vars.clone(), examples).map_err(candle)?;
    let total = settings.total_steps(examples);
    let mut losses = vec![];
    let mut seconds_before = 0.0;
    let mut resumed_from = None;
    if let Some(c) = checkpointing
        && let Some(saved) = checkpoint::load(&c.dir, &c.run_key, device)?
    {
        for (var_name, var) in &vars {
            let t = saved.variables.get(var_name).ok_or_else(|| {
                candle(candle_core::Error::Msg(format!("checkpoint {} lacks variable {var_name}", c.dir.display())))
            })?;
            var.set(t).map_err(candle)?;
        }
        trainer.load_state(&saved.optimizer, saved.state.step).map_err(candle)?;
        losses = saved.state.losses;
        seconds_before = saved.state.seconds;
        resumed_from = Some(saved.state.step);
        reporter.report(&Event::Resumed { run: name.to_string(), step: saved.state.step });
    }
    let started = Instant::now();
    let mut clock = StepClock::new();
    let mut failed_save: Option<CheckpointError> = None;
    let mut on_step = |r: StepReport, t: &Trainer| -> candle_core::Result<()> {
        losses.push(r.stats.loss);
        let (rate, eta) = clock.tick(r.step, r.total_steps, r.examples);
        reporter.report(&Event::Step {
            run: name.to_string(),
            step: r.step,
            total_steps: r.total_steps,
            epoch: r.epoch,
            loss: r.stats.loss,
            learning_rate: r.stats.learning_rate,
            examples_per_second: rate,
            eta_seconds: eta,
        });
        if let Some(c) = checkpointing
            && (r.step.is_multiple_of(c.interval.max(1)) || r.step == r.total_steps)
        {
            let variables = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
            let state = CheckpointState {
                run_key: c.run_key.clone(),
                step: r.step,
                total_steps: r.total_steps,
                seed: settings.seed,
                losses: losses.clone(),
                seconds: seconds_before + started.elapsed().as_secs_f64(),
            };
            let (optimizer, _) = t.state();
            if let Err(e) = checkpoint::save(&c.dir, &Checkpoint { state, variables, optimizer }) {
                failed_save = Some(e);
                candle_core::bail!("checkpoint failed");
            }
            reporter.report(&Event::Checkpoint { run: name.to_string(), step: r.step });
        }
        Ok(())
    };
    let result = fit(&mut trainer, &mut on_step);
    if let Some(e) = failed_save {
        return Err(e.into());
    }
    result.map_err(candle)?;
    debug_assert!(losses.len() as u64 == total || total == 0);
    let per_epoch = settings.steps_per_epoch(examples);
    Ok(RunSummary::new(&losses, per_epoch, seconds_before + started.elapsed().as_secs_f64(), resumed_from))
}

/// The variables of `maps` as plain tensors (a copy of the current values), by name.
pub fn snapshot(maps: &[&VarMap]) -> candle_core::Result<std::collections::HashMap<String, Tensor>> {
    named_vars(maps, |_| true).into_iter().map(|(k, v)| Ok((k, v.as_tensor().copy()?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_averages_epochs_and_the_ends_of_the_curve() {
        let losses: Vec<f64> = (0..40).map(|i| 1.0 - i as f64 / 40.0).collect();
        let s = RunSummary::new(&losses, 10, 2.0, None);
        assert_eq!(s.steps, 40);
        assert_eq!(s.epoch_losses.len(), 4);
        assert!((s.epoch_losses[0] - (1.0 - 4.5 / 40.0)).abs() < 1e-12);
        assert!((s.first_loss - (1.0 - 0.5 / 40.0)).abs() < 1e-12, "first 2 steps");
        assert!((s.last_loss - (1.0 - 38.5 / 40.0)).abs() < 1e-12, "last 2 steps");
    }
}
