//! The data stage: a job's dataset read ([`dataset`]) and split, tokenized with the teacher's
//! tokenizer ([`inputs`]), and batched for training and evaluation ([`batch`]).

pub mod batch;
pub mod corpus;
pub mod dataset;
pub mod inputs;
