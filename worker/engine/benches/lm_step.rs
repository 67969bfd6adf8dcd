//! Step-time breakdown of a causal-LM student's training step, shaped like
//! `examples/local/distill-lm.yaml` (4 layers, hidden 128, 4 heads / 2 KV, intermediate 384,
//! batch 8 × 128 tokens) at the full teacher vocabulary and at pruned vocabularies: forward to
//! logits, the fused loss, backward, optimiser update. Synthetic ids and teacher top-k (timing
//! only). Not a test: it prints a table.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench -p distillery-worker --bench lm_step
//! ```
#![allow(missing_docs)]
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use distillery_crds::distillation::Schedule;
use distillery_worker::model::decoder::{Decoder, DecoderConfig, StudentShape};
use distillery_worker::student::decoder::random_decoder;
use distillery_worker::train::lm::predicted_hidden;
use distillery_worker::train::optim::{AdamWParams, Trainer};
use distillery_worker::train::schedule::LearningRate;
use distillery_worker::train::token_kd::fused_head_distillation;
use std::time::Instant;

fn main() {
    eprintln!("RAYON_NUM_THREADS={}", std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into()));
    let dev = Device::Cpu;
    let (batch, length, k, reps) = (8usize, 128usize, 32usize, 4usize);
    println!("{:>7} {:>9} {:>9} {:>9} {:>9} {:>9}", "vocab", "layers", "head+loss", "backward", "update", "step");
    for vocab in [49_152usize, 16_384, 8_192] {
        let shape = StudentShape { layers: 4, hidden: 128, heads: 4, kv_heads: 2, intermediate: 384, vocab };
        let mut config = DecoderConfig::student(&shape);
        config.max_position_embeddings = length;
        let map = random_decoder(&config, 0, &dev).unwrap();
        let decoder = Decoder::new(&config, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
        let vars = map.data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        let mut trainer = Trainer::new(
            vars,
            AdamWParams::default(),
            LearningRate { peak: 1e-3, warmup: 0, total: 100, decay: Schedule::Constant },
            1.0,
        )
        .unwrap();
        let n = batch * (length - 1);
        let ids: Vec<u32> = (0..batch * length).map(|i| ((i * 7919) % vocab) as u32).collect();
        let ids = Tensor::from_vec(ids, (batch, length), &dev).unwrap();
        let targets: Vec<u32> = (0..n).map(|i| ((i * 104_729) % vocab) as u32).collect();
        let teacher_ids: Vec<u32> = (0..n * k).map(|i| ((i * 31) % vocab) as u32).collect();
        let log_probs: Vec<f32> = (0..n * (k + 1)).map(|i| -1.0 - (i % (k + 1)) as f32 * 0.2).collect();
        let mut sums = [0f64; 4];
        for rep in 0..=reps {
            let t0 = Instant::now();
            let hidden = predicted_hidden(&decoder, &ids).unwrap();
            let t1 = Instant::now();
            let loss = fused_head_distillation(
                &hidden,
                decoder.lm_head(),
                &targets,
                Some((&teacher_ids, &log_probs)),
                0.5,
                1.0,
            )
            .unwrap();
            let t2 = Instant::now();
            let grads = loss.backward().unwrap();
            let t3 = Instant::now();
            drop(grads);
            trainer.backward_step(&loss).unwrap();
            let t4 = Instant::now();
            if rep > 0 {
                // The update column is a second backward + update; report it less the backward.
                let parts = [t1 - t0, t2 - t1, t3 - t2, (t4 - t3).saturating_sub(t3 - t2)];
                for (s, d) in sums.iter_mut().zip(parts) {
                    *s += d.as_secs_f64() / reps as f64;
                }
            }
        }
        let step: f64 = sums.iter().sum();
        println!("{vocab:>7} {:>8.3}s {:>8.3}s {:>8.3}s {:>8.3}s {:>8.3}s", sums[0], sums[1], sums[2], sums[3], step);
    }
}
