//! The student as ONNX, and its int8 version: [`export`] builds the graph from the trained
//! weights with candle-onnx's prost-generated types ([`graph`]), [`quantize`] rewrites it with
//! int8 weights, [`runtime`] runs both in ONNX Runtime, [`gate`] decides which one is served, and
//! [`artifact`] does all of it on an artifact directory and records it in the manifest.
//! [`decoder_export`] is the same for a causal-LM student: its graph, its parity check at every
//! position, and its export on an artifact directory; [`decoder_quantize`] takes its int8 through
//! the same gate, judged on held-out perplexity and next-token top-1.

pub mod artifact;
pub mod decoder_export;
pub mod decoder_quantize;
pub mod export;
pub mod gate;
pub mod graph;
pub mod quantize;
pub mod runtime;

use crate::data::inputs::InputError;

/// Why an artifact could not be exported or quantized.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The graph could not be built.
    #[error("ONNX export: {0}")]
    Export(#[from] export::ExportError),
    /// The graph could not be quantized.
    #[error("int8 quantization: {0}")]
    Quantize(#[from] quantize::QuantizeError),
    /// ONNX Runtime could not be loaded or could not run the graph.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// The exported graph does not compute what candle computes: an exporter bug, never shipped.
    #[error(
        "ONNX export does not match candle on the held-out split: max |Δlogit| {max_diff:.2e} (allowed {tol:.0e}), {disagreements} of {examples} predicted labels differ; model.onnx was not written",
        tol = artifact::PARITY_TOLERANCE
    )]
    Parity {
        /// Largest absolute logit difference.
        max_diff: f64,
        /// Examples whose predicted label differs.
        disagreements: usize,
        /// Examples compared.
        examples: usize,
    },
    /// The exported decoder does not compute what candle computes at some held-out position: an
    /// exporter bug, never shipped.
    #[error(
        "ONNX export of the decoder does not match candle on the held-out sequences: max |Δlogit| {max_diff:.2e} (allowed {tol:.0e}), the most likely next token differs at {disagreements} of {positions} positions ({near_ties} of them near-ties, where candle's own margin is within |Δlogit|) over {sequences} sequences; model.onnx was not written",
        tol = artifact::PARITY_TOLERANCE
    )]
    DecoderParity {
        /// Largest absolute logit difference (NaN when either side produced one).
        max_diff: f64,
        /// Positions whose argmax differs.
        disagreements: usize,
        /// Of those, positions where candle's margin between the two tokens is within that
        /// position's |Δlogit|.
        near_ties: usize,
        /// Positions compared (0: nothing to compare, which is refused too).
        positions: usize,
        /// Sequences compared.
        sequences: usize,
    },
    /// A file of the artifact is missing or unreadable.
    #[error("artifact {path}: {message}")]
    Artifact {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The evaluation data could not be read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// candle failed computing the reference outputs.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}
