//! The desired children of a ModelDeployment, built without a client: the stable and canary
//! Deployments of `distillery-server`, the three Services, the traffic split (the main Service's
//! selector, or the weights on the user's HTTPRoute), and the Jobs that resolve a model's digest
//! and run one canary analysis. Pure, so each is unit-tested.

use std::collections::BTreeMap;

use distillery_crds::ModelDeployment;
use distillery_crds::common::EvalDataset;
use distillery_crds::deployment::{TrackStatus, TrafficMethod};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::distillation::build::MANAGED_BY;
use crate::names::{child_name, label_value, short_hash};
use crate::objects::{
    claim_mount_path, container_security_context, pod_location, pod_security_context, store_env, strip_nulls,
    work_volume,
};

/// Label naming the ModelDeployment on everything it owns (a label value: hashed past 63).
pub const MDEP_LABEL: &str = "distillery.dev/modeldeployment";
/// Label naming a server pod's track: `stable` or `canary`.
pub const TRACK_LABEL: &str = "distillery.dev/track";
/// Label holding the model revision a server pod serves.
pub const REVISION_LABEL: &str = "distillery.dev/revision";
/// Label telling a ModelDeployment's Jobs apart: `resolve` or `analysis`.
pub const PURPOSE_LABEL: &str = "distillery.dev/purpose";
/// Annotation on a pod template naming the digest its server must serve.
pub const DIGEST_ANNOTATION: &str = "distillery.dev/model-digest";
/// Port every server listens on, and every Service's port.
pub const SERVER_PORT: i32 = 8080;
/// Name of the server container.
pub const SERVER_CONTAINER: &str = "server";
/// Name of the worker container of resolve and analysis Jobs.
pub const WORKER_CONTAINER: &str = "worker";
/// Where Jobs leave their result.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// Operator settings that shape what a ModelDeployment builds.
#[derive(Clone, Debug)]
pub struct ServingSettings {
    /// Server image when the spec names none.
    pub server_image: String,
    /// Worker image that resolves models and runs analyses.
    pub worker_image: String,
}

/// One of the two tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Track {
    /// The model serving today.
    Stable,
    /// The model being rolled out.
    Canary,
}

impl Track {
    /// `stable` or `canary`.
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Stable => "stable",
            Track::Canary => "canary",
        }
    }
}

/// Which tracks the main Service sends traffic to (`replica-ratio`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Only stable pods: the canary has weight 0.
    StableOnly,
    /// Both tracks, in proportion to their ready pods.
    Both,
    /// Only canary pods: the canary has weight 100.
    CanaryOnly,
}

impl Selection {
    /// The selection that gives the canary `weight` percent.
    pub fn for_weight(weight: i32) -> Self {
        match weight {
            ..=0 => Selection::StableOnly,
            100.. => Selection::CanaryOnly,
            _ => Selection::Both,
        }
    }
}

/// Why a spec cannot be served. The spec must change first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The object lacks what the API server always sets.
    #[error("metadata.{0} is missing")]
    MissingMetadata(&'static str),
    /// A `file://` location no pod could read.
    #[error(
        "{field}: {uri:?} is a file:// path but {claim_field} is unset; the pods cannot read it without the claim that holds it"
    )]
    NoClaim {
        /// The URI's field.
        field: &'static str,
        /// The URI.
        uri: String,
        /// The claim field to set.
        claim_field: &'static str,
    },
    /// A `file://` location whose first path segment cannot be a mount point.
    #[error(
        "{field}: {uri:?} must be a file:// path under a top-level directory (e.g. file:///artifacts/model), where its claim is mounted"
    )]
    BadPath {
        /// The URI's field.
        field: &'static str,
        /// The URI.
        uri: String,
    },
}

/// Checks what the schema cannot: every `file://` location the pods read has a claim and a
/// mountable path.
pub fn validate(md: &ModelDeployment) -> Result<(), SpecError> {
    if let Some(uri) = &md.spec.model.uri {
        check_location("spec.model.uri", uri, md.spec.model.volume_claim.as_deref(), "spec.model.volumeClaim")?;
    }
    if let Some(golden) = &md.spec.rollout.analysis.golden_dataset {
        check_location(
            "spec.rollout.analysis.goldenDataset.uri",
            &golden.uri,
            golden.volume_claim.as_deref(),
            "spec.rollout.analysis.goldenDataset.volumeClaim",
        )?;
    }
    Ok(())
}

fn check_location(
    field: &'static str,
    uri: &str,
    claim: Option<&str>,
    claim_field: &'static str,
) -> Result<(), SpecError> {
    if uri.starts_with("s3://") {
        // Read through spec.s3; the schema refuses a claim beside it.
        return Ok(());
    }
    if claim_mount_path(uri).is_none() {
        return Err(SpecError::BadPath { field, uri: uri.to_string() });
    }
    if claim.is_none() {
        return Err(SpecError::NoClaim { field, uri: uri.to_string(), claim_field });
    }
    Ok(())
}

/// Names of everything a ModelDeployment owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The Service clients call (`<name>`).
    pub main: String,
    /// The stable Deployment and Service (`<name>-stable`).
    pub stable: String,
    /// The canary Deployment and Service (`<name>-canary`).
    pub canary: String,
    /// The label value naming the ModelDeployment.
    pub label: String,
}

impl Names {
    /// The names for the ModelDeployment called `name`.
    pub fn of(name: &str) -> Self {
        Self {
            main: if name.len() <= crate::names::MAX_LABEL { name.to_string() } else { label_value(name) },
            stable: child_name(name, "stable"),
            canary: child_name(name, "canary"),
            label: label_value(name),
        }
    }

    /// The Deployment and Service of `track`.
    pub fn track(&self, track: Track) -> &str {
        match track {
            Track::Stable => &self.stable,
            Track::Canary => &self.canary,
        }
    }
}

fn identity(md: &ModelDeployment) -> Result<(String, String, Value), SpecError> {
    let name = md.metadata.name.clone().ok_or(SpecError::MissingMetadata("name"))?;
    let namespace = md.metadata.namespace.clone().ok_or(SpecError::MissingMetadata("namespace"))?;
    let owner = md.controller_owner_ref(&()).ok_or(SpecError::MissingMetadata("uid"))?;
    Ok((name, namespace, serde_json::to_value(owner).expect("an owner reference serializes")))
}

fn common_labels(names: &Names) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name".to_string(), "distillery-server".to_string()),
        ("app.kubernetes.io/instance".to_string(), names.label.clone()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
        (MDEP_LABEL.to_string(), names.label.clone()),
    ]
    .into()
}

fn selector(names: &Names, track: Option<Track>) -> BTreeMap<String, String> {
    let mut s = BTreeMap::from([(MDEP_LABEL.to_string(), names.label.clone())]);
    if let Some(track) = track {
        s.insert(TRACK_LABEL.to_string(), track.as_str().to_string());
    }
    s
}

/// Canary replicas that give it about `weight` percent beside `stable` stable replicas when the
/// main Service selects both tracks: the canary's pods are added beside stable's, so stable keeps
/// its full capacity and a rollback never has to scale anything up. At 100% the canary takes
/// stable's size.
pub fn canary_replicas(method: TrafficMethod, weight: i32, stable: i32) -> i32 {
    let stable = stable.max(1);
    match method {
        _ if weight <= 0 => 0,
        _ if weight >= 100 => stable,
        TrafficMethod::ReplicaRatio => {
            let w = f64::from(weight) / 100.0;
            ((w * f64::from(stable) / (1.0 - w)).round() as i32).max(1)
        }
        TrafficMethod::GatewayApi => ((f64::from(weight) * f64::from(stable) / 100.0).ceil() as i32).max(1),
    }
}

/// The weight in percent a split achieves: with `replica-ratio`, the canary's share of the ready
/// pods the main Service selects; with `gateway-api`, the weight itself.
pub fn achieved_weight(method: TrafficMethod, weight: i32, stable_ready: i32, canary_ready: i32) -> i32 {
    match (method, Selection::for_weight(weight)) {
        (_, Selection::StableOnly) => 0,
        (_, Selection::CanaryOnly) => 100,
        (TrafficMethod::GatewayApi, Selection::Both) => weight,
        (TrafficMethod::ReplicaRatio, Selection::Both) => {
            let total = stable_ready + canary_ready;
            if total == 0 { 0 } else { ((f64::from(canary_ready) * 100.0) / f64::from(total)).round() as i32 }
        }
    }
}

/// The Deployment of `track` serving `model` with `replicas` pods.
pub fn deployment(
    md: &ModelDeployment,
    track: Track,
    model: &TrackStatus,
    replicas: i32,
    settings: &ServingSettings,
) -> Result<Deployment, SpecError> {
    let (name, namespace, owner) = identity(md)?;
    let names = Names::of(&name);
    let server = &md.spec.server;
    let mut labels = common_labels(&names);
    labels.insert(TRACK_LABEL.into(), track.as_str().into());
    let mut pod_labels = labels.clone();
    pod_labels.insert(REVISION_LABEL.into(), model.revision.to_string());
    let bad_path = || SpecError::BadPath { field: "spec.model.uri", uri: model.model_uri.clone() };
    let path = pod_location(&model.model_uri).ok_or_else(bad_path)?;
    let (work, work_mount) = work_volume();
    let mut volumes = vec![json!({"name": "tmp", "emptyDir": {}}), work];
    let mut mounts = vec![json!({"name": "tmp", "mountPath": "/tmp"}), work_mount];
    if let Some(claim) = &model.volume_claim {
        let mount = claim_mount_path(&model.model_uri).ok_or_else(bad_path)?;
        volumes.push(json!({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}));
        mounts.push(json!({"name": "model", "mountPath": mount, "readOnly": true}));
    }
    let mut env = vec![
        json!({"name": "DISTILLERY_MODEL", "value": path}),
        json!({"name": "DISTILLERY_MODEL_NAME", "value": name}),
        json!({"name": "DISTILLERY_MODEL_VARIANT", "value": model.variant.clone().unwrap_or_else(|| "auto".into())}),
        json!({"name": "DISTILLERY_EXPECT_DIGEST", "value": model.model_digest.clone().unwrap_or_default()}),
        json!({"name": "DISTILLERY_PORT", "value": SERVER_PORT.to_string()}),
        json!({"name": "DISTILLERY_MAX_BATCH_SIZE", "value": server.max_batch_size.to_string()}),
        json!({"name": "DISTILLERY_MAX_BATCH_DELAY_MS", "value": server.max_batch_delay_ms.to_string()}),
        json!({"name": "DISTILLERY_THREADS", "value": server.threads.to_string()}),
        // An s3:// model is downloaded here, once per manifest digest, and verified.
        json!({"name": "DISTILLERY_MODEL_CACHE", "value": format!("{}/models", crate::objects::WORK_PATH)}),
    ];
    env.extend(store_env(md.spec.s3.as_ref()));
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": names.track(track), "namespace": namespace, "labels": labels, "ownerReferences": [owner]},
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": selector(&names, Some(track))},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {DIGEST_ANNOTATION: model.model_digest},
                },
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": pod_security_context(),
                    "volumes": volumes,
                    "containers": [{
                        "name": SERVER_CONTAINER,
                        "image": server.image.clone().unwrap_or_else(|| settings.server_image.clone()),
                        "env": env,
                        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
                        "readinessProbe": {
                            "httpGet": {"path": "/v2/health/ready", "port": "http"},
                            "periodSeconds": 2, "failureThreshold": 2,
                        },
                        "livenessProbe": {
                            "httpGet": {"path": "/v2/health/live", "port": "http"},
                            "periodSeconds": 10, "failureThreshold": 3,
                        },
                        "resources": server.resources,
                        "securityContext": container_security_context(),
                        "volumeMounts": mounts,
                    }],
                },
            },
        },
    });
    Ok(serde_json::from_value(strip_nulls(deployment)).expect("the Deployment built above has the Deployment's shape"))
}

/// A Service named `service_name` over the pods `selection` picks.
fn service(md: &ModelDeployment, service_name: &str, track: Option<Track>) -> Result<Service, SpecError> {
    let (name, namespace, owner) = identity(md)?;
    let names = Names::of(&name);
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name, "namespace": namespace, "labels": common_labels(&names), "ownerReferences": [owner]},
        "spec": {
            "selector": selector(&names, track),
            "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    });
    Ok(serde_json::from_value(service).expect("the Service built above has the Service's shape"))
}

/// The Service clients call, `<name>`: with `replica-ratio` its selector is the traffic split.
/// With `gateway-api` it selects both tracks (clients should call the gateway).
pub fn main_service(md: &ModelDeployment, selection: Selection) -> Result<Service, SpecError> {
    let names = Names::of(&md.name_any());
    let track = match selection {
        Selection::StableOnly => Some(Track::Stable),
        Selection::Both => None,
        Selection::CanaryOnly => Some(Track::Canary),
    };
    service(md, &names.main, track)
}

/// The Service of one track, `<name>-stable` or `<name>-canary`.
pub fn track_service(md: &ModelDeployment, track: Track) -> Result<Service, SpecError> {
    let names = Names::of(&md.name_any());
    service(md, names.track(track), Some(track))
}

/// Which tracks a live main Service selects, if it is one of ours.
pub fn observed_selection(service: &Service) -> Option<Selection> {
    let selector = service.spec.as_ref()?.selector.as_ref()?;
    Some(match selector.get(TRACK_LABEL).map(String::as_str) {
        None => Selection::Both,
        Some("stable") => Selection::StableOnly,
        Some("canary") => Selection::CanaryOnly,
        Some(_) => return None,
    })
}

/// `route` with every rule's backendRefs set to the stable and canary Services at the given
/// weights, the user's other fields untouched; `None` when it already says exactly that.
pub fn route_with_weights(route: &Value, names: &Names, stable_weight: i32, canary_weight: i32) -> Option<Value> {
    let refs = json!([
        {"group": "", "kind": "Service", "name": names.stable, "port": SERVER_PORT, "weight": stable_weight},
        {"group": "", "kind": "Service", "name": names.canary, "port": SERVER_PORT, "weight": canary_weight},
    ]);
    let mut updated = route.clone();
    let rules = updated.pointer_mut("/spec/rules")?.as_array_mut()?;
    if rules.is_empty() {
        rules.push(json!({}));
    }
    for rule in rules.iter_mut() {
        rule.as_object_mut()?.insert("backendRefs".into(), refs.clone());
    }
    (updated != *route).then_some(updated)
}

/// The canary weight a live HTTPRoute gives (`None` when its rules do not point at our tracks).
pub fn observed_route_weight(route: &Value, names: &Names) -> Option<i32> {
    let refs = route.pointer("/spec/rules/0/backendRefs")?.as_array()?;
    let weight = |n: &str| {
        refs.iter().find(|r| r["name"] == n).map(|r| r.get("weight").and_then(Value::as_i64).unwrap_or(1) as i32)
    };
    let (stable, canary) = (weight(&names.stable).unwrap_or(0), weight(&names.canary)?);
    let total = stable + canary;
    Some(if total == 0 { 0 } else { (canary * 100 + total / 2) / total })
}

/// What the resolve Job reads: an artifact and the variant to serve from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelToResolve {
    /// Artifact URI.
    pub uri: String,
    /// `fp32`, `int8` or `auto`.
    pub variant: String,
    /// The claim holding it.
    pub volume_claim: Option<String>,
    /// What it was resolved from (the key the resolution is reused under).
    pub source: String,
}

/// The name of the Job resolving `source`.
pub fn resolve_job_name(md_name: &str, source: &str) -> String {
    child_name(md_name, &format!("resolve-{}", short_hash(source)))
}

/// The Job that reads the artifact's manifest, checks the served file's sha256 and reports it
/// (`distillery-worker inspect`) in its termination message.
pub fn resolve_job(md: &ModelDeployment, model: &ModelToResolve, settings: &ServingSettings) -> Result<Job, SpecError> {
    let (name, _, _) = identity(md)?;
    let path =
        pod_location(&model.uri).ok_or(SpecError::BadPath { field: "spec.model.uri", uri: model.uri.clone() })?;
    let args = vec![
        "inspect".to_string(),
        "--artifact".into(),
        path.to_string(),
        "--variant".into(),
        model.variant.clone(),
        "--termination-message".into(),
        TERMINATION_MESSAGE_PATH.into(),
    ];
    let claims = model.volume_claim.iter().map(|c| (c.clone(), model.uri.clone())).collect::<Vec<_>>();
    worker_job(md, &resolve_job_name(&name, &model.source), "resolve", args, &claims, 300, settings)
}

/// Where an analysis run sends its requests and reads its metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalysisTargets {
    /// Base URL of the stable Service.
    pub stable_url: String,
    /// Base URL of the canary Service.
    pub canary_url: String,
    /// `/metrics` URL of every stable pod.
    pub stable_metrics: Vec<String>,
    /// `/metrics` URL of every canary pod.
    pub canary_metrics: Vec<String>,
}

/// The name of the Job running analysis `run` (1-based) of canary `revision`.
pub fn analysis_job_name(md_name: &str, revision: i64, run: u32) -> String {
    child_name(md_name, &format!("analysis-r{revision}-{run}"))
}

/// The Job running analysis `run` (1-based) of the canary at `revision`: `distillery-worker
/// analyze` watches both tracks' live traffic for one `interval`, then sends them a fresh slice
/// of the golden set, and leaves what it measured in its termination message.
pub fn analysis_job(
    md: &ModelDeployment,
    revision: i64,
    run: u32,
    targets: &AnalysisTargets,
    settings: &ServingSettings,
) -> Result<Job, SpecError> {
    let (name, _, _) = identity(md)?;
    let analysis = &md.spec.rollout.analysis;
    let mut args = vec![
        "analyze".to_string(),
        "--stable".into(),
        targets.stable_url.clone(),
        "--canary".into(),
        targets.canary_url.clone(),
        "--model-name".into(),
        name.clone(),
        "--run".into(),
        run.saturating_sub(1).to_string(),
        "--window".into(),
        analysis.interval.clone(),
        "--termination-message".into(),
        TERMINATION_MESSAGE_PATH.into(),
    ];
    if !targets.stable_metrics.is_empty() {
        args.extend(["--stable-metrics".into(), targets.stable_metrics.join(",")]);
    }
    if !targets.canary_metrics.is_empty() {
        args.extend(["--canary-metrics".into(), targets.canary_metrics.join(",")]);
    }
    let mut claims = vec![];
    if let Some(golden) = &analysis.golden_dataset {
        args.extend(["--golden-dataset".into(), golden_argument(golden)]);
        if let Some(claim) = &golden.volume_claim {
            claims.push((claim.clone(), golden.uri.clone()));
        }
    }
    let deadline =
        crate::modeldeployment::rollout::parse_duration(&analysis.interval).map_or(600, |d| d.as_secs() + 300);
    let mut job =
        worker_job(md, &analysis_job_name(&name, revision, run), "analysis", args, &claims, deadline as i64, settings)?;
    let labels = job.metadata.labels.get_or_insert_default();
    labels.insert(REVISION_LABEL.into(), revision.to_string());
    Ok(job)
}

/// The golden set as the analyze command takes it: the spec object as JSON.
fn golden_argument(golden: &EvalDataset) -> String {
    serde_json::to_string(golden).expect("a dataset spec serializes")
}

fn worker_job(
    md: &ModelDeployment,
    job_name: &str,
    purpose: &str,
    args: Vec<String>,
    claims: &[(String, String)],
    deadline_seconds: i64,
    settings: &ServingSettings,
) -> Result<Job, SpecError> {
    let (name, namespace, owner) = identity(md)?;
    let names = Names::of(&name);
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "distillery-worker".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
        (MDEP_LABEL.to_string(), names.label.clone()),
        (PURPOSE_LABEL.to_string(), purpose.to_string()),
    ]);
    let (work, work_mount) = work_volume();
    let mut volumes = vec![work];
    let mut mounts = vec![work_mount];
    for (i, (claim, uri)) in claims.iter().enumerate() {
        let path = claim_mount_path(uri).ok_or(SpecError::BadPath { field: "uri", uri: uri.clone() })?;
        volumes.push(
            json!({"name": format!("data-{i}"), "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}),
        );
        mounts.push(json!({"name": format!("data-{i}"), "mountPath": path, "readOnly": true}));
    }
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name, "namespace": namespace, "labels": labels, "ownerReferences": [owner]},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "securityContext": pod_security_context(),
                    "volumes": volumes,
                    "containers": [{
                        "name": WORKER_CONTAINER,
                        "image": settings.worker_image,
                        "args": args,
                        "env": store_env(md.spec.s3.as_ref()),
                        "volumeMounts": mounts,
                        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "securityContext": container_security_context(),
                    }],
                },
            },
        },
    });
    Ok(serde_json::from_value(job).expect("the Job built above has the Job's shape"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use distillery_crds::ModelDeploymentSpec;

    fn md(yaml: &str) -> ModelDeployment {
        let spec: ModelDeploymentSpec = serde_norway::from_str(yaml).unwrap();
        let mut md = ModelDeployment::new("reviews", spec);
        md.metadata.namespace = Some("ml".into());
        md.metadata.uid = Some("0000-1111".into());
        md
    }

    fn track(revision: i64) -> TrackStatus {
        TrackStatus {
            revision,
            model_uri: "file:///artifacts/small/g1-abc".into(),
            model_digest: Some("ab".repeat(32)),
            variant: Some("int8".into()),
            volume_claim: Some("artifacts".into()),
            ..Default::default()
        }
    }

    fn settings() -> ServingSettings {
        ServingSettings {
            server_image: "example/distillery-server:1".into(),
            worker_image: "example/distillery-worker:1".into(),
        }
    }

    const SPEC: &str = "model: {uri: file:///artifacts/small, volumeClaim: artifacts}\nreplicas: 3\nserver: {threads: 2, resources: {limits: {memory: 1Gi}}}\n";

    #[test]
    fn a_track_deployment_serves_its_digest_read_only_and_unprivileged() {
        let md = md(SPEC);
        let d = deployment(&md, Track::Canary, &track(4), 2, &settings()).unwrap();
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["metadata"]["name"], "reviews-canary");
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(v["spec"]["replicas"], 2);
        assert_eq!(v["spec"]["selector"]["matchLabels"][TRACK_LABEL], "canary");
        let pod = &v["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"][REVISION_LABEL], "4");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["image"], "example/distillery-server:1");
        let env: BTreeMap<String, String> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().into(), e["value"].as_str().unwrap().into()))
            .collect();
        assert_eq!(env["DISTILLERY_MODEL"], "/artifacts/small/g1-abc");
        assert_eq!(env["DISTILLERY_EXPECT_DIGEST"], "ab".repeat(32));
        assert_eq!(env["DISTILLERY_MODEL_VARIANT"], "int8");
        assert_eq!(env["DISTILLERY_MODEL_NAME"], "reviews");
        assert_eq!(env["DISTILLERY_THREADS"], "2");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/v2/health/ready");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
        assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
        let model_mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "model").unwrap();
        assert_eq!((&model_mount["mountPath"], &model_mount["readOnly"]), (&json!("/artifacts"), &json!(true)));
    }

    #[test]
    fn services_split_traffic_by_selector() {
        let md = md(SPEC);
        let sel =
            |s: Selection| serde_json::to_value(main_service(&md, s).unwrap()).unwrap()["spec"]["selector"].clone();
        assert_eq!(sel(Selection::Both).get(TRACK_LABEL), None);
        assert_eq!(sel(Selection::StableOnly)[TRACK_LABEL], "stable");
        assert_eq!(sel(Selection::CanaryOnly)[TRACK_LABEL], "canary");
        for s in [Selection::Both, Selection::StableOnly, Selection::CanaryOnly] {
            assert_eq!(observed_selection(&main_service(&md, s).unwrap()), Some(s));
        }
        let canary = serde_json::to_value(track_service(&md, Track::Canary).unwrap()).unwrap();
        assert_eq!(canary["metadata"]["name"], "reviews-canary");
        assert_eq!(canary["spec"]["selector"][TRACK_LABEL], "canary");
    }

    #[test]
    fn replica_ratio_adds_canary_pods_beside_stable_and_reports_what_it_achieves() {
        use TrafficMethod::*;
        assert_eq!(canary_replicas(ReplicaRatio, 10, 3), 1);
        assert_eq!(achieved_weight(ReplicaRatio, 10, 3, 1), 25);
        assert_eq!(canary_replicas(ReplicaRatio, 50, 3), 3);
        assert_eq!(achieved_weight(ReplicaRatio, 50, 3, 3), 50);
        assert_eq!(canary_replicas(ReplicaRatio, 100, 3), 3);
        assert_eq!(achieved_weight(ReplicaRatio, 100, 3, 3), 100);
        assert_eq!(canary_replicas(ReplicaRatio, 0, 3), 0);
        assert_eq!(achieved_weight(ReplicaRatio, 0, 3, 3), 0);
        assert_eq!(canary_replicas(GatewayApi, 10, 3), 1);
        assert_eq!(achieved_weight(GatewayApi, 10, 3, 1), 10);
    }

    #[test]
    fn route_weights_keep_the_users_fields_and_a_no_op_changes_nothing() {
        let names = Names::of("reviews");
        let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["reviews.example"],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}], "backendRefs": [{"name": "old", "port": 80}]}]}});
        let updated = route_with_weights(&route, &names, 90, 10).unwrap();
        assert_eq!(updated["spec"]["hostnames"], json!(["reviews.example"]));
        assert_eq!(updated["spec"]["rules"][0]["matches"], route["spec"]["rules"][0]["matches"]);
        assert_eq!(updated["spec"]["rules"][0]["backendRefs"][1]["name"], "reviews-canary");
        assert_eq!(updated["spec"]["rules"][0]["backendRefs"][1]["weight"], 10);
        assert_eq!(observed_route_weight(&updated, &names), Some(10));
        assert!(route_with_weights(&updated, &names, 90, 10).is_none());
        assert_eq!(observed_route_weight(&route, &names), None);
    }

    #[test]
    fn jobs_run_the_worker_with_the_claims_they_read() {
        let md = md(&format!(
            "{SPEC}rollout:\n  analysis:\n    interval: 10s\n    goldenDataset: {{uri: file:///data/golden.csv, volumeClaim: datasets, samples: 200}}\n"
        ));
        let targets = AnalysisTargets {
            stable_url: "http://10.0.0.1:8080".into(),
            canary_url: "http://10.0.0.2:8080".into(),
            stable_metrics: vec!["http://10.1.0.1:8080/metrics".into()],
            canary_metrics: vec!["http://10.1.0.2:8080/metrics".into(), "http://10.1.0.3:8080/metrics".into()],
        };
        let job = serde_json::to_value(analysis_job(&md, 3, 2, &targets, &settings()).unwrap()).unwrap();
        assert_eq!(job["metadata"]["name"], "reviews-analysis-r3-2");
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
        assert_eq!(args[0], "analyze");
        assert_eq!(after("--run"), "1");
        assert_eq!(after("--window"), "10s");
        assert_eq!(after("--canary-metrics"), "http://10.1.0.2:8080/metrics,http://10.1.0.3:8080/metrics");
        assert!(after("--golden-dataset").contains("\"samples\":200"));
        assert_eq!(c["volumeMounts"][1]["mountPath"], "/data");
        assert_eq!(job["spec"]["template"]["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"], "datasets");
        assert_eq!(c["volumeMounts"][0]["mountPath"], crate::objects::WORK_PATH, "scratch space for s3 downloads");
        let model = ModelToResolve {
            uri: "file:///artifacts/small".into(),
            variant: "auto".into(),
            volume_claim: Some("artifacts".into()),
            source: "file:///artifacts/small#auto".into(),
        };
        let job = serde_json::to_value(resolve_job(&md, &model, &settings()).unwrap()).unwrap();
        assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["args"][0], "inspect");
        assert_eq!(job["spec"]["backoffLimit"], 0);
        assert_ne!(resolve_job_name("reviews", "a"), resolve_job_name("reviews", "b"));
    }

    #[test]
    fn file_locations_need_a_claim_and_s3_is_read_through_the_store() {
        assert!(validate(&md(SPEC)).is_ok());
        let no_claim = md("model: {uri: file:///artifacts/small}\n");
        assert!(matches!(validate(&no_claim), Err(SpecError::NoClaim { field: "spec.model.uri", .. })));
        let s3 = md("model: {uri: s3://bucket/small}\ns3: {endpoint: 'http://minio:9000', forcePathStyle: true}\n");
        assert!(validate(&s3).is_ok());
        let model = TrackStatus {
            model_uri: "s3://bucket/small".into(),
            model_digest: Some("ab".repeat(32)),
            ..Default::default()
        };
        let d = serde_json::to_value(deployment(&s3, Track::Stable, &model, 1, &settings()).unwrap()).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert!(pod["volumes"].as_array().unwrap().iter().all(|v| v.get("persistentVolumeClaim").is_none()));
        let env = pod["containers"][0]["env"].as_array().unwrap();
        let var = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
        assert_eq!(var("DISTILLERY_MODEL"), Some(json!("s3://bucket/small")), "the server downloads it itself");
        assert_eq!(var("DISTILLERY_MODEL_CACHE"), Some(json!("/work/models")));
        assert_eq!(var("DISTILLERY_S3_ENDPOINT"), Some(json!("http://minio:9000")));
        let golden = md(&format!("{SPEC}rollout:\n  analysis:\n    goldenDataset: {{uri: file:///data/g.csv}}\n"));
        assert!(validate(&golden).unwrap_err().to_string().contains("goldenDataset.volumeClaim"));
    }

    #[test]
    fn long_names_stay_within_limits() {
        let names = Names::of(&"x".repeat(200));
        for n in [&names.main, &names.stable, &names.canary, &names.label] {
            assert!(n.len() <= 63, "{n}");
        }
    }
}
