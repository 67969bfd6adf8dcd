//! `distillery-server` on a real exported model: the small job's artifact (real teacher and data,
//! trained, exported and quantized by the real `distillery-worker`), served by the real binary
//! and driven over HTTP. Every endpoint, every error case, many concurrent clients, a full queue,
//! and SIGTERM while requests are in flight. Answers are compared with the worker's offline
//! predictions (`distillery-worker predict`) for the same texts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use distillery_tests::cluster::workspace_binary;
use distillery_tests::server_process::{Response, ServerProcess as Server, http};
use serde_json::{Value, json};

/// The small job's artifact, trained once per worker build and shared with the other test
/// binaries that read it ([`distillery_tests::shared_small_artifact`]).
fn artifact() -> &'static Path {
    static ARTIFACT: OnceLock<PathBuf> = OnceLock::new();
    ARTIFACT.get_or_init(distillery_tests::shared_small_artifact)
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("distillery.json")).unwrap()).unwrap()
}

/// `distillery-worker predict` on `dir`: text → (label, logits).
fn offline(dir: &Path, variant: &str, batch: usize) -> Vec<(String, String, Vec<f32>)> {
    let out = Command::new(workspace_binary("distillery-worker"))
        .args(["predict", "--variant", variant, "--batch-size", &batch.to_string(), "-a"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let logits = v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (v["text"].as_str().unwrap().to_string(), v["label"].as_str().unwrap().to_string(), logits)
        })
        .collect()
}

fn text_request(texts: &[&str], outputs: &[&str]) -> Value {
    let mut body = json!({"inputs": [{"name": "text", "shape": [texts.len()], "datatype": "BYTES", "data": texts}]});
    if !outputs.is_empty() {
        body["outputs"] = outputs.iter().map(|o| json!({"name": o})).collect();
    }
    body
}

/// The output named `name` of a response.
fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap_or_else(|| panic!("{response}"))
}

/// A metric's value from the text format (the first sample whose line starts with `prefix`).
fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
}

/// Sends every text from `clients` threads at once, one text per request, each request with an
/// id; returns (text, label, logits) per text and checks every id came back.
fn concurrent_predictions(server: &Server, texts: &[String], clients: usize) -> Vec<(String, String, Vec<f32>)> {
    let texts = Arc::new(texts.to_vec());
    let address = server.address.clone();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (texts, address) = (texts.clone(), address.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for k in (c..texts.len()).step_by(clients) {
                    let mut body = text_request(&[&texts[k]], &["logits", "label"]);
                    body["id"] = json!(format!("req-{k}"));
                    let r = http(&address, "POST", "/v2/models/small/infer", body.to_string().as_bytes(), &[]);
                    assert_eq!(r.status, 200, "{}", r.body);
                    let v = r.json();
                    assert_eq!(v["id"], format!("req-{k}"), "the request id is echoed");
                    let logits = output(&v, "logits")["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap() as f32)
                        .collect();
                    out.push((k, output(&v, "label")["data"][0].as_str().unwrap().to_string(), logits));
                }
                out
            })
        })
        .collect();
    let mut rows: Vec<(usize, String, Vec<f32>)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    rows.sort_by_key(|r| r.0);
    assert_eq!(rows.len(), texts.len());
    rows.into_iter().map(|(k, label, logits)| (texts[k].clone(), label, logits)).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn every_endpoint_answers_and_concurrent_predictions_equal_the_workers_offline_ones() {
    let dir = artifact();
    let m = manifest(dir);
    let served = m["servedVariant"].as_str().unwrap().to_string();
    let fp32 = Server::start(dir, &["--variant", "fp32", "--max-batch-size", "8"]);

    // Health, server and model metadata.
    let live = fp32.get("/v2/health/live");
    assert_eq!((live.status, live.json()), (200, json!({"live": true})));
    assert_eq!(
        (fp32.get("/v2/health/ready").status, fp32.get("/v2/models/small/ready").json()["ready"].clone()),
        (200, json!(true))
    );
    assert_eq!(fp32.get("/v2").json()["name"], "distillery-server");
    let meta = fp32.get("/v2/models/small").json();
    assert_eq!(meta["name"], "small");
    assert_eq!(meta["parameters"]["variant"], "fp32");
    assert_eq!(meta["parameters"]["sha256"], m["variants"]["fp32"]["sha256"]);
    assert_eq!(meta["parameters"]["labels"], json!(["fresh", "rotten"]));

    // 64 concurrent clients, one text each request, batched by the server: the same labels and,
    // within float rounding of a different batch shape, the same logits as the worker offline.
    let reference = offline(dir, "fp32", 32);
    let texts: Vec<String> = reference.iter().map(|r| r.0.clone()).collect();
    assert!(texts.len() >= 100, "{} held-out texts", texts.len());
    let answers = concurrent_predictions(&fp32, &texts, 64);
    for ((text, label, logits), (_, want_label, want_logits)) in answers.iter().zip(&reference) {
        assert_eq!(label, want_label, "{text}");
        assert!(max_diff(logits, want_logits) <= 1e-4, "{text}: {logits:?} vs {want_logits:?}");
    }
    let metrics = fp32.metrics();
    let batches = metric(&metrics, "distillery_server_batch_size_count");
    let sequences = metric(&metrics, "distillery_server_batch_size_sum");
    assert_eq!(sequences as usize, texts.len(), "every text ran once (warm-up is not counted)");
    assert!(
        batches < texts.len() as f64,
        "64 concurrent clients were batched: {batches} runs for {} texts",
        texts.len()
    );
    let predicted = metric(&metrics, "distillery_server_predictions_total{class=\"fresh\"}")
        + metric(&metrics, "distillery_server_predictions_total{class=\"rotten\"}");
    assert_eq!(predicted as usize, texts.len());
    let fresh = reference.iter().filter(|r| r.1 == "fresh").count();
    assert_eq!(metric(&metrics, "distillery_server_prediction_confidence_count{class=\"fresh\"}") as usize, fresh);
    assert_eq!(
        metric(&metrics, "distillery_server_requests_total{endpoint=\"infer\",code=\"200\"}") as usize,
        texts.len()
    );
    assert!(
        metrics.contains(&format!(
            "distillery_server_model_info{{model=\"small\",variant=\"fp32\",digest=\"{}\"",
            m["variants"]["fp32"]["sha256"].as_str().unwrap()
        )),
        "{metrics}"
    );
    drop(fp32);

    // The served variant (auto: the manifest's choice), one text per run: exactly the worker's
    // batch-1 predictions. (Dynamic int8 quantizes activations per run, so an int8 text's logits
    // move slightly with its batch-mates; one text per run removes that.)
    let auto = Server::start(dir, &["--max-batch-size", "1"]);
    let meta = auto.get("/v2/models/small").json();
    assert_eq!(meta["parameters"]["variant"], served.as_str());
    assert_eq!(meta["parameters"]["sha256"], m["variants"][&served]["sha256"]);
    let reference = offline(dir, "auto", 1);
    let answers = concurrent_predictions(&auto, &texts, 16);
    for ((text, label, logits), (_, want_label, want_logits)) in answers.iter().zip(&reference) {
        assert_eq!(label, want_label, "{text}");
        assert!(max_diff(logits, want_logits) <= 1e-4, "{text}: {logits:?} vs {want_logits:?}");
    }
    // Several texts in one request, every output: shapes, probabilities that sum to 1, labels
    // that are the arg-max, embeddings as wide as the model.
    let r = auto.infer("small", &text_request(&[&texts[0], &texts[1], &texts[2]], &[])).json();
    assert_eq!(r["model_name"], "small");
    assert_eq!(
        r["outputs"].as_array().unwrap().iter().map(|o| o["name"].clone()).collect::<Vec<_>>(),
        ["logits", "probabilities", "label"]
    );
    let p = &output(&r, "probabilities");
    assert_eq!(p["shape"], json!([3, 2]));
    for row in p["data"].as_array().unwrap().chunks(2) {
        assert!((row[0].as_f64().unwrap() + row[1].as_f64().unwrap() - 1.0).abs() < 1e-5);
    }
    let e = auto.infer("small", &text_request(&[&texts[0]], &["embedding"])).json();
    let hidden = serde_json::from_str::<Value>(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()["hidden_size"].clone();
    assert_eq!(output(&e, "embedding")["shape"], json!([1, hidden]));
}

#[test]
fn token_ids_give_the_same_answer_as_the_text() {
    let dir = artifact();
    let server = Server::start(dir, &[]);
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let text = "a warm, funny and thoroughly charming film";
    let ids: Vec<i64> = tokenizer.encode(text, true).unwrap().get_ids().iter().map(|&i| i64::from(i)).collect();
    let n = ids.len();
    let mut padded = ids.clone();
    padded.extend([0, 0]);
    let mask: Vec<i64> = std::iter::repeat_n(1, n).chain([0, 0]).collect();
    let by_ids = server
        .infer(
            "small",
            &json!({"inputs": [
            {"name": "input_ids", "shape": [1, n + 2], "datatype": "INT64", "data": padded},
            {"name": "attention_mask", "shape": [1, n + 2], "datatype": "INT64", "data": mask}
        ], "outputs": [{"name": "logits"}]}),
        )
        .json();
    let by_text = server.infer("small", &text_request(&[text], &["logits"])).json();
    let (a, b) = (&output(&by_ids, "logits")["data"], &output(&by_text, "logits")["data"]);
    for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
        assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn bad_requests_get_a_4xx_that_says_what_is_wrong_and_the_server_keeps_serving() {
    let server = Server::start(artifact(), &["--max-body-bytes", "4096", "--max-queue", "8"]);
    let raw = |path: &str, body: &str| http(&server.address, "POST", path, body.as_bytes(), &[]);
    let cases: Vec<(Response, u16, &str)> = vec![
        (raw("/v2/models/small/infer", "{not json"), 400, "invalid inference request"),
        (raw("/v2/models/small/infer", ""), 400, "invalid inference request"),
        (server.infer("small", &json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["one"]}]})), 400, "declares 2 elements"),
        (server.infer("small", &json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [7]}]})), 400, "must be a string"),
        (server.infer("small", &json!({"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]})), 400, "INT64 or INT32"),
        (server.infer("small", &json!({"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [99999999]}]})), 400, "outside the vocabulary"),
        (server.infer("small", &json!({"inputs": [{"name": "input_ids", "shape": [1, 600], "datatype": "INT64", "data": vec![1; 600]}]})), 400, "at most"),
        (server.infer("small", &json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}], "outputs": [{"name": "scores"}]})), 400, "use one of logits"),
        (server.infer("nope", &text_request(&["x"], &[])), 404, "not served here"),
        (server.get("/v2/models/nope"), 404, "not served here"),
        (server.get("/v2/models/nope/ready"), 404, "not served here"),
        (server.get("/v3/whatever"), 404, "no such endpoint"),
        (raw("/v2/models/small/infer", &text_request(&[&"long text ".repeat(500)], &[]).to_string()), 413, "too large"),
        (server.infer("small", &text_request(&["a"; 9], &[])), 413, "at most 8 per request"),
    ];
    for (k, (response, status, message)) in cases.iter().enumerate() {
        assert_eq!(response.status, *status, "case {k}: {}", response.body);
        let error = response.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(message), "case {k}: expected {message:?} in {error:?}");
    }
    let ok = server.infer("small", &text_request(&["still serving"], &["label"]));
    assert_eq!(ok.status, 200, "{}", ok.body);
    let metrics = server.metrics();
    assert_eq!(metric(&metrics, "distillery_server_requests_total{endpoint=\"infer\",code=\"400\"}"), 8.0);
    assert_eq!(metric(&metrics, "distillery_server_requests_total{endpoint=\"infer\",code=\"413\"}"), 2.0);
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn a_full_queue_answers_429_with_retry_after_and_admitted_requests_succeed() {
    let server = Server::start(artifact(), &["--max-queue", "4", "--model-threads", "1", "--max-batch-size", "1"]);
    let text = "an unexpectedly moving and very long review ".repeat(6);
    let address = server.address.clone();
    let statuses: Vec<(u16, Option<String>)> = (0..48)
        .map(|_| {
            let (address, text) = (address.clone(), text.clone());
            std::thread::spawn(move || {
                let body = text_request(&[&text, &text, &text, &text], &["label"]).to_string();
                (0..4)
                    .map(|_| {
                        let r = http(&address, "POST", "/v2/models/small/infer", body.as_bytes(), &[]);
                        (r.status, r.headers.get("retry-after").cloned())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let rejected: Vec<_> = statuses.iter().filter(|s| s.0 == 429).collect();
    let ok = statuses.iter().filter(|s| s.0 == 200).count();
    assert!(!rejected.is_empty(), "48 clients against a queue of 4 texts: some must be refused");
    assert!(ok > 0);
    assert_eq!(ok + rejected.len(), statuses.len(), "only 200s and 429s: {statuses:?}");
    assert!(rejected.iter().all(|s| s.1.as_deref() == Some("1")), "every 429 carries Retry-After");
    assert_eq!(server.infer("small", &text_request(&["after the storm"], &["label"])).status, 200);
    let metrics = server.metrics();
    assert_eq!(
        metric(&metrics, "distillery_server_requests_total{endpoint=\"infer\",code=\"429\"}") as usize,
        rejected.len()
    );
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_cleanly() {
    // One model thread running one text at a time: six requests of 1,000 texts take a while.
    let mut server =
        Server::start(artifact(), &["--model-threads", "1", "--max-batch-size", "1", "--max-queue", "8192"]);
    let texts: Vec<String> =
        (0..1000).map(|k| format!("review number {k}: {}", "quite good, really ".repeat(5))).collect();
    let address = server.address.clone();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (address, texts) = (address.clone(), texts.clone());
            std::thread::spawn(move || {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let r = http(
                    &address,
                    "POST",
                    "/v2/models/small/infer",
                    text_request(&refs, &["label"]).to_string().as_bytes(),
                    &[],
                );
                (r.status, r.json()["outputs"][0]["data"].as_array().map_or(0, Vec::len))
            })
        })
        .collect();
    // Wait until every request is admitted (in flight, or already answered in full: a client
    // thread started late under load may find the first ones done) while at least two are in
    // flight and one whole request still waits behind the running one. Then SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut most_in_flight = 0.0f64;
    loop {
        let metrics = server.metrics();
        let in_flight = metric(&metrics, "distillery_server_requests_in_flight");
        let queued = metric(&metrics, "distillery_server_queue_depth");
        let finished = clients.iter().filter(|c| c.is_finished()).count();
        if in_flight as usize + finished == 6 && in_flight >= 2.0 && queued >= 1000.0 {
            break;
        }
        most_in_flight = most_in_flight.max(in_flight);
        assert!(
            Instant::now() < deadline && finished < 5,
            "never six requests admitted with two in flight and a whole one queued: {in_flight} in flight now, at most {most_in_flight} at once, {queued} texts queued, {finished} clients finished"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let kill = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    for c in clients {
        assert_eq!(c.join().unwrap(), (200, 1000), "an in-flight request was answered in full");
    }
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit {status:?}\n{}", server.log());
    assert!(server.log().contains("draining"), "{}", server.log());
    assert!(TcpStream::connect(&server.address).is_err(), "nothing listens after exit");
}

#[test]
fn an_artifact_that_cannot_be_served_stops_the_server_with_a_clear_error() {
    let fails = |dir: &Path, extra: &[&str]| {
        let out = Command::new(workspace_binary("distillery-server"))
            .arg("--model")
            .arg(dir)
            .args(["--port", "0", "--address", "127.0.0.1"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    };
    let missing = fails(Path::new("/nonexistent/artifact"), &[]);
    assert!(missing.contains("/nonexistent/artifact") && missing.contains("no such artifact directory"), "{missing}");
    // A served file changed after the manifest was written.
    let copy = tempfile::tempdir().unwrap();
    let src = artifact();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
    }
    let fp32 = copy.path().join("model.onnx");
    let mut bytes = std::fs::read(&fp32).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&fp32, bytes).unwrap();
    let tampered = fails(copy.path(), &["--variant", "fp32"]);
    assert!(tampered.contains("does not match the manifest"), "{tampered}");
    let no_ort = Command::new(workspace_binary("distillery-server"))
        .arg("--model")
        .arg(src)
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert_eq!(no_ort.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_ort.stderr).contains("scripts/setup.sh"));
}

/// The HTTP status of `GET path`, or `None` when nothing answers.
fn try_status(address: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok();
    String::from_utf8_lossy(&raw).split(' ').nth(1)?.parse().ok()
}

#[test]
fn a_server_told_which_digest_to_serve_serves_it_and_refuses_any_other_before_turning_ready() {
    let dir = artifact();
    let m = manifest(dir);
    let served = m["servedVariant"].as_str().unwrap().to_string();
    let digest = m["variants"][&served]["sha256"].as_str().unwrap().to_string();
    let file = dir.join(m["variants"][&served]["file"].as_str().unwrap());

    // The digest the rollout resolved, with or without its prefix: served as usual.
    for (variant, expected) in
        [("auto", format!("sha256:{digest}")), ("fp32", m["variants"]["fp32"]["sha256"].as_str().unwrap().to_string())]
    {
        let server = Server::start(dir, &["--variant", variant, "--expect-digest", &expected]);
        let meta = server.get("/v2/models/small").json();
        assert_eq!(meta["parameters"]["sha256"].as_str(), Some(expected.trim_start_matches("sha256:")));
        let r = server.infer("small", &text_request(&["a gorgeous, moving film"], &["label"]));
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // Another digest — the artifact at this location is not what the rollout resolved: exit 1
    // with a message naming the file, the variant and both digests, and never ready.
    let other = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"another model"));
    let mut child = Command::new(workspace_binary("distillery-server"))
        .arg("--model")
        .arg(dir)
        .args(["--port", "0", "--address", "127.0.0.1", "--expect-digest", &other])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let mut address = None;
    while address.is_none() && stderr.read_line(&mut log).unwrap() > 0 {
        address = log.lines().last().and_then(|l| l.split("listening on http://").nth(1)).map(|a| a.trim().to_string());
    }
    let address = address.unwrap_or_else(|| panic!("the server did not listen:\n{log}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if try_status(&address, "/v2/health/ready") == Some(200) {
            child.kill().ok();
            child.wait().ok();
            panic!("a server told to serve another digest turned ready");
        }
        assert!(Instant::now() < deadline, "the server neither exited nor turned ready within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    stderr.read_to_string(&mut log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    let refusal = format!(
        "refusing to serve {} (the {served} variant): its sha256 is {digest} but this server must serve {other}",
        file.display()
    );
    assert!(log.contains(&refusal), "{refusal}\nnot in:\n{log}");
    assert!(log.contains("artifacts are immutable"), "{log}");
    assert!(!log.contains("warmed up") && !log.contains("panicked"), "{log}");

    // A malformed digest is refused by the command line, before anything is loaded.
    for bad in ["sha256:abc", &digest.to_uppercase()] {
        let out = Command::new(workspace_binary("distillery-server"))
            .arg("--model")
            .arg(dir)
            .args(["--port", "0", "--expect-digest", bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--expect-digest") && stderr.contains("64 lower-case hex digits"), "{stderr}");
        assert!(!stderr.contains("listening"), "{stderr}");
    }
}
