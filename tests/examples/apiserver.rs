//! Serves the in-process API server on its own, with the Distillery CRDs installed, for trying
//! `kubectl` against it:
//!
//! ```text
//! cargo run -p distillery-tests --example apiserver -- /tmp/harness.kubeconfig
//! KUBECONFIG=/tmp/harness.kubeconfig kubectl get crds
//! ```

#[tokio::main]
async fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "harness.kubeconfig".into());
    let server = distillery_tests::apiserver::ApiServer::start().await.expect("bind 127.0.0.1");
    server.write_kubeconfig(std::path::Path::new(&path)).expect("write the kubeconfig");
    server.install_crds("harness").await.expect("install the CRDs");
    eprintln!("serving {} — KUBECONFIG={path}; Ctrl-C to stop", server.url());
    let _ = tokio::signal::ctrl_c().await;
}
