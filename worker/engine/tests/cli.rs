//! The worker's command line on the embedded default spec and on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The exit code of a failure that running the same spec again cannot fix: what every refusal
/// here is (the Job's `podFailurePolicy` fails on it at once).
const PERMANENT: Option<i32> = Some(distillery_crds::exit::PERMANENT);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_distillery-worker"))
}

fn small_job() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/small.yaml")
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("distillery.json")).unwrap()).unwrap()
}

/// One test, because its runs share the prepared-teacher cache: an uninterrupted run writes a
/// complete, verifiable artifact; a second run killed mid-training and restarted resumes from its
/// checkpoint (reusing the cached teacher) and ends within a point of the first.
#[test]
fn a_small_job_writes_a_verifiable_artifact_and_a_killed_run_resumes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let out = worker().args(["distill", "-f"]).arg(small_job()).arg("--output").arg(&a).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for row in ["teacher (6 layers", "student (1 layers, distilled)", "student on labels only", "bag-of-words"] {
        assert!(stdout.contains(row), "{row} missing from\n{stdout}");
    }
    // Not on a terminal: progress is JSON lines.
    let events: Vec<serde_json::Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(events.iter().any(|e| e["event"] == "step" && e["run"] == "student"));

    let m = manifest(&a);
    for (name, entry) in m["files"].as_object().unwrap() {
        let bytes = std::fs::read(a.join(name)).unwrap();
        assert_eq!(entry["sizeBytes"], bytes.len() as u64, "{name}");
        assert_eq!(entry["sha256"], distillery_worker::store::sha256(&bytes), "{name}");
    }
    assert!(!a.join("checkpoints").exists(), "checkpoints are removed once the artifact is complete");
    let metrics = &m["metrics"];
    for key in ["teacherAccuracy", "studentAccuracy", "labelOnlyAccuracy", "bagOfWordsAccuracy", "retention"] {
        assert!((0.0..=2.0).contains(&metrics[key].as_f64().unwrap()), "{key}");
    }
    assert!(metrics["parameterFraction"].as_f64().unwrap() < 0.15);
    // The student learned (margins from the figures measured in the fixture's header): ten points
    // above always answering the majority label, and distillation not below labels alone.
    let figure = |k: &str| metrics[k].as_f64().unwrap();
    assert!(figure("studentAccuracy") >= figure("majorityClassAccuracy") + 0.10, "{metrics}");
    assert!(figure("studentAccuracy") >= figure("labelOnlyAccuracy"), "{metrics}");
    assert!(m["warnings"].as_array().is_none_or(Vec::is_empty), "the small job warns of nothing: {}", m["warnings"]);
    assert_eq!(m["lineage"]["specHash"].as_str().unwrap().len(), 64);
    // The artifact's tokenizer and config agree: the pruned vocabulary is what the weights hold.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(a.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.get_vocab_size(true) as u64, config["vocab_size"].as_u64().unwrap());
    assert_eq!(config["embedding_size"], 64);
    let weights = candle_core::safetensors::load(a.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(weights["embeddings.word_embeddings.weight"].dims()[0] as u64, config["vocab_size"].as_u64().unwrap());

    // The ONNX models: fp32 matches candle; a served variant is named, with its reason, and an
    // int8 file exists exactly when int8 passed its gate.
    let fp32 = &m["variants"]["fp32"];
    assert_eq!(fp32["file"], "model.onnx");
    assert!(fp32["maxAbsLogitDiff"].as_f64().unwrap() <= 1e-4, "{fp32}");
    assert_eq!(fp32["labelAgreement"], 1.0);
    assert!((fp32["accuracy"].as_f64().unwrap() - metrics["studentAccuracy"].as_f64().unwrap()).abs() < 1e-9);
    let int8 = &m["variants"]["int8"];
    let passed = int8["passedGate"].as_bool().unwrap();
    assert_eq!(a.join("model.int8.onnx").exists(), passed);
    assert_eq!(m["files"].get("model.int8.onnx").is_some(), passed);
    assert_eq!(m["servedVariant"], if passed { "int8" } else { "fp32" });
    assert!(!m["servedVariantReason"].as_str().unwrap().is_empty());
    assert!(int8["sizeBytes"].as_u64().unwrap() * 3 < fp32["sizeBytes"].as_u64().unwrap());
    assert!(stdout.contains("student, ONNX int8") && stdout.contains("int8 / fp32:"), "{stdout}");

    // `export` and `quantize` on their own rebuild the same fp32 model from the artifact's
    // job.json; a budget outside 0..1 is refused before anything is read.
    let out = worker().args(["export", "-a"]).arg(&a).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(manifest(&a)["variants"]["fp32"]["sha256"], fp32["sha256"], "export is deterministic");
    let out = worker().args(["quantize", "--accuracy-budget", "1.5", "-a"]).arg(&a).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--accuracy-budget 1.5: must be between 0 and 1"));

    // Runs b and c need only run a's prepared teacher: they train side by side, one a core.
    std::thread::scope(|both| {
        both.spawn(|| run_with_transfer_and_alignment(dir.path()));
        // Run b: killed once its student has checkpointed at step 10 or later, then restarted.
        let mut child = worker()
            .args(["distill", "-f"])
            .arg(small_job())
            .arg("--output")
            .arg(&b)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let state = b.join("checkpoints/student/state.json");
        let deadline = Instant::now() + Duration::from_secs(600);
        let killed_at = loop {
            assert!(Instant::now() < deadline, "no student checkpoint within 10 minutes");
            assert!(child.try_wait().unwrap().is_none(), "run b finished before it could be killed");
            if let Ok(text) = std::fs::read_to_string(&state)
                && let Ok(s) = serde_json::from_str::<serde_json::Value>(&text)
                && s["step"].as_u64().unwrap() >= 10
            {
                child.kill().unwrap();
                child.wait().unwrap();
                break s["step"].as_u64().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!b.join("distillery.json").exists(), "a killed run leaves no manifest");
        let out = worker().args(["distill", "-f"]).arg(small_job()).arg("--output").arg(&b).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mb = manifest(&b);
        let resumed = mb["training"]["student"]["resumedFrom"].as_u64().expect("the student resumed");
        assert!(resumed >= killed_at, "resumed from {resumed}, killed after {killed_at}");
        assert_eq!(mb["lineage"]["teacherPreparation"]["reusedFromCache"], true);
        let (acc_a, acc_b) =
            (metrics["studentAccuracy"].as_f64().unwrap(), mb["metrics"]["studentAccuracy"].as_f64().unwrap());
        assert!((acc_a - acc_b).abs() <= 0.01, "uninterrupted {acc_a}, resumed {acc_b}");
    });

    // Run d: a teacher that ships its classifier head, in HuggingFace's BertForSequenceClassification
    // layout (encoder under `bert.`, rows named by config.json's id2label, here in the opposite
    // order to the dataset's labels) — run a's prepared teacher, re-packed. It is used as it is:
    // no preparation, the same held-out accuracy.
    let cache = distillery_crds::cache::cache_dir();
    let key = m["lineage"]["teacherPreparation"]["cacheKey"].as_str().unwrap();
    let prepared = cache.join("teachers").join(&key[..24]);
    let cpu = candle_core::Device::Cpu;
    let swap = candle_core::Tensor::new(&[1u32, 0], &cpu).unwrap();
    let hf: std::collections::HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(prepared.join("model.safetensors"), &cpu)
            .unwrap()
            .into_iter()
            .map(|(k, v)| match k.starts_with("classifier.") {
                true => (k, v.index_select(&swap, 0).unwrap()),
                false => (format!("bert.{k}"), v),
            })
            .collect();
    let shipped = dir.path().join("shipped-teacher");
    std::fs::create_dir_all(&shipped).unwrap();
    candle_core::safetensors::save(&hf, shipped.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(prepared.join("config.json")).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
    config["id2label"] = serde_json::json!({"0": "rotten", "1": "fresh"});
    std::fs::write(shipped.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(cache.join("teacher/all-minilm-l6-v2/tokenizer.json"), shipped.join("tokenizer.json")).unwrap();
    let head = "    head:\n      mode: fine-tune\n      trainableLayers: 1\n      epochs: 1\n      learningRate: 0.001\n      batchSize: 16\n";
    let with_head = std::fs::read_to_string(small_job())
        .unwrap()
        .replace("file://${DISTILLERY_CACHE}/teacher/all-minilm-l6-v2", &format!("file://{}", shipped.display()))
        .replace("    epochs: 2\n", "    maxSteps: 4\n");
    assert!(with_head.contains(head));
    let d_spec = dir.path().join("d.yaml");
    std::fs::write(&d_spec, &with_head).unwrap();
    let out =
        worker().args(["distill", "-f"]).arg(&d_spec).arg("--output").arg(dir.path().join("d0")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), PERMANENT, "{stderr}");
    assert!(stderr.contains("spec.teacher.head must be left out"), "{stderr}");
    std::fs::write(&d_spec, with_head.replace(head, "")).unwrap();
    let d = dir.path().join("d");
    let out = worker().args(["distill", "-f"]).arg(&d_spec).arg("--output").arg(&d).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("teacher (6 layers, head as shipped)"), "{stdout}");
    let md = manifest(&d);
    assert_eq!(md["lineage"]["teacherPreparation"]["shippedHead"], true);
    let (shipped_acc, prepared_acc) =
        (md["metrics"]["teacherAccuracy"].as_f64().unwrap(), metrics["teacherAccuracy"].as_f64().unwrap());
    assert!((shipped_acc - prepared_acc).abs() < 1e-9, "shipped {shipped_acc}, prepared {prepared_acc}");
}

/// Run c of the test above: a narrower fresh student (hidden 192) that also learns from
/// unlabelled transfer texts and aligns its layer 0 with the teacher's layer 2 through a learned
/// projection; then a rerun that reuses the teacher's cached outputs. Needs the small job's
/// prepared teacher (run a's) in the cache.
fn run_with_transfer_and_alignment(dir: &Path) {
    let transfer = dir.join("transfer.txt");
    let texts = transfer_texts(160);
    std::fs::write(&transfer, texts.join("\n")).unwrap();
    let spec = with_transfer_and_alignment(&transfer);
    let c_spec = dir.join("c.yaml");
    std::fs::write(&c_spec, &spec).unwrap();
    let c = dir.join("c");
    let out = worker().args(["distill", "-f"]).arg(&c_spec).arg("--output").arg(&c).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // (Computed now, or reused from an earlier run of this test: the cache outlives it.)
    assert!(stderr.contains("its outputs on 160 transfer texts"), "{stderr}");
    assert!(stderr.contains("its hidden states of layers [2]"), "{stderr}");
    let mc = manifest(&c);
    let train = mc["metrics"]["trainExamples"].as_f64().unwrap() as u64;
    assert_eq!(mc["metrics"]["transferExamples"].as_f64(), Some(160.0));
    let steps = 2 * (train + 160).div_ceil(16);
    assert_eq!(mc["training"]["student"]["steps"], steps, "the transfer texts are trained on");
    assert_eq!(mc["training"]["label-only"]["steps"], steps, "the baseline takes as many steps on labels");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["hidden_size"], 192);
    let weights = candle_core::safetensors::load(c.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(weights.keys().all(|k| !k.starts_with("alignment.")), "the projection is not part of the student");
    let curve = &mc["training"]["student"];
    let (first, last) = (curve["firstLoss"].as_f64().unwrap(), curve["lastLoss"].as_f64().unwrap());
    assert!(last < first, "the loss with the alignment term falls: {first} → {last}");
    // The teacher's transfer outputs and hidden states are cached: a rerun reuses them.
    let quick = spec.replace("    epochs: 2\n", "    maxSteps: 2\n");
    std::fs::write(&c_spec, quick).unwrap();
    let out = worker().args(["distill", "-f"]).arg(&c_spec).arg("--output").arg(dir.join("c2")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("reusing its outputs on 160 transfer texts"), "{stderr}");
    assert!(stderr.contains("reusing its hidden states of layers [2]"), "{stderr}");
}

/// `n` texts of the dataset's training side that the small job does not use (as unlabelled
/// transfer texts: none is from a held-out movie).
fn transfer_texts(n: usize) -> Vec<String> {
    let job = distillery_worker::spec::load(&small_job()).unwrap();
    let inputs = distillery_worker::data::inputs::load(&job).unwrap();
    let full = distillery_worker::data::dataset::split(&inputs.dataset.examples, &job.spec.dataset.validation_split);
    let used: std::collections::HashSet<usize> = inputs.split.train.iter().copied().collect();
    full.train
        .iter()
        .filter(|i| !used.contains(i))
        .take(n)
        .map(|&i| inputs.dataset.examples[i].text.replace(['\n', '\r'], " "))
        .collect()
}

/// The small job with a fresh 192-wide student, a transfer set and hidden-state alignment.
fn with_transfer_and_alignment(transfer: &Path) -> String {
    let spec = std::fs::read_to_string(small_job()).unwrap();
    let replaced = spec
        .replace(
            "    initFromTeacher:\n      layers: [0]\n",
            "    architecture: {layers: 1, hiddenSize: 192, attentionHeads: 6}\n",
        )
        .replace(
            "    maxExamples: 600\n",
            &format!("    maxExamples: 600\n    transferSet: {{uri: \"file://{}\", format: text}}\n", transfer.display()),
        )
        .replace(
            "    temperature: { start: 3, end: 1, schedule: linear }\n",
            "    temperature: { start: 3, end: 1, schedule: linear }\n    featureAlignment:\n      kind: hidden-mse\n      weight: 0.1\n      layerMap: [{student: 0, teacher: 2}]\n",
        );
    assert_eq!(replaced.matches("transferSet").count(), 1);
    assert!(replaced.contains("hidden-mse") && replaced.contains("hiddenSize: 192"));
    replaced
}

#[test]
fn a_missing_dataset_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let spec = std::fs::read_to_string(small_job())
        .unwrap()
        .replace("rotten_tomatoes_corpus_full.csv.bz2", "no-such-file.csv");
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, spec).unwrap();
    let out_dir = dir.path().join("out");
    let out = worker().args(["distill", "-f"]).arg(&path).arg("--output").arg(&out_dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), PERMANENT, "{stderr}");
    assert!(stderr.contains("no-such-file.csv"), "{stderr}");
    assert!(!out_dir.exists());
}

#[test]
fn a_spec_feature_not_built_yet_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let spec =
        std::fs::read_to_string(small_job()).unwrap().replace("task: sequence-classification", "task: embedding");
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, spec).unwrap();
    let out = worker().args(["distill", "-f"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), PERMANENT, "{stderr}");
    assert!(stderr.contains("task") && stderr.contains("not built yet"), "{stderr}");
}

#[test]
fn an_empty_transfer_set_and_a_bad_layer_map_are_refused_before_any_training() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n  \n\n").unwrap();
    let good = dir.path().join("good.txt");
    std::fs::write(&good, "a film worth seeing\nnot worth the ticket\n").unwrap();
    let spec = with_transfer_and_alignment(&good);
    for (name, spec, expected) in [
        (
            "empty.yaml",
            with_transfer_and_alignment(&empty),
            vec!["empty.txt".to_string(), "transferSet has no texts".into()],
        ),
        (
            "teacher-layer.yaml",
            spec.replace("teacher: 2}", "teacher: 9}"),
            vec!["spec.loss.featureAlignment.layerMap[0].teacher: layer 9 does not exist".into(), "6 layers".into()],
        ),
        (
            "student-layer.yaml",
            spec.replace("{student: 0,", "{student: 3,"),
            vec!["spec.loss.featureAlignment.layerMap[0].student: layer 3 does not exist".into(), "1 layers".into()],
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, spec).unwrap();
        let out_dir = dir.path().join(format!("{name}.out"));
        let out = worker().args(["distill", "-f"]).arg(&path).arg("--output").arg(&out_dir).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), PERMANENT, "{name}: {stderr}");
        for e in expected {
            assert!(stderr.contains(&e), "{name}: {e} not in {stderr}");
        }
        assert!(!stderr.contains("preparing the teacher"), "{name}: refused only after work: {stderr}");
        assert!(!out_dir.exists(), "{name}");
    }
}

#[test]
fn invalid_spec_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let spec =
        std::fs::read_to_string(repo().join("examples/local/distill.yaml")).unwrap().replace("alpha: 0.3", "alpha: 7");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, spec).unwrap();
    let out = worker().args(["distill", "-f"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), PERMANENT, "{stderr}");
    assert!(stderr.contains("spec.loss.alpha"), "{stderr}");
}

#[test]
fn unset_variable_and_missing_file_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vars.yaml");
    std::fs::write(&path, "apiVersion: distillery.dev/v1alpha1\nkind: DistillationJob\nmetadata: {name: x}\nspec:\n  teacher: {uri: \"file://${NOT_SET_ANYWHERE}/t\"}\n").unwrap();
    let out = worker().args(["distill", "-f"]).arg(&path).env_remove("NOT_SET_ANYWHERE").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), PERMANENT);
    assert!(stderr.contains("NOT_SET_ANYWHERE is not set"), "{stderr}");

    let out = worker().args(["distill", "-f", "/nonexistent/job.yaml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), PERMANENT);
    assert!(stderr.contains("cannot read /nonexistent/job.yaml"), "{stderr}");
}

#[test]
fn a_teacher_directory_without_weights_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let err = distillery_worker::teacher::model_dir::inspect(dir.path()).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn a_job_asking_for_a_gpu_is_refused_by_a_worker_built_without_cuda_never_run_on_the_cpu() {
    if cfg!(feature = "cuda") {
        return; // a CUDA build takes the GPU path; this is about the CPU build
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = std::fs::read_to_string(small_job()).unwrap();
    assert!(spec.contains("count: 0"), "the fixture trains on the CPU");
    let path = dir.path().join("gpu.yaml");
    std::fs::write(&path, spec.replace("count: 0", "count: 1")).unwrap();
    let out_dir = dir.path().join("out");
    let out = worker().args(["distill", "-f"]).arg(&path).arg("--output").arg(&out_dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), PERMANENT, "{stderr}");
    assert!(stderr.contains("spec.resources.gpu.count is 1") && stderr.contains("without CUDA"), "{stderr}");
    assert!(!stderr.contains("preparing the teacher"), "refused before any work: {stderr}");
    assert!(!out_dir.exists());
}
