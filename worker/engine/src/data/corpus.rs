//! A text corpus for causal-LM distillation (`dataset.format: documents`): a directory of
//! plain-text files, one document each, split by document — no document is on both sides — and
//! packed into fixed-length token sequences.
//!
//! Packing: each side's documents, in path order, are tokenized (no special tokens), each followed
//! by the end-of-text token, concatenated, and cut into sequences of `length` tokens; the last,
//! shorter piece is dropped. A sequence may span two documents of the same side (the end-of-text
//! token between them), as in GPT-style pre-training.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

/// Why a corpus cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The directory or a file could not be read.
    #[error("dataset {path}: {message}")]
    Io {
        /// The path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The corpus cannot be used as it is.
    #[error("dataset {path}: {message}")]
    Invalid {
        /// The directory.
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// One document.
#[derive(Clone, Debug)]
pub struct Document {
    /// Its path relative to the corpus directory (what identifies it).
    pub name: String,
    /// Its token ids.
    pub ids: Vec<u32>,
}

/// A corpus split by document and packed.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// The directory read.
    pub path: PathBuf,
    /// Every document, in path order.
    pub documents: Vec<Document>,
    /// Indices into `documents` of the training side, in path order.
    pub train_documents: Vec<usize>,
    /// Indices into `documents` of the held-out side, in path order.
    pub held_out_documents: Vec<usize>,
    /// Training sequences, each `length` tokens.
    pub train: Vec<Vec<u32>>,
    /// Held-out sequences, each `length` tokens.
    pub held_out: Vec<Vec<u32>>,
}

impl Corpus {
    /// Tokens in the documents of `side`.
    pub fn tokens(&self, side: &[usize]) -> usize {
        side.iter().map(|&d| self.documents[d].ids.len() + 1).sum()
    }
}

/// What to read and how to cut it.
#[derive(Clone, Debug)]
pub struct CorpusSettings {
    /// Tokens per sequence.
    pub length: usize,
    /// Fraction of the documents held out.
    pub held_out_fraction: f64,
    /// Seed of the documents' shuffle that picks the held-out ones.
    pub seed: u64,
    /// At most this many sequences in all, taken from both sides in proportion (a seeded
    /// sample, kept in corpus order); all when unset.
    pub max_sequences: Option<usize>,
}

/// The token that ends a document: `<|endoftext|>` when the tokenizer has it (SmolLM2: id 0,
/// which llama.cpp also treats as end of text; its `eos` is the chat turn's `<|im_end|>`), else
/// `fallback` (the model's end-of-sequence token).
pub fn end_of_text(tokenizer: &Tokenizer, fallback: Option<u32>) -> Option<u32> {
    tokenizer.token_to_id("<|endoftext|>").or(fallback)
}

/// The `.txt` files under `dir` (recursively), sorted by their path relative to it.
pub fn list_documents(dir: &Path) -> Result<Vec<PathBuf>, CorpusError> {
    let io =
        |path: &Path, e: std::io::Error| CorpusError::Io { path: path.display().to_string(), message: e.to_string() };
    if !dir.is_dir() {
        return Err(CorpusError::Invalid {
            path: dir.display().to_string(),
            message: "format documents needs a directory of .txt files (one document each); this is not a directory"
                .into(),
        });
    }
    let mut found = vec![];
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| io(&d, e))? {
            let path = entry.map_err(|e| io(&d, e))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "txt") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Reads, tokenizes, splits and packs the corpus in `dir`. `end_of_text` is appended to every
/// document.
pub fn read_corpus(
    dir: &Path,
    tokenizer: &Tokenizer,
    end_of_text: u32,
    settings: &CorpusSettings,
) -> Result<Corpus, CorpusError> {
    let files = list_documents(dir)?;
    let invalid = |message: String| CorpusError::Invalid { path: dir.display().to_string(), message };
    if files.len() < 2 {
        return Err(invalid(format!(
            "holds {} .txt file(s); a split by document needs at least 2 (one document per file)",
            files.len()
        )));
    }
    let texts: Vec<String> = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f).map_err(|e| CorpusError::Io {
                path: f.display().to_string(),
                message: format!("{e} (documents must be UTF-8 text)"),
            })
        })
        .collect::<Result<_, _>>()?;
    let encodings = tokenizer
        .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), false)
        .map_err(|e| invalid(format!("tokenizing: {e}")))?;
    let documents: Vec<Document> = files
        .iter()
        .zip(encodings)
        .map(|(f, e)| Document {
            name: f.strip_prefix(dir).unwrap_or(f).display().to_string(),
            ids: e.get_ids().to_vec(),
        })
        .collect();

    let (train_documents, held_out_documents) =
        split_documents(documents.len(), settings.held_out_fraction, settings.seed);
    let pack_side =
        |side: &[usize]| pack(side.iter().map(|&d| documents[d].ids.as_slice()), end_of_text, settings.length);
    let mut train = pack_side(&train_documents);
    let mut held_out = pack_side(&held_out_documents);
    if train.is_empty() || held_out.is_empty() {
        return Err(invalid(format!(
            "too little text for sequences of {} tokens: {} training and {} held-out sequences; lower dataset.maxSequenceLength or add documents",
            settings.length,
            train.len(),
            held_out.len()
        )));
    }
    if let Some(max) = settings.max_sequences {
        let total = train.len() + held_out.len();
        if max < total {
            let keep_held_out =
                ((max as f64 * held_out.len() as f64 / total as f64).round() as usize).clamp(1, max - 1);
            held_out = sample(held_out, keep_held_out, settings.seed ^ 0x68656c64);
            train = sample(train, max - keep_held_out, settings.seed ^ 0x747261696e);
        }
    }
    Ok(Corpus { path: dir.to_path_buf(), documents, train_documents, held_out_documents, train, held_out })
}

/// A seeded split of `n` documents: `(train, held out)`, each in index order; at least one on
/// each side.
pub fn split_documents(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let held = ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1));
    let mut held_out: Vec<usize> = order[..held].to_vec();
    let mut train: Vec<usize> = order[held..].to_vec();
    held_out.sort_unstable();
    train.sort_unstable();
    (train, held_out)
}

/// Concatenates `documents`, each followed by `end_of_text`, and cuts the stream into pieces of
/// `length` tokens (the shorter last piece dropped).
pub fn pack<'a>(documents: impl Iterator<Item = &'a [u32]>, end_of_text: u32, length: usize) -> Vec<Vec<u32>> {
    let mut stream = vec![];
    for d in documents {
        stream.extend_from_slice(d);
        stream.push(end_of_text);
    }
    stream.chunks_exact(length).map(<[u32]>::to_vec).collect()
}

/// `keep` of `items`, chosen by a seeded shuffle, returned in their original order.
fn sample(items: Vec<Vec<u32>>, keep: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut chosen: Vec<usize> = order.into_iter().take(keep).collect();
    chosen.sort_unstable();
    let mut items: Vec<Option<Vec<u32>>> = items.into_iter().map(Some).collect();
    chosen.into_iter().map(|i| items[i].take().expect("chosen once")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_joins_documents_with_end_of_text_and_drops_the_short_tail() {
        let docs: [&[u32]; 2] = [&[1, 2, 3], &[4, 5]];
        assert_eq!(pack(docs.into_iter(), 0, 3), vec![vec![1, 2, 3], vec![0, 4, 5]]);
        assert_eq!(pack(docs.into_iter(), 0, 4), vec![vec![1, 2, 3, 0]]);
    }

    #[test]
    fn the_split_is_by_document_seeded_and_never_leaves_a_side_empty() {
        let (train, held) = split_documents(233, 0.1, 0);
        assert_eq!(held.len(), 23);
        assert_eq!(train.len() + held.len(), 233);
        assert!(held.iter().all(|d| !train.contains(d)));
        assert_eq!(split_documents(233, 0.1, 0), (train.clone(), held.clone()));
        assert_ne!(split_documents(233, 0.1, 1).1, held);
        let (t, h) = split_documents(2, 0.01, 0);
        assert_eq!((t.len(), h.len()), (1, 1));
    }

    #[test]
    fn a_corpus_directory_is_read_split_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("nested")).unwrap();
        for i in 0..10 {
            let sub = if i % 2 == 0 { "" } else { "nested/" };
            std::fs::write(dir.path().join(format!("{sub}doc{i}.txt")), "a b c d e f g h ".repeat(10)).unwrap();
        }
        std::fs::write(dir.path().join("README.md"), "not a document").unwrap();
        let tokenizer = whitespace_tokenizer();
        let settings = CorpusSettings { length: 8, held_out_fraction: 0.2, seed: 3, max_sequences: None };
        let corpus = read_corpus(dir.path(), &tokenizer, 99, &settings).unwrap();
        assert_eq!(corpus.documents.len(), 10);
        assert_eq!(corpus.held_out_documents.len(), 2);
        assert!(corpus.train.iter().chain(&corpus.held_out).all(|s| s.len() == 8));
        // 8 training documents of 80 tokens + end-of-text each: 648 tokens, 81 sequences.
        assert_eq!(corpus.train.len(), 81);
        let capped =
            read_corpus(dir.path(), &tokenizer, 99, &CorpusSettings { max_sequences: Some(20), ..settings }).unwrap();
        assert_eq!(capped.train.len() + capped.held_out.len(), 20);
        assert_eq!(capped.held_out.len(), 4, "in proportion: 20 × 20/101");
        let one = tempfile::tempdir().unwrap();
        std::fs::write(one.path().join("only.txt"), "a b").unwrap();
        let e =
            read_corpus(one.path(), &tokenizer, 99, &CorpusSettings { length: 2, ..capped_settings() }).unwrap_err();
        assert!(e.to_string().contains("at least 2"), "{e}");
        let e = read_corpus(&one.path().join("only.txt"), &tokenizer, 99, &capped_settings()).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    fn capped_settings() -> CorpusSettings {
        CorpusSettings { length: 8, held_out_fraction: 0.2, seed: 0, max_sequences: None }
    }

    /// Words a–h are tokens 0–7.
    fn whitespace_tokenizer() -> Tokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> = ('a'..='h')
            .enumerate()
            .map(|(i, c)| (c.to_string(), i.into()))
            .chain([("[UNK]".into(), 8.into())])
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
        });
        json.to_string().parse().unwrap()
    }
}
