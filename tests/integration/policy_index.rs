//! The scope index: a request is evaluated over the policies whose principal, action
//! and resource scopes hold for it, and the answer must be exactly Cedar's over the
//! whole set. Random policy sets over a random hierarchy: every scope form (`==`, `in`,
//! `is`, `is ... in`, unscoped), action groups and action lists, conditions that test
//! membership in sets, conditions that error, and template-linked policies (as Verified
//! Permissions stores them), asked by stored principals, unknown ones, and principals
//! built from tokens.

use std::collections::HashMap;

use authz_sidecar::authz::{DecisionRequest, Engine};
use authz_sidecar::policy_store::{PolicyParts, PolicySnapshot, SnapshotSource, SourceFile};
use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityUid, Policy, PolicyId, PolicySet, Request, Schema, SlotId, Template,
};
use proptest::prelude::*;
use serde_json::json;

const SCHEMA: &str = r#"
namespace Idx {
  entity Group;
  entity Team in [Group];
  entity User in [Team, Group];
  entity Admin in [Group];
  entity Folder in [Folder];
  entity Doc in [Folder] { owner?: User };
  action manage;
  action read, write in [manage] appliesTo {
    principal: [User, Admin, Team], resource: [Doc, Folder], context: { n: Long }
  };
  action share appliesTo {
    principal: [User, Admin, Team], resource: [Doc, Folder], context: { n: Long }
  };
}
"#;

fn uid(ty: &str, id: impl std::fmt::Display) -> String {
    format!("Idx::{ty}::\"{id}\"")
}

fn parse_uid(text: &str) -> EntityUid {
    text.parse().unwrap()
}

/// A principal scope, by number.
fn principal_scope(kind: u8, n: u8) -> String {
    match kind % 8 {
        0 => "principal".to_owned(),
        1 => format!("principal == {}", uid("User", format!("u{}", n % 4))),
        2 => format!("principal in {}", uid("Team", format!("t{}", n % 3))),
        3 => format!("principal in {}", uid("Group", format!("g{}", n % 2))),
        4 => "principal is Idx::User".to_owned(),
        5 => format!("principal is Idx::User in {}", uid("Team", format!("t{}", n % 3))),
        6 => format!("principal is Idx::Admin in {}", uid("Group", format!("g{}", n % 2))),
        _ => format!("principal == {}", uid("Team", format!("t{}", n % 3))),
    }
}

fn action_scope(kind: u8) -> &'static str {
    match kind % 5 {
        0 => "action",
        1 => "action == Idx::Action::\"read\"",
        2 => "action in [Idx::Action::\"read\", Idx::Action::\"share\"]",
        3 => "action in Idx::Action::\"manage\"",
        _ => "action == Idx::Action::\"share\"",
    }
}

fn resource_scope(kind: u8, n: u8) -> String {
    match kind % 6 {
        0 => "resource".to_owned(),
        1 => format!("resource == {}", uid("Doc", format!("d{}", n % 4))),
        2 => format!("resource in {}", uid("Folder", format!("f{}", n % 3))),
        3 => "resource is Idx::Doc".to_owned(),
        4 => format!("resource is Idx::Doc in {}", uid("Folder", format!("f{}", n % 3))),
        _ => format!("resource == {}", uid("Folder", format!("f{}", n % 3))),
    }
}

fn condition(kind: u8, n: u8) -> String {
    match kind % 8 {
        0 => String::new(),
        1 => format!(
            " when {{ principal in [{}, {}] }}",
            uid("Team", format!("t{}", n % 3)),
            uid("Team", format!("t{}", (n / 3) % 3))
        ),
        2 => " when { resource is Idx::Doc && resource has owner && resource.owner == principal }".to_owned(),
        // errors for n > 7 (overflow): an error must deny whatever else matched
        3 => " when { context.n + 9223372036854775800 > 0 }".to_owned(),
        // read the context without erroring, alone or with the entities
        5 => format!(" when {{ context.n > {} }}", n % 10),
        6 => format!(
            " unless {{ context has n && context.n == {} || principal in {} }}",
            n % 10,
            uid("Team", format!("t{}", n % 3))
        ),
        // names the context only in a string: reads nothing of it
        7 => " when { \"context.n\" like \"context*\" && resource has owner }".to_owned(),
        _ => format!(" unless {{ resource in {} }}", uid("Folder", format!("f{}", n % 3))),
    }
}

type PolicySpec = (bool, u8, u8, u8, u8, u8, u8);

fn policy_text(i: usize, spec: &PolicySpec) -> String {
    let &(permit, p, pn, a, r, rn, c) = spec;
    let effect = if permit { "permit" } else { "forbid" };
    format!(
        "@id(\"p{i}\")\n{effect} ({}, {}, {}){};\n",
        principal_scope(p, pn),
        action_scope(a),
        resource_scope(r, rn),
        condition(c, pn.wrapping_add(rn))
    )
}

/// The templates, and links: (template, principal slot, resource slot).
const TEMPLATES: [&str; 4] = [
    "permit (principal == ?principal, action == Idx::Action::\"read\", resource in ?resource);",
    "forbid (principal in ?principal, action, resource);",
    "permit (principal is Idx::User in ?principal, action in Idx::Action::\"manage\", resource == ?resource);",
    "forbid (principal in ?principal, action, resource in ?resource) when { context.n == 4 };",
];

type LinkSpec = (u8, u8, u8);

fn link_values(spec: &LinkSpec) -> (usize, HashMap<SlotId, EntityUid>) {
    let &(template, p, r) = spec;
    let template = usize::from(template) % TEMPLATES.len();
    let principal = match (template, p % 3) {
        (0, _) => uid("User", format!("u{}", p % 4)),
        (_, 0) => uid("Team", format!("t{}", p % 3)),
        (_, 1) => uid("Group", format!("g{}", p % 2)),
        _ => uid("User", format!("u{}", p % 4)),
    };
    let resource = match (template, r % 2) {
        (0, _) => uid("Folder", format!("f{}", r % 3)),
        (_, 0) => uid("Doc", format!("d{}", r % 4)),
        _ => uid("Folder", format!("f{}", r % 3)),
    };
    let mut slots = HashMap::new();
    slots.insert(SlotId::principal(), parse_uid(&principal));
    if template != 1 {
        slots.insert(SlotId::resource(), parse_uid(&resource));
    }
    (template, slots)
}

/// The hierarchy: each user's teams and groups, each team's groups, each doc's folders
/// and owner, whether f1 and f2 sit in f0.
#[derive(Debug, Clone)]
struct World {
    users: Vec<(Vec<bool>, Vec<bool>)>,
    teams: Vec<Vec<bool>>,
    docs: Vec<(Vec<bool>, Option<u8>)>,
    nested: (bool, bool),
}

fn world() -> impl Strategy<Value = World> {
    let users =
        prop::collection::vec((prop::collection::vec(any::<bool>(), 3), prop::collection::vec(any::<bool>(), 2)), 4);
    let teams = prop::collection::vec(prop::collection::vec(any::<bool>(), 2), 3);
    let docs = prop::collection::vec((prop::collection::vec(any::<bool>(), 3), prop::option::of(0u8..5)), 4);
    (users, teams, docs, any::<(bool, bool)>()).prop_map(|(users, teams, docs, nested)| World {
        users,
        teams,
        docs,
        nested,
    })
}

fn parents(ty: &str, prefix: &str, on: &[bool]) -> Vec<serde_json::Value> {
    on.iter()
        .enumerate()
        .filter(|(_, on)| **on)
        .map(|(i, _)| json!({"type": format!("Idx::{ty}"), "id": format!("{prefix}{i}")}))
        .collect()
}

fn entities_json(world: &World) -> serde_json::Value {
    let mut out = Vec::new();
    for g in 0..2 {
        out.push(json!({"uid": {"type": "Idx::Group", "id": format!("g{g}")}, "attrs": {}, "parents": []}));
    }
    for (t, groups) in world.teams.iter().enumerate() {
        out.push(json!({"uid": {"type": "Idx::Team", "id": format!("t{t}")}, "attrs": {},
                        "parents": parents("Group", "g", groups)}));
    }
    for (u, (teams, groups)) in world.users.iter().enumerate() {
        let mut p = parents("Team", "t", teams);
        p.extend(parents("Group", "g", groups));
        out.push(json!({"uid": {"type": "Idx::User", "id": format!("u{u}")}, "attrs": {}, "parents": p}));
    }
    out.push(json!({"uid": {"type": "Idx::Admin", "id": "a0"}, "attrs": {}, "parents": [{"type": "Idx::Group", "id": "g1"}]}));
    let f0 = json!([{"type": "Idx::Folder", "id": "f0"}]);
    out.push(json!({"uid": {"type": "Idx::Folder", "id": "f0"}, "attrs": {}, "parents": []}));
    out.push(json!({"uid": {"type": "Idx::Folder", "id": "f1"}, "attrs": {}, "parents": if world.nested.0 { f0.clone() } else { json!([]) }}));
    out.push(json!({"uid": {"type": "Idx::Folder", "id": "f2"}, "attrs": {}, "parents": if world.nested.1 { f0 } else { json!([]) }}));
    for (d, (folders, owner)) in world.docs.iter().enumerate() {
        let mut doc = json!({"uid": {"type": "Idx::Doc", "id": format!("d{d}")}, "attrs": {},
                             "parents": parents("Folder", "f", folders)});
        if let Some(owner) = owner {
            // u4 does not exist: an owner no entity has
            doc["attrs"]["owner"] = json!({"type": "Idx::User", "id": format!("u{owner}")});
        }
        out.push(doc);
    }
    serde_json::Value::Array(out)
}

fn snapshot(world: &World, policies: &[PolicySpec], links: &[LinkSpec]) -> PolicySnapshot {
    let schema = Schema::from_cedarschema_str(SCHEMA).unwrap().0;
    let mut set = PolicySet::new();
    for (i, spec) in policies.iter().enumerate() {
        set.add(Policy::parse(Some(PolicyId::new(format!("p{i}"))), policy_text(i, spec)).unwrap()).unwrap();
    }
    for (i, text) in TEMPLATES.iter().enumerate() {
        set.add_template(Template::parse(Some(PolicyId::new(format!("template-{i}"))), *text).unwrap()).unwrap();
    }
    for (i, spec) in links.iter().enumerate() {
        let (template, slots) = link_values(spec);
        set.link(PolicyId::new(format!("template-{template}")), PolicyId::new(format!("link-{i}")), slots).unwrap();
    }
    let parts = PolicyParts {
        schema,
        policies: set,
        policy_origins: HashMap::new(),
        statement_offsets: HashMap::new(),
        policy_texts: &[],
    };
    let entities = [SourceFile { path: "world.json".into(), text: entities_json(world).to_string() }];
    let source = SnapshotSource::VerifiedPermissions { policy_store_id: "ps-index".into(), entities: "world".into() };
    PolicySnapshot::from_parts(parts, &entities, "digest", source, 1).unwrap()
}

/// Cedar's own answer over every policy: (decision, sorted reasons, sorted policies
/// that failed).
fn cedar(snapshot: &PolicySnapshot, request: &Request, entities: &Entities) -> (bool, Vec<String>, Vec<String>) {
    let response = Authorizer::new().is_authorized(request, snapshot.policies(), entities);
    let mut reasons: Vec<String> = response.diagnostics().reason().map(ToString::to_string).collect();
    reasons.sort();
    let mut errors: Vec<String> = response
        .diagnostics()
        .errors()
        .map(|cedar_policy::AuthorizationError::PolicyEvaluationError(e)| e.policy_id().to_string())
        .collect();
    errors.sort();
    (response.decision() == cedar_policy::Decision::Allow, reasons, errors)
}

fn failed(decision: &authz_sidecar::authz::Decision) -> Vec<String> {
    decision.errors.iter().map(|e| e.policy.clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn deciding_over_the_indexed_policies_is_deciding_over_all_of_them(
        world in world(),
        policies in prop::collection::vec(
            (any::<bool>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()), 0..24),
        links in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 0..6),
        asks in prop::collection::vec((0u8..9, 0u8..3, 0u8..8, 0i64..10, 0i64..10), 1..8),
        built_teams in prop::collection::vec(any::<bool>(), 3),
    ) {
        let snapshot = snapshot(&world, &policies, &links);
        let engine = Engine::new();
        let principals = ["User::\"u0\"", "User::\"u1\"", "User::\"u2\"", "User::\"u3\"", "User::\"u9\"",
                          "Admin::\"a0\"", "Team::\"t0\"", "Team::\"t2\"", "Team::\"t9\""];
        let actions = ["read", "write", "share"];
        let resources = ["Doc::\"d0\"", "Doc::\"d1\"", "Doc::\"d2\"", "Doc::\"d3\"", "Doc::\"d9\"",
                         "Folder::\"f0\"", "Folder::\"f1\"", "Folder::\"f2\""];
        // each question twice, with two contexts: the second is decided over what the
        // first settled for its principal, resource and action
        for (p, a, r, first, second) in asks {
            for n in [first, second] {
                let principal = parse_uid(&format!("Idx::{}", principals[usize::from(p)]));
                let action = parse_uid(&format!("Idx::Action::\"{}\"", actions[usize::from(a)]));
                let resource = parse_uid(&format!("Idx::{}", resources[usize::from(r)]));
                let context = json!({"n": n});

                // a stored (or unknown) principal, over the snapshot's entities
                let request = DecisionRequest::new(principal.clone(), action.clone(), resource.clone())
                    .with_context(context.clone());
                let ours = engine.decide(&snapshot, &request).unwrap();
                let cedar_context = Context::from_json_value(context.clone(), Some((snapshot.schema(), &action))).unwrap();
                let cedar_request = Request::new(principal.clone(), action.clone(), resource.clone(),
                    cedar_context.clone(), Some(snapshot.schema())).unwrap();
                let whole = snapshot.all_entities().unwrap();
                let (allowed, reasons, errors) = cedar(&snapshot, &cedar_request, &whole);
                prop_assert_eq!(ours.is_allowed(), allowed && errors.is_empty(), "{:?}", ours);
                prop_assert_eq!(&ours.policies[..], &reasons[..]);
                prop_assert_eq!(failed(&ours), errors);

                // a principal built from a token: a user no entity file has, with the
                // token's teams as parents (the data plane's path)
                let built = Entity::from_json_value(json!({
                    "uid": {"type": "Idx::User", "id": "token-user"}, "attrs": {},
                    "parents": parents("Team", "t", &built_teams),
                }), Some(snapshot.schema())).unwrap();
                let mut digest = [0u8; 32];
                digest[0] = p;
                let asker = snapshot.request_principal(digest, || Ok::<_, std::convert::Infallible>(built.clone())).unwrap();
                let typed = Context::from_json_value(context.clone(), Some((snapshot.schema(), &action))).unwrap();
                let ours = engine.decide(&snapshot, &DecisionRequest::built(asker, action.clone(), resource.clone(), typed)).unwrap();
                let with_built = whole.clone().add_entities([built.clone()], None).unwrap();
                let cedar_request = Request::new(built.uid(), action.clone(), resource.clone(), cedar_context,
                    Some(snapshot.schema())).unwrap();
                let (allowed, reasons, errors) = cedar(&snapshot, &cedar_request, &with_built);
                prop_assert_eq!(ours.is_allowed(), allowed && errors.is_empty(), "{:?}", ours);
                prop_assert_eq!(&ours.policies[..], &reasons[..]);
                prop_assert_eq!(failed(&ours), errors);
            }
        }
    }
}

/// The policies the index selects for `read` by `principal` on `resource` (type, id).
fn selected(
    snapshot: &PolicySnapshot,
    principal: (&str, &str),
    resource: (&str, &str),
) -> std::sync::Arc<authz_sidecar::policy_store::Selection> {
    snapshot.policies_applying(
        &parse_uid("Idx::Action::\"read\""),
        &parse_uid(&uid(principal.0, principal.1)),
        &parse_uid(&uid(resource.0, resource.1)),
        &snapshot.all_entities().unwrap(),
    )
}

fn sorted_ids(set: &PolicySet) -> Vec<String> {
    let mut ids: Vec<String> = set.policies().map(|p| p.id().to_string()).collect();
    ids.sort();
    ids
}

/// The index selects: of many team-scoped policies, a request evaluates those its
/// principal's teams and its resource's folders can match, plus the unscoped ones.
#[test]
fn only_the_policies_whose_scopes_can_hold_are_evaluated() {
    let world = World {
        users: vec![(vec![true, false, false], vec![false, false]); 4],
        teams: vec![vec![false, true]; 3],
        docs: vec![(vec![false, true, false], None); 4],
        nested: (true, false),
    };
    // 60 policies: principal in t0 / t1 / t2 (kind 2) or in g0 / g1 (kind 3), on any
    // resource (kind 0) or in f0 / f1 / f2 (kind 2); and one unscoped policy
    let mut policies: Vec<PolicySpec> = Vec::new();
    for i in 0..60u8 {
        let (p, pn) = if i % 2 == 0 { (2, i / 2) } else { (3, i / 2) };
        let (r, rn) = if i % 3 == 0 { (0, 0) } else { (2, i / 3) };
        policies.push((i % 4 != 0, p, pn, 1, r, rn, 0));
    }
    policies.push((true, 0, 0, 0, 0, 0, 0));
    let snapshot = snapshot(&world, &policies, &[(0, 0, 1), (1, 2, 0)]);
    // u0 is in t0 and (through t0) g1; d0 is in f1, which is in f0
    let applying = selected(&snapshot, ("User", "u0"), ("Doc", "d0"));
    let ids = sorted_ids(&applying.all().unwrap());
    let expected: Vec<String> = {
        let mut expected: Vec<String> = (0..60u8)
            .filter(|i| {
                let team_ok = if i % 2 == 0 { (i / 2) % 3 == 0 } else { (i / 2) % 2 == 1 };
                let folder_ok = i % 3 == 0 || matches!((i / 3) % 3, 0 | 1);
                team_ok && folder_ok
            })
            .map(|i| format!("p{i}"))
            .collect();
        expected.push("p60".to_owned());
        // link-0: template 0 linked to u0 and f1 (read); link-1 (template 1) names t2
        expected.push("link-0".to_owned());
        expected.sort();
        expected
    };
    assert_eq!(ids, expected);
    assert!(ids.len() < 30, "{} of {} policies", ids.len(), snapshot.policies().policies().count());
    // and the linked policy's template came along
    assert_eq!(applying.all().unwrap().templates().count(), 1);
}

/// Which policies are evaluated again for every context: those that name `context`
/// anywhere (a `when`, an `unless`, a template's condition), and not those that only
/// mention the word.
#[test]
fn the_policies_that_read_the_context_are_told_apart() {
    let world = World {
        users: vec![(vec![true, false, false], vec![false, false]); 4],
        teams: vec![vec![false, true]; 3],
        docs: vec![(vec![true, false, false], Some(0)); 4],
        nested: (false, false),
    };
    // all unscoped on `read`, conditions 0 (none), 3 (context), 5 (context), 6 (context
    // in an `unless`), 7 (the word in a string), 2 (entities only)
    let policies: Vec<PolicySpec> = [0u8, 3, 5, 6, 7, 2].iter().map(|&c| (true, 0, 0, 1, 0, 0, c)).collect();
    // template 3 reads the context; template 0 does not
    // (in t0 and f1; u0 and f1)
    let snapshot = snapshot(&world, &policies, &[(3, 0, 1), (0, 0, 1)]);
    let selection = selected(&snapshot, ("User", "u0"), ("Folder", "f1"));
    assert_eq!(sorted_ids(selection.contextual()), ["link-0", "p1", "p2", "p3"]);
    assert_eq!(sorted_ids(selection.context_free()), ["link-1", "p0", "p4", "p5"]);
    assert_eq!(sorted_ids(&selection.all().unwrap()).len(), 8);
}
