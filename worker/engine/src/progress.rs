//! Progress reporting: what a run is doing, as events. On a terminal they draw a progress bar
//! (step, loss, throughput, ETA); otherwise — in a pod's log — they are JSON lines. The operator
//! integration plugs in through [`Reporter`].

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use distillery_crds::distillation::ProgressStage;

/// Something a run reports.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A stage starts or says what it found.
    Stage {
        /// The stage, as `status.progress.stage` shows it.
        stage: ProgressStage,
        /// What happens.
        message: String,
    },
    /// A training step finished.
    #[serde(rename_all = "camelCase")]
    Step {
        /// Which training run (`teacher`, `student`, `label-only`).
        run: String,
        /// Steps done.
        step: u64,
        /// Steps planned.
        total_steps: u64,
        /// Epoch (1-based).
        epoch: u64,
        /// This step's loss.
        loss: f64,
        /// This step's learning rate.
        learning_rate: f64,
        /// Training examples per second since this attempt started.
        examples_per_second: f64,
        /// Estimated seconds to the end of the run.
        eta_seconds: f64,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Which training run.
        run: String,
        /// Its step.
        step: u64,
    },
    /// A run resumed from a checkpoint.
    Resumed {
        /// Which training run.
        run: String,
        /// The checkpoint's step.
        step: u64,
    },
    /// A model was evaluated on the held-out split.
    Evaluated {
        /// Which model.
        model: String,
        /// Held-out accuracy (0–1).
        accuracy: f64,
    },
}

/// Receives a run's events.
pub trait Reporter {
    /// Handles one event.
    fn report(&mut self, event: &Event);
}

/// A reporter that drops everything (tests, library use).
pub struct Silent;

impl Reporter for Silent {
    fn report(&mut self, _: &Event) {}
}

/// The reporter for standard error: a progress bar on a terminal, JSON lines otherwise.
pub fn for_stderr() -> Box<dyn Reporter> {
    if std::io::stderr().is_terminal() {
        Box::new(Terminal::new(std::io::stderr()))
    } else {
        Box::new(JsonLines::new(std::io::stderr()))
    }
}

/// Throughput and ETA of a training run, measured from the first step of this attempt (a resumed
/// run does not count the steps it skipped).
pub struct StepClock {
    started: Instant,
    first_step: Option<u64>,
    examples: usize,
}

impl Default for StepClock {
    fn default() -> Self {
        Self::new()
    }
}

impl StepClock {
    /// A clock started now.
    pub fn new() -> Self {
        Self { started: Instant::now(), first_step: None, examples: 0 }
    }

    /// Records step `step` of `total` with `examples` examples; returns (examples per second, ETA
    /// seconds).
    pub fn tick(&mut self, step: u64, total: u64, examples: usize) -> (f64, f64) {
        let first = *self.first_step.get_or_insert(step);
        self.examples += examples;
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let done = (step + 1 - first) as f64;
        let eta = elapsed / done * total.saturating_sub(step) as f64;
        (self.examples as f64 / elapsed, eta)
    }
}

/// JSON lines, one per event, with a `time` field (Unix seconds). Step events are thinned to every
/// `STEP_EVERY`th step, the first and the last.
pub struct JsonLines<W: Write> {
    out: W,
}

const STEP_EVERY: u64 = 10;

impl<W: Write> JsonLines<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// The writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Reporter for JsonLines<W> {
    fn report(&mut self, event: &Event) {
        if let Event::Step { step, total_steps, .. } = event
            && step % STEP_EVERY != 0
            && *step != 1
            && step != total_steps
        {
            return;
        }
        let mut value = serde_json::to_value(event).expect("events serialize");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        value["time"] = serde_json::json!((now * 1000.0).round() / 1000.0);
        // A log line that cannot be written is not worth failing a training run for.
        let _ = writeln!(self.out, "{value}");
    }
}

/// A one-line progress bar redrawn in place for steps; other events print as lines above it.
pub struct Terminal<W: Write> {
    out: W,
    bar_shown: bool,
    last_draw: Option<Instant>,
}

impl<W: Write> Terminal<W> {
    /// Draws on `out`.
    pub fn new(out: W) -> Self {
        Self { out, bar_shown: false, last_draw: None }
    }

    fn clear_bar(&mut self) {
        if self.bar_shown {
            let _ = write!(self.out, "\r\x1b[2K");
            self.bar_shown = false;
        }
    }
}

/// `1h02m`, `3m07s`, `42s`.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The bar's text for a step event.
pub fn bar_line(event: &Event) -> Option<String> {
    let Event::Step { run, step, total_steps, epoch, loss, examples_per_second, eta_seconds, .. } = event else {
        return None;
    };
    const WIDTH: usize = 24;
    let filled = ((*step as f64 / (*total_steps).max(1) as f64) * WIDTH as f64).round() as usize;
    let bar: String = "█".repeat(filled.min(WIDTH)) + &"░".repeat(WIDTH - filled.min(WIDTH));
    Some(format!(
        "{run:<10} {bar} {step}/{total_steps} epoch {epoch}  loss {loss:.4}  {examples_per_second:.0} ex/s  ETA {}",
        human_duration(*eta_seconds)
    ))
}

impl<W: Write> Reporter for Terminal<W> {
    fn report(&mut self, event: &Event) {
        if let Some(line) = bar_line(event) {
            let Event::Step { step, total_steps, .. } = event else { unreachable!() };
            let due = self.last_draw.is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
            if due || step == total_steps {
                let _ = write!(self.out, "\r\x1b[2K{line}");
                let _ = self.out.flush();
                self.bar_shown = true;
                self.last_draw = Some(Instant::now());
            }
            if step == total_steps {
                let _ = writeln!(self.out);
                self.bar_shown = false;
            }
            return;
        }
        self.clear_bar();
        let line = match event {
            Event::Stage { stage, message } => format!("[{stage}] {message}"),
            Event::Checkpoint { .. } => return,
            Event::Resumed { run, step } => format!("[{run}] resuming from the checkpoint at step {step}"),
            Event::Evaluated { model, accuracy } => {
                format!("[eval] {model}: {:.2}% held-out accuracy", accuracy * 100.0)
            }
            Event::Step { .. } => unreachable!("handled above"),
        };
        let _ = writeln!(self.out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64) -> Event {
        Event::Step {
            run: "student".into(),
            step,
            total_steps: 20,
            epoch: 1,
            loss: 0.5,
            learning_rate: 1e-4,
            examples_per_second: 100.0,
            eta_seconds: 75.0,
        }
    }

    #[test]
    fn json_lines_are_parseable_and_thin_out_steps() {
        let mut r = JsonLines::new(Vec::new());
        for s in 1..=20 {
            r.report(&step(s));
        }
        r.report(&Event::Evaluated { model: "student".into(), accuracy: 0.8 });
        let text = String::from_utf8(r.into_inner()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let steps: Vec<u64> =
            lines.iter().filter(|l| l["event"] == "step").map(|l| l["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [1, 10, 20]);
        assert_eq!(lines[0]["totalSteps"], 20);
        assert_eq!(lines[0]["etaSeconds"], 75.0);
        assert!(lines[0]["time"].as_f64().unwrap() > 1.7e9);
        assert_eq!(lines.last().unwrap()["event"], "evaluated");
    }

    #[test]
    fn the_bar_shows_step_loss_throughput_and_eta() {
        let line = bar_line(&step(5)).unwrap();
        assert!(line.contains("5/20") && line.contains("loss 0.5000") && line.contains("100 ex/s"), "{line}");
        assert!(line.contains("ETA 1m15s"), "{line}");
        let mut t = Terminal::new(Vec::new());
        t.report(&step(20));
        t.report(&Event::Stage { stage: ProgressStage::Evaluating, message: "done".into() });
        let text = String::from_utf8(t.out).unwrap();
        assert!(text.ends_with("20/20 epoch 1  loss 0.5000  100 ex/s  ETA 1m15s\n[evaluating] done\n"), "{text:?}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(42.4), "42s");
        assert_eq!(human_duration(187.0), "3m07s");
        assert_eq!(human_duration(3720.0), "1h02m");
    }

    #[test]
    fn the_clock_measures_this_attempt_only() {
        let mut c = StepClock::new();
        std::thread::sleep(Duration::from_millis(20));
        let (rate, eta) = c.tick(51, 100, 32);
        assert!(rate > 0.0 && rate < 32.0 / 0.019, "{rate}");
        // One step took ~20 ms; 49 remain.
        assert!((0.5..5.0).contains(&eta), "{eta}");
    }
}
