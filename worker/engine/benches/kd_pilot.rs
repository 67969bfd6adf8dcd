//! Pilot of the distillation pipeline on the embedded default's real teacher and data, printing
//! held-out accuracies: teacher fine-tuned for one epoch, then a two-layer student built from the
//! fine-tuned teacher's layers 0 and 5, trained one epoch by distillation and, separately, on
//! labels alone; the bag-of-words baseline beside them. Not a test, and not the product's
//! `distill` (which will add teacher caching, checkpoints, the manifest and the vocabulary work):
//! it measures whether the pieces reach the targets.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench -p distillery-worker --bench kd_pilot
//! ```
#![allow(missing_docs)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use distillery_crds::distillation::{Pooling, Schedule, TemperatureSchedule};
use distillery_worker::baseline::{BagOfWords, BagOfWordsSettings};
use distillery_worker::classifier::Classifier;
use distillery_worker::inputs::{self, Inputs};
use distillery_worker::model::EncoderConfig;
use distillery_worker::train::{Examples, FitSettings, Objective, accuracy, fit, logits};
use distillery_worker::{init, spec};

fn classifier(config: &EncoderConfig, enc: &VarMap, head: &VarMap, dev: &Device) -> Classifier {
    let vb = |m: &VarMap| VarBuilder::from_varmap(m, DType::F32, dev);
    Classifier::new(config, 2, Pooling::Mean, vb(enc), vb(head)).unwrap()
}

fn tensors(maps: &[&VarMap]) -> HashMap<String, Tensor> {
    init::named_vars(maps, |_| true).into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect()
}

fn main() {
    let dev = Device::Cpu;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    let job = spec::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/local/distill.yaml")).unwrap();
    let Inputs { teacher_dir: tdir, dataset: ds, split, ids, labels } = inputs::load(&job).unwrap();
    let texts: Vec<&str> = ds.examples.iter().map(|e| e.text.as_str()).collect();
    let val_labels: Vec<u32> = split.validation.iter().map(|&i| labels[i]).collect();
    let train = Examples { ids: &ids, labels: &labels, indices: &split.train };
    let base = FitSettings {
        epochs: 1,
        batch_size: 32,
        learning_rate: 5e-5,
        warmup_fraction: 0.06,
        decay: Schedule::Cosine,
        clip_norm: 1.0,
        weight_decay: 0.01,
        seed: 0,
    };
    let mut rows: Vec<(String, f64, u64, f64)> = vec![];

    let t = Instant::now();
    let bow = BagOfWords::fit(
        &split.train.iter().map(|&i| texts[i]).collect::<Vec<_>>(),
        &split.train.iter().map(|&i| ds.examples[i].label).collect::<Vec<_>>(),
        2,
        BagOfWordsSettings::default(),
    );
    let bow_acc = bow.accuracy(
        &split.validation.iter().map(|&i| texts[i]).collect::<Vec<_>>(),
        &split.validation.iter().map(|&i| ds.examples[i].label).collect::<Vec<_>>(),
    );
    rows.push(("bag-of-words (TF-IDF + LR)".into(), bow_acc, 0, t.elapsed().as_secs_f64()));

    // Teacher: pretrained encoder + new head, fine-tuned (word embeddings frozen).
    let t = Instant::now();
    let config: EncoderConfig =
        serde_json::from_str(&std::fs::read_to_string(tdir.join("config.json")).unwrap()).unwrap();
    let pretrained = candle_core::safetensors::load(tdir.join("model.safetensors"), &dev).unwrap();
    let enc = init::pretrained_encoder(&config, &pretrained).unwrap();
    let head = init::random_head(config.hidden_size, 2, 0, &dev).unwrap();
    let teacher = classifier(&config, &enc, &head, &dev);
    let vars = init::named_vars(&[&enc, &head], |k| !k.contains("word_embeddings"));
    let mut n = 0;
    fit(&teacher, vars, train, &Objective::Labels, &base, &dev, |r| {
        n += 1;
        if n % 50 == 0 {
            eprintln!(
                "teacher step {}/{} loss {:.4} ({:.0}s)",
                r.step,
                r.total_steps,
                r.stats.loss,
                t.elapsed().as_secs_f64()
            );
        }
    })
    .unwrap();
    let teacher_acc = accuracy(&logits(&teacher, &ids, &split.validation, 64, &dev).unwrap(), &val_labels);
    let teacher_params = config.parameters() + 2 * config.hidden_size as u64 + 2;
    rows.push((
        "teacher (MiniLM-L6, 1 epoch fine-tune)".into(),
        teacher_acc,
        teacher_params,
        t.elapsed().as_secs_f64(),
    ));

    // Teacher logits of every training example, once.
    let t = Instant::now();
    let train_logits = logits(&teacher, &ids, &split.train, 64, &dev).unwrap();
    let mut teacher_logits = vec![vec![0f32; 2]; ids.len()];
    for (k, &i) in split.train.iter().enumerate() {
        teacher_logits[i] = train_logits[k].clone();
    }
    eprintln!("teacher logits of {} examples in {:.0}s", split.train.len(), t.elapsed().as_secs_f64());

    // Students from the fine-tuned teacher's layers 0 and 5, with its head.
    let teacher_tensors = tensors(&[&enc]);
    let head_tensors = tensors(&[&head]);
    let temperature = TemperatureSchedule { start: 4.0, end: 1.0, schedule: Schedule::Cosine };
    for (name, alpha) in [("student 2 layers, distilled (alpha 0.3)", 0.3), ("student 2 layers, labels only", 1.0)] {
        let t = Instant::now();
        let (sconf, senc) = init::from_teacher_layers(&config, &teacher_tensors, &[0, 5]).unwrap();
        let shead = VarMap::new();
        for (k, v) in &head_tensors {
            init::insert(&shead, k, v).unwrap();
        }
        let student = classifier(&sconf, &senc, &shead, &dev);
        let vars = init::named_vars(&[&senc, &shead], |k| !k.contains("word_embeddings"));
        let objective = Objective::Distill { teacher_logits: &teacher_logits, alpha, temperature: &temperature };
        let settings = FitSettings { learning_rate: 1e-4, ..base.clone() };
        fit(&student, vars, train, &objective, &settings, &dev, |_| {}).unwrap();
        let acc = accuracy(&logits(&student, &ids, &split.validation, 64, &dev).unwrap(), &val_labels);
        rows.push((name.into(), acc, sconf.parameters() + 2 * sconf.hidden_size as u64 + 2, t.elapsed().as_secs_f64()));
    }

    println!(
        "\nKD pilot — Rotten Tomatoes, movie-disjoint held-out split ({} examples), RAYON_NUM_THREADS={threads}",
        split.validation.len()
    );
    println!("{:<42} {:>9} {:>12} {:>9}", "model", "accuracy", "parameters", "seconds");
    for (name, acc, params, secs) in &rows {
        let params = if *params == 0 { "-".to_string() } else { format!("{:.1}M", *params as f64 / 1e6) };
        println!("{name:<42} {:>8.2}% {params:>12} {secs:>9.0}", acc * 100.0);
    }
    println!("retention (distilled student / teacher): {:.1}%", rows[2].1 / rows[1].1 * 100.0);
}
