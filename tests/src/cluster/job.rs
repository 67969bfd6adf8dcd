//! The Job controller of the simulated cluster: one pod at a time from the Job's template
//! (`completions` and `parallelism` of 1, as the operator's Jobs are), retries up to
//! `backoffLimit` with the real controller's delay between them (10 s, doubling per failure,
//! capped at 6 minutes; [`scale_backoff`] lets a test shorten it), `podFailurePolicy` (rules on
//! exit codes and pod conditions: `FailJob`, `Ignore`, `Count`, first match wins),
//! `activeDeadlineSeconds`, `suspend`, and the `Complete`/`Failed` conditions and counts in the
//! Job's status. Pods are tracked with the `batch.kubernetes.io/job-tracking` finalizer and
//! `status.uncountedTerminatedPods`, as the real controller tracks them, so a pod deleted while it
//! runs still ends (the kubelet marks it `Failed`) and counts as a failure, and no pod is counted
//! twice. A replacement is created only once the previous pod is terminal (the
//! `podReplacementPolicy: Failed` behaviour). It talks to the API server only through the API.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, PodFailurePolicy};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::pod_ready;
use crate::apiserver::store::now;

/// Label the Job controller puts on its pods.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// Label with the Job's uid.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// Finalizer that keeps a Job's pod until the controller has counted how it ended.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
const MANAGER: &str = "job-controller";

/// The first retry delay in milliseconds (the real controller's 10 s unless scaled).
static BACKOFF_BASE_MS: AtomicU64 = AtomicU64::new(10_000);
/// The longest retry delay, as a multiple of the base (6 minutes at a 10 s base).
const BACKOFF_CAP_FACTOR: u64 = 36;

/// Sets the first retry delay (default 10 s, as in a real cluster) for every Job controller in
/// this process; later retries double it up to 36 times the base.
pub fn scale_backoff(base: Duration) {
    BACKOFF_BASE_MS.store(base.as_millis() as u64, Ordering::Relaxed);
}

/// How long after the last failure the pod for the next try is created, after `failures`.
fn retry_delay(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let base = BACKOFF_BASE_MS.load(Ordering::Relaxed);
    let factor = 1u64 << (failures - 1).min(20);
    Duration::from_millis(base.saturating_mul(factor.min(BACKOFF_CAP_FACTOR)))
}

/// What the controller keeps between reconciles, as the real one keeps its backoff records in
/// memory: when each Job's last counted failure happened.
struct Context {
    client: kube::Client,
    last_failure: Mutex<HashMap<String, Instant>>,
}

/// Runs the controller until the task is aborted.
pub async fn run(client: kube::Client) {
    let jobs: Api<Job> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    tokio::spawn(release_orphans(client.clone()));
    let context = Arc::new(Context { client, last_failure: Mutex::default() });
    Controller::new(jobs, watcher::Config::default())
        .owns(pods, watcher::Config::default().labels(CONTROLLER_UID_LABEL))
        .run(reconcile, |_, _, _| Action::requeue(Duration::from_millis(500)), context)
        .for_each(|_| async {})
        .await;
}

/// Releases the tracking finalizer of pods being deleted whose Job is gone (deleted with its
/// dependents), which no reconcile of that Job will see.
async fn release_orphans(client: kube::Client) {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = std::pin::pin!(watcher::watcher(pods, watcher::Config::default().labels(CONTROLLER_UID_LABEL)));
    while let Some(event) = events.next().await {
        let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else { continue };
        if pod.metadata.deletion_timestamp.is_none() || !pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER) {
            continue;
        }
        let jobs: Api<Job> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        // Only a Job known to be gone (404, another Job of the same name, or no owning Job at all
        // after an orphaning delete) lets its pods go; an error says nothing, the next event retries.
        let gone = match pod.owner_references().iter().find(|o| o.kind == "Job") {
            None => true,
            Some(owner) => match jobs.get_opt(&owner.name).await {
                Ok(None) => true,
                Ok(Some(j)) => j.uid().as_deref() != Some(&owner.uid),
                Err(_) => false,
            },
        };
        if gone {
            let _ = release(&Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default()), &pod).await;
        }
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

fn ended(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn tracked(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

/// Removes the tracking finalizer from `pod` (a pod being deleted then goes away).
async fn release(pods: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let rest: Vec<&String> = pod.finalizers().iter().filter(|f| *f != TRACKING_FINALIZER).collect();
    let patch = json!({"metadata": {"finalizers": rest}});
    match pods.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn condition(type_: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": "True", "reason": reason, "message": message,
           "lastProbeTime": now(), "lastTransitionTime": now()})
}

async fn reconcile(cached: Arc<Job>, context: Arc<Context>) -> Result<Action, kube::Error> {
    let client = &context.client;
    let namespace = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    // The counts are read from the Job as stored now, not from the watch's copy, which may not
    // have seen the last reconcile's status write yet (a pod released then would be lost).
    let Some(job) = jobs.get_opt(&name).await? else { return Ok(Action::await_change()) };
    if job.uid() != cached.uid() {
        return Ok(Action::await_change());
    }
    let uid = job.uid().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let spec = job.spec.clone().unwrap_or_default();
    let status = job.status.clone().unwrap_or_default();
    let finished = status
        .conditions
        .iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
    let owned = pods.list(&ListParams::default().labels(&format!("{CONTROLLER_UID_LABEL}={uid}"))).await?.items;
    let pod_uid = |p: &Pod| p.uid().unwrap_or_default();
    let holds = |uid: &String| owned.iter().any(|p| &pod_uid(p) == uid && tracked(p));

    // Counting: pods recorded as uncounted whose finalizer is gone are added to the counts; pods
    // that ended and still hold the finalizer are judged and recorded as uncounted.
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let (mut uncounted_failed, mut uncounted_succeeded) =
        (uncounted.failed.unwrap_or_default(), uncounted.succeeded.unwrap_or_default());
    let mut failed = status.failed.unwrap_or(0);
    let mut succeeded = status.succeeded.unwrap_or(0);
    failed += uncounted_failed.iter().filter(|u| !holds(u)).count() as i32;
    succeeded += uncounted_succeeded.iter().filter(|u| !holds(u)).count() as i32;
    uncounted_failed.retain(|u| holds(u));
    uncounted_succeeded.retain(|u| holds(u));
    let mut fail_job = None;
    let mut to_release: Vec<&Pod> = vec![];
    for pod in owned.iter().filter(|p| tracked(p) && ended(p)) {
        let id = pod_uid(pod);
        if uncounted_failed.contains(&id) || uncounted_succeeded.contains(&id) {
            to_release.push(pod);
            continue;
        }
        if finished {
            to_release.push(pod);
            continue;
        }
        if phase(pod) == "Succeeded" {
            uncounted_succeeded.push(id);
        } else {
            match spec.pod_failure_policy.as_ref().map_or(Action_::Count, |policy| failure_action(policy, pod)) {
                Action_::Ignore => {}
                Action_::FailJob(message) => {
                    fail_job = Some(message);
                    uncounted_failed.push(id);
                }
                Action_::Count => uncounted_failed.push(id),
            }
            context.last_failure.lock().unwrap_or_else(|p| p.into_inner()).insert(uid.clone(), Instant::now());
        }
        to_release.push(pod);
    }
    if finished {
        // A finished Job's pods that are still being deleted are not counted; let them go.
        to_release.extend(owned.iter().filter(|p| tracked(p) && p.metadata.deletion_timestamp.is_some()));
    }
    let failed_total = failed + uncounted_failed.len() as i32;
    let succeeded_total = succeeded + uncounted_succeeded.len() as i32;
    let active: Vec<&Pod> = owned.iter().filter(|p| !ended(p) && p.metadata.deletion_timestamp.is_none()).collect();
    let terminating = owned.iter().any(|p| !ended(p) && p.metadata.deletion_timestamp.is_some());
    let ready = active.iter().filter(|p| pod_ready(p)).count() as i32;
    let suspended = spec.suspend.unwrap_or(false);
    let start_time = status
        .start_time
        .as_ref()
        .map(|t| serde_json::to_value(t).expect("time"))
        .or_else(|| (!suspended).then(|| json!(now())));
    let deadline_passed = match (spec.active_deadline_seconds, &status.start_time) {
        (Some(limit), Some(start)) => jiff::Timestamp::now().duration_since(start.0).as_secs() >= limit,
        _ => false,
    };

    let mut new_status = json!({
        "active": active.len(), "succeeded": succeeded, "failed": failed, "ready": ready,
        "startTime": start_time,
        "uncountedTerminatedPods": {"failed": uncounted_failed, "succeeded": uncounted_succeeded},
    });
    let mut conditions: Vec<Value> =
        status.conditions.iter().flatten().map(|c| serde_json::to_value(c).expect("condition")).collect();
    let mut stop_active = suspended;
    let mut requeue = None;
    if !finished {
        if succeeded_total >= 1 {
            conditions.push(condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            conditions.push(condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"));
            new_status["completionTime"] = json!(now());
        } else if let Some(message) = fail_job {
            conditions.push(condition("FailureTarget", "PodFailurePolicy", &message));
            conditions.push(condition("Failed", "PodFailurePolicy", &message));
            stop_active = true;
        } else if failed_total > spec.backoff_limit.unwrap_or(6) {
            conditions.push(condition(
                "FailureTarget",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ));
            conditions.push(condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"));
            stop_active = true;
        } else if deadline_passed {
            conditions.push(condition(
                "FailureTarget",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ));
            conditions.push(condition("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"));
            stop_active = true;
        } else if !suspended && active.is_empty() && !terminating {
            let since = context.last_failure.lock().unwrap_or_else(|p| p.into_inner()).get(&uid).copied();
            let wait = since.map_or(Duration::ZERO, |t| retry_delay(failed_total).saturating_sub(t.elapsed()));
            if wait.is_zero() {
                create_pod(&pods, &job, &name, &uid).await?;
                new_status["active"] = json!(1);
            } else {
                requeue = Some(wait);
            }
        }
    }
    if stop_active || finished {
        for pod in &active {
            // A suspended Job's pods are let go uncounted, as the real controller does.
            if suspended {
                release(&pods, pod).await?;
            }
            match pods.delete(&pod.name_any(), &DeleteParams::default()).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e),
            }
        }
        new_status["active"] = json!(0);
        new_status["ready"] = json!(0);
    }
    if suspended {
        conditions.retain(|c| c["type"] != "Suspended");
        conditions.push(condition("Suspended", "JobSuspended", "Job suspended"));
    } else {
        conditions.retain(|c| c["type"] != "Suspended");
    }
    if !conditions.is_empty() {
        new_status["conditions"] = json!(conditions);
    }
    if let Some(t) = &status.completion_time {
        new_status["completionTime"] = serde_json::to_value(t).expect("time");
    }
    let old_status = serde_json::to_value(&status).expect("status");
    let changed = ["active", "succeeded", "failed", "ready", "startTime", "completionTime"]
        .iter()
        .any(|k| normalized(&old_status[*k]) != normalized(&new_status[*k]))
        || uncounted_changed(&old_status["uncountedTerminatedPods"], &new_status["uncountedTerminatedPods"])
        || conditions.len() != status.conditions.as_ref().map_or(0, Vec::len);
    if changed {
        let patch = json!({"status": new_status});
        jobs.patch_status(
            &name,
            &PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() },
            &Patch::Merge(&patch),
        )
        .await?;
    }
    // Only once the counts are recorded may the pods go.
    for pod in to_release {
        release(&pods, pod).await?;
    }
    Ok(match (requeue, spec.active_deadline_seconds) {
        (Some(wait), _) => Action::requeue(wait),
        (None, Some(_)) if !finished => Action::requeue(Duration::from_secs(1)),
        _ => Action::await_change(),
    })
}

/// Whether the uncounted pod lists differ (an absent list and an empty one are the same).
fn uncounted_changed(old: &Value, new: &Value) -> bool {
    ["failed", "succeeded"].iter().any(|k| {
        let list = |v: &Value| v[*k].as_array().cloned().unwrap_or_default();
        list(old) != list(new)
    })
}

/// What the pod failure policy says about one failed pod.
#[derive(Clone, Debug, PartialEq)]
enum Action_ {
    /// Fail the Job at once, with this message.
    FailJob(String),
    /// Do not count the failure towards `backoffLimit`.
    Ignore,
    /// Count it (also when no rule matches).
    Count,
}

/// The first rule of `policy` that matches the failed `pod`, as the real Job controller applies
/// them: `onExitCodes` (`In`/`NotIn`, optionally for one container; exit code 0 never matches)
/// or `onPodConditions` (type and status).
fn failure_action(policy: &PodFailurePolicy, pod: &Pod) -> Action_ {
    let pod_name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    let exits: Vec<(String, i32)> = pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| Some((c.name.clone(), c.state.as_ref()?.terminated.as_ref()?.exit_code)))
        .filter(|(_, code)| *code != 0)
        .collect();
    for (index, rule) in policy.rules.iter().enumerate() {
        let matched = if let Some(on) = &rule.on_exit_codes {
            exits
                .iter()
                .filter(|(name, _)| on.container_name.as_ref().is_none_or(|c| c == name))
                .find(|(_, code)| on.values.contains(code) == (on.operator == "In"))
                .map(|(name, code)| format!("Container {name} for pod {pod_name} failed with exit code {code}"))
        } else {
            rule.on_pod_conditions.iter().flatten().find_map(|wanted| {
                pod.status.iter().flat_map(|s| s.conditions.iter().flatten()).find_map(|c| {
                    let status = if wanted.status.is_empty() { "True" } else { wanted.status.as_str() };
                    (c.type_ == wanted.type_ && c.status == status)
                        .then(|| format!("Pod {pod_name} has condition {}", c.type_))
                })
            })
        };
        if let Some(what) = matched {
            return match rule.action.as_str() {
                "FailJob" => Action_::FailJob(format!("{what} matching FailJob rule at index {index}")),
                "Ignore" => Action_::Ignore,
                _ => Action_::Count,
            };
        }
    }
    Action_::Count
}

/// A count of 0 and no count are the same to the Job's readers.
fn normalized(v: &Value) -> Value {
    if v.as_i64() == Some(0) { Value::Null } else { v.clone() }
}

async fn create_pod(pods: &Api<Pod>, job: &Job, name: &str, uid: &str) -> Result<(), kube::Error> {
    let template = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert(JOB_NAME_LABEL.into(), name.into());
    labels.insert(CONTROLLER_UID_LABEL.into(), uid.into());
    labels.insert("job-name".into(), name.into());
    meta.generate_name = Some(format!("{name}-"));
    meta.name = None;
    meta.owner_references = job.controller_owner_ref(&()).map(|o| vec![o]);
    meta.finalizers.get_or_insert_with(Default::default).push(TRACKING_FINALIZER.into());
    let pod = Pod { metadata: meta, spec: template.spec, status: None };
    pods.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &pod).await?;
    Ok(())
}
