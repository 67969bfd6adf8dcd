//! The worker's command line on the embedded default spec and on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    assert_eq!(m["lineage"]["specHash"].as_str().unwrap().len(), 64);
    // The artifact's tokenizer and config agree: the pruned vocabulary is what the weights hold.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(a.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.get_vocab_size(true) as u64, config["vocab_size"].as_u64().unwrap());
    assert_eq!(config["embedding_size"], 64);
    let weights = candle_core::safetensors::load(a.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(weights["embeddings.word_embeddings.weight"].dims()[0] as u64, config["vocab_size"].as_u64().unwrap());

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
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-file.csv"), "{stderr}");
    assert!(!out_dir.exists());
}

#[test]
fn a_spec_feature_not_built_yet_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let spec = std::fs::read_to_string(small_job()).unwrap().replace(
        "    maxExamples: 600\n",
        "    maxExamples: 600\n    transferSet: {uri: \"file:///tmp/t.txt\", format: text}\n",
    );
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, spec).unwrap();
    let out = worker().args(["distill", "-f"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("spec.dataset.transferSet") && stderr.contains("not built yet"), "{stderr}");
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
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("spec.loss.alpha"), "{stderr}");
}

#[test]
fn unset_variable_and_missing_file_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vars.yaml");
    std::fs::write(&path, "apiVersion: distillery.dev/v1alpha1\nkind: DistillationJob\nmetadata: {name: x}\nspec:\n  teacher: {uri: \"file://${NOT_SET_ANYWHERE}/t\"}\n").unwrap();
    let out = worker().args(["distill", "-f"]).arg(&path).env_remove("NOT_SET_ANYWHERE").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("NOT_SET_ANYWHERE is not set"), "{stderr}");

    let out = worker().args(["distill", "-f", "/nonexistent/job.yaml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("cannot read /nonexistent/job.yaml"), "{stderr}");
}

#[test]
fn a_teacher_directory_without_weights_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let err = distillery_worker::teacher::inspect(dir.path()).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}
