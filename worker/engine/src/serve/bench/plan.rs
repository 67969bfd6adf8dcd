//! From a Benchmark (and what the operator resolved for the pod) to what the benchmark does:
//! each target's server or artifact, the load, the figures to measure and where the report goes.
//! Pure: every refusal is unit-tested.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use distillery_crds::Benchmark;
use distillery_crds::benchmark::{BenchmarkMetric, report_uri};
use distillery_crds::common::{EvalDataset, ModelVariant};
use kube::ResourceExt;

use crate::serve::analyze::{Url, parse_duration};
use crate::serve::loadgen::Stop;
use crate::store::Location;

/// How long a target is driven when the spec sets neither `load.duration` nor `load.requests`.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(60);

/// Why a Benchmark cannot be run as given. All permanent: the spec or the arguments must change.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    /// An argument names a target the spec does not have.
    #[error("{flag} names target {name:?}, which is not in spec.targets ({known})")]
    UnknownTarget {
        /// The flag.
        flag: &'static str,
        /// The name given.
        name: String,
        /// The targets there are.
        known: String,
    },
    /// An argument is not `NAME=VALUE`.
    #[error("{flag} takes NAME=VALUE, got {value:?}")]
    NotNameValue {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// A ModelDeployment target without a URL to reach it.
    #[error(
        "target {name:?} is ModelDeployment {deployment:?}'s {track} track: the operator resolves it to the track's Service; to run it here, pass --target-url {name}=http://HOST:PORT"
    )]
    NoUrl {
        /// The target.
        name: String,
        /// The ModelDeployment.
        deployment: String,
        /// `stable` or `canary`.
        track: &'static str,
    },
    /// An artifact target by DistillationJob reference, without the resolved path.
    #[error(
        "target {name:?} is DistillationJob {job:?}'s artifact: the operator resolves it to status.result.artifactUri; to run it here, pass --artifact {name}=DIR or give the target an artifact.uri"
    )]
    NoArtifact {
        /// The target.
        name: String,
        /// The DistillationJob.
        job: String,
    },
    /// A URL or URI that cannot be used.
    #[error("{what}: {message}")]
    Bad {
        /// Which value.
        what: String,
        /// Why.
        message: String,
    },
    /// Nowhere to write the report.
    #[error("no report location: set spec.reportUri or --report-uri (there is no artifact target to write it beside)")]
    NoReportLocation,
}

/// What the operator resolved for the pod, or a user passes on the command line.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    /// `NAME=URL`: a ModelDeployment target's base URL.
    pub target_urls: Vec<String>,
    /// `NAME=URL,URL`: a ModelDeployment target's pods' `/metrics` URLs.
    pub target_metrics: Vec<String>,
    /// `NAME=DIR`: an artifact target's directory or URI (required for a `distillationJobRef`).
    pub artifacts: Vec<String>,
    /// The report's location (default: from the spec).
    pub report_uri: Option<String>,
}

/// Where a target's answers come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A running server (a ModelDeployment track).
    Server {
        /// Its base URL.
        url: Url,
        /// The model name in `/v2/models/{model}/infer`.
        model: String,
        /// Its pods' `/metrics`, for CPU and memory.
        metrics: Vec<Url>,
    },
    /// An artifact the benchmark serves itself with a `distillery-server` process.
    Artifact {
        /// The artifact: a local directory, a `file://` URI, or an `s3://` URI (downloaded into
        /// the work directory and checked against its manifest before its server starts).
        uri: String,
        /// Which ONNX file.
        variant: ModelVariant,
    },
}

/// One target as it will be measured.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTarget {
    /// Its name in the results.
    pub name: String,
    /// What answers.
    pub source: Source,
}

/// The load every target gets.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadPlan {
    /// Clients of a closed loop (connections of an open one).
    pub concurrency: usize,
    /// Open-loop rate; closed loop when `None`.
    pub rate: Option<f64>,
    /// Requests sent first and not measured.
    pub warmup_requests: u64,
    /// When measuring stops.
    pub stop: Stop,
}

/// Everything a benchmark run needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The Benchmark's name.
    pub name: String,
    /// The targets in spec order.
    pub targets: Vec<PlannedTarget>,
    /// The inputs.
    pub dataset: EvalDataset,
    /// The load.
    pub load: LoadPlan,
    /// What to measure.
    pub metrics: Vec<BenchmarkMetric>,
    /// The report's URI.
    pub report_uri: String,
    /// The report's directory, for a local report; `None` for an `s3://` one, which is written
    /// in the work directory and uploaded.
    pub report_dir: Option<PathBuf>,
}

impl Plan {
    /// Whether the spec asks for `metric`.
    pub fn wants(&self, metric: BenchmarkMetric) -> bool {
        self.metrics.contains(&metric)
    }

    /// Whether targets are driven with load at all.
    pub fn drives_load(&self) -> bool {
        [BenchmarkMetric::Latency, BenchmarkMetric::Throughput, BenchmarkMetric::Errors, BenchmarkMetric::Resources]
            .iter()
            .any(|m| self.wants(*m))
    }
}

/// Where `uri` is: `Some(local path)` for a plain path or a `file://` URI, `None` for an
/// `s3://` one; anything else is refused.
pub fn local_path(what: &str, uri: &str) -> Result<Option<PathBuf>, PlanError> {
    if !uri.contains("://") {
        return Ok(Some(PathBuf::from(uri)));
    }
    match Location::parse(uri) {
        Ok(Location::File(path)) => Ok(Some(path)),
        Ok(Location::S3 { .. }) => Ok(None),
        Err(e) => Err(PlanError::Bad { what: what.into(), message: e.to_string() }),
    }
}

/// `NAME=VALUE` arguments by name, each name a target of the spec.
fn by_name<'a>(
    flag: &'static str,
    values: &'a [String],
    names: &[&str],
) -> Result<BTreeMap<&'a str, &'a str>, PlanError> {
    let mut out = BTreeMap::new();
    for v in values {
        let (name, value) = v.split_once('=').ok_or_else(|| PlanError::NotNameValue { flag, value: v.clone() })?;
        if !names.contains(&name) {
            return Err(PlanError::UnknownTarget { flag, name: name.into(), known: names.join(", ") });
        }
        out.insert(name, value);
    }
    Ok(out)
}

fn url(what: String, text: &str) -> Result<Url, PlanError> {
    Url::parse("url", text).map_err(|e| PlanError::Bad { what, message: e.to_string() })
}

/// The plan for `bench` with what was resolved for it.
pub fn plan(bench: &Benchmark, resolved: &Resolved) -> Result<Plan, PlanError> {
    let spec = &bench.spec;
    let names: Vec<&str> = spec.targets.iter().map(|t| t.name.as_str()).collect();
    let urls = by_name("--target-url", &resolved.target_urls, &names)?;
    let metrics = by_name("--target-metrics", &resolved.target_metrics, &names)?;
    let artifacts = by_name("--artifact", &resolved.artifacts, &names)?;
    let mut targets = Vec::new();
    let mut first_artifact = None;
    for t in &spec.targets {
        let name = t.name.clone();
        let source = match (&t.deployment, &t.artifact) {
            (Some(d), _) => {
                let track = match d.track {
                    distillery_crds::benchmark::Track::Stable => "stable",
                    distillery_crds::benchmark::Track::Canary => "canary",
                };
                let base = urls.get(name.as_str()).ok_or_else(|| PlanError::NoUrl {
                    name: name.clone(),
                    deployment: d.name.clone(),
                    track,
                })?;
                let metrics = metrics
                    .get(name.as_str())
                    .map(|list| {
                        list.split(',')
                            .filter(|u| !u.is_empty())
                            .map(|u| url(format!("--target-metrics {name}"), u))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .transpose()?
                    .unwrap_or_default();
                Source::Server { url: url(format!("--target-url {name}"), base)?, model: d.name.clone(), metrics }
            }
            (None, Some(a)) => {
                let (what, uri) = match (artifacts.get(name.as_str()), &a.uri, &a.distillation_job_ref) {
                    (Some(dir), _, _) => (format!("--artifact {name}"), dir.to_string()),
                    (None, Some(uri), _) => (format!("spec.targets[{name}].artifact.uri"), uri.clone()),
                    (None, None, job) => {
                        let job = job.as_ref().map(|j| j.name.clone()).unwrap_or_default();
                        return Err(PlanError::NoArtifact { name, job });
                    }
                };
                let local = local_path(&what, &uri)?;
                first_artifact.get_or_insert_with(|| match &local {
                    Some(dir) => format!("file://{}", dir.display()),
                    None => uri.clone(),
                });
                Source::Artifact { uri, variant: a.variant }
            }
            (None, None) => {
                return Err(PlanError::Bad {
                    what: format!("spec.targets[{name}]"),
                    message: "sets neither deployment nor artifact".into(),
                });
            }
        };
        targets.push(PlannedTarget { name, source });
    }
    let duration = |text: &str| {
        parse_duration("spec.load.duration", text)
            .map_err(|e| PlanError::Bad { what: "spec.load.duration".into(), message: e.to_string() })
    };
    let stop = match (&spec.load.requests, &spec.load.duration) {
        (Some(n), _) => Stop::Requests(*n),
        (None, Some(d)) => Stop::After(duration(d)?),
        (None, None) => Stop::After(DEFAULT_DURATION),
    };
    let load = LoadPlan {
        concurrency: spec.load.concurrency as usize,
        rate: spec.load.rate,
        warmup_requests: u64::from(spec.load.warmup_requests),
        stop,
    };
    let name = bench.name_any();
    let report_uri = match &resolved.report_uri {
        Some(uri) => uri.trim_end_matches('/').to_string(),
        None => report_uri(spec, &name, first_artifact.as_deref()).ok_or(PlanError::NoReportLocation)?,
    };
    let report_dir = local_path("the report location", &report_uri)?;
    Ok(Plan {
        name,
        targets,
        dataset: spec.dataset.clone(),
        load,
        metrics: spec.metrics.clone(),
        report_uri,
        report_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(spec: serde_json::Value) -> Benchmark {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "distillery.dev/v1alpha1",
            "kind": "Benchmark",
            "metadata": {"name": "cmp"},
            "spec": spec
        }))
        .unwrap()
    }

    fn three_targets() -> Benchmark {
        bench(serde_json::json!({
            "targets": [
                {"name": "live", "deployment": {"name": "reviews"}},
                {"name": "fp32", "artifact": {"distillationJobRef": {"name": "minilm"}, "variant": "fp32"}},
                {"name": "int8", "artifact": {"uri": "file:///artifacts/minilm/run-1", "variant": "int8"}}
            ],
            "dataset": {"uri": "file:///data/golden.csv"},
            "load": {"requests": 500, "concurrency": 4, "warmupRequests": 10}
        }))
    }

    #[test]
    fn resolved_targets_keep_spec_order_and_the_report_goes_beside_the_first_artifact() {
        let resolved = Resolved {
            target_urls: vec!["live=http://reviews-stable.ns.svc:8080".into()],
            target_metrics: vec!["live=http://10.0.0.1:8080/metrics,http://10.0.0.2:8080/metrics".into()],
            artifacts: vec!["fp32=/artifacts/minilm/run-1".into()],
            report_uri: None,
        };
        let plan = plan(&three_targets(), &resolved).unwrap();
        let names: Vec<&str> = plan.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["live", "fp32", "int8"]);
        match &plan.targets[0].source {
            Source::Server { url, model, metrics } => {
                assert_eq!(url.authority, "reviews-stable.ns.svc:8080");
                assert_eq!(model, "reviews", "the ModelDeployment's name is the model's");
                assert_eq!(metrics.len(), 2);
                assert_eq!(metrics[1].path, "/metrics");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            plan.targets[1].source,
            Source::Artifact { uri: "/artifacts/minilm/run-1".into(), variant: ModelVariant::Fp32 }
        );
        assert_eq!(plan.report_uri, "file:///artifacts/minilm/benchmarks/cmp");
        assert_eq!(plan.report_dir, Some(PathBuf::from("/artifacts/minilm/benchmarks/cmp")));
        assert_eq!(plan.load, LoadPlan { concurrency: 4, rate: None, warmup_requests: 10, stop: Stop::Requests(500) });
        assert!(plan.wants(BenchmarkMetric::Robustness) && plan.drives_load(), "every metric by default");
    }

    #[test]
    fn what_cannot_be_resolved_is_refused_with_the_flag_to_pass() {
        let err = plan(&three_targets(), &Resolved::default()).unwrap_err();
        assert!(err.to_string().contains("--target-url live=http://HOST:PORT"), "{err}");
        let resolved = Resolved { target_urls: vec!["live=http://x:1".into()], ..Default::default() };
        let err = plan(&three_targets(), &resolved).unwrap_err();
        assert_eq!(err, PlanError::NoArtifact { name: "fp32".into(), job: "minilm".into() });
        assert!(err.to_string().contains("--artifact fp32=DIR"), "{err}");
        let resolved = Resolved { target_urls: vec!["nope=http://x:1".into()], ..Default::default() };
        assert!(matches!(plan(&three_targets(), &resolved), Err(PlanError::UnknownTarget { .. })));
        let resolved = Resolved { target_urls: vec!["live".into()], ..Default::default() };
        assert!(matches!(plan(&three_targets(), &resolved), Err(PlanError::NotNameValue { .. })));
        let resolved = Resolved { target_urls: vec!["live=https://x:1".into()], ..Default::default() };
        assert!(matches!(plan(&three_targets(), &resolved), Err(PlanError::Bad { .. })));
    }

    #[test]
    fn s3_artifacts_are_kept_as_uris_and_the_report_goes_beside_the_first_in_the_bucket() {
        let b = bench(serde_json::json!({
            "targets": [
                {"name": "a", "artifact": {"uri": "s3://artifacts/minilm/g1-0a1b2c3d", "variant": "int8"}},
                {"name": "b", "artifact": {"distillationJobRef": {"name": "minilm"}}}
            ],
            "dataset": {"uri": "s3://data/golden.csv"}
        }));
        let resolved = Resolved { artifacts: vec!["b=s3://artifacts/minilm/g2-0a1b2c3d".into()], ..Default::default() };
        let p = plan(&b, &resolved).unwrap();
        assert_eq!(
            p.targets[0].source,
            Source::Artifact { uri: "s3://artifacts/minilm/g1-0a1b2c3d".into(), variant: ModelVariant::Int8 }
        );
        assert_eq!(
            p.targets[1].source,
            Source::Artifact { uri: "s3://artifacts/minilm/g2-0a1b2c3d".into(), variant: ModelVariant::Auto }
        );
        assert_eq!((p.report_uri.as_str(), p.report_dir), ("s3://artifacts/minilm/benchmarks/cmp", None));
        let resolved = Resolved { artifacts: vec!["b=https://x/y".into()], ..Default::default() };
        let err = plan(&b, &resolved).unwrap_err();
        assert!(matches!(&err, PlanError::Bad { what, .. } if what == "--artifact b"), "{err}");
    }

    #[test]
    fn the_load_defaults_to_a_minute_and_the_report_uri_argument_wins() {
        let b = bench(serde_json::json!({
            "targets": [{"name": "a", "artifact": {"uri": "file:///m/a"}}],
            "dataset": {"uri": "file:///d.csv"},
            "load": {"duration": "1m30s"}
        }));
        let resolved = Resolved { report_uri: Some("file:///reports/x/".into()), ..Default::default() };
        let p = plan(&b, &resolved).unwrap();
        assert_eq!(p.load.stop, Stop::After(Duration::from_secs(90)));
        assert_eq!((p.report_uri.as_str(), p.load.concurrency, p.load.warmup_requests), ("file:///reports/x", 16, 50));
        let b = bench(serde_json::json!({
            "targets": [{"name": "a", "artifact": {"uri": "file:///m/a"}}],
            "dataset": {"uri": "file:///d.csv"}
        }));
        assert_eq!(plan(&b, &Resolved::default()).unwrap().load.stop, Stop::After(DEFAULT_DURATION));
    }
}
