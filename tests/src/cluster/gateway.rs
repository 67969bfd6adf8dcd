//! A Gateway API implementation for the simulated cluster: every `Gateway`
//! (`gateway.networking.k8s.io/v1`, whatever its `gatewayClassName`) gets a loopback address of its
//! own in 127.30.0.0/16, written to `status.addresses`, and an HTTP/1.1 listener on that address
//! for each `spec.listeners[]` entry of protocol `HTTP`. Requests are routed one by one (L7, as
//! Envoy-based gateways do, so a keep-alive client sees the weights too) by the `HTTPRoute`s
//! attached to the Gateway:
//!
//! - a route attaches through `spec.parentRefs` (group/kind Gateway, the route's namespace unless
//!   `namespace` is set, optional `sectionName` and `port` narrowing it to listeners), if the
//!   listener's `allowedRoutes` admit its namespace (`Same`, the default, or `All`) and their
//!   hostnames intersect;
//! - a request is matched against every rule of every attached route: `hostnames` against the
//!   Host header (exact or `*.` wildcard), `matches[]` by `path` (`Exact`, `PathPrefix` by path
//!   element), `method`, `headers` and `queryParams` (`Exact`); a rule without `matches` matches
//!   everything. The winner follows the Gateway API's precedence (most specific hostname, exact
//!   path, longest prefix, method, most headers, most query parameters, oldest route, route name,
//!   rule order). No match: 404;
//! - one of the rule's `backendRefs` is chosen by `weight` (default 1; 0 never) with a smooth
//!   weighted round robin per rule, so that the shares are exact over every cycle of
//!   `sum(weights)` requests; the state restarts when the rule's backendRefs change. No weight
//!   above 0: 500. A backendRef that does not resolve (a missing Service, a kind other than a core
//!   Service, another namespace — ReferenceGrants are not read) answers 500 for its share, as the
//!   spec requires;
//! - the request goes to the Service's `clusterIP:port`, through the simulated kube-proxy (a new
//!   connection per request, so the proxy's per-connection round robin spreads requests over the
//!   Service's ready pods), and the response streams back. A Service with no ready pod: 503.
//!
//! Routing reads the latest Gateways, HTTPRoutes and Services from watches, so a weight applied to
//! a route counts for the next request, moments later.
//!
//! Status, by server-side apply on the status subresource under [`FIELD_MANAGER`], written only
//! when it changes: the Gateway's `addresses`, `Accepted`/`Programmed` conditions and per-listener
//! status (`attachedRoutes`, `Accepted`, `Programmed`, `ResolvedRefs`); each HTTPRoute's
//! `status.parents[]` entry per Gateway it names, with [`CONTROLLER_NAME`] and the `Accepted` and
//! `ResolvedRefs` conditions (`BackendNotFound`, `InvalidKind`, `RefNotPermitted`). Entries of
//! other controllers are kept. `status.parents` is an atomic list in the real CRD, so the apply is
//! forced: it takes over the list, rewritten with the other controllers' entries as they were.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::apiserver::store::now;

/// The `controllerName` the simulated gateway writes in HTTPRoute `status.parents[]`.
pub const CONTROLLER_NAME: &str = "distillery.dev/simulated-gateway";
/// The field manager of the simulated gateway's status writes.
pub const FIELD_MANAGER: &str = "simulated-gateway";
/// The Gateway API group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// How long the gateway waits to connect to a Service before answering 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The next Gateway address: each Gateway gets its own loopback address in 127.30.0.0/16 (pods
/// use 127.20.0.0/16, Services 127.10.0.0/16). Process-wide, so that concurrent tests in one
/// process never share one.
fn next_gateway_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ipv4Addr::new(127, 30, ((n / 250) % 250) as u8, (n % 250 + 1) as u8)
}

fn api_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: "v1".into(),
        api_version: format!("{GROUP}/v1"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// `(namespace, name)`.
type Key = (String, String);
type Objects = BTreeMap<Key, Arc<Value>>;

/// What the gateway knows of the cluster, from its watches.
#[derive(Default)]
struct Snapshot {
    gateways: Objects,
    routes: Objects,
    services: Objects,
}

#[derive(Clone, Copy)]
enum Kind {
    Gateways,
    Routes,
    Services,
}

impl Snapshot {
    fn of(&mut self, kind: Kind) -> &mut Objects {
        match kind {
            Kind::Gateways => &mut self.gateways,
            Kind::Routes => &mut self.routes,
            Kind::Services => &mut self.services,
        }
    }
}

/// The smooth weighted round robin of one rule.
struct Wrr {
    /// The rule's backendRefs it was built for; another list starts over.
    signature: String,
    current: Vec<i64>,
}

#[derive(Default)]
struct Shared {
    snapshot: RwLock<Snapshot>,
    changed: Notify,
    /// Per (route uid, rule index).
    wrr: Mutex<HashMap<(String, usize), Wrr>>,
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        self.snapshot.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `object` unless the stored one is newer (our own writes are stored from the
    /// response, before their watch event arrives).
    fn store(&self, kind: Kind, object: Value) {
        let key = key_of(&object);
        let mut snapshot = self.write();
        let objects = snapshot.of(kind);
        let rv = |o: &Value| o["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse::<u64>().ok());
        if let (Some(old), Some(new)) = (objects.get(&key).and_then(|o| rv(o)), rv(&object))
            && new < old
        {
            return;
        }
        objects.insert(key, Arc::new(object));
    }
}

fn key_of(object: &Value) -> Key {
    let meta = &object["metadata"];
    (str_of(&meta["namespace"]).to_string(), str_of(&meta["name"]).to_string())
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// Runs the gateway until the task is aborted (which closes every listener).
pub async fn run(client: kube::Client) {
    let shared = Arc::new(Shared::default());
    let gateways = Api::<DynamicObject>::all_with(client.clone(), &api_resource("Gateway", "gateways"));
    let routes = Api::<DynamicObject>::all_with(client.clone(), &api_resource("HTTPRoute", "httproutes"));
    let services = Api::<DynamicObject>::all_with(client.clone(), &ApiResource::erase::<Service>(&()));
    futures::join!(
        mirror(gateways, shared.clone(), Kind::Gateways),
        mirror(routes, shared.clone(), Kind::Routes),
        mirror(services, shared.clone(), Kind::Services),
        reconcile_loop(client, shared.clone()),
    );
}

/// Keeps one kind's objects in the snapshot, and wakes the reconciler on every change. Until the
/// Gateway API CRDs are installed, the watch fails (404) and is retried.
async fn mirror(api: Api<DynamicObject>, shared: Arc<Shared>, kind: Kind) {
    let mut fresh: Option<Objects> = None;
    let events = watcher::watcher(api, watcher::Config::default()).backoff(super::retry_backoff());
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let Ok(event) = event else { continue };
        let value = |o: DynamicObject| serde_json::to_value(o).unwrap_or(Value::Null);
        match event {
            Event::Init => fresh = Some(Objects::new()),
            Event::InitApply(o) => {
                let o = value(o);
                fresh.get_or_insert_default().insert(key_of(&o), Arc::new(o));
            }
            Event::InitDone => {
                *shared.write().of(kind) = fresh.take().unwrap_or_default();
                shared.changed.notify_one();
            }
            Event::Apply(o) => {
                shared.store(kind, value(o));
                shared.changed.notify_one();
            }
            Event::Delete(o) => {
                let key = key_of(&value(o));
                shared.write().of(kind).remove(&key);
                shared.changed.notify_one();
            }
        }
    }
}

/// Tasks aborted when dropped.
#[derive(Default)]
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        self.0.iter().for_each(|t| t.abort());
    }
}

/// A Gateway being served.
struct Running {
    /// The Gateway object it serves and the addresses it asked for: another uid (deleted and
    /// created again) or other addresses start over.
    identity: (String, Value),
    ip: Option<IpAddr>,
    /// Why no address could be assigned.
    address_error: Option<String>,
    /// Listener task per port.
    listeners: HashMap<u16, Tasks>,
    /// Why a port could not be bound (retried on the next pass).
    bind_errors: HashMap<u16, String>,
}

async fn reconcile_loop(client: kube::Client, shared: Arc<Shared>) {
    let mut running: HashMap<Key, Running> = HashMap::new();
    let mut retry = false;
    loop {
        if retry {
            tokio::select! {
                () = shared.changed.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        } else {
            shared.changed.notified().await;
        }
        // Let a burst of events settle into one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
        retry = !reconcile(&client, &shared, &mut running).await;
    }
}

/// One pass: listeners in line with the Gateways, then route and Gateway status. Whether
/// everything succeeded (otherwise the pass is retried shortly).
async fn reconcile(client: &kube::Client, shared: &Arc<Shared>, running: &mut HashMap<Key, Running>) -> bool {
    let (gateways, routes, services) = {
        let s = shared.read();
        (s.gateways.clone(), s.routes.clone(), s.services.clone())
    };
    let mut ok = true;

    // Listeners.
    running.retain(|key, run| gateways.get(key).is_some_and(|g| identity(g) == run.identity));
    for (key, gateway) in &gateways {
        let entry = running.entry(key.clone()).or_insert_with(|| {
            let (ip, address_error) = match assign_address(gateway) {
                Ok(ip) => (Some(ip), None),
                Err(e) => (None, Some(e)),
            };
            Running {
                identity: identity(gateway),
                ip,
                address_error,
                listeners: HashMap::new(),
                bind_errors: HashMap::new(),
            }
        });
        let Some(ip) = entry.ip else { continue };
        let wanted: HashSet<u16> = listeners_of(gateway)
            .iter()
            .filter(|l| str_of(&l["protocol"]) == "HTTP")
            .filter_map(|l| l["port"].as_u64().map(|p| p as u16))
            .collect();
        entry.listeners.retain(|port, _| wanted.contains(port));
        entry.bind_errors.retain(|port, _| wanted.contains(port));
        for port in wanted {
            if entry.listeners.contains_key(&port) {
                continue;
            }
            match tokio::net::TcpListener::bind((ip, port)).await {
                Ok(listener) => {
                    entry.bind_errors.remove(&port);
                    let task = tokio::spawn(serve_listener(listener, shared.clone(), key.clone(), port));
                    entry.listeners.insert(port, Tasks(vec![task]));
                }
                Err(e) => {
                    entry.bind_errors.insert(port, format!("cannot listen on {ip}:{port}: {e}"));
                    ok = false;
                }
            }
        }
    }

    // Routes.
    let snapshot = Snapshot { gateways: gateways.clone(), routes: routes.clone(), services };
    let mut attached: HashMap<(Key, String), i64> = HashMap::new();
    let uids: HashSet<String> = routes.values().map(|r| str_of(&r["metadata"]["uid"]).to_string()).collect();
    shared.wrr.lock().unwrap_or_else(|p| p.into_inner()).retain(|(uid, _), _| uids.contains(uid));
    for route in routes.values() {
        let (parents, listeners) = route_parents(&snapshot, route);
        for (gateway, listener) in listeners {
            *attached.entry((gateway, listener)).or_default() += 1;
        }
        if let Some(status) = route_status_change(route, parents) {
            let (namespace, name) = key_of(route);
            let api = Api::<DynamicObject>::namespaced_with(
                client.clone(),
                &namespace,
                &api_resource("HTTPRoute", "httproutes"),
            );
            let body = json!({"apiVersion": format!("{GROUP}/v1"), "kind": "HTTPRoute",
                              "metadata": {"name": name, "namespace": namespace}, "status": status});
            match api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await {
                Ok(written) => shared.store(Kind::Routes, serde_json::to_value(written).unwrap_or(Value::Null)),
                Err(kube::Error::Api(e)) if e.code == 404 => {} // Deleted meanwhile.
                Err(_) => ok = false,
            }
        }
    }

    // Gateways.
    for (key, gateway) in &gateways {
        let Some(run) = running.get(key) else { continue };
        let desired = gateway_status(gateway, run, &attached);
        if status_covers(&desired, &gateway["status"], &listener_names(gateway)) {
            continue;
        }
        let status = with_transition_times(desired, &gateway["status"]);
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), &key.0, &api_resource("Gateway", "gateways"));
        let body = json!({"apiVersion": format!("{GROUP}/v1"), "kind": "Gateway",
                          "metadata": {"name": key.1, "namespace": key.0}, "status": status});
        match api.patch_status(&key.1, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await {
            Ok(written) => shared.store(Kind::Gateways, serde_json::to_value(written).unwrap_or(Value::Null)),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(_) => ok = false,
        }
    }
    ok
}

fn identity(gateway: &Value) -> (String, Value) {
    (str_of(&gateway["metadata"]["uid"]).to_string(), gateway["spec"]["addresses"].clone())
}

/// The Gateway's address: the one it already has (after a restart), the loopback IPv4 address
/// its `spec.addresses` asks for, or a new one in 127.30.0.0/16.
fn assign_address(gateway: &Value) -> Result<IpAddr, String> {
    if let Some(requested) = gateway["spec"]["addresses"].as_array().and_then(|a| a.first()) {
        let value = str_of(&requested["value"]);
        return match (str_of(&requested["type"]), value.parse::<Ipv4Addr>()) {
            ("IPAddress" | "", Ok(ip)) if ip.is_loopback() => Ok(IpAddr::V4(ip)),
            _ => Err(format!(
                "the simulated gateway assigns loopback IPv4 addresses only, not {value:?} (without spec.addresses: 127.30.x.y)"
            )),
        };
    }
    let previous = gateway["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| str_of(&a["value"]).parse::<Ipv4Addr>().ok())
        .find(|ip| ip.octets()[..2] == [127, 30]);
    Ok(IpAddr::V4(previous.unwrap_or_else(next_gateway_ip)))
}

fn listeners_of(gateway: &Value) -> Vec<Value> {
    gateway["spec"]["listeners"].as_array().cloned().unwrap_or_default()
}

fn listener_names(gateway: &Value) -> Vec<String> {
    listeners_of(gateway).iter().map(|l| str_of(&l["name"]).to_string()).collect()
}

fn condition(kind: &str, ok: bool, reason: &str, message: &str, generation: i64) -> Value {
    json!({"type": kind, "status": if ok {"True"} else {"False"}, "reason": reason, "message": message,
           "observedGeneration": generation})
}

/// The Gateway status the gateway wants (without `lastTransitionTime`s).
fn gateway_status(gateway: &Value, run: &Running, attached: &HashMap<(Key, String), i64>) -> Value {
    let generation = gateway["metadata"]["generation"].as_i64().unwrap_or(0);
    let key = key_of(gateway);
    let mut listeners = vec![];
    let (mut valid, mut all_bound) = (0, true);
    for l in listeners_of(gateway) {
        let name = str_of(&l["name"]).to_string();
        let port = l["port"].as_u64().unwrap_or(0) as u16;
        let http = str_of(&l["protocol"]) == "HTTP";
        let mut conditions = vec![];
        if http {
            valid += 1;
            conditions.push(condition("Accepted", true, "Accepted", "listener accepted", generation));
            let bind_error = run.bind_errors.get(&port);
            let bound = run.ip.is_some() && bind_error.is_none();
            all_bound &= bound;
            let message = match (bind_error, &run.address_error) {
                (Some(e), _) => e.clone(),
                (None, Some(e)) => e.clone(),
                (None, None) => format!("listening on {}:{port}", run.ip.map(|ip| ip.to_string()).unwrap_or_default()),
            };
            conditions.push(condition(
                "Programmed",
                bound,
                if bound { "Programmed" } else { "Pending" },
                &message,
                generation,
            ));
        } else {
            let message =
                format!("protocol {:?} is not supported by the simulated gateway (only HTTP)", str_of(&l["protocol"]));
            conditions.push(condition("Accepted", false, "UnsupportedProtocol", &message, generation));
            conditions.push(condition("Programmed", false, "Invalid", &message, generation));
        }
        conditions.push(condition("ResolvedRefs", true, "ResolvedRefs", "no references to resolve", generation));
        let count = attached.get(&(key.clone(), name.clone())).copied().unwrap_or(0);
        listeners.push(json!({"name": name, "attachedRoutes": count,
                              "supportedKinds": [{"group": GROUP, "kind": "HTTPRoute"}], "conditions": conditions}));
    }
    let accepted = valid > 0;
    let programmed = accepted && all_bound && run.ip.is_some();
    let (programmed_reason, programmed_message) = if let Some(e) = &run.address_error {
        ("AddressNotAssigned", e.clone())
    } else if programmed {
        ("Programmed", "serving on its address".to_string())
    } else if !accepted {
        ("Invalid", "no valid listener".to_string())
    } else {
        ("Pending", "a listener could not be bound yet".to_string())
    };
    let accepted_condition = if accepted {
        condition("Accepted", true, "Accepted", "accepted by the simulated gateway", generation)
    } else {
        condition("Accepted", false, "ListenersNotValid", "no listener has a supported protocol (HTTP)", generation)
    };
    let addresses: Vec<Value> = run.ip.iter().map(|ip| json!({"type": "IPAddress", "value": ip.to_string()})).collect();
    json!({
        "addresses": addresses,
        "conditions": [
            accepted_condition,
            condition("Programmed", programmed, programmed_reason, &programmed_message, generation),
        ],
        "listeners": listeners,
    })
}

/// Whether `live` already says everything `desired` says (ignoring `lastTransitionTime`; lists
/// of conditions and listeners matched by key) and lists no listener the spec no longer has.
fn status_covers(desired: &Value, live: &Value, names: &[String]) -> bool {
    let live_names: HashSet<&str> =
        live["listeners"].as_array().into_iter().flatten().map(|l| str_of(&l["name"])).collect();
    live_names.len() == names.len() && names.iter().all(|n| live_names.contains(n.as_str())) && covers(desired, live)
}

fn covers(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            d.iter().all(|(k, v)| k == "lastTransitionTime" || l.get(k).is_some_and(|lv| covers(v, lv)))
        }
        (Value::Array(d), Value::Array(l)) => {
            let keyed = |item: &Value| item.get("type").or_else(|| item.get("name")).cloned();
            if d.iter().all(|item| keyed(item).is_some()) && d.first().is_some_and(|i| i.get("value").is_none()) {
                d.iter().all(|item| l.iter().find(|x| keyed(x) == keyed(item)).is_some_and(|x| covers(item, x)))
            } else {
                d.len() == l.len() && d.iter().zip(l).all(|(a, b)| covers(a, b))
            }
        }
        _ => desired == live,
    }
}

/// `desired` with each condition's `lastTransitionTime`: kept from the live condition of the same
/// type (and place) when its status did not change, now otherwise.
fn with_transition_times(mut desired: Value, live: &Value) -> Value {
    fn conditions(desired: &mut Value, live: &Value) {
        for c in desired.as_array_mut().into_iter().flatten() {
            let previous = live.as_array().into_iter().flatten().find(|l| l["type"] == c["type"]);
            let time = match previous {
                Some(p) if p["status"] == c["status"] && p["lastTransitionTime"].is_string() => {
                    p["lastTransitionTime"].clone()
                }
                _ => json!(now()),
            };
            c["lastTransitionTime"] = time;
        }
    }
    conditions(&mut desired["conditions"], &live["conditions"]);
    for l in desired["listeners"].as_array_mut().into_iter().flatten() {
        let previous = live["listeners"].as_array().into_iter().flatten().find(|x| x["name"] == l["name"]);
        conditions(&mut l["conditions"], previous.map(|p| &p["conditions"]).unwrap_or(&Value::Null));
    }
    desired
}

/// The Gateway a parentRef names, if it names a Gateway.
fn parent_gateway(route_namespace: &str, parent: &Value) -> Option<Key> {
    let group = parent["group"].as_str().unwrap_or(GROUP);
    let kind = parent["kind"].as_str().unwrap_or("Gateway");
    if group != GROUP || kind != "Gateway" {
        return None;
    }
    let namespace = parent["namespace"].as_str().unwrap_or(route_namespace);
    Some((namespace.to_string(), str_of(&parent["name"]).to_string()))
}

/// Whether `pattern` (a hostname, or `*.` and a suffix) matches the hostname `host`.
pub fn hostname_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => pattern == host,
    }
}

/// Whether two hostnames (either may be a wildcard) have a host in common.
fn hostnames_intersect(a: &str, b: &str) -> bool {
    match (a.strip_prefix("*."), b.strip_prefix("*.")) {
        (Some(x), Some(y)) => x == y || x.ends_with(&format!(".{y}")) || y.ends_with(&format!(".{x}")),
        _ => a == b || hostname_matches(a, b) || hostname_matches(b, a),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
}

/// Why `listener` of `gateway` does not take `route` (through a parentRef that names it): `None`
/// when it does.
fn listener_refuses(gateway: &Value, listener: &Value, route: &Value) -> Option<(&'static str, String)> {
    let name = str_of(&listener["name"]);
    if str_of(&listener["protocol"]) != "HTTP" {
        return Some(("NotAllowedByListeners", format!("listener {name} is not an HTTP listener")));
    }
    let route_ns = str_of(&route["metadata"]["namespace"]);
    let from = listener["allowedRoutes"]["namespaces"]["from"].as_str().unwrap_or("Same");
    let allowed = match from {
        "All" => true,
        "Same" => route_ns == str_of(&gateway["metadata"]["namespace"]),
        _ => false,
    };
    if !allowed {
        let why = if from == "Selector" { " (namespace selectors are not simulated)" } else { "" };
        return Some((
            "NotAllowedByListeners",
            format!("listener {name} does not allow routes from namespace {route_ns}{why}"),
        ));
    }
    if let Some(kinds) = listener["allowedRoutes"]["kinds"].as_array().filter(|k| !k.is_empty())
        && !kinds.iter().any(|k| str_of(&k["kind"]) == "HTTPRoute" && k["group"].as_str().unwrap_or(GROUP) == GROUP)
    {
        return Some(("NotAllowedByListeners", format!("listener {name} does not allow HTTPRoutes")));
    }
    let hostnames = strings(&route["spec"]["hostnames"]);
    if let Some(h) = listener["hostname"].as_str()
        && !hostnames.is_empty()
        && !hostnames.iter().any(|r| hostnames_intersect(h, r))
    {
        return Some((
            "NoMatchingListenerHostname",
            format!("no hostname of the route matches listener {name}'s hostname {h}"),
        ));
    }
    None
}

/// The listeners of `gateway` that a parentRef narrows to (by `sectionName` and `port`).
fn named_listeners(gateway: &Value, parent: &Value) -> Vec<Value> {
    listeners_of(gateway)
        .into_iter()
        .filter(|l| parent["sectionName"].as_str().is_none_or(|s| s == str_of(&l["name"])))
        .filter(|l| parent["port"].as_u64().is_none_or(|p| Some(p) == l["port"].as_u64()))
        .collect()
}

/// A backendRef resolved to a Service's clusterIP and port, or why it does not resolve
/// (`ResolvedRefs` reason, message).
fn resolve(services: &Objects, route_namespace: &str, backend: &Value) -> Result<SocketAddr, (&'static str, String)> {
    let name = str_of(&backend["name"]);
    let group = backend["group"].as_str().unwrap_or("");
    let kind = backend["kind"].as_str().unwrap_or("Service");
    if !(group.is_empty() || group == "core") || kind != "Service" {
        return Err((
            "InvalidKind",
            format!("backendRef {name}: {kind}.{group} is not supported (only core Services)"),
        ));
    }
    let namespace = backend["namespace"].as_str().unwrap_or(route_namespace);
    if namespace != route_namespace {
        return Err((
            "RefNotPermitted",
            format!(
                "backendRef {namespace}/{name}: another namespace needs a ReferenceGrant (not read by the simulated gateway)"
            ),
        ));
    }
    let Some(service) = services.get(&(namespace.to_string(), name.to_string())) else {
        return Err(("BackendNotFound", format!("Service {namespace}/{name} not found")));
    };
    let Some(ip) = service["spec"]["clusterIP"].as_str().and_then(|ip| ip.parse::<IpAddr>().ok()) else {
        return Err((
            "BackendNotFound",
            format!("Service {namespace}/{name} has no clusterIP (headless Services are not simulated)"),
        ));
    };
    let port = backend["port"].as_u64().unwrap_or(0);
    let exposed = service["spec"]["ports"].as_array().into_iter().flatten().any(|p| p["port"].as_u64() == Some(port));
    if !exposed {
        return Err(("BackendNotFound", format!("Service {namespace}/{name} has no port {port}")));
    }
    Ok(SocketAddr::new(ip, port as u16))
}

/// The `status.parents[]` entries the gateway wants for `route` (without `lastTransitionTime`),
/// and the (Gateway, listener) pairs it is attached to.
fn route_parents(snapshot: &Snapshot, route: &Value) -> (Vec<Value>, Vec<(Key, String)>) {
    let namespace = str_of(&route["metadata"]["namespace"]);
    let generation = route["metadata"]["generation"].as_i64().unwrap_or(0);
    let mut unresolved: Vec<(&'static str, String)> = vec![];
    for rule in route["spec"]["rules"].as_array().into_iter().flatten() {
        for backend in rule["backendRefs"].as_array().into_iter().flatten() {
            if let Err(e) = resolve(&snapshot.services, namespace, backend) {
                unresolved.push(e);
            }
        }
    }
    let resolved = match unresolved.first() {
        None => condition("ResolvedRefs", true, "ResolvedRefs", "all backendRefs resolved", generation),
        Some((reason, _)) => {
            let messages: Vec<&str> = unresolved.iter().map(|(_, m)| m.as_str()).collect();
            condition("ResolvedRefs", false, reason, &messages.join("; "), generation)
        }
    };
    let mut parents = vec![];
    let mut attached = vec![];
    for parent in route["spec"]["parentRefs"].as_array().into_iter().flatten() {
        let Some(gateway_key) = parent_gateway(namespace, parent) else { continue };
        let Some(gateway) = snapshot.gateways.get(&gateway_key) else { continue };
        let candidates = named_listeners(gateway, parent);
        let mut refusal = None;
        let mut taken = vec![];
        for l in &candidates {
            match listener_refuses(gateway, l, route) {
                None => taken.push(str_of(&l["name"]).to_string()),
                Some(why) => refusal = refusal.or(Some(why)),
            }
        }
        let accepted = if candidates.is_empty() {
            condition(
                "Accepted",
                false,
                "NoMatchingParent",
                "no listener of the Gateway matches the parentRef's sectionName and port",
                generation,
            )
        } else if taken.is_empty() {
            let (reason, message) = refusal.unwrap_or(("NotAllowedByListeners", String::new()));
            condition("Accepted", false, reason, &message, generation)
        } else {
            condition("Accepted", true, "Accepted", "accepted by the simulated gateway", generation)
        };
        attached.extend(taken.into_iter().map(|l| (gateway_key.clone(), l)));
        parents.push(json!({"parentRef": parent, "controllerName": CONTROLLER_NAME,
                            "conditions": [accepted, resolved.clone()]}));
    }
    (parents, attached)
}

/// The `status` to apply to `route` when its entries of this controller differ from `ours`;
/// `None` when they are already so.
fn route_status_change(route: &Value, ours: Vec<Value>) -> Option<Value> {
    let live: Vec<Value> = route["status"]["parents"].as_array().cloned().unwrap_or_default();
    let mine = |p: &&Value| str_of(&p["controllerName"]) == CONTROLLER_NAME;
    let live_ours: Vec<&Value> = live.iter().filter(mine).collect();
    if live_ours.len() == ours.len() && ours.iter().zip(&live_ours).all(|(d, l)| covers(d, l)) {
        return None;
    }
    let mut parents: Vec<Value> = live.iter().filter(|p| !mine(p)).cloned().collect();
    for mut entry in ours {
        let previous = live_ours.iter().find(|l| l["parentRef"] == entry["parentRef"]).map(|l| l["conditions"].clone());
        let timed =
            with_transition_times(json!({"conditions": entry["conditions"].take()}), &json!({"conditions": previous}));
        entry["conditions"] = timed["conditions"].clone();
        parents.push(entry);
    }
    Some(json!({"parents": parents}))
}

/// Accepts connections on one Gateway port; each connection is served (keep-alive, request by
/// request) until the client closes it. Aborting the task closes the listener and its
/// connections.
async fn serve_listener(listener: tokio::net::TcpListener, shared: Arc<Shared>, gateway: Key, port: u16) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let (shared, gateway) = (shared.clone(), gateway.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (shared, gateway) = (shared.clone(), gateway.clone());
                async move { Ok::<_, Infallible>(handle(&shared, &gateway, port, peer, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A response body: streamed from a backend, or the gateway's own.
pub type Body = BoxBody<Bytes, hyper::Error>;

fn local(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let body = Full::new(Bytes::from(message.into())).map_err(|never| match never {}).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// What a request gets.
#[derive(Debug, PartialEq)]
enum Decision {
    /// No route matches: 404.
    NoRoute,
    /// 500 with a message (no backend has weight, or the chosen one does not resolve).
    Fail(String),
    /// Forward to a Service's clusterIP and port.
    Forward(SocketAddr),
}

/// The parts of a request routing looks at.
struct RequestView<'a> {
    host: String,
    method: &'a str,
    path: &'a str,
    query: Vec<(String, String)>,
    headers: &'a HeaderMap,
}

async fn handle(
    shared: &Shared,
    gateway: &Key,
    port: u16,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Body> {
    let decision = {
        let view = RequestView {
            host: request_host(&request),
            method: request.method().as_str(),
            path: request.uri().path(),
            query: request
                .uri()
                .query()
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
            headers: request.headers(),
        };
        decide(shared, gateway, port, &view)
    };
    match decision {
        Decision::NoRoute => local(StatusCode::NOT_FOUND, "no HTTPRoute matches the request\n"),
        Decision::Fail(message) => local(StatusCode::INTERNAL_SERVER_ERROR, message + "\n"),
        Decision::Forward(target) => match forward(target, request, peer).await {
            Ok(response) => response,
            Err(e) => local(StatusCode::SERVICE_UNAVAILABLE, format!("upstream connect error ({target}): {e}\n")),
        },
    }
}

/// The request's host: the Host header (or the absolute URI's), lower case, without port.
fn request_host(request: &Request<Incoming>) -> String {
    let raw = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        raw.split(':').next().unwrap_or_default()
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The precedence of a match (greater wins): hostname specificity, exact path, prefix length,
/// method, header matches, query parameter matches.
type Score = (u8, usize, u8, usize, u8, usize, usize);

/// How `host` matches a route's hostnames: `None` if it does not.
fn host_score(hostnames: &[String], host: &str) -> Option<(u8, usize)> {
    if hostnames.is_empty() {
        return Some((0, 0));
    }
    hostnames
        .iter()
        .filter(|h| hostname_matches(h, host))
        .map(|h| if h.starts_with("*.") { (1, h.len()) } else { (2, h.len()) })
        .max()
}

/// Whether a `PathPrefix` value matches `path`, element by element (`/foo` matches `/foo` and
/// `/foo/bar`, not `/foobar`).
pub fn path_prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// The score of one `matches[]` entry against the request, if it matches.
fn match_score(m: &Value, request: &RequestView) -> Option<(u8, usize, u8, usize, usize)> {
    let path_type = m["path"]["type"].as_str().unwrap_or("PathPrefix");
    let value = m["path"]["value"].as_str().unwrap_or("/");
    let (exact, prefix_len) = match path_type {
        "Exact" if request.path == value => (1, value.len()),
        "PathPrefix" if path_prefix_matches(value, request.path) => (0, value.len()),
        _ => return None, // RegularExpression is not simulated: it never matches.
    };
    let method = match m["method"].as_str() {
        Some(wanted) if wanted != request.method => return None,
        Some(_) => 1,
        None => 0,
    };
    let headers = m["headers"].as_array().cloned().unwrap_or_default();
    for h in &headers {
        let got = request.headers.get(str_of(&h["name"])).and_then(|v| v.to_str().ok());
        if h["type"].as_str().unwrap_or("Exact") != "Exact" || got != h["value"].as_str() {
            return None;
        }
    }
    let params = m["queryParams"].as_array().cloned().unwrap_or_default();
    for q in &params {
        let got = request.query.iter().find(|(k, _)| k == str_of(&q["name"])).map(|(_, v)| v.as_str());
        if q["type"].as_str().unwrap_or("Exact") != "Exact" || got != q["value"].as_str() {
            return None;
        }
    }
    Some((exact, prefix_len, method, headers.len(), params.len()))
}

/// Routes one request: the best rule of the routes attached to the listener that takes it, then a
/// backend by weight.
fn decide(shared: &Shared, gateway_key: &Key, port: u16, request: &RequestView) -> Decision {
    let snapshot = shared.read();
    let Some(gateway) = snapshot.gateways.get(gateway_key) else { return Decision::NoRoute };
    // The listener on this port whose hostname matches best.
    let listener = listeners_of(gateway)
        .into_iter()
        .filter(|l| l["port"].as_u64() == Some(port as u64) && str_of(&l["protocol"]) == "HTTP")
        .filter_map(|l| {
            let score = match l["hostname"].as_str() {
                None => (0, 0),
                Some(h) if hostname_matches(h, &request.host) => (if h.starts_with("*.") { 1 } else { 2 }, h.len()),
                Some(_) => return None,
            };
            Some((score, l))
        })
        .max_by_key(|(score, _)| *score)
        .map(|(_, l)| l);
    let Some(listener) = listener else { return Decision::NoRoute };
    let listener_name = str_of(&listener["name"]);

    type Rank = (Score, Reverse<String>, Reverse<Key>, Reverse<usize>);
    let mut best: Option<(Rank, &Value, usize)> = None;
    for route in snapshot.routes.values() {
        let namespace = str_of(&route["metadata"]["namespace"]);
        let attached = route["spec"]["parentRefs"].as_array().into_iter().flatten().any(|p| {
            parent_gateway(namespace, p).as_ref() == Some(gateway_key)
                && named_listeners(gateway, p).iter().any(|l| str_of(&l["name"]) == listener_name)
        }) && listener_refuses(gateway, &listener, route).is_none();
        if !attached {
            continue;
        }
        let Some((host_rank, host_len)) = host_score(&strings(&route["spec"]["hostnames"]), &request.host) else {
            continue;
        };
        for (index, rule) in route["spec"]["rules"].as_array().into_iter().flatten().enumerate() {
            let matches = rule["matches"].as_array().filter(|m| !m.is_empty());
            let score = match matches {
                None => Some((0, 1, 0, 0, 0)),
                Some(list) => list.iter().filter_map(|m| match_score(m, request)).max(),
            };
            let Some((exact, prefix, method, headers, params)) = score else { continue };
            let rank = (
                (host_rank, host_len, exact, prefix, method, headers, params),
                Reverse(str_of(&route["metadata"]["creationTimestamp"]).to_string()),
                Reverse(key_of(route)),
                Reverse(index),
            );
            if best.as_ref().is_none_or(|(b, _, _)| rank > *b) {
                best = Some((rank, route, index));
            }
        }
    }
    let Some((_, route, index)) = best else { return Decision::NoRoute };
    let backends = route["spec"]["rules"][index]["backendRefs"].as_array().cloned().unwrap_or_default();
    let weights: Vec<i64> = backends.iter().map(|b| b["weight"].as_i64().unwrap_or(1).max(0)).collect();
    let uid = str_of(&route["metadata"]["uid"]).to_string();
    let signature = Value::Array(backends.clone()).to_string();
    let Some(chosen) = pick(&shared.wrr, (uid, index), &weights, signature) else {
        return Decision::Fail(format!(
            "HTTPRoute {}/{} rule {index} has no backendRef with a weight above 0",
            str_of(&route["metadata"]["namespace"]),
            str_of(&route["metadata"]["name"])
        ));
    };
    match resolve(&snapshot.services, str_of(&route["metadata"]["namespace"]), &backends[chosen]) {
        Ok(target) => Decision::Forward(target),
        Err((reason, message)) => Decision::Fail(format!("{reason}: {message}")),
    }
}

/// Smooth weighted round robin (as nginx's): each pick adds every weight to its counter, takes
/// the largest counter and takes the sum of the weights off it. Over every `sum(weights)` picks
/// each entry is chosen exactly `weight` times, spread out. `None` when no weight is above 0.
fn pick(
    state: &Mutex<HashMap<(String, usize), Wrr>>,
    key: (String, usize),
    weights: &[i64],
    signature: String,
) -> Option<usize> {
    let total: i64 = weights.iter().sum();
    if total <= 0 {
        return None;
    }
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let wrr = state.entry(key).or_insert_with(|| Wrr { signature: String::new(), current: vec![] });
    if wrr.signature != signature || wrr.current.len() != weights.len() {
        *wrr = Wrr { signature, current: vec![0; weights.len()] };
    }
    let mut best: Option<usize> = None;
    for (i, w) in weights.iter().enumerate() {
        if *w > 0 {
            wrr.current[i] += w;
            if best.is_none_or(|b| wrr.current[i] > wrr.current[b]) {
                best = Some(i);
            }
        }
    }
    let chosen = best?;
    wrr.current[chosen] -= total;
    Some(chosen)
}

/// Headers that belong to one connection, not to the request or response.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect();
    for name in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(listed) {
        headers.remove(name.as_str());
    }
}

/// Sends `request` to `target` on a new connection and streams the response back.
async fn forward(target: SocketAddr, request: Request<Incoming>, peer: SocketAddr) -> Result<Response<Body>, String> {
    let (mut parts, body) = request.into_parts();
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, authority);
    }
    strip_hop_by_hop(&mut parts.headers);
    let forwarded = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        parts.headers.insert("x-forwarded-for", value);
    }
    parts.headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    let origin = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    parts.uri = origin.parse().map_err(|e| format!("{e}"))?;
    parts.version = hyper::Version::HTTP_11;

    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender.send_request(Request::from_parts(parts, body)).await.map_err(|e| e.to_string())?;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weighted_round_robin_is_exact_over_each_cycle_and_restarts_on_new_weights() {
        let state = Mutex::new(HashMap::new());
        let key = || ("uid".to_string(), 0);
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[pick(&state, key(), &[20, 80], "a".into()).unwrap()] += 1;
        }
        assert_eq!(counts, [200, 800]);
        // Spread out, not in runs: 1 in every 5.
        let picks: Vec<usize> = (0..10).map(|_| pick(&state, key(), &[1, 4], "b".into()).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 2);
        assert!(picks.windows(2).all(|w| !(w[0] == 0 && w[1] == 0)), "{picks:?}");
        assert!((0..50).all(|_| pick(&state, key(), &[0, 100], "c".into()) == Some(1)));
        assert_eq!(pick(&state, key(), &[0, 0], "d".into()), None);
        assert_eq!(pick(&state, key(), &[], "e".into()), None);
    }

    #[test]
    fn path_prefixes_match_by_element_and_hostnames_by_label() {
        assert!(path_prefix_matches("/", "/anything"));
        assert!(path_prefix_matches("/v1", "/v1"));
        assert!(path_prefix_matches("/v1/", "/v1/predict"));
        assert!(path_prefix_matches("/v1", "/v1/predict"));
        assert!(!path_prefix_matches("/v1", "/v10"));
        assert!(hostname_matches("*.example.com", "a.example.com"));
        assert!(hostname_matches("*.example.com", "a.b.example.com"));
        assert!(!hostname_matches("*.example.com", "example.com"));
        assert!(!hostname_matches("*.example.com", "aexample.com"));
        assert!(hostname_matches("example.com", "example.com"));
        assert!(hostnames_intersect("*.example.com", "api.example.com"));
        assert!(hostnames_intersect("*.example.com", "*.api.example.com"));
        assert!(!hostnames_intersect("api.example.com", "web.example.com"));
    }

    #[test]
    fn status_comparison_ignores_transition_times_and_matches_conditions_by_type() {
        let desired = json!({"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "False"}]});
        let live = json!({"conditions": [{"type": "B", "status": "False", "lastTransitionTime": "t"},
                                          {"type": "X", "status": "True"}, {"type": "A", "status": "True"}]});
        assert!(covers(&desired, &live));
        let changed = json!({"conditions": [{"type": "A", "status": "False"}]});
        assert!(!covers(&changed, &live));
        let timed = with_transition_times(changed, &live);
        assert_ne!(timed["conditions"][0]["lastTransitionTime"], "t");
        let same = with_transition_times(json!({"conditions": [{"type": "B", "status": "False"}]}), &live);
        assert_eq!(same["conditions"][0]["lastTransitionTime"], "t");
    }
}
