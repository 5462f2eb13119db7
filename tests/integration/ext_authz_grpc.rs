//! Envoy's external authorization, gRPC form, over real sockets with tonic's client:
//! `envoy.service.auth.v3.Authorization/Check`, answered from the data plane's own
//! phases, never forwarded.

use std::net::SocketAddr;

use authz_sidecar::server::ext_authz::grpc::envoy_check;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HeaderAppendAction, HttpResponse, OkHttpResponse};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::auth::v3::DeniedHttpResponse;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use http_body_util::BodyExt;

use crate::ext_authz::{envoy_headers, error_of, start, start_trusting};
use crate::harness::token;

/// What Envoy's `grpc_service` sends for a client request from `source`.
fn check(method: &str, path: &str, headers: &[(&str, &str)], source: &str) -> CheckRequest {
    let source = format!("{source}:51234").parse().unwrap();
    let more = [(":authority", "studio.example.com")];
    envoy_check(method, path, &more.iter().chain(headers).copied().collect::<Vec<_>>(), Some(source))
}

async fn client(addr: SocketAddr) -> AuthorizationClient<tonic::transport::Channel> {
    AuthorizationClient::connect(format!("http://{addr}")).await.unwrap()
}

async fn ask(addr: SocketAddr, request: CheckRequest) -> Result<CheckResponse, tonic::Status> {
    client(addr).await.check(request).await.map(tonic::Response::into_inner)
}

fn ok(response: &CheckResponse) -> &OkHttpResponse {
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(0), "{response:?}");
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("not an OK response: {other:?}"),
    }
}

/// A denial: its gRPC code, and the HTTP response Envoy would send the client.
fn denied(response: &CheckResponse) -> (tonic::Code, &DeniedHttpResponse) {
    let code = tonic::Code::from(response.status.as_ref().map_or(0, |s| s.code));
    assert_ne!(code, tonic::Code::Ok, "{response:?}");
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => (code, denied),
        other => panic!("not a denied response: {other:?}"),
    }
}

fn set_header<'a>(ok: &'a OkHttpResponse, name: &str) -> Option<&'a str> {
    ok.headers.iter().filter_map(|h| h.header.as_ref()).find(|h| h.key == name).map(|h| h.value.as_str())
}

fn http_status(denied: &DeniedHttpResponse) -> u16 {
    u16::try_from(denied.status.as_ref().unwrap().code).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_grpc_check_sets_the_vouched_headers_removes_the_clients_and_forwards_nothing() {
    let (sidecar, _, grpc) = start("", "enforce").await;
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    let mut headers = envoy_headers(&auth, "10.1.2.3");
    headers.extend([("x-authz-principal", "Studio::User::\"admin\""), ("x_authz_team", "Admins")]);
    let response = ask(grpc, check("GET", "/studio/user-1/team1?tab=1", &headers, "10.1.2.3")).await.unwrap();
    let ok = ok(&response);
    assert_eq!(set_header(ok, "x-authz-principal"), Some("Studio::User::\"user-1\""));
    assert_eq!(set_header(ok, "x-authz-decision"), Some("allow"));
    assert!(!set_header(ok, "x-authz-policies").unwrap_or_default().is_empty());
    assert!(set_header(ok, "x-authz-request-id").is_some());
    // set over the client's copies, never appended beside them
    for header in &ok.headers {
        assert_eq!(header.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32, "{header:?}");
        assert!(header.header.as_ref().unwrap().key.starts_with("x-authz-"), "{header:?}");
    }
    for name in ["authorization", "x_authz_team"] {
        assert!(ok.headers_to_remove.iter().any(|n| n == name), "{name}: {:?}", ok.headers_to_remove);
    }
    assert!(!ok.headers_to_remove.iter().any(|n| n == "x-authz-principal"));
    assert_eq!(sidecar.upstream.calls(), 0, "a check forwards nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_check_is_denied_like_the_data_plane_denies() {
    let (sidecar, _, grpc) = start("", "enforce").await;
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    let envoy = envoy_headers(&auth, "10.1.2.3");
    // by policy: another user's profile; the data plane's status and body
    let response = ask(grpc, check("GET", "/studio/user-2/team1", &envoy, "10.1.2.3")).await.unwrap();
    let (code, denial) = denied(&response);
    assert_eq!((code, http_status(denial)), (tonic::Code::PermissionDenied, 403));
    let (plane, _, plane_body) = sidecar.get("/studio/user-2/team1", &envoy).await;
    assert_eq!((http_status(denial), error_of(&denial.body)), (plane, error_of(&plane_body)));
    assert_eq!(response.status.as_ref().unwrap().message, error_of(&plane_body));
    // the downstream peer is outside the corporate network
    let response = ask(grpc, check("GET", "/studio/user-1/team1", &envoy, "203.0.113.9")).await.unwrap();
    assert_eq!(http_status(denied(&response).1), 403);
    // no token, a bad token: 401 with the challenge for Envoy to send
    let response = ask(grpc, check("GET", "/studio/user-1/team1", &[], "10.1.2.3")).await.unwrap();
    let (code, denial) = denied(&response);
    assert_eq!((code, http_status(denial)), (tonic::Code::Unauthenticated, 401));
    assert!(denial.headers.iter().any(|h| h.header.as_ref().unwrap().key == "www-authenticate"), "{denial:?}");
    let bad = format!("{auth}x");
    let response = ask(grpc, check("GET", "/studio/user-1/team1", &envoy_headers(&bad, "10.1.2.3"), "10.1.2.3"));
    assert_eq!(http_status(denied(&response.await.unwrap()).1), 401);
    // a route the sidecar answers itself cannot be allowed by a check
    let response = ask(grpc, check("PUT", "/studio/user-1/team1", &envoy, "10.1.2.3")).await.unwrap();
    let (_, denial) = denied(&response);
    assert_eq!(http_status(denial), 403);
    assert!(error_of(&denial.body).contains("answers this route itself"), "{}", denial.body);
    // an unknown path
    let response = ask(grpc, check("GET", "/nowhere", &envoy, "10.1.2.3")).await.unwrap();
    assert_eq!(http_status(denied(&response).1), 404);
    assert_eq!(sidecar.upstream.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_downstream_peer_envoy_saw_is_the_client_unless_it_is_a_trusted_proxy() {
    // Envoy at the edge: its downstream peer is the client, and what the client wrote
    // in the forwarded-for header is not believed, either way
    let (_sidecar, _, grpc) = start("", "enforce").await;
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    let claims = |client: &'static str| envoy_headers(&auth, client);
    let spoofed = check("GET", "/studio/user-1/team1", &claims("10.1.2.3"), "203.0.113.9");
    assert_eq!(http_status(denied(&ask(grpc, spoofed).await.unwrap()).1), 403);
    let inside = check("GET", "/studio/user-1/team1", &claims("203.0.113.9"), "10.1.2.3");
    ok(&ask(grpc, inside).await.unwrap());
    // Envoy behind a load balancer the data plane trusts: its forwarded-for is walked
    let (_sidecar, _, grpc) = start_trusting("", "enforce", "[\"10.9.0.0/16\"]").await;
    let from_outside = check("GET", "/studio/user-1/team1", &claims("203.0.113.9"), "10.9.0.5");
    assert_eq!(http_status(denied(&ask(grpc, from_outside).await.unwrap()).1), 403);
    let from_inside = check("GET", "/studio/user-1/team1", &claims("10.1.2.3"), "10.9.0.5");
    ok(&ask(grpc, from_inside).await.unwrap());
    // the load balancer's hop Envoy appended (use_remote_address) is walked past too
    let appended = check("GET", "/studio/user-1/team1", &claims("10.1.2.3, 10.9.0.5"), "10.9.0.5");
    ok(&ask(grpc, appended).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_route_is_allowed_over_grpc_and_marked() {
    let (_sidecar, _, grpc) = start("", "dry-run").await;
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    let response = ask(grpc, check("GET", "/studio/user-2/team1", &envoy_headers(&auth, "10.1.2.3"), "10.1.2.3"));
    assert_eq!(set_header(ok(&response.await.unwrap()), "x-authz-decision"), Some("dry-run-deny"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_grpc_check_gets_a_clear_status_and_never_an_allow() {
    let (sidecar, _, grpc) = start("", "enforce").await;
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    let good = || check("GET", "/studio/user-1/team1", &envoy_headers(&auth, "10.1.2.3"), "10.1.2.3");
    ok(&ask(grpc, good()).await.unwrap());
    let mut no_source = good();
    no_source.attributes.as_mut().unwrap().source = None;
    let mut bad_method = good();
    http(&mut bad_method).method = "GET /admin".to_owned();
    let mut bad_path = good();
    http(&mut bad_path).path = "studio/user-1/team1".to_owned();
    let mut bad_header = good();
    http(&mut bad_header).headers.insert("x-evil".to_owned(), "a\r\nx-authz-principal: admin".to_owned());
    let mut two_forms = good();
    http(&mut two_forms).header_map = Some(core::HeaderMap {
        headers: vec![core::HeaderValue {
            key: "authorization".into(),
            value: String::new(),
            raw_value: b"x".to_vec(),
        }],
    });
    let cases = [
        ("no attributes", CheckRequest::default(), "attributes.request.http"),
        ("no source", no_source, "source address"),
        ("bad method", bad_method, "method"),
        ("bad path", bad_path, "path"),
        ("bad header", bad_header, "x-evil"),
        ("two header forms", two_forms, "header_map"),
    ];
    for (case, request, says) in cases {
        let status = ask(grpc, request).await.expect_err(case);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{case}: {status:?}");
        assert!(status.message().contains(says), "{case}: {}", status.message());
        assert!(!status.message().contains("Bearer"), "{case}: a value in the message");
    }
    // bytes that are not a CheckRequest at all, sent as gRPC over HTTP/2
    let garbage = [0u8, 0, 0, 0, 6, 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f];
    let status = raw_grpc(grpc, garbage.to_vec()).await;
    assert_ne!(status, "0", "garbage was answered OK");
    // a frame that claims more than the message limit
    let status = raw_grpc(grpc, vec![0, 0x7f, 0xff, 0xff, 0xff]).await;
    assert_ne!(status, "0");
    assert_eq!(sidecar.upstream.calls(), 0);
}

fn http(request: &mut CheckRequest) -> &mut HttpRequest {
    request.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap()
}

/// POST `body` to the Check method as a raw gRPC call; its `grpc-status`.
async fn raw_grpc(addr: SocketAddr, body: Vec<u8>) -> String {
    let mut sender = crate::harness::http2(addr).await;
    let request = http::Request::post(format!("http://{addr}/envoy.service.auth.v3.Authorization/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    if let Some(status) = parts.headers.get("grpc-status") {
        return status.to_str().unwrap().to_owned();
    }
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    trailers.get("grpc-status").expect("a grpc-status").to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_allowed_peers_may_ask_over_grpc() {
    let (_sidecar, _, grpc) = start("allowed_peers = [\"10.0.0.0/8\"]", "enforce").await;
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    let request = check("GET", "/studio/user-1/team1", &envoy_headers(&auth, "10.1.2.3"), "10.1.2.3");
    let status = ask(grpc, request).await.expect_err("loopback is not among the allowed peers");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}
