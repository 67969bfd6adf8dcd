//! The Benchmark controller: read (resolve the targets) → validate → build → apply → status.
//!
//! [`build`] and [`observe`] are pure (no client); this module does the I/O. A Benchmark becomes
//! one `batch/v1` Job per spec generation, running `distillery-worker bench`, created only once
//! every target resolves: a deployment target's ModelDeployment track serves from ready pods, a
//! DistillationJob target has succeeded. Until then the Benchmark is `Pending` with
//! `Progressing=False` saying what it waits for, and is looked at again every
//! [`WAITING_REQUEUE`] (and whenever a ModelDeployment or DistillationJob it names changes). A
//! Benchmark that ran to an end for its current spec is never run again, even if its Job is
//! deleted; a changed spec runs a new Job and deletes the earlier generation's. A reconcile that
//! finds nothing new writes nothing.

pub mod build;
pub mod observe;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use distillery_crds::benchmark::Track;
use distillery_crds::{Benchmark, BenchmarkStatus, DistillationJob, ModelDeployment};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};

use crate::context::Context;
use crate::distillation::build::MANAGED_BY;
use crate::error::Error;
use crate::modeldeployment::build::{MDEP_LABEL, Names, TRACK_LABEL};
use crate::pipeline::{self, Reconciled, publish};
use build::{BENCHMARK_LABEL, desired_job, job_name, selector};
use observe::{Found, Observed, Resolution};

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "benchmark";
/// How often a Benchmark waiting for a target looks again (watches of ModelDeployments and
/// DistillationJobs bring most changes sooner; pods becoming ready do not).
pub const WAITING_REQUEUE: Duration = Duration::from_secs(15);
/// Label the Job controller puts on a Job's pods.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

impl Reconciled for Benchmark {
    type Status = BenchmarkStatus;
    const CONTROLLER: &'static str = CONTROLLER;

    fn operator_status(&self) -> BenchmarkStatus {
        observe::operator_part(self)
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let benchmarks: Api<Benchmark> = Api::all(client.clone());
    let managed = format!("app.kubernetes.io/managed-by={MANAGED_BY},{BENCHMARK_LABEL}");
    let controller = pipeline::controller(benchmarks, ctx.concurrency);
    let store = controller.store();
    let md_store = store.clone();
    // Worker pods wake their Benchmark (Running); their metadata is all that is read.
    let pods = watcher(
        Api::<PartialObjectMeta<Pod>>::all(client.clone()),
        watcher::Config::default().labels(BENCHMARK_LABEL).any_semantic(),
    )
    .default_backoff()
    .touched_objects();
    // A ModelDeployment or DistillationJob wakes the Benchmarks in its namespace that name it.
    let mdeps = watcher(
        Api::<PartialObjectMeta<ModelDeployment>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .touched_objects();
    let djs = watcher(
        Api::<PartialObjectMeta<DistillationJob>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .touched_objects();
    controller
        .owns(Api::<Job>::all(client), watcher::Config::default().labels(&managed).any_semantic())
        .watches_stream(pods, |pod| {
            let name = pod.annotations().get(BENCHMARK_LABEL)?.clone();
            Some(ObjectRef::<Benchmark>::new(&name).within(pod.namespace().as_deref()?))
        })
        .watches_stream(mdeps, move |md| naming(&md_store, &md, names_deployment))
        .watches_stream(djs, move |dj| naming(&store, &dj, names_distillation))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, pipeline::error_policy, ctx)
        .for_each(pipeline::log_outcome)
        .await;
}

/// The Benchmarks in `object`'s namespace for which `names(benchmark, object's name)` holds.
fn naming<K: ResourceExt>(
    store: &kube::runtime::reflector::Store<Benchmark>,
    object: &K,
    names: impl Fn(&Benchmark, &str) -> bool,
) -> Vec<ObjectRef<Benchmark>> {
    let namespace = object.namespace();
    let name = object.name_any();
    store
        .state()
        .into_iter()
        .filter(|b| b.namespace() == namespace && names(b, &name))
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

/// Whether a deployment target of `bench` names the ModelDeployment `name`.
fn names_deployment(bench: &Benchmark, name: &str) -> bool {
    bench.spec.targets.iter().any(|t| t.deployment.as_ref().is_some_and(|d| d.name == name))
}

/// Whether an artifact target of `bench` names the DistillationJob `name`.
fn names_distillation(bench: &Benchmark, name: &str) -> bool {
    bench
        .spec
        .targets
        .iter()
        .any(|t| t.artifact.as_ref().and_then(|a| a.distillation_job_ref.as_ref()).is_some_and(|r| r.name == name))
}

async fn reconcile(bench: Arc<Benchmark>, ctx: Arc<Context>) -> Result<Action, Error> {
    pipeline::instrumented(bench.as_ref(), &ctx, reconcile_inner(&bench, &ctx)).await
}

async fn reconcile_inner(bench: &Benchmark, ctx: &Context) -> Result<Action, Error> {
    if bench.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the Job and its pod by their owner references.
        return Ok(Action::await_change());
    }
    if observe::finished(bench) {
        // Measured (or refused) for this spec: not run again until the spec changes.
        return Ok(Action::await_change());
    }
    let namespace = bench.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let generation = bench.metadata.generation.ok_or(Error::MissingField("metadata.generation"))?;
    let name = bench.name_any();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    if let Err(invalid) = build::validate(bench) {
        write_status(ctx, bench, observe::invalid_status(bench, &invalid, &now)).await?;
        return Ok(Action::await_change());
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let job_name = job_name(&name, generation);
    let mut live = jobs.get_opt(&job_name).await?;
    if live.is_none() {
        delete_earlier_runs(&jobs, &name, &job_name).await?;
        let found = read_targets(bench, ctx, &namespace).await?;
        let resolved = match observe::resolve(bench, &found) {
            Resolution::Ready(resolved) => resolved,
            Resolution::Waiting { reason, message } => {
                write_status(ctx, bench, observe::waiting_status(bench, reason, &message, &now)).await?;
                return Ok(Action::requeue(WAITING_REQUEUE));
            }
            Resolution::DistillationFailed { message } => {
                write_status(ctx, bench, observe::distillation_failed_status(bench, &message, &now)).await?;
                return Ok(Action::await_change());
            }
        };
        let desired = match desired_job(bench, &resolved, &ctx.worker) {
            Ok(job) => job,
            Err(invalid) => {
                write_status(ctx, bench, observe::invalid_status(bench, &invalid, &now)).await?;
                return Ok(Action::await_change());
            }
        };
        let created: Job = pipeline::apply_over(ctx, &namespace, &job_name, &desired, None).await?;
        let note = format!("created Job {job_name} to measure {} targets", bench.spec.targets.len());
        publish(ctx, bench, EventType::Normal, "JobCreated", note).await;
        live = Some(created);
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pod_list = pods.list(&ListParams::default().labels(&format!("{JOB_NAME_LABEL}={job_name}"))).await?.items;
    let observed = Observed { job: live.as_ref(), pods: &pod_list, job_name: &job_name };
    let status = observe::desired_status(bench, &observed, &now);
    let phase = status.phase;
    write_status(ctx, bench, status).await?;
    Ok(match phase {
        Some(distillery_crds::distillation::JobPhase::Succeeded | distillery_crds::distillation::JobPhase::Failed) => {
            Action::await_change()
        }
        // Watches bring every change; a slow resync guards against a missed one.
        _ => Action::requeue(Duration::from_secs(300)),
    })
}

/// Applies the status when it differs from the stored one, and records an Event for a
/// transition ([`observe::transition_event`]).
async fn write_status(ctx: &Context, bench: &Benchmark, status: BenchmarkStatus) -> Result<(), Error> {
    let before = observe::operator_part(bench);
    if pipeline::write_status(ctx, bench, &status).await?
        && let Some((kind, reason, note)) = observe::transition_event(&before, &status)
    {
        publish(ctx, bench, kind, &reason, note).await;
    }
    Ok(())
}

/// Deletes the Jobs of earlier generations of the Benchmark `name` (a changed spec runs anew;
/// the earlier run's load would only disturb it).
async fn delete_earlier_runs(jobs: &Api<Job>, name: &str, current: &str) -> Result<(), Error> {
    for job in jobs.list_metadata(&ListParams::default().labels(&selector(name))).await?.items {
        let job_name = job.name_any();
        if job_name == current || job.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match jobs.delete(&job_name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads what each target needs, in spec order: a deployment target's ModelDeployment and — when
/// its track exists — the track's Service and ready pods; an artifact target's DistillationJob.
/// Each object is read once however many targets name it.
async fn read_targets(bench: &Benchmark, ctx: &Context, namespace: &str) -> Result<Vec<Found>, Error> {
    let mdeps: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), namespace);
    let djs: Api<DistillationJob> = Api::namespaced(ctx.client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut md_cache: HashMap<String, Option<ModelDeployment>> = HashMap::new();
    let mut dj_cache: HashMap<String, Option<DistillationJob>> = HashMap::new();
    let mut found = Vec::with_capacity(bench.spec.targets.len());
    for target in &bench.spec.targets {
        if let Some(d) = &target.deployment {
            if !md_cache.contains_key(&d.name) {
                md_cache.insert(d.name.clone(), mdeps.get_opt(&d.name).await?);
            }
            let md = md_cache[&d.name].clone();
            let (mut service_ip, mut ready_pod_ips) = (None, vec![]);
            if md.as_ref().is_some_and(|md| observe::track_status(md, d.track).is_some()) {
                let service = services.get_opt(&observe::track_service(&d.name, d.track)).await?;
                service_ip = service.and_then(|s| s.spec?.cluster_ip).filter(|ip| !ip.is_empty() && ip != "None");
                let track = match d.track {
                    Track::Stable => "stable",
                    Track::Canary => "canary",
                };
                let labels = format!("{MDEP_LABEL}={},{TRACK_LABEL}={track}", Names::of(&d.name).label);
                ready_pod_ips = observe::ready_pod_ips(&pods.list(&ListParams::default().labels(&labels)).await?.items);
            }
            found.push(Found::Deployment { md: md.map(Box::new), service_ip, ready_pod_ips });
        } else if let Some(reference) = target.artifact.as_ref().and_then(|a| a.distillation_job_ref.as_ref()) {
            if !dj_cache.contains_key(&reference.name) {
                dj_cache.insert(reference.name.clone(), djs.get_opt(&reference.name).await?);
            }
            found.push(Found::Distillation(dj_cache[&reference.name].clone().map(Box::new)));
        } else {
            found.push(Found::Uri);
        }
    }
    Ok(found)
}
