//! The optimiser: AdamW (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization") with
//! a learning-rate schedule and global-norm gradient clipping.
//!
//! candle_nn has an AdamW, but its moment estimates are private, so a checkpoint could not save
//! them and a resumed run would restart the optimiser cold. This one has the same update rule
//! (a test checks it step for step against candle's) and exposes its state by variable name.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::train::schedule::LearningRate;

/// AdamW hyper-parameters (candle's defaults but for the learning rate, which the schedule sets).
#[derive(Clone, Copy, Debug)]
pub struct AdamWParams {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// The loss value.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub learning_rate: f64,
}

/// AdamW over named variables, with a schedule and clipping.
pub struct Trainer {
    vars: Vec<(String, Var)>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    step: u64,
    params: AdamWParams,
    schedule: LearningRate,
    clip_norm: f64,
}

impl Trainer {
    /// A trainer of `vars` (name, variable); `clip_norm` 0 disables clipping.
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams, schedule: LearningRate, clip_norm: f64) -> Result<Self> {
        let first = vars.iter().map(|(_, v)| v.zeros_like()).collect::<Result<_>>()?;
        let second = vars.iter().map(|(_, v)| v.zeros_like()).collect::<Result<_>>()?;
        Ok(Self { vars, first, second, step: 0, params, schedule, clip_norm })
    }

    /// Steps taken so far.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// Back-propagates `loss` and updates every variable.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<StepStats> {
        let mut grads = loss.backward()?;
        let grad_norm = self.clip(&mut grads)?;
        let learning_rate = self.schedule.at(self.step);
        self.apply(&grads, learning_rate)?;
        Ok(StepStats { loss: loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?, grad_norm, learning_rate })
    }

    /// Scales the gradients so their global L2 norm is at most `clip_norm`; returns the norm
    /// before scaling.
    fn clip(&self, grads: &mut GradStore) -> Result<f64> {
        let mut sum = 0f64;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var) {
                sum += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            }
        }
        let norm = sum.sqrt();
        if self.clip_norm > 0.0 && norm > self.clip_norm {
            let scale = self.clip_norm / (norm + 1e-6);
            for (_, var) in &self.vars {
                if let Some(g) = grads.remove(var) {
                    grads.insert(var, (g * scale)?);
                }
            }
        }
        Ok(norm)
    }

    fn apply(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - p.beta1.powi(t), 1.0 - p.beta2.powi(t));
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var) else { continue };
            let m = ((&self.first[i] * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let v = ((&self.second[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + p.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * p.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.first[i] = m;
            self.second[i] = v;
        }
        Ok(())
    }

    /// The optimiser state, for a checkpoint: `adam.m.NAME`, `adam.v.NAME` tensors, and the step.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("adam.m.{name}"), self.first[i].clone());
            out.insert(format!("adam.v.{name}"), self.second[i].clone());
        }
        (out, self.step)
    }

    /// Restores a state saved by [`Self::state`]. Every variable's moments must be present.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let get = |key: String| -> Result<Tensor> {
                let t = state.get(&key).ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {key}")))?;
                if t.dims() != var.dims() {
                    candle_core::bail!("checkpoint {key} has shape {:?}, the model {:?}", t.dims(), var.dims());
                }
                t.to_device(var.device())
            };
            self.first[i] = get(format!("adam.m.{name}"))?;
            self.second[i] = get(format!("adam.v.{name}"))?;
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;
    use distillery_crds::distillation::Schedule;

    fn flat(lr: f64) -> LearningRate {
        LearningRate { peak: lr, warmup: 0, total: 1000, decay: Schedule::Constant }
    }

    fn problem(var: &Var) -> Tensor {
        // A smooth loss with a non-trivial gradient: sum((w − c)² · k).
        let c = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0], &Device::Cpu).unwrap();
        let k = Tensor::new(&[1.0f32, 0.5, 2.0, 0.1], &Device::Cpu).unwrap();
        ((var.as_tensor() - c).unwrap().sqr().unwrap() * k).unwrap().sum_all().unwrap()
    }

    #[test]
    fn matches_candles_adamw_step_for_step() {
        let init = Tensor::new(&[0.3f32, 0.1, -0.4, 2.0], &Device::Cpu).unwrap();
        let ours = Var::from_tensor(&init).unwrap();
        let theirs = Var::from_tensor(&init).unwrap();
        let params = AdamWParams::default();
        let mut trainer = Trainer::new(vec![("w".into(), ours.clone())], params, flat(0.05), 0.0).unwrap();
        let mut reference = candle_nn::AdamW::new(
            vec![theirs.clone()],
            candle_nn::ParamsAdamW { lr: 0.05, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
        )
        .unwrap();
        for _ in 0..25 {
            trainer.backward_step(&problem(&ours)).unwrap();
            reference.backward_step(&problem(&theirs)).unwrap();
        }
        let diff = (ours.as_tensor() - theirs.as_tensor()).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "diverged from candle's AdamW by {diff}");
    }

    #[test]
    fn clipping_bounds_the_update_and_reports_the_raw_norm() {
        let var = Var::from_tensor(&Tensor::new(&[100.0f32, 0.0, 0.0, 0.0], &Device::Cpu).unwrap()).unwrap();
        let mut trainer =
            Trainer::new(vec![("w".into(), var.clone())], AdamWParams::default(), flat(0.1), 1.0).unwrap();
        let stats = trainer.backward_step(&problem(&var)).unwrap();
        // d/dw0 of (w0 − 1)² = 2 · 99 = 198; the other components: 2·0.5·2 = 2, 2·2·(−0.5) = −2, 2·0.1·(−3) = −0.6.
        let expected = (198f64.powi(2) + 2f64.powi(2) + 2f64.powi(2) + 0.6f64.powi(2)).sqrt();
        assert!((stats.grad_norm - expected).abs() < 1e-3, "{} vs {expected}", stats.grad_norm);
    }

    #[test]
    fn state_round_trips_so_a_resumed_run_continues_identically() {
        let init = Tensor::new(&[0.3f32, 0.1, -0.4, 2.0], &Device::Cpu).unwrap();
        let a = Var::from_tensor(&init).unwrap();
        let mut ta = Trainer::new(vec![("w".into(), a.clone())], AdamWParams::default(), flat(0.05), 1.0).unwrap();
        for _ in 0..10 {
            ta.backward_step(&problem(&a)).unwrap();
        }
        // "Restart": a fresh trainer over a copy of the weights, loaded from the saved state.
        let (state, step) = ta.state();
        let b = Var::from_tensor(&a.as_tensor().copy().unwrap()).unwrap();
        let mut tb = Trainer::new(vec![("w".into(), b.clone())], AdamWParams::default(), flat(0.05), 1.0).unwrap();
        tb.load_state(&state, step).unwrap();
        for _ in 0..10 {
            ta.backward_step(&problem(&a)).unwrap();
            tb.backward_step(&problem(&b)).unwrap();
        }
        let diff =
            (a.as_tensor() - b.as_tensor()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-7, "resumed run diverged by {diff}");
        let missing = Trainer::new(vec![("other".into(), b.clone())], AdamWParams::default(), flat(0.05), 0.0)
            .unwrap()
            .load_state(&state, step)
            .unwrap_err();
        assert!(missing.to_string().contains("adam.m.other"), "{missing}");
    }
}
