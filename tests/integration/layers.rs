//! The layers the restructuring made testable on their own: the authorize step (a
//! permit or a denial, per mode) and the data-plane pipeline driven in-process, with a
//! body of any type and no socket between the test and the phases.

use std::net::SocketAddr;

use authz_sidecar::app::App;
use authz_sidecar::audit::Asked;
use authz_sidecar::authz::{Denial, Engine, Permit, RequestError, Vouched, authorize};
use authz_sidecar::config::{Config, Mode};
use authz_sidecar::policy_store::PolicySnapshot;
use authz_sidecar::server::pipeline;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::harness::{ISSUER, keys, token};
use crate::support::Workspace;

fn uid(text: &str) -> cedar_policy::EntityUid {
    text.parse().unwrap()
}

fn presign(user: &str, profile: &str) -> authz_sidecar::authz::DecisionRequest {
    authz_sidecar::authz::DecisionRequest::new(
        uid(&format!("Studio::User::\"{user}\"")),
        uid(r#"Studio::Action::"CreatePresignedDomainUrl""#),
        uid(&format!("Studio::UserProfile::\"{profile}\"")),
    )
    .with_context(json!({"sourceVpce": "vpce-0a1a000000000001a", "sourceIp": "10.1.2.3"}))
}

fn asked(route: &str) -> Asked {
    Asked { request_id: "r-1".to_owned(), route: Some(route.to_owned()), ..Asked::default() }
}

#[test]
fn the_authorize_step_permits_denies_and_lets_dry_run_through_saying_so() {
    let snapshot: std::sync::Arc<PolicySnapshot> = crate::support::shipped_snapshot();
    let engine = Engine::new();

    let allowed = authorize(&engine, &snapshot, Mode::Enforce, asked("a"), Ok(presign("user-1", "user-1-team1")));
    let Ok(Permit { decision, vouched }) = allowed else { panic!("{allowed:?}") };
    assert_eq!(vouched, Vouched::Allowed);
    assert_eq!(decision.policies, ["presign-own-profile"]);

    let denied = authorize(&engine, &snapshot, Mode::Enforce, asked("a"), Ok(presign("user-2", "user-1-team1")));
    assert!(matches!(&denied, Err(Denial::Denied(d)) if !d.is_allowed()), "{denied:?}");

    let dry = authorize(&engine, &snapshot, Mode::DryRun, asked("a"), Ok(presign("user-2", "user-1-team1")));
    let Ok(Permit { decision, vouched }) = dry else { panic!("{dry:?}") };
    assert_eq!(vouched, Vouched::DryRunDenied, "let through, and the upstream is told it was a deny");
    assert!(!decision.is_allowed());

    // a question that cannot be asked is a denial in every mode, dry-run included
    let unaskable = Err(RequestError::BadEntities("a claim of the wrong shape".to_owned()));
    let refused = authorize(&engine, &snapshot, Mode::DryRun, asked("a"), unaskable);
    assert!(matches!(&refused, Err(Denial::Undecidable(e)) if e.kind() == "bad_entities"), "{refused:?}");
    let off_schema = presign("user-1", "user-1-team1").with_context(json!({"sourceIp": 7}));
    let refused = authorize(&engine, &snapshot, Mode::DryRun, asked("a"), Ok(off_schema));
    assert!(matches!(&refused, Err(Denial::Undecidable(e)) if e.kind() == "bad_context"), "{refused:?}");
}

/// An app over the shipped policies with the echo handler, its issuer's keys read from
/// a file: nothing listens, nothing runs in the background.
async fn in_process_app(ws: &Workspace) -> App {
    let jwks = ws.dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [keys().0.jwk]}).to_string()).unwrap();
    let toml = format!(
        "[policies]\ndir = \"{}\"\nentities = \"{}\"\n[context]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         [[issuers]]\nissuer = \"{ISSUER}\"\njwks_file = \"{}\"\n\
         [[routes]]\nname = \"studio\"\nmethod = \"POST\"\n{}\nhandler = \"echo\"\n",
        ws.policies().display(),
        ws.entities().display(),
        jwks.display(),
        crate::harness::STUDIO_ROUTE,
    );
    let app = App::new(Config::from_toml(&toml, "in-process").unwrap(), false).unwrap();
    assert!(app.state().load_missing_keys().await);
    app
}

async fn call(app: &App, path: &str, headers: &[(&str, &str)], body: &'static str) -> (u16, Value) {
    let mut request = http::Request::builder().method("POST").uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let response = pipeline::handle(app.state(), request, peer).await;
    let status = response.status().as_u16();
    assert!(response.headers().contains_key("x-request-id"), "the last phase always runs");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_pipeline_runs_in_process_phase_by_phase() {
    let ws = Workspace::shipped();
    let app = in_process_app(&ws).await;
    let bearer = format!("Bearer {}", token("user-1", &["Team1", "Team2"]));
    let through_lob_a = [
        ("authorization", bearer.as_str()),
        ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
        ("x-forwarded-for", "10.1.2.3"),
    ];

    // ready: no snapshot has been published into the store yet
    let (status, body) = call(&app, "/studio/user-1/team1", &through_lob_a, "").await;
    assert_eq!(status, 503, "{body}");
    assert!(!app.not_ready_reasons().is_empty());

    app.store().publish(PolicySnapshot::load(&ws.dirs(), 1).unwrap());
    assert!(app.not_ready_reasons().is_empty(), "{:?}", app.not_ready_reasons());

    // authenticate, route, authorize, handle
    assert_eq!(call(&app, "/studio/user-1/team1", &[], "").await.0, 401);
    assert_eq!(call(&app, "/nowhere", &through_lob_a, "").await.0, 404);
    assert_eq!(call(&app, "/studio/user-2/team2", &through_lob_a, "").await.0, 403);
    let (status, echoed) = call(&app, "/studio/user-1/team1", &through_lob_a, "{}").await;
    assert_eq!(status, 200, "{echoed}");
    assert_eq!(echoed["decision"], "allow");
    assert_eq!(echoed["principal"], "Studio::User::\"user-1\"");
    assert_eq!(echoed["policies"], json!(["presign-own-profile"]));
}
