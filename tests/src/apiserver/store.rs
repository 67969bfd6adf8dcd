//! The server's state and the semantics of every verb, free of HTTP: objects as JSON, one
//! monotonic `resourceVersion` for everything, the watch event log, server-set metadata, the
//! status subresource, generations, finalizers and garbage collection.
//!
//! Writes that change nothing (after the server's own rules are applied) store nothing, bump no
//! `resourceVersion` and emit no watch event, as on a real server.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Map, Value, json};

use super::registry::{Registry, ResourceType};
use super::schema::{self, FieldValidation};
use super::status::{ApiError, ApiResult};

/// Where an object is stored: its type's storage key, namespace (empty when cluster-scoped), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// [`ResourceType::storage_key`].
    pub resource: String,
    /// Namespace, or empty.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The type of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed; the object is its last state.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Clone, Debug)]
pub struct Event {
    /// The `resourceVersion` the change produced.
    pub rv: u64,
    /// The object's storage key.
    pub key: Key,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (its last state for a deletion).
    pub object: Value,
    /// The object before the change, for selector transitions.
    pub previous: Option<Value>,
}

/// One successful write, for tests that check who wrote what (a quiet operator writes nothing).
#[derive(Clone, Debug, PartialEq)]
pub struct WriteRecord {
    /// The `resourceVersion` it produced.
    pub rv: u64,
    /// `create`, `update`, `patch`, `delete` (a deletion that only set `deletionTimestamp` too).
    pub verb: &'static str,
    /// The object's storage key.
    pub key: Key,
    /// The field manager, or the client's User-Agent when none was given.
    pub manager: String,
}

/// Options of a write request.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// `fieldManager`.
    pub field_manager: Option<String>,
    /// `fieldValidation`.
    pub field_validation: FieldValidation,
    /// `dryRun=All`: validate and return the result without storing it.
    pub dry_run: bool,
    /// The client's User-Agent, for [`WriteRecord::manager`].
    pub user_agent: String,
    /// `managedFields` computed by server-side apply, stored instead of recording an `Update`.
    pub applied_managed_fields: Option<Value>,
}

impl WriteOptions {
    fn manager(&self) -> String {
        self.field_manager.clone().unwrap_or_else(|| self.user_agent.clone())
    }
}

/// A stored (or, with dry run, validated) object and the warnings for the response.
#[derive(Clone, Debug)]
pub struct Written {
    /// The object as stored.
    pub object: Value,
    /// `Warning` headers.
    pub warnings: Vec<String>,
}

/// `propagationPolicy` of a deletion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Propagation {
    /// Delete now; the garbage collector deletes dependents afterwards.
    #[default]
    Background,
    /// Delete dependents first; the owner stays (with `deletionTimestamp`) until they are gone.
    Foreground,
    /// Keep dependents, removing their owner references.
    Orphan,
}

/// `DeleteOptions.preconditions`: the deletion only happens if the object still matches.
#[derive(Clone, Debug, Default)]
pub struct Preconditions {
    /// The object's `uid`.
    pub uid: Option<String>,
    /// The object's `resourceVersion`.
    pub resource_version: Option<String>,
}

/// The outcome of a deletion.
#[derive(Clone, Debug)]
pub enum Deletion {
    /// Finalizers hold the object: it now has a `deletionTimestamp`.
    Pending(Value),
    /// It is gone; this was its last state.
    Gone(Value),
}

/// A fault to inject into matching requests.
#[derive(Clone, Debug)]
pub struct Fault {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`; any when `None`.
    pub verb: Option<String>,
    /// Plural of the resource (`jobs`); any when `None`.
    pub resource: Option<String>,
    /// Object name; any when `None`.
    pub name: Option<String>,
    /// The client, by its bearer token ([`ApiServer::write_kubeconfig_as`]); any when `None`.
    ///
    /// [`ApiServer::write_kubeconfig_as`]: super::ApiServer::write_kubeconfig_as
    pub user: Option<String>,
    /// It applies to every `every`-th matching request (1: each one), so that a stated share of
    /// a client's requests fail.
    pub every: usize,
    /// What the request gets instead of being served.
    pub error: ApiError,
    /// How many requests it applies to.
    pub times: usize,
}

/// One request the server received (before any fault), for rate and hot-loop checks.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// When it arrived.
    pub at: std::time::Instant,
    /// The client, by its bearer token: `harness` for processes using [`ApiServer::write_kubeconfig`]'s
    /// kubeconfig, `anonymous` for in-process clients (no token).
    ///
    /// [`ApiServer::write_kubeconfig`]: super::ApiServer::write_kubeconfig
    pub user: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: &'static str,
    /// Plural of the resource.
    pub resource: String,
}

/// How many watch events the server keeps; a watch from an older `resourceVersion` gets 410 Gone.
const LOG_CAPACITY: usize = 200_000;

/// Everything the server holds.
pub struct State {
    /// The last `resourceVersion` handed out.
    pub rv: u64,
    /// The resource types served.
    pub registry: Registry,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Event>,
    /// Events up to and including this `resourceVersion` are no longer in the log.
    compacted: u64,
    /// Each fault with how many matching requests it has seen.
    faults: Vec<(Fault, usize)>,
    requests: Vec<RequestRecord>,
    /// Bumped to make every open watch end (fault injection).
    pub watch_epoch: u64,
    /// Watch streams open now, by client (bearer token).
    pub open_watches: BTreeMap<String, usize>,
    /// Whether requests are authorized by RBAC ([`super::rbac`]); off by default.
    pub rbac_enforced: bool,
    writes: Vec<WriteRecord>,
    names: u64,
    /// ClusterIPs handed out so far.
    service_ips: u32,
}

/// Now, as the API server writes timestamps (RFC 3339, seconds).
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn meta(object: &Value) -> &Value {
    &object["metadata"]
}

fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"].as_object_mut().expect("metadata is an object")
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// Whether `name` is a DNS-1123 subdomain, as most kinds' names must be.
pub(crate) fn dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// The object without what only the server's bookkeeping changes: for no-op detection.
fn comparable(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        if let Some(Value::Array(fields)) = m.get_mut("managedFields") {
            for f in fields {
                if let Some(f) = f.as_object_mut() {
                    f.remove("time");
                }
            }
        }
    }
    o
}

/// Everything but metadata and status: what `generation` tracks.
fn spec_part(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

fn finalizers(object: &Value) -> Vec<String> {
    meta(object)["finalizers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn set_finalizers(object: &mut Value, list: &[String]) {
    let m = meta_mut(object);
    if list.is_empty() {
        m.remove("finalizers");
    } else {
        m.insert("finalizers".into(), json!(list));
    }
}

fn owner_uids(object: &Value) -> Vec<String> {
    meta(object)["ownerReferences"]
        .as_array()
        .map(|a| a.iter().map(|r| text(r, "uid").to_string()).collect())
        .unwrap_or_default()
}

impl Default for State {
    fn default() -> Self {
        let mut state = Self {
            rv: 0,
            registry: Registry::default(),
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            compacted: 0,
            faults: vec![],
            requests: vec![],
            rbac_enforced: false,
            watch_epoch: 0,
            open_watches: BTreeMap::new(),
            writes: vec![],
            names: 0,
            service_ips: 0,
        };
        let namespaces = state.registry.find("", "v1", "namespaces").expect("built in").clone();
        for ns in ["default", "kube-system", "kube-public"] {
            let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            state
                .create(&namespaces, "", object, &WriteOptions { user_agent: "harness".into(), ..Default::default() })
                .expect("the initial namespaces are valid");
        }
        state
    }
}

impl State {
    fn key(rt: &ResourceType, namespace: &str, name: &str) -> Key {
        Key {
            resource: rt.storage_key(),
            namespace: if rt.namespaced { namespace.to_string() } else { String::new() },
            name: name.to_string(),
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// The oldest `resourceVersion` a watch may start from.
    pub fn oldest_watchable(&self) -> u64 {
        self.compacted
    }

    /// Drops the whole event log: watches from any earlier `resourceVersion` get 410 Gone.
    pub fn compact(&mut self) {
        self.log.clear();
        self.compacted = self.rv;
    }

    /// Adds a fault.
    pub fn inject(&mut self, fault: Fault) {
        self.faults.push((fault, 0));
    }

    /// Removes every fault.
    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// Records a request and returns the fault it meets, if any (consuming one of its uses).
    pub fn take_fault(
        &mut self,
        verb: &'static str,
        resource: &str,
        name: Option<&str>,
        user: &str,
    ) -> Option<ApiError> {
        self.requests.push(RequestRecord {
            at: std::time::Instant::now(),
            user: user.to_string(),
            verb,
            resource: resource.to_string(),
        });
        let mut fired = None;
        for (i, (f, seen)) in self.faults.iter_mut().enumerate() {
            let matches = f.times > 0
                && f.verb.as_deref().is_none_or(|v| v == verb)
                && f.resource.as_deref().is_none_or(|r| r == resource)
                && f.name.as_deref().is_none_or(|n| Some(n) == name)
                && f.user.as_deref().is_none_or(|u| u == user);
            if !matches {
                continue;
            }
            *seen += 1;
            if fired.is_none() && *seen % f.every.max(1) == 0 {
                fired = Some(i);
            }
        }
        let i = fired?;
        let fault = &mut self.faults[i].0;
        fault.times -= 1;
        let error = fault.error.clone();
        if fault.times == 0 {
            self.faults.remove(i);
        }
        Some(error)
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> &[RequestRecord] {
        &self.requests
    }

    /// Every successful write so far.
    pub fn writes(&self) -> &[WriteRecord] {
        &self.writes
    }

    /// The writes after the first `before`, except leader-election Lease renewals: a leader
    /// renews its Lease every few seconds in a real cluster too, and that heartbeat is not a
    /// reconcile's write. What "quiet" means for a settled operator.
    pub fn writes_since(&self, before: usize) -> Vec<WriteRecord> {
        self.writes[before.min(self.writes.len())..]
            .iter()
            .filter(|w| w.key.resource != "leases.coordination.k8s.io")
            .cloned()
            .collect()
    }

    fn record(&mut self, rv: u64, verb: &'static str, key: &Key, opts: &WriteOptions) {
        self.writes.push(WriteRecord { rv, verb, key: key.clone(), manager: opts.manager() });
    }

    fn emit(&mut self, rv: u64, key: Key, kind: EventType, object: Value, previous: Option<Value>) {
        self.log.push_back(Event { rv, key, kind, object, previous });
        while self.log.len() > LOG_CAPACITY {
            let dropped = self.log.pop_front().expect("non-empty");
            self.compacted = dropped.rv;
        }
    }

    /// Events after `rv` for objects of `resource` (in `namespace`, if given), or 410 Gone when
    /// the log no longer reaches back to `rv`.
    pub fn events_after(&self, rv: u64, resource: &str, namespace: Option<&str>) -> ApiResult<Vec<Event>> {
        if rv < self.compacted {
            return Err(ApiError::expired(rv, self.compacted + 1));
        }
        let start = self.log.partition_point(|e| e.rv <= rv);
        Ok(self
            .log
            .range(start..)
            .filter(|e| e.key.resource == resource && namespace.is_none_or(|ns| e.key.namespace == ns))
            .cloned()
            .collect())
    }

    /// One object.
    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> ApiResult<Value> {
        self.objects.get(&Self::key(rt, namespace, name)).cloned().ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// The objects of a type, in `namespace` or in all namespaces; sorted by namespace and name.
    pub fn list(&self, rt: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
        let resource = rt.storage_key();
        self.objects
            .iter()
            .filter(|(k, _)| k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn with_type_meta(rt: &ResourceType, mut object: Value) -> Value {
        object["apiVersion"] = json!(rt.api_version());
        object["kind"] = json!(rt.kind);
        object
    }

    /// Checks the body's apiVersion and kind (absent ones are filled in).
    fn check_type(rt: &ResourceType, object: &Value) -> ApiResult<()> {
        let (api_version, kind) = (text(object, "apiVersion"), text(object, "kind"));
        if (!api_version.is_empty() && api_version != rt.api_version()) || (!kind.is_empty() && kind != rt.kind) {
            let mut message = format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                rt.api_version()
            );
            if !kind.is_empty() && kind != rt.kind {
                message.push_str(&format!(" (kind {kind}, expected {})", rt.kind));
            }
            return Err(ApiError::bad_request(message));
        }
        Ok(())
    }

    /// Every kind: labels and annotations validated. Custom resources: pruned, defaulted and
    /// validated by their schema; built-in kinds by `builtin`. The warnings for pruned fields.
    fn admit(
        rt: &ResourceType,
        name: &str,
        object: &mut Value,
        old: Option<&Value>,
        opts: &WriteOptions,
    ) -> ApiResult<Vec<String>> {
        let mut warnings = vec![];
        let violations = super::labels::validate(&rt.kind, object);
        if !violations.is_empty() {
            return Err(ApiError::invalid(rt, name, &violations));
        }
        if let Some(crd) = &rt.crd {
            let schema = schema::version_schema(crd, &rt.version).ok_or_else(|| {
                ApiError::internal(format!("{} has no schema for {}", crd.spec.names.kind, rt.version))
            })?;
            let unknown = schema::prune(&schema, object);
            if !unknown.is_empty() {
                match opts.field_validation {
                    FieldValidation::Strict => {
                        let fields: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
                        return Err(ApiError::bad_request(format!(
                            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                            rt.kind,
                            rt.version,
                            rt.kind,
                            fields.join(", ")
                        )));
                    }
                    FieldValidation::Warn => warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\""))),
                    FieldValidation::Ignore => {}
                }
            }
            schema::apply_defaults(&schema, object);
            let violations = schema::validate(crd, object, old);
            if !violations.is_empty() {
                return Err(ApiError::invalid(rt, name, &violations));
            }
        } else {
            super::builtin::normalise(rt, object).map_err(ApiError::bad_request)?;
            let violations = super::builtin::validate(rt, object, old);
            if !violations.is_empty() {
                return Err(ApiError::invalid(rt, name, &violations));
            }
        }
        Ok(warnings)
    }

    fn generate_name(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        self.names += 1;
        let mut n = self.names.wrapping_mul(2_654_435_761) ^ self.rv;
        let suffix: String = (0..5)
            .map(|_| {
                let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
                n /= ALPHABET.len() as u64;
                c
            })
            .collect();
        format!("{prefix}{suffix}")
    }

    /// `POST`: creates `object` in `namespace`.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        mut object: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        Self::check_type(rt, &object)?;
        object = Self::with_type_meta(rt, object);
        let m = meta_mut(&mut object);
        let body_ns = m.get("namespace").and_then(Value::as_str).unwrap_or_default().to_string();
        if rt.namespaced {
            if !body_ns.is_empty() && body_ns != namespace {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            m.insert("namespace".into(), json!(namespace));
        } else {
            m.remove("namespace");
        }
        let mut name = m.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        if name.is_empty() {
            let prefix = m.get("generateName").and_then(Value::as_str).unwrap_or_default().to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    &[("metadata.name".into(), "Required value: name or generateName is required".into())],
                ));
            }
            name = self.generate_name(&prefix);
        }
        if !dns_subdomain(&name) {
            return Err(ApiError::invalid(
                rt,
                &name,
                &[(
                    "metadata.name".into(),
                    format!(
                        "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                         characters, '-' or '.', and must start and end with an alphanumeric character"
                    ),
                )],
            ));
        }
        if rt.namespaced {
            let namespaces = self.registry.find("", "v1", "namespaces").expect("built in").clone();
            if self.get(&namespaces, "", namespace).is_err() {
                return Err(ApiError::not_found(&namespaces, namespace));
            }
        }
        let key = Self::key(rt, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        if rt.status_subresource && rt.kind != "CustomResourceDefinition" {
            object.as_object_mut().expect("an object").remove("status");
        }
        let warnings = Self::admit(rt, &name, &mut object, None, opts)?;
        if rt.group.is_empty() && rt.kind == "Service" {
            self.allocate_cluster_ip(&mut object);
        }
        let rv = if opts.dry_run { self.rv } else { self.next_rv() };
        let m = meta_mut(&mut object);
        m.insert("name".into(), json!(name));
        m.insert("uid".into(), json!(format!("{:08x}-5eed-4000-8000-{:012x}", rv, self.names.wrapping_add(rv))));
        m.insert("creationTimestamp".into(), json!(now()));
        m.insert("resourceVersion".into(), json!(rv.to_string()));
        for server_set in ["deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
            m.remove(server_set);
        }
        if rt.generation {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        Self::record_managers(&mut object, None, opts, rt, None);
        let crd = Self::established_crd(rt, &mut object)?;
        if !opts.dry_run {
            if let Some(crd) = crd {
                self.registry.register_crd(crd);
            }
            self.objects.insert(key.clone(), object.clone());
            self.emit(rv, key.clone(), EventType::Added, object.clone(), None);
            self.record(rv, "create", &key, opts);
        }
        Ok(Written { object, warnings })
    }

    /// Gives a Service without one a clusterIP in 127.10.0.0/16 (loopback, where the simulated
    /// cluster's proxy listens); `None` (headless) stays.
    fn allocate_cluster_ip(&mut self, service: &mut Value) {
        let spec = &mut service["spec"];
        if spec.get("clusterIP").and_then(Value::as_str).is_some_and(|ip| !ip.is_empty()) {
            return;
        }
        let n = self.service_ips;
        self.service_ips += 1;
        let ip = format!("127.10.{}.{}", (n / 250) % 250, n % 250 + 1);
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
        if spec.get("type").is_none() {
            spec["type"] = json!("ClusterIP");
        }
    }

    /// Sets `managedFields`: those server-side apply computed, or an `Update` by the writer.
    fn record_managers(
        object: &mut Value,
        old: Option<&Value>,
        opts: &WriteOptions,
        rt: &ResourceType,
        subresource: Option<&str>,
    ) {
        match &opts.applied_managed_fields {
            Some(Value::Array(entries)) if !entries.is_empty() => {
                meta_mut(object).insert("managedFields".into(), Value::Array(entries.clone()));
            }
            Some(_) => {
                meta_mut(object).remove("managedFields");
            }
            None => super::fields::record_update(object, old, &opts.manager(), &rt.api_version(), subresource),
        }
    }

    /// `PUT` (the main endpoint, or `/status` when `status_only`).
    pub fn update(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        object: Value,
        status_only: bool,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        Self::check_type(rt, &object)?;
        let old = self.get(rt, namespace, name)?;
        self.replace(rt, namespace, name, old, object, status_only, opts, "update")
    }

    /// Applies the server's rules to `candidate`, the client's wish for `old`, and stores it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn replace(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        old: Value,
        candidate: Value,
        status_only: bool,
        opts: &WriteOptions,
        verb: &'static str,
    ) -> ApiResult<Written> {
        let body_name = text(meta(&candidate), "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_rv = text(meta(&candidate), "resourceVersion");
        if !body_rv.is_empty() && body_rv != text(meta(&old), "resourceVersion") {
            return Err(ApiError::conflict(rt, name));
        }
        let mut new = if status_only {
            let mut n = old.clone();
            match candidate.get("status") {
                Some(s) => n["status"] = s.clone(),
                None => {
                    n.as_object_mut().expect("an object").remove("status");
                }
            }
            n
        } else {
            let mut n = Self::with_type_meta(rt, candidate);
            if rt.status_subresource {
                match old.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        n.as_object_mut().expect("an object").remove("status");
                    }
                }
            }
            n
        };
        // Server-set metadata comes from the stored object whatever the client sent.
        let old_meta = meta(&old).clone();
        let m = meta_mut(&mut new);
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match old_meta.get(field) {
                Some(v) => m.insert(field.into(), v.clone()),
                None => m.remove(field),
            };
        }
        if !status_only {
            let added: Vec<String> = finalizers(&new).into_iter().filter(|f| !finalizers(&old).contains(f)).collect();
            if !old_meta["deletionTimestamp"].is_null() && !added.is_empty() {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    &[(
                        "metadata.finalizers".into(),
                        format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                        ),
                    )],
                ));
            }
        }
        if rt.group.is_empty() && rt.kind == "Service" && new["spec"].get("clusterIP").is_none_or(Value::is_null) {
            // clusterIP is immutable; a write that leaves it out keeps it.
            for field in ["clusterIP", "clusterIPs"] {
                if let Some(v) = old["spec"].get(field) {
                    new["spec"][field] = v.clone();
                }
            }
        }
        let warnings = Self::admit(rt, name, &mut new, Some(&old), opts)?;
        if rt.generation && spec_part(&new) != spec_part(&old) {
            let generation = old_meta["generation"].as_i64().unwrap_or(0) + 1;
            meta_mut(&mut new).insert("generation".into(), json!(generation));
        }
        Self::record_managers(&mut new, Some(&old), opts, rt, status_only.then_some("status"));
        if comparable(&new) == comparable(&old) {
            return Ok(Written { object: old, warnings });
        }
        let crd = Self::established_crd(rt, &mut new)?;
        if opts.dry_run {
            return Ok(Written { object: new, warnings });
        }
        if let Some(crd) = crd {
            self.registry.register_crd(crd);
        }
        let key = Self::key(rt, namespace, name);
        let rv = self.next_rv();
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        self.record(rv, verb, &key, opts);
        if !meta(&new)["deletionTimestamp"].is_null() && finalizers(&new).is_empty() {
            self.remove(rt, &key, new.clone(), Some(old), rv);
        } else {
            self.objects.insert(key.clone(), new.clone());
            self.emit(rv, key, EventType::Modified, new.clone(), Some(old));
        }
        Ok(Written { object: new, warnings })
    }

    fn remove(&mut self, rt: &ResourceType, key: &Key, last: Value, previous: Option<Value>, rv: u64) {
        self.objects.remove(key);
        self.emit(rv, key.clone(), EventType::Deleted, last.clone(), previous);
        if rt.kind == "CustomResourceDefinition"
            && let Ok(crd) = serde_json::from_value::<CustomResourceDefinition>(last)
        {
            let resource = format!("{}.{}", crd.spec.names.plural, crd.spec.group);
            self.registry.unregister_crd(&crd.spec.group, &crd.spec.names.plural);
            let keys: Vec<Key> = self.objects.keys().filter(|k| k.resource == resource).cloned().collect();
            for k in keys {
                let object = self.objects.remove(&k).expect("listed");
                let rv = self.next_rv();
                self.emit(rv, k, EventType::Deleted, object, None);
            }
        }
    }

    /// `DELETE`: removes the object, or marks it for deletion while finalizers hold it.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        propagation: Propagation,
        preconditions: &Preconditions,
        opts: &WriteOptions,
    ) -> ApiResult<Deletion> {
        let old = self.get(rt, namespace, name)?;
        let uid = text(meta(&old), "uid").to_string();
        if preconditions.uid.as_ref().is_some_and(|u| *u != uid)
            || preconditions.resource_version.as_ref().is_some_and(|v| v != text(meta(&old), "resourceVersion"))
        {
            return Err(ApiError::conflict(rt, name));
        }
        let mut list = finalizers(&old);
        let extra = match propagation {
            Propagation::Foreground => Some("foregroundDeletion"),
            Propagation::Orphan => Some("orphan"),
            Propagation::Background => None,
        };
        if let Some(f) = extra
            && !list.iter().any(|x| x == f)
        {
            list.push(f.to_string());
        }
        let key = Self::key(rt, namespace, name);
        if !meta(&old)["deletionTimestamp"].is_null() && list == finalizers(&old) {
            return Ok(Deletion::Pending(old));
        }
        if opts.dry_run {
            return Ok(if list.is_empty() { Deletion::Gone(old) } else { Deletion::Pending(old) });
        }
        let rv = self.next_rv();
        self.record(rv, "delete", &key, opts);
        let mut new = old.clone();
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        if list.is_empty() {
            self.remove(rt, &key, new.clone(), Some(old), rv);
            return Ok(Deletion::Gone(new));
        }
        set_finalizers(&mut new, &list);
        let m = meta_mut(&mut new);
        if m.get("deletionTimestamp").is_none_or(Value::is_null) {
            m.insert("deletionTimestamp".into(), json!(now()));
            // A pod's is its termination grace period (the kubelet's time between SIGTERM and
            // SIGKILL); other objects' is 0.
            let grace = match (rt.group.as_str(), rt.plural.as_str()) {
                ("", "pods") => old["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30),
                _ => 0,
            };
            m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            if rt.generation {
                let generation = m.get("generation").and_then(Value::as_i64).unwrap_or(0) + 1;
                m.insert("generation".into(), json!(generation));
            }
        }
        self.objects.insert(key.clone(), new.clone());
        self.emit(rv, key, EventType::Modified, new.clone(), Some(old));
        Ok(Deletion::Pending(new))
    }

    /// For a CustomResourceDefinition about to be written: checks its name, reports it established
    /// in its status and returns it, for registration once it is stored. `None` for other kinds.
    fn established_crd(rt: &ResourceType, object: &mut Value) -> ApiResult<Option<CustomResourceDefinition>> {
        if rt.kind != "CustomResourceDefinition" {
            return Ok(None);
        }
        let crd: CustomResourceDefinition = serde_json::from_value(object.clone())
            .map_err(|e| ApiError::bad_request(format!("CustomResourceDefinition cannot be read: {e}")))?;
        let expected = format!("{}.{}", crd.spec.names.plural, crd.spec.group);
        if crd.metadata.name.as_deref() != Some(expected.as_str()) {
            return Err(ApiError::bad_request(format!(
                "metadata.name: Invalid value: {:?}: must be spec.names.plural+\".\"+spec.group ({expected})",
                crd.metadata.name.unwrap_or_default()
            )));
        }
        let stored: Vec<&str> = crd.spec.versions.iter().filter(|v| v.storage).map(|v| v.name.as_str()).collect();
        object["status"] = json!({
            "acceptedNames": crd.spec.names,
            "storedVersions": stored,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()},
            ],
        });
        Ok(Some(crd))
    }

    /// One pass of the garbage collector: orphans dependents of owners deleted with `orphan`,
    /// deletes dependents of owners deleted with `foregroundDeletion` (releasing the owner once
    /// they are gone), and deletes objects all of whose owners are gone. Returns whether it
    /// changed anything.
    pub fn collect_garbage(&mut self) -> bool {
        let gc = WriteOptions { user_agent: "garbage-collector".into(), ..Default::default() };
        let uids: BTreeSet<String> = self.objects.values().map(|o| text(meta(o), "uid").to_string()).collect();
        let mut changed = false;
        let owners: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(_, o)| !meta(o)["deletionTimestamp"].is_null())
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        for (key, owner) in owners {
            let uid = text(meta(&owner), "uid").to_string();
            let dependents: Vec<Key> =
                self.objects.iter().filter(|(_, o)| owner_uids(o).contains(&uid)).map(|(k, _)| k.clone()).collect();
            let list = finalizers(&owner);
            let Some(rt) = self.type_of(&owner) else { continue };
            if list.iter().any(|f| f == "orphan") {
                for d in &dependents {
                    self.drop_owner_reference(d, &uid, &gc);
                }
                self.release(&rt, &key, "orphan", &gc);
                changed = true;
            } else if list.iter().any(|f| f == "foregroundDeletion") {
                if dependents.is_empty() {
                    self.release(&rt, &key, "foregroundDeletion", &gc);
                    changed = true;
                } else {
                    for d in dependents {
                        changed |= self.delete_by_key(&d, Propagation::Foreground, &gc);
                    }
                }
            }
        }
        let dangling: Vec<(Key, Vec<String>)> = self
            .objects
            .iter()
            .filter_map(|(k, o)| {
                let refs = owner_uids(o);
                let missing: Vec<String> = refs.iter().filter(|u| !uids.contains(*u)).cloned().collect();
                (!missing.is_empty()).then(|| (k.clone(), if missing.len() == refs.len() { vec![] } else { missing }))
            })
            .collect();
        for (key, missing) in dangling {
            if missing.is_empty() {
                // Every owner is gone.
                changed |= self.delete_by_key(&key, Propagation::Background, &gc);
            } else {
                for uid in missing {
                    self.drop_owner_reference(&key, &uid, &gc);
                }
                changed = true;
            }
        }
        changed
    }

    fn type_of(&self, object: &Value) -> Option<ResourceType> {
        self.registry.find_kind(text(object, "apiVersion"), text(object, "kind")).cloned()
    }

    fn delete_by_key(&mut self, key: &Key, propagation: Propagation, opts: &WriteOptions) -> bool {
        let Some(object) = self.objects.get(key).cloned() else { return false };
        if !meta(&object)["deletionTimestamp"].is_null() {
            return false;
        }
        let Some(rt) = self.type_of(&object) else { return false };
        self.delete(&rt, &key.namespace, &key.name, propagation, &Preconditions::default(), opts).is_ok()
    }

    fn drop_owner_reference(&mut self, key: &Key, uid: &str, opts: &WriteOptions) {
        let Some(old) = self.objects.get(key).cloned() else { return };
        let Some(rt) = self.type_of(&old) else { return };
        let mut new = old.clone();
        if let Some(refs) = new["metadata"]["ownerReferences"].as_array_mut() {
            refs.retain(|r| text(r, "uid") != uid);
            if refs.is_empty() {
                meta_mut(&mut new).remove("ownerReferences");
            }
        }
        let _ = self.replace(&rt, &key.namespace, &key.name, old, new, false, opts, "update");
    }

    fn release(&mut self, rt: &ResourceType, key: &Key, finalizer: &str, opts: &WriteOptions) {
        let Some(old) = self.objects.get(key).cloned() else { return };
        let mut new = old.clone();
        let list: Vec<String> = finalizers(&old).into_iter().filter(|f| f != finalizer).collect();
        set_finalizers(&mut new, &list);
        let _ = self.replace(rt, &key.namespace, &key.name, old, new, false, opts, "update");
    }
}
