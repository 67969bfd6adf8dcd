//! The artifact store in a cluster: the small DistillationJob reads its teacher and data from a
//! real S3 server (moto, on loopback) and writes its artifact there, with credentials from a
//! Secret the operator only names; a ModelDeployment then serves that artifact from S3, and a
//! Benchmark compares its variants on inputs from S3, writing its report there.
//!
//! In front of moto sits a proxy that refuses every request not signed with the Secret's access
//! key (moto without auth accepts any key, so this is what shows the pods sign with the key the
//! kubelet took from the Secret) and answers one request in nine `503 SlowDown`, so the worker's
//! and the server's retries are exercised on the way.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use distillery_crds::{DistillationJob, ModelDeployment};
use distillery_store::{S3Settings, Store};
use distillery_tests::apiserver::ApiServer;
use distillery_tests::cluster::{Cluster, workspace_binary};
use distillery_tests::identity::install_chart_rbac;
use distillery_tests::operator::OperatorProcess;
use distillery_tests::s3::{FaultyProxy, Moto};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const BUCKET: &str = "distillery";
const ACCESS_KEY: &str = "AKIADISTILLERYTEST01";
const SECRET_KEY: &str = "distillery-test-secret-key";

/// Uploads every file under `dir` to `s3://BUCKET/<prefix>/…`.
async fn upload_dir(store: &Store, dir: &Path, prefix: &str) {
    for entry in walk(dir) {
        let relative = entry.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/");
        store.put_file(&entry, &format!("s3://{BUCKET}/{prefix}/{relative}")).await.unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    diagnostics: impl Fn() -> String,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", diagnostics());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distillation_job_reads_and_writes_s3_with_secret_credentials_and_a_deployment_and_a_benchmark_read_it_from_s3()
 {
    // The store: the teacher and the data uploaded as a platform team would keep them.
    let moto = Moto::start(false);
    moto.create_bucket(BUCKET);
    let proxy = FaultyProxy::start_requiring(&moto.endpoint, 9, Some(ACCESS_KEY)).await;
    let settings = S3Settings {
        endpoint: Some(proxy.endpoint.clone()),
        region: Some("us-east-1".into()),
        force_path_style: true,
        credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
    };
    let store = Store::new(settings.clone());
    let cache = distillery_tests::cache_dir();
    upload_dir(&store, &cache.join("teacher/all-minilm-l6-v2"), "models/all-minilm-l6-v2").await;
    let data = "data/rotten_tomatoes_corpus_full.csv.bz2";
    store.put_file(&cache.join(data), &format!("s3://{BUCKET}/{data}")).await.unwrap();

    // The cluster: no claim at all; the pods reach the store only through spec.s3.
    let server = ApiServer::start().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let images = HashMap::from([
        ("distillery-worker".to_string(), workspace_binary("distillery-worker")),
        ("distillery-server".to_string(), workspace_binary("distillery-server")),
    ]);
    let cluster = Cluster::start(&server, images, HashMap::new(), &root.path().join("cluster")).unwrap();
    server.install_crds("kubectl").await.unwrap();
    let identity = install_chart_rbac(&server, root.path(), |_| {}).await.unwrap();
    let log = root.path().join("operator.log");
    let _operator = OperatorProcess::start_as(&identity, &log, &[]);
    let diagnostics =
        || format!("operator log:\n{}\npods:\n{}", std::fs::read_to_string(&log).unwrap_or_default(), cluster.logs());

    let secrets: Api<Secret> = Api::default_namespaced(server.client());
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some("store-credentials".into()), ..Default::default() },
        data: Some(BTreeMap::from([
            ("access-key-id".to_string(), ByteString(ACCESS_KEY.as_bytes().to_vec())),
            ("secret-access-key".to_string(), ByteString(SECRET_KEY.as_bytes().to_vec())),
        ])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let s3 = json!({
        "endpoint": proxy.endpoint,
        "region": "us-east-1",
        "forcePathStyle": true,
        "accessKeyId": {"name": "store-credentials", "key": "access-key-id"},
        "secretAccessKey": {"name": "store-credentials", "key": "secret-access-key"},
    });

    // The small job, every location on S3.
    let name = "small";
    let mut job = distillery_tests::read_documents(&distillery_tests::small_job_spec()).unwrap().remove(0);
    job["metadata"] = json!({"name": name, "namespace": "default"});
    let spec = &mut job["spec"];
    spec["teacher"]["uri"] = json!(format!("s3://{BUCKET}/models/all-minilm-l6-v2"));
    spec["dataset"]["uri"] = json!(format!("s3://{BUCKET}/{data}"));
    spec["output"] = json!({"uri": format!("s3://{BUCKET}/artifacts/{name}")});
    spec["s3"] = s3.clone();
    spec["backoffLimit"] = json!(1);
    let djs: Api<DistillationJob> = Api::default_namespaced(server.client());
    djs.patch(name, &PatchParams::apply("kubectl"), &Patch::Apply(&job)).await.unwrap();
    let done = wait_for("the DistillationJob to succeed", Duration::from_secs(900), diagnostics, async || {
        let dj = djs.get(name).await.ok()?;
        let status = dj.status.clone()?;
        let phase = serde_json::to_value(status.phase).ok()?;
        assert_ne!(phase, "Failed", "{status:#?}\n{}", diagnostics());
        (phase == "Succeeded").then_some(dj)
    })
    .await;
    let result = done.status.unwrap().result.expect("status.result");
    let prefix = format!("s3://{BUCKET}/artifacts/{name}/");
    assert!(result.artifact_uri.starts_with(&prefix), "the artifact is on S3: {}", result.artifact_uri);

    // What the bucket holds is a complete, verifiable artifact whose manifest digest the status
    // names, and the student learned.
    let local = store.fetch_artifact(&result.artifact_uri, &root.path().join("fetched")).await.unwrap();
    let manifest_bytes = std::fs::read(local.join("distillery.json")).unwrap();
    assert_eq!(result.artifact_digest, distillery_crds::manifest::sha256(&manifest_bytes));
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    distillery_tests::assert_small_student_learned(&manifest["metrics"]);
    assert!(local.join("model.onnx").is_file(), "exported");

    // A ModelDeployment serves it from S3: the server pod downloads and verifies it.
    let md = json!({
        "apiVersion": "distillery.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"model": {"distillationJobRef": {"name": name}}, "replicas": 1, "s3": s3},
    });
    let mds: Api<ModelDeployment> = Api::default_namespaced(server.client());
    mds.patch("reviews", &PatchParams::apply("kubectl"), &Patch::Apply(&md)).await.unwrap();
    wait_for("the ModelDeployment to be Healthy", Duration::from_secs(240), diagnostics, async || {
        let status = serde_json::to_value(mds.get("reviews").await.ok()?.status?).ok()?;
        (status["phase"] == "Healthy" && status["stable"]["readyReplicas"] == 1).then_some(())
    })
    .await;
    let services: Api<Service> = Api::default_namespaced(server.client());
    let ip = services.get("reviews").await.unwrap().spec.unwrap().cluster_ip.unwrap();
    let body = json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a warm, funny and moving film"]}]});
    let address = format!("{ip}:8080");
    let answer = tokio::task::spawn_blocking(move || {
        distillery_tests::server_process::http(
            &address,
            "POST",
            "/v2/models/reviews/infer",
            body.to_string().as_bytes(),
            &[],
        )
    })
    .await
    .unwrap();
    let answer = answer.json();
    let label = answer["outputs"]
        .as_array()
        .and_then(|outputs| outputs.iter().find(|o| o["name"] == "label"))
        .and_then(|o| o["data"][0].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(["fresh", "rotten"].contains(&label.as_str()), "{answer:#}");

    // A Benchmark of the job's artifact (fp32 against what it serves), its inputs on S3 and its
    // report written beside the artifact on S3.
    let held_out = root.path().join("held-out.csv");
    let out = std::process::Command::new(workspace_binary("distillery-worker"))
        .args(["held-out", "--artifact"])
        .arg(&local)
        .arg("--output")
        .arg(&held_out)
        // The artifact's job.json names the dataset on S3 and the spec's s3 block; the
        // credentials come from the environment, as in a pod.
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("DISTILLERY_WORK_DIR", root.path().join("work"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    store.put_file(&held_out, &format!("s3://{BUCKET}/data/held-out.csv")).await.unwrap();
    let artifact = |variant: &str| json!({"distillationJobRef": {"name": name}, "variant": variant});
    let bench = json!({
        "apiVersion": "distillery.dev/v1alpha1", "kind": "Benchmark",
        "metadata": {"name": "compare", "namespace": "default"},
        "spec": {
            "targets": [{"name": "fp32", "artifact": artifact("fp32")}, {"name": "served", "artifact": artifact("auto")}],
            "dataset": {"uri": format!("s3://{BUCKET}/data/held-out.csv")},
            "load": {"concurrency": 2, "requests": 60, "warmupRequests": 10},
            "metrics": ["accuracy", "latency", "throughput", "errors", "cold-start"],
            "s3": s3,
        },
    });
    let benches: Api<distillery_crds::Benchmark> = Api::default_namespaced(server.client());
    benches.patch("compare", &PatchParams::apply("kubectl"), &Patch::Apply(&bench)).await.unwrap();
    let status = wait_for("the Benchmark to finish", Duration::from_secs(300), diagnostics, async || {
        let status = serde_json::to_value(benches.get("compare").await.ok()?.status?).ok()?;
        assert_ne!(status["phase"], "Failed", "{status:#}\n{}", diagnostics());
        (status["phase"] == "Succeeded").then_some(status)
    })
    .await;
    let results = status["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{status:#}");
    let accuracy = results[0]["accuracy"].as_f64().unwrap();
    let recorded = manifest["variants"]["fp32"]["accuracy"].as_f64().unwrap();
    assert!((accuracy - recorded).abs() < 0.005, "fp32 from S3 scores its manifest's {recorded}: {accuracy}");
    assert!(results.iter().all(|r| r["coldStartMs"].as_f64().is_some_and(|c| c > 0.0)), "{status:#}");
    let report = format!("s3://{BUCKET}/artifacts/{name}/benchmarks/compare");
    assert_eq!(status["report"], report.as_str(), "beside the artifact, on S3");
    let html = store.get(&format!("{report}/report.html")).await.unwrap();
    assert!(String::from_utf8_lossy(&html).contains("id=\"chart-latency\""), "the uploaded report has its charts");

    // Every request reached the store signed with the Secret's key, and the injected 503s were
    // retried (the job and the rollout succeeded through them).
    assert_eq!(proxy.refused.load(Ordering::SeqCst), 0, "a request not signed with the Secret's key");
    assert!(proxy.injected.load(Ordering::SeqCst) > 0, "no 503 was injected");
}
