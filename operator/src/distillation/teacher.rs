//! The teacher-outputs stage of a DistillationJob whose `teacherOutputs.parallelism` is above 1,
//! decided without a client: what the teacher-outputs Job's state calls for next
//! ([`next_step`]) and what the status says meanwhile ([`stage_status`], [`training_stage`]).
//!
//! The stage runs before training: an Indexed Job (`<name>-teacher`) of `parallelism` pods, each
//! writing one shard; only once it is `Complete` is the training Job created, so a training pod
//! never starts without every shard. A teacher Job made from an earlier spec (another run, whose
//! shards go elsewhere) is deleted and made again for the current one, as long as the training
//! Job does not exist yet; once it does, the stage is over and the training Job is observed as
//! for a run without shards. A run that ended (`Succeeded` or `Failed`) starts nothing new.

use std::collections::BTreeSet;

use distillery_crds::conditions::{reasons, set_condition, types};
use distillery_crds::distillation::{JobPhase, TeacherOutputsStatus};
use distillery_crds::{DistillationJob, DistillationJobStatus};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::build::{CONTAINER, Shards, template_hash};
use super::observe::{QUOTED_MESSAGE, operator_part};
use crate::objects::{job_condition, pod_phase};

/// Annotation and label with the completion index of an Indexed Job's pod, which the Job
/// controller sets (and passes to the container as `JOB_COMPLETION_INDEX`).
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// How the teacher-outputs Job stands, as read from the live Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TeacherJob {
    /// There is none.
    Absent,
    /// It is being deleted (a replaced one on its way out).
    Deleting,
    /// It was made from an earlier spec than the current one: its shards are another run's.
    Stale,
    /// It has not finished: `completed` shards are done; `suspended` when `spec.suspend` holds
    /// its pods back.
    Running {
        /// Complete indexes (shards written).
        completed: u32,
        /// The Job is suspended.
        suspended: bool,
    },
    /// Every shard is written.
    Complete,
    /// It failed: a shard failed for good (or the deadline passed).
    Failed {
        /// The Job's `status.failedIndexes`, as Kubernetes writes it (`"1,3"`, `"0-2"`); empty
        /// when no index failed (a deadline).
        failed_indexes: String,
        /// Shards written before it failed.
        completed: u32,
        /// The Job's `Failed` condition: its reason and message.
        reason: String,
        /// See `reason`.
        message: String,
    },
}

/// What the reconciler does next in the teacher-outputs stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The training Job exists: the stage is over; observe the training Job.
    Training,
    /// The run has ended and starts nothing new; `spec_changed`: the teacher Job left from it
    /// was made from an earlier spec (say so, as for a training Job).
    Finished {
        /// The live teacher Job's template is not the current spec's.
        spec_changed: bool,
    },
    /// Create the teacher-outputs Job.
    CreateTeacher,
    /// Delete the teacher Job made from an earlier spec (then create the current one's).
    ReplaceTeacher,
    /// Wait while the replaced teacher Job goes.
    WaitForDeletion,
    /// Wait for the shards: `completed` are written.
    WaitForTeacher {
        /// Shards written.
        completed: u32,
        /// The teacher Job is suspended.
        suspended: bool,
    },
    /// Every shard is written: create the training Job.
    CreateTraining,
    /// A shard failed for good: the DistillationJob fails before training.
    TeacherFailed {
        /// Which shards failed (the Job's `status.failedIndexes`).
        failed_indexes: String,
        /// Shards written before it failed.
        completed: u32,
        /// The Job's `Failed` condition reason.
        reason: String,
        /// The Job's `Failed` condition message.
        message: String,
    },
}

/// The completion indexes in `text` (`status.completedIndexes` or `status.failedIndexes`:
/// `"0-2,5"`), those below `shards` only; what is not a number or an interval is skipped.
pub fn parse_indexes(text: &str, shards: u32) -> BTreeSet<u32> {
    let mut indexes = BTreeSet::new();
    for interval in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (first, last) = match interval.split_once('-') {
            Some((first, last)) => (first.trim().parse::<u32>(), last.trim().parse::<u32>()),
            None => (interval.parse::<u32>(), interval.parse::<u32>()),
        };
        if let (Ok(first), Ok(last)) = (first, last) {
            indexes.extend((first..=last.min(shards.saturating_sub(1))).filter(|i| *i < shards));
        }
    }
    indexes
}

/// The shards a live teacher Job has written: its `status.completedIndexes`, or its
/// `status.succeeded` where that is not written.
fn completed_shards(job: &Job, shards: u32) -> u32 {
    let status = job.status.as_ref();
    match status.and_then(|s| s.completed_indexes.as_deref()) {
        Some(text) => parse_indexes(text, shards).len() as u32,
        None => status.and_then(|s| s.succeeded).map_or(0, |n| n.clamp(0, shards as i32) as u32),
    }
}

/// How the live teacher Job `live` stands against the one the current spec builds (`desired`).
pub fn observe_job(live: Option<&Job>, desired: &Job, shards: u32) -> TeacherJob {
    let Some(job) = live else { return TeacherJob::Absent };
    if job.metadata.deletion_timestamp.is_some() {
        return TeacherJob::Deleting;
    }
    if template_hash(job) != template_hash(desired) {
        return TeacherJob::Stale;
    }
    let completed = completed_shards(job, shards);
    if job_condition(job, "Complete").is_some() {
        return TeacherJob::Complete;
    }
    if let Some(failed) = job_condition(job, "Failed") {
        return TeacherJob::Failed {
            failed_indexes: job.status.as_ref().and_then(|s| s.failed_indexes.clone()).unwrap_or_default(),
            completed,
            reason: failed.reason.clone().unwrap_or_default(),
            message: failed.message.clone().unwrap_or_default(),
        };
    }
    let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
    TeacherJob::Running { completed, suspended }
}

/// What comes next, from the teacher Job's state, whether the training Job exists, and whether
/// the run has ended (`finished`: `Succeeded` or `Failed` for a reason other than an invalid
/// spec). The training Job existing ends the stage whatever the teacher Job is (a TTL may have
/// removed it); a finished run starts nothing new, not even for a changed spec.
pub fn next_step(teacher: &TeacherJob, training_exists: bool, finished: bool) -> Step {
    if training_exists {
        return Step::Training;
    }
    match teacher {
        TeacherJob::Stale if finished => Step::Finished { spec_changed: true },
        // A failed shard's status is written once, when the run fails: its pods may go since.
        _ if finished => Step::Finished { spec_changed: false },
        TeacherJob::Failed { failed_indexes, completed, reason, message } => Step::TeacherFailed {
            failed_indexes: failed_indexes.clone(),
            completed: *completed,
            reason: reason.clone(),
            message: message.clone(),
        },
        TeacherJob::Absent => Step::CreateTeacher,
        TeacherJob::Deleting => Step::WaitForDeletion,
        TeacherJob::Stale => Step::ReplaceTeacher,
        TeacherJob::Running { completed, suspended } => {
            Step::WaitForTeacher { completed: *completed, suspended: *suspended }
        }
        TeacherJob::Complete => Step::CreateTraining,
    }
}

/// What failed, from the Job's `failedIndexes`: `"shard 1 of 3 failed"`, `"shards 0-2,5 of 8
/// failed"`, or — no index failed (a deadline passed) — `"the Job failed with 2 of 3 shards done"`.
fn failed_clause(indexes: &str, shards: u32, completed: u32) -> String {
    match parse_indexes(indexes, shards).len() {
        0 => format!("the Job failed with {completed} of {shards} shards done"),
        1 => format!("shard {indexes} of {shards} failed"),
        _ => format!("shards {indexes} of {shards} failed"),
    }
}

/// The last failed teacher pod among `pods`: its completion index, exit code and termination
/// message (cut to [`QUOTED_MESSAGE`] characters).
fn last_failure(pods: &[Pod]) -> Option<(String, i32, String)> {
    let mut failed: Vec<&Pod> = pods.iter().filter(|p| pod_phase(p) == "Failed").collect();
    failed.sort_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp));
    failed.iter().rev().find_map(|pod| {
        let (code, message) = crate::objects::terminated(pod, CONTAINER)?;
        let index = pod.metadata.labels.as_ref().and_then(|l| l.get(COMPLETION_INDEX)).cloned().unwrap_or_default();
        Some((index, code, crate::objects::quote(&message, QUOTED_MESSAGE)))
    })
}

/// The status while the teacher-outputs stage decides the phase (every [`Step`] but
/// [`Step::Training`] and [`Step::CreateTraining`], whose status is the training Job's, completed
/// by [`training_stage`]). `job` is the live teacher Job (absent once deleted), `pods` its pods.
/// Recomputed from the same observations it gives the same status, so a reconcile that finds
/// nothing new writes nothing.
pub fn stage_status(
    dj: &DistillationJob,
    shards: &Shards,
    teacher_job_name: &str,
    step: &Step,
    job: Option<&Job>,
    pods: &[Pod],
    now: &Time,
) -> DistillationJobStatus {
    let generation = dj.metadata.generation;
    let mut status = operator_part(dj);
    if let Step::Finished { spec_changed } = step {
        // The run's own status stays; a changed spec is reported as for a training Job.
        if *spec_changed {
            status.observed_generation = generation;
            let message = format!(
                "the spec changed (generation {}) after this run ended; Job {teacher_job_name} was made from an earlier \
                 one. Delete and re-apply the DistillationJob to run the new spec",
                generation.unwrap_or_default()
            );
            let c = &mut status.conditions;
            set_condition(c, types::ACCEPTED, false, reasons::SPEC_CHANGED_AFTER_START, message, generation, now);
        }
        return status;
    }
    status.observed_generation = generation;
    let n = shards.count;
    let completed = match step {
        Step::WaitForTeacher { completed, .. } | Step::TeacherFailed { completed, .. } => *completed,
        _ => 0,
    };
    status.teacher_outputs = Some(TeacherOutputsStatus {
        job_name: teacher_job_name.to_string(),
        uri: shards.uri.clone(),
        shards: n,
        completed,
    });
    if let Some(started) = job.and_then(|j| j.status.as_ref()?.start_time.clone()) {
        status.start_time = status.start_time.or(Some(started));
    }
    let done = format!("{completed} of {n} shards done");
    let c = &mut status.conditions;
    set_condition(c, types::ACCEPTED, true, reasons::SPEC_VALID, "the spec is valid", generation, now);
    if let Step::TeacherFailed { failed_indexes, reason, message, .. } = step {
        status.phase = Some(JobPhase::Failed);
        status.completion_time = status.completion_time.or_else(|| Some(now.clone()));
        let which = failed_clause(failed_indexes, n, completed);
        let message = match last_failure(pods) {
            Some((index, code, quoted)) if code == distillery_crds::exit::PERMANENT => format!(
                "teacher outputs: {which}: the worker refused the spec (shard {index}, exit code {code}: {quoted}); \
                 not retried — fix the spec, then delete and re-apply the DistillationJob to run it again"
            ),
            Some((index, code, quoted)) => format!(
                "teacher outputs: {which} (Job {teacher_job_name}: {reason}: {message}); last attempt: shard {index}, \
                 exit code {code}: {quoted}"
            ),
            None => format!("teacher outputs: {which} (Job {teacher_job_name}: {reason}: {message})"),
        };
        let ready = if parse_indexes(failed_indexes, n).is_empty() { which } else { format!("{which}; {done}") };
        let failed = reasons::TEACHER_OUTPUTS_FAILED;
        set_condition(c, types::TEACHER_OUTPUTS_READY, false, failed, ready, generation, now);
        set_condition(c, types::PROGRESSING, false, failed, "stopped before training", generation, now);
        set_condition(c, types::COMPLETE, false, failed, "", generation, now);
        set_condition(c, types::FAILED, true, failed, message, generation, now);
        return status;
    }
    set_condition(c, types::COMPLETE, false, reasons::NOT_FINISHED, "", generation, now);
    set_condition(c, types::FAILED, false, reasons::NOT_FINISHED, "", generation, now);
    let (phase, progressing, reason, message) = match step {
        Step::CreateTeacher => (
            JobPhase::Pending,
            true,
            reasons::PENDING,
            format!(
                "creating Job {teacher_job_name}: {n} pods compute the teacher's outputs, a shard each, before training"
            ),
        ),
        Step::ReplaceTeacher | Step::WaitForDeletion => (
            JobPhase::Pending,
            true,
            reasons::TEACHER_JOB_REPLACED,
            format!(
                "Job {teacher_job_name} was made from an earlier spec: it is deleted, and the teacher's outputs are \
                 computed again for generation {}",
                generation.unwrap_or_default()
            ),
        ),
        Step::WaitForTeacher { suspended: true, .. } => (
            JobPhase::Suspended,
            false,
            reasons::SUSPENDED,
            format!(
                "spec.suspend is true: no teacher-outputs pod runs; {done} (kept), the others run when it is unset"
            ),
        ),
        _ => {
            let running = pods
                .iter()
                .filter(|p| pod_phase(p) == "Running" && p.metadata.deletion_timestamp.is_none())
                .filter(|p| crate::objects::terminated(p, CONTAINER).is_none())
                .count();
            let retried = job.and_then(|j| j.status.as_ref()?.failed).unwrap_or(0);
            let retries = match retried {
                0 => String::new(),
                1 => "; 1 failed attempt retried".to_string(),
                k => format!("; {k} failed attempts retried"),
            };
            let message =
                format!("computing the teacher's outputs (Job {teacher_job_name}): {done}, {running} running{retries}");
            match running {
                0 => (JobPhase::Pending, true, reasons::PENDING, message),
                _ => (JobPhase::Running, true, reasons::RUNNING, message),
            }
        }
    };
    status.phase = Some(phase);
    set_condition(c, types::PROGRESSING, progressing, reason, message, generation, now);
    set_condition(c, types::TEACHER_OUTPUTS_READY, false, reason, done, generation, now);
    status
}

/// Completes the training Job's status ([`super::observe::desired_status`]) of a sharded run:
/// every shard is written (the training Job exists only then), and `startTime` stays when the
/// first teacher pod started. `spec_changed`: the training Job was made from an earlier spec, so
/// what is stored about its shards stays as it is.
pub fn training_stage(
    status: &mut DistillationJobStatus,
    dj: &DistillationJob,
    shards: &Shards,
    teacher_job_name: &str,
    spec_changed: bool,
    now: &Time,
) {
    if let Some(first) = dj.status.as_ref().and_then(|s| s.start_time.clone()) {
        status.start_time = Some(first);
    }
    if spec_changed {
        return;
    }
    let n = shards.count;
    status.teacher_outputs = Some(TeacherOutputsStatus {
        job_name: teacher_job_name.to_string(),
        uri: shards.uri.clone(),
        shards: n,
        completed: n,
    });
    let message = format!("{n} of {n} shards written to {}", shards.uri);
    let generation = dj.metadata.generation;
    set_condition(
        &mut status.conditions,
        types::TEACHER_OUTPUTS_READY,
        true,
        reasons::SUCCEEDED,
        message,
        generation,
        now,
    );
}

/// Removes what a sharded stage left in `status` (for a spec that no longer shards the teacher's
/// outputs): `status.teacherOutputs` and the `TeacherOutputsReady` condition. Nothing changes for
/// a DistillationJob that never sharded them.
pub fn without_stage(status: &mut DistillationJobStatus) {
    status.teacher_outputs = None;
    status.conditions.retain(|c| c.type_ != types::TEACHER_OUTPUTS_READY);
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::{Value, json};

    use crate::distillation::build::{WorkerSettings, desired_teacher_job, shards};

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn dj() -> DistillationJob {
        let mut dj: DistillationJob =
            serde_norway::from_str(include_str!("../../../examples/01-distillationjob.yaml")).unwrap();
        dj.metadata.namespace = Some("ml".into());
        dj.metadata.uid = Some("uid-1".into());
        dj.metadata.generation = Some(1);
        dj.spec.task = distillery_crds::distillation::Task::CausalLm;
        dj.spec.teacher_outputs = Some(distillery_crds::distillation::TeacherOutputsSpec { top_k: 8, parallelism: 3 });
        dj
    }

    fn settings() -> WorkerSettings {
        WorkerSettings { default_image: "worker:1".into(), cuda_image: "worker:1-cuda".into() }
    }

    fn desired(dj: &DistillationJob) -> Job {
        desired_teacher_job(dj, &settings()).unwrap().expect("a sharded spec")
    }

    /// The desired teacher Job as the API server would show it, with `status`.
    fn live(dj: &DistillationJob, status: Value) -> Job {
        let mut job = desired(dj);
        job.status = Some(serde_json::from_value(status).unwrap());
        job
    }

    fn pod(index: u32, created: i64, phase: &str, terminated: Option<(i32, &str)>) -> Pod {
        let state = match terminated {
            Some((code, message)) => json!({"terminated": {"exitCode": code, "message": message}}),
            None => json!({"running": {}}),
        };
        serde_json::from_value(json!({
            "metadata": {"name": format!("p{index}-{created}"), "creationTimestamp": t(created),
                         "labels": {COMPLETION_INDEX: index.to_string()}},
            "status": {"phase": phase, "containerStatuses": [{"name": "worker", "state": state, "ready": true,
                        "restartCount": 0, "image": "w", "imageID": ""}]},
        }))
        .unwrap()
    }

    fn condition(status: &DistillationJobStatus, type_: &str) -> (String, String, String) {
        let c = distillery_crds::conditions::find(&status.conditions, type_).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn status_for(dj: &DistillationJob, step: &Step, job: Option<&Job>, pods: &[Pod]) -> DistillationJobStatus {
        let shards = shards(dj).unwrap().unwrap();
        stage_status(dj, &shards, "minilm-reviews-teacher", step, job, pods, &t(100))
    }

    #[test]
    fn indexes_read_as_kubernetes_writes_them() {
        assert_eq!(parse_indexes("0-2,5", 8), BTreeSet::from([0, 1, 2, 5]));
        assert_eq!(parse_indexes("3,4", 8), BTreeSet::from([3, 4]));
        assert_eq!(parse_indexes("", 8), BTreeSet::new());
        assert_eq!(parse_indexes("1,x,6-9", 8), BTreeSet::from([1, 6, 7]), "past the shards and junk are left out");
    }

    #[test]
    fn no_teacher_job_creates_it_running_waits_complete_creates_training_and_failed_fails() {
        let dj = dj();
        let desired = desired(&dj);
        assert_eq!(observe_job(None, &desired, 3), TeacherJob::Absent);
        assert_eq!(next_step(&TeacherJob::Absent, false, false), Step::CreateTeacher);

        let running = live(&dj, json!({"active": 2, "completedIndexes": "1", "succeeded": 1}));
        let state = observe_job(Some(&running), &desired, 3);
        assert_eq!(state, TeacherJob::Running { completed: 1, suspended: false });
        assert_eq!(next_step(&state, false, false), Step::WaitForTeacher { completed: 1, suspended: false });

        let complete = live(
            &dj,
            json!({"completedIndexes": "0-2", "succeeded": 3,
            "conditions": [{"type": "Complete", "status": "True"}]}),
        );
        let state = observe_job(Some(&complete), &desired, 3);
        assert_eq!(state, TeacherJob::Complete);
        assert_eq!(next_step(&state, false, false), Step::CreateTraining);
        assert_eq!(next_step(&state, true, false), Step::Training, "the training Job exists: the stage is over");

        let failed = live(
            &dj,
            json!({"completedIndexes": "0,2", "failedIndexes": "1", "failed": 4,
            "conditions": [{"type": "Failed", "status": "True", "reason": "MaxFailedIndexesExceeded",
                            "message": "Job has exceeded the specified maximal number of failed indexes"}]}),
        );
        let state = observe_job(Some(&failed), &desired, 3);
        let step = next_step(&state, false, false);
        assert_eq!(
            step,
            Step::TeacherFailed {
                failed_indexes: "1".into(),
                completed: 2,
                reason: "MaxFailedIndexesExceeded".into(),
                message: "Job has exceeded the specified maximal number of failed indexes".into()
            }
        );
        assert_eq!(
            next_step(&state, false, true),
            Step::Finished { spec_changed: false },
            "once the run has failed its status stays as written"
        );
    }

    #[test]
    fn a_teacher_job_of_an_earlier_spec_is_replaced_unless_the_run_ended() {
        let dj = dj();
        let mut next = dj.clone();
        next.metadata.generation = Some(2);
        let old = live(&dj, json!({"active": 3}));
        let state = observe_job(Some(&old), &desired(&next), 3);
        assert_eq!(state, TeacherJob::Stale);
        assert_eq!(next_step(&state, false, false), Step::ReplaceTeacher);
        assert_eq!(next_step(&state, false, true), Step::Finished { spec_changed: true });
        assert_eq!(next_step(&state, true, false), Step::Training, "once training runs it is the training Job's");
        let mut going = old.clone();
        going.metadata.deletion_timestamp = Some(t(5));
        let state = observe_job(Some(&going), &desired(&next), 3);
        assert_eq!(state, TeacherJob::Deleting);
        assert_eq!(next_step(&state, false, false), Step::WaitForDeletion);
        // A finished run whose Jobs are gone is not run again.
        assert_eq!(next_step(&TeacherJob::Absent, false, true), Step::Finished { spec_changed: false });
        assert_eq!(next_step(&TeacherJob::Complete, false, true), Step::Finished { spec_changed: false });
        // suspend is not part of the template: a suspended spec's Job is the same Job.
        let mut suspended = dj.clone();
        suspended.spec.suspend = true;
        let state = observe_job(Some(&old), &desired(&suspended), 3);
        assert_eq!(state, TeacherJob::Running { completed: 0, suspended: false });
    }

    #[test]
    fn while_the_shards_are_computed_the_status_says_how_many_are_done() {
        let dj = dj();
        let job = live(&dj, json!({"active": 2, "completedIndexes": "0", "succeeded": 1, "startTime": t(10)}));
        let pods = [pod(0, 1, "Succeeded", Some((0, "{}"))), pod(1, 1, "Running", None), pod(2, 1, "Pending", None)];
        let step = Step::WaitForTeacher { completed: 1, suspended: false };
        let s = status_for(&dj, &step, Some(&job), &pods);
        assert_eq!(s.phase, Some(JobPhase::Running));
        assert_eq!(s.start_time, Some(t(10)));
        assert_eq!(
            s.teacher_outputs,
            Some(TeacherOutputsStatus {
                job_name: "minilm-reviews-teacher".into(),
                uri: "file:///artifacts/minilm-reviews/teacher-outputs/g1-uid1".into(),
                shards: 3,
                completed: 1,
            })
        );
        let (ready, reason, message) = condition(&s, types::TEACHER_OUTPUTS_READY);
        assert_eq!(
            (ready.as_str(), reason.as_str(), message.as_str()),
            ("False", reasons::RUNNING, "1 of 3 shards done")
        );
        let (progressing, _, message) = condition(&s, types::PROGRESSING);
        assert_eq!(progressing, "True");
        assert!(message.contains("1 of 3 shards done, 1 running"), "{message}");
        assert_eq!(condition(&s, types::COMPLETE).0, "False");
        assert!(s.job_name.is_none(), "no training Job yet");

        // Recomputed from its own output, nothing changes: a no-op reconcile writes nothing.
        let mut stored = dj.clone();
        stored.status = Some(s.clone());
        let shards = shards(&stored).unwrap().unwrap();
        let again = stage_status(&stored, &shards, "minilm-reviews-teacher", &step, Some(&job), &pods, &t(500));
        assert_eq!(again, s);

        // Before any pod runs: Pending; suspended: Suspended, the shards done kept.
        let s = status_for(&dj, &Step::WaitForTeacher { completed: 0, suspended: false }, Some(&job), &[]);
        assert_eq!(s.phase, Some(JobPhase::Pending));
        let s = status_for(&dj, &Step::WaitForTeacher { completed: 2, suspended: true }, Some(&job), &[]);
        assert_eq!(s.phase, Some(JobPhase::Suspended));
        assert_eq!(condition(&s, types::TEACHER_OUTPUTS_READY).2, "2 of 3 shards done");
        let s = status_for(&dj, &Step::CreateTeacher, None, &[]);
        assert_eq!(s.phase, Some(JobPhase::Pending));
        assert_eq!(condition(&s, types::TEACHER_OUTPUTS_READY).2, "0 of 3 shards done");
        let s = status_for(&dj, &Step::ReplaceTeacher, None, &[]);
        assert_eq!(condition(&s, types::PROGRESSING).1, reasons::TEACHER_JOB_REPLACED);
    }

    #[test]
    fn a_failed_shard_fails_the_job_naming_the_shard_and_the_workers_message() {
        let dj = dj();
        let step = Step::TeacherFailed {
            failed_indexes: "1".into(),
            completed: 2,
            reason: "MaxFailedIndexesExceeded".into(),
            message: "Job has exceeded the specified maximal number of failed indexes".into(),
        };
        let pods = [pod(0, 1, "Succeeded", Some((0, "{}"))), pod(1, 2, "Failed", Some((1, "out of memory")))];
        let s = status_for(&dj, &step, None, &pods);
        assert_eq!(s.phase, Some(JobPhase::Failed));
        assert_eq!(s.completion_time, Some(t(100)));
        let (failed, reason, message) = condition(&s, types::FAILED);
        assert_eq!((failed.as_str(), reason.as_str()), ("True", reasons::TEACHER_OUTPUTS_FAILED));
        assert!(
            message.contains("shard 1 of 3 failed")
                && message.contains("MaxFailedIndexesExceeded")
                && message.contains("exit code 1: out of memory"),
            "{message}"
        );
        let (ready, reason, _) = condition(&s, types::TEACHER_OUTPUTS_READY);
        assert_eq!((ready.as_str(), reason.as_str()), ("False", reasons::TEACHER_OUTPUTS_FAILED));
        assert_eq!(s.teacher_outputs.unwrap().completed, 2);

        // The worker's permanent exit code: the spec, not a retry, must change.
        let pods = [pod(2, 3, "Failed", Some((distillery_crds::exit::PERMANENT, "topK at or above the vocabulary")))];
        let step =
            Step::TeacherFailed { failed_indexes: "0-2".into(), completed: 0, reason: "x".into(), message: "y".into() };
        let s = status_for(&dj, &step, None, &pods);
        let message = condition(&s, types::FAILED).2;
        let deadline = Step::TeacherFailed {
            failed_indexes: String::new(),
            completed: 1,
            reason: "DeadlineExceeded".into(),
            message: "Job was active longer than specified deadline".into(),
        };
        let late = condition(&status_for(&dj, &deadline, None, &[]), types::FAILED).2;
        assert!(late.contains("the Job failed with 1 of 3 shards done") && late.contains("DeadlineExceeded"), "{late}");
        assert!(
            message.contains("shards 0-2 of 3 failed")
                && message.contains("refused the spec")
                && message.contains("topK at or above the vocabulary")
                && message.contains("not retried"),
            "{message}"
        );
    }

    #[test]
    fn once_training_runs_every_shard_is_written_and_a_finished_run_keeps_its_status() {
        let mut dj = dj();
        dj.status = Some(DistillationJobStatus { start_time: Some(t(10)), ..Default::default() });
        let shards = shards(&dj).unwrap().unwrap();
        let mut status = DistillationJobStatus { start_time: Some(t(50)), ..Default::default() };
        training_stage(&mut status, &dj, &shards, "minilm-reviews-teacher", false, &t(100));
        assert_eq!(status.start_time, Some(t(10)), "when the first teacher pod started");
        assert_eq!(status.teacher_outputs.as_ref().map(|o| (o.completed, o.shards)), Some((3, 3)));
        let (ready, reason, message) = condition(&status, types::TEACHER_OUTPUTS_READY);
        assert_eq!((ready.as_str(), reason.as_str()), ("True", reasons::SUCCEEDED));
        assert!(message.contains("3 of 3 shards written to file:///artifacts/minilm-reviews/teacher-outputs/g1-uid1"));
        without_stage(&mut status);
        assert!(status.teacher_outputs.is_none());
        assert!(distillery_crds::conditions::find(&status.conditions, types::TEACHER_OUTPUTS_READY).is_none());

        // A finished run: its status as stored, plus Accepted=False for a spec changed since.
        dj.status = Some(status.clone());
        assert_eq!(status_for(&dj, &Step::Finished { spec_changed: false }, None, &[]), status);
        let changed = status_for(&dj, &Step::Finished { spec_changed: true }, None, &[]);
        assert_eq!(condition(&changed, types::ACCEPTED).1, reasons::SPEC_CHANGED_AFTER_START);
    }
}
