//! The upstream: a minimal hyper HTTP/1.1 server answering every request with 200 "ok",
//! and, as an OTLP/HTTP traces receiver, `POST /v1/traces` with an empty export answer
//! (the traced sidecar's collector).

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Where the OTLP traces receiver listens.
pub const OTLP_TRACES: &str = "/v1/traces";

pub fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("bind {listen}"))?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                    if request.uri().path() == OTLP_TRACES {
                        // an empty ExportTraceServiceResponse: every span accepted
                        let mut answer = hyper::Response::new(Full::new(Bytes::new()));
                        answer
                            .headers_mut()
                            .insert("content-type", hyper::header::HeaderValue::from_static("application/x-protobuf"));
                        return Ok::<_, Infallible>(answer);
                    }
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}
