//! `distillery-server`: the ONNX Runtime inference server a ModelDeployment runs.
//!
//! It links ONNX Runtime (through `ort`, loaded dynamically) and never candle. Today it loads the
//! runtime and checks a model directory; the KServe V2 HTTP protocol, batching and metrics are
//! built next (see the issues).

pub mod runtime;
