//! Distillery's test harness: locating the repository and the setup cache, reading example
//! manifests, rendering the Helm chart with Helm's own SDK, a Kubernetes API server in process
//! ([`apiserver`]) and a cluster simulated on top of it ([`cluster`]: the Job controller and a
//! kubelet that runs pods as local processes) — see docs/architecture.md, testing tiers.

pub mod apiserver;
pub mod chart;
pub mod cluster;
pub mod operator;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

pub use distillery_crds::cache::cache_dir;

/// The small DistillationJob the component tests train: `worker/engine/tests/fixtures/small.yaml`.
pub fn small_job_spec() -> PathBuf {
    repo_root().join("worker/engine/tests/fixtures/small.yaml")
}

/// Runs the workspace's `distillery-worker distill -f spec --output output`; panics with the
/// worker's stderr when it fails.
pub fn distill(spec: &Path, output: &Path) {
    let run = std::process::Command::new(cluster::workspace_binary("distillery-worker"))
        .args(["distill", "-f"])
        .arg(spec)
        .arg("--output")
        .arg(output)
        .output()
        .expect("starting distillery-worker");
    assert!(
        run.status.success(),
        "distillery-worker distill -f {} failed:\n{}",
        spec.display(),
        String::from_utf8_lossy(&run.stderr)
    );
}

/// The small job's artifact trained afresh into `dir` (whatever an earlier run left there is
/// replaced); returns `dir`.
pub fn fresh_small_artifact(dir: PathBuf) -> PathBuf {
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    distill(&small_job_spec(), &dir);
    dir
}

/// Whether a `kubectl` client is on the PATH. Without one a test that drives it skips with a
/// message on a developer's machine, and fails under `CI=true`: CI must never pass a test that
/// did not run.
pub fn kubectl_installed() -> bool {
    let installed =
        std::process::Command::new("kubectl").args(["version", "--client"]).output().is_ok_and(|o| o.status.success());
    assert!(
        installed || !ci(),
        "kubectl is not on the PATH and CI is set: the kubectl tests would pass without running (install kubectl 1.32)"
    );
    installed
}

/// Whether the tests run in CI (`CI` set to anything but `false` or empty, as CI services set it).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// A YAML file's documents, parsed to JSON values (empty documents skipped).
pub fn read_documents(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_documents(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a multi-document YAML string into JSON values (empty documents skipped).
pub fn parse_documents(text: &str) -> Result<Vec<Value>, serde_norway::Error> {
    let mut docs = vec![];
    for doc in serde_norway::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The YAML files directly inside `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}
