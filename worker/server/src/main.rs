//! `distillery-server` command line: loads ONNX Runtime, binds the port, serves until SIGTERM or
//! Ctrl-C, then drains.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use distillery_server::config::Config;

fn main() -> ExitCode {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level).unwrap_or_else(|e| {
        eprintln!("distillery-server: invalid --log-level {:?} ({e}); using info", config.log_level);
        tracing_subscriber::EnvFilter::new("info")
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match distillery_model::runtime::load(config.ort_library.as_deref()) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("distillery-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(ort = %runtime.info, "loaded ONNX Runtime");
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let result = tokio.block_on(async {
        let address = SocketAddr::new(config.address, config.port);
        let listener =
            tokio::net::TcpListener::bind(address).await.map_err(|e| format!("cannot listen on {address}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        // Tests and scripts read the port from this line when --port is 0.
        eprintln!("distillery-server: listening on http://{bound}");
        distillery_server::serve(config, listener, runtime.environment, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("distillery-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
