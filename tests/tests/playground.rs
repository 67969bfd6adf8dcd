//! The README's playground walkthrough, as a new user runs it: the playground example started as
//! the README says, the examples applied with `kubectl`, the model changed, the rollout watched
//! and described with `kubectl`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Playground(Child);

impl Drop for Playground {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl").args(args).env("KUBECONFIG", kubeconfig).output().expect("kubectl runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn jsonpath(kubeconfig: &Path, path: &str) -> String {
    kubectl(kubeconfig, &["get", "mdep", "reviews", "-o", &format!("jsonpath={path}")]).1
}

/// One inference on the Service at `address`, as `curl` would send it.
fn infer(address: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let body =
        r#"{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["a warm, funny and clever film"]}]}"#;
    let mut stream = std::net::TcpStream::connect(address).expect("the Service answers");
    write!(
        stream,
        "POST /v2/models/reviews/infer HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let json = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {response}"))
}

fn wait(what: &str, timeout: Duration, log: &Path, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(40).collect();
            panic!(
                "timed out waiting for {what}; operator log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_readme_walkthrough_works_in_the_playground() {
    if !distillery_tests::kubectl_installed() {
        panic!("kubectl is needed for the playground walkthrough");
    }
    let root = tempfile::tempdir().unwrap();
    // `cargo run -p distillery-tests --example playground`, already built by `cargo test`.
    let exe = std::env::current_exe().unwrap();
    let binary: PathBuf = exe.parent().and_then(Path::parent).unwrap().join("examples/playground");
    assert!(binary.exists(), "{} is not built (cargo test builds the examples)", binary.display());
    let mut child = Command::new(&binary)
        .env("DISTILLERY_PLAYGROUND_DIR", root.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let playground = Playground(child);
    let kubeconfig = PathBuf::from(
        first.trim().strip_prefix("export KUBECONFIG=").expect("the playground prints the KUBECONFIG to export"),
    );
    let log = root.path().join("operator.log");
    let examples = distillery_tests::repo_root().join("examples/local/playground");

    for file in ["01-distillationjobs.yaml", "02-modeldeployment.yaml"] {
        let (ok, out) = kubectl(&kubeconfig, &["apply", "--server-side", "-f", examples.join(file).to_str().unwrap()]);
        assert!(ok, "{out}");
    }
    wait("reviews to be Healthy on reviews-a", Duration::from_secs(900), &log, || {
        jsonpath(&kubeconfig, "{.status.phase}") == "Healthy"
    });
    let (_, table) = kubectl(&kubeconfig, &["get", "mdep"]);
    assert!(table.contains("reviews") && table.contains("Healthy"), "{table}");
    // The DistillationJob's model is what answers on the ModelDeployment's Service.
    let a_uri = kubectl(&kubeconfig, &["get", "dj", "reviews-a", "-o", "jsonpath={.status.result.artifactUri}"]).1;
    assert_eq!(jsonpath(&kubeconfig, "{.status.stable.modelUri}"), a_uri);
    let digest = jsonpath(&kubeconfig, "{.status.stable.modelDigest}");
    let ip = kubectl(&kubeconfig, &["get", "svc", "reviews", "-o", "jsonpath={.spec.clusterIP}"]).1;
    let answer = infer(&format!("{ip}:8080"));
    assert_eq!(answer["model_version"].as_str(), Some(&digest[..12]), "{answer}");
    wait("reviews-b to succeed", Duration::from_secs(900), &log, || {
        kubectl(&kubeconfig, &["get", "dj", "reviews-b", "-o", "jsonpath={.status.phase}"]).1 == "Succeeded"
    });
    let (ok, out) = kubectl(
        &kubeconfig,
        &[
            "patch",
            "mdep",
            "reviews",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"model":{"distillationJobRef":{"name":"reviews-b"}}}}"#,
        ],
    );
    assert!(ok, "{out}");
    let b_digest = kubectl(&kubeconfig, &["get", "dj", "reviews-b", "-o", "jsonpath={.status.result.artifactUri}"]).1;
    let mut saw_canary = false;
    wait("the rollout of reviews-b to end", Duration::from_secs(300), &log, || {
        saw_canary |= !jsonpath(&kubeconfig, "{.status.canary.modelDigest}").is_empty();
        let phase = jsonpath(&kubeconfig, "{.status.phase}");
        phase == "RolledBack" || (phase == "Healthy" && jsonpath(&kubeconfig, "{.status.stable.modelUri}") == b_digest)
    });
    assert!(saw_canary, "reviews-b went out as a canary");
    let (ok, described) = kubectl(&kubeconfig, &["describe", "mdep", "reviews"]);
    assert!(ok, "{described}");
    for expected in ["Last Analysis", "Verdict", "Passed"] {
        assert!(described.contains(expected), "kubectl describe shows {expected:?}:\n{described}");
    }
    // The Events (events.k8s.io/v1; `kubectl describe` reads core/v1 Events, which the harness
    // does not mirror — see tests/README.md).
    let (ok, reasons) = kubectl(&kubeconfig, &["get", "events.events.k8s.io", "-o", "jsonpath={.items[*].reason}"]);
    assert!(ok, "{reasons}");
    for expected in ["CanaryStarted", "StepStarted", "AnalysisPassed", "Promoted"] {
        assert!(reasons.contains(expected), "an Event {expected}: {reasons}");
    }
    drop(playground);
}
