//! The Helm chart lints clean and renders, with default and non-default values, into the objects
//! the operator needs: checked for kinds, RBAC verbs (against the chart README's table) and the
//! security context. Rendering uses Helm's own Go SDK (helm-python-sdk from scripts/setup.sh).

use std::collections::BTreeSet;

use distillery_tests::chart::{lint, render};
use distillery_tests::repo_root;
use serde_json::{Value, json};

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn operator_container(objects: &[Value]) -> &Value {
    let deployments = find(objects, "Deployment");
    assert_eq!(deployments.len(), 1, "exactly one operator Deployment");
    &deployments[0]["spec"]["template"]["spec"]["containers"][0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
}

/// (apiGroup, resource, verb) triples granted to the operator by the rendered roles.
fn granted(objects: &[Value]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for role in objects.iter().filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role") {
        let name = role["metadata"]["name"].as_str().unwrap();
        if name.ends_with("-worker") {
            continue;
        }
        for rule in role["rules"].as_array().unwrap() {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        out.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    out
}

/// The same triples, read from the RBAC table of charts/distillery/README.md.
fn documented() -> BTreeSet<(String, String, String)> {
    let readme = std::fs::read_to_string(repo_root().join("charts/distillery/README.md")).unwrap();
    let section = readme.split("## RBAC").nth(1).expect("README has an RBAC section");
    let mut out = BTreeSet::new();
    for line in section.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| scope") && !l.starts_with("| ---"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let group = cells[2].split_whitespace().next().unwrap().trim_matches('"').to_string();
        for resource in cells[3].split(',') {
            let resource = resource.split_whitespace().next().unwrap().to_string();
            for verb in cells[4].split(',') {
                out.insert((group.clone(), resource.clone(), verb.trim().to_string()));
            }
        }
    }
    out
}

#[test]
fn lints_clean_with_default_and_custom_values() {
    for values in [json!({}), json!({"replicaCount": 2, "metrics": {"serviceMonitor": {"enabled": true}}})] {
        let report = lint(&values).unwrap();
        assert!(report.errors.is_empty(), "lint errors with {values}: {:?}", report.errors);
        assert!(report.warnings.is_empty(), "lint warnings with {values}: {:?}", report.warnings);
    }
}

#[test]
fn default_render_has_every_object() {
    let objects = render(&json!({})).unwrap();
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "CustomResourceDefinition",
    ] {
        assert!(kinds.contains(kind), "default render lacks a {kind}: {kinds:?}");
    }
    assert_eq!(find(&objects, "CustomResourceDefinition").len(), 3);
    assert!(find(&objects, "ServiceMonitor").is_empty(), "ServiceMonitor is off by default");
    // Every namespaced object goes to the release namespace.
    for o in &objects {
        if ["Deployment", "ServiceAccount", "Service", "Role", "RoleBinding"].contains(&o["kind"].as_str().unwrap()) {
            assert_eq!(o["metadata"]["namespace"], "distillery-system", "{}", o["metadata"]["name"]);
        }
    }
    // The bindings name the ServiceAccount the Deployment runs as.
    let sa = find(&objects, "ServiceAccount")[0]["metadata"]["name"].clone();
    assert_eq!(find(&objects, "Deployment")[0]["spec"]["template"]["spec"]["serviceAccountName"], sa);
    for binding in find(&objects, "ClusterRoleBinding").into_iter().chain(find(&objects, "RoleBinding")) {
        assert_eq!(binding["subjects"][0]["name"], sa);
    }
}

#[test]
fn rbac_grants_exactly_what_the_readme_lists() {
    let objects = render(&json!({})).unwrap();
    let granted = granted(&objects);
    let documented = documented();
    let undocumented: Vec<_> = granted.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&granted).collect();
    assert!(undocumented.is_empty(), "granted but not in the README's RBAC table: {undocumented:?}");
    assert!(missing.is_empty(), "in the README's RBAC table but not granted: {missing:?}");
    // No wildcards, and no access to Secrets.
    assert!(granted.iter().all(|(g, r, v)| g != "*" && r != "*" && v != "*"));
    assert!(granted.iter().all(|(_, r, _)| r != "secrets"));
    // bind is limited to the worker role by name.
    let bind_rule = find(&objects, "ClusterRole")
        .into_iter()
        .flat_map(|r| r["rules"].as_array().unwrap())
        .find(|rule| strings(&rule["verbs"]) == ["bind"])
        .expect("a bind rule");
    assert_eq!(strings(&bind_rule["resourceNames"]), ["distillery-worker"]);
}

#[test]
fn operator_pod_is_locked_down() {
    let objects = render(&json!({})).unwrap();
    let pod = &find(&objects, "Deployment")[0]["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = operator_container(&objects);
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["privileged"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
}

/// The chart's `appVersion`.
fn chart_app_version() -> String {
    let chart = &distillery_tests::read_documents(&repo_root().join("charts/distillery/Chart.yaml")).unwrap()[0];
    chart["appVersion"].as_str().unwrap().to_string()
}

#[test]
fn custom_values_reach_the_objects() {
    let objects = render(&json!({
        "replicaCount": 2,
        "image": {"tag": "v9.9.9"},
        "workerImage": {"repository": "registry.example/worker", "tag": "cpu-1"},
        "workerCudaImage": {"repository": "registry.example/worker-gpu"},
        "serviceAccount": {"create": false, "name": "existing-sa"},
        "metrics": {"serviceMonitor": {"enabled": true, "labels": {"release": "prom"}}},
        "logLevel": "debug",
    }))
    .unwrap();
    let deployment = find(&objects, "Deployment")[0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let c = operator_container(&objects);
    assert_eq!(c["image"], "ghcr.io/distillery-dev/distillery-operator:v9.9.9");
    let env = |name: &str| c["env"].as_array().unwrap().iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    assert_eq!(env("DISTILLERY_WORKER_IMAGE"), Some(json!("registry.example/worker:cpu-1")));
    let app_version = chart_app_version();
    assert_eq!(
        env("DISTILLERY_WORKER_CUDA_IMAGE"),
        Some(json!(format!("registry.example/worker-gpu:{app_version}-cuda")))
    );
    assert_eq!(env("DISTILLERY_LOG_LEVEL"), Some(json!("debug")));
    assert!(find(&objects, "ServiceAccount").is_empty(), "serviceAccount.create=false creates none");
    assert_eq!(deployment["spec"]["template"]["spec"]["serviceAccountName"], "existing-sa");
    let monitor = find(&objects, "ServiceMonitor");
    assert_eq!(monitor.len(), 1);
    assert_eq!(monitor[0]["metadata"]["labels"]["release"], "prom");

    let no_rbac = render(&json!({"rbac": {"create": false}})).unwrap();
    assert!(find(&no_rbac, "ClusterRole").is_empty() && find(&no_rbac, "RoleBinding").is_empty());
}

#[test]
fn bad_values_are_refused_with_the_key_named() {
    let err = render(&json!({"replicaCount": "two"})).unwrap_err().to_string();
    assert!(err.contains("replicaCount"), "{err}");
    let err = render(&json!({"replicas": 2})).unwrap_err().to_string();
    assert!(err.contains("replicas"), "{err}");
    let err = render(&json!({"replicaCount": 2, "leaderElection": {"enabled": false}})).unwrap_err().to_string();
    assert!(err.contains("leaderElection"), "{err}");
}
