//! The evaluation stage's reference points: what a model must beat to be worth distilling
//! ([`baseline`]).

pub mod baseline;
