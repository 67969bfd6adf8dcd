//! The operator binary's command line: what a user sees before any cluster is involved.

use std::process::Command;

fn operator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_distillery-operator"))
}

#[test]
fn without_a_cluster_configuration_it_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = operator()
        .args(["run", "--http-port", "0"])
        .env("KUBECONFIG", dir.path().join("missing-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot configure a Kubernetes client"), "{stderr}");
}

#[test]
fn every_flag_names_its_environment_variable() {
    let out = operator().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in ["DISTILLERY_HTTP_PORT", "DISTILLERY_LEADER_ELECTION", "DISTILLERY_WORKER_IMAGE", "POD_NAME"] {
        assert!(help.contains(var), "{var} missing from\n{help}");
    }
}
