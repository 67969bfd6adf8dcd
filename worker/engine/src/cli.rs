//! The `distillery-worker` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use distillery_crds::DistillationJob;
use distillery_crds::analysis::{AnalysisRun, Thresholds, judge};
use distillery_crds::common::{Compression, DataFormat, EvalDataset};
use distillery_crds::deployment::AnalysisSpec;
use distillery_crds::distillation::{Task, TransferSet};

use candle_core::Device;
use distillery_crds::cache::cache_dir;

use distillery_crds::manifest::FP32_MODEL;
use distillery_model::artifact::{ServedArtifact, VariantChoice};

use crate::pipeline::{DistillError, ErrorPolicy};
use crate::progress::{self, Event, ProgressStage};
use crate::serve::generate::{LanguageModel, Sampling};
use crate::serve::{analyze, bench, inspect, loadgen};
use crate::teacher::shards::{self, ShardedOutputs};
use crate::{cluster, onnx, pipeline, spec};

/// Distillery's worker: knowledge distillation, export, quantization, evaluation and load tests.
#[derive(Parser, Debug)]
#[command(name = "distillery-worker", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a DistillationJob spec (YAML or JSON), locally or in the operator's pod.
    Distill {
        /// The DistillationJob file.
        #[arg(short = 'f', long = "file", env = "DISTILLERY_JOB_FILE", required_unless_present = "job")]
        file: Option<PathBuf>,
        /// The DistillationJob itself, as JSON or YAML (how the operator hands it to the pod).
        #[arg(long, env = "DISTILLERY_JOB", conflicts_with = "file", hide_env_values = true)]
        job: Option<String>,
        /// Apply live progress to the DistillationJob's `status.progress` (in the operator's pod).
        #[arg(long, env = "DISTILLERY_REPORT_STATUS", default_value_t = false, action = clap::ArgAction::Set)]
        report_status: bool,
        /// Write the final summary (or the error) here for the operator to read back: the
        /// container's termination-message path.
        #[arg(long, env = "DISTILLERY_TERMINATION_MESSAGE")]
        termination_message: Option<PathBuf>,
        /// Write the artifact here instead of the spec's `output.uri`: a directory or a URI (the
        /// operator passes `<output.uri>/<run id>`, a new location for every run).
        #[arg(long, env = "DISTILLERY_OUTPUT")]
        output: Option<String>,
        /// Join the teacher's outputs from the shards `teacher-outputs` wrote here (a directory,
        /// or a `file://` or `s3://` URI) instead of running the teacher over the data: each
        /// shard is checked against this job first. Causal-lm jobs only.
        #[arg(long, env = "DISTILLERY_TEACHER_OUTPUTS", requires = "teacher_shards")]
        teacher_outputs: Option<String>,
        /// How many shards `--teacher-outputs` holds.
        #[arg(
            long,
            env = "DISTILLERY_TEACHER_SHARDS",
            requires = "teacher_outputs",
            value_parser = clap::value_parser!(u32).range(1..)
        )]
        teacher_shards: Option<u32>,
    },
    /// Compute one shard of a causal-lm DistillationJob's teacher outputs (one pod of an Indexed
    /// Job): the teacher's top-k next-token outputs on the shard's training and held-out
    /// sequences, written as `shard-<I>-of-<N>.safetensors` and its record `shard-<I>-of-<N>.json`
    /// under `--output`, the record last. `distill --teacher-outputs` joins the shards.
    TeacherOutputs {
        /// The DistillationJob file.
        #[arg(short = 'f', long = "file", env = "DISTILLERY_JOB_FILE", required_unless_present = "job")]
        file: Option<PathBuf>,
        /// The DistillationJob itself, as JSON or YAML (how the operator hands it to the pod).
        #[arg(long, env = "DISTILLERY_JOB", conflicts_with = "file", hide_env_values = true)]
        job: Option<String>,
        /// Write the summary (or the error) here too: the container's termination-message path.
        #[arg(long, env = "DISTILLERY_TERMINATION_MESSAGE")]
        termination_message: Option<PathBuf>,
        /// This pod's shard, from 0 (Kubernetes sets JOB_COMPLETION_INDEX in an Indexed Job's
        /// pods).
        #[arg(long, env = "JOB_COMPLETION_INDEX")]
        shard: u32,
        /// How many shards the outputs are cut into.
        #[arg(long, env = "DISTILLERY_TEACHER_SHARDS", value_parser = clap::value_parser!(u32).range(1..))]
        shards: u32,
        /// Where the shards go: a directory, or a `file://` or `s3://` URI.
        #[arg(long, env = "DISTILLERY_TEACHER_OUTPUTS")]
        output: String,
    },
    /// Build `model.onnx` in an artifact directory from its `model.safetensors`, and check it
    /// against candle on the held-out split in ONNX Runtime (max |Δlogit| ≤ 1e-4, same labels).
    Export {
        /// The artifact directory (`distill` writes one).
        #[arg(short = 'a', long)]
        artifact: PathBuf,
        /// The DistillationJob whose held-out split to evaluate on; default: the artifact's
        /// `job.json`.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// The ONNX Runtime library (`libonnxruntime.so.1.31.1`).
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_library: Option<PathBuf>,
    },
    /// Quantize an artifact's `model.onnx` to int8 behind the accuracy and speed gate; writes
    /// `model.int8.onnx` only when it passes, and records the variant to serve in the manifest.
    Quantize {
        /// The artifact directory (with `model.onnx`; run `export` first).
        #[arg(short = 'a', long)]
        artifact: PathBuf,
        /// The DistillationJob whose held-out split to evaluate on and whose `quantization` to
        /// follow; default: the artifact's `job.json`.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Largest accuracy drop int8 may cost (0.01 = one point); default: the job's
        /// `quantization.accuracyBudget`.
        #[arg(long)]
        accuracy_budget: Option<f64>,
        /// Whether int8 must be faster than fp32 to be served; default: the job's
        /// `quantization.speedCheck`.
        #[arg(long, action = clap::ArgAction::Set)]
        speed_check: Option<bool>,
        /// The ONNX Runtime library (`libonnxruntime.so.1.31.1`).
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_library: Option<PathBuf>,
    },
    /// Continue a prompt with a causal-LM artifact (`task: causal-lm`): greedily, or sampled
    /// at a temperature. Prints the prompt and its continuation.
    Generate {
        /// The artifact directory (`model.safetensors`, `config.json`, `tokenizer.json`).
        #[arg(short = 'a', long)]
        artifact: PathBuf,
        /// The text to continue; repeat for several.
        #[arg(long, required = true)]
        prompt: Vec<String>,
        /// New tokens at most (fewer when the model ends the text).
        #[arg(long, default_value_t = 60)]
        max_tokens: usize,
        /// 0: greedy; above 0: sample from the model's distribution at this temperature.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Seed of the sampler.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Offline predictions of an artifact's ONNX model, as JSON lines (`text`, `label`,
    /// `logits`): what a server serving the same artifact must answer.
    Predict {
        /// The artifact directory.
        #[arg(short = 'a', long)]
        artifact: PathBuf,
        /// Which ONNX file: `auto` (the manifest's served variant), `fp32` or `int8`.
        #[arg(long, value_enum, default_value_t = VariantChoice::Auto)]
        variant: VariantChoice,
        /// Texts, one per line; default: the held-out split of the artifact's `job.json`.
        #[arg(long)]
        texts: Option<PathBuf>,
        /// Texts per model run (runs group texts of similar length). With int8, a text's logits
        /// move slightly with its batch-mates (activations are quantized per run); 1 makes them
        /// independent of the others.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
        batch_size: u32,
        /// The ONNX Runtime library (`libonnxruntime.so.1.31.1`).
        #[arg(long, env = "ORT_DYLIB_PATH")]
        ort_library: Option<PathBuf>,
    },
    /// Run a Benchmark (YAML or JSON), locally or in the operator's pod: every target on the same
    /// inputs — accuracy, robustness, latency, throughput, errors, cold start, CPU and memory —
    /// one after the other; artifact targets are served by `distillery-server` processes started
    /// here. Prints a table with ratios to the first target and writes report.html, report.md and
    /// results.json to the report location.
    Bench {
        /// The Benchmark file.
        #[arg(short = 'f', long = "file", env = "DISTILLERY_BENCHMARK_FILE", required_unless_present = "benchmark")]
        file: Option<PathBuf>,
        /// The Benchmark itself, as JSON or YAML (how the operator hands it to the pod).
        #[arg(long, env = "DISTILLERY_BENCHMARK", conflicts_with = "file", hide_env_values = true)]
        benchmark: Option<String>,
        /// `NAME=http://HOST:PORT`: where a ModelDeployment target is served (the operator passes
        /// the track's Service). Repeat per target.
        #[arg(long = "target-url")]
        target_urls: Vec<String>,
        /// `NAME=URL,URL`: the `/metrics` of a ModelDeployment target's pods, for its CPU and
        /// memory. Repeat per target.
        #[arg(long = "target-metrics")]
        target_metrics: Vec<String>,
        /// `NAME=DIR`: an artifact target's directory (or its `file://` or `s3://` URI), instead
        /// of its `artifact.uri` (required for a `distillationJobRef`). Repeat per target.
        #[arg(long = "artifact")]
        artifacts: Vec<String>,
        /// Write the report here instead of the spec's `reportUri` (or its default beside the
        /// first artifact).
        #[arg(long)]
        report_uri: Option<String>,
        /// The `distillery-server` binary; default: the one beside this executable, else the
        /// PATH's.
        #[arg(long, env = "DISTILLERY_SERVER_BINARY")]
        server_binary: Option<PathBuf>,
        /// Write the summary (or the error) here too: the container's termination-message path.
        #[arg(long, env = "DISTILLERY_TERMINATION_MESSAGE")]
        termination_message: Option<PathBuf>,
    },
    /// Write an artifact's held-out split (the examples its job kept out of training) as a CSV
    /// with `text` and `label` columns, labels by name: labelled inputs for a Benchmark or a
    /// golden set that the model never trained on.
    HeldOut {
        /// The artifact directory (its `job.json` says how the data was split).
        #[arg(short = 'a', long)]
        artifact: PathBuf,
        /// The CSV file to write.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Drive running KServe V2 inference servers with texts, one per request, and report
    /// throughput and p50/p95/p99 latency per load level; given several targets, side by side with
    /// ratios to the first. (A whole Benchmark — accuracy, robustness, cold start, resources and a
    /// report — is `bench -f`.)
    Loadtest {
        /// A server: `NAME=http://host:port`, or just the URL. Repeat to compare servers; each is
        /// driven alone, one after the other.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// The model's name (`/v2/models/{model}/infer`).
        #[arg(long)]
        model: String,
        /// Send the held-out texts of this artifact's `job.json`.
        #[arg(short = 'a', long, required_unless_present = "texts")]
        artifact: Option<PathBuf>,
        /// Send these texts instead, one per line.
        #[arg(long, conflicts_with = "artifact")]
        texts: Option<PathBuf>,
        /// Closed-loop client counts, each one load level.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        concurrency: Vec<usize>,
        /// Open loop instead: requests scheduled at this many per second (latency counted from
        /// the schedule), over `--connections` connections.
        #[arg(long)]
        rate: Option<f64>,
        /// Connections of the open loop.
        #[arg(long, default_value_t = 256)]
        connections: usize,
        /// Measured seconds per level.
        #[arg(long, default_value_t = 10.0)]
        duration_seconds: f64,
        /// Unmeasured seconds before each closed-loop level.
        #[arg(long, default_value_t = 2.0)]
        warmup_seconds: f64,
        /// Write the reports here as JSON too.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Which ONNX file a server would serve from an artifact, checked against its manifest: one
    /// JSON line `{"modelUri", "variant", "modelDigest", "manifestDigest"}` (what the operator
    /// reads from the termination message). Exits 1 with the reason when a server would refuse
    /// the artifact.
    Inspect {
        /// The artifact: an `s3://` URI (downloaded into the work directory, every file checked
        /// against the manifest), a `file://` URI or a local path.
        #[arg(short = 'a', long)]
        artifact: String,
        /// Which ONNX file: `auto` (the manifest's served variant), `fp32` or `int8`.
        #[arg(long, value_enum, default_value_t = VariantChoice::Auto)]
        variant: VariantChoice,
        /// Write the JSON (or the error) here too: the container's termination-message path.
        #[arg(long, env = "DISTILLERY_TERMINATION_MESSAGE")]
        termination_message: Option<PathBuf>,
    },
    /// One canary-analysis run: live traffic of both tracks from their pods' `/metrics` over a
    /// window, then a golden slice sent to both. Prints the measurements as one JSON line (an
    /// AnalysisRun) and the verdict on them to stderr. A measurement that cannot be made is
    /// recorded in `errors` and still exits 0; only bad arguments exit 1.
    Analyze {
        /// The stable track's base URL, e.g. `http://10.0.0.7:8080`.
        #[arg(long)]
        stable: Option<String>,
        /// The canary track's base URL.
        #[arg(long)]
        canary: Option<String>,
        /// The model name both tracks serve (`/v2/models/{name}/infer`).
        #[arg(long)]
        model_name: Option<String>,
        /// The golden set: an EvalDataset as JSON (`uri`, `format`, `compression`, `textField`,
        /// `labelField`, `samples`, `volumeClaim`).
        #[arg(long, requires_all = ["stable", "canary", "model_name"])]
        golden_dataset: Option<String>,
        /// 0-based index of this run in the rollout: run K answers the `samples` golden rows from
        /// K·samples on (of the rows shuffled with seed 0, wrapping around).
        #[arg(long, default_value_t = 0)]
        run: u64,
        /// The stable pods' `/metrics` URLs, comma-separated.
        #[arg(long, value_delimiter = ',', requires = "canary_metrics")]
        stable_metrics: Vec<String>,
        /// The canary pods' `/metrics` URLs, comma-separated.
        #[arg(long, value_delimiter = ',', requires = "stable_metrics")]
        canary_metrics: Vec<String>,
        /// How long live traffic is watched, e.g. `30s`, `1m`, `250ms`.
        #[arg(long, default_value = "10s")]
        window: String,
        /// Golden texts per request.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
        batch_size: u32,
        /// Golden requests in flight per track.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
        in_flight: u32,
        /// Longest wait for any one HTTP answer.
        #[arg(long, default_value = "30s")]
        timeout: String,
        /// For the verdict printed to stderr: largest drop of canary accuracy below stable's.
        #[arg(long, default_value_t = AnalysisSpec::default().max_accuracy_drop)]
        max_accuracy_drop: f64,
        /// For the verdict: smallest agreement between the tracks on the golden set.
        #[arg(long, default_value_t = AnalysisSpec::default().min_agreement)]
        min_agreement: f64,
        /// For the verdict: largest canary server-error rate.
        #[arg(long, default_value_t = AnalysisSpec::default().max_error_rate)]
        max_error_rate: f64,
        /// For the verdict: largest canary p99 latency in milliseconds (not judged when unset).
        #[arg(long)]
        max_p99_latency_ms: Option<f64>,
        /// Write the JSON (or the error) here too: the container's termination-message path.
        #[arg(long, env = "DISTILLERY_TERMINATION_MESSAGE")]
        termination_message: Option<PathBuf>,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let finish = |result: Result<String, String>| match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("distillery-worker: {message}");
            ExitCode::FAILURE
        }
    };
    match cli.command {
        Command::Export { artifact, file, ort_library } => {
            finish(export(&artifact, file.as_deref(), ort_library.as_deref()))
        }
        Command::Quantize { artifact, file, accuracy_budget, speed_check, ort_library } => {
            finish(quantize(&artifact, file.as_deref(), accuracy_budget, speed_check, ort_library.as_deref()))
        }
        Command::Generate { artifact, prompt, max_tokens, temperature, seed } => {
            finish(generate(&artifact, &prompt, Sampling { max_tokens, temperature, seed }))
        }
        Command::Predict { artifact, variant, texts, batch_size, ort_library } => {
            finish(predict(&artifact, variant, texts.as_deref(), batch_size as usize, ort_library.as_deref()))
        }
        Command::Bench {
            file,
            benchmark,
            target_urls,
            target_metrics,
            artifacts,
            report_uri,
            server_binary,
            termination_message,
        } => {
            let resolved = bench::plan::Resolved { target_urls, target_metrics, artifacts, report_uri };
            let source = match (file, benchmark) {
                (Some(path), _) => Source::File(path),
                (None, Some(text)) => Source::Inline(text),
                (None, None) => unreachable!("clap requires one of --file and --benchmark"),
            };
            run_benchmark(&source, &resolved, server_binary.as_deref(), termination_message.as_deref())
        }
        Command::Loadtest {
            targets,
            model,
            artifact,
            texts,
            concurrency,
            rate,
            connections,
            duration_seconds,
            warmup_seconds,
            json,
        } => {
            let load = Load { concurrency, rate, connections, duration_seconds, warmup_seconds };
            finish(loadtest(&targets, &model, artifact.as_deref(), texts.as_deref(), &load, json.as_deref()))
        }
        Command::HeldOut { artifact, output } => finish(write_held_out(&artifact, &output)),
        Command::Inspect { artifact, variant, termination_message } => {
            let result = inspect::inspect(&artifact, variant)
                .map(|i| serde_json::to_string(&i).expect("the inspection serializes"))
                .map_err(|e| excerpt_line(&e.to_string()));
            conclude(result, termination_message.as_deref())
        }
        Command::Analyze {
            stable,
            canary,
            model_name,
            golden_dataset,
            run,
            stable_metrics,
            canary_metrics,
            window,
            batch_size,
            in_flight,
            timeout,
            max_accuracy_drop,
            min_agreement,
            max_error_rate,
            max_p99_latency_ms,
            termination_message,
        } => {
            let thresholds = Thresholds { max_accuracy_drop, min_agreement, max_p99_latency_ms, max_error_rate };
            let options = || -> Result<analyze::AnalyzeOptions, analyze::AnalyzeError> {
                let golden = golden_dataset.as_deref().map(serde_json::from_str::<EvalDataset>).transpose();
                Ok(analyze::AnalyzeOptions {
                    stable,
                    canary,
                    model_name,
                    golden: golden.map_err(analyze::AnalyzeError::BadDataset)?,
                    run,
                    stable_metrics,
                    canary_metrics,
                    window: analyze::parse_duration("--window", &window)?,
                    batch_size: batch_size as usize,
                    in_flight: in_flight as usize,
                    timeout: analyze::parse_duration("--timeout", &timeout)?,
                })
            };
            let result = options()
                .and_then(|o| analyze::run(&o, &mut |line| eprintln!("distillery-worker: analyze: {line}")))
                .map(|out| {
                    report_verdict(&out, &thresholds);
                    serde_json::to_string(&out).expect("the run serializes")
                })
                .map_err(|e| e.to_string());
            conclude(result, termination_message.as_deref())
        }
        Command::Distill { file, job, report_status, termination_message, output, teacher_outputs, teacher_shards } => {
            let source = job_source(file, job);
            let teacher_shards = match (teacher_outputs, teacher_shards) {
                (Some(uri), Some(shards)) => Some(ShardedOutputs { uri, shards: shards as usize }),
                _ => None,
            };
            let options = RunOptions { report_status, output, teacher_shards };
            end_run(distill(&source, &options), termination_message.as_deref())
        }
        Command::TeacherOutputs { file, job, termination_message, shard, shards, output } => {
            let source = job_source(file, job);
            let target = ShardedOutputs { uri: output, shards: shards as usize };
            end_run(teacher_shard(&source, &target, shard as usize), termination_message.as_deref())
        }
    }
}

/// The DistillationJob of `--file` or `--job` (clap requires one).
fn job_source(file: Option<PathBuf>, job: Option<String>) -> Source {
    match (file, job) {
        (Some(path), _) => Source::File(path),
        (None, Some(text)) => Source::Inline(text),
        (None, None) => unreachable!("clap requires one of --file and --job"),
    }
}

/// Ends `distill` or `teacher-outputs`: the summary (or the error) in the termination message;
/// exit 0, or the error on stderr and the exit code of its policy.
fn end_run(result: Result<String, Failure>, termination_message: Option<&Path>) -> ExitCode {
    let message = match &result {
        Ok(summary) => summary.clone(),
        Err(failure) => failure.message.clone(),
    };
    if let Some(path) = termination_message
        && let Err(e) = cluster::write_termination_message(path, &message)
    {
        eprintln!("distillery-worker: cannot write the termination message to {}: {e}", path.display());
    }
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("distillery-worker: {}", failure.message);
            failure.exit_code()
        }
    }
}

/// Writes `artifact`'s held-out split to `output` as `text,label` CSV (labels by name).
fn write_held_out(artifact: &Path, output: &Path) -> Result<String, String> {
    let examples = onnx::artifact::held_out(artifact, None).map_err(|e| e.to_string())?;
    let config_path = artifact.join("config.json");
    let config: serde_json::Value = std::fs::read(&config_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let name = |label: u32| {
        config["id2label"][label.to_string()]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{}: id2label has no class {label}", config_path.display()))
    };
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", output.display());
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| fail(&e))?;
    }
    let mut csv = csv::Writer::from_path(output).map_err(|e| fail(&e))?;
    csv.write_record(["text", "label"]).map_err(|e| fail(&e))?;
    for (text, label) in &examples {
        csv.write_record([text.as_str(), name(*label)?.as_str()]).map_err(|e| fail(&e))?;
    }
    csv.flush().map_err(|e| fail(&e))?;
    Ok(format!("{} held-out examples written to {}", examples.len(), output.display()))
}

/// Runs a Benchmark and reports as `distill` does: the summary (or the error) in the termination
/// message, the table and the report's location on stdout, exit 2 for a failure the same spec
/// would meet again.
fn run_benchmark(
    source: &Source,
    resolved: &bench::plan::Resolved,
    server_binary: Option<&Path>,
    termination_message: Option<&Path>,
) -> ExitCode {
    let result = (|| -> Result<(String, String), bench::BenchError> {
        let (text, origin) = match source {
            Source::File(path) => (
                std::fs::read_to_string(path).map_err(|e| {
                    bench::BenchError::Plan(bench::plan::PlanError::Bad {
                        what: path.display().to_string(),
                        message: e.to_string(),
                    })
                })?,
                path.clone(),
            ),
            Source::Inline(text) => (text.clone(), PathBuf::from("DISTILLERY_BENCHMARK")),
        };
        let benchmark: distillery_crds::Benchmark = spec::parse_as(&text, &origin).map_err(|e| {
            bench::BenchError::Plan(bench::plan::PlanError::Bad {
                what: "the Benchmark".into(),
                message: e.to_string(),
            })
        })?;
        let plan = bench::plan::plan(&benchmark, resolved)?;
        let resolver = crate::store::Resolver::for_spec(benchmark.spec.s3.as_ref())?;
        let binary = bench::server::server_binary(server_binary);
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| {
            bench::BenchError::Target { target: "-".into(), message: format!("cannot start the runtime: {e}") }
        })?;
        let report = runtime
            .block_on(bench::run(&plan, &binary, &resolver, &mut |line| eprintln!("distillery-worker: {line}")))?;
        let dir = runtime.block_on(bench::write_report(&report, &plan, &resolver))?;
        let summary = serde_json::to_string(&report.summary()).expect("the summary serializes");
        let location = match &plan.report_dir {
            Some(_) => dir.join("report.html").display().to_string(),
            None => format!("{}/report.html (written in {} first)", plan.report_uri, dir.display()),
        };
        let table = format!("{}\nreport: {location}\n", bench::report::table(&report));
        Ok((summary, table))
    })();
    let message = match &result {
        Ok((summary, _)) => summary.clone(),
        Err(e) => e.to_string(),
    };
    if let Some(path) = termination_message
        && let Err(e) = cluster::write_termination_message(path, &message)
    {
        eprintln!("distillery-worker: cannot write the termination message to {}: {e}", path.display());
    }
    match result {
        Ok((_, table)) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("distillery-worker: {e}");
            let code =
                if e.is_permanent() { distillery_crds::exit::PERMANENT } else { distillery_crds::exit::TRANSIENT };
            ExitCode::from(code as u8)
        }
    }
}

/// Ends a command the way `distill` does: the output (or the error) in the termination message;
/// the output on stdout and exit 0, or the error on stderr and exit 1.
fn conclude(result: Result<String, String>, termination_message: Option<&Path>) -> ExitCode {
    let message = match &result {
        Ok(out) | Err(out) => out,
    };
    if let Some(path) = termination_message
        && let Err(e) = cluster::write_termination_message(path, message)
    {
        eprintln!("distillery-worker: cannot write the termination message to {}: {e}", path.display());
    }
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("distillery-worker: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A message on one line.
fn excerpt_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The verdict on one run alone, for a person: every check, the errors, and the verdict.
fn report_verdict(run: &AnalysisRun, thresholds: &Thresholds) {
    let judged = judge(run.golden.as_ref(), run.live.as_ref(), &run.errors, thresholds);
    for check in &judged.checks {
        eprintln!("distillery-worker: analyze: {check}");
    }
    for error in &run.errors {
        eprintln!("distillery-worker: analyze: error: {error}");
    }
    eprintln!("distillery-worker: analyze: verdict {:?} (this run's evidence alone)", judged.verdict);
}

/// Why `distill` failed, and whether running the same spec again could help: the exit code
/// tells the Job's `podFailurePolicy` ([`distillery_crds::exit`]).
#[derive(Debug)]
struct Failure {
    message: String,
    policy: ErrorPolicy,
}

impl Failure {
    /// Retrying the same spec fails again.
    fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), policy: ErrorPolicy::WaitForSpecChange }
    }

    /// A retry may get past it.
    fn transient(message: impl Into<String>) -> Self {
        Self { message: message.into(), policy: ErrorPolicy::Retry }
    }

    fn exit_code(&self) -> ExitCode {
        let code = match self.policy {
            ErrorPolicy::WaitForSpecChange => distillery_crds::exit::PERMANENT,
            ErrorPolicy::Retry => distillery_crds::exit::TRANSIENT,
        };
        ExitCode::from(code as u8)
    }
}

impl From<DistillError> for Failure {
    fn from(e: DistillError) -> Self {
        Self { message: e.to_string(), policy: e.policy() }
    }
}

/// The device training runs on: the CPU when the spec asks for no GPU; else the first CUDA GPU.
/// A spec that asks for a GPU fails rather than train on the CPU while a GPU sits reserved: on a
/// worker built without CUDA permanently (the image is wrong for the spec), on a node without a
/// usable GPU transiently (a driver or device-plugin fault; a retry may land elsewhere).
fn device(job: &DistillationJob) -> Result<Device, Failure> {
    let gpus = job.spec.resources.gpu.count;
    if gpus == 0 {
        return Ok(Device::Cpu);
    }
    if !cfg!(feature = "cuda") {
        return Err(Failure::permanent(format!(
            "spec.resources.gpu.count is {gpus} but this distillery-worker is built without CUDA: run the CUDA worker image \
             (the operator's --worker-cuda-image), or set spec.resources.gpu.count: 0 to train on the CPU"
        )));
    }
    Device::new_cuda(0).map_err(|e| {
        Failure::transient(format!(
            "spec.resources.gpu.count is {gpus} but no CUDA GPU is usable in this pod: {e} (check the node's GPU and its device plugin)"
        ))
    })
}

/// Where the DistillationJob comes from.
enum Source {
    /// A file (`--file`).
    File(PathBuf),
    /// The document itself (`--job`, `DISTILLERY_JOB`).
    Inline(String),
}

/// How `distill` runs besides the spec.
struct RunOptions {
    report_status: bool,
    output: Option<String>,
    /// `--teacher-outputs` and `--teacher-shards`.
    teacher_shards: Option<ShardedOutputs>,
}

/// Reads and validates the DistillationJob.
fn load_job(source: &Source) -> Result<DistillationJob, Failure> {
    match source {
        Source::File(path) => spec::load(path),
        Source::Inline(text) => spec::parse(text, Path::new("$DISTILLERY_JOB")),
    }
    .map_err(|e| Failure::permanent(e.to_string()))
}

/// Refuses sharded teacher outputs for a job that is not causal-lm (`what` is the flag).
fn require_causal_lm(job: &DistillationJob, what: &str) -> Result<(), Failure> {
    if job.spec.task == Task::CausalLm {
        return Ok(());
    }
    Err(Failure::permanent(format!(
        "{what}: spec.task is {:?}; teacher outputs computed in shards by separate pods are built for causal-lm jobs only (this job computes its teacher outputs in its distill pod)",
        job.spec.task
    )))
}

/// Computes and writes one shard of a causal-LM job's teacher outputs; returns the JSON summary
/// for the termination message.
fn teacher_shard(source: &Source, target: &ShardedOutputs, shard: usize) -> Result<String, Failure> {
    target.check_shard(shard).map_err(DistillError::from)?;
    let job = load_job(source)?;
    require_causal_lm(&job, "teacher-outputs")?;
    let resolver = crate::data::inputs::resolver(&job).map_err(|e| Failure::permanent(e.to_string()))?;
    let local = shards::local_dir(&resolver, &target.uri).map_err(DistillError::from)?;
    let device = device(&job)?;
    let name = job.metadata.name.as_deref().unwrap_or("(unnamed)");
    let mut reporter = progress::for_stderr();
    reporter.report(&Event::Stage {
        stage: ProgressStage::Starting,
        message: format!(
            "DistillationJob {name}: spec is valid; teacher outputs shard {shard} of {} to {}; device {device:?}",
            target.shards, target.uri
        ),
    });
    let cache_root = cache_dir();
    let run = pipeline::RunContext {
        job: &job,
        output: &local,
        cache_root: &cache_root,
        device: &device,
        resolver: &resolver,
        spec_hash: pipeline::spec_hash(&job),
        teacher_shards: None,
    };
    let record = pipeline::causal_lm::write_teacher_shard(&run, target, shard, reporter.as_mut())?;
    drop(reporter);
    println!(
        "DistillationJob {name}: teacher outputs shard {shard} of {}: training sequences {:?} ({} positions), held-out sequences {:?} ({} positions), written to {}",
        target.shards,
        record.train.range,
        record.train.positions,
        record.held_out.range,
        record.held_out.positions,
        target.uri
    );
    let summary = serde_json::json!({
        "shard": shard,
        "shards": target.shards,
        "uri": target.uri,
        "record": target.record_name(shard),
        "trainPositions": record.train.positions,
        "heldOutPositions": record.held_out.positions,
    });
    Ok(summary.to_string())
}

/// Runs the job; returns the JSON summary for the termination message.
fn distill(source: &Source, options: &RunOptions) -> Result<String, Failure> {
    let job = load_job(source)?;
    if options.teacher_shards.is_some() {
        require_causal_lm(&job, "--teacher-outputs")?;
    }
    let resolver = crate::data::inputs::resolver(&job).map_err(|e| Failure::permanent(e.to_string()))?;
    let (output, uri) = pipeline::output_location(&job, options.output.as_deref(), &resolver).map_err(|e| {
        let field = if options.output.is_some() { "--output" } else { "spec.output.uri" };
        Failure::permanent(format!("{field}: {e}"))
    })?;
    let remote = crate::store::is_remote(&uri);
    let device = device(&job)?;
    let name = job.metadata.name.as_deref().unwrap_or("(unnamed)");
    let mut reporter = progress::for_stderr();
    if options.report_status {
        reporter = Box::new(cluster::StatusReporter::new(&job, reporter).map_err(Failure::transient)?);
    }
    let written_to = if remote {
        format!("{uri} (written in {} first, then uploaded)", output.display())
    } else {
        output.display().to_string()
    };
    reporter.report(&Event::Stage {
        stage: ProgressStage::Starting,
        message: format!("DistillationJob {name}: spec is valid; output {written_to}; device {device:?}"),
    });
    let spec_hash = pipeline::spec_hash(&job);
    if remote {
        // Before the hours of work: the bucket is reachable and holds no other spec's artifact.
        crate::store::block_on(pipeline::check_remote_output(resolver.store(), &uri, &spec_hash))?;
    }
    let shards = options.teacher_shards.clone();
    let outcome = pipeline::run(&job, &output, &cache_dir(), &device, reporter.as_mut(), &resolver, shards)?;
    if remote {
        reporter.report(&Event::Stage {
            stage: ProgressStage::WritingArtifact,
            message: format!("uploading the artifact to {uri} (every file, then the manifest)"),
        });
        pipeline::publish(&resolver, &output, &uri, &spec_hash)?;
    }
    println!("\nDistillationJob {name}");
    print!("{}", outcome.table);
    for warning in &outcome.manifest.warnings {
        println!("WARNING {}: {}", warning.reason, warning.message);
    }
    println!("artifact: {written_to}");
    drop(reporter);
    let summary = cluster::summary(&outcome, &uri)
        .map_err(|e| Failure::transient(format!("cannot read the manifest just written: {e}")))?;
    Ok(serde_json::to_string(&summary).expect("the summary serializes"))
}

/// The job an artifact was made from: `--file`, or the artifact's `job.json`.
fn artifact_job(artifact: &Path, file: Option<&Path>) -> Result<DistillationJob, String> {
    let path = file.map_or_else(|| artifact.join(onnx::artifact::JOB_FILE), Path::to_path_buf);
    if file.is_none() && !path.is_file() {
        return Err(format!(
            "{} not found: this artifact does not record its DistillationJob; pass the spec with --file",
            path.display()
        ));
    }
    spec::load(&path).map_err(|e| e.to_string())
}

/// [`artifact_job`] for `export` and `quantize`, which rebuild a classifier's ONNX files: a
/// causal-LM artifact's are built (and gated) by the `distill` run that trained it.
fn classifier_artifact_job(artifact: &Path, file: Option<&Path>, command: &str) -> Result<DistillationJob, String> {
    let job = artifact_job(artifact, file)?;
    if job.spec.task == Task::CausalLm {
        return Err(format!(
            "{}: a causal-lm artifact; `{command} -a` rebuilds classifiers' ONNX files. A causal-lm student's model.onnx and model.int8.onnx are exported, checked and gated by its `distill` run: run it again (with the quantization settings you want) to rebuild them",
            artifact.display()
        ));
    }
    Ok(job)
}

fn export(artifact: &Path, file: Option<&Path>, library: Option<&Path>) -> Result<String, String> {
    onnx::runtime::init(library).map_err(|e| e.to_string())?;
    let job = classifier_artifact_job(artifact, file, "export")?;
    let eval = onnx::artifact::eval_set(artifact, Some(&job)).map_err(|e| e.to_string())?;
    let mut reporter = progress::for_stderr();
    let v = onnx::artifact::export_artifact(artifact, &eval, reporter.as_mut()).map_err(|e| e.to_string())?;
    Ok(format!(
        "{}: {:.1} MB, held-out accuracy {:.2}% on {} examples, max |Δlogit| vs candle {:.1e}; {:.2} ms at batch 1, {:.2} ms at batch 32 (1 thread)",
        artifact.join(FP32_MODEL).display(),
        v.size_bytes as f64 / 1e6,
        v.accuracy * 100.0,
        eval.ids.len(),
        v.max_abs_logit_diff.unwrap_or_default(),
        v.latency_ms_batch1,
        v.latency_ms_batch32.unwrap_or(f64::NAN)
    ))
}

fn quantize(
    artifact: &Path,
    file: Option<&Path>,
    budget: Option<f64>,
    speed_check: Option<bool>,
    library: Option<&Path>,
) -> Result<String, String> {
    onnx::runtime::init(library).map_err(|e| e.to_string())?;
    let job = classifier_artifact_job(artifact, file, "quantize")?;
    let mut spec = job.spec.quantization.clone();
    if let Some(b) = budget {
        if !(0.0..=1.0).contains(&b) {
            return Err(format!("--accuracy-budget {b}: must be between 0 and 1 (0.01 = one point)"));
        }
        spec.accuracy_budget = b;
    }
    if let Some(s) = speed_check {
        spec.speed_check = s;
    }
    let eval = onnx::artifact::eval_set(artifact, Some(&job)).map_err(|e| e.to_string())?;
    let mut reporter = progress::for_stderr();
    let out =
        onnx::artifact::quantize_artifact(artifact, &eval, &spec, reporter.as_mut()).map_err(|e| e.to_string())?;
    Ok(onnx::artifact::variant_table(&out.fp32, &out.int8)
        + &format!("served: {} — {}", out.verdict.variant(), out.verdict.reason()))
}

/// Texts from a file, one per non-empty line (gzip or bzip2 by its name), read as a transfer
/// set is.
fn read_texts(path: &Path) -> Result<Vec<String>, String> {
    let spec = TransferSet {
        uri: format!("file://{}", path.display()),
        format: DataFormat::Text,
        compression: Compression::Auto,
        text_field: String::new(),
    };
    let texts = crate::data::dataset::read_transfer(path, &spec).map_err(|e| e.to_string())?;
    if texts.is_empty() {
        return Err(format!("{}: no texts (one per line)", path.display()));
    }
    Ok(texts)
}

/// `--texts FILE`, else the held-out texts of the artifact's `job.json`.
fn texts_for(artifact: Option<&Path>, texts: Option<&Path>) -> Result<Vec<String>, String> {
    match (texts, artifact) {
        (Some(path), _) => read_texts(path),
        (None, Some(dir)) => Ok(onnx::artifact::held_out(dir, None)
            .map_err(|e| format!("{e} (pass --texts FILE instead)"))?
            .into_iter()
            .map(|(t, _)| t)
            .collect()),
        (None, None) => Err("give --artifact DIR or --texts FILE".into()),
    }
}

fn generate(artifact: &Path, prompts: &[String], sampling: Sampling) -> Result<String, String> {
    let device = Device::Cpu;
    let model = LanguageModel::load(artifact, &device).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for prompt in prompts {
        let continuation = model.generate(prompt, sampling, &device).map_err(|e| e.to_string())?;
        out += &format!("{prompt}{continuation}\n");
    }
    Ok(out)
}

fn predict(
    artifact: &Path,
    variant: VariantChoice,
    texts: Option<&Path>,
    batch_size: usize,
    library: Option<&Path>,
) -> Result<String, String> {
    onnx::runtime::init(library).map_err(|e| e.to_string())?;
    let (served, bytes) = ServedArtifact::load(artifact, variant).map_err(|e| e.to_string())?;
    let texts = texts_for(Some(artifact), texts)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = distillery_model::tokenize::encode_all(&served.tokenizer, &refs).map_err(|e| e.to_string())?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut model = onnx::runtime::OnnxModel::new(&bytes, threads).map_err(|e| e.to_string())?;
    let logits = model.logits(&ids, batch_size).map_err(|e| e.to_string())?;
    let lines: Vec<String> = texts
        .iter()
        .zip(&logits)
        .map(|(text, l)| {
            let label = &served.labels[distillery_model::argmax(l)];
            serde_json::json!({"text": text, "label": label, "logits": l}).to_string()
        })
        .collect();
    eprintln!(
        "distillery-worker: {} predictions of {} ({}, sha256 {})",
        lines.len(),
        artifact.display(),
        served.variant,
        &served.digest[..12]
    );
    Ok(lines.join("\n"))
}

/// The load levels of `loadtest`.
struct Load {
    concurrency: Vec<usize>,
    rate: Option<f64>,
    connections: usize,
    duration_seconds: f64,
    warmup_seconds: f64,
}

fn loadtest(
    targets: &[String],
    model: &str,
    artifact: Option<&Path>,
    texts: Option<&Path>,
    load: &Load,
    json: Option<&Path>,
) -> Result<String, String> {
    let targets = targets
        .iter()
        .map(|t| match t.split_once('=') {
            Some((name, url)) => loadgen::Target::new(name, url, model),
            None => loadgen::Target::new("server", t, model),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !positive(load.duration_seconds) || !(positive(load.warmup_seconds) || load.warmup_seconds == 0.0) {
        return Err("--duration-seconds must be above 0 and --warmup-seconds at least 0".into());
    }
    if load.rate.is_some_and(|r| !positive(r)) {
        return Err("--rate must be above 0 requests per second".into());
    }
    let bodies: std::sync::Arc<Vec<_>> =
        std::sync::Arc::new(texts_for(artifact, texts)?.iter().map(|t| loadgen::text_request(t)).collect());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let duration = std::time::Duration::from_secs_f64(load.duration_seconds);
    let warmup = std::time::Duration::from_secs_f64(load.warmup_seconds);
    let reports = runtime.block_on(async {
        let mut reports = Vec::new();
        for target in &targets {
            loadgen::wait_ready(target, std::time::Duration::from_secs(60)).await?;
            match load.rate {
                Some(rate) => {
                    let stop = loadgen::Stop::After(duration);
                    reports.push(loadgen::open_loop(target, bodies.clone(), rate, load.connections, 0, stop).await?)
                }
                None => {
                    for &c in &load.concurrency {
                        let (warmup, stop) = (loadgen::Warmup::Time(warmup), loadgen::Stop::After(duration));
                        let r = loadgen::closed_loop(target, bodies.clone(), c, warmup, stop).await?;
                        eprintln!(
                            "distillery-worker: {} at concurrency {c}: {:.1} req/s, p99 {:.2} ms",
                            r.target, r.throughput, r.p99_ms
                        );
                        reports.push(r);
                    }
                }
            }
        }
        Ok::<_, loadgen::LoadError>(reports)
    });
    let reports = reports.map_err(|e| e.to_string())?;
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&reports).expect("reports serialize");
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(loadgen::table(&reports))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn teacher_outputs_takes_its_shard_and_distill_both_shard_flags_or_neither() {
        let argv = ["distillery-worker", "teacher-outputs", "-f", "j.yaml", "--shard", "1", "--shards", "2"];
        let cli = Cli::try_parse_from(argv.iter().chain(&["--output", "s3://b/t"])).unwrap();
        let Command::TeacherOutputs { shard, shards, output, .. } = cli.command else {
            panic!("not parsed as teacher-outputs");
        };
        assert_eq!((shard, shards, output.as_str()), (1, 2, "s3://b/t"));
        for (args, ok) in [
            (&["--teacher-outputs", "/o", "--teacher-shards", "2"][..], true),
            (&["--teacher-outputs", "/o"][..], false),
            (&["--teacher-shards", "2"][..], false),
            (&["--teacher-outputs", "/o", "--teacher-shards", "0"][..], false),
        ] {
            let mut argv = vec!["distillery-worker", "distill", "-f", "j.yaml"];
            argv.extend_from_slice(args);
            assert_eq!(Cli::try_parse_from(argv).is_ok(), ok, "{args:?}");
        }
    }
}
