//! The ModelDeployment controller: read → validate → resolve the model → observe the tracks,
//! the split and the analysis → decide ([`rollout::plan`], pure) → apply → status.
//!
//! [`build`] and [`rollout`] are pure; this module does the I/O. Children are applied by
//! server-side apply under the operator's field manager; the user's HTTPRoute is updated in place
//! (only its backendRefs) with optimistic concurrency. Order matters for safety: a canary's pods
//! are up before it gets weight, its weight goes to 0 before its pods go, and stable is never
//! touched by a rollback.

pub mod build;
pub mod rollout;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use distillery_crds::conditions::{reasons, set_condition, types};
use distillery_crds::deployment::{
    ABORT_ANNOTATION, PROMOTE_ANNOTATION, RETRY_ANNOTATION, ResolvedModel, RolloutPhase, TrafficMethod,
};
use distillery_crds::distillation::JobPhase;
use distillery_crds::{DistillationJob, ModelDeployment, ModelDeploymentStatus};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PartialObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::Deserialize;
use serde_json::json;

use crate::context::Context;
use crate::distillation::build::MANAGED_BY;
use crate::error::Error;
use crate::objects::{job_outcome, terminated};
use crate::pipeline::{self, Reconciled, publish};
use build::{
    AnalysisTargets, MDEP_LABEL, ModelToResolve, Names, PURPOSE_LABEL, SERVER_PORT, Selection, Track, WORKER_CONTAINER,
};
use rollout::{AnalysisObservation, Controls, ModelState, Observed, TrackObservation, parse_duration};

/// Name of this controller in metrics and logs.
pub const CONTROLLER: &str = "modeldeployment";
/// Label the Job controller puts on a Job's pods.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

impl Reconciled for ModelDeployment {
    type Status = ModelDeploymentStatus;
    const CONTROLLER: &'static str = CONTROLLER;

    fn operator_status(&self) -> ModelDeploymentStatus {
        self.status.clone().unwrap_or_default()
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let mdeps: Api<ModelDeployment> = Api::all(client.clone());
    let managed = format!("app.kubernetes.io/managed-by={MANAGED_BY},{MDEP_LABEL}");
    let controller = pipeline::controller(mdeps, ctx.concurrency);
    let store = controller.store();
    let metrics = ctx.metrics.clone();
    // A DistillationJob only wakes the ModelDeployments that name it: its metadata is enough, and
    // a thousand DistillationJobs are not cached twice.
    let djs = watcher(
        Api::<PartialObjectMeta<DistillationJob>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .touched_objects();
    controller
        .owns(Api::<Deployment>::all(client.clone()), watcher::Config::default().labels(&managed).any_semantic())
        .owns(Api::<Service>::all(client.clone()), watcher::Config::default().labels(&managed).any_semantic())
        .owns(Api::<Job>::all(client), watcher::Config::default().labels(&managed).any_semantic())
        .watches_stream(djs, move |dj| {
            let namespace = dj.namespace();
            let name = dj.name_any();
            store
                .state()
                .into_iter()
                .filter(|md| {
                    md.namespace() == namespace
                        && md.spec.model.distillation_job_ref.as_ref().is_some_and(|r| r.name == name)
                })
                .map(|md| ObjectRef::from_obj(md.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, pipeline::error_policy, ctx)
        .for_each(move |outcome| {
            // A deleted ModelDeployment is never reconciled again; the controller reports it
            // missing from its cache once, and its series go then.
            if let Err(kube::runtime::controller::Error::ObjectNotFound(gone)) = &outcome {
                metrics.forget_model_deployment(gone.namespace.as_deref().unwrap_or_default(), &gone.name);
            }
            pipeline::log_outcome(outcome)
        })
        .await;
}

async fn reconcile(md: Arc<ModelDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    pipeline::instrumented(md.as_ref(), &ctx, reconcile_inner(&md, &ctx)).await
}

/// The namespace-scoped APIs one reconcile uses.
struct Apis {
    deployments: Api<Deployment>,
    services: Api<Service>,
    jobs: Api<Job>,
    pods: Api<Pod>,
}

impl Apis {
    fn new(ctx: &Context, namespace: &str) -> Self {
        let c = ctx.client.clone();
        Self {
            deployments: Api::namespaced(c.clone(), namespace),
            services: Api::namespaced(c.clone(), namespace),
            jobs: Api::namespaced(c.clone(), namespace),
            pods: Api::namespaced(c, namespace),
        }
    }
}

async fn reconcile_inner(md: &ModelDeployment, ctx: &Context) -> Result<Action, Error> {
    if md.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = md.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let now = Timestamp::now();
    if let Err(invalid) = build::validate(md) {
        let status = invalid_status(md, &invalid.to_string(), &Time(now));
        let before = md.status.as_ref().and_then(|s| s.phase);
        if pipeline::write_status(ctx, md, &status).await? && before != status.phase {
            publish(ctx, md, EventType::Warning, reasons::INVALID_SPEC, invalid.to_string()).await;
        }
        return Ok(Action::await_change());
    }
    let apis = Apis::new(ctx, &namespace);
    let names = Names::of(&md.name_any());
    let status = md.status.clone().unwrap_or_default();
    let controls = Controls {
        promote: md.annotations().contains_key(PROMOTE_ANNOTATION),
        abort: md.annotations().contains_key(ABORT_ANNOTATION),
        retry: md.annotations().contains_key(RETRY_ANNOTATION),
    };
    let (model, resolve_job_done) = model_state(md, ctx, &apis, &namespace, controls.retry).await?;
    let stable_digest = status.stable.as_ref().and_then(|s| s.model_digest.clone());
    let canary_digest = status.canary.as_ref().and_then(|s| s.model_digest.clone());
    // Read once: observed here, and what the applies below compare with.
    let stable_live = apis.deployments.get_opt(&names.stable).await?;
    let canary_live = apis.deployments.get_opt(&names.canary).await?;
    let stable = observe_track(stable_live.as_ref(), stable_digest.as_deref());
    let canary = observe_track(canary_live.as_ref(), canary_digest.as_deref());
    let method = md.spec.rollout.traffic_routing.method;
    let route = match method {
        TrafficMethod::GatewayApi => Some(read_route(md, ctx, &namespace).await?),
        TrafficMethod::ReplicaRatio => None,
    };
    let main_live = match route {
        None => Some(apis.services.get_opt(&names.main).await?),
        Some(_) => None,
    };
    let split_weight = match (&route, &main_live) {
        (Some(Ok(route)), _) => build::observed_route_weight(route, &names),
        (Some(Err(_)), _) => Some(0),
        (None, main) => main.as_ref().and_then(Option::as_ref).and_then(build::observed_selection).map(|s| match s {
            Selection::StableOnly => 0,
            Selection::Both => 50,
            Selection::CanaryOnly => 100,
        }),
    };
    let analysis = observe_analysis(md, &apis, &status).await?;
    let observed = Observed {
        now,
        model,
        stable,
        canary,
        split_weight,
        routing_problem: route.as_ref().and_then(|r| r.as_ref().err().cloned()),
        analysis,
        controls,
        canary_ready_deadline: ctx.canary_ready_deadline,
    };
    let plan = rollout::plan(md, &observed);

    // Apply: pods first (a canary is up before it gets weight), then the split, then what goes.
    let settings = &ctx.serving;
    let owner_name = md.name_any();
    if let Some(stable) = &plan.stable {
        let desired =
            build::deployment(md, Track::Stable, &stable.model, stable.replicas, settings).map_err(spec_bug)?;
        pipeline::apply_over(ctx, &namespace, &names.stable, &desired, stable_live.as_ref()).await?;
        let svc = build::track_service(md, Track::Stable).map_err(spec_bug)?;
        pipeline::apply::<Service>(ctx, &namespace, &names.stable, &svc).await?;
        let canary_svc = build::track_service(md, Track::Canary).map_err(spec_bug)?;
        pipeline::apply::<Service>(ctx, &namespace, &names.canary, &canary_svc).await?;
    }
    if let Some(canary) = &plan.canary {
        let desired =
            build::deployment(md, Track::Canary, &canary.model, canary.replicas, settings).map_err(spec_bug)?;
        pipeline::apply_over(ctx, &namespace, &names.canary, &desired, canary_live.as_ref()).await?;
    }
    if plan.stable.is_some() {
        let weight = if plan.canary.is_some() { plan.canary_weight } else { 0 };
        let main = build::main_service(md, Selection::for_weight(weight)).map_err(spec_bug)?;
        match &main_live {
            Some(live) => pipeline::apply_over(ctx, &namespace, &names.main, &main, live.as_ref()).await?,
            None => pipeline::apply::<Service>(ctx, &namespace, &names.main, &main).await?,
        };
        if let Some(Ok(route)) = &route
            && let Some(updated) = build::route_with_weights(route, &names, 100 - weight, weight)
        {
            write_route(ctx, &namespace, updated).await?;
        }
    }
    let applied_weight = if plan.stable.is_some() && plan.canary.is_some() { plan.canary_weight } else { 0 };
    ctx.metrics.set_canary_weight(&namespace, &owner_name, applied_weight);
    // Status, then what it announces: the canary's pods go, and the analysis Jobs change, only
    // once the status that says so is stored — else a failed status write would leave the next
    // reconcile reading the old status, which wants them, and it would make them again.
    let before = md.status.clone().unwrap_or_default();
    let status = plan.status.clone();
    pipeline::write_status(ctx, md, &status).await?;
    if plan.canary.is_none() && observed.canary.exists {
        delete_quietly(&apis.deployments, &names.canary).await?;
    }
    sync_analysis_jobs(md, ctx, &apis, &plan, &names).await?;
    if let Some(job) = resolve_job_done {
        delete_quietly(&apis.jobs, &job).await?;
    }
    for event in &plan.events {
        let kind = if event.warning { EventType::Warning } else { EventType::Normal };
        publish(ctx, md, kind, event.reason, event.note.clone()).await;
    }
    if let Some(outcome) = plan.outcome {
        ctx.metrics.rollouts.get_or_create(&crate::metrics::OutcomeLabels { outcome: outcome.into() }).inc();
    }
    if let Some(verdict) = plan.verdict {
        ctx.metrics
            .analysis_runs
            .get_or_create(&crate::metrics::VerdictLabels { verdict: format!("{verdict:?}") })
            .inc();
    }
    if let Some(seconds) = plan.time_to_safety {
        ctx.metrics.time_to_safety.observe(seconds);
        tracing::info!(modeldeployment = %pipeline::key(md), seconds, "canary at weight 0: time to safety");
    }
    if !plan.clear.is_empty() {
        let annotations: BTreeMap<&str, Option<&str>> = plan.clear.iter().map(|a| (*a, None)).collect();
        let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({"metadata": {"annotations": annotations}});
        let written = api.patch(&owner_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        pipeline::remember_write(ctx, &written);
    }
    if before.phase != status.phase {
        tracing::info!(modeldeployment = %pipeline::key(md), phase = ?status.phase, message = ?status.message, "phase changed");
    }
    Ok(Action::requeue(plan.requeue))
}

/// A build error after validation passed is a bug in the operator, not in the spec.
fn spec_bug(e: build::SpecError) -> Error {
    Error::Build(e.to_string())
}

fn invalid_status(md: &ModelDeployment, message: &str, now: &Time) -> ModelDeploymentStatus {
    let mut status = md.status.clone().unwrap_or_default();
    let generation = md.metadata.generation;
    status.observed_generation = generation;
    let c = &mut status.conditions;
    set_condition(c, types::ACCEPTED, false, reasons::INVALID_SPEC, message, generation, now);
    if status.stable.is_none() {
        status.phase = Some(RolloutPhase::Degraded);
    }
    status.message = Some(format!("the spec cannot be served: {message}; nothing was changed"));
    status
}

async fn delete_quietly<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The summary `distillery-worker inspect` leaves in its termination message.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Inspected {
    variant: String,
    model_digest: String,
    #[serde(default)]
    manifest_digest: Option<String>,
}

fn variant_name(md: &ModelDeployment) -> String {
    serde_json::to_value(md.spec.model.variant)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| "auto".into())
}

/// Where the spec's model stands, resolving its digest by a Job when it is new. Returns the
/// state and a finished resolve Job to delete once its result is in status.
async fn model_state(
    md: &ModelDeployment,
    ctx: &Context,
    apis: &Apis,
    namespace: &str,
    retry: bool,
) -> Result<(ModelState, Option<String>), Error> {
    let variant = variant_name(md);
    let mut expected_manifest = None;
    let target = if let Some(reference) = &md.spec.model.distillation_job_ref {
        let djs: Api<DistillationJob> = Api::namespaced(ctx.client.clone(), namespace);
        let Some(dj) = djs.get_opt(&reference.name).await? else {
            return Ok((
                ModelState::Waiting {
                    reason: reasons::REFERENCE_NOT_FOUND.into(),
                    message: format!("DistillationJob {:?} not found in namespace {namespace}", reference.name),
                },
                None,
            ));
        };
        let status = dj.status.clone().unwrap_or_default();
        let phase = status.phase.unwrap_or(JobPhase::Pending);
        let result = status.result.filter(|_| phase == JobPhase::Succeeded);
        let Some(result) = result else {
            let phase_name = format!("{phase:?}");
            let detail = distillery_crds::conditions::find(&status.conditions, types::FAILED)
                .filter(|c| c.status == "True")
                .map(|c| format!(": {}", c.message))
                .unwrap_or_default();
            return Ok((
                ModelState::Waiting {
                    reason: format!("DistillationJob{phase_name}"),
                    message: format!(
                        "waiting for DistillationJob {:?} to succeed; it is {phase_name}{detail}",
                        reference.name
                    ),
                },
                None,
            ));
        };
        expected_manifest = Some(result.artifact_digest.clone());
        ModelToResolve {
            source: format!(
                "distillationjob/{} {} {} {variant}",
                reference.name, result.artifact_uri, result.artifact_digest
            ),
            uri: result.artifact_uri,
            variant: variant.clone(),
            volume_claim: dj.spec.output.volume_claim.clone(),
        }
    } else {
        let uri = md.spec.model.uri.clone().unwrap_or_default();
        ModelToResolve {
            source: format!("{uri} {variant}"),
            uri,
            variant: variant.clone(),
            volume_claim: md.spec.model.volume_claim.clone(),
        }
    };
    if let Some(resolved) =
        md.status.as_ref().and_then(|s| s.resolved_model.as_ref()).filter(|r| r.source == target.source)
    {
        return Ok((ModelState::Resolved(resolved.clone()), None));
    }
    let job_name = build::resolve_job_name(&md.name_any(), &target.source);
    let mut job = apis.jobs.get_opt(&job_name).await?;
    if retry && job.as_ref().and_then(job_outcome) == Some(false) {
        delete_quietly(&apis.jobs, &job_name).await?;
        job = None;
    }
    let waiting = || ModelState::Waiting {
        reason: reasons::RESOLVING.into(),
        message: format!("reading the artifact {} to learn its served file's digest", target.uri),
    };
    let Some(job) = job else {
        let desired = build::resolve_job(md, &target, &ctx.serving).map_err(spec_bug)?;
        pipeline::apply::<Job>(ctx, namespace, &job_name, &desired).await?;
        return Ok((waiting(), None));
    };
    match job_outcome(&job) {
        None => Ok((waiting(), None)),
        Some(succeeded) => {
            let message = job_message(apis, &job_name).await?;
            if !succeeded {
                let message = format!("cannot serve {}: {}", target.uri, message.trim());
                return Ok((ModelState::Invalid { reason: reasons::ARTIFACT_INVALID.into(), message }, None));
            }
            let inspected: Inspected = match serde_json::from_str(message.trim()) {
                Ok(i) => i,
                Err(e) => {
                    let message = format!("the artifact reader's summary is not readable ({e}): {message:?}");
                    return Ok((ModelState::Invalid { reason: reasons::ARTIFACT_INVALID.into(), message }, None));
                }
            };
            if let (Some(expected), Some(found)) = (&expected_manifest, &inspected.manifest_digest)
                && expected != found
            {
                let message = format!(
                    "the artifact at {} changed since its DistillationJob wrote it: its manifest's sha256 is {found}, the job reported {expected}; artifacts are immutable",
                    target.uri
                );
                return Ok((ModelState::Invalid { reason: reasons::ARTIFACT_INVALID.into(), message }, None));
            }
            let resolved = ResolvedModel {
                model_uri: target.uri.clone(),
                variant: inspected.variant,
                model_digest: inspected.model_digest,
                volume_claim: target.volume_claim.clone(),
                source: target.source.clone(),
            };
            Ok((ModelState::Resolved(resolved), Some(job_name)))
        }
    }
}

/// The termination message of a finished Job's last pod.
async fn job_message(apis: &Apis, job_name: &str) -> Result<String, Error> {
    let pods = apis.pods.list(&ListParams::default().labels(&format!("{JOB_NAME_LABEL}={job_name}"))).await?.items;
    let last = pods
        .iter()
        .filter_map(|p| terminated(p, WORKER_CONTAINER).map(|t| (p.metadata.creation_timestamp.clone(), t)))
        .max_by_key(|(c, _)| c.as_ref().map(|t| t.0));
    Ok(last.map(|(_, (_, message))| message).unwrap_or_else(|| "the pod left no message".into()))
}

/// A track's Deployment as observed: whether all its pods serve `digest` and how many are ready.
fn observe_track(deployment: Option<&Deployment>, digest: Option<&str>) -> TrackObservation {
    let Some(d) = deployment else { return TrackObservation::default() };
    let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let template_digest = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(build::DIGEST_ANNOTATION))
        .map(String::as_str);
    let status = d.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let rolled_out = observed && template_digest == digest && updated == spec_replicas && total == spec_replicas;
    TrackObservation { exists: true, rolled_out, ready: if rolled_out { ready } else { ready.min(updated) } }
}

fn route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// The user's HTTPRoute, or why it cannot be used.
async fn read_route(
    md: &ModelDeployment,
    ctx: &Context,
    namespace: &str,
) -> Result<Result<serde_json::Value, String>, Error> {
    let Some(name) = md.spec.rollout.traffic_routing.http_route.clone() else {
        return Ok(Err("rollout.trafficRouting.httpRoute is not set".into()));
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &route_resource());
    match api.get(&name).await {
        Ok(route) => Ok(Ok(serde_json::to_value(route).expect("an object serializes"))),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let served = kube::discovery::group(&ctx.client, "gateway.networking.k8s.io")
                .await
                .is_ok_and(|g| g.recommended_resources().iter().any(|(r, _)| r.kind == "HTTPRoute"));
            Ok(Err(if served {
                format!(
                    "HTTPRoute {name:?} not found in namespace {namespace}; create it (with a parentRef to your Gateway) or fix rollout.trafficRouting.httpRoute"
                )
            } else {
                "the Gateway API is not installed: this cluster does not serve httproutes.gateway.networking.k8s.io (install the Gateway API CRDs or use trafficRouting.method: replica-ratio)".to_string()
            }))
        }
        Err(e) => Err(e.into()),
    }
}

async fn write_route(ctx: &Context, namespace: &str, route: serde_json::Value) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &route_resource());
    let object: DynamicObject = serde_json::from_value(route).map_err(|e| Error::Build(e.to_string()))?;
    let name = object.name_any();
    let params = PostParams { field_manager: Some(ctx.field_manager.clone()), ..Default::default() };
    api.replace(&name, &params, &object).await?;
    Ok(())
}

/// The analysis Job of the next run, as observed.
async fn observe_analysis(
    md: &ModelDeployment,
    apis: &Apis,
    status: &ModelDeploymentStatus,
) -> Result<AnalysisObservation, Error> {
    let Some(canary) = &status.canary else { return Ok(AnalysisObservation::None) };
    let run = status.last_analysis.as_ref().filter(|a| a.canary_revision == canary.revision).map_or(0, |a| a.run) + 1;
    let name = build::analysis_job_name(&md.name_any(), canary.revision, run);
    let Some(job) = apis.jobs.get_opt(&name).await? else { return Ok(AnalysisObservation::None) };
    let window = parse_duration(&md.spec.rollout.analysis.interval).unwrap_or(Duration::from_secs(60));
    let started = job.metadata.creation_timestamp.as_ref().map_or(Timestamp::now(), |t| t.0);
    let due = started + k8s_openapi::jiff::SignedDuration::try_from(window).unwrap_or_default();
    Ok(match job_outcome(&job) {
        None => AnalysisObservation::Running { due },
        Some(ok) => {
            let message = job_message(apis, &name).await?;
            match serde_json::from_str(message.trim()) {
                Ok(run) if ok => AnalysisObservation::Done { started, due, run },
                Ok(_) | Err(_) => {
                    AnalysisObservation::Failed { started, due, message: message.trim().chars().take(400).collect() }
                }
            }
        }
    })
}

/// Makes the planned analysis Job exist and removes the others.
async fn sync_analysis_jobs(
    md: &ModelDeployment,
    ctx: &Context,
    apis: &Apis,
    plan: &rollout::Plan,
    names: &Names,
) -> Result<(), Error> {
    let want = match (&plan.status.canary, plan.analysis_run) {
        (Some(canary), Some(run)) => Some((canary.revision, run)),
        _ => None,
    };
    let wanted_name = want.map(|(rev, run)| build::analysis_job_name(&md.name_any(), rev, run));
    let selector = format!("{MDEP_LABEL}={},{PURPOSE_LABEL}=analysis", names.label);
    let existing = apis.jobs.list(&ListParams::default().labels(&selector)).await?.items;
    for job in &existing {
        let name = job.name_any();
        if Some(&name) != wanted_name.as_ref() && job.metadata.deletion_timestamp.is_none() {
            delete_quietly(&apis.jobs, &name).await?;
        }
    }
    let (Some((revision, run)), Some(name)) = (want, wanted_name) else { return Ok(()) };
    if existing.iter().any(|j| j.name_any() == name) {
        return Ok(());
    }
    let Some(targets) = analysis_targets(apis, names).await? else { return Ok(()) };
    let job = build::analysis_job(md, revision, run, &targets, &ctx.serving).map_err(spec_bug)?;
    pipeline::apply::<Job>(ctx, &md.namespace().unwrap_or_default(), &name, &job).await?;
    Ok(())
}

/// The tracks' Service addresses and their ready pods' metrics endpoints; `None` while a
/// Service has no address yet.
async fn analysis_targets(apis: &Apis, names: &Names) -> Result<Option<AnalysisTargets>, Error> {
    let address = |svc: Option<Service>| {
        svc.and_then(|s| s.spec?.cluster_ip)
            .filter(|ip| !ip.is_empty() && ip != "None")
            .map(|ip| format!("http://{ip}:{SERVER_PORT}"))
    };
    let (Some(stable_url), Some(canary_url)) =
        (address(apis.services.get_opt(&names.stable).await?), address(apis.services.get_opt(&names.canary).await?))
    else {
        return Ok(None);
    };
    let mut metrics = BTreeMap::new();
    for track in [Track::Stable, Track::Canary] {
        let selector = format!("{MDEP_LABEL}={},{}={}", names.label, build::TRACK_LABEL, track.as_str());
        let pods = apis.pods.list(&ListParams::default().labels(&selector)).await?.items;
        let urls: Vec<String> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .map(|ip| format!("http://{ip}:{SERVER_PORT}/metrics"))
            .collect();
        metrics.insert(track.as_str(), urls);
    }
    Ok(Some(AnalysisTargets {
        stable_url,
        canary_url,
        stable_metrics: metrics.remove("stable").unwrap_or_default(),
        canary_metrics: metrics.remove("canary").unwrap_or_default(),
    }))
}
