//! The data plane's decision path (a principal built once per token and snapshot, a
//! context built from typed values, request entities assembled without a second schema
//! check) gives exactly the answers of the general path (`decide_with`: the context
//! parsed from JSON by Cedar, the request entities schema-checked), for random
//! principals, resources, addresses, endpoints and times over the shipped policies.

use authz_sidecar::authz::{DecisionRequest, Engine, context_from_strings};
use authz_sidecar::policy_store::PolicySnapshot;
use cedar_policy::{Entity, EntityUid};
use proptest::prelude::*;
use serde_json::json;

fn snapshot() -> std::sync::Arc<PolicySnapshot> {
    crate::support::shipped_snapshot()
}

fn uid(text: &str) -> EntityUid {
    text.parse().unwrap()
}

/// A principal as a token would make it: the user, the token's teams as parents (plus
/// a LOB), and the Team tag.
fn principal(user: &str, teams: &[&str], lob: &str, snapshot: &PolicySnapshot) -> Entity {
    let mut parents: Vec<_> = teams.iter().map(|t| json!({"type": "Studio::Team", "id": t})).collect();
    parents.push(json!({"type": "Studio::Lob", "id": lob}));
    let value = json!({"uid": {"type": "Studio::User", "id": user}, "attrs": {}, "parents": parents,
                       "tags": {"Team": teams}});
    Entity::from_json_value(value, Some(snapshot.schema())).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_data_plane_path_decides_as_the_general_path(
        user in prop::sample::select(vec!["user-1", "user-2", "user-9"]),
        teams in prop::sample::subsequence(vec!["Team1", "Team2"], 0..=2),
        lob in prop::sample::select(vec!["lob-a", "lob-b"]),
        profile in prop::sample::select(vec!["user-1-team1", "user-1-team2", "user-2-team2", "nobody-team1"]),
        ip in prop::sample::select(vec!["10.1.2.3", "172.16.9.9", "192.168.1.1", "8.8.8.8", "::1"]),
        vpce in prop::sample::select(vec![Some("vpce-0a1a000000000001a"), Some("vpce-0b2b000000000001b"), Some("vpce-x"), None]),
        second in 0u32..60,
        token in any::<[u8; 32]>(),
    ) {
        let snapshot = snapshot();
        let action = uid(r#"Studio::Action::"CreatePresignedDomainUrl""#);
        let resource = uid(&format!(r#"Studio::UserProfile::"{profile}""#));
        let entity = principal(user, &teams, lob, &snapshot);
        let mut pairs = vec![
            ("sourceIp".to_owned(), ip.to_owned()),
            ("requestTime".to_owned(), format!("2026-11-22T10:00:{second:02}Z")),
        ];
        if let Some(vpce) = vpce {
            pairs.push(("sourceVpce".to_owned(), vpce.to_owned()));
        }

        let json_context = serde_json::Value::Object(
            pairs.iter().map(|(k, v)| (k.clone(), json!(v))).collect(),
        );
        let general = Engine::new().decide(
            &snapshot,
            &DecisionRequest::new(entity.uid(), action.clone(), resource.clone())
                .with_context(json_context)
                .with_entities(vec![entity.clone()]),
        )
        .unwrap();

        let requester = snapshot.request_principal(token, || Ok::<_, std::convert::Infallible>(entity.clone())).unwrap();
        // twice: the first may learn the context's kinds through Cedar's parser, the
        // second is built from typed values
        for _ in 0..2 {
            let context = context_from_strings(&snapshot, &action, &pairs).unwrap();
            let request = DecisionRequest::built(requester.clone(), action.clone(), resource.clone(), context);
            let fast = Engine::new().decide(&snapshot, &request).unwrap();
            prop_assert_eq!(fast.effect, general.effect);
            prop_assert_eq!(&fast.policies, &general.policies);
            prop_assert_eq!(fast.reason, general.reason);
        }
    }
}

#[test]
fn both_paths_allow_the_seed_request_so_the_property_is_not_all_denies() {
    let snapshot = snapshot();
    let action = uid(r#"Studio::Action::"CreatePresignedDomainUrl""#);
    let resource = uid(r#"Studio::UserProfile::"user-1-team1""#);
    let entity = principal("user-1", &["Team1", "Team2"], "lob-a", &snapshot);
    let requester = snapshot.request_principal([7; 32], || Ok::<_, std::convert::Infallible>(entity)).unwrap();
    let pairs = vec![
        ("sourceIp".to_owned(), "10.1.2.3".to_owned()),
        ("sourceVpce".to_owned(), "vpce-0a1a000000000001a".to_owned()),
    ];
    let context = context_from_strings(&snapshot, &action, &pairs).unwrap();
    let decision =
        Engine::new().decide(&snapshot, &DecisionRequest::built(requester, action, resource, context)).unwrap();
    assert!(decision.is_allowed(), "{decision:?}");
    assert_eq!(*decision.policies, ["presign-own-profile"]);
}

/// A typed context's shape is checked against the schema once per snapshot and request
/// types; a shape that failed is checked (and refused) every time, and a checked shape
/// does not vouch for other principal or resource types.
#[test]
fn a_context_shape_checked_once_vouches_only_for_the_same_types() {
    // a snapshot of its own: shapes are remembered per snapshot
    let ws = crate::support::Workspace::shipped();
    let snapshot = authz_sidecar::policy_store::PolicyStore::load_files(&ws.dirs()).unwrap().current().unwrap();
    let action = uid(r#"Studio::Action::"CreatePresignedDomainUrl""#);
    let profile = uid(r#"Studio::UserProfile::"user-1-team1""#);
    let entity = principal("user-1", &["Team1"], "lob-a", &snapshot);
    let requester = snapshot.request_principal([9; 32], || Ok::<_, std::convert::Infallible>(entity)).unwrap();
    let strings = |items: &[(&str, &str)]| -> Vec<(String, String)> {
        items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    let decide = |resource: &EntityUid, pairs: &[(String, String)]| {
        let context = context_from_strings(&snapshot, &action, pairs)?;
        Engine::new()
            .decide(&snapshot, &DecisionRequest::built(requester.clone(), action.clone(), resource.clone(), context))
    };
    let full = strings(&[("sourceIp", "10.1.2.3"), ("sourceVpce", "vpce-0a1a000000000001a")]);
    let missing = strings(&[("sourceVpce", "vpce-0a1a000000000001a")]);
    // learn the kinds, then check the shape
    assert!(decide(&profile, &full).unwrap().is_allowed());
    assert!(decide(&profile, &full).unwrap().is_allowed());
    // `sourceIp` is required: refused, and refused again
    for _ in 0..3 {
        let err = decide(&profile, &missing).unwrap_err();
        assert_eq!(err.kind(), "invalid_request", "{err}");
    }
    // the checked shape on a resource type the action does not apply to is checked anew
    let team = uid(r#"Studio::Team::"Team1""#);
    for _ in 0..2 {
        let err = decide(&team, &full).unwrap_err();
        assert_eq!(err.kind(), "invalid_request", "{err}");
    }
    assert!(decide(&profile, &full).unwrap().is_allowed());
}

/// The principals of [`kept_decisions_answer_their_own_question_only`]: one user,
/// three tokens (different teams, different lines of business), and the first token
/// again after the lifecycle table says the user left Team1 (a principal of its own).
fn token_principals(
    snapshot: &PolicySnapshot,
) -> Vec<(std::sync::Arc<authz_sidecar::policy_store::CheckedEntity>, Entity)> {
    // the token's digest, its teams, the user's line of business, the teams lost since
    type Token<'a> = ([u8; 32], &'a [&'a str], &'a str, &'a [&'a str]);
    let tokens: [Token<'_>; 4] = [
        ([1; 32], &["Team1", "Team2"], "lob-a", &[]),
        ([2; 32], &["Team2"], "lob-a", &[]),
        ([3; 32], &["Team1"], "lob-b", &[]),
        ([1; 32], &["Team2"], "lob-a", &["Team1"]),
    ];
    tokens
        .into_iter()
        .map(|(token, teams, lob, lost)| {
            let entity = principal("user-1", teams, lob, snapshot);
            let lost: Vec<String> = lost.iter().map(|t| (*t).to_owned()).collect();
            let built = snapshot
                .request_principal_over(token, 0, &lost, || Ok::<_, std::convert::Infallible>(entity.clone()))
                .unwrap();
            (built, entity)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Decisions are kept per snapshot by every input of the question (see
    /// `DecisionKey`). Over a small world where questions repeat and differ in one input
    /// at a time (the same user with other teams, another line of business, a team lost
    /// since the token; another profile; another address or endpoint), every answer,
    /// kept or not, is the answer the general path gives that question afresh.
    #[test]
    fn kept_decisions_answer_their_own_question_only(
        questions in prop::collection::vec(
            (0usize..4, prop::sample::select(vec!["user-1-team1", "user-1-team2", "user-2-team2"]),
             prop::sample::select(vec!["10.1.2.3", "8.8.8.8"]),
             prop::sample::select(vec![Some("vpce-0a1a000000000001a"), Some("vpce-0b2b000000000001b"), None])),
            1..40,
        ),
    ) {
        // a snapshot of its own, so that nothing is kept from another case
        let ws = crate::support::Workspace::shipped();
        let snapshot = authz_sidecar::policy_store::PolicyStore::load_files(&ws.dirs()).unwrap().current().unwrap();
        let action = uid(r#"Studio::Action::"CreatePresignedDomainUrl""#);
        let principals = token_principals(&snapshot);
        for (who, profile, ip, vpce) in questions {
            let (requester, entity) = &principals[who];
            let resource = uid(&format!(r#"Studio::UserProfile::"{profile}""#));
            let mut pairs = vec![("sourceIp".to_owned(), ip.to_owned())];
            if let Some(vpce) = vpce {
                pairs.push(("sourceVpce".to_owned(), vpce.to_owned()));
            }
            let json_context = serde_json::Value::Object(pairs.iter().map(|(k, v)| (k.clone(), json!(v))).collect());
            let fresh = Engine::new()
                .decide(
                    &snapshot,
                    &DecisionRequest::new(entity.uid(), action.clone(), resource.clone())
                        .with_context(json_context)
                        .with_entities(vec![entity.clone()]),
                )
                .unwrap();
            prop_assert!(!fresh.cached, "a question with entities of the caller's own is never kept");
            let context = context_from_strings(&snapshot, &action, &pairs).unwrap();
            let request = DecisionRequest::built(requester.clone(), action.clone(), resource.clone(), context);
            let kept = Engine::new().decide(&snapshot, &request).unwrap();
            prop_assert_eq!(kept.effect, fresh.effect, "{:?} {} {} {:?}", who, profile, ip, vpce);
            prop_assert_eq!(&kept.policies, &fresh.policies);
            prop_assert_eq!(kept.reason, fresh.reason);
        }
    }
}

/// The same question asked again is answered from the kept decision (so the property
/// above does exercise kept decisions), and a reload starts with none kept.
#[test]
fn a_repeated_question_is_answered_from_the_kept_decision() {
    let ws = crate::support::Workspace::shipped();
    let store = authz_sidecar::policy_store::PolicyStore::load_files(&ws.dirs()).unwrap();
    let action = uid(r#"Studio::Action::"CreatePresignedDomainUrl""#);
    let resource = uid(r#"Studio::UserProfile::"user-1-team1""#);
    let pairs = vec![
        ("sourceIp".to_owned(), "10.1.2.3".to_owned()),
        ("sourceVpce".to_owned(), "vpce-0a1a000000000001a".to_owned()),
    ];
    let ask = |snapshot: &PolicySnapshot| {
        let entity = principal("user-1", &["Team1"], "lob-a", snapshot);
        let requester = snapshot.request_principal([5; 32], || Ok::<_, std::convert::Infallible>(entity)).unwrap();
        let context = context_from_strings(snapshot, &action, &pairs).unwrap();
        Engine::new()
            .decide(snapshot, &DecisionRequest::built(requester, action.clone(), resource.clone(), context))
            .unwrap()
    };
    let snapshot = store.current().unwrap();
    // the first context goes through Cedar's parser (not kept); then typed, decided, kept
    let cached: Vec<bool> = (0..4).map(|_| ask(&snapshot).cached).collect();
    assert_eq!(cached, [false, false, true, true]);
    let again = ask(&snapshot);
    assert!(again.is_allowed() && again.cached, "{again:?}");
    assert_eq!(*again.policies, ["presign-own-profile"]);
    // a reload is a new snapshot: nothing kept
    ws.write_policy("extra.cedar", "@id(\"nothing-new\") forbid (principal, action, resource) when { false };");
    let outcome = authz_sidecar::policy_store::reload_once(&store, &ws.dirs());
    assert!(matches!(outcome, authz_sidecar::policy_store::ReloadOutcome::Published(_)), "{outcome:?}");
    let reloaded = store.current().unwrap();
    assert!(!std::sync::Arc::ptr_eq(&snapshot, &reloaded));
    assert!(!ask(&reloaded).cached);
}
