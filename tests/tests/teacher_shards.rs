//! A causal-LM DistillationJob whose teacher outputs are computed in shards
//! (`teacherOutputs.parallelism: 2`), run by the operator binary against the in-process API server
//! and simulated cluster, with the real `distillery-worker` in every pod (the tiny causal-LM job of
//! `worker/engine/tests/fixtures/tiny-lm.yaml`: the real SmolLM2 teacher from the setup cache,
//! eight 1,500-character State of the Union speeches written by the test).
//!
//! The operator runs an Indexed Job of two teacher pods, one shard each, and the training Job only
//! once both shards are written; one teacher pod is deleted while it runs and its index alone is
//! retried; the joined shards are what one pod computes for the whole corpus.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distillery_crds::DistillationJob;
use distillery_tests::apiserver::ApiServer;
use distillery_tests::cluster::job::indexed::COMPLETION_INDEX_KEY;
use distillery_tests::cluster::job::{JOB_NAME_LABEL, scale_backoff};
use distillery_tests::cluster::{Cluster, workspace_binary};
use distillery_tests::identity::{OperatorIdentity, install_chart_rbac};
use distillery_tests::operator::OperatorProcess as Operator;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

const NAME: &str = "sharded";
const TEACHER_JOB: &str = "sharded-teacher";
const TRAINING_JOB: &str = "sharded-distill";
/// The tensors of a teacher-outputs shard: per position (dim 0, row-major) the teacher's top-k
/// token ids and logits and its remainder's log-mass, for the training and held-out sequences.
const TENSORS: [&str; 6] =
    ["train.ids", "train.logits", "train.remainder", "held_out.ids", "held_out.logits", "held_out.remainder"];
/// How close the joined shards must be to one pod's outputs: 1e-6, relative above magnitude 1
/// (logits are f32 of magnitude up to tens, whose spacing there is a few 1e-6).
const TOLERANCE: f64 = 1e-6;

struct Harness {
    server: ApiServer,
    cluster: Cluster,
    root: tempfile::TempDir,
    artifacts: PathBuf,
    corpus: PathBuf,
    identity: OperatorIdentity,
}

impl Harness {
    async fn start() -> Self {
        let server = ApiServer::start().await.unwrap();
        let root = tempfile::tempdir().unwrap();
        let cache = distillery_tests::cache_dir();
        let artifacts = root.path().join("claims/artifacts");
        let corpus = root.path().join("claims/corpus");
        std::fs::create_dir_all(corpus.join("sotu")).unwrap();
        std::fs::create_dir_all(&artifacts).unwrap();
        write_corpus(&corpus.join("sotu"));
        let images = HashMap::from([("distillery-worker".to_string(), workspace_binary("distillery-worker"))]);
        let claims = HashMap::from([
            ("models".to_string(), cache.join("teacher")),
            ("corpus".to_string(), corpus.clone()),
            ("artifacts".to_string(), artifacts.clone()),
        ]);
        let cluster = Cluster::start(&server, images, claims, &root.path().join("cluster")).unwrap();
        server.install_crds("kubectl").await.unwrap();
        let identity = install_chart_rbac(&server, root.path(), |_| {}).await.unwrap();
        Self { server, cluster, root, artifacts, corpus, identity }
    }

    fn operator_log(&self) -> PathBuf {
        self.root.path().join("operator.log")
    }

    fn diagnostics(&self) -> String {
        format!(
            "operator log:\n{}\npods:\n{}",
            std::fs::read_to_string(self.operator_log()).unwrap_or_default(),
            self.cluster.logs()
        )
    }
}

/// Eight State of the Union speeches cut to 1,500 characters, as the worker's causal-LM test
/// writes them (`worker/engine/tests/causal_lm.rs`).
fn write_corpus(dir: &Path) {
    let sotu = distillery_tests::cache_dir().join("data/sotu");
    let mut speeches: Vec<PathBuf> = std::fs::read_dir(&sotu)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/setup.sh", sotu.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    speeches.sort();
    for speech in speeches.iter().step_by(29).take(8) {
        let text = std::fs::read_to_string(speech).unwrap();
        let cut: String = text.chars().take(1500).collect();
        std::fs::write(dir.join(speech.file_name().unwrap()), cut).unwrap();
    }
}

/// The tiny causal-LM job (`worker/engine/tests/fixtures/tiny-lm.yaml`) with its teacher outputs
/// computed by two pods; teacher, corpus and output on the harness's claims.
fn sharded_job() -> Value {
    let fixture = distillery_tests::repo_root().join("worker/engine/tests/fixtures/tiny-lm.yaml");
    let mut job = distillery_tests::read_documents(&fixture).unwrap().remove(0);
    job["metadata"] = json!({"name": NAME, "namespace": "default"});
    let spec = &mut job["spec"];
    spec["teacher"] = json!({"uri": "file:///models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
                             "volumeClaim": "models"});
    spec["dataset"]["uri"] = json!("file:///corpus/sotu");
    spec["dataset"]["volumeClaim"] = json!("corpus");
    spec["teacherOutputs"] = json!({"topK": 8, "parallelism": 2});
    spec["output"] = json!({"uri": format!("file:///artifacts/{NAME}"), "volumeClaim": "artifacts"});
    spec["backoffLimit"] = json!(2);
    job
}

/// The same job as one local pod reads it: host paths, no claims, one teacher pod.
fn local_job(corpus: &Path, output: &Path) -> Value {
    let mut job = sharded_job();
    let cache = distillery_tests::cache_dir();
    let spec = &mut job["spec"];
    let teacher = cache.join("teacher/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    spec["teacher"] = json!({"uri": format!("file://{}", teacher.display())});
    spec["dataset"]["uri"] = json!(format!("file://{}", corpus.join("sotu").display()));
    spec["dataset"].as_object_mut().unwrap().remove("volumeClaim");
    spec["teacherOutputs"] = json!({"topK": 8, "parallelism": 1});
    spec["output"] = json!({"uri": format!("file://{}", output.display())});
    job
}

async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>, harness: &Harness) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", harness.diagnostics());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

/// The directory a run of `dj` writes under its `output.uri`: `g<generation>-<uid8>`.
fn run_id(dj: &DistillationJob) -> String {
    let uid = dj.metadata.uid.as_deref().expect("metadata.uid");
    let hex: String = uid.chars().filter(char::is_ascii_hexdigit).take(8).collect();
    format!("g{}-{hex}", dj.metadata.generation.expect("metadata.generation"))
}

/// Every pod of the teacher Job ever seen, by completion index (uids), and the last phase seen of
/// each: recorded from a watch, since the Job controller lets a counted pod go.
#[derive(Default)]
struct PodsSeen {
    per_index: BTreeMap<String, BTreeSet<String>>,
    phases: HashMap<String, String>,
}

/// The order in which Job watch events arrived: (Job name, whether it was `Complete` then).
type JobEvents = Arc<Mutex<Vec<(String, bool)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teacher_outputs_in_two_shards_run_before_training_retry_a_deleted_shard_alone_and_join_to_one_pods() {
    // A retried index waits the Job controller's per-index backoff: 1 s here, 10 s in a cluster.
    scale_backoff(Duration::from_secs(1));
    let h = Harness::start().await;
    let client = h.server.client();

    // Watches from before the DistillationJob exists: every teacher pod, and the order of Job events.
    let seen = Arc::new(Mutex::new(PodsSeen::default()));
    let pods_watch = tokio::spawn({
        let seen = seen.clone();
        let pods: Api<Pod> = Api::default_namespaced(client.clone());
        async move {
            let config = watcher::Config::default().labels(&format!("{JOB_NAME_LABEL}={TEACHER_JOB}"));
            let mut events = std::pin::pin!(watcher::watcher(pods, config));
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event {
                    let index = pod.labels().get(COMPLETION_INDEX_KEY).cloned().unwrap_or_default();
                    let uid = pod.uid().unwrap_or_default();
                    let mut seen = seen.lock().unwrap();
                    seen.per_index.entry(index).or_default().insert(uid.clone());
                    seen.phases.insert(uid, phase(&pod).to_string());
                }
            }
        }
    });
    let job_events: JobEvents = Arc::default();
    let jobs_watch = tokio::spawn({
        let job_events = job_events.clone();
        let jobs: Api<Job> = Api::default_namespaced(client.clone());
        async move {
            let mut events = std::pin::pin!(watcher::watcher(jobs, watcher::Config::default()));
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) = event {
                    let complete = job_complete(&job);
                    job_events.lock().unwrap().push((job.name_any(), complete));
                }
            }
        }
    });

    let _operator = Operator::start_as(&h.identity, &h.operator_log(), &[]);
    let djs: Api<DistillationJob> = Api::default_namespaced(client.clone());
    let applied = djs.patch(NAME, &PatchParams::apply("kubectl"), &Patch::Apply(sharded_job())).await.unwrap();
    let run = run_id(&applied);

    // Index 1's pod is deleted while it runs: a failure of that index alone, which is retried.
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let index_1 = format!("{JOB_NAME_LABEL}={TEACHER_JOB},{COMPLETION_INDEX_KEY}=1");
    let victim = wait_for(
        "the index-1 teacher pod to run",
        Duration::from_secs(300),
        async || {
            let listed = pods.list(&ListParams::default().labels(&index_1)).await.ok()?.items;
            listed.into_iter().find(|p| phase(p) == "Running" && p.metadata.deletion_timestamp.is_none())
        },
        &h,
    )
    .await;
    pods.delete(&victim.name_any(), &DeleteParams::default()).await.unwrap();
    let victim_uid = victim.uid().unwrap();

    // While the shards are computed the status says how many are done; then the run succeeds.
    let mut saw_shards_progress = false;
    let done = wait_for(
        "the DistillationJob to succeed",
        Duration::from_secs(900),
        async || {
            let dj = djs.get(NAME).await.ok()?;
            let status = dj.status.clone()?;
            let ready = distillery_crds::conditions::find(&status.conditions, "TeacherOutputsReady");
            saw_shards_progress |=
                ready.is_some_and(|c| c.status == "False" && c.message.ends_with("of 2 shards done"));
            let phase = serde_json::to_value(status.phase).ok()?;
            assert_ne!(phase, "Failed", "{status:?}\n{}", h.diagnostics());
            (phase == "Succeeded").then_some(dj)
        },
        &h,
    )
    .await;
    pods_watch.abort();
    jobs_watch.abort();
    assert!(saw_shards_progress, "TeacherOutputsReady=False said how many shards were done while they ran");

    // The teacher Job: Indexed, two completions, both done.
    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    let teacher = jobs.get(TEACHER_JOB).await.unwrap();
    let spec = teacher.spec.clone().unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!((spec.completions, spec.parallelism), (Some(2), Some(2)));
    let teacher_status = teacher.status.clone().unwrap();
    assert_eq!(teacher_status.completed_indexes.as_deref(), Some("0,1"), "{teacher_status:?}");

    // Index 1 ran twice (the deleted pod failed, not succeeded), index 0 once.
    {
        let seen = seen.lock().unwrap();
        let counts: Vec<(&str, usize)> = seen.per_index.iter().map(|(i, uids)| (i.as_str(), uids.len())).collect();
        assert_eq!(counts, [("0", 1), ("1", 2)], "only the deleted pod's index ran again\n{}", h.diagnostics());
        assert_eq!(
            seen.phases.get(&victim_uid).map(String::as_str),
            Some("Failed"),
            "the deleted pod was killed while it ran (had it finished first, its index would not have been retried)"
        );
    }

    // The status: shards ready, where they are; the shards are there.
    let status = done.status.clone().unwrap();
    let ready = distillery_crds::conditions::find(&status.conditions, "TeacherOutputsReady").unwrap();
    assert_eq!(ready.status, "True", "{ready:?}");
    let shards_uri = format!("file:///artifacts/{NAME}/teacher-outputs/{run}");
    let outputs = status.teacher_outputs.clone().expect("status.teacherOutputs");
    assert_eq!(
        (outputs.job_name.as_str(), outputs.uri.as_str(), outputs.shards, outputs.completed),
        (TEACHER_JOB, shards_uri.as_str(), 2, 2)
    );
    let shards = h.artifacts.join(NAME).join("teacher-outputs").join(&run);
    for i in 0..2 {
        for ext in ["safetensors", "json"] {
            let file = shards.join(format!("shard-{i}-of-2.{ext}"));
            assert!(file.is_file(), "{} is missing\n{}", file.display(), h.diagnostics());
        }
    }
    let result = status.result.clone().expect("status.result");
    assert_eq!(result.artifact_uri, format!("file:///artifacts/{NAME}/{run}"));
    assert_eq!(status.job_name.as_deref(), Some(TRAINING_JOB));

    // The training Job came after the teacher Job completed: in the watch's order, and by time.
    let events = job_events.lock().unwrap().clone();
    let teacher_done = events.iter().position(|(name, complete)| name == TEACHER_JOB && *complete);
    let training_made = events.iter().position(|(name, _)| name == TRAINING_JOB);
    match (teacher_done, training_made) {
        (Some(done), Some(made)) => {
            assert!(done < made, "the training Job appeared before the teacher Job completed: {events:?}")
        }
        other => panic!("watched {other:?} (teacher complete, training made): {events:?}"),
    }
    let training = jobs.get(TRAINING_JOB).await.unwrap();
    let completed_at = teacher_status.completion_time.clone().expect("the teacher Job's completionTime");
    let created_at = training.metadata.creation_timestamp.clone().expect("creationTimestamp");
    assert!(created_at >= completed_at, "training Job created {created_at:?}, teacher Job completed {completed_at:?}");
    let env = training.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
    let var = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
    assert_eq!(var("DISTILLERY_TEACHER_OUTPUTS").as_deref(), Some(shards_uri.as_str()));
    assert_eq!(var("DISTILLERY_TEACHER_SHARDS").as_deref(), Some("2"));

    // The Events say so.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::default_namespaced(client.clone());
    let reasons: BTreeSet<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(NAME))
        .filter_map(|e| e.reason)
        .collect();
    for reason in ["TeacherJobCreated", "TeacherOutputsReady", "JobCreated", "Succeeded"] {
        assert!(reasons.contains(reason), "no {reason} Event: {reasons:?}");
    }

    // The joined shards are what one pod computes over the whole corpus.
    let local = h.root.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let job_file = local.join("job.yaml");
    let local_outputs = local.join("teacher-outputs");
    std::fs::write(&job_file, serde_norway::to_string(&local_job(&h.corpus, &local.join("artifact"))).unwrap())
        .unwrap();
    let worker = workspace_binary("distillery-worker");
    let (file, out, cache) = (job_file.clone(), local_outputs.clone(), local.join("cache"));
    let run_local = tokio::task::spawn_blocking(move || {
        std::process::Command::new(worker)
            .env("DISTILLERY_CACHE", cache)
            .args(["teacher-outputs", "-f"])
            .arg(&file)
            .args(["--shard", "0", "--shards", "1", "--output"])
            .arg(&out)
            .output()
    })
    .await
    .unwrap()
    .expect("starting distillery-worker");
    assert!(
        run_local.status.success(),
        "distillery-worker teacher-outputs failed:\n{}",
        String::from_utf8_lossy(&run_local.stderr)
    );
    let whole = read_safetensors(&local_outputs.join("shard-0-of-1.safetensors"));
    let parts = [0, 1].map(|i| read_safetensors(&shards.join(format!("shard-{i}-of-2.safetensors"))));
    for name in TENSORS {
        let one = whole.get(name).unwrap_or_else(|| panic!("{name} is not in one pod's outputs"));
        let pieces: Vec<&Tensor> =
            parts.iter().map(|p| p.get(name).unwrap_or_else(|| panic!("{name} is not in a shard"))).collect();
        let joined = concat(name, &pieces);
        assert_eq!(joined.shape, one.shape, "{name}: the shards' positions joined are one pod's");
        assert!(
            one.shape.first().is_some_and(|rows| *rows > 0) || name.starts_with("held_out"),
            "{name}: no positions"
        );
        let exact = name.ends_with(".ids");
        for (k, (a, b)) in joined.values.iter().zip(&one.values).enumerate() {
            let close = a == b || (!exact && (a - b).abs() <= TOLERANCE * b.abs().max(1.0));
            assert!(close, "{name}[{k}]: {a} joined from the shards, {b} from one pod");
        }
    }
}

/// Whether `job` has the `Complete` condition.
fn job_complete(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Complete" && c.status == "True"))
}

/// A tensor of a safetensors file: its shape and its values (integers exactly, as f64).
#[derive(Debug)]
struct Tensor {
    shape: Vec<usize>,
    values: Vec<f64>,
}

/// The tensors of a safetensors file: an 8-byte little-endian header length, the JSON header
/// (each tensor's dtype, shape and byte range in the data), then the data.
fn read_safetensors(path: &Path) -> BTreeMap<String, Tensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    let data = &bytes[8 + length..];
    let mut tensors = BTreeMap::new();
    for (name, info) in header.as_object().expect("a JSON object") {
        if name == "__metadata__" {
            continue;
        }
        let shape: Vec<usize> =
            info["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        let [begin, end] = [0usize, 1].map(|i| info["data_offsets"][i].as_u64().unwrap() as usize);
        let raw = &data[begin..end];
        let values: Vec<f64> = match info["dtype"].as_str().unwrap() {
            "F64" => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
            "F32" => raw.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap()))).collect(),
            "BF16" => raw
                .chunks_exact(2)
                .map(|c| f64::from(f32::from_bits(u32::from(u16::from_le_bytes(c.try_into().unwrap())) << 16)))
                .collect(),
            "I64" => raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            "U64" => raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            "I32" => raw.chunks_exact(4).map(|c| f64::from(i32::from_le_bytes(c.try_into().unwrap()))).collect(),
            "U32" => raw.chunks_exact(4).map(|c| f64::from(u32::from_le_bytes(c.try_into().unwrap()))).collect(),
            "I16" => raw.chunks_exact(2).map(|c| f64::from(i16::from_le_bytes(c.try_into().unwrap()))).collect(),
            "U16" => raw.chunks_exact(2).map(|c| f64::from(u16::from_le_bytes(c.try_into().unwrap()))).collect(),
            "U8" => raw.iter().map(|b| f64::from(*b)).collect(),
            other => panic!("{}: {name}: dtype {other} is not read here", path.display()),
        };
        assert_eq!(values.len(), shape.iter().product::<usize>(), "{}: {name}: {shape:?}", path.display());
        tensors.insert(name.clone(), Tensor { shape, values });
    }
    tensors
}

/// `parts` joined along dim 0 (positions), as row-major data concatenates.
fn concat(name: &str, parts: &[&Tensor]) -> Tensor {
    let rest = &parts[0].shape[1..];
    for part in parts {
        assert_eq!(&part.shape[1..], rest, "{name}: the shards' shapes differ past dim 0");
    }
    let rows = parts.iter().map(|p| p.shape[0]).sum();
    let shape = std::iter::once(rows).chain(rest.iter().copied()).collect();
    Tensor { shape, values: parts.iter().flat_map(|p| p.values.iter().copied()).collect() }
}
