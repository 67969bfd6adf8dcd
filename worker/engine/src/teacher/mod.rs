//! The teacher stages: reading a teacher model directory ([`model_dir`]), and preparing the
//! teacher for the task and computing its outputs on the training data, cached across runs
//! ([`prepare`]).

pub mod gguf;
pub mod lm_outputs;
pub mod model_dir;
pub mod prepare;
pub mod tokenizer_from_gguf;
