//! The Distillery operator.
//!
//! Today `run` connects to the cluster, waits until the Distillery CRDs are served, and serves
//! health and metrics endpoints. The controllers (DistillationJob first) are built as pipelines —
//! read → validate → build → apply → status — in modules of their own; see DESIGN.md.

pub mod config;
pub mod http;
pub mod metrics;
pub mod telemetry;

use std::sync::atomic::Ordering;
use std::time::Duration;

use config::RunArgs;
use http::Shared;

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot configure a Kubernetes client (in-cluster service account or KUBECONFIG): {0}")]
    Config(#[source] kube::Error),
    /// The HTTP endpoint could not bind.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address asked for.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP endpoint failed.
    #[error("HTTP endpoint failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> Result<(), Error> {
    let shared = Shared::new();
    let client = kube::Client::try_default().await.map_err(Error::Config)?;
    let address = format!("{}:{}", args.http_address, args.http_port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|source| Error::Listen { address: address.clone(), source })?;
    tracing::info!(%address, "serving /healthz, /readyz and /metrics");
    let watcher = tokio::spawn(wait_for_crds(client, shared.clone()));
    let served = axum::serve(listener, http::router(shared)).with_graceful_shutdown(shutdown_signal()).await;
    watcher.abort();
    served.map_err(Error::Serve)
}

/// Marks the operator ready once the API server serves all three Distillery kinds; retries with
/// backoff and says what is missing meanwhile.
async fn wait_for_crds(client: kube::Client, shared: Shared) {
    let mut delay = Duration::from_secs(1);
    loop {
        match kube::discovery::group(&client, distillery_crds::GROUP).await {
            Ok(group) => {
                let served: Vec<String> = group.recommended_resources().into_iter().map(|(r, _)| r.kind).collect();
                let missing: Vec<&str> = ["DistillationJob", "ModelDeployment", "Benchmark"]
                    .into_iter()
                    .filter(|k| !served.iter().any(|s| s == k))
                    .collect();
                if missing.is_empty() {
                    shared.ready.store(true, Ordering::Relaxed);
                    shared.metrics.leader.set(1);
                    tracing::info!("Distillery CRDs are served; ready");
                    return;
                }
                tracing::warn!(?missing, "CRDs not installed: kubectl apply --server-side -f charts/distillery/crds/");
            }
            Err(e) => tracing::warn!(error = %e, "API group distillery.dev not reachable yet"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
