//! The simulated cluster's Job controller and kubelet count and report what the real ones do:
//! a pod deleted while it runs is a failure, a retry waits its backoff, `podFailurePolicy` fails
//! the Job at once, a termination message is cut to its last 4,096 bytes, a Job's template
//! cannot be changed, a deleted pod is killed after its grace period or, when its container
//! never ran, marked Failed, a pod whose env names a Secret key waits for it, then starts, and an
//! Indexed Job runs each index once, at most `parallelism` at a time, retrying a failed index
//! alone. Pods run `/bin/sh` (image repository `shell`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use distillery_tests::apiserver::ApiServer;
use distillery_tests::cluster::Cluster;
use distillery_tests::cluster::job::indexed::{COMPLETION_INDEX_KEY, INDEX_FAILURE_COUNT_KEY};
use distillery_tests::cluster::job::{TRACKING_FINALIZER, scale_backoff};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

struct Harness {
    server: ApiServer,
    _cluster: Cluster,
    _root: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Self {
        let server = ApiServer::start().await.unwrap();
        let root = tempfile::tempdir().unwrap();
        let images = HashMap::from([("shell".to_string(), PathBuf::from("/bin/sh"))]);
        let cluster = Cluster::start(&server, images, HashMap::new(), root.path()).unwrap();
        Self { server, _cluster: cluster, _root: root }
    }

    fn jobs(&self) -> Api<Job> {
        Api::default_namespaced(self.server.client())
    }

    fn pods(&self) -> Api<Pod> {
        Api::default_namespaced(self.server.client())
    }

    async fn wait<T>(&self, what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn pods_of(&self, job: &str) -> Vec<Pod> {
        self.pods().list(&ListParams::default().labels(&format!("job-name={job}"))).await.unwrap().items
    }

    async fn job_condition(&self, job: &str, type_: &str) -> Option<(String, String)> {
        let j = self.jobs().get(job).await.ok()?;
        let c = j.status?.conditions?.into_iter().find(|c| c.type_ == type_ && c.status == "True")?;
        Some((c.reason.unwrap_or_default(), c.message.unwrap_or_default()))
    }

    /// The Job once it has the condition `type_` and every pod it made is counted and let go (no
    /// pod holds the tracking finalizer, none is left uncounted in its status).
    async fn settled(&self, job: &str, type_: &str) -> Job {
        self.wait(&format!("{job} to be {type_} with every pod counted"), Duration::from_secs(60), async || {
            self.job_condition(job, type_).await?;
            if self.pods_of(job).await.iter().any(|p| !p.finalizers().is_empty()) {
                return None;
            }
            let j = self.jobs().get(job).await.ok()?;
            let uncounted = j.status.as_ref()?.uncounted_terminated_pods.clone().unwrap_or_default();
            let none =
                uncounted.failed.unwrap_or_default().is_empty() && uncounted.succeeded.unwrap_or_default().is_empty();
            none.then_some(j)
        })
        .await
    }

    /// The pods of an Indexed Job, by the completion index on their label.
    async fn pods_per_index(&self, job: &str) -> BTreeMap<String, Vec<Pod>> {
        let mut per_index: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
        for pod in self.pods_of(job).await {
            let index = pod.labels().get(COMPLETION_INDEX_KEY).cloned().unwrap_or_default();
            per_index.entry(index).or_default().push(pod);
        }
        per_index
    }
}

fn shell_job(name: &str, script: &str, extra: Value) -> Job {
    let mut job = json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": "shell:1", "args": ["-c", script]}]}}}
    });
    json_patch::merge(&mut job["spec"], &extra);
    serde_json::from_value(job).unwrap()
}

fn running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Whether `pod` is active as the Job controller counts it: not ended, not being deleted.
fn active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// How many pods of each index there are, by index.
fn counts(per_index: &BTreeMap<String, Vec<Pod>>) -> Vec<(&str, usize)> {
    per_index.iter().map(|(index, pods)| (index.as_str(), pods.len())).collect()
}

/// The lines of a file the pods wrote to, sorted.
fn sorted_lines(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// A script for an Indexed Job's pods: index 1's first pod fails (it finds no marker in `dir`,
/// leaves one and exits 1), every other pod writes its index to `dir/done` and succeeds.
fn fails_index_1_once(dir: &std::path::Path) -> String {
    let dir = dir.display();
    format!(
        "if [ \"$JOB_COMPLETION_INDEX\" = 1 ] && [ ! -e {dir}/marker ]; then touch {dir}/marker; exit 1; fi; \
         echo \"$JOB_COMPLETION_INDEX\" >> {dir}/done"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_while_running_is_a_failure_and_the_retry_waits_its_backoff() {
    // A real cluster waits 10 s before the first retry; two here, doubling the same way.
    scale_backoff(Duration::from_secs(2));
    let h = Harness::start().await;
    h.jobs().create(&PostParams::default(), &shell_job("sleeper", "sleep 600", json!({}))).await.unwrap();

    let first = h
        .wait("the first pod to run", Duration::from_secs(20), async || {
            h.pods_of("sleeper").await.into_iter().find(running)
        })
        .await;
    assert!(first.finalizers().iter().any(|f| f == TRACKING_FINALIZER), "the Job controller tracks its pods");
    h.pods().delete(&first.name_any(), &DeleteParams::default()).await.unwrap();
    let deleted_at = Instant::now();

    // Counted as a failure once, then released: the deleted pod goes away.
    h.wait("the deletion to count as a failure", Duration::from_secs(20), async || {
        let status = h.jobs().get("sleeper").await.ok()?.status?;
        (status.failed == Some(1)).then_some(())
    })
    .await;
    let second = h
        .wait("a replacement pod", Duration::from_secs(20), async || {
            let pods = h.pods_of("sleeper").await;
            let gone = pods.iter().all(|p| p.uid() != first.uid());
            pods.into_iter().find(|p| gone && p.uid() != first.uid())
        })
        .await;
    let waited = deleted_at.elapsed();
    assert!(waited >= Duration::from_millis(1900), "the replacement came after {waited:?}, before its 2 s backoff");

    // The second failure is past backoffLimit 1: the Job fails and makes no third pod.
    h.wait("the replacement to run", Duration::from_secs(20), async || {
        h.pods().get(&second.name_any()).await.ok().filter(running)
    })
    .await;
    h.pods().delete(&second.name_any(), &DeleteParams::default()).await.unwrap();
    let (reason, _) =
        h.wait("the Job to fail", Duration::from_secs(20), async || h.job_condition("sleeper", "Failed").await).await;
    assert_eq!(reason, "BackoffLimitExceeded");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let job = h.jobs().get("sleeper").await.unwrap();
    assert_eq!(job.status.as_ref().unwrap().failed, Some(2), "each deleted pod counted once");
    assert!(h.pods_of("sleeper").await.is_empty(), "no third pod; the deleted ones are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_policy_fails_at_once_and_a_termination_message_keeps_its_last_4096_bytes() {
    let h = Harness::start().await;
    // 5,000 bytes: 904 of 'a', then 4,096 of 'b'; exit 3, which a FailJob rule matches.
    let script = "printf '%0904d' 0 | tr 0 a > /dev/termination-log ; printf '%04096d' 0 | tr 0 b >> /dev/termination-log ; exit 3";
    let policy = json!({"podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}}]}, "backoffLimit": 5});
    h.jobs().create(&PostParams::default(), &shell_job("refused", script, policy)).await.unwrap();
    let (reason, message) =
        h.wait("the Job to fail", Duration::from_secs(20), async || h.job_condition("refused", "Failed").await).await;
    assert_eq!(reason, "PodFailurePolicy");
    assert!(message.contains("failed with exit code 3 matching FailJob rule at index 0"), "{message}");
    let pods = h.pods_of("refused").await;
    assert_eq!(pods.len(), 1, "no retry");
    let terminated = pods[0].status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!(terminated.exit_code, 3);
    let text = terminated.message.unwrap();
    assert_eq!(text.len(), 4096);
    assert!(text.bytes().all(|b| b == b'b'), "the last 4,096 bytes are kept");
    assert!(pods[0].finalizers().is_empty(), "counted and released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_template_cannot_be_changed_nor_a_bad_failure_policy_created() {
    let h = Harness::start().await;
    h.jobs().create(&PostParams::default(), &shell_job("fixed", "sleep 600", json!({}))).await.unwrap();
    let change = json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "shell:2", "args": ["-c", "true"]}]}}}});
    let err = h.jobs().patch("fixed", &PatchParams::default(), &Patch::Merge(&change)).await.unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert!(s.message.contains("spec.template: Invalid value: field is immutable"), "{}", s.message);
        }
        other => panic!("{other}"),
    }
    let bad = json!({"podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0]}}]}});
    let err = h.jobs().create(&PostParams::default(), &shell_job("bad-policy", "true", bad)).await.unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert!(s.message.contains("spec.podFailurePolicy.rules[0].onExitCodes.values[0]"), "{}", s.message);
        }
        other => panic!("{other}"),
    }
}

/// A deleted pod's container gets SIGTERM, then SIGKILL once its grace period has passed: one
/// that ignores SIGTERM still ends (137), and its Job counts the failure. A pod whose container
/// never ran (no binary for its image: `ErrImagePull`) is marked Failed when deleted, so that the
/// Job controller's finalizer is released and the pod goes away — not left terminating for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pod_is_killed_after_its_grace_period_and_one_that_never_ran_is_marked_failed() {
    let h = Harness::start().await;
    // Its end is read from the Job: a failure policy that fails it on exit code 137 (SIGKILL).
    let stubborn = json!({"backoffLimit": 0, "template": {"spec": {"terminationGracePeriodSeconds": 2}},
        "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [137]}}]}});
    h.jobs().create(&PostParams::default(), &shell_job("stubborn", "trap '' TERM; sleep 600", stubborn)).await.unwrap();
    let mut unpullable = shell_job("unpullable", "true", json!({"backoffLimit": 0}));
    unpullable.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0].image =
        Some("no-such-image:1".into());
    h.jobs().create(&PostParams::default(), &unpullable).await.unwrap();

    let pod = h
        .wait("the stubborn pod to run", Duration::from_secs(20), async || {
            h.pods_of("stubborn").await.into_iter().find(running)
        })
        .await;
    // Let the shell set its trap before the signal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.pods().delete(&pod.name_any(), &DeleteParams::default()).await.unwrap();
    let deleted_at = Instant::now();
    let (reason, message) = h
        .wait("the stubborn pod's Job to fail", Duration::from_secs(20), async || {
            h.job_condition("stubborn", "Failed").await
        })
        .await;
    let took = deleted_at.elapsed();
    assert_eq!(reason, "PodFailurePolicy", "{message}");
    assert!(message.contains("failed with exit code 137"), "SIGKILL: {message}");
    assert!(took >= Duration::from_millis(1800), "killed after {took:?}, before its 2 s grace period");

    let waiting = h
        .wait("the unpullable pod to wait for its image", Duration::from_secs(20), async || {
            let pod = h.pods_of("unpullable").await.into_iter().next()?;
            let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.waiting.clone()?;
            (status.reason.as_deref() == Some("ErrImagePull")).then_some(pod)
        })
        .await;
    h.pods().delete(&waiting.name_any(), &DeleteParams::default()).await.unwrap();
    h.wait("the unpullable pod to be gone", Duration::from_secs(20), async || {
        h.pods().get_opt(&waiting.name_any()).await.ok()?.is_none().then_some(())
    })
    .await;
    h.wait("the Job to fail", Duration::from_secs(20), async || h.job_condition("unpullable", "Failed").await).await;
    let job = h.jobs().get("unpullable").await.unwrap();
    assert_eq!(job.status.as_ref().unwrap().failed, Some(1), "counted as a failure: {:?}", job.status);
}

/// A pod's env from a Secret key and a ConfigMap key, as a real kubelet resolves it: while the
/// Secret is missing, then while it lacks the key, the container waits with
/// `CreateContainerConfigError` and the kubelet's message (written once, not on every retry); an
/// `optional` reference to a missing Secret leaves its variable out; once the key exists the pod
/// starts on its own, and its process sees the value. The Secret is written with `stringData`,
/// which the API server folds into `data`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_waits_for_the_secret_key_its_env_names_and_then_sees_its_value() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let h = Harness::start().await;
    let config_maps: Api<ConfigMap> = Api::default_namespaced(h.server.client());
    let secrets: Api<Secret> = Api::default_namespaced(h.server.client());
    let settings =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "fast"}});
    config_maps.create(&PostParams::default(), &serde_json::from_value(settings).unwrap()).await.unwrap();
    let key = |kind: &str, name: &str, key: &str, optional: bool| json!({kind: {"name": name, "key": key, "optional": optional}});
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "needs-secret"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "shell:1",
            "args": ["-c", "printf '%s|%s|%s' \"$TOKEN\" \"$MODE\" \"${EXTRA-unset}\" > /dev/termination-log"],
            "env": [{"name": "TOKEN", "valueFrom": key("secretKeyRef", "creds", "token", false)},
                    {"name": "MODE", "valueFrom": key("configMapKeyRef", "settings", "mode", false)},
                    {"name": "EXTRA", "valueFrom": key("secretKeyRef", "absent", "x", true)}]}]}});
    h.pods().create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await.unwrap();
    let waiting_with = async |message: &str| {
        h.wait(&format!("the pod to wait with {message:?}"), Duration::from_secs(20), async || {
            let pod = h.pods().get("needs-secret").await.ok()?;
            let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.waiting.clone()?;
            (status.reason.as_deref() == Some("CreateContainerConfigError")
                && status.message.as_deref() == Some(message))
            .then_some(pod)
        })
        .await
    };

    let missing = waiting_with("secret \"creds\" not found").await;
    // Retried, not rewritten: the pod's waiting state stays the same object.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = h.pods().get("needs-secret").await.unwrap();
    assert_eq!(later.resource_version(), missing.resource_version(), "the same waiting state written again");

    let creds =
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"user": "me"}});
    secrets.create(&PostParams::default(), &serde_json::from_value(creds).unwrap()).await.unwrap();
    waiting_with("couldn't find key token in Secret default/creds").await;

    let patch = json!({"stringData": {"token": "s3cret $(MODE) value"}});
    secrets.patch("creds", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let message = h
        .wait("the pod to succeed", Duration::from_secs(20), async || {
            let pod = h.pods().get("needs-secret").await.ok()?;
            let status = pod.status?;
            (status.phase.as_deref() == Some("Succeeded")).then_some(())?;
            status.container_statuses?.first()?.state.as_ref()?.terminated.as_ref()?.message.clone()
        })
        .await;
    // A Secret's value is taken as it is: no `$(VAR)` expansion.
    assert_eq!(message, "s3cret $(MODE) value|fast|unset");
}

/// An Indexed Job of 3 completions, 2 in parallel, runs one pod per index and never more than two
/// at once: each pod's process sees its index in `JOB_COMPLETION_INDEX` (the controller's
/// downward-API reference to the index label, resolved by the kubelet) and its hostname
/// `<job>-<index>`; its name starts `<job>-<index>-`; each index runs once, and the Job completes
/// with `completedIndexes` "0-2" and 3 succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexed_job_runs_each_index_once_and_at_most_parallelism_pods_at_a_time() {
    let h = Harness::start().await;
    let shared = tempfile::tempdir().unwrap();
    let log = shared.path().join("log");
    // Each pod notes its start and its end, two seconds apart, so that pods allowed to overlap do.
    let script = format!(
        "echo \"start $JOB_COMPLETION_INDEX $HOSTNAME\" >> {log}; sleep 2; echo \"end $JOB_COMPLETION_INDEX\" >> {log}",
        log = log.display()
    );
    let spec = json!({"completionMode": "Indexed", "completions": 3, "parallelism": 2});
    h.jobs().create(&PostParams::default(), &shell_job("shards", &script, spec)).await.unwrap();

    let mut most_active = 0;
    h.wait("the Job to complete", Duration::from_secs(60), async || {
        most_active = most_active.max(h.pods_of("shards").await.iter().filter(|p| active(p)).count());
        h.job_condition("shards", "Complete").await
    })
    .await;
    assert!(most_active <= 2, "{most_active} pods active at once, above parallelism 2");
    let job = h.settled("shards", "Complete").await;
    let status = job.status.unwrap();
    assert_eq!(status.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!((status.succeeded, status.failed.unwrap_or(0)), (Some(3), 0), "{status:?}");

    // What the processes saw and did: each index once, under its own hostname, two at a time.
    let mut running = 0;
    let mut peak = 0;
    let mut started = vec![];
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        match line.split(' ').collect::<Vec<_>>()[..] {
            ["start", index, hostname] => {
                running += 1;
                peak = peak.max(running);
                started.push(format!("{index} {hostname}"));
            }
            ["end", _] => running -= 1,
            _ => panic!("unexpected line {line:?}"),
        }
    }
    started.sort();
    assert_eq!(started, ["0 shards-0", "1 shards-1", "2 shards-2"], "each index ran once, with its hostname");
    assert_eq!(peak, 2, "two pods ran at once, never more");

    let per_index = h.pods_per_index("shards").await;
    assert_eq!(counts(&per_index), [("0", 1), ("1", 1), ("2", 1)]);
    for (index, pods) in &per_index {
        let pod = &pods[0];
        assert_eq!(pod.annotations().get(COMPLETION_INDEX_KEY), Some(index), "the annotation matches the label");
        assert!(pod.name_any().starts_with(&format!("shards-{index}-")), "{}", pod.name_any());
        assert_eq!(pod.spec.as_ref().unwrap().hostname, Some(format!("shards-{index}")));
        let env = pod.spec.as_ref().unwrap().containers[0].env.clone().unwrap_or_default();
        let reference = env.iter().find(|e| e.name == "JOB_COMPLETION_INDEX").and_then(|e| e.value_from.clone());
        assert_eq!(
            reference.and_then(|r| r.field_ref).map(|f| f.field_path).as_deref(),
            Some("metadata.labels['batch.kubernetes.io/job-completion-index']"),
            "the variable is a downward-API reference to the label"
        );
    }
}

/// A failed pod of an Indexed Job is replaced by a pod for its index alone: index 1's first pod
/// fails, index 1 runs again, 0 and 2 once, each index's work is done once, and the Job
/// completes, the failure counted once against `backoffLimit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexed_job_retries_a_failed_index_alone() {
    // The same retry delay as the other tests of this binary, which share it.
    scale_backoff(Duration::from_secs(2));
    let h = Harness::start().await;
    let shared = tempfile::tempdir().unwrap();
    let spec = json!({"completionMode": "Indexed", "completions": 3, "parallelism": 2, "backoffLimit": 1});
    let job = shell_job("retried", &fails_index_1_once(shared.path()), spec);
    h.jobs().create(&PostParams::default(), &job).await.unwrap();

    let job = h.settled("retried", "Complete").await;
    let status = job.status.unwrap();
    assert_eq!(status.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!((status.succeeded, status.failed), (Some(3), Some(1)), "{status:?}");
    assert_eq!(status.failed_indexes, None, "no backoffLimitPerIndex: no failedIndexes");
    assert_eq!(counts(&h.pods_per_index("retried").await), [("0", 1), ("1", 2), ("2", 1)], "only index 1 ran again");
    assert_eq!(sorted_lines(&shared.path().join("done")), ["0", "1", "2"], "each index's work done once");
}

/// With `backoffLimitPerIndex` an index counts its own failures: with a limit of 1, index 1's
/// second pod carries the count of the first one's failure and succeeds, `failedIndexes` stays
/// empty and the Job completes; with a limit of 0 index 1 fails for good after one pod, the
/// other indexes still run, and the Job fails with `FailedIndexes` once every index is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_backoff_limit_per_index_an_index_fails_on_its_own_count() {
    scale_backoff(Duration::from_secs(2));
    let h = Harness::start().await;
    let (once, always) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // No backoffLimit: with backoffLimitPerIndex it defaults to unlimited.
    let per_index = |limit: i32| {
        json!({"completionMode": "Indexed", "completions": 3, "parallelism": 2, "backoffLimit": null,
               "backoffLimitPerIndex": limit})
    };
    let failing = format!(
        "if [ \"$JOB_COMPLETION_INDEX\" = 1 ]; then exit 1; fi; echo \"$JOB_COMPLETION_INDEX\" >> {}/done",
        always.path().display()
    );
    let lenient = shell_job("lenient", &fails_index_1_once(once.path()), per_index(1));
    h.jobs().create(&PostParams::default(), &lenient).await.unwrap();
    h.jobs().create(&PostParams::default(), &shell_job("strict", &failing, per_index(0))).await.unwrap();

    let lenient = h.settled("lenient", "Complete").await.status.unwrap();
    assert_eq!(lenient.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(lenient.failed_indexes.as_deref(), Some(""), "written, empty, with backoffLimitPerIndex");
    assert_eq!((lenient.succeeded, lenient.failed), (Some(3), Some(1)), "{lenient:?}");
    let per_index_pods = h.pods_per_index("lenient").await;
    assert_eq!(counts(&per_index_pods), [("0", 1), ("1", 2), ("2", 1)]);
    let mut failure_counts: Vec<String> = per_index_pods["1"]
        .iter()
        .map(|p| p.annotations().get(INDEX_FAILURE_COUNT_KEY).cloned().unwrap_or_default())
        .collect();
    failure_counts.sort();
    assert_eq!(failure_counts, ["0", "1"], "the second pod of index 1 carries the first one's failure");

    let strict = h.settled("strict", "Failed").await.status.unwrap();
    let (reason, message) = h.job_condition("strict", "Failed").await.unwrap();
    assert_eq!((reason.as_str(), message.as_str()), ("FailedIndexes", "Job has failed indexes"));
    assert_eq!(strict.failed_indexes.as_deref(), Some("1"));
    assert_eq!(strict.completed_indexes.as_deref(), Some("0,2"));
    assert_eq!(strict.failed, Some(1));
    assert_eq!(counts(&h.pods_per_index("strict").await), [("0", 1), ("1", 1), ("2", 1)], "index 1 not retried");
    assert_eq!(sorted_lines(&always.path().join("done")), ["0", "2"]);
}
