//! What the worker does with served models rather than training them: which file a server would
//! serve from an artifact ([`inspect`]), one canary analysis between two served tracks
//! ([`analyze`]), a Benchmark run ([`bench`]) and the load generator ([`loadgen`]).

pub mod analyze;
pub mod bench;
pub mod inspect;
pub mod loadgen;
