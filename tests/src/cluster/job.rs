//! The Job controller of the simulated cluster: one pod at a time from the Job's template
//! (`completions` and `parallelism` of 1, as the operator's Jobs are), retries up to
//! `backoffLimit`, `podFailurePolicy` (rules on exit codes and pod conditions: `FailJob`,
//! `Ignore`, `Count`, first match wins), `activeDeadlineSeconds`, `suspend`, and the
//! `Complete`/`Failed` conditions and counts in the Job's status. It talks to the API server only
//! through the API.

use std::sync::Arc;
use std::time::Duration;

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
const MANAGER: &str = "job-controller";

/// Runs the controller until the task is aborted.
pub async fn run(client: kube::Client) {
    let jobs: Api<Job> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    Controller::new(jobs, watcher::Config::default())
        .owns(pods, watcher::Config::default().labels(CONTROLLER_UID_LABEL))
        .run(reconcile, |_, _, _| Action::requeue(Duration::from_millis(500)), Arc::new(client))
        .for_each(|_| async {})
        .await;
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

fn condition(type_: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": "True", "reason": reason, "message": message,
           "lastProbeTime": now(), "lastTransitionTime": now()})
}

async fn reconcile(job: Arc<Job>, client: Arc<kube::Client>) -> Result<Action, kube::Error> {
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced((*client).clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced((*client).clone(), &namespace);
    let spec = job.spec.clone().unwrap_or_default();
    let status = job.status.clone().unwrap_or_default();
    let finished = status
        .conditions
        .iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
    let owned = pods.list(&ListParams::default().labels(&format!("{CONTROLLER_UID_LABEL}={uid}"))).await?.items;
    let active: Vec<&Pod> = owned
        .iter()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed") && p.metadata.deletion_timestamp.is_none())
        .collect();
    let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count() as i32;
    // Each failed pod as the pod failure policy sees it: ignored ones do not count.
    let judged: Vec<(Action_, &Pod)> = owned
        .iter()
        .filter(|p| phase(p) == "Failed")
        .map(|p| (spec.pod_failure_policy.as_ref().map_or(Action_::Count, |policy| failure_action(policy, p)), p))
        .collect();
    let failed = judged.iter().filter(|(a, _)| !matches!(a, Action_::Ignore)).count() as i32;
    let fail_job = judged.iter().find_map(|(a, _)| match a {
        Action_::FailJob(message) => Some(message.clone()),
        _ => None,
    });
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
    });
    let mut conditions: Vec<Value> =
        status.conditions.iter().flatten().map(|c| serde_json::to_value(c).expect("condition")).collect();
    let mut stop_active = suspended;
    if !finished {
        if succeeded >= 1 {
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
        } else if failed > spec.backoff_limit.unwrap_or(6) {
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
        } else if !suspended && active.is_empty() {
            create_pod(&pods, &job, &name, &uid).await?;
            new_status["active"] = json!(1);
        }
    }
    if stop_active || finished {
        for pod in &active {
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
    Ok(match spec.active_deadline_seconds {
        Some(_) if !finished => Action::requeue(Duration::from_secs(1)),
        _ => Action::await_change(),
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
    let pod = Pod { metadata: meta, spec: template.spec, status: None };
    pods.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &pod).await?;
    Ok(())
}
