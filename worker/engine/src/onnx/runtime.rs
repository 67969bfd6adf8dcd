//! Running exported graphs in ONNX Runtime (through `ort`, on the library scripts/setup.sh
//! fetched): logits for a set of token sequences, and latency per batch. What the server will
//! run, so parity, accuracy and speed are measured on the real runtime, not on candle.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use distillery_model::session::{OnnxSession, SessionError};
use ort::environment::Environment;

/// Why ONNX Runtime could not run a model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The library could not be loaded (missing, wrong version).
    #[error(transparent)]
    Load(#[from] distillery_model::runtime::RuntimeError),
    /// ONNX Runtime refused the model or failed running it.
    #[error("ONNX Runtime: {0}")]
    Ort(String),
}

impl From<SessionError> for RuntimeError {
    fn from(e: SessionError) -> Self {
        Self::Ort(e.0)
    }
}

static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// Loads ONNX Runtime once per process from `library`; when `None`, from `ORT_DYLIB_PATH`, else
/// from where scripts/setup.sh puts it (the same rule as `distillery-server`:
/// [`distillery_model::runtime::load`]). After a success, later calls do nothing; after a
/// failure, the next call tries again.
pub fn init(library: Option<&Path>) -> Result<(), RuntimeError> {
    let mut env = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    if env.is_none() {
        let path = library.map(Path::to_path_buf).or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from));
        *env = Some(distillery_model::runtime::load(path.as_deref())?.environment);
    }
    Ok(())
}

/// The process's environment; [`init`] must have succeeded. Sessions of other graphs than the
/// classifier's (`super::decoder_export::OnnxDecoder`) are built in it too.
pub(crate) fn environment() -> Result<Environment, RuntimeError> {
    ENVIRONMENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| RuntimeError::Ort("ONNX Runtime is not loaded (call runtime::init first)".into()))
}

/// One ONNX Runtime session of an exported classifier, in this process's environment.
pub struct OnnxModel {
    session: OnnxSession,
}

impl OnnxModel {
    /// A session over the serialized model `bytes`, all graph optimizations on, on `threads`
    /// intra-op threads. [`init`] must have succeeded.
    pub fn new(bytes: &[u8], threads: usize) -> Result<Self, RuntimeError> {
        Ok(Self { session: OnnxSession::new(&environment()?, bytes, threads)? })
    }

    /// Logits of one batch, padded to its longest sequence: one row per sequence.
    pub fn run(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, RuntimeError> {
        Ok(self.session.run(batch)?.logits)
    }

    /// Logits of every sequence, in order, batched by length (`batch_size` at a time) so that
    /// little of each batch is padding.
    pub fn logits(&mut self, ids: &[Vec<u32>], batch_size: usize) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&k| ids[k].len());
        let mut out = vec![vec![]; ids.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&k| ids[k].as_slice()).collect();
            for (&k, row) in chunk.iter().zip(self.run(&batch)?) {
                out[k] = row;
            }
        }
        Ok(out)
    }
}

/// Batches of `size` consecutive sequences (in the given order, as requests would arrive), at
/// most `count` of them.
pub fn batches(ids: &[Vec<u32>], size: usize, count: usize) -> Vec<Vec<&[u32]>> {
    ids.chunks(size.max(1)).take(count).map(|c| c.iter().map(Vec::as_slice).collect()).collect()
}

/// A session that runs batches of token sequences: what [`time_per_batch`] and
/// [`compare_latency`] time — a classifier's [`OnnxModel`], a decoder's
/// [`super::decoder_export::OnnxDecoder`].
pub trait RunBatch {
    /// Runs one batch (padded to its longest sequence), discarding its outputs.
    fn run_batch(&mut self, batch: &[&[u32]]) -> Result<(), RuntimeError>;
}

impl RunBatch for OnnxModel {
    fn run_batch(&mut self, batch: &[&[u32]]) -> Result<(), RuntimeError> {
        self.run(batch).map(drop)
    }
}

/// Mean wall time per batch of one pass over `batches`.
pub fn time_per_batch<M: RunBatch>(model: &mut M, batches: &[Vec<&[u32]>]) -> Result<Duration, RuntimeError> {
    let start = Instant::now();
    for b in batches {
        model.run_batch(b)?;
    }
    Ok(start.elapsed() / batches.len().max(1) as u32)
}

/// Latency per batch of two models over the same batches, measured alternately (`rounds` passes
/// each, after one warm-up pass) so that both see the same machine state; the fastest pass of
/// each counts. Returns `(a, b)`.
pub fn compare_latency<M: RunBatch>(
    a: &mut M,
    b: &mut M,
    batches: &[Vec<&[u32]>],
    rounds: usize,
) -> Result<(Duration, Duration), RuntimeError> {
    time_per_batch(&mut *a, batches)?;
    time_per_batch(&mut *b, batches)?;
    let (mut best_a, mut best_b) = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds.max(1) {
        best_a = best_a.min(time_per_batch(&mut *a, batches)?);
        best_b = best_b.min(time_per_batch(&mut *b, batches)?);
    }
    Ok((best_a, best_b))
}
