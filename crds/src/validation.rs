//! Validation of whole objects against a CRD's generated schema, as the API server does at
//! admission: structure, types, ranges, enums, patterns, required fields, unknown fields (strict
//! field validation, `kubectl apply`'s default) and the CEL `x-kubernetes-validations` rules.
//!
//! The schema and the rules are the ones generated from this crate's types, so a spec the worker
//! accepts when run locally is a spec the cluster accepts, and the other way round. Every
//! [`Violation`] names the offending field by its path (`spec.training.batchSize`).

use std::fmt;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// One reason an object is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Dotted path of the offending field, e.g. `spec.rollout.steps[1].weight`; empty for the
    /// object itself.
    pub path: String,
    /// What is wrong and, where it can say, what is allowed.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Why an object could not be validated or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// The document is not YAML/JSON.
    #[error("not valid YAML or JSON: {0}")]
    Parse(String),
    /// The document is of another kind than expected.
    #[error(
        "expected apiVersion {expected_api_version} kind {expected_kind}, found apiVersion {api_version:?} kind {kind:?}"
    )]
    WrongKind {
        /// The apiVersion wanted.
        expected_api_version: String,
        /// The kind wanted.
        expected_kind: String,
        /// The apiVersion found.
        api_version: Option<String>,
        /// The kind found.
        kind: Option<String>,
    },
    /// The object breaks the schema or its rules.
    #[error("{} is invalid:\n{}", .kind, .violations.iter().map(|v| format!("  - {v}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The kind of the object.
        kind: String,
        /// Every violation found.
        violations: Vec<Violation>,
    },
    /// The object passed the schema but does not fit the Rust type (a bug: the two disagree).
    #[error("{kind} passed its schema but cannot be read: {message}")]
    Deserialize {
        /// The kind of the object.
        kind: String,
        /// serde's message.
        message: String,
    },
}

/// The `openAPIV3Schema` of a CRD's first version, as JSON.
pub fn crd_schema(crd: &CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("generated CRDs always carry an openAPIV3Schema");
    serde_json::to_value(schema).expect("a schema serialises to JSON")
}

/// Validates `object` against `crd`'s schema and CEL rules. Returns every violation found.
pub fn validate_object(crd: &CustomResourceDefinition, object: &Value) -> Result<(), Vec<Violation>> {
    validate_update(crd, object, None)
}

/// Like [`validate_object`], for an update of `old`: CEL transition rules (`oldSelf`) see it.
pub fn validate_update(
    crd: &CustomResourceDefinition,
    object: &Value,
    old: Option<&Value>,
) -> Result<(), Vec<Violation>> {
    let schema = crd_schema(crd);
    let mut violations = structural_violations(&schema, object);
    // CEL rules only run on a structurally valid object, as on the API server.
    if violations.is_empty()
        && let Err(errors) = Validator::new().validate(&schema, object, old)
    {
        violations.extend(
            errors
                .into_vec()
                .into_iter()
                .map(|e| Violation { path: e.field_path.trim_start_matches('.').to_string(), message: e.message }),
        );
    }
    if violations.is_empty() { Ok(()) } else { Err(violations) }
}

/// Parses a YAML or JSON document, checks its apiVersion and kind, validates it against `K`'s
/// CRD, and deserialises it.
pub fn load<K>(document: &str) -> Result<K, ValidationError>
where
    K: CustomResourceExt + DeserializeOwned,
{
    let value: Value = serde_norway::from_str(document).map_err(|e| ValidationError::Parse(e.to_string()))?;
    from_value(value)
}

/// Like [`load`], for an already parsed document.
pub fn from_value<K>(value: Value) -> Result<K, ValidationError>
where
    K: CustomResourceExt + DeserializeOwned,
{
    let crd = K::crd();
    let expected_api_version = K::api_resource().api_version;
    let kind = K::api_resource().kind;
    let api_version = value.get("apiVersion").and_then(Value::as_str).map(str::to_string);
    let found_kind = value.get("kind").and_then(Value::as_str).map(str::to_string);
    if api_version.as_deref() != Some(expected_api_version.as_str()) || found_kind.as_deref() != Some(kind.as_str()) {
        return Err(ValidationError::WrongKind {
            expected_api_version,
            expected_kind: kind,
            api_version,
            kind: found_kind,
        });
    }
    validate_object(&crd, &value).map_err(|violations| ValidationError::Invalid { kind: kind.clone(), violations })?;
    serde_json::from_value(value).map_err(|e| ValidationError::Deserialize { kind, message: e.to_string() })
}

/// Validates a document of any Distillery kind, chosen by its `kind` field.
pub fn validate_document(value: &Value) -> Result<(), ValidationError> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    let Some(crd) = crate::crds().into_iter().find(|c| c.spec.names.kind == kind) else {
        return Err(ValidationError::WrongKind {
            expected_api_version: format!("{}/{}", crate::GROUP, crate::VERSION),
            expected_kind: "DistillationJob, ModelDeployment or Benchmark".into(),
            api_version: value.get("apiVersion").and_then(Value::as_str).map(str::to_string),
            kind: Some(kind.to_string()).filter(|k| !k.is_empty()),
        });
    };
    validate_object(&crd, value).map_err(|violations| ValidationError::Invalid { kind: kind.to_string(), violations })
}

/// Structural checks with a JSON-schema validator, on a copy of the schema adapted to what the
/// API server enforces: `nullable` allows null, and objects that declare `properties` refuse
/// unknown fields (strict field validation) unless they preserve unknown fields.
fn structural_violations(schema: &Value, object: &Value) -> Vec<Violation> {
    let mut strict = schema.clone();
    adapt(&mut strict, true);
    let validator = match jsonschema::draft4::new(&strict) {
        Ok(v) => v,
        Err(e) => {
            return vec![Violation { path: String::new(), message: format!("the CRD schema itself is invalid: {e}") }];
        }
    };
    validator
        .iter_errors(object)
        .map(|e| Violation { path: pointer_to_path(e.instance_path().as_str()), message: e.to_string() })
        .collect()
}

fn adapt(schema: &mut Value, is_root: bool) {
    let Value::Object(map) = schema else { return };
    if map.get("nullable") == Some(&Value::Bool(true))
        && let Some(Value::String(t)) = map.get("type").cloned()
    {
        map.insert("type".into(), Value::Array(vec![Value::String(t), Value::String("null".into())]));
    }
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserve {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    if is_root {
        // apiVersion, kind and metadata are not in a CRD's schema; the API server knows them.
        let props = map.entry("properties").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(props) = props {
            for key in ["apiVersion", "kind"] {
                props.entry(key).or_insert_with(|| serde_json::json!({"type": "string"}));
            }
            props.entry("metadata").or_insert_with(|| serde_json::json!({"type": "object"}));
        }
    }
    for (key, child) in map.iter_mut() {
        match key.as_str() {
            "properties" => {
                if let Value::Object(props) = child {
                    props.values_mut().for_each(|p| adapt(p, false));
                }
            }
            "items" | "additionalProperties" => adapt(child, false),
            "allOf" | "anyOf" | "oneOf" => {
                if let Value::Array(items) = child {
                    items.iter_mut().for_each(|p| adapt(p, false));
                }
            }
            _ => {}
        }
    }
}

/// `/spec/rollout/steps/1/weight` → `spec.rollout.steps[1].weight`.
fn pointer_to_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_paths_read_like_kubectl() {
        assert_eq!(pointer_to_path("/spec/rollout/steps/1/weight"), "spec.rollout.steps[1].weight");
        assert_eq!(pointer_to_path(""), "");
        assert_eq!(
            pointer_to_path("/metadata/labels/app.kubernetes.io~1name"),
            "metadata.labels.app.kubernetes.io/name"
        );
    }
}
