//! Shadow policies over real sockets: the real binary serves the shipped policies and
//! decides every request under a candidate too. Answers never change; disagreements are
//! counted and logged with both sides' policies; a broken candidate is reported, shadows
//! nothing and leaves serving (and readiness) alone, and a fixed one is picked up.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use authz_sidecar::config::Config;
use serde_json::Value;

use crate::binary::{Running, start_binary};
use crate::harness::{self, Jwks, Setup, TestServer, config_toml, keys, token};
use crate::support::{Workspace, copy_dir};

const LOB_A: &str = "vpce-0a1a000000000001a";
const LOB_B: &str = "vpce-0b2b000000000001b";
const BROAD: &str = "\n@id(\"everyone\")\npermit (principal, action, resource);\n";

async fn serve(ws: &Workspace, upstream: &TestServer, candidate: &Path) -> (Running, Jwks) {
    let (key, _) = keys();
    let jwks = Jwks::start(&[key]).await;
    let mut toml = config_toml(ws, &jwks.url(), &upstream.url(), &Setup::default());
    toml = toml.replacen(
        "poll_interval = \"1s\"\n",
        &format!("poll_interval = \"1s\"\n\n[policies.shadow]\ndir = \"{}\"\n", candidate.display()),
        1,
    );
    Config::from_toml(&toml, "test").expect("the test's configuration is valid");
    let path = ws.dir.path().join("shadow.toml");
    std::fs::write(&path, toml).unwrap();
    let running = start_binary(&["--config", path.to_str().unwrap()], &[], &ws.dir.path().join("log")).await;
    (running, jwks)
}

/// The status and request id of user-1 (Team1, Team2) asking for `target` through `vpce`.
async fn ask(data: SocketAddr, target: &str, vpce: &str) -> (u16, String) {
    let auth = format!("Bearer {}", token("user-1", &["Team1", "Team2"]));
    let headers = [("authorization", auth.as_str()), ("x-amzn-vpce-id", vpce), ("x-forwarded-for", "10.1.2.3")];
    let (status, answer, _) = harness::get(data, target, &headers).await;
    (status, answer["x-request-id"].to_str().unwrap().to_owned())
}

/// The value of the series `name{labels}` (labels as Prometheus writes them), 0 if absent.
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (_, _, text) = harness::get(admin, "/metrics", &[]).await;
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

async fn until_metric(admin: SocketAddr, series: &str, value: f64) {
    for _ in 0..200 {
        if (metric(admin, series).await - value).abs() < f64::EPSILON {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_, _, text) = harness::get(admin, "/metrics", &[]).await;
    panic!("{series} never reached {value}:\n{text}");
}

/// Wait (at most 10 s) until `/readyz` shows a candidate snapshot.
async fn until_shadow_loaded(admin: SocketAddr) {
    for _ in 0..200 {
        if readyz(admin).await.1["shadow"]["snapshot"].is_string() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the candidate never loaded: {:#}", readyz(admin).await.1);
}

async fn readyz(admin: SocketAddr) -> (u16, Value) {
    let (status, _, body) = harness::get(admin, "/readyz", &[]).await;
    (status, serde_json::from_str(&body).unwrap())
}

fn shadow_lines(ws: &Workspace) -> Vec<Value> {
    std::fs::read_to_string(ws.dir.path().join("log"))
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "authz_sidecar::shadow")
        .map(|line| line["fields"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_decides_beside_serving_without_changing_an_answer() {
    let ws = Workspace::shipped();
    let candidate = ws.dir.path().join("candidate");
    copy_dir(&ws.policies(), &candidate);
    let presign = candidate.join("presign.cedar");
    let text = std::fs::read_to_string(&presign).unwrap();
    std::fs::write(&presign, format!("{text}{BROAD}")).unwrap();
    let upstream = TestServer::start(|_| (200, "ok".to_owned(), Duration::ZERO)).await;
    let (running, _jwks) = serve(&ws, &upstream, &candidate).await;
    let (data, admin) = (running.data, running.admin);
    until_shadow_loaded(admin).await;

    // the serving answers, whatever the candidate says
    assert_eq!(ask(data, "/studio/user-1/team1", LOB_A).await.0, 200, "allowed by both");
    let (status, widened) = ask(data, "/studio/user-2/team2", LOB_B).await;
    assert_eq!(status, 403, "no permit serving; the candidate's broad permit changes nothing");
    assert_eq!(ask(data, "/studio/user-1/team1", LOB_B).await.0, 403, "a forbid wins in both");
    assert_eq!(upstream.calls(), 1, "only the allowed request reached the upstream");

    until_metric(admin, "authz_shadow_decisions_total", 3.0).await;
    until_metric(admin, r#"authz_shadow_disagreements_total{route="studio",live="deny",shadow="allow"}"#, 1.0).await;
    until_metric(admin, r#"authz_shadow_policy_differences_total{route="studio"}"#, 1.0).await;
    assert_eq!(
        metric(admin, r#"authz_shadow_disagreements_total{route="studio",live="allow",shadow="deny"}"#).await,
        0.0
    );

    let lines = shadow_lines(&ws);
    let disagreement = lines.iter().find(|l| l["change"] == "widened").expect("the disagreement is logged");
    assert_eq!(disagreement["request_id"], widened.as_str(), "{disagreement:#}");
    assert_eq!(disagreement["resource"], r#"Studio::UserProfile::"user-2-team2""#);
    assert_eq!(
        (disagreement["live"].as_str(), disagreement["live_reason"].as_str()),
        (Some("deny"), Some("no_permit"))
    );
    assert_eq!(
        (disagreement["shadow"].as_str(), disagreement["shadow_policies"].as_str()),
        (Some("allow"), Some("everyone"))
    );
    assert_eq!(lines.iter().filter(|l| l["change"] == "widened").count(), 1, "one line per disagreement");

    let (status, ready) = readyz(admin).await;
    assert_eq!(status, 200, "{ready:#}");
    assert!(ready["shadow"]["snapshot"].is_string(), "{ready:#}");
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_candidate_is_reported_and_shadows_nothing_until_it_is_fixed() {
    let ws = Workspace::shipped();
    let candidate = ws.dir.path().join("candidate");
    copy_dir(&ws.policies(), &candidate);
    let broken = candidate.join("broken.cedar");
    std::fs::write(&broken, "@id(\"broken\")\npermit (principal, action, resource) when { principal.nope };\n")
        .unwrap();
    let upstream = TestServer::start(|_| (200, "ok".to_owned(), Duration::ZERO)).await;
    let (running, _jwks) = serve(&ws, &upstream, &candidate).await;
    let (data, admin) = (running.data, running.admin);

    // serving and ready, the candidate's error reported (its first load runs beside the
    // serving set's, so readiness may come first)
    for _ in 0..200 {
        if readyz(admin).await.1["shadow"]["last_error"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, ready) = readyz(admin).await;
    assert_eq!(status, 200, "a broken candidate never makes the sidecar unready: {ready:#}");
    assert!(ready["shadow"]["snapshot"].is_null(), "{ready:#}");
    assert!(ready["shadow"]["last_error"].as_str().unwrap().contains("broken.cedar"), "{ready:#}");
    assert_eq!(ask(data, "/studio/user-1/team1", LOB_A).await.0, 200);
    assert_eq!(ask(data, "/studio/user-2/team2", LOB_B).await.0, 403);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(metric(admin, "authz_shadow_decisions_total").await, 0.0, "nothing to shadow with");
    let log = std::fs::read_to_string(ws.dir.path().join("log")).unwrap();
    assert!(log.contains("cannot load the shadow policies"), "{log}");

    // fixed: picked up at the next look, and shadowing begins
    std::fs::write(&broken, BROAD).unwrap();
    until_shadow_loaded(admin).await;
    assert_eq!(ask(data, "/studio/user-2/team2", LOB_B).await.0, 403);
    until_metric(admin, r#"authz_shadow_disagreements_total{route="studio",live="deny",shadow="allow"}"#, 1.0).await;

    // broken again: counted as a failed shadow reload, the last good candidate kept, and
    // the serving set's own reload count untouched
    std::fs::write(&broken, "permit (").unwrap();
    until_metric(admin, r#"authz_shadow_reloads_total{result="failure"}"#, 1.0).await;
    assert_eq!(metric(admin, r#"authz_policy_reloads_total{result="failure"}"#).await, 0.0);
    assert_eq!(ask(data, "/studio/user-2/team2", LOB_B).await.0, 403);
    until_metric(admin, r#"authz_shadow_disagreements_total{route="studio",live="deny",shadow="allow"}"#, 2.0).await;
    let (status, ready) = readyz(admin).await;
    assert_eq!(status, 200, "{ready:#}");
    assert!(ready["shadow"]["last_error"].as_str().unwrap().contains("broken.cedar"), "{ready:#}");
    drop(running);
}

#[test]
fn check_config_refuses_a_candidate_that_does_not_load() {
    let ws = Workspace::shipped();
    let candidate = ws.dir.path().join("candidate");
    copy_dir(&ws.policies(), &candidate);
    let config = ws.dir.path().join("shadow.toml");
    std::fs::write(
        &config,
        format!(
            "[policies]\ndir = \"{}\"\nentities = \"{}\"\n[policies.shadow]\ndir = \"{}\"\n",
            ws.policies().display(),
            ws.entities().display(),
            candidate.display()
        ),
    )
    .unwrap();
    let check = || crate::support::run_cli(&["serve", "--check-config", "--config", config.to_str().unwrap()]);
    let out = check();
    assert_eq!(out.code, 0, "{out:?}");
    std::fs::write(candidate.join("broken.cedar"), "permit (").unwrap();
    let out = check();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("the shadow policies in") && out.stderr.contains("broken.cedar"), "{}", out.stderr);
}
