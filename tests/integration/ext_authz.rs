//! Envoy's external authorization, HTTP form, over real sockets: the checks Envoy's
//! `http_service` sends, answered from the data plane's own phases, never forwarded.

use std::net::SocketAddr;

use authz_sidecar::app::{self, App, Listeners};
use authz_sidecar::config::Config;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::harness::{Jwks, Launched, STUDIO_ROUTE, Setup, Sidecar, TestServer, config_toml, get, keys, token};
use crate::support::Workspace;

/// A sidecar whose `[ext_authz]` is `ext_authz` (after the two listeners), the Studio
/// route in `mode`, and an echo route; and the addresses Envoy would ask, HTTP and gRPC.
pub(crate) async fn start(ext_authz: &str, mode: &'static str) -> (Sidecar, SocketAddr, SocketAddr) {
    start_trusting(ext_authz, mode, "[]").await
}

/// As [`start`], the data plane trusting `trusted_proxies`.
pub(crate) async fn start_trusting(
    ext_authz: &str,
    mode: &'static str,
    trusted_proxies: &'static str,
) -> (Sidecar, SocketAddr, SocketAddr) {
    let ws = Workspace::shipped();
    let (key1, _) = keys();
    let jwks = Jwks::start(&[key1]).await;
    let upstream = TestServer::start(|_| (200, "upstream ok".to_owned(), std::time::Duration::ZERO)).await;
    let extra = format!(
        "[[routes]]\nname = \"echo\"\nmethod = \"PUT\"\n{STUDIO_ROUTE}\nhandler = \"echo\"\n\
         [ext_authz]\nhttp_listen = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\n{ext_authz}\n"
    );
    // with `[]`, the data plane trusts no proxy: what Envoy says of the client is
    // believed only because it asked on an external authorization listener
    let setup = Setup { mode, extra, trusted_proxies, ..Setup::default() };
    let config = Config::from_toml(&config_toml(&ws, &jwks.url(), &upstream.url(), &setup), "test").unwrap();
    let app = std::sync::Arc::new(App::new(config, false).unwrap());
    let bind = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let (data, admin, checks, grpc) = (bind().await, bind().await, bind().await, bind().await);
    let addrs = (data.local_addr().unwrap(), admin.local_addr().unwrap(), checks.local_addr().unwrap());
    let grpc_addr = grpc.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let listeners = Listeners { data, admin, ext_authz: Some(checks), ext_authz_grpc: Some(grpc) };
    let task = tokio::spawn(app::run(app.clone(), listeners, shutdown.clone()));
    let launched = Launched { app, data: addrs.0, admin: addrs.1, shutdown, task };
    (Sidecar::from_parts(launched, ws, jwks, upstream).ready().await, addrs.2, grpc_addr)
}

/// What Envoy's `http_service` sends for user-1's request: the method, the path under
/// the prefix, the token, the client's address Envoy appended, the VPC endpoint.
pub(crate) fn envoy_headers<'a>(auth: &'a str, client: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("authorization", auth), ("x-forwarded-for", client), ("x-amzn-vpce-id", "vpce-0a1a000000000001a")]
}

pub(crate) fn error_of(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_check_answers_200_with_the_vouched_headers_and_forwards_nothing() {
    let (sidecar, checks, _) = start("path_prefix = \"/check\"", "enforce").await;
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    let mut headers = envoy_headers(&auth, "10.1.2.3");
    // the client's own claims, under two spellings, and a request-routing header
    headers.extend([
        ("x-authz-principal", "Studio::User::\"admin\""),
        ("x_authz_team", "Admins"),
        ("x-original-url", "/admin"),
    ]);
    let (status, answer, body) = get(checks, "/check/studio/user-1/team1?tab=1", &headers).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer["x-authz-principal"], "Studio::User::\"user-1\"");
    assert_eq!(answer["x-authz-decision"], "allow");
    assert!(!answer["x-authz-policies"].is_empty());
    let remove: Vec<&str> = answer["x-envoy-auth-headers-to-remove"].to_str().unwrap().split(',').collect();
    for name in ["authorization", "x_authz_team", "x-original-url", "forwarded"] {
        assert!(remove.contains(&name), "{name} is not removed: {remove:?}");
    }
    // what the sidecar sets is set (over the client's copy), never removed after
    assert!(!remove.contains(&"x-authz-principal"), "{remove:?}");
    assert_eq!(sidecar.upstream.calls(), 0, "a check forwards nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_is_denied_like_the_data_plane_denies() {
    let (sidecar, checks, _) = start("path_prefix = \"/check\"", "enforce").await;
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    // by policy: another user's profile; the same status and error as the data plane
    let (status, _, body) = get(checks, "/check/studio/user-2/team1", &envoy_headers(&auth, "10.1.2.3")).await;
    assert_eq!(status, 403, "{body}");
    let (plane, _, plane_body) = sidecar.get("/studio/user-2/team1", &envoy_headers(&auth, "10.1.2.3")).await;
    assert_eq!((status, error_of(&body)), (plane, error_of(&plane_body)));
    // the client's address is the one Envoy appended: outside the corporate network
    let (status, _, _) = get(checks, "/check/studio/user-1/team1", &envoy_headers(&auth, "203.0.113.9")).await;
    assert_eq!(status, 403);
    // no token, a bad token: 401 with the challenge
    let (status, answer, _) = get(checks, "/check/studio/user-1/team1", &[("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(status, 401);
    assert!(answer.contains_key("www-authenticate"));
    let bad = format!("{auth}x");
    let (status, _, _) = get(checks, "/check/studio/user-1/team1", &envoy_headers(&bad, "10.1.2.3")).await;
    assert_eq!(status, 401);
    // a route the sidecar answers itself cannot be allowed by a check
    let (status, _, body) = crate::harness::request(
        checks,
        "PUT",
        "/check/studio/user-1/team1",
        &envoy_headers(&auth, "10.1.2.3"),
        Vec::new(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(error_of(&body).contains("answers this route itself"), "{body}");
    // a path outside the prefix
    let (status, _, _) = get(checks, "/studio/user-1/team1", &envoy_headers(&auth, "10.1.2.3")).await;
    assert_eq!(status, 400);
    assert_eq!(sidecar.upstream.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_route_is_allowed_and_marked() {
    let (_sidecar, checks, _) = start("", "dry-run").await;
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    let (status, answer, body) = get(checks, "/studio/user-2/team1", &envoy_headers(&auth, "10.1.2.3")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer["x-authz-decision"], "dry-run-deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_allowed_peers_may_ask() {
    let (_sidecar, checks, _) = start("allowed_peers = [\"10.0.0.0/8\"]", "enforce").await;
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    // loopback is not among them: refused, however good the request
    let (status, answer, _) = get(checks, "/studio/user-1/team1", &envoy_headers(&auth, "10.1.2.3")).await;
    assert_eq!(status, 403);
    assert!(!answer.contains_key("x-authz-principal"));
}
