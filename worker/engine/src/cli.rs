//! The `distillery-worker` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use distillery_crds::DistillationJob;

use candle_core::Device;
use distillery_crds::cache::cache_dir;

use crate::progress::{self, Event};
use crate::{cluster, distill, spec};

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
        /// Write the artifact here instead of the spec's `output.uri`.
        #[arg(long, env = "DISTILLERY_OUTPUT")]
        output: Option<PathBuf>,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Distill { file, job, report_status, termination_message, output } => {
            let source = match (file, job) {
                (Some(path), _) => Source::File(path),
                (None, Some(text)) => Source::Inline(text),
                (None, None) => unreachable!("clap requires one of --file and --job"),
            };
            let options = RunOptions { report_status, output };
            let result = distill(&source, &options);
            let message = match &result {
                Ok(summary) => summary.clone(),
                Err(message) => message.clone(),
            };
            if let Some(path) = &termination_message
                && let Err(e) = cluster::write_termination_message(path, &message)
            {
                eprintln!("distillery-worker: cannot write the termination message to {}: {e}", path.display());
            }
            match result {
                Ok(_) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("distillery-worker: {message}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The device training runs on: the first CUDA GPU when built with `cuda` and the spec asks for a
/// GPU, else the CPU.
fn device(job: &DistillationJob) -> Result<Device, String> {
    if job.spec.resources.gpu.count == 0 || !cfg!(feature = "cuda") {
        return Ok(Device::Cpu);
    }
    Device::new_cuda(0).map_err(|e| format!("spec.resources.gpu asks for a GPU but CUDA is unusable: {e}"))
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
    output: Option<PathBuf>,
}

/// Runs the job; returns the JSON summary for the termination message.
fn distill(source: &Source, options: &RunOptions) -> Result<String, String> {
    let job: DistillationJob = match source {
        Source::File(path) => spec::load(path),
        Source::Inline(text) => spec::parse(text, Path::new("$DISTILLERY_JOB")),
    }
    .map_err(|e| e.to_string())?;
    let output = distill::output_dir(&job, options.output.as_deref()).map_err(|e| format!("spec.output.uri: {e}"))?;
    let device = device(&job)?;
    let name = job.metadata.name.as_deref().unwrap_or("(unnamed)");
    let mut reporter = progress::for_stderr();
    if options.report_status {
        reporter = Box::new(cluster::StatusReporter::new(&job, reporter)?);
    }
    reporter.report(&Event::Stage {
        stage: "job".into(),
        message: format!("DistillationJob {name}: spec is valid; output {}; device {device:?}", output.display()),
    });
    let outcome = distill::run(&job, &output, &cache_dir(), &device, reporter.as_mut()).map_err(|e| e.to_string())?;
    let m = &outcome.manifest.metrics;
    println!("\nDistillationJob {name} — held-out accuracy on {} examples", m["heldOutExamples"]);
    print!("{}", distill::table(&outcome.rows));
    println!(
        "retention {:.1}% of the teacher's accuracy with {:.1}% of its parameters; distillation adds {:+.2} points over labels alone",
        m["retention"] * 100.0,
        m["parameterFraction"] * 100.0,
        m["distillationGain"] * 100.0
    );
    println!("artifact: {}", outcome.output.display());
    drop(reporter);
    let uri = match &options.output {
        Some(dir) => format!("file://{}", dir.display()),
        None => job.spec.output.uri.clone(),
    };
    let summary =
        cluster::summary(&outcome, &uri).map_err(|e| format!("cannot read the manifest just written: {e}"))?;
    Ok(serde_json::to_string(&summary).expect("the summary serializes"))
}
