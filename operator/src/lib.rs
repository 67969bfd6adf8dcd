//! The Distillery operator.
//!
//! `run` connects to the cluster, serves health and metrics endpoints, waits until the Distillery
//! CRDs are served, takes the leader Lease (when leader election is on) and runs the controllers
//! until SIGTERM. Each controller is a pipeline — read → validate → build → apply → status — in a
//! module of its own ([`distillation`], [`modeldeployment`], [`benchmark`]); see
//! docs/architecture.md.

pub mod benchmark;
pub mod config;
pub mod context;
pub mod distillation;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod modeldeployment;
pub mod names;
pub mod objects;
pub mod pipeline;
pub mod telemetry;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use config::RunArgs;
use http::Shared;
use tokio::sync::watch;

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
    /// This replica lost the leader Lease; it stops so that only the new leader reconciles (the
    /// Deployment restarts it as a follower).
    #[error("lost the leader Lease {0}")]
    LostLeadership(String),
}

/// A shutdown signal many tasks can wait for.
#[derive(Clone)]
struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> Result<(), Error> {
    let shared = Shared::new();
    let client = kube::Client::try_default().await.map_err(Error::Config)?;
    let address = format!("{}:{}", args.http_address, args.http_port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|source| Error::Listen { address: address.clone(), source })?;
    tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or(address), "serving /healthz, /readyz and /metrics");
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Shutdown(stop_rx);
    let signals = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        })
    };
    let server = tokio::spawn(
        axum::serve(listener, http::router(shared.clone())).with_graceful_shutdown(stop.clone().wait()).into_future(),
    );

    let outcome = tokio::select! {
        () = stop.clone().wait() => Ok(()),
        result = lead_and_reconcile(client, args, shared.clone(), stop.clone()) => result,
    };
    let _ = stop_tx.send(true);
    signals.abort();
    let served = server.await.unwrap_or(Ok(()));
    outcome?;
    served.map_err(Error::Serve)
}

async fn lead_and_reconcile(client: kube::Client, args: RunArgs, shared: Shared, stop: Shutdown) -> Result<(), Error> {
    wait_for_crds(&client, &shared).await;
    let elector = args.leader_election.then(|| {
        leader::Elector::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &args.identity,
            Duration::from_secs(15),
        )
    });
    if let Some(elector) = &elector {
        tracing::info!(lease = %args.lease_name, identity = %args.identity, "waiting to lead");
        loop {
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read or write the leader Lease"),
            }
            tokio::time::sleep(elector.renew_interval()).await;
        }
        tracing::info!(lease = %args.lease_name, "leading");
    }
    shared.metrics.leader.set(1);
    let metrics = shared.metrics.clone();
    let settings = distillation::build::WorkerSettings {
        default_image: args.worker_image.clone(),
        cuda_image: args.worker_cuda_image.clone(),
    };
    let mut ctx = context::Context::new(client, settings, args.worker_cluster_role.clone(), &args.identity, metrics);
    ctx.serving.server_image = args.server_image.clone();
    ctx.canary_ready_deadline = Duration::from_secs(args.canary_ready_deadline_seconds);
    ctx.concurrency = args.concurrency;
    let ctx = Arc::new(ctx);
    let controller = async {
        tokio::join!(
            distillation::run(ctx.clone(), stop.clone().wait()),
            modeldeployment::run(ctx.clone(), stop.clone().wait()),
            benchmark::run(ctx.clone(), stop.clone().wait())
        );
    };
    let result = match &elector {
        None => {
            controller.await;
            Ok(())
        }
        Some(elector) => {
            let renew = async {
                loop {
                    tokio::time::sleep(elector.renew_interval()).await;
                    match elector.try_acquire_or_renew().await {
                        Ok(true) => {}
                        Ok(false) => return Error::LostLeadership(args.lease_name.clone()),
                        Err(e) => tracing::warn!(error = %e, "cannot renew the leader Lease"),
                    }
                }
            };
            let result = tokio::select! {
                () = controller => Ok(()),
                lost = renew => Err(lost),
            };
            if result.is_ok()
                && let Err(e) = elector.release().await
            {
                tracing::warn!(error = %e, "cannot release the leader Lease");
            }
            result
        }
    };
    shared.metrics.leader.set(0);
    result
}

/// Returns once the API server serves all three Distillery kinds, and marks the operator ready;
/// retries with backoff and says what is missing meanwhile.
async fn wait_for_crds(client: &kube::Client, shared: &Shared) {
    let mut delay = Duration::from_secs(1);
    loop {
        match kube::discovery::group(client, distillery_crds::GROUP).await {
            Ok(group) => {
                let served: Vec<String> = group.recommended_resources().into_iter().map(|(r, _)| r.kind).collect();
                let missing: Vec<&str> = ["DistillationJob", "ModelDeployment", "Benchmark"]
                    .into_iter()
                    .filter(|k| !served.iter().any(|s| s == k))
                    .collect();
                if missing.is_empty() {
                    shared.ready.store(true, Ordering::Relaxed);
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
