//! What may I open: the access query over real sockets (`GET /v1/access` on the real
//! binary) and in the CLI, and a property test that the list is exactly what fresh
//! decisions allow, over generated profiles and policy sets.

use std::sync::Arc;
use std::time::Duration;

use authz_sidecar::access::{self, Question};
use authz_sidecar::authz::{Asker, DecisionRequest, Engine, QuestionContext};
use authz_sidecar::config::Config;
use authz_sidecar::policy_store::{CheckedEntity, PolicySnapshot};
use cedar_policy::{Entity, EntityTypeName, EntityUid};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::binary::start_binary;
use crate::harness::{self, Jwks, Setup, TestServer, config_toml, keys, token};
use crate::support::Workspace;

const LOB_A: &str = "vpce-0a1a000000000001a";
const LOB_B: &str = "vpce-0b2b000000000001b";
const PRESIGN: &str = r#"Studio::Action::"CreatePresignedDomainUrl""#;

/// Extra presign policies the property test turns on: each reads profiles differently
/// (an attribute, a tag, membership in a LOB, a profile named by id, a profile used as a
/// value, which makes every profile its own class), or the context.
const EXTRA_POLICIES: [&str; 7] = [
    r#"permit (principal, action == Studio::Action::"CreatePresignedDomainUrl", resource in Studio::Lob::"lob-b")
       when { principal in Studio::Team::"Team2" };"#,
    r#"forbid (principal, action == Studio::Action::"CreatePresignedDomainUrl", resource)
       when { resource.hasTag("Team") && resource.getTag("Team") == "Team2" && context has sourceVpce
              && context.sourceVpce == "vpce-0b2b000000000001b" };"#,
    r#"permit (principal, action == Studio::Action::"CreatePresignedDomainUrl", resource == Studio::UserProfile::"p-3");"#,
    r#"forbid (principal, action == Studio::Action::"CreatePresignedDomainUrl", resource)
       when { [resource].contains(Studio::UserProfile::"p-5") };"#,
    r#"permit (principal in Studio::Team::"Team1", action == Studio::Action::"CreatePresignedDomainUrl", resource)
       when { resource.team == Studio::Team::"Team1" && resource.owner == Studio::User::"user-3" };"#,
    r#"forbid (principal, action == Studio::Action::"CreatePresignedDomainUrl", resource)
       when { resource.owner == Studio::User::"user-2" && context.sourceIp.isInRange(ip("10.9.0.0/16")) };"#,
    r#"permit (principal, action == Studio::Action::"CreatePresignedDomainUrl", resource is Studio::UserProfile)
       when { resource.lob == Studio::Lob::"lob-a" && principal.hasTag("Team") };"#,
];

/// A generated profile: an id number and a look (owner, team, LOB, Team tag) as small
/// indexes, so that profiles often look alike.
type Look = (u8, [u8; 4]);

/// The shipped files plus the extra policies turned on and the generated profiles.
fn generated(extra: &[bool], profiles: &[Look]) -> PolicySnapshot {
    let mut seen = std::collections::HashSet::new();
    let entities: Vec<Value> = profiles
        .iter()
        .filter(|(n, _)| seen.insert(*n))
        .map(|(n, [owner, team, lob, tag])| {
            let owner = ["user-1", "user-2", "user-3"][usize::from(*owner) % 3];
            let team = ["Team1", "Team2"][usize::from(*team) % 2];
            let lob = ["lob-a", "lob-b"][usize::from(*lob) % 2];
            let mut profile = json!({
                "uid": {"type": "Studio::UserProfile", "id": format!("p-{n}")},
                "attrs": {
                    "profileName": format!("p-{n}"),
                    "owner": {"type": "Studio::User", "id": owner},
                    "team": {"type": "Studio::Team", "id": team},
                    "lob": {"type": "Studio::Lob", "id": lob},
                },
                "parents": [{"type": "Studio::Lob", "id": lob}],
            });
            match tag % 3 {
                0 => profile["tags"] = json!({"Team": team}),
                1 => profile["tags"] = json!({"Team": "Team2"}),
                _ => {}
            }
            profile
        })
        .collect();
    crate::support::shipped_with(&EXTRA_POLICIES, extra, entities)
}

/// The principal a token would build: a user, their groups (teams), a LOB, Team tags.
fn built_principal(snapshot: &PolicySnapshot, user: u8, teams: &[bool; 2], lob: u8) -> Arc<CheckedEntity> {
    let id = ["user-1", "user-2", "user-3"][usize::from(user) % 3];
    let names: Vec<&str> = ["Team1", "Team2"].into_iter().zip(teams).filter(|(_, on)| **on).map(|(t, _)| t).collect();
    let mut parents: Vec<Value> = names.iter().map(|t| json!({"type": "Studio::Team", "id": t})).collect();
    let lob = ["lob-a", "lob-b"][usize::from(lob) % 2];
    parents.push(json!({"type": "Studio::Lob", "id": lob}));
    let json = json!({"uid": {"type": "Studio::User", "id": id}, "attrs": {}, "parents": parents,
                      "tags": {"Team": names}});
    Arc::new(CheckedEntity::new(Entity::from_json_value(json, Some(snapshot.schema())).unwrap()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every listed profile is allowed by a fresh decision, and every profile of the type
    /// that is not listed is denied by one, whatever the policies read.
    #[test]
    fn the_list_is_exactly_what_fresh_decisions_allow(
        extra in proptest::collection::vec(any::<bool>(), 7),
        profiles in proptest::collection::vec((0u8..24, [0u8..3, 0u8..2, 0u8..2, 0u8..3]), 0..24),
        (user, teams, lob) in (0u8..3, [any::<bool>(), any::<bool>()], 0u8..2),
        (vpce, ip) in (0usize..3, 0usize..3),
    ) {
        let snapshot = generated(&extra, &profiles);
        let principal = built_principal(&snapshot, user, &teams, lob);
        let source_ip = ["10.1.2.3", "10.9.1.1", "192.0.2.1"][ip];
        let mut context = json!({"sourceIp": source_ip});
        if let Some(vpce) = [Some(LOB_A), Some(LOB_B), None][vpce] {
            context["sourceVpce"] = json!(vpce);
        }
        let action: EntityUid = PRESIGN.parse().unwrap();
        let profile_type: EntityTypeName = "Studio::UserProfile".parse().unwrap();
        let engine = Engine::new();
        let question = Question {
            principal: Asker::Built(principal.clone()),
            action: action.clone(),
            resource_type: profile_type.clone(),
            context: QuestionContext::Json(context.clone()),
            checked: Vec::new(),
            unlisted: Vec::new(),
        };
        let answer = access::query(&engine, &snapshot, &question).unwrap();
        let listed: std::collections::BTreeSet<String> = answer.allowed.iter().map(|a| a.resource.clone()).collect();
        let every = snapshot.entities_of_type(&profile_type);
        prop_assert_eq!(answer.candidates, every.len());
        prop_assert!(answer.decisions <= every.len());
        for uid in every.iter() {
            let fresh = DecisionRequest {
                principal: Asker::Built(principal.clone()),
                action: action.clone(),
                resource: uid.clone(),
                context: QuestionContext::Json(context.clone()),
                entities: Vec::new(),
                checked: Vec::new(),
            };
            let decision = Engine::new().decide(&snapshot, &fresh).unwrap();
            prop_assert_eq!(decision.is_allowed(), listed.contains(&uid.to_string()), "{} {:?}", uid, decision);
        }
        // the context matters to the shipped policies, and the answer says so
        prop_assert!(answer.context_read.contains(&"sourceVpce".to_owned()));
    }
}

#[test]
fn look_alike_profiles_are_decided_once_and_a_profile_used_as_a_value_decides_each_alone() {
    let alike: Vec<Look> = (0..20).map(|n| (n, [2, 0, 0, 0])).collect();
    let principal_of = |snapshot: &PolicySnapshot| built_principal(snapshot, 0, &[true, false], 0);
    let ask = |snapshot: &PolicySnapshot| {
        let question = Question {
            principal: Asker::Built(principal_of(snapshot)),
            action: PRESIGN.parse().unwrap(),
            resource_type: "Studio::UserProfile".parse().unwrap(),
            context: QuestionContext::Json(json!({"sourceIp": "10.1.2.3", "sourceVpce": LOB_A})),
            checked: Vec::new(),
            unlisted: Vec::new(),
        };
        access::query(&Engine::new(), snapshot, &question).unwrap()
    };
    let mut extra = [false; 7];
    extra[4] = true; // permits Team1 members on user-3's Team1 profiles
    let shared = ask(&generated(&extra, &alike));
    assert_eq!(shared.candidates, 23, "the 3 shipped and the 20 generated");
    assert_eq!(shared.decisions, 3 + 1, "20 look-alikes, one decision");
    assert_eq!(shared.allowed.iter().filter(|a| a.id.starts_with("p-")).count(), 20);
    // with entities of the question's own (the directory's), nothing is shared
    let snapshot = generated(&extra, &alike);
    let team = Entity::from_json_value(
        json!({"uid": {"type": "Studio::Team", "id": "Team1"}, "attrs": {"executionRoleName": "r"}, "parents": []}),
        Some(snapshot.schema()),
    )
    .unwrap();
    let question = Question {
        principal: Asker::Built(principal_of(&snapshot)),
        action: PRESIGN.parse().unwrap(),
        resource_type: "Studio::UserProfile".parse().unwrap(),
        context: QuestionContext::Json(json!({"sourceIp": "10.1.2.3", "sourceVpce": LOB_A})),
        checked: vec![Arc::new(CheckedEntity::new(team))],
        unlisted: Vec::new(),
    };
    let alone = access::query(&Engine::new(), &snapshot, &question).unwrap();
    assert_eq!((alone.decisions, alone.allowed.len()), (23, shared.allowed.len()));
    extra[3] = true; // a profile used as a value: every profile its own class
    let alone = ask(&generated(&extra, &alike));
    assert_eq!(alone.decisions, 23);
    assert_eq!(alone.allowed.iter().filter(|a| a.id.starts_with("p-")).count(), 19, "p-5 is forbidden");
}

/// The binary with the Studio route (deriving profiles) and the access route, over
/// `ws` with user-3 (lob-a, Team1) who has no profile yet, and a forbid on asking for
/// members of the group `Blocked`.
async fn serve_access(ws: &Workspace, upstream: &TestServer) -> (crate::binary::Running, Jwks) {
    serve_access_with(ws, upstream, "").await
}

/// As [`serve_access`], with `server` added to the `[server]` table.
async fn serve_access_with(ws: &Workspace, upstream: &TestServer, server: &str) -> (crate::binary::Running, Jwks) {
    ws.write_entities(
        "user-3.json",
        r#"[{"uid": {"type": "Studio::User", "id": "user-3"}, "attrs": {},
             "parents": [{"type": "Studio::Team", "id": "Team1"}, {"type": "Studio::Lob", "id": "lob-a"}],
             "tags": {"Team": ["Team1"]}}]"#,
    );
    ws.write_policy(
        "blocked.cedar",
        "@id(\"no-access-query-when-blocked\")\nforbid (principal in Studio::Team::\"Blocked\", \
         action == Studio::Action::\"QueryAccess\", resource);\n",
    );
    let (key, _) = keys();
    let jwks = Jwks::start(&[key]).await;
    let setup = Setup {
        extra:
            "derive_profile = { user = \"user\", team = \"team\" }\n\n[[routes]]\nname = \"access\"\nmethod = \"GET\"\n\
                path = \"/v1/access\"\nhandler = \"access\"\n"
                .to_owned(),
        ..Setup::default()
    };
    let toml = config_toml(ws, &jwks.url(), &upstream.url(), &setup).replacen(
        "[server]\n",
        &format!("[server]\n{server}\n"),
        1,
    );
    Config::from_toml(&toml, "test").expect("the test's configuration is valid");
    let path = ws.dir.path().join("access.toml");
    std::fs::write(&path, toml).unwrap();
    (start_binary(&["--config", path.to_str().unwrap()], &[], &ws.dir.path().join("log")).await, jwks)
}

fn headers<'a>(auth: &'a str, vpce: &'a str) -> [(&'a str, &'a str); 3] {
    [("authorization", auth), ("x-amzn-vpce-id", vpce), ("x-forwarded-for", "10.1.2.3")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_route_lists_what_the_caller_may_open_from_where_they_call() {
    let ws = Workspace::shipped();
    let upstream = TestServer::start(|_| (200, "ok".to_owned(), Duration::ZERO)).await;
    let (running, _jwks) = serve_access(&ws, &upstream).await;
    let data = running.data;
    let query = "/v1/access?action=CreatePresignedDomainUrl&resource_type=Studio%3A%3AUserProfile";
    let ask = |user: &'static str, groups: &'static [&'static str], vpce: &'static str, target: String| async move {
        let auth = format!("Bearer {}", token(user, groups));
        let (status, _, body) = harness::get(data, &target, &headers(&auth, vpce)).await;
        (status, serde_json::from_str::<Value>(&body).unwrap_or(Value::Null))
    };

    // user-1 from lob-a's endpoint: both profiles, each one a 200 when opened
    let (status, answer) = ask("user-1", &["Team1", "Team2"], LOB_A, query.to_owned()).await;
    assert_eq!(status, 200, "{answer:#}");
    let ids: Vec<&str> = answer["allowed"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["user-1-team1", "user-1-team2"], "{answer:#}");
    assert_eq!(answer["principal"], r#"Studio::User::"user-1""#);
    assert_eq!(answer["context"]["sourceVpce"], LOB_A, "answered for the caller's own context");
    assert_eq!(answer["context_dependent"], true);
    assert!(answer["note"].as_str().unwrap().contains("this context"), "{answer:#}");
    // nothing trying would not tell: no policy ids, no count of what may not be opened
    for hidden in ["candidates", "decisions", "context_read"] {
        assert!(answer.get(hidden).is_none(), "{hidden}: {answer:#}");
    }
    assert!(answer["allowed"][0].get("policies").is_none(), "{answer:#}");
    for id in &ids {
        let team = id.rsplit('-').next().unwrap();
        assert_eq!(ask("user-1", &["Team1", "Team2"], LOB_A, format!("/studio/user-1/{team}")).await.0, 200);
    }
    // without Team2 in the token: only Team1
    let (_, answer) = ask("user-1", &["Team1"], LOB_A, query.to_owned()).await;
    assert_eq!(answer["allowed"].as_array().unwrap().len(), 1, "{answer:#}");
    // from lob-b's endpoint: nothing, and opening confirms it
    let (status, answer) = ask("user-1", &["Team1", "Team2"], LOB_B, query.to_owned()).await;
    assert_eq!((status, answer["allowed"].clone()), (200, json!([])), "{answer:#}");
    assert_eq!(ask("user-1", &["Team1", "Team2"], LOB_B, "/studio/user-1/team1".to_owned()).await.0, 403);

    // user-3 has no profile: the one the Studio route would derive is listed, and opens
    let (_, answer) = ask("user-3", &["Team1"], LOB_A, query.to_owned()).await;
    let allowed = answer["allowed"].as_array().unwrap();
    assert_eq!(allowed.len(), 1, "{answer:#}");
    assert_eq!((allowed[0]["id"].as_str(), allowed[0]["derived"].as_bool()), (Some("user-3-Team1"), Some(true)));
    // (the test's configuration derives on its `studio-post` route)
    let auth = format!("Bearer {}", token("user-3", &["Team1"]));
    let (status, _, _) =
        harness::request(data, "POST", "/studio/user-3/Team1", &headers(&auth, LOB_A), Vec::new()).await;
    assert_eq!(status, 200, "the derived profile opens");
    assert_eq!(ask("user-3", &["Team1"], LOB_A, "/studio/user-3/Team1".to_owned()).await.0, 403, "not derived on GET");

    // questions that cannot be asked are 400s naming why; no token is a 401; a caller the
    // policies keep from asking is a 403
    for (target, why) in [
        ("/v1/access?action=CreatePresignedDomainUrl", "give `?action="),
        ("/v1/access?action=a&resource_type=b&action=c", "more than once"),
        (
            "/v1/access?action=a&resource_type=b&principal=Studio::User::%22user-2%22",
            "only `action` and `resource_type`",
        ),
        ("/v1/access?action=Nope&resource_type=Studio::UserProfile", "no action `Nope`"),
        ("/v1/access?action=CreatePresignedDomainUrl&resource_type=DataZone::Account", "does not apply to resources"),
        ("/v1/access?action=UseAccount&resource_type=DataZone::Account", "does not apply to principals"),
    ] {
        let (status, answer) = ask("user-1", &["Team1"], LOB_A, target.to_owned()).await;
        assert_eq!(status, 400, "{target}: {answer:#}");
        assert!(answer["error"].as_str().unwrap().contains(why), "{target}: {answer:#}");
    }
    assert_eq!(harness::get(data, query, &[]).await.0, 401);
    assert_eq!(ask("user-1", &["Blocked"], LOB_A, query.to_owned()).await.0, 403);
    assert_eq!(upstream.calls(), 3, "the three profiles opened reached the upstream; no access query did");
    drop(running);
}

#[test]
fn the_cli_lists_what_a_principal_may_open_for_a_given_context() {
    let ws = Workspace::shipped();
    let args = |context: &str| {
        vec![
            "access".to_owned(),
            "--principal".to_owned(),
            r#"Studio::User::"user-1""#.to_owned(),
            "--action".to_owned(),
            "CreatePresignedDomainUrl".to_owned(),
            "--resource-type".to_owned(),
            "Studio::UserProfile".to_owned(),
            "--context".to_owned(),
            context.to_owned(),
        ]
    };
    let run = |args: Vec<String>| ws.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(args(&format!(r#"{{"sourceVpce": "{LOB_A}", "sourceIp": "10.1.2.3"}}"#)));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(r#"Studio::UserProfile::"user-1-team1"  (by presign-own-profile)"#), "{}", out.stdout);
    assert!(out.stdout.contains("2 of 3"), "{}", out.stdout);
    assert!(out.stdout.contains("note: the policies read the context"), "{}", out.stdout);

    let mut json = args(&format!(r#"{{"sourceVpce": "{LOB_B}", "sourceIp": "10.1.2.3"}}"#));
    json.push("--json".to_owned());
    let out = run(json);
    let answer: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["allowed"], json!([]), "another endpoint, nothing");

    // a principal given as a request entity (as a token would build it), and a profile
    // no file lists, given the same way
    let entities = ws.dir.path().join("request.json");
    std::fs::write(
        &entities,
        r#"[{"uid": {"type": "Studio::User", "id": "user-1"}, "attrs": {}, "tags": {"Team": ["Team1"]},
             "parents": [{"type": "Studio::Team", "id": "Team1"}, {"type": "Studio::Lob", "id": "lob-a"}]},
            {"uid": {"type": "Studio::UserProfile", "id": "user-1-new"}, "tags": {"Team": "Team1"},
             "attrs": {"profileName": "user-1-new", "owner": {"type": "Studio::User", "id": "user-1"},
                       "team": {"type": "Studio::Team", "id": "Team1"}, "lob": {"type": "Studio::Lob", "id": "lob-a"}},
             "parents": [{"type": "Studio::Lob", "id": "lob-a"}]},
            {"uid": {"type": "Studio::UserProfile", "id": "user-1-team2"}, "tags": {"Team": "Team1"},
             "attrs": {"profileName": "user-1-team2", "owner": {"type": "Studio::User", "id": "user-1"},
                       "team": {"type": "Studio::Team", "id": "Team1"}, "lob": {"type": "Studio::Lob", "id": "lob-a"}},
             "parents": [{"type": "Studio::Lob", "id": "lob-a"}]}]"#,
    )
    .unwrap();
    let mut given = args(&format!(r#"{{"sourceVpce": "{LOB_A}", "sourceIp": "10.1.2.3"}}"#));
    given.extend(["--request-entities".to_owned(), entities.display().to_string(), "--json".to_owned()]);
    let out = run(given);
    let answer: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let ids: Vec<&str> = answer["allowed"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    // user-1-team2 stands in for the stored one, moved to Team1: decided as given
    assert_eq!(ids, ["user-1-new", "user-1-team1", "user-1-team2"], "{answer:#}");

    // a question that cannot be asked
    let mut bad = args("{}");
    bad[6] = "DataZone::Account".to_owned();
    let out = run(bad);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("does not apply to resources of type `DataZone::Account`"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_queries_past_their_slots_are_shed_and_the_data_plane_goes_on() {
    let ws = Workspace::shipped();
    // enough profiles that one query decides for a while
    let profiles: Vec<Value> = (0..3_000)
        .map(|n| {
            let owner = format!("user-{}", 10 + n % 50);
            json!({"uid": {"type": "Studio::UserProfile", "id": format!("gen-{n}")}, "tags": {"Team": "Team1"},
                   "attrs": {"profileName": format!("gen-{n}"), "owner": {"type": "Studio::User", "id": owner},
                             "team": {"type": "Studio::Team", "id": "Team1"}, "lob": {"type": "Studio::Lob", "id": "lob-a"}},
                   "parents": [{"type": "Studio::Lob", "id": "lob-a"}]})
        })
        .collect();
    ws.write_entities("generated.json", &Value::Array(profiles).to_string());
    let upstream = TestServer::start(|_| (200, "ok".to_owned(), Duration::ZERO)).await;
    let (running, _jwks) = serve_access_with(&ws, &upstream, "max_concurrent_access_queries = 1").await;
    let (data, admin) = (running.data, running.admin);
    let auth = format!("Bearer {}", token("user-1", &["Team1", "Team2"]));
    let query = "/v1/access?action=CreatePresignedDomainUrl&resource_type=Studio::UserProfile";
    let sent = headers(&auth, LOB_A);
    let ask = || harness::get(data, query, &sent);
    let (a, b, c, d) = tokio::join!(ask(), ask(), ask(), ask());
    let statuses: Vec<u16> = [a.0, b.0, c.0, d.0].into();
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&429), "one slot: the others are shed, not queued: {statuses:?}");
    assert!(statuses.iter().all(|s| [200, 429].contains(s)), "{statuses:?}");
    // the rest of the data plane was never held up, and the slot comes back
    assert_eq!(harness::get(data, "/studio/user-1/team1", &sent).await.0, 200);
    assert_eq!(ask().await.0, 200);
    let (_, _, metrics) = harness::get(admin, "/metrics", &[]).await;
    assert!(metrics.contains(r#"authz_requests_shed_total{reason="access_queries"}"#), "{metrics}");
    drop(running);
}
