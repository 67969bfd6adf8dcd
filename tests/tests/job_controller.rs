//! The simulated cluster's Job controller and kubelet count and report what the real ones do:
//! a pod deleted while it runs is a failure, a retry waits its backoff, `podFailurePolicy` fails
//! the Job at once, a termination message is cut to its last 4,096 bytes, a Job's template
//! cannot be changed, a deleted pod is killed after its grace period or, when its container
//! never ran, marked Failed, and a pod whose env names a Secret key waits for it, then starts.
//! Pods run `/bin/sh` (image repository `shell`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use distillery_tests::apiserver::ApiServer;
use distillery_tests::cluster::Cluster;
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
