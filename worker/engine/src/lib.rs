//! The Distillery worker: the data plane a DistillationJob's pod runs, and the README's main job
//! run locally — same spec, same code path.
//!
//! A DistillationJob is a pipeline of stages ([`pipeline`]), each in its folder:
//!
//! | stage | folder |
//! | --- | --- |
//! | read the spec exactly as the API server would | [`spec`] |
//! | data: read, split, tokenize, batch | [`data`] |
//! | teacher preparation and teacher outputs (cached) | [`teacher`] |
//! | student: built from the spec or teacher layers, vocabulary pruning | [`student`] |
//! | training: loop, loss, alignment, optimiser, schedules, checkpoints | [`train`] |
//! | evaluation against baselines | [`evaluate`] |
//! | the networks themselves (encoder, fused kernels, heads) | [`model`] |
//! | artifact, ONNX export, int8 quantization and its gate | [`pipeline`], [`onnx`] |
//!
//! Around them: [`progress`] (a bar on a terminal, JSON lines in a pod) and [`cluster`] (the
//! DistillationJob's `status.progress` when run by the operator), [`store`] (`file://` and
//! `s3://` URIs), and [`serve`]: what the worker does with served models — which file a server
//! would serve ([`serve::inspect`]), one canary analysis ([`serve::analyze`]), a Benchmark
//! ([`serve::bench`]) and the load generator ([`serve::loadgen`]). [`cli`] is the command line.

pub mod cli;
pub mod cluster;
pub mod data;
pub mod evaluate;
pub mod model;
pub mod onnx;
pub mod pipeline;
pub mod progress;
pub mod serve;
pub mod spec;
pub mod store;
pub mod student;
pub mod teacher;
pub mod train;
