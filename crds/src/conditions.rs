//! Condition types and reasons for all three resources, in one place, and the one function that
//! updates a condition list.
//!
//! Conditions are `metav1.Condition`-shaped. [`set_condition`] moves `lastTransitionTime` only
//! when a condition's status really changes, so a reconcile that finds nothing new produces an
//! identical status and writes nothing (no self-inflicted hot loop).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod types {
    /// The spec passed validation (schema, cross-field rules, references resolve).
    pub const ACCEPTED: &str = "Accepted";
    /// The resource's work is in progress (a Job running, a rollout stepping).
    pub const PROGRESSING: &str = "Progressing";
    /// The DistillationJob or Benchmark finished successfully.
    pub const COMPLETE: &str = "Complete";
    /// The DistillationJob or Benchmark failed and will not be retried.
    pub const FAILED: &str = "Failed";
    /// The ModelDeployment serves traffic from ready replicas.
    pub const AVAILABLE: &str = "Available";
    /// The ModelDeployment's last canary analysis passed.
    pub const ANALYSIS_PASSING: &str = "AnalysisPassing";
    /// The ModelDeployment rolled back a canary.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// The ModelDeployment's model is resolved: the artifact exists and its served file's
    /// digest is known.
    pub const MODEL_READY: &str = "ModelReady";
    /// A DistillationJob succeeded but its results say distillation did not do what it is for
    /// (`status.result.warnings`); its reason is the first warning's.
    pub const QUALITY_WARNING: &str = "QualityWarning";
    /// A DistillationJob with `teacherOutputs.parallelism` above 1 has every teacher-outputs
    /// shard written (`False` while its Indexed Job runs, the message saying how many are done).
    pub const TEACHER_OUTPUTS_READY: &str = "TeacherOutputsReady";
}

/// Condition reasons (CamelCase, as the API conventions ask).
pub mod reasons {
    /// The spec is valid.
    pub const SPEC_VALID: &str = "SpecValid";
    /// The spec is invalid; the message says which field and why. Not retried until the spec
    /// changes.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A referenced object (Secret, DistillationJob, HTTPRoute) does not exist yet.
    pub const REFERENCE_NOT_FOUND: &str = "ReferenceNotFound";
    /// The workload was created and waits for its pod.
    pub const PENDING: &str = "Pending";
    /// The workload's pod is running.
    pub const RUNNING: &str = "Running";
    /// The work is suspended by `spec.suspend`.
    pub const SUSPENDED: &str = "Suspended";
    /// The workload completed.
    pub const SUCCEEDED: &str = "Succeeded";
    /// The workload exhausted its retries.
    pub const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
    /// The workload ran past `activeDeadlineSeconds`.
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    /// The worker failed in a way running the same spec again cannot fix (bad spec, unsupported
    /// option, bad data): the Job failed at once, without retries.
    pub const WORKER_REFUSED_SPEC: &str = "WorkerRefusedSpec";
    /// The results raised no quality warning.
    pub const RESULTS_AS_EXPECTED: &str = "ResultsAsExpected";
    /// A teacher-outputs shard failed for good (its retries spent, or the worker refused the
    /// spec), so the DistillationJob failed before training; the message names the shards.
    pub const TEACHER_OUTPUTS_FAILED: &str = "TeacherOutputsFailed";
    /// The teacher-outputs Job was made from an earlier spec: it is deleted and the shards are
    /// computed again for the current one, under a new run's location.
    pub const TEACHER_JOB_REPLACED: &str = "TeacherJobReplaced";
    /// The spec changed after the workload was created from an earlier one; the workload goes on
    /// with the earlier spec.
    pub const SPEC_CHANGED_AFTER_START: &str = "SpecChangedAfterStart";
    /// The workload is retrying after a failed attempt.
    pub const RETRYING: &str = "Retrying";
    /// The work has not finished.
    pub const NOT_FINISHED: &str = "NotFinished";
    /// A canary step is in progress.
    pub const CANARY_STEP: &str = "CanaryStep";
    /// The canary was promoted to stable.
    pub const PROMOTED: &str = "Promoted";
    /// Canary analysis found the model's accuracy or agreement below its threshold.
    pub const ACCURACY_DRIFT: &str = "AccuracyDrift";
    /// Canary analysis found latency or errors above their threshold.
    pub const SERVING_DEGRADED: &str = "ServingDegraded";
    /// The referenced DistillationJob has not succeeded yet.
    pub const WAITING_FOR_DISTILLATION: &str = "WaitingForDistillation";
    /// A Benchmark's deployment target cannot be measured yet: its ModelDeployment does not
    /// exist, or the track it names is not serving (a canary track exists only during a
    /// rollout). The message names the target and what is missing; the Benchmark waits.
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// A DistillationJob a Benchmark measures failed, so it has no artifact: the Benchmark fails
    /// and is not run again until its spec changes.
    pub const DISTILLATION_FAILED: &str = "DistillationFailed";
    /// The artifact is being read to learn its served file's digest.
    pub const RESOLVING: &str = "Resolving";
    /// The artifact is resolved.
    pub const RESOLVED: &str = "Resolved";
    /// The artifact cannot be served (missing, unreadable, or a file whose sha256 differs from
    /// its manifest).
    pub const ARTIFACT_INVALID: &str = "ArtifactInvalid";
    /// Every track's replicas are ready.
    pub const REPLICAS_READY: &str = "ReplicasReady";
    /// Some replicas are not ready.
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    /// The canary's pods did not become ready within the deadline.
    pub const CANARY_NOT_READY: &str = "CanaryNotReady";
    /// The spec names the stable model again (a revert): the canary was stopped.
    pub const REVERTED: &str = "Reverted";
    /// The rollout was aborted by the `distillery.dev/abort` annotation.
    pub const ABORTED: &str = "Aborted";
    /// The last analysis passed.
    pub const ANALYSIS_PASSED: &str = "AnalysisPassed";
    /// The last analysis failed.
    pub const ANALYSIS_FAILED: &str = "AnalysisFailed";
    /// The last analysis proved neither pass nor fail.
    pub const ANALYSIS_INCONCLUSIVE: &str = "AnalysisInconclusive";
    /// The last analysis could not measure.
    pub const ANALYSIS_ERROR: &str = "AnalysisError";
    /// No analysis is running (no canary).
    pub const NO_CANARY: &str = "NoCanary";
    /// The rollout is paused for a person.
    pub const PAUSED: &str = "Paused";
    /// A rejected model is still named by the spec and is not tried again.
    pub const MODEL_REJECTED: &str = "ModelRejected";
}

/// Sets the condition of `type_` in `conditions` and returns whether anything changed.
///
/// `lastTransitionTime` is set to `now` only when the condition is new or its status flips;
/// a changed reason, message or generation updates those fields and keeps the old time.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: &Time,
) -> bool {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let before = existing.clone();
            if existing.status != status {
                existing.last_transition_time = now.clone();
            }
            existing.status = status;
            existing.reason = reason.to_string();
            existing.message = message;
            existing.observed_generation = observed_generation;
            *existing != before
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message,
                observed_generation,
                last_transition_time: now.clone(),
            });
            true
        }
    }
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` exists with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn new_condition_gets_now() {
        let mut c = vec![];
        assert!(set_condition(&mut c, types::ACCEPTED, true, reasons::SPEC_VALID, "ok", Some(1), &t(10)));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, "True");
        assert_eq!(c[0].last_transition_time, t(10));
    }

    #[test]
    fn same_condition_again_changes_nothing() {
        let mut c = vec![];
        set_condition(&mut c, types::ACCEPTED, true, reasons::SPEC_VALID, "ok", Some(1), &t(10));
        let before = c.clone();
        assert!(!set_condition(&mut c, types::ACCEPTED, true, reasons::SPEC_VALID, "ok", Some(1), &t(99)));
        assert_eq!(c, before, "a no-op update must leave the list byte-identical");
    }

    #[test]
    fn message_change_keeps_transition_time() {
        let mut c = vec![];
        set_condition(&mut c, types::PROGRESSING, true, reasons::RUNNING, "step 1", Some(1), &t(10));
        assert!(set_condition(&mut c, types::PROGRESSING, true, reasons::RUNNING, "step 2", Some(1), &t(20)));
        assert_eq!(c[0].message, "step 2");
        assert_eq!(c[0].last_transition_time, t(10));
    }

    #[test]
    fn status_flip_moves_transition_time() {
        let mut c = vec![];
        set_condition(&mut c, types::PROGRESSING, true, reasons::RUNNING, "", Some(1), &t(10));
        assert!(set_condition(&mut c, types::PROGRESSING, false, reasons::SUCCEEDED, "", Some(1), &t(20)));
        assert_eq!(c[0].last_transition_time, t(20));
        assert!(!is_true(&c, types::PROGRESSING));
        assert!(find(&c, types::COMPLETE).is_none());
    }
}
