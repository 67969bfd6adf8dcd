//! A `distillery-server` process for tests, and a plain HTTP/1.1 client to talk to it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::workspace_binary;

/// A running `distillery-server`, killed when dropped.
pub struct ServerProcess {
    /// The process.
    pub child: Child,
    /// `127.0.0.1:<port>`.
    pub address: String,
    log: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Starts the workspace's `distillery-server` on `dir` with `extra` flags, on a free port, and
    /// waits until it is ready.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_model(&dir.display().to_string(), extra, &[])
    }

    /// Like [`ServerProcess::start`] for any `--model` value (a URI), with `env` set for it.
    pub fn start_model(model: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(workspace_binary("distillery-server"))
            .args(["--model", model])
            .args(["--port", "0", "--address", "127.0.0.1"])
            .args(extra)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let log = Arc::new(Mutex::new(String::new()));
        let mut address = None;
        let mut line = String::new();
        while address.is_none() && stderr.read_line(&mut line).unwrap() > 0 {
            address = line.split("listening on http://").nth(1).map(|a| a.trim().to_string());
            log.lock().unwrap().push_str(&line);
            line.clear();
        }
        let address = address.unwrap_or_else(|| panic!("the server did not start:\n{}", log.lock().unwrap()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let server = Self { child, address, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.get("/v2/health/ready").status != 200 {
            assert!(Instant::now() < deadline, "not ready after 60 s:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// A GET.
    pub fn get(&self, path: &str) -> Response {
        http(&self.address, "GET", path, b"", &[])
    }

    /// An inference request for `model`.
    pub fn infer(&self, model: &str, body: &Value) -> Response {
        http(&self.address, "POST", &format!("/v2/models/{model}/infer"), body.to_string().as_bytes(), &[])
    }

    /// Its `/metrics` text.
    pub fn metrics(&self) -> String {
        self.get("/metrics").body
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// An HTTP response.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: HashMap<String, String>,
    /// The body (de-chunked).
    pub body: String,
}

impl Response {
    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn http(address: &str, method: &str, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Response {
    let mut stream = TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    stream.write_all((head + "\r\n").as_bytes()).unwrap();
    // The server may answer (413) before reading a large body and close: a failed write is fine.
    stream.write_all(body).ok();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body =
        if headers.get("transfer-encoding").is_some_and(|t| t == "chunked") { dechunk(body) } else { body.into() };
    Response { status, headers, body }
}

/// The body of a `Transfer-Encoding: chunked` response, de-chunked.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}
