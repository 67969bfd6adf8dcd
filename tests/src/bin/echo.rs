//! `distillery-test-echo`: a tiny HTTP/1.1 server for the simulated cluster's pods (image
//! repository name `distillery-test-echo`). It answers every request, whatever its method and
//! path, with 200 and its name as the body (`POD_NAME`, e.g. from a `metadata.name` field
//! reference; its listen address without one), with the headers `x-pod-name`, `x-echo-path` (the
//! request's path and query) and `x-echo-body-bytes` (the size of the request body it read).
//! Keep-alive connections are served request by request.
//!
//! Address: the first argument, else `LISTEN_ADDRESS`, else `$POD_IP:$PORT` (`127.0.0.1`, 8080).

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let address = std::env::args().nth(1).or_else(|| env("LISTEN_ADDRESS")).unwrap_or_else(|| {
        format!(
            "{}:{}",
            env("POD_IP").unwrap_or_else(|| "127.0.0.1".into()),
            env("PORT").unwrap_or_else(|| "8080".into())
        )
    });
    let name = env("POD_NAME").unwrap_or_else(|| address.clone());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("distillery-test-echo: {name} listening on {address}");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let name = name.clone();
                async move {
                    let path = request.uri().path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_default();
                    // Read the whole request body before answering.
                    let received = request.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                    let mut response = Response::new(Full::new(Bytes::from(name.clone())));
                    let headers = response.headers_mut();
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    if let Ok(v) = HeaderValue::from_str(&name) {
                        headers.insert("x-pod-name", v);
                    }
                    if let Ok(v) = HeaderValue::from_str(&path) {
                        headers.insert("x-echo-path", v);
                    }
                    headers.insert("x-echo-body-bytes", HeaderValue::from(received));
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
