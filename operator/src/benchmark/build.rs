//! The desired child of a Benchmark, built without a client: one `batch/v1` Job running
//! `distillery-worker bench` against the targets as the read step resolved them. Pure, so it is
//! unit-tested from `examples/03-benchmark.yaml`.
//!
//! The Job's name carries the spec's generation ([`job_name`]): a changed spec runs a new Job,
//! and the Job of a generation is created once — its arguments name pod addresses that change
//! over time, so it is never re-applied.

use std::collections::BTreeMap;

use distillery_crds::Benchmark;
use distillery_crds::benchmark::BenchmarkSpec;
use k8s_openapi::api::batch::v1::Job;
use kube::Resource;
use serde_json::{Value, json};

use crate::distillation::build::{MANAGED_BY, WorkerSettings};
use crate::modeldeployment::rollout::parse_duration;
use crate::names;
use crate::objects::{
    ClaimUse, MountError, claim_mounts, container_security_context, mount_specs, pod_location, pod_security_context,
    store_env, strip_nulls, work_volume,
};

/// Label on the Job and its pods naming the Benchmark ([`names::label_value`] of its name), and
/// annotation on the pods with its full name, which is what maps a pod back to its Benchmark.
pub const BENCHMARK_LABEL: &str = "distillery.dev/benchmark";
/// Name of the worker container.
pub const CONTAINER: &str = "worker";
/// Where the worker writes its summary (or its error); read back from the container's state.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// Environment variable holding the whole Benchmark (identity and spec) as JSON.
pub const BENCHMARK_ENV: &str = "DISTILLERY_BENCHMARK";
/// Seconds allowed per target beside its measured load: starting an artifact's server, its cold
/// start, the robustness pass and reading metrics.
pub const TARGET_ALLOWANCE_SECONDS: u64 = 120;
/// Seconds allowed once per run: reading the dataset and writing the report.
pub const RUN_ALLOWANCE_SECONDS: u64 = 300;
/// The slowest warm-up rate the deadline allows for, in requests per second.
pub const WARMUP_REQUESTS_PER_SECOND: u64 = 10;
/// The deadline of a run bounded by request counts rather than time (or by neither).
pub const UNTIMED_DEADLINE_SECONDS: i64 = 3600;

/// Why no Job can be built for a spec. The spec must change before a run can succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The object lacks what the API server always sets (name, namespace, uid, generation).
    #[error("metadata.{0} is missing")]
    MissingMetadata(&'static str),
    /// The claims cannot be mounted as asked.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// A location the benchmark pod reads or writes is neither a `file://` path nor `s3://`.
    #[error("{field}: {uri:?} is neither a file:// path nor an s3:// URI the benchmark pod can read")]
    NotAFilePath {
        /// The field (or the DistillationJob result) naming it.
        field: String,
        /// The URI.
        uri: String,
    },
    /// Neither `reportUri` nor an artifact target to write the report beside.
    #[error("spec.reportUri: with no artifact target there is no artifact location to write the report beside; set it")]
    NoReportLocation,
    /// The report would be written where the pod's file system is read-only.
    #[error(
        "{field}: the report goes to {uri}, which is on no volume claim, and the benchmark pod's file system is read-only outside its claims; {fix}"
    )]
    ReportOnNoClaim {
        /// The field that decides where the report goes.
        field: String,
        /// The report's location.
        uri: String,
        /// What to set.
        fix: &'static str,
    },
}

/// A target as the read step resolved it, in spec order beside `spec.targets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolvedTarget {
    /// A ModelDeployment track that serves now.
    Deployment {
        /// Base URL of the track's Service.
        url: String,
        /// `/metrics` URL of each of the track's ready pods.
        metrics: Vec<String>,
    },
    /// An artifact directory the worker serves itself.
    Artifact {
        /// Its `file://` URI (a DistillationJob's `status.result.artifactUri`, or `artifact.uri`).
        uri: String,
        /// The claim holding it.
        claim: Option<String>,
        /// The field naming the claim, for error messages.
        claim_field: String,
    },
}

/// The Job of generation `generation` of the Benchmark `name`: `<name>-bench-g<generation>`,
/// shortened with a hash of the name past 63 characters.
pub fn job_name(name: &str, generation: i64) -> String {
    names::child_name(name, &format!("bench-g{generation}"))
}

/// The label selector of everything the Benchmark `name` owns.
pub fn selector(name: &str) -> String {
    format!("{BENCHMARK_LABEL}={}", names::label_value(name))
}

/// How long the Job may run: per target the load (its duration, a warm-up at no less than
/// [`WARMUP_REQUESTS_PER_SECOND`]) and [`TARGET_ALLOWANCE_SECONDS`], plus
/// [`RUN_ALLOWANCE_SECONDS`]; [`UNTIMED_DEADLINE_SECONDS`] when the load counts requests or sets
/// neither bound.
pub fn active_deadline_seconds(spec: &BenchmarkSpec) -> i64 {
    let Some(duration) = spec.load.duration.as_deref().and_then(parse_duration) else {
        return UNTIMED_DEADLINE_SECONDS;
    };
    let warmup = u64::from(spec.load.warmup_requests).div_ceil(WARMUP_REQUESTS_PER_SECOND);
    let per_target = duration.as_secs_f64().ceil() as u64 + warmup + TARGET_ALLOWANCE_SECONDS;
    let total = spec.targets.len() as u64 * per_target + RUN_ALLOWANCE_SECONDS;
    i64::try_from(total).unwrap_or(i64::MAX)
}

/// What can be checked before any target is resolved: every `file://` location named in the
/// spec itself has a mountable path, no two claims want one path, and a `reportUri` has a claim.
/// The claims of DistillationJob targets are checked again with the rest by [`desired_job`].
pub fn validate(bench: &Benchmark) -> Result<(), SpecError> {
    let spec = &bench.spec;
    let mut uses = dataset_use(spec);
    for (i, target) in spec.targets.iter().enumerate() {
        let Some(artifact) = &target.artifact else { continue };
        let Some(uri) = &artifact.uri else { continue };
        let field = format!("spec.targets[{i}].artifact.uri");
        pod_location(uri).ok_or_else(|| SpecError::NotAFilePath { field, uri: uri.clone() })?;
        if let Some(claim) = &artifact.volume_claim {
            let field = format!("spec.targets[{i}].artifact.volumeClaim");
            uses.push(ClaimUse { field, claim: claim.clone(), uri: uri.clone(), read_only: true });
        }
    }
    if let Some(uri) = &spec.report_uri {
        uses.extend(report_use(spec, uri, None)?);
    }
    claim_mounts(uses)?;
    Ok(())
}

fn dataset_use(spec: &BenchmarkSpec) -> Vec<ClaimUse> {
    let dataset = &spec.dataset;
    let field = "spec.dataset.volumeClaim".to_string();
    dataset
        .volume_claim
        .iter()
        .map(|claim| ClaimUse { field: field.clone(), claim: claim.clone(), uri: dataset.uri.clone(), read_only: true })
        .collect()
}

/// The claim the report is written on: `reportVolumeClaim` with `reportUri`, else the first
/// artifact target's (`first`: its index, URI and claim); none for an `s3://` report, which the
/// worker uploads.
fn report_use(
    spec: &BenchmarkSpec,
    uri: &str,
    first: Option<(usize, &str, Option<&String>, &str)>,
) -> Result<Option<ClaimUse>, SpecError> {
    if uri.starts_with("s3://") {
        return Ok(None);
    }
    let (field, claim, fix) = match (&spec.report_uri, first) {
        (Some(_), _) | (None, None) => (
            "spec.reportVolumeClaim".to_string(),
            spec.report_volume_claim.as_ref(),
            "set spec.reportVolumeClaim to the claim holding it",
        ),
        (None, Some((i, _, claim, claim_field))) => (
            format!("spec.targets[{i}] (the report goes beside the first artifact target, on {claim_field})"),
            claim,
            "give that artifact a volume claim, or set spec.reportUri and spec.reportVolumeClaim",
        ),
    };
    let report_field = if spec.report_uri.is_some() { "spec.reportUri".to_string() } else { field.clone() };
    crate::objects::container_path(uri)
        .ok_or_else(|| SpecError::NotAFilePath { field: report_field, uri: uri.to_string() })?;
    let claim = claim.ok_or_else(|| SpecError::ReportOnNoClaim { field: field.clone(), uri: uri.to_string(), fix })?;
    Ok(Some(ClaimUse { field, claim: claim.clone(), uri: uri.to_string(), read_only: false }))
}

/// Where the report goes ([`distillery_crds::benchmark::report_uri`]) and the claim it is
/// written on (none for `s3://`), for the resolved targets.
pub fn report_location(
    bench: &Benchmark,
    resolved: &[ResolvedTarget],
) -> Result<(String, Option<ClaimUse>), SpecError> {
    let name = bench.metadata.name.as_deref().ok_or(SpecError::MissingMetadata("name"))?;
    let first = resolved.iter().enumerate().find_map(|(i, r)| match r {
        ResolvedTarget::Artifact { uri, claim, claim_field } => {
            Some((i, uri.as_str(), claim.as_ref(), claim_field.as_str()))
        }
        ResolvedTarget::Deployment { .. } => None,
    });
    let uri = distillery_crds::benchmark::report_uri(&bench.spec, name, first.map(|(_, uri, _, _)| uri))
        .ok_or(SpecError::NoReportLocation)?;
    let claim = report_use(&bench.spec, &uri, first)?;
    Ok((uri, claim))
}

/// The Benchmark as the worker reads it: identity and spec, no status or managed fields.
fn worker_document(bench: &Benchmark, name: &str, namespace: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "distillery.dev/v1alpha1",
        "kind": "Benchmark",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": bench.metadata.generation},
        "spec": bench.spec,
    })
}

/// The worker's arguments: one `--target-url` (and `--target-metrics`) per deployment target,
/// one `--artifact` per artifact target, in spec order, then the report's location.
fn worker_args(bench: &Benchmark, resolved: &[ResolvedTarget], report_uri: &str) -> Result<Vec<String>, SpecError> {
    let mut args = vec!["bench".to_string()];
    for (target, r) in bench.spec.targets.iter().zip(resolved) {
        match r {
            ResolvedTarget::Deployment { url, metrics } => {
                args.extend(["--target-url".into(), format!("{}={url}", target.name)]);
                if !metrics.is_empty() {
                    args.extend(["--target-metrics".into(), format!("{}={}", target.name, metrics.join(","))]);
                }
            }
            ResolvedTarget::Artifact { uri, claim_field, .. } => {
                let path = pod_location(uri)
                    .ok_or_else(|| SpecError::NotAFilePath { field: claim_field.clone(), uri: uri.clone() })?;
                args.extend(["--artifact".into(), format!("{}={path}", target.name)]);
            }
        }
    }
    args.extend([
        "--report-uri".into(),
        report_uri.to_string(),
        "--termination-message".into(),
        TERMINATION_MESSAGE_PATH.into(),
    ]);
    Ok(args)
}

/// The Job that runs `distillery-worker bench` for `bench` against `resolved` (one per target,
/// in spec order): the dataset's claim read-only, artifact claims read-only, the report's claim
/// read-write (one mount per claim and path), no retry (`backoffLimit: 0`: a benchmark is
/// measured once, and a failure is reported), a deadline from the load
/// ([`active_deadline_seconds`]).
pub fn desired_job(
    bench: &Benchmark,
    resolved: &[ResolvedTarget],
    settings: &WorkerSettings,
) -> Result<Job, SpecError> {
    let name = bench.metadata.name.as_deref().ok_or(SpecError::MissingMetadata("name"))?;
    let namespace = bench.metadata.namespace.as_deref().ok_or(SpecError::MissingMetadata("namespace"))?;
    let uid = bench.metadata.uid.as_deref().ok_or(SpecError::MissingMetadata("uid"))?;
    let generation = bench.metadata.generation.ok_or(SpecError::MissingMetadata("generation"))?;
    let spec = &bench.spec;
    let (report_uri, report_claim) = report_location(bench, resolved)?;
    let mut uses = dataset_use(spec);
    for r in resolved {
        if let ResolvedTarget::Artifact { uri, claim: Some(claim), claim_field } = r {
            uses.push(ClaimUse { field: claim_field.clone(), claim: claim.clone(), uri: uri.clone(), read_only: true });
        }
    }
    uses.extend(report_claim);
    let mounts = claim_mounts(uses)?;
    let args = worker_args(bench, resolved, &report_uri)?;

    let labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name".to_string(), "distillery-worker".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
        (BENCHMARK_LABEL.to_string(), names::label_value(name)),
    ]
    .into();
    // The root file system is read-only: the worker and the servers it starts write scratch
    // files to /tmp, and the report to its claim.
    // s3:// artifacts are downloaded to the work volume.
    let (claim_volumes, claim_mounts) = mount_specs(&mounts);
    let (work, work_mount) = work_volume();
    let volumes: Vec<Value> = [json!({"name": "tmp", "emptyDir": {}}), work].into_iter().chain(claim_volumes).collect();
    let volume_mounts: Vec<Value> =
        [json!({"name": "tmp", "mountPath": "/tmp"}), work_mount].into_iter().chain(claim_mounts).collect();
    let mut env =
        vec![json!({"name": BENCHMARK_ENV, "value": worker_document(bench, name, namespace, uid).to_string()})];
    env.extend(store_env(spec.s3.as_ref()));
    let owner = bench.controller_owner_ref(&()).ok_or(SpecError::MissingMetadata("uid"))?;
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, generation),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": active_deadline_seconds(spec),
            "template": {
                "metadata": {"labels": labels, "annotations": {BENCHMARK_LABEL: name}},
                "spec": {
                    "restartPolicy": "Never",
                    // The benchmark pod talks to servers, not to the API server.
                    "automountServiceAccountToken": false,
                    "securityContext": pod_security_context(),
                    "volumes": volumes,
                    "containers": [{
                        "name": CONTAINER,
                        "image": spec.image.clone().unwrap_or_else(|| settings.default_image.clone()),
                        "args": args,
                        "env": env,
                        "volumeMounts": volume_mounts,
                        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "securityContext": container_security_context(),
                    }],
                },
            },
        },
    });
    Ok(serde_json::from_value(strip_nulls(job)).expect("the Job built above has the Job's shape"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Benchmark {
        let text = include_str!("../../../examples/03-benchmark.yaml");
        let mut bench: Benchmark = serde_norway::from_str(text).unwrap();
        bench.metadata.namespace = Some("ml".into());
        bench.metadata.uid = Some("uid-1".into());
        bench.metadata.generation = Some(2);
        bench
    }

    fn settings() -> WorkerSettings {
        WorkerSettings { default_image: "worker:1".into(), cuda_image: "worker:1-cuda".into() }
    }

    /// The example's targets resolved: the live track and the DistillationJob's artifact twice.
    fn resolved() -> Vec<ResolvedTarget> {
        let artifact = ResolvedTarget::Artifact {
            uri: "file:///artifacts/minilm-reviews/g1-0a1b2c3d".into(),
            claim: Some("artifacts".into()),
            claim_field: "DistillationJob minilm-reviews's spec.output.volumeClaim".into(),
        };
        vec![
            ResolvedTarget::Deployment {
                url: "http://10.96.0.7:8080".into(),
                metrics: vec!["http://10.0.0.5:8080/metrics".into(), "http://10.0.0.6:8080/metrics".into()],
            },
            artifact.clone(),
            artifact,
        ]
    }

    fn job_json(bench: &Benchmark, resolved: &[ResolvedTarget]) -> Value {
        serde_json::to_value(desired_job(bench, resolved, &settings()).unwrap()).unwrap()
    }

    #[test]
    fn the_job_runs_bench_with_every_target_in_spec_order_and_the_report_beside_the_artifact() {
        let bench = example();
        let job = job_json(&bench, &resolved());
        assert_eq!(job["metadata"]["name"], "reviews-int8-vs-fp32-bench-g2");
        assert_eq!(job["metadata"]["labels"][BENCHMARK_LABEL], "reviews-int8-vs-fp32");
        assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "Benchmark");
        assert_eq!(job["spec"]["backoffLimit"], 0, "measured once");
        let pod = &job["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "worker:1");
        let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(
            args,
            vec![
                "bench",
                "--target-url",
                "live-stable=http://10.96.0.7:8080",
                "--target-metrics",
                "live-stable=http://10.0.0.5:8080/metrics,http://10.0.0.6:8080/metrics",
                "--artifact",
                "student-fp32=/artifacts/minilm-reviews/g1-0a1b2c3d",
                "--artifact",
                "student-int8=/artifacts/minilm-reviews/g1-0a1b2c3d",
                "--report-uri",
                "file:///artifacts/minilm-reviews/benchmarks/reviews-int8-vs-fp32",
                "--termination-message",
                "/dev/termination-log",
            ]
        );
        assert_eq!(c["env"][0]["name"], BENCHMARK_ENV);
        let document: Value = serde_json::from_str(c["env"][0]["value"].as_str().unwrap()).unwrap();
        assert_eq!(document["metadata"]["name"], "reviews-int8-vs-fp32");
        assert_eq!(document["metadata"]["generation"], 2);
        assert_eq!(document["spec"]["targets"][1]["artifact"]["variant"], "fp32");
        assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(job["spec"]["template"]["metadata"]["annotations"][BENCHMARK_LABEL], "reviews-int8-vs-fp32");
    }

    #[test]
    fn the_artifacts_claim_is_mounted_once_read_write_for_the_report_and_the_dataset_read_only() {
        let job = job_json(&example(), &resolved());
        let pod = &job["spec"]["template"]["spec"];
        let mounts: Vec<(String, bool)> = pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["mountPath"].as_str().unwrap().to_string(), m["readOnly"].as_bool().unwrap_or(false)))
            .collect();
        assert_eq!(
            mounts,
            vec![
                ("/tmp".to_string(), false),
                ("/work".to_string(), false),
                ("/data".to_string(), true),
                ("/artifacts".to_string(), false)
            ]
        );
        let claims: Vec<&str> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
            .collect();
        assert_eq!(claims, vec!["datasets", "artifacts"]);
    }

    #[test]
    fn a_report_uri_on_its_own_claim_is_mounted_read_write_beside_read_only_artifacts() {
        let mut bench = example();
        bench.spec.report_uri = Some("file:///reports/cmp/".into());
        bench.spec.report_volume_claim = Some("reports".into());
        let job = job_json(&bench, &resolved());
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        let args = c["args"].as_array().unwrap();
        let at = args.iter().position(|a| a == "--report-uri").unwrap();
        assert_eq!(args[at + 1], "file:///reports/cmp");
        let mounts: Vec<(&str, bool)> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["mountPath"].as_str().unwrap(), m["readOnly"].as_bool().unwrap_or(false)))
            .collect();
        assert_eq!(
            mounts,
            vec![("/tmp", false), ("/work", false), ("/data", true), ("/artifacts", true), ("/reports", false)]
        );
        // Without its claim the report could not be written: refused before anything runs.
        bench.spec.report_volume_claim = None;
        let err = validate(&bench).unwrap_err();
        assert!(matches!(err, SpecError::ReportOnNoClaim { .. }), "{err}");
        assert!(err.to_string().starts_with("spec.reportVolumeClaim: "), "{err}");
    }

    #[test]
    fn two_claims_at_one_path_are_refused_naming_both_fields() {
        let mut bench = example();
        bench.spec.dataset.uri = "file:///artifacts/golden.csv".into();
        let err = desired_job(&bench, &resolved(), &settings()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("DistillationJob minilm-reviews's spec.output.volumeClaim: the claim \"artifacts\"")
                && message.contains("where spec.dataset.volumeClaim already mounts \"datasets\""),
            "{message}"
        );
        // A uri target on another claim at the dataset's path is refused before any target resolves.
        let mut bench = example();
        bench.spec.targets[1].artifact =
            Some(serde_json::from_value(json!({"uri": "file:///data/student", "volumeClaim": "models"})).unwrap());
        let err = validate(&bench).unwrap_err().to_string();
        assert!(err.starts_with("spec.targets[1].artifact.volumeClaim: "), "{err}");
        assert!(validate(&example()).is_ok());
    }

    #[test]
    fn the_default_report_needs_the_first_artifact_on_a_claim() {
        let bench = example();
        let mut on_no_claim = resolved();
        on_no_claim[1] = ResolvedTarget::Artifact {
            uri: "file:///models/baked".into(),
            claim: None,
            claim_field: "spec.targets[1].artifact.volumeClaim".into(),
        };
        let err = desired_job(&bench, &on_no_claim, &settings()).unwrap_err();
        assert!(matches!(err, SpecError::ReportOnNoClaim { .. }), "{err}");
        assert!(err.to_string().starts_with("spec.targets[1] (the report goes beside"), "{err}");
        let deployments_only = vec![resolved()[0].clone()];
        let mut live = example();
        live.spec.targets.truncate(1);
        assert_eq!(desired_job(&live, &deployments_only, &settings()).unwrap_err(), SpecError::NoReportLocation);
    }

    #[test]
    fn the_deadline_follows_the_load_and_the_job_name_the_generation() {
        let mut bench = example();
        assert_eq!(active_deadline_seconds(&bench.spec), UNTIMED_DEADLINE_SECONDS, "requests-based");
        bench.spec.load.requests = None;
        assert_eq!(active_deadline_seconds(&bench.spec), UNTIMED_DEADLINE_SECONDS, "neither bound");
        bench.spec.load.duration = Some("90s".into());
        bench.spec.load.warmup_requests = 55;
        // 3 targets × (90 s + 6 s of warm-up + 120 s) + 300 s.
        assert_eq!(active_deadline_seconds(&bench.spec), 3 * (90 + 6 + 120) + 300);
        let job = job_json(&bench, &resolved());
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 3 * (90 + 6 + 120) + 300);
        assert_ne!(job_name("x", 1), job_name("x", 2));
        let long = "a".repeat(253);
        assert!(job_name(&long, 12).len() <= names::MAX_LABEL);
        bench.spec.image = Some("mine:2".into());
        assert_eq!(job_json(&bench, &resolved())["spec"]["template"]["spec"]["containers"][0]["image"], "mine:2");
    }

    #[test]
    fn a_deployment_target_without_ready_pods_gets_no_metrics_argument_and_missing_metadata_is_refused() {
        let bench = example();
        let mut r = resolved();
        r[0] = ResolvedTarget::Deployment { url: "http://10.96.0.7:8080".into(), metrics: vec![] };
        let job = job_json(&bench, &r);
        let args = job["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap().clone();
        assert!(!args.iter().any(|a| a == "--target-metrics"), "{args:?}");
        let mut no_uid = bench.clone();
        no_uid.metadata.uid = None;
        assert_eq!(desired_job(&no_uid, &r, &settings()).unwrap_err(), SpecError::MissingMetadata("uid"));
    }
}
