//! The simulated cluster's traffic: the Service proxy following a Service's selector and ports,
//! and the Gateway API implementation (`distillery_tests::cluster::gateway`) splitting requests
//! between Services by HTTPRoute weights, request by request. The pods run
//! `distillery-test-echo`, which answers with its pod name.
//!
//! The Services here ask for their clusterIPs (127.10.2xx.y): the API server hands them out per
//! server from 127.10.0.1, and these tests run in one process, each with its own server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use distillery_tests::apiserver::ApiServer;
use distillery_tests::cluster::{Cluster, gateway, workspace_binary};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

const ECHO_IMAGE: &str = "ghcr.io/distillery-dev/distillery-test-echo:test";

struct Harness {
    server: ApiServer,
    cluster: Cluster,
    _root: tempfile::TempDir,
}

impl Harness {
    async fn start(gateway_api: bool) -> Self {
        let server = ApiServer::start().await.unwrap();
        if gateway_api {
            // Served anyway; installed as CRD objects, as on a real cluster.
            server.install_gateway_api().await.unwrap();
        }
        let root = tempfile::tempdir().unwrap();
        let images = HashMap::from([("distillery-test-echo".to_string(), workspace_binary("distillery-test-echo"))]);
        let cluster = Cluster::start(&server, images, HashMap::new(), root.path()).unwrap();
        Self { server, cluster, _root: root }
    }

    fn api(&self, kind: &str, plural: &str) -> Api<DynamicObject> {
        let resource = ApiResource {
            group: "gateway.networking.k8s.io".into(),
            version: "v1".into(),
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        Api::namespaced_with(self.server.client(), "default", &resource)
    }

    fn routes(&self) -> Api<DynamicObject> {
        self.api("HTTPRoute", "httproutes")
    }

    fn gateways(&self) -> Api<DynamicObject> {
        self.api("Gateway", "gateways")
    }

    /// Applies `object` (a Deployment or Service of the core kinds) as `kubectl`.
    async fn apply<K>(&self, object: Value)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::default_namespaced(self.server.client());
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        api.patch(&name, &PatchParams::apply("kubectl"), &Patch::Apply(&object)).await.unwrap();
    }

    /// A one-replica Deployment of the echo server, its pods labelled `app: <name>` and `labels`.
    async fn echo(&self, name: &str, labels: Value) {
        let mut pod_labels = labels;
        pod_labels["app"] = json!(name);
        self.apply::<Deployment>(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": pod_labels}, "spec": {"containers": [{
                    "name": "echo", "image": ECHO_IMAGE, "args": ["$(POD_IP):8080"],
                    "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}}}}))
            .await;
    }

    async fn service(&self, name: &str, cluster_ip: &str, selector: Value, port: u16) {
        self.apply::<Service>(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"clusterIP": cluster_ip, "selector": selector,
                     "ports": [{"name": "http", "port": port, "targetPort": "http"}]}}))
            .await;
    }

    async fn wait_available(&self, names: &[&str]) {
        let deployments: Api<Deployment> = Api::default_namespaced(self.server.client());
        for name in names {
            self.wait(&format!("Deployment {name} available"), Duration::from_secs(60), async || {
                let d = deployments.get(name).await.ok()?;
                (d.status?.available_replicas == Some(1)).then_some(())
            })
            .await;
        }
    }

    async fn wait<T>(&self, what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", self.cluster.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates a Gateway with one HTTP listener on `port` and waits for it to be programmed;
    /// returns its address.
    async fn gateway(&self, name: &str, port: u16) -> SocketAddr {
        let body = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": name},
            "spec": {"gatewayClassName": "distillery-sim",
                     "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}]}});
        self.gateways().patch(name, &PatchParams::apply("kubectl"), &Patch::Apply(&body)).await.unwrap();
        let gateways = self.gateways();
        let ip = self
            .wait(&format!("Gateway {name} programmed"), Duration::from_secs(10), async || {
                let g = serde_json::to_value(gateways.get(name).await.ok()?).ok()?;
                let programmed = condition(&g["status"]["conditions"], "Programmed")?;
                (programmed["status"] == "True")
                    .then(|| g["status"]["addresses"][0]["value"].as_str().map(str::to_string))?
            })
            .await;
        assert!(ip.starts_with("127.30."), "{ip}");
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    /// The route's status entry of the simulated gateway, once it has one whose conditions say
    /// `accepted` and `resolved` (True/False).
    async fn route_status(&self, name: &str, accepted: &str, resolved: &str) -> Value {
        let routes = self.routes();
        self.wait(
            &format!("HTTPRoute {name} Accepted={accepted} ResolvedRefs={resolved}"),
            Duration::from_secs(10),
            async || {
                let r = serde_json::to_value(routes.get(name).await.ok()?).ok()?;
                let entry = r["status"]["parents"]
                    .as_array()?
                    .iter()
                    .find(|p| p["controllerName"] == gateway::CONTROLLER_NAME)?
                    .clone();
                let ok = condition(&entry["conditions"], "Accepted")?["status"] == accepted
                    && condition(&entry["conditions"], "ResolvedRefs")?["status"] == resolved
                    && condition(&entry["conditions"], "ResolvedRefs")?["observedGeneration"]
                        == r["metadata"]["generation"];
                ok.then_some(entry)
            },
        )
        .await
    }
}

fn condition<'a>(conditions: &'a Value, kind: &str) -> Option<&'a Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == kind)
}

/// One HTTP/1.1 connection, kept alive over every request sent on it.
struct Connection(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Connection {
    async fn open(address: SocketAddr) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self(sender))
    }

    /// `GET path` with `Host: host`: (status, body).
    async fn get(&mut self, host: &str, path: &str) -> Result<(u16, String), hyper::Error> {
        let (status, _, body) = self.send(hyper::Request::get(path).header("host", host), Bytes::new()).await?;
        Ok((status, body))
    }

    /// Sends a request with `body`: (status, headers, body).
    async fn send(
        &mut self,
        request: hyper::http::request::Builder,
        body: Bytes,
    ) -> Result<(u16, hyper::HeaderMap, String), hyper::Error> {
        self.0.ready().await?;
        let response = self.0.send_request(request.body(Full::new(body)).unwrap()).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((parts.status.as_u16(), parts.headers, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A request on a connection of its own (what a Service's per-connection balancing sees); `None`
/// when the connection is refused or dropped.
async fn get_once(address: SocketAddr) -> Option<String> {
    let mut connection = Connection::open(address).await.ok()?;
    let (status, body) = connection.get("test", "/").await.ok()?;
    (status == 200).then_some(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_follows_its_selector_and_ports_for_new_connections() {
    let h = Harness::start(false).await;
    h.echo("blue", json!({"tier": "web"})).await;
    h.echo("green", json!({"tier": "web"})).await;
    h.service("web", "127.10.201.1", json!({"tier": "web"}), 8080).await;
    h.wait_available(&["blue", "green"]).await;
    let address: SocketAddr = "127.10.201.1:8080".parse().unwrap();

    // Both Deployments' pods, in turn: one connection each.
    let mut seen = vec![];
    for _ in 0..8 {
        seen.push(get_once(address).await.expect("the Service answers"));
    }
    let blue = seen.iter().filter(|b| b.starts_with("blue-")).count();
    let green = seen.iter().filter(|b| b.starts_with("green-")).count();
    assert_eq!((blue, green), (4, 4), "{seen:?}");

    // The selector narrows to one Deployment: new connections go only there, within moments.
    h.service("web", "127.10.201.1", json!({"app": "green"}), 8080).await;
    let changed = Instant::now();
    let mut streak = 0;
    while streak < 10 {
        let opened = changed.elapsed();
        let body = get_once(address).await.expect("the Service answers");
        if body.starts_with("green-") {
            streak += 1;
        } else {
            streak = 0;
            assert!(opened < Duration::from_secs(1), "{body} for a connection opened {opened:?} after the change");
        }
    }
    for _ in 0..20 {
        let body = get_once(address).await.expect("the Service answers");
        assert!(body.starts_with("green-"), "{body} after the selector change");
    }

    // A port change rebinds: the new port answers, the old one no longer does.
    h.service("web", "127.10.201.1", json!({"app": "green"}), 9090).await;
    let moved: SocketAddr = "127.10.201.1:9090".parse().unwrap();
    h.wait("the Service on its new port", Duration::from_secs(2), async || {
        let answered = get_once(moved).await.is_some_and(|b| b.starts_with("green-"));
        (answered && get_once(address).await.is_none()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_splits_requests_by_weight_over_one_keep_alive_connection_and_follows_new_weights() {
    let h = Harness::start(true).await;
    h.echo("web-stable", json!({})).await;
    h.echo("web-canary", json!({})).await;
    h.service("web-stable", "127.10.202.1", json!({"app": "web-stable"}), 8080).await;
    h.service("web-canary", "127.10.202.2", json!({"app": "web-canary"}), 8080).await;
    let address = h.gateway("sim", 8080).await;

    // The user's route, as `kubectl apply --server-side` writes it: everything to stable.
    let routes = h.routes();
    let route = |weights: Option<(i64, i64)>| {
        let backends = match weights {
            None => json!([{"name": "web-stable", "port": 8080}]),
            Some((stable, canary)) => json!([{"name": "web-stable", "port": 8080, "weight": stable},
                                             {"name": "web-canary", "port": 8080, "weight": canary}]),
        };
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web"},
               "spec": {"parentRefs": [{"name": "sim"}], "rules": [{"backendRefs": backends}]}})
    };
    routes.patch("web", &PatchParams::apply("kubectl"), &Patch::Apply(&route(None))).await.unwrap();
    // `spec.rules` is an atomic list in the real CRD: another manager's different rules conflict
    // with the user's, unless forced (which takes the whole list over).
    let operator = PatchParams::apply("distillery-operator");
    let err = routes.patch("web", &operator, &Patch::Apply(&route(Some((20, 80))))).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(e) if e.code == 409 && e.message.contains(".spec.rules")), "{err:?}");
    routes.patch("web", &operator.clone().force(), &Patch::Apply(&route(Some((20, 80))))).await.unwrap();
    h.wait_available(&["web-stable", "web-canary"]).await;
    let entry = h.route_status("web", "True", "True").await;
    assert_eq!(entry["parentRef"]["name"], "sim");
    assert_eq!(entry["parentRef"]["kind"], "Gateway", "the server's default");

    // 1000 requests over ONE connection: routed one by one, exactly 20/80 (a smooth weighted
    // round robin per rule is deterministic; the tolerance is 0).
    let mut connection = Connection::open(address).await.unwrap();
    let started = Instant::now();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        let (status, body) = connection.get("web.example", "/predict").await.expect("keep-alive holds");
        assert_eq!(status, 200, "{body}");
        let track = if body.starts_with("web-stable-") { "stable" } else { "canary" };
        *counts.entry(track.to_string()).or_default() += 1;
    }
    println!("1000 requests over one connection in {:?}: {counts:?}", started.elapsed());
    assert_eq!((counts["stable"], counts["canary"]), (200, 800));

    // New weights by server-side apply: every request goes to canary within a second, on the
    // same connection.
    routes.patch("web", &operator.clone().force(), &Patch::Apply(&route(Some((0, 100))))).await.unwrap();
    let changed = Instant::now();
    let mut streak = 0;
    while streak < 20 {
        let sent = changed.elapsed();
        let (status, body) = connection.get("web.example", "/predict").await.expect("keep-alive holds");
        assert_eq!(status, 200, "{body}");
        if body.starts_with("web-canary-") {
            streak += 1;
        } else {
            streak = 0;
            assert!(sent < Duration::from_secs(1), "{body} for a request sent {sent:?} after the weight change");
        }
    }
    for _ in 0..200 {
        let (_, body) = connection.get("web.example", "/predict").await.expect("keep-alive holds");
        assert!(body.starts_with("web-canary-"), "{body} at weight 0");
    }

    // Status written once per change, not in a loop: nothing moves while nothing changes.
    h.route_status("web", "True", "True").await;
    let rv = |o: DynamicObject| o.metadata.resource_version.unwrap();
    let (route_rv, gateway_rv) = (rv(routes.get("web").await.unwrap()), rv(h.gateways().get("sim").await.unwrap()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rv(routes.get("web").await.unwrap()), route_rv, "the route's status is rewritten");
    assert_eq!(rv(h.gateways().get("sim").await.unwrap()), gateway_rv, "the Gateway's status is rewritten");
    let gateway = serde_json::to_value(h.gateways().get("sim").await.unwrap()).unwrap();
    assert_eq!(gateway["status"]["listeners"][0]["attachedRoutes"], 1);
    let route = serde_json::to_value(routes.get("web").await.unwrap()).unwrap();
    let managers: Vec<(&str, &str)> = route["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["manager"].as_str().unwrap(), m["subresource"].as_str().unwrap_or("")))
        .collect();
    assert!(managers.contains(&(gateway::FIELD_MANAGER, "status")), "{managers:?}");
    assert!(managers.contains(&("distillery-operator", "")), "{managers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_ref_to_a_missing_service_answers_500_for_its_share_and_paths_route_by_rule() {
    let h = Harness::start(true).await;
    h.echo("web-stable", json!({})).await;
    h.service("web-stable", "127.10.203.1", json!({"app": "web-stable"}), 8080).await;
    let address = h.gateway("edge", 8081).await;
    let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"name": "edge"}], "hostnames": ["web.example"], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
             "backendRefs": [{"name": "web-stable", "port": 8080}, {"name": "web-missing", "port": 8080}]},
            {"matches": [{"path": {"type": "Exact", "value": "/zero"}}],
             "backendRefs": [{"name": "web-stable", "port": 8080, "weight": 0}]},
            {"matches": [{"path": {"type": "Exact", "value": "/api/exact"}}],
             "backendRefs": [{"name": "web-stable", "port": 8080}]}]}});
    h.routes().patch("web", &PatchParams::apply("kubectl"), &Patch::Apply(&route)).await.unwrap();
    h.wait_available(&["web-stable"]).await;
    let entry = h.route_status("web", "True", "False").await;
    let resolved = condition(&entry["conditions"], "ResolvedRefs").unwrap();
    assert_eq!(resolved["reason"], "BackendNotFound");
    assert!(resolved["message"].as_str().unwrap().contains("default/web-missing"), "{resolved}");

    let mut connection = Connection::open(address).await.unwrap();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for _ in 0..100 {
        let (status, body) = connection.get("web.example", "/api/items").await.unwrap();
        assert!(status == 500 || body.starts_with("web-stable-"), "{status} {body}");
        *statuses.entry(status).or_default() += 1;
    }
    assert_eq!((statuses[&200], statuses[&500]), (50, 50), "the missing Service's share fails, no more");
    // An exact path beats a prefix; every weight 0 is a 500; no matching rule or host is a 404.
    for _ in 0..4 {
        let (status, body) = connection.get("web.example", "/api/exact").await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // A request body streams through to the pod.
    let upload = Bytes::from(vec![b'x'; 300_000]);
    let post = hyper::Request::post("/api/exact").header("host", "web.example");
    let (status, headers, _) = connection.send(post, upload).await.unwrap();
    assert_eq!((status, headers["x-echo-body-bytes"].to_str().unwrap()), (200, "300000"));
    assert_eq!(connection.get("web.example", "/zero").await.unwrap().0, 500);
    assert_eq!(connection.get("web.example", "/apix").await.unwrap().0, 404, "prefixes match whole path elements");
    assert_eq!(connection.get("other.example", "/api/items").await.unwrap().0, 404, "hostnames");

    // The Service appears: the route resolves and every request succeeds.
    h.service("web-missing", "127.10.203.2", json!({"app": "web-stable"}), 8080).await;
    h.route_status("web", "True", "True").await;
    for _ in 0..20 {
        let (status, body) = connection.get("web.example", "/api/items").await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_gateway_api_httproutes_are_not_found_and_installed_they_validate_backend_refs() {
    let server = ApiServer::start().await.unwrap();
    let resource = ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    };
    let routes: Api<DynamicObject> = Api::namespaced_with(server.client(), "default", &resource);
    let route = |backend: Value| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web"},
               "spec": {"parentRefs": [{"name": "sim"}], "rules": [{"backendRefs": [backend]}]}})
    };
    let params = PatchParams::apply("kubectl");
    // Served from the start; removed, as deleting the Gateway API CRDs does: objects go too.
    routes.patch("web", &params, &Patch::Apply(&route(json!({"name": "web-stable", "port": 8080})))).await.unwrap();
    server.remove_gateway_api().await.unwrap();
    let err = routes.list(&Default::default()).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(e) if e.code == 404), "{err:?}");
    let groups = server.client().list_api_groups().await.unwrap();
    assert!(!groups.groups.iter().any(|g| g.name == "gateway.networking.k8s.io"));

    server.install_gateway_api().await.unwrap();
    assert!(routes.list(&Default::default()).await.unwrap().items.is_empty(), "the route went with its CRD");
    let groups = server.client().list_api_groups().await.unwrap();
    assert!(groups.groups.iter().any(|g| g.name == "gateway.networking.k8s.io"));
    for (backend, field) in [
        (json!({"name": "web-stable"}), "Must have port for Service reference"),
        (json!({"name": "web-stable", "port": 8080, "weight": 1_000_001}), "weight"),
    ] {
        let err = routes.patch("web", &params, &Patch::Apply(&route(backend))).await.unwrap_err();
        assert!(matches!(&err, kube::Error::Api(e) if e.code == 422 && e.message.contains(field)), "{err:?}");
    }
    let created =
        routes.patch("web", &params, &Patch::Apply(&route(json!({"name": "web-stable", "port": 8080})))).await;
    let created = serde_json::to_value(created.unwrap()).unwrap();
    assert_eq!(
        created["spec"]["rules"][0]["backendRefs"][0],
        json!({"group": "", "kind": "Service", "name": "web-stable", "port": 8080, "weight": 1}),
        "the CRD's defaults"
    );
    assert_eq!(created["spec"]["rules"][0]["matches"], json!([{"path": {"type": "PathPrefix", "value": "/"}}]));
}
