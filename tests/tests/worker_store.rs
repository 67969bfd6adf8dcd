//! The worker's `s3://` paths against a real S3 server (moto's, on loopback), with the store
//! settings and credentials a pod gets from the operator (`DISTILLERY_S3_*`, `AWS_*`,
//! `DISTILLERY_WORK_DIR`): a DistillationJob's teacher, dataset and transfer set downloaded into
//! the work directory and read exactly as the same files on disk are; an s3:// output checked
//! before any training and published files-first; `inspect` on an s3:// artifact; a Benchmark
//! whose artifact, dataset and report are all in the bucket. No test here trains (the bench one
//! reuses the small artifact every server test shares).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use distillery_crds::DistillationJob;
use distillery_crds::benchmark::BenchmarkSummary;
use distillery_crds::manifest::{ArtifactManifest, MANIFEST_FILE, sha256};
use distillery_store::{S3Settings, Store, StoreError};
use distillery_tests::cluster::workspace_binary;
use distillery_tests::s3::Moto;
use distillery_worker::data::inputs;
use distillery_worker::pipeline::{self, DistillError, ErrorPolicy};
use distillery_worker::spec;
use distillery_worker::store::{Kind, Resolver};
use serde_json::{Value, json};

const KEY: &str = "test-key";
const SECRET: &str = "test-secret";

fn settings(endpoint: &str) -> S3Settings {
    S3Settings {
        endpoint: Some(endpoint.into()),
        region: Some("us-east-1".into()),
        force_path_style: true,
        credentials: Some((KEY.into(), SECRET.into())),
    }
}

/// The worker binary with the environment the operator gives a pod reaching `endpoint` with
/// `key`, downloading into `work`.
fn worker(endpoint: &str, key: &str, work: &Path) -> Command {
    let mut command = Command::new(workspace_binary("distillery-worker"));
    command
        .env("DISTILLERY_S3_ENDPOINT", endpoint)
        .env("DISTILLERY_S3_REGION", "us-east-1")
        .env("DISTILLERY_S3_FORCE_PATH_STYLE", "true")
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("DISTILLERY_WORK_DIR", work)
        .env("RAYON_NUM_THREADS", "1");
    for ambient in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_SESSION_TOKEN", "AWS_PROFILE"] {
        command.env_remove(ambient);
    }
    command
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir`, as (path relative to it, bytes), sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push((path.strip_prefix(root).unwrap().display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The small job's spec, as the worker reads it.
fn small_job() -> DistillationJob {
    spec::load(&distillery_tests::small_job_spec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_s3_teacher_dataset_and_transfer_set_are_read_as_the_same_files_on_disk_are() {
    let moto = Moto::start(false);
    for bucket in ["models", "data"] {
        moto.create_bucket(bucket);
    }
    let store = Store::new(settings(&moto.endpoint));
    let local = small_job();
    let teacher = PathBuf::from(local.spec.teacher.uri.strip_prefix("file://").unwrap());
    let dataset = PathBuf::from(local.spec.dataset.uri.strip_prefix("file://").unwrap());

    // A teacher directory: the real tokenizer and config, a nested file, and weights large enough
    // to go up in parts (the worker reads them only when it prepares the teacher).
    let source = tempfile::tempdir().unwrap();
    for name in ["config.json", "tokenizer.json"] {
        std::fs::copy(teacher.join(name), source.path().join(name)).unwrap();
    }
    std::fs::create_dir(source.path().join("1_Pooling")).unwrap();
    std::fs::write(source.path().join("1_Pooling/config.json"), br#"{"pooling_mode_mean_tokens": true}"#).unwrap();
    let weights: Vec<u8> = (0..17u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(source.path().join("model.safetensors"), &weights).unwrap();
    for (name, _) in files(source.path()) {
        store.put_file(&source.path().join(&name), &format!("s3://models/minilm/{name}")).await.unwrap();
    }
    // The empty "folder" object a console or sync tool leaves beside 1_Pooling/'s files.
    let marker = tempfile::NamedTempFile::new().unwrap();
    store.put_file(marker.path(), "s3://models/minilm/1_Pooling").await.unwrap();
    let transfer = source.path().join("transfer.txt");
    std::fs::write(&transfer, "an unlabelled review\n\nanother one, longer than the first\n").unwrap();
    store.put_file(&dataset, "s3://data/reviews.csv.bz2").await.unwrap();
    store.put_file(&transfer, "s3://data/transfer.txt").await.unwrap();

    let mut remote = local.clone();
    remote.spec.teacher.uri = "s3://models/minilm".into();
    remote.spec.dataset.uri = "s3://data/reviews.csv.bz2".into();
    remote.spec.dataset.transfer_set =
        Some(serde_json::from_value(json!({"uri": "s3://data/transfer.txt", "format": "text"})).unwrap());
    let mut on_disk = local.clone();
    on_disk.spec.dataset.transfer_set = Some(
        serde_json::from_value(json!({"uri": format!("file://{}", transfer.display()), "format": "text"})).unwrap(),
    );

    let work = tempfile::tempdir().unwrap();
    let resolver = Resolver::new(settings(&moto.endpoint), work.path().to_path_buf());
    let got = inputs::load_with(&remote, &resolver).unwrap();
    let want = inputs::load_with(&on_disk, &Resolver::new(S3Settings::default(), work.path().join("unused"))).unwrap();

    // Downloaded under inputs/<bucket>/<key>, byte for byte.
    assert_eq!(got.teacher_dir, work.path().join("inputs/models/minilm"));
    let downloaded: Vec<_> =
        files(&got.teacher_dir).into_iter().filter(|(n, _)| !n.starts_with(".distillery")).collect();
    assert_eq!(downloaded, files(source.path()).into_iter().filter(|(n, _)| n != "transfer.txt").collect::<Vec<_>>());
    assert_eq!(got.dataset.path, work.path().join("inputs/data/reviews.csv.bz2"));
    assert_eq!(std::fs::read(&got.dataset.path).unwrap(), std::fs::read(&dataset).unwrap());
    // … and read as the files on disk are: the same examples, split, token ids and labels (the
    // compressed dataset recognised by its name), the same transfer texts with the same digest.
    assert_eq!(got.dataset.examples.len(), want.dataset.examples.len());
    assert_eq!((got.split.train.clone(), got.split.validation.clone()), (want.split.train, want.split.validation));
    assert_eq!((&got.ids, &got.labels), (&want.ids, &want.labels));
    let (t, w) = (got.transfer.as_ref().unwrap(), want.transfer.as_ref().unwrap());
    assert_eq!((&t.texts, &t.digest), (&w.texts, &w.digest));
    assert_eq!(t.texts.len(), 2);

    // Again: a teacher file whose object has not changed since is kept (here a local edit of
    // the same size shows it was not downloaded again); one whose object was uploaded anew is
    // downloaded again, even at the same size (its entity tag changed).
    let config = got.teacher_dir.join("config.json");
    let kept = vec![b' '; std::fs::metadata(&config).unwrap().len() as usize];
    std::fs::write(&config, &kept).unwrap();
    let retrained = vec![b'x'; std::fs::metadata(teacher.join("tokenizer.json")).unwrap().len() as usize];
    let upload = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(upload.path(), &retrained).unwrap();
    store.put_file(upload.path(), "s3://models/minilm/tokenizer.json").await.unwrap();
    let again = resolver.materialize("s3://models/minilm", Kind::Directory).unwrap();
    assert_eq!(std::fs::read(again.join("config.json")).unwrap(), kept, "an unchanged object is not downloaded");
    assert_eq!(std::fs::read(again.join("tokenizer.json")).unwrap(), retrained, "a changed object is");
    store.put_file(&teacher.join("tokenizer.json"), "s3://models/minilm/tokenizer.json").await.unwrap();

    // What is not there is named, and permanent: the job's spec must change.
    for (uri, kind) in [("s3://models/nothing-here", Kind::Directory), ("s3://data/missing.csv", Kind::File)] {
        let e = resolver.materialize(uri, kind).unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }) && e.is_permanent(), "{e}");
        assert!(e.to_string().starts_with(uri), "{e}");
    }
    let mut missing = remote.clone();
    missing.spec.dataset.uri = "s3://no-such-bucket/reviews.csv".into();
    let e = DistillError::from(inputs::load_with(&missing, &resolver).err().unwrap());
    assert_eq!(e.policy(), ErrorPolicy::WaitForSpecChange, "{e}");
}

/// A complete artifact of `job` in a new directory: the manifest recording `spec_hash`, the job
/// file, one model file.
fn staged_artifact(job: &DistillationJob, spec_hash: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = ArtifactManifest::default();
    manifest.lineage.spec_hash = spec_hash.into();
    for (name, bytes) in [("model.onnx", b"weights".to_vec()), ("job.json", serde_json::to_vec(job).unwrap())] {
        std::fs::write(dir.path().join(name), &bytes).unwrap();
        manifest.files.insert(
            name.into(),
            distillery_crds::manifest::FileEntry { size_bytes: bytes.len() as u64, sha256: sha256(&bytes) },
        );
    }
    std::fs::write(dir.path().join(MANIFEST_FILE), serde_json::to_vec(&manifest).unwrap()).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_output_is_checked_before_training_and_published_files_first() {
    let moto = Moto::start(false);
    moto.create_bucket("artifacts");
    let work = tempfile::tempdir().unwrap();
    let resolver = Resolver::new(settings(&moto.endpoint), work.path().to_path_buf());
    let job = small_job();
    let mut other = job.clone();
    other.spec.training.seed += 1;
    let (ours, theirs) = (pipeline::spec_hash(&job), pipeline::spec_hash(&other));

    // Published: every file, the manifest last; the manifest's digest returned.
    let uri = "s3://artifacts/small/g1-0a1b2c3d";
    let (dir, _) = pipeline::output_location(&job, Some(uri), &resolver).unwrap();
    assert_eq!(dir, work.path().join("runs/artifacts/small/g1-0a1b2c3d"), "trained in the work directory");
    pipeline::check_remote_output(resolver.store(), uri, &ours).await.unwrap();
    let staged = staged_artifact(&job, &ours);
    let digest = pipeline::publish(&resolver, staged.path(), uri, &ours).unwrap();
    assert_eq!(digest, sha256(&std::fs::read(staged.path().join(MANIFEST_FILE)).unwrap()));
    let listed: Vec<String> = resolver.store().list(uri).await.unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(listed, [MANIFEST_FILE, "job.json", "model.onnx"]);

    // The same spec again (a rerun) may replace it; another spec's run may not, before training
    // or when publishing.
    pipeline::check_remote_output(resolver.store(), uri, &ours).await.unwrap();
    let e = pipeline::check_remote_output(resolver.store(), uri, &theirs).await.unwrap_err();
    assert!(matches!(e, DistillError::Immutable { .. }) && e.policy() == ErrorPolicy::WaitForSpecChange, "{e}");
    assert!(e.to_string().contains(uri) && e.to_string().contains("another spec"), "{e}");
    let e = pipeline::publish(&resolver, staged_artifact(&other, &theirs).path(), uri, &theirs).unwrap_err();
    assert!(matches!(e, DistillError::Immutable { .. }), "{e}");

    // Through the command, before any training: exit 2 (permanent) naming the location, for a
    // taken location, a missing bucket and a refused key. The spec's own s3 block wins over the
    // environment's (which here is not even valid).
    let spec_dir = tempfile::tempdir().unwrap();
    let mut spec_doc: Value = serde_json::to_value(&other).unwrap();
    spec_doc["spec"]["s3"] = json!({"endpoint": moto.endpoint, "region": "us-east-1", "forcePathStyle": true});
    let spec_file = spec_dir.path().join("other.yaml");
    std::fs::write(&spec_file, serde_norway::to_string(&spec_doc).unwrap()).unwrap();
    let distill = |endpoint: &str, key: &str, spec: &Path, output: &str| {
        let started = std::time::Instant::now();
        let out = worker(endpoint, key, work.path())
            .env("DISTILLERY_S3_FORCE_PATH_STYLE", "not-a-boolean")
            .args(["distill", "-f"])
            .arg(spec)
            .args(["--output", output])
            .output()
            .unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "{output}: {:?}", started.elapsed());
        assert_eq!(out.status.code(), Some(distillery_crds::exit::PERMANENT), "{output}: {}", stderr(&out));
        stderr(&out)
    };
    for (output, want) in [(uri, "another spec"), ("s3://no-such-bucket/small/g1-0a1b2c3d", "not found")] {
        let text = distill(&moto.endpoint, KEY, &spec_file, output);
        assert!(text.contains(output) && text.contains(want), "{output}: {text}");
        assert!(!work.path().join("runs").exists(), "refused before anything was written: {text}");
    }
    // Without one, the environment is read: a bad value is named; a refused key is permanent.
    let small = distillery_tests::small_job_spec();
    let text = distill(&moto.endpoint, KEY, &small, uri);
    assert!(text.contains("DISTILLERY_S3_FORCE_PATH_STYLE") && text.contains("not-a-boolean"), "{text}");
    let strict = Moto::start(true);
    let out = worker(&strict.endpoint, "AKIAUNKNOWNKEY000000", work.path())
        .args(["distill", "-f"])
        .arg(&small)
        .args(["--output", uri])
        .output()
        .unwrap();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(distillery_crds::exit::PERMANENT), "{text}");
    assert!(text.contains(uri) && text.contains("access denied"), "{text}");
}

fn inspect(command: &mut Command, artifact: &str) -> Output {
    command.args(["inspect", "--artifact", artifact]).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reads_an_s3_artifact_as_the_same_directory_on_disk_and_names_what_is_wrong() {
    let artifact = distillery_tests::shared_small_artifact();
    let moto = Moto::start(false);
    moto.create_bucket("models");
    let store = Store::new(settings(&moto.endpoint));
    let uri = "s3://models/students/small/g1-0a1b2c3d";
    let manifest_digest = store.publish_artifact(&artifact, uri).await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let on_disk = inspect(&mut Command::new(workspace_binary("distillery-worker")), artifact.to_str().unwrap());
    assert!(on_disk.status.success(), "{}", stderr(&on_disk));
    let out = inspect(&mut worker(&moto.endpoint, KEY, work.path()), uri);
    assert!(out.status.success(), "{}", stderr(&out));
    let (got, want): (Value, Value) =
        (serde_json::from_slice(&out.stdout).unwrap(), serde_json::from_slice(&on_disk.stdout).unwrap());
    assert_eq!(got["modelUri"], uri);
    for field in ["variant", "modelDigest", "manifestDigest"] {
        assert_eq!(got[field], want[field], "{field}");
    }
    assert_eq!(got["manifestDigest"], manifest_digest.as_str());
    // Downloaded into the work directory under the manifest's digest, every file verified.
    let fetched = work.path().join("artifacts").join(&manifest_digest);
    assert_eq!(files(&fetched).into_iter().filter(|(n, _)| n != ".complete").collect::<Vec<_>>(), files(&artifact));

    // Not there, a served file changed behind the manifest, a refused key: exit 1, one line
    // naming the URI.
    let strict = Moto::start(true);
    let tampered = tempfile::tempdir().unwrap();
    let served = want["variant"].as_str().unwrap();
    let file = if served == "int8" { "model.int8.onnx" } else { "model.onnx" };
    std::fs::write(tampered.path().join(file), b"not the model").unwrap();
    store.put_file(&tampered.path().join(file), &format!("{uri}/{file}")).await.unwrap();
    for (endpoint, key, artifact, want) in [
        (moto.endpoint.as_str(), KEY, "s3://models/students/none", vec!["s3://models/students/none", "not found"]),
        (moto.endpoint.as_str(), KEY, uri, vec![uri, file, "sha256"]),
        (strict.endpoint.as_str(), "AKIAUNKNOWNKEY000000", uri, vec![uri, "access denied"]),
    ] {
        let fresh = tempfile::tempdir().unwrap();
        let out = inspect(&mut worker(endpoint, key, fresh.path()), artifact);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(out.stdout.is_empty() && text.lines().count() == 1, "{text}");
        for w in want {
            assert!(text.contains(w), "{w:?} not in {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benchmark_reads_its_artifact_and_dataset_from_s3_and_uploads_its_report() {
    let artifact = distillery_tests::shared_small_artifact();
    let moto = Moto::start(false);
    for bucket in ["models", "data", "reports"] {
        moto.create_bucket(bucket);
    }
    let store = Store::new(settings(&moto.endpoint));
    let model = "s3://models/students/small/g1-0a1b2c3d";
    store.publish_artifact(&artifact, model).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("held-out.csv");
    let out = Command::new(workspace_binary("distillery-worker"))
        .args(["held-out", "-a"])
        .arg(&artifact)
        .arg("-o")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    store.put_file(&csv, "s3://data/held-out.csv").await.unwrap();
    let report = "s3://reports/benchmarks/local";
    let doc = json!({
        "apiVersion": "distillery.dev/v1alpha1", "kind": "Benchmark", "metadata": {"name": "local"},
        "spec": {
            "targets": [{"name": "int8", "artifact": {"uri": model, "variant": "int8"}}],
            "dataset": {"uri": "s3://data/held-out.csv", "samples": 40},
            "metrics": ["accuracy", "cold-start"],
            "reportUri": report,
        }
    });
    let file = dir.path().join("benchmark.yaml");
    std::fs::write(&file, serde_norway::to_string(&doc).unwrap()).unwrap();
    let work = dir.path().join("work");
    let termination = dir.path().join("termination");
    let out = worker(&moto.endpoint, KEY, &work)
        .args(["bench", "-f"])
        .arg(&file)
        .arg("--termination-message")
        .arg(&termination)
        .output()
        .unwrap();
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("int8: downloading {model} (not counted in its cold start)")), "{text}");

    let summary: BenchmarkSummary = serde_json::from_str(&std::fs::read_to_string(&termination).unwrap()).unwrap();
    assert_eq!(summary.report, report);
    let r = &summary.results[0];
    assert_eq!(r.requests, 0, "no load asked for");
    assert!(r.accuracy.is_some_and(|a| a > 0.5), "{r:?}");
    assert!(r.cold_start_ms.is_some_and(|c| c > 0.0), "{r:?}");

    // The report's three files, in the bucket as written in the work directory.
    let listed: Vec<String> = store.list(report).await.unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(listed, ["report.html", "report.md", "results.json"]);
    let staged = work.join("reports/reports/benchmarks/local");
    for name in &listed {
        let uploaded = store.get(&format!("{report}/{name}")).await.unwrap();
        assert_eq!(uploaded.as_ref(), std::fs::read(staged.join(name)).unwrap().as_slice(), "{name}");
    }
    let results: Value = serde_json::from_slice(&store.get(&format!("{report}/results.json")).await.unwrap()).unwrap();
    assert_eq!((results["dataset"].as_str(), results["inputs"].as_u64()), (Some("s3://data/held-out.csv"), Some(40)));
    assert_eq!(results["targets"][0]["source"], format!("artifact {model} (int8)"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("report: {report}/report.html")));
}
