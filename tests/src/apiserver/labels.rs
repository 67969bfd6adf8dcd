//! Validation of object metadata every kind shares, as the real API server does it: label keys
//! and values (syntax, 63 characters), annotation keys and their total size — on the object, on
//! a pod template inside it, and on the label selectors that select by them. A label value that
//! a real cluster refuses is refused here too, so a controller that builds one fails its tests.

use serde_json::Value;

/// `(field, message)` of each violation.
type Causes = Vec<(String, String)>;

/// The most bytes all annotations of one object may take (keys and values together).
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// A qualified name's name part, or a label value: at most 63 characters, alphanumerics at both
/// ends, `-`, `_`, `.` and alphanumerics between.
fn name_part_errors(text: &str) -> Vec<String> {
    let mut errors = vec![];
    if text.len() > 63 {
        errors.push("must be no more than 63 characters".to_string());
    }
    let ends_ok = text.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && text.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    let chars_ok = text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ends_ok || !chars_ok {
        errors.push(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must \
             start and end with an alphanumeric character"
                .to_string(),
        );
    }
    errors
}

/// A label or annotation key: `[prefix/]name`, the prefix a DNS subdomain.
fn key_errors(key: &str) -> Vec<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut errors = vec![];
    if let Some(prefix) = prefix
        && !super::store::dns_subdomain(prefix)
    {
        errors.push(format!("prefix part {prefix:?} must be a lowercase RFC 1123 subdomain"));
    }
    if name.is_empty() {
        errors.push("name part must be non-empty".to_string());
    } else {
        errors.extend(name_part_errors(name).into_iter().map(|e| format!("name part {e}")));
    }
    errors
}

fn labels(map: &Value, field: &str, causes: &mut Causes) {
    let Some(map) = map.as_object() else { return };
    for (key, value) in map {
        for e in key_errors(key) {
            causes.push((field.to_string(), format!("Invalid value: {key:?}: {e}")));
        }
        let value = value.as_str().unwrap_or_default();
        if !value.is_empty() {
            for e in name_part_errors(value) {
                causes.push((field.to_string(), format!("Invalid value: {value:?}: {e}")));
            }
        }
    }
}

fn annotations(map: &Value, field: &str, causes: &mut Causes) {
    let Some(map) = map.as_object() else { return };
    let mut total = 0;
    for (key, value) in map {
        for e in key_errors(key) {
            causes.push((field.to_string(), format!("Invalid value: {key:?}: {e}")));
        }
        total += key.len() + value.as_str().map_or(0, str::len);
    }
    if total > MAX_ANNOTATIONS_BYTES {
        causes.push((field.to_string(), format!("Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes")));
    }
}

fn object_meta(meta: &Value, path: &str, causes: &mut Causes) {
    labels(&meta["labels"], &format!("{path}.labels"), causes);
    annotations(&meta["annotations"], &format!("{path}.annotations"), causes);
}

/// The metadata violations of `object` of kind `kind`: its own, its pod template's, and its
/// label selector's.
pub fn validate(kind: &str, object: &Value) -> Causes {
    let mut causes = vec![];
    object_meta(&object["metadata"], "metadata", &mut causes);
    let spec = &object["spec"];
    match kind {
        "Deployment" | "Job" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            object_meta(&spec["template"]["metadata"], "spec.template.metadata", &mut causes);
            labels(&spec["selector"]["matchLabels"], "spec.selector.matchLabels", &mut causes);
        }
        "Service" => labels(&spec["selector"], "spec.selector", &mut causes),
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_values_over_63_characters_or_with_bad_characters_are_refused() {
        let long = "a".repeat(64);
        let job = json!({"metadata": {"labels": {"distillery.dev/distillationjob": long}},
                         "spec": {"template": {"metadata": {"labels": {"ok": "fine", "bad": "-x"}}}}});
        let causes = validate("Job", &job);
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert_eq!(causes[0].0, "metadata.labels");
        assert!(causes[0].1.contains("must be no more than 63 characters"), "{causes:?}");
        assert_eq!(causes[1].0, "spec.template.metadata.labels");
        assert!(validate("Job", &json!({"metadata": {"labels": {"a": "a".repeat(63), "b": ""}}})).is_empty());
    }

    #[test]
    fn keys_need_a_subdomain_prefix_and_a_short_name() {
        assert!(key_errors("app.kubernetes.io/name").is_empty());
        assert!(!key_errors("Bad_Prefix/name").is_empty());
        assert!(!key_errors(&format!("x/{}", "n".repeat(64))).is_empty());
        assert!(!key_errors("x/").is_empty());
        let svc = json!({"metadata": {}, "spec": {"selector": {"app": "a".repeat(70)}}});
        assert_eq!(validate("Service", &svc)[0].0, "spec.selector");
    }

    #[test]
    fn annotations_may_be_long_but_not_over_256_kib_in_all() {
        let fine = json!({"metadata": {"annotations": {"distillery.dev/distillationjob": "a".repeat(253)}}});
        assert!(validate("Pod", &fine).is_empty());
        let huge = json!({"metadata": {"annotations": {"k": "a".repeat(MAX_ANNOTATIONS_BYTES)}}});
        assert!(validate("Pod", &huge)[0].1.starts_with("Too long"));
    }
}
