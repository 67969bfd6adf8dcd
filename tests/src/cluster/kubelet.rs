//! The kubelet of the simulated cluster: runs each pod's (single) container as a local process of
//! one of our own binaries, picked by the image's repository name.
//!
//! What it honours: `args` (and `command` after its first element), `env` (values, the
//! `metadata.name`, `metadata.namespace`, `metadata.uid`, `metadata.labels['KEY']`,
//! `metadata.annotations['KEY']` and `status.podIP` field references, and `secretKeyRef` and
//! `configMapKeyRef`, read with the kubelet's own administrator client: a missing Secret,
//! ConfigMap or key leaves the container waiting with `CreateContainerConfigError` and the real
//! kubelet's message, an `optional` one leaves the variable out; not `envFrom` nor
//! `resourceFieldRef`, which are refused the same way), `emptyDir` and
//! `persistentVolumeClaim` volumes (host directories; container paths in env and args are
//! rewritten, see [`super::paths`]), `restartPolicy` (`Never`, `OnFailure`, `Always`), HTTP
//! readiness probes, the termination-message file (read back into the container's terminated
//! state; the log tail with `FallbackToLogsOnError`). Deleting a pod sends its process group
//! SIGTERM, then SIGKILL after the grace period; a deleted pod with no running container is
//! marked Failed (`ContainerStatusUnknown`), as a kubelet does. A container that cannot be created
//! (waiting with a reason) is tried again every second until it can or its pod goes, its waiting
//! state written only when it changes, so that a pod starts once the Secret it needs exists;
//! dropping the kubelet kills every process it started. Every container gets `HOSTNAME` (the
//! pod's `spec.hostname`, else its name), as a container runtime sets it. The pod gets
//! `KUBECONFIG` for the harness's API server, with the token of the pod's `serviceAccountName`
//! (`default` when unset) in place of a mounted service-account token: under RBAC it has what
//! that account is bound to.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};

use super::paths::PathMap;
use crate::apiserver::store::now;

/// The next pod address: every pod gets its own loopback address in 127.20.0.0/16, so that
/// replicas can listen on the same port, as pods on their own IPs do.
fn next_pod_ip() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("127.20.{}.{}", (n / 250) % 250, n % 250 + 1)
}

/// `$(NAME)` in `text` replaced by the value of NAME among `env` (as the kubelet expands
/// `command`, `args` and later `env` values); unknown names stay as written, `$$` escapes.
pub fn expand_vars(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
            && let Some((_, value)) = env.iter().rev().find(|(k, _)| *k == body[..end])
        {
            out.push_str(value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What the kubelet needs to know about the host.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// Image repository name (`distillery-worker`) → binary.
    pub images: HashMap<String, PathBuf>,
    /// PersistentVolumeClaim name → host directory.
    pub claims: HashMap<String, PathBuf>,
    /// Where pod directories (emptyDirs, logs, termination messages) go.
    pub root: PathBuf,
    /// Kubeconfig handed to pods.
    pub kubeconfig: PathBuf,
}

/// Process groups of running pods, and the pods being deleted, by pod uid.
#[derive(Default, Clone)]
pub struct Processes(Arc<Mutex<ProcessTable>>);

#[derive(Default)]
struct ProcessTable {
    /// Running containers' process groups.
    groups: HashMap<String, u32>,
    /// Process groups sent SIGTERM for a deletion, until they exit (or get SIGKILL).
    stopping: HashMap<String, u32>,
    deleting: std::collections::HashSet<String>,
    /// Set when the harness ends: nothing starts any more.
    closed: bool,
}

impl Processes {
    fn table(&self) -> std::sync::MutexGuard<'_, ProcessTable> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a started container; false (and nothing recorded) when its pod is being deleted or
    /// the harness has ended, so that the caller stops it.
    fn insert(&self, uid: &str, pgid: u32) -> bool {
        let mut table = self.table();
        if table.deleting.contains(uid) || table.closed {
            return false;
        }
        table.groups.insert(uid.to_string(), pgid);
        true
    }

    /// Forgets the pod's process group once its process has exited (so that no signal reaches
    /// another process that reuses the id).
    fn remove(&self, uid: &str) -> Option<u32> {
        let mut table = self.table();
        table.stopping.remove(uid);
        table.groups.remove(uid)
    }

    fn running(&self, uid: &str) -> bool {
        self.table().groups.contains_key(uid)
    }

    /// Marks the pod as being deleted (no container of it starts again) and takes its running
    /// process group, if any.
    fn start_deleting(&self, uid: &str) -> Option<u32> {
        let mut table = self.table();
        table.deleting.insert(uid.to_string());
        let group = table.groups.remove(uid)?;
        table.stopping.insert(uid.to_string(), group);
        Some(group)
    }

    /// Whether `pgid` is still the pod's stopping process group (its process has not exited).
    fn still_stopping(&self, uid: &str, pgid: u32) -> bool {
        self.table().stopping.get(uid) == Some(&pgid)
    }

    fn deleting(&self, uid: &str) -> bool {
        self.table().deleting.contains(uid)
    }

    fn closed(&self) -> bool {
        self.table().closed
    }

    /// Kills every process group, and starts none after (when the harness ends).
    pub fn kill_all(&self) {
        let mut table = self.table();
        table.closed = true;
        let mut all: Vec<u32> = table.groups.drain().map(|(_, g)| g).collect();
        all.extend(table.stopping.drain().map(|(_, g)| g));
        drop(table);
        all.into_iter().for_each(|g| signal_group(g, "KILL"));
    }
}

/// How long a deleted pod's container gets between SIGTERM and SIGKILL: the deletion's grace
/// period, else the pod's `terminationGracePeriodSeconds`, else Kubernetes' default of 30 s.
fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30);
    Duration::from_secs(seconds.max(0) as u64)
}

/// Stops a deleted pod's container as a kubelet does: SIGTERM to its process group, then SIGKILL
/// once the grace period has passed if it is still running (a process that ignores SIGTERM ends
/// all the same).
fn stop_group(processes: &Processes, uid: &str, pgid: u32, grace: Duration) {
    signal_group(pgid, "TERM");
    let (processes, uid) = (processes.clone(), uid.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        if processes.still_stopping(&uid, pgid) {
            signal_group(pgid, "KILL");
        }
    });
}

fn signal_group(pgid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{signal}"), "--".into(), format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Runs the kubelet until the task is aborted.
pub async fn run(client: kube::Client, config: KubeletConfig, processes: Processes) {
    let pods: Api<Pod> = Api::all(client.clone());
    let started: Arc<Mutex<HashMap<String, ()>>> = Arc::default();
    let mut events = std::pin::pin!(watcher::watcher(pods, watcher::Config::default()));
    while let Some(event) = events.next().await {
        let Ok(event) = event else { continue };
        match event {
            Event::Apply(pod) | Event::InitApply(pod) => {
                let uid = pod.uid().unwrap_or_default();
                let terminal = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|p| p == "Succeeded" || p == "Failed");
                if pod.metadata.deletion_timestamp.is_some() {
                    started.lock().unwrap_or_else(|p| p.into_inner()).insert(uid.clone(), ());
                    let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_none_or(|p| p == "Pending");
                    match processes.start_deleting(&uid) {
                        // Its end is reported by `run_pod` when the process exits.
                        Some(g) => stop_group(&processes, &uid, g, grace_period(&pod)),
                        // Its container never ran (no binary, or not started yet): nothing to
                        // stop, so the kubelet marks it terminal itself — else a finalizer (the
                        // Job controller's) would keep it terminating for ever. (A pod between
                        // restarts is marked by `run_pod`.)
                        None if pending => {
                            let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
                            set_status(&pods, &pod.name_any(), never_ran(&pod)).await;
                        }
                        None => {}
                    }
                    continue;
                }
                let first = started.lock().unwrap_or_else(|p| p.into_inner()).insert(uid.clone(), ()).is_none();
                if first && !terminal {
                    tokio::spawn(run_pod(client.clone(), config.clone(), processes.clone(), pod));
                }
            }
            Event::Delete(pod) => {
                let uid = pod.uid().unwrap_or_default();
                if let Some(g) = processes.start_deleting(&uid) {
                    stop_group(&processes, &uid, g, grace_period(&pod));
                }
            }
            Event::Init | Event::InitDone => {}
        }
    }
}

/// Applies a pod status change as the kubelet (merge patch of `/status`); a pod already gone is
/// not an error.
async fn set_status(pods: &Api<Pod>, name: &str, status: Value) {
    let params = PatchParams { field_manager: Some("kubelet".into()), ..Default::default() };
    let _ = pods.patch_status(name, &params, &Patch::Merge(json!({"status": status}))).await;
}

/// The status of a pod deleted before its container ran (or as it started): Failed,
/// its container terminated with 137 and `ContainerStatusUnknown`, as the kubelet reports a
/// container it cannot find at termination.
fn never_ran(pod: &Pod) -> Value {
    let container = pod.spec.as_ref().and_then(|s| s.containers.first());
    let name = container.map(|c| c.name.clone()).unwrap_or_default();
    let image = container.and_then(|c| c.image.clone()).unwrap_or_default();
    let restarts = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count);
    json!({"phase": "Failed", "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now()}],
           "containerStatuses": [{"name": name, "image": image, "imageID": "", "ready": false, "restartCount": restarts,
               "state": {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown",
                   "message": "The container could not be located when the pod was terminated",
                   "startedAt": null, "finishedAt": now()}}}]})
}

fn waiting(container: &str, image: &str, reason: &str, message: &str) -> Value {
    json!({"phase": "Pending", "containerStatuses": [{
        "name": container, "image": image, "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": reason, "message": message}}}]})
}

/// The binary for `image`: its repository's last path segment, without tag or digest.
fn binary_for<'c>(config: &'c KubeletConfig, image: &str) -> Option<&'c PathBuf> {
    let repository = image.split('@').next().unwrap_or(image);
    let last = repository.rsplit('/').next().unwrap_or(repository);
    let name = last.split(':').next().unwrap_or(last);
    config.images.get(name)
}

struct Prepared {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    paths: PathMap,
    termination_file: PathBuf,
    dir: PathBuf,
}

/// How often a pod whose container cannot be created yet is tried again (a Secret or ConfigMap
/// its env names may appear).
const PREPARE_RETRY: Duration = Duration::from_secs(1);

/// Resolves image, volumes, env and args; an error is (reason, message) for the waiting state.
/// Secrets and ConfigMaps are read with the kubelet's own client (the harness's), as a kubelet
/// reads them with the node's identity, not the pod's service account.
async fn prepare(
    config: &KubeletConfig,
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    pod_ip: &str,
) -> Result<Prepared, (String, String)> {
    let image = container.image.clone().unwrap_or_default();
    let program = binary_for(config, &image).cloned().ok_or_else(|| {
        let known: Vec<&String> = config.images.keys().collect();
        (
            "ErrImagePull".to_string(),
            format!("the simulated kubelet has no binary for image {image:?} (it runs: {known:?})"),
        )
    })?;
    let dir = config.root.join(format!(
        "{}_{}_{}",
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        pod.uid().unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| ("CreateContainerError".to_string(), e.to_string()))?;
    let spec = pod.spec.clone().unwrap_or_default();
    let mut volumes: HashMap<String, PathBuf> = HashMap::new();
    for v in spec.volumes.iter().flatten() {
        let host = if v.empty_dir.is_some() {
            dir.join("volumes").join(&v.name)
        } else if let Some(claim) = &v.persistent_volume_claim {
            config.claims.get(&claim.claim_name).cloned().ok_or_else(|| {
                ("ContainerCreating".to_string(), format!("persistentvolumeclaim {:?} not found", claim.claim_name))
            })?
        } else {
            return Err((
                "CreateContainerConfigError".into(),
                format!("volume {:?}: only emptyDir and persistentVolumeClaim are simulated", v.name),
            ));
        };
        std::fs::create_dir_all(&host).map_err(|e| ("CreateContainerError".to_string(), e.to_string()))?;
        volumes.insert(v.name.clone(), host);
    }
    let mut paths = PathMap::default();
    for m in container.volume_mounts.iter().flatten() {
        let host = volumes.get(&m.name).ok_or_else(|| {
            ("CreateContainerConfigError".to_string(), format!("volumeMount {:?} names no volume", m.name))
        })?;
        paths.add(&m.mount_path, host);
    }
    let termination_path = container.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
    let termination_file = dir.join("termination-log");
    let _ = std::fs::remove_file(&termination_file);
    paths.add(&termination_path, &termination_file);
    let account = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
    let kubeconfig = dir.join("kubeconfig");
    let token = crate::apiserver::rbac::service_account_token(&pod.namespace().unwrap_or_default(), &account);
    let text = std::fs::read_to_string(&config.kubeconfig)
        .map_err(|e| ("CreateContainerError".to_string(), format!("{}: {e}", config.kubeconfig.display())))?;
    std::fs::write(&kubeconfig, text.replace("token: harness", &format!("token: {token}")))
        .map_err(|e| ("CreateContainerError".to_string(), e.to_string()))?;
    let mut env = vec![
        ("PATH".to_string(), std::env::var("PATH").unwrap_or_default()),
        ("HOME".to_string(), dir.display().to_string()),
        // What a container runtime sets: the pod's hostname (`<job>-<index>` for an Indexed Job's).
        ("HOSTNAME".to_string(), hostname(pod)),
        ("KUBECONFIG".to_string(), kubeconfig.display().to_string()),
        // Pods share the host's network here, each on its own loopback address: what a network
        // namespace gives a real pod (its own 0.0.0.0), the server gets by binding that address.
        // The container's own env still wins.
        ("DISTILLERY_ADDRESS".to_string(), pod_ip.to_string()),
    ];
    // The worker and server images set ORT_DYLIB_PATH to the ONNX Runtime they ship
    // (docker/*.Dockerfile); here that is the library the setup fetched.
    let setup_ort = distillery_crds::cache::cache_dir().join("onnxruntime/libonnxruntime.so.1.31.1");
    let ort =
        std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).or_else(|| setup_ort.is_file().then_some(setup_ort));
    if let Some(lib) = ort {
        env.push(("ORT_DYLIB_PATH".to_string(), lib.display().to_string()));
    }
    if container.env_from.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(("CreateContainerConfigError".into(), "envFrom is not simulated".into()));
    }
    let namespace = pod.namespace().unwrap_or_default();
    let mut sources = KeySources::default();
    for e in container.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => paths.to_host(&expand_vars(v, &env)),
            (None, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    field_value(pod, &field.field_path, pod_ip).ok_or_else(|| {
                        (
                            "CreateContainerConfigError".to_string(),
                            format!(
                                "env {:?}: only metadata.name, metadata.namespace, metadata.uid, metadata.labels['KEY'], metadata.annotations['KEY'] and status.podIP field references are simulated",
                                e.name
                            ),
                        )
                    })?
                } else if let Some(key) = &from.secret_key_ref {
                    let optional = key.optional == Some(true);
                    match sources.secret(client, &namespace, &key.name, &key.key, optional).await? {
                        Some(value) => value,
                        None => continue,
                    }
                } else if let Some(key) = &from.config_map_key_ref {
                    let optional = key.optional == Some(true);
                    match sources.config_map(client, &namespace, &key.name, &key.key, optional).await? {
                        Some(value) => value,
                        None => continue,
                    }
                } else {
                    return Err((
                        "CreateContainerConfigError".into(),
                        format!(
                            "env {:?}: only values, field, secretKeyRef and configMapKeyRef references are simulated",
                            e.name
                        ),
                    ));
                }
            }
            (None, None) => String::new(),
        };
        env.push((e.name.clone(), value));
    }
    let mut args: Vec<String> = container.command.iter().flatten().skip(1).cloned().collect();
    args.extend(container.args.iter().flatten().cloned());
    let args = args.iter().map(|a| paths.to_host(&expand_vars(a, &env))).collect();
    Ok(Prepared { program, args, env, paths, termination_file, dir })
}

/// The value of a downward-API field reference, as the kubelet resolves it (a label or annotation
/// that is missing is empty); `None` for a field the simulation does not resolve.
fn field_value(pod: &Pod, path: &str, pod_ip: &str) -> Option<String> {
    let subscript = |prefix: &str| path.strip_prefix(prefix)?.strip_suffix("']");
    if let Some(key) = subscript("metadata.labels['") {
        return Some(pod.labels().get(key).cloned().unwrap_or_default());
    }
    if let Some(key) = subscript("metadata.annotations['") {
        return Some(pod.annotations().get(key).cloned().unwrap_or_default());
    }
    match path {
        "metadata.name" => Some(pod.name_any()),
        "metadata.namespace" => Some(pod.namespace().unwrap_or_default()),
        "metadata.uid" => Some(pod.uid().unwrap_or_default()),
        "status.podIP" => Some(pod_ip.to_string()),
        _ => None,
    }
}

/// A pod's hostname, as the kubelet makes it: `spec.hostname`, else the pod's name cut to 63
/// characters, without a trailing `-` or `.`.
fn hostname(pod: &Pod) -> String {
    if let Some(name) = pod.spec.as_ref().and_then(|s| s.hostname.clone()).filter(|h| !h.is_empty()) {
        return name;
    }
    let name = pod.name_any();
    name[..name.len().min(63)].trim_end_matches(['-', '.']).to_string()
}

/// The Secrets and ConfigMaps one attempt at a container's env has read, each read once (as the
/// kubelet does): `None` for one that does not exist.
#[derive(Default)]
struct KeySources {
    secrets: HashMap<String, Option<Secret>>,
    config_maps: HashMap<String, Option<ConfigMap>>,
}

impl KeySources {
    /// A `secretKeyRef`'s value, in the real kubelet's words when it cannot be had; `None` when
    /// it is optional and its Secret or key is missing (the variable is left out).
    async fn secret(
        &mut self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
        key: &str,
        optional: bool,
    ) -> Result<Option<String>, (String, String)> {
        let secret = match self.secrets.get(name) {
            Some(s) => s.clone(),
            None => {
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                let read = api.get_opt(name).await.map_err(config_error)?;
                self.secrets.insert(name.to_string(), read.clone());
                read
            }
        };
        let Some(secret) = secret else {
            return if optional { Ok(None) } else { Err(config_error(format!("secret \"{name}\" not found"))) };
        };
        match secret.data.as_ref().and_then(|d| d.get(key)) {
            Some(bytes) => Ok(Some(String::from_utf8_lossy(&bytes.0).into_owned())),
            None if optional => Ok(None),
            None => Err(config_error(format!("couldn't find key {key} in Secret {namespace}/{name}"))),
        }
    }

    /// A `configMapKeyRef`'s value (from `data`), as [`Self::secret`].
    async fn config_map(
        &mut self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
        key: &str,
        optional: bool,
    ) -> Result<Option<String>, (String, String)> {
        let config_map = match self.config_maps.get(name) {
            Some(c) => c.clone(),
            None => {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                let read = api.get_opt(name).await.map_err(config_error)?;
                self.config_maps.insert(name.to_string(), read.clone());
                read
            }
        };
        let Some(config_map) = config_map else {
            return if optional { Ok(None) } else { Err(config_error(format!("configmap \"{name}\" not found"))) };
        };
        match config_map.data.as_ref().and_then(|d| d.get(key)) {
            Some(value) => Ok(Some(value.clone())),
            None if optional => Ok(None),
            None => Err(config_error(format!("couldn't find key {key} in ConfigMap {namespace}/{name}"))),
        }
    }
}

fn config_error(message: impl ToString) -> (String, String) {
    ("CreateContainerConfigError".to_string(), message.to_string())
}

async fn run_pod(client: kube::Client, config: KubeletConfig, processes: Processes, pod: Pod) {
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let spec = pod.spec.clone().unwrap_or_default();
    let Some(container) = spec.containers.first().cloned() else { return };
    let image = container.image.clone().unwrap_or_default();
    let pod_ip = next_pod_ip();
    // A container that cannot be created yet is tried again, as a kubelet does, until it can or
    // its pod goes; its waiting state is written only when it changes.
    let mut shown: Option<(String, String)> = None;
    let prepared = loop {
        match prepare(&config, &client, &pod, &container, &pod_ip).await {
            Ok(p) => break p,
            // (Unless it is being deleted: then it was marked Failed, and a terminal phase stays.)
            Err(_) if processes.deleting(&uid) || processes.closed() => return,
            Err(why) => {
                if shown.as_ref() != Some(&why) {
                    set_status(&pods, &name, waiting(&container.name, &image, &why.0, &why.1)).await;
                    shown = Some(why);
                }
            }
        }
        tokio::time::sleep(PREPARE_RETRY).await;
        // A deletion the watch did not show (it may miss one while it reconnects) ends it too.
        match pods.get_opt(&name).await {
            Ok(Some(current)) if current.uid() == pod.uid() && current.metadata.deletion_timestamp.is_none() => {}
            Ok(_) => return,
            Err(_) => {}
        }
        if processes.deleting(&uid) || processes.closed() {
            return;
        }
    };
    let restart = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
    let start_time = now();
    let mut restarts = 0;
    loop {
        let log =
            |n: &str| std::fs::File::create(prepared.dir.join(n)).map(Stdio::from).unwrap_or_else(|_| Stdio::null());
        let mut command = tokio::process::Command::new(&prepared.program);
        command.args(&prepared.args).env_clear().envs(prepared.env.iter().cloned()).current_dir(&prepared.dir);
        command
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .process_group(0)
            .kill_on_drop(false);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                let message = format!("cannot start {}: {e}", prepared.program.display());
                if !processes.deleting(&uid) {
                    set_status(&pods, &name, waiting(&container.name, &image, "CreateContainerError", &message)).await;
                }
                return;
            }
        };
        let pgid = child.id().unwrap_or_default();
        if !processes.insert(&uid, pgid) {
            // Deleted while it started: stop what started and mark the pod terminal.
            signal_group(pgid, "KILL");
            let _ = child.wait().await;
            return set_status(&pods, &name, never_ran(&pod)).await;
        }
        let running_since = now();
        let running = |ready: bool| {
            json!({"phase": "Running", "startTime": start_time, "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "hostIP": "127.0.0.1",
                   "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}, "lastTransitionTime": now()},
                                  {"type": "ContainersReady", "status": if ready {"True"} else {"False"}, "lastTransitionTime": now()}],
                   "containerStatuses": [{"name": container.name, "image": image, "imageID": "", "ready": ready,
                                          "started": true, "restartCount": restarts,
                                          "state": {"running": {"startedAt": running_since}}}]})
        };
        let probe = container.readiness_probe.as_ref().and_then(|p| p.http_get.clone());
        set_status(&pods, &name, running(probe.is_none())).await;
        let exit = match probe {
            None => child.wait().await,
            Some(get) => {
                let port = match &get.port {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p as u16,
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => container
                        .ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some(name.as_str()))
                        .map_or(0, |p| p.container_port as u16),
                };
                let path = get.path.clone().unwrap_or_else(|| "/".into());
                let wait = child.wait();
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        status = &mut wait => break status,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {
                            if probe_ok(&pod_ip, port, &path).await {
                                set_status(&pods, &name, running(true)).await;
                                break (&mut wait).await;
                            }
                        }
                    }
                }
            }
        };
        let killed = !processes.running(&uid) || processes.deleting(&uid);
        processes.remove(&uid);
        // A process ended by a signal exits with 128 + the signal's number, as a container runtime
        // reports it (143 after SIGTERM, 137 after SIGKILL).
        let code = match &exit {
            Ok(s) => s.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(s).unwrap_or(9)),
            Err(_) => 128,
        };
        // The kubelet reads at most the last 4,096 bytes of the file, and, falling back to the
        // logs, at most their last 80 lines and 2,048 bytes.
        let file = std::fs::read(&prepared.termination_file).unwrap_or_default();
        let mut message = String::from_utf8_lossy(last_bytes(&file, TERMINATION_MESSAGE_MAX)).into_owned();
        if message.trim().is_empty()
            && code != 0
            && container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
        {
            let log = std::fs::read_to_string(prepared.dir.join("stderr.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            message = String::from_utf8_lossy(last_bytes(tail.as_bytes(), TERMINATION_LOG_TAIL_MAX)).into_owned();
        }
        let message = prepared.paths.to_container(&message);
        let again = !killed
            && match restart.as_str() {
                "Always" => true,
                "OnFailure" => code != 0,
                _ => false,
            };
        let terminated = json!({"exitCode": code, "reason": if code == 0 {"Completed"} else {"Error"},
                                "message": message, "startedAt": running_since, "finishedAt": now()});
        if again {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Deleted between restarts: it ends here, marked terminal below.
            if !processes.deleting(&uid) {
                restarts += 1;
                continue;
            }
        }
        // A pod deleted while it ran ends too: its container was stopped, and the pod is marked
        // terminal before it is removed, so that whoever tracks it (the Job controller's
        // finalizer) sees how it ended — Failed when the signal ended it, Succeeded when its
        // process still exited 0 (as a kubelet since 1.27 reports it).
        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        let status = json!({"phase": phase, "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now()}],
                            "containerStatuses": [{"name": container.name, "image": image, "imageID": "", "ready": false,
                                                   "restartCount": restarts, "state": {"terminated": terminated}}]});
        return set_status(&pods, &name, status).await;
    }
}

/// The most of a termination-message file the kubelet reads (its last bytes).
pub const TERMINATION_MESSAGE_MAX: usize = 4096;
/// The most of a log tail the kubelet uses as a termination message (`FallbackToLogsOnError`).
pub const TERMINATION_LOG_TAIL_MAX: usize = 2048;

/// The last `max` bytes of `bytes`.
fn last_bytes(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[bytes.len().saturating_sub(max)..]
}

/// An HTTP GET on `ip`:`port` answered with a 2xx status.
async fn probe_ok(ip: &str, port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect((ip, port))).await
    else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    matches!(tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut head)).await, Ok(Ok(_)))
        && head.starts_with(b"HTTP/1.")
        && head[9] == b'2'
}

/// A pod's log files, for test diagnostics.
pub fn pod_logs(root: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for file in ["stdout.log", "stderr.log"] {
            if let Ok(text) = std::fs::read_to_string(entry.path().join(file)) {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                out.push_str(&format!(
                    "--- {} {file}\n{}\n",
                    entry.file_name().to_string_lossy(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_and_annotation_references_resolve_and_a_missing_key_is_empty() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "shards-1-abcde", "namespace": "ml", "uid": "u-1",
                         "labels": {"batch.kubernetes.io/job-completion-index": "1"},
                         "annotations": {"note": "x"}},
            "spec": {"hostname": "shards-1", "containers": [{"name": "main", "image": "shell:1"}]}
        }))
        .unwrap();
        let value = |path: &str| field_value(&pod, path, "127.20.0.1");
        assert_eq!(value("metadata.labels['batch.kubernetes.io/job-completion-index']").as_deref(), Some("1"));
        assert_eq!(value("metadata.annotations['note']").as_deref(), Some("x"));
        assert_eq!(value("metadata.annotations['absent']").as_deref(), Some(""));
        assert_eq!(value("metadata.uid").as_deref(), Some("u-1"));
        assert_eq!(value("spec.nodeName"), None, "not simulated: refused");
        assert_eq!(hostname(&pod), "shards-1");
        let mut unnamed = pod.clone();
        unnamed.spec.as_mut().unwrap().hostname = None;
        assert_eq!(hostname(&unnamed), "shards-1-abcde");
    }

    #[test]
    fn dependent_variables_expand_as_the_kubelet_does() {
        let env = vec![("POD_IP".to_string(), "127.20.0.1".to_string())];
        assert_eq!(
            expand_vars("--address=$(POD_IP) $(NOPE) $$(POD_IP)", &env),
            "--address=127.20.0.1 $(NOPE) $(POD_IP)"
        );
    }
}
