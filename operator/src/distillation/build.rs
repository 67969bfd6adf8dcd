//! The desired children of a DistillationJob, built without a client: the `batch/v1` Job that
//! runs `distillery-worker distill` and, when `teacherOutputs.parallelism` is above 1, the
//! Indexed Job before it whose pods run `distillery-worker teacher-outputs`, one shard each. Pure,
//! so they are unit-tested from YAML fixtures.
//!
//! Both Jobs carry the whole DistillationJob (spec and identity) in the worker's environment, so
//! a retried pod sees exactly what the first one saw; their pods are built by one function
//! ([`worker_pod`]) and differ only in what they run and are told. A Job's pod template is
//! immutable once created, which the `distillery.dev/template-hash` annotation lets the
//! reconciler detect.
//!
//! Artifacts are immutable once written (a ModelDeployment may be serving one), so every run
//! writes a new location: the worker is told to write to `<spec.output.uri>/<run id>` ([`run_id`]:
//! the same for every retry of one run, so a retried pod resumes from its checkpoints there; new
//! for a changed spec or a recreated object). A sharded run's teacher outputs go beside the runs,
//! to `<spec.output.uri>/teacher-outputs/<run id>` ([`teacher_outputs_uri`]).

use std::collections::BTreeMap;

use distillery_crds::DistillationJob;
use distillery_crds::distillation::{DistillationJobSpec, MAX_TEACHER_SHARDS, Task};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::names;
use crate::objects::{
    ClaimUse, Mount, MountError, claim_mounts, container_security_context, mount_specs, pod_security_context,
    store_env, strip_nulls, top_directory, work_volume,
};
use sha2::{Digest, Sha256};

/// Annotation holding the sha256 of the Job's pod template: a Job whose hash differs from the one
/// the current spec builds was made from an older spec.
pub const TEMPLATE_HASH: &str = "distillery.dev/template-hash";
/// Label on the Job and its pods naming the DistillationJob ([`names::label_value`] of its name:
/// a label value has at most 63 characters, a name up to 253), and annotation on the pods with
/// its full name, which is what maps a pod back to its DistillationJob.
pub const JOB_LABEL: &str = "distillery.dev/distillationjob";
/// Label on the teacher-outputs Job and its pods, [`TEACHER_COMPONENT`], which tells them from the
/// training Job's pods (those carry no such label, as before teacher outputs were sharded, so a
/// training Job made by an earlier operator keeps its template hash).
pub const COMPONENT_LABEL: &str = "distillery.dev/component";
/// The [`COMPONENT_LABEL`] value of the teacher-outputs Job and its pods.
pub const TEACHER_COMPONENT: &str = "teacher-outputs";
/// `app.kubernetes.io/managed-by` value of everything the operator creates.
pub const MANAGED_BY: &str = "distillery-operator";
/// Where the worker writes its final summary; read back from the container's termination state.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// Where the worker keeps its cache (prepared teacher, cached teacher outputs) when the output is
/// on no claim: a pod-local `emptyDir`.
pub const CACHE_PATH: &str = "/var/cache/distillery";
/// The worker's cache directory on the output claim, beside the artifacts: a retried pod finds
/// the prepared teacher (and the checkpoints of a preparation cut short) there instead of
/// preparing it again, and DistillationJobs on one claim share teachers prepared the same way
/// (the cache is keyed by what produced each one).
pub const CLAIM_CACHE_DIR: &str = ".distillery-cache";
/// Name of the worker container.
pub const CONTAINER: &str = "worker";
/// ServiceAccount the worker pods run as (allowed to apply `status.progress`).
pub const WORKER_SERVICE_ACCOUNT: &str = "distillery-worker";
/// The directory under `spec.output.uri` that holds each sharded run's teacher outputs.
pub const TEACHER_OUTPUTS_DIR: &str = "teacher-outputs";

/// Settings of the operator that shape every worker Job.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Image used when the spec names none and asks for no GPU.
    pub default_image: String,
    /// Image (the worker's CUDA build) used when the spec names none and asks for GPUs.
    pub cuda_image: String,
}

impl WorkerSettings {
    /// The image a spec that names none runs: the CUDA build when it asks for GPUs.
    pub fn image_for(&self, gpus: u32) -> &str {
        if gpus > 0 { &self.cuda_image } else { &self.default_image }
    }
}

/// Why no Job can be built for a spec. The spec must change before a retry can succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The object lacks what the API server always sets (name, namespace, uid).
    #[error("metadata.{0} is missing")]
    MissingMetadata(&'static str),
    /// The claims cannot be mounted as asked.
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// The deterministic name of a DistillationJob's Job: `<name>-distill`, shortened with a hash
/// of the name to stay within the 63 characters a Job name (a label value) may have.
pub fn job_name(dj_name: &str) -> String {
    names::child_name(dj_name, "distill")
}

/// The deterministic name of a DistillationJob's teacher-outputs Job: `<name>-teacher`,
/// shortened as [`job_name`] is, but to leave room for what its pods' hostnames append: an
/// Indexed Job's pod `i` has the hostname `<job>-<i>`, which must stay a DNS label of 63
/// characters for the highest index [`MAX_TEACHER_SHARDS`] allows (the API server refuses the
/// Job otherwise).
pub fn teacher_job_name(dj_name: &str) -> String {
    let index_suffix = 1 + (MAX_TEACHER_SHARDS - 1).to_string().len();
    names::child_name_within(dj_name, "teacher", names::MAX_LABEL - index_suffix)
}

/// The run id of a DistillationJob's current spec: `g<metadata.generation>-<uid8>`, `uid8` being
/// the first 8 letters and digits of `metadata.uid` (for the UUIDs the API server assigns, its
/// first 8 hex digits), e.g. `g3-7f3a09c1`. Stable across the retries of one run (same object,
/// same spec); a changed spec raises the generation and a recreated object has another uid, so
/// neither writes where an earlier run did.
pub fn run_id(generation: i64, uid: &str) -> String {
    let uid: String = uid.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    format!("g{generation}-{}", uid.to_ascii_lowercase())
}

/// Where a run writes its artifact: `<output_uri>/<run_id>`.
pub fn run_output_uri(output_uri: &str, run_id: &str) -> String {
    format!("{}/{run_id}", output_uri.trim_end_matches('/'))
}

/// Where a sharded run's teacher outputs go: `<output_uri>/teacher-outputs/<run_id>`, beside the
/// runs' artifact directories (a run id never is `teacher-outputs`) and, like them, new for each
/// run, so shards of an earlier spec are never mistaken for this one's.
pub fn teacher_outputs_uri(output_uri: &str, run_id: &str) -> String {
    format!("{}/{TEACHER_OUTPUTS_DIR}/{run_id}", output_uri.trim_end_matches('/'))
}

/// How many pods compute the teacher's outputs: `teacherOutputs.parallelism` for `causal-lm`
/// (the schema refuses `teacherOutputs` for other tasks), else 1 — the training pod itself.
pub fn teacher_shards(spec: &DistillationJobSpec) -> u32 {
    match spec.task {
        Task::CausalLm => spec.teacher_outputs.as_ref().map_or(1, |outputs| outputs.parallelism.max(1)),
        Task::SequenceClassification | Task::Embedding => 1,
    }
}

/// A sharded teacher-outputs stage: where the shards go and how many there are. What the
/// teacher-outputs Job computes and the training Job reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shards {
    /// `<spec.output.uri>/teacher-outputs/<run id>` ([`teacher_outputs_uri`]).
    pub uri: String,
    /// How many shards (and teacher pods): `teacherOutputs.parallelism`, above 1.
    pub count: u32,
}

/// The sharded teacher-outputs stage the spec asks for; `None` when one pod computes them (the
/// training pod, as it always did).
pub fn shards(dj: &DistillationJob) -> Result<Option<Shards>, SpecError> {
    let count = teacher_shards(&dj.spec);
    if count <= 1 {
        return Ok(None);
    }
    let identity = Identity::of(dj)?;
    Ok(Some(Shards { uri: teacher_outputs_uri(&dj.spec.output.uri, &identity.run_id), count }))
}

/// The claim mounts the spec asks for: teacher and dataset read-only, the output read-write. The
/// same claim at the same path is mounted once (read-write if any user writes).
pub fn mounts(dj: &DistillationJob) -> Result<Vec<Mount>, SpecError> {
    let spec = &dj.spec;
    let wanted = [
        ("spec.teacher.volumeClaim", spec.teacher.volume_claim.as_ref(), spec.teacher.uri.as_str(), true),
        ("spec.dataset.volumeClaim", spec.dataset.volume_claim.as_ref(), spec.dataset.uri.as_str(), true),
        ("spec.output.volumeClaim", spec.output.volume_claim.as_ref(), spec.output.uri.as_str(), false),
    ];
    let uses = wanted.into_iter().filter_map(|(field, claim, uri, read_only)| {
        Some(ClaimUse { field: field.into(), claim: claim?.clone(), uri: uri.into(), read_only })
    });
    Ok(claim_mounts(uses)?)
}

/// The DistillationJob as the worker reads it: identity and spec, no status or managed fields.
/// `suspend` is left out (it is the Job's business, and toggling it must not change the pod
/// template).
fn worker_document(dj: &DistillationJob, name: &str, namespace: &str, uid: &str) -> Value {
    let mut spec = dj.spec.clone();
    spec.suspend = false;
    json!({
        "apiVersion": "distillery.dev/v1alpha1",
        "kind": "DistillationJob",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": dj.metadata.generation},
        "spec": spec,
    })
}

/// Where the worker caches prepared teachers: on the output claim when there is one
/// ([`CLAIM_CACHE_DIR`] at its mount), else the pod's own [`CACHE_PATH`].
fn cache_path(spec: &distillery_crds::distillation::DistillationJobSpec) -> String {
    match (&spec.output.volume_claim, top_directory(&spec.output.uri)) {
        (Some(_), Some(mount)) => format!("{mount}/{CLAIM_CACHE_DIR}"),
        _ => CACHE_PATH.to_string(),
    }
}

/// The label selector of the pods of the DistillationJob `name`: its training pods and, with
/// sharded teacher outputs, its teacher-outputs pods too (tell them apart with
/// [`is_teacher_pod`]).
pub fn pod_selector(name: &str) -> String {
    format!("{JOB_LABEL}={}", names::label_value(name))
}

/// The label selector of the teacher-outputs pods of the DistillationJob `name`.
pub fn teacher_pod_selector(name: &str) -> String {
    format!("{},{COMPONENT_LABEL}={TEACHER_COMPONENT}", pod_selector(name))
}

/// Whether `pod` is a teacher-outputs pod (else a training pod).
pub fn is_teacher_pod(pod: &Pod) -> bool {
    pod.labels().get(COMPONENT_LABEL).map(String::as_str) == Some(TEACHER_COMPONENT)
}

/// What the metadata of a DistillationJob that can run has: the API server sets all of it.
struct Identity<'a> {
    name: &'a str,
    namespace: &'a str,
    uid: &'a str,
    /// [`run_id`] of the current spec.
    run_id: String,
}

impl<'a> Identity<'a> {
    fn of(dj: &'a DistillationJob) -> Result<Self, SpecError> {
        let name = dj.metadata.name.as_deref().ok_or(SpecError::MissingMetadata("name"))?;
        let namespace = dj.metadata.namespace.as_deref().ok_or(SpecError::MissingMetadata("namespace"))?;
        let uid = dj.metadata.uid.as_deref().ok_or(SpecError::MissingMetadata("uid"))?;
        let generation = dj.metadata.generation.ok_or(SpecError::MissingMetadata("generation"))?;
        Ok(Self { name, namespace, uid, run_id: run_id(generation, uid) })
    }
}

/// Which worker pod of a DistillationJob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The training pod: `distill`, reporting progress, writing the run's artifact.
    Training,
    /// A teacher-outputs pod: `teacher-outputs`, one shard (its index is the pod's
    /// `JOB_COMPLETION_INDEX`, which Kubernetes sets in an Indexed Job's pods).
    TeacherOutputs,
}

/// The pod of one [`Role`] and what its Job needs besides: labels, the owner reference and the
/// template's hash.
struct WorkerPod<'a> {
    identity: Identity<'a>,
    labels: BTreeMap<String, String>,
    template: Value,
    hash: String,
    owner: OwnerReference,
}

/// The worker pod of `role` for `dj`: the same image, resources, scheduling, volumes, security
/// and spec for both roles; they differ in the command, a component label on the teacher pods,
/// and what they are told — the training pod reports progress and writes the run's artifact (and
/// reads the shards when `shards` is set), a teacher pod writes its shard of `shards`.
fn worker_pod<'a>(
    dj: &'a DistillationJob,
    settings: &WorkerSettings,
    role: Role,
    shards: Option<&Shards>,
) -> Result<WorkerPod<'a>, SpecError> {
    let identity = Identity::of(dj)?;
    let Identity { name, namespace, uid, .. } = identity;
    let spec = &dj.spec;
    let mounts = mounts(dj)?;

    let mut labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name".to_string(), "distillery-worker".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
        (JOB_LABEL.to_string(), names::label_value(name)),
    ]
    .into();
    if role == Role::TeacherOutputs {
        labels.insert(COMPONENT_LABEL.to_string(), TEACHER_COMPONENT.to_string());
    }
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if spec.resources.gpu.count > 0 {
        limits.insert(spec.resources.gpu.resource_name.clone(), json!(spec.resources.gpu.count.to_string()));
    }
    for (key, quantity) in [("cpu", &spec.resources.cpu), ("memory", &spec.resources.memory)] {
        if let Some(q) = quantity {
            requests.insert(key.to_string(), json!(q.0));
            limits.insert(key.to_string(), json!(q.0));
        }
    }
    // The root file system is read-only: the worker writes its cache, scratch files and output
    // to volumes.
    let mut volumes = vec![json!({"name": "cache", "emptyDir": {}}), json!({"name": "tmp", "emptyDir": {}})];
    let mut volume_mounts =
        vec![json!({"name": "cache", "mountPath": CACHE_PATH}), json!({"name": "tmp", "mountPath": "/tmp"})];
    let (claim_volumes, claim_mounts) = mount_specs(&mounts);
    volumes.extend(claim_volumes);
    volume_mounts.extend(claim_mounts);
    let (work, work_mount) = work_volume();
    volumes.push(work);
    volume_mounts.push(work_mount);
    let document = worker_document(dj, name, namespace, uid);
    // The training pod's variables, in the order an operator without sharding gave them, so that
    // its template (and hash) is unchanged for one teacher pod.
    let mut env = vec![
        json!({"name": "DISTILLERY_JOB", "value": document.to_string()}),
        json!({"name": "DISTILLERY_CACHE", "value": cache_path(spec)}),
    ];
    if role == Role::Training {
        env.push(json!({"name": "DISTILLERY_REPORT_STATUS", "value": "true"}));
    }
    env.push(json!({"name": "DISTILLERY_TERMINATION_MESSAGE", "value": TERMINATION_MESSAGE_PATH}));
    if role == Role::Training {
        env.push(json!({"name": "DISTILLERY_OUTPUT", "value": run_output_uri(&spec.output.uri, &identity.run_id)}));
    }
    if let Some(shards) = shards {
        env.push(json!({"name": "DISTILLERY_TEACHER_OUTPUTS", "value": shards.uri}));
        env.push(json!({"name": "DISTILLERY_TEACHER_SHARDS", "value": shards.count.to_string()}));
    }
    env.extend(store_env(spec.s3.as_ref()));
    let command = match role {
        Role::Training => "distill",
        Role::TeacherOutputs => "teacher-outputs",
    };
    let template = json!({
        "metadata": {"labels": labels, "annotations": {JOB_LABEL: name}},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": WORKER_SERVICE_ACCOUNT,
            "securityContext": pod_security_context(),
            "nodeSelector": spec.resources.node_selector,
            "tolerations": spec.resources.tolerations,
            "volumes": volumes,
            "containers": [{
                "name": CONTAINER,
                "image": spec.image.clone().unwrap_or_else(|| settings.image_for(spec.resources.gpu.count).to_string()),
                "args": [command],
                "env": env,
                "resources": {"requests": requests, "limits": limits},
                "volumeMounts": volume_mounts,
                "terminationMessagePath": TERMINATION_MESSAGE_PATH,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": container_security_context(),
            }],
        },
    });
    let hash = hex::encode(Sha256::digest(template.to_string().as_bytes()));
    let owner = dj.controller_owner_ref(&()).ok_or(SpecError::MissingMetadata("uid"))?;
    Ok(WorkerPod { identity, labels, template, hash, owner })
}

/// The Job that runs the worker for `dj`: the training Job (with sharded teacher outputs, made
/// once the teacher-outputs Job has completed, and told where the shards are).
pub fn desired_job(dj: &DistillationJob, settings: &WorkerSettings) -> Result<Job, SpecError> {
    let shards = shards(dj)?;
    let pod = worker_pod(dj, settings, Role::Training, shards.as_ref())?;
    let spec = &dj.spec;
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(pod.identity.name),
            "namespace": pod.identity.namespace,
            "labels": pod.labels,
            "annotations": {TEMPLATE_HASH: pod.hash},
            "ownerReferences": [pod.owner],
        },
        "spec": {
            "backoffLimit": spec.backoff_limit,
            // A worker failure that retrying cannot fix fails the Job at once instead of
            // preparing the teacher again `backoffLimit` times; a pod evicted or preempted
            // (DisruptionTarget) does not count against the limit.
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [distillery_crds::exit::PERMANENT]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "suspend": spec.suspend,
            "template": pod.template,
        },
    });
    Ok(serde_json::from_value(strip_nulls(job)).expect("the Job built above has the Job's shape"))
}

/// The teacher-outputs Job of `dj` when its teacher outputs are sharded (`None` otherwise): an
/// Indexed Job of `teacherOutputs.parallelism` completions, all run at once, pod `i` computing
/// shard `i`. Each index is retried on its own up to `spec.backoffLimit` times
/// (`backoffLimitPerIndex`: the shards are deterministic, so a retry rewrites the same shard);
/// the worker's permanent exit code fails its index at once, and any failed index fails the Job
/// (`maxFailedIndexes: 0`): training cannot go on without every shard. An evicted or preempted
/// pod does not count as a failure.
pub fn desired_teacher_job(dj: &DistillationJob, settings: &WorkerSettings) -> Result<Option<Job>, SpecError> {
    let Some(shards) = shards(dj)? else { return Ok(None) };
    let pod = worker_pod(dj, settings, Role::TeacherOutputs, Some(&shards))?;
    let spec = &dj.spec;
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": teacher_job_name(pod.identity.name),
            "namespace": pod.identity.namespace,
            "labels": pod.labels,
            "annotations": {TEMPLATE_HASH: pod.hash},
            "ownerReferences": [pod.owner],
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": shards.count,
            "parallelism": shards.count,
            "backoffLimitPerIndex": spec.backoff_limit,
            "maxFailedIndexes": 0,
            "podFailurePolicy": {"rules": [
                {"action": "FailIndex", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [distillery_crds::exit::PERMANENT]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "suspend": spec.suspend,
            "template": pod.template,
        },
    });
    Ok(Some(serde_json::from_value(strip_nulls(job)).expect("the Job built above has the Job's shape")))
}

/// The template hash of a live Job, if it has one.
pub fn template_hash(job: &Job) -> Option<&str> {
    job.annotations().get(TEMPLATE_HASH).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> DistillationJob {
        let text = include_str!("../../../examples/01-distillationjob.yaml");
        let mut dj: DistillationJob = serde_norway::from_str(text).unwrap();
        dj.metadata.namespace = Some("ml".into());
        dj.metadata.uid = Some("uid-1".into());
        dj.metadata.generation = Some(1);
        dj
    }

    fn settings() -> WorkerSettings {
        WorkerSettings { default_image: "worker:1".into(), cuda_image: "worker:1-cuda".into() }
    }

    #[test]
    fn the_job_runs_the_worker_with_the_spec_gpus_volumes_and_an_owner() {
        let dj = example();
        let job = desired_job(&dj, &settings()).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("minilm-reviews-distill"));
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("DistillationJob", "uid-1", Some(true))
        );
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(
            (spec.backoff_limit, spec.active_deadline_seconds, spec.suspend),
            (Some(3), Some(21600), Some(false))
        );
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("worker:1-cuda"), "a job asking for a GPU runs the CUDA build");
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["nvidia.com/gpu"].0, "1");
        assert_eq!(limits["memory"].0, "16Gi");
        let mounts: Vec<(String, bool)> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.mount_path.clone(), m.read_only.unwrap_or(false)))
            .collect();
        assert_eq!(
            mounts,
            vec![
                (CACHE_PATH.to_string(), false),
                ("/tmp".to_string(), false),
                ("/models".to_string(), true),
                ("/data".to_string(), true),
                ("/artifacts".to_string(), false),
                (crate::objects::WORK_PATH.to_string(), false),
            ]
        );
        let env = c.env.as_ref().unwrap();
        let document: Value = serde_json::from_str(env[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(document["metadata"]["name"], "minilm-reviews");
        assert_eq!(document["spec"]["output"]["uri"], "file:///artifacts/minilm-reviews", "the spec as written");
        let output = env.iter().find(|e| e.name == "DISTILLERY_OUTPUT").unwrap();
        assert_eq!(output.value.as_deref(), Some("file:///artifacts/minilm-reviews/g1-uid1"));
        assert_eq!(document["spec"]["training"]["epochs"], 4);
        assert_eq!(pod.tolerations.as_ref().unwrap()[0].key.as_deref(), Some("nvidia.com/gpu"));
        assert_eq!(template_hash(&job).map(str::len), Some(64));
    }

    #[test]
    fn the_job_is_the_same_for_the_same_spec_and_its_hash_follows_the_template() {
        let dj = example();
        let a = desired_job(&dj, &settings()).unwrap();
        assert_eq!(a, desired_job(&dj, &settings()).unwrap(), "deterministic");
        let mut suspended = dj.clone();
        suspended.spec.suspend = true;
        let b = desired_job(&suspended, &settings()).unwrap();
        assert_eq!(template_hash(&a), template_hash(&b), "suspend is not part of the pod template");
        let mut changed = dj.clone();
        changed.spec.training.seed = 1;
        assert_ne!(template_hash(&a), template_hash(&desired_job(&changed, &settings()).unwrap()));
    }

    fn output_of(dj: &DistillationJob) -> String {
        let job = desired_job(dj, &settings()).unwrap();
        let env = job.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
        env.into_iter().find(|e| e.name == "DISTILLERY_OUTPUT").unwrap().value.unwrap()
    }

    #[test]
    fn a_run_id_is_stable_for_one_run_and_new_for_a_new_spec_or_object() {
        let uid = "0a1b2c3d-5eed-4000-8000-000000000007";
        assert_eq!(run_id(4, uid), "g4-0a1b2c3d");
        assert_eq!(run_id(4, uid), run_id(4, uid), "a retry of the same run");
        assert_ne!(run_id(4, uid), run_id(5, uid), "a changed spec");
        assert_ne!(run_id(4, uid), run_id(4, "ffff0000-5eed-4000-8000-000000000007"), "a recreated object");
        assert_eq!(run_output_uri("file:///artifacts/x/", "g1-0a1b2c3d"), "file:///artifacts/x/g1-0a1b2c3d");
        assert_eq!(run_output_uri("s3://bucket/x", "g1-0a1b2c3d"), "s3://bucket/x/g1-0a1b2c3d");

        // The Job tells the worker: the same for the same object and generation (what a retried
        // pod sees), another for the next generation; an object without one is not run.
        let mut dj = example();
        dj.metadata.uid = Some(uid.into());
        assert_eq!(output_of(&dj), "file:///artifacts/minilm-reviews/g1-0a1b2c3d");
        assert_eq!(output_of(&dj), output_of(&dj.clone()));
        dj.metadata.generation = Some(2);
        assert_eq!(output_of(&dj), "file:///artifacts/minilm-reviews/g2-0a1b2c3d");
        dj.metadata.generation = None;
        assert_eq!(desired_job(&dj, &settings()).unwrap_err(), SpecError::MissingMetadata("generation"));
    }

    #[test]
    fn a_cpu_job_asks_for_no_gpu_and_names_stay_within_63_characters() {
        let mut dj = example();
        dj.spec.resources.gpu.count = 0;
        let job = desired_job(&dj, &settings()).unwrap();
        let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
        assert!(!c.resources.as_ref().unwrap().limits.as_ref().unwrap().contains_key("nvidia.com/gpu"));
        let long = "a".repeat(63);
        let name = job_name(&long);
        assert!(name.len() <= 63, "{name}");
        assert_ne!(job_name(&long), job_name(&"a".repeat(62)));
    }

    #[test]
    fn the_worker_runs_as_non_root_with_an_fs_group_so_a_root_owned_claim_is_writable() {
        let job = serde_json::to_value(desired_job(&example(), &settings()).unwrap()).unwrap();
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["fsGroup"], crate::objects::NON_ROOT_ID);
        let c = &pod["containers"][0]["securityContext"];
        assert_eq!(
            (c["readOnlyRootFilesystem"].as_bool(), c["allowPrivilegeEscalation"].as_bool()),
            (Some(true), Some(false))
        );
        let mounts: Vec<&str> = pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        assert!(mounts.contains(&"/tmp") && mounts.contains(&CACHE_PATH), "{mounts:?}");
    }

    #[test]
    fn a_job_that_asks_for_gpus_runs_the_cuda_build_unless_it_names_an_image() {
        let image = |dj: &DistillationJob| {
            desired_job(dj, &settings()).unwrap().spec.unwrap().template.spec.unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        };
        let mut dj = example();
        dj.spec.resources.gpu.count = 1;
        dj.spec.image = None;
        assert_eq!(image(&dj), "worker:1-cuda");
        dj.spec.resources.gpu.count = 0;
        assert_eq!(image(&dj), "worker:1");
        dj.spec.image = Some("mine:2".into());
        assert_eq!(image(&dj), "mine:2");
    }

    #[test]
    fn the_teacher_cache_lives_on_the_output_claim_so_a_retried_pod_finds_it() {
        let env = |dj: &DistillationJob| {
            let job = serde_json::to_value(desired_job(dj, &settings()).unwrap()).unwrap();
            job["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "DISTILLERY_CACHE")
                .map(|e| e["value"].as_str().unwrap().to_string())
                .unwrap()
        };
        let mut dj = example();
        assert_eq!(dj.spec.output.uri, "file:///artifacts/minilm-reviews");
        assert_eq!(env(&dj), "/artifacts/.distillery-cache");
        dj.spec.output.volume_claim = None;
        assert_eq!(env(&dj), CACHE_PATH, "no claim: the pod's own emptyDir");
    }

    #[test]
    fn a_name_of_253_characters_gives_labels_a_real_api_server_accepts_and_pods_map_back_to_it() {
        let mut dj = example();
        let long = format!("{}.reviews", "a".repeat(245));
        assert_eq!(long.len(), 253);
        dj.metadata.name = Some(long.clone());
        let job = desired_job(&dj, &settings()).unwrap();
        let template = job.spec.as_ref().unwrap().template.metadata.clone().unwrap();
        for labels in [job.metadata.labels.as_ref().unwrap(), template.labels.as_ref().unwrap()] {
            for (key, value) in labels {
                assert!(value.len() <= names::MAX_LABEL, "{key}={value}");
            }
        }
        assert!(job.metadata.name.as_ref().unwrap().len() <= names::MAX_LABEL);
        assert_eq!(template.annotations.unwrap()[JOB_LABEL], long, "the pod names its DistillationJob in full");
        assert_eq!(pod_selector(&long), format!("{JOB_LABEL}={}", template.labels.unwrap()[JOB_LABEL]));
    }

    #[test]
    fn two_claims_at_one_path_are_refused_naming_both_fields() {
        let mut dj = example();
        dj.spec.dataset.uri = "file:///models/data.csv".into();
        let err = desired_job(&dj, &settings()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("spec.dataset.volumeClaim") && message.contains("spec.teacher.volumeClaim"),
            "{message}"
        );
        // The same claim twice is one mount.
        dj.spec.dataset.volume_claim = Some("models".into());
        let job = desired_job(&dj, &settings()).unwrap();
        assert_eq!(
            job.spec.unwrap().template.spec.unwrap().volumes.unwrap().len(),
            5,
            "cache, tmp, models, artifacts, work"
        );
        let mut s3 = example();
        s3.spec.teacher.uri = "s3://bucket/teacher".into();
        assert!(matches!(desired_job(&s3, &settings()), Err(SpecError::Mount(MountError::ClaimWithoutPath { .. }))));
    }

    #[test]
    fn an_s3_job_mounts_no_claim_and_gets_the_store_settings_with_secret_references() {
        let mut dj = example();
        dj.spec.teacher.uri = "s3://models/minilm".into();
        dj.spec.dataset.uri = "s3://data/reviews.csv".into();
        dj.spec.output.uri = "s3://artifacts/small".into();
        for claim in
            [&mut dj.spec.teacher.volume_claim, &mut dj.spec.dataset.volume_claim, &mut dj.spec.output.volume_claim]
        {
            *claim = None;
        }
        dj.spec.s3 = Some(
            serde_json::from_value(json!({
                "endpoint": "http://minio:9000", "forcePathStyle": true,
                "accessKeyId": {"name": "store", "key": "id"}, "secretAccessKey": {"name": "store", "key": "secret"},
            }))
            .unwrap(),
        );
        let job = serde_json::to_value(desired_job(&dj, &settings()).unwrap()).unwrap();
        let pod = &job["spec"]["template"]["spec"];
        assert!(pod["volumes"].as_array().unwrap().iter().all(|v| v.get("persistentVolumeClaim").is_none()));
        let env = pod["containers"][0]["env"].as_array().unwrap();
        let var = |name: &str| env.iter().find(|e| e["name"] == name).cloned().unwrap_or(Value::Null);
        assert_eq!(var("DISTILLERY_OUTPUT")["value"], "s3://artifacts/small/g1-uid1");
        assert_eq!(var("DISTILLERY_CACHE")["value"], CACHE_PATH, "no claim: the teacher cache is the pod's");
        assert_eq!(var("DISTILLERY_WORK_DIR")["value"], crate::objects::WORK_PATH);
        assert_eq!(var("DISTILLERY_S3_ENDPOINT")["value"], "http://minio:9000");
        assert_eq!(
            var("AWS_SECRET_ACCESS_KEY")["valueFrom"]["secretKeyRef"],
            json!({"name": "store", "key": "secret"})
        );
    }

    fn sharded(parallelism: u32) -> DistillationJob {
        let mut dj = example();
        dj.spec.task = Task::CausalLm;
        dj.spec.teacher_outputs = Some(distillery_crds::distillation::TeacherOutputsSpec { top_k: 8, parallelism });
        dj
    }

    fn env_of(job: &Job) -> Vec<(String, String)> {
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        pod.containers[0].env.clone().unwrap().into_iter().map(|e| (e.name, e.value.unwrap_or_default())).collect()
    }

    fn var(env: &[(String, String)], name: &str) -> Option<String> {
        env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    fn args_of(job: &Job) -> Vec<String> {
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap()
    }

    #[test]
    fn teacher_outputs_go_beside_the_runs_under_the_run_id() {
        assert_eq!(
            teacher_outputs_uri("file:///artifacts/x/", "g1-0a1b2c3d"),
            "file:///artifacts/x/teacher-outputs/g1-0a1b2c3d"
        );
        assert_eq!(teacher_outputs_uri("s3://bucket/x", "g2-0a1b2c3d"), "s3://bucket/x/teacher-outputs/g2-0a1b2c3d");
        assert_ne!(
            teacher_outputs_uri("s3://bucket/x", "g1-0a1b2c3d"),
            teacher_outputs_uri("s3://bucket/x", "g2-0a1b2c3d"),
            "a changed spec computes its shards anew"
        );
        assert_eq!(
            shards(&sharded(2)).unwrap(),
            Some(Shards { uri: "file:///artifacts/minilm-reviews/teacher-outputs/g1-uid1".into(), count: 2 })
        );
    }

    #[test]
    fn one_teacher_pod_keeps_the_one_training_job_as_it_was() {
        for dj in [example(), sharded(1)] {
            assert_eq!(shards(&dj).unwrap(), None);
            assert_eq!(desired_teacher_job(&dj, &settings()).unwrap(), None, "no teacher Job");
            let job = desired_job(&dj, &settings()).unwrap();
            let names: Vec<String> = env_of(&job).into_iter().map(|(name, _)| name).collect();
            assert_eq!(
                names,
                [
                    "DISTILLERY_JOB",
                    "DISTILLERY_CACHE",
                    "DISTILLERY_REPORT_STATUS",
                    "DISTILLERY_TERMINATION_MESSAGE",
                    "DISTILLERY_OUTPUT",
                    "DISTILLERY_WORK_DIR"
                ],
                "the variables (and their order) of an operator without sharding: the same template hash"
            );
            let labels = job.spec.as_ref().unwrap().template.metadata.clone().unwrap().labels.unwrap();
            assert!(!labels.contains_key(COMPONENT_LABEL), "{labels:?}");
            assert_eq!(args_of(&job), ["distill"]);
        }
        // Only causal-lm shards (the schema refuses teacherOutputs for other tasks).
        let mut classification = example();
        classification.spec.teacher_outputs =
            Some(distillery_crds::distillation::TeacherOutputsSpec { top_k: 8, parallelism: 4 });
        assert_eq!(teacher_shards(&classification.spec), 1);
    }

    #[test]
    fn sharded_teacher_outputs_are_an_indexed_job_of_the_training_pod_told_to_write_one_shard_each() {
        let dj = sharded(3);
        let teacher = desired_teacher_job(&dj, &settings()).unwrap().expect("a teacher Job");
        assert_eq!(teacher.metadata.name.as_deref(), Some("minilm-reviews-teacher"));
        let owner = &teacher.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("DistillationJob", Some(true)));
        let spec = teacher.spec.as_ref().unwrap();
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!((spec.completions, spec.parallelism), (Some(3), Some(3)), "every shard at once");
        assert_eq!(
            (spec.backoff_limit_per_index, spec.max_failed_indexes, spec.backoff_limit),
            (Some(3), Some(0), None),
            "each shard retried backoffLimit times on its own; one failed shard fails the Job"
        );
        assert_eq!((spec.active_deadline_seconds, spec.suspend), (Some(21600), Some(false)));
        let rules = &spec.pod_failure_policy.as_ref().unwrap().rules;
        assert_eq!(rules.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(), ["FailIndex", "Ignore"]);
        let exit = rules[0].on_exit_codes.as_ref().unwrap();
        assert_eq!(
            (exit.container_name.as_deref(), exit.operator.as_str(), exit.values.clone()),
            (Some(CONTAINER), "In", vec![distillery_crds::exit::PERMANENT])
        );
        let template = &spec.template;
        let labels = template.metadata.clone().unwrap().labels.unwrap();
        assert_eq!(labels.get(COMPONENT_LABEL).map(String::as_str), Some(TEACHER_COMPONENT));
        assert_eq!(labels[JOB_LABEL], "minilm-reviews", "its pods map back to the DistillationJob");
        assert_eq!(teacher.metadata.labels.as_ref().unwrap()[COMPONENT_LABEL], TEACHER_COMPONENT);
        assert_eq!(args_of(&teacher), ["teacher-outputs"]);
        let uri = "file:///artifacts/minilm-reviews/teacher-outputs/g1-uid1";
        let env = env_of(&teacher);
        assert_eq!(var(&env, "DISTILLERY_TEACHER_OUTPUTS").as_deref(), Some(uri));
        assert_eq!(var(&env, "DISTILLERY_TEACHER_SHARDS").as_deref(), Some("3"));
        assert_eq!(var(&env, "DISTILLERY_TERMINATION_MESSAGE").as_deref(), Some(TERMINATION_MESSAGE_PATH));
        assert_eq!(var(&env, "DISTILLERY_CACHE").as_deref(), Some("/artifacts/.distillery-cache"));
        assert_eq!(var(&env, "DISTILLERY_REPORT_STATUS"), None, "only the training pod reports progress");
        assert_eq!(var(&env, "DISTILLERY_OUTPUT"), None, "a teacher pod writes no artifact");
        let document: Value = serde_json::from_str(&var(&env, "DISTILLERY_JOB").unwrap()).unwrap();
        assert_eq!(document["spec"]["teacherOutputs"]["parallelism"], 3);

        // The training Job runs the same pod otherwise, and is told where the shards are.
        let training = desired_job(&dj, &settings()).unwrap();
        let (t, p) = (training.spec.as_ref().unwrap().template.spec.clone().unwrap(), template.spec.clone().unwrap());
        assert_eq!(
            (&p.volumes, &p.service_account_name, &p.security_context, &p.tolerations, &p.restart_policy),
            (&t.volumes, &t.service_account_name, &t.security_context, &t.tolerations, &t.restart_policy)
        );
        let (tc, pc) = (&t.containers[0], &p.containers[0]);
        assert_eq!((&pc.image, &pc.resources, &pc.volume_mounts), (&tc.image, &tc.resources, &tc.volume_mounts));
        let env = env_of(&training);
        assert_eq!(var(&env, "DISTILLERY_TEACHER_OUTPUTS").as_deref(), Some(uri));
        assert_eq!(var(&env, "DISTILLERY_TEACHER_SHARDS").as_deref(), Some("3"));
        assert_eq!(var(&env, "DISTILLERY_REPORT_STATUS").as_deref(), Some("true"));
        assert_eq!(
            var(&env, "DISTILLERY_OUTPUT").as_deref(),
            Some("file:///artifacts/minilm-reviews/g1-uid1"),
            "the artifact where it always went"
        );
        assert_eq!(args_of(&training), ["distill"]);
        let training_labels = training.spec.as_ref().unwrap().template.metadata.clone().unwrap().labels.unwrap();
        assert!(!training_labels.contains_key(COMPONENT_LABEL));
        assert_ne!(template_hash(&teacher), template_hash(&training));

        // suspend is the Job's, not its template's; a new generation is a new run.
        let mut suspended = dj.clone();
        suspended.spec.suspend = true;
        let paused = desired_teacher_job(&suspended, &settings()).unwrap().unwrap();
        assert_eq!(paused.spec.as_ref().unwrap().suspend, Some(true));
        assert_eq!(template_hash(&paused), template_hash(&teacher));
        let mut next = dj.clone();
        next.metadata.generation = Some(2);
        let again = desired_teacher_job(&next, &settings()).unwrap().unwrap();
        assert_ne!(template_hash(&again), template_hash(&teacher));
        assert_eq!(
            var(&env_of(&again), "DISTILLERY_TEACHER_OUTPUTS").as_deref(),
            Some("file:///artifacts/minilm-reviews/teacher-outputs/g2-uid1")
        );
    }

    #[test]
    fn a_teacher_job_name_leaves_room_for_its_pods_hostnames_and_its_pods_are_told_apart() {
        let long = format!("{}.reviews", "a".repeat(245));
        let name = teacher_job_name(&long);
        let last_hostname = format!("{name}-{}", distillery_crds::distillation::MAX_TEACHER_SHARDS - 1);
        assert!(last_hostname.len() <= names::MAX_LABEL, "{last_hostname}");
        assert!(name.ends_with("-teacher"), "{name}");
        assert_ne!(name, job_name(&long));
        assert_eq!(teacher_job_name("reviews"), "reviews-teacher");

        let mut dj = sharded(2);
        dj.metadata.name = Some(long.clone());
        let teacher = desired_teacher_job(&dj, &settings()).unwrap().unwrap();
        let labels = teacher.spec.as_ref().unwrap().template.metadata.clone().unwrap().labels.unwrap();
        for (key, value) in &labels {
            assert!(value.len() <= names::MAX_LABEL, "{key}={value}");
        }
        let pod = |labels: BTreeMap<String, String>| Pod {
            metadata: kube::api::ObjectMeta { labels: Some(labels), ..Default::default() },
            ..Default::default()
        };
        assert!(is_teacher_pod(&pod(labels.clone())));
        let training = desired_job(&dj, &settings()).unwrap();
        assert!(!is_teacher_pod(&pod(training.spec.unwrap().template.metadata.unwrap().labels.unwrap())));
        assert_eq!(
            teacher_pod_selector(&long),
            format!("{JOB_LABEL}={},{COMPONENT_LABEL}={TEACHER_COMPONENT}", labels[JOB_LABEL])
        );
    }
}
