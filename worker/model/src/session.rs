//! One ONNX Runtime session of an exported Distillery classifier: a batch of token sequences in
//! (padded here to the longest of them), logits and pooled embeddings out. The worker measures
//! and gates models with it; the server serves with it.

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

/// The graph's inputs, in order.
pub const INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];
/// The logits output.
pub const LOGITS: &str = "logits";
/// The pooled-embedding output.
pub const EMBEDDING: &str = "embedding";

/// ONNX Runtime refused the model or failed running it.
#[derive(Debug, thiserror::Error)]
#[error("ONNX Runtime: {0}")]
pub struct SessionError(pub String);

fn ort_error(e: impl std::fmt::Display) -> SessionError {
    SessionError(e.to_string())
}

/// A batch padded to its longest sequence (at least 1), row-major `(batch, longest)`.
pub struct Padded {
    /// Token ids, 0 after each sequence's end.
    pub ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Vec<u32>,
    /// The padded length.
    pub longest: usize,
}

impl Padded {
    /// Pads `sequences` with id 0 to the longest of them.
    pub fn new(sequences: &[&[u32]]) -> Self {
        let longest = sequences.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(sequences.len() * longest);
        let mut mask = Vec::with_capacity(sequences.len() * longest);
        for s in sequences {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(0, longest - s.len()));
            mask.extend(std::iter::repeat_n(1u32, s.len()));
            mask.extend(std::iter::repeat_n(0u32, longest - s.len()));
        }
        Self { ids, mask, longest }
    }
}

/// What one batch returns: a row per sequence.
pub struct Outputs {
    /// Logits, `classes` values per row.
    pub logits: Vec<Vec<f32>>,
    /// Pooled embeddings, `hidden` values per row.
    pub embedding: Vec<Vec<f32>>,
}

/// An ONNX Runtime session over the serialized model `bytes` in `environment`, every graph
/// optimization on, on `threads` intra-op threads and one inter-op thread: how every exported
/// graph is run (the classifier's through [`OnnxSession`], the causal-LM decoder's by the worker's
/// export check), so that parity and latency are measured under the options a server uses.
pub fn build_session(environment: &Environment, bytes: &[u8], threads: usize) -> Result<Session, SessionError> {
    Session::builder(environment)
        .map_err(ort_error)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(ort_error)?
        .with_intra_threads(threads.max(1))
        .map_err(ort_error)?
        .with_inter_threads(1)
        .map_err(ort_error)?
        .commit_from_memory(bytes)
        .map_err(ort_error)
}

/// A session of an exported classifier.
pub struct OnnxSession {
    session: Session,
}

impl OnnxSession {
    /// A session over the serialized model `bytes` in `environment`, every graph optimization on,
    /// on `threads` intra-op threads.
    pub fn new(environment: &Environment, bytes: &[u8], threads: usize) -> Result<Self, SessionError> {
        Ok(Self { session: build_session(environment, bytes, threads)? })
    }

    /// Runs one batch, padded to its longest sequence.
    pub fn run(&mut self, batch: &[&[u32]]) -> Result<Outputs, SessionError> {
        let padded = Padded::new(batch);
        let shape = [batch.len(), padded.longest];
        let to_i64 = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<i64>>();
        let ids = Tensor::from_array((shape, to_i64(&padded.ids))).map_err(ort_error)?;
        let mask = Tensor::from_array((shape, to_i64(&padded.mask))).map_err(ort_error)?;
        let types = Tensor::from_array((shape, vec![0i64; padded.ids.len()])).map_err(ort_error)?;
        let outputs = self
            .session
            .run(ort::inputs![INPUTS[0] => ids, INPUTS[1] => mask, INPUTS[2] => types])
            .map_err(ort_error)?;
        let rows = |name: &str| -> Result<Vec<Vec<f32>>, SessionError> {
            let (shape, values) = outputs[name].try_extract_tensor::<f32>().map_err(ort_error)?;
            let width = shape.get(1).copied().unwrap_or(1).max(1) as usize;
            Ok(values.chunks(width).map(<[f32]>::to_vec).collect())
        };
        Ok(Outputs { logits: rows(LOGITS)?, embedding: rows(EMBEDDING)? })
    }
}
