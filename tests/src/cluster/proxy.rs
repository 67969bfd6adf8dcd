//! Services of the simulated cluster: the API server gives each Service a `clusterIP` in
//! 127.0.0.0/8, and this proxy listens on that address and each Service port, forwarding every
//! connection to a ready pod the Service selects (round robin), at the pod's own loopback address
//! and the port's `targetPort` (a number or a container port's name). Code that calls a Service
//! by its clusterIP works unchanged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::watcher::{self, Event};

/// Runs the proxy until the task is aborted; listeners of deleted Services are closed.
pub async fn run(client: kube::Client) {
    let services: Api<Service> = Api::all(client.clone());
    let mut listeners: HashMap<String, Vec<tokio::task::JoinHandle<()>>> = HashMap::new();
    let mut events = std::pin::pin!(watcher::watcher(services, watcher::Config::default()));
    while let Some(event) = events.next().await {
        let Ok(event) = event else { continue };
        match event {
            Event::Apply(svc) | Event::InitApply(svc) => {
                let uid = svc.uid().unwrap_or_default();
                if listeners.contains_key(&uid) {
                    continue;
                }
                let tasks = serve(client.clone(), &svc).await;
                listeners.insert(uid, tasks);
            }
            Event::Delete(svc) => {
                for task in listeners.remove(&svc.uid().unwrap_or_default()).into_iter().flatten() {
                    task.abort();
                }
            }
            Event::Init | Event::InitDone => {}
        }
    }
}

async fn serve(client: kube::Client, svc: &Service) -> Vec<tokio::task::JoinHandle<()>> {
    let spec = svc.spec.clone().unwrap_or_default();
    let Some(ip) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) else { return vec![] };
    let namespace = svc.namespace().unwrap_or_default();
    let selector: String =
        spec.selector.unwrap_or_default().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let mut tasks = vec![];
    for port in spec.ports.unwrap_or_default() {
        let Ok(listener) = tokio::net::TcpListener::bind((ip, port.port as u16)).await else {
            eprintln!("simulated kube-proxy: cannot listen on {ip}:{}", port.port);
            continue;
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let selector = selector.clone();
        let next = Arc::new(AtomicUsize::new(0));
        tasks.push(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let backends = ready_backends(&pods, &selector, &port).await;
                if backends.is_empty() {
                    continue; // No ready endpoint: the connection is refused (dropped).
                }
                let target = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
    tasks
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
