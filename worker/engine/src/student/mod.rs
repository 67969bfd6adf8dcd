//! The student: built from the spec — chosen teacher layers (DistilBERT style) or a fresh
//! configuration — with the optional shrinking techniques: a vocabulary pruned to the tokens the
//! training data uses (and a tokenizer rewritten to match), a factorized word-embedding table, and
//! a position table cut to the longest input the tokenizer lets through.

pub mod decoder;
pub mod init;
pub mod vocab;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use distillery_crds::DistillationJob;
use distillery_crds::distillation::Pooling;
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::data::batch::{encode_all, truncating};
use crate::data::inputs::Inputs;
use crate::model::encoder::EncoderConfig;
use crate::student::vocab::{Pruning, VocabError};
use crate::teacher::prepare::PreparedTeacher;

/// Why the student could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StudentError {
    /// The spec asks for something the teacher cannot give.
    #[error("spec.student: {0}")]
    Spec(String),
    /// The vocabulary could not be pruned.
    #[error("spec.student.pruneVocabulary: {0}")]
    Vocabulary(#[from] VocabError),
    /// A tensor operation failed.
    #[error("building the student: {0}")]
    Candle(#[from] candle_core::Error),
}

/// A student ready to train.
pub struct Student {
    /// Its configuration.
    pub config: EncoderConfig,
    /// Encoder variables.
    pub encoder: VarMap,
    /// Head variables (`classifier.*`).
    pub head: VarMap,
    /// Its tokenizer (the teacher's, or the pruned one), truncating, not padding.
    pub tokenizer: Tokenizer,
    /// Its tokenizer as `tokenizer.json` content.
    pub tokenizer_json: Value,
    /// Token ids of every example under the student's tokenizer.
    pub ids: Vec<Vec<u32>>,
    /// The pruned vocabulary, if pruned.
    pub pruning: Option<Pruning>,
}

impl Student {
    /// Parameters: encoder and head (with the pooler, when pooling uses it).
    pub fn parameters(&self) -> u64 {
        let head: usize = self.head.all_vars().iter().map(|v| v.elem_count()).sum();
        self.config.parameters() + head as u64
    }
}

/// Builds the student of `job` (seeded by `training.seed`).
pub fn build(
    job: &DistillationJob,
    teacher: &PreparedTeacher,
    teacher_tokenizer: &Value,
    inputs: &Inputs,
    device: &Device,
) -> Result<Student, StudentError> {
    let spec = &job.spec.student;
    let max_len = job.spec.dataset.max_sequence_length as usize;
    let classes = inputs.dataset.labels.len();
    let seed = job.spec.training.seed;
    let pooler = job.spec.teacher.pooling == Pooling::Pooler;

    let pruning = if spec.prune_vocabulary {
        let used = inputs.distillation_indices().into_iter().flat_map(|i| inputs.ids[i].iter().copied());
        Some(Pruning::new(teacher_tokenizer, used)?)
    } else {
        None
    };
    let tokenizer_json = match &pruning {
        Some(p) => p.rewrite_tokenizer(teacher_tokenizer)?,
        None => teacher_tokenizer.clone(),
    };
    let tokenizer = tokenizer_json
        .to_string()
        .parse::<Tokenizer>()
        .and_then(|t| truncating(t, max_len))
        .map_err(|e| VocabError::Rebuild(e.to_string()))?;
    let tokenizer_json: Value =
        serde_json::from_str(&tokenizer.to_string(false).map_err(|e| VocabError::Rebuild(e.to_string()))?)
            .expect("a serialized tokenizer is JSON");
    let ids = if pruning.is_some() {
        encode_all(&tokenizer, &inputs.texts()).map_err(|e| VocabError::Rebuild(e.to_string()))?
    } else {
        inputs.ids.clone()
    };
    let vocab_size = pruning.as_ref().map_or(teacher.config.vocab_size, Pruning::len);
    let positions = max_len.min(teacher.config.max_position_embeddings);
    let embedding_size = spec.embedding_size.map(|e| e as usize);

    let (config, encoder, head) = if let Some(from) = &spec.init_from_teacher {
        let layers: Vec<usize> = from.layers.iter().map(|&l| l as usize).collect();
        let (base, encoder) = init::from_teacher_layers(&teacher.config, &teacher.tensors, &layers)
            .map_err(|e| StudentError::Spec(format!("initFromTeacher.layers: {e}")))?;
        if let Some(e) = embedding_size
            && e >= base.hidden_size
        {
            return Err(StudentError::Spec(format!(
                "embeddingSize {e} must be smaller than the teacher's hidden size {}",
                base.hidden_size
            )));
        }
        let config = EncoderConfig { vocab_size, max_position_embeddings: positions, embedding_size, ..base };
        let var = |name: &str| encoder.data().lock().expect("unpoisoned")[name].as_tensor().clone();
        let mut words = var("embeddings.word_embeddings.weight");
        if let Some(p) = &pruning {
            words = p.select_rows(&words)?;
        }
        if let Some(e) = embedding_size {
            let (rows, projection) = init::factorize_embeddings(&words, e, seed)?;
            init::insert(&encoder, "embeddings.word_projection.weight", &projection)?;
            words = rows;
        }
        init::insert(&encoder, "embeddings.word_embeddings.weight", &words)?;
        let table = var("embeddings.position_embeddings.weight").narrow(0, 0, positions)?;
        init::insert(&encoder, "embeddings.position_embeddings.weight", &table)?;
        let head = VarMap::new();
        for name in ["classifier.weight", "classifier.bias"] {
            let t: &Tensor =
                teacher.tensors.get(name).ok_or_else(|| StudentError::Spec(format!("the teacher lacks {name}")))?;
            init::insert(&head, name, t)?;
        }
        if pooler {
            init::add_pooler(&head, Some(&teacher.tensors), config.hidden_size, seed, device)?;
        }
        (config, encoder, head)
    } else if let Some(arch) = &spec.architecture {
        let hidden = arch.hidden_size as usize;
        let config = EncoderConfig {
            vocab_size,
            hidden_size: hidden,
            num_hidden_layers: arch.layers as usize,
            num_attention_heads: arch.attention_heads as usize,
            intermediate_size: arch.intermediate_size.map_or(4 * hidden, |i| i as usize),
            max_position_embeddings: positions,
            embedding_size,
            ..teacher.config.clone()
        };
        let encoder = init::random_encoder(&config, seed, device)?;
        let head = init::random_head(hidden, classes, seed, device)?;
        if pooler {
            init::add_pooler(&head, None, hidden, seed, device)?;
        }
        (config, encoder, head)
    } else {
        return Err(StudentError::Spec("set architecture or initFromTeacher".into()));
    };
    Ok(Student { config, encoder, head, tokenizer, tokenizer_json, ids, pruning })
}
