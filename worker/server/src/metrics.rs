//! Prometheus metrics of the server (`/metrics`, prefix `distillery_server`). Canary analysis
//! compares the prediction metrics of a stable and a canary pod: per-class prediction counts and
//! the confidence histogram (its `_sum / _count` is the mean confidence) per class. The process's
//! CPU time and memory ([`crate::process`]) come with every scrape, for benchmarks and
//! dashboards.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;

/// Labels of the model-info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The model's name in the protocol.
    pub model: String,
    /// `fp32` or `int8`.
    pub variant: String,
    /// sha256 of the served ONNX file.
    pub digest: String,
    /// The server's version.
    pub version: String,
}

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `infer`, `metadata`, `health`, …
    pub endpoint: String,
    /// HTTP status code.
    pub code: String,
}

/// Labels naming a class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    /// The class name.
    pub class: String,
}

/// Every metric of the server, registered in one registry.
pub struct Metrics {
    /// Everything below under the `distillery_server` prefix, and the process metrics.
    registry: Registry,
    model_info: Family<ModelLabels, Gauge>,
    /// Requests answered, by endpoint and status code.
    pub requests: Family<RequestLabels, Counter>,
    /// Inference request latency (arrival to response), seconds.
    pub request_duration: Histogram,
    /// Sequences per model run.
    pub batch_size: Histogram,
    /// Model compute per run, seconds.
    pub run_duration: Histogram,
    /// Time a request waited in the queue, seconds.
    pub queue_wait: Histogram,
    /// Texts waiting in the queue.
    pub queue_depth: Gauge,
    /// Inference requests admitted to the queue and not yet answered.
    pub in_flight: Gauge,
    /// Predictions by class.
    pub predictions: Family<ClassLabels, Counter>,
    /// Confidence (probability of the predicted class) by class.
    pub confidence: Family<ClassLabels, Histogram>,
    /// 1 once the model is loaded and warmed up.
    pub ready: Gauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(crate::process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("distillery_server");
        let model_info = Family::<ModelLabels, Gauge>::default();
        registry.register("model_info", "The served model: name, variant, sha256 of its ONNX file", model_info.clone());
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered, by endpoint and HTTP status", requests.clone());
        let request_duration = Histogram::new(exponential_buckets(0.0005, 1.5, 24));
        registry.register(
            "request_duration_seconds",
            "Inference request latency from arrival to response",
            request_duration.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register("batch_size", "Sequences per model run", batch_size.clone());
        let run_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register("run_duration_seconds", "ONNX Runtime compute per model run", run_duration.clone());
        let queue_wait = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register("queue_wait_seconds", "Time a request waited for a model thread", queue_wait.clone());
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "Texts waiting for a model thread", queue_depth.clone());
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Inference requests queued or running, not yet answered",
            in_flight.clone(),
        );
        let predictions = Family::<ClassLabels, Counter>::default();
        registry.register("predictions", "Predictions by class", predictions.clone());
        let confidence =
            Family::<ClassLabels, Histogram>::new_with_constructor(|| Histogram::new(linear_buckets(0.5, 0.05, 10)));
        registry.register(
            "prediction_confidence",
            "Probability of the predicted class, by class (sum / count is the mean confidence)",
            confidence.clone(),
        );
        let ready = Gauge::default();
        registry.register("ready", "1 once the model is loaded and warmed up", ready.clone());
        Self {
            registry: root,
            model_info,
            requests,
            request_duration,
            batch_size,
            run_duration,
            queue_wait,
            queue_depth,
            in_flight,
            predictions,
            confidence,
            ready,
        }
    }

    /// Records the model being served (once it is loaded).
    pub fn set_model(&self, model: ModelLabels) {
        self.model_info.get_or_create(&model).set(1);
    }

    /// Counts a response of `endpoint` with `code`.
    pub fn request(&self, endpoint: &str, code: u16) {
        self.requests.get_or_create(&RequestLabels { endpoint: endpoint.into(), code: code.to_string() }).inc();
    }

    /// Counts a prediction of `class` with `confidence`.
    pub fn prediction(&self, class: &str, confidence: f32) {
        let labels = ClassLabels { class: class.into() };
        self.predictions.get_or_create(&labels).inc();
        self.confidence.get_or_create(&labels).observe(f64::from(confidence));
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_has_the_prefixed_metrics_and_the_process_ones() {
        let m = Metrics::new();
        m.request("infer", 200);
        let text = m.encode();
        for name in [
            "distillery_server_requests_total{endpoint=\"infer\",code=\"200\"} 1",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
            "distillery_server_peak_resident_memory_bytes ",
        ] {
            assert!(text.lines().any(|l| l.starts_with(name)), "{name} in:\n{text}");
        }
        assert!(!text.contains("distillery_server_process_"), "process metrics are not prefixed");
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
