//! A local playground a user drives with `kubectl`: the in-process API server, the simulated
//! cluster (pods run this workspace's `distillery-worker` and `distillery-server` binaries) and
//! the operator — as the chart runs it: its ServiceAccount, ClusterRoles and bindings rendered
//! from the chart, RBAC enforced, the chart's environment —, with the setup cache as the claims
//! the examples name:
//!
//! | claim | host directory |
//! | --- | --- |
//! | `models` | `$DISTILLERY_CACHE/teacher` |
//! | `datasets` | `$DISTILLERY_CACHE/data` |
//! | `artifacts` | `$DISTILLERY_CACHE/playground/artifacts` |
//!
//! ```text
//! cargo build -p distillery-operator -p distillery-worker -p distillery-server
//! cargo run -p distillery-tests --example playground      # prints the KUBECONFIG to export
//! ```
//!
//! Everything stops with Ctrl-C (or SIGTERM); the artifacts stay in the cache.
//! `DISTILLERY_PLAYGROUND_DIR` puts the playground's own files (artifacts, pods, kubeconfig,
//! operator log) elsewhere than `$DISTILLERY_CACHE/playground`. The exported kubeconfig is an
//! administrator's, as a platform engineer's would be.

use std::collections::HashMap;

use distillery_tests::apiserver::ApiServer;
use distillery_tests::cluster::{Cluster, workspace_binary};
use distillery_tests::identity::install_chart_rbac;
use distillery_tests::operator::OperatorProcess;

#[tokio::main]
async fn main() {
    let cache = distillery_tests::cache_dir();
    let root = std::env::var_os("DISTILLERY_PLAYGROUND_DIR").map_or_else(|| cache.join("playground"), Into::into);
    let artifacts = root.join("artifacts");
    std::fs::create_dir_all(&artifacts).expect("create the playground's directories");
    for needed in ["teacher/all-minilm-l6-v2", "data/rotten_tomatoes_corpus_full.csv.bz2"] {
        if !cache.join(needed).exists() {
            eprintln!("{} is missing: run scripts/setup.sh first", cache.join(needed).display());
            std::process::exit(1);
        }
    }
    let server = ApiServer::start().await.expect("bind 127.0.0.1");
    server.install_crds("playground").await.expect("install the Distillery CRDs");
    server.install_gateway_api().await.expect("install the Gateway API CRDs");
    let images = HashMap::from([
        ("distillery-worker".to_string(), workspace_binary("distillery-worker")),
        ("distillery-server".to_string(), workspace_binary("distillery-server")),
    ]);
    let claims = HashMap::from([
        ("models".to_string(), cache.join("teacher")),
        ("datasets".to_string(), cache.join("data")),
        ("artifacts".to_string(), artifacts.clone()),
    ]);
    let cluster = Cluster::start(&server, images, claims, &root.join("cluster")).expect("start the simulated cluster");
    let kubeconfig = root.join("cluster/kubeconfig");
    let log = root.join("operator.log");
    let identity = install_chart_rbac(&server, &root, |_| {}).await.expect("install the chart's RBAC");
    let operator = OperatorProcess::start_as(&identity, &log, &[]);
    println!("export KUBECONFIG={}", kubeconfig.display());
    eprintln!(
        "playground ready: API server {}, operator log {}, pod logs under {}; Ctrl-C to stop",
        server.url(),
        log.display(),
        cluster.pods_root.display()
    );
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    eprintln!("stopping");
    drop(operator);
    drop(cluster);
}
