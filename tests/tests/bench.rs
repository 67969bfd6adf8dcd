//! `distillery-worker bench -f` on one machine, as the README runs it and as a Benchmark's pod
//! runs it: the small job's artifact served fp32 and int8 by server processes the benchmark
//! starts itself, beside a running server standing in for a ModelDeployment track (reached by
//! `--target-url`, its CPU and memory read from its `/metrics`). Checks every figure of every
//! target, the int8 accuracy against the artifact's manifest, the report in headless Chromium,
//! and the failures: a corrupt artifact (named, exit 2) and a track without a URL.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use distillery_crds::benchmark::BenchmarkSummary;
use distillery_tests::browser;
use distillery_tests::cluster::workspace_binary;
use distillery_tests::server_process::ServerProcess;
use serde_json::{Value, json};

fn manifest(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("distillery.json")).unwrap()).unwrap()
}

/// The held-out split of `artifact` as the CSV a Benchmark reads.
fn held_out(artifact: &Path, csv: &Path) {
    let out = Command::new(workspace_binary("distillery-worker"))
        .args(["held-out", "-a"])
        .arg(artifact)
        .arg("-o")
        .arg(csv)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn benchmark(targets: Value, dir: &Path) -> PathBuf {
    let doc = json!({
        "apiVersion": "distillery.dev/v1alpha1", "kind": "Benchmark", "metadata": {"name": "local"},
        "spec": {
            "targets": targets,
            "dataset": {"uri": format!("file://{}", dir.join("held-out.csv").display())},
            "load": {"concurrency": 4, "requests": 200, "warmupRequests": 20},
            "reportUri": format!("file://{}", dir.join("report").display()),
        }
    });
    let file = dir.join("benchmark.yaml");
    std::fs::write(&file, serde_norway::to_string(&doc).unwrap()).unwrap();
    file
}

fn run(file: &Path, extra: &[&str], termination: &Path) -> Output {
    Command::new(workspace_binary("distillery-worker"))
        .args(["bench", "-f"])
        .arg(file)
        .args(extra)
        .arg("--termination-message")
        .arg(termination)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap()
}

#[test]
fn fp32_int8_and_a_running_server_are_measured_side_by_side_and_the_report_renders() {
    let artifact = distillery_tests::shared_small_artifact();
    let dir = tempfile::tempdir().unwrap();
    held_out(&artifact, &dir.path().join("held-out.csv"));
    // A server already running, as a ModelDeployment track is: served under its own model name.
    let live = ServerProcess::start(&artifact, &["--variant", "fp32", "--model-name", "live"]);
    let uri = format!("file://{}", artifact.display());
    let file = benchmark(
        json!([
            {"name": "fp32", "artifact": {"uri": uri, "variant": "fp32"}},
            {"name": "int8", "artifact": {"uri": uri, "variant": "int8"}},
            {"name": "track", "deployment": {"name": "live"}},
        ]),
        dir.path(),
    );
    let url = format!("track=http://{}", live.address);
    let metrics = format!("track=http://{}/metrics", live.address);
    let termination = dir.path().join("termination");
    let out = run(&file, &["--target-url", &url, "--target-metrics", &metrics], &termination);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");

    // The summary the operator reads: every figure of every target, in spec order.
    let summary: BenchmarkSummary = serde_json::from_str(&std::fs::read_to_string(&termination).unwrap()).unwrap();
    assert_eq!(summary.report, format!("file://{}", dir.path().join("report").display()));
    let names: Vec<&str> = summary.results.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["fp32", "int8", "track"]);
    for r in &summary.results {
        assert_eq!(r.requests, 200, "{r:?}");
        for (what, v) in [
            ("accuracy", r.accuracy),
            ("robust accuracy", r.robust_accuracy),
            ("p50", r.p50_ms),
            ("p95", r.p95_ms),
            ("p99", r.p99_ms),
            ("throughput", r.throughput),
            ("CPU per 1k", r.cpu_seconds_per_1k_requests),
        ] {
            assert!(v.is_some_and(|v| v.is_finite() && v >= 0.0), "{}: {what} {v:?}", r.name);
        }
        assert_eq!(r.error_rate, Some(0.0), "{r:?}");
        let (p50, p95, p99) = (r.p50_ms.unwrap(), r.p95_ms.unwrap(), r.p99_ms.unwrap());
        assert!(p50 > 0.0 && p50 <= p95 && p95 <= p99, "{r:?}");
        assert!(r.throughput.unwrap() > 0.0 && r.cpu_seconds_per_1k_requests.unwrap() > 0.0, "{r:?}");
        assert!(r.peak_memory_bytes.is_some_and(|b| b > 10 << 20), "a server holds more than 10 MiB: {r:?}");
    }
    let [fp32, int8, track] = &summary.results[..] else { unreachable!() };
    assert!(fp32.cold_start_ms.is_some_and(|c| c > 0.0) && int8.cold_start_ms.is_some_and(|c| c > 0.0));
    assert_eq!(track.cold_start_ms, None, "a running track has no cold start here");
    assert!(fp32.accuracy_vs_first.is_none(), "the first target is the reference");

    // The same inputs in the same order: the track serves fp32 too, so it agrees with fp32 on
    // every input and the paired comparison says so.
    let same = track.accuracy_vs_first.as_ref().unwrap();
    assert_eq!((same.first_only_correct, same.this_only_correct), (0, 0));
    assert_eq!(track.accuracy, fp32.accuracy);
    // int8 measured through its server, one text per request, is the manifest's int8 accuracy.
    let m = manifest(&artifact);
    let recorded = m["variants"]["int8"]["accuracy"].as_f64().unwrap();
    assert!((int8.accuracy.unwrap() - recorded).abs() <= 0.005, "served {:?} vs manifest {recorded}", int8.accuracy);
    let recorded = m["variants"]["fp32"]["accuracy"].as_f64().unwrap();
    assert!((fp32.accuracy.unwrap() - recorded).abs() <= 0.005, "served {:?} vs manifest {recorded}", fp32.accuracy);
    let d = int8.accuracy_vs_first.as_ref().unwrap();
    let diff = int8.accuracy.unwrap() - fp32.accuracy.unwrap();
    assert!(d.low <= diff && diff <= d.high, "{d:?} holds the observed difference {diff}");

    // The table with ratios, and the report's path.
    assert!(stdout.contains("int8 / fp32:") && stdout.contains("× the throughput"), "{stdout}");
    let html = dir.path().join("report/report.html");
    assert!(stdout.contains(&format!("report: {}", html.display())), "{stdout}");
    for f in ["report.html", "report.md", "results.json"] {
        assert!(dir.path().join("report").join(f).is_file(), "{f}");
    }
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report/results.json")).unwrap()).unwrap();
    assert_eq!(results["perturbations"].as_array().unwrap().len(), 4, "typo, casing, punctuation, word drop");

    // The report in a real browser: every chart in the DOM after load, drawn, no console error.
    let rendered = browser::render(&html).unwrap_or_else(|e| panic!("{e}"));
    for id in ["chart-latency", "chart-accuracy-p99", "chart-throughput", "chart-robustness"] {
        let at = rendered.dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("{id} not in the DOM"));
        let figure = &rendered.dom[at..at + rendered.dom[at..].find("</figure>").unwrap()];
        assert!(figure.contains("<svg") && figure.contains("class=\"series\""), "{id} has its series");
    }
    assert!(rendered.non_background_share > 0.02, "not blank: {}", rendered.non_background_share);
    assert!(rendered.console_errors.is_empty(), "{:?}", rendered.console_errors);
}

#[test]
fn a_corrupt_artifact_fails_the_benchmark_naming_it_and_a_track_needs_a_url() {
    let artifact = distillery_tests::shared_small_artifact();
    let dir = tempfile::tempdir().unwrap();
    held_out(&artifact, &dir.path().join("held-out.csv"));
    // A copy whose int8 file no longer matches the sha256 its manifest records.
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    for entry in std::fs::read_dir(&artifact).unwrap().flatten() {
        std::fs::copy(entry.path(), corrupt.join(entry.file_name())).unwrap();
    }
    let int8 = corrupt.join("model.int8.onnx");
    let mut bytes = std::fs::read(&int8).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&int8, bytes).unwrap();
    let file = benchmark(
        json!([{"name": "broken", "artifact": {"uri": format!("file://{}", corrupt.display()), "variant": "int8"}}]),
        dir.path(),
    );
    let termination = dir.path().join("termination");
    let out = run(&file, &[], &termination);
    assert_eq!(out.status.code(), Some(distillery_crds::exit::PERMANENT), "{out:?}");
    let message = std::fs::read_to_string(&termination).unwrap();
    assert!(message.contains("target broken") && message.contains(&corrupt.display().to_string()), "{message}");
    assert!(message.contains("sha256"), "says why: {message}");
    assert!(!dir.path().join("report/report.html").exists(), "no report for a failed run");

    let file = benchmark(json!([{"name": "live", "deployment": {"name": "reviews", "track": "canary"}}]), dir.path());
    let out = run(&file, &[], &termination);
    assert_eq!(out.status.code(), Some(distillery_crds::exit::PERMANENT));
    let message = std::fs::read_to_string(&termination).unwrap();
    assert!(message.contains("--target-url live=http://HOST:PORT") && message.contains("canary"), "{message}");
}
