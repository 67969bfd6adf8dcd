//! `distillery-worker analyze` and `inspect` against real `distillery-server` processes serving the
//! small job's artifact (trained once per test run by the real `distillery-worker distill`).
//!
//! Two servers on the same artifact must agree on every golden input, and the live traffic the
//! test sends during the window must be counted exactly per track. A fake canary that records what
//! it is sent checks which golden rows each run uses. An unreachable canary is a run error, not a
//! failure of the command. `inspect` must give the manifest's digests and refuse a changed file.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use distillery_tests::cluster::workspace_binary;
use distillery_tests::server_process::dechunk;
use serde_json::{Value, json};
use sha2::Digest;

/// The small job's artifact, trained once per worker build and shared with the other test
/// binaries that read it ([`distillery_tests::shared_small_artifact`]).
fn artifact() -> &'static Path {
    static ARTIFACT: OnceLock<PathBuf> = OnceLock::new();
    ARTIFACT.get_or_init(distillery_tests::shared_small_artifact)
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("distillery.json")).unwrap()).unwrap()
}

/// A running `distillery-server`, killed when dropped.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new(workspace_binary("distillery-server"))
            .arg("--model")
            .arg(dir)
            .args(["--port", "0", "--address", "127.0.0.1"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let (mut address, mut log, mut line) = (None, String::new(), String::new());
        while address.is_none() && stderr.read_line(&mut line).unwrap() > 0 {
            address = line.split("listening on http://").nth(1).map(|a| a.trim().to_string());
            log.push_str(&line);
            line.clear();
        }
        let address = address.unwrap_or_else(|| panic!("the server did not start:\n{log}"));
        std::thread::spawn(move || for _ in stderr.lines().map_while(Result::ok) {});
        let server = Self { child, address };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(&server.address, "GET", "/v2/health/ready", "").0 != 200 {
            assert!(Instant::now() < deadline, "not ready after 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The labels this server gives `texts` in one request.
    fn labels(&self, texts: &[String]) -> Vec<String> {
        let (status, body) = http(&self.address, "POST", "/v2/models/small/infer", &infer_body(texts));
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["outputs"][0]["data"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn infer_body(texts: &[String]) -> String {
    json!({"inputs": [{"name": "text", "shape": [texts.len()], "datatype": "BYTES", "data": texts}],
           "outputs": [{"name": "label"}]})
    .to_string()
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {raw:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(body) } else { body.to_string() })
}

/// A V2 server that answers `label` for every text and records the texts it was sent.
struct FakeTrack {
    address: String,
    received: Arc<Mutex<Vec<String>>>,
}

impl FakeTrack {
    fn start(label: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let sink = sink.clone();
                std::thread::spawn(move || fake_connection(stream, label, &sink));
            }
        });
        Self { address, received }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.received.lock().unwrap())
    }
}

/// Serves keep-alive requests on one connection until the client closes it.
fn fake_connection(stream: TcpStream, label: &str, sink: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let (mut line, mut length) = (String::new(), 0);
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            match line.trim().split_once(':') {
                Some((k, v)) if k.eq_ignore_ascii_case("content-length") => length = v.trim().parse().unwrap(),
                None if line.trim().is_empty() => break,
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let request: Value = serde_json::from_slice(&body).unwrap();
        let texts: Vec<String> =
            request["inputs"][0]["data"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().into()).collect();
        let n = texts.len();
        sink.lock().unwrap().extend(texts);
        let answer = json!({"model_name": "small", "model_version": "fake", "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [n], "data": vec![label; n]}]})
        .to_string();
        let head =
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", answer.len());
        if writer.write_all((head + &answer).as_bytes()).is_err() {
            return;
        }
    }
}

/// Review snippets with their labels: 25 fresh, 25 rotten, all distinct.
const GOLDEN: [(&str, &str); 50] = [
    ("a warm, funny and thoroughly charming film", "fresh"),
    ("one of the best films of the year", "fresh"),
    ("a gorgeous, moving and beautifully acted drama", "fresh"),
    ("smart, tender and endlessly entertaining", "fresh"),
    ("a triumph of storytelling with a terrific cast", "fresh"),
    ("the director's most assured and affecting work yet", "fresh"),
    ("an exhilarating ride from start to finish", "fresh"),
    ("witty, heartfelt and surprisingly wise", "fresh"),
    ("a delight for audiences of every age", "fresh"),
    ("brilliantly written and superbly performed", "fresh"),
    ("a rare comedy that is as clever as it is kind", "fresh"),
    ("visually stunning and emotionally rich", "fresh"),
    ("a must-see, and a joy to watch", "fresh"),
    ("the performances are uniformly excellent", "fresh"),
    ("an intelligent thriller that keeps you guessing", "fresh"),
    ("funny, touching and full of life", "fresh"),
    ("a small gem that deserves a wide audience", "fresh"),
    ("richly rewarding and beautifully made", "fresh"),
    ("a powerful, haunting piece of cinema", "fresh"),
    ("charming and sweet without ever being sappy", "fresh"),
    ("a remarkable debut from a gifted filmmaker", "fresh"),
    ("this is a wonderful, generous movie", "fresh"),
    ("sharp dialogue and a great sense of fun", "fresh"),
    ("an absorbing and intelligent documentary", "fresh"),
    ("moving, honest and often very funny", "fresh"),
    ("a tedious mess with nothing to say", "rotten"),
    ("dull, lifeless and far too long", "rotten"),
    ("the script is a string of tired cliches", "rotten"),
    ("a boring film that wastes a fine cast", "rotten"),
    ("clumsy, predictable and painfully unfunny", "rotten"),
    ("an incoherent jumble of half-baked ideas", "rotten"),
    ("the worst movie i have seen in years", "rotten"),
    ("a lazy sequel that should never have been made", "rotten"),
    ("flat characters and a plot that goes nowhere", "rotten"),
    ("an embarrassing waste of time and talent", "rotten"),
    ("overlong, overwrought and underwhelming", "rotten"),
    ("the jokes fall flat one after another", "rotten"),
    ("a sloppy, forgettable action picture", "rotten"),
    ("ponderous and pretentious to the very end", "rotten"),
    ("neither scary nor funny, just dreary", "rotten"),
    ("a muddled story told without any energy", "rotten"),
    ("stale, shallow and instantly forgettable", "rotten"),
    ("the film never finds its footing", "rotten"),
    ("a grating, charmless romantic comedy", "rotten"),
    ("bland and lifeless despite its big budget", "rotten"),
    ("a joyless slog through familiar territory", "rotten"),
    ("the acting is wooden and the pacing glacial", "rotten"),
    ("a mean-spirited and sloppy comedy", "rotten"),
    ("an ugly, noisy and pointless remake", "rotten"),
    ("utterly without wit, warmth or surprise", "rotten"),
];

/// Unlabelled rows of the golden file (counted as samples, not as labelled).
const UNLABELLED: [&str; 2] = ["a film about a family on holiday", "the second feature from the director"];

/// Writes the golden CSV (with a row whose text is blank, which is skipped); its EvalDataset JSON.
fn golden_set(dir: &Path, samples: u32) -> String {
    let path = dir.join("golden.csv");
    let mut csv = String::from("quote,category\n");
    for (text, label) in GOLDEN {
        csv += &format!("\"{text}\",{label}\n");
    }
    csv += "\"   \",fresh\n";
    for text in UNLABELLED {
        csv += &format!("\"{text}\",\n");
    }
    std::fs::write(&path, csv).unwrap();
    json!({"uri": format!("file://{}", path.display()), "format": "csv", "textField": "quote",
           "labelField": "category", "samples": samples})
    .to_string()
}

fn label_of(text: &str) -> Option<&'static str> {
    GOLDEN.iter().find(|(t, _)| *t == text).map(|(_, l)| *l)
}

fn analyze(args: &[&str]) -> Output {
    Command::new(workspace_binary("distillery-worker")).arg("analyze").args(args).output().unwrap()
}

/// The run's JSON, checking the command succeeded.
fn run_json(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "analyze failed: {stderr}");
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn sum(predictions: &Value) -> u64 {
    predictions.as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum()
}

#[test]
fn two_servers_on_one_artifact_agree_and_live_traffic_is_counted_per_track() {
    let dir = artifact();
    let (stable, canary) = (Server::start(dir), Server::start(dir));
    let tmp = tempfile::tempdir().unwrap();
    let golden = golden_set(tmp.path(), 20);
    let message = tmp.path().join("termination-message");
    let mut child = Command::new(workspace_binary("distillery-worker"))
        .arg("analyze")
        .args(["--stable", &stable.url(), "--canary", &canary.url(), "--model-name", "small"])
        .args(["--golden-dataset", &golden, "--run", "0", "--window", "1s"])
        .args(["--stable-metrics", &format!("{}/metrics", stable.url())])
        .args(["--canary-metrics", &format!("{}/metrics", canary.url())])
        .arg("--termination-message")
        .arg(&message)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            lines.send(line).ok();
        }
    });
    let mut log = String::new();
    loop {
        let line = received.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}: {log}"));
        log += &(line.clone() + "\n");
        if line.contains("watching live traffic") {
            break;
        }
    }
    // The window is open: live traffic to both tracks, from two clients at once.
    let window_opened = Instant::now();
    let texts: Vec<String> = GOLDEN.iter().map(|(t, _)| t.to_string()).collect();
    let send = |address: String, requests: Vec<Vec<String>>, bad: usize| {
        std::thread::spawn(move || {
            for r in &requests {
                assert_eq!(http(&address, "POST", "/v2/models/small/infer", &infer_body(r)).0, 200);
            }
            for _ in 0..bad {
                assert_eq!(http(&address, "POST", "/v2/models/small/infer", "{not json").0, 400);
            }
        })
    };
    // Stable: 24 requests of one text and 3 of two (30 texts); canary: 20 of one text and 2 bad.
    let stable_requests: Vec<Vec<String>> =
        (0..24).map(|k| vec![texts[k].clone()]).chain((0..3).map(|k| texts[30 + 2 * k..32 + 2 * k].to_vec())).collect();
    let canary_requests: Vec<Vec<String>> = (0..20).map(|k| vec![texts[k + 5].clone()]).collect();
    let clients = [send(stable.address.clone(), stable_requests, 0), send(canary.address.clone(), canary_requests, 2)];
    clients.into_iter().for_each(|c| c.join().unwrap());
    let sent_within = window_opened.elapsed();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    log.extend(received.try_iter().map(|l| l + "\n"));
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    assert!(status.success(), "{log}");
    let run: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{log}"));
    assert_eq!(std::fs::read_to_string(&message).unwrap(), stdout.trim(), "the termination message is the output");
    assert!(run.get("errors").is_none(), "{run}");

    // Golden: the same model on both tracks agrees on every input.
    let g = &run["golden"];
    assert_eq!(g["samples"], 20, "{run}");
    assert_eq!(g["agreed"], 20);
    assert_eq!((g["stableOnly"].as_u64(), g["canaryOnly"].as_u64()), (Some(0), Some(0)));
    assert_eq!(g["stableCorrect"], g["canaryCorrect"]);
    let labelled = g["labelled"].as_u64().unwrap();
    assert!((18..=20).contains(&labelled), "at most the 2 unlabelled rows are in the slice: {run}");
    assert!(g["stableCorrect"].as_u64().unwrap() <= labelled);

    // Live: exactly what was sent during the window, per track (the server's warm-up runs no
    // HTTP request and the scrapes are not inferences; the golden requests came after the window).
    let live = &run["live"];
    let context = format!("the clients took {sent_within:?} of the 1 s window\n{run}\n{log}");
    assert_eq!(live["stable"]["requests"], 27, "{context}");
    assert_eq!(live["canary"]["requests"], 22, "2 of them answered 400: {context}");
    assert_eq!((live["stable"]["serverErrors"].as_u64(), live["canary"]["serverErrors"].as_u64()), (Some(0), Some(0)));
    assert_eq!(sum(&live["stable"]["predictions"]), 30, "one prediction per text: {context}");
    assert_eq!(sum(&live["canary"]["predictions"]), 20, "{context}");
    for track in ["stable", "canary"] {
        let p99 = live[track]["p99Ms"].as_f64().unwrap_or_else(|| panic!("{track} has no p99: {run}"));
        assert!(p99 > 0.0 && p99 < 10_000.0, "{p99}");
    }
    let window = live["windowSeconds"].as_f64().unwrap();
    assert!((1.0..5.0).contains(&window), "{window}");

    // The verdict for a person, on stderr.
    assert!(log.contains("agreement "), "{log}");
    assert!(log.contains("distillery-worker: analyze: verdict "), "{log}");
    assert!(log.contains("class-mix") || log.contains("error-rate"), "live checks are judged: {log}");
}

#[test]
fn each_run_takes_a_fresh_slice_of_the_shuffled_golden_set() {
    let stable = Server::start(artifact());
    let canary = FakeTrack::start("fresh");
    let tmp = tempfile::tempdir().unwrap();
    let golden = golden_set(tmp.path(), 20);
    let (stable_url, fake) = (stable.url(), format!("http://{}", canary.address));
    let run = |k: &str, extra: &[&str]| {
        let mut args = vec!["--stable", &stable_url, "--canary", &fake, "--model-name", "small"];
        args.extend(["--golden-dataset", &golden, "--run", k]);
        args.extend(extra);
        let out = run_json(&analyze(&args));
        (out, canary.take())
    };
    let (out0, run0) = run("0", &[]);
    let (out1, run1) = run("1", &["--batch-size", "7", "--in-flight", "3"]);
    let (out2, run2) = run("2", &[]);
    let (again, run0_again) = run("0", &[]);
    assert_eq!(run0.len(), 20);
    assert_eq!(run0_again, run0, "the same run sends the same rows in the same order");
    assert_eq!(again, out0);
    let (set0, set1, set2): (HashSet<_>, HashSet<_>, HashSet<_>) =
        (run0.iter().collect(), run1.iter().collect(), run2.iter().collect());
    assert_eq!(set1.len(), 20, "3 requests of 7, 7 and 6 texts: {run1:?}");
    assert!(set0.is_disjoint(&set1), "run 1 sees fresh rows");
    // 52 rows with a text: run 2 takes the last 12 and wraps around to the first 8 of run 0.
    assert_eq!(set2.len(), 20);
    assert!(set2.is_disjoint(&set1));
    assert_eq!(set2.intersection(&set0).count(), 8, "{run2:?}");
    assert_eq!(run2[12..], run0[..8], "the wrap-around continues from the start of the order");
    assert!(run0.iter().chain(&run1).chain(&run2).all(|t| !t.trim().is_empty()), "the blank row is skipped");
    let all: HashSet<&String> = set0.union(&set1).copied().chain(set2.iter().copied()).collect();
    assert_eq!(all.len(), 52, "three runs covered every row");

    // The paired counts against an independent computation: the fake canary says `fresh` for
    // everything; the stable server's labels come from the same texts in one request, as sent.
    for (out, texts) in [(&out0, &run0), (&out2, &run2)] {
        let stable_labels = stable.labels(texts);
        let (mut want, g) = (
            json!({"samples": texts.len(), "agreed": 0, "labelled": 0, "stableCorrect": 0,
            "canaryCorrect": 0, "stableOnly": 0, "canaryOnly": 0}),
            &out["golden"],
        );
        let add = |v: &mut Value, key: &str, yes: bool| v[key] = json!(v[key].as_u64().unwrap() + u64::from(yes));
        for (text, s) in texts.iter().zip(&stable_labels) {
            add(&mut want, "agreed", s == "fresh");
            if let Some(label) = label_of(text) {
                add(&mut want, "labelled", true);
                add(&mut want, "stableCorrect", s == label);
                add(&mut want, "canaryCorrect", label == "fresh");
                add(&mut want, "stableOnly", s == label && label != "fresh");
                add(&mut want, "canaryOnly", s != label && label == "fresh");
            }
        }
        assert_eq!(g, &want, "{texts:?} {stable_labels:?}");
    }
    assert!(out1["golden"]["samples"] == 20 && out1.get("errors").is_none(), "{out1}");
}

#[test]
fn an_unreachable_canary_is_a_run_error_and_bad_arguments_exit_1() {
    let stable = Server::start(artifact());
    let tmp = tempfile::tempdir().unwrap();
    let golden = golden_set(tmp.path(), 10);
    let message = tmp.path().join("message");
    let out = analyze(&[
        "--stable",
        &stable.url(),
        "--canary",
        "http://127.0.0.1:1",
        "--model-name",
        "small",
        "--golden-dataset",
        &golden,
        "--stable-metrics",
        &format!("{}/metrics", stable.url()),
        "--canary-metrics",
        "http://127.0.0.1:1/metrics",
        "--window",
        "0s",
        "--termination-message",
        message.to_str().unwrap(),
    ]);
    let run = run_json(&out);
    let errors: Vec<&str> = run["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert!(errors.iter().any(|e| e.starts_with("canary track http://127.0.0.1:1: cannot connect")), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("cannot scrape http://127.0.0.1:1/metrics")), "{errors:?}");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(run.get("golden").is_none(), "no partial evidence from a failed run: {run}");
    assert_eq!(run["live"]["stable"]["requests"], 0, "{run}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("verdict Error"), "{stderr}");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&message).unwrap()).unwrap();
    assert_eq!(written, run, "the termination message is the output");

    // A golden set that cannot be read is a run error too.
    let missing = json!({"uri": "file:///nonexistent/golden.csv"}).to_string();
    let url = stable.url();
    let run = run_json(&analyze(&[
        "--stable",
        &url,
        "--canary",
        &url,
        "--model-name",
        "small",
        "--golden-dataset",
        &missing,
    ]));
    assert!(run["errors"][0].as_str().unwrap().contains("/nonexistent/golden.csv"), "{run}");

    // Bad arguments: exit 1 with the reason, also in the termination message.
    for (args, want) in [
        (
            vec!["--stable-metrics", "http://a:1/metrics", "--canary-metrics", "http://b:1/metrics", "--window", "10"],
            "not a duration",
        ),
        (
            vec!["--stable", "localhost:1", "--canary", "http://a:1", "--model-name", "m", "--golden-dataset", &golden],
            "not a URL",
        ),
        (
            vec!["--stable", "http://a:1", "--canary", "http://a:1", "--model-name", "m", "--golden-dataset", "{nope"],
            "EvalDataset",
        ),
        (vec!["--window", "1s"], "nothing to measure"),
    ] {
        let mut args = args.clone();
        args.extend(["--termination-message", message.to_str().unwrap()]);
        let out = analyze(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(std::fs::read_to_string(&message).unwrap().contains(want));
    }
}

fn inspect(args: &[&str]) -> Output {
    Command::new(workspace_binary("distillery-worker")).arg("inspect").args(args).output().unwrap()
}

#[test]
fn inspect_gives_the_served_files_digest_and_refuses_a_changed_file() {
    let dir = artifact();
    let m = manifest(dir);
    let uri = format!("file://{}", dir.display());
    let manifest_digest = hex::encode(sha2::Sha256::digest(std::fs::read(dir.join("distillery.json")).unwrap()));
    let served = m["servedVariant"].as_str().unwrap();
    for (choice, variant) in [("auto", served), ("fp32", "fp32"), ("int8", "int8")] {
        let out = inspect(&["--artifact", &uri, "--variant", choice]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if m["variants"][variant]["file"].is_null() {
            // The int8 model failed its gate and was not written: nothing to serve.
            assert_eq!(out.status.code(), Some(1));
            assert!(stderr.contains(&uri) && stderr.contains("int8"), "{stderr}");
            continue;
        }
        assert!(out.status.success(), "{choice}: {stderr}");
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            got,
            json!({"modelUri": uri, "variant": variant, "modelDigest": m["variants"][variant]["sha256"],
                   "manifestDigest": manifest_digest}),
            "{choice}"
        );
    }
    // A plain path works too, and the JSON goes to the termination message.
    let tmp = tempfile::tempdir().unwrap();
    let message = tmp.path().join("message");
    let out = inspect(&["--artifact", dir.to_str().unwrap(), "--termination-message", message.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&message).unwrap(), String::from_utf8(out.stdout).unwrap().trim());

    // A served file changed after the manifest was written.
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    let file = copy.join(m["variants"][served]["file"].as_str().unwrap());
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let copy_uri = format!("file://{}", copy.display());
    let refused = |args: &[&str], want: &[&str]| {
        let out = inspect(&[args, &["--termination-message", message.to_str().unwrap()][..]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(out.stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        for w in want {
            assert!(stderr.contains(w), "{w:?} not in {stderr}");
        }
        assert_eq!(format!("distillery-worker: {}\n", std::fs::read_to_string(&message).unwrap()), stderr);
    };
    refused(&["--artifact", &copy_uri], &[&copy_uri, "does not match the manifest"]);
    refused(&["--artifact", "/nonexistent/artifact"], &["/nonexistent/artifact", "no such artifact directory"]);
    std::fs::remove_file(copy.join("distillery.json")).unwrap();
    refused(&["--artifact", &copy_uri], &[&copy_uri, "distillery.json"]);
    refused(&["--artifact", "https://x/small"], &["https://x/small", "https:// artifacts are not supported"]);
}
