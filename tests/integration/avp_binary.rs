//! The real binary with Verified Permissions as its only policy source, against a fake
//! policy store over real HTTP (the SDK's own JSON protocol, answered by operation): it
//! starts with no local policy files at all, checks its routes against the store's
//! schema, and says in `/readyz` what it is waiting for.

use std::time::Duration;

use serde_json::{Value, json};

use crate::binary::{Running, start_binary_in_env};
use crate::harness::{self, TestServer};
use crate::support::{Workspace, repo_root};

const STORE: &str = "PSEXAMPLEabcdefg111111";
const DATE: &str = "2026-11-01T00:00:00Z";
const POLICY: &str =
    r#"permit (principal == Studio::User::"user-1", action == Studio::Action::"CreatePresignedDomainUrl", resource);"#;

/// A store holding the shipped schema (as JSON, as Verified Permissions keeps it) and one
/// static policy.
async fn fake_store() -> TestServer {
    let text = std::fs::read_to_string(repo_root().join("policies/schema.cedarschema")).unwrap();
    let (fragment, _) = cedar_policy::SchemaFragment::from_cedarschema_str(&text).unwrap();
    let schema = fragment.to_json_string().unwrap();
    TestServer::start(move |parts| {
        let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let body = match target.trim_start_matches("VerifiedPermissions.") {
            "GetSchema" => {
                json!({"policyStoreId": STORE, "schema": schema, "createdDate": DATE, "lastUpdatedDate": DATE})
            }
            "ListPolicyTemplates" => json!({"policyTemplates": []}),
            "ListPolicies" => json!({"policies": [{"policyStoreId": STORE, "policyId": "p1", "policyType": "STATIC",
                "definition": {"static": {}}, "createdDate": DATE, "lastUpdatedDate": DATE}]}),
            "BatchGetPolicy" => json!({"results": [{"policyStoreId": STORE, "policyId": "p1", "policyType": "STATIC",
                "definition": {"static": {"statement": POLICY}}, "createdDate": DATE, "lastUpdatedDate": DATE}],
                "errors": []}),
            other => {
                return (400, json!({"__type": "ValidationException", "message": other}).to_string(), Duration::ZERO);
            }
        };
        (200, body.to_string(), Duration::ZERO)
    })
    .await
}

fn config(ws: &Workspace, store: &TestServer, action: &str) -> std::path::PathBuf {
    let path = ws.dir.path().join("avp.toml");
    std::fs::write(
        &path,
        format!(
            "[policies]\nsource = \"avp\"\ndir = \"{missing}\"\nentities = \"{entities}\"\n\
             [policies.avp]\npolicy_store_id = \"{STORE}\"\npoll_interval = \"1s\"\n\
             [context]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
             [aws]\nregion = \"us-east-1\"\nverifiedpermissions_endpoint = \"{url}\"\n\
             [[routes]]\nname = \"studio\"\nmethod = \"GET\"\npath = \"/studio/{{user}}/{{team}}\"\n\
             action = '{action}'\nresource_type = \"Studio::UserProfile\"\nresource_id = \"{{user}}-{{team}}\"\n\
             handler = \"echo\"\n",
            missing = ws.dir.path().join("no-policies-here").display(),
            entities = ws.entities().display(),
            url = store.url(),
        ),
    )
    .unwrap();
    path
}

fn env(ws: &Workspace) -> Vec<(&'static str, std::ffi::OsString)> {
    vec![
        ("HOME", ws.dir.path().into()),
        ("AWS_ACCESS_KEY_ID", "AKIDTEST".into()),
        ("AWS_SECRET_ACCESS_KEY", "secret".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_from_a_store_alone_with_no_local_policy_files() {
    let store = fake_store().await;
    let ws = Workspace::shipped();
    let path = config(&ws, &store, r#"Studio::Action::"CreatePresignedDomainUrl""#);
    let log = ws.dir.path().join("sidecar.log");
    let env = env(&ws);
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    let Running { mut child, data, admin } =
        start_binary_in_env(&["--config", path.to_str().unwrap()], &env, &log, true).await;
    let (_, _, token) = harness::get(admin, "/dev/token?user=user-1&groups=Team1", &[]).await;
    let auth = format!("Bearer {token}");
    let (status, _, body) = harness::get(data, "/studio/user-1/team1", &[("authorization", &auth)]).await;
    assert_eq!(status, 200, "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["policies"], json!(["p1"]), "decided by the store's policy");
    let _ = child.kill();
    let _ = child.wait();
    assert!(store.calls() >= 4, "the store was read over HTTP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_schema_does_not_fit_the_routes_is_not_served_and_readyz_says_why() {
    let store = fake_store().await;
    let ws = Workspace::shipped();
    let path = config(&ws, &store, r#"Studio::Action::"NotInTheStore""#);
    let log = ws.dir.path().join("sidecar.log");
    let env = env(&ws);
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    let Running { mut child, admin, .. } =
        start_binary_in_env(&["--config", path.to_str().unwrap()], &env, &log, false).await;
    let mut said = String::new();
    for _ in 0..100 {
        let (status, _, body) = harness::get(admin, "/readyz", &[]).await;
        assert_eq!(status, 503, "{body}");
        if body.contains("does not fit the routes") {
            said = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(said.contains("NotInTheStore"), "/readyz names what it waits for: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_as_the_shadow_candidate_beside_the_policy_files() {
    let store = fake_store().await;
    let ws = Workspace::shipped();
    let path = ws.dir.path().join("shadow-avp.toml");
    std::fs::write(
        &path,
        format!(
            "[policies]\ndir = \"{policies}\"\nentities = \"{entities}\"\n\
             [policies.shadow]\nsource = \"avp\"\n\
             [policies.shadow.avp]\npolicy_store_id = \"{STORE}\"\npoll_interval = \"1s\"\n\
             [context]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
             [aws]\nregion = \"us-east-1\"\nverifiedpermissions_endpoint = \"{url}\"\n\
             [[routes]]\nname = \"studio\"\nmethod = \"GET\"\npath = \"/studio/{{user}}/{{team}}\"\n\
             action = 'Studio::Action::\"CreatePresignedDomainUrl\"'\nresource_type = \"Studio::UserProfile\"\n\
             resource_id = \"{{user}}-{{team}}\"\nhandler = \"echo\"\n",
            policies = ws.policies().display(),
            entities = ws.entities().display(),
            url = store.url(),
        ),
    )
    .unwrap();
    let log = ws.dir.path().join("sidecar.log");
    let env = env(&ws);
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    let Running { mut child, data, admin } =
        start_binary_in_env(&["--config", path.to_str().unwrap()], &env, &log, true).await;
    for _ in 0..200 {
        let (_, _, body) = harness::get(admin, "/readyz", &[]).await;
        if serde_json::from_str::<Value>(&body).unwrap()["shadow"]["snapshot"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, _, token) = harness::get(admin, "/dev/token?user=user-1&groups=Team1,Team2", &[]).await;
    let auth = format!("Bearer {token}");
    // from lob-b's endpoint: the files' forbid denies; the store's one permit would allow
    let headers = [("authorization", auth.as_str()), ("x-amzn-vpce-id", "vpce-0b2b000000000001b")];
    let (status, _, body) = harness::get(data, "/studio/user-1/team1", &headers).await;
    assert_eq!(status, 403, "the files decide: {body}");
    let series = r#"authz_shadow_disagreements_total{route="studio",live="deny",shadow="allow"} 1"#;
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = harness::get(admin, "/metrics", &[]).await.2;
        if metrics.contains(series) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(metrics.contains(series), "{metrics}");
    assert!(metrics.contains("authz_shadow_snapshot_info{digest="), "{metrics}");
    let _ = child.kill();
    let _ = child.wait();
}
