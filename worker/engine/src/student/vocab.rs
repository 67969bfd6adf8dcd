//! Vocabulary pruning: a student whose word-embedding table holds only the tokens its training data
//! uses, and a tokenizer rewritten to match.
//!
//! WordPiece picks, word by word, the longest vocabulary entry that prefixes what is left of the
//! word. Keeping every entry the training texts' tokenization used therefore tokenizes those texts
//! exactly as before (a longer match absent from the pruned vocabulary was absent from the full one
//! too). Unseen words at inference fall back to shorter pieces; every single ASCII character (with
//! and without the `##` continuation prefix) is kept so that an ASCII word never becomes `[UNK]`.
//! New ids follow the old ids' order, so special tokens keep their relative positions.

use std::collections::BTreeSet;

use candle_core::{Result as CandleResult, Tensor};
use serde_json::Value;
use tokenizers::Tokenizer;

/// Why a vocabulary could not be pruned.
#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    /// The tokenizer is not a WordPiece tokenizer in the layout pruning understands.
    #[error("vocabulary pruning needs a WordPiece tokenizer.json: {0}")]
    Unsupported(String),
    /// The rewritten tokenizer did not load.
    #[error("the pruned tokenizer does not load: {0}")]
    Rebuild(String),
}

/// A pruned vocabulary: which old ids are kept, in new-id order.
#[derive(Clone, Debug, PartialEq)]
pub struct Pruning {
    /// `kept[new_id] = old_id`, ascending.
    pub kept: Vec<u32>,
    /// `new_id[old_id]`, `None` for dropped tokens.
    new_id: Vec<Option<u32>>,
}

impl Pruning {
    /// Keeps `used` ids, the tokenizer's special tokens and every single-ASCII-character piece of
    /// `tokenizer_json`'s WordPiece vocabulary.
    pub fn new(tokenizer_json: &Value, used: impl IntoIterator<Item = u32>) -> Result<Self, VocabError> {
        let vocab = wordpiece_vocab(tokenizer_json)?;
        let size = vocab.values().filter_map(Value::as_u64).max().map_or(0, |m| m as usize + 1);
        let mut keep: BTreeSet<u32> = used.into_iter().collect();
        for added in tokenizer_json["added_tokens"].as_array().into_iter().flatten() {
            if let Some(id) = added["id"].as_u64() {
                keep.insert(id as u32);
            }
        }
        for (token, id) in vocab {
            let piece = token.strip_prefix("##").unwrap_or(token);
            let mut chars = piece.chars();
            if let (Some(c), None) = (chars.next(), chars.next())
                && c.is_ascii()
                && let Some(id) = id.as_u64()
            {
                keep.insert(id as u32);
            }
        }
        if let Some(&bad) = keep.iter().find(|&&id| id as usize >= size) {
            return Err(VocabError::Unsupported(format!("token id {bad} is outside the vocabulary of {size}")));
        }
        let kept: Vec<u32> = keep.into_iter().collect();
        let mut new_id = vec![None; size];
        for (new, &old) in kept.iter().enumerate() {
            new_id[old as usize] = Some(new as u32);
        }
        Ok(Self { kept, new_id })
    }

    /// Size of the pruned vocabulary.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether nothing is kept (never, for a real tokenizer).
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The new id of `old`, if kept.
    pub fn map(&self, old: u32) -> Option<u32> {
        self.new_id.get(old as usize).copied().flatten()
    }

    /// The rows of an embedding table `(old vocabulary, hidden)` for the kept tokens.
    pub fn select_rows(&self, table: &Tensor) -> CandleResult<Tensor> {
        let idx = Tensor::new(self.kept.as_slice(), table.device())?;
        table.index_select(&idx, 0)
    }

    /// `tokenizer_json` with its vocabulary and special-token ids rewritten to the pruned ids.
    pub fn rewrite_tokenizer(&self, tokenizer_json: &Value) -> Result<Value, VocabError> {
        let mut out = tokenizer_json.clone();
        let remap = |v: &mut Value| -> Result<(), VocabError> {
            let old = v.as_u64().ok_or_else(|| VocabError::Unsupported(format!("id {v} is not a number")))?;
            let new = self
                .map(old as u32)
                .ok_or_else(|| VocabError::Unsupported(format!("special token id {old} was not kept")))?;
            *v = Value::from(new);
            Ok(())
        };
        let vocab = wordpiece_vocab(tokenizer_json)?;
        let mut pruned = serde_json::Map::new();
        // Insert in new-id order so the file reads like a vocab.txt.
        let mut entries: Vec<(&String, u32)> = vocab
            .iter()
            .filter_map(|(t, id)| id.as_u64().and_then(|id| self.map(id as u32)).map(|new| (t, new)))
            .collect();
        entries.sort_by_key(|&(_, new)| new);
        for (token, new) in entries {
            pruned.insert(token.clone(), Value::from(new));
        }
        out["model"]["vocab"] = Value::Object(pruned);
        if let Some(added) = out["added_tokens"].as_array_mut() {
            for token in added {
                remap(&mut token["id"])?;
            }
        }
        if let Some(specials) = out["post_processor"]["special_tokens"].as_object_mut() {
            for special in specials.values_mut() {
                for id in special["ids"].as_array_mut().into_iter().flatten() {
                    remap(id)?;
                }
            }
        }
        if out["padding"].is_object() {
            remap(&mut out["padding"]["pad_id"])?;
        }
        Ok(out)
    }

    /// The pruned tokenizer, loaded.
    pub fn tokenizer(&self, tokenizer_json: &Value) -> Result<Tokenizer, VocabError> {
        let text = self.rewrite_tokenizer(tokenizer_json)?.to_string();
        text.parse::<Tokenizer>().map_err(|e| VocabError::Rebuild(e.to_string()))
    }
}

fn wordpiece_vocab(tokenizer_json: &Value) -> Result<&serde_json::Map<String, Value>, VocabError> {
    let model = &tokenizer_json["model"];
    if model["type"].as_str() != Some("WordPiece") {
        return Err(VocabError::Unsupported(format!("model type is {}", model["type"])));
    }
    model["vocab"].as_object().ok_or_else(|| VocabError::Unsupported("model.vocab is not a map".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tokenizer() -> Value {
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [
                {"id": 0, "content": "[PAD]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "[UNK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 2, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 3, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
                "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}
            },
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "good": 4, "film": 5, "bad": 6, "films": 7,
                          "g": 8, "o": 9, "d": 10, "##o": 11, "##d": 12, "##s": 13, "f": 14, "##i": 15, "##l": 16, "##m": 17, "é": 18, "b": 19, "##a": 20}}
        })
    }

    fn ids(t: &Tokenizer, text: &str) -> Vec<u32> {
        t.encode(text, true).unwrap().get_ids().to_vec()
    }

    #[test]
    fn kept_texts_tokenize_exactly_as_before_and_unseen_words_fall_back_to_pieces() {
        let json = tokenizer();
        let full: Tokenizer = json.to_string().parse().unwrap();
        let train = ids(&full, "good film");
        assert_eq!(train, [2, 4, 5, 3]);
        let pruning = Pruning::new(&json, train.iter().copied()).unwrap();
        // specials 0-3, used 4 and 5, and every single-ASCII-character piece; "bad", "films" and
        // the non-ASCII "é" are dropped.
        let kept_tokens: Vec<u32> = pruning.kept.clone();
        assert_eq!(kept_tokens, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19, 20]);
        let pruned = pruning.tokenizer(&json).unwrap();
        let remapped: Vec<u32> = train.iter().map(|&i| pruning.map(i).unwrap()).collect();
        assert_eq!(ids(&pruned, "good film"), remapped, "training text tokenizes as before");
        // "films" was a single token; now film + ##s. "bad" was a token; now b ##a ##d.
        let films = ids(&pruned, "films");
        let expect: Vec<u32> = [2, 5, 13, 3].iter().map(|&i| pruning.map(i).unwrap()).collect();
        assert_eq!(films, expect);
        let bad: Vec<u32> = [2, 19, 20, 12, 3].iter().map(|&i| pruning.map(i).unwrap()).collect();
        assert_eq!(ids(&pruned, "bad"), bad);
        assert_eq!(pruned.token_to_id("[SEP]"), Some(3));
        assert_eq!(pruned.get_vocab_size(true), pruning.len());
    }

    #[test]
    fn rows_follow_the_kept_ids() {
        let json = tokenizer();
        let pruning = Pruning::new(&json, [5u32]).unwrap();
        let table = Tensor::arange(0f32, 21., &candle_core::Device::Cpu).unwrap().reshape((21, 1)).unwrap();
        let rows: Vec<f32> = pruning.select_rows(&table).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let expect: Vec<f32> = pruning.kept.iter().map(|&i| i as f32).collect();
        assert_eq!(rows, expect);
        assert!(pruning.map(4).is_none() && pruning.map(5).is_some());
    }

    #[test]
    fn a_non_wordpiece_tokenizer_is_refused() {
        let mut json = tokenizer();
        json["model"]["type"] = json!("BPE");
        let err = Pruning::new(&json, [4u32]).unwrap_err().to_string();
        assert!(err.contains("WordPiece") && err.contains("BPE"), "{err}");
    }
}
