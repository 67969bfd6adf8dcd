//! Schedules over training steps: the distillation temperature (high early, low late) and the
//! learning rate (linear warm-up, then decay).

use distillery_crds::distillation::{Schedule, TemperatureSchedule};

/// The value at `progress` ∈ [0, 1] of a curve from `start` to `end`.
pub fn interpolate(kind: Schedule, start: f64, end: f64, progress: f64) -> f64 {
    let p = progress.clamp(0.0, 1.0);
    match kind {
        Schedule::Constant => start,
        Schedule::Linear => start + (end - start) * p,
        Schedule::Cosine => end + (start - end) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
    }
}

/// Progress of `step` (0-based) through `total` steps: 0 at the first, 1 at the last.
fn progress(step: u64, total: u64) -> f64 {
    if total <= 1 { 1.0 } else { step as f64 / (total - 1) as f64 }
}

/// The distillation temperature at `step` of `total`.
pub fn temperature(spec: &TemperatureSchedule, step: u64, total: u64) -> f64 {
    interpolate(spec.schedule, spec.start, spec.end, progress(step, total))
}

/// Learning-rate schedule: linear warm-up from 0 to `peak` over `warmup` steps, then `decay`
/// from `peak` to 0 over the remaining steps.
#[derive(Clone, Copy, Debug)]
pub struct LearningRate {
    /// The peak rate.
    pub peak: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Total steps.
    pub total: u64,
    /// Shape of the decay.
    pub decay: Schedule,
}

impl LearningRate {
    /// The rate at `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let decay_steps = self.total.saturating_sub(self.warmup);
        let p = if decay_steps == 0 { 0.0 } else { (step - self.warmup) as f64 / decay_steps as f64 };
        interpolate(self.decay, self.peak, 0.0, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn temperature_goes_from_start_to_end() {
        let spec = |schedule| TemperatureSchedule { start: 4.0, end: 1.0, schedule };
        for kind in [Schedule::Linear, Schedule::Cosine] {
            close(temperature(&spec(kind), 0, 101), 4.0);
            close(temperature(&spec(kind), 100, 101), 1.0);
        }
        close(temperature(&spec(Schedule::Linear), 50, 101), 2.5);
        // Reference: 1 + 3 · ½(1 + cos(π/2)) = 2.5; 1 + 3 · ½(1 + cos(π/4)) = 3.5606601717798214.
        close(temperature(&spec(Schedule::Cosine), 50, 101), 2.5);
        close(temperature(&spec(Schedule::Cosine), 25, 101), 3.560660171779821);
        close(temperature(&spec(Schedule::Constant), 100, 101), 4.0);
        // High early, low late: monotone non-increasing.
        let t: Vec<f64> = (0..20).map(|s| temperature(&spec(Schedule::Cosine), s, 20)).collect();
        assert!(t.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn learning_rate_warms_up_then_decays_to_zero() {
        let lr = LearningRate { peak: 1e-3, warmup: 10, total: 110, decay: Schedule::Cosine };
        close(lr.at(0), 1e-4);
        close(lr.at(9), 1e-3);
        close(lr.at(10), 1e-3);
        close(lr.at(60), 5e-4);
        assert!(lr.at(109) < 1e-6 && lr.at(109) >= 0.0);
        let linear = LearningRate { decay: Schedule::Linear, ..lr };
        close(linear.at(35), 7.5e-4);
        let flat = LearningRate { decay: Schedule::Constant, ..lr };
        close(flat.at(100), 1e-3);
    }
}
