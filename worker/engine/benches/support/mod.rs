//! What the benches share.

use candle_core::Device;
use distillery_worker::model::classifier::Classifier;
use distillery_worker::train::optim::Trainer;
use distillery_worker::train::{Examples, FitSettings, Objective, fit};
use std::time::Instant;

/// Trains with the worker's own loop (`train::fit`) and returns the seconds each step took.
pub fn step_seconds(
    model: &Classifier,
    trainer: &mut Trainer,
    examples: Examples,
    objective: &Objective,
    settings: &FitSettings,
    device: &Device,
) -> Vec<f64> {
    let mut times = vec![];
    let mut last = Instant::now();
    fit(model, trainer, examples, objective, settings, device, |_, _| {
        times.push(last.elapsed().as_secs_f64());
        last = Instant::now();
        Ok(())
    })
    .expect("a bench's training run succeeds");
    times
}
