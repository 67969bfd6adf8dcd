//! The `distillery-worker` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use distillery_crds::DistillationJob;

use candle_core::Device;
use distillery_crds::cache::cache_dir;

use crate::progress::{self, Event};
use crate::{distill, spec};

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
        #[arg(short = 'f', long = "file", env = "DISTILLERY_JOB_FILE")]
        file: PathBuf,
        /// Write the artifact here instead of the spec's `output.uri`.
        #[arg(long, env = "DISTILLERY_OUTPUT")]
        output: Option<PathBuf>,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Distill { file, output } => match distill(&file, output.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("distillery-worker: {message}");
                ExitCode::FAILURE
            }
        },
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

fn distill(file: &Path, output: Option<&Path>) -> Result<(), String> {
    let job: DistillationJob = spec::load(file).map_err(|e| e.to_string())?;
    let output = distill::output_dir(&job, output).map_err(|e| format!("spec.output.uri: {e}"))?;
    let device = device(&job)?;
    let name = job.metadata.name.as_deref().unwrap_or("(unnamed)");
    let mut reporter = progress::for_stderr();
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
    Ok(())
}
