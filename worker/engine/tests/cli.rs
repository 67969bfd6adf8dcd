//! The worker's command line on the embedded default spec and on bad input.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_distillery-worker"))
}

#[test]
fn embedded_default_is_valid_and_the_teacher_is_read_but_nothing_pretends_to_train() {
    let out = worker().args(["distill", "-f"]).arg(repo().join("examples/local/distill.yaml")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("spec is valid"), "{stdout}");
    // all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads, 22.7M parameters (the model card's figure).
    assert!(stdout.contains("6 layers, hidden 384, 12 heads"), "{stdout}");
    assert!(stdout.contains("22.7M parameters"), "{stdout}");
    assert!(stdout.contains("Not built yet"), "{stdout}");
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
