//! A Kubernetes cluster simulated in process, on top of [`crate::apiserver::ApiServer`]: the Job
//! controller ([`job`]), the Deployment and ReplicaSet controllers ([`deployment`]), a kubelet that
//! runs pods as local processes of our own binaries, each on its own loopback address
//! ([`kubelet`]), a proxy that serves each Service on its loopback clusterIP ([`proxy`]), and a
//! Gateway API implementation that serves each Gateway on a loopback address of its own and
//! routes HTTP requests by HTTPRoute ([`gateway`]). All talk to the API server only through the
//! Kubernetes API, like the real ones. Dropping the [`Cluster`] stops them and kills every process
//! they started.

pub mod deployment;
pub mod gateway;
pub mod job;
pub mod kubelet;
pub mod paths;
pub mod proxy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::apiserver::ApiServer;
pub use kubelet::{KubeletConfig, Processes};

/// The simulated cluster's controllers and kubelet.
pub struct Cluster {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    processes: Processes,
    /// Where pod directories live (logs for diagnostics).
    pub pods_root: PathBuf,
}

impl Cluster {
    /// Starts the controllers, the kubelet, the Service proxy and the gateway against `server`.
    /// `images` maps image repository names to binaries, `claims` PersistentVolumeClaim names to
    /// host directories; pods work under `root` and reach the server with the kubeconfig written
    /// there.
    pub fn start(
        server: &ApiServer,
        images: HashMap<String, PathBuf>,
        claims: HashMap<String, PathBuf>,
        root: &Path,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let kubeconfig = root.join("kubeconfig");
        server.write_kubeconfig(&kubeconfig)?;
        let pods_root = root.join("pods");
        let config = KubeletConfig { images, claims, root: pods_root.clone(), kubeconfig };
        let processes = Processes::default();
        let tasks = vec![
            tokio::spawn(job::run(server.client())),
            tokio::spawn(deployment::run(server.client())),
            tokio::spawn(proxy::run(server.client())),
            tokio::spawn(gateway::run(server.client())),
            tokio::spawn(kubelet::run(server.client(), config, processes.clone())),
        ];
        Ok(Self { tasks, processes, pods_root })
    }

    /// The last lines of every pod's output, for a failing test's message.
    pub fn logs(&self) -> String {
        kubelet::pod_logs(&self.pods_root)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
        self.processes.kill_all();
    }
}

/// Whether `pod` has the `Ready` condition: what Services, ReplicaSets and Jobs count as ready.
pub fn pod_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A binary of this workspace built beside the running test (`target/<profile>/<name>`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build -p {name}` (cargo test --workspace builds it)",
        path.display()
    );
    refuse_stale(name, &path);
    path
}

/// The packages (folders) each workspace binary is built from.
fn binary_packages(name: &str) -> &'static [&'static str] {
    match name {
        "distillery-operator" => &["operator", "crds"],
        "distillery-worker" => &["worker/engine", "worker/model", "worker/store", "crds"],
        "distillery-server" => &["worker/server", "worker/model", "worker/store", "crds"],
        _ => &[],
    }
}

/// Panics when `binary` is older than a source file it is built from: a test must never pass on
/// a stale build (`cargo test -p distillery-tests` alone does not rebuild other packages' binaries).
fn refuse_stale(name: &str, binary: &Path) {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).expect("the binary's modification time");
    let root = crate::repo_root();
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut consider = |path: PathBuf| {
        if let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified())
            && newest.as_ref().is_none_or(|(t, _)| modified > *t)
        {
            newest = Some((modified, path));
        }
    };
    // Sources only: a manifest or lock-file change need not relink the binary (a dev-dependency,
    // an update of a crate it does not use), and then `cargo build` would not make it newer.
    for package in binary_packages(name) {
        let package = root.join(package);
        // `src/` but not other binaries' mains under `src/bin/` (crdgen), which no binary here links.
        for entry in walk(&package.join("src")) {
            if entry.extension().is_some_and(|e| e == "rs") && !entry.starts_with(package.join("src/bin")) {
                consider(entry);
            }
        }
    }
    if let Some((modified, source)) = newest {
        assert!(
            modified <= built,
            "{} is older than {}: run `cargo build -p {name}` (cargo test --workspace builds it)",
            binary.display(),
            source.display()
        );
    }
}

/// Every file under `dir`, recursively (none when it does not exist).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![];
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// How the simulated cluster's own watches retry after an error (a dropped watch, or a kind not
/// served yet, such as the Gateway API's before its CRDs are installed): every half second, so
/// that they pick up a kind within moments of its CRD being installed.
pub(crate) fn retry_backoff() -> RetryEvery {
    RetryEvery(Duration::from_millis(500))
}

/// A constant watch backoff (see [`retry_backoff`]).
pub(crate) struct RetryEvery(Duration);

impl Iterator for RetryEvery {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.0)
    }
}

impl kube::runtime::utils::Backoff for RetryEvery {
    fn reset(&mut self) {}
}
