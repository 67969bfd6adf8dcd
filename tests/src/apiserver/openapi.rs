//! A minimal `/openapi/v3`: enough for `kubectl apply --server-side` (which looks for the
//! `fieldValidation` parameter on each kind's PATCH operation before it asks for server-side
//! validation) and `kubectl explain` (which renders a kind's schema, found by its
//! `x-kubernetes-group-version-kind`). Custom resources carry their CRD's full schema with its
//! descriptions; built-in kinds an open object.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde_json::{Map, Value, json};

use super::registry::{Registry, ResourceType};
use super::schema::version_schema;

/// `apis/group/version`, or `api/v1`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// `GET /openapi/v3`: one entry per group-version, with a hash that changes when its document does.
pub fn root(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for t in registry.all() {
        let key = gv_path(&t.group, &t.version);
        if paths.contains_key(&key) {
            continue;
        }
        let mut hasher = DefaultHasher::new();
        document(registry, &t.group, &t.version).map(|d| d.to_string()).hash(&mut hasher);
        let url = format!("/openapi/v3/{key}?hash={:016X}", hasher.finish());
        paths.insert(key, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

fn gvk(t: &ResourceType) -> Value {
    json!({"group": t.group, "version": t.version, "kind": t.kind})
}

/// The schema name of a kind, in the reversed-domain style the real server uses.
fn schema_name(t: &ResourceType) -> String {
    let group: Vec<&str> =
        if t.group.is_empty() { vec!["io", "k8s", "api", "core"] } else { t.group.rsplit('.').collect() };
    format!("{}.{}.{}", group.join("."), t.version, t.kind)
}

/// `GET /openapi/v3/apis/{group}/{version}` (or `api/v1`), if that group-version is served.
pub fn document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types: Vec<&ResourceType> =
        registry.all().iter().filter(|t| t.group == group && t.version == version).collect();
    if types.is_empty() {
        return None;
    }
    let parameters: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
        .iter()
        .map(|name| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
        .collect();
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for t in types {
        let prefix = format!("/{}", gv_path(&t.group, &t.version));
        let item = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{prefix}/{}/{{name}}", t.plural)
        };
        let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(t))});
        let operation = |action: &str| {
            json!({
                "operationId": format!("{action}{}", t.kind),
                "parameters": parameters,
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk(t),
            })
        };
        paths.insert(
            item,
            json!({"get": operation("get"), "put": operation("put"), "patch": operation("patch"),
                                  "delete": operation("delete")}),
        );
        let mut schema = t
            .crd
            .as_deref()
            .and_then(|crd| version_schema(crd, &t.version))
            .unwrap_or_else(|| json!({"type": "object", "description": format!("{} (built-in kind; the harness serves no schema for it)", t.kind),
                                      "x-kubernetes-preserve-unknown-fields": true}));
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            props.insert("metadata".into(), json!({"type": "object", "description": "Standard object's metadata."}));
        }
        schema["x-kubernetes-group-version-kind"] = json!([gvk(t)]);
        schemas.insert(schema_name(t), schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (distillery harness)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
