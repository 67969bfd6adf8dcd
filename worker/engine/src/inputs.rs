//! The first stage of a distillation run: the job's dataset read and split, and every text
//! tokenized with the teacher's tokenizer at the spec's `maxSequenceLength`.

use std::path::PathBuf;

use distillery_crds::DistillationJob;

use crate::batch::{TokenizerError, encode_all, load_tokenizer};
use crate::data::{DataError, Dataset, Split, limit, read_dataset, split};
use crate::store::{StoreError, local_path};

/// A job's data, ready to train on.
pub struct Inputs {
    /// The teacher's model directory.
    pub teacher_dir: PathBuf,
    /// The labelled dataset.
    pub dataset: Dataset,
    /// Training and held-out indices into `dataset.examples`.
    pub split: Split,
    /// Token ids of every example (truncated, unpadded).
    pub ids: Vec<Vec<u32>>,
    /// Class index of every example.
    pub labels: Vec<u32>,
}

/// Why the inputs could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A URI could not be resolved.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The dataset could not be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The teacher's tokenizer could not be loaded or used.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Reads, splits and tokenizes the data of `job`.
pub fn load(job: &DistillationJob) -> Result<Inputs, InputError> {
    let spec = &job.spec.dataset;
    let teacher_dir = local_path(&job.spec.teacher.uri)?;
    let dataset = read_dataset(&local_path(&spec.uri)?, spec)?;
    let mut split = split(&dataset.examples, &spec.validation_split);
    if let Some(max) = spec.max_examples {
        split = limit(&split, max as usize);
    }
    let tokenizer = load_tokenizer(&teacher_dir.join("tokenizer.json"), spec.max_sequence_length as usize)?;
    let texts: Vec<&str> = dataset.examples.iter().map(|e| e.text.as_str()).collect();
    let ids = encode_all(&tokenizer, &texts)?;
    let labels = dataset.examples.iter().map(|e| e.label as u32).collect();
    Ok(Inputs { teacher_dir, dataset, split, ids, labels })
}
