//! The teacher stages: reading a teacher model directory ([`model_dir`]), and preparing the
//! teacher for the task and computing its outputs on the training data, cached across runs
//! ([`prepare`]); a causal-LM teacher read from GGUF ([`gguf`]), its outputs ([`lm_outputs`]),
//! and those outputs computed in shards by several pods and joined ([`shards`]).

pub mod gguf;
pub mod lm_outputs;
pub mod model_dir;
pub mod prepare;
pub mod shards;
pub mod tokenizer_from_gguf;
