//! Cluster tests: the operator binary against the in-process API server and simulated cluster,
//! with the worker's pod running the real `distillery-worker` on a small job over the real teacher
//! and data (from the setup cache).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use distillery_crds::DistillationJob;
use distillery_crds::distillation::JobPhase;
use distillery_tests::apiserver::ApiServer;
use distillery_tests::cluster::{Cluster, pod_ready, workspace_binary};
use distillery_tests::identity::{OperatorIdentity, RELEASE_NAMESPACE, install_chart_rbac, remove_rule};
use distillery_tests::operator::OperatorProcess as Operator;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

struct Harness {
    server: ApiServer,
    cluster: Cluster,
    root: tempfile::TempDir,
    artifacts: PathBuf,
    /// The operator's chart identity; RBAC is enforced.
    identity: OperatorIdentity,
}

impl Harness {
    async fn start() -> Self {
        let server = ApiServer::start().await.unwrap();
        let root = tempfile::tempdir().unwrap();
        let cache = distillery_tests::cache_dir();
        let artifacts = root.path().join("claims/artifacts");
        let images = HashMap::from([("distillery-worker".to_string(), workspace_binary("distillery-worker"))]);
        let claims = HashMap::from([
            ("models".to_string(), cache.join("teacher")),
            ("datasets".to_string(), cache.join("data")),
            ("artifacts".to_string(), artifacts.clone()),
        ]);
        let cluster = Cluster::start(&server, images, claims, &root.path().join("cluster")).unwrap();
        server.install_crds("kubectl").await.unwrap();
        let identity = install_chart_rbac(&server, root.path(), |_| {}).await.unwrap();
        Self { server, cluster, root, artifacts, identity }
    }

    /// The operator as the chart runs it (its ServiceAccount, under RBAC), logging to `log`.
    fn operator(&self, log: &Path) -> Operator {
        Operator::start_as(&self.identity, log, &[])
    }

    fn kubeconfig(&self) -> PathBuf {
        self.root.path().join("cluster/kubeconfig")
    }

    fn operator_log(&self) -> PathBuf {
        self.root.path().join("operator.log")
    }

    fn diagnostics(&self) -> String {
        format!(
            "operator log:\n{}\npods:\n{}",
            std::fs::read_to_string(self.operator_log()).unwrap_or_default(),
            self.cluster.logs()
        )
    }
}

/// The small job the component tests train (`worker/engine/tests/fixtures/small.yaml`), reading
/// its teacher and data from, and writing to, the claims the harness maps.
fn small_job(name: &str) -> Value {
    let mut job = distillery_tests::read_documents(&distillery_tests::small_job_spec()).unwrap().remove(0);
    job["metadata"] = json!({"name": name, "namespace": "default"});
    let spec = &mut job["spec"];
    spec["teacher"]["uri"] = json!("file:///models/all-minilm-l6-v2");
    spec["teacher"]["volumeClaim"] = json!("models");
    spec["dataset"]["uri"] = json!("file:///data/rotten_tomatoes_corpus_full.csv.bz2");
    spec["dataset"]["volumeClaim"] = json!("datasets");
    spec["output"] = json!({"uri": format!("file:///artifacts/{name}"), "volumeClaim": "artifacts"});
    spec["backoffLimit"] = json!(2);
    job
}

/// The directory a run of `dj` writes under its `output.uri`, as the CRD documents it:
/// `g<metadata.generation>-<first 8 hex digits of metadata.uid>`.
fn run_id(dj: &DistillationJob) -> String {
    let uid = dj.metadata.uid.as_deref().expect("metadata.uid");
    let hex: String = uid.chars().filter(char::is_ascii_hexdigit).take(8).collect();
    assert_eq!(hex.len(), 8, "{uid}");
    format!("g{}-{hex}", dj.metadata.generation.expect("metadata.generation"))
}

async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>, harness: &Harness) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", harness.diagnostics());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distillation_job_runs_to_success_reports_progress_goes_quiet_and_cleans_up() {
    let h = Harness::start().await;
    let _operator = h.operator(&h.operator_log());
    let djs: Api<DistillationJob> = Api::default_namespaced(h.server.client());
    let name = "small";
    // Applied with kubectl, as a user would; `kubectl wait` sees it succeed.
    let file = h.root.path().join("small.yaml");
    std::fs::write(&file, serde_norway::to_string(&small_job(name)).unwrap()).unwrap();
    let kubectl = |args: Vec<String>| {
        let kubeconfig = h.kubeconfig();
        tokio::task::spawn_blocking(move || Command::new("kubectl").args(args).env("KUBECONFIG", kubeconfig).output())
    };
    let waited = if distillery_tests::kubectl_installed() {
        let applied = kubectl(vec!["apply".into(), "--server-side".into(), "-f".into(), file.display().to_string()])
            .await
            .unwrap()
            .unwrap();
        assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
        Some(kubectl(
            ["wait", "--for=jsonpath={.status.phase}=Succeeded", "dj/small", "--timeout=900s"]
                .map(String::from)
                .to_vec(),
        ))
    } else {
        eprintln!("kubectl is not installed: applying with the client instead");
        djs.patch(name, &PatchParams::apply("kubectl"), &Patch::Apply(small_job(name))).await.unwrap();
        None
    };

    // Progress shows while it runs; then Succeeded.
    let mut saw_progress = None;
    let mut saw_running = false;
    let done = wait_for(
        "the DistillationJob to succeed",
        Duration::from_secs(900),
        async || {
            let dj = djs.get(name).await.ok()?;
            let status = dj.status.clone()?;
            let phase = serde_json::to_value(status.phase).ok()?;
            saw_running |= phase == "Running";
            if let Some(p) = status.progress.as_ref().filter(|p| p.step.is_some()) {
                saw_progress = Some(p.clone());
            }
            assert_ne!(phase, "Failed", "{status:?}\n{}", h.diagnostics());
            (phase == "Succeeded").then_some(dj)
        },
        &h,
    )
    .await;
    assert!(saw_running, "the phase was Running while the pod ran");
    if let Some(waited) = waited {
        let out = waited.await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("condition met"),
            "kubectl wait: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let progress = saw_progress.expect("status.progress showed training steps while the worker ran");
    assert!(progress.total_steps.unwrap() >= progress.step.unwrap());

    let run = run_id(&done);
    let status = done.status.unwrap();
    let result = status.result.expect("status.result");
    assert_eq!(
        result.artifact_uri,
        format!("file:///artifacts/small/{run}"),
        "the container's path, not the host's, in a directory of this run's own"
    );
    let artifact = h.artifacts.join(name).join(&run);
    let written: Vec<_> = std::fs::read_dir(h.artifacts.join(name)).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(written, [run.as_str()], "nothing is written beside the run's directory");
    let manifest = artifact.join("distillery.json");
    let digest = distillery_worker_digest(&manifest);
    assert_eq!(result.artifact_digest, digest, "the digest is the manifest's sha256");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    distillery_tests::assert_small_student_learned(&manifest["metrics"]);
    let accuracy = result.student.accuracy.unwrap();
    assert!(
        (accuracy - manifest["metrics"]["studentAccuracy"].as_f64().unwrap()).abs() < 1e-9,
        "status has the manifest's figure"
    );
    assert!(result.student.parameters > 0 && result.teacher.parameters > result.student.parameters);
    // The pod exported and quantized the student (ONNX Runtime from the worker image's
    // ORT_DYLIB_PATH); the status says which variant is served and why.
    let int8 = result.int8.as_ref().expect("status.result.int8: the int8 figures");
    let served = result.served_variant.as_deref().expect("status.result.servedVariant");
    assert_eq!(served, if int8.passed_gate { "int8" } else { "fp32" });
    assert!(!result.served_variant_reason.as_deref().unwrap_or_default().is_empty());
    assert!(artifact.join("model.onnx").is_file());
    let complete = distillery_crds::conditions::find(&status.conditions, "Complete").unwrap();
    assert_eq!(complete.status, "True");
    let jobs: Api<Job> = Api::default_namespaced(h.server.client());
    assert_eq!(jobs.list(&ListParams::default()).await.unwrap().items.len(), 1, "one Job");

    // Settled: a quiet period sees no write from anyone, the operator included.
    let after = h.server.writes_in_quiet_period(Duration::from_secs(2), Duration::from_secs(5)).await;
    assert!(after.is_empty(), "writes during the quiet period: {after:?}");

    // The Job deleted by hand (or by a TTL): the finished DistillationJob is not run again and
    // keeps its result.
    jobs.delete("small-distill", &DeleteParams::background()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(jobs.list(&ListParams::default()).await.unwrap().items.is_empty(), "no new Job");
    let kept = djs.get(name).await.unwrap().status.unwrap();
    assert_eq!(serde_json::to_value(kept.phase).unwrap(), "Succeeded");
    assert!(kept.result.is_some(), "the result stays");

    // Deleting the DistillationJob removes its Job and pods.
    djs.delete(name, &DeleteParams::default()).await.unwrap();
    let pods: Api<Pod> = Api::default_namespaced(h.server.client());
    wait_for(
        "the Job and its pods to be collected",
        Duration::from_secs(30),
        async || {
            let jobs_left = jobs.list(&ListParams::default()).await.ok()?.items.len();
            let pods_left = pods.list(&ListParams::default()).await.ok()?.items.len();
            (jobs_left == 0 && pods_left == 0).then_some(())
        },
        &h,
    )
    .await;
}

/// The operator under API faults: while the small job runs, one in three of the operator's patches
/// (its server-side applies of the Job, the worker's ServiceAccount and RoleBinding, and status)
/// gets a 500, one in five a 409, one in two of its creates (Events) a 500, and every open watch is
/// dropped every two seconds. The job ends as it does without faults (Succeeded, with its result),
/// one Job and one pod are made, the operator's request rate stays bounded (no hot loop), and
/// once the faults stop nobody writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_api_faults_a_distillation_job_converges_without_duplicates_or_a_hot_loop() {
    let h = Harness::start().await;
    let operator = h.identity.token.clone();
    h.server.inject_write_faults(&operator);
    let _operator = h.operator(&h.operator_log());
    let streams = h.server.watch_streams(&operator).await;
    let djs: Api<DistillationJob> = Api::default_namespaced(h.server.client());
    let name = "faulty";
    djs.patch(name, &PatchParams::apply("kubectl"), &Patch::Apply(&small_job(name))).await.unwrap();
    let started = Instant::now();
    let dropper = h.server.drop_watches_every(Duration::from_secs(2));
    let done = wait_for(
        "the DistillationJob to succeed under faults",
        Duration::from_secs(900),
        async || {
            let dj = djs.get(name).await.ok()?;
            let phase = serde_json::to_value(dj.status.as_ref()?.phase).ok()?;
            assert_ne!(phase, "Failed", "{:?}\n{}", dj.status, h.diagnostics());
            (phase == "Succeeded" && dj.status.as_ref()?.result.is_some()).then_some(dj)
        },
        &h,
    )
    .await;
    let run_time = started.elapsed();
    let drops = dropper.rounds();
    drop(dropper);
    h.server.clear_faults();

    // The same end as without faults: Complete, the result, one Job, one pod — each created once
    // (a Job deleted and made again would pass a final count).
    let run = run_id(&done);
    let status = done.status.unwrap();
    assert!(distillery_crds::conditions::is_true(&status.conditions, "Complete"), "{status:?}");
    let result = status.result.unwrap();
    assert_eq!(result.artifact_uri, format!("file:///artifacts/{name}/{run}"));
    let jobs: Api<Job> = Api::default_namespaced(h.server.client());
    assert_eq!(jobs.list(&ListParams::default()).await.unwrap().items.len(), 1, "one Job");
    let pods: Api<Pod> = Api::default_namespaced(h.server.client());
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 1, "one pod");
    let again = h.server.created_more_than_once();
    assert!(again.is_empty(), "created more than once: {again:?}");

    // Bounded: the operator's requests per second, over the run and in its busiest second.
    // Measured (Intel Xeon, 2 cores): 1,141 requests in 144 s — 936 watches over 71 drops of 13
    // streams, 72 lists, 89 gets, 11 patches, 5 creates —, 19 in the busiest second.
    let profile = h.server.request_profile(&operator, started, run_time);
    eprintln!("under faults: {profile}; {drops} drops of {streams} watch streams");
    profile.assert_bounded(drops, streams);
    assert!(profile.count("patch") >= 5, "too few patches for the faults to have been met: {profile}");

    // Quiet once the faults stop.
    let after = h.server.writes_in_quiet_period(Duration::from_secs(3), Duration::from_secs(5)).await;
    assert!(after.is_empty(), "writes during the quiet period: {after:?}");
}

fn distillery_worker_digest(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The pods' stderr, concatenated, for what the workers reported.
fn worker_events(cluster_root: &Path) -> Vec<Value> {
    let mut events = vec![];
    for entry in std::fs::read_dir(cluster_root.join("pods")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path().join("stderr.log")).unwrap_or_default();
        events.extend(text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()));
    }
    events
}

/// A DistillationJob named with all 253 characters a name may have, whose dataset does not exist:
/// the Job's labels fit a real API server's 63 characters (the harness refuses longer ones, as a
/// cluster does), and the worker's permanent failure (exit 2) fails the Job at once through its
/// `podFailurePolicy`, without the retries that would each prepare the teacher again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_named_job_runs_and_a_spec_the_worker_refuses_fails_at_once_with_its_message() {
    let h = Harness::start().await;
    let _operator = h.operator(&h.operator_log());
    let djs: Api<DistillationJob> = Api::default_namespaced(h.server.client());
    let name = format!("{}.refused", "a".repeat(245));
    assert_eq!(name.len(), 253);
    let mut job = small_job(&name);
    job["spec"]["dataset"]["uri"] = json!("file:///data/no-such-reviews.csv");
    job["spec"]["backoffLimit"] = json!(3);
    djs.patch(&name, &PatchParams::apply("kubectl"), &Patch::Apply(&job)).await.unwrap();
    let status = wait_for(
        "the DistillationJob to fail",
        Duration::from_secs(120),
        async || djs.get(&name).await.ok()?.status.filter(|s| s.phase == Some(JobPhase::Failed)),
        &h,
    )
    .await;
    let failed = distillery_crds::conditions::find(&status.conditions, "Failed").unwrap();
    assert_eq!(failed.reason, "WorkerRefusedSpec", "{failed:?}");
    assert!(
        failed.message.contains("no-such-reviews.csv") && failed.message.contains("exit code 2"),
        "{}",
        failed.message
    );
    let pods: Api<Pod> = Api::default_namespaced(h.server.client());
    let attempts = pods.list(&ListParams::default()).await.unwrap().items.len();
    assert_eq!(attempts, 1, "one attempt, not backoffLimit + 1");
    let jobs: Api<Job> = Api::default_namespaced(h.server.client());
    let made = jobs.list(&ListParams::default()).await.unwrap().items;
    let labels = made[0].metadata.labels.clone().unwrap();
    assert!(labels.values().all(|v| v.len() <= 63), "{labels:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_resumes_from_its_checkpoint_and_a_restarted_operator_makes_no_second_job() {
    // The replacement pod waits the Job controller's retry backoff: 1 s here instead of a real
    // cluster's 10 s (the job_controller tests check the real delays' shape). For every Job of
    // this test binary from now on; no other test here asserts on a retry's delay.
    distillery_tests::cluster::job::scale_backoff(Duration::from_secs(1));
    let h = Harness::start().await;
    let operator = h.operator(&h.operator_log());
    let djs: Api<DistillationJob> = Api::default_namespaced(h.server.client());
    let name = "resumed";
    let mut job = small_job(name);
    job["spec"]["training"]["epochs"] = json!(3);
    let applied = djs.patch(name, &PatchParams::apply("kubectl"), &Patch::Apply(&job)).await.unwrap();
    let run = run_id(&applied);

    // Wait for the student's first checkpoint, then kill the operator and the worker's pod.
    let checkpoints = h.artifacts.join(name).join(&run).join("checkpoints/student");
    wait_for(
        "a student checkpoint",
        Duration::from_secs(600),
        async || std::fs::read_dir(&checkpoints).ok()?.next().map(|_| ()),
        &h,
    )
    .await;
    drop(operator);
    let pods: Api<Pod> = Api::default_namespaced(h.server.client());
    let first = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(first.len(), 1);
    pods.delete(&kube::ResourceExt::name_any(&first[0]), &DeleteParams::default()).await.unwrap();

    // A new operator picks the job up where the first left it.
    let _operator = h.operator(&h.root.path().join("operator-2.log"));
    let done = wait_for(
        "the DistillationJob to succeed after the restarts",
        Duration::from_secs(900),
        async || {
            let dj = djs.get(name).await.ok()?;
            let phase = serde_json::to_value(dj.status.as_ref()?.phase).ok()?;
            assert_ne!(phase, "Failed", "{:?}\n{}", dj.status, h.diagnostics());
            (phase == "Succeeded").then_some(dj)
        },
        &h,
    )
    .await;
    let jobs: Api<Job> = Api::default_namespaced(h.server.client());
    assert_eq!(jobs.list(&ListParams::default()).await.unwrap().items.len(), 1, "no second Job");
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 1, "one replacement pod, which succeeded");
    let resumed: Vec<Value> = worker_events(&h.root.path().join("cluster"))
        .into_iter()
        .filter(|e| e["event"] == "resumed" && e["run"] == "student")
        .collect();
    assert_eq!(resumed.len(), 1, "the second worker resumed the student from its checkpoint\n{}", h.diagnostics());
    assert!(resumed[0]["step"].as_u64().unwrap() >= 5);
    // The teacher cache is on the output claim: the second worker reused the teacher the first
    // one prepared instead of preparing it again.
    let teacher_stages: Vec<String> = worker_events(&h.root.path().join("cluster"))
        .into_iter()
        .filter(|e| e["event"] == "stage" && e["stage"] == "preparing-teacher")
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect();
    let prepared = teacher_stages.iter().filter(|m| m.starts_with("preparing the teacher")).count();
    let reused = teacher_stages.iter().filter(|m| m.starts_with("reusing the prepared teacher")).count();
    assert_eq!((prepared, reused), (1, 1), "prepared once, reused by the retry: {teacher_stages:?}");
    assert!(h.artifacts.join(".distillery-cache/teachers").is_dir(), "the cache is beside the artifacts");
    let status = done.status.unwrap();
    assert_eq!(
        status.result.unwrap().artifact_uri,
        format!("file:///artifacts/{name}/{run}"),
        "the retried pod wrote where the first one checkpointed"
    );
    assert!(distillery_crds::conditions::is_true(&status.conditions, "Complete"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_distillation_jobs_and_two_hundred_model_deployments_settle() {
    const COUNT: usize = 1000;
    const MDEPS: usize = 200;
    // No kubelet: the Jobs are suspended, nothing runs; each ModelDeployment waits for its
    // (suspended) DistillationJob, settled with ModelReady=False.
    let (server, root, identity) = harness_without_kubelet().await;
    let log = root.path().join("operator.log");
    let operator = Operator::start_as(&identity, &log, &[]);
    let djs: Api<DistillationJob> = Api::default_namespaced(server.client());
    for i in 0..COUNT {
        let name = format!("job-{i:04}");
        let mut job = small_job(&name);
        job["spec"]["suspend"] = json!(true);
        djs.patch(&name, &PatchParams::apply("kubectl"), &Patch::Apply(&job)).await.unwrap();
    }
    let mdeps: Api<distillery_crds::ModelDeployment> = Api::default_namespaced(server.client());
    for i in 0..MDEPS {
        let name = format!("serve-{i:03}");
        let md = json!({"apiVersion": "distillery.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"model": {"distillationJobRef": {"name": format!("job-{i:04}")}}}});
        mdeps.patch(&name, &PatchParams::apply("kubectl"), &Patch::Apply(&md)).await.unwrap();
    }
    let jobs: Api<Job> = Api::default_namespaced(server.client());
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let made = jobs.list(&ListParams::default()).await.unwrap().items.len();
        let suspended = djs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|d| {
                d.status.as_ref().and_then(|s| s.phase).is_some_and(|p| serde_json::to_value(p).unwrap() == "Suspended")
            })
            .count();
        let waiting = mdeps
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|m| {
                m.status.as_ref().is_some_and(|s| {
                    distillery_crds::conditions::find(&s.conditions, "ModelReady")
                        .is_some_and(|c| c.status == "False" && c.reason == "DistillationJobSuspended")
                })
            })
            .count();
        if made == COUNT && suspended == COUNT && waiting == MDEPS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{made} Jobs, {suspended} Suspended of {COUNT}, {waiting} of {MDEPS} ModelDeployments waiting\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Settled: nothing more is written.
    let writes = server.writes_in_quiet_period(Duration::from_secs(2), Duration::from_secs(4)).await;
    assert!(writes.is_empty(), "writes after settling: {writes:?}");
    // Reported, not asserted: memory depends on the build (CI runs a debug build).
    eprintln!(
        "operator resident memory with {COUNT} DistillationJobs (and their Jobs) and {MDEPS} settled ModelDeployments: {} KiB",
        operator.resident_kib()
    );
}

/// A server with the CRDs and the chart's RBAC (enforced), and no kubelet: the operator runs as
/// its chart identity and nothing it creates runs.
async fn harness_without_kubelet() -> (ApiServer, tempfile::TempDir, OperatorIdentity) {
    harness_without_kubelet_and(|_| {}).await
}

/// [`harness_without_kubelet`] with the rendered RBAC objects changed by `edit` first.
async fn harness_without_kubelet_and(
    edit: impl FnOnce(&mut Vec<Value>),
) -> (ApiServer, tempfile::TempDir, OperatorIdentity) {
    let server = ApiServer::start().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    server.install_crds("kubectl").await.unwrap();
    let identity = install_chart_rbac(&server, root.path(), edit).await.unwrap();
    (server, root, identity)
}

/// Least privilege, proven both ways: the other cluster tests run the operator with exactly the
/// chart's roles; here the rule for `jobs` is removed from its ClusterRole, and the operator
/// cannot make the worker Job — the API server answers 403, which the operator logs and reports
/// on the DistillationJob as a `Forbidden` Warning Event — and it stays up, retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_charts_rule_for_jobs_the_operator_is_refused_with_a_403() {
    let (server, root, identity) =
        harness_without_kubelet_and(|objects| remove_rule(objects, "distillery", "jobs")).await;
    let log = root.path().join("operator.log");
    let mut operator = Operator::start_as(&identity, &log, &[]);
    let djs: Api<DistillationJob> = Api::default_namespaced(server.client());
    djs.patch("denied", &PatchParams::apply("kubectl"), &Patch::Apply(&small_job("denied"))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let refused = text
            .lines()
            .any(|l| l.contains("403") && l.contains(&identity.user) && l.contains("jobs.batch is forbidden"));
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "no 403 for jobs in the operator's log:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::default_namespaced(server.client());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let forbidden = events.list(&ListParams::default()).await.unwrap().items.into_iter().find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("denied")
                && e.reason.as_deref() == Some("Forbidden")
                && e.type_.as_deref() == Some("Warning")
        });
        if let Some(event) = forbidden {
            let note = event.note.unwrap_or_default();
            assert!(
                note.contains("jobs.batch \"denied-distill\" is forbidden") && note.contains("ClusterRole"),
                "{note}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no Forbidden Event on the DistillationJob");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(operator.is_running(), "the operator stays up without the permission");
    let jobs: Api<Job> = Api::default_namespaced(server.client());
    assert!(jobs.list(&ListParams::default()).await.unwrap().items.is_empty(), "no Job was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_reconciles_and_a_stopped_leader_hands_over() {
    use k8s_openapi::api::coordination::v1::Lease;
    let (server, root, identity) = harness_without_kubelet().await;
    // The chart turns leader election on, with the Lease in the release namespace (its Role).
    let leases: Api<Lease> = Api::namespaced(server.client(), RELEASE_NAMESPACE);
    let holder = async || -> Option<String> { leases.get_opt("distillery").await.ok()??.spec?.holder_identity };
    let election = |id: &'static str| ["--identity", id];
    let a = Operator::start_as(&identity, &root.path().join("a.log"), &election("a"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while holder().await.as_deref() != Some("a") {
        assert!(Instant::now() < deadline, "a never took the Lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b = Operator::start_as(&identity, &root.path().join("b.log"), &election("b"));
    let djs: Api<DistillationJob> = Api::default_namespaced(server.client());
    let jobs: Api<Job> = Api::default_namespaced(server.client());
    let apply = async |name: &str| {
        let mut job = small_job(name);
        job["spec"]["suspend"] = json!(true);
        djs.patch(name, &PatchParams::apply("kubectl"), &Patch::Apply(&job)).await.unwrap();
    };
    apply("first").await;
    let wait_job = async |name: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while jobs.get_opt(&format!("{name}-distill")).await.unwrap().is_none() {
            assert!(Instant::now() < deadline, "no Job for {name}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    wait_job("first").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(holder().await.as_deref(), Some("a"), "b waits while a renews");
    let b_log = std::fs::read_to_string(root.path().join("b.log")).unwrap();
    assert!(!b_log.contains("leading"), "b must not lead while a holds the Lease:\n{b_log}");

    // SIGTERM: a stops reconciling, releases the Lease and exits cleanly; b takes over.
    assert!(a.terminate().success(), "{}", std::fs::read_to_string(root.path().join("a.log")).unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while holder().await.as_deref() != Some("b") {
        assert!(Instant::now() < deadline, "b never took over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    apply("second").await;
    wait_job("second").await;
    let lease = leases.get("distillery").await.unwrap().spec.unwrap();
    assert!(lease.lease_transitions.unwrap_or(0) >= 1, "{lease:?}");
    drop(b);
}

/// An HTTP GET over a plain TCP connection: (status line, body).
async fn http_get(address: &str, path: &str) -> Option<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_rolls_out_behind_a_service_on_a_loopback_cluster_ip() {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::core::v1::Service;
    let server = ApiServer::start().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    // The operator binary is the workload: it serves /healthz on the address it is given.
    let images = HashMap::from([("distillery-operator".to_string(), workspace_binary("distillery-operator"))]);
    let cluster = Cluster::start(&server, images, HashMap::new(), root.path()).unwrap();
    let deployments: Api<Deployment> = Api::default_namespaced(server.client());
    let deployment = |generation_marker: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{
                    "name": "web", "image": "ghcr.io/distillery-dev/distillery-operator:test",
                    "args": ["run", "--http-address", "$(POD_IP)", "--http-port", "8080"],
                    "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "MARKER", "value": generation_marker}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}}}})
    };
    deployments.patch("web", &PatchParams::apply("kubectl"), &Patch::Apply(deployment("one"))).await.unwrap();
    let services: Api<Service> = Api::default_namespaced(server.client());
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080, "targetPort": "http"}]}});
    let svc = services.patch("web", &PatchParams::apply("kubectl"), &Patch::Apply(service)).await.unwrap();
    let ip = svc.spec.unwrap().cluster_ip.unwrap();
    assert!(ip.starts_with("127."), "{ip}");

    let settled = async |generation: i64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let d = deployments.get("web").await.unwrap();
            let s = d.status.clone().unwrap_or_default();
            let progressed = s
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable"));
            if s.observed_generation == Some(generation)
                && s.available_replicas == Some(2)
                && s.updated_replicas == Some(2)
                && progressed
            {
                return d;
            }
            assert!(Instant::now() < deadline, "{:?}\n{}", d.status, cluster.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    settled(1).await;
    for _ in 0..4 {
        let (status, body) = http_get(&format!("{ip}:8080"), "/healthz").await.expect("the Service answers");
        assert!(status.contains("200") && body == "ok", "{status} {body}");
    }

    // A template change rolls out: a new ReplicaSet, never fewer than 2 ready pods on the way.
    deployments.patch("web", &PatchParams::apply("kubectl"), &Patch::Apply(deployment("two"))).await.unwrap();
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = deployments.get("web").await.unwrap();
        let s = d.status.clone().unwrap_or_default();
        let ready = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| pod_ready(p))
            .count();
        assert!(ready >= 2, "maxUnavailable 25% of 2 is 0: {ready} ready\n{:?}", s);
        if s.observed_generation == Some(2)
            && s.updated_replicas == Some(2)
            && s.available_replicas == Some(2)
            && s.replicas == Some(2)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settled(2).await;
    let sets: Api<ReplicaSet> = Api::default_namespaced(server.client());
    let replicas: Vec<i32> = sets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|rs| rs.spec.as_ref().unwrap().replicas.unwrap())
        .collect();
    let mut sorted = replicas.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 2], "the old ReplicaSet is scaled to zero");
    let (status, _) = http_get(&format!("{ip}:8080"), "/healthz").await.expect("still served after the rollout");
    assert!(status.contains("200"));

    // Deleting the Deployment collects its ReplicaSets and pods.
    deployments.delete("web", &DeleteParams::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pods.list(&ListParams::default()).await.unwrap().items.is_empty() {
        assert!(Instant::now() < deadline, "pods left");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_the_operator_cannot_run_fails_with_a_condition_and_an_event_and_is_not_retried() {
    use k8s_openapi::api::events::v1::Event;
    let (server, root, identity) = harness_without_kubelet().await;
    let _operator = Operator::start_as(&identity, &root.path().join("operator.log"), &[]);
    let djs: Api<DistillationJob> = Api::default_namespaced(server.client());
    // Valid for the schema, but the dataset would need a second claim at /models.
    let mut job = small_job("clash");
    job["spec"]["dataset"]["uri"] = json!("file:///models/reviews.csv");
    djs.patch("clash", &PatchParams::apply("kubectl"), &Patch::Apply(&job)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = djs.get("clash").await.unwrap().status;
        if let Some(s) = status.filter(|s| s.phase.is_some()) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no status\n{}",
            std::fs::read_to_string(root.path().join("operator.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(serde_json::to_value(status.phase).unwrap(), "Failed");
    let accepted = distillery_crds::conditions::find(&status.conditions, "Accepted").unwrap();
    assert_eq!((accepted.status.as_str(), accepted.reason.as_str()), ("False", "InvalidSpec"));
    assert!(
        accepted.message.contains("spec.dataset.volumeClaim") && accepted.message.contains("/models"),
        "{}",
        accepted.message
    );
    let jobs: Api<Job> = Api::default_namespaced(server.client());
    assert!(jobs.list(&ListParams::default()).await.unwrap().items.is_empty(), "no Job for a spec that cannot run");
    let events: Api<Event> = Api::default_namespaced(server.client());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .any(|e| e.reason.as_deref() == Some("InvalidSpec") && e.type_.as_deref() == Some("Warning"));
        if found {
            break;
        }
        assert!(Instant::now() < deadline, "no InvalidSpec Warning Event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Not retried: nothing is written while the spec stays as it is.
    let after = server.writes_in_quiet_period(Duration::ZERO, Duration::from_secs(4)).await;
    assert!(after.is_empty(), "writes while waiting for a spec change: {after:?}");
    // Fixing the spec lets it run (here: a Job is created).
    job["spec"]["dataset"]["uri"] = json!("file:///data/rotten_tomatoes_corpus_full.csv.bz2");
    job["spec"]["suspend"] = json!(true);
    djs.patch("clash", &PatchParams::apply("kubectl"), &Patch::Apply(&job)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while jobs.get_opt("clash-distill").await.unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "no Job after the fix\n{}",
            std::fs::read_to_string(root.path().join("operator.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
