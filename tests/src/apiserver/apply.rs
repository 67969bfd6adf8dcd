//! Server-side apply: merging an applied configuration into the live object with field ownership,
//! as structured-merge-diff does on a real server.
//!
//! - The fields a manager applies become its `Apply` entry in `managedFields` (replacing the
//!   previous one); fields it applied before and applies no longer are removed, unless another
//!   manager owns them too.
//! - Applying a value that differs from the live one in a field another manager owns is a
//!   conflict (409 naming manager and field) unless `force=true`, which takes the field over.
//!   Applying the same value shares ownership.
//! - Lists merge by their list type: `map` lists (containers by `name`, conditions by `type`, …)
//!   merge element by element, `set` lists (finalizers) by value, `atomic` lists are replaced whole.
//!   A CRD's list types come from its schema (`x-kubernetes-list-type`, `-list-map-keys`); the
//!   built-in kinds' from the table in [`ListTypes::builtin`].

use serde_json::{Map, Value, json};

use super::fields::FieldSet;

/// How a list merges under apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole.
    Atomic,
    /// A set of scalars: merged by value.
    Set,
    /// Elements identified by these keys: merged element by element.
    Map(Vec<String>),
}

/// The list types of one resource type: its CRD's schema, or the built-in table.
pub struct ListTypes<'a> {
    schema: Option<&'a Value>,
}

impl<'a> ListTypes<'a> {
    /// List types from a CRD version's `openAPIV3Schema` (`None` for built-in kinds).
    pub fn new(schema: Option<&'a Value>) -> Self {
        Self { schema }
    }

    /// The list type at `path` (field names from the root; `[]` steps into list elements).
    pub fn at(&self, path: &[String]) -> ListType {
        let Some(mut node) = self.schema.filter(|_| path.first().is_none_or(|p| p != "metadata")) else {
            return Self::builtin(path);
        };
        for step in path {
            let next = if step == "[]" {
                node.get("items")
            } else {
                node.get("properties").and_then(|p| p.get(step)).or_else(|| node.get("additionalProperties"))
            };
            match next {
                Some(n) => node = n,
                None => return ListType::Atomic,
            }
        }
        match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(
                node["x-kubernetes-list-map-keys"]
                    .as_array()
                    .map(|keys| keys.iter().filter_map(Value::as_str).map(str::to_string).collect())
                    .unwrap_or_default(),
            ),
            _ => ListType::Atomic,
        }
    }

    /// The list types of the built-in kinds' lists that the operator and the simulated cluster
    /// write (the `patchMergeKey`s of the Kubernetes API); every other list is atomic.
    fn builtin(path: &[String]) -> ListType {
        let name = |keys: &[&str]| ListType::Map(keys.iter().map(|k| k.to_string()).collect());
        match path.last().map(String::as_str) {
            Some("finalizers") => ListType::Set,
            Some("ownerReferences") => name(&["uid"]),
            Some("containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "imagePullSecrets") => {
                name(&["name"])
            }
            Some("volumeMounts") => name(&["mountPath"]),
            Some("conditions") => name(&["type"]),
            Some("ports") if path.iter().any(|p| p.ends_with("ontainers")) => name(&["containerPort"]),
            Some("ports") => name(&["port"]),
            _ => ListType::Atomic,
        }
    }
}

/// Metadata fields nobody owns.
const UNOWNED_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The `k:` key of a map-list element: its key fields as JSON, in key order.
fn element_key(element: &Value, keys: &[String]) -> String {
    let fields: Vec<String> = keys
        .iter()
        .map(|k| format!("{}:{}", Value::String(k.clone()), element.get(k).unwrap_or(&Value::Null)))
        .collect();
    format!("k:{{{}}}", fields.join(","))
}

/// The `v:` key of a set-list element.
fn set_key(item: &Value) -> String {
    format!("v:{item}")
}

fn same_element(a: &Value, b: &Value, keys: &[String]) -> bool {
    keys.iter().all(|k| a.get(k) == b.get(k))
}

fn child(path: &[String], step: &str) -> Vec<String> {
    let mut p = path.to_vec();
    p.push(step.to_string());
    p
}

/// The fields an applied configuration sets, as a field set.
pub fn applied_fields(applied: &Value, types: &ListTypes) -> FieldSet {
    let mut set = FieldSet::default();
    if let Some(map) = applied.as_object() {
        for (key, value) in map {
            if key == "apiVersion" || key == "kind" {
                continue;
            }
            let value = if key == "metadata" {
                let mut m = value.clone();
                if let Some(m) = m.as_object_mut() {
                    UNOWNED_METADATA.iter().for_each(|k| {
                        m.remove(*k);
                    });
                }
                m
            } else {
                value.clone()
            };
            let fields = value_fields(&value, std::slice::from_ref(key), types);
            if key != "metadata" || !fields.is_empty() {
                set.insert(format!("f:{key}"), fields);
            }
        }
    }
    set
}

fn value_fields(value: &Value, path: &[String], types: &ListTypes) -> FieldSet {
    let mut set = FieldSet::default();
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                set.insert(format!("f:{key}"), value_fields(v, &child(path, key), types));
            }
        }
        Value::Array(items) => match types.at(path) {
            ListType::Atomic => {}
            ListType::Set => {
                for item in items {
                    set.insert(set_key(item), FieldSet::default());
                }
            }
            ListType::Map(keys) => {
                for item in items {
                    let mut fields = value_fields(item, &child(path, "[]"), types);
                    fields.insert(".".into(), FieldSet::default());
                    set.insert(element_key(item, &keys), fields);
                }
            }
        },
        _ => {}
    }
    set
}

/// The value a field-set key names inside `value`.
fn lookup<'v>(value: Option<&'v Value>, key: &str, path: &[String], types: &ListTypes) -> Option<&'v Value> {
    let value = value?;
    if let Some(field) = key.strip_prefix("f:") {
        return value.get(field);
    }
    let items = value.as_array()?;
    if key.starts_with("k:") {
        let ListType::Map(keys) = types.at(path) else { return None };
        return items.iter().find(|item| element_key(item, &keys) == key);
    }
    items.iter().find(|item| set_key(item) == key)
}

fn path_step(key: &str) -> &str {
    key.strip_prefix("f:").unwrap_or("[]")
}

/// Whether everything `applied` sets is already so in `live`.
fn is_subset(applied: &Value, live: Option<&Value>, path: &[String], types: &ListTypes) -> bool {
    let Some(live) = live else { return false };
    match (applied, live) {
        (Value::Object(a), Value::Object(l)) => a.iter().all(|(k, v)| is_subset(v, l.get(k), &child(path, k), types)),
        (Value::Array(a), Value::Array(l)) => match types.at(path) {
            ListType::Atomic => applied == live,
            ListType::Set => a.iter().all(|v| l.contains(v)),
            ListType::Map(keys) => a.iter().all(|item| {
                let found = l.iter().find(|x| same_element(x, item, &keys));
                is_subset(item, found, &child(path, "[]"), types)
            }),
        },
        _ => applied == live,
    }
}

/// The paths of `mine` that `other` owns (the whole field or a part of it) and where the applied
/// value differs from the live one.
fn conflicts(
    mine: &FieldSet,
    other: &FieldSet,
    applied: &Value,
    live: &Value,
    path: &[String],
    types: &ListTypes,
) -> FieldSet {
    let mut found = FieldSet::default();
    for (key, my_child) in mine.entries() {
        if key == "." {
            continue;
        }
        let Some(other_child) = other.get(key) else { continue };
        let step = child(path, path_step(key));
        let (a, l) = (lookup(Some(applied), key, path, types), lookup(Some(live), key, path, types));
        if my_child.is_empty() || other_child.is_empty() {
            if let Some(a) = a
                && !is_subset(a, l, &step, types)
            {
                found.insert(key.clone(), FieldSet::default());
            }
        } else if let (Some(a), Some(l)) = (a, l) {
            let inner = conflicts(my_child, other_child, a, l, &step, types);
            if !inner.is_empty() {
                found.insert(key.clone(), inner);
            }
        }
    }
    found
}

/// Merges `applied` into `live`.
fn merge(live: &mut Value, applied: &Value, path: &[String], types: &ListTypes) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, v) in a {
                match l.get_mut(k) {
                    Some(existing) => merge(existing, v, &child(path, k), types),
                    None => {
                        l.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a)) => match types.at(path) {
            ListType::Atomic => *l = a.clone(),
            ListType::Set => {
                a.iter().filter(|v| !l.contains(v)).cloned().collect::<Vec<_>>().into_iter().for_each(|v| l.push(v))
            }
            ListType::Map(keys) => {
                for item in a {
                    match l.iter_mut().find(|x| same_element(x, item, &keys)) {
                        Some(existing) => merge(existing, item, &child(path, "[]"), types),
                        None => l.push(item.clone()),
                    }
                }
            }
        },
        (live, applied) => *live = applied.clone(),
    }
}

/// Paths of `previous` that `current` does not cover.
fn no_longer_applied(previous: &FieldSet, current: &FieldSet) -> FieldSet {
    let mut out = FieldSet::default();
    for (key, p) in previous.entries() {
        match current.get(key) {
            None => {
                out.insert(key.clone(), p.clone());
            }
            // A field applied before as a whole is still applied.
            Some(_) if p.is_empty() => {}
            Some(c) => {
                let d = no_longer_applied(p, c);
                if !d.is_empty() {
                    out.insert(key.clone(), d);
                }
            }
        }
    }
    out
}

/// `removed` without what `owned` (another manager's fields) touches.
fn unowned(removed: &FieldSet, owned: &FieldSet) -> FieldSet {
    let mut out = FieldSet::default();
    for (key, r) in removed.entries() {
        match owned.get(key) {
            None => {
                out.insert(key.clone(), r.clone());
            }
            // The other owns it whole, or parts of what I owned whole: keep the value.
            Some(o) if o.is_empty() || r.is_empty() => {}
            Some(o) => {
                let d = unowned(r, o);
                if !d.is_empty() {
                    out.insert(key.clone(), d);
                }
            }
        }
    }
    out
}

/// Removes the `removed` paths from `value`; objects left empty that the manager no longer applies
/// go too.
fn remove(value: &mut Value, removed: &FieldSet, applied: Option<&FieldSet>, path: &[String], types: &ListTypes) {
    for (key, r) in removed.entries() {
        let whole = r.is_empty() || r.get(".").is_some();
        let still_applied = applied.and_then(|a| a.get(key));
        if let Some(field) = key.strip_prefix("f:") {
            let Some(map) = value.as_object_mut() else { continue };
            if whole {
                map.remove(field);
                continue;
            }
            if let Some(inner) = map.get_mut(field) {
                remove(inner, r, still_applied, &child(path, field), types);
                if inner.as_object().is_some_and(Map::is_empty) && still_applied.is_none() {
                    map.remove(field);
                }
            }
            continue;
        }
        let Some(items) = value.as_array_mut() else { continue };
        let keys = match types.at(path) {
            ListType::Map(keys) => Some(keys),
            _ => None,
        };
        let position = items.iter().position(|item| match &keys {
            Some(keys) => element_key(item, keys) == *key,
            None => set_key(item) == *key,
        });
        if let Some(i) = position {
            if whole {
                items.remove(i);
            } else {
                remove(&mut items[i], r, still_applied, &child(path, "[]"), types);
            }
        }
    }
}

/// What an apply wants done.
pub struct ApplyRequest<'a> {
    /// The live object, or `None` to create it.
    pub live: Option<&'a Value>,
    /// The applied configuration (without `status` on the main endpoint of a kind with a status
    /// subresource; only `status` for `/status`).
    pub applied: &'a Value,
    /// `fieldManager`.
    pub manager: &'a str,
    /// `force=true`.
    pub force: bool,
    /// `status` for `/status` applies.
    pub subresource: Option<&'a str>,
    /// The object's `apiVersion`.
    pub api_version: &'a str,
}

/// The merged object (with its new `managedFields`), or the conflicts as `(manager, field path)`.
pub fn apply(request: &ApplyRequest, types: &ListTypes) -> Result<Value, Vec<(String, String)>> {
    let ApplyRequest { live, applied, manager, force, subresource, api_version } = *request;
    let applied = strip_nulls(applied);
    let mine = applied_fields(&applied, types);
    let empty = json!({});
    let live_value = live.unwrap_or(&empty);
    let mut entries: Vec<Value> = live_value["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    let is_mine = |e: &Value| {
        e["manager"] == manager
            && e["operation"] == "Apply"
            && e.get("subresource").and_then(Value::as_str) == subresource
    };
    let previous = entries.iter().find(|e| is_mine(e)).map(|e| FieldSet::from_json(&e["fieldsV1"])).unwrap_or_default();

    let mut conflicting = Vec::new();
    for entry in entries.iter_mut().filter(|e| !is_mine(e)) {
        let mut theirs = FieldSet::from_json(&entry["fieldsV1"]);
        let clash = conflicts(&mine, &theirs, &applied, live_value, &[], types);
        if clash.is_empty() {
            continue;
        }
        if force {
            theirs.subtract(&clash);
            entry["fieldsV1"] = theirs.to_json();
        } else {
            let who = entry["manager"].as_str().unwrap_or_default().to_string();
            let using = entry["apiVersion"].as_str().unwrap_or_default().to_string();
            for path in clash.leaf_paths() {
                conflicting.push((format!("conflict with \"{who}\" using {using}"), path));
            }
        }
    }
    if !conflicting.is_empty() {
        return Err(conflicting);
    }

    let mut merged = live.cloned().unwrap_or_else(|| json!({}));
    merge(&mut merged, &applied, &[], types);
    let mut removed = no_longer_applied(&previous, &mine);
    for entry in entries.iter().filter(|e| !is_mine(e)) {
        removed = unowned(&removed, &FieldSet::from_json(&entry["fieldsV1"]));
    }
    remove(&mut merged, &removed, Some(&mine), &[], types);

    let changed_fields = previous != mine;
    match entries.iter_mut().find(|e| is_mine(e)) {
        Some(entry) => {
            entry["fieldsV1"] = mine.to_json();
            entry["apiVersion"] = json!(api_version);
            if changed_fields {
                entry["time"] = json!(super::store::now());
            }
        }
        None => entries.push(super::fields::entry(manager, "Apply", api_version, &mine, subresource)),
    }
    entries.retain(|e| e["fieldsV1"].as_object().is_some_and(|m| !m.is_empty()));
    if !merged["metadata"].is_object() {
        merged["metadata"] = json!({});
    }
    merged["metadata"]["managedFields"] = Value::Array(entries);
    Ok(merged)
}

/// The applied configuration without `null` values (which apply treats as "not set").
fn strip_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), strip_nulls(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> ListTypes<'static> {
        ListTypes::new(None)
    }

    fn run(live: Option<&Value>, applied: &Value, manager: &str, force: bool) -> Result<Value, Vec<(String, String)>> {
        apply(&ApplyRequest { live, applied, manager, force, subresource: None, api_version: "batch/v1" }, &builtin())
    }

    fn fields_of(object: &Value, manager: &str) -> Value {
        object["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == manager)
            .map(|e| e["fieldsV1"].clone())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn apply_owns_what_it_sets_and_removes_what_it_no_longer_sets() {
        let first = json!({"metadata": {"name": "j", "labels": {"a": "1", "b": "2"}}, "spec": {"x": 1, "y": 2}});
        let created = run(None, &first, "op", false).unwrap();
        assert_eq!(
            fields_of(&created, "op"),
            json!({"f:metadata": {"f:labels": {"f:a": {}, "f:b": {}}}, "f:spec": {"f:x": {}, "f:y": {}}})
        );
        let second = json!({"metadata": {"name": "j", "labels": {"a": "1"}}, "spec": {"x": 3}});
        let updated = run(Some(&created), &second, "op", false).unwrap();
        assert_eq!(updated["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(updated["spec"], json!({"x": 3}));
    }

    #[test]
    fn a_different_value_in_a_field_another_manager_owns_conflicts_unless_forced() {
        let created = run(None, &json!({"metadata": {"name": "j"}, "spec": {"x": 1, "y": 2}}), "alice", false).unwrap();
        // The same value: shared, no conflict.
        let shared = run(Some(&created), &json!({"metadata": {"name": "j"}, "spec": {"x": 1}}), "bob", false).unwrap();
        let err = run(Some(&shared), &json!({"metadata": {"name": "j"}, "spec": {"y": 5}}), "bob", false).unwrap_err();
        assert_eq!(err, vec![("conflict with \"alice\" using batch/v1".to_string(), ".spec.y".to_string())]);
        let forced = run(Some(&shared), &json!({"metadata": {"name": "j"}, "spec": {"y": 5}}), "bob", true).unwrap();
        assert_eq!(forced["spec"], json!({"x": 1, "y": 5}), "bob dropped x, which alice still owns");
        assert_eq!(fields_of(&forced, "alice"), json!({"f:spec": {"f:x": {}}}));
        assert_eq!(fields_of(&forced, "bob"), json!({"f:spec": {"f:y": {}}}));
    }

    #[test]
    fn map_lists_merge_by_key_and_each_manager_keeps_its_elements() {
        let op = json!({"metadata": {"name": "p"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let created = run(None, &op, "op", false).unwrap();
        let other =
            json!({"metadata": {"name": "p"}, "status": {"conditions": [{"type": "Synced", "status": "False"}]}});
        let both = run(Some(&created), &other, "sync", false).unwrap();
        assert_eq!(both["status"]["conditions"].as_array().unwrap().len(), 2);
        assert_eq!(
            fields_of(&both, "sync"),
            json!({"f:status": {"f:conditions": {"k:{\"type\":\"Synced\"}": {".": {}, "f:status": {}, "f:type": {}}}}})
        );
        // The operator stops applying its condition: only its element goes.
        let dropped =
            run(Some(&both), &json!({"metadata": {"name": "p"}, "status": {"conditions": []}}), "op", false).unwrap();
        assert_eq!(dropped["status"]["conditions"], json!([{"type": "Synced", "status": "False"}]));
    }

    #[test]
    fn set_lists_merge_by_value() {
        let a = run(None, &json!({"metadata": {"name": "x", "finalizers": ["a"]}}), "one", false).unwrap();
        let b = run(Some(&a), &json!({"metadata": {"name": "x", "finalizers": ["b"]}}), "two", false).unwrap();
        assert_eq!(b["metadata"]["finalizers"], json!(["a", "b"]));
        let c = run(Some(&b), &json!({"metadata": {"name": "x"}}), "one", false).unwrap();
        assert_eq!(c["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn crd_schemas_name_their_list_types() {
        let schema = json!({"properties": {"spec": {"properties": {
            "pairs": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["student"],
                      "items": {"type": "object"}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set"},
            "plain": {"type": "array"}}}}});
        let types = ListTypes::new(Some(&schema));
        let at = |p: &[&str]| types.at(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(at(&["spec", "pairs"]), ListType::Map(vec!["student".into()]));
        assert_eq!(at(&["spec", "tags"]), ListType::Set);
        assert_eq!(at(&["spec", "plain"]), ListType::Atomic);
        assert_eq!(at(&["metadata", "finalizers"]), ListType::Set);
    }
}
