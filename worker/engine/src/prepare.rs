//! Teacher preparation: a bare encoder (all-MiniLM-L6-v2 has no task head) becomes a
//! task-specific teacher as the spec's `teacher.head` says — a linear head fitted on the frozen
//! encoder, or encoder and head fine-tuned together (all layers, or only the top ones). The
//! prepared teacher, its held-out accuracy and its outputs on every training example (logits and
//! pooled embeddings, what distillation needs) are cached under a hash of everything that
//! produced them, so a rerun does not prepare it again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use distillery_crds::DistillationJob;
use distillery_crds::distillation::{HeadMode, TeacherHeadSpec};
use serde::{Deserialize, Serialize};

use crate::classifier::Classifier;
use crate::init::{self, layer_of};
use crate::inputs::Inputs;
use crate::model::EncoderConfig;
use crate::progress::{Event, Reporter};
use crate::runner::{self, Checkpointing, RunError, RunSummary};
use crate::store::{sha256, sha256_file};
use crate::train::{Examples, FitSettings, Objective, accuracy, outputs};

/// Bumped whenever preparation itself changes, so older cached teachers are not reused.
const PREPARATION_VERSION: u32 = 1;

/// Why the teacher could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The teacher directory lacks a file or has an unreadable one.
    #[error("spec.teacher.uri: {path}: {message}")]
    Teacher {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The teacher has no task head and the spec does not say how to make one.
    #[error(
        "spec.teacher.head is required: the teacher {0} has no classifier head; set teacher.head.mode \
         to linear-probe or fine-tune"
    )]
    HeadRequired(String),
    /// Teachers that ship their own classifier head are not loaded yet.
    #[error(
        "the teacher {0} ships a classifier head; this worker prepares bare encoders only (BERT \
         pooler + head loading is not built yet). Use the bare encoder with spec.teacher.head"
    )]
    ShippedHeadUnsupported(String),
    /// Training or evaluation failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A tensor operation failed.
    #[error("teacher preparation: {0}")]
    Candle(#[from] candle_core::Error),
    /// The cache could not be written.
    #[error("teacher cache {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// How the teacher was prepared, as recorded in the cache and in the artifact's lineage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Preparation {
    /// The cache key: sha256 of the teacher's files, the dataset, the split and these settings.
    pub key: String,
    /// The spec's head settings.
    pub head: TeacherHeadSpec,
    /// Encoder layers that were trained (0 for a linear probe).
    pub trained_layers: usize,
    /// Whether the word-embedding table was kept frozen.
    pub word_embeddings_frozen: bool,
    /// Held-out accuracy of the prepared teacher.
    pub held_out_accuracy: f64,
    /// Training examples.
    pub train_examples: usize,
    /// Held-out examples.
    pub held_out_examples: usize,
    /// The training run.
    pub run: RunSummary,
}

/// A task-specific teacher, ready to distil from.
pub struct PreparedTeacher {
    /// Its encoder configuration.
    pub config: EncoderConfig,
    /// Encoder variables (HuggingFace names) and `classifier.{weight,bias}`.
    pub tensors: HashMap<String, Tensor>,
    /// How it was made.
    pub preparation: Preparation,
    /// Logits of every training example, indexed like `inputs.split.train`.
    pub train_logits: Vec<Vec<f32>>,
    /// Pooled embeddings of every training example, indexed like `inputs.split.train`.
    pub train_pooled: Vec<Vec<f32>>,
    /// Its cache directory.
    pub dir: PathBuf,
    /// Whether it came from the cache.
    pub reused: bool,
}

impl PreparedTeacher {
    /// Parameters the teacher uses for the task: encoder and head (no pooler).
    pub fn parameters(&self) -> u64 {
        let classes = self.train_logits.first().map_or(0, Vec::len) as u64;
        self.config.parameters() + classes * (self.config.hidden_size as u64 + 1)
    }
}

const MODEL: &str = "model.safetensors";
const CONFIG: &str = "config.json";
const OUTPUTS: &str = "outputs.safetensors";
const RECORD: &str = "preparation.json";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrepareError + '_ {
    move |source| PrepareError::Io { path: path.display().to_string(), source }
}

fn teacher_file(dir: &Path, name: &str) -> Result<PathBuf, PrepareError> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(PrepareError::Teacher { path: path.display().to_string(), message: "missing".into() })
    }
}

/// The cache key of the prepared teacher for `job` on `inputs`.
pub fn cache_key(job: &DistillationJob, inputs: &Inputs) -> Result<String, PrepareError> {
    let digest = |path: &Path| sha256_file(path).map_err(io(path));
    let dir = &inputs.teacher_dir;
    let mut dataset = serde_json::to_value(&job.spec.dataset).expect("specs serialize");
    dataset["uri"] = serde_json::Value::Null;
    dataset["transferSet"] = serde_json::Value::Null;
    let what = serde_json::json!({
        "version": PREPARATION_VERSION,
        "weights": digest(&teacher_file(dir, MODEL)?)?,
        "config": digest(&teacher_file(dir, CONFIG)?)?,
        "tokenizer": digest(&teacher_file(dir, "tokenizer.json")?)?,
        "data": digest(&inputs.dataset.path)?,
        "dataset": dataset,
        "pooling": job.spec.teacher.pooling,
        "head": job.spec.teacher.head,
        "seed": job.spec.training.seed,
    });
    Ok(sha256(what.to_string().as_bytes()))
}

/// The prepared teacher for `job`: from the cache when a previous run made it, else made now
/// (and cached).
pub fn prepare(
    job: &DistillationJob,
    inputs: &Inputs,
    cache_root: &Path,
    device: &Device,
    reporter: &mut dyn Reporter,
) -> Result<PreparedTeacher, PrepareError> {
    let dir_name = inputs.teacher_dir.display().to_string();
    let config_path = teacher_file(&inputs.teacher_dir, CONFIG)?;
    let config: EncoderConfig = serde_json::from_str(&std::fs::read_to_string(&config_path).map_err(io(&config_path))?)
        .map_err(|e| PrepareError::Teacher { path: config_path.display().to_string(), message: e.to_string() })?;
    let weights_path = teacher_file(&inputs.teacher_dir, MODEL)?;
    let pretrained = candle_core::safetensors::load(&weights_path, device)
        .map_err(|e| PrepareError::Teacher { path: weights_path.display().to_string(), message: e.to_string() })?;
    if pretrained.keys().any(|k| k.starts_with("classifier.")) {
        return Err(PrepareError::ShippedHeadUnsupported(dir_name));
    }
    let head_spec = job.spec.teacher.head.clone().ok_or(PrepareError::HeadRequired(dir_name))?;
    let key = cache_key(job, inputs)?;
    let dir = cache_root.join("teachers").join(&key[..24]);
    if let Some(cached) = load_cached(&dir, &key, &config, device)? {
        reporter.report(&Event::Stage {
            stage: "teacher".into(),
            message: format!(
                "reusing the prepared teacher {} ({:.2}% held-out)",
                dir.display(),
                cached.preparation.held_out_accuracy * 100.0
            ),
        });
        return Ok(cached);
    }

    let classes = inputs.dataset.labels.len();
    let layers = config.num_hidden_layers;
    let (frozen_layers, word_embeddings_frozen) = match head_spec.mode {
        HeadMode::LinearProbe => (layers, true),
        HeadMode::FineTune => {
            let trained = head_spec.trainable_layers.map_or(layers, |t| (t as usize).min(layers));
            (layers - trained, true)
        }
    };
    reporter.report(&Event::Stage {
        stage: "teacher".into(),
        message: format!(
            "preparing the teacher ({}, {} of {layers} layers trained, {} epochs) — once; cached in {}",
            match head_spec.mode {
                HeadMode::LinearProbe => "linear probe",
                HeadMode::FineTune => "fine-tune",
            },
            layers - frozen_layers,
            head_spec.epochs,
            dir.display()
        ),
    });
    let encoder = init::pretrained_encoder(&config, &pretrained)?;
    let head = init::random_head(config.hidden_size, classes, job.spec.training.seed, device)?;
    let vb = |m: &VarMap| VarBuilder::from_varmap(m, DType::F32, device);
    let model = Classifier::new(&config, classes, job.spec.teacher.pooling, vb(&encoder), vb(&head))?;
    let settings = FitSettings {
        epochs: u64::from(head_spec.epochs),
        max_steps: None,
        batch_size: head_spec.batch_size as usize,
        learning_rate: head_spec.learning_rate,
        warmup_fraction: job.spec.training.warmup_fraction,
        decay: job.spec.training.schedule,
        clip_norm: job.spec.training.gradient_clip_norm,
        weight_decay: job.spec.training.weight_decay,
        seed: job.spec.training.seed,
        frozen_layers,
    };
    let trainable = |name: &str| {
        if name.starts_with("classifier.") {
            return true;
        }
        if frozen_layers > 0 || name.contains("word_embeddings") {
            return frozen_layers < layers && layer_of(name).is_some_and(|l| l >= frozen_layers);
        }
        true
    };
    let partial = dir.with_extension("partial");
    let checkpointing = Checkpointing {
        dir: partial.join("checkpoint"),
        interval: u64::from(job.spec.training.checkpoint_interval),
        run_key: key.clone(),
    };
    let examples = Examples { ids: &inputs.ids, labels: &inputs.labels, indices: &inputs.split.train };
    let run = runner::train(
        "teacher",
        &model,
        &[&encoder, &head],
        trainable,
        examples,
        &Objective::Labels,
        &settings,
        Some(&checkpointing),
        device,
        reporter,
    )?;

    reporter.report(&Event::Stage { stage: "teacher".into(), message: "evaluating and caching its outputs".into() });
    let started = Instant::now();
    let (held_out, _) = outputs(&model, &inputs.ids, &inputs.split.validation, 64, device)?;
    let held_out_labels: Vec<u32> = inputs.split.validation.iter().map(|&i| inputs.labels[i]).collect();
    let held_out_accuracy = accuracy(&held_out, &held_out_labels);
    let (train_logits, train_pooled) = outputs(&model, &inputs.ids, &inputs.split.train, 64, device)?;
    let preparation = Preparation {
        key: key.clone(),
        head: head_spec,
        trained_layers: layers - frozen_layers,
        word_embeddings_frozen,
        held_out_accuracy,
        train_examples: inputs.split.train.len(),
        held_out_examples: inputs.split.validation.len(),
        run: RunSummary { seconds: run.seconds + started.elapsed().as_secs_f64(), ..run },
    };
    let tensors = runner::snapshot(&[&encoder, &head])?;
    let prepared =
        PreparedTeacher { config, tensors, preparation, train_logits, train_pooled, dir: dir.clone(), reused: false };
    save(&prepared, &partial)?;
    reporter.report(&Event::Evaluated { model: "teacher".into(), accuracy: held_out_accuracy });
    Ok(prepared)
}

fn rows_tensor(rows: &[Vec<f32>], device: &Device) -> candle_core::Result<Tensor> {
    let width = rows.first().map_or(0, Vec::len);
    Tensor::from_vec(rows.iter().flatten().copied().collect::<Vec<_>>(), (rows.len(), width), device)
}

/// Writes `prepared` into `partial` and renames it to its cache directory.
fn save(prepared: &PreparedTeacher, partial: &Path) -> Result<(), PrepareError> {
    std::fs::create_dir_all(partial).map_err(io(partial))?;
    let device = &Device::Cpu;
    candle_core::safetensors::save(&prepared.tensors, partial.join(MODEL))?;
    let outputs = HashMap::from([
        ("logits".to_string(), rows_tensor(&prepared.train_logits, device)?),
        ("pooled".to_string(), rows_tensor(&prepared.train_pooled, device)?),
    ]);
    candle_core::safetensors::save(&outputs, partial.join(OUTPUTS))?;
    let write_json = |name: &str, value: serde_json::Value| {
        let path = partial.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(&value).expect("json")).map_err(io(&path))
    };
    write_json(CONFIG, serde_json::to_value(&prepared.config).expect("config serializes"))?;
    write_json(RECORD, serde_json::to_value(&prepared.preparation).expect("record serializes"))?;
    let checkpoint = partial.join("checkpoint");
    if checkpoint.exists() {
        std::fs::remove_dir_all(&checkpoint).map_err(io(&checkpoint))?;
    }
    if prepared.dir.exists() {
        std::fs::remove_dir_all(&prepared.dir).map_err(io(&prepared.dir))?;
    }
    std::fs::rename(partial, &prepared.dir).map_err(io(&prepared.dir))
}

/// The cached teacher in `dir` when it is complete and was made under `key`.
fn load_cached(
    dir: &Path,
    key: &str,
    config: &EncoderConfig,
    device: &Device,
) -> Result<Option<PreparedTeacher>, PrepareError> {
    let record_path = dir.join(RECORD);
    let Ok(text) = std::fs::read_to_string(&record_path) else { return Ok(None) };
    let Ok(preparation) = serde_json::from_str::<Preparation>(&text) else { return Ok(None) };
    if preparation.key != key {
        return Ok(None);
    }
    let tensors = candle_core::safetensors::load(dir.join(MODEL), device)?;
    let outputs = candle_core::safetensors::load(dir.join(OUTPUTS), device)?;
    let rows = |name: &str| -> candle_core::Result<Vec<Vec<f32>>> {
        outputs.get(name).ok_or_else(|| candle_core::Error::Msg(format!("cached outputs lack {name}")))?.to_vec2()
    };
    Ok(Some(PreparedTeacher {
        config: config.clone(),
        tensors,
        train_logits: rows("logits")?,
        train_pooled: rows("pooled")?,
        preparation,
        dir: dir.to_path_buf(),
        reused: true,
    }))
}
