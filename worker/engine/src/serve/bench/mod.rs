//! `distillery-worker bench`: runs a Benchmark — locally (`-f benchmark.yaml`) or in the pod the
//! operator creates — and writes its report.
//!
//! Every target gets the same inputs in the same order, one target after the other (so they never
//! share the CPU): an artifact target is first served by a `distillery-server` process started
//! here ([`server`], which measures its cold start; an `s3://` artifact is downloaded into the work
//! directory and checked against its manifest before any target is measured, so the download is
//! not part of its cold start); then, as the spec's `metrics` ask,
//! 1. **accuracy** on the labelled inputs, one text per request, and the paired comparison with
//!    the first target (inputs only one of the two got right, a 95% interval on the difference);
//! 2. **robustness**: accuracy on the same inputs perturbed ([`perturb`]);
//! 3. **load**: warm-up requests, then the measured closed or open loop ([`crate::serve::loadgen`]):
//!    p50/p95/p99, throughput, errors by status;
//! 4. **resources** over the load: server CPU seconds per 1,000 requests it answered and its peak
//!    resident memory — from `/proc` for a server started here, from the pods' `/metrics` for a
//!    ModelDeployment track.
//!
//! [`report`] writes `results.json`, `report.md` and `report.html` (SVG charts, no scripts) — an
//! `s3://` report in the work directory, then uploaded ([`upload_report`]); the summary the
//! operator copies into status is [`BenchReport::summary`].

pub mod perturb;
pub mod plan;
pub mod report;
pub mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use distillery_crds::analysis::paired_drop_bounds;
use distillery_crds::benchmark::{BenchmarkMetric, BenchmarkSummary, PairedDifference, TargetResult};
use distillery_crds::common::ModelVariant;
use hyper::body::Bytes;
use serde::Serialize;

use crate::serve::analyze::{self, Client, GoldenError, GoldenRow, Url, golden_slice, label_texts, read_golden};
use crate::serve::loadgen::{self, LevelReport, LoadError, Stop, Warmup};
use crate::store::{Resolver, StoreError, is_remote};
use perturb::Kind;
use plan::{Plan, PlanError, Source};
use server::{ColdStart, LocalServer, ServerError};

/// z of a two-sided 95% interval.
const Z95: f64 = 1.959_964;
/// Accuracy requests in flight per target (one text each).
const ACCURACY_IN_FLIGHT: usize = 1;
/// Longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The spec or the arguments cannot be run.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The dataset cannot be read.
    #[error("spec.dataset {uri}: {source}")]
    Dataset {
        /// Its URI.
        uri: String,
        /// Why.
        source: GoldenError,
    },
    /// A target's artifact could not be downloaded, or does not match its manifest.
    #[error("target {target}: {source}")]
    Artifact {
        /// The target.
        target: String,
        /// Why (the message names the URI).
        source: StoreError,
    },
    /// A target's server could not be started (a corrupt or missing artifact, most often).
    #[error("target {target}: {source}")]
    Server {
        /// The target.
        target: String,
        /// Why.
        source: ServerError,
    },
    /// A target failed a measurement.
    #[error("target {target}: {message}")]
    Target {
        /// The target.
        target: String,
        /// What failed.
        message: String,
    },
    /// The report could not be written.
    #[error("cannot write the report to {path}: {message}")]
    Report {
        /// Where.
        path: String,
        /// Why.
        message: String,
    },
    /// The report could not be uploaded, or the store's settings are wrong.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BenchError {
    /// Whether running the same spec again cannot help (the worker then exits
    /// [`distillery_crds::exit::PERMANENT`]).
    pub fn is_permanent(&self) -> bool {
        match self {
            BenchError::Dataset { source: GoldenError::Store(e), .. } => e.is_permanent(),
            BenchError::Plan(_) | BenchError::Dataset { .. } => true,
            BenchError::Artifact { source: e, .. } | BenchError::Store(e) => e.is_permanent(),
            BenchError::Server { source, .. } => matches!(source, ServerError::Exited { .. }),
            BenchError::Target { .. } | BenchError::Report { .. } => false,
        }
    }
}

/// CPU time and memory of a target's server over the load.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Server CPU seconds spent during the load.
    pub cpu_seconds: f64,
    /// Inference requests the server answered meanwhile (its own count).
    pub requests: f64,
    /// Peak resident memory, bytes.
    pub peak_memory_bytes: u64,
    /// Where the figures come from.
    pub source: String,
}

/// Everything measured of one target.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetReport {
    /// The figures status holds.
    pub result: TargetResult,
    /// What was measured: the track and URL, or the artifact and variant.
    pub source: String,
    /// Cold start (artifact targets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<ColdStart>,
    /// The measured load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<LevelReport>,
    /// Accuracy on the inputs of each perturbation kind.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub robust_accuracy_by_kind: BTreeMap<Kind, f64>,
    /// CPU and memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Per input: whether the answer was right (`None`: no label, or not measured).
    #[serde(skip)]
    pub correct: Vec<Option<bool>>,
}

/// One perturbation kind as the report lists it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PerturbationInfo {
    /// The kind.
    pub kind: Kind,
    /// What it does.
    pub description: String,
    /// Inputs that got it.
    pub inputs: usize,
    /// One input before …
    pub example_before: String,
    /// … and after.
    pub example_after: String,
}

/// The whole benchmark: what `results.json` holds and the report shows.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchReport {
    /// The Benchmark's name.
    pub name: String,
    /// When the report was written (RFC 3339).
    pub generated_at: String,
    /// Where it was written.
    pub report_uri: String,
    /// The dataset's URI.
    pub dataset: String,
    /// Inputs sent (after `samples`).
    pub inputs: usize,
    /// Of them, labelled.
    pub labelled: usize,
    /// The load, in words.
    pub load: String,
    /// What was measured.
    pub metrics: Vec<BenchmarkMetric>,
    /// The perturbations (when robustness was measured).
    pub perturbations: Vec<PerturbationInfo>,
    /// The machine the benchmark ran on.
    pub host: String,
    /// Every target, in spec order.
    pub targets: Vec<TargetReport>,
}

fn round(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

impl BenchReport {
    /// The summary the operator copies into status: every figure of every target, rounded so
    /// eight targets fit a termination message.
    pub fn summary(&self) -> BenchmarkSummary {
        let results = self
            .targets
            .iter()
            .map(|t| {
                let r = &t.result;
                let o = |v: Option<f64>, d: i32| v.map(|v| round(v, d));
                TargetResult {
                    name: r.name.clone(),
                    requests: r.requests,
                    accuracy: o(r.accuracy, 5),
                    p50_ms: o(r.p50_ms, 3),
                    p95_ms: o(r.p95_ms, 3),
                    p99_ms: o(r.p99_ms, 3),
                    throughput: o(r.throughput, 2),
                    error_rate: o(r.error_rate, 5),
                    cold_start_ms: o(r.cold_start_ms, 1),
                    robust_accuracy: o(r.robust_accuracy, 5),
                    accuracy_vs_first: r.accuracy_vs_first.as_ref().map(|p| PairedDifference {
                        low: round(p.low, 5),
                        high: round(p.high, 5),
                        ..p.clone()
                    }),
                    cpu_seconds_per_1k_requests: o(r.cpu_seconds_per_1k_requests, 4),
                    peak_memory_bytes: r.peak_memory_bytes,
                }
            })
            .collect();
        BenchmarkSummary { report: self.report_uri.clone(), results }
    }
}

/// The paired comparison of `this` with `first` (per input: right or not), `None` when no input
/// is labelled in both.
pub fn paired(first: &[Option<bool>], this: &[Option<bool>]) -> Option<PairedDifference> {
    let (mut b, mut c, mut n) = (0u64, 0u64, 0u64);
    for (f, t) in first.iter().zip(this) {
        if let (Some(f), Some(t)) = (f, t) {
            n += 1;
            b += u64::from(*f && !*t);
            c += u64::from(*t && !*f);
        }
    }
    // The bounds are on first − this; the difference reported is this − first.
    let bounds = paired_drop_bounds(b, c, n, Z95)?;
    Some(PairedDifference { first_only_correct: b, this_only_correct: c, low: -bounds.upper, high: -bounds.lower })
}

fn accuracy_of(correct: &[Option<bool>]) -> Option<f64> {
    let labelled: Vec<bool> = correct.iter().filter_map(|c| *c).collect();
    (!labelled.is_empty()).then(|| labelled.iter().filter(|c| **c).count() as f64 / labelled.len() as f64)
}

fn score(rows: &[&GoldenRow], predicted: &[String]) -> Vec<Option<bool>> {
    rows.iter().zip(predicted).map(|(row, p)| row.label.as_ref().map(|l| l == p)).collect()
}

/// What a CPU and memory probe reads: (CPU seconds, requests answered, peak memory bytes).
type Probe = (f64, f64, u64);

async fn get_text(url: &Url) -> Result<String, String> {
    let mut client = Client::new(&url.authority, REQUEST_TIMEOUT);
    let reply = client.send("GET", &url.path, Bytes::new()).await?;
    if reply.status != 200 {
        return Err(format!("{} answered HTTP {}", url.display(), reply.status));
    }
    Ok(String::from_utf8_lossy(&reply.body).into_owned())
}

/// Sums `/metrics` of `pods`: CPU seconds, inference requests, the largest peak memory.
async fn probe_metrics(pods: &[Url]) -> Result<Probe, String> {
    let (mut cpu, mut requests, mut peak) = (0.0, 0.0, 0u64);
    for pod in pods {
        let samples = analyze::parse_metrics(&get_text(pod).await?).map_err(|e| format!("{}: {e}", pod.display()))?;
        let value = |name: &str| samples.iter().filter(|s| s.name == name).map(|s| s.value).sum::<f64>();
        cpu += value("process_cpu_seconds_total");
        requests += samples
            .iter()
            .filter(|s| s.name == "distillery_server_requests_total" && s.label("endpoint") == Some("infer"))
            .map(|s| s.value)
            .sum::<f64>();
        peak = peak.max(value("distillery_server_peak_resident_memory_bytes") as u64);
    }
    Ok((cpu, requests, peak))
}

/// CPU and memory from `/proc/<pid>`; the request count from the server's own `/metrics`.
async fn probe_process(pid: u32, metrics: &Url) -> Result<Probe, String> {
    let stats = distillery_model::process::stats(Some(pid)).map_err(|e| e.to_string())?;
    let (_, requests, _) = probe_metrics(std::slice::from_ref(metrics)).await?;
    Ok((stats.cpu_seconds, requests, stats.peak_resident_bytes))
}

/// The files [`report::write`] writes.
pub const REPORT_FILES: [&str; 3] = ["report.html", "report.md", "results.json"];

/// Writes `report` to `plan`'s report location: a local directory directly; an `s3://` URI into
/// `reports/<bucket>/<key>` of `resolver`'s work directory, then each file uploaded (the page
/// last, so a reader who finds it finds the data it shows). Returns the local directory.
pub async fn write_report(report: &BenchReport, plan: &Plan, resolver: &Resolver) -> Result<PathBuf, BenchError> {
    let dir = match &plan.report_dir {
        Some(dir) => dir.clone(),
        None => resolver.staging("reports", &plan.report_uri)?,
    };
    report::write(report, &dir)?;
    if plan.report_dir.is_none() {
        upload_report(&dir, &plan.report_uri, resolver).await?;
    }
    Ok(dir)
}

/// Uploads the report files in `dir` under `uri`: the data first, the page last.
pub async fn upload_report(dir: &Path, uri: &str, resolver: &Resolver) -> Result<(), BenchError> {
    let mut files = REPORT_FILES;
    files.reverse();
    Ok(resolver.upload_files(dir, &files, uri).await?)
}

/// Runs `plan` (artifact targets served by `server_binary`; `s3://` URIs read through
/// `resolver`), telling `progress` what it does.
pub async fn run(
    plan: &Plan,
    server_binary: &Path,
    resolver: &Resolver,
    progress: &mut dyn FnMut(String),
) -> Result<BenchReport, BenchError> {
    let rows = read_golden(&plan.dataset, resolver)
        .await
        .map_err(|source| BenchError::Dataset { uri: plan.dataset.uri.clone(), source })?;
    // Every artifact local (and verified) before the first target is measured: a download is
    // not part of any cold start, and a missing artifact fails the benchmark before it starts.
    let mut dirs: Vec<Option<PathBuf>> = Vec::new();
    for t in &plan.targets {
        dirs.push(match &t.source {
            Source::Artifact { uri, .. } => {
                if is_remote(uri) {
                    progress(format!("{}: downloading {uri} (not counted in its cold start)", t.name));
                }
                let dir = resolver
                    .fetch_artifact(uri)
                    .await
                    .map_err(|source| BenchError::Artifact { target: t.name.clone(), source })?;
                Some(dir)
            }
            Source::Server { .. } => None,
        });
    }
    let picked: Vec<&GoldenRow> = golden_slice(rows.len(), plan.dataset.samples, 0).iter().map(|&i| &rows[i]).collect();
    let texts: Arc<Vec<String>> = Arc::new(picked.iter().map(|r| r.text.clone()).collect());
    let perturbed: Vec<(Kind, String)> = texts.iter().enumerate().map(|(i, t)| perturb::perturb(t, i)).collect();
    let perturbed_texts: Arc<Vec<String>> = Arc::new(perturbed.iter().map(|(_, t)| t.clone()).collect());
    let bodies: Arc<Vec<Bytes>> = Arc::new(texts.iter().map(|t| loadgen::text_request(t)).collect());
    let labelled = picked.iter().filter(|r| r.label.is_some()).count();
    progress(format!("{} inputs ({labelled} labelled) from {}", texts.len(), plan.dataset.uri));
    let mut targets: Vec<TargetReport> = Vec::new();
    for (t, dir) in plan.targets.iter().zip(&dirs) {
        let fail = |message: String| BenchError::Target { target: t.name.clone(), message };
        // An artifact target's server lives until this iteration ends.
        let (local, url, model, source) = match &t.source {
            Source::Server { url, model, .. } => {
                (None, url.clone(), model.clone(), format!("{} (model {model})", url.display()))
            }
            Source::Artifact { uri, variant } => {
                let dir = dir.as_deref().expect("every artifact target was fetched");
                progress(format!("{}: starting distillery-server on {}", t.name, dir.display()));
                let s = LocalServer::start(server_binary, dir, *variant, &t.name, &texts[0])
                    .await
                    .map_err(|source| BenchError::Server { target: t.name.clone(), source })?;
                let (url, model) = (s.url.clone(), s.model.clone());
                let variant = match variant {
                    ModelVariant::Fp32 => "fp32",
                    ModelVariant::Int8 => "int8",
                    ModelVariant::Auto => "auto",
                };
                (Some(s), url, model, format!("artifact {uri} ({variant})"))
            }
        };
        let load_target = loadgen::Target {
            name: t.name.clone(),
            authority: url.authority.clone(),
            path: format!("{}/v2/models/{model}/infer", url.path),
        };
        if local.is_none() {
            loadgen::wait_ready(&load_target, Duration::from_secs(120)).await.map_err(|e| fail(e.to_string()))?;
        }
        let mut result = TargetResult { name: t.name.clone(), ..Default::default() };
        let mut report = TargetReport {
            result: TargetResult::default(),
            source,
            cold_start: local.as_ref().map(|s| s.cold_start),
            load: None,
            robust_accuracy_by_kind: BTreeMap::new(),
            resources: None,
            correct: vec![None; texts.len()],
        };
        if plan.wants(BenchmarkMetric::ColdStart) {
            result.cold_start_ms = report.cold_start.map(|c| c.first_answer_ms);
        }
        let label =
            |texts: Arc<Vec<String>>| label_texts(&t.name, &url, &model, texts, 1, ACCURACY_IN_FLIGHT, REQUEST_TIMEOUT);
        if plan.wants(BenchmarkMetric::Accuracy) {
            let predicted = label(texts.clone()).await.map_err(fail)?;
            report.correct = score(&picked, &predicted);
            result.accuracy = accuracy_of(&report.correct);
            progress(format!(
                "{}: accuracy {}",
                t.name,
                result.accuracy.map_or("-".into(), |a| format!("{:.2}%", a * 100.0))
            ));
        }
        if plan.wants(BenchmarkMetric::Robustness) {
            let predicted = label(perturbed_texts.clone()).await.map_err(fail)?;
            let correct = score(&picked, &predicted);
            result.robust_accuracy = accuracy_of(&correct);
            for kind in perturb::KINDS {
                let of_kind: Vec<Option<bool>> =
                    correct.iter().zip(&perturbed).filter(|(_, (k, _))| *k == kind).map(|(c, _)| *c).collect();
                if let Some(a) = accuracy_of(&of_kind) {
                    report.robust_accuracy_by_kind.insert(kind, a);
                }
            }
        }
        if plan.drives_load() {
            let metrics_urls: Vec<Url> = match &t.source {
                Source::Server { metrics, .. } => metrics.clone(),
                Source::Artifact { .. } => vec![Url { authority: url.authority.clone(), path: "/metrics".into() }],
            };
            let probe = || async {
                match &local {
                    Some(s) => probe_process(s.pid(), &metrics_urls[0]).await.map(Some),
                    None if metrics_urls.is_empty() => Ok(None),
                    None => probe_metrics(&metrics_urls).await.map(Some),
                }
            };
            let before = if plan.wants(BenchmarkMetric::Resources) { probe().await.map_err(fail)? } else { None };
            progress(format!("{}: load {}", t.name, describe_load(plan)));
            let level = match plan.load.rate {
                Some(rate) => {
                    loadgen::open_loop(
                        &load_target,
                        bodies.clone(),
                        rate,
                        plan.load.concurrency,
                        plan.load.warmup_requests,
                        plan.load.stop,
                    )
                    .await
                }
                None => {
                    let warmup = Warmup::Requests(plan.load.warmup_requests);
                    loadgen::closed_loop(&load_target, bodies.clone(), plan.load.concurrency, warmup, plan.load.stop)
                        .await
                }
            }
            .map_err(|e: LoadError| fail(e.to_string()))?;
            let after = if plan.wants(BenchmarkMetric::Resources) { probe().await.map_err(fail)? } else { None };
            if let (Some(b), Some(a)) = (before, after) {
                let resources = Resources {
                    cpu_seconds: (a.0 - b.0).max(0.0),
                    requests: (a.1 - b.1).max(0.0),
                    peak_memory_bytes: a.2,
                    source: if local.is_some() {
                        "the server process (/proc)".into()
                    } else {
                        format!("/metrics of {} pod(s); includes any other traffic they served", metrics_urls.len())
                    },
                };
                if resources.requests > 0.0 {
                    result.cpu_seconds_per_1k_requests = Some(resources.cpu_seconds / resources.requests * 1000.0);
                }
                result.peak_memory_bytes = Some(resources.peak_memory_bytes);
                report.resources = Some(resources);
            }
            let sent = level.ok + level.rejected + level.errors;
            result.requests = sent as u64;
            if plan.wants(BenchmarkMetric::Latency) && level.ok > 0 {
                (result.p50_ms, result.p95_ms, result.p99_ms) =
                    (Some(level.p50_ms), Some(level.p95_ms), Some(level.p99_ms));
            }
            if plan.wants(BenchmarkMetric::Throughput) {
                result.throughput = Some(level.throughput);
            }
            if plan.wants(BenchmarkMetric::Errors) && sent > 0 {
                result.error_rate = Some((level.rejected + level.errors) as f64 / sent as f64);
            }
            progress(format!(
                "{}: {:.1} req/s, p99 {:.2} ms, {} of {sent} failed",
                t.name,
                level.throughput,
                level.p99_ms,
                level.rejected + level.errors
            ));
            report.load = Some(level);
        }
        if let Some(first) = targets.first().filter(|_| plan.wants(BenchmarkMetric::Accuracy)) {
            result.accuracy_vs_first = paired(&first.correct, &report.correct);
        }
        report.result = result;
        targets.push(report);
        drop(local);
    }
    let perturbations = if plan.wants(BenchmarkMetric::Robustness) {
        perturb::KINDS
            .iter()
            .filter_map(|&kind| {
                let mut of_kind = texts.iter().zip(&perturbed).filter(|(_, (k, _))| *k == kind);
                let count = texts.iter().zip(&perturbed).filter(|(_, (k, _))| *k == kind).count();
                let (before, (_, after)) = of_kind.next()?;
                Some(PerturbationInfo {
                    kind,
                    description: kind.describe().into(),
                    inputs: count,
                    example_before: before.clone(),
                    example_after: after.clone(),
                })
            })
            .collect()
    } else {
        vec![]
    };
    Ok(BenchReport {
        name: plan.name.clone(),
        generated_at: jiff::Timestamp::now().to_string(),
        report_uri: plan.report_uri.clone(),
        dataset: plan.dataset.uri.clone(),
        inputs: texts.len(),
        labelled,
        load: describe_load(plan),
        metrics: plan.metrics.clone(),
        perturbations,
        host: host(),
        targets,
    })
}

/// The load in words, e.g. `2000 requests at concurrency 16 after 50 warm-up requests`.
pub fn describe_load(plan: &Plan) -> String {
    let l = &plan.load;
    let how = match l.rate {
        Some(rate) => format!("open loop at {rate} req/s over {} connections", l.concurrency),
        None => format!("closed loop at concurrency {}", l.concurrency),
    };
    let much = match l.stop {
        Stop::Requests(n) => format!("{n} requests"),
        Stop::After(d) => format!("{} s", d.as_secs_f64()),
    };
    format!("{much}, {how}, after {} warm-up requests", l.warmup_requests)
}

/// The CPU model and how many CPUs this process may use.
fn host() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model}, {cpus} CPU(s)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paired_difference_is_this_minus_first_with_counts() {
        // First right on 1..=8, this right on 3..=10 of ten labelled inputs (plus one unlabelled).
        let first: Vec<Option<bool>> = (1..=10).map(|i| Some(i <= 8)).chain([None]).collect();
        let this: Vec<Option<bool>> = (1..=10).map(|i| Some(i >= 3)).chain([Some(true)]).collect();
        let p = paired(&first, &this).unwrap();
        assert_eq!((p.first_only_correct, p.this_only_correct), (2, 2));
        assert!(p.low < 0.0 && p.high > 0.0, "equal accuracies: the interval spans 0: {p:?}");
        assert!((p.low + p.high).abs() < 1e-12, "symmetric for b = c");
        // This one right on everything the first got wrong, and more: the interval is above 0.
        let better: Vec<Option<bool>> = vec![Some(true); 200];
        let worse: Vec<Option<bool>> = (0..200).map(|i| Some(i % 2 == 0)).collect();
        let p = paired(&worse, &better).unwrap();
        assert_eq!((p.first_only_correct, p.this_only_correct), (0, 100));
        assert!(p.low > 0.35 && p.high < 0.65, "{p:?}");
        assert!(paired(&[None], &[Some(true)]).is_none());
    }

    #[test]
    fn the_summary_rounds_figures_but_keeps_names_and_order() {
        let target = |name: &str, accuracy: f64| TargetReport {
            result: TargetResult {
                name: name.into(),
                requests: 100,
                accuracy: Some(accuracy),
                p99_ms: Some(1.234_567_8),
                ..Default::default()
            },
            source: String::new(),
            cold_start: None,
            load: None,
            robust_accuracy_by_kind: BTreeMap::new(),
            resources: None,
            correct: vec![],
        };
        let report = BenchReport {
            name: "b".into(),
            generated_at: String::new(),
            report_uri: "file:///r".into(),
            dataset: String::new(),
            inputs: 0,
            labelled: 0,
            load: String::new(),
            metrics: vec![],
            perturbations: vec![],
            host: String::new(),
            targets: vec![target("z", 0.912_345_6), target("a", 0.5)],
        };
        let s = report.summary();
        assert_eq!(s.report, "file:///r");
        assert_eq!(s.results.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["z", "a"]);
        assert_eq!((s.results[0].accuracy, s.results[0].p99_ms), (Some(0.91235), Some(1.235)));
    }
}
