//! Small pieces every controller's `build` and `observe` use on Kubernetes objects: where a
//! `file://` URI's claim is mounted, the security contexts of the pods the operator creates, a
//! container's termination message, a Job's terminal condition, and JSON without nulls.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

/// User and group the worker and the server run as (the images' `distillery` user, UID 65532).
pub const NON_ROOT_ID: i64 = 65532;

/// The pod security context of every pod the operator creates: non-root as [`NON_ROOT_ID`], and
/// `fsGroup` so that a freshly provisioned claim — often owned by root — is writable by that
/// group (the kubelet changes its ownership only when the root directory's differs).
pub fn pod_security_context() -> Value {
    json!({
        "runAsNonRoot": true, "runAsUser": NON_ROOT_ID, "runAsGroup": NON_ROOT_ID,
        "fsGroup": NON_ROOT_ID, "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The container security context of every container the operator creates: no privilege
/// escalation, no capabilities, a read-only root file system (writes go to volumes).
pub fn container_security_context() -> Value {
    json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}})
}

/// The mount path of the claim holding a `file://` URI: its first path segment (`/models` for
/// `file:///models/x`). `None` for other URIs or a file directly under `/`.
pub fn claim_mount_path(uri: &str) -> Option<String> {
    let path = uri.strip_prefix("file://")?;
    let rest = path.strip_prefix('/')?;
    let (first, tail) = rest.split_once('/')?;
    (!first.is_empty() && !tail.is_empty()).then(|| format!("/{first}"))
}

/// The container path of a `file://` URI (`/models/x` for `file:///models/x`).
pub fn container_path(uri: &str) -> Option<&str> {
    uri.strip_prefix("file://").filter(|p| p.starts_with('/'))
}

/// How `container` of `pod` ended, if it did: its exit code and termination message.
pub fn terminated(pod: &Pod, container: &str) -> Option<(i32, String)> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let state = statuses.iter().find(|c| c.name == container)?.state.as_ref()?.terminated.as_ref()?;
    Some((state.exit_code, state.message.clone().unwrap_or_default()))
}

/// How a Job ended: `Some(true)` complete, `Some(false)` failed, `None` still running.
pub fn job_outcome(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let is = |t: &str| conditions.iter().any(|c| c.type_ == t && c.status == "True");
    if is("Complete") {
        Some(true)
    } else if is("Failed") {
        Some(false)
    } else {
        None
    }
}

/// `value` with every `null` member removed, so that a typed object built with `json!` applies
/// only the fields it sets.
pub fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// Whether `live` holds every field `desired` sets, with the same value: objects member by
/// member (`live` may have more), arrays of the same length item by item, other values equal.
/// What "already applied" means for a server-side apply of `desired`, whose server fills in
/// defaults and status beside it, leaves out empty values (`value: ""`, `{}`, `[]`, `null` are
/// met by an absent field) and writes resource quantities in canonical form (`0.5` is `500m`
/// under `limits` and `requests`).
pub fn contains(live: &Value, desired: &Value) -> bool {
    contains_at(live, desired, false)
}

/// `quantities`: `desired` is a `limits` or `requests` map, whose members are quantities.
fn contains_at(live: &Value, desired: &Value, quantities: bool) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => desired.iter().all(|(k, v)| match live.get(k) {
            Some(l) if quantities => same_quantity(l, v),
            Some(l) => contains_at(l, v, k == "limits" || k == "requests"),
            None => is_empty(v),
        }),
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len() && live.iter().zip(desired).all(|(l, d)| contains_at(l, d, false))
        }
        (live, desired) => live == desired,
    }
}

/// Two quantities of the same value however written (`0.5`, `500m`), or equal values.
fn same_quantity(live: &Value, desired: &Value) -> bool {
    match (quantity(live), quantity(desired)) {
        (Some(l), Some(d)) => (l - d).abs() <= 1e-9 * d.abs().max(1.0),
        _ => live == desired,
    }
}

/// A value the API server leaves out of a stored object.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// A resource quantity's value (`500m` = 0.5, `1Gi` = 2^30), or `None` for anything else.
fn quantity(value: &Value) -> Option<f64> {
    let text = match value {
        Value::String(s) => s.as_str(),
        Value::Number(n) => return n.as_f64(),
        _ => return None,
    };
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mount_paths_and_container_paths() {
        assert_eq!(claim_mount_path("file:///artifacts/small/g1").as_deref(), Some("/artifacts"));
        assert_eq!(claim_mount_path("file:///golden.csv"), None);
        assert_eq!(claim_mount_path("s3://bucket/x"), None);
        assert_eq!(container_path("file:///artifacts/small"), Some("/artifacts/small"));
        assert_eq!(container_path("s3://b/k"), None);
    }

    #[test]
    fn nulls_are_stripped_at_every_depth() {
        let v = strip_nulls(json!({"a": null, "b": {"c": null, "d": 1}, "e": [{"f": null}]}));
        assert_eq!(v, json!({"b": {"d": 1}, "e": [{}]}));
    }

    #[test]
    fn contains_sees_every_set_field_and_ignores_what_the_server_added() {
        let desired =
            json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "s", "image": "a"}]}}}});
        let live = json!({"metadata": {"uid": "u"}, "spec": {"replicas": 3, "strategy": {},
            "template": {"spec": {"containers": [{"name": "s", "image": "a", "imagePullPolicy": "IfNotPresent"}]}}},
            "status": {"readyReplicas": 1}});
        assert!(contains(&live, &desired));
        let scaled =
            json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "s", "image": "a"}]}}}});
        assert!(!contains(&scaled, &desired), "a changed value");
        let two = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "s", "image": "a"}, {"name": "t"}]}}}});
        assert!(!contains(&two, &desired), "an extra item in a list");
        assert!(!contains(&json!({"spec": {}}), &desired), "a missing field");
    }

    #[test]
    fn contains_meets_what_the_server_leaves_out_or_rewrites() {
        let desired = json!({"env": [{"name": "D", "value": ""}], "metadata": {"annotations": {}},
            "resources": {"limits": {"cpu": "0.5", "memory": "1024Mi"}}});
        let live = json!({"env": [{"name": "D"}], "metadata": {},
            "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}});
        assert!(contains(&live, &desired));
        let more =
            json!({"env": [{"name": "D"}], "metadata": {}, "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}});
        assert!(!contains(&more, &desired), "another quantity");
        assert!(
            !contains(&json!({"value": "0.5"}), &json!({"value": "500m"})),
            "quantities only under limits and requests"
        );
    }
}
