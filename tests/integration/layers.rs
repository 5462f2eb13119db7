//! The layers the restructuring made testable on their own: the authorize step (a
//! permit or a denial, per mode) and the data-plane pipeline driven in-process, with a
//! body of any type and no socket between the test and the phases.

use std::net::SocketAddr;
use std::time::Duration;

use authz_sidecar::app::App;
use authz_sidecar::authz::audit::Asked;
use authz_sidecar::authz::{Denial, Engine, Permit, RequestError, Vouched, authorize};
use authz_sidecar::config::{Config, Mode};
use authz_sidecar::policy_store::{
    FileSource, LoadError, PolicySnapshot, PolicySource, PolicyStore, Problem, ReloadOptions, ReloadOutcome,
    SourceError, lifecycle,
};
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
    assert_eq!(*decision.policies, ["presign-own-profile"]);

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
    in_process_app_with(ws, "").await
}

/// As [`in_process_app`], with `extra` appended to the studio route.
async fn in_process_app_with(ws: &Workspace, extra: &str) -> App {
    let jwks = ws.dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [keys().0.jwk]}).to_string()).unwrap();
    let toml = format!(
        "[policies]\ndir = \"{}\"\nentities = \"{}\"\n[context]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         [[issuers]]\nissuer = \"{ISSUER}\"\njwks_file = \"{}\"\n\
         [[routes]]\nname = \"studio\"\nmethod = \"POST\"\n{}\nhandler = \"echo\"\n{extra}",
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
    let handled = pipeline::handle(app.state(), request, peer);
    // held for each request in flight, 429s included (see the pipeline)
    let size = std::mem::size_of_val(&handled);
    assert!(size <= 5 * 1024, "a data-plane request's future is {size} bytes");
    let response = handled.await;
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

/// A source that fails while `failing` is above zero (counting down), recording when
/// it was asked.
struct Flaky {
    dirs: authz_sidecar::policy_store::SourceDirs,
    failing: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    asked: std::sync::Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
}

impl PolicySource for Flaky {
    fn describe(&self) -> String {
        "flaky".to_owned()
    }

    async fn load(
        &mut self,
        serving: Option<&PolicySnapshot>,
        generation: u64,
    ) -> Result<Option<PolicySnapshot>, SourceError> {
        use std::sync::atomic::Ordering;
        self.asked.lock().unwrap().push(tokio::time::Instant::now());
        let failing = self.failing.load(Ordering::SeqCst);
        if failing > 0 {
            self.failing.store(failing - 1, Ordering::SeqCst);
            let problem = Problem::new("", None, "the store is throttling");
            return Err(SourceError { error: LoadError::single(problem), key: "throttled".to_owned(), quiet: true });
        }
        if serving.is_some() {
            return Ok(None);
        }
        Ok(Some(PolicySnapshot::load(&self.dirs, generation).unwrap()))
    }

    fn poll_interval(&self) -> Duration {
        INTERVAL
    }

    fn max_backoff(&self) -> Duration {
        INTERVAL * 16
    }
}

/// The flaky source's poll interval.
const INTERVAL: Duration = Duration::from_millis(100);
/// What a busy machine may add to a wait (only upper bounds use it).
const SLACK: Duration = Duration::from_secs(2);

/// The gaps between consecutive looks.
fn gaps(asked: &[tokio::time::Instant]) -> Vec<Duration> {
    asked.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_loop_backs_off_with_jitter_until_the_first_load_and_while_refreshes_fail() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let ws = Workspace::shipped();
    let failing = std::sync::Arc::new(AtomicUsize::new(4));
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<tokio::time::Instant>::new()));
    let source = Flaky { dirs: ws.dirs(), failing: failing.clone(), asked: asked.clone() };
    let store = PolicyStore::pending();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(lifecycle::run(source, store.clone(), lifecycle::fits_anything(), shutdown.clone()));

    // not ready, and saying why, until the fifth try loads
    while asked.lock().unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reason = store.not_serving().expect("nothing serves yet");
    assert!(reason.contains("the store is throttling"), "{reason}");
    while store.current().is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = gaps(&asked.lock().unwrap());
    assert_eq!(first.len(), 4, "{first:?}");
    // from half a second, doubling, with jitter (each wait in [d, 2d)), at most a
    // second (the poll interval, but never under a second)
    for (k, gap) in first.iter().enumerate() {
        let base = (Duration::from_millis(500) * 2u32.pow(u32::try_from(k).unwrap())).min(Duration::from_secs(1));
        assert!(*gap >= base && *gap <= base * 2 + SLACK, "wait {k}: {first:?}");
    }
    assert_eq!(store.stats().failures, 0, "a failed first load is not a failed reload");

    // refreshes: at the poll interval while all is well, backing off while they fail
    failing.store(4, Ordering::SeqCst);
    let loaded = asked.lock().unwrap().len();
    while asked.lock().unwrap().len() < loaded + 6 {
        tokio::time::sleep(INTERVAL / 4).await;
    }
    let refreshes = gaps(&asked.lock().unwrap()[loaded - 1..]);
    // the first refresh after one interval; then after each failure a longer wait; back
    // to the interval once it recovers
    let (first_refresh, last) = (refreshes[0], refreshes[5]);
    assert!(first_refresh >= INTERVAL && first_refresh <= INTERVAL + SLACK, "{refreshes:?}");
    for (k, gap) in refreshes[1..5].iter().enumerate() {
        let base = INTERVAL * 2u32.pow(u32::try_from(k).unwrap());
        assert!(*gap >= base && *gap <= base * 2 + SLACK, "failed refresh {k}: {refreshes:?}");
    }
    assert!(refreshes[4] >= INTERVAL * 8, "the waits grew: {refreshes:?}");
    assert!(last >= INTERVAL && last <= INTERVAL + SLACK, "{refreshes:?}");
    assert_eq!(store.stats().failures, 1, "one failure, however many looks it lasted");
    assert!(store.stats().last_error.is_none(), "recovered");
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_reload_whose_schema_no_longer_fits_the_routes_is_refused_and_the_last_good_serves() {
    let ws = Workspace::shipped();
    let app = in_process_app(&ws).await;
    let store = app.store().clone();
    store.publish(PolicySnapshot::load(&ws.dirs(), 1).unwrap());
    let mut source = FileSource::new(ws.dirs(), ReloadOptions { file_events: false, ..ReloadOptions::default() });

    // the action the studio route asks is renamed away in the schema
    let schema = ws.policies().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema).unwrap();
    let renamed = text.replace("action CreatePresignedDomainUrl", "action CreatePresignedUrl");
    assert_ne!(text, renamed);
    std::fs::write(&schema, renamed).unwrap();
    for policy in std::fs::read_dir(ws.policies()).unwrap() {
        let path = policy.unwrap().path();
        if path.extension().is_none_or(|e| e != "cedar") {
            continue;
        }
        let cedar = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, cedar.replace("\"CreatePresignedDomainUrl\"", "\"CreatePresignedUrl\"")).unwrap();
    }
    // the files build ...
    PolicySnapshot::load(&ws.dirs(), 2).unwrap();
    // ... but the sidecar's loop does not serve what its routes cannot ask
    let outcome = lifecycle::refresh_once(&mut source, &store, &app.fits()).await;
    assert_eq!(outcome, ReloadOutcome::Failed);
    assert_eq!(store.current().unwrap().version().generation, 1, "the last good snapshot serves");
    let error = store.stats().last_error.unwrap().to_string();
    assert!(error.contains("does not fit the routes") && error.contains("CreatePresignedDomainUrl"), "{error}");
}

/// A snapshot served by the sidecar's loop has its account-pool index built before it
/// serves, first load and reload alike, so no DataZone request after a reload pays for
/// reading every pool account; a snapshot that does not fit is not indexed.
#[tokio::test]
async fn a_snapshot_is_readied_for_the_account_pool_before_it_serves() {
    let ws = Workspace::shipped();
    let pool_route = "\n[[routes]]\nname = \"ap\"\nmethod = \"POST\"\npath = \"/datazone/account-pool\"\n\
                      handler = \"account_pool\"\n";
    let app = in_process_app_with(&ws, pool_route).await;
    let store = app.store().clone();
    let pool = app.state().account_pool();
    assert_eq!(pool.indexed(), None);
    let mut source = FileSource::new(ws.dirs(), ReloadOptions { file_events: false, ..ReloadOptions::default() });
    assert_eq!(lifecycle::refresh_once(&mut source, &store, &app.fits()).await, ReloadOutcome::Published(1));
    assert_eq!(pool.indexed(), Some(store.current().unwrap().build_id()), "the first snapshot");

    // a reload: a new snapshot, indexed before it serves
    let first = store.current().unwrap();
    ws.write_entities("extra.json", "[]");
    assert_eq!(lifecycle::refresh_once(&mut source, &store, &app.fits()).await, ReloadOutcome::Published(2));
    let second = store.current().unwrap();
    assert_ne!(first.build_id(), second.build_id());
    assert_eq!(pool.indexed(), Some(second.build_id()), "the reloaded snapshot");

    // a request still answering from the replaced snapshot leaves the newer index kept
    let operation = authz_sidecar::handlers::account_pool::parse(
        br#"{"operationRequest": {"listAuthorizedAccountsRequest": {"domainIdentifier": "dzd-4igt64u5j25ko9",
            "userIdentifier": "4b89ed84-9842-45dd-a2e5-15e49eda2b03"}}}"#,
    )
    .unwrap();
    pool.apply(&first, &operation, "late").unwrap();
    assert_eq!(pool.indexed(), Some(second.build_id()), "an older snapshot's index does not evict it");

    // a snapshot that does not fit the routes is neither served nor indexed
    let schema = ws.policies().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema).unwrap();
    std::fs::write(&schema, text.replace("action CreatePresignedDomainUrl", "action CreatePresignedUrl")).unwrap();
    for policy in std::fs::read_dir(ws.policies()).unwrap() {
        let path = policy.unwrap().path();
        if path.extension().is_some_and(|e| e == "cedar") {
            let cedar = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, cedar.replace("\"CreatePresignedDomainUrl\"", "\"CreatePresignedUrl\"")).unwrap();
        }
    }
    assert_eq!(lifecycle::refresh_once(&mut source, &store, &app.fits()).await, ReloadOutcome::Failed);
    let error = store.stats().last_error.unwrap().to_string();
    assert!(error.contains("does not fit the routes"), "{error}");
    assert_eq!(pool.indexed(), Some(second.build_id()));
}

/// A check that panics admits nothing: the reload fails, the last good snapshot serves.
#[tokio::test]
async fn a_check_that_panics_admits_nothing() {
    let ws = Workspace::shipped();
    let store = PolicyStore::new(PolicySnapshot::load(&ws.dirs(), 1).unwrap());
    let mut source = FileSource::new(ws.dirs(), ReloadOptions { file_events: false, ..ReloadOptions::default() });
    ws.write_entities("extra.json", "[]");
    let panics: lifecycle::Fits = std::sync::Arc::new(|_| panic!("a check that panics"));
    assert_eq!(lifecycle::refresh_once(&mut source, &store, &panics).await, ReloadOutcome::Failed);
    assert_eq!(store.current().unwrap().version().generation, 1, "the last good snapshot serves");
    let error = store.stats().last_error.unwrap().to_string();
    assert!(error.contains("check of the snapshot"), "{error}");
}

/// The in-process app with its studio route deriving profiles (or not), the profiles
/// file replaced by `profiles`.
async fn deriving_app(ws: &Workspace, derive: bool, profiles: &str) -> App {
    ws.write_entities("user-profiles.json", profiles);
    let derive = if derive { "[routes.derive_profile]\nuser = \"user\"\nteam = \"team\"\n" } else { "" };
    let app = in_process_app_with(ws, derive).await;
    let snapshot = PolicySnapshot::load(&ws.dirs(), 1).unwrap();
    assert!(authz_sidecar::app::check_routes(&app.config, &snapshot).is_empty());
    app.store().publish(snapshot);
    app
}

#[tokio::test]
async fn a_profile_nobody_listed_is_derived_from_the_user_the_team_and_the_users_lob() {
    let bearer = format!("Bearer {}", token("user-1", &["Team1", "Team2"]));
    let headers = [
        ("authorization", bearer.as_str()),
        ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
        ("x-forwarded-for", "10.1.2.3"),
    ];
    let ws = Workspace::shipped();

    // no profile is listed: without derivation there is nothing to open
    let listing_only = deriving_app(&ws, false, "[]").await;
    assert_eq!(call(&listing_only, "/studio/user-1/team1", &headers, "").await.0, 403);

    let app = deriving_app(&ws, true, "[]").await;
    let (status, echoed) = call(&app, "/studio/user-1/team1", &headers, "").await;
    assert_eq!(status, 200, "{echoed}");
    assert_eq!(echoed["resource"], "Studio::UserProfile::\"user-1-team1\"");
    assert_eq!(echoed["policies"], json!(["presign-own-profile"]));
    // derived as the policies would check a listed one: not someone else's, not a team
    // that does not exist, not a team the user is not in
    assert_eq!(call(&app, "/studio/user-2/team2", &headers, "").await.0, 403);
    assert_eq!(call(&app, "/studio/user-1/team9", &headers, "").await.0, 403);
    let team1_only = format!("Bearer {}", token("user-1", &["Team1"]));
    let headers_team1 = [headers[1], headers[2], ("authorization", team1_only.as_str())];
    assert_eq!(call(&app, "/studio/user-1/team2", &headers_team1, "").await.0, 403);

    // a listed profile wins: this one is in lob-b, which user-1 is not in
    let listed = r#"[{"uid": {"type": "Studio::UserProfile", "id": "user-1-team1"},
        "attrs": {"profileName": "legacy-name", "owner": {"type": "Studio::User", "id": "user-1"},
                  "team": {"type": "Studio::Team", "id": "Team1"}, "lob": {"type": "Studio::Lob", "id": "lob-b"}},
        "parents": [{"type": "Studio::Lob", "id": "lob-b"}], "tags": {"Team": "Team1"}}]"#;
    let app = deriving_app(&ws, true, listed).await;
    assert_eq!(call(&app, "/studio/user-1/team1", &headers, "").await.0, 403);
}

#[test]
fn a_derived_profile_presigns_in_the_users_lob_under_its_documented_name() {
    use authz_sidecar::handlers::presign::resolve;
    use authz_sidecar::handlers::profiles::derive_profile;
    let ws = Workspace::shipped();
    ws.write_entities("user-profiles.json", "[]");
    let snapshot = PolicySnapshot::load(&ws.dirs(), 1).unwrap();
    let user_type: cedar_policy::EntityTypeName = "Studio::User".parse().unwrap();
    let resource = uid(r#"Studio::UserProfile::"user-1-team1""#);
    let stored = |uid: &cedar_policy::EntityUid| snapshot.stored_entity(uid).unwrap();
    let derived =
        std::sync::Arc::new(derive_profile(&snapshot, stored, &user_type, "user-1", "team1", &resource).unwrap());
    let known = |uid: &cedar_policy::EntityUid| if *uid == resource { Some(derived.clone()) } else { stored(uid) };
    let target = resolve(known, &resource, "unused").unwrap();
    assert_eq!(target.profile_name, "user-1-team1");
    assert_eq!(target.account_id, "111111111111", "lob-a's account");
    assert_eq!(target.team_tag.as_deref(), Some("Team1"), "the stored team's id, not the path's spelling");
    assert!(target.execution_role_arn.is_some_and(|arn| arn.starts_with("arn:aws:iam::111111111111:role/")));
    // a user the entities do not know has no line of business: nothing is derived
    let error = derive_profile(&snapshot, stored, &user_type, "user-9", "team1", &resource).unwrap_err();
    assert!(error.to_string().contains("user-9"), "{error}");
}
