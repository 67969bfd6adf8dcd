//! `distillery-model`: what the worker (`distillery-worker`, which trains, exports and evaluates
//! models) and the inference server (`distillery-server`) both need to run an exported model —
//! so that neither depends on the other, and training pods do not link the HTTP stack.
//!
//! [`runtime`] loads ONNX Runtime, [`session`] runs a model in it on padded batches
//! ([`session::Padded`]) of token ids from [`tokenize`], [`artifact`] reads what a server would
//! serve from an artifact directory (which variant, its sha256, the tokenizer and labels), and
//! [`process`] reads a process's CPU time and memory from `/proc`.

pub mod artifact;
pub mod process;
pub mod runtime;
pub mod session;
pub mod tokenize;

/// The index of the largest value (the first of equal ones; 0 for an empty slice).
pub fn argmax(values: &[f32]) -> usize {
    values.iter().enumerate().fold(0, |best, (k, &v)| if v > values[best] { k } else { best })
}
