//! The operator's HTTP endpoint: `/healthz` (the process is alive), `/readyz` (connected to the
//! API server and the Distillery CRDs are installed), `/metrics` (Prometheus text format).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// State shared between the reconcilers and the HTTP endpoint.
#[derive(Clone)]
pub struct Shared {
    /// Metrics to serve.
    pub metrics: Arc<Metrics>,
    /// Whether the operator is ready (API reachable, CRDs installed).
    pub ready: Arc<AtomicBool>,
}

impl Shared {
    /// Fresh state: not ready, metrics registered.
    pub fn new() -> Self {
        Self { metrics: Arc::new(Metrics::new()), ready: Arc::new(AtomicBool::new(false)) }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// The router serving the three endpoints.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    if shared.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: API server or Distillery CRDs not reachable yet")
    }
}

async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], shared.metrics.encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let response = router.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let shared = Shared::new();
        let router = router(shared.clone());
        assert_eq!(get(&router, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(&router, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        shared.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(&router, "/readyz").await.0, StatusCode::OK);
        let labels = crate::metrics::ControllerLabels { controller: "distillationjob".into() };
        shared.metrics.reconciles.get_or_create(&labels).inc_by(3);
        let (status, body) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(&format!("distillery_operator_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))),
            "{body}"
        );
        assert!(body.contains("distillery_operator_reconciles_total{controller=\"distillationjob\"} 3"), "{body}");
        assert_eq!(get(&router, "/nope").await.0, StatusCode::NOT_FOUND);
    }
}
