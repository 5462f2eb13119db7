//! The engine: fail-closed evaluation, entity slices equal to the whole store, and no
//! stale entities across snapshots.

use authz_sidecar::authz::{DecisionReason, DecisionRequest, Effect, Engine, QuestionContext, parse_entity_uid};
use authz_sidecar::policy_store::{PolicySnapshot, PolicyStore};
use cedar_policy::Entity;
use proptest::prelude::*;
use serde_json::json;

use crate::support::Workspace;

fn uid(text: &str) -> cedar_policy::EntityUid {
    parse_entity_uid(text).unwrap()
}

fn entity(json: serde_json::Value, snapshot: &PolicySnapshot) -> Entity {
    Entity::from_json_value(json, Some(snapshot.schema())).unwrap()
}

fn presign(principal: &str, profile: &str) -> DecisionRequest {
    DecisionRequest::new(
        uid(&format!("Studio::User::\"{principal}\"")),
        uid(r#"Studio::Action::"CreatePresignedDomainUrl""#),
        uid(&format!("Studio::UserProfile::\"{profile}\"")),
    )
    .with_context(json!({"sourceVpce": "vpce-0a1a000000000001a", "sourceIp": "10.1.2.3"}))
}

#[test]
fn an_evaluation_error_denies_even_when_a_permit_matches() {
    let ws = Workspace::shipped();
    let engine = Engine::new();
    let snapshot = PolicyStore::load_files(&ws.dirs()).unwrap().current().unwrap();
    // A profile in a LOB no entity defines: the permit holds (owner, team, and the user
    // is made a member of that LOB), but the VPC endpoint forbid cannot read the LOB's
    // endpoints and errors. Cedar alone would skip the erroring forbid and allow.
    let request = presign("user-1", "user-1-team1").with_entities(vec![
        entity(
            json!({"uid": {"type": "Studio::User", "id": "user-1"}, "attrs": {},
                   "parents": [{"type": "Studio::Team", "id": "Team1"}, {"type": "Studio::Lob", "id": "lob-z"}],
                   "tags": {"Team": ["Team1"]}}),
            &snapshot,
        ),
        entity(
            json!({"uid": {"type": "Studio::UserProfile", "id": "user-1-team1"},
                   "attrs": {"profileName": "user-1-team1", "owner": {"type": "Studio::User", "id": "user-1"},
                             "team": {"type": "Studio::Team", "id": "Team1"}, "lob": {"type": "Studio::Lob", "id": "lob-z"}},
                   "parents": [], "tags": {"Team": "Team1"}}),
            &snapshot,
        ),
    ]);
    let decision = engine.decide(&snapshot, &request).unwrap();
    assert_eq!(decision.effect, Effect::Deny);
    assert_eq!(decision.reason, DecisionReason::EvaluationError);
    assert_eq!(*decision.policies, ["presign-own-profile".to_owned()], "the permit did match");
    assert_eq!(decision.errors.len(), 1, "{:?}", decision.errors);
    assert_eq!(decision.errors[0].policy, "presign-only-through-lob-vpce");
}

#[test]
fn request_entities_must_fit_the_schema() {
    let ws = Workspace::shipped();
    let snapshot = PolicyStore::load_files(&ws.dirs()).unwrap().current().unwrap();
    // Built without a schema, so it is the engine that must refuse it.
    let bad = Entity::from_json_value(
        json!({"uid": {"type": "Studio::User", "id": "user-1"}, "attrs": {"email": 7}, "parents": []}),
        None,
    )
    .unwrap();
    let err = Engine::new().decide(&snapshot, &presign("user-1", "user-1-team1").with_entities(vec![bad])).unwrap_err();
    assert_eq!(err.kind(), "bad_entities", "{err}");
}

#[test]
fn a_new_snapshot_never_serves_entities_of_the_old_one() {
    let ws = Workspace::shipped();
    let store = PolicyStore::load_files(&ws.dirs()).unwrap();
    let engine = Engine::new();
    let snapshot = store.current().unwrap();
    // Through the slice path (a request entity present), so the old snapshot caches
    // user-1's slice.
    let team_entity = entity(
        json!({"uid": {"type": "Studio::Team", "id": "Team1"}, "attrs": {"executionRoleName": "x"}, "parents": [], "tags": {"Team": "Team1"}}),
        &snapshot,
    );
    let request = presign("user-1", "user-1-team1").with_entities(vec![team_entity]);
    assert_eq!(engine.decide(&snapshot, &request).unwrap().effect, Effect::Allow);
    assert!(snapshot.cached_slices() > 0);

    // user-1 leaves lob-a in the files; the new snapshot must see it at once.
    let users = std::fs::read_to_string(ws.entities().join("users.json")).unwrap();
    let moved =
        users.replacen(r#"{ "type": "Studio::Lob", "id": "lob-a" }"#, r#"{ "type": "Studio::Lob", "id": "lob-b" }"#, 1);
    assert_ne!(users, moved);
    ws.write_entities("users.json", &moved);
    store.publish(PolicySnapshot::load(&ws.dirs(), store.next_generation()).unwrap());

    let decision = engine.decide(&store.current().unwrap(), &request).unwrap();
    assert_eq!(decision.effect, Effect::Deny);
    assert_ne!(*decision.snapshot, snapshot.version().to_string());
    assert_eq!(store.current().unwrap().version().generation, 2);
}

/// A request shape that passed the schema check is found again from the request's own
/// parts (a borrowed lookup that must hash as the kept key does), and only that shape.
#[test]
fn a_checked_request_shape_is_found_from_the_requests_parts() {
    use authz_sidecar::policy_store::ContextValueKind;
    let ws = Workspace::shipped();
    let snapshot = PolicyStore::load_files(&ws.dirs()).unwrap().current().unwrap();
    let (user, profile) = (uid(r#"Studio::User::"user-1""#), uid(r#"Studio::UserProfile::"user-1-team1""#));
    let action = uid(r#"Studio::Action::"CreatePresignedDomainUrl""#);
    let shape: authz_sidecar::authz::ContextShape =
        vec![("sourceIp".to_owned(), ContextValueKind::Ip), ("sourceVpce".to_owned(), ContextValueKind::String)].into();
    let other: authz_sidecar::authz::ContextShape = vec![("sourceIp".to_owned(), ContextValueKind::String)].into();
    let known = |shape: &authz_sidecar::authz::ContextShape| {
        snapshot.request_shape_checked(user.type_name(), &action, profile.type_name(), shape)
    };
    assert!(!known(&shape));
    snapshot.remember_request_shape(user.type_name(), &action, profile.type_name(), &shape);
    assert!(known(&shape));
    assert!(!known(&other));
    assert!(!snapshot.request_shape_checked(profile.type_name(), &action, profile.type_name(), &shape));
}

/// A request entity set is kept and found again from the request's own parts (a
/// borrowed lookup that must hash as the kept key does), for exactly its principal and
/// roots; and with more checked entities than the borrowed lookup holds, still found.
#[test]
fn a_request_entity_set_is_found_again_from_the_requests_parts() {
    let ws = Workspace::shipped();
    let snapshot = PolicyStore::load_files(&ws.dirs()).unwrap().current().unwrap();
    let user = |id: &str| {
        let json = json!({"uid": {"type": "Studio::User", "id": id}, "attrs": {"email": format!("{id}@example.com")},
                          "parents": [{"type": "Studio::Team", "id": "Team1"}], "tags": {"Team": ["Team1"]}});
        entity(json, &snapshot)
    };
    let (token_user, profile) = (uid(r#"Studio::User::"token-user""#), uid(r#"Studio::UserProfile::"user-1-team1""#));
    // borrowed, as the engine has them; kept under owned copies, found again borrowed
    let roots = [&token_user, &profile];
    let principal = snapshot.request_principal([7; 32], || Ok::<_, String>(user("token-user"))).unwrap();
    let first = snapshot.request_entities(&[principal.as_ref()], &roots, &[]).unwrap();
    let again = snapshot.request_entities(&[principal.as_ref()], &roots, &[]).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again), "the kept set is found again");
    let other = snapshot.request_entities(&[principal.as_ref()], &roots[..1], &[]).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&first, &other), "other roots, another set");

    let many: Vec<_> = (0..=authz_sidecar::policy_store::LOOKUP_SERIALS)
        .map(|i| {
            let id = format!("other-{i}");
            std::sync::Arc::new(authz_sidecar::policy_store::CheckedEntity::new(user(&id)))
        })
        .collect();
    let many: Vec<_> = many.iter().map(std::sync::Arc::as_ref).collect();
    let first = snapshot.request_entities(&many, &roots, &[]).unwrap();
    let again = snapshot.request_entities(&many, &roots, &[]).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again), "more checked entities than the lookup holds");
}

/// The entity files are held as written, not as Cedar entities: a snapshot builds
/// Cedar entities only for what the policies name and what requests reach.
#[test]
fn only_the_entities_requests_reach_are_built() {
    let ws = Workspace::shipped();
    let accounts: Vec<serde_json::Value> = (0..2_000)
        .map(|i| {
            json!({"uid": {"type": "DataZone::Account", "id": format!("9{i:011}")},
                   "attrs": {"name": format!("gen-{i}"), "status": "AVAILABLE", "regions": ["us-east-1"],
                             "pool": {"type": "DataZone::AccountPool", "id": "pool-lob-a"},
                             "lob": {"type": "Studio::Lob", "id": "lob-a"}},
                   "parents": [{"type": "DataZone::AccountPool", "id": "pool-lob-a"}]})
        })
        .collect();
    ws.write_entities("generated.json", &serde_json::Value::Array(accounts).to_string());
    let snapshot = PolicyStore::load_files(&ws.dirs()).unwrap().current().unwrap();
    assert!(snapshot.entity_count() > 2_000);
    let at_load = snapshot.built_entities();
    assert!(at_load < 20, "only the policies' literal entities are built at load: {at_load}");

    let engine = Engine::new();
    let request = presign("user-1", "user-1-team1")
        .with_context(json!({"sourceVpce": "vpce-0a1a000000000001a", "sourceIp": "10.1.2.3"}));
    assert_eq!(engine.decide(&snapshot, &request).unwrap().effect, Effect::Allow);
    let after = snapshot.built_entities();
    assert!(after > at_load, "the request's slices were built");
    assert!(after < 40, "and nothing else: {after}");
    // the whole store, for tools, is every entity again
    let whole = snapshot.all_entities().unwrap();
    assert_eq!(whole.iter().filter(|e| e.uid().type_name().basename() != "Action").count(), snapshot.entity_count());
}

/// A slice follows every entity it reaches, not only its root's references: what an
/// attribute points at has attributes and parents of its own that policies read.
#[test]
fn slices_follow_references_of_references() {
    let ws = Workspace::shipped();
    ws.write_policy(
        "docs.cedarschema",
        "namespace Extra {\n  entity Group in [Group] = { flag: Bool };\n  entity Person in [Group] = { team: Group };\n  \
         entity Doc = { owner: Person };\n  action read appliesTo { principal: Person, resource: Doc };\n}\n",
    );
    ws.write_policy(
        "docs.cedar",
        "@id(\"flagged-team\") permit (principal, action == Extra::Action::\"read\", resource) \
         when { resource.owner.team.flag };\n\
         @id(\"not-under-top\") forbid (principal, action == Extra::Action::\"read\", resource) \
         when { resource.owner in Extra::Group::\"top\" };\n",
    );
    let entities = |owner_parent: &str| {
        json!([
            {"uid": {"type": "Extra::Group", "id": "top"}, "attrs": {"flag": false}, "parents": []},
            {"uid": {"type": "Extra::Group", "id": "mid"}, "attrs": {"flag": true},
             "parents": [{"type": "Extra::Group", "id": "top"}]},
            {"uid": {"type": "Extra::Group", "id": "side"}, "attrs": {"flag": true}, "parents": []},
            {"uid": {"type": "Extra::Person", "id": "owner"}, "attrs": {"team": {"type": "Extra::Group", "id": "mid"}},
             "parents": [{"type": "Extra::Group", "id": owner_parent}]},
            {"uid": {"type": "Extra::Person", "id": "reader"}, "attrs": {"team": {"type": "Extra::Group", "id": "side"}},
             "parents": []},
            {"uid": {"type": "Extra::Doc", "id": "d"}, "attrs": {"owner": {"type": "Extra::Person", "id": "owner"}}, "parents": []},
        ])
        .to_string()
    };
    let request = DecisionRequest::new(
        uid(r#"Extra::Person::"reader""#),
        uid(r#"Extra::Action::"read""#),
        uid(r#"Extra::Doc::"d""#),
    );
    // the owner's team (mid) is flagged: permitted, as Cedar says over the whole store
    // (the slice of `d` reaches `owner` through an attribute, and `mid` only through it)
    ws.write_entities("docs.json", &entities("side"));
    let snapshot = PolicySnapshot::load(&ws.dirs(), 1).unwrap();
    let ours = Engine::new().decide(&snapshot, &request).unwrap();
    assert_eq!(ours.effect, Effect::Allow, "{ours:?}");
    assert!(ours.errors.is_empty(), "{ours:?}");
    // the owner under mid, which is under top: forbidden, through two parents that only
    // an attribute's entity leads to
    ws.write_entities("docs.json", &entities("mid"));
    let snapshot = PolicySnapshot::load(&ws.dirs(), 2).unwrap();
    let ours = Engine::new().decide(&snapshot, &request).unwrap();
    assert_eq!(ours.effect, Effect::Deny, "{ours:?}");
    assert_eq!(*ours.policies, ["not-under-top"]);
}

/// The hierarchy is closed over the entity files as Cedar closes it, however deep, and
/// a cycle fails the load, naming an entity on it.
#[test]
fn the_entity_hierarchy_is_closed_and_a_cycle_fails_the_load() {
    let ws = Workspace::shipped();
    ws.write_policy("groups.cedarschema", "namespace Extra { entity Group in [Group]; }\n");
    let chain: Vec<serde_json::Value> = (0..12)
        .map(|i| {
            json!({"uid": {"type": "Extra::Group", "id": format!("g{i}")}, "attrs": {},
                   "parents": if i < 11 { vec![json!({"type": "Extra::Group", "id": format!("g{}", i + 1)})] } else { vec![] }})
        })
        .collect();
    ws.write_entities("groups.json", &serde_json::Value::Array(chain.clone()).to_string());
    let snapshot = PolicySnapshot::load(&ws.dirs(), 1).unwrap();
    let group = |i: usize| uid(&format!("Extra::Group::\"g{i}\""));
    assert!(snapshot.is_stored_ancestor(&group(11), &group(0)), "the top of the chain is above the bottom");
    assert!(snapshot.is_stored_ancestor(&group(5), &group(4)));
    assert!(!snapshot.is_stored_ancestor(&group(0), &group(11)), "not the other way");
    assert!(!snapshot.is_stored_ancestor(&group(3), &group(3)), "nor itself");
    let whole = snapshot.all_entities().unwrap();
    for i in 0..12 {
        for j in 0..12 {
            assert_eq!(snapshot.is_stored_ancestor(&group(j), &group(i)), whole.is_ancestor_of(&group(j), &group(i)));
        }
    }

    // g11 back to g0: a cycle of twelve
    let mut cycle = chain;
    cycle[11]["parents"] = json!([{"type": "Extra::Group", "id": "g0"}]);
    ws.write_entities("groups.json", &serde_json::Value::Array(cycle).to_string());
    let err = PolicySnapshot::load(&ws.dirs(), 2).unwrap_err().to_string();
    assert!(err.contains("is its own ancestor") && err.contains("Extra::Group::"), "{err}");
    assert!(err.contains("groups.json"), "names the file: {err}");
    // and an entity that is its own parent
    ws.write_entities("groups.json", r#"[{"uid": {"type": "Extra::Group", "id": "self"}, "attrs": {}, "parents": [{"type": "Extra::Group", "id": "self"}]}]"#);
    let err = PolicySnapshot::load(&ws.dirs(), 3).unwrap_err().to_string();
    assert!(err.contains(r#"Extra::Group::"self"` is its own ancestor"#), "{err}");
}

/// Every request the shipped tables talk about, in all combinations.
fn principals() -> Vec<&'static str> {
    vec![
        r#"Studio::User::"user-1""#,
        r#"Studio::User::"user-2""#,
        r#"DataZone::User::"4b89ed84-9842-45dd-a2e5-15e49eda2b03""#,
        r#"DataZone::User::"9d2f6c1e-37a4-4b0e-8f5a-6c7d8e9f0a1b""#,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Deciding over a slice of the entities (the path every request with its own
    /// entities takes) gives exactly the answer of the whole store.
    #[test]
    fn slices_decide_exactly_like_the_whole_store(
        principal in prop::sample::select(principals()),
        profile in prop::sample::select(vec!["user-1-team1", "user-1-team2", "user-2-team2", "nobody"]),
        account in prop::sample::select(vec!["004878717744", "111122223333", "333333333333", "444444444444",
                                             "555555555555", "666666666666", "777777777777", "000000000000"]),
        region in prop::sample::select(vec!["us-east-1", "us-east-2", "us-west-2", "eu-west-1"]),
        vpce in prop::sample::select(vec!["vpce-0a1a000000000001a", "vpce-0b2b000000000001b", "vpce-x"]),
        ip in prop::sample::select(vec!["10.1.2.3", "172.20.0.1", "192.168.0.1"]),
        domain in prop::sample::select(vec!["dzd-4igt64u5j25ko9", "dzd-0therdomain01"]),
    ) {
        let ws = shared_workspace();
        let snapshot = ws.1.current().unwrap();
        let engine = Engine::new();
        let principal_uid = uid(principal);
        let request = if principal.starts_with("Studio") {
            DecisionRequest::new(principal_uid.clone(), uid(r#"Studio::Action::"CreatePresignedDomainUrl""#),
                uid(&format!("Studio::UserProfile::\"{profile}\"")))
                .with_context(json!({"sourceVpce": vpce, "sourceIp": ip}))
        } else {
            DecisionRequest::new(principal_uid.clone(), uid(r#"DataZone::Action::"UseAccount""#),
                uid(&format!("DataZone::Account::\"{account}\"")))
                .with_context(json!({"regionName": region, "domainIdentifier": domain}))
        };
        let whole = engine.decide(&snapshot, &request).unwrap();
        // Cedar itself, over every policy and every entity: the engine's per-action
        // policy subsets must not change its answer.
        let QuestionContext::Json(json) = &request.context else { panic!("a JSON context") };
        let context = cedar_policy::Context::from_json_value(json.clone(), Some((snapshot.schema(), &request.action))).unwrap();
        let cedar_request = cedar_policy::Request::new(request.principal.uid().clone(), request.action.clone(),
            request.resource.clone(), context, Some(snapshot.schema())).unwrap();
        let cedar = cedar_policy::Authorizer::new().is_authorized(&cedar_request, snapshot.policies(), &snapshot.all_entities().unwrap());
        let mut cedar_reasons: Vec<String> = cedar.diagnostics().reason().map(ToString::to_string).collect();
        cedar_reasons.sort();
        prop_assert_eq!(&cedar_reasons[..], &whole.policies[..]);
        prop_assert_eq!(cedar.diagnostics().errors().count(), whole.errors.len());
        // The stored principal, handed back as a request entity: same data, slice path.
        let stored = cedar_policy::Entity::clone(&snapshot.stored_entity(&principal_uid).unwrap().unwrap());
        let sliced = engine.decide(&snapshot, &request.clone().with_entities(vec![stored])).unwrap();
        prop_assert_eq!(whole.effect, sliced.effect);
        prop_assert_eq!(whole.reason, sliced.reason);
        prop_assert_eq!(whole.policies, sliced.policies);
        prop_assert_eq!(whole.errors.len(), sliced.errors.len());
    }
}

fn shared_workspace() -> &'static (Workspace, PolicyStore) {
    static WS: std::sync::OnceLock<(Workspace, PolicyStore)> = std::sync::OnceLock::new();
    WS.get_or_init(|| {
        let ws = Workspace::shipped();
        let store = PolicyStore::load_files(&ws.dirs()).unwrap();
        (ws, store)
    })
}

#[test]
fn entities_named_in_policies_are_part_of_every_slice() {
    let ws = Workspace::shipped();
    // A forbid that reads an attribute of an entity named only in the policy text: if
    // the slice left lob-b out, the forbid would error instead of matching.
    ws.write_policy(
        "literal.cedar",
        "@id(\"not-through-lob-b-endpoints\")\nforbid (principal, action == Studio::Action::\"CreatePresignedDomainUrl\", resource)\n\
         when { context has sourceVpce && Studio::Lob::\"lob-b\".vpceIds.contains(context.sourceVpce) };\n",
    );
    let engine = Engine::new();
    let snapshot = PolicyStore::load_files(&ws.dirs()).unwrap().current().unwrap();
    // user-1 and their profile are in lob-a: nothing they reach leads to lob-b.
    let request = presign("user-1", "user-1-team1")
        .with_context(json!({"sourceVpce": "vpce-0b2b000000000001b", "sourceIp": "10.1.2.3"}));
    let whole = engine.decide(&snapshot, &request).unwrap();
    let stored = cedar_policy::Entity::clone(&snapshot.stored_entity(request.principal.uid()).unwrap().unwrap());
    let sliced = engine.decide(&snapshot, &request.clone().with_entities(vec![stored])).unwrap();
    assert_eq!(*whole.policies, ["not-through-lob-b-endpoints".to_owned(), "presign-only-through-lob-vpce".to_owned()]);
    assert_eq!(sliced.policies, whole.policies);
    assert!(sliced.errors.is_empty(), "{:?}", sliced.errors);
    assert_eq!(sliced.reason, DecisionReason::Forbidden);
}

/// The stored entities of a type are exactly those the entity files define, sorted by
/// id whatever the files' order, without a uid that is only pointed at.
#[test]
fn the_entities_of_a_type_are_the_defined_ones_sorted_by_id() {
    let ws = Workspace::shipped();
    ws.write_policy("groups.cedarschema", "namespace Extra { entity Group in [Group]; entity Other; }\n");
    let group = |id: &str, parent: &str| json!({"uid": {"type": "Extra::Group", "id": id}, "attrs": {}, "parents": [{"type": "Extra::Group", "id": parent}]});
    let written = json!([group("m", "a"), group("z", "only-pointed-at"), group("a", "only-pointed-at"), group("b-2", "a"),
        {"uid": {"type": "Extra::Other", "id": "0"}, "attrs": {}, "parents": []}]);
    ws.write_entities("groups.json", &written.to_string());
    let snapshot = PolicySnapshot::load(&ws.dirs(), 1).unwrap();
    let ids = |type_name: &str| -> Vec<String> {
        let of_type = snapshot.entities_of_type(&type_name.parse().unwrap());
        let ids: Vec<String> = of_type.iter().map(|u| u.id().unescaped().to_owned()).collect();
        assert_eq!(ids.len(), of_type.len());
        ids
    };
    assert_eq!(ids("Extra::Group"), ["a", "b-2", "m", "z"]);
    assert_eq!(ids("Extra::Other"), ["0"]);
    assert!(snapshot.entities_of_type(&"Extra::Missing".parse().unwrap()).is_empty());
    // every type agrees with Cedar's own store of the same files
    let whole = snapshot.all_entities().unwrap();
    let mut from_cedar: Vec<String> = whole
        .iter()
        .filter(|e| e.uid().type_name().to_string() == "Extra::Group")
        .map(|e| e.uid().id().unescaped().to_owned())
        .collect();
    from_cedar.sort();
    assert_eq!(ids("Extra::Group"), from_cedar);
}
