//! Server-side printing: a `meta.k8s.io/v1` `Table` for clients that ask for one
//! (`Accept: application/json;as=Table;…`, as `kubectl get` does), with a CRD's
//! `additionalPrinterColumns` — so `kubectl get dj` shows phase, step and loss.

use serde_json::{Value, json};

use super::registry::ResourceType;

/// Whether the `Accept` header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

/// The printer columns of `rt`: `(name, type, json path, priority)`.
fn columns(rt: &ResourceType) -> Vec<(String, String, String, i64)> {
    let mut out = vec![("Name".to_string(), "string".to_string(), ".metadata.name".to_string(), 0)];
    let custom = rt.crd.as_deref().and_then(|crd| {
        crd.spec.versions.iter().find(|v| v.name == rt.version).and_then(|v| v.additional_printer_columns.clone())
    });
    match custom {
        Some(cols) => {
            out.extend(cols.into_iter().map(|c| (c.name, c.type_, c.json_path, i64::from(c.priority.unwrap_or(0)))))
        }
        None => out.push(("Age".into(), "date".into(), ".metadata.creationTimestamp".into(), 0)),
    }
    out
}

/// The value at a simple dotted JSON path (`.status.phase`).
fn at<'v>(object: &'v Value, path: &str) -> Option<&'v Value> {
    path.trim_start_matches('.').split('.').try_fold(object, |v, step| v.get(step))
}

/// `5s`, `3m`, `2h`, `4d` since an RFC 3339 timestamp, as the server prints ages.
fn age(timestamp: &str) -> String {
    let Ok(then) = timestamp.parse::<jiff::Timestamp>() else { return "<invalid>".into() };
    let secs = jiff::Timestamp::now().duration_since(then).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `objects` as a Table.
pub fn table(rt: &ResourceType, objects: &[Value], resource_version: &str) -> Value {
    let cols = columns(rt);
    let definitions: Vec<Value> = cols
        .iter()
        .map(|(name, type_, _, priority)| {
            let format = if name == "Name" { "name" } else { "" };
            json!({"name": name, "type": if type_ == "date" { "string" } else { type_ }, "format": format,
                   "description": "", "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols
                .iter()
                .map(|(_, type_, path, _)| match (at(o, path), type_.as_str()) {
                    (Some(Value::String(t)), "date") => json!(age(t)),
                    (Some(v), _) => v.clone(),
                    (None, _) => Value::Null,
                })
                .collect();
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                              "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
           "columnDefinitions": definitions, "rows": rows})
}
