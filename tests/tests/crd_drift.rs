//! The CRD YAML committed in the chart is exactly what the Rust types generate.

use distillery_tests::repo_root;

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = repo_root().join("charts/distillery/crds");
    let crds = distillery_crds::crds();
    assert_eq!(crds.len(), 3);
    for crd in crds {
        let path = dir.join(distillery_crds::crd_file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let generated = distillery_crds::crd_yaml(&crd).unwrap();
        assert!(
            committed == generated,
            "{} is stale: run `cargo run -p distillery-crds --bin crdgen` and commit the result",
            path.display()
        );
    }
    // Nothing else hides in the directory (a renamed kind would leave an old file behind).
    let files = distillery_tests::yaml_files(&dir);
    assert_eq!(files.len(), 3, "unexpected files in {}: {files:?}", dir.display());
}

/// Every `default` in the generated schemas is itself valid against the schema: a default that
/// breaks its own minimums (a derived `Default` of zeros beside `serde(default = "…")` values)
/// would make the API server refuse every object that leaves the field out.
#[test]
fn every_schema_default_is_valid_where_it_applies() {
    fn walk(schema: &serde_json::Value, path: &str, found: &mut Vec<String>) {
        if let Some(default) = schema.get("default") {
            let validator = jsonschema::validator_for(&strip_kube_extensions(schema)).unwrap();
            if let Some(error) = validator.iter_errors(default).next() {
                found.push(format!("{path}: default {default} is invalid: {error}"));
            }
        }
        for (key, child) in schema.get("properties").and_then(|p| p.as_object()).into_iter().flatten() {
            walk(child, &format!("{path}.{key}"), found);
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), found);
        }
    }
    fn strip_kube_extensions(schema: &serde_json::Value) -> serde_json::Value {
        match schema {
            serde_json::Value::Object(map) => map
                .iter()
                .filter(|(k, _)| !k.starts_with("x-kubernetes"))
                .map(|(k, v)| (k.clone(), strip_kube_extensions(v)))
                .collect(),
            serde_json::Value::Array(items) => items.iter().map(strip_kube_extensions).collect(),
            other => other.clone(),
        }
    }
    let mut found = vec![];
    for crd in distillery_crds::crds() {
        for version in &crd.spec.versions {
            let schema = serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap();
            walk(&schema, &crd.spec.names.kind, &mut found);
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}
