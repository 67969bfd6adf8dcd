//! The stages of a sequence-classification run: labelled texts split by group, a BERT-family
//! teacher given a task head (or its own), the student distilled from its logits (and optionally
//! its pooled or hidden states), the same student trained on labels alone as the comparison that
//! shows what distillation adds, and the bag-of-words and majority-class baselines.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use distillery_crds::DistillationJob;
use distillery_crds::distillation::{AlignmentKind, LayerPair, QuantizationMode};
use distillery_crds::manifest::{ArtifactManifest, FileEntry, HeldOutAccuracies, Lineage, quality_warnings};
use serde_json::{Value, json};

use super::{DistillError, RunContext, TaskPipeline, io, stage};
use crate::data::inputs::{self, Inputs};
use crate::evaluate::baseline::{BagOfWords, BagOfWordsSettings, majority_class_accuracy};
use crate::model::classifier::Classifier;
use crate::onnx::artifact::{self as onnx_artifact, EvalSet};
use crate::progress::{Event, ProgressStage, Reporter};
use crate::store::{sha256, sha256_file};
use crate::student::{self, Student};
use crate::teacher::prepare::{self, PreparedTeacher};
use crate::train::align::HiddenAlignment;
use crate::train::align::HiddenTargets;
use crate::train::runner::{self, Checkpointing, RunSummary};
use crate::train::{Examples, FitSettings, Objective, accuracy, logits};

/// Sequence classification (`task: sequence-classification`).
pub struct Classification;

/// The data stage's output.
pub struct Data {
    /// The examples, their split, and every text tokenized with the teacher's tokenizer.
    pub inputs: Inputs,
    /// Labels of the held-out examples, in split order.
    pub held_out_labels: Vec<u32>,
    /// Held-out accuracy of always answering the training split's most frequent label.
    pub majority_accuracy: f64,
    /// Held-out accuracy of the bag-of-words baseline (TF-IDF + logistic regression).
    pub bag_of_words_accuracy: f64,
}

/// The teacher stage's output.
pub struct Teacher {
    /// The task-specific teacher and its logits on the training split.
    pub prepared: PreparedTeacher,
    /// Its `tokenizer.json`, which the student's is made from.
    pub tokenizer_json: Value,
}

/// The teacher's outputs the student learns from, indexed by example (training split and
/// transfer texts; empty rows elsewhere).
pub struct TeacherOutputs {
    /// Logits.
    pub logits: Vec<Vec<f32>>,
    /// Pooled embeddings (for `pooled-cosine` alignment).
    pub pooled: Vec<Vec<f32>>,
    /// Hidden states of the layers a `hidden-mse` layer map names.
    pub hidden: Option<HiddenTargets>,
}

/// A trained student.
pub struct Trained {
    /// The run's name (`student`, `label-only`): its checkpoint folder and curve in the manifest.
    pub name: &'static str,
    /// The student.
    pub student: Student,
    /// Its training run.
    pub summary: RunSummary,
}

/// The training stage's output.
pub struct Students {
    /// The distilled student: the artifact.
    pub distilled: Trained,
    /// The same student trained on labels alone, same steps and data order (absent when
    /// `loss.alpha` is 1: then the distilled student is that already).
    pub label_only: Option<Trained>,
}

/// Held-out accuracies of the students.
pub struct Evaluation {
    /// The distilled student's.
    pub distilled: f64,
    /// The label-only student's (the distilled student's when there is none).
    pub label_only: f64,
}

impl TaskPipeline for Classification {
    type Data = Data;
    type Teacher = Teacher;
    type TeacherOutputs = TeacherOutputs;
    type Students = Students;
    type Evaluation = Evaluation;

    fn read_data(&self, run: &RunContext, reporter: &mut dyn Reporter) -> Result<Data, DistillError> {
        let job = run.job;
        let inputs = inputs::load_with(job, run.resolver)?;
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
        let held_out_labels: Vec<u32> = inputs.split.validation.iter().map(|&i| inputs.labels[i]).collect();
        let train_labels: Vec<u32> = inputs.split.train.iter().map(|&i| inputs.labels[i]).collect();
        let majority_accuracy = majority_class_accuracy(&train_labels, &held_out_labels);
        let bag_of_words_accuracy = bag_of_words(&inputs);
        reporter.report(&Event::Evaluated { model: "bag-of-words".into(), accuracy: bag_of_words_accuracy });
        Ok(Data { inputs, held_out_labels, majority_accuracy, bag_of_words_accuracy })
    }

    fn prepare_teacher(
        &self,
        run: &RunContext,
        data: &Data,
        reporter: &mut dyn Reporter,
    ) -> Result<Teacher, DistillError> {
        let (job, inputs) = (run.job, &data.inputs);
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
        let prepared = prepare::prepare(job, inputs, run.cache_root, run.device, reporter)?;
        let tokenizer_path = inputs.teacher_dir.join("tokenizer.json");
        let tokenizer_json: Value = std::fs::read_to_string(&tokenizer_path)
            .map_err(io(&tokenizer_path))
            .and_then(|t| serde_json::from_str(&t).map_err(|e| io(&tokenizer_path)(std::io::Error::other(e))))?;
        Ok(Teacher { prepared, tokenizer_json })
    }

    fn teacher_outputs(
        &self,
        run: &RunContext,
        data: &Data,
        teacher: &Teacher,
        reporter: &mut dyn Reporter,
    ) -> Result<TeacherOutputs, DistillError> {
        let (job, inputs, prepared) = (run.job, &data.inputs, &teacher.prepared);
        let mut logits = vec![vec![]; inputs.ids.len()];
        let mut pooled = vec![vec![]; inputs.ids.len()];
        for (k, &i) in inputs.split.train.iter().enumerate() {
            logits[i] = prepared.train_logits[k].clone();
            pooled[i] = prepared.train_pooled[k].clone();
        }
        let transfer = prepare::transfer_outputs(prepared, job, inputs, run.device, reporter)?;
        for ((&i, l), p) in inputs.transfer_indices().iter().zip(transfer.logits).zip(transfer.pooled) {
            logits[i] = l;
            pooled[i] = p;
        }
        let hidden = match hidden_layer_map(job) {
            Some(map) => {
                let layers: Vec<usize> = map.iter().map(|p| p.teacher as usize).collect();
                Some(prepare::hidden_targets(prepared, job, inputs, &layers, run.device, reporter)?)
            }
            None => None,
        };
        Ok(TeacherOutputs { logits, pooled, hidden })
    }

    fn train(
        &self,
        run: &RunContext,
        data: &Data,
        teacher: &Teacher,
        outputs: &TeacherOutputs,
        reporter: &mut dyn Reporter,
    ) -> Result<Students, DistillError> {
        let (job, inputs) = (run.job, &data.inputs);
        let settings = FitSettings::from_spec(&job.spec.training);
        let distillation_indices = inputs.distillation_indices();
        let alignment = job.spec.loss.feature_alignment.as_ref();

        let student = student::build(job, &teacher.prepared, &teacher.tokenizer_json, inputs, run.device)?;
        check_alignment_width(job, &student, &teacher.prepared)?;
        // Variables that train with the student but are not part of it (alignment projections).
        let auxiliary = VarMap::new();
        let hidden = match (hidden_layer_map(job), &outputs.hidden) {
            (Some(map), Some(targets)) => Some(HiddenAlignment::new(
                targets,
                map.iter().map(|p| p.student as usize).collect(),
                student.config.hidden_size,
                alignment.map_or(0.0, |f| f.weight),
                &auxiliary,
                run.device,
            )?),
            _ => None,
        };
        stage(reporter, ProgressStage::Training, describe(&student, teacher.prepared.parameters()));
        let objective = Objective::Distill {
            teacher_logits: &outputs.logits,
            pooled: alignment
                .filter(|f| f.kind == AlignmentKind::PooledCosine)
                .map(|f| (outputs.pooled.as_slice(), f.weight)),
            hidden: hidden.as_ref(),
            alpha: job.spec.loss.alpha,
            temperature: &job.spec.loss.temperature,
        };
        let distilled = train_one(
            run,
            data,
            teacher,
            "student",
            student,
            &auxiliary,
            &distillation_indices,
            &objective,
            &settings,
            reporter,
        )?;

        let label_only = if job.spec.loss.alpha < 1.0 {
            stage(
                reporter,
                ProgressStage::TrainingLabelOnly,
                "the same student on labels alone (alpha 1), same steps and data",
            );
            // As many steps as the distillation run, on the labelled texts alone (it cannot use
            // unlabelled transfer texts).
            let settings =
                FitSettings { max_steps: Some(settings.total_steps(distillation_indices.len())), ..settings.clone() };
            let student = student::build(job, &teacher.prepared, &teacher.tokenizer_json, inputs, run.device)?;
            let indices = &inputs.split.train;
            Some(train_one(
                run,
                data,
                teacher,
                "label-only",
                student,
                &VarMap::new(),
                indices,
                &Objective::Labels,
                &settings,
                reporter,
            )?)
        } else {
            None
        };
        Ok(Students { distilled, label_only })
    }

    fn evaluate(
        &self,
        run: &RunContext,
        data: &Data,
        _outputs: &TeacherOutputs,
        students: &Students,
        reporter: &mut dyn Reporter,
    ) -> Result<Evaluation, DistillError> {
        let mut held_out = |trained: &Trained| -> Result<f64, DistillError> {
            let inputs = &data.inputs;
            stage(
                reporter,
                ProgressStage::Evaluating,
                format!("{} on {} held-out examples", trained.name, data.held_out_labels.len()),
            );
            let model = classifier(&trained.student, inputs.dataset.labels.len(), run.job, run.device)?;
            let scores = logits(&model, &trained.student.ids, &inputs.split.validation, 64, run.device)?;
            let acc = accuracy(&scores, &data.held_out_labels);
            reporter.report(&Event::Evaluated { model: trained.name.into(), accuracy: acc });
            Ok(acc)
        };
        let distilled = held_out(&students.distilled)?;
        let label_only = match &students.label_only {
            Some(t) => held_out(t)?,
            None => distilled,
        };
        Ok(Evaluation { distilled, label_only })
    }

    fn write_artifact(
        &self,
        run: &RunContext,
        data: &Data,
        teacher: &Teacher,
        students: &Students,
        evaluation: &Evaluation,
    ) -> Result<ArtifactManifest, DistillError> {
        let (job, inputs, prepared) = (run.job, &data.inputs, &teacher.prepared);
        let student = &students.distilled.student;
        let files = write_model_files(run.output, student, inputs, job)?;
        let teacher_params = prepared.parameters();
        let student_params = student.parameters();
        let teacher_accuracy = prepared.preparation.held_out_accuracy;
        let metrics = BTreeMap::from(
            [
                ("teacherAccuracy", teacher_accuracy),
                ("studentAccuracy", evaluation.distilled),
                ("labelOnlyAccuracy", evaluation.label_only),
                ("bagOfWordsAccuracy", data.bag_of_words_accuracy),
                ("majorityClassAccuracy", data.majority_accuracy),
                ("retention", evaluation.distilled / teacher_accuracy),
                ("distillationGain", evaluation.distilled - evaluation.label_only),
                ("teacherParameters", teacher_params as f64),
                ("studentParameters", student_params as f64),
                ("parameterFraction", student_params as f64 / teacher_params as f64),
                ("compressionRatio", teacher_params as f64 / student_params as f64),
                ("studentVocabulary", student.config.vocab_size as f64),
                ("trainExamples", inputs.split.train.len() as f64),
                ("transferExamples", inputs.transfer_indices().len() as f64),
                ("heldOutExamples", inputs.split.validation.len() as f64),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        let mut training = BTreeMap::new();
        if let Some(run) = &prepared.preparation.run {
            training.insert("teacher".to_string(), serde_json::to_value(run).expect("json"));
        }
        for trained in std::iter::once(&students.distilled).chain(&students.label_only) {
            training.insert(trained.name.to_string(), serde_json::to_value(&trained.summary).expect("json"));
        }
        let teacher_weights = inputs.teacher_dir.join("model.safetensors");
        let lineage = Lineage {
            teacher_uri: job.spec.teacher.uri.clone(),
            teacher_digest: sha256_file(&teacher_weights).map_err(io(&teacher_weights))?,
            teacher_preparation: Some(json!({
                "cacheKey": prepared.preparation.key,
                "head": prepared.preparation.head,
                "shippedHead": prepared.preparation.shipped_head,
                "trainedLayers": prepared.preparation.trained_layers,
                "wordEmbeddingsFrozen": prepared.preparation.word_embeddings_frozen,
                "heldOutAccuracy": prepared.preparation.held_out_accuracy,
                "reusedFromCache": prepared.reused,
            })),
            dataset_uri: job.spec.dataset.uri.clone(),
            dataset_digest: sha256_file(&inputs.dataset.path).map_err(io(&inputs.dataset.path))?,
            spec_hash: run.spec_hash.clone(),
        };
        let warnings = quality_warnings(&HeldOutAccuracies {
            teacher: teacher_accuracy,
            bag_of_words: data.bag_of_words_accuracy,
            majority_class: data.majority_accuracy,
            distilled: evaluation.distilled,
            label_only: students.label_only.as_ref().map(|_| evaluation.label_only),
        });
        Ok(super::new_manifest(lineage, metrics, training, files, warnings))
    }

    fn export(
        &self,
        run: &RunContext,
        data: &Data,
        students: &Students,
        reporter: &mut dyn Reporter,
    ) -> Result<(), DistillError> {
        // The ONNX models, evaluated on the same held-out examples in ONNX Runtime.
        let student = &students.distilled.student;
        let eval = EvalSet {
            ids: data.inputs.split.validation.iter().map(|&i| student.ids[i].clone()).collect(),
            labels: data.held_out_labels.clone(),
        };
        stage(reporter, ProgressStage::Exporting, "building model.onnx and checking it against candle in ONNX Runtime");
        onnx_artifact::export_artifact(run.output, &eval, reporter)?;
        let q = &run.job.spec.quantization;
        if q.mode == QuantizationMode::Int8Dynamic {
            stage(
                reporter,
                ProgressStage::Quantizing,
                format!("int8, accuracy budget {:.2} points", q.accuracy_budget * 100.0),
            );
            onnx_artifact::quantize_artifact(run.output, &eval, q, reporter)?;
        } else {
            onnx_artifact::serve_fp32_unquantized(run.output)?;
        }
        Ok(())
    }

    fn table(
        &self,
        data: &Data,
        teacher: &Teacher,
        students: &Students,
        evaluation: &Evaluation,
        manifest: &ArtifactManifest,
    ) -> String {
        let prepared = &teacher.prepared;
        let student = &students.distilled.student;
        let (teacher_params, student_params) = (prepared.parameters(), student.parameters());
        let size = |p: u64| p * 4;
        let mut rows = vec![
            ModelRow {
                name: format!("teacher ({} layers, {})", prepared.config.num_hidden_layers, how_made(prepared)),
                accuracy: prepared.preparation.held_out_accuracy,
                parameters: teacher_params,
                bytes: size(teacher_params),
            },
            ModelRow {
                name: format!("student ({} layers, distilled)", student.config.num_hidden_layers),
                accuracy: evaluation.distilled,
                parameters: student_params,
                bytes: manifest.files["model.safetensors"].size_bytes,
            },
            ModelRow {
                name: "student on labels only".into(),
                accuracy: evaluation.label_only,
                parameters: student_params,
                bytes: size(student_params),
            },
            ModelRow {
                name: "bag-of-words (TF-IDF + LR)".into(),
                accuracy: data.bag_of_words_accuracy,
                parameters: 0,
                bytes: 0,
            },
        ];
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
        let m = &manifest.metrics;
        let mut out = format!("held-out accuracy on {} examples\n", m["heldOutExamples"]);
        out += &table(&rows);
        let variants = &manifest.variants;
        if let (Some(fp32), Some(int8)) = (variants.get("fp32"), variants.get("int8")) {
            out += &crate::onnx::artifact::variant_table(fp32, int8);
        }
        if let Some(served) = &manifest.served_variant {
            out += &format!("served: {served} — {}\n", manifest.served_variant_reason.as_deref().unwrap_or(""));
        }
        out += &format!(
            "retention {:.1}% of the teacher's accuracy with {:.1}% of its parameters; distillation adds {:+.2} points over labels alone\n",
            m["retention"] * 100.0,
            m["parameterFraction"] * 100.0,
            m["distillationGain"] * 100.0
        );
        out
    }
}

/// Trains `student` as the run `name` (resuming from its checkpoint), on `indices`.
#[allow(clippy::too_many_arguments)]
fn train_one(
    run: &RunContext,
    data: &Data,
    teacher: &Teacher,
    name: &'static str,
    student: Student,
    auxiliary: &VarMap,
    indices: &[usize],
    objective: &Objective,
    settings: &FitSettings,
    reporter: &mut dyn Reporter,
) -> Result<Trained, DistillError> {
    let (job, inputs) = (run.job, &data.inputs);
    let model = classifier(&student, inputs.dataset.labels.len(), job, run.device)?;
    let checkpointing = Checkpointing {
        dir: run.checkpoints().join(name),
        interval: u64::from(job.spec.training.checkpoint_interval),
        run_key: sha256(format!("{}/{}/{name}", run.spec_hash, teacher.prepared.preparation.key).as_bytes()),
    };
    let examples = Examples { ids: &student.ids, labels: &inputs.labels, indices };
    let summary = runner::train(
        name,
        &model,
        &[&student.encoder, &student.head, auxiliary],
        |_| true,
        examples,
        objective,
        settings,
        Some(&checkpointing),
        run.device,
        reporter,
    )?;
    Ok(Trained { name, student, summary })
}

/// The layer map of `hidden-mse` alignment, when the spec asks for it.
fn hidden_layer_map(job: &DistillationJob) -> Option<&Vec<LayerPair>> {
    job.spec.loss.feature_alignment.as_ref().filter(|f| f.kind == AlignmentKind::HiddenMse).map(|f| &f.layer_map)
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
    super::file_entries(output, &["model.safetensors", "config.json", "tokenizer.json", onnx_artifact::JOB_FILE])
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
