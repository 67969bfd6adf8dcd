//! `metadata.managedFields`: which field manager owns which fields, in the `FieldsV1` format
//! (`{"f:spec": {"f:replicas": {}}}`).
//!
//! An `Update` (create, update, patch) makes its manager the owner of the fields it changed and
//! takes them from every other manager; fields it removed are owned by nobody. Lists are owned as
//! a whole here (`atomic`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// A set of field paths, as a tree: `f:name` children; a leaf is an owned field.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSet(BTreeMap<String, FieldSet>);

/// Metadata fields only the server sets: nobody owns them.
const SERVER_METADATA: [&str; 9] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
];

impl FieldSet {
    /// Reads a `fieldsV1` value.
    pub fn from_json(value: &Value) -> Self {
        let mut set = FieldSet::default();
        if let Some(map) = value.as_object() {
            for (key, child) in map {
                set.0.insert(key.clone(), FieldSet::from_json(child));
            }
        }
        set
    }

    /// Writes the `fieldsV1` value.
    pub fn to_json(&self) -> Value {
        let map: Map<String, Value> = self.0.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
        Value::Object(map)
    }

    /// Adds (or replaces) the child `key` (`f:name`, `k:{..}`, `v:..` or `.`).
    pub fn insert(&mut self, key: String, child: FieldSet) {
        self.0.insert(key, child);
    }

    /// The child `key`.
    pub fn get(&self, key: &str) -> Option<&FieldSet> {
        self.0.get(key)
    }

    /// The children, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &FieldSet)> {
        self.0.iter()
    }

    /// Every owned leaf as a path the way the server prints it in conflicts:
    /// `.spec.containers[name="x"].image`.
    pub fn leaf_paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_paths(String::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: String, out: &mut Vec<String>) {
        for (key, child) in &self.0 {
            if key == "." {
                out.push(prefix.clone());
                continue;
            }
            let step = if let Some(field) = key.strip_prefix("f:") {
                format!(".{field}")
            } else if let Some(keys) = key.strip_prefix("k:") {
                let pairs: Vec<String> = serde_json::from_str::<Map<String, Value>>(keys)
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_default();
                format!("[{}]", pairs.join(","))
            } else {
                format!("[={}]", key.trim_start_matches("v:"))
            };
            if child.is_empty() {
                out.push(format!("{prefix}{step}"));
            } else {
                child.collect_paths(format!("{prefix}{step}"), out);
            }
        }
    }

    /// Whether it owns nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds every path of `other`.
    pub fn union(&mut self, other: &FieldSet) {
        for (k, v) in &other.0 {
            match self.0.get_mut(k) {
                None => {
                    self.0.insert(k.clone(), v.clone());
                }
                // Owning the whole field already covers its parts.
                Some(mine) if mine.0.is_empty() => {}
                Some(mine) if v.0.is_empty() => mine.0.clear(),
                Some(mine) => mine.union(v),
            }
        }
    }

    /// Removes every path of `other` (and everything beneath a removed leaf).
    pub fn subtract(&mut self, other: &FieldSet) {
        for (k, v) in &other.0 {
            if v.0.is_empty() {
                self.0.remove(k);
            } else if let Some(mine) = self.0.get_mut(k) {
                if mine.0.is_empty() {
                    // I own the whole field; the other owns parts: I keep the rest, which is not
                    // representable without the value, so I keep the field.
                    continue;
                }
                mine.subtract(v);
                if mine.0.is_empty() {
                    self.0.remove(k);
                }
            }
        }
    }

    /// The fields of `new` that differ from `old`, and those of `old` that `new` lacks.
    pub fn diff(old: Option<&Value>, new: &Value) -> (FieldSet, FieldSet) {
        let (mut changed, mut removed) = (FieldSet::default(), FieldSet::default());
        diff_into(old, new, &mut changed, &mut removed, true);
        (changed, removed)
    }
}

fn without_server_metadata(meta: &Value) -> Value {
    let mut meta = meta.clone();
    if let Some(m) = meta.as_object_mut() {
        SERVER_METADATA.iter().for_each(|k| {
            m.remove(*k);
        });
    }
    meta
}

fn diff_into(old: Option<&Value>, new: &Value, changed: &mut FieldSet, removed: &mut FieldSet, root: bool) {
    let (Some(new_map), old_map) = (new.as_object(), old.and_then(Value::as_object)) else { return };
    for (key, value) in new_map {
        if root && (key == "apiVersion" || key == "kind") {
            continue;
        }
        let before = old_map.and_then(|m| m.get(key));
        let f = format!("f:{key}");
        let is_meta = root && key == "metadata";
        // Only metadata is copied, to drop what the server alone sets.
        let (value, before): (Cow<Value>, Option<Cow<Value>>) = match is_meta {
            true => {
                (Cow::Owned(without_server_metadata(value)), before.map(|b| Cow::Owned(without_server_metadata(b))))
            }
            false => (Cow::Borrowed(value), before.map(Cow::Borrowed)),
        };
        match (value.as_ref(), before.as_deref()) {
            (Value::Object(_), Some(Value::Object(_))) => {
                let (mut c, mut r) = (FieldSet::default(), FieldSet::default());
                diff_into(before.as_deref(), &value, &mut c, &mut r, false);
                if !c.is_empty() {
                    changed.0.insert(f.clone(), c);
                }
                if !r.is_empty() {
                    removed.0.insert(f, r);
                }
            }
            (Value::Object(child), None) if !child.is_empty() || is_meta => {
                let (mut c, mut r) = (FieldSet::default(), FieldSet::default());
                diff_into(None, &value, &mut c, &mut r, false);
                if !c.is_empty() {
                    changed.0.insert(f, c);
                }
            }
            (value, before) if before != Some(value) => {
                changed.0.insert(f, FieldSet::default());
            }
            _ => {}
        }
    }
    if let Some(old_map) = old_map {
        for key in old_map.keys().filter(|k| !new_map.contains_key(*k)) {
            if root && (key == "apiVersion" || key == "kind") {
                continue;
            }
            removed.0.insert(format!("f:{key}"), FieldSet::default());
        }
    }
}

/// Records an `Update` by `manager` that turned `old` into `object` (`subresource`: `status` for
/// `/status` writes): the manager now owns what it changed, others lose it.
pub fn record_update(
    object: &mut Value,
    old: Option<&Value>,
    manager: &str,
    api_version: &str,
    subresource: Option<&str>,
) {
    let (changed, removed) = FieldSet::diff(old, object);
    let mut entries: Vec<Value> =
        old.and_then(|o| o["metadata"]["managedFields"].as_array().cloned()).unwrap_or_default();
    let mut mine_found = false;
    for entry in entries.iter_mut() {
        let mut set = FieldSet::from_json(&entry["fieldsV1"]);
        let is_mine = entry["manager"] == manager
            && entry["operation"] == "Update"
            && entry.get("subresource").and_then(Value::as_str) == subresource;
        set.subtract(&removed);
        if is_mine {
            mine_found = true;
            set.union(&changed);
            if !changed.is_empty() {
                entry["time"] = json!(super::store::now());
            }
            entry["apiVersion"] = json!(api_version);
        } else {
            set.subtract(&changed);
        }
        entry["fieldsV1"] = set.to_json();
    }
    if !mine_found && !changed.is_empty() {
        entries.push(entry(manager, "Update", api_version, &changed, subresource));
    }
    entries.retain(|e| e["fieldsV1"].as_object().is_some_and(|m| !m.is_empty()));
    let meta = object["metadata"].as_object_mut().expect("metadata is an object");
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries));
    }
}

/// A new `managedFields` entry: `manager` owns `fields` by `operation` (`Update` or `Apply`).
pub fn entry(manager: &str, operation: &str, api_version: &str, fields: &FieldSet, subresource: Option<&str>) -> Value {
    let mut entry = json!({
        "manager": manager, "operation": operation, "apiVersion": api_version,
        "time": super::store::now(), "fieldsType": "FieldsV1", "fieldsV1": fields.to_json(),
    });
    if let Some(s) = subresource {
        entry["subresource"] = json!(s);
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_owns_what_it_changed_and_takes_it_from_others() {
        let created = {
            let mut o = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"a": 1, "b": {"c": 2}}});
            record_update(&mut o, None, "alice", "v1", None);
            o
        };
        assert_eq!(
            created["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:x": {}}}, "f:spec": {"f:a": {}, "f:b": {"f:c": {}}}})
        );
        let mut changed = created.clone();
        changed["spec"]["a"] = json!(5);
        changed["spec"]["b"].as_object_mut().unwrap().remove("c");
        record_update(&mut changed, Some(&created), "bob", "v1", None);
        let fields = changed["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0]["manager"], "alice");
        assert_eq!(fields[0]["fieldsV1"], json!({"f:metadata": {"f:labels": {"f:x": {}}}}));
        assert_eq!(fields[1]["manager"], "bob");
        assert_eq!(fields[1]["fieldsV1"], json!({"f:spec": {"f:a": {}}}));
    }
}
