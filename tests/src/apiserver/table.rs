//! What a read answers with, by the `Accept` header, as a real API server does: the objects
//! themselves; a `meta.k8s.io/v1` `Table` (`as=Table`, as `kubectl get` asks) with a CRD's
//! `additionalPrinterColumns`, so `kubectl get dj` shows phase, step and loss; or only their
//! metadata (`as=PartialObjectMetadata` / `as=PartialObjectMetadataList`, as metadata-only
//! watches and `kubectl get --output-watch-events` of owners ask), so a client that asks for
//! metadata receives — and pays for — no more than it would from a real cluster.

use serde_json::{Value, json};

use super::registry::ResourceType;

/// How objects are represented in a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Representation {
    /// The objects themselves.
    Objects,
    /// A `Table` of the printer columns.
    Table,
    /// `PartialObjectMetadata`: kind, apiVersion and metadata only.
    Metadata,
}

impl Representation {
    /// What the `Accept` header's first choice asks for.
    pub fn wanted(accept: &str) -> Self {
        let first = accept.split(',').next().unwrap_or_default();
        if first.contains("as=Table") {
            Self::Table
        } else if first.contains("as=PartialObjectMetadata") {
            Self::Metadata
        } else {
            Self::Objects
        }
    }

    /// One object (a get, or a watch event's object) in this representation.
    pub fn one(self, rt: &ResourceType, object: &Value) -> Value {
        match self {
            Self::Objects => object.clone(),
            Self::Table => {
                let rv = object["metadata"]["resourceVersion"].as_str().unwrap_or_default();
                table(rt, std::slice::from_ref(object), rv)
            }
            Self::Metadata => partial(object),
        }
    }

    /// A list (`items` and list metadata) in this representation.
    pub fn list(self, rt: &ResourceType, list: Value) -> Value {
        let items = || list["items"].as_array().cloned().unwrap_or_default();
        match self {
            Self::Objects => list,
            Self::Table => {
                let rv = list["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
                let mut t = table(rt, &items(), &rv);
                t["metadata"] = list["metadata"].clone();
                t
            }
            Self::Metadata => json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                                     "metadata": list["metadata"],
                                     "items": items().iter().map(partial).collect::<Vec<_>>()}),
        }
    }
}

/// `object` as `PartialObjectMetadata`.
fn partial(object: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
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
fn table(rt: &ResourceType, objects: &[Value], resource_version: &str) -> Value {
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
            json!({"cells": cells, "object": partial(o)})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
           "columnDefinitions": definitions, "rows": rows})
}
