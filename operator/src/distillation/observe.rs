//! What a DistillationJob's status should say, computed from what is observed — its Job and the
//! Job's pods — without a client. Pure, so every mapping is unit-tested.
//!
//! The rules: `Running` only while a worker pod is running now (never after it died); `Succeeded`
//! and `Failed` from the Job's own terminal conditions; the result from the succeeded pod's
//! termination message; conditions whose `lastTransitionTime` moves only when their status flips,
//! so a reconcile that observes nothing new computes the status already stored and writes nothing.

use distillery_crds::conditions::{reasons, set_condition, types};
use distillery_crds::distillation::{DistillationResult, JobPhase};
use distillery_crds::{DistillationJob, DistillationJobStatus};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::build::{CONTAINER, SpecError};
use crate::objects::{job_condition, pod_phase};

/// The most of a termination message quoted in a condition.
pub const QUOTED_MESSAGE: usize = 400;

/// What the reconciler found.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    /// The Job, if it exists.
    pub job: Option<&'a Job>,
    /// Its pods.
    pub pods: &'a [Pod],
    /// The Job was built from an earlier spec than the current one.
    pub spec_changed_after_start: bool,
    /// The Job's name.
    pub job_name: &'a str,
}

/// The worker container's termination state in `pod`: (exit code, message).
fn terminated(pod: &Pod) -> Option<(i32, String)> {
    crate::objects::terminated(pod, CONTAINER)
}

fn created(pod: &Pod) -> Option<&Time> {
    pod.metadata.creation_timestamp.as_ref()
}

fn quote(message: &str) -> String {
    crate::objects::quote(message, QUOTED_MESSAGE)
}

/// The summary the worker wrote as its termination message.
pub fn parse_result(message: &str) -> Result<DistillationResult, String> {
    serde_json::from_str(message.trim()).map_err(|e| format!("the worker's summary is not readable ({e})"))
}

/// The status for a spec that cannot run: `Failed`, `Accepted=False` with the reason, and nothing
/// retried until the spec changes.
pub fn invalid_status(dj: &DistillationJob, error: &SpecError, now: &Time) -> DistillationJobStatus {
    let generation = dj.metadata.generation;
    let mut status = operator_part(dj);
    status.observed_generation = generation;
    status.phase = Some(JobPhase::Failed);
    refused_conditions(&mut status.conditions, &error.to_string(), generation, now);
    status
}

/// The conditions of a resource whose spec cannot run (`message` says why): `Accepted=False`
/// and `Failed=True` with reason `InvalidSpec`. Shared by the controllers that run Jobs.
pub fn refused_conditions(c: &mut Vec<Condition>, message: &str, generation: Option<i64>, now: &Time) {
    set_condition(c, types::ACCEPTED, false, reasons::INVALID_SPEC, message, generation, now);
    set_condition(c, types::PROGRESSING, false, reasons::INVALID_SPEC, "the spec must be fixed first", generation, now);
    set_condition(c, types::COMPLETE, false, reasons::INVALID_SPEC, "", generation, now);
    set_condition(c, types::FAILED, true, reasons::INVALID_SPEC, message, generation, now);
}

/// The conditions while `job_name` is being created: `Progressing=True` (`Pending`), neither
/// complete nor failed. Shared by the controllers that run Jobs.
pub fn creating_conditions(c: &mut Vec<Condition>, job_name: &str, generation: Option<i64>, now: &Time) {
    let message = format!("creating Job {job_name}");
    set_condition(c, types::PROGRESSING, true, reasons::PENDING, message, generation, now);
    set_condition(c, types::COMPLETE, false, reasons::NOT_FINISHED, "", generation, now);
    set_condition(c, types::FAILED, false, reasons::NOT_FINISHED, "", generation, now);
}

/// The status fields the operator owns (everything but the worker's `progress`), as stored now.
pub fn operator_part(dj: &DistillationJob) -> DistillationJobStatus {
    let mut status = dj.status.clone().unwrap_or_default();
    status.progress = None;
    status
}

/// The status the observations call for.
pub fn desired_status(dj: &DistillationJob, observed: &Observed, now: &Time) -> DistillationJobStatus {
    let generation = dj.metadata.generation;
    let mut status = operator_part(dj);
    status.observed_generation = generation;
    status.job_name = Some(observed.job_name.to_string());
    let c = &mut status.conditions;
    if observed.spec_changed_after_start {
        let message = format!(
            "the spec changed (generation {}) after Job {} was created from an earlier one; a Job's pod template cannot \
             change, so it goes on with the earlier spec. Delete and re-apply the DistillationJob to run the new spec",
            generation.unwrap_or_default(),
            observed.job_name
        );
        set_condition(c, types::ACCEPTED, false, reasons::SPEC_CHANGED_AFTER_START, message, generation, now);
    } else {
        set_condition(c, types::ACCEPTED, true, reasons::SPEC_VALID, "the spec is valid", generation, now);
    }

    let Some(job) = observed.job else {
        status.phase = Some(JobPhase::Pending);
        creating_conditions(c, observed.job_name, generation, now);
        return status;
    };
    let job_status = job.status.clone().unwrap_or_default();
    status.start_time = job_status.start_time.clone().or(status.start_time);
    let mut pods: Vec<&Pod> = observed.pods.iter().collect();
    pods.sort_by(|a, b| created(a).cmp(&created(b)));
    let last_failure = pods
        .iter()
        .rev()
        .filter(|p| pod_phase(p) == "Failed")
        .find_map(|p| terminated(p))
        .map(|(code, message)| format!("exit code {code}: {}", quote(&message)));

    if job_condition(job, "Complete").is_some() {
        status.phase = Some(JobPhase::Succeeded);
        status.completion_time = job_status.completion_time.clone().or_else(|| Some(now.clone()));
        let summary = pods.iter().rev().filter(|p| pod_phase(p) == "Succeeded").find_map(|p| terminated(p));
        let (complete_message, result) = match summary.map(|(_, m)| parse_result(&m)) {
            Some(Ok(result)) => (format!("artifact written to {}", result.artifact_uri), Some(result)),
            Some(Err(e)) => (e, None),
            None if let Some(stored) = &status.result => {
                (format!("artifact written to {}", stored.artifact_uri), Some(stored.clone()))
            }
            None => ("the worker's pod is gone; its summary could not be read".to_string(), None),
        };
        let warnings = result.as_ref().map(|r| r.warnings.clone()).unwrap_or_default();
        status.result = result;
        match warnings.first() {
            Some(first) => {
                let message = warnings.iter().map(|w| w.message.as_str()).collect::<Vec<_>>().join("; ");
                set_condition(c, types::QUALITY_WARNING, true, &first.reason, message, generation, now);
            }
            None => {
                set_condition(c, types::QUALITY_WARNING, false, reasons::RESULTS_AS_EXPECTED, "", generation, now);
            }
        }
        set_condition(c, types::PROGRESSING, false, reasons::SUCCEEDED, "finished", generation, now);
        set_condition(c, types::COMPLETE, true, reasons::SUCCEEDED, complete_message, generation, now);
        set_condition(c, types::FAILED, false, reasons::SUCCEEDED, "", generation, now);
        return status;
    }
    if let Some(failed) = job_condition(job, "Failed") {
        status.phase = Some(JobPhase::Failed);
        status.completion_time = status.completion_time.or_else(|| Some(now.clone()));
        let reason = match failed.reason.as_deref() {
            Some("DeadlineExceeded") => reasons::DEADLINE_EXCEEDED,
            Some("PodFailurePolicy") => reasons::WORKER_REFUSED_SPEC,
            _ => reasons::BACKOFF_LIMIT_EXCEEDED,
        };
        let message = match (&last_failure, reason) {
            (Some(last), reasons::WORKER_REFUSED_SPEC) => {
                format!("the worker refused the spec ({last}); not retried: change the spec to run again")
            }
            (Some(last), _) => {
                format!("{}; last attempt: {last}", failed.message.as_deref().unwrap_or("the Job failed"))
            }
            (None, _) => failed.message.clone().unwrap_or_else(|| format!("Job {} failed", observed.job_name)),
        };
        set_condition(c, types::PROGRESSING, false, reason, "stopped", generation, now);
        set_condition(c, types::COMPLETE, false, reason, "", generation, now);
        set_condition(c, types::FAILED, true, reason, message, generation, now);
        return status;
    }
    set_condition(c, types::COMPLETE, false, reasons::NOT_FINISHED, "", generation, now);
    set_condition(c, types::FAILED, false, reasons::NOT_FINISHED, "", generation, now);
    if job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false) {
        status.phase = Some(JobPhase::Suspended);
        let message = "spec.suspend is true: no worker runs; training resumes from its checkpoint when unset";
        set_condition(c, types::PROGRESSING, false, reasons::SUSPENDED, message, generation, now);
        return status;
    }
    let running = pods
        .iter()
        .rev()
        .find(|p| pod_phase(p) == "Running" && p.metadata.deletion_timestamp.is_none() && terminated(p).is_none());
    let failures = job_status.failed.unwrap_or(0);
    match (running, &last_failure) {
        (Some(pod), _) => {
            status.phase = Some(JobPhase::Running);
            let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
            let message = match failures {
                0 => format!("worker pod {pod_name} is running"),
                n => format!("worker pod {pod_name} is running (attempt {}; resumes from its checkpoint)", n + 1),
            };
            set_condition(c, types::PROGRESSING, true, reasons::RUNNING, message, generation, now);
        }
        (None, Some(last)) if failures > 0 => {
            status.phase = Some(JobPhase::Pending);
            let limit = job.spec.as_ref().and_then(|s| s.backoff_limit).unwrap_or(6);
            let message = format!("worker attempt {failures} of {} failed ({last}); waiting for the retry", limit + 1);
            set_condition(c, types::PROGRESSING, true, reasons::RETRYING, message, generation, now);
        }
        _ => {
            status.phase = Some(JobPhase::Pending);
            set_condition(c, types::PROGRESSING, true, reasons::PENDING, "waiting for the worker pod", generation, now);
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::{Value, json};

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn dj() -> DistillationJob {
        let mut dj: DistillationJob =
            serde_norway::from_str(include_str!("../../../examples/01-distillationjob.yaml")).unwrap();
        dj.metadata.generation = Some(1);
        dj
    }

    fn job(status: Value) -> Job {
        serde_json::from_value(
            json!({"metadata": {"name": "j"}, "spec": {"template": {}, "backoffLimit": 3}, "status": status}),
        )
        .unwrap()
    }

    fn pod(name: &str, created: i64, phase: &str, terminated: Option<(i32, &str)>) -> Pod {
        let state = match terminated {
            Some((code, message)) => json!({"terminated": {"exitCode": code, "message": message}}),
            None => json!({"running": {}}),
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": t(created)},
            "status": {"phase": phase, "containerStatuses": [{"name": "worker", "state": state, "ready": true,
                        "restartCount": 0, "image": "w", "imageID": ""}]},
        }))
        .unwrap()
    }

    fn observe(dj: &DistillationJob, job: Option<&Job>, pods: &[Pod]) -> DistillationJobStatus {
        desired_status(dj, &Observed { job, pods, spec_changed_after_start: false, job_name: "j" }, &t(100))
    }

    fn condition(status: &DistillationJobStatus, type_: &str) -> (String, String) {
        let c = distillery_crds::conditions::find(&status.conditions, type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn running_only_while_a_pod_runs_and_not_after_it_died() {
        let dj = dj();
        let active = job(json!({"active": 1, "startTime": t(50)}));
        let s = observe(&dj, Some(&active), &[pod("a", 1, "Running", None)]);
        assert_eq!(s.phase, Some(JobPhase::Running));
        assert_eq!(s.start_time, Some(t(50)));
        // The pod died; the Job has not made a new one yet.
        let after = job(json!({"failed": 1}));
        let s = observe(&dj, Some(&after), &[pod("a", 1, "Failed", Some((137, "killed")))]);
        assert_eq!(s.phase, Some(JobPhase::Pending));
        assert_eq!(condition(&s, types::PROGRESSING), ("True".into(), reasons::RETRYING.into()));
        let message = &distillery_crds::conditions::find(&s.conditions, types::PROGRESSING).unwrap().message;
        assert!(message.contains("attempt 1 of 4") && message.contains("exit code 137"), "{message}");
    }

    #[test]
    fn success_reads_the_result_from_the_termination_message() {
        let dj = dj();
        let result = json!({"artifactUri": "file:///artifacts/x", "artifactDigest": "ab", "teacher": {"parameters": 22},
                            "student": {"parameters": 5, "accuracy": 0.8}});
        let done = job(json!({"succeeded": 1, "completionTime": t(90),
                               "conditions": [{"type": "Complete", "status": "True"}]}));
        let s = observe(&dj, Some(&done), &[pod("a", 1, "Succeeded", Some((0, &result.to_string())))]);
        assert_eq!(s.phase, Some(JobPhase::Succeeded));
        assert_eq!(s.completion_time, Some(t(90)));
        assert_eq!(s.result.as_ref().unwrap().artifact_uri, "file:///artifacts/x");
        assert_eq!(condition(&s, types::COMPLETE), ("True".into(), reasons::SUCCEEDED.into()));
        // Recomputed from its own output, nothing changes: a no-op reconcile writes nothing.
        let mut stored = dj.clone();
        stored.status = Some(s.clone());
        let again = desired_status(
            &stored,
            &Observed { job: Some(&done), pods: &[], spec_changed_after_start: false, job_name: "j" },
            &t(500),
        );
        assert_eq!(again, s, "the pod is gone, the stored result stays");
        assert_eq!(condition(&s, types::QUALITY_WARNING), ("False".into(), reasons::RESULTS_AS_EXPECTED.into()));
    }

    #[test]
    fn a_result_with_quality_warnings_sets_the_warning_condition() {
        let dj = dj();
        let result = json!({"artifactUri": "file:///artifacts/x", "artifactDigest": "ab", "teacher": {"parameters": 22},
                            "student": {"parameters": 5, "accuracy": 0.7},
                            "warnings": [{"reason": "NoDistillationGain", "message": "no better than labels alone"}]});
        let done = job(json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}));
        let s = observe(&dj, Some(&done), &[pod("a", 1, "Succeeded", Some((0, &result.to_string())))]);
        assert_eq!(s.phase, Some(JobPhase::Succeeded));
        assert_eq!(condition(&s, types::QUALITY_WARNING), ("True".into(), "NoDistillationGain".into()));
        assert_eq!(s.result.unwrap().warnings[0].message, "no better than labels alone");
    }

    #[test]
    fn failure_names_the_reason_and_the_last_attempt() {
        let dj = dj();
        let failed = job(json!({"failed": 4, "conditions": [{"type": "Failed", "status": "True",
                         "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}));
        let s = observe(&dj, Some(&failed), &[pod("a", 1, "Failed", Some((1, "teacher not found: /models/x")))]);
        assert_eq!(s.phase, Some(JobPhase::Failed));
        let c = distillery_crds::conditions::find(&s.conditions, types::FAILED).unwrap();
        assert_eq!(c.reason, reasons::BACKOFF_LIMIT_EXCEEDED);
        assert!(c.message.contains("teacher not found"), "{}", c.message);
    }

    #[test]
    fn a_permanent_worker_failure_fails_at_once_with_the_workers_message() {
        let dj = dj();
        let failed = job(json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                         "reason": "PodFailurePolicy",
                         "message": "Container worker for pod default/a failed with exit code 2 matching FailJob rule at index 0"}]}));
        let s = observe(&dj, Some(&failed), &[pod("a", 1, "Failed", Some((2, "spec.dataset.uri: no such file")))]);
        assert_eq!(s.phase, Some(JobPhase::Failed));
        let c = distillery_crds::conditions::find(&s.conditions, types::FAILED).unwrap();
        assert_eq!(c.reason, reasons::WORKER_REFUSED_SPEC);
        assert!(
            c.message.contains("spec.dataset.uri: no such file") && c.message.contains("not retried"),
            "{}",
            c.message
        );
    }

    #[test]
    fn pending_suspended_invalid_and_changed_specs() {
        let dj = dj();
        assert_eq!(observe(&dj, None, &[]).phase, Some(JobPhase::Pending));
        let suspended: Job = serde_json::from_value(json!({"spec": {"template": {}, "suspend": true}})).unwrap();
        assert_eq!(observe(&dj, Some(&suspended), &[]).phase, Some(JobPhase::Suspended));
        let error = SpecError::MissingMetadata("uid");
        let s = invalid_status(&dj, &error, &t(1));
        assert_eq!(s.phase, Some(JobPhase::Failed));
        assert_eq!(condition(&s, types::ACCEPTED), ("False".into(), reasons::INVALID_SPEC.into()));
        let changed = desired_status(
            &dj,
            &Observed {
                job: Some(&job(json!({"active": 1}))),
                pods: &[],
                spec_changed_after_start: true,
                job_name: "j",
            },
            &t(1),
        );
        assert_eq!(condition(&changed, types::ACCEPTED), ("False".into(), reasons::SPEC_CHANGED_AFTER_START.into()));
    }

    #[test]
    fn the_workers_progress_is_not_the_operators() {
        let mut dj = dj();
        dj.status = Some(DistillationJobStatus { progress: Some(Default::default()), ..Default::default() });
        assert!(observe(&dj, None, &[]).progress.is_none());
    }
}
