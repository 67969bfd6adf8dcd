//! Services of the simulated cluster: the API server gives each Service a `clusterIP` in
//! 127.10.0.0/16, and this proxy listens on that address and each Service port, forwarding every
//! connection to a ready pod the Service selects (round robin per connection), at the pod's own
//! loopback address and the port's `targetPort` (a number or a container port's name). Code that
//! calls a Service by its clusterIP works unchanged.
//!
//! Like kube-proxy, it follows the Service: a changed selector or `targetPort` applies to the next
//! connection (connections already open stay with their pod, as conntrack keeps them), a port
//! added or removed opens or closes its listener, and a deleted Service closes them all. Pods are
//! looked up on every connection, so a pod that becomes ready or unready counts at once.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

/// What a Service's listeners read on every connection: the latest selector and ports.
#[derive(Clone, Debug, Default)]
struct View {
    /// `k=v,k=v`; empty selects nothing (a Service without selector has no endpoints here).
    selector: String,
    ports: Vec<ServicePort>,
}

/// One Service being served.
struct Served {
    ip: IpAddr,
    view: Arc<RwLock<View>>,
    /// Listener task per Service port number.
    listeners: HashMap<u16, tokio::task::JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.listeners.values().for_each(|t| t.abort());
    }
}

/// Runs the proxy until the task is aborted.
pub async fn run(client: kube::Client) {
    let services: Api<Service> = Api::all(client.clone());
    let mut served: HashMap<String, Served> = HashMap::new();
    let mut relisted: Option<HashSet<String>> = None;
    let events = watcher::watcher(services, watcher::Config::default()).backoff(super::retry_backoff());
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let Ok(event) = event else { continue };
        match event {
            Event::Init => relisted = Some(HashSet::new()),
            Event::InitApply(svc) => {
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(svc.uid().unwrap_or_default());
                }
                update(&client, &mut served, &svc);
            }
            Event::InitDone => {
                // Services deleted while the watch was down get no DELETED event.
                if let Some(seen) = relisted.take() {
                    served.retain(|uid, _| seen.contains(uid));
                }
            }
            Event::Apply(svc) => update(&client, &mut served, &svc),
            Event::Delete(svc) => {
                served.remove(&svc.uid().unwrap_or_default());
            }
        }
    }
}

fn selector_of(svc: &Service) -> String {
    let selector = svc.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
    selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Starts serving `svc`, or brings its listeners in line with its latest spec.
fn update(client: &kube::Client, served: &mut HashMap<String, Served>, svc: &Service) {
    let uid = svc.uid().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let Some(ip) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) else {
        served.remove(&uid); // Headless (`None`): nothing to listen on.
        return;
    };
    let view = View { selector: selector_of(svc), ports: spec.ports.clone().unwrap_or_default() };
    if served.get(&uid).is_some_and(|s| s.ip != ip) {
        served.remove(&uid);
    }
    let entry = served.entry(uid).or_insert_with(|| Served {
        ip,
        view: Arc::new(RwLock::new(View::default())),
        listeners: HashMap::new(),
    });
    let wanted: HashSet<u16> = view.ports.iter().map(|p| p.port as u16).collect();
    *entry.view.write().unwrap_or_else(|p| p.into_inner()) = view;
    entry.listeners.retain(|port, task| {
        let keep = wanted.contains(port);
        if !keep {
            task.abort();
        }
        keep
    });
    let namespace = svc.namespace().unwrap_or_default();
    for port in wanted {
        if !entry.listeners.contains_key(&port) {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            entry.listeners.insert(port, tokio::spawn(listen(ip, port, entry.view.clone(), pods)));
        }
    }
}

/// Binds `ip:port` (retrying while the address is taken, e.g. by a listener just closed) and
/// forwards each connection to the next ready pod the Service selects at that moment.
async fn listen(ip: IpAddr, port: u16, view: Arc<RwLock<View>>, pods: Api<Pod>) {
    let mut warned = false;
    let listener = loop {
        match tokio::net::TcpListener::bind((ip, port)).await {
            Ok(l) => break l,
            Err(e) => {
                if !warned {
                    eprintln!("simulated kube-proxy: cannot listen on {ip}:{port} yet ({e}); retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let next = AtomicUsize::new(0);
    loop {
        let mut inbound = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors or the like: keep the listener, try again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (selector, service_port) = {
            let v = view.read().unwrap_or_else(|p| p.into_inner());
            (v.selector.clone(), v.ports.iter().find(|p| p.port as u16 == port).cloned())
        };
        let Some(service_port) = service_port else { continue };
        let backends = ready_backends(&pods, &selector, &service_port).await;
        if backends.is_empty() {
            continue; // No ready endpoint: the connection is refused (dropped).
        }
        let target = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
        let _ = inbound.set_nodelay(true);
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Ready pods' (address, port) for a Service port.
async fn ready_backends(pods: &Api<Pod>, selector: &str, port: &ServicePort) -> Vec<(IpAddr, u16)> {
    if selector.is_empty() {
        return vec![];
    }
    let Ok(list) = pods.list(&ListParams::default().labels(selector)).await else { return vec![] };
    list.items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| super::pod_ready(p))
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            let target = match &port.target_port {
                None => port.port as u16,
                Some(IntOrString::Int(n)) => *n as u16,
                Some(IntOrString::String(name)) => {
                    p.spec
                        .as_ref()?
                        .containers
                        .iter()
                        .flat_map(|c| c.ports.iter().flatten())
                        .find(|cp| cp.name.as_deref() == Some(name.as_str()))?
                        .container_port as u16
                }
            };
            Some((ip, target))
        })
        .collect()
}
