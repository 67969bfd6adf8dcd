//! `distillery-operator`: the binary the Helm chart runs. All logic lives in the library.

use clap::Parser;
use distillery_operator::config::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    distillery_operator::telemetry::init(&cli.log_level, cli.log_format);
    let result = match cli.command {
        Command::Run(args) => distillery_operator::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator stopped");
            eprintln!("distillery-operator: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
