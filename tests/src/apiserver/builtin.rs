//! Validation of the built-in kinds the operator creates, enough that an object a real server
//! refuses is refused here too, with the real server's field paths and wording. (Custom resources
//! are validated from their CRD's schema instead: see `schema`.)

use serde_json::Value;

use super::registry::ResourceType;

type Causes = Vec<(String, String)>;

fn required(causes: &mut Causes, field: &str, what: &str) {
    causes.push((field.to_string(), format!("Required value{what}")));
}

/// An `Invalid value` of a number field of a spec.
fn invalid(causes: &mut Causes, field: &str, value: i64, why: &str) {
    causes.push((format!("spec.{field}"), format!("Invalid value: {value}: {why}")));
}

fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn pod_spec(spec: &Value, path: &str, causes: &mut Causes) {
    let containers = spec["containers"].as_array();
    match containers {
        None => required(causes, &format!("{path}.containers"), ""),
        Some(list) if list.is_empty() => required(causes, &format!("{path}.containers"), ""),
        Some(list) => {
            let mut seen = vec![];
            for (i, c) in list.iter().enumerate() {
                let name = c["name"].as_str().unwrap_or_default();
                let field = format!("{path}.containers[{i}]");
                if name.is_empty() {
                    required(causes, &format!("{field}.name"), "");
                } else if !dns_label(name) {
                    causes.push((format!("{field}.name"), format!("Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'")));
                } else if seen.contains(&name) {
                    causes.push((format!("{field}.name"), format!("Duplicate value: \"{name}\"")));
                }
                seen.push(name);
                if c["image"].as_str().unwrap_or_default().is_empty() {
                    required(causes, &format!("{field}.image"), "");
                }
            }
        }
    }
    if let Some(policy) = spec["restartPolicy"].as_str()
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        causes.push((
            format!("{path}.restartPolicy"),
            format!("Unsupported value: \"{policy}\": supported values: \"Always\", \"OnFailure\", \"Never\""),
        ));
    }
}

fn selector_matches_template(object: &Value, causes: &mut Causes) {
    let selector = &object["spec"]["selector"]["matchLabels"];
    let labels = &object["spec"]["template"]["metadata"]["labels"];
    match selector.as_object() {
        None => required(causes, "spec.selector", ""),
        Some(wanted) => {
            if !wanted.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                causes.push((
                    "spec.template.metadata.labels".into(),
                    format!("Invalid value: {labels}: `selector` does not match template `labels`"),
                ));
            }
        }
    }
}

/// A Job's `podFailurePolicy`, checked as the real API server checks it (`ValidateJob` in
/// `pkg/apis/batch/validation`): at most 20 rules; each with exactly one of `onExitCodes` and
/// `onPodConditions`; exit-code values 1–255 for `In` (0 is allowed only for `NotIn`), unique and
/// ordered, at most 255; a `containerName` that names a container or init container of the
/// template; pod-condition statuses `True`, `False` or `Unknown`; and `restartPolicy: Never`.
fn pod_failure_policy(spec: &Value, causes: &mut Causes) {
    let Some(policy) = spec.get("podFailurePolicy").filter(|p| !p.is_null()) else { return };
    let template = &spec["template"]["spec"];
    if let Some(restart) = template["restartPolicy"].as_str()
        && restart != "Never"
    {
        causes.push((
            "spec.template.spec.restartPolicy".into(),
            format!("Invalid value: \"{restart}\": only \"Never\" is supported when podFailurePolicy is specified"),
        ));
    }
    let rules = policy["rules"].as_array().cloned().unwrap_or_default();
    if rules.len() > 20 {
        causes.push((
            "spec.podFailurePolicy.rules".into(),
            format!("Too many: {}: must have at most 20 items", rules.len()),
        ));
    }
    let containers: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| template[*k].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.podFailurePolicy.rules[{i}]");
        let action = rule["action"].as_str().unwrap_or_default();
        if !["FailJob", "Ignore", "Count", "FailIndex"].contains(&action) {
            causes.push((
                format!("{at}.action"),
                format!("Unsupported value: \"{action}\": supported values: \"Count\", \"FailIndex\", \"FailJob\", \"Ignore\""),
            ));
        } else if action == "FailIndex" && spec["backoffLimitPerIndex"].is_null() {
            causes.push((
                format!("{at}.action"),
                "Invalid value: \"FailIndex\": requires the backoffLimitPerIndex to be set".into(),
            ));
        }
        let on_exit = rule.get("onExitCodes").filter(|v| !v.is_null());
        let on_conditions = rule.get("onPodConditions").filter(|v| !v.is_null());
        match (on_exit, on_conditions) {
            (None, None) => causes.push((
                at.clone(),
                "Invalid value: specifying one of OnExitCodes and OnPodConditions is required".into(),
            )),
            (Some(_), Some(_)) => causes.push((
                at.clone(),
                "Invalid value: specifying both OnExitCodes and OnPodConditions is not supported".into(),
            )),
            (Some(on), None) => {
                let at = format!("{at}.onExitCodes");
                let operator = on["operator"].as_str().unwrap_or_default();
                if !["In", "NotIn"].contains(&operator) {
                    causes.push((
                        format!("{at}.operator"),
                        format!("Unsupported value: \"{operator}\": supported values: \"In\", \"NotIn\""),
                    ));
                }
                if let Some(name) = on["containerName"].as_str()
                    && !containers.contains(&name)
                {
                    causes.push((
                        format!("{at}.containerName"),
                        format!("Invalid value: \"{name}\": must be one of the container or initContainer names in the pod template"),
                    ));
                }
                let values: Vec<i64> =
                    on["values"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect();
                if values.is_empty() {
                    required(causes, &format!("{at}.values"), ": at least one value is required");
                }
                if values.len() > 255 {
                    causes.push((
                        format!("{at}.values"),
                        format!("Too many: {}: must have at most 255 items", values.len()),
                    ));
                }
                for (k, &v) in values.iter().enumerate() {
                    let field = format!("{at}.values[{k}]");
                    if operator == "In" && v == 0 {
                        causes.push((field, "Invalid value: 0: must not be 0 for the In operator".into()));
                    } else if values[..k].contains(&v) {
                        causes.push((field, format!("Duplicate value: {v}")));
                    } else if k > 0 && values[k - 1] > v {
                        causes.push((field, format!("Invalid value: {v}: must be ordered")));
                    }
                }
            }
            (None, Some(conditions)) => {
                for (k, c) in conditions.as_array().into_iter().flatten().enumerate() {
                    let status = c["status"].as_str().unwrap_or_default();
                    if !["True", "False", "Unknown"].contains(&status) {
                        causes.push((
                            format!("{at}.onPodConditions[{k}].status"),
                            format!(
                                "Unsupported value: \"{status}\": supported values: \"False\", \"True\", \"Unknown\""
                            ),
                        ));
                    }
                }
            }
        }
    }
}

/// The most pods an Indexed Job may run at once, and the most failed indexes it may allow.
const MAX_INDEXED_PARALLELISM: i64 = 100_000;
/// Above this many completions, `backoffLimitPerIndex` needs `maxFailedIndexes`, and both it and
/// `parallelism` are held to [`HIGH_COMPLETIONS_LIMIT`].
const COMPLETIONS_SOFT_LIMIT: i64 = 100_000;
/// The most `parallelism` and `maxFailedIndexes` of a Job above [`COMPLETIONS_SOFT_LIMIT`] with
/// `backoffLimitPerIndex`.
const HIGH_COMPLETIONS_LIMIT: i64 = 10_000;

/// A Job's completion mode and what goes with it, checked as the real API server checks them
/// (`ValidateJob`, `validateJobSpec` and `ValidateJobSpecUpdate` in `pkg/apis/batch/validation`):
/// `NonIndexed` or `Indexed`; an Indexed Job needs `completions`, at most 100,000 `parallelism`, a
/// name that stays a DNS label with its last index appended (its pods' hostnames), and
/// `maxFailedIndexes` within `completions` and 100,000 (with more limits past 100,000
/// completions); `backoffLimitPerIndex` and `maxFailedIndexes` need an Indexed Job, and
/// `maxFailedIndexes` needs `backoffLimitPerIndex`. On an update `completionMode` and
/// `backoffLimitPerIndex` are immutable, and `completions` too except that an Indexed Job may
/// change it together with `parallelism` (to the same value).
fn completion_mode(object: &Value, old: Option<&Value>, causes: &mut Causes) {
    let spec = &object["spec"];
    let int = |field: &str| spec[field].as_i64();
    if int("maxFailedIndexes").is_some() && spec["backoffLimitPerIndex"].is_null() {
        required(causes, "spec.backoffLimitPerIndex", ": when maxFailedIndexes is specified");
    }
    match spec["completionMode"].as_str() {
        None | Some("NonIndexed") => {
            for field in ["backoffLimitPerIndex", "maxFailedIndexes"] {
                if let Some(v) = int(field) {
                    invalid(causes, field, v, "requires indexed completion mode");
                }
            }
        }
        Some("Indexed") => indexed_limits(object, causes, old.is_none()),
        Some(other) => causes.push((
            "spec.completionMode".into(),
            format!("Unsupported value: \"{other}\": supported values: \"NonIndexed\", \"Indexed\""),
        )),
    }
    if let Some(old) = old {
        completion_mode_unchanged(&old["spec"], spec, causes);
    }
}

/// The limits of an Indexed Job's spec (see [`completion_mode`]); `created`: the name is checked
/// on creation only, as the real server checks it.
fn indexed_limits(object: &Value, causes: &mut Causes, created: bool) {
    let spec = &object["spec"];
    let int = |field: &str| spec[field].as_i64();
    let completions = int("completions");
    if completions.is_none() {
        required(causes, "spec.completions", ": when completion mode is Indexed");
    }
    if let Some(p) = int("parallelism").filter(|p| *p > MAX_INDEXED_PARALLELISM) {
        let why = format!("must be less than or equal to {MAX_INDEXED_PARALLELISM} when completion mode is Indexed");
        invalid(causes, "parallelism", p, &why);
    }
    if let (Some(c), Some(m)) = (completions, int("maxFailedIndexes"))
        && m > c
    {
        invalid(causes, "maxFailedIndexes", m, "must be less than or equal to completions");
    }
    if let Some(m) = int("maxFailedIndexes").filter(|m| *m > MAX_INDEXED_PARALLELISM) {
        invalid(causes, "maxFailedIndexes", m, &format!("must be less than or equal to {MAX_INDEXED_PARALLELISM}"));
    }
    if completions.is_some_and(|c| c > COMPLETIONS_SOFT_LIMIT) && !spec["backoffLimitPerIndex"].is_null() {
        let high = format!(
            "must be less than or equal to {HIGH_COMPLETIONS_LIMIT} when completions are above {COMPLETIONS_SOFT_LIMIT} and used with backoff limit per index"
        );
        match int("maxFailedIndexes") {
            None => required(
                causes,
                "spec.maxFailedIndexes",
                &format!(": must be specified when completions is above {COMPLETIONS_SOFT_LIMIT}"),
            ),
            Some(m) if m > HIGH_COMPLETIONS_LIMIT => invalid(causes, "maxFailedIndexes", m, &high),
            Some(_) => {}
        }
        if let Some(p) = int("parallelism").filter(|p| *p > HIGH_COMPLETIONS_LIMIT) {
            invalid(causes, "parallelism", p, &high);
        }
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if created
        && let Some(c) = completions.filter(|c| *c > 0)
        && !name.is_empty()
    {
        let last = format!("{name}-{}", c - 1);
        if !dns_label(&last) {
            causes.push((
                "metadata.name".into(),
                format!("Invalid value: \"{name}\": will not able to create pod with invalid DNS label: {last}"),
            ));
        }
    }
}

/// `completionMode`, `backoffLimitPerIndex` and `completions` kept on an update (see
/// [`completion_mode`]). The simulated server does not default a Job's spec as the real one does,
/// so an absent `completionMode` is `NonIndexed`, and `completions` is compared only where both
/// versions state it.
fn completion_mode_unchanged(before: &Value, after: &Value, causes: &mut Causes) {
    let mode = |spec: &Value| spec["completionMode"].as_str().unwrap_or("NonIndexed").to_string();
    if mode(before) != mode(after) {
        causes.push(("spec.completionMode".into(), format!("Invalid value: \"{}\": field is immutable", mode(after))));
    }
    if before["backoffLimitPerIndex"] != after["backoffLimitPerIndex"] {
        let value = after["backoffLimitPerIndex"].as_i64().map_or("null".to_string(), |v| v.to_string());
        causes.push(("spec.backoffLimitPerIndex".into(), format!("Invalid value: {value}: field is immutable")));
    }
    if let (Some(was), Some(is)) = (before["completions"].as_i64(), after["completions"].as_i64())
        && was != is
    {
        if mode(after) != "Indexed" {
            causes.push(("spec.completions".into(), format!("Invalid value: {is}: field is immutable")));
        } else if after["parallelism"].as_i64() != Some(is) {
            causes.push((
                "spec.completions".into(),
                format!("Invalid value: {is}: can only be modified in tandem with spec.parallelism"),
            ));
        }
    }
}

/// A Job's template is immutable once created, except that a suspended Job that never started
/// may change its scheduling directives (labels, annotations, node selector, tolerations,
/// scheduling gates), as the real API server allows for queueing controllers.
fn job_template_unchanged(old: &Value, new: &Value, causes: &mut Causes) {
    let (before, after) = (&old["spec"]["template"], &new["spec"]["template"]);
    if before == after {
        return;
    }
    let never_started = old["spec"]["suspend"] == true && old["status"]["startTime"].is_null();
    let without_directives = |t: &Value| {
        let mut t = t.clone();
        if let Some(m) = t["metadata"].as_object_mut() {
            m.remove("labels");
            m.remove("annotations");
        }
        if let Some(s) = t["spec"].as_object_mut() {
            for k in ["nodeSelector", "tolerations", "schedulingGates"] {
                s.remove(k);
            }
        }
        t
    };
    if !(never_started && without_directives(before) == without_directives(after)) {
        causes.push(("spec.template".into(), "Invalid value: field is immutable".into()));
    }
}

/// What the real API server does to a built-in object as it decodes it, before validation: a
/// Secret's `data` values must be base64 (else the 400 its decoder answers), its `stringData` is
/// merged into `data` (base64-encoded, a key of both taking `stringData`'s value) and never
/// stored, and its `type` defaults to `Opaque`. An error is the message of that 400.
pub fn normalise(rt: &ResourceType, object: &mut Value) -> Result<(), String> {
    if !(rt.group.is_empty() && rt.kind == "Secret") {
        return Ok(());
    }
    let undecodable = |what: String| format!("Secret in version \"v1\" cannot be handled as a Secret: {what}");
    let Some(secret) = object.as_object_mut() else { return Ok(()) };
    for value in secret.get("data").and_then(Value::as_object).into_iter().flat_map(|d| d.values()) {
        match value {
            Value::Null => {}
            Value::String(text) => {
                if let Some(at) = illegal_base64(text) {
                    return Err(undecodable(format!("illegal base64 data at input byte {at}")));
                }
            }
            other => {
                return Err(undecodable(format!(
                    "json: cannot unmarshal {} into Go value of type []uint8",
                    json_type(other)
                )));
            }
        }
    }
    let string_data = secret.remove("stringData");
    let entries = match string_data {
        None | Some(Value::Null) => Default::default(),
        Some(Value::Object(entries)) => entries,
        Some(other) => {
            return Err(undecodable(format!(
                "json: cannot unmarshal {} into Go struct field Secret.stringData of type map[string]string",
                json_type(&other)
            )));
        }
    };
    if !entries.is_empty() {
        let data = secret.entry("data").or_insert_with(|| Value::Object(Default::default()));
        if data.is_null() {
            *data = Value::Object(Default::default());
        }
        let Some(data) = data.as_object_mut() else {
            return Err(undecodable(
                "json: cannot unmarshal into Go struct field Secret.data of type map[string][]uint8".into(),
            ));
        };
        for (key, value) in entries {
            let Value::String(text) = value else {
                return Err(undecodable(format!(
                    "json: cannot unmarshal {} into Go struct field Secret.stringData of type string",
                    json_type(&value)
                )));
            };
            let encoded = serde_json::to_value(k8s_openapi::ByteString(text.into_bytes())).expect("base64 text");
            data.insert(key, encoded);
        }
    }
    if secret.get("type").is_none_or(|t| t.as_str().is_none_or(str::is_empty)) {
        secret.insert("type".into(), Value::String("Opaque".into()));
    }
    Ok(())
}

/// Where standard, padded base64 (what Go's `encoding/json` reads a `[]byte` from) goes wrong:
/// the first byte outside its alphabet, else (roughly where Go reports it) the first padding byte
/// or the start of an incomplete last quantum.
fn illegal_base64(text: &str) -> Option<usize> {
    if let Some(at) = text.bytes().position(|b| !(b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')) {
        return Some(at);
    }
    let decoded: Result<k8s_openapi::ByteString, _> = serde_json::from_value(Value::String(text.to_string()));
    decoded.is_err().then(|| text.find('=').unwrap_or(text.len() / 4 * 4))
}

/// How Go's JSON decoder names a JSON value's type in its errors.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The `(field, message)` violations of a built-in object (empty when it is valid); `old` is the
/// stored object on an update.
pub fn validate(rt: &ResourceType, object: &Value, old: Option<&Value>) -> Causes {
    let mut causes = vec![];
    let spec = &object["spec"];
    match rt.kind.as_str() {
        "Pod" => pod_spec(spec, "spec", &mut causes),
        "Job" => {
            pod_spec(&spec["template"]["spec"], "spec.template.spec", &mut causes);
            pod_failure_policy(spec, &mut causes);
            completion_mode(object, old, &mut causes);
            if let Some(old) = old {
                job_template_unchanged(old, object, &mut causes);
            }
            match spec["template"]["spec"]["restartPolicy"].as_str() {
                Some("Never") | Some("OnFailure") => {}
                _ => required(
                    &mut causes,
                    "spec.template.spec.restartPolicy",
                    ": valid values: \"OnFailure\", \"Never\"",
                ),
            }
            let non_negative = [
                "backoffLimit",
                "completions",
                "parallelism",
                "activeDeadlineSeconds",
                "backoffLimitPerIndex",
                "maxFailedIndexes",
            ];
            for field in non_negative {
                if spec[field].as_i64().is_some_and(|v| v < 0) {
                    causes.push((format!("spec.{field}"), "Invalid value: must be greater than or equal to 0".into()));
                }
            }
        }
        "Deployment" | "ReplicaSet" => {
            selector_matches_template(object, &mut causes);
            pod_spec(&spec["template"]["spec"], "spec.template.spec", &mut causes);
            if spec["replicas"].as_i64().is_some_and(|v| v < 0) {
                causes.push(("spec.replicas".into(), "Invalid value: must be greater than or equal to 0".into()));
            }
        }
        "Service" => {
            for (i, port) in spec["ports"].as_array().into_iter().flatten().enumerate() {
                if !port["port"].as_i64().is_some_and(|p| (1..=65535).contains(&p)) {
                    causes.push((
                        format!("spec.ports[{i}].port"),
                        "Invalid value: must be between 1 and 65535, inclusive".into(),
                    ));
                }
            }
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            if !name.is_empty() && !dns_label(name) {
                causes.push(("metadata.name".into(), format!("Invalid value: \"{name}\": a DNS-1035 label must consist of lower case alphanumeric characters or '-'")));
            }
        }
        "ConfigMap" => {
            for (k, v) in object["data"].as_object().into_iter().flatten() {
                if !v.is_string() {
                    causes.push((format!("data[{k}]"), "Invalid value: must be a string".into()));
                }
            }
        }
        "Lease" if spec["leaseDurationSeconds"].as_i64().is_some_and(|v| v <= 0) => {
            causes.push(("spec.leaseDurationSeconds".into(), "Invalid value: must be greater than 0".into()));
        }
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::super::registry::Registry;
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_without_restart_policy_or_image_is_refused_with_the_real_field_paths() {
        let registry = Registry::default();
        let jobs = registry.find("batch", "v1", "jobs").unwrap();
        let job = json!({"spec": {"template": {"spec": {"containers": [{"name": "w"}]}}}});
        let causes = validate(jobs, &job, None);
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, vec!["spec.template.spec.containers[0].image", "spec.template.spec.restartPolicy"]);
        let good = json!({"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "w", "image": "x"}]}}}});
        assert!(validate(jobs, &good, None).is_empty());
    }

    #[test]
    fn a_deployment_whose_selector_misses_its_template_is_refused() {
        let registry = Registry::default();
        let deployments = registry.find("apps", "v1", "deployments").unwrap();
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "s", "image": "x"}]}}}});
        let causes = validate(deployments, &d, None);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].0, "spec.template.metadata.labels");
    }

    fn job_with(policy: serde_json::Value, restart: &str) -> serde_json::Value {
        json!({"spec": {"podFailurePolicy": policy, "template": {"spec": {"restartPolicy": restart,
            "containers": [{"name": "worker", "image": "x"}]}}}})
    }

    #[test]
    fn a_pod_failure_policy_is_refused_as_the_real_server_refuses_it() {
        let registry = Registry::default();
        let jobs = registry.find("batch", "v1", "jobs").unwrap();
        let good = json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]});
        assert!(validate(jobs, &job_with(good.clone(), "Never"), None).is_empty());
        let fields = |job: serde_json::Value| -> Vec<String> {
            validate(jobs, &job, None).into_iter().map(|(f, _)| f).collect()
        };
        assert_eq!(fields(job_with(good, "OnFailure")), ["spec.template.spec.restartPolicy"]);
        let bad = json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "other", "operator": "In", "values": [0, 3, 3, 1]}},
            {"action": "Ignore"},
            {"action": "Restart", "onPodConditions": [{"type": "DisruptionTarget", "status": "Maybe"}]}]});
        assert_eq!(
            fields(job_with(bad, "Never")),
            [
                "spec.podFailurePolicy.rules[0].onExitCodes.containerName",
                "spec.podFailurePolicy.rules[0].onExitCodes.values[0]",
                "spec.podFailurePolicy.rules[0].onExitCodes.values[2]",
                "spec.podFailurePolicy.rules[0].onExitCodes.values[3]",
                "spec.podFailurePolicy.rules[1]",
                "spec.podFailurePolicy.rules[2].action",
                "spec.podFailurePolicy.rules[2].onPodConditions[0].status",
            ]
        );
        let many: Vec<_> =
            (1..=21).map(|v| json!({"action": "Count", "onExitCodes": {"operator": "In", "values": [v]}})).collect();
        assert_eq!(fields(job_with(json!({"rules": many}), "Never")), ["spec.podFailurePolicy.rules"]);
        let not_in_zero = json!({"rules": [{"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [0]}}]});
        assert!(fields(job_with(not_in_zero, "Never")).is_empty(), "0 is allowed with NotIn");
    }

    fn indexed_job(name: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut job = json!({"metadata": {"name": name}, "spec": {"completionMode": "Indexed", "completions": 3,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "x"}]}}}});
        json_patch::merge(&mut job["spec"], &extra);
        job
    }

    #[test]
    fn an_indexed_job_is_refused_as_the_real_server_refuses_it() {
        let registry = Registry::default();
        let jobs = registry.find("batch", "v1", "jobs").unwrap();
        let causes = |job: serde_json::Value, old: Option<&serde_json::Value>| validate(jobs, &job, old);
        let fields = |job, old| causes(job, old).into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        let good = indexed_job("shards", json!({"parallelism": 2, "backoffLimitPerIndex": 1, "maxFailedIndexes": 1}));
        assert!(fields(good.clone(), None).is_empty());
        assert_eq!(fields(indexed_job("shards", json!({"completions": null})), None), ["spec.completions"]);
        assert_eq!(
            causes(indexed_job("shards", json!({"maxFailedIndexes": 4, "backoffLimitPerIndex": 0})), None),
            [(
                "spec.maxFailedIndexes".to_string(),
                "Invalid value: 4: must be less than or equal to completions".to_string()
            )]
        );
        assert_eq!(
            fields(indexed_job("shards", json!({"completionMode": "NonIndexed", "maxFailedIndexes": 1})), None),
            ["spec.backoffLimitPerIndex", "spec.maxFailedIndexes"],
            "maxFailedIndexes needs backoffLimitPerIndex and an Indexed Job"
        );
        assert_eq!(fields(indexed_job("shards", json!({"completionMode": "Sharded"})), None), ["spec.completionMode"]);
        let long = "a".repeat(62);
        assert_eq!(fields(indexed_job(&long, json!({})), None), ["metadata.name"], "its pods' hostnames: {long}-2");
        let plain = indexed_job("shards", json!({}));
        let now_non_indexed = indexed_job("shards", json!({"completionMode": "NonIndexed"}));
        assert_eq!(fields(now_non_indexed, Some(&plain)), ["spec.completionMode"]);
        let new_limit =
            indexed_job("shards", json!({"parallelism": 2, "backoffLimitPerIndex": 2, "maxFailedIndexes": 1}));
        assert_eq!(
            causes(new_limit, Some(&good)),
            [("spec.backoffLimitPerIndex".to_string(), "Invalid value: 2: field is immutable".to_string())]
        );
        let scaled = indexed_job(
            "shards",
            json!({"parallelism": 5, "completions": 5, "backoffLimitPerIndex": 1,
            "maxFailedIndexes": 1}),
        );
        assert!(fields(scaled, Some(&good)).is_empty(), "completions changes in tandem with parallelism");
        let alone = indexed_job(
            "shards",
            json!({"parallelism": 2, "completions": 5, "backoffLimitPerIndex": 1,
            "maxFailedIndexes": 1}),
        );
        assert_eq!(fields(alone, Some(&good)), ["spec.completions"]);
    }

    #[test]
    fn a_secrets_string_data_is_merged_into_its_data_and_bad_base64_is_refused() {
        let registry = Registry::default();
        let secrets = registry.find("", "v1", "secrets").unwrap();
        let mut secret = json!({"data": {"a": "YQ==", "b": "b2xk"}, "stringData": {"b": "new", "c": "plain"}});
        normalise(secrets, &mut secret).unwrap();
        assert_eq!(secret, json!({"data": {"a": "YQ==", "b": "bmV3", "c": "cGxhaW4="}, "type": "Opaque"}));
        let mut only_string_data = json!({"type": "kubernetes.io/basic-auth", "stringData": {"username": "u"}});
        normalise(secrets, &mut only_string_data).unwrap();
        assert_eq!(only_string_data, json!({"type": "kubernetes.io/basic-auth", "data": {"username": "dQ=="}}));
        let refused = |data: serde_json::Value| normalise(secrets, &mut json!({"data": data})).unwrap_err();
        assert_eq!(
            refused(json!({"a": "not base64"})),
            "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 3"
        );
        assert!(refused(json!({"a": "YQ"})).ends_with("illegal base64 data at input byte 0"), "unpadded");
        assert!(refused(json!({"a": 1})).contains("cannot unmarshal number"));
        let mut config_map = json!({"data": {"a": "not base64"}, "stringData": {"b": "c"}});
        let config_maps = registry.find("", "v1", "configmaps").unwrap();
        normalise(config_maps, &mut config_map).unwrap();
        assert_eq!(config_map["stringData"], json!({"b": "c"}), "only Secrets have stringData");
    }

    #[test]
    fn a_jobs_template_is_immutable_except_scheduling_directives_before_it_starts() {
        let registry = Registry::default();
        let jobs = registry.find("batch", "v1", "jobs").unwrap();
        let job = |suspend: bool, image: &str, node: &str| {
            json!({"spec": {"suspend": suspend, "template": {"spec": {"restartPolicy": "Never",
                "nodeSelector": {"pool": node}, "containers": [{"name": "w", "image": image}]}}}})
        };
        let running = job(false, "a", "x");
        let causes = validate(jobs, &job(false, "b", "x"), Some(&running));
        assert_eq!(causes, [("spec.template".to_string(), "Invalid value: field is immutable".to_string())]);
        assert!(validate(jobs, &job(false, "a", "x"), Some(&running)).is_empty(), "unchanged is fine");
        let queued = job(true, "a", "x");
        assert!(validate(jobs, &job(true, "a", "y"), Some(&queued)).is_empty(), "a queued Job may move nodes");
        assert_eq!(validate(jobs, &job(true, "b", "x"), Some(&queued)).len(), 1, "but not change its container");
        let mut started = queued.clone();
        started["status"] = json!({"startTime": "2026-01-01T00:00:00Z"});
        assert_eq!(validate(jobs, &job(true, "a", "y"), Some(&started)).len(), 1, "once started, nothing");
    }
}
