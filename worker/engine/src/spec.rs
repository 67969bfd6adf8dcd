//! Reading a DistillationJob spec from a file: the same YAML a user applies to the cluster, or the
//! JSON the operator hands the worker pod. `${NAME}` in the document is replaced by the
//! environment variable NAME, so a local spec can point into the setup cache
//! (`file://${DISTILLERY_CACHE}/…`). The spec is validated against the CRD's schema and CEL rules,
//! exactly as the API server would.

use std::path::{Path, PathBuf};

use distillery_crds::DistillationJob;
use distillery_crds::cache::cache_dir;
use distillery_crds::validation::{ValidationError, from_value};

/// Why a spec could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `${NAME}` names an unset variable.
    #[error("{path}: ${{{name}}} is used but the environment variable {name} is not set")]
    UnsetVariable {
        /// The file.
        path: PathBuf,
        /// The variable.
        name: String,
    },
    /// Not YAML/JSON.
    #[error("{path} is not valid YAML or JSON: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// Invalid against the schema or its rules.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every violation.
        source: ValidationError,
    },
}

/// Replaces every `${NAME}` in `text` using `lookup`. `DISTILLERY_CACHE` falls back to the
/// default cache directory when unset. Returns the name of the first unset variable as an error.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        let value = lookup(name).or_else(|| (name == "DISTILLERY_CACHE").then(|| cache_dir().display().to_string()));
        match value {
            Some(v) => out.push_str(&v),
            None => return Err(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads, expands and validates a DistillationJob from `path`.
pub fn load(path: &Path) -> Result<DistillationJob, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read { path: path.into(), source })?;
    parse(&text, path)
}

/// Expands and validates a DistillationJob document; `path` names where it came from in errors.
pub fn parse(text: &str, path: &Path) -> Result<DistillationJob, SpecError> {
    parse_as(text, path)
}

/// Expands and validates a document of any Distillery kind `K` (a Benchmark, …).
pub fn parse_as<K>(text: &str, path: &Path) -> Result<K, SpecError>
where
    K: kube::CustomResourceExt + serde::de::DeserializeOwned,
{
    let text = expand(text, |name| std::env::var(name).ok())
        .map_err(|name| SpecError::UnsetVariable { path: path.into(), name })?;
    let value: serde_json::Value =
        serde_norway::from_str(&text).map_err(|e| SpecError::Parse { path: path.into(), message: e.to_string() })?;
    from_value(value).map_err(|source| SpecError::Invalid { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "DISTILLERY_CACHE" => Some("/cache".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_known_variables() {
        assert_eq!(expand("x ${A} y ${A}", env).unwrap(), "x alpha y alpha");
        assert_eq!(expand("file://${DISTILLERY_CACHE}/t", env).unwrap(), "file:///cache/t");
        assert_eq!(expand("no variables", env).unwrap(), "no variables");
        assert_eq!(expand("unterminated ${A", env).unwrap(), "unterminated ${A");
    }

    #[test]
    fn unset_variable_is_named() {
        assert_eq!(expand("${NOPE}", env).unwrap_err(), "NOPE");
    }

    #[test]
    fn cache_variable_has_a_default() {
        // With no value from the lookup, DISTILLERY_CACHE resolves as scripts/setup.sh does.
        let out = expand("${DISTILLERY_CACHE}", |_| None).unwrap();
        assert_eq!(out, cache_dir().display().to_string());
        assert!(!out.is_empty() && !out.contains("${"), "{out}");
    }
}
