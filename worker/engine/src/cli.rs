//! The `distillery-worker` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use distillery_crds::DistillationJob;

use crate::{spec, store, teacher};

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

/// Exit code when the command is valid but the capability it asks for is not built yet.
pub const EXIT_NOT_BUILT: u8 = 2;

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Distill { file, output } => match distill(&file, output.as_deref()) {
            Ok(code) => code,
            Err(message) => {
                eprintln!("distillery-worker: {message}");
                ExitCode::FAILURE
            }
        },
    }
}

fn distill(file: &Path, output: Option<&Path>) -> Result<ExitCode, String> {
    let job: DistillationJob = spec::load(file).map_err(|e| e.to_string())?;
    let s = &job.spec;
    let teacher_dir = store::local_path(&s.teacher.uri).map_err(|e| e.to_string())?;
    let dataset = store::local_path(&s.dataset.uri).map_err(|e| e.to_string())?;
    let output = match output {
        Some(p) => p.to_path_buf(),
        None => store::local_path(&s.output.uri).map_err(|e| e.to_string())?,
    };
    if !dataset.is_file() {
        return Err(format!(
            "dataset {} does not exist (spec.dataset.uri; for the embedded default run scripts/setup.sh)",
            dataset.display()
        ));
    }
    let info = teacher::inspect(&teacher_dir).map_err(|e| format!("spec.teacher.uri: {e}"))?;
    let name = job.metadata.name.as_deref().unwrap_or("(unnamed)");
    println!("DistillationJob {name}: spec is valid");
    println!(
        "  teacher  {}: BERT, {} layers, hidden {}, {} heads, vocab {} — {:.1}M parameters in {} tensors ({:.1} MB){}",
        teacher_dir.display(),
        info.config.num_hidden_layers,
        info.config.hidden_size,
        info.config.num_attention_heads,
        info.tokenizer_vocab,
        info.parameters as f64 / 1e6,
        info.tensors,
        info.weights_bytes as f64 / 1e6,
        if info.has_classifier { ", with a classifier head" } else { ", no task head" }
    );
    println!("  dataset  {}", dataset.display());
    println!("  output   {}", output.display());
    println!(
        "\nNot built yet: the distillation engine (teacher preparation, KD training, evaluation, artifact writing) \
         is the worker issue's work. Nothing was trained and nothing was written."
    );
    Ok(ExitCode::from(EXIT_NOT_BUILT))
}
