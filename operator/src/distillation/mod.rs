//! The DistillationJob controller: read → validate → build → apply → status.
//!
//! [`build`], [`observe`] and [`teacher`] are pure (no client); this module does the I/O: it
//! reads the Jobs and their pods, applies a Job by server-side apply under one field manager,
//! applies the status fields the operator owns (never `progress`, which is the worker's), and
//! records an Event for every phase transition. A reconcile that finds nothing new writes nothing.
//!
//! With `teacherOutputs.parallelism` above 1 a run has two Jobs, one after the other: the
//! teacher-outputs Indexed Job, then — once it is complete — the training Job ([`teacher`] decides
//! which step comes next).

pub mod build;
pub mod observe;
pub mod teacher;

use std::sync::Arc;
use std::time::Duration;

use distillery_crds::conditions::{reasons, types};
use distillery_crds::distillation::JobPhase;
use distillery_crds::{DistillationJob, DistillationJobStatus};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::context::Context;
use crate::error::Error;
use crate::pipeline::{self, Reconciled, publish};
use build::{
    JOB_LABEL, MANAGED_BY, Shards, SpecError, WORKER_SERVICE_ACCOUNT, WorkerSettings, desired_job, desired_teacher_job,
    is_teacher_pod, job_name, pod_selector, shards, teacher_job_name, teacher_pod_selector, template_hash,
};
use observe::{Observed, desired_status, invalid_status, operator_part};
use teacher::Step;

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "distillationjob";

impl Reconciled for DistillationJob {
    type Status = DistillationJobStatus;
    const CONTROLLER: &'static str = CONTROLLER;

    fn operator_status(&self) -> DistillationJobStatus {
        operator_part(self)
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let djs: Api<DistillationJob> = Api::all(client.clone());
    let jobs: Api<Job> = Api::all(client.clone());
    let pods: Api<PartialObjectMeta<Pod>> = Api::all(client);
    let managed = format!("app.kubernetes.io/managed-by={MANAGED_BY}");
    // Worker pods only wake their DistillationJob: their metadata (the job label) is all we read.
    let worker_pods =
        watcher(pods, watcher::Config::default().labels(JOB_LABEL).any_semantic()).default_backoff().touched_objects();
    pipeline::controller(djs, ctx.concurrency)
        .owns(jobs, watcher::Config::default().labels(&managed).any_semantic())
        .watches_stream(worker_pods, |pod| {
            let name = pod.annotations().get(JOB_LABEL)?.clone();
            Some(ObjectRef::<DistillationJob>::new(&name).within(pod.namespace().as_deref()?))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, pipeline::error_policy, ctx)
        .for_each(pipeline::log_outcome)
        .await;
}

async fn reconcile(dj: Arc<DistillationJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    pipeline::instrumented(dj.as_ref(), &ctx, reconcile_inner(&dj, &ctx)).await
}

/// What the current spec asks for: the training Job and, when the teacher's outputs are sharded,
/// the teacher-outputs Job and its shards.
struct Desired {
    job: Job,
    teacher: Option<(Job, Shards)>,
}

impl Desired {
    fn of(dj: &DistillationJob, settings: &WorkerSettings) -> Result<Self, SpecError> {
        let job = desired_job(dj, settings)?;
        let teacher = match (desired_teacher_job(dj, settings)?, shards(dj)?) {
            (Some(teacher), Some(shards)) => Some((teacher, shards)),
            _ => None,
        };
        Ok(Self { job, teacher })
    }
}

async fn reconcile_inner(dj: &DistillationJob, ctx: &Context) -> Result<Action, Error> {
    if dj.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the Jobs and their pods by their owner references.
        return Ok(Action::await_change());
    }
    let namespace = dj.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = dj.name_any();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let Desired { job: desired, teacher: sharded } = match Desired::of(dj, &ctx.worker) {
        Ok(desired) => desired,
        Err(invalid) => {
            let status = invalid_status(dj, &invalid, &now);
            write_status(ctx, dj, status).await?;
            return Ok(Action::await_change());
        }
    };
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let job_name = job_name(&name);
    // A job that ran to an end is not run again if its Job is deleted; one refused for its spec
    // runs once the spec is fixed.
    let refused = dj
        .status
        .as_ref()
        .and_then(|s| distillery_crds::conditions::find(&s.conditions, types::ACCEPTED))
        .is_some_and(|c| c.reason == reasons::INVALID_SPEC);
    let finished =
        !refused && matches!(dj.status.as_ref().and_then(|s| s.phase), Some(JobPhase::Succeeded | JobPhase::Failed));
    let mut live = jobs.get_opt(&job_name).await?;
    if let Some((teacher_job, shards)) = &sharded {
        let stage = TeacherStage { jobs: &jobs, namespace: &namespace, desired: teacher_job, shards, now: &now };
        if let Some(action) = teacher_stage(ctx, dj, &stage, live.is_some(), finished).await? {
            return Ok(action);
        }
    }
    let apply = PatchParams::apply(&ctx.field_manager);
    match &live {
        // A finished job whose Job was deleted (by hand, or a TTL) is not run again, and its
        // status — the result included — stays as it is.
        None if finished => return Ok(Action::await_change()),
        None => {
            ensure_worker_account(ctx, &namespace).await?;
            let created = jobs.patch(&job_name, &apply, &Patch::Apply(&desired)).await?;
            publish(ctx, dj, EventType::Normal, "JobCreated", format!("created Job {job_name}")).await;
            live = Some(created);
        }
        Some(job) if template_hash(job) == template_hash(&desired) => {
            let suspended = |j: &Job| j.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
            if suspended(job) != suspended(&desired) {
                live = Some(jobs.patch(&job_name, &apply, &Patch::Apply(&desired)).await?);
            }
        }
        Some(_) => {}
    }
    let spec_changed = live.as_ref().is_some_and(|j| template_hash(j) != template_hash(&desired));
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    // The training pods only: a sharded run's teacher pods carry the same DistillationJob label.
    let pod_list: Vec<Pod> = match &live {
        Some(_) => pods
            .list(&ListParams::default().labels(&pod_selector(&name)))
            .await?
            .items
            .into_iter()
            .filter(|p| !is_teacher_pod(p))
            .collect(),
        None => vec![],
    };
    let observed =
        Observed { job: live.as_ref(), pods: &pod_list, spec_changed_after_start: spec_changed, job_name: &job_name };
    let mut status = desired_status(dj, &observed, &now);
    match &sharded {
        Some((_, shards)) => {
            teacher::training_stage(&mut status, dj, shards, &teacher_job_name(&name), spec_changed, &now);
        }
        // The spec no longer shards the teacher's outputs (it did when the run began): the
        // teacher Job of the earlier spec goes, and so does what the status said of it.
        None if !spec_changed && dj.status.as_ref().is_some_and(|s| s.teacher_outputs.is_some()) => {
            delete_teacher_job(&jobs, &teacher_job_name(&name), None).await?;
            teacher::without_stage(&mut status);
        }
        None => {}
    }
    let phase = status.phase;
    write_status(ctx, dj, status).await?;
    Ok(match phase {
        Some(JobPhase::Succeeded | JobPhase::Failed) => Action::await_change(),
        // Watches bring every change; a slow resync guards against a missed one.
        _ => Action::requeue(Duration::from_secs(300)),
    })
}

/// What the teacher-outputs stage of one reconcile works with.
struct TeacherStage<'a> {
    jobs: &'a Api<Job>,
    namespace: &'a str,
    /// The teacher-outputs Job the current spec builds.
    desired: &'a Job,
    shards: &'a Shards,
    now: &'a Time,
}

/// The teacher-outputs stage of a sharded run: reads the teacher Job while the training Job does
/// not exist yet, does what [`teacher::next_step`] says, and writes the stage's status. `None`: go
/// on to the training Job (the stage is over, or its shards are all written and the training Job
/// is to be created now); `Some`: the reconcile ends here.
async fn teacher_stage(
    ctx: &Context,
    dj: &DistillationJob,
    stage: &TeacherStage<'_>,
    training_exists: bool,
    finished: bool,
) -> Result<Option<Action>, Error> {
    let name = dj.name_any();
    let teacher_name = teacher_job_name(&name);
    let shards = stage.shards;
    let mut live = if training_exists { None } else { stage.jobs.get_opt(&teacher_name).await? };
    let decide = |live: Option<&Job>| {
        teacher::next_step(&teacher::observe_job(live, stage.desired, shards.count), training_exists, finished)
    };
    let mut step = decide(live.as_ref());
    let apply = PatchParams::apply(&ctx.field_manager);
    match step.clone() {
        Step::Training => return Ok(None),
        Step::CreateTraining => {
            let note = format!(
                "all {} teacher-outputs shards are written to {}; creating the training Job {}",
                shards.count,
                shards.uri,
                job_name(&name)
            );
            publish(ctx, dj, EventType::Normal, "TeacherOutputsReady", note).await;
            return Ok(None);
        }
        Step::Finished { spec_changed: false } => return Ok(Some(Action::await_change())),
        Step::CreateTeacher => {
            ensure_worker_account(ctx, stage.namespace).await?;
            let created = stage.jobs.patch(&teacher_name, &apply, &Patch::Apply(stage.desired)).await?;
            let note = format!(
                "created Job {teacher_name}: {} pods compute the teacher's outputs, a shard each, into {}",
                shards.count, shards.uri
            );
            publish(ctx, dj, EventType::Normal, "TeacherJobCreated", note).await;
            live = Some(created);
            step = decide(live.as_ref());
        }
        Step::ReplaceTeacher => {
            let uid = live.as_ref().and_then(|job| job.uid());
            delete_teacher_job(stage.jobs, &teacher_name, uid).await?;
            let note = format!(
                "deleted Job {teacher_name}, made from an earlier spec; the teacher's outputs are computed again for \
                 generation {}",
                dj.metadata.generation.unwrap_or_default()
            );
            publish(ctx, dj, EventType::Normal, "TeacherJobReplaced", note).await;
            live = None;
        }
        Step::WaitForTeacher { suspended, .. } if suspended != dj.spec.suspend => {
            live = Some(stage.jobs.patch(&teacher_name, &apply, &Patch::Apply(stage.desired)).await?);
            step = decide(live.as_ref());
        }
        Step::Finished { .. } | Step::WaitForTeacher { .. } | Step::WaitForDeletion | Step::TeacherFailed { .. } => {}
    }
    let pods: Vec<Pod> = match &live {
        Some(_) => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), stage.namespace);
            pods.list(&ListParams::default().labels(&teacher_pod_selector(&name))).await?.items
        }
        None => vec![],
    };
    let status = teacher::stage_status(dj, shards, &teacher_name, &step, live.as_ref(), &pods, stage.now);
    let phase = status.phase;
    write_status(ctx, dj, status).await?;
    Ok(Some(match step {
        // The deletion's watch event brings the next reconcile; this is a fallback.
        Step::ReplaceTeacher | Step::WaitForDeletion => Action::requeue(Duration::from_secs(2)),
        _ if matches!(phase, Some(JobPhase::Succeeded | JobPhase::Failed)) => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(300)),
    }))
}

/// Deletes the teacher-outputs Job `name` and, by background propagation, its pods (their
/// shards stay where they were written); only the one of `uid` when given, so that a Job made
/// since is never deleted for an older one. One already gone is not an error.
async fn delete_teacher_job(jobs: &Api<Job>, name: &str, uid: Option<String>) -> Result<(), Error> {
    let params = DeleteParams {
        preconditions: uid.map(|uid| Preconditions { uid: Some(uid), resource_version: None }),
        ..DeleteParams::background()
    };
    match jobs.delete(name, &params).await {
        Ok(_) => Ok(()),
        // Gone already, or (a precondition's 409) replaced by another since it was read.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Applies the operator's status fields when they differ from the stored ones, and records an
/// Event when the phase changes.
async fn write_status(ctx: &Context, dj: &DistillationJob, status: DistillationJobStatus) -> Result<(), Error> {
    let before = dj.status.as_ref().and_then(|s| s.phase);
    if pipeline::write_status(ctx, dj, &status).await?
        && status.phase != before
        && let Some(phase) = status.phase
    {
        let (kind, reason, note) = transition_event(&status, phase);
        publish(ctx, dj, kind, reason, note).await;
        if phase == JobPhase::Succeeded
            && let Some(warning) = distillery_crds::conditions::find(&status.conditions, types::QUALITY_WARNING)
                .filter(|c| c.status == "True")
        {
            publish(ctx, dj, EventType::Warning, types::QUALITY_WARNING, warning.message.clone()).await;
        }
    }
    Ok(())
}

/// The Event for entering `phase`.
fn transition_event(status: &DistillationJobStatus, phase: JobPhase) -> (EventType, &'static str, String) {
    let message = |type_: &str| {
        distillery_crds::conditions::find(&status.conditions, type_).map(|c| c.message.clone()).unwrap_or_default()
    };
    match phase {
        JobPhase::Pending => (EventType::Normal, "Pending", message(types::PROGRESSING)),
        JobPhase::Running => (EventType::Normal, "Running", message(types::PROGRESSING)),
        JobPhase::Suspended => (EventType::Normal, "Suspended", message(types::PROGRESSING)),
        JobPhase::Succeeded => (EventType::Normal, "Succeeded", message(types::COMPLETE)),
        JobPhase::Failed => {
            let accepted = distillery_crds::conditions::is_true(&status.conditions, types::ACCEPTED);
            let teacher = distillery_crds::conditions::find(&status.conditions, types::FAILED)
                .is_some_and(|c| c.reason == reasons::TEACHER_OUTPUTS_FAILED);
            let reason = match (accepted, teacher) {
                (false, _) => "InvalidSpec",
                (true, true) => reasons::TEACHER_OUTPUTS_FAILED,
                (true, false) => "Failed",
            };
            (EventType::Warning, reason, message(types::FAILED))
        }
    }
}

/// The worker ServiceAccount and its RoleBinding (to the worker ClusterRole, which lets it apply
/// `status.progress`) in `namespace`, applied once per namespace per operator run.
async fn ensure_worker_account(ctx: &Context, namespace: &str) -> Result<(), Error> {
    if ctx.accounts_ready.lock().unwrap_or_else(|p| p.into_inner()).contains(namespace) {
        return Ok(());
    }
    let apply = PatchParams::apply(&ctx.field_manager);
    let labels = json!({"app.kubernetes.io/managed-by": MANAGED_BY});
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": WORKER_SERVICE_ACCOUNT, "labels": labels}});
    accounts.patch(WORKER_SERVICE_ACCOUNT, &apply, &Patch::Apply(&account)).await?;
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), namespace);
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": WORKER_SERVICE_ACCOUNT, "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ctx.worker_cluster_role},
        "subjects": [{"kind": "ServiceAccount", "name": WORKER_SERVICE_ACCOUNT, "namespace": namespace}],
    });
    bindings.patch(WORKER_SERVICE_ACCOUNT, &apply, &Patch::Apply(&binding)).await?;
    ctx.accounts_ready.lock().unwrap_or_else(|p| p.into_inner()).insert(namespace.to_string());
    Ok(())
}
