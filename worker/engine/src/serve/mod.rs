//! What the worker does with served models rather than training them: which file a server would
//! serve from an artifact ([`inspect`]), one canary analysis between two served tracks
//! ([`analyze`]), a Benchmark run ([`bench`]), the load generator ([`loadgen`]), and text sampled
//! from a causal-LM artifact ([`generate`]).

pub mod analyze;
pub mod bench;
pub mod generate;
pub mod inspect;
pub mod loadgen;
