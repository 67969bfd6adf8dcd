//! A DistillationJob run end to end — the same code locally and in the operator's pod — as a
//! sequence of stages with named inputs and outputs:
//!
//! ```text
//! data → teacher preparation → teacher outputs → students (built and trained) → evaluation
//!      → artifact → ONNX export and int8 quantization → summary table
//! ```
//!
//! [`run`] owns what every task shares: the output checks (artifacts are immutable, [`output`]),
//! the stage events, writing the manifest, removing checkpoints and re-reading the manifest the
//! export completed. What a stage does for a task (sequence classification, causal LM) is that
//! task's [`TaskPipeline`] implementation ([`classification`], [`causal_lm`]); its associated types are the
//! stages' outputs, so one stage hands the next a named value, never a tuple.

pub mod causal_lm;
pub mod classification;
pub mod error;
pub mod output;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use distillery_crds::DistillationJob;
use distillery_crds::distillation::Task;
use distillery_crds::manifest::{
    ArtifactManifest, FileEntry, Lineage, MANIFEST_FILE, MANIFEST_VERSION, QualityWarning,
};

pub use error::{DistillError, ErrorPolicy};
pub use output::{check_output, check_remote_output, output_location, publish, spec_hash};

use crate::progress::{Event, ProgressStage, Reporter};
use crate::store::{Resolver, sha256_file, write_atomically};
use crate::teacher::shards::ShardedOutputs;

/// What every stage of a run can read.
pub struct RunContext<'a> {
    /// The job.
    pub job: &'a DistillationJob,
    /// The local artifact directory being written.
    pub output: &'a Path,
    /// Where prepared teachers and their outputs are cached across runs.
    pub cache_root: &'a Path,
    /// Where tensors live.
    pub device: &'a Device,
    /// How the spec's URIs are read (`s3://` ones downloaded into its work directory).
    pub resolver: &'a Resolver,
    /// The manifest's `lineage.specHash` ([`spec_hash`]).
    pub spec_hash: String,
    /// Teacher outputs computed in shards by other pods, joined instead of running the teacher
    /// (`distill --teacher-outputs`; causal-lm only).
    pub teacher_shards: Option<ShardedOutputs>,
}

impl RunContext<'_> {
    /// Where training runs keep their checkpoints (removed once the artifact is written).
    pub fn checkpoints(&self) -> PathBuf {
        self.output.join("checkpoints")
    }
}

/// Reports that a run entered `stage`.
pub fn stage(reporter: &mut dyn Reporter, stage: ProgressStage, message: impl Into<String>) {
    reporter.report(&Event::Stage { stage, message: message.into() });
}

/// The stages of a run, as one task carries them out. [`run`] calls them in this order.
pub trait TaskPipeline {
    /// The data stage's output: examples read, split and tokenized, and what was fitted on them
    /// alone (baselines).
    type Data;
    /// A teacher ready to distil from.
    type Teacher;
    /// What the students learn from: the teacher's outputs on the training examples.
    type TeacherOutputs;
    /// The trained students (the distilled one, and the ones it is compared with).
    type Students;
    /// The held-out figures of the students.
    type Evaluation;

    /// Reads, splits and tokenizes the data; refuses what the spec gets wrong about it.
    fn read_data(&self, run: &RunContext, reporter: &mut dyn Reporter) -> Result<Self::Data, DistillError>;
    /// Prepares (or reuses from the cache) the teacher.
    fn prepare_teacher(
        &self,
        run: &RunContext,
        data: &Self::Data,
        reporter: &mut dyn Reporter,
    ) -> Result<Self::Teacher, DistillError>;
    /// Computes (or reuses from the cache) the teacher's outputs the students train on.
    fn teacher_outputs(
        &self,
        run: &RunContext,
        data: &Self::Data,
        teacher: &Self::Teacher,
        reporter: &mut dyn Reporter,
    ) -> Result<Self::TeacherOutputs, DistillError>;
    /// Builds and trains the students, checkpointing into [`RunContext::checkpoints`].
    fn train(
        &self,
        run: &RunContext,
        data: &Self::Data,
        teacher: &Self::Teacher,
        outputs: &Self::TeacherOutputs,
        reporter: &mut dyn Reporter,
    ) -> Result<Self::Students, DistillError>;
    /// Evaluates the students on the held-out split (against the teacher's outputs there, where
    /// the task measures that).
    fn evaluate(
        &self,
        run: &RunContext,
        data: &Self::Data,
        outputs: &Self::TeacherOutputs,
        students: &Self::Students,
        reporter: &mut dyn Reporter,
    ) -> Result<Self::Evaluation, DistillError>;
    /// Writes the model files into [`RunContext::output`] and returns the manifest to write
    /// beside them (without ONNX variants yet).
    fn write_artifact(
        &self,
        run: &RunContext,
        data: &Self::Data,
        teacher: &Self::Teacher,
        students: &Self::Students,
        evaluation: &Self::Evaluation,
    ) -> Result<ArtifactManifest, DistillError>;
    /// Exports the written student to ONNX, checks it against candle, quantizes it and records
    /// the variants in the manifest on disk.
    fn export(
        &self,
        run: &RunContext,
        data: &Self::Data,
        students: &Self::Students,
        reporter: &mut dyn Reporter,
    ) -> Result<(), DistillError>;
    /// The table a run ends with.
    fn table(
        &self,
        data: &Self::Data,
        teacher: &Self::Teacher,
        students: &Self::Students,
        evaluation: &Self::Evaluation,
        manifest: &ArtifactManifest,
    ) -> String;
}

/// What a run produced.
pub struct Outcome {
    /// The artifact directory.
    pub output: PathBuf,
    /// The manifest written there.
    pub manifest: ArtifactManifest,
    /// The table the run ends with (teacher, students, baselines, ONNX variants).
    pub table: String,
}

/// Runs `job`, writing the artifact into the local directory `output`; its inputs are read
/// through `resolver` (an `s3://` one downloaded into its work directory first). With
/// `teacher_shards`, the teacher's outputs are joined from there rather than computed.
pub fn run(
    job: &DistillationJob,
    output: &Path,
    cache_root: &Path,
    device: &Device,
    reporter: &mut dyn Reporter,
    resolver: &Resolver,
    teacher_shards: Option<ShardedOutputs>,
) -> Result<Outcome, DistillError> {
    if teacher_shards.is_some() && job.spec.task != Task::CausalLm {
        return Err(DistillError::NotSupported(format!(
            "--teacher-outputs: spec.task is {:?}; teacher outputs computed in shards are built for causal-lm jobs only (this job computes its own)",
            job.spec.task
        )));
    }
    let run = RunContext { job, output, cache_root, device, resolver, spec_hash: spec_hash(job), teacher_shards };
    match job.spec.task {
        Task::SequenceClassification => run_stages(&classification::Classification, &run, reporter),
        Task::CausalLm => run_stages(&causal_lm::CausalLm, &run, reporter),
        other => Err(DistillError::NotSupported(format!(
            "spec.task: {other:?} is not built yet; this worker distils sequence-classification and causal-lm"
        ))),
    }
}

fn run_stages<T: TaskPipeline>(
    task: &T,
    run: &RunContext,
    reporter: &mut dyn Reporter,
) -> Result<Outcome, DistillError> {
    // Checked before the hours of work, and again before writing (another run may have finished
    // there meanwhile).
    check_output(run.output, &run.spec_hash)?;
    let data = task.read_data(run, reporter)?;
    let teacher = task.prepare_teacher(run, &data, reporter)?;
    let outputs = task.teacher_outputs(run, &data, &teacher, reporter)?;
    let students = task.train(run, &data, &teacher, &outputs, reporter)?;
    let evaluation = task.evaluate(run, &data, &outputs, &students, reporter)?;

    stage(reporter, ProgressStage::WritingArtifact, format!("writing {}", run.output.display()));
    check_output(run.output, &run.spec_hash)?;
    std::fs::create_dir_all(run.output).map_err(io(run.output))?;
    let manifest = task.write_artifact(run, &data, &teacher, &students, &evaluation)?;
    let manifest_path = run.output.join(MANIFEST_FILE);
    write_atomically(&manifest_path, &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"))
        .map_err(io(&manifest_path))?;
    let checkpoints = run.checkpoints();
    if checkpoints.exists() {
        std::fs::remove_dir_all(&checkpoints).map_err(io(&checkpoints))?;
    }

    task.export(run, &data, &students, reporter)?;
    // The export recorded the ONNX variants (and which one is served) in the manifest on disk.
    let manifest: ArtifactManifest = std::fs::read(&manifest_path)
        .map_err(io(&manifest_path))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| io(&manifest_path)(std::io::Error::other(e))))?;
    let table = task.table(&data, &teacher, &students, &evaluation, &manifest);
    Ok(Outcome { output: run.output.to_path_buf(), manifest, table })
}

/// The manifest entries (size, sha256) of the files `names` in `dir`.
pub(crate) fn file_entries(dir: &Path, names: &[&str]) -> Result<BTreeMap<String, FileEntry>, DistillError> {
    let mut files = BTreeMap::new();
    for name in names {
        let path = dir.join(name);
        let size_bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
        files.insert(name.to_string(), FileEntry { size_bytes, sha256: sha256_file(&path).map_err(io(&path))? });
    }
    Ok(files)
}

/// A new artifact's manifest, made now by this worker, with no ONNX variant yet (the export
/// stage adds them).
pub(crate) fn new_manifest(
    lineage: Lineage,
    metrics: BTreeMap<String, f64>,
    training: BTreeMap<String, serde_json::Value>,
    files: BTreeMap<String, FileEntry>,
    warnings: Vec<QualityWarning>,
) -> ArtifactManifest {
    ArtifactManifest {
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
        warnings,
    }
}

/// An I/O failure on `path`, as a run's error.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DistillError + '_ {
    move |source| DistillError::Io { path: path.display().to_string(), source }
}
