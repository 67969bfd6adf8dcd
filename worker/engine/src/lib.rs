//! The Distillery worker: the data plane a DistillationJob's pod runs, and the README's main job
//! run locally — same spec, same code path.
//!
//! `distill` ([`distill`]) reads and validates a DistillationJob spec exactly as the API server
//! would ([`spec`]), loads the data ([`data`], [`inputs`]), prepares and caches the teacher
//! ([`prepare`]), builds the student ([`student`]) and trains it by knowledge distillation
//! ([`train`], [`loss`], [`align`]) on the encoder of [`model`] and its fused CPU kernels
//! ([`fused`]), checkpointing ([`checkpoint`]) and reporting progress ([`progress`]), then writes the
//! artifact. Then [`onnx`] exports the student to ONNX, checks it against candle in ONNX Runtime,
//! quantizes it to int8 and decides, behind an accuracy and speed gate, which variant is served
//! (also on their own: `distillery-worker export` and `quantize`). [`loadgen`] drives inference
//! servers (`distillery-worker bench`), and `distillery-worker predict` gives a served model's
//! offline predictions to compare a server with. For the operator's rollouts, [`inspect`] says
//! which file a server would serve from an artifact and its sha256, and [`analyze`] runs one
//! canary analysis between two served tracks.

pub mod align;
pub mod analyze;
pub mod baseline;
pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod classifier;
pub mod cli;
pub mod cluster;
pub mod data;
pub mod distill;
pub mod fused;
pub mod init;
pub mod inputs;
pub mod inspect;
pub mod loadgen;
pub mod loss;
pub mod model;
pub mod onnx;
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
