//! The data plane over real sockets: authentication, authorization, forwarding, header
//! hygiene, path tricks, key rotation and outages, upstream failures, dry-run, limits,
//! readiness, metrics and graceful shutdown.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::harness::{self, ISSUER, Setup, Sidecar, claims, keys, sign, token};
use crate::support::Workspace;

const ALLOWED: &str = "/studio/user-1/team1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_call_is_forwarded_with_identity_headers_the_client_cannot_forge() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    let auth = format!("Bearer {}", token("user-1", &["Team1", "Team2"]));
    let (status, headers, body) = sidecar
        .get(
            &format!("{ALLOWED}?x=1"),
            &[
                ("authorization", &auth),
                ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
                ("x-forwarded-for", "10.1.2.3"),
                ("x-authz-principal", "Studio::User::\"admin\""),
                ("x-authz-decision", "allow-everything"),
                ("connection", "close, x-hop"),
                ("x-hop", "secret"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "upstream ok");
    assert!(headers.contains_key("x-request-id"));
    let seen = sidecar.upstream.requests.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let upstream = &seen[0];
    assert_eq!(upstream.uri.path_and_query().unwrap().as_str(), "/studio/user-1/team1?x=1");
    assert_eq!(upstream.headers["x-authz-principal"], "Studio::User::\"user-1\"");
    assert_eq!(upstream.headers["x-authz-decision"], "allow");
    assert_eq!(upstream.headers["x-authz-policies"], "presign-own-profile");
    assert_eq!(upstream.headers["x-authz-issuer"], ISSUER);
    assert_eq!(upstream.headers.get_all("x-authz-principal").iter().count(), 1, "the forged header is gone");
    assert!(upstream.headers.get("authorization").is_none(), "the token is not passed on by default");
    assert!(upstream.headers.get("x-hop").is_none(), "headers named in Connection are hop-by-hop");
    assert_eq!(upstream.headers["x-forwarded-for"], "10.1.2.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_call_is_403_and_never_reaches_the_upstream() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    // user-2 asks for user-1's profile
    let (status, body) = sidecar.studio(ALLOWED, &token("user-2", &["Team2"])).await;
    assert_eq!(status, 403, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "the policy does not allow this request");
    assert!(json["request_id"].as_str().is_some_and(|id| id.len() == 32));
    assert_eq!(sidecar.upstream.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_token_is_401() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    let (key1, key2) = keys();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims("user-1", &["Team1"]);
        f(&mut c);
        sign(key1, &c)
    };
    let good = token("user-1", &["Team1"]);
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let b64 = |v: &serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let mut tampered_claims = claims("user-1", &["Team1"]);
    tampered_claims["username"] = json!("user-2");
    let tampered = format!("{head}.{}.{signature}", b64(&tampered_claims));
    let alg_none = format!("{}.{payload}.", b64(&json!({"alg": "none", "typ": "JWT"})));
    // HS256 "signed" with the issuer's public key: the classic algorithm confusion
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("key-1".into());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims("user-1", &["Team1"]),
        &EncodingKey::from_secret(key1.public_pem.as_bytes()),
    )
    .unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("expired", with(&|c| c["exp"] = json!(harness::now() - 60))),
        ("not yet valid", with(&|c| c["nbf"] = json!(harness::now() + 600))),
        ("wrong issuer", with(&|c| c["iss"] = json!("https://evil.example"))),
        ("wrong audience", with(&|c| c["client_id"] = json!("another-client"))),
        ("wrong token_use", with(&|c| c["token_use"] = json!("id"))),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        ("alg none", alg_none),
        ("HS256 with the public key", hs256),
        ("unknown kid", sign(key2, &claims("user-1", &["Team1"]))),
        ("tampered", tampered),
        ("garbage", "not-a-jwt".to_owned()),
    ];
    for (what, token) in cases {
        let (status, body) = sidecar.studio(ALLOWED, &token).await;
        assert_eq!(status, 401, "{what}: {body}");
    }
    let (status, headers, _) = sidecar.get(ALLOWED, &[]).await;
    assert_eq!(status, 401, "missing token");
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"authz-sidecar\"");
    let (status, headers, _) = sidecar.get(ALLOWED, &[("authorization", "Basic dXNlcjpwYXNz")]).await;
    assert_eq!(status, 401);
    assert!(headers.contains_key("www-authenticate"));
    assert_eq!(sidecar.upstream.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_spoof_its_address_or_endpoint() {
    // Loopback is not a trusted proxy here, so the test client's headers are ignored:
    // its source is 127.0.0.1 (not corporate) and it came through no endpoint.
    let sidecar = Sidecar::start(Setup { trusted_proxies: "[]", ..Setup::default() }).await.ready().await;
    let (status, body) = sidecar.studio(ALLOWED, &token("user-1", &["Team1"])).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(sidecar.upstream.calls(), 0);
    // The same request from a trusted proxy is allowed.
    let trusted = Sidecar::start(Setup::default()).await.ready().await;
    assert_eq!(trusted.studio(ALLOWED, &token("user-1", &["Team1"])).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_do_not_reach_another_route_or_resource() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    let user1 = token("user-1", &["Team1", "Team2"]);
    // dot segments are resolved before routing, and the upstream gets the resolved path
    let (status, _) = sidecar.studio("/studio/user-2/team2/../../user-1/team1", &user1).await;
    assert_eq!(status, 200);
    assert_eq!(sidecar.upstream.requests.lock().unwrap()[0].uri.path(), "/studio/user-1/team1");
    // ...so they cannot smuggle another user's profile past the decision
    let (status, _) = sidecar.studio("/studio/user-1/team1/../../user-2/team2", &user1).await;
    assert_eq!(status, 403);
    // an encoded slash or backslash is refused outright
    for path in ["/studio/user-1%2Fteam1/x", "/studio/user-1/team1%2F..%2F..%2Fadmin", "/studio/user-1%5Cteam1/x"] {
        let (status, body) = sidecar.studio(path, &user1).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    for path in ["/studio/user-1", "/studio/user-1/team1/extra", "/admin", "//studio//user-1"] {
        let (status, body) = sidecar.studio(path, &user1).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    // duplicate slashes collapse onto the real route
    assert_eq!(sidecar.studio("//studio//user-1///team1", &user1).await.0, 200);
    assert_eq!(sidecar.upstream.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_picked_up_and_cached_keys_survive_a_jwks_outage() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    let (key1, key2) = keys();
    // rotation: the issuer publishes key-2 and signs with it
    sidecar.jwks.publish(&[key1, key2]);
    let rotated = sign(key2, &claims("user-1", &["Team1"]));
    assert_eq!(sidecar.studio(ALLOWED, &rotated).await.0, 200);
    // outage: known keys keep working, an unknown key is refused
    sidecar.jwks.server.stop();
    let fresh_key1 = sign(key1, &claims("user-1", &["Team1", "Team2"]));
    assert_eq!(sidecar.studio(ALLOWED, &fresh_key1).await.0, 200);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("key-3".into());
    let unknown = jsonwebtoken::encode(&header, &claims("user-1", &["Team1"]), &key2.encoding).unwrap();
    assert_eq!(sidecar.studio(ALLOWED, &unknown).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_upstream_slow_is_504() {
    let slow =
        Sidecar::start_with(Workspace::shipped(), Setup { upstream_timeout: "200ms", ..Setup::default() }, |_| {
            (200, "late".to_owned(), Duration::from_secs(3))
        })
        .await
        .ready()
        .await;
    let (status, body) = slow.studio(ALLOWED, &token("user-1", &["Team1"])).await;
    assert_eq!(status, 504, "{body}");

    let down = Sidecar::start(Setup::default()).await.ready().await;
    down.upstream.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = down.studio(ALLOWED, &token("user-1", &["Team1"])).await;
    assert_eq!(status, 502, "{body}");
    assert!(!body.contains("127.0.0.1"), "the body names no internal address: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_forwards_a_denied_call_and_counts_it() {
    let sidecar = Sidecar::start(Setup { mode: "dry-run", ..Setup::default() }).await.ready().await;
    let (status, _) = sidecar.studio(ALLOWED, &token("user-2", &["Team2"])).await;
    assert_eq!(status, 200);
    assert_eq!(sidecar.upstream.requests.lock().unwrap()[0].headers["x-authz-decision"], "dry-run-deny");
    let (_, _, metrics) = harness::get(sidecar.admin, "/metrics", &[]).await;
    assert!(metrics.contains("authz_dry_run_denials_total{route=\"studio\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413_and_oversized_headers_431() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    let headers = [
        ("authorization", auth.as_str()),
        ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
        ("x-forwarded-for", "10.1.2.3"),
    ];
    let (status, _, body) = harness::request(sidecar.data, "POST", ALLOWED, &headers, vec![b'x'; 2048]).await;
    assert_eq!(status, 413, "{body}");
    let (status, _, _) = harness::request(sidecar.data, "POST", ALLOWED, &headers, vec![b'x'; 100]).await;
    assert_eq!(status, 200);
    let big = "y".repeat(20_000);
    let mut with_big = headers.to_vec();
    with_big.push(("x-big", &big));
    let (status, _, _) = harness::request(sidecar.data, "GET", ALLOWED, &with_big, Vec::new()).await;
    assert_eq!(status, 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_first_snapshot() {
    let ws = Workspace::shipped();
    let entities = ws.entities();
    let parked = ws.dir.path().join("entities-later");
    std::fs::rename(&entities, &parked).unwrap();
    let sidecar = Sidecar::start_with(ws, Setup::default(), |_| (200, String::new(), Duration::ZERO)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, body) = harness::get(sidecar.admin, "/readyz", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no policy snapshot"), "{body}");
    assert_eq!(harness::get(sidecar.admin, "/livez", &[]).await.0, 200);
    let (status, _, _) = sidecar.get(ALLOWED, &[]).await;
    assert_eq!(status, 503, "the data plane refuses while not ready");
    std::fs::rename(&parked, &entities).unwrap();
    let sidecar = sidecar.ready().await;
    assert_eq!(sidecar.studio(ALLOWED, &token("user-1", &["Team1"])).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    assert_eq!(sidecar.studio(ALLOWED, &token("user-1", &["Team1"])).await.0, 200);
    assert_eq!(sidecar.studio(ALLOWED, &token("user-2", &["Team2"])).await.0, 403);
    assert_eq!(sidecar.get(ALLOWED, &[]).await.0, 401);
    let (status, headers, text) = harness::get(sidecar.admin, "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let names: std::collections::HashSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in [
        "authz_requests_total",
        "authz_decisions_total",
        "authz_authn_seconds",
        "authz_authz_seconds",
        "authz_upstream_seconds",
        "authz_jwks_fetches_total",
        "authz_token_cache_total",
        "authz_authn_failures_total",
        "authz_entity_cache_total",
    ] {
        assert!(names.contains(name), "{name} missing from:\n{text}");
    }
    let authz = scrape.samples.iter().find(|s| s.metric == "authz_authz_seconds").unwrap();
    assert!(matches!(authz.value, prometheus_parse::Value::Histogram(_)), "latencies are histograms");
    // the handles kept per route and label set count into the process's recorder,
    // each series under its own labels
    let counted = |metric: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum::<f64>()
    };
    for (status, route) in [("200", "studio"), ("403", "studio"), ("401", "-")] {
        let n = counted("authz_requests_total", &[("route", route), ("status", status)]);
        assert!(n >= 1.0, "{route} {status}: {n} in\n{text}");
    }
    assert!(counted("authz_requests_total", &[("route", "studio"), ("status", "401")]) == 0.0, "{text}");
    for (decision, reason) in [("allow", "permitted"), ("deny", "forbidden")] {
        let n = counted("authz_decisions_total", &[("route", "studio"), ("decision", decision), ("reason", reason)]);
        assert!(n >= 1.0, "{decision} {reason}: {n} in\n{text}");
    }
    assert!(counted("authz_token_cache_total", &[("result", "miss")]) >= 2.0, "{text}");
    let seconds =
        scrape.samples.iter().find(|s| s.metric == "authz_request_seconds" && s.labels.get("route") == Some("studio"));
    assert!(seconds.is_some_and(|s| matches!(s.value, prometheus_parse::Value::Histogram(_))), "{text}");
}

/// The build, the serving snapshot and the process, as Prometheus users expect them;
/// after a reload, only the new snapshot's series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_gauges_say_what_build_and_snapshot_serve() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    let scraped = || async {
        let (status, _, text) = harness::get(sidecar.admin, "/metrics", &[]).await;
        assert_eq!(status, 200);
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid text");
        (scrape, text)
    };
    let gauge =
        |scrape: &prometheus_parse::Scrape, metric: &str| -> Vec<(std::collections::HashMap<String, String>, f64)> {
            scrape
                .samples
                .iter()
                .filter(|s| s.metric == metric)
                .map(|s| {
                    let value = match s.value {
                        prometheus_parse::Value::Gauge(v)
                        | prometheus_parse::Value::Untyped(v)
                        | prometheus_parse::Value::Counter(v) => v,
                        _ => f64::NAN,
                    };
                    (s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), value)
                })
                .collect()
        };
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let store = sidecar.app.store().clone();
    let serving = store.current().unwrap();
    let (scrape, text) = scraped().await;
    let build = gauge(&scrape, "authz_build_info");
    assert_eq!(build.len(), 1, "{text}");
    assert_eq!(build[0].0.get("version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")), "{text}");
    assert!(build[0].0.get("cedar_sdk").is_some_and(|v| v.starts_with("4.")), "{text}");
    let info = gauge(&scrape, "authz_policy_snapshot_info");
    assert_eq!(info.len(), 1, "{text}");
    assert_eq!(info[0].0.get("digest"), Some(&serving.version().digest), "{text}");
    assert_eq!(info[0].1, 1.0);
    let one = |metric: &str| gauge(&scrape, metric).first().map(|(_, v)| *v);
    assert_eq!(one("authz_policy_snapshot_policies"), Some(serving.policy_count() as f64), "{text}");
    assert_eq!(one("authz_policy_snapshot_entities"), Some(serving.entity_count() as f64), "{text}");
    assert_eq!(one("authz_policy_snapshot_generation"), Some(serving.version().generation as f64), "{text}");
    let loaded = one("authz_policy_snapshot_loaded_timestamp_seconds").unwrap();
    assert!(loaded > 1.7e9 && loaded <= before + 1.0, "{loaded} {text}");
    for metric in ["process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"] {
        assert!(one(metric).is_some_and(|v| v > 0.0), "{metric} in\n{text}");
    }
    // whole seconds: 0 this early, but there
    assert!(one("process_cpu_seconds_total").is_some(), "{text}");

    // a reload: the new snapshot's series replace the old one's
    sidecar._ws.write_entities("extra.json", "[]");
    assert!(matches!(
        authz_sidecar::policy_store::reload_once(&store, &sidecar._ws.dirs()),
        authz_sidecar::policy_store::ReloadOutcome::Published(_)
    ));
    let reloaded = store.current().unwrap();
    assert_ne!(reloaded.version().digest, serving.version().digest);
    let (scrape, text) = scraped().await;
    let info = gauge(&scrape, "authz_policy_snapshot_info");
    assert_eq!(info.len(), 1, "one snapshot serves: {text}");
    assert_eq!(info[0].0.get("digest"), Some(&reloaded.version().digest), "{text}");
    assert_eq!(
        gauge(&scrape, "authz_policy_snapshot_generation").first().map(|(_, v)| *v),
        Some(reloaded.version().generation as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let sidecar = Sidecar::start_with(Workspace::shipped(), Setup::default(), |_| {
        (200, "finished".to_owned(), Duration::from_millis(700))
    })
    .await
    .ready()
    .await;
    let token = token("user-1", &["Team1"]);
    let addr = sidecar.data;
    let in_flight = tokio::spawn(async move {
        let auth = format!("Bearer {token}");
        harness::get(
            addr,
            ALLOWED,
            &[("authorization", &auth), ("x-amzn-vpce-id", "vpce-0a1a000000000001a"), ("x-forwarded-for", "10.1.2.3")],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sidecar.shutdown.cancel();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "finished"), "the in-flight request completes");
    tokio::time::timeout(Duration::from_secs(5), sidecar.task).await.expect("stops after draining").unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_concurrency_limit_are_shed_with_429() {
    let sidecar = Sidecar::start_with(Workspace::shipped(), Setup { max_concurrent: 1, ..Setup::default() }, |_| {
        (200, "slow".to_owned(), Duration::from_millis(800))
    })
    .await
    .ready()
    .await;
    let addr = sidecar.data;
    let token = token("user-1", &["Team1"]);
    let auth = format!("Bearer {token}");
    let first = {
        let auth = auth.clone();
        tokio::spawn(async move {
            harness::get(
                addr,
                ALLOWED,
                &[
                    ("authorization", &auth),
                    ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
                    ("x-forwarded-for", "10.1.2.3"),
                ],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, headers, _) = sidecar.get(ALLOWED, &[("authorization", &auth)]).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(first.await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_served_too() {
    use http_body_util::{BodyExt, Full};
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    let mut sender = crate::harness::http2(sidecar.data).await;
    let request = http::Request::get(format!("http://{}{ALLOWED}", sidecar.data))
        .header("authorization", format!("Bearer {}", token("user-1", &["Team1"])))
        .header("x-amzn-vpce-id", "vpce-0a1a000000000001a")
        .header("x-forwarded-for", "10.1.2.3")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"upstream ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_with_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sidecar = Sidecar::start(Setup { header_read_timeout: "300ms", ..Setup::default() }).await.ready().await;
    let mut stream = tokio::net::TcpStream::connect(sidecar.data).await.unwrap();
    stream.write_all(b"GET /studio/user-1/team1 HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    // ...and never finishes the headers
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the sidecar closed the connection instead of waiting forever");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(sidecar.upstream.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_the_authority_on_group_membership() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    // The stored user-1 is in Team1 and Team2 and in lob-a. A token that no longer
    // lists Team1 loses the Team1 profile, and keeps the LOB from the stored entity.
    assert_eq!(sidecar.studio(ALLOWED, &token("user-1", &["Team2"])).await.0, 403);
    assert_eq!(sidecar.studio("/studio/user-1/team2", &token("user-1", &["Team2"])).await.0, 200);
    // A user the entities do not know gets no LOB, so no profile at all.
    assert_eq!(sidecar.studio("/studio/user-9/team1", &token("user-9", &["Team1"])).await.0, 403);
}

/// A runtime too busy to run its tasks on time (both workers held, the way a flood of
/// requests or a throttled CPU quota holds them) sheds every new request with 429 and
/// `Retry-After` before doing any work for it, and serves again once it has been calm
/// for a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_runtime_sheds_new_requests_until_it_is_calm() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let ws = Workspace::shipped();
    let jwks = harness::Jwks::start(&[&keys().0]).await;
    let upstream = harness::TestServer::start(|_| (200, "upstream ok".to_owned(), Duration::ZERO)).await;
    let toml = harness::config_toml(&ws, &jwks.url(), &upstream.url(), &Setup::default()).replacen(
        "[server]\n",
        "[server]\nshed_delay = \"20ms\"\n",
        1,
    );
    let config = authz_sidecar::config::Config::from_toml(&toml, "test").unwrap();
    // the data plane on two cores of the test's, which it can hold up
    let cores = Arc::new(authz_sidecar::server::cores::Cores::start(2).unwrap());
    let launched = harness::launch_on(authz_sidecar::app::App::new(config, false).unwrap(), Some(cores.clone())).await;
    let sidecar = Sidecar::from_parts(launched, ws, jwks, upstream).ready().await;
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    let headers = [
        ("authorization", auth.as_str()),
        ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
        ("x-forwarded-for", "10.1.2.3"),
    ];
    assert_eq!(sidecar.get(ALLOWED, &headers).await.0, 200);

    // both cores held 60 ms at a time, over and over
    let hogging = Arc::new(AtomicBool::new(true));
    for core in 0..2 {
        let hogging = hogging.clone();
        cores.spawn(core, async move {
            while hogging.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(60));
                tokio::task::yield_now().await;
            }
        });
    }
    let started = tokio::time::Instant::now();
    let shed = loop {
        let (status, headers, body) = sidecar.get(ALLOWED, &headers).await;
        if status == 429 {
            break (headers, body);
        }
        assert!(started.elapsed() < Duration::from_secs(3), "never shed");
    };
    assert_eq!(shed.0["retry-after"], "1");
    assert!(shed.1.contains("request_id"), "the JSON error shape: {}", shed.1);
    for _ in 0..3 {
        assert_eq!(sidecar.get(ALLOWED, &headers).await.0, 429, "shed while the runtime is late");
    }
    let calls = sidecar.upstream.calls();
    hogging.store(false, Ordering::Relaxed);

    // calm again: served after a second or so
    let calm = tokio::time::Instant::now();
    loop {
        if sidecar.get(ALLOWED, &headers).await.0 == 200 {
            break;
        }
        assert!(calm.elapsed() < Duration::from_secs(5), "still shedding long after the load went");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sidecar.upstream.calls(), calls + 1, "no shed request reached the upstream");
    let (_, _, metrics) = harness::get(sidecar.admin, "/metrics", &[]).await;
    let shed_count = metrics
        .lines()
        .find(|l| l.starts_with("authz_requests_shed_total{") && l.contains("reason=\"scheduling_delay\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(shed_count.is_some_and(|n| n >= 4.0), "{shed_count:?}");
    assert!(metrics.contains("authz_scheduling_delay_seconds"));
}
