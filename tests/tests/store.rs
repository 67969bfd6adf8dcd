//! The artifact store (`distillery-store`) against a real S3 server (moto's, on loopback):
//! a round trip with sha256 checks and a multipart upload, the download cache, an upload killed
//! half-way, 503s answered by a proxy in front of the server, a refused credential, a missing
//! bucket and an object changed behind the manifest's back.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use distillery_crds::manifest::{ArtifactManifest, FileEntry, MANIFEST_FILE, sha256};
use distillery_store::{S3Settings, Store, StoreError};
use distillery_tests::s3::{FaultyProxy, Moto};
use distillery_tests::server_process::ServerProcess;

fn settings(endpoint: &str, key: &str) -> S3Settings {
    S3Settings {
        endpoint: Some(endpoint.into()),
        region: Some("us-east-1".into()),
        force_path_style: true,
        credentials: Some((key.into(), "test-secret".into())),
    }
}

/// An artifact directory: a small config, a 20 MiB model (uploaded in parts) and the manifest
/// listing both with their digests.
fn artifact(dir: &Path) -> ArtifactManifest {
    let model: Vec<u8> = (0..20u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let config = br#"{"hidden_size": 8}"#.to_vec();
    let mut manifest = ArtifactManifest::default();
    for (name, bytes) in [("model.onnx", &model), ("config.json", &config)] {
        std::fs::write(dir.join(name), bytes).unwrap();
        manifest.files.insert(name.into(), FileEntry { size_bytes: bytes.len() as u64, sha256: sha256(bytes) });
    }
    std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_vec(&manifest).unwrap()).unwrap();
    manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_goes_up_in_parts_and_comes_back_verified_and_cached() {
    let moto = Moto::start(false);
    moto.create_bucket("artifacts");
    let store = Store::new(settings(&moto.endpoint, "test-key"));
    let local = tempfile::tempdir().unwrap();
    let manifest = artifact(local.path());
    let uri = "s3://artifacts/students/minilm/run-1";
    let digest = store.publish_artifact(local.path(), uri).await.unwrap();
    assert_eq!(digest, sha256(&std::fs::read(local.path().join(MANIFEST_FILE)).unwrap()));
    let listed = store.list(uri).await.unwrap();
    assert_eq!(
        listed,
        vec![
            ("config.json".to_string(), 18),
            (MANIFEST_FILE.to_string(), std::fs::metadata(local.path().join(MANIFEST_FILE)).unwrap().len()),
            ("model.onnx".to_string(), 20 << 20),
        ]
    );

    let cache = tempfile::tempdir().unwrap();
    let fetched = store.fetch_artifact(uri, cache.path()).await.unwrap();
    assert_eq!(fetched, cache.path().join(&digest), "cached under the manifest's digest");
    for (name, entry) in &manifest.files {
        assert_eq!(sha256(&std::fs::read(fetched.join(name)).unwrap()), entry.sha256, "{name}");
    }
    // A restarted server finds its copy: nothing but the manifest is read again, so the
    // artifact's files may even be gone from the bucket.
    moto_delete(&store, &format!("{uri}/model.onnx")).await;
    let again = store.fetch_artifact(uri, cache.path()).await.unwrap();
    assert_eq!(again, fetched);
}

/// Deletes one object (through the store's own client, as the test's way to change the bucket).
async fn moto_delete(store: &Store, uri: &str) {
    store.delete(uri).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_killed_half_way_leaves_no_artifact_and_a_changed_file_is_refused() {
    let moto = Moto::start(false);
    moto.create_bucket("artifacts");
    // Through a proxy, to see how far the upload got before it is killed.
    let proxy = FaultyProxy::start(&moto.endpoint, usize::MAX).await;
    let store = Store::new(settings(&proxy.endpoint, "test-key"));
    let local = tempfile::tempdir().unwrap();
    artifact(local.path());
    let uri = "s3://artifacts/killed";
    let upload = {
        let (store, dir) = (store.clone(), local.path().to_path_buf());
        tokio::spawn(async move { store.publish_artifact(&dir, uri).await })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.forwarded.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the upload never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    upload.abort();
    let _ = upload.await;
    let listed: Vec<String> = store.list(uri).await.unwrap().into_iter().map(|(p, _)| p).collect();
    assert!(!listed.contains(&MANIFEST_FILE.to_string()), "a killed upload has no manifest: {listed:?}");
    let cache = tempfile::tempdir().unwrap();
    let e = store.fetch_artifact(uri, cache.path()).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }) && e.is_permanent(), "{e}");

    // Published whole, then one file changed in the bucket: never served.
    let uri = "s3://artifacts/changed";
    store.publish_artifact(local.path(), uri).await.unwrap();
    let other = local.path().join("other");
    std::fs::write(&other, br#"{"hidden_size": 9}"#).unwrap();
    store.put_file(&other, &format!("{uri}/config.json")).await.unwrap();
    let e = store.fetch_artifact(uri, cache.path()).await.unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch { ref file, .. } if file == "config.json"), "{e}");
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0, "nothing half-downloaded is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_and_refusals_fail_fast_naming_the_uri() {
    let moto = Moto::start(false);
    moto.create_bucket("artifacts");
    // Every third request answered 503 SlowDown: the round trip still succeeds.
    let proxy = FaultyProxy::start(&moto.endpoint, 3).await;
    let store = Store::new(settings(&proxy.endpoint, "test-key"));
    let local = tempfile::tempdir().unwrap();
    let manifest = artifact(local.path());
    let uri = "s3://artifacts/throttled";
    store.publish_artifact(local.path(), uri).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let fetched = store.fetch_artifact(uri, cache.path()).await.unwrap();
    assert_eq!(sha256(&std::fs::read(fetched.join("model.onnx")).unwrap()), manifest.files["model.onnx"].sha256);
    assert!(proxy.injected.load(Ordering::SeqCst) >= 3, "503s were answered and retried");

    // A bucket that does not exist: permanent, named.
    let direct = Store::new(settings(&moto.endpoint, "test-key"));
    let started = Instant::now();
    let e = direct.publish_artifact(local.path(), "s3://no-such-bucket/x").await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }) && e.is_permanent(), "{e}");
    assert!(e.to_string().contains("s3://no-such-bucket/x"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "not retried: {:?}", started.elapsed());

    // A server that checks credentials, and a key it does not know: 403 at once, named.
    let strict = Moto::start(true);
    let store = Store::new(settings(&strict.endpoint, "AKIAUNKNOWNKEY000000"));
    let started = Instant::now();
    let e = store.publish_artifact(local.path(), "s3://artifacts/denied").await.unwrap_err();
    assert!(matches!(e, StoreError::Denied { .. }) && e.is_permanent(), "{e}");
    let message = e.to_string();
    assert!(message.contains("s3://artifacts/denied") && message.contains("credentials"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10), "not retried: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_serves_an_s3_artifact_from_its_verified_cache_and_refuses_a_changed_one() {
    let artifact = distillery_tests::shared_small_artifact();
    let moto = Moto::start(false);
    moto.create_bucket("models");
    let store = Store::new(settings(&moto.endpoint, "test-key"));
    let uri = "s3://models/students/small";
    store.publish_artifact(&artifact, uri).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().display().to_string();
    let flags = ["--s3-endpoint", moto.endpoint.as_str(), "--s3-force-path-style", "true", "--cache-dir", &cache_dir];
    let env =
        [("AWS_ACCESS_KEY_ID", "test-key"), ("AWS_SECRET_ACCESS_KEY", "test-secret"), ("AWS_REGION", "us-east-1")];
    let text = serde_json::json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a warm, funny film"]}]});
    let answer = {
        let server = ServerProcess::start_model(uri, &flags, &env);
        let reply = server.infer("small", &text);
        assert_eq!(reply.status, 200, "served under the key's last segment: {}", reply.body);
        reply.json()["outputs"].clone()
    };
    let cached: Vec<_> = std::fs::read_dir(cache.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(cached.len(), 1, "one directory per manifest digest: {cached:?}");

    // Restarted with the model files gone from the bucket: served from the cache, same answers.
    for (name, _) in store.list(uri).await.unwrap() {
        if name != MANIFEST_FILE {
            store.delete(&format!("{uri}/{name}")).await.unwrap();
        }
    }
    let server = ServerProcess::start_model(uri, &flags, &env);
    assert_eq!(server.infer("small", &text).json()["outputs"], answer);
    drop(server);

    // Published again with a file changed behind the manifest, into an empty cache: the server
    // refuses to start and says which file.
    store.publish_artifact(&artifact, uri).await.unwrap();
    let tampered = tempfile::tempdir().unwrap();
    std::fs::write(tampered.path().join("tokenizer.json"), b"{}").unwrap();
    store.put_file(&tampered.path().join("tokenizer.json"), &format!("{uri}/tokenizer.json")).await.unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(distillery_tests::cluster::workspace_binary("distillery-server"))
        .args(["--model", uri, "--port", "0", "--address", "127.0.0.1", "--cache-dir"])
        .arg(fresh.path())
        .args(&flags[..4])
        .envs(env)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tokenizer.json") && stderr.contains("sha256"), "{stderr}");
    assert_eq!(std::fs::read_dir(fresh.path()).unwrap().count(), 0, "nothing unverified kept");
}
