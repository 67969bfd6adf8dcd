//! The Distillery worker: the data plane a DistillationJob's pod runs, and the README's main job
//! run locally — same spec, same code path.
//!
//! Built so far: reading and validating a DistillationJob spec exactly as the API server would
//! ([`spec`]), resolving its URIs ([`store`]) and inspecting the teacher with candle
//! ([`teacher`]). The distillation engine, ONNX export, int8 quantization and load generator are
//! the next issues' work, and `distill` says so instead of pretending.

pub mod align;
pub mod baseline;
pub mod batch;
pub mod checkpoint;
pub mod classifier;
pub mod cli;
pub mod data;
pub mod distill;
pub mod fused;
pub mod init;
pub mod inputs;
pub mod loss;
pub mod model;
pub mod optim;
pub mod prepare;
pub mod progress;
pub mod runner;
pub mod schedule;
pub mod spec;
pub mod store;
pub mod student;
pub mod teacher;
pub mod train;
pub mod vocab;
