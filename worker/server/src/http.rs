//! The HTTP side: KServe V2 routes, `/metrics`, and the one mapping from each error kind to an
//! HTTP status ([`ApiError`]).
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /v2/health/live` | 200 while the process runs |
//! | `GET /v2/health/ready` | 200 once the model is loaded and warmed up; 503 before, and while draining |
//! | `GET /v2` | server metadata |
//! | `GET /v2/models/{name}` | model metadata (inputs, outputs, variant, digest) |
//! | `GET /v2/models/{name}/ready` | as `/v2/health/ready`, for that model |
//! | `POST /v2/models/{name}/infer` | inference |
//! | `GET /metrics` | Prometheus text format |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokenizers::Tokenizer;

use crate::batching::{Job, PushError, Queue};
use crate::metrics::Metrics;
use crate::protocol::{InferResponse, Inputs, OUTPUT_NAMES, output_tensors, parse_infer};
use distillery_model::artifact::ServedArtifact;
use distillery_model::tokenize::encode_all;

/// Seconds a client is told to wait after a 429 or 503.
pub const RETRY_AFTER_SECONDS: u64 = 1;
/// Requests with more texts than this are tokenized off the async runtime.
const INLINE_TOKENIZE_TEXTS: usize = 16;

/// Why a request failed; each kind has one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or invalid request: 400.
    #[error("{0}")]
    BadRequest(String),
    /// No such model or route: 404.
    #[error("{0}")]
    NotFound(String),
    /// The body or the number of texts is over the limit: 413.
    #[error("{0}")]
    TooLarge(String),
    /// The queue is full: 429 with `Retry-After`.
    #[error("the server is at capacity ({0} texts queued); retry after {RETRY_AFTER_SECONDS} s")]
    Overloaded(usize),
    /// Not ready yet, or draining: 503 with `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    /// The model failed: 500.
    #[error("inference failed: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this kind of error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, axum::Json(json!({"error": self.to_string()}))).into_response();
        if matches!(self, Self::Overloaded(_) | Self::Unavailable(_)) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

/// State shared by the handlers and the server's lifecycle.
pub struct Shared {
    /// The model's name in the protocol.
    pub name: String,
    /// Set once the model is loaded and warmed up.
    pub model: OnceLock<ServedArtifact>,
    /// The batching queue.
    pub queue: Arc<Queue>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM: readiness fails and new inferences get 503 while in-flight ones finish.
    pub draining: AtomicBool,
}

impl Shared {
    fn ready(&self) -> bool {
        self.model.get().is_some() && !self.draining.load(Ordering::Relaxed)
    }

    fn model(&self, name: &str) -> Result<&ServedArtifact, ApiError> {
        if name != self.name {
            return Err(ApiError::NotFound(format!(
                "model {name:?} is not served here; this server serves {:?}",
                self.name
            )));
        }
        if self.draining.load(Ordering::Relaxed) {
            return Err(ApiError::Unavailable("the server is shutting down".into()));
        }
        self.model.get().ok_or_else(|| ApiError::Unavailable(format!("model {:?} is still loading", self.name)))
    }

    fn version(model: &ServedArtifact) -> &str {
        &model.digest[..model.digest.len().min(12)]
    }
}

/// The router, with request bodies capped at `max_body_bytes` (413 beyond).
pub fn router(shared: Arc<Shared>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v2/health/live", get(|| async { axum::Json(json!({"live": true})) }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/metrics", get(metrics))
        .fallback(|request: Request| async move {
            ApiError::NotFound(format!(
                "no such endpoint: {} {}; see /v2, /v2/models/{{name}}, /v2/models/{{name}}/infer",
                request.method(),
                request.uri().path()
            ))
        })
        .layer(middleware::from_fn_with_state(shared.clone(), count_requests))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(shared)
}

/// Counts every response by route and status.
async fn count_requests(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let endpoint = match request.extensions().get::<MatchedPath>().map(MatchedPath::as_str) {
        Some("/v2/models/{name}/infer") => "infer",
        Some("/v2/models/{name}") => "model_metadata",
        Some("/v2/models/{name}/ready") => "model_ready",
        Some("/v2/health/live") => "live",
        Some("/v2/health/ready") => "ready",
        Some("/v2") => "server_metadata",
        Some("/metrics") => "metrics",
        _ => "other",
    };
    let response = next.run(request).await;
    shared.metrics.request(endpoint, response.status().as_u16());
    response
}

fn readiness(ready: bool, body: serde_json::Value) -> Response {
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

async fn server_ready(State(shared): State<Arc<Shared>>) -> Response {
    let ready = shared.ready();
    readiness(ready, json!({"ready": ready}))
}

async fn model_ready(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    if name != shared.name {
        return shared.model(&name).err().map(IntoResponse::into_response).unwrap_or_default();
    }
    let ready = shared.ready();
    readiness(ready, json!({"name": name, "ready": ready}))
}

async fn server_metadata() -> impl IntoResponse {
    axum::Json(json!({"name": "distillery-server", "version": env!("CARGO_PKG_VERSION"), "extensions": []}))
}

async fn model_metadata(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let model = shared.model(&name)?;
    let classes = model.labels.len() as i64;
    Ok(axum::Json(json!({
        "name": shared.name,
        "versions": [Shared::version(model)],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [-1]},
            {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]}
        ],
        "outputs": [
            {"name": OUTPUT_NAMES[0], "datatype": "FP32", "shape": [-1, classes]},
            {"name": OUTPUT_NAMES[1], "datatype": "FP32", "shape": [-1, classes]},
            {"name": OUTPUT_NAMES[2], "datatype": "BYTES", "shape": [-1]},
            {"name": OUTPUT_NAMES[3], "datatype": "FP32", "shape": [-1, model.hidden_size]}
        ],
        "parameters": {
            "variant": model.variant,
            "sha256": model.digest,
            "labels": model.labels,
            "max_sequence_length": model.max_sequence_length,
            "max_positions": model.max_positions,
        }
    }))
    .into_response())
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    // Read at scrape time: the gauge is otherwise only set on a push or a take, and a long run
    // between the two would leave it stale.
    shared.metrics.queue_depth.set(shared.queue.depth() as i64);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], shared.metrics.encode())
}

async fn infer(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let mut response = run_infer(&shared, &name, body).await.unwrap_or_else(IntoResponse::into_response);
    if response.status().is_success() {
        shared.metrics.request_duration.observe(arrived.elapsed().as_secs_f64());
    }
    if let Some(id) = headers.get("x-request-id") {
        response.headers_mut().insert("x-request-id", id.clone());
    }
    response
}

async fn run_infer(shared: &Shared, name: &str, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let model = shared.model(name)?;
    // Refuse before any parsing or tokenizing when nothing more fits: under overload a 429 must
    // cost next to nothing, or rejecting eats the capacity the admitted requests need.
    let queued = shared.queue.depth();
    if queued >= shared.queue.capacity() {
        return Err(ApiError::Overloaded(queued));
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::TooLarge(format!("request body too large: {}", rejection.body_text()))
        }
        _ => ApiError::BadRequest(rejection.body_text()),
    })?;
    let request = parse_infer(&body, model.limits()).map_err(|e| ApiError::BadRequest(e.0))?;
    let texts = request.inputs.len();
    if texts > shared.queue.capacity() {
        return Err(ApiError::TooLarge(format!(
            "the request holds {texts} texts; this server takes at most {} per request",
            shared.queue.capacity()
        )));
    }
    let sequences = match request.inputs {
        Inputs::Tokens(rows) => rows,
        Inputs::Texts(texts) if texts.len() <= INLINE_TOKENIZE_TEXTS => tokenize(&model.tokenizer, &texts)?,
        Inputs::Texts(texts) => {
            let tokenizer = model.tokenizer.clone();
            tokio::task::spawn_blocking(move || tokenize(&tokenizer, &texts))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??
        }
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let depth = shared.queue.push(Job { sequences, enqueued: Instant::now(), reply }).map_err(|(e, _)| match e {
        PushError::Full(queued) => ApiError::Overloaded(queued),
        PushError::Closed => ApiError::Unavailable("the server is shutting down".into()),
    })?;
    shared.metrics.queue_depth.set(depth as i64);
    let _in_flight = InFlight::admit(&shared.metrics.in_flight);
    let prediction = answer
        .await
        .map_err(|_| ApiError::Internal("the model thread stopped before answering".into()))?
        .map_err(ApiError::Internal)?;
    let response = InferResponse {
        model_name: &shared.name,
        model_version: Shared::version(model),
        id: request.id,
        outputs: output_tensors(&request.outputs, &prediction, &model.labels),
    };
    let body = serde_json::to_vec(&response).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn tokenize(tokenizer: &Tokenizer, texts: &[String]) -> Result<Vec<Vec<u32>>, ApiError> {
    let error = |message: String| ApiError::BadRequest(format!("cannot tokenize the texts: {message}"));
    if let [text] = texts {
        // One text, the common case online: no detour through the tokenizer's thread pool.
        let encoding = tokenizer.encode(text.as_str(), true).map_err(|e| error(e.to_string()))?;
        return Ok(vec![encoding.get_ids().to_vec()]);
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    encode_all(tokenizer, &refs).map_err(|e| error(e.message))
}

/// Counts one admitted request in `distillery_server_requests_in_flight` until it is dropped,
/// however the request ends (answered, failed, or its client gone).
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlight<'a> {
    fn admit(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
