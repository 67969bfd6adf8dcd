//! Small pieces every controller's `build` and `observe` use on Kubernetes objects: where a
//! `file://` URI's claim is mounted (and the claim mounts of a worker pod), the security contexts
//! of the pods the operator creates, a container's termination message, a Job's terminal
//! condition, what a pod needs to reach the S3 store, and JSON without nulls.

use distillery_crds::common::S3Settings;
use k8s_openapi::api::batch::v1::{Job, JobCondition};
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

/// What a pod is told for `uri`: the container path of a `file://` URI, an `s3://` URI as it is
/// (the worker and the server read it through the artifact store). `None` for anything else.
pub fn pod_location(uri: &str) -> Option<&str> {
    if uri.starts_with("s3://") { Some(uri) } else { container_path(uri) }
}

/// Where every pod the operator creates keeps its scratch files — downloads from the artifact
/// store (an `s3://` teacher, dataset or artifact) and what is staged before an upload — on an
/// `emptyDir`: the root file system is read-only.
pub const WORK_PATH: &str = "/work";

/// The `work` volume of a pod and the container's mount of it at [`WORK_PATH`].
pub fn work_volume() -> (Value, Value) {
    (json!({"name": "work", "emptyDir": {}}), json!({"name": "work", "mountPath": WORK_PATH}))
}

/// The environment through which a pod's worker or server reaches the store: its scratch
/// directory, and — when the resource names `spec.s3` — the endpoint, region and addressing,
/// with the credentials as `secretKeyRef`s: the kubelet reads the Secret, the operator never
/// does. Without `spec.s3` the pod uses AWS's endpoint and its own identity (IRSA, workload
/// identity).
pub fn store_env(s3: Option<&S3Settings>) -> Vec<Value> {
    let mut env = vec![json!({"name": "DISTILLERY_WORK_DIR", "value": WORK_PATH})];
    let Some(s3) = s3 else { return env };
    if let Some(endpoint) = &s3.endpoint {
        env.push(json!({"name": "DISTILLERY_S3_ENDPOINT", "value": endpoint}));
    }
    if let Some(region) = &s3.region {
        env.push(json!({"name": "DISTILLERY_S3_REGION", "value": region}));
    }
    env.push(json!({"name": "DISTILLERY_S3_FORCE_PATH_STYLE", "value": s3.force_path_style.to_string()}));
    for (name, key) in [("AWS_ACCESS_KEY_ID", &s3.access_key_id), ("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key)] {
        if let Some(key) = key {
            env.push(json!({"name": name, "valueFrom": {"secretKeyRef": {"name": key.name, "key": key.key}}}));
        }
    }
    env
}

/// `/models` for `file:///models/x` (and for `file:///models`): the directory a claim holding the
/// URI is mounted at. `None` for other URIs.
pub fn top_directory(uri: &str) -> Option<String> {
    let path = uri.strip_prefix("file://")?;
    let first = path.strip_prefix('/')?.split('/').next().filter(|s| !s.is_empty())?;
    Some(format!("/{first}"))
}

/// One PersistentVolumeClaim mount of a worker pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Volume name in the pod.
    pub volume: String,
    /// The claim.
    pub claim: String,
    /// Where it is mounted (`/models`).
    pub path: String,
    /// Mounted read-only (inputs) or read-write (outputs).
    pub read_only: bool,
    /// The field that asked for it first, for error messages.
    pub field: String,
}

/// A claim a pod needs for a `file://` location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimUse {
    /// The field that names the claim (for error messages).
    pub field: String,
    /// The claim.
    pub claim: String,
    /// The `file://` URI the pod reads or writes on it.
    pub uri: String,
    /// Whether the pod only reads there.
    pub read_only: bool,
}

/// Why a pod's claims cannot be mounted. The spec must change first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    /// Two URIs need different claims at the same mount path.
    #[error(
        "{field}: the claim {claim:?} would be mounted at {path}, where {other_field} already mounts {other_claim:?}; use one claim per top-level directory"
    )]
    Clash {
        /// The field that asks second.
        field: String,
        /// Its claim.
        claim: String,
        /// The mount path both want.
        path: String,
        /// The field that asked first.
        other_field: String,
        /// Its claim.
        other_claim: String,
    },
    /// A claim given for a URI that is not a `file://` path with a top-level directory.
    #[error(
        "{field}: a volumeClaim needs a file:// URI under a top-level directory (e.g. file:///models/x), got {uri:?}"
    )]
    ClaimWithoutPath {
        /// The field.
        field: String,
        /// The URI.
        uri: String,
    },
}

/// The mounts for `uses`, in order: each claim at its URI's [`top_directory`]; the same claim at
/// the same path is mounted once (read-write if any user writes), two claims at one path are
/// refused naming both fields.
pub fn claim_mounts(uses: impl IntoIterator<Item = ClaimUse>) -> Result<Vec<Mount>, MountError> {
    let mut mounts: Vec<Mount> = Vec::new();
    for ClaimUse { field, claim, uri, read_only } in uses {
        let path = top_directory(&uri).ok_or_else(|| MountError::ClaimWithoutPath { field: field.clone(), uri })?;
        match mounts.iter_mut().find(|m| m.path == path) {
            Some(m) if m.claim == claim => m.read_only &= read_only,
            Some(m) => {
                return Err(MountError::Clash {
                    field,
                    claim,
                    path,
                    other_field: m.field.clone(),
                    other_claim: m.claim.clone(),
                });
            }
            None => {
                mounts.push(Mount { volume: format!("claim-{}", mounts.len()), claim, path, read_only, field });
            }
        }
    }
    Ok(mounts)
}

/// The pod's `volumes` and the container's `volumeMounts` for `mounts`.
pub fn mount_specs(mounts: &[Mount]) -> (Vec<Value>, Vec<Value>) {
    mounts
        .iter()
        .map(|m| {
            (
                json!({"name": m.volume, "persistentVolumeClaim": {"claimName": m.claim, "readOnly": m.read_only}}),
                json!({"name": m.volume, "mountPath": m.path, "readOnly": m.read_only}),
            )
        })
        .unzip()
}

/// `message` trimmed and cut to at most `max` characters (an ellipsis marks a cut), for quoting
/// a worker's message in a condition.
pub fn quote(message: &str, max: usize) -> String {
    let message = message.trim();
    match message.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_string(),
    }
}

/// The phase of `pod` (`Pending` when it has none yet).
pub fn pod_phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

/// The condition of `type_` of `job` when it is `True`.
pub fn job_condition<'j>(job: &'j Job, type_: &str) -> Option<&'j JobCondition> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_ && c.status == "True")
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
    fn store_env_names_the_secret_keys_and_never_their_values() {
        use distillery_crds::common::SecretKeyReference;
        assert_eq!(store_env(None), [json!({"name": "DISTILLERY_WORK_DIR", "value": WORK_PATH})]);
        let key = |k: &str| Some(SecretKeyReference { name: "store".into(), key: k.into() });
        let s3 = S3Settings {
            endpoint: Some("http://minio:9000".into()),
            region: Some("eu-west-1".into()),
            force_path_style: true,
            access_key_id: key("id"),
            secret_access_key: key("secret"),
        };
        let env: std::collections::BTreeMap<String, Value> = store_env(Some(&s3))
            .into_iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e.get("value").or(e.get("valueFrom")).cloned().unwrap()))
            .collect();
        assert_eq!(env["DISTILLERY_S3_ENDPOINT"], "http://minio:9000");
        assert_eq!(env["DISTILLERY_S3_REGION"], "eu-west-1");
        assert_eq!(env["DISTILLERY_S3_FORCE_PATH_STYLE"], "true");
        assert_eq!(env["AWS_ACCESS_KEY_ID"], json!({"secretKeyRef": {"name": "store", "key": "id"}}));
        assert_eq!(env["AWS_SECRET_ACCESS_KEY"], json!({"secretKeyRef": {"name": "store", "key": "secret"}}));
    }

    #[test]
    fn mount_paths_and_container_paths() {
        assert_eq!(claim_mount_path("file:///artifacts/small/g1").as_deref(), Some("/artifacts"));
        assert_eq!(claim_mount_path("file:///golden.csv"), None);
        assert_eq!(claim_mount_path("s3://bucket/x"), None);
        assert_eq!(container_path("file:///artifacts/small"), Some("/artifacts/small"));
        assert_eq!(container_path("s3://b/k"), None);
        assert_eq!(pod_location("s3://b/k"), Some("s3://b/k"));
        assert_eq!(pod_location("file:///models/x"), Some("/models/x"));
        assert_eq!(pod_location("https://b/k"), None);
    }

    fn uses(list: &[(&str, &str, &str, bool)]) -> Vec<ClaimUse> {
        list.iter()
            .map(|(field, claim, uri, read_only)| ClaimUse {
                field: field.to_string(),
                claim: claim.to_string(),
                uri: uri.to_string(),
                read_only: *read_only,
            })
            .collect()
    }

    #[test]
    fn one_claim_at_one_path_is_mounted_once_read_write_if_anyone_writes() {
        let mounts = claim_mounts(uses(&[
            ("a", "artifacts", "file:///artifacts/x", true),
            ("b", "data", "file:///data/d.csv", true),
            ("c", "artifacts", "file:///artifacts/benchmarks/r", false),
        ]))
        .unwrap();
        let seen: Vec<(&str, &str, bool)> =
            mounts.iter().map(|m| (m.claim.as_str(), m.path.as_str(), m.read_only)).collect();
        assert_eq!(seen, vec![("artifacts", "/artifacts", false), ("data", "/data", true)]);
        let (volumes, volume_mounts) = mount_specs(&mounts);
        assert_eq!(volumes[0]["persistentVolumeClaim"], json!({"claimName": "artifacts", "readOnly": false}));
        assert_eq!(volume_mounts[1], json!({"name": "claim-1", "mountPath": "/data", "readOnly": true}));
    }

    #[test]
    fn two_claims_at_one_path_and_a_claim_without_a_path_are_refused() {
        let clash = claim_mounts(uses(&[("a", "one", "file:///m/x", true), ("b", "two", "file:///m/y", true)]));
        let message = clash.unwrap_err().to_string();
        assert!(message.starts_with("b: the claim \"two\"") && message.contains("where a already mounts"), "{message}");
        let s3 = claim_mounts(uses(&[("a", "one", "s3://bucket/x", true)]));
        assert!(matches!(s3, Err(MountError::ClaimWithoutPath { .. })));
        assert_eq!(top_directory("file:///models"), Some("/models".into()));
    }

    #[test]
    fn quotes_are_trimmed_and_cut() {
        assert_eq!(quote("  short \n", 10), "short");
        assert_eq!(quote("abcdef", 3), "abc…");
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
