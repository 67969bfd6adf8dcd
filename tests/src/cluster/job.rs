//! The Job controller of the simulated cluster. A `NonIndexed` Job (the default) runs one pod at a
//! time from its template (`completions` and `parallelism` of 1, as the operator's Jobs are); an
//! `Indexed` one runs a pod per completion index, up to `parallelism` at once, and completes once
//! every index has a pod that succeeded ([`indexed`]: `status.completedIndexes`, a failed index
//! retried alone, `backoffLimitPerIndex` and `maxFailedIndexes` with `status.failedIndexes`).
//! Either retries up to `backoffLimit` (default 6; unlimited with `backoffLimitPerIndex`) with the
//! real controller's delay between them (10 s, doubling per failure since the last success,
//! capped at 6 minutes; per index with `backoffLimitPerIndex`; [`scale_backoff`] lets a test
//! shorten it), and honours `podFailurePolicy` (rules on exit codes and pod conditions: `FailJob`,
//! `FailIndex`, `Ignore`, `Count`, first match wins), `activeDeadlineSeconds`, `suspend`, and the
//! `Complete`/`Failed` conditions and counts in the Job's status. Pods are tracked with the
//! `batch.kubernetes.io/job-tracking` finalizer and `status.uncountedTerminatedPods`, as the real
//! controller tracks them, so a pod deleted while it runs still ends (the kubelet marks it
//! `Failed`) and counts as a failure, and no pod is counted twice. A replacement is created only
//! once the previous pod is terminal (the `podReplacementPolicy: Failed` behaviour). It talks to
//! the API server only through the API.

pub mod indexed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobSpec, PodFailurePolicy};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::pod_ready;
use crate::apiserver::store::now;
use indexed::{IndexPod, IndexTally, IndexedSpec, completion_index};

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
/// memory: each Job's failures since its last success, and when the last one was seen.
struct Context {
    client: kube::Client,
    backoff: Mutex<HashMap<String, Backoff>>,
}

/// A Job's backoff record (the real controller's `backoffRecord`).
#[derive(Clone, Copy, Debug)]
struct Backoff {
    /// Failures counted since the Job's last success (those the failure policy ignored are not).
    failures: i32,
    /// When the last failure, counted or ignored, was judged.
    last_failure: Instant,
}

impl Context {
    /// Records the pods counted now in the backoff record of the Job `job` (its uid), as the real
    /// controller does: a success starts the count again, from the failures that ended after it.
    fn record(&self, job: &str, counted: &[&Judged<'_>]) {
        let successes: Vec<&Judged> = counted.iter().copied().filter(|j| j.verdict == Verdict::Succeeded).collect();
        let mut records = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        if !successes.is_empty() {
            records.remove(job);
        }
        let last_success = successes.iter().filter_map(|j| finished_at(j.pod)).max();
        for j in counted {
            let Verdict::Failed(action) = &j.verdict else { continue };
            if !successes.is_empty() && finished_at(j.pod).is_none_or(|f| last_success.is_none_or(|s| f <= s)) {
                continue;
            }
            let record =
                records.entry(job.to_string()).or_insert(Backoff { failures: 0, last_failure: Instant::now() });
            record.last_failure = Instant::now();
            if *action != Action_::Ignore {
                record.failures += 1;
            }
        }
    }

    /// How long the Job `job`'s next pod must still wait after its failures (the Job-wide delay;
    /// an Indexed Job with `backoffLimitPerIndex` waits per index instead).
    fn remaining_delay(&self, job: &str) -> Duration {
        let records = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        records.get(job).map_or(Duration::ZERO, |b| retry_delay(b.failures).saturating_sub(b.last_failure.elapsed()))
    }
}

/// Runs the controller until the task is aborted.
pub async fn run(client: kube::Client) {
    let jobs: Api<Job> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    tokio::spawn(release_orphans(client.clone()));
    let context = Arc::new(Context { client, backoff: Mutex::default() });
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

/// When a pod ended, as the real controller reads it (`getFinishedTime`): its containers' last
/// `finishedAt` when every container has one, else when it turned not Ready, else when it was
/// deleted (less its grace period), else when it was made.
fn finished_at(pod: &Pod) -> Option<jiff::Timestamp> {
    let containers: Vec<Option<jiff::Timestamp>> = pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| Some(c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref()?.0))
        .collect();
    if !containers.is_empty() && containers.iter().all(Option::is_some) {
        return containers.into_iter().flatten().max();
    }
    let not_ready = pod
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_ == "Ready" && c.status == "False")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    let deleted = || {
        let at = pod.metadata.deletion_timestamp.as_ref()?.0;
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
        at.checked_sub(jiff::SignedDuration::from_secs(grace)).ok()
    };
    not_ready.or_else(deleted).or_else(|| pod.creation_timestamp().map(|t| t.0))
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

/// Deletes `pod` (it stays, being deleted, while a finalizer holds it); one already gone is not
/// an error.
async fn delete(pods: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    match pods.delete(&pod.name_any(), &DeleteParams::default()).await {
        Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn condition(type_: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": "True", "reason": reason, "message": message,
           "lastProbeTime": now(), "lastTransitionTime": now()})
}

/// What the controller makes of a pod that ended and is not counted yet.
#[derive(Clone, Debug, PartialEq)]
enum Verdict {
    /// It succeeded.
    Succeeded,
    /// It failed, and this is what the failure policy says of it.
    Failed(Action_),
    /// A pod of an Indexed Job without a valid index: let go uncounted, as the real controller
    /// lets it go.
    Stray,
}

/// A pod that ended and is not counted yet, with the controller's verdict on it.
#[derive(Debug)]
struct Judged<'p> {
    pod: &'p Pod,
    verdict: Verdict,
}

/// The verdict on a pod that ended.
fn judge(spec: &JobSpec, indexed: Option<&IndexedSpec>, pod: &Pod) -> Verdict {
    if let Some(ix) = indexed
        && completion_index(pod).is_none_or(|i| i >= ix.completions)
    {
        return Verdict::Stray;
    }
    if phase(pod) == "Succeeded" {
        return Verdict::Succeeded;
    }
    let action = spec.pod_failure_policy.as_ref().map_or(Action_::Count, |policy| failure_action(policy, pod));
    // `FailIndex` means something only with `backoffLimitPerIndex` (which the API server requires
    // of a policy that has it).
    let per_index = indexed.is_some_and(|ix| ix.backoff_limit_per_index.is_some());
    Verdict::Failed(if action == Action_::FailIndex && !per_index { Action_::Count } else { action })
}

/// The counts a Job's end is decided on.
struct Tally {
    /// Succeeded pods (a NonIndexed Job), or complete indexes (an Indexed one).
    succeeded: i32,
    /// Failures counted, those judged now included.
    failed: i32,
    /// The message of a `FailJob` rule a pod judged now matched.
    fail_job: Option<String>,
}

/// How a Job ends.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// `Complete`, after `SuccessCriteriaMet`.
    Complete,
    /// `Failed`, after `FailureTarget`, with this reason and message.
    Failed { reason: &'static str, message: String },
}

impl Outcome {
    fn failed(reason: &'static str, message: &str) -> Self {
        Self::Failed { reason, message: message.to_string() }
    }
}

/// Whether a Job that has not finished fails now, for reasons every Job shares, in the real
/// controller's order: a `FailJob` rule, more failures than `backoffLimit` (default 6, or
/// unlimited with `backoffLimitPerIndex`), `activeDeadlineSeconds` passed.
fn failure(spec: &JobSpec, tally: &Tally, deadline_passed: bool) -> Option<Outcome> {
    let default_limit = if spec.backoff_limit_per_index.is_some() { i32::MAX } else { 6 };
    if let Some(message) = &tally.fail_job {
        Some(Outcome::Failed { reason: "PodFailurePolicy", message: message.clone() })
    } else if tally.failed > spec.backoff_limit.unwrap_or(default_limit) {
        Some(Outcome::failed("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
    } else if deadline_passed {
        Some(Outcome::failed("DeadlineExceeded", "Job was active longer than specified deadline"))
    } else {
        None
    }
}

/// How a Job that has not finished ends now, if it does. A NonIndexed Job completes with its first
/// success, before any failure is weighed (it has one completion). An Indexed one fails first for
/// the reasons of [`failure`], then, with `backoffLimitPerIndex`, for more failed indexes than
/// `maxFailedIndexes` or, once every index is complete or failed, for any failed index; it
/// completes once every index is complete and no pod is active.
fn decide(
    spec: &JobSpec,
    indexes: Option<&IndexTally>,
    tally: &Tally,
    deadline_passed: bool,
    no_active: bool,
) -> Option<Outcome> {
    let Some(indexes) = indexes else {
        if tally.succeeded >= 1 {
            return Some(Outcome::Complete);
        }
        return failure(spec, tally, deadline_passed);
    };
    if let Some(outcome) = failure(spec, tally, deadline_passed) {
        return Some(outcome);
    }
    let ix = &indexes.spec;
    if let Some(failed) = &indexes.failed {
        if ix.max_failed_indexes.is_some_and(|max| failed.total() > max) {
            return Some(Outcome::failed(
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes",
            ));
        }
        if failed.total() > 0 && failed.total() + indexes.completed.total() >= ix.completions {
            return Some(Outcome::failed("FailedIndexes", "Job has failed indexes"));
        }
    }
    (indexes.completed.total() >= ix.completions && no_active).then_some(Outcome::Complete)
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
    let indexed = IndexedSpec::of(&spec);
    let finished = status
        .conditions
        .iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
    let owned = pods.list(&ListParams::default().labels(&format!("{CONTROLLER_UID_LABEL}={uid}"))).await?.items;
    let pod_uid = |p: &Pod| p.uid().unwrap_or_default();
    let holds = |uid: &String| owned.iter().any(|p| &pod_uid(p) == uid && tracked(p));

    // Counting: pods recorded as uncounted whose finalizer is gone are added to the counts; pods
    // that ended and still hold the finalizer are judged, then (unless an Indexed Job holds one
    // back for its index) recorded as uncounted and let go once the status is written.
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let (mut uncounted_failed, mut uncounted_succeeded) =
        (uncounted.failed.unwrap_or_default(), uncounted.succeeded.unwrap_or_default());
    let mut failed = status.failed.unwrap_or(0);
    let mut succeeded = status.succeeded.unwrap_or(0);
    failed += uncounted_failed.iter().filter(|u| !holds(u)).count() as i32;
    succeeded += uncounted_succeeded.iter().filter(|u| !holds(u)).count() as i32;
    uncounted_failed.retain(|u| holds(u));
    uncounted_succeeded.retain(|u| holds(u));
    let mut to_release: Vec<&Pod> = vec![];
    let mut judged: Vec<Judged> = vec![];
    for pod in owned.iter().filter(|p| tracked(p) && ended(p)) {
        let id = pod_uid(pod);
        if finished || uncounted_failed.contains(&id) || uncounted_succeeded.contains(&id) {
            to_release.push(pod);
        } else {
            judged.push(Judged { pod, verdict: judge(&spec, indexed.as_ref(), pod) });
        }
    }
    if finished {
        // A finished Job's pods that are still being deleted are not counted; let them go.
        to_release.extend(owned.iter().filter(|p| tracked(p) && p.metadata.deletion_timestamp.is_some()));
    }
    let active: Vec<&Pod> = owned.iter().filter(|p| !ended(p) && p.metadata.deletion_timestamp.is_none()).collect();
    let terminating: Vec<&Pod> =
        owned.iter().filter(|p| !ended(p) && p.metadata.deletion_timestamp.is_some()).collect();
    let ready = active.iter().filter(|p| pod_ready(p)).count() as i32;
    let indexes = indexed.as_ref().map(|ix| IndexTally::new(ix, &status, &judged, &active));
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

    let failed_now =
        judged.iter().filter(|j| matches!(&j.verdict, Verdict::Failed(a) if *a != Action_::Ignore)).count();
    let succeeded_now = judged.iter().filter(|j| j.verdict == Verdict::Succeeded).count();
    let tally = Tally {
        succeeded: match &indexes {
            Some(t) => t.completed.total(),
            None => succeeded + (uncounted_succeeded.len() + succeeded_now) as i32,
        },
        failed: failed + (uncounted_failed.len() + failed_now) as i32,
        fail_job: judged.iter().find_map(|j| match &j.verdict {
            Verdict::Failed(Action_::FailJob(message)) => Some(message.clone()),
            _ => None,
        }),
    };
    let outcome =
        if finished { None } else { decide(&spec, indexes.as_ref(), &tally, deadline_passed, active.is_empty()) };

    // Recording: what was judged is counted and let go, except a failed pod an Indexed Job holds
    // back until its index has a new pod (all go once the Job ends).
    let mut counted: Vec<&Judged> = vec![];
    for j in &judged {
        if outcome.is_none() && indexes.as_ref().is_some_and(|t| t.holds(j.pod)) {
            continue;
        }
        match &j.verdict {
            // An Indexed Job counts a success by its index (`completedIndexes`), not its uid.
            Verdict::Succeeded if indexed.is_none() => uncounted_succeeded.push(pod_uid(j.pod)),
            Verdict::Succeeded | Verdict::Stray | Verdict::Failed(Action_::Ignore) => {}
            Verdict::Failed(_) => uncounted_failed.push(pod_uid(j.pod)),
        }
        counted.push(j);
        to_release.push(j.pod);
    }
    context.record(&uid, &counted);

    let mut new_status = json!({
        "active": active.len(),
        "succeeded": if indexed.is_some() { tally.succeeded } else { succeeded },
        "failed": failed, "ready": ready,
        "startTime": start_time,
        "uncountedTerminatedPods": {"failed": uncounted_failed, "succeeded": uncounted_succeeded},
    });
    if let Some(t) = &indexes {
        // An empty `completedIndexes` is left out (null removes it in a merge patch), as the real
        // controller leaves it out; `failedIndexes` is written, empty too, with backoffLimitPerIndex.
        let completed = t.completed.to_string();
        new_status["completedIndexes"] = if completed.is_empty() { Value::Null } else { json!(completed) };
        if let Some(f) = &t.failed {
            new_status["failedIndexes"] = json!(f.to_string());
        }
    }
    let mut conditions: Vec<Value> =
        status.conditions.iter().flatten().map(|c| serde_json::to_value(c).expect("condition")).collect();
    let mut stop_active = suspended;
    let mut requeue = None;
    match outcome {
        Some(Outcome::Complete) => {
            conditions.push(condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            conditions.push(condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"));
            new_status["completionTime"] = json!(now());
        }
        Some(Outcome::Failed { reason, message }) => {
            conditions.push(condition("FailureTarget", reason, &message));
            conditions.push(condition("Failed", reason, &message));
            stop_active = true;
        }
        None if finished || suspended => {}
        None => match &indexes {
            Some(index_tally) => {
                let census = Census { active: &active, terminating: &terminating };
                let managed = manage_indexed(&pods, &job, index_tally, &census, &context).await?;
                new_status["active"] = json!(managed.active);
                requeue = managed.requeue;
            }
            None if active.is_empty() && terminating.is_empty() => {
                let wait = context.remaining_delay(&uid);
                if wait.is_zero() {
                    create_pod(&pods, &job, None).await?;
                    new_status["active"] = json!(1);
                } else {
                    requeue = Some(wait);
                }
            }
            None => {}
        },
    }
    if stop_active || finished {
        for pod in &active {
            // A suspended Job's pods are let go uncounted, as the real controller does.
            if suspended {
                release(&pods, pod).await?;
            }
            delete(&pods, pod).await?;
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
    let changed =
        ["active", "succeeded", "failed", "ready", "startTime", "completionTime", "completedIndexes", "failedIndexes"]
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

/// A Job's pods that have not ended: running or about to (`active`), and being deleted.
struct Census<'a, 'p> {
    active: &'a [&'p Pod],
    terminating: &'a [&'p Pod],
}

/// What managing an Indexed Job's pods left.
struct Managed {
    /// Its active pods now.
    active: usize,
    /// When to look again, for a pending index still waiting out its backoff delay.
    requeue: Option<Duration>,
}

/// Makes an Indexed Job's pods match its spec, as the real controller's `manageJob` does in one
/// pass: removes surplus pods (see [`indexed::surplus`]) if there are any, else creates pods for
/// the lowest pending indexes, up to `parallelism` (and the indexes left) less the active and
/// terminating pods, once their delay has passed: the Job's since its last failure, or each
/// index's own with `backoffLimitPerIndex`.
async fn manage_indexed(
    pods: &Api<Pod>,
    job: &Job,
    tally: &IndexTally<'_>,
    census: &Census<'_, '_>,
    context: &Context,
) -> Result<Managed, kube::Error> {
    let ix = &tally.spec;
    let active = census.active.len();
    let want = ix.parallelism.min(ix.completions - tally.completed.total()).max(0) as usize;
    let surplus = indexed::surplus(census.active, ix.completions, want);
    if !surplus.is_empty() {
        // As the real controller's `deleteJobPods`: let go uncounted, then deleted.
        for pod in &surplus {
            release(pods, pod).await?;
            delete(pods, pod).await?;
        }
        return Ok(Managed { active: active - surplus.len(), requeue: None });
    }
    let room = want.saturating_sub(active + census.terminating.len());
    let taken = tally.taken(census.active, census.terminating);
    let pending = indexed::first_pending(&taken, room, ix.completions);
    if pending.is_empty() {
        return Ok(Managed { active, requeue: None });
    }
    let mut requeue: Option<Duration> = None;
    let mut due = vec![];
    if ix.backoff_limit_per_index.is_some() {
        for index in pending {
            let wait = tally.remaining_delay(index);
            if wait.is_zero() {
                due.push(index);
            } else {
                requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
            }
        }
    } else {
        let wait = context.remaining_delay(&job.uid().unwrap_or_default());
        if !wait.is_zero() {
            return Ok(Managed { active, requeue: Some(wait) });
        }
        due = pending;
    }
    for &index in &due {
        let failures = ix.backoff_limit_per_index.map(|_| tally.next_failure_counts(index));
        create_pod(pods, job, Some(&IndexPod { index, failures })).await?;
    }
    Ok(Managed { active: active + due.len(), requeue })
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
    /// Fail the pod's index at once (an Indexed Job with `backoffLimitPerIndex`; counted too).
    FailIndex,
    /// Do not count the failure towards `backoffLimit` (nor `backoffLimitPerIndex`).
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
                "FailIndex" => Action_::FailIndex,
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

/// Creates a pod from the Job's template: labelled and owned by the Job, tracked by its
/// finalizer, and, for an Indexed Job, made `index`'s pod (see [`IndexPod::apply`]).
async fn create_pod(pods: &Api<Pod>, job: &Job, index: Option<&IndexPod>) -> Result<(), kube::Error> {
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let template = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert(JOB_NAME_LABEL.into(), name.clone());
    labels.insert(CONTROLLER_UID_LABEL.into(), uid);
    labels.insert("job-name".into(), name.clone());
    meta.generate_name = Some(format!("{name}-"));
    meta.name = None;
    meta.owner_references = job.controller_owner_ref(&()).map(|o| vec![o]);
    meta.finalizers.get_or_insert_with(Default::default).push(TRACKING_FINALIZER.into());
    let mut pod = Pod { metadata: meta, spec: template.spec, status: None };
    if let Some(index) = index {
        index.apply(&mut pod, &name);
    }
    pods.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &pod).await?;
    Ok(())
}
