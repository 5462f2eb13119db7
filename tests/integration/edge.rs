//! The edge, attacked over real sockets: forwarded-for forms from trusted proxies,
//! duplicate security headers, what reaches the upstream, ambiguous resource ids,
//! bodies of denied calls, token and key tricks, and connections that never finish a
//! request (one sidecar in-process, and the real binary under a lowered descriptor
//! limit for the flood).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::binary::{Running, start_binary_with_nofile};
use crate::harness::{self, CLIENT_ID, ISSUER, Jwks, Setup, Sidecar, claims, config_toml, keys, launch, sign, token};
use crate::support::Workspace;

const ALLOWED: &str = "/studio/user-1/team1";
const LOB_A_VPCE: &str = "vpce-0a1a000000000001a";

/// user-1 through lob-a's endpoint, with these forwarded-for values (one header each).
async fn studio_via(sidecar: &Sidecar, path: &str, forwarded_for: &[&str], extra: &[(&str, &str)]) -> (u16, String) {
    let auth = format!("Bearer {}", token("user-1", &["Team1", "Team2"]));
    let mut headers = vec![("authorization", auth.as_str()), ("x-amzn-vpce-id", LOB_A_VPCE)];
    headers.extend(forwarded_for.iter().map(|v| ("x-forwarded-for", *v)));
    headers.extend_from_slice(extra);
    let (status, _, body) = sidecar.get(path, &headers).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hop_a_trusted_proxy_wrote_decides_the_source_ip_in_every_form() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    // The client forged 10.1.2.3 (corporate); the trusted proxy appended what it saw,
    // with a port: that outside address is the source, and the IP guard rail denies.
    for appended in ["6.6.6.6:5555", "[2001:db8::6]:443", "[2001:db8::6]", "::ffff:6.6.6.6"] {
        let (status, body) = studio_via(&sidecar, ALLOWED, &[&format!("10.1.2.3, {appended}")], &[]).await;
        assert_eq!(status, 403, "{appended}: {body}");
    }
    // a hop the sidecar cannot read stops the walk: refused, never the hop to its left
    for appended in ["unknown", "fe80::1%eth0", "_hidden", ""] {
        let (status, body) = studio_via(&sidecar, ALLOWED, &[&format!("10.1.2.3, {appended}")], &[]).await;
        assert_eq!(status, 400, "{appended:?}: {body}");
    }
    // the same forms, for a corporate client, are read and allowed
    for header in ["6.6.6.6, 10.1.2.3:5555", "[::ffff:10.1.2.3]:80"] {
        assert_eq!(studio_via(&sidecar, ALLOWED, &[header], &[]).await.0, 200, "{header}");
    }
    assert_eq!(sidecar.upstream.calls(), 2);
    assert_eq!(sidecar.upstream.requests.lock().unwrap()[0].headers["x-forwarded-for"], "10.1.2.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_security_headers_are_refused_never_first_wins() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    let two_endpoints =
        [("authorization", auth.as_str()), ("x-amzn-vpce-id", LOB_A_VPCE), ("x-amzn-vpce-id", "vpce-other")];
    let (status, _, body) = sidecar.get(ALLOWED, &two_endpoints).await;
    assert_eq!(status, 400, "{body}");
    let appended = [("authorization", auth.as_str()), ("x-amzn-vpce-id", "vpce-forged, vpce-0a1a000000000001a")];
    assert_eq!(sidecar.get(ALLOWED, &appended).await.0, 400);
    let other = format!("Bearer {}", token("user-2", &["Team2"]));
    let two_tokens = [("authorization", auth.as_str()), ("authorization", other.as_str())];
    assert_eq!(sidecar.get(ALLOWED, &two_tokens).await.0, 401);
    assert_eq!(sidecar.upstream.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_never_sees_a_header_the_sidecar_speaks_for() {
    let setup = Setup {
        extra: "strip_headers = [\"x-tenant\"]\nkeep_headers = [\"x-forwarded-proto\"]".into(),
        ..Setup::default()
    };
    let sidecar = Sidecar::start(setup).await.ready().await;
    let spoofed = [
        ("x_authz_principal", "Studio::User::\"admin\""),
        ("x-authz_decision", "allow"),
        ("x-original-url", "/admin"),
        ("x_original_url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-http-method-override", "DELETE"),
        ("x-forwarded-host", "evil.example"),
        ("x-real-ip", "10.9.9.9"),
        ("forwarded", "for=10.9.9.9;host=evil.example"),
        ("x_forwarded_for", "10.9.9.9"),
        ("x_amzn_vpce_id", "vpce-forged"),
        ("x-tenant", "other"),
        ("x-forwarded-proto", "https"),
        ("x-app", "kept"),
    ];
    for method in ["GET", "POST"] {
        let auth = format!("Bearer {}", token("user-1", &["Team1"]));
        let mut headers =
            vec![("authorization", auth.as_str()), ("x-amzn-vpce-id", LOB_A_VPCE), ("x-forwarded-for", "10.1.2.3")];
        headers.extend_from_slice(&spoofed);
        let (status, _, body) = harness::request(sidecar.data, method, ALLOWED, &headers, Vec::new()).await;
        assert_eq!(status, 200, "{method}: {body}");
    }
    let seen = sidecar.upstream.requests.lock().unwrap();
    for (i, upstream) in seen.iter().enumerate() {
        let mut names: Vec<&str> = upstream.headers.keys().map(http::HeaderName::as_str).collect();
        names.sort_unstable();
        for gone in ["x_authz_principal", "x-authz_decision", "x-original-url", "x_original_url", "x-rewrite-url"] {
            assert!(!names.contains(&gone), "{gone} reached the upstream: {names:?}");
        }
        for gone in ["x-http-method-override", "x-forwarded-host", "x-real-ip", "forwarded", "x_forwarded_for"] {
            assert!(!names.contains(&gone), "{gone} reached the upstream: {names:?}");
        }
        assert!(!names.contains(&"x_amzn_vpce_id"), "{names:?}");
        assert_eq!(upstream.headers["x-amzn-vpce-id"], LOB_A_VPCE, "a trusted proxy's endpoint header is passed on");
        assert_eq!(upstream.headers["x-app"], "kept");
        assert_eq!(upstream.headers["x-authz-principal"], "Studio::User::\"user-1\"");
        assert_eq!(upstream.headers["x-forwarded-for"], "10.1.2.3");
        // the POST route strips x-tenant and keeps x-forwarded-proto; the GET route the reverse
        let post = i == 1;
        assert_eq!(upstream.headers.contains_key("x-tenant"), !post, "{i}: {names:?}");
        assert_eq!(upstream.headers.contains_key("x-forwarded-proto"), post, "{i}: {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_route_removes_an_untrusted_peers_endpoint_header_too() {
    let sidecar =
        Sidecar::start(Setup { mode: "dry-run", trusted_proxies: "[]", ..Setup::default() }).await.ready().await;
    let (status, body) = studio_via(&sidecar, ALLOWED, &["10.1.2.3"], &[]).await;
    assert_eq!(status, 200, "{body}");
    let seen = sidecar.upstream.requests.lock().unwrap();
    assert_eq!(seen[0].headers["x-authz-decision"], "dry-run-deny");
    assert!(!seen[0].headers.contains_key("x-amzn-vpce-id"), "an endpoint header nobody vouched for is removed");
    assert_eq!(seen[0].headers["x-forwarded-for"], "127.0.0.1", "the socket peer, not the client's claim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_id_that_reads_two_ways_is_refused() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    // user-1 owns user-1-team1; `/studio/user/1-team1` renders the same id for owner `user`
    let (status, body) = studio_via(&sidecar, "/studio/user/1-team1", &["10.1.2.3"], &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("separator"), "{body}");
    assert_eq!(sidecar.upstream.calls(), 0);
    assert_eq!(studio_via(&sidecar, ALLOWED, &["10.1.2.3"], &[]).await.0, 200);
}

/// Write `head` on a fresh connection and return everything the sidecar sends before
/// it closes (or `wait` passes).
async fn exchange(addr: std::net::SocketAddr, head: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn head(method: &str, path: &str, token: &str, extra: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: sidecar\r\nauthorization: Bearer {token}\r\n\
         x-amzn-vpce-id: {LOB_A_VPCE}\r\nx-forwarded-for: 10.1.2.3\r\nconnection: close\r\n{extra}\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_calls_body_is_never_asked_for_nor_read() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    let user2 = token("user-2", &["Team2"]);
    // denied: the client is not told to send its body
    let expect = "content-length: 1000\r\nexpect: 100-continue\r\n";
    let answer = exchange(sidecar.data, &head("POST", ALLOWED, &user2, expect), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    // allowed: told to go on, and the body reaches the upstream
    let user1 = token("user-1", &["Team1"]);
    let mut stream = TcpStream::connect(sidecar.data).await.unwrap();
    stream.write_all(&head("POST", ALLOWED, &user1, "content-length: 5\r\nexpect: 100-continue\r\n")).await.unwrap();
    let mut first = [0u8; 25];
    stream.read_exact(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("HTTP/1.1 100 Continue"));
    stream.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&rest));
    assert_eq!(sidecar.upstream.calls(), 1);
    let seen = sidecar.upstream.requests.lock().unwrap();
    assert_eq!(seen[0].headers["content-length"], "5", "framed from the body that flowed");
    assert!(!seen[0].headers.contains_key("expect"), "100-continue was the client's hop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_bodies_are_bounded_and_broken_framing_is_400() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await; // max_body_bytes = 1024
    let user1 = token("user-1", &["Team1"]);
    // chunked, so no length is declared: the limit holds as the body flows
    let mut too_big = head("POST", ALLOWED, &user1, "transfer-encoding: chunked\r\n");
    for _ in 0..4 {
        too_big.extend_from_slice(b"200\r\n");
        too_big.extend_from_slice(&[b'x'; 0x200]);
        too_big.extend_from_slice(b"\r\n");
    }
    too_big.extend_from_slice(b"0\r\n\r\n");
    let answer = exchange(sidecar.data, &too_big, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let mut broken = head("POST", ALLOWED, &user1, "transfer-encoding: chunked\r\n");
    broken.extend_from_slice(b"zz\r\nxx\r\n0\r\n\r\n");
    let answer = exchange(sidecar.data, &broken, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"request_id\""), "the JSON shape of every error: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_the_json_error_shape_and_a_request_id() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await; // max_header_bytes = 16384
    let big = "y".repeat(20_000);
    let (status, headers, body) = sidecar.get(ALLOWED, &[("x-big", &big)]).await;
    assert_eq!(status, 431);
    assert!(headers.contains_key("x-request-id"));
    let json: Value = serde_json::from_str(&body).unwrap();
    assert!(json["error"].as_str().unwrap().contains("too large"), "{body}");
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("x-h{i}"), "v".to_owned())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, headers, _) = sidecar.get(ALLOWED, &many).await;
    assert_eq!(status, 431);
    assert!(headers.contains_key("x-request-id"));
}

/// A sidecar whose JWKS serves `document`, with `extra` appended to the config (where
/// `{JWKS}` stands for the JWKS URL).
async fn with_jwks(document: Value, extra: &str) -> Sidecar {
    let ws = Workspace::shipped();
    let jwks = Jwks::start(&[]).await;
    *jwks.document.lock().unwrap() = document;
    let upstream = harness::TestServer::start(|_| (200, "upstream ok".to_owned(), Duration::ZERO)).await;
    let toml =
        config_toml(&ws, &jwks.url(), &upstream.url(), &Setup::default()) + &extra.replace("{JWKS}", &jwks.url());
    let launched = launch(authz_sidecar::config::Config::from_toml(&toml, "test").unwrap()).await;
    Sidecar::from_parts(launched, ws, jwks, upstream).ready().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_with_keys_the_library_cannot_use_still_loads_its_usable_ones() {
    let (key1, key2) = keys();
    let mut pinned = key2.jwk.clone();
    pinned["alg"] = json!("PS256");
    let document = json!({"keys": [
        {"kty": "OKP", "crv": "Ed448", "kid": "ed448", "x": "AAAA"},
        {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": "AAAA", "y": "AAAA"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": key1.jwk["n"], "e": "AQAB"},
        key1.jwk,
        pinned,
    ]});
    let sidecar = with_jwks(document, "").await;
    assert_eq!(sidecar.studio(ALLOWED, &token("user-1", &["Team1"])).await.0, 200);
    // key-2's JWK says PS256: an RS256 token signed with it is not verified by it
    assert_eq!(sidecar.studio(ALLOWED, &sign(key2, &claims("user-1", &["Team1"]))).await.0, 401);
    let (_, _, metrics) = harness::get(sidecar.admin, "/metrics", &[]).await;
    assert!(metrics.contains("authz_jwks_keys_skipped_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_does_not_stand_in_for_another_apis_audience() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    let (key1, _) = keys();
    let mut other_api = claims("user-1", &["Team1"]);
    other_api["aud"] = json!("https://other-api.example");
    assert_eq!(other_api["client_id"], CLIENT_ID);
    assert_eq!(sidecar.studio(ALLOWED, &sign(key1, &other_api)).await.0, 401);
    let mut ours = claims("user-1", &["Team1"]);
    ours["aud"] = json!(["https://other-api.example", CLIENT_ID]);
    assert_eq!(sidecar.studio(ALLOWED, &sign(key1, &ours)).await.0, 200);
    let mut id_token = claims("user-1", &["Team1"]);
    id_token["token_use"] = json!("id");
    assert_eq!(sidecar.studio(ALLOWED, &sign(key1, &id_token)).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_issuers_user_is_not_the_first_issuers_user() {
    const PARTNER: &str = "https://partner.example";
    let second = format!("[[issuers]]\nissuer = \"{PARTNER}\"\njwks_url = \"{{JWKS}}\"\n");
    // two issuers that can both mint `Studio::User::"user-1"` are refused at load
    let ws = Workspace::shipped();
    let toml = config_toml(&ws, "http://127.0.0.1:9/jwks", "http://127.0.0.1:9", &Setup::default())
        + &second.replace("{JWKS}", "http://127.0.0.1:9/jwks");
    let err = authz_sidecar::config::Config::from_toml(&toml, "test").unwrap_err();
    assert!(err.to_string().contains("can mint the same principal id"), "{err}");
    // with a namespace the partner's user-1 is `partner/user-1`, who owns nothing
    let namespaced = format!("{second}principal_id_prefix = \"partner/\"\n");
    let sidecar = with_jwks(json!({"keys": [keys().0.jwk]}), &namespaced).await;
    let mut partner = claims("user-1", &["Team1"]);
    partner["iss"] = json!(PARTNER);
    let (status, body) = sidecar.studio(ALLOWED, &sign(&keys().0, &partner)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(sidecar.studio(ALLOWED, &token("user-1", &["Team1"])).await.0, 200);
    // ...and the first issuer cannot mint into the partner's namespace either
    let (status, _) = sidecar.studio(ALLOWED, &token("partner/user-1", &["Team1"])).await;
    assert_eq!(status, 401, "a subject inside another issuer's prefix is refused");
    assert_eq!(claims("user-1", &[])["iss"], ISSUER);
}

/// Whether the sidecar closes `stream` within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {} // a 408 or a GOAWAY first: keep reading to the close
        }
    }
}

/// The ways a client can hold a connection without finishing a request.
fn half_requests() -> Vec<&'static [u8]> {
    // HTTP/2: the preface, an empty SETTINGS frame, then HEADERS (stream 1) without
    // END_HEADERS (flags 0x04 unset) and no CONTINUATION
    const H2_HEADERS_OPEN: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\
        \x00\x00\x00\x04\x00\x00\x00\x00\x00\
        \x00\x00\x01\x01\x01\x00\x00\x00\x01\x82";
    vec![b"", b"G", b"PRI * HTTP/2.0\r\n", H2_HEADERS_OPEN, b"GET / HTTP/1.1\r\nhost: x\r\n"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_a_request_are_closed_at_the_deadline() {
    let setup = Setup { header_read_timeout: "400ms", idle_timeout: "600ms", ..Setup::default() };
    let sidecar = Sidecar::start(setup).await.ready().await;
    for sent in half_requests() {
        let mut stream = TcpStream::connect(sidecar.data).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut stream, Duration::from_secs(3)).await, "held open after {sent:?}");
        assert!(started.elapsed() >= Duration::from_millis(300), "closed before the deadline: {sent:?}");
    }
    // a keep-alive connection that served a request and went quiet is closed too
    let mut stream = TcpStream::connect(sidecar.data).await.unwrap();
    stream.write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await, "an idle keep-alive connection was held");
    let (_, _, metrics) = harness::get(sidecar.admin, "/metrics", &[]).await;
    assert!(metrics.contains("authz_connections_timed_out_total"), "{metrics}");
}

/// The status line the sidecar answers `parts`, written one after the other.
async fn status_line_of(data: std::net::SocketAddr, parts: &[&[u8]]) -> String {
    let mut stream = TcpStream::connect(data).await.unwrap();
    for part in parts {
        stream.write_all(part).await.unwrap();
        // each part arrives alone
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed without an answer to {parts:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or_default().to_string()
}

/// A plain connection's protocol is told from its first bytes, peeked: a request whose
/// first bytes arrive alone, however few and wherever they stop (inside HTTP/2's
/// preface too), is answered as the same request sent whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_first_bytes_arrive_alone_is_answered_as_if_sent_whole() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    let get = format!("GET {ALLOWED} HTTP/1.1\r\nhost: x\r\n\r\n");
    let pri = "PRI /livez HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_string();
    for request in [get.as_bytes(), pri.as_bytes()] {
        let whole = status_line_of(sidecar.data, &[request]).await;
        assert!(whole.starts_with("HTTP/1.1 "), "{whole}");
        for split in [1, 2, 3, 5, 16, 24, request.len() - 1] {
            let (first, rest) = request.split_at(split);
            assert_eq!(status_line_of(sidecar.data, &[first, rest]).await, whole, "split at {split}");
        }
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A data plane of 200 threads under a descriptor limit that lets them start (about four
/// descriptors each) but leaves too few for a copy of the listening socket for each:
/// the start fails, naming why, instead of some threads (or all) accepting nothing while
/// `/readyz` says ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_be_shared_with_every_thread_fails_the_start() {
    let ws = Workspace::shipped();
    let config = ws.dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nthreads = 200\n\
             [policies]\ndir = \"{}\"\nentities = \"{}\"\n\
             [[routes]]\nname = \"studio\"\nmethod = \"GET\"\n{}\nhandler = \"echo\"\n",
            ws.policies().display(),
            ws.entities().display(),
            harness::STUDIO_ROUTE,
        ),
    )
    .unwrap();
    let (data, admin) = (crate::binary::free_port(), crate::binary::free_port());
    let log = ws.dir.path().join("sidecar.log");
    let mut child = crate::binary::Reaped(
        std::process::Command::new("sh")
            .args(["-c", "ulimit -n 900 && exec \"$0\" \"$@\""])
            .arg(crate::binary::binary())
            .args(["serve", "--dev", "--config", config.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{data}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut status = None;
    for _ in 0..200 {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("still running: the start did not fail\n{stderr}"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot accept the data listener's connections on every data-plane thread"), "{stderr}");
}

/// 2,000 sockets against the real binary under a descriptor limit of 256: the admin
/// listener answers throughout, no connection outlives its deadline, memory stays
/// bounded, and the data plane serves again once the flood is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_sockets_neither_stops_the_admin_listener_nor_outlives_its_deadline() {
    let ws = Workspace::shipped();
    let log = ws.dir.path().join("sidecar.log");
    let config = ws.dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nheader_read_timeout = \"2s\"\nidle_timeout = \"2s\"\n\
             [policies]\ndir = \"{}\"\nentities = \"{}\"\n\
             [context]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
             [[routes]]\nname = \"studio\"\nmethod = \"GET\"\n{}\nhandler = \"echo\"\n",
            ws.policies().display(),
            ws.entities().display(),
            harness::STUDIO_ROUTE,
        ),
    )
    .unwrap();
    let Running { mut child, data, admin } =
        start_binary_with_nofile(256, &["--config", config.to_str().unwrap()], &log).await;
    let baseline = rss_kib(child.id());

    let mut flood = Vec::new();
    let patterns = half_requests();
    let started = Instant::now();
    for i in 0..2000 {
        let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(data)).await else {
            continue; // the backlog is full for a moment: the flood goes on
        };
        let _ = stream.write_all(patterns[i % patterns.len()]).await;
        flood.push(stream);
        if i % 250 == 0 {
            let asked = Instant::now();
            let (status, _, _) =
                tokio::time::timeout(Duration::from_secs(2), harness::get(admin, "/livez", &[])).await.unwrap();
            assert_eq!(status, 200);
            assert!(asked.elapsed() < Duration::from_secs(1), "/livez took {:?} during the flood", asked.elapsed());
        }
    }
    let peak = rss_kib(child.id());
    assert!(flood.len() >= 1000, "the flood reached the sidecar: {}", flood.len());
    // every socket the sidecar took is closed by its deadline (2 s) plus slack
    let mut held = 0;
    for stream in &mut flood {
        let left = (started + Duration::from_secs(6)).saturating_duration_since(Instant::now());
        if !closed_within(stream, left.max(Duration::from_millis(10))).await {
            held += 1;
        }
    }
    assert_eq!(held, 0, "connections held past their deadline");
    drop(flood);
    // and the data plane answers again
    let (status, _, _) = harness::get(data, ALLOWED, &[]).await;
    assert_eq!(status, 401);
    let text = std::fs::read_to_string(&log).unwrap();
    // the cap fitted to what 256 descriptors leave once the sidecar has started
    let cap = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == "data-plane connection cap")
        .unwrap_or_else(|| panic!("no cap logged:\n{text}"));
    let open = cap["fields"]["open_descriptors"].as_u64().unwrap();
    assert!(open > 3, "{cap}");
    assert_eq!(cap["fields"]["max_connections"].as_u64(), Some((256 - open - 128) / 2), "{cap}");
    let _ = child.kill();
    let _ = child.wait();
    assert!(peak < baseline + 32 * 1024, "RSS went from {baseline} KiB to {peak} KiB during the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validly_signed_token_with_critical_header_extensions_is_refused() {
    use base64::Engine as _;
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    let (key1, _) = keys();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signed = |header: Value| {
        let message =
            format!("{}.{}", b64.encode(header.to_string()), b64.encode(claims("user-1", &["Team1"]).to_string()));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key1.encoding, jsonwebtoken::Algorithm::RS256).unwrap();
        format!("{message}.{signature}")
    };
    let plain = signed(json!({"alg": "RS256", "typ": "JWT", "kid": key1.kid}));
    assert_eq!(sidecar.studio(ALLOWED, &plain).await.0, 200, "the hand-made token itself is good");
    for header in [
        json!({"alg": "RS256", "kid": key1.kid, "crit": ["http://example.com/must-understand"], "http://example.com/must-understand": true}),
        json!({"alg": "RS256", "kid": key1.kid, "b64": false, "crit": ["b64"]}),
    ] {
        assert_eq!(sidecar.studio(ALLOWED, &signed(header.clone())).await.0, 401, "{header}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_errors_in_the_shape_of_every_other_error() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    for (method, path, status) in [("POST", "/livez", 405), ("GET", "/nope", 404)] {
        let (got, _, body) = harness::request(sidecar.admin, method, path, &[], Vec::new()).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        assert!(json["error"].is_string() && json["request_id"].as_str().is_some_and(|id| id.len() == 32), "{body}");
    }
}
