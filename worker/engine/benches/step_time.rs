//! Step-time benchmark of the training paths on the embedded default's real teacher and data
//! (batch 32, sequences truncated at 64 tokens): teacher fine-tuning (all layers; top two) and a
//! two-layer student's distillation step, plus teacher inference per example. Not a test: it
//! prints figures. Run with the thread count you want to report:
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo bench -p distillery-worker --bench step_time
//! ```
#![allow(missing_docs)]
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use distillery_crds::distillation::{Pooling, Schedule, TemperatureSchedule};
use distillery_worker::data::inputs::{self, Inputs};
use distillery_worker::model::{classifier::Classifier, encoder::EncoderConfig};
use distillery_worker::spec;
use distillery_worker::student::init;
use distillery_worker::train::*;
use std::path::PathBuf;
use std::time::Instant;

mod support;
use support::step_seconds;

fn main() {
    eprintln!("RAYON_NUM_THREADS={}", std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into()));
    let dev = Device::Cpu;
    let job = spec::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/local/distill.yaml")).unwrap();
    let t0 = Instant::now();
    let Inputs { teacher_dir: tdir, split, ids, labels, .. } = inputs::load(&job).unwrap();
    let mean_len = ids.iter().map(|v| v.len()).sum::<usize>() as f64 / ids.len() as f64;
    eprintln!("read and tokenized {} in {:?}, mean len {mean_len:.1}", ids.len(), t0.elapsed());
    let config: EncoderConfig =
        serde_json::from_str(&std::fs::read_to_string(tdir.join("config.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(tdir.join("model.safetensors"), &dev).unwrap();
    let train: Vec<usize> = split.train.iter().copied().take(32 * 6).collect();
    let settings = FitSettings {
        epochs: 1,
        max_steps: None,
        batch_size: 32,
        learning_rate: 5e-5,
        warmup_fraction: 0.0,
        decay: Schedule::Constant,
        clip_norm: 1.0,
        weight_decay: 0.01,
        seed: 0,
        frozen_layers: 0,
    };
    let t = TemperatureSchedule { start: 4.0, end: 1.0, schedule: Schedule::Cosine };
    for (label, layers_trainable) in [("teacher all layers (word emb frozen)", 6usize), ("teacher top-2 layers", 2)] {
        let enc = init::pretrained_encoder(&config, &tensors).unwrap();
        let head = init::random_head(384, 2, 0, &dev).unwrap();
        let m = Classifier::new(
            &config,
            2,
            Pooling::Mean,
            VarBuilder::from_varmap(&enc, DType::F32, &dev),
            VarBuilder::from_varmap(&head, DType::F32, &dev),
        )
        .unwrap();
        let first = 6 - layers_trainable;
        let vars = init::named_vars(&[&enc, &head], |k| {
            k.starts_with("classifier")
                || (0..6).filter(|l| *l >= first).any(|l| k.starts_with(&format!("encoder.layer.{l}.")))
                || (layers_trainable == 6 && k.starts_with("embeddings.") && !k.contains("word_embeddings"))
        });
        let settings = FitSettings { frozen_layers: first, ..settings.clone() };
        let mut trainer = settings.trainer(vars, train.len()).unwrap();
        let examples = Examples { ids: &ids, labels: &labels, indices: &train };
        let times = step_seconds(&m, &mut trainer, examples, &Objective::Labels, &settings, &dev);
        eprintln!("{label}: s/step {:?}", times.iter().skip(1).map(|x| format!("{x:.2}")).collect::<Vec<_>>());
        let t1 = Instant::now();
        let idx: Vec<usize> = split.validation.iter().copied().take(512).collect();
        let _ = logits(&m, &ids, &idx, 64, &dev).unwrap();
        eprintln!("  teacher inference: {:.1} ms/example", t1.elapsed().as_secs_f64() * 1000.0 / 512.0);
    }
    let (sconf, senc) = init::from_teacher_layers(&config, &tensors, &[0, 5]).unwrap();
    let shead = init::random_head(384, 2, 0, &dev).unwrap();
    let sm = Classifier::new(
        &sconf,
        2,
        Pooling::Mean,
        VarBuilder::from_varmap(&senc, DType::F32, &dev),
        VarBuilder::from_varmap(&shead, DType::F32, &dev),
    )
    .unwrap();
    let teacher_logits: Vec<Vec<f32>> =
        labels.iter().map(|&l| if l == 1 { vec![-1.0, 1.0] } else { vec![1.0, -1.0] }).collect();
    let obj =
        Objective::Distill { teacher_logits: &teacher_logits, pooled: None, hidden: None, alpha: 0.3, temperature: &t };
    for (label, frozen_words) in
        [("student 2 layers, word emb frozen", true), ("student 2 layers, all trainable", false)]
    {
        let vars = init::named_vars(&[&senc, &shead], |k| !(frozen_words && k.contains("word_embeddings")));
        let mut trainer = settings.trainer(vars, train.len()).unwrap();
        let examples = Examples { ids: &ids, labels: &labels, indices: &train };
        let times = step_seconds(&sm, &mut trainer, examples, &obj, &settings, &dev);
        eprintln!("{label}: s/step {:?}", times.iter().skip(1).map(|x| format!("{x:.2}")).collect::<Vec<_>>());
    }
}
