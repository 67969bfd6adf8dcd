//! Distillation step throughput: this worker (candle) against PyTorch eager doing the same step,
//! side by side in one run. Not a test: it prints a table.
//!
//! The step is the embedded default's: a 2-layer student (hidden 384, 12 heads, feed-forward
//! 1536, vocabulary 13,673 factorized through a 128-wide table, mean pooling, 2 classes), batch 32,
//! the loss `alpha·CE + (1−alpha)·T²·KL` against cached teacher logits (the worker never runs the
//! teacher while distilling), backward, global-norm clipping and an AdamW step with warm-up and
//! cosine decay. Both sides get the same thread count and fixed-length sequences of the same
//! random token ids. PyTorch comes from PyPI and stays out of CI: `scripts/bench-torch.sh` installs
//! it in its own virtual environment and runs this bench; run by hand it needs
//! `DISTILLERY_TORCH_PYTHON` (a Python with torch) and prints the candle side alone without it.
//!
//! ```text
//! scripts/bench-torch.sh            # threads 1 and 2, sequence lengths 32 and 64
//! ```
#![allow(missing_docs)]
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use distillery_crds::distillation::{Pooling, Schedule, TemperatureSchedule};
use distillery_worker::model::{classifier::Classifier, encoder::EncoderConfig};
use distillery_worker::student::init;
use distillery_worker::train::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::process::Command;

mod support;
use support::step_seconds;

const BATCH: usize = 32;
/// Steps timed per configuration, after [`WARMUP`] untimed ones.
const STEPS: usize = 12;
const WARMUP: usize = 3;
const ALPHA: f64 = 0.3;

fn student() -> EncoderConfig {
    EncoderConfig {
        vocab_size: 13_673,
        hidden_size: 384,
        num_hidden_layers: 2,
        num_attention_heads: 12,
        intermediate_size: 1536,
        max_position_embeddings: 64,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_act: "gelu".into(),
        model_type: "bert".into(),
        embedding_size: Some(128),
    }
}

/// Median seconds per step of the worker's own training loop (`train::fit`).
fn candle_step(config: &EncoderConfig, seq: usize) -> f64 {
    let dev = Device::Cpu;
    let n = BATCH * (WARMUP + STEPS);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<Vec<u32>> =
        (0..n).map(|_| (0..seq).map(|_| rng.random_range(1..config.vocab_size as u32)).collect()).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..2)).collect();
    let teacher: Vec<Vec<f32>> =
        (0..n).map(|_| vec![rng.random_range(-3.0..3.0), rng.random_range(-3.0..3.0)]).collect();
    let encoder = init::random_encoder(config, 0, &dev).unwrap();
    let head = init::random_head(config.hidden_size, 2, 0, &dev).unwrap();
    let model = Classifier::new(
        config,
        2,
        Pooling::Mean,
        VarBuilder::from_varmap(&encoder, DType::F32, &dev),
        VarBuilder::from_varmap(&head, DType::F32, &dev),
    )
    .unwrap();
    let settings = FitSettings {
        epochs: 1,
        max_steps: None,
        batch_size: BATCH,
        learning_rate: 2e-4,
        warmup_fraction: 0.1,
        decay: Schedule::Cosine,
        clip_norm: 1.0,
        weight_decay: 0.01,
        seed: 0,
        frozen_layers: 0,
    };
    let indices: Vec<usize> = (0..n).collect();
    let mut trainer = settings.trainer(init::named_vars(&[&encoder, &head], |_| true), n).unwrap();
    let t = TemperatureSchedule { start: 4.0, end: 1.0, schedule: Schedule::Cosine };
    let objective =
        Objective::Distill { teacher_logits: &teacher, pooled: None, hidden: None, alpha: ALPHA, temperature: &t };
    let examples = Examples { ids: &ids, labels: &labels, indices: &indices };
    let mut times = step_seconds(&model, &mut trainer, examples, &objective, &settings, &dev);
    median(&mut times[WARMUP..])
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds per step of PyTorch eager (`benches/kd_step_torch.py`) with `threads` threads.
fn torch_step(python: &str, config: &EncoderConfig, seq: usize, threads: usize) -> Result<f64, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/kd_step_torch.py");
    let args = json!({
        "config": config, "batch": BATCH, "seq": seq, "steps": STEPS, "warmup": WARMUP,
        "threads": threads, "alpha": ALPHA, "lr": 2e-4, "weight_decay": 0.01, "clip": 1.0,
    });
    let out = Command::new(python).arg(script).arg(args.to_string()).output().map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{script} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let reply: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{script} printed no JSON: {e}"))?;
    reply["median_step_s"].as_f64().ok_or_else(|| format!("{script} printed no median_step_s: {reply}"))
}

fn main() {
    let threads: usize = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let python = std::env::var("DISTILLERY_TORCH_PYTHON").ok();
    let config = student();
    println!("distillation step, batch {BATCH}, {threads} thread(s), median of {STEPS} steps after {WARMUP} warm-up");
    println!(
        "{:>8}  {:>14}  {:>14}  {:>14}  {:>14}  {:>7}",
        "seq len", "candle s/step", "candle ex/s", "torch s/step", "torch ex/s", "ratio"
    );
    for seq in [32usize, 64] {
        let ours = candle_step(&config, seq);
        let theirs = python.as_deref().map(|p| torch_step(p, &config, seq, threads));
        let (t_step, t_rate, ratio) = match &theirs {
            Some(Ok(s)) => (format!("{s:.3}"), format!("{:.1}", BATCH as f64 / s), format!("{:.2}x", s / ours)),
            Some(Err(e)) => {
                eprintln!("PyTorch side failed: {e}");
                ("failed".into(), "-".into(), "-".into())
            }
            None => ("(no torch)".into(), "-".into(), "-".into()),
        };
        println!("{seq:>8}  {ours:>14.3}  {:>14.1}  {t_step:>14}  {t_rate:>14}  {ratio:>7}", BATCH as f64 / ours);
    }
    println!("ratio = PyTorch s/step ÷ candle s/step (above 1: the worker is faster)");
}
