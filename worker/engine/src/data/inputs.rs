//! The first stage of a distillation run: the job's dataset read and split, and every text
//! tokenized with the teacher's tokenizer at the spec's `maxSequenceLength`, and the unlabelled
//! transfer set, when the spec names one, read and tokenized alike. An `s3://` teacher, dataset
//! or transfer set is downloaded into the work directory first ([`crate::store::Resolver`]).

use std::path::PathBuf;

use distillery_crds::DistillationJob;

use crate::data::batch::{TokenizerError, encode_all, load_tokenizer};
use crate::data::dataset::{DataError, Dataset, Split, limit, read_dataset, read_transfer, split};
use crate::store::{Kind, Resolver, StoreError, sha256_file};
use crate::train::loss::UNLABELLED;

/// A job's data, ready to train on.
pub struct Inputs {
    /// The teacher's model directory.
    pub teacher_dir: PathBuf,
    /// The labelled dataset.
    pub dataset: Dataset,
    /// Training and held-out indices into `dataset.examples`.
    pub split: Split,
    /// Token ids of every example (truncated, unpadded), then of every transfer text.
    pub ids: Vec<Vec<u32>>,
    /// Class index of every example, then [`UNLABELLED`] for every transfer text.
    pub labels: Vec<u32>,
    /// The unlabelled transfer set, when the spec names one.
    pub transfer: Option<Transfer>,
}

/// Unlabelled texts the student learns the teacher's outputs on, besides the training split.
pub struct Transfer {
    /// The file they were read from.
    pub path: PathBuf,
    /// sha256 of that file (what the teacher's cached outputs on it are keyed by).
    pub digest: String,
    /// The texts, in file order (empty lines skipped).
    pub texts: Vec<String>,
    /// Their indices into [`Inputs::ids`] and [`Inputs::labels`], after the dataset's examples.
    pub indices: Vec<usize>,
}

impl Inputs {
    /// Every text in the order of [`Self::ids`]: the dataset's examples, then the transfer texts.
    pub fn texts(&self) -> Vec<&str> {
        let transfer = self.transfer.iter().flat_map(|t| t.texts.iter());
        self.dataset.examples.iter().map(|e| e.text.as_str()).chain(transfer.map(String::as_str)).collect()
    }

    /// What the student distils on: the training split, then the transfer texts.
    pub fn distillation_indices(&self) -> Vec<usize> {
        let transfer = self.transfer.iter().flat_map(|t| t.indices.iter().copied());
        self.split.train.iter().copied().chain(transfer).collect()
    }

    /// Indices of the transfer texts (none without a transfer set).
    pub fn transfer_indices(&self) -> &[usize] {
        self.transfer.as_ref().map_or(&[], |t| t.indices.as_slice())
    }
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

/// How `job`'s URIs are reached: its `spec.s3` settings, else the environment's.
pub fn resolver(job: &DistillationJob) -> Result<Resolver, StoreError> {
    Resolver::for_spec(job.spec.s3.as_ref())
}

/// Reads and splits the labelled dataset of `job`, as [`load`] does (no tokenization): what the
/// exporter and quantizer evaluate an artifact on.
pub fn labelled(job: &DistillationJob) -> Result<(Dataset, Split), InputError> {
    labelled_with(job, &resolver(job)?)
}

/// [`labelled`], its URIs resolved by `resolver`.
pub fn labelled_with(job: &DistillationJob, resolver: &Resolver) -> Result<(Dataset, Split), InputError> {
    let spec = &job.spec.dataset;
    let dataset = read_dataset(&resolver.materialize(&spec.uri, Kind::File)?, spec)?;
    let mut split = split(&dataset.examples, &spec.validation_split);
    if let Some(max) = spec.max_examples {
        split = limit(&split, max as usize);
    }
    Ok((dataset, split))
}

/// Reads, splits and tokenizes the data of `job`.
pub fn load(job: &DistillationJob) -> Result<Inputs, InputError> {
    load_with(job, &resolver(job)?)
}

/// [`load`], its URIs resolved by `resolver`.
pub fn load_with(job: &DistillationJob, resolver: &Resolver) -> Result<Inputs, InputError> {
    let spec = &job.spec.dataset;
    let teacher_dir = resolver.materialize(&job.spec.teacher.uri, Kind::Directory)?;
    let (dataset, split) = labelled_with(job, resolver)?;
    let tokenizer = load_tokenizer(&teacher_dir.join("tokenizer.json"), spec.max_sequence_length as usize)?;
    let texts: Vec<&str> = dataset.examples.iter().map(|e| e.text.as_str()).collect();
    let mut ids = encode_all(&tokenizer, &texts)?;
    let mut labels: Vec<u32> = dataset.examples.iter().map(|e| e.label as u32).collect();
    let transfer = match &spec.transfer_set {
        None => None,
        Some(t) => {
            let path = resolver.materialize(&t.uri, Kind::File)?;
            let texts = read_transfer(&path, t)?;
            let digest = sha256_file(&path).map_err(|source| DataError::Open { path: path.clone(), source })?;
            if texts.is_empty() {
                return Err(DataError::TooLittle {
                    path: path.clone(),
                    message: "spec.dataset.transferSet has no texts (every line is empty)".into(),
                }
                .into());
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            ids.extend(encode_all(&tokenizer, &refs)?);
            let indices = (labels.len()..labels.len() + texts.len()).collect();
            labels.resize(labels.len() + texts.len(), UNLABELLED);
            Some(Transfer { path, digest, texts, indices })
        }
    };
    Ok(Inputs { teacher_dir, dataset, split, ids, labels, transfer })
}
