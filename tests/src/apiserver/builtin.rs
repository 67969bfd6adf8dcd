//! Validation of the built-in kinds the operator creates, enough that an object a real server
//! refuses is refused here too, with the real server's field paths and wording. (Custom resources
//! are validated from their CRD's schema instead: see `schema`.)

use serde_json::Value;

use super::registry::ResourceType;

type Causes = Vec<(String, String)>;

fn required(causes: &mut Causes, field: &str, what: &str) {
    causes.push((field.to_string(), format!("Required value{what}")));
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

/// The `(field, message)` violations of a built-in object (empty when it is valid).
pub fn validate(rt: &ResourceType, object: &Value) -> Causes {
    let mut causes = vec![];
    let spec = &object["spec"];
    match rt.kind.as_str() {
        "Pod" => pod_spec(spec, "spec", &mut causes),
        "Job" => {
            pod_spec(&spec["template"]["spec"], "spec.template.spec", &mut causes);
            match spec["template"]["spec"]["restartPolicy"].as_str() {
                Some("Never") | Some("OnFailure") => {}
                _ => required(
                    &mut causes,
                    "spec.template.spec.restartPolicy",
                    ": valid values: \"OnFailure\", \"Never\"",
                ),
            }
            for field in ["backoffLimit", "completions", "parallelism", "activeDeadlineSeconds"] {
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
        let causes = validate(jobs, &job);
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, vec!["spec.template.spec.containers[0].image", "spec.template.spec.restartPolicy"]);
        let good = json!({"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "w", "image": "x"}]}}}});
        assert!(validate(jobs, &good).is_empty());
    }

    #[test]
    fn a_deployment_whose_selector_misses_its_template_is_refused() {
        let registry = Registry::default();
        let deployments = registry.find("apps", "v1", "deployments").unwrap();
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "s", "image": "x"}]}}}});
        let causes = validate(deployments, &d);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].0, "spec.template.metadata.labels");
    }
}
