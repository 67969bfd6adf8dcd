//! A DistillationJob run end to end — the same code locally and in the operator's pod: read and
//! split the data, prepare (or reuse) the teacher, build the student, distil it, train the same
//! student on labels alone as the baseline that shows what distillation adds, fit the
//! bag-of-words baseline, evaluate everything on the held-out split and write the artifact.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use distillery_crds::DistillationJob;
use distillery_crds::distillation::{AlignmentKind, LayerPair, QuantizationMode};
use distillery_crds::manifest::{
    ArtifactManifest, FileEntry, HeldOutAccuracies, Lineage, MANIFEST_FILE, MANIFEST_VERSION, quality_warnings,
};
use serde_json::{Value, json};

use crate::data::inputs::{self, InputError, Inputs};
use crate::evaluate::baseline::{BagOfWords, BagOfWordsSettings, majority_class_accuracy};
use crate::model::classifier::Classifier;
use crate::onnx::OnnxError;
use crate::onnx::artifact::{self as onnx_artifact, EvalSet};
use crate::progress::{Event, ProgressStage, Reporter};
use crate::store::{Location, Resolver, Store, StoreError, is_remote, sha256, sha256_file, write_atomically};
use crate::student::{self, Student, StudentError};
use crate::teacher::prepare::{self, PrepareError, PreparedTeacher};
use crate::train::align::HiddenAlignment;
use crate::train::checkpoint::CheckpointError;
use crate::train::runner::{self, Checkpointing, RunError, RunSummary};
use crate::train::{Examples, FitSettings, Objective, accuracy, logits};

/// Why a run failed, and what the operator should do about it ([`DistillError::policy`]).
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    /// A URI cannot be used, or the store failed (downloading an input, checking or publishing
    /// an `s3://` output).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data or the teacher's tokenizer could not be read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The teacher could not be prepared.
    #[error(transparent)]
    Teacher(Box<PrepareError>),
    /// The student could not be built.
    #[error(transparent)]
    Student(#[from] StudentError),
    /// The spec contradicts the teacher or the student it describes.
    #[error("spec.{0}")]
    InvalidSpec(String),
    /// A spec feature this worker does not run yet.
    #[error("{0}")]
    NotSupported(String),
    /// Training failed.
    #[error(transparent)]
    Run(Box<RunError>),
    /// A tensor operation failed.
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    /// The ONNX export or int8 quantization failed.
    #[error(transparent)]
    Onnx(Box<OnnxError>),
    /// The output already holds a complete artifact of another spec, which may be serving.
    #[error(
        "output {path} {why}: artifacts are immutable once written (a server may be serving this one), so this job will not write over it; choose a new spec.output.uri (or --output) for this spec"
    )]
    Immutable {
        /// The output directory.
        path: String,
        /// What it holds.
        why: String,
    },
    /// The artifact could not be written.
    #[error("output {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<PrepareError> for DistillError {
    fn from(e: PrepareError) -> Self {
        Self::Teacher(Box::new(e))
    }
}

impl From<OnnxError> for DistillError {
    fn from(e: OnnxError) -> Self {
        Self::Onnx(Box::new(e))
    }
}

impl From<RunError> for DistillError {
    fn from(e: RunError) -> Self {
        Self::Run(Box::new(e))
    }
}

/// What to do about a failed run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// The spec (or what it points at) must change; retrying the same spec fails again.
    WaitForSpecChange,
    /// Transient (storage, a killed process): retry; the run resumes from its checkpoint.
    Retry,
}

impl DistillError {
    /// How the operator should treat this failure.
    pub fn policy(&self) -> ErrorPolicy {
        match self {
            Self::Io { .. } => ErrorPolicy::Retry,
            // A bad URI or setting, denied access, a missing bucket or object, a damaged file:
            // the spec (or the store) must change. Anything else the store said after its own
            // retries (5xx, timeouts) and local disk trouble: retry.
            Self::Store(e) | Self::Input(InputError::Store(e)) => {
                if e.is_permanent() {
                    ErrorPolicy::WaitForSpecChange
                } else {
                    ErrorPolicy::Retry
                }
            }
            Self::Run(e) => run_policy(e),
            Self::Teacher(e) => match &**e {
                PrepareError::Io { .. } => ErrorPolicy::Retry,
                PrepareError::Run(run) => run_policy(run),
                // Reading or writing the teacher cache's tensor files (on a claim): storage.
                PrepareError::Candle(candle_core::Error::Io(_)) => ErrorPolicy::Retry,
                _ => ErrorPolicy::WaitForSpecChange,
            },
            Self::Onnx(e) if matches!(**e, OnnxError::Artifact { .. }) => ErrorPolicy::Retry,
            _ => ErrorPolicy::WaitForSpecChange,
        }
    }
}

/// A training run's failure: storage trouble with its checkpoints may pass on a retry; a
/// checkpoint of another spec, or an unreadable state file, will be found again by every retry.
fn run_policy(e: &RunError) -> ErrorPolicy {
    match e {
        RunError::Checkpoint(c) => match **c {
            CheckpointError::Io { .. } | CheckpointError::Tensors { .. } => ErrorPolicy::Retry,
            _ => ErrorPolicy::WaitForSpecChange,
        },
        RunError::Candle { .. } => ErrorPolicy::WaitForSpecChange,
    }
}

/// One row of the final table.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRow {
    /// Model name.
    pub name: String,
    /// Held-out accuracy (0–1).
    pub accuracy: f64,
    /// Parameters (0 for the bag-of-words baseline, which is not a network).
    pub parameters: u64,
    /// fp32 size in bytes.
    pub bytes: u64,
}

/// What a run produced.
pub struct Outcome {
    /// The artifact directory.
    pub output: PathBuf,
    /// The manifest written there.
    pub manifest: ArtifactManifest,
    /// Teacher, student, label-only student, bag-of-words.
    pub rows: Vec<ModelRow>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DistillError + '_ {
    move |source| DistillError::Io { path: path.display().to_string(), source }
}

/// Refuses spec features this worker does not run yet, before any work is done.
fn check_supported(job: &DistillationJob) -> Result<(), DistillError> {
    use distillery_crds::distillation::Task;
    let s = &job.spec;
    if s.task != Task::SequenceClassification {
        return Err(DistillError::NotSupported(format!(
            "spec.task: {:?} is not built yet; this worker distils sequence-classification",
            s.task
        )));
    }
    Ok(())
}

/// sha256 of the canonical JSON of `job`'s spec: the manifest's `lineage.specHash`.
pub fn spec_hash(job: &DistillationJob) -> String {
    sha256(serde_json::to_string(&job.spec).expect("specs serialize").as_bytes())
}

/// Refuses to write into `output` when it already holds a complete artifact (its manifest) made
/// from a spec other than the one hashing to `spec_hash`: artifacts are immutable once written.
/// An empty or missing directory, an interrupted run's (checkpoints, no manifest) and the same
/// spec's artifact (a rerun, which replaces it) are fine. The same spec is the manifest's
/// `lineage.specHash`, or the artifact's `job.json` hashed as this worker hashes specs (so a
/// rerun is not refused because the spec's serialized form gained a defaulted field).
pub fn check_output(output: &Path, spec_hash: &str) -> Result<(), DistillError> {
    let manifest_path = output.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&manifest_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&manifest_path)(e)),
    };
    let job = std::fs::read(output.join(onnx_artifact::JOB_FILE)).ok();
    check_existing(&output.display().to_string(), &bytes, job.as_deref(), spec_hash)
}

/// [`check_output`] for an `s3://` output: the manifest and `job.json` under `uri` read through
/// `store` (no manifest there: fine). Listing the prefix first also fails fast — before any
/// training — on a missing bucket or refused credentials.
pub async fn check_remote_output(store: &Store, uri: &str, spec_hash: &str) -> Result<(), DistillError> {
    let listed = store.list(uri).await?;
    if !listed.iter().any(|(name, _)| name == MANIFEST_FILE) {
        return Ok(());
    }
    let base = uri.trim_end_matches('/');
    let manifest = store.get(&format!("{base}/{MANIFEST_FILE}")).await?;
    // A missing job.json is an artifact without one; any other failure to read it is an error,
    // not a reason to judge the artifact another spec's.
    let job = match store.get(&format!("{base}/{}", onnx_artifact::JOB_FILE)).await {
        Ok(bytes) => Some(bytes),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    check_existing(uri, &manifest, job.as_deref(), spec_hash)
}

/// Publishes the complete artifact in `dir` to the `s3://` location `uri` (every file first, the
/// manifest last), after checking again that no other spec's artifact appeared there
/// meanwhile. Returns the manifest's sha256.
pub fn publish(resolver: &Resolver, dir: &Path, uri: &str, spec_hash: &str) -> Result<String, DistillError> {
    crate::store::block_on(async {
        check_remote_output(resolver.store(), uri, spec_hash).await?;
        Ok(resolver.store().publish_artifact(dir, uri).await?)
    })
}

/// Whether an existing artifact at `location` (its manifest's bytes, and its `job.json`'s when
/// there is one) may be written over by a run of the spec hashing to `spec_hash`.
fn check_existing(location: &str, manifest: &[u8], job: Option<&[u8]>, spec_hash: &str) -> Result<(), DistillError> {
    let path = location.to_string();
    let manifest: ArtifactManifest = serde_json::from_slice(manifest).map_err(|e| DistillError::Immutable {
        path: path.clone(),
        why: format!("holds a {MANIFEST_FILE} this worker cannot read ({e}), so it cannot tell which spec made it"),
    })?;
    let existing = &manifest.lineage.spec_hash;
    if existing == spec_hash {
        return Ok(());
    }
    let recorded = job.and_then(|b| serde_json::from_slice::<DistillationJob>(b).ok()).map(|job| self::spec_hash(&job));
    if recorded.as_deref() == Some(spec_hash) {
        return Ok(());
    }
    Err(DistillError::Immutable {
        path,
        why: format!(
            "already holds a complete artifact made from another spec (its lineage.specHash is {existing}, this job's is {spec_hash})"
        ),
    })
}

/// Runs `job`, writing the artifact into the local directory `output`; its inputs are read
/// through `resolver` (an `s3://` one downloaded into its work directory first).
pub fn run(
    job: &DistillationJob,
    output: &Path,
    cache_root: &Path,
    device: &Device,
    reporter: &mut dyn Reporter,
    resolver: &Resolver,
) -> Result<Outcome, DistillError> {
    check_supported(job)?;
    // Checked before the hours of work, and again before writing (another run may have finished
    // there meanwhile).
    let spec_hash = spec_hash(job);
    check_output(output, &spec_hash)?;
    let stage = |reporter: &mut dyn Reporter, stage: ProgressStage, message: String| {
        reporter.report(&Event::Stage { stage, message });
    };
    let inputs = inputs::load_with(job, resolver)?;
    stage(
        reporter,
        ProgressStage::ReadingData,
        format!(
            "{}: {} examples ({} skipped by label, {} duplicates), {} train / {} held out{}",
            inputs.dataset.path.display(),
            inputs.dataset.examples.len(),
            inputs.dataset.skipped,
            inputs.dataset.duplicates,
            inputs.split.train.len(),
            inputs.split.validation.len(),
            if job.spec.dataset.validation_split.by_group { " (split by group)" } else { "" }
        ),
    );
    if let Some(t) = &inputs.transfer {
        stage(
            reporter,
            ProgressStage::ReadingData,
            format!("{}: {} unlabelled transfer texts", t.path.display(), t.texts.len()),
        );
    }
    if let Some(f) = job.spec.loss.feature_alignment.as_ref().filter(|f| f.kind == AlignmentKind::HiddenMse) {
        // Checked before the teacher is prepared, which can take many minutes.
        let teacher_layers = prepare::teacher_config(&inputs.teacher_dir)?.num_hidden_layers;
        let student = &job.spec.student;
        let student_layers = match (&student.init_from_teacher, &student.architecture) {
            (Some(from), _) => Some(from.layers.len()),
            (None, Some(arch)) => Some(arch.layers as usize),
            (None, None) => None,
        };
        check_layer_map(&f.layer_map, student_layers, teacher_layers)?;
    }
    let held_out_labels: Vec<u32> = inputs.split.validation.iter().map(|&i| inputs.labels[i]).collect();
    let train_labels: Vec<u32> = inputs.split.train.iter().map(|&i| inputs.labels[i]).collect();
    let majority_accuracy = majority_class_accuracy(&train_labels, &held_out_labels);
    let classes = inputs.dataset.labels.len();

    let bow_accuracy = bag_of_words(&inputs);
    reporter.report(&Event::Evaluated { model: "bag-of-words".into(), accuracy: bow_accuracy });

    let teacher = prepare::prepare(job, &inputs, cache_root, device, reporter)?;
    let tokenizer_path = inputs.teacher_dir.join("tokenizer.json");
    let teacher_tokenizer: Value = std::fs::read_to_string(&tokenizer_path)
        .map_err(io(&tokenizer_path))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| io(&tokenizer_path)(std::io::Error::other(e))))?;

    let run_key = |name: &str| sha256(format!("{spec_hash}/{}/{name}", teacher.preparation.key).as_bytes());
    let mut teacher_logits = vec![vec![]; inputs.ids.len()];
    let mut teacher_pooled = vec![vec![]; inputs.ids.len()];
    for (k, &i) in inputs.split.train.iter().enumerate() {
        teacher_logits[i] = teacher.train_logits[k].clone();
        teacher_pooled[i] = teacher.train_pooled[k].clone();
    }
    let (transfer_logits, transfer_pooled) = prepare::transfer_outputs(&teacher, job, &inputs, device, reporter)?;
    for ((&i, logits), pooled) in inputs.transfer_indices().iter().zip(transfer_logits).zip(transfer_pooled) {
        teacher_logits[i] = logits;
        teacher_pooled[i] = pooled;
    }
    let distillation_indices = inputs.distillation_indices();
    let t = &job.spec.training;
    let settings = FitSettings {
        epochs: u64::from(t.epochs.unwrap_or(3)),
        max_steps: t.max_steps,
        batch_size: t.batch_size as usize,
        learning_rate: t.learning_rate,
        warmup_fraction: t.warmup_fraction,
        decay: t.schedule,
        clip_norm: t.gradient_clip_norm,
        weight_decay: t.weight_decay,
        seed: t.seed,
        frozen_layers: 0,
    };
    let alignment = job.spec.loss.feature_alignment.as_ref();
    let pooled =
        alignment.filter(|f| f.kind == AlignmentKind::PooledCosine).map(|f| (teacher_pooled.as_slice(), f.weight));
    let layer_map = alignment.filter(|f| f.kind == AlignmentKind::HiddenMse).map(|f| &f.layer_map);
    let hidden_targets = match layer_map {
        Some(map) => {
            let layers: Vec<usize> = map.iter().map(|p| p.teacher as usize).collect();
            Some(prepare::hidden_targets(&teacher, job, &inputs, &layers, device, reporter)?)
        }
        None => None,
    };
    let checkpoints = output.join("checkpoints");
    // The label-only baseline takes as many steps as the distillation run, on the labelled texts
    // alone (it cannot use unlabelled transfer texts).
    let label_only_settings =
        FitSettings { max_steps: Some(settings.total_steps(distillation_indices.len())), ..settings.clone() };
    let mut runs: Vec<(&str, &[usize], &FitSettings)> = vec![("student", &distillation_indices, &settings)];
    if job.spec.loss.alpha < 1.0 {
        runs.push(("label-only", &inputs.split.train, &label_only_settings));
    }
    let mut trained: Vec<(String, Student, RunSummary, f64)> = vec![];
    for (name, indices, settings) in runs {
        let student = student::build(job, &teacher, &teacher_tokenizer, &inputs, device)?;
        // Variables that train with the student but are not part of it (alignment projections).
        let auxiliary = VarMap::new();
        let mut hidden = None;
        if name == "student" {
            check_alignment_width(job, &student, &teacher)?;
            if let (Some(map), Some(targets)) = (layer_map, &hidden_targets) {
                let student_layers = map.iter().map(|p| p.student as usize).collect();
                let weight = alignment.map_or(0.0, |f| f.weight);
                hidden = Some(HiddenAlignment::new(
                    targets,
                    student_layers,
                    student.config.hidden_size,
                    weight,
                    &auxiliary,
                    device,
                )?);
            }
            stage(reporter, ProgressStage::Training, describe(&student, teacher.parameters()));
        } else {
            stage(
                reporter,
                ProgressStage::TrainingLabelOnly,
                "the same student on labels alone (alpha 1), same steps and data".into(),
            );
        }
        let objective = if name == "student" {
            Objective::Distill {
                teacher_logits: &teacher_logits,
                pooled,
                hidden: hidden.as_ref(),
                alpha: job.spec.loss.alpha,
                temperature: &job.spec.loss.temperature,
            }
        } else {
            Objective::Labels
        };
        let model = classifier(&student, classes, job, device)?;
        let checkpointing = Checkpointing {
            dir: checkpoints.join(name),
            interval: u64::from(t.checkpoint_interval),
            run_key: run_key(name),
        };
        let examples = Examples { ids: &student.ids, labels: &inputs.labels, indices };
        let summary = runner::train(
            name,
            &model,
            &[&student.encoder, &student.head, &auxiliary],
            |_| true,
            examples,
            &objective,
            settings,
            Some(&checkpointing),
            device,
            reporter,
        )?;
        stage(reporter, ProgressStage::Evaluating, format!("{name} on {} held-out examples", held_out_labels.len()));
        let acc = accuracy(&logits(&model, &student.ids, &inputs.split.validation, 64, device)?, &held_out_labels);
        reporter.report(&Event::Evaluated { model: name.into(), accuracy: acc });
        trained.push((name.to_string(), student, summary, acc));
    }
    let label_only_accuracy = trained.get(1).map_or(trained[0].3, |r| r.3);

    let (_, student, _, student_accuracy) = &trained[0];
    stage(reporter, ProgressStage::WritingArtifact, format!("writing {}", output.display()));
    check_output(output, &spec_hash)?;
    std::fs::create_dir_all(output).map_err(io(output))?;
    let files = write_model_files(output, student, &inputs, job)?;
    let teacher_params = teacher.parameters();
    let student_params = student.parameters();
    let mut metrics = BTreeMap::new();
    for (k, v) in [
        ("teacherAccuracy", teacher.preparation.held_out_accuracy),
        ("studentAccuracy", *student_accuracy),
        ("labelOnlyAccuracy", label_only_accuracy),
        ("bagOfWordsAccuracy", bow_accuracy),
        ("majorityClassAccuracy", majority_accuracy),
        ("retention", student_accuracy / teacher.preparation.held_out_accuracy),
        ("distillationGain", student_accuracy - label_only_accuracy),
        ("teacherParameters", teacher_params as f64),
        ("studentParameters", student_params as f64),
        ("parameterFraction", student_params as f64 / teacher_params as f64),
        ("compressionRatio", teacher_params as f64 / student_params as f64),
        ("studentVocabulary", student.config.vocab_size as f64),
        ("trainExamples", inputs.split.train.len() as f64),
        ("transferExamples", inputs.transfer_indices().len() as f64),
        ("heldOutExamples", inputs.split.validation.len() as f64),
    ] {
        metrics.insert(k.to_string(), v);
    }
    let mut training = BTreeMap::new();
    if let Some(run) = &teacher.preparation.run {
        training.insert("teacher".to_string(), serde_json::to_value(run).expect("json"));
    }
    for (name, _, summary, _) in &trained {
        training.insert(name.clone(), serde_json::to_value(summary).expect("json"));
    }
    let lineage = Lineage {
        teacher_uri: job.spec.teacher.uri.clone(),
        teacher_digest: sha256_file(&inputs.teacher_dir.join("model.safetensors"))
            .map_err(io(&inputs.teacher_dir.join("model.safetensors")))?,
        teacher_preparation: Some(json!({
            "cacheKey": teacher.preparation.key,
            "head": teacher.preparation.head,
            "shippedHead": teacher.preparation.shipped_head,
            "trainedLayers": teacher.preparation.trained_layers,
            "wordEmbeddingsFrozen": teacher.preparation.word_embeddings_frozen,
            "heldOutAccuracy": teacher.preparation.held_out_accuracy,
            "reusedFromCache": teacher.reused,
        })),
        dataset_uri: job.spec.dataset.uri.clone(),
        dataset_digest: sha256_file(&inputs.dataset.path).map_err(io(&inputs.dataset.path))?,
        spec_hash,
    };
    let manifest = ArtifactManifest {
        manifest_version: MANIFEST_VERSION,
        created: jiff::Timestamp::now().to_string(),
        worker_version: env!("CARGO_PKG_VERSION").to_string(),
        lineage,
        metrics,
        training,
        files,
        variants: BTreeMap::new(),
        served_variant: None,
        served_variant_reason: None,
        warnings: quality_warnings(&HeldOutAccuracies {
            teacher: teacher.preparation.held_out_accuracy,
            bag_of_words: bow_accuracy,
            majority_class: majority_accuracy,
            distilled: *student_accuracy,
            label_only: (trained.len() > 1).then_some(label_only_accuracy),
        }),
    };
    let manifest_path = output.join(MANIFEST_FILE);
    write_atomically(&manifest_path, &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"))
        .map_err(io(&manifest_path))?;
    if checkpoints.exists() {
        std::fs::remove_dir_all(&checkpoints).map_err(io(&checkpoints))?;
    }

    // The ONNX models, evaluated on the same held-out examples in ONNX Runtime.
    let eval = EvalSet {
        ids: inputs.split.validation.iter().map(|&i| student.ids[i].clone()).collect(),
        labels: held_out_labels.clone(),
    };
    stage(
        reporter,
        ProgressStage::Exporting,
        "building model.onnx and checking it against candle in ONNX Runtime".into(),
    );
    onnx_artifact::export_artifact(output, &eval, reporter)?;
    let q = &job.spec.quantization;
    if q.mode == QuantizationMode::Int8Dynamic {
        stage(
            reporter,
            ProgressStage::Quantizing,
            format!("int8, accuracy budget {:.2} points", q.accuracy_budget * 100.0),
        );
        onnx_artifact::quantize_artifact(output, &eval, q, reporter)?;
    } else {
        onnx_artifact::serve_fp32_unquantized(output)?;
    }
    let manifest: ArtifactManifest = std::fs::read(&manifest_path)
        .map_err(io(&manifest_path))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| io(&manifest_path)(std::io::Error::other(e))))?;

    let size = |p: u64| p * 4;
    let rows = vec![
        ModelRow {
            name: format!("teacher ({} layers, {})", teacher.config.num_hidden_layers, how_made(&teacher)),
            accuracy: teacher.preparation.held_out_accuracy,
            parameters: teacher_params,
            bytes: size(teacher_params),
        },
        ModelRow {
            name: format!("student ({} layers, distilled)", student.config.num_hidden_layers),
            accuracy: *student_accuracy,
            parameters: student_params,
            bytes: manifest.files["model.safetensors"].size_bytes,
        },
        ModelRow {
            name: "student on labels only".into(),
            accuracy: label_only_accuracy,
            parameters: student_params,
            bytes: size(student_params),
        },
        ModelRow { name: "bag-of-words (TF-IDF + LR)".into(), accuracy: bow_accuracy, parameters: 0, bytes: 0 },
    ];
    let mut rows = rows;
    let served = manifest.served_variant.as_deref().unwrap_or("fp32");
    for variant in ["fp32", "int8"] {
        if let Some(v) = manifest.variants.get(variant) {
            let mark = if served == variant {
                " (served)"
            } else if v.file.is_none() {
                " (not shipped)"
            } else {
                ""
            };
            let name = format!("student, ONNX {variant}{mark}");
            rows.push(ModelRow { name, accuracy: v.accuracy, parameters: student_params, bytes: v.size_bytes });
        }
    }
    Ok(Outcome { output: output.to_path_buf(), manifest, rows })
}

/// How the teacher got its head, for the table.
fn how_made(teacher: &PreparedTeacher) -> &'static str {
    use distillery_crds::distillation::HeadMode;
    match &teacher.preparation.head {
        None => "head as shipped",
        Some(h) if h.mode == HeadMode::LinearProbe => "linear probe",
        Some(_) => "fine-tuned",
    }
}

fn check_alignment_width(
    job: &DistillationJob,
    student: &Student,
    teacher: &PreparedTeacher,
) -> Result<(), DistillError> {
    let pooled = job.spec.loss.feature_alignment.as_ref().is_some_and(|f| f.kind == AlignmentKind::PooledCosine);
    if pooled && student.config.hidden_size != teacher.config.hidden_size {
        return Err(DistillError::NotSupported(format!(
            "spec.loss.featureAlignment: pooled-cosine needs the student's hidden size ({}) to equal the teacher's ({}); \
             use kind hidden-mse, which learns a projection between the widths",
            student.config.hidden_size, teacher.config.hidden_size
        )));
    }
    Ok(())
}

/// Refuses a `layerMap` naming a layer the teacher (or, once built, the student) does not have.
fn check_layer_map(
    map: &[LayerPair],
    student_layers: Option<usize>,
    teacher_layers: usize,
) -> Result<(), DistillError> {
    for (k, pair) in map.iter().enumerate() {
        if pair.teacher as usize >= teacher_layers {
            return Err(DistillError::InvalidSpec(format!(
                "loss.featureAlignment.layerMap[{k}].teacher: layer {} does not exist; the teacher has {teacher_layers} layers (0–{})",
                pair.teacher,
                teacher_layers - 1
            )));
        }
        if let Some(n) = student_layers
            && pair.student as usize >= n
        {
            return Err(DistillError::InvalidSpec(format!(
                "loss.featureAlignment.layerMap[{k}].student: layer {} does not exist; the student has {n} layers (0–{})",
                pair.student,
                n - 1
            )));
        }
    }
    Ok(())
}

fn describe(student: &Student, teacher_params: u64) -> String {
    let c = &student.config;
    let params = student.parameters();
    format!(
        "{} layers, hidden {}, vocabulary {}{}{} — {:.2}M parameters ({:.1}% of the teacher's)",
        c.num_hidden_layers,
        c.hidden_size,
        c.vocab_size,
        if student.pruning.is_some() { " (pruned to the training data's tokens)" } else { "" },
        c.embedding_size.map(|e| format!(", embeddings factorized through {e}")).unwrap_or_default(),
        params as f64 / 1e6,
        params as f64 / teacher_params as f64 * 100.0
    )
}

fn classifier(
    student: &Student,
    classes: usize,
    job: &DistillationJob,
    device: &Device,
) -> candle_core::Result<Classifier> {
    let vb = |m: &VarMap| VarBuilder::from_varmap(m, DType::F32, device);
    Classifier::new(&student.config, classes, job.spec.teacher.pooling, vb(&student.encoder), vb(&student.head))
}

fn bag_of_words(inputs: &Inputs) -> f64 {
    let pick = |idx: &[usize]| -> (Vec<&str>, Vec<usize>) {
        idx.iter().map(|&i| (inputs.dataset.examples[i].text.as_str(), inputs.dataset.examples[i].label)).unzip()
    };
    let (train_texts, train_labels) = pick(&inputs.split.train);
    let (test_texts, test_labels) = pick(&inputs.split.validation);
    let model =
        BagOfWords::fit(&train_texts, &train_labels, inputs.dataset.labels.len(), BagOfWordsSettings::default());
    model.accuracy(&test_texts, &test_labels)
}

/// Writes `model.safetensors`, `config.json` and `tokenizer.json`; returns their entries.
fn write_model_files(
    output: &Path,
    student: &Student,
    inputs: &Inputs,
    job: &DistillationJob,
) -> Result<BTreeMap<String, FileEntry>, DistillError> {
    let tensors: HashMap<String, candle_core::Tensor> = runner::snapshot(&[&student.encoder, &student.head])?;
    let weights = output.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights)?;
    let labels = &inputs.dataset.labels;
    let mut config = serde_json::to_value(&student.config).expect("config serializes");
    config["architectures"] = json!(["BertForSequenceClassification"]);
    config["num_labels"] = json!(labels.len());
    config["id2label"] =
        json!(labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone())).collect::<BTreeMap<_, _>>());
    config["label2id"] = json!(labels.iter().enumerate().map(|(i, l)| (l.clone(), i)).collect::<BTreeMap<_, _>>());
    config["distillery"] = json!({
        "pooling": job.spec.teacher.pooling,
        "maxSequenceLength": job.spec.dataset.max_sequence_length,
    });
    let write = |name: &str, bytes: Vec<u8>| -> Result<(), DistillError> {
        let path = output.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))
    };
    write("config.json", serde_json::to_vec_pretty(&config).expect("json"))?;
    write("tokenizer.json", serde_json::to_vec(&student.tokenizer_json).expect("json"))?;
    // The job itself: `distillery-worker export` / `quantize` re-read its held-out split.
    write(onnx_artifact::JOB_FILE, serde_json::to_vec_pretty(job).expect("json"))?;
    let mut files = BTreeMap::new();
    for name in ["model.safetensors", "config.json", "tokenizer.json", onnx_artifact::JOB_FILE] {
        let path = output.join(name);
        let size_bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
        files.insert(name.to_string(), FileEntry { size_bytes, sha256: sha256_file(&path).map_err(io(&path))? });
    }
    Ok(files)
}

/// The final table: accuracy, parameters and size of each model.
pub fn table(rows: &[ModelRow]) -> String {
    let mut out = format!("{:<34} {:>9} {:>11} {:>9}\n", "model", "accuracy", "parameters", "size");
    for r in rows {
        let (params, size) = if r.parameters == 0 {
            ("-".to_string(), "-".to_string())
        } else {
            (format!("{:.2}M", r.parameters as f64 / 1e6), format!("{:.1} MB", r.bytes as f64 / 1e6))
        };
        out += &format!("{:<34} {:>8.2}% {params:>11} {size:>9}\n", r.name, r.accuracy * 100.0);
    }
    out
}

/// Where `job`'s artifact goes, as a local directory and the URI the summary reports: `--output`
/// when given — a directory, or a URI (the operator passes `<spec.output.uri>/<run id>`) — else
/// the spec's `output.uri`. An `s3://` URI is written locally first, in `runs/<bucket>/<key>` of
/// `resolver`'s work directory, and published from there ([`publish`]).
pub fn output_location(
    job: &DistillationJob,
    output: Option<&str>,
    resolver: &Resolver,
) -> Result<(PathBuf, String), StoreError> {
    let local = |uri: &str| -> Result<PathBuf, StoreError> {
        if is_remote(uri) {
            return resolver.staging("runs", uri);
        }
        match Location::parse(uri)? {
            Location::File(path) => Ok(path),
            Location::S3 { .. } => unreachable!("is_remote"),
        }
    };
    match output {
        Some(uri) if uri.contains("://") => Ok((local(uri)?, uri.to_string())),
        Some(dir) => Ok((PathBuf::from(dir), format!("file://{dir}"))),
        None => Ok((local(&job.spec.output.uri)?, job.spec.output.uri.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_are_retried_and_what_a_retry_finds_again_is_permanent() {
        let io = || std::io::Error::other("disk full");
        let checkpoint = |c: CheckpointError| DistillError::Run(Box::new(RunError::from(c)));
        let retried = [
            DistillError::Io { path: "/artifacts/x".into(), source: io() },
            checkpoint(CheckpointError::Io { path: "c".into(), source: io() }),
            DistillError::Teacher(Box::new(PrepareError::Run(RunError::from(CheckpointError::Io {
                path: "/artifacts/.distillery-cache/teachers/k.partial-x/checkpoint".into(),
                source: io(),
            })))),
            DistillError::Teacher(Box::new(PrepareError::Candle(candle_core::Error::Io(io())))),
        ];
        for e in &retried {
            assert_eq!(e.policy(), ErrorPolicy::Retry, "{e}");
        }
        let permanent = [
            checkpoint(CheckpointError::State { path: "c".into(), message: "unreadable".into() }),
            DistillError::InvalidSpec("student.initFromTeacher.layers".into()),
            DistillError::NotSupported("task causal-lm".into()),
        ];
        for e in &permanent {
            assert_eq!(e.policy(), ErrorPolicy::WaitForSpecChange, "{e}");
        }
    }

    fn small_job() -> DistillationJob {
        crate::spec::parse(include_str!("../../tests/fixtures/small.yaml"), Path::new("small.yaml")).unwrap()
    }

    /// A complete artifact in `dir` made from `job`, its manifest recording `spec_hash`.
    fn write_artifact(dir: &Path, job: &DistillationJob, spec_hash: &str) {
        let mut manifest = ArtifactManifest::default();
        manifest.lineage.spec_hash = spec_hash.into();
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&manifest).unwrap()).unwrap();
        std::fs::write(dir.join(onnx_artifact::JOB_FILE), serde_json::to_vec(job).unwrap()).unwrap();
    }

    #[test]
    fn an_artifact_of_another_spec_is_never_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let job = small_job();
        let mut other = job.clone();
        other.spec.training.seed += 1;
        let (ours, theirs) = (spec_hash(&job), spec_hash(&other));
        assert_ne!(ours, theirs);
        // Nothing there yet, or only an interrupted run's checkpoints: fine.
        assert!(check_output(&dir.path().join("new"), &ours).is_ok());
        std::fs::create_dir_all(dir.path().join("checkpoints/student")).unwrap();
        assert!(check_output(dir.path(), &ours).is_ok());
        // The same spec's artifact: a rerun replaces it.
        write_artifact(dir.path(), &job, &ours);
        assert!(check_output(dir.path(), &ours).is_ok());
        // Another spec's: refused, saying why and what to do.
        let err = check_output(dir.path(), &theirs).unwrap_err();
        assert_eq!(err.policy(), ErrorPolicy::WaitForSpecChange);
        let message = err.to_string();
        for part in ["another spec", &ours, &theirs, "artifacts are immutable", "choose a new spec.output.uri"] {
            assert!(message.contains(part), "{part}: {message}");
        }
    }

    #[test]
    fn the_same_spec_hashed_by_an_older_worker_is_recognised_by_its_job_file() {
        let dir = tempfile::tempdir().unwrap();
        let job = small_job();
        write_artifact(dir.path(), &job, "a-hash-of-another-serialization");
        assert!(check_output(dir.path(), &spec_hash(&job)).is_ok());
        let mut other = job.clone();
        other.spec.training.seed += 1;
        assert!(matches!(check_output(dir.path(), &spec_hash(&other)), Err(DistillError::Immutable { .. })));
    }

    #[test]
    fn an_unreadable_manifest_is_not_written_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), b"{not json").unwrap();
        let message = check_output(dir.path(), &spec_hash(&small_job())).unwrap_err().to_string();
        assert!(message.contains("cannot tell which spec made it"), "{message}");
    }

    #[test]
    fn the_output_is_the_flag_a_uri_in_it_or_the_spec_and_s3_is_staged_in_the_work_directory() {
        let job = small_job();
        let r = Resolver::new(Default::default(), PathBuf::from("/work"));
        let (dir, uri) = output_location(&job, Some("file:///artifacts/small/g2-0a1b2c3d"), &r).unwrap();
        assert_eq!(
            (dir, uri.as_str()),
            (PathBuf::from("/artifacts/small/g2-0a1b2c3d"), "file:///artifacts/small/g2-0a1b2c3d")
        );
        let (dir, uri) = output_location(&job, Some("/tmp/out"), &r).unwrap();
        assert_eq!((dir, uri.as_str()), (PathBuf::from("/tmp/out"), "file:///tmp/out"));
        let (dir, uri) = output_location(&job, None, &r).unwrap();
        assert_eq!(uri, job.spec.output.uri);
        assert_eq!(Some(dir.as_path()), job.spec.output.uri.strip_prefix("file://").map(Path::new));
        let (dir, uri) = output_location(&job, Some("s3://bucket/x/g1-0a1b2c3d"), &r).unwrap();
        assert_eq!(
            (dir, uri.as_str()),
            (PathBuf::from("/work/runs/bucket/x/g1-0a1b2c3d"), "s3://bucket/x/g1-0a1b2c3d")
        );
        let e = output_location(&job, Some("file://relative/x"), &r).unwrap_err();
        assert!(e.is_permanent(), "{e}");
    }

    #[test]
    fn a_store_error_is_retried_only_when_a_retry_can_help() {
        let transient = StoreError::Store { uri: "s3://b/k".into(), message: "503 SlowDown".into() };
        let denied = StoreError::Denied { uri: "s3://b/k".into(), message: "403".into() };
        let missing = StoreError::NotFound { uri: "s3://b/k".into(), message: "NoSuchBucket".into() };
        assert_eq!(DistillError::Store(transient).policy(), ErrorPolicy::Retry);
        assert_eq!(DistillError::Store(denied).policy(), ErrorPolicy::WaitForSpecChange);
        assert_eq!(DistillError::Input(InputError::Store(missing)).policy(), ErrorPolicy::WaitForSpecChange);
        let slow = StoreError::Store { uri: "s3://b/d.csv".into(), message: "timeout".into() };
        assert_eq!(DistillError::Input(InputError::Store(slow)).policy(), ErrorPolicy::Retry);
    }
}
