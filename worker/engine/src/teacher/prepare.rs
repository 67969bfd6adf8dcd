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
use distillery_crds::distillation::{HeadMode, Pooling, TeacherHeadSpec};
use serde::{Deserialize, Serialize};

use crate::data::inputs::Inputs;
use crate::model::classifier::Classifier;
use crate::model::encoder::EncoderConfig;
use crate::progress::{Event, ProgressStage, Reporter};
use crate::store::{sha256, sha256_file};
use crate::student::init::{self, layer_of};
use crate::train::align::HiddenTargets;
use crate::train::runner::{self, Checkpointing, RunError, RunSummary};
use crate::train::{Examples, FitSettings, Objective, Rows, accuracy, outputs};

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
    /// The teacher ships a classifier head and the spec asks to prepare another.
    #[error(
        "spec.teacher.head must be left out: the teacher {0} ships a classifier head \
         (classifier.weight), which is distilled from as it is"
    )]
    HeadNotWanted(String),
    /// The shipped head does not fit the dataset.
    #[error("spec.teacher.uri: the classifier head of {path} {message}")]
    ShippedHead {
        /// The teacher directory.
        path: String,
        /// What does not fit.
        message: String,
    },
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
    /// The spec's head settings (none when the teacher shipped its head).
    pub head: Option<TeacherHeadSpec>,
    /// Whether the teacher's own classifier head was used as it is (no training).
    #[serde(default)]
    pub shipped_head: bool,
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
    /// The training run (none for a shipped head).
    pub run: Option<RunSummary>,
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
    /// Classes of its head.
    pub fn classes(&self) -> usize {
        self.tensors.get("classifier.weight").map_or(0, |w| w.dims()[0])
    }

    /// Parameters the teacher uses for the task: encoder and head (with the pooler when pooling
    /// uses it: only then is it among its tensors).
    pub fn parameters(&self) -> u64 {
        let head: usize = self
            .tensors
            .iter()
            .filter(|(k, _)| k.starts_with("classifier.") || k.starts_with("pooler."))
            .map(|(_, t)| t.elem_count())
            .sum();
        self.config.parameters() + head as u64
    }

    /// The teacher as a model to run (frozen: its tensors are not variables).
    pub fn classifier(&self, pooling: Pooling, device: &Device) -> candle_core::Result<Classifier> {
        let vb = VarBuilder::from_tensors(self.tensors.clone(), DType::F32, device);
        Classifier::new(&self.config, self.classes(), pooling, vb.clone(), vb)
    }
}

/// The teacher's outputs of `layers` on every example distillation trains on (training split
/// and transfer texts), for hidden-state alignment. Computed once per prepared teacher, transfer
/// file and layer set, and cached beside the prepared teacher.
pub fn hidden_targets(
    teacher: &PreparedTeacher,
    job: &DistillationJob,
    inputs: &Inputs,
    layers: &[usize],
    device: &Device,
    reporter: &mut dyn Reporter,
) -> Result<HiddenTargets, PrepareError> {
    let indices = inputs.distillation_indices();
    let transfer = inputs.transfer.as_ref().map_or("", |t| t.digest.as_str());
    let what = serde_json::json!({
        "teacher": teacher.preparation.key,
        "transfer": transfer,
        "transferSet": job.spec.dataset.transfer_set,
        "layers": layers,
        "pooling": job.spec.teacher.pooling,
    });
    let path = teacher.dir.join(format!("hidden-{}.safetensors", &sha256(what.to_string().as_bytes())[..24]));
    let name = |layer: usize| format!("layer.{layer}");
    if path.is_file() {
        let mut saved = candle_core::safetensors::load(&path, device)?;
        let order: Option<Vec<usize>> = saved
            .remove("order")
            .and_then(|o| o.to_vec1::<u32>().ok())
            .map(|o| o.into_iter().map(|i| i as usize).collect());
        // `get`, not `remove`: a layer map may align two student layers with the same teacher layer.
        let tables: Option<Vec<Tensor>> = layers.iter().map(|&l| saved.get(&name(l)).cloned()).collect();
        if let (Some(order), Some(tables)) = (order, tables) {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            let mut wanted = indices.clone();
            wanted.sort_unstable();
            if sorted == wanted {
                reporter.report(&Event::Stage {
                    stage: ProgressStage::CachingTeacherOutputs,
                    message: format!("reusing its hidden states of layers {layers:?} ({})", path.display()),
                });
                return Ok(HiddenTargets::from_tables(layers.to_vec(), tables, &order, &inputs.ids)?);
            }
        }
    }
    reporter.report(&Event::Stage {
        stage: ProgressStage::CachingTeacherOutputs,
        message: format!(
            "computing its hidden states of layers {layers:?} on {} examples — once; cached",
            indices.len()
        ),
    });
    let model = teacher.classifier(job.spec.teacher.pooling, device)?;
    let targets = HiddenTargets::compute(&model, &inputs.ids, &indices, layers, device)?;
    let (tables, order) = targets.tables()?;
    let mut saved: HashMap<String, Tensor> = layers.iter().map(|&l| name(l)).zip(tables).collect();
    let order: Vec<u32> = order.into_iter().map(|i| i as u32).collect();
    saved.insert("order".into(), Tensor::new(order.as_slice(), device)?);
    save_staged(&saved, &path)?;
    Ok(targets)
}

/// A teacher's outputs on some examples, one row each.
#[derive(Debug, Default)]
pub struct TeacherRows {
    /// Logits.
    pub logits: Rows,
    /// Pooled embeddings.
    pub pooled: Rows,
}

/// The teacher's logits and pooled embeddings on the transfer texts of `inputs` (indexed like
/// `inputs.transfer_indices()`; empty without a transfer set). Computed once per prepared teacher
/// and transfer file, and cached beside the prepared teacher.
pub fn transfer_outputs(
    teacher: &PreparedTeacher,
    job: &DistillationJob,
    inputs: &Inputs,
    device: &Device,
    reporter: &mut dyn Reporter,
) -> Result<TeacherRows, PrepareError> {
    let (Some(transfer), Some(spec)) = (&inputs.transfer, &job.spec.dataset.transfer_set) else {
        return Ok(TeacherRows::default());
    };
    let mut what = serde_json::to_value(spec).expect("specs serialize");
    what["uri"] = serde_json::Value::Null;
    what["teacher"] = teacher.preparation.key.clone().into();
    what["data"] = transfer.digest.clone().into();
    what["maxSequenceLength"] = job.spec.dataset.max_sequence_length.into();
    let path = teacher.dir.join(format!("transfer-{}.safetensors", &sha256(what.to_string().as_bytes())[..24]));
    if path.is_file() {
        let cached = candle_core::safetensors::load(&path, device)?;
        if let (Some(logits), Some(pooled)) = (cached.get("logits"), cached.get("pooled"))
            && logits.dim(0)? == transfer.indices.len()
        {
            reporter.report(&Event::Stage {
                stage: ProgressStage::CachingTeacherOutputs,
                message: format!("reusing its outputs on {} transfer texts ({})", transfer.texts.len(), path.display()),
            });
            return Ok(TeacherRows { logits: logits.to_vec2()?, pooled: pooled.to_vec2()? });
        }
    }
    reporter.report(&Event::Stage {
        stage: ProgressStage::CachingTeacherOutputs,
        message: format!(
            "computing its outputs on {} transfer texts from {} — once; cached",
            transfer.texts.len(),
            transfer.path.display()
        ),
    });
    let model = teacher.classifier(job.spec.teacher.pooling, device)?;
    let (logits, pooled) = outputs(&model, &inputs.ids, &transfer.indices, 64, device)?;
    let tensors = HashMap::from([
        ("logits".to_string(), rows_tensor(&logits, device)?),
        ("pooled".to_string(), rows_tensor(&pooled, device)?),
    ]);
    save_staged(&tensors, &path)?;
    Ok(TeacherRows { logits, pooled })
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

/// The encoder configuration (`config.json`) of the teacher directory `dir`.
pub fn teacher_config(dir: &Path) -> Result<EncoderConfig, PrepareError> {
    let path = teacher_file(dir, CONFIG)?;
    serde_json::from_str(&std::fs::read_to_string(&path).map_err(io(&path))?)
        .map_err(|e| PrepareError::Teacher { path: path.display().to_string(), message: e.to_string() })
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
    let config = teacher_config(&inputs.teacher_dir)?;
    let weights_path = teacher_file(&inputs.teacher_dir, MODEL)?;
    let pretrained: HashMap<String, Tensor> = candle_core::safetensors::load(&weights_path, device)
        .map_err(|e| PrepareError::Teacher { path: weights_path.display().to_string(), message: e.to_string() })?
        .into_iter()
        // HuggingFace's task models (BertForSequenceClassification) nest the encoder under `bert.`.
        .map(|(k, v)| (k.strip_prefix("bert.").map(str::to_string).unwrap_or(k), v))
        .collect();
    let shipped_head = pretrained.contains_key("classifier.weight");
    if shipped_head && job.spec.teacher.head.is_some() {
        return Err(PrepareError::HeadNotWanted(dir_name));
    }
    let key = cache_key(job, inputs)?;
    let dir = cache_root.join("teachers").join(&key[..24]);
    let cached = load_cached(&dir, &key, &config, device).unwrap_or_else(|e| {
        // A damaged entry (a crash mid-write on a shared claim) is a miss, not a failure that
        // every later job on the claim would hit: prepare it again and replace it.
        reporter.report(&Event::Stage {
            stage: ProgressStage::PreparingTeacher,
            message: format!("the cached teacher {} cannot be read ({e}); preparing it again", dir.display()),
        });
        None
    });
    if let Some(cached) = cached {
        reporter.report(&Event::Stage {
            stage: ProgressStage::PreparingTeacher,
            message: format!(
                "reusing the prepared teacher {} ({:.2}% held-out)",
                dir.display(),
                cached.preparation.held_out_accuracy * 100.0
            ),
        });
        return Ok(cached);
    }
    if shipped_head {
        return as_shipped(job, inputs, config, &pretrained, key, dir, device, reporter);
    }
    let head_spec = job.spec.teacher.head.clone().ok_or(PrepareError::HeadRequired(dir_name))?;

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
        stage: ProgressStage::PreparingTeacher,
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
    if job.spec.teacher.pooling == Pooling::Pooler {
        init::add_pooler(&head, Some(&pretrained), config.hidden_size, job.spec.training.seed, device)?;
    }
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
        if name.starts_with("classifier.") || name.starts_with("pooler.") {
            return true;
        }
        if frozen_layers > 0 || name.contains("word_embeddings") {
            return frozen_layers < layers && layer_of(name).is_some_and(|l| l >= frozen_layers);
        }
        true
    };
    let partial = staging_dir(&dir, job);
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

    reporter.report(&Event::Stage {
        stage: ProgressStage::CachingTeacherOutputs,
        message: "evaluating and caching its outputs".into(),
    });
    let started = Instant::now();
    let (held_out, _) = outputs(&model, &inputs.ids, &inputs.split.validation, 64, device)?;
    let held_out_labels: Vec<u32> = inputs.split.validation.iter().map(|&i| inputs.labels[i]).collect();
    let held_out_accuracy = accuracy(&held_out, &held_out_labels);
    let (train_logits, train_pooled) = outputs(&model, &inputs.ids, &inputs.split.train, 64, device)?;
    let preparation = Preparation {
        key: key.clone(),
        head: Some(head_spec),
        shipped_head: false,
        trained_layers: layers - frozen_layers,
        word_embeddings_frozen,
        held_out_accuracy,
        train_examples: inputs.split.train.len(),
        held_out_examples: inputs.split.validation.len(),
        run: Some(RunSummary { seconds: run.seconds + started.elapsed().as_secs_f64(), ..run }),
    };
    let tensors = runner::snapshot(&[&encoder, &head])?;
    let prepared =
        PreparedTeacher { config, tensors, preparation, train_logits, train_pooled, dir: dir.clone(), reused: false };
    save(&prepared, &partial)?;
    reporter.report(&Event::Evaluated { model: "teacher".into(), accuracy: held_out_accuracy });
    Ok(prepared)
}

/// The teacher with the classifier head it ships: evaluated and its outputs cached, not trained.
/// The head's rows are put in the order of `spec.dataset.labels`, by the names of the model's
/// `config.json` `id2label` (generic `LABEL_k` names: the order as it is).
#[allow(clippy::too_many_arguments)]
fn as_shipped(
    job: &DistillationJob,
    inputs: &Inputs,
    config: EncoderConfig,
    pretrained: &HashMap<String, Tensor>,
    key: String,
    dir: PathBuf,
    device: &Device,
    reporter: &mut dyn Reporter,
) -> Result<PreparedTeacher, PrepareError> {
    let path = inputs.teacher_dir.display().to_string();
    let unfit = |message: String| PrepareError::ShippedHead { path: path.clone(), message };
    let labels = &inputs.dataset.labels;
    let weight = &pretrained["classifier.weight"];
    let rows = weight.dim(0)?;
    if rows != labels.len() || weight.dim(1)? != config.hidden_size {
        return Err(unfit(format!(
            "is {:?}; the dataset has {} classes ({}) and the encoder {} hidden units",
            weight.dims(),
            labels.len(),
            labels.join(", "),
            config.hidden_size
        )));
    }
    let order = head_order(&inputs.teacher_dir, labels).map_err(unfit)?;
    let order = Tensor::new(order.as_slice(), device)?;
    let bias = pretrained
        .get("classifier.bias")
        .ok_or_else(|| unfit("has classifier.weight but no classifier.bias".into()))?;
    let mut tensors: HashMap<String, Tensor> = runner::snapshot(&[&init::pretrained_encoder(&config, pretrained)?])?;
    tensors.insert("classifier.weight".into(), weight.index_select(&order, 0)?);
    tensors.insert("classifier.bias".into(), bias.index_select(&order, 0)?);
    if job.spec.teacher.pooling == Pooling::Pooler {
        for name in ["pooler.dense.weight", "pooler.dense.bias"] {
            let t = pretrained.get(name).ok_or_else(|| {
                unfit(format!(
                    "is read through BERT's pooler (spec.teacher.pooling: pooler) but the model has no {name}"
                ))
            })?;
            tensors.insert(name.into(), t.clone());
        }
    }
    reporter.report(&Event::Stage {
        stage: ProgressStage::CachingTeacherOutputs,
        message: format!(
            "using the classifier head the teacher ships; evaluating and caching its outputs in {}",
            dir.display()
        ),
    });
    let started = Instant::now();
    let mut prepared = PreparedTeacher {
        config,
        tensors,
        preparation: Preparation {
            key,
            head: None,
            shipped_head: true,
            trained_layers: 0,
            word_embeddings_frozen: true,
            held_out_accuracy: f64::NAN,
            train_examples: inputs.split.train.len(),
            held_out_examples: inputs.split.validation.len(),
            run: None,
        },
        train_logits: vec![],
        train_pooled: vec![],
        dir,
        reused: false,
    };
    let model = prepared.classifier(job.spec.teacher.pooling, device)?;
    let (held_out, _) = outputs(&model, &inputs.ids, &inputs.split.validation, 64, device)?;
    let held_out_labels: Vec<u32> = inputs.split.validation.iter().map(|&i| inputs.labels[i]).collect();
    prepared.preparation.held_out_accuracy = accuracy(&held_out, &held_out_labels);
    (prepared.train_logits, prepared.train_pooled) = outputs(&model, &inputs.ids, &inputs.split.train, 64, device)?;
    let partial = staging_dir(&prepared.dir, job);
    save(&prepared, &partial)?;
    reporter.report(&Event::Stage {
        stage: ProgressStage::CachingTeacherOutputs,
        message: format!("evaluated in {:.0} s", started.elapsed().as_secs_f64()),
    });
    reporter.report(&Event::Evaluated { model: "teacher".into(), accuracy: prepared.preparation.held_out_accuracy });
    Ok(prepared)
}

/// For each of `labels` (the dataset's classes, in order), the row of the shipped head that scores
/// it, from the teacher's `config.json` `id2label`.
fn head_order(teacher_dir: &Path, labels: &[String]) -> Result<Vec<u32>, String> {
    let config: serde_json::Value = std::fs::read_to_string(teacher_dir.join(CONFIG))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let Some(id2label) = config.get("id2label").and_then(|m| m.as_object()) else {
        return Ok((0..labels.len() as u32).collect());
    };
    let mut names = vec![String::new(); labels.len()];
    for (id, name) in id2label {
        let row: usize = id.parse().map_err(|_| format!("config.json id2label has a non-numeric id {id:?}"))?;
        let slot =
            names.get_mut(row).ok_or_else(|| format!("config.json id2label names row {row}, which the head lacks"))?;
        *slot = name.as_str().unwrap_or_default().to_string();
    }
    if names.iter().enumerate().all(|(k, n)| *n == format!("LABEL_{k}")) {
        return Ok((0..labels.len() as u32).collect());
    }
    labels
        .iter()
        .map(|label| {
            names.iter().position(|n| n == label).map(|r| r as u32).ok_or_else(|| {
                format!("has no row for the dataset's label {label:?}: config.json id2label names {}", names.join(", "))
            })
        })
        .collect()
}

/// Writes `tensors` to `path` through a staging file renamed into place, so that a killed run
/// never leaves a half-written cache file that a later run would trust.
fn save_staged(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<(), PrepareError> {
    let staging = path.with_extension("partial");
    candle_core::safetensors::save(tensors, &staging)?;
    std::fs::rename(&staging, path).map_err(io(path))
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
    // Renaming onto an existing non-empty directory fails, so of two runs finishing the same
    // teacher at once only one lands; the other keeps the copy in place (a run may be reading it).
    if std::fs::rename(partial, &prepared.dir).is_ok() {
        return Ok(());
    }
    if holds(&prepared.dir, &prepared.preparation.key) {
        // Another run prepared the same teacher (same key: same teacher, data, split and
        // settings) on this cache first.
        return std::fs::remove_dir_all(partial).map_err(io(partial));
    }
    // An entry of another preparation version, or a damaged one: replace it.
    if prepared.dir.exists() {
        std::fs::remove_dir_all(&prepared.dir).map_err(io(&prepared.dir))?;
    }
    std::fs::rename(partial, &prepared.dir).map_err(io(&prepared.dir))
}

/// Whether `dir` holds a complete prepared teacher made under `key` (its record is written
/// before the directory is renamed into place).
fn holds(dir: &Path, key: &str) -> bool {
    std::fs::read_to_string(dir.join(RECORD))
        .ok()
        .and_then(|text| serde_json::from_str::<Preparation>(&text).ok())
        .is_some_and(|p| p.key == key)
}

/// Where this run builds the prepared teacher before renaming it into the cache at `dir`: a
/// directory of its own per run (the DistillationJob's uid and generation; `local` for a run
/// from a file), so that two jobs preparing the same teacher on a shared cache never write into
/// each other's files, while a retried pod of the same run finds its checkpoints again.
fn staging_dir(dir: &Path, job: &DistillationJob) -> PathBuf {
    let run = match &job.metadata.uid {
        Some(uid) => {
            let uid8: String = uid.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
            format!("{uid8}-g{}", job.metadata.generation.unwrap_or(0))
        }
        None => "local".to_string(),
    };
    dir.with_extension(format!("partial-{run}"))
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
