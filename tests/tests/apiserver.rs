//! Conformance of the in-process API server, through kube's own client (in process) and through
//! real HTTP: the behaviours a controller depends on, each checked the way a real cluster shows it.

use std::time::Duration;

use distillery_crds::DistillationJob;
use distillery_tests::apiserver::{ApiServer, Fault, status::ApiError};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

fn config_map(name: &str, labels: Value, data: Value) -> ConfigMap {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": data}),
    )
    .unwrap()
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone(), status.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv<K: kube::Resource>(object: &K) -> u64 {
    object.meta().resource_version.as_deref().unwrap().parse().unwrap()
}

/// Where a conformance test runs: the in-process server, or a real cluster (the
/// `on_a_real_cluster_*` twins, ignored by default) so that divergence can be found:
///
/// ```text
/// KUBECONFIG=~/.kube/config cargo test -p distillery-tests --test apiserver -- --ignored
/// ```
///
/// On a real cluster each test works in a namespace of its own, deleted afterwards; the CRDs are
/// applied server-side (forced) and left installed.
struct Target {
    client: kube::Client,
    namespace: String,
    server: Option<ApiServer>,
}

impl Target {
    async fn harness() -> Self {
        let server = ApiServer::start().await.unwrap();
        Self { client: server.client(), namespace: "default".into(), server: Some(server) }
    }

    async fn real() -> Self {
        let client = kube::Client::try_default().await.expect("a real cluster: set KUBECONFIG");
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let namespace = format!("distillery-conformance-{nanos}");
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        namespaces.patch(&namespace, &PatchParams::apply("conformance"), &Patch::Apply(ns)).await.unwrap();
        Self { client, namespace, server: None }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Applies the CRDs and waits until DistillationJobs are served.
    async fn install_crds(&self) -> Api<DistillationJob> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in distillery_crds::crds() {
            let name = kube::ResourceExt::name_any(&crd);
            crds.patch(&name, &PatchParams::apply("conformance").force(), &Patch::Apply(&crd)).await.unwrap();
        }
        let jobs: Api<DistillationJob> = self.api();
        for _ in 0..100 {
            if jobs.list(&ListParams::default()).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        jobs
    }

    async fn cleanup(self) {
        if self.server.is_none() {
            let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
            let _ = namespaces.delete(&self.namespace, &DeleteParams::default()).await;
        }
    }
}

/// A conformance test on the in-process server, and its twin for a real cluster.
macro_rules! conformance {
    ($name:ident, $real:ident, $body:ident) => {
        #[tokio::test]
        async fn $name() {
            let target = Target::harness().await;
            $body(&target).await;
        }

        #[tokio::test]
        #[ignore = "needs a real cluster: KUBECONFIG=... cargo test -p distillery-tests --test apiserver -- --ignored"]
        async fn $real() {
            let target = Target::real().await;
            $body(&target).await;
            target.cleanup().await;
        }
    };
}

conformance!(
    crud_conflicts_and_not_found_are_real_status_errors,
    on_a_real_cluster_crud_conflicts_and_not_found,
    crud_conflicts_and_not_found_are_real_status_errors_body
);
conformance!(
    a_no_op_write_changes_nothing_and_emits_no_event_and_watches_resume_without_gaps,
    on_a_real_cluster_no_op_writes_and_watch_resume,
    a_no_op_write_changes_nothing_and_emits_no_event_and_watches_resume_without_gaps_body
);
conformance!(
    label_selectors_filter_lists_and_watches_see_objects_enter_and_leave,
    on_a_real_cluster_label_selectors,
    label_selectors_filter_lists_and_watches_see_objects_enter_and_leave_body
);
conformance!(
    metadata_only_reads_answer_with_metadata_and_nothing_else,
    on_a_real_cluster_metadata_only_reads,
    metadata_only_reads_answer_with_metadata_and_nothing_else_body
);
conformance!(
    finalizers_hold_deletion_and_the_garbage_collector_removes_dependents,
    on_a_real_cluster_finalizers_and_garbage_collection,
    finalizers_hold_deletion_and_the_garbage_collector_removes_dependents_body
);
conformance!(
    server_side_apply_owns_fields_conflicts_and_creates,
    on_a_real_cluster_server_side_apply,
    server_side_apply_owns_fields_conflicts_and_creates_body
);

conformance!(
    a_secrets_string_data_is_merged_into_data_and_never_stored,
    on_a_real_cluster_secret_string_data,
    a_secrets_string_data_is_merged_into_data_and_never_stored_body
);

async fn a_secrets_string_data_is_merged_into_data_and_never_stored_body(t: &Target) {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: Api<Secret> = t.api();
    let values = |s: &Secret| -> Vec<(String, String)> {
        s.data.iter().flatten().map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).unwrap())).collect()
    };
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    // `stringData` wins over `data` for a key in both.
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "data": {"a": "ZnJvbS1kYXRh", "b": "b2xk"}, "stringData": {"b": "new", "c": "plain"}});
    let created = secrets.create(&PostParams::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
    for s in [&created, &secrets.get("creds").await.unwrap()] {
        assert_eq!(values(s), pairs(&[("a", "from-data"), ("b", "new"), ("c", "plain")]));
        assert_eq!(s.string_data, None, "stringData is never stored");
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
    }

    // A patch of stringData changes data.
    let patch = json!({"stringData": {"a": "patched"}});
    let patched = secrets.patch("creds", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    assert_eq!(values(&patched), pairs(&[("a", "patched"), ("b", "new"), ("c", "plain")]));
    assert_eq!(patched.string_data, None);
    // stringData saying what data already holds changes nothing.
    let mut same = patched.clone();
    same.string_data = Some([("b".to_string(), "new".to_string())].into());
    let replaced = secrets.replace("creds", &PostParams::default(), &same).await.unwrap();
    assert_eq!(rv(&replaced), rv(&patched), "a no-op write");

    // A data value that is not base64 is refused by the decoder.
    let bad = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bad"}, "data": {"x": "not base64"}});
    let request = http::Request::post(format!("/api/v1/namespaces/{}/secrets", t.namespace))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&bad).unwrap())
        .unwrap();
    let (code, _, message) = api_error(t.client.request::<Value>(request).await);
    assert_eq!(code, 400, "{message}");
    assert!(message.contains("illegal base64 data at input byte 3"), "{message}");
}

async fn crud_conflicts_and_not_found_are_real_status_errors_body(t: &Target) {
    let cms: Api<ConfigMap> = t.api();
    let created = cms.create(&PostParams::default(), &config_map("a", json!({}), json!({"k": "1"}))).await.unwrap();
    let meta = &created.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("default"), "namespace from the URL");
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    let (code, reason, message) =
        api_error(cms.create(&PostParams::default(), &config_map("a", json!({}), json!({}))).await);
    assert_eq!((code, reason.as_str(), message.as_str()), (409, "AlreadyExists", "configmaps \"a\" already exists"));
    let (code, reason, _) = api_error(cms.get("missing").await);
    assert_eq!((code, reason.as_str()), (404, "NotFound"));

    // A write with a stale resourceVersion conflicts.
    let mut changed = created.clone();
    changed.data = Some([("k".to_string(), "2".to_string())].into());
    let updated = cms.replace("a", &PostParams::default(), &changed).await.unwrap();
    assert!(rv(&updated) > rv(&created));
    let (code, reason, _) = api_error(cms.replace("a", &PostParams::default(), &changed).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // generateName.
    let mut generated = config_map("", json!({}), json!({}));
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let g = cms.create(&PostParams::default(), &generated).await.unwrap();
    assert!(g.metadata.name.unwrap().starts_with("gen-"));

    // An invalid name is refused naming the field.
    let (code, _, message) =
        api_error(cms.create(&PostParams::default(), &config_map("Bad_Name", json!({}), json!({}))).await);
    assert_eq!(code, 422);
    assert!(message.contains("metadata.name"), "{message}");
}

async fn a_no_op_write_changes_nothing_and_emits_no_event_and_watches_resume_without_gaps_body(t: &Target) {
    let cms: Api<ConfigMap> = t.api();
    let a = cms.create(&PostParams::default(), &config_map("a", json!({}), json!({"k": "1"}))).await.unwrap();
    let start = rv(&a);
    // The same object again: no new resourceVersion.
    let same = cms.replace("a", &PostParams::default(), &a).await.unwrap();
    assert_eq!(rv(&same), start, "a no-op update keeps the resourceVersion");
    let merge = cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "1"}}))).await.unwrap();
    assert_eq!(rv(&merge), start, "a no-op patch keeps the resourceVersion");
    // Two real changes.
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "2"}}))).await.unwrap();
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "3"}}))).await.unwrap();
    // A watch from the first version sees exactly those two, in order.
    let mut stream = cms.watch(&WatchParams::default().timeout(2), &start.to_string()).await.unwrap().boxed();
    let mut seen = vec![];
    while let Some(event) = stream.try_next().await.unwrap() {
        if let WatchEvent::Modified(cm) = event {
            seen.push(cm.data.unwrap()["k"].clone());
        }
    }
    assert_eq!(seen, vec!["2", "3"], "no gaps, no duplicates, no event for the no-op writes");

    // After compaction (harness only: a real cluster compacts on its own schedule), a watch from
    // an old version gets 410 Gone.
    if let Some(server) = &t.server {
        server.compact();
        let mut stream = cms.watch(&WatchParams::default().timeout(2), &start.to_string()).await.unwrap().boxed();
        match stream.try_next().await.unwrap() {
            Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
            other => panic!("expected 410 Gone, got {other:?}"),
        }
    }
}

async fn label_selectors_filter_lists_and_watches_see_objects_enter_and_leave_body(t: &Target) {
    let cms: Api<ConfigMap> = t.api();
    cms.create(&PostParams::default(), &config_map("web", json!({"app": "web"}), json!({}))).await.unwrap();
    let db = cms.create(&PostParams::default(), &config_map("db", json!({"app": "db"}), json!({}))).await.unwrap();
    let list = cms.list(&ListParams::default().labels("app in (web, cache)")).await.unwrap();
    let names: Vec<String> = list.items.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, vec!["web"]);
    let from = list.metadata.resource_version.unwrap();
    let watch = cms.watch(&WatchParams::default().labels("app=web").timeout(2), &from).await.unwrap();
    cms.patch("db", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})))
        .await
        .unwrap();
    cms.patch("db", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})))
        .await
        .unwrap();
    let events: Vec<String> = watch
        .filter_map(|e| async move {
            match e.unwrap() {
                WatchEvent::Added(c) => Some(format!("ADDED {}", c.metadata.name.unwrap())),
                WatchEvent::Modified(c) => Some(format!("MODIFIED {}", c.metadata.name.unwrap())),
                WatchEvent::Deleted(c) => Some(format!("DELETED {}", c.metadata.name.unwrap())),
                WatchEvent::Bookmark(_) => None,
                WatchEvent::Error(e) => Some(format!("ERROR {e:?}")),
            }
        })
        .collect()
        .await;
    assert_eq!(events, vec!["ADDED db", "DELETED db"], "{db:?}");
}

/// A read of `path` asking for `accept`, as JSON.
async fn read_as(t: &Target, path: &str, accept: &str) -> Value {
    let request = http::Request::get(path).header("Accept", accept).body(Vec::new()).unwrap();
    let text = t.client.request_text(request).await.unwrap();
    // A watch answers one event per line: the first one is enough here.
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

async fn metadata_only_reads_answer_with_metadata_and_nothing_else_body(t: &Target) {
    let cms: Api<ConfigMap> = t.api();
    let data = json!({"weights": "x".repeat(4096)});
    cms.create(&PostParams::default(), &config_map("big", json!({"app": "big"}), data)).await.unwrap();
    let base = format!("/api/v1/namespaces/{}/configmaps", t.namespace);
    let meta = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
    let list = read_as(t, &base, "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1").await;
    assert_eq!(
        (list["kind"].as_str(), list["apiVersion"].as_str()),
        (Some("PartialObjectMetadataList"), Some("meta.k8s.io/v1"))
    );
    assert!(list["metadata"]["resourceVersion"].is_string(), "{list}");
    let item = &list["items"][0];
    assert_eq!(
        (item["kind"].as_str(), item["metadata"]["labels"]["app"].as_str()),
        (Some("PartialObjectMetadata"), Some("big"))
    );
    assert!(item.get("data").is_none(), "{item}");
    let one = read_as(t, &format!("{base}/big"), meta).await;
    assert_eq!((one["kind"].as_str(), one["metadata"]["name"].as_str()), (Some("PartialObjectMetadata"), Some("big")));
    assert!(one.get("data").is_none(), "{one}");
    let event = read_as(t, &format!("{base}?watch=true&timeoutSeconds=1&labelSelector=app%3Dbig"), meta).await;
    assert_eq!(
        (event["type"].as_str(), event["object"]["kind"].as_str()),
        (Some("ADDED"), Some("PartialObjectMetadata"))
    );
    assert!(event["object"].get("data").is_none(), "{event}");
    // Without asking, the objects themselves.
    let full = read_as(t, &format!("{base}/big"), "application/json").await;
    assert_eq!(full["data"]["weights"].as_str().map(str::len), Some(4096));
}

async fn install_crds(server: &ApiServer) -> Api<DistillationJob> {
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    for crd in distillery_crds::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    Api::default_namespaced(server.client())
}

fn example_job() -> Value {
    let path = distillery_tests::repo_root().join("examples/01-distillationjob.yaml");
    distillery_tests::read_documents(&path).unwrap().remove(0)
}

#[tokio::test]
async fn crds_are_served_validated_with_cel_and_their_status_and_generation_follow_the_rules() {
    let server = ApiServer::start().await.unwrap();
    // A dry-run CRD is validated and returned as established, but serves nothing.
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    let dry = PostParams { dry_run: true, field_manager: None };
    let checked = crds.create(&dry, &DistillationJob::crd()).await.unwrap();
    assert!(checked.status.is_some(), "the dry run reports the status it would have");
    let unserved: Api<DistillationJob> = Api::default_namespaced(server.client());
    assert_eq!(api_error(unserved.list(&ListParams::default()).await).0, 404, "dry run registered nothing");
    let jobs = install_crds(&server).await;
    let job: DistillationJob = serde_json::from_value(example_job()).unwrap();
    let name = job.metadata.name.clone().unwrap();
    let created = jobs.create(&PostParams::default(), &job).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    // Status through /status only; the main endpoint ignores it and the generation stays.
    let status = jobs
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running"}})))
        .await
        .unwrap();
    assert_eq!(status.metadata.generation, Some(1), "a status change is not a spec change");
    let ignored = jobs
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Failed"}})))
        .await
        .unwrap();
    assert_eq!(serde_json::to_value(&ignored.status).unwrap()["phase"], "Running");
    let spec_change = jobs
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"training": {"seed": 7}}})))
        .await
        .unwrap();
    assert_eq!(spec_change.metadata.generation, Some(2));

    // The schema and CEL rules refuse an invalid spec, naming the field.
    let (code, _, message) = api_error(
        jobs.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"training": {"batchSize": 0}}})))
            .await,
    );
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("spec.training.batchSize"), "{message}");

    // Strict field validation refuses unknown fields; the default prunes them with a warning.
    let mut unknown = example_job();
    unknown["metadata"]["name"] = json!("strict");
    unknown["spec"]["typo"] = json!(1);
    let mut typed = unknown.clone();
    typed["metadata"]["name"] = json!("typed");
    let typed = jobs.create(&PostParams::default(), &serde_json::from_value::<DistillationJob>(typed).unwrap()).await;
    assert!(typed.is_ok(), "the typed client drops unknown fields itself");
    let raw = raw_post(
        &server,
        "/apis/distillery.dev/v1alpha1/namespaces/default/distillationjobs?fieldValidation=Strict",
        &unknown,
    )
    .await;
    assert_eq!(raw.0, 400, "{}", raw.1);
    assert!(raw.1.contains("unknown field \"spec.typo\""), "{}", raw.1);
    let mut pruned = unknown.clone();
    pruned["metadata"]["name"] = json!("pruned");
    let raw = raw_post(&server, "/apis/distillery.dev/v1alpha1/namespaces/default/distillationjobs", &pruned).await;
    assert_eq!(raw.0, 200, "{}", raw.1);
    assert!(jobs.get("pruned").await.is_ok());
}

/// A raw JSON POST (what kubectl sends), through kube's client: the status and message.
async fn raw_post(server: &ApiServer, path: &str, body: &Value) -> (u16, String) {
    let request = http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .unwrap();
    match server.client().request::<Value>(request).await {
        Ok(v) => (200, v.to_string()),
        Err(kube::Error::Api(status)) => (status.code, status.message.clone()),
        Err(e) => panic!("{e}"),
    }
}

async fn finalizers_hold_deletion_and_the_garbage_collector_removes_dependents_body(t: &Target) {
    let cms: Api<ConfigMap> = t.api();
    let owner = cms.create(&PostParams::default(), &config_map("owner", json!({}), json!({}))).await.unwrap();
    let mut child = config_map("child", json!({}), json!({}));
    child.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().unwrap(),
        ..Default::default()
    }]);
    cms.create(&PostParams::default(), &child).await.unwrap();

    // kube-runtime's finalizer helper: a JSON patch testing that the (missing) list is null.
    let add = json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["distillery.dev/cleanup"]},
    ]);
    let patched = cms
        .patch("owner", &PatchParams::default(), &Patch::<()>::Json(serde_json::from_value(add.clone()).unwrap()))
        .await
        .unwrap();
    assert_eq!(patched.metadata.finalizers.unwrap(), vec!["distillery.dev/cleanup"]);
    // The same test now fails: the list exists.
    let (code, _, _) = api_error(
        cms.patch("owner", &PatchParams::default(), &Patch::<()>::Json(serde_json::from_value(add).unwrap())).await,
    );
    assert_eq!(code, 422);

    // Deleting marks it; the finalizer holds it.
    let pending = cms.delete("owner", &DeleteParams::default()).await.unwrap();
    let marked = pending.left().expect("still there while the finalizer holds it");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(cms.get("child").await.is_ok(), "the owner still exists: its dependent stays");
    // Removing the finalizer deletes it, and the collector then deletes the dependent.
    cms.patch("owner", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    assert_eq!(api_error(cms.get("owner").await).0, 404);
    let mut gone = false;
    for _ in 0..600 {
        if cms.get("child").await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the garbage collector deletes dependents of a deleted owner");
}

#[tokio::test]
async fn injected_faults_reach_the_client_once() {
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    server.inject(Fault {
        verb: Some("create".into()),
        resource: Some("configmaps".into()),
        name: None,
        user: None,
        every: 1,
        error: ApiError::internal("injected"),
        times: 1,
    });
    let (code, _, message) =
        api_error(cms.create(&PostParams::default(), &config_map("a", json!({}), json!({}))).await);
    assert_eq!((code, message.as_str()), (500, "injected"));
    cms.create(&PostParams::default(), &config_map("a", json!({}), json!({}))).await.unwrap();
}

async fn server_side_apply_owns_fields_conflicts_and_creates_body(t: &Target) {
    let jobs = t.install_crds().await;
    let mut job = example_job();
    let name = job["metadata"]["name"].as_str().unwrap().to_string();
    let operator = PatchParams::apply("distillery-operator");

    // Apply creates; the same apply again is a no-op.
    let created = jobs.patch(&name, &operator, &Patch::Apply(&job)).await.unwrap();
    let fields = &created.metadata.managed_fields.as_ref().unwrap()[0];
    assert_eq!((fields.manager.as_deref(), fields.operation.as_deref()), (Some("distillery-operator"), Some("Apply")));
    let again = jobs.patch(&name, &operator, &Patch::Apply(&job)).await.unwrap();
    assert_eq!(rv(&again), rv(&created), "re-applying the same configuration writes nothing");

    // Without a field manager, apply is refused.
    let (code, _, message) = api_error(jobs.patch(&name, &PatchParams::default(), &Patch::Apply(&job)).await);
    assert_eq!(code, 400, "{message}");
    assert!(message.contains("fieldManager"), "{message}");

    // Another manager changing an owned field conflicts, naming manager and field; force takes it.
    let mut theirs = json!({"apiVersion": job["apiVersion"], "kind": job["kind"], "metadata": {"name": name},
                            "spec": {"training": {"seed": 9}}});
    let argo = PatchParams::apply("argocd-controller");
    let (code, reason, message) = api_error(jobs.patch(&name, &argo, &Patch::Apply(&theirs)).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"), "{message}");
    assert!(message.contains("distillery-operator") && message.contains(".spec.training.seed"), "{message}");
    let forced = jobs.patch(&name, &argo.clone().force(), &Patch::Apply(&theirs)).await.unwrap();
    assert_eq!(forced.spec.training.seed, 9);
    // The same value is shared without a conflict.
    theirs["spec"]["training"]["seed"] = json!(9);
    jobs.patch(&name, &argo, &Patch::Apply(&theirs)).await.unwrap();

    // A manager that stops applying a field removes it, unless someone else owns it.
    job["spec"]["training"].as_object_mut().unwrap().remove("checkpointInterval");
    job["spec"]["training"]["seed"] = json!(9);
    let dropped = jobs.patch(&name, &operator, &Patch::Apply(&job)).await.unwrap();
    assert_eq!(dropped.spec.training.checkpoint_interval, 200, "removed, then defaulted by the schema again");
    job["spec"]["training"].as_object_mut().unwrap().remove("seed");
    let kept = jobs.patch(&name, &operator, &Patch::Apply(&job)).await.unwrap();
    assert_eq!(kept.spec.training.seed, 9, "argocd-controller still owns the seed");

    // Status: the operator's conditions and the worker's progress, each under its own manager,
    // survive each other's applies.
    let status = |body: Value| {
        json!({"apiVersion": "distillery.dev/v1alpha1", "kind": "DistillationJob",
                                      "metadata": {"name": name}, "status": body})
    };
    jobs.patch_status(&name, &operator, &Patch::Apply(status(json!({"phase": "Running"})))).await.unwrap();
    let worker = PatchParams::apply("distillery-worker");
    jobs.patch_status(&name, &worker, &Patch::Apply(status(json!({"progress": {"step": 10}})))).await.unwrap();
    let both = jobs.patch_status(&name, &operator, &Patch::Apply(status(json!({"phase": "Running"})))).await.unwrap();
    let s = serde_json::to_value(both.status.unwrap()).unwrap();
    assert_eq!((s["phase"].as_str(), s["progress"]["step"].as_u64()), (Some("Running"), Some(10)));
    let mut missing = status(json!({}));
    missing["metadata"]["name"] = json!("missing");
    let (code, _, _) = api_error(jobs.patch_status("missing", &operator, &Patch::Apply(missing)).await);
    assert_eq!(code, 404, "a status apply does not create");

    // Built-in map lists merge by key: two managers' containers coexist.
    let cms: Api<ConfigMap> = t.api();
    let cm = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
    cms.patch("c", &PatchParams::apply("a"), &Patch::Apply(cm(json!({"x": "1"})))).await.unwrap();
    let merged = cms.patch("c", &PatchParams::apply("b"), &Patch::Apply(cm(json!({"y": "2"})))).await.unwrap();
    assert_eq!(merged.data.unwrap().len(), 2);
}

/// RBAC's escalation check, as the real server makes it: a service account that may write
/// RoleBindings may bind a role whose permissions it holds, but not one granting more — neither
/// by creating a binding nor by patching the subjects of an existing one (the body carries no
/// `roleRef`; the stored one counts) — and not a role that does not exist (nothing to confirm).
#[tokio::test]
async fn a_binding_may_grant_only_what_its_author_holds_on_every_write() {
    use distillery_tests::apiserver::rbac::service_account_token;
    use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
    let server = ApiServer::start().await.unwrap();
    let admin = server.client();
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let role = |name: &str, rules: Value| -> ClusterRole {
        serde_json::from_value(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name}, "rules": rules}))
        .unwrap()
    };
    let binding = |name: &str, role: &str, subjects: Value| -> RoleBinding {
        serde_json::from_value(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": subjects}))
        .unwrap()
    };
    let sa = |name: &str| json!([{"kind": "ServiceAccount", "name": name, "namespace": "default"}]);
    let post = PostParams::default();
    roles
        .create(&post, &role("binder", json!([
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["create", "patch", "get"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}])))
        .await
        .unwrap();
    roles
        .create(&post, &role("reader", json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}])))
        .await
        .unwrap();
    roles
        .create(&post, &role("secrets", json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])))
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::default_namespaced(admin);
    bindings.create(&post, &binding("binder", "binder", sa("ops"))).await.unwrap();
    bindings.create(&post, &binding("secrets", "secrets", sa("someone"))).await.unwrap();
    server.enforce_rbac();

    let ops: Api<RoleBinding> = Api::default_namespaced(server.client_as(&service_account_token("default", "ops")));
    ops.create(&post, &binding("readers", "reader", sa("app")))
        .await
        .expect("binding a role whose permissions it holds");
    let (code, _, message) = api_error(ops.create(&post, &binding("more", "secrets", sa("app"))).await);
    assert_eq!(code, 403);
    assert!(message.contains("attempting to grant RBAC permissions not currently held"), "{message}");
    // A patch that only adds a subject to a binding of a role it does not hold.
    let subjects = json!({"subjects": [{"kind": "ServiceAccount", "name": "someone", "namespace": "default"},
                                       {"kind": "ServiceAccount", "name": "ops", "namespace": "default"}]});
    let (code, _, message) = api_error(ops.patch("secrets", &PatchParams::default(), &Patch::Merge(&subjects)).await);
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("attempting to grant"), "{message}");
    // The same patch on a binding of a role it holds is allowed.
    ops.patch("readers", &PatchParams::default(), &Patch::Merge(&subjects))
        .await
        .expect("adding a subject to a role it holds");
    // A role that does not exist cannot be confirmed.
    let (code, _, message) = api_error(ops.create(&post, &binding("ghostly", "ghost", sa("app"))).await);
    assert_eq!(code, 403);
    assert!(message.contains("clusterroles.rbac.authorization.k8s.io \"ghost\" not found"), "{message}");
}
