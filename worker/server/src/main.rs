//! `distillery-server` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// ONNX Runtime inference server for Distillery model artifacts.
#[derive(Parser, Debug)]
#[command(name = "distillery-server", version, about)]
struct Args {
    /// Artifact directory to serve (with distillery.json, model.onnx / model.int8.onnx, tokenizer.json).
    #[arg(long, env = "DISTILLERY_MODEL")]
    model: Option<PathBuf>,
    /// HTTP port.
    #[arg(long, env = "DISTILLERY_PORT", default_value_t = 8080)]
    port: u16,
    /// Path of libonnxruntime.so.1.31.1.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_library: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match distillery_server::runtime::load(args.ort_library.as_deref()) {
        Ok(runtime) => eprintln!("distillery-server: loaded ONNX Runtime: {}", runtime.info),
        Err(e) => {
            eprintln!("distillery-server: {e}");
            return ExitCode::FAILURE;
        }
    }
    eprintln!(
        "distillery-server: serving is not built yet — the KServe V2 endpoints, batching and metrics are \
         the server issue's work. Nothing is listening on port {} (model: {}).",
        args.port,
        args.model.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "none given".into())
    );
    ExitCode::from(2)
}
