//! Reading the artifact a server serves: the manifest (`distillery.json`), the ONNX variant it
//! names (verified against its sha256, and against the digest the server was told to serve), the
//! tokenizer and the classifier's labels.
//!
//! A `file://` URI or a plain path is read where it is; an `s3://` artifact is first downloaded
//! into the model cache by the artifact store ([`distillery_store`]), which checks every file
//! against the manifest ([`local_dir`]).

use std::path::{Path, PathBuf};

use distillery_crds::manifest::{ArtifactManifest, FP32_MODEL, INT8_MODEL, MANIFEST_FILE, sha256};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::tokenize::load_tokenizer;

/// What a token-id request must respect: the model's vocabulary and position table.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Token ids must be below this.
    pub vocab_size: usize,
    /// Sequences may be at most this long.
    pub max_positions: usize,
}

/// Which ONNX file to serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VariantChoice {
    /// What the manifest's `servedVariant` says (int8 when it passed its gate, else fp32).
    Auto,
    /// `model.onnx`.
    Fp32,
    /// `model.int8.onnx`.
    Int8,
}

/// Why an artifact cannot be served. Every one is fatal at start-up: the pod fails its start
/// and the message (in its log and termination message) says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The URI names a store this build cannot read.
    #[error("model {0}: serve a local path, a file:// URI or an s3:// URI")]
    UnsupportedUri(String),
    /// The `s3://` artifact could not be downloaded, or did not match its manifest.
    #[error("{0}")]
    Store(String),
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The manifest names no such variant, or the variant was never written.
    #[error("{0}")]
    Variant(String),
    /// A file's content does not match the manifest's sha256.
    #[error(
        "{path}: sha256 {actual} does not match the manifest's {expected}; the artifact is corrupt or was changed after it was written"
    )]
    Digest {
        /// The file.
        path: PathBuf,
        /// The manifest's digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The served file is not the one this server was told to serve (`--expect-digest`): the
    /// artifact at this location was replaced after the rollout resolved it.
    #[error(
        "refusing to serve {path} (the {variant} variant): its sha256 is {actual} but this server must serve {expected} (--expect-digest) — the artifact at this location changed since the rollout resolved it; artifacts are immutable: write a new model to a new location"
    )]
    Unexpected {
        /// The served file.
        path: PathBuf,
        /// The variant chosen.
        variant: String,
        /// The digest this server must serve.
        expected: String,
        /// The file's digest.
        actual: String,
    },
}

/// An artifact loaded for serving: everything about the model but its bytes, which
/// [`ServedArtifact::load`] returns beside it (the sessions keep their own copy).
pub struct ServedArtifact {
    /// The variant served (`fp32` or `int8`).
    pub variant: String,
    /// sha256 of the served ONNX file.
    pub digest: String,
    /// The tokenizer, truncating to [`ServedArtifact::max_sequence_length`] and never padding.
    pub tokenizer: Tokenizer,
    /// Class names in logit order.
    pub labels: Vec<String>,
    /// Tokens per text after truncation (the length the model was trained with).
    pub max_sequence_length: usize,
    /// Size of the vocabulary: valid `input_ids` are below it.
    pub vocab_size: usize,
    /// Longest sequence the position embeddings cover.
    pub max_positions: usize,
    /// Width of the pooled embedding.
    pub hidden_size: usize,
}

/// The local directory of `model`: where it is for a path or `file://` URI; for `s3://`, the
/// artifact store's verified copy in `cache` (downloaded unless already there).
pub async fn local_dir(model: &str, s3: &distillery_store::S3Settings, cache: &Path) -> Result<PathBuf, ArtifactError> {
    if model.starts_with("s3://") {
        let store = distillery_store::Store::new(s3.clone());
        return store.fetch_artifact(model, cache).await.map_err(|e| ArtifactError::Store(e.to_string()));
    }
    resolve(model)
}

/// The local directory of a model URI or path (`s3://` goes through [`local_dir`]).
pub fn resolve(model: &str) -> Result<PathBuf, ArtifactError> {
    if let Some(path) = model.strip_prefix("file://") {
        return Ok(PathBuf::from(path));
    }
    if model.contains("://") {
        return Err(ArtifactError::UnsupportedUri(model.into()));
    }
    Ok(PathBuf::from(model))
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::File { path: path.to_path_buf(), message: message.to_string() }
}

fn read_json(path: &Path) -> Result<Value, ArtifactError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| file_error(path, format!("not valid JSON: {e}")))
}

/// Refuses a served file whose sha256 (`actual`, already verified against the manifest) is not
/// the one this server must serve, when it was told one (`--expect-digest`). Pure.
pub fn check_expected(path: &Path, variant: &str, expected: Option<&str>, actual: &str) -> Result<(), ArtifactError> {
    match expected {
        Some(expected) if expected != actual => Err(ArtifactError::Unexpected {
            path: path.to_path_buf(),
            variant: variant.into(),
            expected: expected.into(),
            actual: actual.into(),
        }),
        _ => Ok(()),
    }
}

/// The file to serve for `choice`, from the manifest: `(variant, file name, expected sha256)`.
/// Pure: it decides from the manifest alone.
pub fn pick_variant(
    manifest: &ArtifactManifest,
    choice: VariantChoice,
) -> Result<(String, String, String), ArtifactError> {
    let name = match choice {
        VariantChoice::Fp32 => "fp32".to_string(),
        VariantChoice::Int8 => "int8".to_string(),
        VariantChoice::Auto => manifest.served_variant.clone().ok_or_else(|| {
            ArtifactError::Variant(
                "the manifest names no served variant: the artifact was never exported to ONNX (run `distillery-worker export` and `quantize` on it)".into(),
            )
        })?,
    };
    let default_file = if name == "int8" { INT8_MODEL } else { FP32_MODEL };
    let Some(variant) = manifest.variants.get(&name) else {
        return Err(ArtifactError::Variant(format!(
            "the manifest has no {name} variant (it has: {}); run `distillery-worker export`/`quantize` on the artifact, or serve another variant",
            if manifest.variants.is_empty() {
                "none".to_string()
            } else {
                manifest.variants.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        )));
    };
    let Some(file) = variant.file.clone() else {
        let why = manifest.served_variant_reason.as_deref().unwrap_or("it failed its gate");
        return Err(ArtifactError::Variant(format!(
            "the {name} model was not written ({why}); serve `auto` or `fp32` instead"
        )));
    };
    if file.contains('/') || file.contains('\\') || file.starts_with('.') {
        return Err(ArtifactError::Variant(format!(
            "the manifest's {name} variant names {file:?}, which is not a file of the artifact directory (usually {default_file})"
        )));
    }
    Ok((name, file, variant.sha256.clone()))
}

impl ServedArtifact {
    /// Loads the artifact at `dir`: manifest, the `choice` variant (its sha256 checked against the
    /// manifest), tokenizer and `config.json`. Returns it with the served ONNX model's bytes.
    pub fn load(dir: &Path, choice: VariantChoice) -> Result<(Self, Vec<u8>), ArtifactError> {
        Self::load_expecting(dir, choice, None)
    }

    /// [`ServedArtifact::load`], and the served file's sha256 must then be `expect_digest` when
    /// given (`--expect-digest`): what a server does before it turns ready.
    pub fn load_expecting(
        dir: &Path,
        choice: VariantChoice,
        expect_digest: Option<&str>,
    ) -> Result<(Self, Vec<u8>), ArtifactError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        if !dir.is_dir() {
            return Err(file_error(dir, "no such artifact directory"));
        }
        let manifest: ArtifactManifest = serde_json::from_value(read_json(&manifest_path)?)
            .map_err(|e| file_error(&manifest_path, format!("not a Distillery manifest: {e}")))?;
        let (variant, file, expected) = pick_variant(&manifest, choice)?;
        let model_path = dir.join(&file);
        let model = std::fs::read(&model_path).map_err(|e| file_error(&model_path, e))?;
        let digest = sha256(&model);
        if digest != expected {
            return Err(ArtifactError::Digest { path: model_path, expected, actual: digest });
        }
        check_expected(&model_path, &variant, expect_digest, &digest)?;
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        let field = |pointer: &str| {
            config.pointer(pointer).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| {
                file_error(&config_path, format!("{} is missing or not a number", &pointer[1..].replace('/', ".")))
            })
        };
        let max_sequence_length = field("/distillery/maxSequenceLength")?;
        let vocab_size = field("/vocab_size")?;
        let max_positions = field("/max_position_embeddings")?;
        let hidden_size = field("/hidden_size")?;
        let labels =
            labels(&config).ok_or_else(|| file_error(&config_path, "id2label must map 0..n-1 to class names"))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = load_tokenizer(&tokenizer_path, max_sequence_length.min(max_positions))
            .map_err(|e| file_error(&tokenizer_path, e.message))?;
        let artifact =
            Self { variant, digest, tokenizer, labels, max_sequence_length, vocab_size, max_positions, hidden_size };
        Ok((artifact, model))
    }

    /// What a token-id request must respect.
    pub fn limits(&self) -> Limits {
        Limits { vocab_size: self.vocab_size, max_positions: self.max_positions }
    }
}

/// Class names in logit order from `config.json`'s `id2label`.
fn labels(config: &Value) -> Option<Vec<String>> {
    let id2label = config.get("id2label")?.as_object()?;
    if id2label.is_empty() {
        return None;
    }
    (0..id2label.len()).map(|i| id2label.get(&i.to_string()).and_then(Value::as_str).map(str::to_string)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use distillery_crds::manifest::OnnxVariant;

    fn manifest(served: Option<&str>, int8_file: Option<&str>) -> ArtifactManifest {
        let mut m = ArtifactManifest::default();
        m.variants.insert(
            "fp32".into(),
            OnnxVariant { file: Some(FP32_MODEL.into()), sha256: "aa".into(), ..Default::default() },
        );
        m.variants.insert(
            "int8".into(),
            OnnxVariant { file: int8_file.map(str::to_string), sha256: "bb".into(), ..Default::default() },
        );
        m.served_variant = served.map(str::to_string);
        m.served_variant_reason = Some("int8 cost 3.00 points (budget 1.00)".into());
        m
    }

    #[test]
    fn auto_follows_the_manifest_and_explicit_choices_are_honoured() {
        let m = manifest(Some("int8"), Some(INT8_MODEL));
        assert_eq!(pick_variant(&m, VariantChoice::Auto).unwrap(), ("int8".into(), INT8_MODEL.into(), "bb".into()));
        assert_eq!(pick_variant(&m, VariantChoice::Fp32).unwrap(), ("fp32".into(), FP32_MODEL.into(), "aa".into()));
    }

    #[test]
    fn an_int8_model_that_failed_its_gate_is_refused_with_the_reason() {
        let m = manifest(Some("fp32"), None);
        assert_eq!(pick_variant(&m, VariantChoice::Auto).unwrap().0, "fp32");
        let err = pick_variant(&m, VariantChoice::Int8).unwrap_err().to_string();
        assert!(err.contains("not written") && err.contains("3.00 points"), "{err}");
    }

    #[test]
    fn a_variant_file_outside_the_artifact_is_refused() {
        for file in ["../elsewhere.onnx", "/etc/passwd", "sub/model.onnx", ".."] {
            let err = pick_variant(&manifest(Some("int8"), Some(file)), VariantChoice::Auto).unwrap_err().to_string();
            assert!(err.contains("not a file of the artifact directory"), "{file}: {err}");
        }
    }

    #[test]
    fn an_unexported_artifact_says_to_export_it() {
        let err = pick_variant(&ArtifactManifest::default(), VariantChoice::Auto).unwrap_err().to_string();
        assert!(err.contains("distillery-worker export"), "{err}");
        let err = pick_variant(&ArtifactManifest::default(), VariantChoice::Fp32).unwrap_err().to_string();
        assert!(err.contains("no fp32 variant") && err.contains("none"), "{err}");
    }

    #[test]
    fn uris_resolve_to_directories_and_other_stores_are_refused() {
        assert_eq!(resolve("file:///artifacts/a").unwrap(), PathBuf::from("/artifacts/a"));
        assert_eq!(resolve("rel/dir").unwrap(), PathBuf::from("rel/dir"));
        assert!(matches!(resolve("s3://bucket/a"), Err(ArtifactError::UnsupportedUri(_))));
    }

    #[test]
    fn a_file_other_than_the_expected_one_is_refused_naming_both_digests() {
        let path = Path::new("/artifacts/x/model.int8.onnx");
        assert!(check_expected(path, "int8", None, "aa").is_ok());
        assert!(check_expected(path, "int8", Some("aa"), "aa").is_ok());
        let err = check_expected(path, "int8", Some("bb"), "aa").unwrap_err().to_string();
        for part in ["refusing to serve /artifacts/x/model.int8.onnx", "int8 variant", "sha256 is aa", "must serve bb"]
        {
            assert!(err.contains(part), "{part}: {err}");
        }
        assert!(err.contains("artifacts are immutable"), "{err}");
    }

    #[test]
    fn labels_come_in_logit_order() {
        let c = serde_json::json!({"id2label": {"1": "rotten", "0": "fresh"}});
        assert_eq!(labels(&c).unwrap(), ["fresh", "rotten"]);
        assert!(labels(&serde_json::json!({"id2label": {"0": "a", "2": "c"}})).is_none());
    }
}
