//! The evaluation stage: what a classifier must beat to be worth distilling ([`baseline`]), and a
//! causal LM's held-out perplexity, top-1 accuracy and KL to its teacher ([`lm`]).

pub mod baseline;
pub mod lm;
