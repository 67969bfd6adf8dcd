//! `kubectl` (the real client, 1.32) against the in-process API server over HTTP: apply the
//! examples server-side, refuse every invalid example at apply naming the field, get (with the
//! CRDs' printer columns), wait, explain and delete. Skipped with a message when `kubectl` is not
//! installed.

use std::path::Path;
use std::process::{Command, Output};

use distillery_tests::apiserver::ApiServer;
use distillery_tests::{kubectl_installed, read_documents, repo_root, yaml_files};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};

/// Runs kubectl off the async runtime's threads (the server runs on them).
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    let (kubeconfig, args): (std::path::PathBuf, Vec<String>) =
        (kubeconfig.to_path_buf(), args.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        Command::new("kubectl").args(&args).env("KUBECONFIG", kubeconfig).output().unwrap()
    })
    .await
    .unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_waits_explains_and_deletes_and_refuses_invalid_examples() {
    if !kubectl_installed() {
        eprintln!("kubectl is not installed: skipped");
        return;
    }
    let server = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let crds_dir = repo_root().join("charts/distillery/crds");
    let out = kubectl(&kubeconfig, &["apply", "--server-side", "-f", crds_dir.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out));
    // kubectl only sends what it read; the CRDs are the generated ones.
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    assert_eq!(crds.list(&Default::default()).await.unwrap().items.len(), 3);

    let examples = repo_root().join("examples");
    let out = kubectl(&kubeconfig, &["apply", "--server-side", "-f", examples.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches("serverside-applied").count(), 3, "{}", text(&out));

    for file in yaml_files(&examples.join("invalid")) {
        let out = kubectl(&kubeconfig, &["apply", "--server-side", "-f", file.to_str().unwrap()]).await;
        let message = text(&out);
        assert!(!out.status.success(), "{} was accepted", file.display());
        let source = std::fs::read_to_string(&file).unwrap();
        let field = source.lines().find_map(|l| l.strip_prefix("# expect: ")).unwrap();
        // The server names fields by their full path; an unknown field by its path as written.
        let field = field.trim_start_matches("spec.").split('[').next().unwrap();
        let leaf = field.rsplit('.').next().unwrap();
        assert!(message.to_lowercase().contains(&leaf.to_lowercase()), "{}: {message}", file.display());
        let name = read_documents(&file).unwrap()[0]["metadata"]["name"].as_str().unwrap().to_string();
        let kind = read_documents(&file).unwrap()[0]["kind"].as_str().unwrap().to_lowercase();
        let get = kubectl(&kubeconfig, &["get", &kind, &name]).await;
        assert!(!get.status.success(), "{} was stored", file.display());
    }

    let out = kubectl(&kubeconfig, &["get", "dj"]).await;
    let table = text(&out);
    assert!(table.starts_with("NAME") && table.contains("PHASE") && table.contains("minilm-reviews"), "{table}");
    let out = kubectl(&kubeconfig, &["get", "bench"]).await;
    let table = text(&out);
    assert!(
        table.contains("TARGETS") && table.contains("BEST-ACCURACY") && table.contains("reviews-int8-vs-fp32"),
        "{table}"
    );

    // Status written by someone else (the operator) is what `kubectl wait` waits for.
    let djs: Api<distillery_crds::DistillationJob> = Api::default_namespaced(server.client());
    let status = serde_json::json!({"apiVersion": "distillery.dev/v1alpha1", "kind": "DistillationJob",
        "metadata": {"name": "minilm-reviews"}, "status": {"phase": "Succeeded"}});
    djs.patch_status("minilm-reviews", &PatchParams::apply("distillery-operator"), &Patch::Apply(status))
        .await
        .unwrap();
    let out = kubectl(
        &kubeconfig,
        &["wait", "--for=jsonpath={.status.phase}=Succeeded", "dj/minilm-reviews", "--timeout=20s"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));

    let out = kubectl(&kubeconfig, &["explain", "distillationjob.spec.loss.temperature"]).await;
    assert!(out.status.success() && text(&out).contains("start"), "{}", text(&out));

    let out = kubectl(&kubeconfig, &["delete", "-f", examples.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = kubectl(&kubeconfig, &["get", "dj", "-o", "name"]).await;
    assert!(text(&out).trim().is_empty() || text(&out).contains("No resources"), "{}", text(&out));
}
