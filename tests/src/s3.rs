//! A real S3 server for the tests: moto's (`python -m moto.server`, installed by
//! `scripts/setup-s3.sh`) on a loopback port, and a proxy in front of it that answers every Nth
//! request `503 SlowDown` itself — how a busy S3 sheds load — so that retries are exercised
//! against the real server behind it, and that can refuse (`403 InvalidAccessKeyId`) every request
//! not signed with a given access key: moto without auth accepts any key, so this is what shows a
//! pod really signs with the key from its Secret (the key id is checked, not the signature).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The python of moto's environment: `DISTILLERY_MOTO_PYTHON`, else where `scripts/setup-s3.sh`
/// puts it.
pub fn moto_python() -> PathBuf {
    std::env::var_os("DISTILLERY_MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::cache_dir().join("python/moto/bin/python"))
}

/// A moto S3 server; killed when dropped.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One plain HTTP/1.1 request to `endpoint` (unsigned: moto accepts it unless auth is on).
fn raw(endpoint: &str, method: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = String::new();
    stream.read_to_string(&mut head).ok()?;
    head.split(' ').nth(1)?.parse().ok()
}

impl Moto {
    /// Starts moto's S3 server. With `enforce_auth`, it checks every request's credentials
    /// (`INITIAL_NO_AUTH_ACTION_COUNT=0`): unknown keys get 403, as on a real store.
    pub fn start(enforce_auth: bool) -> Self {
        let python = moto_python();
        assert!(python.is_file(), "{} is missing: run scripts/setup-s3.sh", python.display());
        let port = free_port();
        let mut command = Command::new(&python);
        command.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()]);
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if enforce_auth {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("{}: {e}", python.display()));
        let moto = Self { child, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while raw(&moto.endpoint, "GET", "/moto-api/").is_none() {
            assert!(Instant::now() < deadline, "moto did not answer on {} within 60 s", moto.endpoint);
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// Creates `bucket` (unsigned; only while auth is off).
    pub fn create_bucket(&self, bucket: &str) {
        assert_eq!(raw(&self.endpoint, "PUT", &format!("/{bucket}")), Some(200), "create bucket {bucket}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A proxy to an S3 endpoint that answers every `every`-th request `503 SlowDown` itself and
/// forwards the others; stops with the runtime it was started on.
pub struct FaultyProxy {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Requests answered 503 so far.
    pub injected: Arc<AtomicUsize>,
    /// Requests forwarded so far.
    pub forwarded: Arc<AtomicUsize>,
    /// Requests refused for not being signed with the required access key.
    pub refused: Arc<AtomicUsize>,
}

const INVALID_KEY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>";

/// Whether `request` is signed (SigV4) with `access_key`.
fn signed_with(request: &hyper::Request<Incoming>, access_key: &str) -> bool {
    let credential = format!("Credential={access_key}/");
    request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|auth| auth.starts_with("AWS4-HMAC-SHA256") && auth.contains(&credential))
}

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

async fn forward(upstream: &str, request: hyper::Request<Incoming>) -> Result<hyper::Response<Full<Bytes>>, String> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let stream = tokio::net::TcpStream::connect(upstream).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut out = hyper::Request::builder().method(parts.method).uri(parts.uri);
    for (name, value) in &parts.headers {
        out = out.header(name, value);
    }
    let response =
        sender.send_request(out.body(Full::new(body)).map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(hyper::Response::from_parts(parts, Full::new(body)))
}

impl FaultyProxy {
    /// Listens on a loopback port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, every: usize) -> Self {
        Self::start_requiring(upstream, every, None).await
    }

    /// As [`FaultyProxy::start`], refusing with 403 every request not signed with `access_key`
    /// when one is given.
    pub async fn start_requiring(upstream: &str, every: usize, access_key: Option<&str>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = Arc::new(upstream.trim_start_matches("http://").to_string());
        let (injected, forwarded) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let refused = Arc::new(AtomicUsize::new(0));
        let access_key: Option<Arc<str>> = access_key.map(Arc::from);
        let seen = Arc::new(AtomicUsize::new(0));
        let (i, f, r) = (injected.clone(), forwarded.clone(), refused.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (upstream, seen, injected, forwarded) = (upstream.clone(), seen.clone(), i.clone(), f.clone());
                let (refused, access_key) = (r.clone(), access_key.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let (upstream, seen, injected, forwarded) =
                            (upstream.clone(), seen.clone(), injected.clone(), forwarded.clone());
                        let (refused, access_key) = (refused.clone(), access_key.clone());
                        async move {
                            if let Some(key) = access_key.as_deref()
                                && !signed_with(&request, key)
                            {
                                refused.fetch_add(1, Ordering::SeqCst);
                                let response = hyper::Response::builder()
                                    .status(403)
                                    .header("content-type", "application/xml")
                                    .body(Full::new(Bytes::from_static(INVALID_KEY.as_bytes())))
                                    .expect("a static response");
                                return Ok::<_, std::convert::Infallible>(response);
                            }
                            if (seen.fetch_add(1, Ordering::SeqCst) + 1) % every.max(1) == 0 {
                                injected.fetch_add(1, Ordering::SeqCst);
                                let response = hyper::Response::builder()
                                    .status(503)
                                    .header("content-type", "application/xml")
                                    .body(Full::new(Bytes::from_static(SLOW_DOWN.as_bytes())))
                                    .expect("a static response");
                                return Ok::<_, std::convert::Infallible>(response);
                            }
                            forwarded.fetch_add(1, Ordering::SeqCst);
                            Ok(forward(&upstream, request).await.unwrap_or_else(|e| {
                                hyper::Response::builder()
                                    .status(502)
                                    .body(Full::new(Bytes::from(e)))
                                    .expect("a plain response")
                            }))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { endpoint, injected, forwarded, refused }
    }
}
