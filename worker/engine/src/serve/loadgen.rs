//! The load generator (`distillery-worker bench`, what a Benchmark's pod runs, and
//! `distillery-worker loadtest`): drives KServe V2 servers with real texts and reports throughput,
//! latency percentiles and errors by status code.
//!
//! - **Closed loop** ([`closed_loop`]): `concurrency` clients, each on its own keep-alive HTTP/1.1
//!   connection, send one request after another for a fixed time or a fixed number of requests.
//! - **Open loop** ([`open_loop`]): requests are *scheduled* at a fixed rate, spread over many
//!   connections, and each latency counts from its scheduled time, so a server that falls behind
//!   cannot hide it by slowing the client down (no coordinated omission).
//!
//! Every request carries one text: what an online client sends. Only 2xx answers count towards
//! throughput and latency; 429s and other failures are counted apart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;

/// Why a load test could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The URL is not `http://host:port`.
    #[error("{0:?} is not a server URL like http://127.0.0.1:8080")]
    BadUrl(String),
    /// The server never became ready.
    #[error("{url} did not answer ready on /v2/health/ready within {seconds} s")]
    NotReady {
        /// The server.
        url: String,
        /// How long it was given.
        seconds: u64,
    },
    /// Nothing to send.
    #[error("no texts to send")]
    NoTexts,
}

/// A server to drive.
#[derive(Clone, Debug)]
pub struct Target {
    /// Name in the report.
    pub name: String,
    /// `host:port`.
    pub authority: String,
    /// The inference path, `/v2/models/{model}/infer`.
    pub path: String,
}

impl Target {
    /// A target from `http://host:port` and the model's name.
    pub fn new(name: &str, url: &str, model: &str) -> Result<Self, LoadError> {
        let authority = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| LoadError::BadUrl(url.into()))?;
        Ok(Self { name: name.into(), authority: authority.into(), path: format!("/v2/models/{model}/infer") })
    }
}

/// What a load level measured.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LevelReport {
    /// The target's name.
    pub target: String,
    /// Clients (closed loop) or connections (open loop).
    pub concurrency: usize,
    /// Offered requests per second (open loop only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_rate: Option<f64>,
    /// Measured seconds.
    pub seconds: f64,
    /// 2xx answers.
    pub ok: usize,
    /// 429 answers.
    pub rejected: usize,
    /// Other statuses and connection failures.
    pub errors: usize,
    /// 2xx answers per second.
    pub throughput: f64,
    /// Latency percentiles of the 2xx answers, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// 99th percentile counted from when each request was actually sent rather than scheduled:
    /// in an open loop, the difference is time the client itself fell behind.
    pub p99_sent_ms: f64,
    /// Failed requests by HTTP status (`"429"`, `"503"`, …; `"connection"` when no answer came).
    pub errors_by_code: BTreeMap<String, usize>,
    /// Every 2xx latency, milliseconds, sorted (for distributions; not serialized).
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
}

/// Which requests are sent before measuring, and not counted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Warmup {
    /// Everything sent during this time.
    Time(Duration),
    /// The first this many requests.
    Requests(u64),
}

/// When measuring stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// After this long.
    After(Duration),
    /// After this many measured requests have been sent.
    Requests(u64),
}

/// The `q`-quantile (0..=1) of sorted `values` by nearest rank; 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Outcomes of single requests.
#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    /// Latencies from the actual send (differ from `latencies_ms` only in an open loop).
    sent_ms: Vec<f64>,
    rejected: usize,
    errors: usize,
    /// Failures by status, `"connection"` for none.
    codes: BTreeMap<String, usize>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_ms.extend(other.latencies_ms);
        self.sent_ms.extend(other.sent_ms);
        self.rejected += other.rejected;
        self.errors += other.errors;
        for (code, n) in other.codes {
            *self.codes.entry(code).or_default() += n;
        }
    }

    fn failed(&mut self, code: Option<u16>) {
        if code == Some(429) {
            self.rejected += 1;
        } else {
            self.errors += 1;
        }
        *self.codes.entry(code.map_or_else(|| "connection".to_string(), |c| c.to_string())).or_default() += 1;
    }

    fn report(mut self, target: &str, concurrency: usize, offered_rate: Option<f64>, seconds: f64) -> LevelReport {
        self.latencies_ms.sort_by(f64::total_cmp);
        self.sent_ms.sort_by(f64::total_cmp);
        let l = &self.latencies_ms;
        LevelReport {
            target: target.into(),
            concurrency,
            offered_rate,
            seconds,
            ok: l.len(),
            rejected: self.rejected,
            errors: self.errors,
            throughput: l.len() as f64 / seconds.max(1e-9),
            p50_ms: percentile(l, 0.50),
            p95_ms: percentile(l, 0.95),
            p99_ms: percentile(l, 0.99),
            max_ms: l.last().copied().unwrap_or(0.0),
            p99_sent_ms: percentile(&self.sent_ms, 0.99),
            errors_by_code: self.codes,
            latencies_ms: self.latencies_ms,
        }
    }
}

/// The V2 request body for one text, asking for the label and the probabilities.
pub fn text_request(text: &str) -> Bytes {
    let body = serde_json::json!({
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}],
        "outputs": [{"name": "label"}, {"name": "probabilities"}]
    });
    Bytes::from(serde_json::to_vec(&body).expect("JSON"))
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(authority: &str) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    /// Sends one request; its status, or `None` when the connection failed.
    async fn send(&mut self, authority: &str, method: &str, path: &str, body: Bytes) -> Option<u16> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .ok()?;
        self.sender.ready().await.ok()?;
        let response = self.sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        response.into_body().collect().await.ok()?;
        Some(status)
    }
}

/// One request on `connection` (reopened when it broke), its outcome added to `tally`; the
/// latency counts from `since`.
async fn request(connection: &mut Option<Connection>, target: &Target, body: Bytes, since: Instant, tally: &mut Tally) {
    if connection.is_none() {
        *connection = Connection::open(&target.authority).await.ok();
    }
    let sent = Instant::now();
    let status = match connection.as_mut() {
        Some(c) => c.send(&target.authority, "POST", &target.path, body).await,
        None => None,
    };
    match status {
        Some(s) if (200..300).contains(&s) => {
            tally.latencies_ms.push(since.elapsed().as_secs_f64() * 1e3);
            tally.sent_ms.push(sent.elapsed().as_secs_f64() * 1e3);
        }
        Some(code) => tally.failed(Some(code)),
        None => {
            tally.failed(None);
            *connection = None;
        }
    }
}

/// Every client's tally, merged.
async fn gather(clients: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut tally = Tally::default();
    for c in clients {
        tally.merge(c.await.expect("a load client panicked"));
    }
    tally
}

/// Waits until `url`'s `/v2/health/ready` answers 200, for at most `timeout`.
pub async fn wait_ready(target: &Target, timeout: Duration) -> Result<(), LoadError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(mut c) = Connection::open(&target.authority).await
            && c.send(&target.authority, "GET", "/v2/health/ready", Bytes::new()).await == Some(200)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(LoadError::NotReady { url: format!("http://{}", target.authority), seconds: timeout.as_secs() })
}

/// Hands out request slots: which body to send next, whether it is measured, when to stop.
struct Slots {
    warmup: Warmup,
    stop: Stop,
    start: Instant,
    next: AtomicUsize,
    measured: AtomicU64,
    measure_from: OnceLock<Instant>,
}

impl Slots {
    fn new(warmup: Warmup, stop: Stop) -> Self {
        Self {
            warmup,
            stop,
            start: Instant::now(),
            next: AtomicUsize::new(0),
            measured: AtomicU64::new(0),
            measure_from: OnceLock::new(),
        }
    }

    /// The next request: its index (which body) and whether it is measured; `None` to stop.
    fn take(&self) -> Option<(usize, bool)> {
        let now = Instant::now();
        let warming = match self.warmup {
            Warmup::Time(d) => now < self.start + d,
            Warmup::Requests(n) => (self.next.load(Ordering::Relaxed) as u64) < n,
        };
        if warming {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            // Another client may have taken the last warm-up slot meanwhile: this one is then
            // simply one warm-up request more, never a measured one lost.
            return Some((i, false));
        }
        let from = *self.measure_from.get_or_init(|| now);
        let go = match self.stop {
            Stop::After(d) => now < from + d,
            Stop::Requests(n) => self.measured.fetch_add(1, Ordering::Relaxed) < n,
        };
        go.then(|| (self.next.fetch_add(1, Ordering::Relaxed), true))
    }

    /// Seconds from the first measured request to now.
    fn measured_seconds(&self) -> f64 {
        self.measure_from.get().map_or(0.0, |from| from.elapsed().as_secs_f64())
    }
}

/// `concurrency` clients sending `bodies` (in order, wrapping around, shared by all clients)
/// back to back: first `warmup`, whose requests are not counted, then until `stop`.
pub async fn closed_loop(
    target: &Target,
    bodies: Arc<Vec<Bytes>>,
    concurrency: usize,
    warmup: Warmup,
    stop: Stop,
) -> Result<LevelReport, LoadError> {
    if bodies.is_empty() {
        return Err(LoadError::NoTexts);
    }
    let slots = Arc::new(Slots::new(warmup, stop));
    let clients: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (target, bodies, slots) = (target.clone(), bodies.clone(), slots.clone());
            tokio::spawn(async move {
                let mut connection = Connection::open(&target.authority).await.ok();
                let (mut tally, mut ignored) = (Tally::default(), Tally::default());
                while let Some((i, measured)) = slots.take() {
                    let into = if measured { &mut tally } else { &mut ignored };
                    request(&mut connection, &target, bodies[i % bodies.len()].clone(), Instant::now(), into).await;
                }
                tally
            })
        })
        .collect();
    let tally = gather(clients).await;
    Ok(tally.report(&target.name, concurrency, None, slots.measured_seconds()))
}

/// Requests scheduled at `rate` per second over `connections` connections, each latency counted
/// from its scheduled time: `warmup` requests first (not counted), then until `stop`.
pub async fn open_loop(
    target: &Target,
    bodies: Arc<Vec<Bytes>>,
    rate: f64,
    connections: usize,
    warmup: u64,
    stop: Stop,
) -> Result<LevelReport, LoadError> {
    if bodies.is_empty() {
        return Err(LoadError::NoTexts);
    }
    let connections = connections.max(1);
    let measured = match stop {
        Stop::After(d) => (rate * d.as_secs_f64()).round() as u64,
        Stop::Requests(n) => n,
    };
    let (warmup, total) = (warmup as usize, (warmup + measured) as usize);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-9));
    let start = Instant::now() + Duration::from_millis(100);
    let clients: Vec<_> = (0..connections)
        .map(|k| {
            let (target, bodies) = (target.clone(), bodies.clone());
            tokio::spawn(async move {
                let mut connection = Connection::open(&target.authority).await.ok();
                let (mut tally, mut ignored) = (Tally::default(), Tally::default());
                for i in (k..total).step_by(connections) {
                    let scheduled = start + interval.mul_f64(i as f64);
                    tokio::time::sleep_until(scheduled.into()).await;
                    let into = if i >= warmup { &mut tally } else { &mut ignored };
                    request(&mut connection, &target, bodies[i % bodies.len()].clone(), scheduled, into).await;
                }
                tally
            })
        })
        .collect();
    let tally = gather(clients).await;
    Ok(tally.report(&target.name, connections, Some(rate), measured as f64 / rate.max(1e-9)))
}

/// The reports as a table; with two or more targets, each later target's ratios to the first at
/// the same load (throughput: the first's over the other's — how many times faster the first is).
pub fn table(reports: &[LevelReport]) -> String {
    let mut out = format!(
        "{:<14} {:>6} {:>9} {:>8} {:>7} {:>7} {:>10} {:>9} {:>9} {:>9} {:>13}\n",
        "target", "conc", "offered/s", "ok", "429", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "p99 sent ms"
    );
    for r in reports {
        out += &format!(
            "{:<14} {:>6} {:>9} {:>8} {:>7} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>13.2}\n",
            r.target,
            r.concurrency,
            r.offered_rate.map_or("-".into(), |v| format!("{v:.0}")),
            r.ok,
            r.rejected,
            r.errors,
            r.throughput,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.p99_sent_ms
        );
    }
    let first = reports.first().map(|r| r.target.clone()).unwrap_or_default();
    for r in reports.iter().filter(|r| r.target == first) {
        for o in reports.iter().filter(|o| o.target != first && o.concurrency == r.concurrency) {
            out += &format!(
                "concurrency {:>3}: {} / {}: {:.2}× the throughput, {:.2}× the p50, {:.2}× the p99\n",
                r.concurrency,
                r.target,
                o.target,
                r.throughput / o.throughput.max(1e-9),
                r.p50_ms / o.p50_ms.max(1e-9),
                r.p99_ms / o.p99_ms.max(1e-9)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn a_tally_reports_only_successes_in_latency() {
        let t = Tally {
            latencies_ms: vec![3.0, 1.0, 2.0],
            sent_ms: vec![1.0, 1.0, 1.0],
            rejected: 5,
            errors: 1,
            codes: BTreeMap::from([("429".into(), 5), ("connection".into(), 1)]),
        };
        let r = t.report("x", 4, None, 2.0);
        assert_eq!((r.ok, r.rejected, r.errors), (3, 5, 1));
        assert!((r.throughput - 1.5).abs() < 1e-12);
        assert_eq!((r.p50_ms, r.max_ms), (2.0, 3.0));
    }

    #[test]
    fn targets_need_an_http_url() {
        let t = Target::new("a", "http://127.0.0.1:8080/", "m").unwrap();
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("127.0.0.1:8080", "/v2/models/m/infer"));
        assert!(Target::new("a", "https://x:1", "m").is_err());
        assert!(Target::new("a", "http://x:1/v2", "m").is_err());
        assert!(Target::new("a", "127.0.0.1:80", "m").is_err());
    }

    #[test]
    fn the_table_gives_ratios_against_the_first_target() {
        let r = |target: &str, throughput: f64, p99: f64| LevelReport {
            target: target.into(),
            concurrency: 16,
            offered_rate: None,
            seconds: 1.0,
            ok: 1,
            rejected: 0,
            errors: 0,
            throughput,
            p50_ms: 1.0,
            p95_ms: 1.0,
            p99_ms: p99,
            max_ms: p99,
            p99_sent_ms: p99,
            errors_by_code: BTreeMap::new(),
            latencies_ms: vec![],
        };
        let t = table(&[r("ours", 300.0, 5.0), r("python", 100.0, 20.0)]);
        assert!(t.contains("ours / python: 3.00× the throughput, 1.00× the p50, 0.25× the p99"), "{t}");
    }
}
