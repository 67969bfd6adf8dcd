//! The stages of a causal-LM run (the DeepSeek-R1-distill pattern): a pretrained Llama-family
//! teacher read from a GGUF file, a corpus of documents split by document and packed into
//! sequences, the teacher's top-k next-token outputs computed once and cached, a small decoder
//! student distilled token by token, and the same student trained on the corpus alone (same
//! steps, data order and seed) to show what the teacher adds. Everything is measured on the
//! held-out documents: perplexity, next-token top-1 accuracy, and KL to the teacher.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::DType;
use candle_nn::{VarBuilder, VarMap};
use distillery_crds::DistillationJob;
use distillery_crds::distillation::QuantizationMode;
use distillery_crds::manifest::{
    ArtifactManifest, FP32_MODEL, FileEntry, INT8_MODEL, Lineage, NO_DISTILLATION_GAIN, OnnxVariant, QualityWarning,
};
use serde_json::json;
use tokenizers::Tokenizer;

use super::{DistillError, RunContext, TaskPipeline, io, stage};
use crate::data::corpus::{Corpus, CorpusSettings, end_of_text, read_corpus};
use crate::evaluate::lm::{LmFigures, evaluate, gap_closed};
use crate::model::decoder::{Decoder, DecoderConfig};
use crate::onnx::artifact::JOB_FILE;
use crate::onnx::decoder_export::export_decoder_artifact;
use crate::onnx::decoder_quantize::{decoder_not_quantized, quantize_decoder_artifact};
use crate::progress::{ProgressStage, Reporter};
use crate::serve::generate::{Sampling, continue_text};
use crate::store::{Kind, sha256, sha256_file};
use crate::student::decoder::{decoder_from_teacher_layers, random_decoder, student_config};
use crate::teacher::gguf::{self, LlamaGguf};
use crate::teacher::lm_outputs::{
    PassSettings, SCORING_BATCH, TeacherPass, cache_path, cached_teacher_pass, teacher_pass_tally,
};
use crate::teacher::shards::{
    Expected, ExpectedPart, PartOutputs, ShardOutputs, ShardRecord, ShardedOutputs, join_shards, shard_range,
    write_shard,
};
use crate::teacher::tokenizer_from_gguf::{build_tokenizer, tokenizer_json};
use crate::train::FitSettings;
use crate::train::lm::{LmObjective, fit_lm};
use crate::train::runner::{self, Checkpointing, Run, RunSummary};
use crate::train::token_kd::TopK;

/// Causal language modelling (`task: causal-lm`).
pub struct CausalLm;

/// Points of the temperature grid the teacher's remainder mass is stored at.
const GRID_POINTS: usize = 8;
/// Tokens of the sample generations' prompt, and of their continuations.
const SAMPLE_PROMPT: usize = 16;
const SAMPLE_TOKENS: usize = 40;

/// The data stage's output.
pub struct Data {
    /// The teacher GGUF file.
    pub teacher_path: PathBuf,
    /// The teacher's configuration (from the GGUF header).
    pub teacher_config: DecoderConfig,
    /// Its tokenizer, rebuilt from the GGUF's vocabulary and merges.
    pub tokenizer: Tokenizer,
    /// The corpus, split by document and packed.
    pub corpus: Corpus,
    /// sha256 over the documents' names and contents (the manifest's dataset digest).
    pub corpus_digest: String,
    /// The token between documents.
    pub end_of_text: u32,
}

/// The teacher stage's output.
pub struct Teacher {
    /// The teacher, dequantized to f32.
    pub gguf: LlamaGguf,
    /// sha256 of the GGUF file.
    pub digest: String,
    /// Its parameters.
    pub parameters: u64,
}

/// The teacher's outputs.
pub struct TeacherOutputs {
    /// On the training sequences: what the student learns from.
    pub train: TeacherPass,
    /// On the held-out sequences: its figures, and what students' KL is measured against.
    pub held_out: TeacherPass,
    /// Where they were joined from, when other pods computed them (`distill --teacher-outputs`).
    pub joined: Option<String>,
}

/// A trained student.
pub struct Trained {
    /// The run's name (`student`, `corpus-only`).
    pub name: &'static str,
    /// Its configuration.
    pub config: DecoderConfig,
    /// Its variables.
    pub variables: VarMap,
    /// Its training run.
    pub summary: RunSummary,
}

impl Trained {
    fn decoder(&self, run: &RunContext) -> candle_core::Result<Decoder> {
        Decoder::new(&self.config, VarBuilder::from_varmap(&self.variables, DType::F32, run.device))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

/// The training stage's output.
pub struct Students {
    /// The distilled student: the artifact.
    pub distilled: Trained,
    /// The same student trained on the corpus alone (absent when `loss.alpha` is 1).
    pub corpus_only: Option<Trained>,
}

/// Held-out figures.
pub struct Evaluation {
    /// The teacher's.
    pub teacher: LmFigures,
    /// The distilled student's.
    pub distilled: LmFigures,
    /// The corpus-only student's.
    pub corpus_only: Option<LmFigures>,
    /// The prompt of the sample generations (the start of the first held-out sequence).
    pub prompt: String,
    /// Greedy continuations of it, by model name.
    pub samples: Vec<(String, String)>,
    /// Where the teacher's outputs were joined from, when other pods computed them.
    pub teacher_outputs: Option<String>,
}

/// `teacherOutputs.topK` must leave the remainder bucket at least one token of the teacher's
/// vocabulary: with `k ≥ vocabulary` the cache would repeat ids, which the loss would count twice.
/// (The schema caps topK at 4,096; this catches teachers with smaller vocabularies.)
fn check_top_k(top_k: usize, vocabulary: usize) -> Result<(), DistillError> {
    if top_k < vocabulary {
        return Ok(());
    }
    Err(DistillError::InvalidSpec(format!(
        "teacherOutputs.topK: {top_k} is not below the teacher's vocabulary of {vocabulary} tokens (the cache keeps the top k tokens and one bucket for the rest); use a smaller topK"
    )))
}

impl TaskPipeline for CausalLm {
    type Data = Data;
    type Teacher = Teacher;
    type TeacherOutputs = TeacherOutputs;
    type Students = Students;
    type Evaluation = Evaluation;

    fn read_data(&self, run: &RunContext, reporter: &mut dyn Reporter) -> Result<Data, DistillError> {
        let spec = &run.job.spec;
        let teacher_path = run.resolver.materialize(&spec.teacher.uri, Kind::File)?;
        let invalid = |e: &dyn std::fmt::Display| DistillError::InvalidSpec(format!("teacher.uri: {e}"));
        let (content, _) = gguf::read_header(&teacher_path).map_err(|e| invalid(&e))?;
        let teacher_config = gguf::decoder_config(&content).map_err(|e| invalid(&e))?;
        let metadata = gguf::tokenizer_metadata(&content).map_err(|e| invalid(&e))?;
        let tokenizer = build_tokenizer(&metadata).map_err(|e| invalid(&e))?;
        let end_of_text =
            end_of_text(&tokenizer, metadata.eos_token_id.or(metadata.unknown_token_id)).ok_or_else(|| {
                DistillError::InvalidSpec(
                    "teacher.uri: the GGUF names no end-of-sequence token to separate documents with".into(),
                )
            })?;

        let dir = run.resolver.materialize(&spec.dataset.uri, Kind::Directory)?;
        let settings = CorpusSettings {
            length: spec.dataset.max_sequence_length as usize,
            held_out_fraction: spec.dataset.validation_split.fraction,
            seed: spec.dataset.validation_split.seed,
            max_sequences: spec.dataset.max_examples.map(|m| m as usize),
        };
        if settings.length > teacher_config.max_position_embeddings {
            return Err(DistillError::InvalidSpec(format!(
                "dataset.maxSequenceLength: {} is longer than the teacher's {} positions",
                settings.length, teacher_config.max_position_embeddings
            )));
        }
        check_top_k(spec.teacher_outputs.clone().unwrap_or_default().top_k as usize, teacher_config.vocab_size)?;
        let corpus = read_corpus(&dir, &tokenizer, end_of_text, &settings)
            .map_err(|e| DistillError::InvalidSpec(format!("dataset.uri: {e}")))?;
        let corpus_digest = corpus_digest(&corpus);
        stage(
            reporter,
            ProgressStage::ReadingData,
            format!(
                "{}: {} documents ({} tokens), split by document: {} train ({} tokens) / {} held out ({} tokens); {} + {} sequences of {} tokens",
                dir.display(),
                corpus.documents.len(),
                corpus.tokens(&(0..corpus.documents.len()).collect::<Vec<_>>()),
                corpus.train_documents.len(),
                corpus.tokens(&corpus.train_documents),
                corpus.held_out_documents.len(),
                corpus.tokens(&corpus.held_out_documents),
                corpus.train.len(),
                corpus.held_out.len(),
                settings.length
            ),
        );
        Ok(Data { teacher_path, teacher_config, tokenizer, corpus, corpus_digest, end_of_text })
    }

    fn prepare_teacher(
        &self,
        run: &RunContext,
        data: &Data,
        reporter: &mut dyn Reporter,
    ) -> Result<Teacher, DistillError> {
        stage(
            reporter,
            ProgressStage::PreparingTeacher,
            format!("{}: dequantizing to f32 (distilled from as it is)", data.teacher_path.display()),
        );
        let gguf = gguf::load_llama_gguf(&data.teacher_path, run.device)
            .map_err(|e| DistillError::InvalidSpec(format!("teacher.uri: {e}")))?;
        let digest = sha256_file(&data.teacher_path).map_err(io(&data.teacher_path))?;
        let parameters = gguf.config.parameters();
        Ok(Teacher { gguf, digest, parameters })
    }

    fn teacher_outputs(
        &self,
        run: &RunContext,
        data: &Data,
        teacher: &Teacher,
        reporter: &mut dyn Reporter,
    ) -> Result<TeacherOutputs, DistillError> {
        let outputs = match &run.teacher_shards {
            Some(source) => join_teacher_outputs(run, data, teacher, source, reporter)?,
            None => compute_teacher_outputs(run, data, teacher, reporter)?,
        };
        let f = &outputs.held_out.figures;
        stage(
            reporter,
            ProgressStage::Evaluating,
            format!(
                "teacher on {} held-out tokens: perplexity {:.2}, top-1 {:.2}%",
                f.tokens,
                f.perplexity,
                f.top1 * 100.0
            ),
        );
        Ok(outputs)
    }

    fn train(
        &self,
        run: &RunContext,
        data: &Data,
        teacher: &Teacher,
        outputs: &TeacherOutputs,
        reporter: &mut dyn Reporter,
    ) -> Result<Students, DistillError> {
        let spec = &run.job.spec;
        let config = student_config(&spec.student, &teacher.gguf.config)
            .map_err(|e| DistillError::InvalidSpec(e.to_string()))?;
        let settings = FitSettings::from_spec(&run.job.spec.training);
        let build = || -> Result<VarMap, DistillError> {
            Ok(match &spec.student.init_from_teacher {
                Some(from) => decoder_from_teacher_layers(&teacher.gguf.tensors, &from.layers)?,
                None => random_decoder(&config, spec.training.seed, run.device)
                    .map_err(|e| DistillError::InvalidSpec(e.to_string()))?,
            })
        };
        stage(
            reporter,
            ProgressStage::Training,
            format!(
                "{} layers, hidden {}, {} heads ({} key/value), vocabulary {} — {:.2}M parameters ({:.1}% of the teacher's){}",
                config.num_hidden_layers,
                config.hidden_size,
                config.num_attention_heads,
                config.num_key_value_heads,
                config.vocab_size,
                config.parameters() as f64 / 1e6,
                config.parameters() as f64 / teacher.parameters as f64 * 100.0,
                if spec.student.init_from_teacher.is_some() { ", from teacher layers" } else { "" }
            ),
        );
        let objective = LmObjective {
            teacher: Some(&outputs.train.outputs),
            alpha: spec.loss.alpha,
            temperature: &spec.loss.temperature,
        };
        let distilled = train_one(run, data, teacher, "student", &config, build()?, &objective, &settings, reporter)?;
        let corpus_only = if spec.loss.alpha < 1.0 {
            stage(
                reporter,
                ProgressStage::TrainingLabelOnly,
                "the same student on the corpus alone (alpha 1), same steps, data order and seed",
            );
            let objective = LmObjective { teacher: None, alpha: 1.0, temperature: &spec.loss.temperature };
            Some(train_one(run, data, teacher, "corpus-only", &config, build()?, &objective, &settings, reporter)?)
        } else {
            None
        };
        Ok(Students { distilled, corpus_only })
    }

    fn evaluate(
        &self,
        run: &RunContext,
        data: &Data,
        outputs: &TeacherOutputs,
        students: &Students,
        reporter: &mut dyn Reporter,
    ) -> Result<Evaluation, DistillError> {
        let held_out = &data.corpus.held_out;
        // What each student writes after the start of a held-out speech.
        let prompt = data
            .tokenizer
            .decode(&held_out[0][..SAMPLE_PROMPT.min(held_out[0].len())], false)
            .map_err(|e| DistillError::InvalidSpec(format!("teacher.uri: its tokenizer cannot decode: {e}")))?;
        let sampling = Sampling { max_tokens: SAMPLE_TOKENS, temperature: 0.0, seed: 0 };
        let mut samples = vec![];
        let mut figures = |trained: &Trained| -> Result<LmFigures, DistillError> {
            let decoder = trained.decoder(run)?;
            let f = evaluate(&decoder, held_out, Some(&outputs.held_out.outputs), SCORING_BATCH, run.device)?;
            stage(
                reporter,
                ProgressStage::Evaluating,
                format!(
                    "{} on {} held-out tokens: perplexity {:.2}, top-1 {:.2}%, KL to the teacher {:.3}",
                    trained.name,
                    f.tokens,
                    f.perplexity,
                    f.top1 * 100.0,
                    f.kl_to_teacher.unwrap_or(f64::NAN)
                ),
            );
            let text = continue_text(&decoder, &data.tokenizer, Some(data.end_of_text), &prompt, sampling, run.device)
                .map_err(|e| DistillError::InvalidSpec(e.to_string()))?;
            samples.push((trained.name.to_string(), text));
            Ok(f)
        };
        let distilled = figures(&students.distilled)?;
        let corpus_only = students.corpus_only.as_ref().map(&mut figures).transpose()?;
        Ok(Evaluation {
            teacher: outputs.held_out.figures,
            distilled,
            corpus_only,
            prompt,
            samples,
            teacher_outputs: outputs.joined.clone(),
        })
    }

    fn write_artifact(
        &self,
        run: &RunContext,
        data: &Data,
        teacher: &Teacher,
        students: &Students,
        evaluation: &Evaluation,
    ) -> Result<ArtifactManifest, DistillError> {
        let (job, output) = (run.job, run.output);
        let student = &students.distilled;
        let files = write_model_files(output, student, &data.tokenizer, job)?;
        let (teacher_params, student_params) = (teacher.parameters, student.config.parameters());
        let (t, d) = (&evaluation.teacher, &evaluation.distilled);
        let mut metrics = BTreeMap::from(
            [
                ("teacherPerplexity", t.perplexity),
                ("teacherTop1", t.top1),
                ("studentPerplexity", d.perplexity),
                ("studentTop1", d.top1),
                ("studentKlToTeacher", d.kl_to_teacher.unwrap_or(f64::NAN)),
                ("teacherParameters", teacher_params as f64),
                ("studentParameters", student_params as f64),
                ("parameterFraction", student_params as f64 / teacher_params as f64),
                ("compressionRatio", teacher_params as f64 / student_params as f64),
                ("trainDocuments", data.corpus.train_documents.len() as f64),
                ("heldOutDocuments", data.corpus.held_out_documents.len() as f64),
                ("trainSequences", data.corpus.train.len() as f64),
                ("heldOutSequences", data.corpus.held_out.len() as f64),
                ("heldOutTokens", d.tokens as f64),
                ("teacherTopK", run.job.spec.teacher_outputs.clone().unwrap_or_default().top_k as f64),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        let mut warnings = vec![];
        if let Some(c) = &evaluation.corpus_only {
            metrics.insert("corpusOnlyPerplexity".into(), c.perplexity);
            metrics.insert("corpusOnlyTop1".into(), c.top1);
            metrics.insert("corpusOnlyKlToTeacher".into(), c.kl_to_teacher.unwrap_or(f64::NAN));
            metrics.insert("gapClosed".into(), gap_closed(t.perplexity, d.perplexity, c.perplexity));
            if d.perplexity >= c.perplexity {
                warnings.push(QualityWarning {
                    reason: NO_DISTILLATION_GAIN.into(),
                    message: format!(
                        "the distilled student's held-out perplexity ({:.2}) is not below the same student's trained on the corpus alone ({:.2}): check loss.alpha, loss.temperature and teacherOutputs.topK",
                        d.perplexity, c.perplexity
                    ),
                });
            }
        }
        let mut training = BTreeMap::new();
        for trained in std::iter::once(student).chain(&students.corpus_only) {
            training.insert(trained.name.to_string(), serde_json::to_value(&trained.summary).expect("json"));
        }
        let mut preparation = json!({
            "format": "gguf",
            "tensorTypes": teacher.gguf.tensor_types,
            "dequantizedTo": "f32",
            "tokenizer": "rebuilt from the GGUF's vocabulary and merges",
        });
        if let Some(source) = &run.teacher_shards {
            preparation["outputs"] = json!({ "shards": source.shards, "uri": source.uri });
        }
        let lineage = Lineage {
            teacher_uri: job.spec.teacher.uri.clone(),
            teacher_digest: teacher.digest.clone(),
            teacher_preparation: Some(preparation),
            dataset_uri: job.spec.dataset.uri.clone(),
            dataset_digest: data.corpus_digest.clone(),
            spec_hash: run.spec_hash.clone(),
        };
        Ok(super::new_manifest(lineage, metrics, training, files, warnings))
    }

    fn export(
        &self,
        run: &RunContext,
        data: &Data,
        _students: &Students,
        reporter: &mut dyn Reporter,
    ) -> Result<(), DistillError> {
        // The student as written to model.safetensors (what a server would read back), exported
        // and run in ONNX Runtime on the held-out sequences against candle at every position;
        // refused unless they agree. Then int8 through the gate: held-out perplexity and
        // next-token top-1 within budget of fp32's, and faster (`speedCheck`), or refused.
        stage(
            reporter,
            ProgressStage::Exporting,
            "building model.onnx and checking it against candle at every held-out position in ONNX Runtime",
        );
        export_decoder_artifact(run.output, &data.corpus.held_out, reporter)?;
        let q = &run.job.spec.quantization;
        if q.mode == QuantizationMode::Int8Dynamic {
            stage(
                reporter,
                ProgressStage::Quantizing,
                format!(
                    "int8, budgets: held-out perplexity +{:.2}%, next-token top-1 −{:.2} points",
                    q.perplexity_budget_or_default() * 100.0,
                    q.accuracy_budget * 100.0
                ),
            );
            quantize_decoder_artifact(run.output, &data.corpus.held_out, q, reporter)?;
        } else {
            decoder_not_quantized(run.output)?;
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
        let student = &students.distilled;
        let t = &teacher.gguf.config;
        let mut rows = vec![
            LmRow {
                name: format!("teacher ({} layers, GGUF → f32)", t.num_hidden_layers),
                figures: evaluation.teacher,
                parameters: teacher.parameters,
                bytes: teacher.parameters * 4,
            },
            LmRow {
                name: format!("student ({} layers, distilled)", student.config.num_hidden_layers),
                figures: evaluation.distilled,
                parameters: student.config.parameters(),
                bytes: manifest.files.get("model.safetensors").map_or(0, |f| f.size_bytes),
            },
        ];
        if let Some(c) = &evaluation.corpus_only {
            rows.push(LmRow {
                name: "student on the corpus alone".into(),
                figures: *c,
                parameters: student.config.parameters(),
                bytes: student.config.parameters() * 4,
            });
        }
        let mut out = format!("held-out documents: {} tokens\n", evaluation.distilled.tokens);
        out += &lm_table(&rows);
        if let Some(note) = &evaluation.teacher_outputs {
            out += &format!("teacher outputs: {note}\n");
        }
        let length = data.corpus.held_out.first().map_or(0, Vec::len);
        if let Some(v) = manifest.variants.get("fp32") {
            out += &format!(
                "{FP32_MODEL} (ONNX Runtime): {:.1} MB; logits within {:.1e} of candle's at every held-out position, argmax agreement {:.2}%, next-token top-1 {:.2}%; {:.1} ms per {}-token sequence alone (1 thread)\n",
                v.size_bytes as f64 / 1e6,
                v.max_abs_logit_diff.unwrap_or(f64::NAN),
                v.label_agreement.unwrap_or(f64::NAN) * 100.0,
                v.accuracy * 100.0,
                v.latency_ms_batch1,
                length,
            );
            if let Some(int8) = manifest.variants.get("int8") {
                out += &int8_line(v, int8, length);
            }
        }
        out += &format!("\nprompt (a held-out speech): {:?}\n", evaluation.prompt);
        for (name, text) in &evaluation.samples {
            out += &format!("{name:>12}: {text:?}\n");
        }
        if let Some(gap) = manifest.metrics.get("gapClosed") {
            out += &format!(
                "distillation closed {:.1}% of the gap between the corpus-only student and the teacher (in log-perplexity)\n",
                gap * 100.0
            );
        }
        out
    }
}

/// `teacherOutputs.topK`, and the inverse temperatures the training outputs' remainders are kept
/// at: the temperature schedule's grid.
fn output_settings(job: &DistillationJob) -> (usize, Vec<f64>) {
    let spec = &job.spec;
    let k = spec.teacher_outputs.clone().unwrap_or_default().top_k as usize;
    let t = &spec.loss.temperature;
    let grid = match t.schedule {
        distillery_crds::distillation::Schedule::Constant => vec![1.0 / t.start],
        _ => TopK::grid_for(t.start, t.end, GRID_POINTS),
    };
    (k, grid)
}

/// The held-out outputs' grid: T = 1 alone, what KL to the teacher is reported at.
fn held_out_grid() -> Vec<f64> {
    vec![1.0]
}

/// The teacher as a decoder over its f32 tensors.
fn teacher_decoder(run: &RunContext, teacher: &Teacher) -> candle_core::Result<Decoder> {
    Decoder::new(&teacher.gguf.config, VarBuilder::from_tensors(teacher.gguf.tensors.clone(), DType::F32, run.device))
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// The teacher's outputs computed here, one pass over each part (reused from the cache when a
/// previous run saved it).
fn compute_teacher_outputs(
    run: &RunContext,
    data: &Data,
    teacher: &Teacher,
    reporter: &mut dyn Reporter,
) -> Result<TeacherOutputs, DistillError> {
    let (k, grid) = output_settings(run.job);
    let dir = run.cache_root.join("teachers");
    let decoder = || teacher_decoder(run, teacher);
    let mut pass = |sequences: &[Vec<u32>], grid: Vec<f64>, what: &str| {
        let settings = PassSettings { k, grid, batch: SCORING_BATCH };
        let path = cache_path(&dir, &teacher.digest, sequences, &settings);
        cached_teacher_pass(&path, &decoder, sequences, &settings, run.device, what, reporter)
    };
    let train = pass(&data.corpus.train, grid, "training sequences")?;
    let held_out = pass(&data.corpus.held_out, held_out_grid(), "held-out sequences")?;
    Ok(TeacherOutputs { train, held_out, joined: None })
}

/// What every shard of this job's teacher outputs must have been computed from.
fn expected<'a>(run: &RunContext, data: &'a Data, teacher: &Teacher) -> Expected<'a> {
    let (k, grid) = output_settings(run.job);
    Expected {
        teacher_digest: teacher.digest.clone(),
        k,
        train: ExpectedPart::new(&data.corpus.train, grid),
        held_out: ExpectedPart::new(&data.corpus.held_out, held_out_grid()),
    }
}

/// The teacher's outputs joined from the shards other pods computed, each checked against this
/// job first ([`join_shards`]).
fn join_teacher_outputs(
    run: &RunContext,
    data: &Data,
    teacher: &Teacher,
    source: &ShardedOutputs,
    reporter: &mut dyn Reporter,
) -> Result<TeacherOutputs, DistillError> {
    stage(
        reporter,
        ProgressStage::CachingTeacherOutputs,
        format!("joining {} shards of teacher outputs from {}", source.shards, source.uri),
    );
    let joined = join_shards(run.resolver, source, &expected(run, data, teacher))?;
    let positions = joined.train.outputs.positions() + joined.held_out.outputs.positions();
    let note = format!("joined {} shards of teacher outputs from {}: {positions} positions", source.shards, source.uri);
    stage(reporter, ProgressStage::CachingTeacherOutputs, note.clone());
    let pass = |part: PartOutputs| TeacherPass { figures: part.tally.figures(false), outputs: part.outputs };
    Ok(TeacherOutputs { train: pass(joined.train), held_out: pass(joined.held_out), joined: Some(note) })
}

/// The `teacher-outputs` command on a causal-LM job: reads the data and prepares the teacher as
/// `distill` does, runs the teacher over shard `shard` of `target`'s training and held-out
/// sequences ([`shard_range`]) in the batches one pass over them all would run, and writes the
/// shard under `target.uri` ([`write_shard`]). Returns its record.
pub fn write_teacher_shard(
    run: &RunContext,
    target: &ShardedOutputs,
    shard: usize,
    reporter: &mut dyn Reporter,
) -> Result<ShardRecord, DistillError> {
    target.check_shard(shard)?;
    let data = CausalLm.read_data(run, reporter)?;
    let teacher = CausalLm.prepare_teacher(run, &data, reporter)?;
    let expected = expected(run, &data, &teacher);
    let decoder = teacher_decoder(run, &teacher)?;
    let label = format!("shard {shard} of {}", target.shards);
    let mut pass = |part: &ExpectedPart, name: &str| -> Result<PartOutputs, DistillError> {
        let sequences = part.sequences();
        let range = shard_range(sequences.len(), shard, target.shards);
        let what = format!("{label}: {name} sequences {}..{} of {}", range.start, range.end, sequences.len());
        let message = format!("{what}: computing the teacher's top-{} next-token outputs", expected.k);
        stage(reporter, ProgressStage::CachingTeacherOutputs, message);
        let settings = PassSettings { k: expected.k, grid: part.grid().to_vec(), batch: SCORING_BATCH };
        let (outputs, tally) = teacher_pass_tally(&decoder, &sequences[range], &settings, run.device, &what, reporter)?;
        Ok(PartOutputs { outputs, tally })
    };
    let train = pass(&expected.train, "training")?;
    let held_out = pass(&expected.held_out, "held-out")?;
    let record = write_shard(run.resolver, target, shard, &expected, &ShardOutputs { train, held_out })?;
    stage(
        reporter,
        ProgressStage::CachingTeacherOutputs,
        format!(
            "{label}: {} training and {} held-out positions written to {}",
            record.train.positions, record.held_out.positions, target.uri
        ),
    );
    Ok(record)
}

/// The table's int8 line: `model.int8.onnx`'s size, held-out perplexity and top-1, and speed
/// against fp32's, or why int8 was refused.
fn int8_line(fp32: &OnnxVariant, int8: &OnnxVariant, length: usize) -> String {
    if int8.file.is_none() {
        return format!("int8: refused — {}\n", int8.gate_reason.as_deref().unwrap_or("it failed its gate"));
    }
    let perplexity = int8.perplexity.unwrap_or(f64::NAN);
    format!(
        "{INT8_MODEL} (ONNX Runtime): {:.1} MB ({:.1}× smaller); perplexity {perplexity:.2} ({:+.2}% vs fp32), top-1 {:.2}%; {:.1} ms per {length}-token sequence ({:.2}× fp32's speed)\n",
        int8.size_bytes as f64 / 1e6,
        fp32.size_bytes as f64 / int8.size_bytes as f64,
        (perplexity / fp32.perplexity.unwrap_or(f64::NAN) - 1.0) * 100.0,
        int8.accuracy * 100.0,
        int8.latency_ms_batch1,
        fp32.latency_ms_batch1 / int8.latency_ms_batch1,
    )
}

/// One row of the causal-LM table.
struct LmRow {
    name: String,
    figures: LmFigures,
    parameters: u64,
    bytes: u64,
}

/// The causal-LM table: held-out perplexity, top-1, KL to the teacher, parameters and size.
fn lm_table(rows: &[LmRow]) -> String {
    let mut out =
        format!("{:<34} {:>10} {:>7} {:>7} {:>11} {:>9}\n", "model", "perplexity", "top-1", "KL", "parameters", "size");
    for r in rows {
        let kl = r.figures.kl_to_teacher.map_or("-".to_string(), |k| format!("{k:.3}"));
        out += &format!(
            "{:<34} {:>10.2} {:>6.2}% {kl:>7} {:>10.2}M {:>6.1} MB\n",
            r.name,
            r.figures.perplexity,
            r.figures.top1 * 100.0,
            r.parameters as f64 / 1e6,
            r.bytes as f64 / 1e6
        );
    }
    out
}

/// Writes `model.safetensors` (HuggingFace Llama names), `config.json` (`LlamaForCausalLM`),
/// `tokenizer.json` and `job.json`; returns their entries.
fn write_model_files(
    output: &Path,
    student: &Trained,
    tokenizer: &Tokenizer,
    job: &DistillationJob,
) -> Result<BTreeMap<String, FileEntry>, DistillError> {
    let tensors = runner::snapshot(&[&student.variables])?;
    candle_core::safetensors::save(&tensors, output.join("model.safetensors"))?;
    let mut config = serde_json::to_value(&student.config).expect("config serializes");
    config["architectures"] = json!(["LlamaForCausalLM"]);
    config["torch_dtype"] = json!("float32");
    let write = |name: &str, bytes: Vec<u8>| -> Result<(), DistillError> {
        let path = output.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))
    };
    write("config.json", serde_json::to_vec_pretty(&config).expect("json"))?;
    let tokenizer =
        tokenizer_json(tokenizer, false).map_err(|e| DistillError::InvalidSpec(format!("teacher.uri: {e}")))?;
    write("tokenizer.json", tokenizer.into_bytes())?;
    write(JOB_FILE, serde_json::to_vec_pretty(job).expect("json"))?;
    super::file_entries(output, &["model.safetensors", "config.json", "tokenizer.json", JOB_FILE])
}

/// Trains `variables` (a student of `config`) as the run `name`, resuming from its checkpoint.
#[allow(clippy::too_many_arguments, reason = "one call per student")]
fn train_one(
    run: &RunContext,
    data: &Data,
    teacher: &Teacher,
    name: &'static str,
    config: &DecoderConfig,
    variables: VarMap,
    objective: &LmObjective,
    settings: &FitSettings,
    reporter: &mut dyn Reporter,
) -> Result<Trained, DistillError> {
    let decoder = Decoder::new(config, VarBuilder::from_varmap(&variables, DType::F32, run.device))
        .map_err(|e| DistillError::InvalidSpec(e.to_string()))?;
    let checkpointing = Checkpointing {
        dir: run.checkpoints().join(name),
        interval: u64::from(run.job.spec.training.checkpoint_interval),
        run_key: sha256(format!("{}/{}/{}/{name}", run.spec_hash, teacher.digest, data.corpus_digest).as_bytes()),
    };
    let sequences = &data.corpus.train;
    let maps = [&variables];
    let spec = Run {
        name,
        maps: &maps,
        settings,
        examples: sequences.len(),
        checkpointing: Some(&checkpointing),
        device: run.device,
    };
    let summary = runner::train_with(
        &spec,
        |_| true,
        reporter,
        |trainer, on_step| fit_lm(&decoder, trainer, sequences, objective, settings, run.device, on_step),
    )?;
    Ok(Trained { name, config: config.clone(), variables, summary })
}

/// sha256 over every document's name and token count and the sequences' contents.
fn corpus_digest(corpus: &Corpus) -> String {
    let mut text = String::new();
    for d in &corpus.documents {
        text += &format!("{}\t{}\n", d.name, sha256(&d.ids.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<_>>()));
    }
    sha256(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_int8_line_gives_size_perplexity_and_speed_or_why_it_was_refused() {
        let fp32 = OnnxVariant {
            size_bytes: 28_000_000,
            perplexity: Some(400.0),
            latency_ms_batch1: 12.0,
            ..Default::default()
        };
        let int8 = OnnxVariant {
            file: Some(INT8_MODEL.into()),
            size_bytes: 7_000_000,
            perplexity: Some(404.0),
            accuracy: 0.2,
            latency_ms_batch1: 4.0,
            ..Default::default()
        };
        assert_eq!(
            int8_line(&fp32, &int8, 128),
            "model.int8.onnx (ONNX Runtime): 7.0 MB (4.0× smaller); perplexity 404.00 (+1.00% vs fp32), top-1 20.00%; 4.0 ms per 128-token sequence (3.00× fp32's speed)\n"
        );
        let refused = OnnxVariant { file: None, gate_reason: Some("int8 is not faster".into()), ..int8 };
        assert_eq!(int8_line(&fp32, &refused, 128), "int8: refused — int8 is not faster\n");
    }

    #[test]
    fn top_k_must_leave_the_remainder_bucket_a_token() {
        assert!(check_top_k(32, 49_152).is_ok());
        assert!(check_top_k(255, 256).is_ok());
        for k in [256, 300] {
            let e = check_top_k(k, 256).unwrap_err().to_string();
            assert!(e.contains(&format!("teacherOutputs.topK: {k}")) && e.contains("256 tokens"), "{e}");
        }
    }
}
