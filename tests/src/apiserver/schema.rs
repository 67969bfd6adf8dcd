//! What the API server does with a custom resource's `openAPIV3Schema` on every write: prune
//! fields the schema does not declare (or refuse them, with strict field validation), apply
//! defaults, then validate structure and CEL rules (`distillery_crds::validation`, the same code
//! the worker validates local specs with).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// `fieldValidation`: what to do with fields the schema does not declare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in a `Warning` header (the server's default).
    #[default]
    Warn,
    /// Refuse the request (`kubectl`'s default).
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter (absent: `Warn`).
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => {
                Err(format!("fieldValidation: Invalid value: {other:?}: must be one of Ignore, Warn, Strict"))
            }
        }
    }
}

/// The `openAPIV3Schema` of `crd`'s version `version`.
pub fn version_schema(crd: &CustomResourceDefinition, version: &str) -> Option<Value> {
    let v = crd.spec.versions.iter().find(|v| v.name == version)?;
    let schema = v.schema.as_ref()?.open_api_v3_schema.as_ref()?;
    serde_json::to_value(schema).ok()
}

/// Removes every field `schema` does not declare from `value`; returns their paths
/// (`spec.foo`, `spec.items[0].bar`). `apiVersion`, `kind` and `metadata` at the root, and under
/// `x-kubernetes-embedded-resource`, are always known.
pub fn prune(schema: &Value, value: &mut Value) -> Vec<String> {
    let mut unknown = vec![];
    prune_at(schema, value, "", true, &mut unknown);
    unknown
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn prune_at(schema: &Value, value: &mut Value, path: &str, is_root: bool, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
            let embedded = is_root || schema["x-kubernetes-embedded-resource"] == Value::Bool(true);
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if embedded && ["apiVersion", "kind", "metadata"].contains(&key.as_str()) {
                    continue;
                }
                let child_path = join(path, &key);
                let child_schema = properties.and_then(|p| p.get(&key)).or(additional);
                match child_schema {
                    Some(s) => prune_at(s, map.get_mut(&key).expect("key listed"), &child_path, false, unknown),
                    None if preserve => {}
                    None => {
                        map.remove(&key);
                        unknown.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(item_schema, item, &format!("{path}[{i}]"), false, unknown);
                }
            }
        }
        _ => {}
    }
}

/// Fills in `default`s for absent fields of every object present in `value`, recursively.
pub fn apply_defaults(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (key, property) in properties {
                    if !map.contains_key(key)
                        && let Some(default) = property.get("default")
                    {
                        map.insert(key.clone(), default.clone());
                    }
                    if let Some(child) = map.get_mut(key) {
                        apply_defaults(property, child);
                    }
                }
            } else if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                map.values_mut().for_each(|child| apply_defaults(additional, child));
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                items.iter_mut().for_each(|item| apply_defaults(item_schema, item));
            }
        }
        _ => {}
    }
}

/// Validates a custom resource the way the server does before storing it: `(field, message)`
/// for every violation of the schema and its CEL rules (transition rules see `old`).
pub fn validate(crd: &CustomResourceDefinition, object: &Value, old: Option<&Value>) -> Vec<(String, String)> {
    match distillery_crds::validation::validate_update(crd, object, old) {
        Ok(()) => vec![],
        Err(violations) => violations.into_iter().map(|v| (v.path, v.message)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        "replicas": {"type": "integer", "default": 1},
                        "mode": {"type": "string", "default": "fast"},
                        "steps": {"type": "array", "items": {"type": "object", "properties": {"weight": {"type": "integer", "default": 10}}}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    }
                }
            }
        })
    }

    #[test]
    fn unknown_fields_are_pruned_and_reported_by_path() {
        let mut obj = json!({
            "apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"replicas": 2, "typo": 1, "steps": [{"weight": 3, "wieght": 4}], "labels": {"any": "thing"}, "free": {"whatever": 1}},
            "extra": true,
        });
        let unknown = prune(&schema(), &mut obj);
        assert_eq!(unknown, vec!["extra", "spec.steps[0].wieght", "spec.typo"]);
        assert_eq!(obj["spec"]["labels"]["any"], "thing", "additionalProperties keep any key");
        assert_eq!(obj["spec"]["free"]["whatever"], 1, "preserve-unknown-fields keeps them");
        assert_eq!(obj["metadata"]["name"], "a");
    }

    #[test]
    fn defaults_fill_absent_fields_of_present_objects_only() {
        let mut obj = json!({"spec": {"mode": "slow", "steps": [{}, {"weight": 5}]}});
        apply_defaults(&schema(), &mut obj);
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["spec"]["mode"], "slow", "a value given is kept");
        assert_eq!(obj["spec"]["steps"], json!([{"weight": 10}, {"weight": 5}]));
        assert!(obj["spec"].get("labels").is_none(), "no default, nothing added");
    }
}
