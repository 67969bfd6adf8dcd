//! A `distillery-server` process the benchmark starts for an artifact target, and its cold
//! start: process start → `/v2/health/ready` answers 200 → the first inference answered.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use distillery_crds::common::ModelVariant;
use hyper::body::Bytes;
use serde::Serialize;

use crate::serve::analyze::{Client, Url};
use crate::serve::loadgen::text_request;

/// How long a server may take to turn ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The binary could not be run.
    #[error("cannot start {binary}: {message}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The OS error.
        message: String,
    },
    /// It exited before answering: the artifact is corrupt, missing or not servable.
    #[error("the server for artifact {artifact} exited ({status}) before it was ready: {log}")]
    Exited {
        /// The artifact.
        artifact: PathBuf,
        /// Its exit status.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// It never turned ready, or did not answer its first request.
    #[error("the server for artifact {artifact} {what}")]
    NoAnswer {
        /// The artifact.
        artifact: PathBuf,
        /// What did not happen.
        what: String,
    },
}

/// A server's cold start, milliseconds from process start.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ColdStart {
    /// Until `/v2/health/ready` answered 200.
    pub ready_ms: f64,
    /// Until the first inference was answered: the cold start.
    pub first_answer_ms: f64,
}

/// A running server; killed when dropped.
pub struct LocalServer {
    child: Child,
    /// Its base URL.
    pub url: Url,
    /// The model name it serves under.
    pub model: String,
    /// How long it took to answer.
    pub cold_start: ColdStart,
    log: PathBuf,
}

/// The `distillery-server` binary: `explicit`, else the one beside this executable (as cargo
/// and the worker image place them), else `distillery-server` on the PATH.
pub fn server_binary(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("distillery-server")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("distillery-server"))
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

impl LocalServer {
    /// Starts `binary` serving `dir`'s `variant` as model `name` on a free loopback port, and
    /// measures its cold start with `probe` as the first text.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        variant: ModelVariant,
        name: &str,
        probe: &str,
    ) -> Result<Self, ServerError> {
        let spawn_error = |e: std::io::Error| ServerError::Spawn { binary: binary.into(), message: e.to_string() };
        let port = free_port().map_err(spawn_error)?;
        let log = std::env::temp_dir().join(format!("distillery-bench-{}-{name}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).map_err(spawn_error)?;
        let variant_flag = match variant {
            ModelVariant::Fp32 => "fp32",
            ModelVariant::Int8 => "int8",
            ModelVariant::Auto => "auto",
        };
        let started = Instant::now();
        let child = Command::new(binary)
            .args(["--model", &dir.display().to_string(), "--variant", variant_flag, "--model-name", name])
            .args(["--address", "127.0.0.1", "--port", &port.to_string(), "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(spawn_error)?;
        let url = Url { authority: format!("127.0.0.1:{port}"), path: String::new() };
        let mut server =
            Self { child, url, model: name.into(), cold_start: ColdStart { ready_ms: 0.0, first_answer_ms: 0.0 }, log };
        let ms = |since: Instant| since.elapsed().as_secs_f64() * 1e3;
        let mut client = Client::new(&server.url.authority, Duration::from_secs(10));
        loop {
            server.check_alive(dir)?;
            if started.elapsed() > READY_TIMEOUT {
                return Err(ServerError::NoAnswer {
                    artifact: dir.into(),
                    what: format!("was not ready within {} s: {}", READY_TIMEOUT.as_secs(), tail(&server.log, 5)),
                });
            }
            if client.send("GET", "/v2/health/ready", Bytes::new()).await.is_ok_and(|r| r.status == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.cold_start.ready_ms = ms(started);
        let path = format!("/v2/models/{name}/infer");
        let reply = client.send("POST", &path, text_request(probe)).await;
        match reply {
            Ok(r) if r.status == 200 => server.cold_start.first_answer_ms = ms(started),
            Ok(r) => {
                return Err(ServerError::NoAnswer {
                    artifact: dir.into(),
                    what: format!(
                        "answered its first request with HTTP {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ),
                });
            }
            Err(e) => return Err(ServerError::NoAnswer { artifact: dir.into(), what: format!("did not answer: {e}") }),
        }
        Ok(server)
    }

    fn check_alive(&mut self, dir: &Path) -> Result<(), ServerError> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(ServerError::Exited {
                artifact: dir.into(),
                status: status.to_string(),
                log: tail(&self.log, 5),
            });
        }
        Ok(())
    }

    /// The process id (for its CPU time and memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
