//! ModelDeployment cluster tests: the operator binary against the in-process API server and
//! simulated cluster, serving real models the worker trains with real `distillery-server` pods,
//! while a background client calls the ModelDeployment's Service and records every answer.
//!
//! The models are trained once per test run and shared by every scenario (the worker, on the
//! setup's real corpus): `base` (the stable model), `good` (another seed: a different digest
//! within the accuracy budget), `gross` (trained on labels swapped fresh ↔ rotten) and `subtle`
//! (trained on a small fraction of the data: clearly, not grossly, worse). The data is split by
//! movie: the golden set's movies are on no training side. Scenarios run one at a time.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use distillery_crds::ModelDeployment;
use distillery_tests::apiserver::ApiServer;
use distillery_tests::cluster::{Cluster, workspace_binary};
use distillery_tests::identity::{OperatorIdentity, install_chart_rbac};
use distillery_tests::operator::OperatorProcess;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Scenarios run one at a time: each starts up to six servers and the analysis Jobs on 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the shared data and models live (cargo's scratch space for this test target).
fn scratch() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("rollout")
}

/// The datasets the scenarios use, derived from the setup's corpus and split by movie.
struct Data {
    dir: PathBuf,
}

fn movie_is_golden(movie: &str) -> bool {
    use sha2::Digest;
    sha2::Sha256::digest(movie.as_bytes())[0] % 5 == 0
}

fn write_data() -> Data {
    let dir = scratch().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let corpus = distillery_tests::cache_dir().join("data/rotten_tomatoes_corpus_full.csv.bz2");
    let file =
        std::fs::File::open(&corpus).unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", corpus.display()));
    let mut reader = csv::Reader::from_reader(bzip2::read::BzDecoder::new(file));
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (category, text, movie) = (col("category"), col("text"), col("movie_name"));
    let mut train = csv::Writer::from_path(dir.join("train.csv")).unwrap();
    let mut swapped = csv::Writer::from_path(dir.join("train-swapped.csv")).unwrap();
    let mut golden = csv::Writer::from_path(dir.join("golden.csv")).unwrap();
    for w in [&mut train, &mut swapped] {
        w.write_record(["text", "category", "movie_name"]).unwrap();
    }
    golden.write_record(["text", "category"]).unwrap();
    for row in reader.records() {
        let row = row.unwrap();
        let label = &row[category];
        if label != "fresh" && label != "rotten" || row[text].trim().is_empty() {
            continue;
        }
        if movie_is_golden(&row[movie]) {
            golden.write_record([&row[text], label]).unwrap();
        } else {
            train.write_record([&row[text], label, &row[movie]]).unwrap();
            let flipped = if label == "fresh" { "rotten" } else { "fresh" };
            swapped.write_record([&row[text], flipped, &row[movie]]).unwrap();
        }
    }
    for w in [&mut train, &mut swapped, &mut golden] {
        w.flush().unwrap();
    }
    Data { dir }
}

/// A small classification job on `dataset` (a file in the data directory).
fn job_spec(dataset_uri: &str, seed: u64, max_examples: u32, output_uri: &str, claims: bool) -> Value {
    let teacher = if claims {
        json!({"uri": "file:///models/all-minilm-l6-v2", "volumeClaim": "models"})
    } else {
        json!({"uri": format!("file://{}", distillery_tests::cache_dir().join("teacher/all-minilm-l6-v2").display())})
    };
    let mut teacher = teacher;
    teacher["head"] =
        json!({"mode": "fine-tune", "trainableLayers": 1, "epochs": 1, "learningRate": 0.0001, "batchSize": 16});
    let mut dataset = json!({"uri": dataset_uri, "labelField": "category", "groupField": "movie_name",
        "labels": ["fresh", "rotten"], "validationSplit": {"fraction": 0.2, "byGroup": true, "seed": 0},
        "maxSequenceLength": 48, "maxExamples": max_examples});
    let mut output = json!({"uri": output_uri});
    if claims {
        dataset["volumeClaim"] = json!("datasets");
        output["volumeClaim"] = json!("artifacts");
    }
    json!({
        "task": "sequence-classification",
        "teacher": teacher,
        "student": {"initFromTeacher": {"layers": [0]}, "pruneVocabulary": true, "embeddingSize": 64},
        "dataset": dataset,
        "loss": {"alpha": 0.3, "temperature": {"start": 3, "end": 1, "schedule": "linear"}},
        "training": {"epochs": 2, "batchSize": 16, "learningRate": 0.0003, "seed": seed, "checkpointInterval": 50},
        "resources": {"gpu": {"count": 0}},
        "output": output,
    })
}

/// The models every scenario shares, trained once per run.
struct Models {
    data: Data,
    dir: PathBuf,
}

const BASE_EXAMPLES: u32 = 600;
const SUBTLE_EXAMPLES: u32 = 120;

fn models() -> &'static Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS.get_or_init(|| {
        let data = write_data();
        let dir = scratch().join("models");
        std::fs::create_dir_all(&dir).unwrap();
        let train = format!("file://{}", data.dir.join("train.csv").display());
        let swapped = format!("file://{}", data.dir.join("train-swapped.csv").display());
        // `base` first: it prepares the teacher the others reuse from the cache. Then the rest on
        // both cores (each training runs on one thread): `good`, and `gross` then `subtle`.
        train_model(&dir, "base", &train, 0, BASE_EXAMPLES);
        std::thread::scope(|threads| {
            threads.spawn(|| train_model(&dir, "good", &train, 1, BASE_EXAMPLES));
            threads.spawn(|| {
                train_model(&dir, "gross", &swapped, 0, BASE_EXAMPLES);
                train_model(&dir, "subtle", &train, 0, SUBTLE_EXAMPLES);
            });
        });
        Models { data, dir }
    })
}

/// Trains `name` into `dir/<name>` with the worker, unless an earlier run of these tests trained
/// it from the same spec.
fn train_model(dir: &Path, name: &str, dataset: &str, seed: u64, examples: u32) {
    let out = dir.join(name);
    let spec = json!({"apiVersion": "distillery.dev/v1alpha1", "kind": "DistillationJob",
        "metadata": {"name": name}, "spec": job_spec(dataset, seed, examples, &format!("file://{}", out.display()), false)});
    let file = dir.join(format!("{name}.yaml"));
    let yaml = serde_norway::to_string(&spec).unwrap();
    if std::fs::read_to_string(&file).is_ok_and(|old| old == yaml) && out.join("distillery.json").is_file() {
        return;
    }
    if out.exists() {
        std::fs::remove_dir_all(&out).unwrap();
    }
    std::fs::write(&file, &yaml).unwrap();
    let started = Instant::now();
    distillery_tests::distill(&file, &out);
    eprintln!("rollout tests: trained {name} in {:.0}s", started.elapsed().as_secs_f64());
}

impl Models {
    /// The served file's digest of `model` (the manifest's served variant).
    fn digest(&self, model: &str) -> String {
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir.join(model).join("distillery.json")).unwrap())
                .unwrap();
        let variant = manifest["servedVariant"].as_str().unwrap_or("fp32").to_string();
        manifest["variants"][&variant]["sha256"]
            .as_str()
            .unwrap_or_else(|| panic!("no sha256 for {variant}: {manifest}"))
            .to_string()
    }
}

/// An API server, a simulated cluster with the claims the scenarios name, and the operator.
struct Harness {
    server: ApiServer,
    cluster: Cluster,
    root: tempfile::TempDir,
    operator: Option<OperatorProcess>,
    /// The operator's chart identity; RBAC is enforced.
    identity: OperatorIdentity,
}

const OPERATOR_FLAGS: &[&str] = &["--canary-ready-deadline-seconds", "30"];

impl Harness {
    async fn start() -> Self {
        Self::start_with(false).await
    }

    /// With the Gateway API CRDs installed (and the simulated gateway serving them).
    async fn start_with(gateway_api: bool) -> Self {
        let models = models();
        let server = ApiServer::start().await.unwrap();
        if gateway_api {
            server.install_gateway_api().await.unwrap();
        }
        let root = tempfile::tempdir().unwrap();
        let images = HashMap::from([
            ("distillery-worker".to_string(), workspace_binary("distillery-worker")),
            ("distillery-server".to_string(), workspace_binary("distillery-server")),
        ]);
        let artifacts = root.path().join("claims/artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        let claims = HashMap::from([
            ("models".to_string(), distillery_tests::cache_dir().join("teacher")),
            ("datasets".to_string(), models.data.dir.clone()),
            ("trained".to_string(), models.dir.clone()),
            ("artifacts".to_string(), artifacts),
        ]);
        let cluster = Cluster::start(&server, images, claims, &root.path().join("cluster")).unwrap();
        server.install_crds("kubectl").await.unwrap();
        let identity = install_chart_rbac(&server, root.path(), |_| {}).await.unwrap();
        let operator = OperatorProcess::start_as(&identity, &root.path().join("operator.log"), OPERATOR_FLAGS);
        Self { server, cluster, root, operator: Some(operator), identity }
    }

    fn diagnostics(&self) -> String {
        let log = std::fs::read_to_string(self.root.path().join("operator.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        format!(
            "operator log (last lines):\n{}\npods:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            self.cluster.logs()
        )
    }

    fn mdeps(&self) -> Api<ModelDeployment> {
        Api::default_namespaced(self.server.client())
    }

    async fn apply(&self, md: &Value) {
        let name = md["metadata"]["name"].as_str().unwrap().to_string();
        self.mdeps().patch(&name, &PatchParams::apply("kubectl").force(), &Patch::Apply(md)).await.unwrap();
    }

    async fn status(&self, name: &str) -> Value {
        self.mdeps().get(name).await.map(|md| serde_json::to_value(md.status).unwrap()).unwrap_or(Value::Null)
    }

    /// Waits until `check` on the status returns something; panics with diagnostics on timeout
    /// and whenever `forbid` says the status went somewhere it must not.
    async fn wait_status<T>(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(name).await;
            if let Some(v) = check(&status) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; status: {status:#}\n{}", self.diagnostics());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until Deployment `name` is gone. The operator stores the status that announces a
    /// canary's end before it deletes the canary (so a failed status write cannot bring it
    /// back), so a test that saw that status must allow the delete a moment to follow.
    async fn wait_deployment_gone(&self, name: &str, why: &str) {
        let deployments: Api<Deployment> = Api::default_namespaced(self.server.client());
        let deadline = Instant::now() + Duration::from_secs(15);
        while deployments.get_opt(name).await.unwrap().is_some() {
            if Instant::now() > deadline {
                panic!("Deployment {name} still exists 15 s later: {why}\n{}", self.diagnostics());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The main Service's address.
    async fn service_address(&self, name: &str) -> String {
        let services: Api<Service> = Api::default_namespaced(self.server.client());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(svc) = services.get(name).await
                && let Some(ip) = svc.spec.and_then(|s| s.cluster_ip)
            {
                return format!("{ip}:8080");
            }
            assert!(Instant::now() < deadline, "no Service {name}\n{}", self.diagnostics());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A ModelDeployment of `model` (a `trained` model name) with fast steps and analyses.
fn mdep(name: &str, model: &str, interval: &str) -> Value {
    json!({
        "apiVersion": "distillery.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "model": {"uri": format!("file:///trained/{model}"), "volumeClaim": "trained", "variant": "auto"},
            "replicas": 3,
            "server": {"threads": 1},
            "rollout": {
                "steps": [{"weight": 10, "pause": interval}, {"weight": 50, "pause": interval}, {"weight": 100, "pause": interval}],
                "trafficRouting": {"method": "replica-ratio"},
                "analysis": {
                    "interval": interval,
                    "goldenDataset": {"uri": "file:///datasets/golden.csv", "volumeClaim": "datasets",
                                      "textField": "text", "labelField": "category", "samples": GOLDEN_PER_RUN},
                    "maxAccuracyDrop": MAX_ACCURACY_DROP,
                    "minAgreement": MIN_AGREEMENT,
                    "maxErrorRate": 0.01,
                    "failureLimit": 2,
                },
            },
        },
    })
}

/// Golden inputs per analysis run; evidence accumulates over a rollout.
const GOLDEN_PER_RUN: u32 = 400;
/// The accuracy budget of the test rollouts (absolute).
const MAX_ACCURACY_DROP: f64 = 0.05;
/// The agreement floor of the test rollouts.
const MIN_AGREEMENT: f64 = 0.75;

/// One answer the background client got.
#[derive(Clone, Debug)]
struct Answer {
    at: Instant,
    status: u16,
    version: String,
    error: Option<String>,
}

/// A client that keeps calling the ModelDeployment's Service, a new connection per request (so
/// the Service's per-connection balancing shows the split), until stopped.
struct Background {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Answer>>,
}

/// Texts the background client sends, in turn: real reviews (the training side's), so that the
/// traffic has a realistic class mix.
fn traffic_texts() -> Vec<String> {
    let mut reader = csv::Reader::from_path(models().data.dir.join("train.csv")).unwrap();
    reader.records().take(500).map(|r| r.unwrap()[0].to_string()).collect()
}

impl Background {
    fn start(address: String, model: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let requests: Vec<String> = traffic_texts()
            .iter()
            .map(|text| {
                let body = json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}).to_string();
                format!(
                    "POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            })
            .collect();
        let task = tokio::spawn(async move {
            let mut answers = vec![];
            for request in requests.iter().cycle() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                answers.push(call(&address, request).await);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            answers
        });
        Self { stop, task }
    }

    async fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

async fn call(address: &str, request: &str) -> Answer {
    let at = Instant::now();
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&response).to_string();
        let status: u16 =
            text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(format!("no status: {text:?}"))?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let version =
            serde_json::from_str::<Value>(body).ok().and_then(|v| v["model_version"].as_str().map(String::from));
        Ok::<_, String>((status, version.unwrap_or_default()))
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok((status, version))) => Answer { at, status, version, error: None },
        Ok(Err(e)) => Answer { at, status: 0, version: String::new(), error: Some(e) },
        Err(_) => Answer { at, status: 0, version: String::new(), error: Some("timed out".into()) },
    }
}

/// Status samples taken while a rollout runs: (when, canary weight achieved, phase).
type Timeline = Arc<Mutex<Vec<(Instant, i64, String)>>>;

fn watch_status(h: &Harness, name: &str) -> (Timeline, tokio::task::JoinHandle<()>) {
    let timeline: Timeline = Arc::default();
    let api = h.mdeps();
    let name = name.to_string();
    let t = timeline.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(md) = api.get(&name).await {
                let s = serde_json::to_value(md.status).unwrap_or_default();
                let weight = s["canary"]["weight"].as_i64().unwrap_or(0);
                let phase = s["phase"].as_str().unwrap_or_default().to_string();
                t.lock().unwrap().push((Instant::now(), weight, phase));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (timeline, task)
}

/// Panics unless every answer the background client got `during` a scenario was a 200, naming
/// how many failed and the first few.
fn assert_no_failures(answers: &[Answer], during: &str) {
    let failed: Vec<String> = answers
        .iter()
        .filter(|a| a.status != 200)
        .map(|a| format!("{} {}", a.status, a.error.as_deref().unwrap_or_default()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during {during}: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
}

/// For every canary weight held at least 3 s, the share of answers the canary served, measured
/// away from the changes: (weight, answers, canary answers).
fn shares(timeline: &[(Instant, i64, String)], answers: &[Answer], canary_version: &str) -> Vec<(i64, usize, usize)> {
    let mut spans: Vec<(Instant, Instant, i64)> = vec![];
    for window in timeline.windows(2) {
        let (t, w, _) = &window[0];
        match spans.last_mut() {
            Some((_, end, weight)) if weight == w => *end = window[1].0,
            _ => spans.push((*t, window[1].0, *w)),
        }
    }
    spans
        .into_iter()
        .filter(|(start, end, _)| end.duration_since(*start) >= Duration::from_secs(3))
        .map(|(start, end, weight)| {
            let inside: Vec<&Answer> = answers
                .iter()
                .filter(|a| a.at >= start + Duration::from_millis(1500) && a.at + Duration::from_millis(500) <= end)
                .collect();
            let canary = inside.iter().filter(|a| a.version == canary_version).count();
            (weight, inside.len(), canary)
        })
        .collect()
}

fn version(digest: &str) -> String {
    digest.chars().take(12).collect()
}

/// Tolerance of the observed canary share against the weight achieved, in points: each share
/// is measured on at least 40 answers; per-connection round robin over ready pods makes it
/// nearly exact.
const SHARE_TOLERANCE: f64 = 12.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_steps_up_with_passing_analyses_and_is_promoted_without_a_failed_request() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await;
    let models = models();
    let name = "reviews";
    h.apply(&mdep(name, "base", "3s")).await;
    let base = models.digest("base");
    h.wait_status(name, "the first model to be Healthy", Duration::from_secs(120), |s| {
        (s["phase"] == "Healthy" && s["stable"]["readyReplicas"] == 3).then_some(())
    })
    .await;
    let status = h.status(name).await;
    assert_eq!(status["stable"]["modelDigest"], base.as_str(), "{status:#}");
    assert!(status.get("canary").is_none_or(Value::is_null), "the first model goes straight to stable: {status:#}");

    let address = h.service_address(name).await;
    let background = Background::start(address, name);
    let (timeline, poller) = watch_status(&h, name);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut good = mdep(name, "good", "3s");
    good["spec"]["replicas"] = json!(3);
    h.apply(&good).await;
    let good_digest = models.digest("good");
    let promoted = h
        .wait_status(name, "the good canary to be promoted", Duration::from_secs(240), |s| {
            assert_ne!(s["phase"], "RolledBack", "the good canary was rolled back: {s:#}");
            (s["phase"] == "Healthy"
                && s["stable"]["modelDigest"] == good_digest.as_str()
                && s["stable"]["readyReplicas"] == 3
                && s.get("canary").is_none_or(Value::is_null))
            .then(|| s.clone())
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    poller.abort();
    let answers = background.finish().await;
    let timeline = timeline.lock().unwrap().clone();

    // Zero failed requests over the whole rollout.
    assert_no_failures(&answers, "the good canary's rollout");
    // The canary's share of answers matched the weight achieved at each step.
    let measured = shares(&timeline, &answers, &version(&good_digest));
    eprintln!("canary weight achieved vs share of answers: {measured:?}");
    let stepped: Vec<i64> = measured.iter().map(|(w, _, _)| *w).filter(|w| *w > 0).collect();
    assert!(stepped.len() >= 2, "at least two canary weights held: {measured:?}");
    for (weight, n, canary) in &measured {
        if *n < 40 {
            continue;
        }
        let share = 100.0 * *canary as f64 / *n as f64;
        assert!(
            (share - *weight as f64).abs() <= SHARE_TOLERANCE,
            "weight {weight}%: canary served {share:.1}% of {n} answers"
        );
    }
    // Promoted: stable serves the new digest; the canary is gone; analyses were recorded.
    assert!(promoted.get("canary").is_none_or(Value::is_null), "{promoted:#}");
    let analysis = &promoted["lastAnalysis"];
    assert!(analysis["runs"]["passed"].as_u64().unwrap() >= 3, "an analysis passed at each step: {analysis:#}");
    assert_eq!(analysis["runs"]["failed"].as_u64().unwrap_or(0), 0, "{analysis:#}");
    h.wait_deployment_gone(&format!("{name}-canary"), "the canary's pods are gone").await;
    let after = answers.iter().rev().take(20).filter(|a| a.version == version(&good_digest)).count();
    assert_eq!(after, 20, "the last answers all come from the promoted model");
    eprintln!(
        "promoted after {} analyses; golden accuracy stable {:?} vs canary {:?}, agreement {:?}",
        analysis["run"], analysis["stableAccuracy"], analysis["canaryAccuracy"], analysis["agreement"]
    );
}

/// Rolls `bad` out over `base` and waits for the rollback; returns the final status and the
/// background client's answers.
async fn roll_out_bad(h: &Harness, name: &str, bad: &str, interval: &str) -> (Value, Vec<Answer>, Duration) {
    h.apply(&mdep(name, "base", interval)).await;
    h.wait_status(name, "the stable model to be Healthy", Duration::from_secs(120), |s| {
        (s["phase"] == "Healthy" && s["stable"]["readyReplicas"] == 3).then_some(())
    })
    .await;
    let background = Background::start(h.service_address(name).await, name);
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.apply(&mdep(name, bad, interval)).await;
    let bad_digest = models().digest(bad);
    // Time to safety, measured from the cluster's side: from the first failing analysis's due
    // time (in status) to the moment the main Service selects stable pods only.
    let services: Api<Service> = Api::default_namespaced(h.server.client());
    let mut weight_zero_at = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first_failure_seen: Option<(Instant, Value)> = None;
    let status = loop {
        let status = h.status(name).await;
        assert_ne!(
            status["stable"]["modelDigest"],
            bad_digest.as_str(),
            "the bad model reached stable: {status:#}\n{}",
            h.diagnostics()
        );
        if first_failure_seen.is_none() && status["lastAnalysis"]["verdict"] == "Failed" {
            first_failure_seen = Some((Instant::now(), status["lastAnalysis"].clone()));
        }
        if first_failure_seen.is_some() && weight_zero_at.is_none() {
            let svc = services.get(name).await.unwrap();
            let selects = svc.spec.and_then(|s| s.selector).unwrap_or_default();
            if selects.get("distillery.dev/track").map(String::as_str) == Some("stable") {
                weight_zero_at = Some(Instant::now());
            }
        }
        if status["phase"] == "RolledBack"
            && status.get("canary").is_none_or(Value::is_null)
            && weight_zero_at.is_some()
        {
            break status;
        }
        assert!(Instant::now() < deadline, "no rollback of {bad}; status: {status:#}\n{}", h.diagnostics());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let answers = background.finish().await;
    // The first failing analysis was due when its window ended: `firstFailureDue` in status, a
    // wall-clock time; convert with the offset between now and the harness's clock.
    let due = status["lastAnalysis"]["firstFailureDue"].as_str().expect("firstFailureDue").to_string();
    let due: k8s_openapi::jiff::Timestamp = due.parse().unwrap();
    let now_wall = k8s_openapi::jiff::Timestamp::now();
    let zero_ago = weight_zero_at.unwrap().elapsed();
    let zero_wall = now_wall - k8s_openapi::jiff::SignedDuration::try_from(zero_ago).unwrap();
    let safety = Duration::try_from(zero_wall.duration_since(due)).unwrap_or_default();
    (status, answers, safety)
}

/// The value of `metric` (a full sample name) on the operator's /metrics endpoint, whose address
/// the operator logs when it starts.
fn operator_metric(h: &Harness, metric: &str) -> Option<f64> {
    use std::io::Read;
    let log = std::fs::read_to_string(h.root.path().join("operator.log")).ok()?;
    let line = log.lines().find(|l| l.contains("serving /healthz"))?;
    // The log may be coloured: drop the escape sequences around field names.
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    let line = plain.as_str();
    // Text (`address=127.0.0.1:8080`) or JSON (`"address":"127.0.0.1:8080"`, the chart's format).
    let after = line.split("address").nth(1)?;
    let address: String = after
        .trim_start_matches(['=', '"', ':'])
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    let mut stream = std::net::TcpStream::connect(&address).ok()?;
    stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines().find(|l| l.starts_with(metric) && l[metric.len()..].starts_with(' '))?.rsplit(' ').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grossly_bad_canary_is_rolled_back_quickly_then_left_alone() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await;
    let name = "gross";
    let (status, answers, safety) = roll_out_bad(&h, name, "gross", "10s").await;
    let bad = models().digest("gross");
    eprintln!("time to safety (gross canary, interval 10s, failureLimit 2): {:.1}s", safety.as_secs_f64());
    assert!(safety < Duration::from_secs(60), "time to safety {safety:?}");
    assert_no_failures(&answers, "the gross canary's rollout");
    let rejected = &status["rejectedModel"];
    assert_eq!(rejected["modelDigest"], bad.as_str(), "{status:#}");
    let checks: Vec<&str> = rejected["failedChecks"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(
        checks.iter().any(|c| c.starts_with("accuracy FAILED")),
        "the failed checks name accuracy with figures: {checks:?}"
    );
    assert!(checks.iter().any(|c| c.starts_with("agreement FAILED")), "{checks:?}");
    assert_eq!(status["stable"]["modelDigest"], models().digest("base").as_str());
    let rolled_back = distillery_crds::conditions::find(
        &serde_json::from_value::<Vec<_>>(status["conditions"].clone()).unwrap(),
        "RolledBack",
    )
    .cloned()
    .unwrap();
    assert_eq!((rolled_back.status.as_str(), rolled_back.reason.as_str()), ("True", "AccuracyDrift"));

    // Settled: nothing is written by anyone while the spec still names the rejected model, and
    // no canary comes back.
    let writes = h.server.writes_in_quiet_period(Duration::from_secs(3), Duration::from_secs(8)).await;
    assert!(writes.is_empty(), "writes during the quiet period: {writes:?}");
    let deployments: Api<Deployment> = Api::default_namespaced(h.server.client());
    assert!(
        deployments.get_opt(&format!("{name}-canary")).await.unwrap().is_none(),
        "the rejected model is not tried again"
    );
    // The operator recorded the same figure (its own clock: within a second or two of ours).
    let recorded =
        operator_metric(&h, "distillery_operator_time_to_safety_seconds_sum").expect("the operator's metric");
    let count = operator_metric(&h, "distillery_operator_time_to_safety_seconds_count").unwrap_or(0.0);
    eprintln!("the operator's time_to_safety_seconds: sum {recorded:.2} over {count} rollbacks");
    assert_eq!(count, 1.0);
    assert!(
        (recorded - safety.as_secs_f64()).abs() < 2.5,
        "operator {recorded:.2}s vs measured {:.2}s",
        safety.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtly_worse_canary_is_rolled_back_too() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await;
    let (status, answers, safety) = roll_out_bad(&h, "subtle", "subtle", "3s").await;
    let analysis = &status["lastAnalysis"];
    eprintln!(
        "subtle canary rolled back after {} runs ({} samples): stable {:?} vs canary {:?}, drop bounds [{:?}, {:?}], agreement {:?}; time to safety {:.1}s",
        analysis["run"],
        analysis["samples"],
        analysis["stableAccuracy"],
        analysis["canaryAccuracy"],
        analysis["accuracyDropLower"],
        analysis["accuracyDropUpper"],
        analysis["agreement"],
        safety.as_secs_f64()
    );
    assert_no_failures(&answers, "the subtle rollout");
    assert_eq!(status["rejectedModel"]["modelDigest"], models().digest("subtle").as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitops_revert_stops_the_canary_without_analysis() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await;
    let name = "revert";
    // Long pauses: the canary would sit at 50% for a minute.
    h.apply(&mdep(name, "base", "3s")).await;
    h.wait_status(name, "Healthy", Duration::from_secs(120), |s| (s["phase"] == "Healthy").then_some(())).await;
    let background = Background::start(h.service_address(name).await, name);
    let mut good = mdep(name, "good", "3s");
    good["spec"]["rollout"]["steps"] =
        json!([{"weight": 10, "pause": "3s"}, {"weight": 50, "pause": "60s"}, {"weight": 100}]);
    h.apply(&good).await;
    h.wait_status(name, "the canary at 50%", Duration::from_secs(120), |s| (s["canary"]["weight"] == 50).then_some(()))
        .await;
    let runs_before = h.status(name).await["lastAnalysis"]["run"].as_u64().unwrap_or(0);
    h.apply(&mdep(name, "base", "3s")).await;
    let status = h
        .wait_status(name, "the revert", Duration::from_secs(60), |s| {
            (s["phase"] == "Healthy" && s.get("canary").is_none_or(Value::is_null)).then(|| s.clone())
        })
        .await;
    let answers = background.finish().await;
    assert_no_failures(&answers, "the revert");
    assert_eq!(status["stable"]["modelDigest"], models().digest("base").as_str());
    assert!(status.get("rejectedModel").is_none_or(Value::is_null), "a revert rejects nothing: {status:#}");
    assert!(
        status.get("lastAnalysis").is_none_or(|a| a.is_null() || a["run"].as_u64().unwrap_or(0) <= runs_before + 1)
    );
    h.wait_deployment_gone(&format!("{name}-canary"), "the revert removes the canary").await;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::default_namespaced(h.server.client());
    let analysis_jobs =
        jobs.list(&ListParams::default().labels("distillery.dev/purpose=analysis")).await.unwrap().items;
    assert!(
        analysis_jobs.is_empty(),
        "no analysis after the revert: {:?}",
        analysis_jobs.iter().map(kube::ResourceExt::name_any).collect::<Vec<_>>()
    );
}

async fn annotate(h: &Harness, name: &str, key: &str) {
    let patch = json!({"metadata": {"annotations": {key: "true"}}});
    h.mdeps().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

fn annotations(md: &ModelDeployment) -> BTreeMap<String, String> {
    md.metadata.annotations.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_rollback_a_failing_canary_pauses_for_abort_retry_and_promote() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await;
    let name = "manual";
    h.apply(&mdep(name, "base", "3s")).await;
    h.wait_status(name, "Healthy", Duration::from_secs(120), |s| (s["phase"] == "Healthy").then_some(())).await;
    let background = Background::start(h.service_address(name).await, name);
    let mut gross = mdep(name, "gross", "3s");
    gross["spec"]["autoRollback"] = json!(false);
    h.apply(&gross).await;
    let paused = h
        .wait_status(name, "the failing canary to pause", Duration::from_secs(180), |s| {
            assert_ne!(s["phase"], "RolledBack", "autoRollback: false must not roll back: {s:#}");
            (s["phase"] == "Paused").then(|| s.clone())
        })
        .await;
    let weight = paused["canary"]["weight"].clone();
    assert!(weight.as_i64().unwrap() > 0, "documented: a paused canary keeps its weight: {paused:#}");
    assert_eq!(paused["stable"]["modelDigest"], models().digest("base").as_str(), "stable serves throughout");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let still = h.status(name).await;
    assert_eq!(
        (&still["phase"], &still["canary"]["weight"]),
        (&json!("Paused"), &weight),
        "nothing moves while paused"
    );

    // Abort: weight 0, the canary's pods go, the model is rejected; the annotation is cleared.
    annotate(&h, name, "distillery.dev/abort").await;
    let aborted = h
        .wait_status(name, "the abort", Duration::from_secs(60), |s| {
            (s["phase"] == "RolledBack" && s.get("canary").is_none_or(Value::is_null)).then(|| s.clone())
        })
        .await;
    assert!(aborted["rejectedModel"]["reason"].as_str().unwrap().contains("abort"), "{aborted:#}");
    assert!(
        !annotations(&h.mdeps().get(name).await.unwrap()).contains_key("distillery.dev/abort"),
        "abort is cleared when done"
    );

    // Retry: the rejected model goes out again, fails again, pauses again; promote makes it stable.
    annotate(&h, name, "distillery.dev/retry").await;
    h.wait_status(name, "the retried canary to pause again", Duration::from_secs(180), |s| {
        (s["phase"] == "Paused" && s["canary"]["modelDigest"] == models().digest("gross").as_str()).then_some(())
    })
    .await;
    annotate(&h, name, "distillery.dev/promote").await;
    h.wait_status(name, "the promotion", Duration::from_secs(120), |s| {
        (s["phase"] == "Healthy"
            && s["stable"]["modelDigest"] == models().digest("gross").as_str()
            && s.get("canary").is_none_or(Value::is_null))
        .then_some(())
    })
    .await;
    let md = h.mdeps().get(name).await.unwrap();
    for key in ["distillery.dev/retry", "distillery.dev/promote"] {
        assert!(!annotations(&md).contains_key(key), "{key} is cleared when done");
    }
    let answers = background.finish().await;
    assert_no_failures(&answers, "the paused rollout, abort, retry and promote");
}

fn condition(status: &Value, type_: &str) -> Option<(String, String, String)> {
    status["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        (
            c["status"].as_str().unwrap_or_default().into(),
            c["reason"].as_str().unwrap_or_default().into(),
            c["message"].as_str().unwrap_or_default().into(),
        )
    })
}

async fn events_for(h: &Harness, name: &str) -> Vec<(String, String)> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::default_namespaced(h.server.client());
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unready_or_invalid_inputs_get_a_condition_and_an_event_and_no_hot_loop() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await;

    // A missing DistillationJob: ModelReady=False naming it; nothing is created.
    let mut missing = mdep("missing", "base", "3s");
    missing["spec"]["model"] = json!({"distillationJobRef": {"name": "nope"}});
    h.apply(&missing).await;
    let status = h
        .wait_status("missing", "ModelReady=False", Duration::from_secs(30), |s| {
            condition(s, "ModelReady").filter(|c| c.0 == "False").map(|_| s.clone())
        })
        .await;
    let (_, reason, message) = condition(&status, "ModelReady").unwrap();
    assert_eq!(reason, "ReferenceNotFound");
    assert!(message.contains("\"nope\""), "{message}");
    assert!(events_for(&h, "missing").await.iter().any(|(r, n)| r == "ReferenceNotFound" && n.contains("nope")));

    // A served stable model, then an artifact whose file no longer matches its manifest.
    h.apply(&mdep("tampered", "base", "3s")).await;
    h.wait_status("tampered", "Healthy", Duration::from_secs(120), |s| (s["phase"] == "Healthy").then_some(())).await;
    let copy = models().dir.join("tampered-copy");
    if !copy.exists() {
        std::fs::create_dir_all(&copy).unwrap();
        for entry in std::fs::read_dir(models().dir.join("base")).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
            }
        }
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(copy.join("distillery.json")).unwrap()).unwrap();
        let served = manifest["servedVariant"].as_str().unwrap_or("fp32");
        let file = copy.join(manifest["variants"][served]["file"].as_str().unwrap());
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
    }
    h.apply(&mdep("tampered", "tampered-copy", "3s")).await;
    let status = h
        .wait_status("tampered", "ModelReady=False ArtifactInvalid", Duration::from_secs(60), |s| {
            condition(s, "ModelReady").filter(|c| c.1 == "ArtifactInvalid").map(|_| s.clone())
        })
        .await;
    assert!(condition(&status, "ModelReady").unwrap().2.contains("sha256"), "{status:#}");
    assert_eq!(status["stable"]["modelDigest"], models().digest("base").as_str(), "stable untouched");
    assert_eq!(status["phase"], "Degraded");
    assert!(events_for(&h, "tampered").await.iter().any(|(r, _)| r == "ArtifactInvalid"));

    // An unreadable golden set: every analysis is an Error, counted apart; nothing is promoted.
    let mut unreadable = mdep("golden", "base", "3s");
    h.apply(&unreadable).await;
    h.wait_status("golden", "Healthy", Duration::from_secs(120), |s| (s["phase"] == "Healthy").then_some(())).await;
    unreadable["spec"]["model"]["uri"] = json!("file:///trained/good");
    unreadable["spec"]["rollout"]["analysis"]["goldenDataset"]["uri"] = json!("file:///datasets/no-such-golden.csv");
    h.apply(&unreadable).await;
    let status = h
        .wait_status("golden", "two Error analyses", Duration::from_secs(120), |s| {
            (s["lastAnalysis"]["runs"]["error"].as_u64().unwrap_or(0) >= 2).then(|| s.clone())
        })
        .await;
    assert_eq!(status["lastAnalysis"]["verdict"], "Error");
    assert!(status["lastAnalysis"]["message"].as_str().unwrap().contains("no-such-golden"), "{status:#}");
    assert_eq!(status["phase"], "Progressing", "an Error neither promotes nor rolls back");
    assert_eq!(status["currentStep"], 0);
    assert_eq!(status["stable"]["modelDigest"], models().digest("base").as_str());
    let (passing, reason, _) = condition(&status, "AnalysisPassing").unwrap();
    assert_eq!((passing.as_str(), reason.as_str()), ("False", "AnalysisError"));

    // A missing HTTPRoute: a condition and an Event naming it, stable serving, no hot loop.
    let mut routed = mdep("routed", "base", "3s");
    routed["spec"]["rollout"]["trafficRouting"] = json!({"method": "gateway-api", "httpRoute": "no-such-route"});
    h.apply(&routed).await;
    let status = h
        .wait_status("routed", "a condition naming the route", Duration::from_secs(120), |s| {
            (s["phase"] == "Healthy" && condition(s, "Progressing").is_some_and(|c| c.2.contains("no-such-route")))
                .then(|| s.clone())
        })
        .await;
    assert!(
        events_for(&h, "routed").await.iter().any(|(r, n)| r == "RoutingUnavailable" && n.contains("no-such-route")),
        "{status:#}"
    );

    // Settled: only the golden-set rollout keeps analysing (its Jobs); the others write nothing.
    h.mdeps().delete("golden", &Default::default()).await.unwrap();
    let writes = h.server.writes_in_quiet_period(Duration::from_secs(1), Duration::from_secs(6)).await;
    let ours: Vec<_> = writes.iter().filter(|w| !format!("{w:?}").contains("golden")).collect();
    assert!(ours.is_empty(), "writes while waiting on inputs: {ours:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_continues_the_rollout_at_the_same_step() {
    let _serial = SERIAL.lock().await;
    let mut h = Harness::start().await;
    let name = "restart";
    h.apply(&mdep(name, "base", "3s")).await;
    h.wait_status(name, "Healthy", Duration::from_secs(120), |s| (s["phase"] == "Healthy").then_some(())).await;
    let mut good = mdep(name, "good", "3s");
    good["spec"]["rollout"]["steps"] =
        json!([{"weight": 10, "pause": "3s"}, {"weight": 50, "pause": "8s"}, {"weight": 100, "pause": "3s"}]);
    h.apply(&good).await;
    let at =
        h.wait_status(name, "step 2", Duration::from_secs(120), |s| (s["currentStep"] == 1).then(|| s.clone())).await;
    let revision = at["canary"]["revision"].clone();
    drop(h.operator.take());
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.operator = Some(OperatorProcess::start_as(&h.identity, &h.root.path().join("operator-2.log"), OPERATOR_FLAGS));
    let after = h
        .wait_status(name, "the new operator's first status", Duration::from_secs(30), |s| {
            s["currentStep"].as_u64().filter(|step| *step >= 1).map(|_| s.clone())
        })
        .await;
    assert_eq!(after["canary"]["revision"], revision, "same canary, not a new rollout: {after:#}");
    h.wait_status(name, "the promotion", Duration::from_secs(180), |s| {
        (s["phase"] == "Healthy" && s["stable"]["modelDigest"] == models().digest("good").as_str()).then_some(())
    })
    .await;
    h.wait_deployment_gone(&format!("{name}-canary"), "the promotion removes the canary").await;
    let deployments: Api<Deployment> = Api::default_namespaced(h.server.client());
    let names: Vec<String> =
        deployments.list(&ListParams::default()).await.unwrap().items.iter().map(kube::ResourceExt::name_any).collect();
    assert_eq!(names, [format!("{name}-stable")], "one Deployment per track, the canary's gone");
    let services: Api<Service> = Api::default_namespaced(h.server.client());
    let mut names: Vec<String> =
        services.list(&ListParams::default()).await.unwrap().items.iter().map(kube::ResourceExt::name_any).collect();
    names.sort();
    assert_eq!(names, [name.to_string(), format!("{name}-canary"), format!("{name}-stable")]);
}

/// Two rollouts of ModelDeployment `name`: `base` to Healthy, then the good canary promoted,
/// then the gross one rolled back, under a background client; returns the final status and the
/// client's answers. Panics if the good one is rolled back or the gross one reaches stable.
async fn promote_good_then_roll_back_gross(h: &Harness, name: &str) -> (Value, Vec<Answer>) {
    let models = models();
    h.apply(&mdep(name, "base", "3s")).await;
    h.wait_status(name, "the first model to be Healthy", Duration::from_secs(180), |s| {
        (s["phase"] == "Healthy" && s["stable"]["readyReplicas"] == 3).then_some(())
    })
    .await;
    let background = Background::start(h.service_address(name).await, name);
    h.apply(&mdep(name, "good", "3s")).await;
    let good = models.digest("good");
    h.wait_status(name, "the good canary to be promoted", Duration::from_secs(300), |s| {
        assert_ne!(s["phase"], "RolledBack", "the good canary was rolled back: {s:#}");
        (s["phase"] == "Healthy"
            && s["stable"]["modelDigest"] == good.as_str()
            && s["stable"]["readyReplicas"] == 3
            && s.get("canary").is_none_or(Value::is_null))
        .then_some(())
    })
    .await;
    h.apply(&mdep(name, "gross", "3s")).await;
    let gross = models.digest("gross");
    let status = h
        .wait_status(name, "the gross canary to be rolled back", Duration::from_secs(300), |s| {
            assert_ne!(s["stable"]["modelDigest"], gross.as_str(), "the gross model reached stable: {s:#}");
            (s["phase"] == "RolledBack" && s.get("canary").is_none_or(Value::is_null)).then(|| s.clone())
        })
        .await;
    (status, background.finish().await)
}

/// The operator under API faults through two rollouts: one in three of its patches gets a 500,
/// one in five a 409, one in two of its creates a 500, and every open watch is dropped every two
/// seconds. The good canary is still promoted and the gross one still rolled back (the same ends
/// as without faults), the background client sees no failed request, no Deployment, Service or
/// analysis Job is made twice, and once the faults stop nobody writes. The operator's request
/// rate is compared with the same two rollouts run first without faults, in the same cluster: a
/// ModelDeployment's reconciles read several children each, so what "no hot loop" means is set
/// by its own calm rate, not by a fixed figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_api_faults_a_good_canary_is_promoted_and_a_bad_one_rolled_back_without_duplicates_or_a_hot_loop() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await;
    let models = models();
    let operator = h.identity.token.clone();

    let started = Instant::now();
    promote_good_then_roll_back_gross(&h, "calm").await;
    let calm = h.server.request_profile(&operator, started, started.elapsed());
    eprintln!("rollouts without faults: {calm}");
    let writes = h.server.writes_in_quiet_period(Duration::from_secs(3), Duration::from_secs(5)).await;
    assert!(writes.is_empty(), "writes after the calm rollouts: {writes:?}");

    let streams = h.server.watch_streams(&operator).await;
    h.server.inject_write_faults(&operator);
    let started = Instant::now();
    let dropper = h.server.drop_watches_every(Duration::from_secs(2));
    let name = "faulty";
    let (status, answers) = promote_good_then_roll_back_gross(&h, name).await;
    let run_time = started.elapsed();
    let drops = dropper.rounds();
    drop(dropper);
    h.server.clear_faults();
    let faulty = h.server.request_profile(&operator, started, run_time);
    eprintln!("rollouts under faults: {faulty}; {drops} drops of {streams} watch streams");

    // The same ends as without faults.
    assert_no_failures(&answers, "two rollouts under API faults");
    assert_eq!(status["stable"]["modelDigest"], models.digest("good").as_str(), "{status:#}");
    assert_eq!(status["rejectedModel"]["modelDigest"], models.digest("gross").as_str(), "{status:#}");
    let (rolled_back, reason, _) = condition(&status, "RolledBack").expect("a RolledBack condition");
    assert_eq!((rolled_back.as_str(), reason.as_str()), ("True", "AccuracyDrift"), "{status:#}");
    let deployments: Api<Deployment> = Api::default_namespaced(h.server.client());
    let mut names: Vec<String> = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    names.sort();
    assert_eq!(names, ["calm-stable", "faulty-stable"], "only the stable Deployments are left");
    // Each child made once — a canary's Deployment once per rollout, so twice for each
    // ModelDeployment — and each analysis Job once (a child deleted and made again would show).
    let again: Vec<(String, usize)> = h
        .server
        .created_more_than_once()
        .into_iter()
        .map(|(key, n)| (format!("{}/{}", key.resource, key.name), n))
        .collect();
    let canaries = [("deployments.apps/calm-canary".to_string(), 2), ("deployments.apps/faulty-canary".to_string(), 2)];
    assert_eq!(again, canaries, "created more than once");

    // Bounded: watches reopened once per drop, and the other requests — retries included — at
    // most twice the calm run's rate, in total and in the busiest second.
    assert!(faulty.count("patch") >= 10, "too few patches for the faults to have been met: {faulty}");
    faulty.assert_bounded_against(&calm, drops, streams);

    // Quiet once the faults stop: the spec still names the rejected model, and nothing is tried.
    let writes = h.server.writes_in_quiet_period(Duration::from_secs(3), Duration::from_secs(6)).await;
    assert!(writes.is_empty(), "writes during the quiet period: {writes:?}");
}

fn gateway_api(h: &Harness, kind: &str, plural: &str) -> Api<kube::api::DynamicObject> {
    let resource = kube::api::ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::namespaced_with(h.server.client(), "default", &resource)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_behind_a_gateway_gets_exact_weights_from_the_httproute() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start_with(true).await;
    let name = "routed";
    let gateways = gateway_api(&h, "Gateway", "gateways");
    let routes = gateway_api(&h, "HTTPRoute", "httproutes");
    let gateway = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "public", "namespace": "default"},
        "spec": {"gatewayClassName": "distillery-sim", "listeners": [{"name": "http", "port": 8090, "protocol": "HTTP"}]}});
    gateways.patch("public", &PatchParams::apply("kubectl"), &Patch::Apply(&gateway)).await.unwrap();
    // The user's route: their hostnames and matches; the operator only sets backendRefs.
    let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "reviews-route", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "public"}],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                            "backendRefs": [{"name": format!("{name}-stable"), "port": 8080}]}]}});
    routes.patch("reviews-route", &PatchParams::apply("kubectl"), &Patch::Apply(&route)).await.unwrap();
    let mut md = mdep(name, "base", "3s");
    md["spec"]["replicas"] = json!(1);
    md["spec"]["rollout"]["trafficRouting"] = json!({"method": "gateway-api", "httpRoute": "reviews-route"});
    h.apply(&md).await;
    h.wait_status(name, "Healthy", Duration::from_secs(120), |s| (s["phase"] == "Healthy").then_some(())).await;
    let address = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let g = gateways.get("public").await.unwrap();
            let v = serde_json::to_value(&g).unwrap();
            if let Some(ip) = v["status"]["addresses"][0]["value"].as_str() {
                break format!("{ip}:8090");
            }
            assert!(Instant::now() < deadline, "the gateway has no address");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let background = Background::start(address, name);
    let (timeline, poller) = watch_status(&h, name);
    tokio::time::sleep(Duration::from_secs(2)).await;
    md["spec"]["model"]["uri"] = json!("file:///trained/good");
    h.apply(&md).await;
    let good = models().digest("good");
    h.wait_status(name, "the promotion", Duration::from_secs(240), |s| {
        assert_ne!(s["phase"], "RolledBack", "the good canary was rolled back: {s:#}");
        (s["phase"] == "Healthy"
            && s["stable"]["modelDigest"] == good.as_str()
            && s.get("canary").is_none_or(Value::is_null))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    poller.abort();
    let answers = background.finish().await;
    assert_no_failures(&answers, "the gateway rollout");
    let measured = shares(&timeline.lock().unwrap(), &answers, &version(&good));
    eprintln!("gateway-api: canary weight vs share of answers: {measured:?}");
    let weights: Vec<i64> = measured.iter().map(|(w, _, _)| *w).collect();
    assert!(weights.contains(&10) && weights.contains(&50), "exact step weights held: {measured:?}");
    for (weight, n, canary) in &measured {
        if *n >= 40 {
            let share = 100.0 * *canary as f64 / *n as f64;
            assert!(
                (share - *weight as f64).abs() <= SHARE_TOLERANCE,
                "weight {weight}%: canary served {share:.1}% of {n}"
            );
        }
    }
    // The user's own fields of the route were kept.
    let route = serde_json::to_value(routes.get("reviews-route").await.unwrap()).unwrap();
    assert_eq!(route["spec"]["rules"][0]["matches"][0]["path"]["value"], "/v2");
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["weight"], 100, "{route:#}");
}

/// More seeds of the good canary, for the false-rollback count: each one is a different digest
/// within the accuracy budget, and each is rolled out over the one before (so every rollout is
/// a good canary judged against a good stable). Not run by default: it trains five more models
/// and rolls out five times (about ten minutes on 2 cores). Run it with
/// `scripts/test.sh -p distillery-tests --test rollout -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "trains five more models: run with --ignored for the false-rollback count"]
async fn good_canaries_of_five_more_seeds_are_never_rolled_back() {
    const SEEDS: std::ops::RangeInclusive<u64> = 2..=6;
    let _serial = SERIAL.lock().await;
    let models = models();
    let train = format!("file://{}", models.data.dir.join("train.csv").display());
    for seed in SEEDS {
        train_model(&models.dir, &format!("good-{seed}"), &train, seed, BASE_EXAMPLES);
    }
    let h = Harness::start().await;
    let name = "seeds";
    h.apply(&mdep(name, "good", "3s")).await;
    h.wait_status(name, "the first model to be Healthy", Duration::from_secs(120), |s| {
        (s["phase"] == "Healthy" && s["stable"]["readyReplicas"] == 3).then_some(())
    })
    .await;
    let mut outcomes = Vec::new();
    for seed in SEEDS {
        let model = format!("good-{seed}");
        let digest = models.digest(&model);
        h.apply(&mdep(name, &model, "3s")).await;
        let status = h
            .wait_status(name, "the canary's verdict", Duration::from_secs(240), |s| {
                let promoted = s["phase"] == "Healthy"
                    && s["stable"]["modelDigest"] == digest.as_str()
                    && s.get("canary").is_none_or(Value::is_null);
                (promoted || s["phase"] == "RolledBack").then(|| s.clone())
            })
            .await;
        let analysis = &status["lastAnalysis"];
        eprintln!(
            "seed {seed}: {} after {} analyses (passed {}, failed {}); golden accuracy stable {} vs canary {}",
            status["phase"],
            analysis["run"],
            analysis["runs"]["passed"],
            analysis["runs"]["failed"],
            analysis["stableAccuracy"],
            analysis["canaryAccuracy"]
        );
        outcomes.push((seed, status["phase"].as_str().unwrap_or_default().to_string()));
    }
    let rolled_back: Vec<_> = outcomes.iter().filter(|(_, phase)| phase == "RolledBack").collect();
    eprintln!("false rollbacks: {} of {} good canaries", rolled_back.len(), outcomes.len());
    assert!(rolled_back.is_empty(), "good canaries rolled back: {rolled_back:?}");
}

// ---------------------------------------------------------------------------------------------
// Benchmarks: the operator runs them against the live tracks and the same trained models.

fn benches(h: &Harness) -> Api<distillery_crds::Benchmark> {
    Api::default_namespaced(h.server.client())
}

async fn bench_status(h: &Harness, name: &str) -> Value {
    benches(h).get(name).await.map(|b| serde_json::to_value(b.status).unwrap()).unwrap_or(Value::Null)
}

async fn wait_bench<T>(
    h: &Harness,
    name: &str,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let status = bench_status(h, name).await;
        if let Some(v) = check(&status) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; status: {status:#}\n{}", h.diagnostics());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A Benchmark of `targets` on the base model's held-out split, 300 requests at concurrency 4.
fn benchmark(name: &str, targets: Value) -> Value {
    json!({
        "apiVersion": "distillery.dev/v1alpha1", "kind": "Benchmark",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "targets": targets,
            "dataset": {"uri": "file:///datasets/base-held-out.csv", "volumeClaim": "datasets"},
            "load": {"concurrency": 4, "requests": 300, "warmupRequests": 20},
            "reportUri": format!("file:///artifacts/reports/{name}"),
            "reportVolumeClaim": "artifacts",
        }
    })
}

async fn apply_bench(h: &Harness, doc: &Value) {
    let name = doc["metadata"]["name"].as_str().unwrap();
    benches(h).patch(name, &PatchParams::apply("kubectl").force(), &Patch::Apply(doc)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benchmark_compares_the_live_stable_track_with_fp32_and_int8_and_its_report_renders() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await;
    let models = models();
    // The inputs: the base model's held-out split, which its manifest's accuracies are on.
    let out = std::process::Command::new(workspace_binary("distillery-worker"))
        .args(["held-out", "-a"])
        .arg(models.dir.join("base"))
        .arg("-o")
        .arg(models.data.dir.join("base-held-out.csv"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A target that does not exist: Pending, a condition naming it, no Job, no hot loop.
    let waiting = benchmark("waits", json!([{"name": "live", "deployment": {"name": "nowhere"}}]));
    apply_bench(&h, &waiting).await;
    let status = wait_bench(&h, "waits", "a condition naming the missing target", Duration::from_secs(30), |s| {
        condition(s, "Progressing").filter(|c| c.1 == "TargetNotFound").map(|_| s.clone())
    })
    .await;
    assert_eq!(status["phase"], "Pending", "{status:#}");
    assert!(condition(&status, "Progressing").unwrap().2.contains("nowhere"), "{status:#}");
    let writes = h.server.writes_in_quiet_period(Duration::from_secs(1), Duration::from_secs(5)).await;
    assert!(writes.iter().all(|w| !format!("{w:?}").contains("waits")), "writes while waiting: {writes:?}");
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::default_namespaced(h.server.client());
    assert!(jobs.list(&ListParams::default()).await.unwrap().items.is_empty(), "no Job while a target is missing");

    // The live stable track against the base model's fp32 and int8 files.
    let mut live = mdep("live", "base", "3s");
    live["spec"]["replicas"] = json!(2);
    h.apply(&live).await;
    h.wait_status("live", "Healthy", Duration::from_secs(120), |s| (s["phase"] == "Healthy").then_some(())).await;
    let artifact = |variant: &str| json!({"uri": "file:///trained/base", "volumeClaim": "trained", "variant": variant});
    let compare = benchmark(
        "compare",
        json!([
            {"name": "live-stable", "deployment": {"name": "live", "track": "stable"}},
            {"name": "base-fp32", "artifact": artifact("fp32")},
            {"name": "base-int8", "artifact": artifact("int8")},
        ]),
    );
    apply_bench(&h, &compare).await;
    let status = wait_bench(&h, "compare", "the benchmark to finish", Duration::from_secs(300), |s| {
        assert_ne!(s["phase"], "Failed", "{s:#}\n{}", h.diagnostics());
        (s["phase"] == "Succeeded").then(|| s.clone())
    })
    .await;
    let results = status["results"].as_array().unwrap();
    let names: Vec<&str> = results.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["live-stable", "base-fp32", "base-int8"], "spec order: {status:#}");
    for r in results {
        assert_eq!(r["requests"], 300, "{r:#}");
        for figure in ["accuracy", "robustAccuracy", "p50Ms", "p95Ms", "p99Ms", "throughput", "errorRate"] {
            assert!(r[figure].as_f64().is_some_and(f64::is_finite), "{figure} of {r:#}");
        }
        assert!(r["cpuSecondsPer1kRequests"].as_f64().is_some_and(|c| c > 0.0), "{r:#}");
        assert!(r["peakMemoryBytes"].as_u64().is_some_and(|b| b > 10 << 20), "{r:#}");
        assert_eq!(r["errorRate"], 0.0, "{r:#}");
    }
    assert!(results[0].get("coldStartMs").is_none(), "a live track has no cold start");
    assert!(results[1..].iter().all(|r| r["coldStartMs"].as_f64().is_some_and(|c| c > 0.0)));
    assert!(results[1..].iter().all(|r| r["accuracyVsFirst"]["low"].is_number()));
    // The stable track serves the base model's auto variant: fp32 or int8, the same answers as
    // that file. And int8 through its server is the manifest's int8 accuracy.
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(models.dir.join("base/distillery.json")).unwrap()).unwrap();
    let int8 = manifest["variants"]["int8"]["accuracy"].as_f64().unwrap();
    let served = results[2]["accuracy"].as_f64().unwrap();
    assert!((served - int8).abs() <= 0.005, "int8 served {served} vs manifest {int8}");
    let auto = if manifest["servedVariant"] == "int8" { &results[2] } else { &results[1] };
    assert_eq!(results[0]["accuracy"], auto["accuracy"], "the live track answers as the file it serves");
    assert!(status["bestAccuracy"].is_string() && status["bestP99"].is_string(), "{status:#}");
    assert_eq!(condition(&status, "Complete").unwrap().0, "True");

    // The report, on the artifacts claim, renders with every chart.
    let report = h.root.path().join("claims/artifacts/reports/compare/report.html");
    assert_eq!(status["report"], "file:///artifacts/reports/compare");
    let rendered = distillery_tests::browser::render(&report).unwrap_or_else(|e| panic!("{e}"));
    for id in ["chart-latency", "chart-accuracy-p99", "chart-throughput", "chart-robustness"] {
        assert!(rendered.dom.contains(&format!("id=\"{id}\"")), "{id} in the DOM");
    }
    assert!(rendered.dom.matches("class=\"series\"").count() >= 9, "every target in the charts");
    assert!(rendered.non_background_share > 0.02, "{}", rendered.non_background_share);
    assert!(rendered.console_errors.is_empty(), "{:?}", rendered.console_errors);

    // Finished is finished: deleting its Job runs nothing again.
    let job = status["jobName"].as_str().unwrap().to_string();
    jobs.delete(&job, &Default::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(jobs.get_opt(&job).await.unwrap().is_none(), "not re-run");
    assert_eq!(bench_status(&h, "compare").await["phase"], "Succeeded");

    // A corrupt artifact: Failed with a message naming it, one pod, no retry.
    let copy = models.dir.join("corrupt-int8");
    if !copy.exists() {
        std::fs::create_dir_all(&copy).unwrap();
        for entry in std::fs::read_dir(models.dir.join("base")).unwrap().flatten() {
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
            }
        }
        let mut bytes = std::fs::read(copy.join("model.int8.onnx")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(copy.join("model.int8.onnx"), bytes).unwrap();
    }
    let broken = benchmark(
        "broken",
        json!([{"name": "int8", "artifact": {"uri": "file:///trained/corrupt-int8", "volumeClaim": "trained", "variant": "int8"}}]),
    );
    apply_bench(&h, &broken).await;
    let status =
        wait_bench(&h, "broken", "Failed", Duration::from_secs(120), |s| (s["phase"] == "Failed").then(|| s.clone()))
            .await;
    let (_, _, message) = condition(&status, "Failed").unwrap();
    assert!(message.contains("/trained/corrupt-int8") && message.contains("sha256"), "{message}");
    let writes = h.server.writes_in_quiet_period(Duration::from_secs(1), Duration::from_secs(5)).await;
    assert!(writes.iter().all(|w| !format!("{w:?}").contains("broken")), "writes after failing: {writes:?}");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::default_namespaced(h.server.client());
    let broken_pods =
        pods.list(&ListParams::default().labels("distillery.dev/benchmark=broken")).await.unwrap().items.len();
    assert_eq!(broken_pods, 1, "measured once, not retried");
}
