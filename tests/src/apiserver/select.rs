//! Label selectors (equality- and set-based) and field selectors, parsed from their query-string
//! form as the API server accepts them.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelRequirement>);

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (vec![], 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

fn set_values(text: &str, whole: &str) -> Result<Vec<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("unable to parse requirement: {whole:?}: expected a parenthesised set of values"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

fn check_key(key: &str, whole: &str) -> Result<String, String> {
    let key = key.trim();
    let valid = !key.is_empty()
        && key.len() <= 316
        && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && key.matches('/').count() <= 1;
    if valid {
        Ok(key.to_string())
    } else {
        Err(format!("unable to parse requirement: {whole:?}: invalid label key {key:?}"))
    }
}

impl LabelSelector {
    /// Parses `app=x,tier!=db,env in (a,b),!legacy`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = vec![];
        for part in split_top_level(text) {
            let requirement = if let Some(key) = part.strip_prefix('!') {
                LabelRequirement::DoesNotExist(check_key(key, part)?)
            } else if let Some((key, values)) = part.split_once(" notin ") {
                LabelRequirement::NotIn(check_key(key, part)?, set_values(values, part)?)
            } else if let Some((key, values)) = part.split_once(" in ") {
                LabelRequirement::In(check_key(key, part)?, set_values(values, part)?)
            } else if let Some((key, value)) = part.split_once("!=") {
                LabelRequirement::NotEquals(check_key(key, part)?, value.trim().to_string())
            } else if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
                LabelRequirement::Equals(check_key(key, part)?, value.trim().to_string())
            } else {
                LabelRequirement::Exists(check_key(part, part)?)
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// Whether `object`'s labels satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::DoesNotExist(k) => label(k).is_none(),
        })
    }
}

/// A parsed `fieldSelector`: `path=value`, `path==value` or `path!=value`, comma-separated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// The fields every kind can be selected by; a kind adds its own (see [`FieldSelector::parse`]).
const COMMON_FIELDS: [&str; 2] = ["metadata.name", "metadata.namespace"];

/// Fields the real server supports selecting on, by kind, beyond the common ones.
fn kind_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "regarding.uid",
        ],
        "Secret" => &["type"],
        "Job" => &["status.successful"],
        "ReplicaSet" => &["status.replicas"],
        "Namespace" => &["status.phase"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses a field selector for objects of `kind`; a field the server does not index for that
    /// kind is refused, as the real server does.
    pub fn parse(text: &str, kind: &str) -> Result<Self, String> {
        let mut terms = vec![];
        for part in split_top_level(text) {
            let (path, equal, value) = if let Some((p, v)) = part.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (p, true, v)
            } else {
                return Err(format!("invalid selector: '{part}'; can't understand '{part}'"));
            };
            let path = path.trim();
            if !COMMON_FIELDS.contains(&path) && !kind_fields(kind).contains(&path) {
                return Err(format!("field label not supported: {path}"));
            }
            terms.push((path.to_string(), equal, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    /// Whether `object` satisfies every term (a missing field reads as the empty string).
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, value)| {
            let field = path.split('.').try_fold(object, |v, key| v.get(key));
            let text = match field {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (text == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn equality_and_set_based_label_selectors() {
        let obj = labelled(json!({"app": "web", "tier": "front"}));
        let yes = [
            "app=web",
            "app==web",
            "app!=db",
            "tier in (front, back)",
            "env notin (prod)",
            "app",
            "!env",
            "app=web,tier",
        ];
        let no = ["app=db", "app!=web", "tier in (back)", "tier notin (front)", "env", "!app", "app=web,env"];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&obj), "{s} should match");
        }
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&obj), "{s} should not match");
        }
        assert!(LabelSelector::parse("").unwrap().matches(&obj), "the empty selector matches everything");
        assert!(LabelSelector::parse("env in prod").is_err());
        assert!(LabelSelector::parse("bad key=x").is_err());
    }

    #[test]
    fn field_selectors_on_indexed_fields_only() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Running"}});
        assert!(FieldSelector::parse("metadata.name=p,status.phase=Running", "Pod").unwrap().matches(&pod));
        assert!(!FieldSelector::parse("status.phase!=Running", "Pod").unwrap().matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=", "Pod").unwrap().matches(&pod), "missing reads as empty");
        let err = FieldSelector::parse("status.phase=Running", "ConfigMap").unwrap_err();
        assert_eq!(err, "field label not supported: status.phase");
    }
}
