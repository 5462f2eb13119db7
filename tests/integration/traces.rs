//! OpenTelemetry traces: the real binary exporting over OTLP/HTTP to a receiver in this
//! test, the trace a trusted proxy started continued upstream and in the audit line,
//! the AWS SDK's calls traced and propagated, and no exporter at all when it is off.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authz_sidecar::config::Config;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;

use crate::binary::{Running, start_binary};
use crate::harness::{self, Jwks, Setup, TestServer, config_toml, keys, token};
use crate::support::Workspace;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    trace: String,
    id: String,
    parent: String,
    name: String,
    kind: i32,
    attributes: HashMap<String, String>,
    service: String,
}

/// An OTLP/HTTP traces receiver (protobuf), keeping every span it is sent.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            assert_eq!(request.uri().path(), "/v1/traces");
                            assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            let mut kept = kept.lock().unwrap();
                            for resource in export.resource_spans {
                                let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
                                let service = attributes
                                    .iter()
                                    .find(|kv| kv.key == "service.name")
                                    .map(|kv| text(kv.value.as_ref()))
                                    .unwrap_or_default();
                                for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                                    kept.push(got(&span, &service));
                                }
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// The spans received, once `count` of them have arrived (or after five seconds).
    async fn wait_for(&self, count: usize) -> Vec<Got> {
        for _ in 0..100 {
            if self.spans.lock().unwrap().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.spans.lock().unwrap().clone()
    }
}

fn got(span: &Span, service: &str) -> Got {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Got {
        trace: hex(&span.trace_id),
        id: hex(&span.span_id),
        parent: hex(&span.parent_span_id),
        name: span.name.clone(),
        kind: span.kind,
        attributes: span.attributes.iter().map(|kv| (kv.key.clone(), text(kv.value.as_ref()))).collect(),
        service: service.to_owned(),
    }
}

/// The binary over the shipped workspace, the Studio route forwarding to `upstream`,
/// trusting `trusted_proxies`, with `extra` appended to its configuration.
async fn serve(ws: &Workspace, upstream: &TestServer, trusted: &'static str, extra: &str) -> (Running, Jwks) {
    let (key, _) = keys();
    let jwks = Jwks::start(&[key]).await;
    let setup = Setup { trusted_proxies: trusted, ..Setup::default() };
    let mut toml = config_toml(ws, &jwks.url(), &upstream.url(), &setup);
    toml.push_str(extra);
    Config::from_toml(&toml, "test").expect("the test's configuration is valid");
    let path = ws.dir.path().join("traced.toml");
    std::fs::write(&path, toml).unwrap();
    let log = ws.dir.path().join("sidecar.log");
    let running = start_binary(&["--config", path.to_str().unwrap()], &[], &log).await;
    (running, jwks)
}

fn stop(running: &mut Running) {
    let killed = Command::new("kill").args(["-TERM", &running.child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    for _ in 0..200 {
        if running.child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = running.child.kill();
    panic!("the sidecar did not stop within 5 s of SIGTERM");
}

/// The names of the process's threads (as the kernel keeps them: 15 bytes at most).
fn threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

fn audits(ws: &Workspace) -> Vec<Value> {
    let text = std::fs::read_to_string(ws.dir.path().join("sidecar.log")).unwrap();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == "authz_sidecar::audit")
        .map(|event| event["fields"].clone())
        .collect()
}

/// user-1's request through the gateway, carrying `traceparent` when given and `more`
/// headers; the status and the response's `x-request-id`.
async fn studio_with(data: SocketAddr, traceparent: Option<&str>, more: &[(&str, &str)]) -> (u16, String) {
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
        ("x-forwarded-for", "10.1.2.3"),
    ];
    if let Some(traceparent) = traceparent {
        headers.push(("traceparent", traceparent));
    }
    headers.extend_from_slice(more);
    let (status, answer, _) = harness::get(data, "/studio/user-1/team1", &headers).await;
    (status, answer["x-request-id"].to_str().unwrap().to_owned())
}

fn upstream_traceparent(upstream: &TestServer) -> Option<String> {
    let requests = upstream.requests.lock().unwrap();
    let last = requests.last()?;
    last.headers.get("traceparent").map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_from_a_trusted_proxy_continues_its_trace_in_spans_upstream_and_the_audit_line() {
    let ws = Workspace::shipped();
    let receiver = Receiver::start().await;
    let upstream = TestServer::start(|_| (200, "ok".to_owned(), Duration::ZERO)).await;
    let tracing = format!("\n[tracing]\notlp_endpoint = \"{}\"\nbatch_delay = \"200ms\"\n", receiver.endpoint());
    let (mut running, _jwks) = serve(&ws, &upstream, r#"["127.0.0.1/32"]"#, &tracing).await;
    let names = threads(running.child.id());
    assert!(names.iter().any(|n| n.starts_with("OpenTelemetry")), "no batch thread: {names:?}");
    assert!(names.iter().any(|n| n.starts_with("authz-otlp")), "no export thread: {names:?}");

    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (status, _) = studio_with(running.data, Some(&caller), &[("tracestate", "gateway=ab12")]).await;
    assert_eq!(status, 200);
    // the upstream is told of the same trace, under the sidecar's upstream span, with
    // the caller's trace state
    let state = upstream.requests.lock().unwrap().last().and_then(|r| r.headers.get("tracestate").cloned());
    assert_eq!(state.as_ref().and_then(|v| v.to_str().ok()), Some("gateway=ab12"));
    let sent = upstream_traceparent(&upstream).expect("a traceparent upstream");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE, "01"), "{sent}");
    assert_ne!(parts[2], CALLER_SPAN, "the upstream's parent is the sidecar's span");
    stop(&mut running);

    let spans = receiver.wait_for(5).await;
    let ours: Vec<&Got> = spans.iter().filter(|s| s.trace == TRACE).collect();
    let named = |name: &str| *ours.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name}: {ours:#?}"));
    let request = named("GET /studio/{user}/{team}");
    assert_eq!(request.parent, CALLER_SPAN, "the request continues the caller's span");
    assert_eq!(request.kind, 2, "server");
    assert_eq!(request.service, "authz-sidecar");
    assert_eq!(request.attributes["http.response.status_code"], "200");
    assert_eq!(request.attributes["http.route"], "/studio/{user}/{team}");
    for child in ["authenticate", "route", "decide", "upstream"] {
        assert_eq!(named(child).parent, request.id, "{child} is a child of the request");
    }
    let decide = named("decide");
    assert_eq!(decide.attributes["authz.decision"], "allow");
    assert_eq!(decide.attributes["authz.policies"], "presign-own-profile");
    assert_eq!(decide.attributes["authz.resource"], "Studio::UserProfile::\"user-1-team1\"");
    let upstream_span = named("upstream");
    assert_eq!(upstream_span.kind, 3, "client");
    assert_eq!(upstream_span.id, parts[2], "the upstream's parent is the upstream span");
    assert_eq!(upstream_span.attributes["http.response.status_code"], "200");
    // and the audit line says which trace decided
    let audit = audits(&ws);
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["trace_id"], TRACE);
    for span in &ours {
        for value in span.attributes.values() {
            assert!(!value.contains("Bearer"), "a token in a span: {span:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_from_anyone_else_starts_a_trace_of_the_sidecars_own() {
    let ws = Workspace::shipped();
    let receiver = Receiver::start().await;
    let upstream = TestServer::start(|_| (200, "ok".to_owned(), Duration::ZERO)).await;
    let tracing = format!("\n[tracing]\notlp_endpoint = \"{}\"\nbatch_delay = \"200ms\"\n", receiver.endpoint());
    // no trusted proxy: the caller's traceparent is the client's own claim
    let (mut running, _jwks) = serve(&ws, &upstream, "[]", &tracing).await;
    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");
    // from loopback, outside the corporate network as far as the policy can tell: denied;
    // and the client's request id is not taken either
    let (status, id) = studio_with(running.data, Some(&caller), &[("x-request-id", "client-chosen")]).await;
    assert_eq!(status, 403);
    assert_ne!(id, "client-chosen");
    stop(&mut running);
    let spans = receiver.wait_for(1).await;
    let request = spans.iter().find(|s| s.name == "GET /studio/{user}/{team}").expect("the request's span");
    assert_ne!(request.trace, TRACE, "a client chose the trace");
    assert!(request.parent.is_empty() || request.parent == "0000000000000000", "{request:?}");
    assert_eq!(request.attributes["http.response.status_code"], "403");
    assert_eq!(audits(&ws)[0]["trace_id"], request.trace.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracing_off_no_exporter_runs_and_a_trusted_callers_trace_is_passed_on_and_audited() {
    let ws = Workspace::shipped();
    let upstream = TestServer::start(|_| (200, "ok".to_owned(), Duration::ZERO)).await;
    let (mut running, _jwks) = serve(&ws, &upstream, r#"["127.0.0.1/32"]"#, "").await;
    let names = threads(running.child.id());
    assert!(!names.iter().any(|n| n.starts_with("OpenTelemetry") || n.starts_with("authz-otlp")), "{names:?}");
    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");
    // the trusted proxy's request id is kept, as long as it is one plain value
    let (status, id) = studio_with(running.data, Some(&caller), &[("x-request-id", "gw-4f1c:2")]).await;
    assert_eq!((status, id.as_str()), (200, "gw-4f1c:2"));
    assert_eq!(upstream_traceparent(&upstream).as_deref(), Some(caller.as_str()), "passed on as it came");
    let (_, id) = studio_with(running.data, None, &[("x-request-id", "two;values")]).await;
    assert_ne!(id, "two;values");
    stop(&mut running);
    let audit = audits(&ws);
    assert_eq!((audit[0]["trace_id"].as_str(), audit[0]["request_id"].as_str()), (Some(TRACE), Some("gw-4f1c:2")));
    assert!(audit[1].get("trace_id").is_none(), "no trace, no trace id: {}", audit[1]);
    assert_eq!(audit[1]["request_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_aws_call_is_a_span_of_the_request_and_carries_its_trace() {
    use tracing::Instrument;
    use tracing::instrument::WithSubscriber;
    use tracing_subscriber::layer::SubscriberExt;

    let receiver = Receiver::start().await;
    let config = authz_sidecar::config::Config::from_toml(
        &format!("[tracing]\notlp_endpoint = \"{}\"\nbatch_delay = \"100ms\"\n", receiver.endpoint()),
        "test",
    )
    .unwrap()
    .tracing
    .unwrap();
    let (layer, exporting) = authz_sidecar::otel::layer(&config).unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));

    let (http, captured) = aws_smithy_http_client::test_util::capture_request(None);
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_sts::config::Credentials::for_tests())
            .http_client(http)
            .interceptor(authz_sidecar::otel::AwsTraceContext)
            .build(),
    );
    let call = async {
        let _ = sts.assume_role().role_arn("arn:aws:iam::111122223333:role/r").role_session_name("s").send().await;
    };
    let request = tracing::dispatcher::with_default(
        &dispatch,
        || tracing::info_span!(target: "authz_sidecar::server::pipeline", "request"),
    );
    call.instrument(request).with_subscriber(dispatch.clone()).await;
    drop(exporting);

    let sent = captured.expect_request();
    let traceparent = sent.headers().get("traceparent").expect("the AWS call carries the trace").to_owned();
    let spans = receiver.wait_for(2).await;
    let request = spans.iter().find(|s| s.name == "request").expect("the request's span");
    let aws = spans.iter().find(|s| s.name == "STS.AssumeRole").unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(aws.parent, request.id, "the AWS call is a child of the request");
    assert_eq!(aws.attributes["rpc.service"], "STS");
    assert_eq!(aws.attributes["rpc.method"], "AssumeRole");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[1], request.trace);
    assert!(spans.iter().any(|s| s.id == parts[2] && s.trace == request.trace), "the header names a span of the trace");
}
