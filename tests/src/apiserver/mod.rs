//! A Kubernetes API server, in process: real HTTP on 127.0.0.1 (a random port, with a kubeconfig
//! for it) for the operator binary and `kubectl`, and the same router handed to
//! `kube::Client::new` for fast in-process tests.
//!
//! The semantics live in [`store`] (verbs, metadata, generations, finalizers, garbage collection,
//! the watch log), [`schema`] (pruning, defaulting and validation of custom resources),
//! [`builtin`] (validation of built-in kinds), [`fields`] (managed fields), [`select`] (label and
//! field selectors) and [`registry`] (resource types and discovery), [`traffic`] (faults aimed at
//! a client and checks on its requests); this module is the HTTP layer. See `tests/README.md` for what it does not simulate.

pub mod apply;
pub mod builtin;
pub mod fields;
mod http;
pub mod labels;
pub mod openapi;
pub mod rbac;
pub mod registry;
pub mod schema;
pub mod select;
pub mod status;
pub mod store;
pub mod table;
pub mod traffic;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

pub use store::{Fault, State};

/// What the HTTP layer and the background tasks share.
pub struct Shared {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

impl Shared {
    /// Locks the state. Never held across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes watches and the garbage collector after a change.
    pub fn notify(&self) {
        let rv = self.lock().rv;
        self.changes.send_replace(rv);
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// A running API server.
pub struct ApiServer {
    shared: Arc<Shared>,
    address: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

impl ApiServer {
    /// Starts a server on a random port of 127.0.0.1, with its garbage collector. Call from
    /// within a tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let (changes, _) = watch::channel(0);
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), changes });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let router = http::router(shared.clone(), address);
        let serve = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let gc = tokio::spawn(garbage_collector(shared.clone()));
        Ok(Self { shared, address, tasks: vec![serve, gc] })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A client that talks to the server in process (no sockets).
    pub fn client(&self) -> kube::Client {
        kube::Client::new(http::router(self.shared.clone(), self.address), "default")
    }

    /// A client in process that authenticates with the bearer token `token` (e.g.
    /// [`rbac::service_account_token`]): under RBAC it has what that identity is bound to.
    pub fn client_as(&self, token: &str) -> kube::Client {
        let value = axum::http::HeaderValue::from_str(&format!("Bearer {token}")).expect("a token fits a header");
        let router = http::router(self.shared.clone(), self.address).layer(axum::middleware::map_request(
            move |mut request: axum::extract::Request| {
                let value = value.clone();
                async move {
                    request.headers_mut().insert(axum::http::header::AUTHORIZATION, value);
                    request
                }
            },
        ));
        kube::Client::new(router, "default")
    }

    /// Installs the Distillery CRDs by server-side apply as `manager`, as `kubectl apply
    /// --server-side -f charts/distillery/crds/` does.
    pub async fn install_crds(&self, manager: &str) -> Result<(), kube::Error> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(self.client());
        for crd in distillery_crds::crds() {
            let name = kube::ResourceExt::name_any(&crd);
            crds.patch(&name, &kube::api::PatchParams::apply(manager), &kube::api::Patch::Apply(&crd)).await?;
        }
        Ok(())
    }

    /// Installs the Gateway API CRDs the simulated gateway implements (Gateway and HTTPRoute,
    /// `gateway.networking.k8s.io/v1`: see [`gateway_api_crds`]) by server-side apply as
    /// `kubectl`, as installing the Gateway API bundle does on a real cluster. The server serves
    /// these kinds from the start (without the CRD objects, so that tests which count CRDs see
    /// only theirs); this adds the CRD objects, and serves the kinds again after
    /// [`ApiServer::remove_gateway_api`].
    pub async fn install_gateway_api(&self) -> Result<(), kube::Error> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(self.client());
        for crd in gateway_api_crds() {
            let name = kube::ResourceExt::name_any(&crd);
            crds.patch(&name, &kube::api::PatchParams::apply("kubectl"), &kube::api::Patch::Apply(&crd)).await?;
        }
        Ok(())
    }

    /// Takes the Gateway API away, as deleting its CRDs does on a real cluster: from then on every
    /// request for Gateways and HTTPRoutes gets 404, discovery no longer lists the group, and the
    /// objects of those kinds are gone (watches see them DELETED). For tests of a cluster without
    /// the Gateway API; [`ApiServer::install_gateway_api`] brings it back.
    pub async fn remove_gateway_api(&self) -> Result<(), kube::Error> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        // Through the CRD objects, so that the server deletes the kinds' objects as it does when a
        // CRD is deleted.
        self.install_gateway_api().await?;
        let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(self.client());
        for crd in gateway_api_crds() {
            crds.delete(&kube::ResourceExt::name_any(&crd), &Default::default()).await?;
        }
        Ok(())
    }

    /// Writes a kubeconfig for the server (context `harness`, namespace `default`) to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        self.write_kubeconfig_as(path, "harness")
    }

    /// Writes a kubeconfig whose requests carry the bearer token `user`, by which the server
    /// tells clients apart ([`RequestRecord::user`], [`Fault::user`]).
    ///
    /// [`RequestRecord::user`]: store::RequestRecord::user
    pub fn write_kubeconfig_as(&self, path: &Path, user: &str) -> std::io::Result<()> {
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: harness\n  cluster:\n    server: {}\nusers:\n- name: harness\n  \
             user:\n    token: {user}\ncontexts:\n- name: harness\n  context:\n    cluster: harness\n    user: harness\n    \
             namespace: default\ncurrent-context: harness\n",
            self.url()
        );
        std::fs::write(path, config)
    }

    /// The server's state, for assertions and direct manipulation. Call [`ApiServer::notify`]
    /// after changing it.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Wakes watches after a direct change of [`ApiServer::state`].
    pub fn notify(&self) {
        self.shared.notify();
    }

    /// Makes matching requests fail with `fault.error`, `fault.times` times.
    pub fn inject(&self, fault: Fault) {
        self.state().inject(fault);
    }

    /// Authorizes every request by RBAC from now on ([`rbac`]): the harness's own clients stay
    /// administrators; pods and processes with a service account's token get what its bindings
    /// grant, and a 403 for anything else.
    pub fn enforce_rbac(&self) {
        self.state().rbac_enforced = true;
    }

    /// Writes a kubeconfig that authenticates as the service account `namespace`/`name`.
    pub fn write_service_account_kubeconfig(&self, path: &Path, namespace: &str, name: &str) -> std::io::Result<()> {
        self.write_kubeconfig_as(path, &rbac::service_account_token(namespace, name))
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.state().clear_faults();
    }

    /// Ends every open watch (clients must re-watch from their last `resourceVersion`).
    pub fn drop_watches(&self) {
        self.state().watch_epoch += 1;
        self.notify();
    }

    /// Forgets the watch history: a watch from any earlier `resourceVersion` gets 410 Gone.
    pub fn compact(&self) {
        self.state().compact();
    }
}

/// The Gateway API's `gateways` and `httproutes` CRDs (standard channel, v1 only), trimmed to the
/// fields the simulated gateway implements but faithful in names, status subresource, list types
/// (`spec.rules`, `rules[].backendRefs`, `spec.parentRefs` and `status.parents` are atomic, as in
/// the real CRDs), defaults (backendRef `weight` 1, `kind` Service, `group` ""; a rule's `matches`
/// `PathPrefix /`) and bounds (`weight` 0..=1000000, a Service backendRef needs a `port`).
pub fn gateway_api_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    let text = include_str!("gateway-api-crds.yaml");
    crate::parse_documents(text)
        .expect("the Gateway API CRDs parse")
        .into_iter()
        .map(|doc| serde_json::from_value(doc).expect("a CustomResourceDefinition"))
        .collect()
}

/// Runs garbage collection after every change, a moment later, as the real collector does.
async fn garbage_collector(shared: Arc<Shared>) {
    let mut changes = shared.subscribe();
    while changes.changed().await.is_ok() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut changed = false;
        {
            let mut state = shared.lock();
            while state.collect_garbage() {
                changed = true;
            }
        }
        if changed {
            shared.notify();
            changes.mark_unchanged();
        }
    }
}
