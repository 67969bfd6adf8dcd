//! `distillery-server`: the ONNX Runtime inference server a ModelDeployment runs, speaking the
//! KServe V2 Open Inference Protocol over HTTP. It links ONNX Runtime (through `ort`, loaded
//! dynamically) and never candle.
//!
//! The pipeline of a request: [`http`] parses it ([`protocol`]) and tokenizes texts
//! ([`tokenize`]), queues it ([`batching`]) and awaits the reply; model threads ([`engine`]) take
//! batches off the queue and run them in ONNX Runtime ([`session`]); [`metrics`] counts it all.
//! [`serve`] loads the artifact ([`artifact`]) while the server is already live, warms the model
//! up, turns ready, and on shutdown drains in-flight requests before it returns.

pub mod batching;
pub mod config;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod process;
pub mod protocol;

use std::future::{Future, IntoFuture};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ort::environment::Environment;

use crate::batching::Queue;
use crate::config::Config;
use crate::engine::Engine;
use crate::http::Shared;
use crate::metrics::{Metrics, ModelLabels};
use distillery_model::artifact::{self, ArtifactError, ServedArtifact};
use distillery_model::session::{OnnxSession, SessionError};

/// Why the server stopped with an error. Every one ends the process with a non-zero status.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The artifact cannot be served.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// ONNX Runtime refused the model or failed warming it up.
    #[error("{0}")]
    Session(#[from] SessionError),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

/// The model's name in the protocol: `--model-name`, else the artifact directory's name (the
/// last segment of an `s3://` key).
pub fn model_name(config: &Config) -> Result<String, ArtifactError> {
    if let Some(name) = &config.model_name {
        return Ok(name.clone());
    }
    if let Some(key) = config.model.strip_prefix("s3://") {
        let name = key.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
        return Ok(if name.is_empty() { "model".into() } else { name.to_string() });
    }
    let dir = artifact::resolve(&config.model)?;
    let name = dir.canonicalize().unwrap_or(dir).file_name().map(|n| n.to_string_lossy().into_owned());
    Ok(name.filter(|n| !n.is_empty()).unwrap_or_else(|| "model".into()))
}

/// Loads the artifact in `dir` and one warmed-up session per model thread.
fn load(
    config: &Config,
    dir: &std::path::Path,
    environment: &Environment,
) -> Result<(ServedArtifact, Vec<OnnxSession>), ServeError> {
    let (artifact, model) = ServedArtifact::load_expecting(dir, config.variant, config.expect_digest.as_deref())?;
    let limits = config.batch_limits();
    // A warm-up batch as long and as wide as a real one: ONNX Runtime plans its buffers on the
    // first runs, which would otherwise be the first clients' latency.
    let len = artifact.max_sequence_length.min(artifact.max_positions).max(2);
    let warm: Vec<Vec<u32>> = (0..limits.max_batch_size.min(limits.max_batch_tokens / len).max(1))
        .map(|k| vec![1; 2 + (k * 7) % (len - 1)])
        .collect();
    let mut sessions = Vec::new();
    for _ in 0..config.model_threads() {
        let mut session = OnnxSession::new(environment, &model, config.threads as usize)?;
        for batch in [&warm[..1], &warm[..]] {
            let refs: Vec<&[u32]> = batch.iter().map(Vec::as_slice).collect();
            session.run(&refs)?;
        }
        sessions.push(session);
    }
    Ok((artifact, sessions))
}

/// Serves `config.model` on `listener` until `shutdown` resolves, then drains: readiness fails,
/// new inferences get 503, in-flight requests finish (for at most `--drain-timeout-seconds`) and
/// the model threads finish what is queued.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    environment: Environment,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let name = model_name(&config)?;
    let queue = Arc::new(Queue::new(config.max_queue as usize));
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared {
        name: name.clone(),
        model: OnceLock::new(),
        queue: queue.clone(),
        metrics: metrics.clone(),
        draining: Default::default(),
    });
    let draining = Arc::new(tokio::sync::Notify::new());
    let server = {
        let (shared, draining) = (shared.clone(), draining.clone());
        axum::serve(listener, http::router(shared.clone(), config.max_body_bytes)).with_graceful_shutdown(async move {
            shutdown.await;
            shared.draining.store(true, Ordering::Relaxed);
            shared.metrics.ready.set(0);
            tracing::info!("shutting down: draining in-flight requests");
            draining.notify_one();
        })
    };
    let mut server = tokio::spawn(server.into_future());

    let loading = {
        let config = config.clone();
        async move {
            // An s3:// model is downloaded and verified first, while the server already answers
            // (not ready).
            let dir = artifact::local_dir(&config.model, &config.s3_settings(), &config.model_cache()).await?;
            tokio::task::spawn_blocking(move || load(&config, &dir, &environment))
                .await
                .expect("the loading thread panicked")
        }
    };
    let loaded = tokio::select! {
        loaded = loading => loaded,
        stopped = &mut server => {
            tracing::info!("stopped before the model finished loading");
            return Ok(stopped.expect("the HTTP server task panicked")?);
        }
    };
    let (artifact, sessions) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            server.abort();
            return Err(e);
        }
    };
    let threads = sessions.len();
    let labels = Arc::new(artifact.labels.clone());
    let engine = Engine::start(sessions, queue, config.batch_limits(), metrics.clone(), labels);
    metrics.set_model(ModelLabels {
        model: name.clone(),
        variant: artifact.variant.clone(),
        digest: artifact.digest.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
    });
    tracing::info!(
        model = %name,
        variant = %artifact.variant,
        sha256 = %artifact.digest,
        model_threads = threads,
        intra_op_threads = config.threads,
        "model loaded and warmed up: ready"
    );
    shared.model.set(artifact).ok();
    metrics.ready.set(1);

    let drain = Duration::from_secs(config.drain_timeout_seconds);
    let result = tokio::select! {
        done = &mut server => done.expect("the HTTP server task panicked"),
        _ = async { draining.notified().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(seconds = drain.as_secs(), "in-flight requests did not finish within the drain timeout");
            server.abort();
            Ok(())
        }
    };
    tokio::task::spawn_blocking(move || engine.stop()).await.ok();
    tracing::info!("stopped");
    Ok(result?)
}
