//! `distillery-worker analyze`: one canary-analysis run between the stable and the canary track of
//! a ModelDeployment — what the operator's analysis Job runs, and what a person can run by hand.
//!
//! A run measures two things and judges neither (the operator judges the evidence of the whole
//! rollout with [`distillery_crds::analysis::judge`]):
//!
//! - **Live traffic** ([`measure_live`]): every server pod's `/metrics` is scraped, the window
//!   waited out, and every pod scraped again; per track, the deltas summed over the pods present in
//!   both scrapes give the inference requests answered, those answered 5xx, the p99 latency (from
//!   the request-duration histogram's bucket deltas) and the predictions by class. This happens
//!   *before* the golden inputs are sent, so the analysis's own requests never count as live
//!   traffic.
//! - **Golden set** ([`measure_golden`]): the dataset's rows are shuffled with a fixed seed and run
//!   `K` takes the `samples` rows from `K·samples` on, wrapping around the end ([`golden_slice`]),
//!   so every run sees fresh inputs while the order stays reproducible. Both tracks label the same
//!   slice (KServe V2, texts in batches, a few requests in flight) and the paired counts become a
//!   [`GoldenEvidence`].
//!
//! A measurement that cannot be made (an unreadable golden set, a track that cannot be reached or
//! answers errors, a pod whose `/metrics` is down) is recorded in [`AnalysisRun::errors`] and the
//! run still succeeds: the operator turns errors into an `Error` verdict. Only bad arguments are
//! an [`AnalyzeError`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use distillery_crds::analysis::{AnalysisRun, LiveTraffic, TrackTraffic};
use distillery_crds::common::{Compression, DataFormat, EvalDataset};
use distillery_crds::deployment::GoldenEvidence;

use crate::store::{Kind, Resolver, StoreError};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// Seed of the golden set's shuffle: fixed, so run `K` of every rollout sees the same rows.
pub const GOLDEN_SEED: u64 = 0;
/// Most errors kept in a run's output (the rest are counted), so it fits a termination message.
pub const MAX_ERRORS: usize = 8;
/// Longest error message kept, in bytes.
pub const MAX_ERROR_LEN: usize = 300;
/// Times a request refused with 429 or 503 (a full queue) is tried again, 250 ms apart.
const RETRIES: u32 = 20;
/// The metric names read from `distillery-server` (see `worker/server/src/metrics.rs`).
const REQUESTS: &str = "distillery_server_requests_total";
const DURATION_BUCKET: &str = "distillery_server_request_duration_seconds_bucket";
const PREDICTIONS: &str = "distillery_server_predictions_total";

/// Bad arguments: the only reason `analyze` fails.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// A URL that is not `http://host:port[/path]`.
    #[error("{flag} {url:?}: not a URL like http://10.0.0.7:8080 (only plain http is supported)")]
    BadUrl {
        /// The flag it was given to.
        flag: &'static str,
        /// The URL.
        url: String,
    },
    /// A duration that is not like `30s`, `1m`, `250ms` or `1h30m`.
    #[error("{flag} {text:?}: not a duration like 30s, 1m, 250ms or 1h30m")]
    BadDuration {
        /// The flag it was given to.
        flag: &'static str,
        /// What was given.
        text: String,
    },
    /// `--golden-dataset` is not an EvalDataset.
    #[error(
        "--golden-dataset: not an EvalDataset as JSON (uri, format, compression, textField, labelField, samples, volumeClaim): {0}"
    )]
    BadDataset(serde_json::Error),
    /// Nothing to measure, or a flag out of range.
    #[error("{0}")]
    Usage(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Why the golden set could not be read (recorded as a run error, never fatal).
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    /// The URI cannot be used, or its `s3://` object could not be downloaded (the message names
    /// the URI).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file could not be opened or read.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong (with the row where known).
        message: String,
    },
    /// A field named by the spec is not in the file.
    #[error("{path}: no field {field:?} ({hint})")]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What fields there are.
        hint: String,
    },
    /// Not one row with a text.
    #[error("{0}: no rows with a text")]
    Empty(PathBuf),
}

/// Everything one run needs, parsed from the command line.
#[derive(Clone, Debug)]
pub struct AnalyzeOptions {
    /// The stable track's base URL.
    pub stable: Option<String>,
    /// The canary track's base URL.
    pub canary: Option<String>,
    /// The V2 model name both tracks serve.
    pub model_name: Option<String>,
    /// The golden set.
    pub golden: Option<EvalDataset>,
    /// 0-based index of this run within the rollout.
    pub run: u64,
    /// The stable pods' `/metrics` URLs.
    pub stable_metrics: Vec<String>,
    /// The canary pods' `/metrics` URLs.
    pub canary_metrics: Vec<String>,
    /// How long live traffic is watched.
    pub window: Duration,
    /// Golden texts per request.
    pub batch_size: usize,
    /// Golden requests in flight per track.
    pub in_flight: usize,
    /// Limit on any one HTTP exchange.
    pub timeout: Duration,
}

/// Parses a duration as the CRDs write them: `30s`, `1m`, `250ms`, `1h30m`, `1.5s`.
pub fn parse_duration(flag: &'static str, text: &str) -> Result<Duration, AnalyzeError> {
    let bad = || AnalyzeError::BadDuration { flag, text: text.into() };
    let mut rest = text;
    let mut seconds = 0.0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (number, tail) = rest.split_at(end);
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') || number.matches('.').count() > 1 {
            return Err(bad());
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        let (unit, tail) = if let Some(t) = tail.strip_prefix("ms") {
            (1e-3, t)
        } else if let Some(t) = tail.strip_prefix('s') {
            (1.0, t)
        } else if let Some(t) = tail.strip_prefix('m') {
            (60.0, t)
        } else if let Some(t) = tail.strip_prefix('h') {
            (3600.0, t)
        } else {
            return Err(bad());
        };
        seconds += value * unit;
        rest = tail;
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// An `http://host:port[/path]` URL split for a raw HTTP/1.1 client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `host:port` (port 80 when absent).
    pub authority: String,
    /// The path, without a trailing `/` (empty for the root).
    pub path: String,
}

impl Url {
    /// Parses `url` given to `flag`.
    pub fn parse(flag: &'static str, url: &str) -> Result<Self, AnalyzeError> {
        let bad = || AnalyzeError::BadUrl { flag, url: url.into() };
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (host, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if host.is_empty() || host.contains(['?', '#', '@', ' ']) || path.contains(['?', '#', ' ']) {
            return Err(bad());
        }
        let authority = if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            host.to_string()
        } else if host.contains(':') && !host.ends_with(']') {
            return Err(bad());
        } else {
            format!("{host}:80")
        };
        Ok(Self { authority, path: path.trim_end_matches('/').to_string() })
    }

    /// As a URL again, for messages.
    pub fn display(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

// ---------------------------------------------------------------------------------------------
// Golden set

/// One golden row: the text and its label (`None` when the row has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoldenRow {
    /// The input text.
    pub text: String,
    /// The expected label.
    pub label: Option<String>,
}

/// Opens `path`, decompressing by `compression` (`auto`: by the file name), as the training data
/// reader does.
fn open(path: &Path, compression: Compression) -> Result<Box<dyn BufRead>, GoldenError> {
    let file =
        File::open(path).map_err(|e| GoldenError::Read { path: path.into(), message: format!("cannot open: {e}") })?;
    let name = path.to_string_lossy();
    let compression = match compression {
        Compression::Auto if name.ends_with(".gz") => Compression::Gzip,
        Compression::Auto if name.ends_with(".bz2") => Compression::Bz2,
        Compression::Auto => Compression::None,
        other => other,
    };
    let reader: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        Compression::Bz2 => Box::new(bzip2::read::MultiBzDecoder::new(BufReader::new(file))),
        _ => Box::new(file),
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, reader)))
}

/// Reads a golden set: every row with a non-empty text, in file order; the label where the spec
/// names a label field and the row has a non-empty value. A plain path or `file://` URI is read
/// where it is; an `s3://` object is downloaded into `resolver`'s work directory first.
pub async fn read_golden(spec: &EvalDataset, resolver: &Resolver) -> Result<Vec<GoldenRow>, GoldenError> {
    let path = resolver.fetch(&spec.uri, Kind::File).await?;
    let reader = open(&path, spec.compression)?;
    let read_error = |row: usize, message: String| GoldenError::Read {
        path: path.clone(),
        message: format!("row {row}: {message}"),
    };
    let label_field = spec.label_field.as_str();
    let mut rows = Vec::new();
    let mut push = |text: Option<String>, label: Option<String>| {
        if let Some(text) = text.filter(|t| !t.trim().is_empty()) {
            rows.push(GoldenRow { text, label: label.filter(|l| !l.trim().is_empty()).map(|l| l.trim().to_string()) });
        }
    };
    match spec.format {
        DataFormat::Csv => {
            let mut csv = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(reader);
            let headers = csv.headers().map_err(|e| read_error(1, e.to_string()))?.clone();
            let index = |field: &str| {
                headers.iter().position(|h| h == field).ok_or_else(|| GoldenError::MissingField {
                    path: path.clone(),
                    field: field.into(),
                    hint: format!("the header has {:?}", headers.iter().collect::<Vec<_>>()),
                })
            };
            let text = index(&spec.text_field)?;
            let label = if label_field.is_empty() { None } else { Some(index(label_field)?) };
            for record in csv.records() {
                let record =
                    record.map_err(|e| read_error(e.position().map_or(0, |p| p.line() as usize), e.to_string()))?;
                push(record.get(text).map(str::to_string), label.and_then(|i| record.get(i)).map(str::to_string));
            }
        }
        DataFormat::Jsonl => {
            for (i, line) in reader.lines().enumerate() {
                let line = line.map_err(|e| read_error(i + 1, e.to_string()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let value: Value =
                    serde_json::from_str(&line).map_err(|e| read_error(i + 1, format!("invalid JSON: {e}")))?;
                let get = |field: &str| match value.get(field) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(v.to_string()),
                    _ => None,
                };
                push(get(&spec.text_field), if label_field.is_empty() { None } else { get(label_field) });
            }
        }
        DataFormat::Text => {
            for (i, line) in reader.lines().enumerate() {
                push(Some(line.map_err(|e| read_error(i + 1, e.to_string()))?), None);
            }
        }
        DataFormat::Documents => {
            return Err(GoldenError::Read {
                path,
                message: "format documents is a causal-lm training corpus; evaluation data is csv, jsonl or text"
                    .into(),
            });
        }
    }
    if rows.is_empty() {
        return Err(GoldenError::Empty(path));
    }
    Ok(rows)
}

/// Indices of the rows run `run` uses out of `n`: the rows shuffled with [`GOLDEN_SEED`], then
/// `samples` of them from `run · samples` on, wrapping around the end (all `n`, shuffled, when
/// `samples` is unset; never more than `n`).
pub fn golden_slice(n: usize, samples: Option<u32>, run: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(GOLDEN_SEED));
    let (start, len) = slice_bounds(n, samples, run);
    (0..len).map(|i| order[(start + i) % n]).collect()
}

/// Where run `run`'s slice starts in the shuffled order of `n` rows, and how many rows it takes.
fn slice_bounds(n: usize, samples: Option<u32>, run: u64) -> (usize, usize) {
    match samples.map(|s| s as usize).filter(|&s| s < n) {
        Some(samples) => (((u128::from(run) * samples as u128) % n as u128) as usize, samples),
        None => (0, n),
    }
}

/// The paired counts of one slice: `stable[i]` and `canary[i]` are the labels each track gave
/// `rows[i]`.
pub fn evidence(rows: &[&GoldenRow], stable: &[String], canary: &[String]) -> GoldenEvidence {
    let mut e = GoldenEvidence::default();
    for ((row, s), c) in rows.iter().zip(stable).zip(canary) {
        e.samples += 1;
        e.agreed += u64::from(s == c);
        if let Some(label) = &row.label {
            let (s, c) = (s == label, c == label);
            e.labelled += 1;
            e.stable_correct += u64::from(s);
            e.canary_correct += u64::from(c);
            e.stable_only += u64::from(s && !c);
            e.canary_only += u64::from(c && !s);
        }
    }
    e
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// One keep-alive HTTP/1.1 connection to a host, reopened when it breaks.
pub(crate) struct Client {
    authority: String,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// A response: status and body.
pub(crate) struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The whole body.
    pub body: Bytes,
}

impl Client {
    pub(crate) fn new(authority: &str, timeout: Duration) -> Self {
        Self { authority: authority.into(), timeout, sender: None }
    }

    /// One request, within the timeout.
    pub(crate) async fn send(&mut self, method: &str, path: &str, body: Bytes) -> Result<Reply, String> {
        let result = tokio::time::timeout(self.timeout, self.exchange(method, path, body)).await;
        let result = result.unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn exchange(&mut self, method: &str, path: &str, body: Bytes) -> Result<Reply, String> {
        if self.sender.is_none() {
            let stream = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
            stream.set_nodelay(true).ok();
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("just opened");
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        sender.ready().await.map_err(|e| format!("connection to {} closed: {e}", self.authority))?;
        let response =
            sender.send_request(request).await.map_err(|e| format!("request to {} failed: {e}", self.authority))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply { status, body })
    }
}

/// At most `max` bytes of `text` on one line, for messages.
fn excerpt(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() <= max {
        return line;
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// One track's golden labels: `texts` in batches of `batch_size`, `in_flight` requests at a time.
/// The first failure stops the track.
pub(crate) async fn label_texts(
    name: &str,
    base: &Url,
    model: &str,
    texts: Arc<Vec<String>>,
    batch_size: usize,
    in_flight: usize,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let path = Arc::new(format!("{}/v2/models/{model}/infer", base.path));
    let batches = texts.len().div_ceil(batch_size);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..in_flight.min(batches).max(1))
        .map(|_| {
            let (texts, next, failed, path) = (texts.clone(), next.clone(), failed.clone(), path.clone());
            let mut client = Client::new(&base.authority, timeout);
            tokio::spawn(async move {
                let mut done: Vec<(usize, Vec<String>)> = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= batches || failed.load(Ordering::Relaxed) {
                        return Ok(done);
                    }
                    let batch = &texts[k * batch_size..((k + 1) * batch_size).min(texts.len())];
                    match label_batch(&mut client, &path, k, batch).await {
                        Ok(labels) => done.push((k, labels)),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                }
            })
        })
        .collect();
    let mut labelled: Vec<(usize, Vec<String>)> = Vec::with_capacity(batches);
    let mut first_error = None;
    for worker in workers {
        match worker.await.map_err(|e| format!("a request task failed: {e}")).and_then(|r| r) {
            Ok(done) => labelled.extend(done),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(format!("{name} track {}: {e}", base.display()));
    }
    labelled.sort_by_key(|(k, _)| *k);
    Ok(labelled.into_iter().flat_map(|(_, labels)| labels).collect())
}

/// One golden request: the labels of `texts`, retried while the server's queue is full.
async fn label_batch(client: &mut Client, path: &str, k: usize, texts: &[String]) -> Result<Vec<String>, String> {
    let body = json!({
        "id": format!("golden-{k}"),
        "inputs": [{"name": "text", "shape": [texts.len()], "datatype": "BYTES", "data": texts}],
        "outputs": [{"name": "label"}]
    });
    let body = Bytes::from(serde_json::to_vec(&body).expect("JSON"));
    let mut attempt = 0;
    let reply = loop {
        let reply = client.send("POST", path, body.clone()).await?;
        if matches!(reply.status, 429 | 503) && attempt < RETRIES {
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        break reply;
    };
    let text = String::from_utf8_lossy(&reply.body);
    if reply.status != 200 {
        return Err(format!("golden request {k} answered HTTP {}: {}", reply.status, excerpt(&text, 160)));
    }
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| format!("golden request {k}: the answer is not JSON ({e}): {}", excerpt(&text, 120)))?;
    let labels = value["outputs"]
        .as_array()
        .and_then(|outputs| outputs.iter().find(|o| o["name"] == "label"))
        .and_then(|o| o["data"].as_array())
        .map(|data| data.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
        .ok_or_else(|| format!("golden request {k}: the answer has no label output: {}", excerpt(&text, 120)))?
        .ok_or_else(|| format!("golden request {k}: the labels are not strings: {}", excerpt(&text, 120)))?;
    if labels.len() != texts.len() {
        return Err(format!("golden request {k}: {} labels for {} texts", labels.len(), texts.len()));
    }
    Ok(labels)
}

/// What [`measure_golden`] sent: the slice's place in the shuffled set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoldenSlice {
    /// Rows in the set.
    pub rows: usize,
    /// Position of the slice's first row in the shuffled set.
    pub start: usize,
    /// Rows in the slice.
    pub len: usize,
}

/// Sends run `run`'s golden slice to both tracks; the evidence, or why there is none.
pub async fn measure_golden(
    spec: &EvalDataset,
    run: u64,
    stable: &Url,
    canary: &Url,
    model: &str,
    options: &AnalyzeOptions,
) -> Result<(GoldenEvidence, GoldenSlice), Vec<String>> {
    let golden_error = |e: &dyn std::fmt::Display| vec![format!("golden set {}: {e}", spec.uri)];
    // The ModelDeployment's store settings, from the environment the operator sets.
    let resolver = Resolver::for_spec(None).map_err(|e| golden_error(&e))?;
    let rows = read_golden(spec, &resolver).await.map_err(|e| golden_error(&e))?;
    let slice = golden_slice(rows.len(), spec.samples, run);
    let picked: Vec<&GoldenRow> = slice.iter().map(|&i| &rows[i]).collect();
    let texts: Arc<Vec<String>> = Arc::new(picked.iter().map(|r| r.text.clone()).collect());
    let (b, n) = (options.batch_size.max(1), options.in_flight.max(1));
    let (s, c) = tokio::join!(
        label_texts("stable", stable, model, texts.clone(), b, n, options.timeout),
        label_texts("canary", canary, model, texts.clone(), b, n, options.timeout)
    );
    let errors: Vec<String> = [&s, &c].into_iter().filter_map(|r| r.as_ref().err().cloned()).collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let (s, c) = (s.expect("checked"), c.expect("checked"));
    let (start, len) = slice_bounds(rows.len(), spec.samples, run);
    Ok((evidence(&picked, &s, &c), GoldenSlice { rows: rows.len(), start, len }))
}

// ---------------------------------------------------------------------------------------------
// Prometheus text format

/// One sample of the Prometheus (or OpenMetrics) text format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric name, with its suffix (`_total`, `_bucket`, …).
    pub name: String,
    /// Its labels, in order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text exposition format: every sample line (comments, `# TYPE`, `# HELP`
/// and `# EOF` skipped; timestamps and exemplars after the value ignored).
pub fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| parse_sample(l).map_err(|e| format!("line {}: {e}: {}", i + 1, excerpt(l, 80))))
        .collect()
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            while chars.next_if(|(_, c)| c.is_whitespace() || *c == ',').is_some() {}
            match chars.peek() {
                None => return Err("unterminated labels".into()),
                Some((i, '}')) => {
                    rest = &inner[i + 1..];
                    break;
                }
                Some(_) => {}
            }
            let mut key = String::new();
            while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
                key.push(c);
            }
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            if chars.next().map(|(_, c)| c) != Some('=') {
                return Err(format!("label {key:?} has no value"));
            }
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key:?}: the value is not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    None => return Err(format!("label {key:?}: unterminated value")),
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(c) => value.push(c),
                        None => return Err(format!("label {key:?}: unterminated value")),
                    },
                    Some(c) => value.push(c),
                }
            }
            labels.push((key, value));
        }
    }
    let token = rest.split_whitespace().next().ok_or("no value")?;
    let value = match token {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        t => t.parse().map_err(|_| format!("value {t:?} is not a number"))?,
    };
    Ok(Sample { name: name.into(), labels, value })
}

/// What one pod's `/metrics` says about inference, as cumulative counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodCounts {
    /// Inference requests answered, by HTTP status code.
    pub requests: BTreeMap<String, f64>,
    /// The request-duration histogram: (upper edge in seconds, cumulative count), by edge.
    pub buckets: Vec<(f64, f64)>,
    /// Predictions by class.
    pub predictions: BTreeMap<String, f64>,
}

impl PodCounts {
    /// Reads the counts from a scrape of `distillery-server`.
    pub fn from_metrics(text: &str) -> Result<Self, String> {
        let mut counts = Self::default();
        for s in parse_metrics(text)? {
            match s.name.as_str() {
                REQUESTS if s.label("endpoint") == Some("infer") => {
                    *counts.requests.entry(s.label("code").unwrap_or_default().to_string()).or_default() += s.value;
                }
                DURATION_BUCKET => {
                    let le = s.label("le").ok_or("a histogram bucket has no le label")?;
                    let le = match le {
                        "+Inf" | "Inf" => f64::INFINITY,
                        le => le.parse().map_err(|_| format!("bucket le={le:?} is not a number"))?,
                    };
                    counts.buckets.push((le, s.value));
                }
                PREDICTIONS => {
                    let class = s.label("class").ok_or("a prediction counter has no class label")?;
                    *counts.predictions.entry(class.to_string()).or_default() += s.value;
                }
                _ => {}
            }
        }
        if counts.buckets.is_empty() {
            return Err(format!("no {DURATION_BUCKET}: not a distillery-server /metrics"));
        }
        counts.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(counts)
    }

    /// `self − before`: what happened between two scrapes; an error when a count went down (the
    /// pod restarted in between).
    pub fn since(&self, before: &PodCounts) -> Result<PodCounts, String> {
        let went_down = || "a counter went down between the scrapes (the pod restarted?)".to_string();
        let delta = |after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>| {
            let mut out = BTreeMap::new();
            for (k, v) in after {
                let d = v - before.get(k).copied().unwrap_or(0.0);
                if d < 0.0 {
                    return Err(went_down());
                }
                out.insert(k.clone(), d);
            }
            if before.keys().any(|k| !after.contains_key(k)) {
                return Err(went_down());
            }
            Ok(out)
        };
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for &(le, count) in &self.buckets {
            let was = before.buckets.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            if count < was {
                return Err(went_down());
            }
            buckets.push((le, count - was));
        }
        Ok(PodCounts {
            requests: delta(&self.requests, &before.requests)?,
            buckets,
            predictions: delta(&self.predictions, &before.predictions)?,
        })
    }
}

/// The p99 in milliseconds from cumulative histogram bucket counts (sorted by edge): the upper
/// edge of the bucket holding the 99th percentile — the last finite edge when it lies beyond
/// them. `None` without observations.
pub fn p99_ms(buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last().map(|b| b.1).filter(|&t| t > 0.0)?;
    let rank = (0.99 * total).ceil();
    let (le, _) = buckets.iter().find(|b| b.1 >= rank)?;
    let le = if le.is_finite() { *le } else { buckets.iter().rev().map(|b| b.0).find(|le| le.is_finite())? };
    Some(le * 1e3)
}

/// One track's traffic from its pods' deltas.
pub fn track_traffic(pods: &[PodCounts]) -> TrackTraffic {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let mut traffic = TrackTraffic::default();
    for pod in pods {
        for (code, n) in &pod.requests {
            let n = n.round() as u64;
            traffic.requests += n;
            if code.starts_with('5') {
                traffic.server_errors += n;
            }
        }
        for &(le, n) in &pod.buckets {
            match buckets.iter_mut().find(|b| b.0 == le) {
                Some(b) => b.1 += n,
                None => buckets.push((le, n)),
            }
        }
        for (class, n) in &pod.predictions {
            let n = n.round() as u64;
            if n > 0 {
                *traffic.predictions.entry(class.clone()).or_default() += n;
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    traffic.p99_ms = p99_ms(&buckets);
    traffic
}

/// Scrapes one pod's `/metrics`.
async fn scrape(url: &Url, timeout: Duration) -> Result<PodCounts, String> {
    let path = if url.path.is_empty() { "/metrics" } else { url.path.as_str() };
    let reply = Client::new(&url.authority, timeout)
        .send("GET", path, Bytes::new())
        .await
        .map_err(|e| format!("cannot scrape {}: {e}", url.display()))?;
    if reply.status != 200 {
        return Err(format!("cannot scrape {}: HTTP {}", url.display(), reply.status));
    }
    PodCounts::from_metrics(&String::from_utf8_lossy(&reply.body)).map_err(|e| format!("{}: {e}", url.display()))
}

/// Scrapes every pod at once; one result per pod, in order.
async fn scrape_all(pods: &[Url], timeout: Duration) -> Vec<Result<PodCounts, String>> {
    let tasks: Vec<_> = pods
        .iter()
        .map(|url| {
            let url = url.clone();
            tokio::spawn(async move { scrape(&url, timeout).await })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(format!("a scrape task failed: {e}"))));
    }
    out
}

/// Watches both tracks' pods for `window`: scrapes, waits, scrapes again. `on_start` is called
/// once the first scrape is done, as the window begins.
pub async fn measure_live(
    stable: &[Url],
    canary: &[Url],
    window: Duration,
    timeout: Duration,
    on_start: impl FnOnce(usize),
) -> (LiveTraffic, Vec<String>) {
    let all: Vec<Url> = stable.iter().chain(canary).cloned().collect();
    let before = scrape_all(&all, timeout).await;
    let started = Instant::now();
    on_start(before.iter().filter(|r| r.is_ok()).count());
    tokio::time::sleep(window).await;
    let after = scrape_all(&all, timeout).await;
    let window_seconds = started.elapsed().as_secs_f64();
    let mut errors = Vec::new();
    let mut deltas = Vec::with_capacity(all.len());
    for (url, (b, a)) in all.iter().zip(before.into_iter().zip(after)) {
        match (b, a) {
            (Ok(b), Ok(a)) => match a.since(&b) {
                Ok(d) => deltas.push(Some(d)),
                Err(e) => {
                    errors.push(format!("{}: {e}", url.display()));
                    deltas.push(None);
                }
            },
            (Err(e), _) | (_, Err(e)) => {
                errors.push(e);
                deltas.push(None);
            }
        }
    }
    let (s, c) = deltas.split_at(stable.len());
    let flat = |d: &[Option<PodCounts>]| d.iter().flatten().cloned().collect::<Vec<_>>();
    for (name, pods) in [("stable", stable), ("canary", canary)] {
        if pods.is_empty() {
            errors.push(format!("no {name} pod to scrape: pass --{name}-metrics"));
        }
    }
    let traffic = LiveTraffic { stable: track_traffic(&flat(s)), canary: track_traffic(&flat(c)), window_seconds };
    (traffic, errors)
}

// ---------------------------------------------------------------------------------------------
// The run

/// Caps the errors (count and length) so the run fits a termination message.
pub fn cap_errors(errors: Vec<String>) -> Vec<String> {
    let total = errors.len();
    let mut kept: Vec<String> = errors.into_iter().take(MAX_ERRORS).map(|e| excerpt(&e, MAX_ERROR_LEN)).collect();
    if total > MAX_ERRORS {
        kept.pop();
        kept.push(format!("… and {} more errors", total - MAX_ERRORS + 1));
    }
    kept
}

/// The URLs of `--stable-metrics`/`--canary-metrics` (empty entries ignored).
fn metric_urls(flag: &'static str, urls: &[String]) -> Result<Vec<Url>, AnalyzeError> {
    urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()).map(|u| Url::parse(flag, u)).collect()
}

/// One analysis run. `progress` gets a line for a person at each stage.
pub fn run(options: &AnalyzeOptions, progress: &mut dyn FnMut(String)) -> Result<AnalysisRun, AnalyzeError> {
    let stable_pods = metric_urls("--stable-metrics", &options.stable_metrics)?;
    let canary_pods = metric_urls("--canary-metrics", &options.canary_metrics)?;
    let live_wanted = !stable_pods.is_empty() || !canary_pods.is_empty();
    let golden = match &options.golden {
        Some(spec) => {
            let url = |flag, url: &Option<String>| {
                url.as_deref()
                    .ok_or_else(|| AnalyzeError::Usage(format!("--golden-dataset needs {flag}")))
                    .and_then(|u| Url::parse(flag, u))
            };
            let model = options
                .model_name
                .clone()
                .ok_or_else(|| AnalyzeError::Usage("--golden-dataset needs --model-name".into()))?;
            Some((spec, url("--stable", &options.stable)?, url("--canary", &options.canary)?, model))
        }
        None => None,
    };
    if golden.is_none() && !live_wanted {
        return Err(AnalyzeError::Usage(
            "nothing to measure: give --golden-dataset (with --stable, --canary, --model-name) and/or --stable-metrics and --canary-metrics".into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AnalyzeError::Runtime)?;
    let mut out = AnalysisRun::default();
    let mut errors = Vec::new();
    runtime.block_on(async {
        if live_wanted {
            let (live, e) = measure_live(&stable_pods, &canary_pods, options.window, options.timeout, |pods| {
                progress(format!(
                    "scraped {pods} of {} pods; watching live traffic for {:?}",
                    stable_pods.len() + canary_pods.len(),
                    options.window
                ))
            })
            .await;
            progress(format!(
                "live traffic over {:.1} s: stable {} requests, canary {} requests",
                live.window_seconds, live.stable.requests, live.canary.requests
            ));
            out.live = Some(live);
            errors.extend(e);
        }
        if let Some((spec, stable, canary, model)) = &golden {
            match measure_golden(spec, options.run, stable, canary, model, options).await {
                Ok((e, slice)) => {
                    progress(format!(
                        "golden run {}: rows {}..{} of {} shuffled rows (wrapping), {} labelled; agreed on {}",
                        options.run,
                        slice.start,
                        slice.start + slice.len,
                        slice.rows,
                        e.labelled,
                        e.agreed
                    ));
                    out.golden = Some(e);
                }
                Err(e) => errors.extend(e),
            }
        }
    });
    out.errors = cap_errors(errors);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from a real `distillery-server` (debug build) serving the small test model, after
    /// four inference requests of five texts in all and one malformed request.
    const SCRAPE: &str = r#"# HELP distillery_server_model_info The served model: name, variant, sha256 of its ONNX file.
# TYPE distillery_server_model_info gauge
distillery_server_model_info{model="small",variant="int8",digest="50d15f3a036fb06faf821a9160d2080661232f621a25b31e5820c8957cc9fe97",version="0.1.0"} 1
# HELP distillery_server_requests Requests answered, by endpoint and HTTP status.
# TYPE distillery_server_requests counter
distillery_server_requests_total{endpoint="infer",code="400"} 1
distillery_server_requests_total{endpoint="infer",code="200"} 4
# HELP distillery_server_request_duration_seconds Inference request latency from arrival to response.
# TYPE distillery_server_request_duration_seconds histogram
distillery_server_request_duration_seconds_sum 0.009620608
distillery_server_request_duration_seconds_count 4
distillery_server_request_duration_seconds_bucket{le="0.0005"} 0
distillery_server_request_duration_seconds_bucket{le="0.00075"} 0
distillery_server_request_duration_seconds_bucket{le="0.0011250000000000002"} 0
distillery_server_request_duration_seconds_bucket{le="0.0016875"} 1
distillery_server_request_duration_seconds_bucket{le="0.00253125"} 3
distillery_server_request_duration_seconds_bucket{le="0.003796875"} 3
distillery_server_request_duration_seconds_bucket{le="0.0056953125"} 4
distillery_server_request_duration_seconds_bucket{le="0.00854296875"} 4
distillery_server_request_duration_seconds_bucket{le="0.012814453125"} 4
distillery_server_request_duration_seconds_bucket{le="0.0192216796875"} 4
distillery_server_request_duration_seconds_bucket{le="0.02883251953125"} 4
distillery_server_request_duration_seconds_bucket{le="0.043248779296875"} 4
distillery_server_request_duration_seconds_bucket{le="0.0648731689453125"} 4
distillery_server_request_duration_seconds_bucket{le="0.09730975341796876"} 4
distillery_server_request_duration_seconds_bucket{le="0.14596463012695314"} 4
distillery_server_request_duration_seconds_bucket{le="0.2189469451904297"} 4
distillery_server_request_duration_seconds_bucket{le="0.3284204177856445"} 4
distillery_server_request_duration_seconds_bucket{le="0.4926306266784668"} 4
distillery_server_request_duration_seconds_bucket{le="0.7389459400177002"} 4
distillery_server_request_duration_seconds_bucket{le="1.1084189100265503"} 4
distillery_server_request_duration_seconds_bucket{le="1.6626283650398255"} 4
distillery_server_request_duration_seconds_bucket{le="2.493942547559738"} 4
distillery_server_request_duration_seconds_bucket{le="3.7409138213396075"} 4
distillery_server_request_duration_seconds_bucket{le="5.611370732009411"} 4
distillery_server_request_duration_seconds_bucket{le="+Inf"} 4
# HELP distillery_server_batch_size Sequences per model run.
# TYPE distillery_server_batch_size histogram
distillery_server_batch_size_sum 5.0
distillery_server_batch_size_count 4
distillery_server_batch_size_bucket{le="1.0"} 3
distillery_server_batch_size_bucket{le="2.0"} 4
distillery_server_batch_size_bucket{le="4.0"} 4
distillery_server_batch_size_bucket{le="8.0"} 4
distillery_server_batch_size_bucket{le="16.0"} 4
distillery_server_batch_size_bucket{le="32.0"} 4
distillery_server_batch_size_bucket{le="64.0"} 4
distillery_server_batch_size_bucket{le="128.0"} 4
distillery_server_batch_size_bucket{le="256.0"} 4
distillery_server_batch_size_bucket{le="512.0"} 4
distillery_server_batch_size_bucket{le="1024.0"} 4
distillery_server_batch_size_bucket{le="+Inf"} 4
# HELP distillery_server_run_duration_seconds ONNX Runtime compute per model run.
# TYPE distillery_server_run_duration_seconds histogram
distillery_server_run_duration_seconds_sum 0.005362333
distillery_server_run_duration_seconds_count 4
distillery_server_run_duration_seconds_bucket{le="0.0001"} 0
distillery_server_run_duration_seconds_bucket{le="0.0002"} 0
distillery_server_run_duration_seconds_bucket{le="0.0004"} 0
distillery_server_run_duration_seconds_bucket{le="0.0008"} 0
distillery_server_run_duration_seconds_bucket{le="0.0016"} 3
distillery_server_run_duration_seconds_bucket{le="0.0032"} 4
distillery_server_run_duration_seconds_bucket{le="0.0064"} 4
distillery_server_run_duration_seconds_bucket{le="0.0128"} 4
distillery_server_run_duration_seconds_bucket{le="0.0256"} 4
distillery_server_run_duration_seconds_bucket{le="0.0512"} 4
distillery_server_run_duration_seconds_bucket{le="0.1024"} 4
distillery_server_run_duration_seconds_bucket{le="0.2048"} 4
distillery_server_run_duration_seconds_bucket{le="0.4096"} 4
distillery_server_run_duration_seconds_bucket{le="0.8192"} 4
distillery_server_run_duration_seconds_bucket{le="1.6384"} 4
distillery_server_run_duration_seconds_bucket{le="3.2768"} 4
distillery_server_run_duration_seconds_bucket{le="+Inf"} 4
# HELP distillery_server_queue_wait_seconds Time a request waited for a model thread.
# TYPE distillery_server_queue_wait_seconds histogram
distillery_server_queue_wait_seconds_sum 0.001767132
distillery_server_queue_wait_seconds_count 4
distillery_server_queue_wait_seconds_bucket{le="0.0001"} 3
distillery_server_queue_wait_seconds_bucket{le="0.0002"} 3
distillery_server_queue_wait_seconds_bucket{le="0.0004"} 3
distillery_server_queue_wait_seconds_bucket{le="0.0008"} 3
distillery_server_queue_wait_seconds_bucket{le="0.0016"} 3
distillery_server_queue_wait_seconds_bucket{le="0.0032"} 4
distillery_server_queue_wait_seconds_bucket{le="0.0064"} 4
distillery_server_queue_wait_seconds_bucket{le="0.0128"} 4
distillery_server_queue_wait_seconds_bucket{le="0.0256"} 4
distillery_server_queue_wait_seconds_bucket{le="0.0512"} 4
distillery_server_queue_wait_seconds_bucket{le="0.1024"} 4
distillery_server_queue_wait_seconds_bucket{le="0.2048"} 4
distillery_server_queue_wait_seconds_bucket{le="0.4096"} 4
distillery_server_queue_wait_seconds_bucket{le="0.8192"} 4
distillery_server_queue_wait_seconds_bucket{le="1.6384"} 4
distillery_server_queue_wait_seconds_bucket{le="3.2768"} 4
distillery_server_queue_wait_seconds_bucket{le="+Inf"} 4
# HELP distillery_server_queue_depth Texts waiting for a model thread.
# TYPE distillery_server_queue_depth gauge
distillery_server_queue_depth 0
# HELP distillery_server_predictions Predictions by class.
# TYPE distillery_server_predictions counter
distillery_server_predictions_total{class="rotten"} 3
distillery_server_predictions_total{class="fresh"} 2
# HELP distillery_server_prediction_confidence Probability of the predicted class, by class (sum / count is the mean confidence).
# TYPE distillery_server_prediction_confidence histogram
distillery_server_prediction_confidence_sum{class="fresh"} 1.3650099039077759
distillery_server_prediction_confidence_count{class="fresh"} 2
distillery_server_prediction_confidence_bucket{le="0.5",class="fresh"} 0
distillery_server_prediction_confidence_bucket{le="0.55",class="fresh"} 0
distillery_server_prediction_confidence_bucket{le="0.6",class="fresh"} 0
distillery_server_prediction_confidence_bucket{le="0.65",class="fresh"} 0
distillery_server_prediction_confidence_bucket{le="0.7",class="fresh"} 1
distillery_server_prediction_confidence_bucket{le="0.75",class="fresh"} 2
distillery_server_prediction_confidence_bucket{le="0.8",class="fresh"} 2
distillery_server_prediction_confidence_bucket{le="0.8500000000000001",class="fresh"} 2
distillery_server_prediction_confidence_bucket{le="0.9",class="fresh"} 2
distillery_server_prediction_confidence_bucket{le="0.95",class="fresh"} 2
distillery_server_prediction_confidence_bucket{le="+Inf",class="fresh"} 2
distillery_server_prediction_confidence_sum{class="rotten"} 2.0215678215026857
distillery_server_prediction_confidence_count{class="rotten"} 3
distillery_server_prediction_confidence_bucket{le="0.5",class="rotten"} 0
distillery_server_prediction_confidence_bucket{le="0.55",class="rotten"} 0
distillery_server_prediction_confidence_bucket{le="0.6",class="rotten"} 0
distillery_server_prediction_confidence_bucket{le="0.65",class="rotten"} 1
distillery_server_prediction_confidence_bucket{le="0.7",class="rotten"} 2
distillery_server_prediction_confidence_bucket{le="0.75",class="rotten"} 3
distillery_server_prediction_confidence_bucket{le="0.8",class="rotten"} 3
distillery_server_prediction_confidence_bucket{le="0.8500000000000001",class="rotten"} 3
distillery_server_prediction_confidence_bucket{le="0.9",class="rotten"} 3
distillery_server_prediction_confidence_bucket{le="0.95",class="rotten"} 3
distillery_server_prediction_confidence_bucket{le="+Inf",class="rotten"} 3
# HELP distillery_server_ready 1 once the model is loaded and warmed up.
# TYPE distillery_server_ready gauge
distillery_server_ready 1
# EOF
"#;

    #[test]
    fn durations_as_the_crds_write_them() {
        let d = |t| parse_duration("--window", t);
        assert_eq!(d("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(d("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(d("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(d("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(d("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "10", "s", "1.s", ".5s", "1x", "-1s", "1 s", "1.2.3s"] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        let u = |s| Url::parse("--stable", s);
        assert_eq!(
            u("http://127.10.0.7:8080").unwrap(),
            Url { authority: "127.10.0.7:8080".into(), path: String::new() }
        );
        assert_eq!(u("http://svc.ns:9000/metrics").unwrap().path, "/metrics");
        assert_eq!(u("http://svc/").unwrap(), Url { authority: "svc:80".into(), path: String::new() });
        for bad in ["https://a:1", "a:1", "http://", "http://a:b:c/x", "http://a:1/x?y"] {
            assert!(u(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_parser_reads_labels_escapes_and_special_values() {
        let samples = parse_metrics(
            "# TYPE x counter\nx_total{a=\"q\\\"uo,te\",b=\"back\\\\slash\\nline\"} 3 1700000000\nup 1\nh_bucket{le=\"+Inf\"} +Inf\nn NaN\n",
        )
        .unwrap();
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[0].label("a"), Some("q\"uo,te"));
        assert_eq!(samples[0].label("b"), Some("back\\slash\nline"));
        assert_eq!(samples[0].value, 3.0);
        assert_eq!((samples[1].name.as_str(), samples[1].labels.len(), samples[1].value), ("up", 0, 1.0));
        assert!(samples[2].value.is_infinite() && samples[3].value.is_nan());
        for bad in ["x{a=\"1\"", "x{a=1} 2", "x{a=\"1\"} y", "x", "{a=\"1\"} 2"] {
            assert!(parse_metrics(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_real_scrape_gives_infer_requests_buckets_and_predictions() {
        assert_eq!(parse_metrics(SCRAPE).unwrap().len(), 112, "every sample line parses");
        let c = PodCounts::from_metrics(SCRAPE).unwrap();
        assert_eq!(c.requests, BTreeMap::from([("200".into(), 4.0), ("400".into(), 1.0)]));
        assert_eq!(c.predictions, BTreeMap::from([("fresh".into(), 2.0), ("rotten".into(), 3.0)]));
        assert_eq!(c.buckets.len(), 25, "the request-duration histogram only, not the others");
        assert_eq!(c.buckets[0], (0.0005, 0.0));
        assert_eq!(c.buckets[2], (0.0011250000000000002, 0.0));
        assert_eq!(c.buckets.last().unwrap(), &(f64::INFINITY, 4.0));
        assert_eq!(p99_ms(&c.buckets), Some(5.6953125), "the 4th of 4 requests is under 5.70 ms");
        assert!(PodCounts::from_metrics("up 1\n").unwrap_err().contains("not a distillery-server"));
    }

    #[test]
    fn deltas_between_scrapes_and_restarts() {
        let before = PodCounts::from_metrics(SCRAPE).unwrap();
        // Ten more answers, all between 1.69 and 2.53 ms, two 503s and ten `fresh` predictions.
        let mut after = before.clone();
        *after.requests.get_mut("200").unwrap() += 10.0;
        after.requests.insert("503".into(), 2.0);
        after.buckets.iter_mut().filter(|b| b.0 >= 0.00253125).for_each(|b| b.1 += 10.0);
        *after.predictions.get_mut("fresh").unwrap() += 10.0;
        let d = after.since(&before).unwrap();
        assert_eq!(d.requests, BTreeMap::from([("200".into(), 10.0), ("400".into(), 0.0), ("503".into(), 2.0)]));
        let t = track_traffic(&[d.clone(), d]);
        assert_eq!((t.requests, t.server_errors), (24, 4), "two pods of 10 × 200 and 2 × 503");
        assert_eq!(t.predictions, BTreeMap::from([("fresh".into(), 20)]), "classes that did not move are left out");
        assert_eq!(t.p99_ms, Some(2.53125), "all 20 observations in the 2.53 ms bucket");
        assert!(before.since(&after).unwrap_err().contains("restarted"));
        let mut restarted = after.clone();
        restarted.predictions.remove("rotten");
        assert!(restarted.since(&before).unwrap_err().contains("restarted"), "a class that vanished");
        assert_eq!(track_traffic(&[]), TrackTraffic::default(), "no pods, no traffic, no p99");
    }

    #[test]
    fn p99_is_the_upper_edge_of_the_bucket_holding_it() {
        // 1,000 requests: 980 under 1 ms, 15 under 2 ms, 5 under 4 ms: the 990th is under 2 ms.
        let b = [(0.001, 980.0), (0.002, 995.0), (0.004, 1000.0), (f64::INFINITY, 1000.0)];
        assert_eq!(p99_ms(&b), Some(2.0));
        // 100 requests, 2 of them slow: the 99th falls in the slow bucket.
        assert_eq!(p99_ms(&[(0.001, 98.0), (0.004, 100.0), (f64::INFINITY, 100.0)]), Some(4.0));
        // Beyond every finite edge: the last finite edge (a lower bound).
        assert_eq!(p99_ms(&[(0.001, 0.0), (0.5, 50.0), (f64::INFINITY, 100.0)]), Some(500.0));
        assert_eq!(p99_ms(&[(0.001, 0.0), (f64::INFINITY, 0.0)]), None, "no requests, no p99");
        assert_eq!(p99_ms(&[]), None);
    }

    #[test]
    fn slices_are_deterministic_fresh_each_run_and_wrap_around() {
        let run0 = golden_slice(50, Some(20), 0);
        assert_eq!(run0, golden_slice(50, Some(20), 0), "same run, same rows");
        let run1 = golden_slice(50, Some(20), 1);
        assert!(run0.iter().all(|i| !run1.contains(i)), "run 1 sees fresh rows");
        let order = golden_slice(50, None, 0);
        assert_eq!(run0, order[..20]);
        assert_eq!(run1, order[20..40]);
        let run2 = golden_slice(50, Some(20), 2);
        assert_eq!(run2[..10], order[40..], "run 2 takes the last 10 rows…");
        assert_eq!(run2[10..], order[..10], "…and wraps around to the first 10");
        assert_eq!(golden_slice(50, Some(20), 5), run0, "5 × 20 = 100 ≡ 0 (mod 50)");
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>(), "all rows, shuffled");
        assert_ne!(order, sorted);
        assert_eq!(golden_slice(10, Some(20), 3).len(), 10, "never more rows than the set has");
        assert_eq!(golden_slice(50, Some(20), u64::MAX).len(), 20, "no overflow");
    }

    #[test]
    fn evidence_counts_paired_outcomes() {
        let row = |label: Option<&str>| GoldenRow { text: "t".into(), label: label.map(str::to_string) };
        let rows = [row(Some("a")), row(Some("a")), row(Some("b")), row(Some("b")), row(None), row(Some("a"))];
        let refs: Vec<&GoldenRow> = rows.iter().collect();
        let s: Vec<String> = ["a", "a", "a", "b", "a", "b"].map(String::from).to_vec();
        let c: Vec<String> = ["a", "b", "b", "b", "b", "b"].map(String::from).to_vec();
        let e = evidence(&refs, &s, &c);
        assert_eq!(
            e,
            GoldenEvidence {
                samples: 6,
                labelled: 5,
                stable_correct: 3,
                canary_correct: 3,
                stable_only: 1,
                canary_only: 1,
                agreed: 3
            }
        );
    }

    #[test]
    fn golden_sets_read_csv_and_jsonl_skipping_empty_texts() {
        let dir = tempfile::tempdir().unwrap();
        let resolver = Resolver::new(Default::default(), dir.path().join("work"));
        let read_golden = |spec: &EvalDataset| crate::store::block_on(read_golden(spec, &resolver));
        let csv = dir.path().join("g.csv");
        std::fs::write(&csv, "review,category\n\"good, really\",fresh\n  ,rotten\nmeh,\nbad,rotten\n").unwrap();
        let spec = |uri: String, format: &str, label: &str| -> EvalDataset {
            serde_json::from_value(json!({"uri": uri, "format": format, "textField": "review", "labelField": label}))
                .unwrap()
        };
        let rows = read_golden(&spec(format!("file://{}", csv.display()), "csv", "category")).unwrap();
        assert_eq!(
            rows,
            [
                GoldenRow { text: "good, really".into(), label: Some("fresh".into()) },
                GoldenRow { text: "meh".into(), label: None },
                GoldenRow { text: "bad".into(), label: Some("rotten".into()) },
            ]
        );
        let unlabelled = read_golden(&spec(csv.display().to_string(), "csv", "")).unwrap();
        assert!(unlabelled.iter().all(|r| r.label.is_none()) && unlabelled.len() == 3);
        let err = read_golden(&spec(csv.display().to_string(), "csv", "label")).unwrap_err().to_string();
        assert!(err.contains("no field \"label\"") && err.contains("category"), "{err}");
        let gz = dir.path().join("g.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, b"{\"review\":\"fine\",\"category\":1}\n\n{\"review\":\"\"}\n").unwrap();
        enc.finish().unwrap();
        let rows = read_golden(&spec(format!("file://{}", gz.display()), "jsonl", "category")).unwrap();
        assert_eq!(rows, [GoldenRow { text: "fine".into(), label: Some("1".into()) }]);
        let err = read_golden(&spec("https://b/g.csv".into(), "csv", "")).unwrap_err().to_string();
        assert!(err.starts_with("https://b/g.csv: use file:///absolute/path or s3://bucket/key"), "{err}");
        let err = read_golden(&spec("/nonexistent/g.csv".into(), "csv", "")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/g.csv") && err.contains("cannot open"), "{err}");
    }

    #[test]
    fn errors_are_capped_to_fit_a_termination_message() {
        let errors: Vec<String> = (0..20).map(|i| format!("pod {i}: {}", "x".repeat(1000))).collect();
        let capped = cap_errors(errors);
        assert_eq!(capped.len(), MAX_ERRORS);
        assert_eq!(capped.last().unwrap(), "… and 13 more errors");
        assert!(capped.iter().all(|e| e.len() <= MAX_ERROR_LEN + '…'.len_utf8()));
        let run =
            AnalysisRun { golden: Some(GoldenEvidence::default()), live: Some(LiveTraffic::default()), errors: capped };
        assert!(serde_json::to_string(&run).unwrap().len() < crate::cluster::TERMINATION_MESSAGE_LIMIT);
    }

    #[test]
    fn unreachable_tracks_and_pods_are_errors_not_failures() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("g.csv");
        std::fs::write(&csv, "text,label\ngood,fresh\nbad,rotten\n").unwrap();
        let options = AnalyzeOptions {
            stable: Some("http://127.0.0.1:1".into()),
            canary: Some("http://127.0.0.1:1".into()),
            model_name: Some("m".into()),
            golden: Some(serde_json::from_value(json!({"uri": csv.display().to_string()})).unwrap()),
            run: 0,
            stable_metrics: vec!["http://127.0.0.1:1/metrics".into()],
            canary_metrics: vec![],
            window: Duration::ZERO,
            batch_size: 32,
            in_flight: 2,
            timeout: Duration::from_secs(5),
        };
        let out = run(&options, &mut |_| {}).unwrap();
        assert!(out.golden.is_none());
        let text = out.errors.join("\n");
        for want in [
            "cannot scrape http://127.0.0.1:1/metrics",
            "no canary pod",
            "stable track http://127.0.0.1:1",
            "canary track",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
        let usage = run(&AnalyzeOptions { golden: None, stable_metrics: vec![], ..options.clone() }, &mut |_| {});
        assert!(matches!(usage, Err(AnalyzeError::Usage(_))));
        let no_model = run(&AnalyzeOptions { model_name: None, ..options }, &mut |_| {});
        assert!(no_model.unwrap_err().to_string().contains("--model-name"));
    }
}
