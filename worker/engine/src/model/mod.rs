//! The networks the worker trains in candle: a BERT-family encoder ([`encoder`]) with its fused
//! CPU kernels ([`fused`]), and the sequence classifier built on it ([`classifier`]).

pub mod classifier;
pub mod decoder;
pub mod encoder;
pub mod fused;
