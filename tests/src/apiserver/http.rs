//! The HTTP layer: routes Kubernetes API paths to the store, encodes responses and streams
//! watches.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::apply::{ApplyRequest, ListTypes, apply};
use super::registry::ResourceType;
use super::schema::{self, FieldValidation};
use super::select::{FieldSelector, LabelSelector};
use super::status::{self, ApiError, ApiResult};
use super::store::{Deletion, EventType, Preconditions, Propagation, State, WriteOptions, Written};
use super::table::Representation;
use super::{Shared, openapi, rbac};

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

pub(super) fn router(shared: Arc<Shared>, address: SocketAddr) -> Router {
    Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let shared = shared.clone();
        async move { handle(shared, address, method, uri, headers, body).await }
    })
}

/// What a path addresses.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn json_response(code: StatusCode, value: &Value, warnings: &[String]) -> Response {
    let mut response = (code, axum::Json(value)).into_response();
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "'"))) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

async fn handle(
    shared: Arc<Shared>,
    address: SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let discovery = {
        let state = shared.lock();
        let registry = &state.registry;
        match segments.as_slice() {
            ["version"] => Some(Ok(
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-distillery-harness", "platform": "linux/amd64"}),
            )),
            ["api"] => Some(Ok(registry.core_versions(&address.to_string()))),
            ["apis"] => Some(Ok(registry.groups())),
            ["apis", group] => Some(registry.group(group).ok_or_else(|| ApiError::no_route(uri.path()))),
            ["api", "v1"] => Some(registry.resources("", "v1").ok_or_else(|| ApiError::no_route(uri.path()))),
            ["apis", group, version] => {
                Some(registry.resources(group, version).ok_or_else(|| ApiError::no_route(uri.path())))
            }
            ["openapi", "v3"] => Some(Ok(openapi::root(registry))),
            ["openapi", "v3", "api", version] => {
                Some(openapi::document(registry, "", version).ok_or_else(|| ApiError::no_route(uri.path())))
            }
            ["openapi", "v3", "apis", group, version] => {
                Some(openapi::document(registry, group, version).ok_or_else(|| ApiError::no_route(uri.path())))
            }
            _ => None,
        }
    };
    if let Some(result) = discovery {
        if method != Method::GET {
            return ApiError::method_not_allowed(format!("{method} is not allowed on {}", uri.path())).into_response();
        }
        return match result {
            Ok(v) => json_response(StatusCode::OK, &v, &[]),
            Err(e) => e.into_response(),
        };
    }
    let target = match resolve(&shared, &segments) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let watch = query.get("watch").is_some_and(|v| v == "true" || v == "1");
    let verb = match (&method, target.name.is_some(), watch) {
        (&Method::GET, _, true) => "watch",
        (&Method::GET, true, false) => "get",
        (&Method::GET, false, false) => "list",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, _, _) => "delete",
        _ => return ApiError::method_not_allowed(format!("{method} is not supported")).into_response(),
    };
    let user = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("anonymous")
        .to_string();
    if let Some(error) = shared.lock().take_fault(verb, &target.rt.plural, target.name.as_deref(), &user) {
        return error.into_response();
    }
    if let Err(error) = authorize(&shared, &user, verb, &target, &body) {
        return error.into_response();
    }
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown").to_string();
    let representation = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map_or(Representation::Objects, Representation::wanted);
    let result = match verb {
        "watch" => return watch_stream(shared, target, &query, representation, &user),
        "get" | "list" => {
            let result = if verb == "get" { get(&shared, &target) } else { list(&shared, &target, &query) };
            match result {
                Ok((code, value, warnings)) if target.subresource.is_none() => {
                    let value = if verb == "list" {
                        representation.list(&target.rt, value)
                    } else {
                        representation.one(&target.rt, &value)
                    };
                    Ok((code, value, warnings))
                }
                other => other,
            }
        }
        _ => {
            let opts = match write_options(&query, user_agent) {
                Ok(o) => o,
                Err(e) => return e.into_response(),
            };
            let content_type =
                headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
            let outcome = write(&shared, verb, &target, &query, content_type, &body, &opts);
            shared.notify();
            outcome
        }
    };
    match result {
        Ok((code, value, warnings)) => json_response(code, &value, &warnings),
        Err(e) => e.into_response(),
    }
}

/// RBAC, when the server enforces it ([`super::rbac`]): the request itself, and for a write of a
/// role binding the escalation check on the role it binds.
fn authorize(shared: &Shared, token: &str, verb: &'static str, target: &Target, body: &Bytes) -> ApiResult<()> {
    let state = shared.lock();
    if !state.rbac_enforced {
        return Ok(());
    }
    let user = rbac::authenticate((token != "anonymous").then_some(token));
    let attributes = rbac::Attributes {
        verb,
        group: &target.rt.group,
        resource: &target.rt.plural,
        subresource: target.subresource.as_deref(),
        name: target.name.as_deref(),
        namespace: target.namespace.as_deref(),
    };
    if !rbac::allowed(&state, &user, &attributes) {
        return Err(rbac::forbidden(&user, &attributes));
    }
    let binding = matches!(target.rt.plural.as_str(), "rolebindings" | "clusterrolebindings")
        && target.rt.group == "rbac.authorization.k8s.io";
    if binding && matches!(verb, "create" | "update" | "patch") {
        let body: Value = serde_json::from_slice(body)
            .ok()
            .or_else(|| crate::parse_documents(&String::from_utf8_lossy(body)).ok()?.into_iter().next())
            .unwrap_or(Value::Null);
        // Every write is checked against the binding's role — the body's, else the stored one's
        // (`roleRef` is immutable, so a patch of the subjects keeps it) — except one that only
        // touches what the garbage collector needs, as the real RBAC storage exempts it.
        let stored = target
            .name
            .as_deref()
            .and_then(|name| state.get(&target.rt, target.namespace.as_deref().unwrap_or_default(), name).ok());
        let role_ref = match &body["roleRef"] {
            r if r.is_object() => Some(r.clone()),
            _ => stored.map(|s| s["roleRef"].clone()).filter(Value::is_object),
        };
        if let Some(role_ref) = role_ref
            && !only_garbage_collection_fields(&body)
        {
            rbac::may_bind(&state, &user, &role_ref, &attributes)?;
        }
    }
    Ok(())
}

/// Whether a write's body changes nothing but `metadata.ownerReferences` and
/// `metadata.finalizers` (identifying fields aside).
fn only_garbage_collection_fields(body: &Value) -> bool {
    let Some(object) = body.as_object() else { return false };
    let identifying = ["apiVersion", "kind", "metadata"];
    let metadata = ["name", "namespace", "uid", "resourceVersion", "ownerReferences", "finalizers"];
    object.contains_key("metadata")
        && object.keys().all(|k| identifying.contains(&k.as_str()))
        && body["metadata"].as_object().is_some_and(|m| m.keys().all(|k| metadata.contains(&k.as_str())))
}

fn resolve(shared: &Shared, segments: &[&str]) -> ApiResult<Target> {
    let (group, version, rest) = match segments {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route(&format!("/{}", segments.join("/")))),
    };
    let state = shared.lock();
    let find = |plural: &str| {
        state
            .registry
            .find(group, version, plural)
            .cloned()
            .ok_or_else(|| ApiError::no_route(&format!("/{}", segments.join("/"))))
    };
    let target = |rt: ResourceType, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        rt,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        subresource: sub.map(str::to_string),
    };
    match rest {
        // `/namespaces/{ns}/{plural}…` for namespaced types; `/namespaces/{name}[/status]` is the
        // Namespace itself.
        ["namespaces", ns, plural, tail @ ..] if !["status", "finalize"].contains(plural) => {
            let rt = find(plural)?;
            if !rt.namespaced {
                return Err(ApiError::no_route(&format!("/{}", segments.join("/"))));
            }
            match tail {
                [] => Ok(target(rt, Some(ns), None, None)),
                [name] => Ok(target(rt, Some(ns), Some(name), None)),
                [name, sub] => Ok(target(rt, Some(ns), Some(name), Some(sub))),
                _ => Err(ApiError::no_route(&format!("/{}", segments.join("/")))),
            }
        }
        [plural] => Ok(target(find(plural)?, None, None, None)),
        [plural, name] => {
            let rt = find(plural)?;
            if rt.namespaced {
                return Err(ApiError::no_route(&format!("/{}", segments.join("/"))));
            }
            Ok(target(rt, None, Some(name), None))
        }
        [plural, name, sub] => {
            let rt = find(plural)?;
            if rt.namespaced {
                return Err(ApiError::no_route(&format!("/{}", segments.join("/"))));
            }
            Ok(target(rt, None, Some(name), Some(sub)))
        }
        _ => Err(ApiError::no_route(&format!("/{}", segments.join("/")))),
    }
}

type Reply = ApiResult<(StatusCode, Value, Vec<String>)>;

fn check_subresource(target: &Target) -> ApiResult<bool> {
    match target.subresource.as_deref() {
        None => Ok(false),
        Some("status") if target.rt.status_subresource => Ok(true),
        Some(other) => Err(ApiError::no_route(&format!("{}/{other}", target.rt.plural))),
    }
}

fn get(shared: &Shared, target: &Target) -> Reply {
    check_subresource(target)?;
    let name = target.name.as_deref().expect("get has a name");
    let object = shared.lock().get(&target.rt, target.namespace.as_deref().unwrap_or_default(), name)?;
    Ok((StatusCode::OK, object, vec![]))
}

fn selectors(query: &HashMap<String, String>, kind: &str) -> ApiResult<(LabelSelector, FieldSelector)> {
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or_default(), kind)
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn list(shared: &Shared, target: &Target, query: &HashMap<String, String>) -> Reply {
    let (labels, fields) = selectors(query, &target.rt.kind)?;
    let state = shared.lock();
    let items: Vec<Value> = state
        .list(&target.rt, target.namespace.as_deref())
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .collect();
    let list = json!({
        "kind": format!("{}List", target.rt.kind), "apiVersion": target.rt.api_version(),
        "metadata": {"resourceVersion": state.rv.to_string()}, "items": items,
    });
    Ok((StatusCode::OK, list, vec![]))
}

fn write_options(query: &HashMap<String, String>, user_agent: String) -> ApiResult<WriteOptions> {
    let field_validation =
        FieldValidation::parse(query.get("fieldValidation").map(String::as_str)).map_err(ApiError::bad_request)?;
    let dry_run = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            )));
        }
    };
    Ok(WriteOptions {
        field_manager: query.get("fieldManager").cloned(),
        field_validation,
        dry_run,
        user_agent,
        applied_managed_fields: None,
    })
}

fn parse_body(body: &Bytes, content_type: &str) -> ApiResult<Value> {
    let parsed = if content_type.contains("yaml") {
        serde_norway::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| ApiError::bad_request(format!("the request body could not be decoded: {e}")))
}

fn write(
    shared: &Shared,
    verb: &str,
    target: &Target,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &Bytes,
    opts: &WriteOptions,
) -> Reply {
    let status_only = check_subresource(target)?;
    let ns = target.namespace.as_deref().unwrap_or_default();
    let rt = &target.rt;
    if rt.namespaced && target.namespace.is_none() {
        return Err(ApiError::bad_request(format!("{verb} of {} needs a namespace", rt.plural)));
    }
    let mut state = shared.lock();
    match (verb, target.name.as_deref()) {
        ("create", None) => {
            let Written { object, warnings } = state.create(rt, ns, parse_body(body, content_type)?, opts)?;
            Ok((StatusCode::CREATED, object, warnings))
        }
        ("update", Some(name)) => {
            let Written { object, warnings } =
                state.update(rt, ns, name, parse_body(body, content_type)?, status_only, opts)?;
            Ok((StatusCode::OK, object, warnings))
        }
        ("patch", Some(name))
            if content_type.starts_with("application/apply-patch+yaml")
                || content_type.starts_with("application/apply-patch+cbor") =>
        {
            if content_type.contains("cbor") {
                return Err(ApiError::unsupported_media_type(
                    content_type,
                    "this server: send the apply patch as YAML or JSON",
                ));
            }
            server_side_apply(&mut state, target, name, query, body, status_only, opts)
        }
        ("patch", Some(name)) => {
            let old = state.get(rt, ns, name)?;
            let mut candidate = old.clone();
            let media = content_type.split(';').next().unwrap_or_default().trim();
            match media {
                "application/merge-patch+json" => {
                    let patch = parse_body(body, "application/json")?;
                    json_patch::merge(&mut candidate, &patch);
                }
                "application/json-patch+json" => {
                    let ops = parse_body(body, "application/json")?;
                    apply_json_patch(&mut candidate, ops)?;
                }
                "application/strategic-merge-patch+json" => {
                    return Err(ApiError::unsupported_media_type(
                        media,
                        "this server: use a merge patch, a JSON patch or server-side apply",
                    ));
                }
                other => return Err(ApiError::unsupported_media_type(other, "PATCH")),
            }
            let Written { object, warnings } =
                state.replace(rt, ns, name, old, candidate, status_only, opts, "patch")?;
            Ok((StatusCode::OK, object, warnings))
        }
        ("delete", Some(name)) => {
            let options = if body.is_empty() { json!({}) } else { parse_body(body, content_type)? };
            let policy =
                query.get("propagationPolicy").map(String::as_str).or_else(|| options["propagationPolicy"].as_str());
            let propagation = match policy {
                None | Some("Background") => Propagation::Background,
                Some("Foreground") => Propagation::Foreground,
                Some("Orphan") => Propagation::Orphan,
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                    )));
                }
            };
            let preconditions = Preconditions {
                uid: options["preconditions"]["uid"].as_str().map(str::to_string),
                resource_version: options["preconditions"]["resourceVersion"].as_str().map(str::to_string),
            };
            match state.delete(rt, ns, name, propagation, &preconditions, opts)? {
                Deletion::Pending(object) => Ok((StatusCode::OK, object, vec![])),
                Deletion::Gone(object) => {
                    let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
                    Ok((StatusCode::OK, status::deleted(rt, name, uid), vec![]))
                }
            }
        }
        _ => Err(ApiError::method_not_allowed(format!("{verb} is not supported on this path"))),
    }
}

/// `PATCH` with `application/apply-patch+yaml`: merges the applied configuration with field
/// ownership ([`super::apply`]), creating the object when it does not exist.
fn server_side_apply(
    state: &mut State,
    target: &Target,
    name: &str,
    query: &HashMap<String, String>,
    body: &Bytes,
    status_only: bool,
    opts: &WriteOptions,
) -> Reply {
    let rt = &target.rt;
    let ns = target.namespace.as_deref().unwrap_or_default();
    let Some(manager) = opts.field_manager.clone().filter(|m| !m.is_empty()) else {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    };
    let force = match query.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::bad_request(format!("force: invalid value {other:?}: true or false"))),
    };
    let mut applied = parse_body(body, "application/yaml")?;
    if !applied.is_object() {
        return Err(ApiError::bad_request("the apply patch must be an object (a YAML or JSON document)"));
    }
    let (api_version, kind) = (applied["apiVersion"].as_str(), applied["kind"].as_str());
    if api_version != Some(rt.api_version().as_str()) || kind != Some(rt.kind.as_str()) {
        return Err(ApiError::bad_request(format!(
            "the apply patch must set apiVersion {:?} and kind {:?} (got {:?} and {:?})",
            rt.api_version(),
            rt.kind,
            api_version.unwrap_or_default(),
            kind.unwrap_or_default()
        )));
    }
    let body_name = applied["metadata"]["name"].as_str().unwrap_or_default();
    if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name in the apply patch ({body_name:?}) does not match the name on the URL ({name:?})"
        )));
    }
    if applied["metadata"].get("managedFields").is_some() {
        return Err(ApiError::bad_request("metadata.managedFields must be nil in an apply patch"));
    }
    if status_only {
        applied = json!({"apiVersion": applied["apiVersion"], "kind": applied["kind"],
                         "metadata": {"name": name}, "status": applied["status"]});
    } else if rt.status_subresource && rt.kind != "CustomResourceDefinition" {
        applied.as_object_mut().expect("checked").remove("status");
    }
    let live = state.get(rt, ns, name).ok();
    if live.is_none() && status_only {
        return Err(ApiError::not_found(rt, name));
    }
    let schema = rt.crd.as_deref().and_then(|crd| schema::version_schema(crd, &rt.version));
    let types = ListTypes::new(schema.as_ref());
    let api_version = rt.api_version();
    let request = ApplyRequest {
        live: live.as_ref(),
        applied: &applied,
        manager: &manager,
        force,
        subresource: status_only.then_some("status"),
        api_version: &api_version,
    };
    let mut merged = apply(&request, &types).map_err(|c| ApiError::apply_conflict(rt, name, &c))?;
    let managed = merged["metadata"].as_object_mut().and_then(|m| m.remove("managedFields"));
    let opts = WriteOptions { applied_managed_fields: Some(managed.unwrap_or(json!([]))), ..opts.clone() };
    match live {
        None => {
            let Written { object, warnings } = state.create(rt, ns, merged, &opts)?;
            Ok((StatusCode::CREATED, object, warnings))
        }
        Some(old) => {
            let Written { object, warnings } = state.replace(rt, ns, name, old, merged, status_only, &opts, "apply")?;
            Ok((StatusCode::OK, object, warnings))
        }
    }
}

/// RFC 6902 as the real server applies it: a `test` of `null` against a missing path passes
/// (kube-runtime's finalizer helper relies on it).
fn apply_json_patch(target: &mut Value, ops: Value) -> ApiResult<()> {
    let Value::Array(list) = ops else {
        return Err(ApiError::bad_request("a JSON patch is an array of operations"));
    };
    let kept: Vec<Value> = list
        .into_iter()
        .filter(|op| {
            let missing_null_test = op["op"] == "test"
                && op["value"].is_null()
                && op["path"].as_str().is_some_and(|p| target.pointer(p).is_none());
            !missing_null_test
        })
        .collect();
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(kept))
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &patch).map_err(|e| ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("the server rejected our request due to an error in our request: {e}"),
        details: None,
    })
}

/// State of one watch stream.
struct Watch {
    shared: Arc<Shared>,
    rt: ResourceType,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    cursor: u64,
    pending: VecDeque<Bytes>,
    deadline: tokio::time::Instant,
    bookmarks: bool,
    epoch: u64,
    changes: tokio::sync::watch::Receiver<u64>,
    done: bool,
    /// Send Tables (`kubectl get -w`).
    representation: Representation,
    /// The client, counted in [`super::store::State::open_watches`] while the stream is open.
    user: String,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(n) = state.open_watches.get_mut(&self.user) {
            *n = n.saturating_sub(1);
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("JSON");
    text.push(b'\n');
    Bytes::from(text)
}

impl Watch {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// Moves the log's new events into `pending`, translating selector transitions.
    fn poll_log(&mut self) {
        let state = self.shared.lock();
        if state.watch_epoch != self.epoch {
            self.done = true;
            return;
        }
        match state.events_after(self.cursor, &self.rt.storage_key(), self.namespace.as_deref()) {
            Err(e) => {
                self.pending.push_back(line("ERROR", &e.status()));
                self.done = true;
            }
            Ok(events) => {
                for e in events {
                    let now = self.matches(&e.object);
                    let before = e.previous.as_ref().is_some_and(|p| self.matches(p));
                    let kind = match (e.kind, before, now) {
                        (EventType::Added, _, true) => Some("ADDED"),
                        (EventType::Modified, true, true) => Some("MODIFIED"),
                        (EventType::Modified, false, true) => Some("ADDED"),
                        (EventType::Modified, true, false) => Some("DELETED"),
                        (EventType::Deleted, b, n) if b || n => Some("DELETED"),
                        _ => None,
                    };
                    if let Some(kind) = kind {
                        let encoded = self.encode(kind, &e.object);
                        self.pending.push_back(encoded);
                    }
                }
                self.cursor = state.rv;
            }
        }
    }

    /// One watch event line, the object in the representation the client asked for.
    fn encode(&self, kind: &str, object: &Value) -> Bytes {
        line(kind, &self.representation.one(&self.rt, object))
    }

    fn bookmark(&self) -> Bytes {
        line(
            "BOOKMARK",
            &json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": {"resourceVersion": self.cursor.to_string()}}),
        )
    }

    async fn next(mut self) -> Option<(Result<Bytes, std::convert::Infallible>, Self)> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Some((Ok(bytes), self));
            }
            if self.done {
                return None;
            }
            self.poll_log();
            if !self.pending.is_empty() || self.done {
                continue;
            }
            tokio::select! {
                changed = self.changes.changed() => if changed.is_err() { self.done = true },
                _ = tokio::time::sleep_until(self.deadline) => self.done = true,
                _ = tokio::time::sleep(BOOKMARK_INTERVAL), if self.bookmarks => {
                    let b = self.bookmark();
                    self.pending.push_back(b);
                }
            }
        }
    }
}

fn watch_stream(
    shared: Arc<Shared>,
    target: Target,
    query: &HashMap<String, String>,
    representation: Representation,
    user: &str,
) -> Response {
    if target.name.is_some() {
        return ApiError::bad_request("watch a single object with a fieldSelector on metadata.name").into_response();
    }
    let (labels, fields) = match selectors(query, &target.rt.kind) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let timeout = query.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).unwrap_or(1800);
    let changes = shared.subscribe();
    let mut watch = Watch {
        shared: shared.clone(),
        rt: target.rt,
        namespace: target.namespace,
        labels,
        fields,
        cursor: 0,
        pending: VecDeque::new(),
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        bookmarks: query.get("allowWatchBookmarks").is_some_and(|v| v == "true"),
        epoch: shared.lock().watch_epoch,
        changes,
        done: false,
        representation,
        user: user.to_string(),
    };
    *shared.lock().open_watches.entry(user.to_string()).or_default() += 1;
    let requested = query.get("resourceVersion").map(String::as_str).unwrap_or_default();
    match requested {
        "" | "0" => {
            // No starting point: the current state as ADDED events, then changes.
            let state = shared.lock();
            for object in state.list(&watch.rt, watch.namespace.as_deref()) {
                if watch.matches(&object) {
                    let encoded = watch.encode("ADDED", &object);
                    watch.pending.push_back(encoded);
                }
            }
            watch.cursor = state.rv;
        }
        rv => match rv.parse::<u64>() {
            Ok(rv) => watch.cursor = rv,
            Err(_) => return ApiError::bad_request(format!("resourceVersion: Invalid value: {rv:?}")).into_response(),
        },
    }
    let stream = futures::stream::unfold(watch, Watch::next);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}
