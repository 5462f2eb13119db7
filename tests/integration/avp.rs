//! Verified Permissions as a policy source, and `avp push`/`avp pull`, against a fake
//! policy store served through `aws-smithy-mocks`: every operation is the SDK's real
//! request/response code path; the rules answer from one in-memory store, page the list
//! operations by `nextToken`, count calls, and inject service errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authz_sidecar::authz::{DecisionRequest, Effect, Engine, parse_entity_uid};
use authz_sidecar::avp::mirror::{self, Mirror};
use authz_sidecar::avp::refresh::StoreSource;
use authz_sidecar::avp::{AvpError, push};
use authz_sidecar::cli::avp::{pull_to_files, push_to_store};
use authz_sidecar::policy_store::{
    EntitySources, PolicySnapshot, PolicySource, PolicyStore, ReloadOutcome, SourceDirs, SourceError, Sources,
    lifecycle,
};
use aws_sdk_verifiedpermissions::Client;
use aws_sdk_verifiedpermissions::error::ErrorMetadata;
use aws_sdk_verifiedpermissions::operation::batch_get_policy::{BatchGetPolicyError, BatchGetPolicyOutput};
use aws_sdk_verifiedpermissions::operation::create_policy::{CreatePolicyError, CreatePolicyOutput};
use aws_sdk_verifiedpermissions::operation::delete_policy::{DeletePolicyError, DeletePolicyOutput};
use aws_sdk_verifiedpermissions::operation::get_policy_template::{GetPolicyTemplateError, GetPolicyTemplateOutput};
use aws_sdk_verifiedpermissions::operation::get_schema::{GetSchemaError, GetSchemaOutput};
use aws_sdk_verifiedpermissions::operation::list_policies::{ListPoliciesError, ListPoliciesOutput};
use aws_sdk_verifiedpermissions::operation::list_policy_templates::{
    ListPolicyTemplatesError, ListPolicyTemplatesOutput,
};
use aws_sdk_verifiedpermissions::operation::put_schema::{PutSchemaError, PutSchemaOutput};
use aws_sdk_verifiedpermissions::operation::update_policy::{UpdatePolicyError, UpdatePolicyOutput};
use aws_sdk_verifiedpermissions::primitives::DateTime;
use aws_sdk_verifiedpermissions::types::{
    BatchGetPolicyOutputItem, EntityIdentifier, PolicyDefinition, PolicyDefinitionDetail, PolicyItem,
    PolicyTemplateItem, PolicyType, SchemaDefinition, StaticPolicyDefinitionDetail,
    TemplateLinkedPolicyDefinitionDetail, UpdatePolicyDefinition,
};
use aws_smithy_mocks::{MockResponse, RuleMode, mock, mock_client};

use crate::support::{Workspace, repo_root};

const STORE: &str = "PSEXAMPLEabcdefg111111";

#[derive(Debug, Clone)]
enum Def {
    Static(String),
    Linked { template: String, principal: (String, String), resource: Option<(String, String)> },
}

#[derive(Debug, Clone)]
struct StoredPolicy {
    def: Def,
    name: Option<String>,
    updated: i64,
}

/// The fake store and what was asked of it.
#[derive(Debug, Default)]
struct Store {
    schema: Option<String>,
    templates: BTreeMap<String, (String, i64)>,
    policies: BTreeMap<String, StoredPolicy>,
    next_id: u32,
    clock: i64,
    /// The error code every call answers with while set.
    failing: Option<&'static str>,
    calls: Vec<&'static str>,
}

impl Store {
    fn count(&self, operation: &str) -> usize {
        self.calls.iter().filter(|c| **c == operation).count()
    }

    fn tick(&mut self) -> i64 {
        self.clock += 1;
        self.clock
    }

    fn add_static(&mut self, id: &str, name: Option<&str>, statement: &str) {
        let updated = self.tick();
        let policy =
            StoredPolicy { def: Def::Static(statement.to_owned()), name: name.map(|n| format!("name/{n}")), updated };
        self.policies.insert(id.to_owned(), policy);
    }
}

type Shared = Arc<Mutex<Store>>;

fn meta(code: &str) -> ErrorMetadata {
    ErrorMetadata::builder().code(code).message("injected by the test").build()
}

/// Page `items` by a numeric `nextToken`.
fn page<T: Clone>(items: &[T], token: Option<&str>, max: Option<i32>) -> (Vec<T>, Option<String>) {
    let start: usize = token.map_or(0, |t| t.parse().unwrap());
    let size = usize::try_from(max.unwrap_or(10)).unwrap();
    let end = (start + size).min(items.len());
    let next = (end < items.len()).then(|| end.to_string());
    (items[start..end].to_vec(), next)
}

fn client(store: &Shared) -> Client {
    let s = store.clone();
    let get_schema = mock!(Client::get_schema).then_compute_response(move |_| {
        let mut st = s.lock().unwrap();
        st.calls.push("GetSchema");
        if let Some(code) = st.failing {
            return MockResponse::Error(GetSchemaError::generic(meta(code)));
        }
        match &st.schema {
            Some(schema) => MockResponse::Output(
                GetSchemaOutput::builder()
                    .policy_store_id(STORE)
                    .schema(schema)
                    .created_date(DateTime::from_secs(0))
                    .last_updated_date(DateTime::from_secs(0))
                    .build()
                    .unwrap(),
            ),
            None => MockResponse::Error(GetSchemaError::generic(meta("ResourceNotFoundException"))),
        }
    });
    let s = store.clone();
    let list_templates = mock!(Client::list_policy_templates).then_compute_response(move |input| {
        let mut st = s.lock().unwrap();
        st.calls.push("ListPolicyTemplates");
        if let Some(code) = st.failing {
            return MockResponse::Error(ListPolicyTemplatesError::generic(meta(code)));
        }
        let items: Vec<PolicyTemplateItem> = st
            .templates
            .iter()
            .map(|(id, (_, updated))| {
                PolicyTemplateItem::builder()
                    .policy_store_id(STORE)
                    .policy_template_id(id)
                    .created_date(DateTime::from_secs(0))
                    .last_updated_date(DateTime::from_secs(*updated))
                    .build()
                    .unwrap()
            })
            .collect();
        let (items, next) = page(&items, input.next_token(), input.max_results());
        MockResponse::Output(
            ListPolicyTemplatesOutput::builder()
                .set_policy_templates(Some(items))
                .set_next_token(next)
                .build()
                .unwrap(),
        )
    });
    let s = store.clone();
    let get_template = mock!(Client::get_policy_template).then_compute_response(move |input| {
        let mut st = s.lock().unwrap();
        st.calls.push("GetPolicyTemplate");
        if let Some(code) = st.failing {
            return MockResponse::Error(GetPolicyTemplateError::generic(meta(code)));
        }
        let (statement, updated) = st.templates[input.policy_template_id().unwrap()].clone();
        MockResponse::Output(
            GetPolicyTemplateOutput::builder()
                .policy_store_id(STORE)
                .policy_template_id(input.policy_template_id().unwrap())
                .statement(statement)
                .created_date(DateTime::from_secs(0))
                .last_updated_date(DateTime::from_secs(updated))
                .build()
                .unwrap(),
        )
    });
    let s = store.clone();
    let list_policies = mock!(Client::list_policies).then_compute_response(move |input| {
        let mut st = s.lock().unwrap();
        st.calls.push("ListPolicies");
        if let Some(code) = st.failing {
            return MockResponse::Error(ListPoliciesError::generic(meta(code)));
        }
        let items: Vec<PolicyItem> = st
            .policies
            .iter()
            .map(|(id, p)| {
                let kind = match p.def {
                    Def::Static(_) => PolicyType::Static,
                    Def::Linked { .. } => PolicyType::TemplateLinked,
                };
                PolicyItem::builder()
                    .policy_store_id(STORE)
                    .policy_id(id)
                    .policy_type(kind)
                    .set_name(p.name.clone())
                    .created_date(DateTime::from_secs(0))
                    .last_updated_date(DateTime::from_secs(p.updated))
                    .build()
                    .unwrap()
            })
            .collect();
        let (items, next) = page(&items, input.next_token(), input.max_results());
        MockResponse::Output(
            ListPoliciesOutput::builder().set_policies(Some(items)).set_next_token(next).build().unwrap(),
        )
    });
    let s = store.clone();
    let batch_get = mock!(Client::batch_get_policy).then_compute_response(move |input| {
        let mut st = s.lock().unwrap();
        st.calls.push("BatchGetPolicy");
        if let Some(code) = st.failing {
            return MockResponse::Error(BatchGetPolicyError::generic(meta(code)));
        }
        assert!(input.requests().len() <= 100, "BatchGetPolicy takes at most 100 requests");
        let results = input
            .requests()
            .iter()
            .map(|r| {
                let p = &st.policies[r.policy_id()];
                let (kind, def) = match &p.def {
                    Def::Static(statement) => (
                        PolicyType::Static,
                        PolicyDefinitionDetail::Static(
                            StaticPolicyDefinitionDetail::builder().statement(statement).build().unwrap(),
                        ),
                    ),
                    Def::Linked { template, principal, resource } => {
                        let entity = |(t, i): &(String, String)| {
                            EntityIdentifier::builder().entity_type(t).entity_id(i).build().unwrap()
                        };
                        (
                            PolicyType::TemplateLinked,
                            PolicyDefinitionDetail::TemplateLinked(
                                TemplateLinkedPolicyDefinitionDetail::builder()
                                    .policy_template_id(template)
                                    .principal(entity(principal))
                                    .set_resource(resource.as_ref().map(entity))
                                    .build()
                                    .unwrap(),
                            ),
                        )
                    }
                };
                BatchGetPolicyOutputItem::builder()
                    .policy_store_id(STORE)
                    .policy_id(r.policy_id())
                    .policy_type(kind)
                    .definition(def)
                    .created_date(DateTime::from_secs(0))
                    .last_updated_date(DateTime::from_secs(p.updated))
                    .build()
                    .unwrap()
            })
            .collect();
        MockResponse::Output(
            BatchGetPolicyOutput::builder().set_results(Some(results)).set_errors(Some(Vec::new())).build().unwrap(),
        )
    });
    let s = store.clone();
    let put_schema = mock!(Client::put_schema).then_compute_response(move |input| {
        let mut st = s.lock().unwrap();
        st.calls.push("PutSchema");
        if let Some(code) = st.failing {
            return MockResponse::Error(PutSchemaError::generic(meta(code)));
        }
        let Some(SchemaDefinition::CedarJson(json)) = input.definition() else { panic!("no schema") };
        st.schema = Some(json.clone());
        MockResponse::Output(
            PutSchemaOutput::builder()
                .policy_store_id(STORE)
                .set_namespaces(Some(Vec::new()))
                .created_date(DateTime::from_secs(0))
                .last_updated_date(DateTime::from_secs(0))
                .build()
                .unwrap(),
        )
    });
    let s = store.clone();
    let create = mock!(Client::create_policy).then_compute_response(move |input| {
        let mut st = s.lock().unwrap();
        st.calls.push("CreatePolicy");
        if let Some(code) = st.failing {
            return MockResponse::Error(CreatePolicyError::generic(meta(code)));
        }
        let Some(PolicyDefinition::Static(def)) = input.definition() else { panic!("push creates static policies") };
        if let Some(name) = input.name() {
            assert!(name.starts_with("name/"), "AVP names start with name/: {name}");
            if st.policies.values().any(|p| p.name.as_deref() == Some(name)) {
                return MockResponse::Error(CreatePolicyError::generic(meta("ConflictException")));
            }
        }
        st.next_id += 1;
        let id = format!("SPnew{}", st.next_id);
        let statement = def.statement().to_owned();
        st.add_static(&id, input.name().map(|n| n.trim_start_matches("name/")), &statement);
        MockResponse::Output(
            CreatePolicyOutput::builder()
                .policy_store_id(STORE)
                .policy_id(id)
                .policy_type(PolicyType::Static)
                .created_date(DateTime::from_secs(0))
                .last_updated_date(DateTime::from_secs(0))
                .build()
                .unwrap(),
        )
    });
    let s = store.clone();
    let update = mock!(Client::update_policy).then_compute_response(move |input| {
        let mut st = s.lock().unwrap();
        st.calls.push("UpdatePolicy");
        if let Some(code) = st.failing {
            return MockResponse::Error(UpdatePolicyError::generic(meta(code)));
        }
        let id = input.policy_id().unwrap().to_owned();
        let updated = st.tick();
        let policy = st.policies.get_mut(&id).expect("update of a policy that exists");
        if let Some(UpdatePolicyDefinition::Static(def)) = input.definition() {
            policy.def = Def::Static(def.statement().to_owned());
        }
        if let Some(name) = input.name() {
            policy.name = Some(name.to_owned());
        }
        policy.updated = updated;
        MockResponse::Output(
            UpdatePolicyOutput::builder()
                .policy_store_id(STORE)
                .policy_id(id)
                .policy_type(PolicyType::Static)
                .created_date(DateTime::from_secs(0))
                .last_updated_date(DateTime::from_secs(updated))
                .build()
                .unwrap(),
        )
    });
    let s = store.clone();
    let delete = mock!(Client::delete_policy).then_compute_response(move |input| {
        let mut st = s.lock().unwrap();
        st.calls.push("DeletePolicy");
        if let Some(code) = st.failing {
            return MockResponse::Error(DeletePolicyError::generic(meta(code)));
        }
        st.policies.remove(input.policy_id().unwrap()).expect("delete of a policy that exists");
        MockResponse::Output(DeletePolicyOutput::builder().build())
    });
    mock_client!(
        aws_sdk_verifiedpermissions,
        RuleMode::MatchAny,
        &[
            &get_schema,
            &list_templates,
            &get_template,
            &list_policies,
            &batch_get,
            &put_schema,
            &create,
            &update,
            &delete
        ],
        // the refresher's own backoff is under test; the SDK's retries would replay the
        // injected error (and aws-smithy-mocks 0.3 mismatches retried inputs)
        |builder| builder.retry_config(aws_sdk_verifiedpermissions::config::retry::RetryConfig::disabled())
    )
}

/// The shipped schema in AVP's JSON form.
fn shipped_schema_json() -> String {
    let sources = Sources::read(&SourceDirs::new(repo_root().join("policies"), repo_root().join("entities"))).unwrap();
    push::schema_json(&sources.schemas).unwrap()
}

/// A store holding the shipped policies (under AVP-style ids), 55 filler policies (so
/// the listing takes two pages), a template, and a policy linked from it that forbids
/// user-1 their Team2 profile.
fn shipped_store() -> Shared {
    let shipped =
        PolicySnapshot::load(&SourceDirs::new(repo_root().join("policies"), repo_root().join("entities")), 1).unwrap();
    let mut store = Store { schema: Some(shipped_schema_json()), ..Store::default() };
    for (n, policy) in shipped.policies().policies().enumerate() {
        store.add_static(&format!("SP{n:02}"), Some(policy.id().as_ref()), &policy.to_string());
    }
    for n in 0..55 {
        let statement = format!(
            "permit (principal == Studio::User::\"filler-{n}\", action == Studio::Action::\"CreatePresignedDomainUrl\", resource);"
        );
        store.add_static(&format!("SPfill{n:02}"), None, &statement);
    }
    let updated = store.tick();
    store.templates.insert(
        "PTprofile".into(),
        (
            "forbid (principal == ?principal, action == Studio::Action::\"CreatePresignedDomainUrl\", resource == ?resource);"
                .into(),
            updated,
        ),
    );
    let updated = store.tick();
    store.policies.insert(
        "LPuser1".into(),
        StoredPolicy {
            def: Def::Linked {
                template: "PTprofile".into(),
                principal: ("Studio::User".into(), "user-1".into()),
                resource: Some(("Studio::UserProfile".into(), "user-1-team2".into())),
            },
            name: None,
            updated,
        },
    );
    Arc::new(Mutex::new(store))
}

fn entities() -> EntitySources {
    EntitySources::read(&repo_root().join("entities")).unwrap()
}

fn presign(user: &str, profile: &str) -> DecisionRequest {
    DecisionRequest::new(
        parse_entity_uid(&format!("Studio::User::\"{user}\"")).unwrap(),
        parse_entity_uid("Studio::Action::\"CreatePresignedDomainUrl\"").unwrap(),
        parse_entity_uid(&format!("Studio::UserProfile::\"{profile}\"")).unwrap(),
    )
    .with_context(serde_json::json!({"sourceVpce": "vpce-0a1a000000000001a", "sourceIp": "10.1.2.3"}))
}

#[tokio::test]
async fn a_store_mirrors_into_a_snapshot_that_names_the_store_policy_ids() {
    let store = shipped_store();
    let client = client(&store);
    let mut mirror = Mirror::new(client, STORE, 100);
    let contents = mirror.fetch().await.unwrap();
    let snapshot = mirror::snapshot(&contents, &entities(), repo_root().join("entities"), 1).unwrap();

    let st = store.lock().unwrap();
    assert_eq!(snapshot.policy_count(), st.policies.len(), "static and linked policies, templates not counted");
    assert_eq!(st.count("ListPolicies"), 2, "61+ policies at 50 a page: two pages");
    assert_eq!(st.count("BatchGetPolicy"), 1, "one batch of up to 100");
    assert_eq!(st.count("GetPolicyTemplate"), 1);
    drop(st);
    assert!(snapshot.source().to_string().contains(STORE));

    let allowed = Engine::new().decide(&snapshot, &presign("user-1", "user-1-team1")).unwrap();
    assert_eq!(allowed.effect, Effect::Allow);
    assert!(!allowed.policies.is_empty());
    assert!(allowed.policies.iter().all(|id| id.starts_with("SP")), "store ids, not @ids: {:?}", allowed.policies);

    // the template-linked forbid decides under its own store id
    let linked = Engine::new().decide(&snapshot, &presign("user-1", "user-1-team2")).unwrap();
    assert_eq!(linked.effect, Effect::Deny, "{linked:?}");
    assert_eq!(*linked.policies, ["LPuser1".to_owned()]);
}

/// The store as the sidecar's policy source, with the shipped entities.
fn source(mirror: Mirror) -> StoreSource {
    StoreSource::new(mirror, repo_root().join("entities"), Duration::from_secs(60))
}

/// The first snapshot, as the lifecycle's first load asks for it.
async fn load_first(source: &mut StoreSource) -> Result<PolicySnapshot, SourceError> {
    source.load(None, 1).await.map(|snapshot| snapshot.expect("a first load always builds"))
}

/// One refresh, settled as the lifecycle settles it.
async fn refresh(source: &mut StoreSource, store: &PolicyStore) -> ReloadOutcome {
    lifecycle::refresh_once(source, store, &lifecycle::fits_anything()).await
}

#[tokio::test]
async fn an_unchanged_store_is_not_fetched_again_or_rebuilt_and_a_change_costs_one_batch() {
    let store = shipped_store();
    let mut mirror = source(Mirror::new(client(&store), STORE, 100));
    let first = load_first(&mut mirror).await.unwrap();
    let version = first.version().clone();
    let policy_store = PolicyStore::new(first);

    let outcome = refresh(&mut mirror, &policy_store).await;
    assert_eq!(outcome, ReloadOutcome::Unchanged);
    assert_eq!(policy_store.current().unwrap().version(), &version);
    {
        let st = store.lock().unwrap();
        assert_eq!(st.count("BatchGetPolicy"), 1, "no definitions fetched for an unchanged store");
        assert_eq!(st.count("GetPolicyTemplate"), 1);
    }

    // one policy changes: only it is fetched, and the new snapshot serves
    {
        let mut st = store.lock().unwrap();
        st.add_static(
            "SPfill00",
            None,
            "forbid (principal, action == Studio::Action::\"CreatePresignedDomainUrl\", resource) when { context.sourceIp.isLoopback() };",
        );
    }
    let outcome = refresh(&mut mirror, &policy_store).await;
    assert!(matches!(outcome, ReloadOutcome::Published(2)), "{outcome:?}");
    assert_ne!(policy_store.current().unwrap().version(), &version);
    assert_eq!(store.lock().unwrap().count("BatchGetPolicy"), 2);
}

#[tokio::test]
async fn throttling_keeps_the_last_good_snapshot_and_backs_off() {
    let store = shipped_store();
    let mut mirror = source(Mirror::new(client(&store), STORE, 100));
    let policy_store = PolicyStore::new(load_first(&mut mirror).await.unwrap());
    let version = policy_store.current().unwrap().version().clone();

    store.lock().unwrap().failing = Some("ThrottlingException");
    let outcome = refresh(&mut mirror, &policy_store).await;
    assert_eq!(outcome, ReloadOutcome::Failed);
    assert_eq!(policy_store.current().unwrap().version(), &version, "the last good snapshot keeps serving");
    let stats = policy_store.stats();
    assert_eq!(stats.failures, 1);
    assert!(stats.last_error.unwrap().to_string().contains("throttled"));

    // the same error again is counted once (it is logged once), and recovery clears it
    assert_eq!(refresh(&mut mirror, &policy_store).await, ReloadOutcome::Failed);
    assert_eq!(policy_store.stats().failures, 1);
    store.lock().unwrap().failing = None;
    assert_eq!(refresh(&mut mirror, &policy_store).await, ReloadOutcome::Unchanged);
    assert!(policy_store.stats().last_error.is_none());

    // waits grow from the interval, with jitter, and stay bounded
    let interval = Duration::from_secs(60);
    let waits: Vec<Duration> = lifecycle::backoff(interval, interval * 16).take(8).collect();
    assert!(waits.iter().all(|w| *w >= interval && *w <= interval * 32), "{waits:?}");
    assert!(waits[4] >= interval * 8, "exponential: {waits:?}");
}

#[tokio::test]
async fn access_denied_at_start_is_a_clear_error_and_no_snapshot() {
    let store = shipped_store();
    store.lock().unwrap().failing = Some("AccessDeniedException");
    let mut mirror = source(Mirror::new(client(&store), STORE, 100));
    let error = load_first(&mut mirror).await.unwrap_err();
    let message = error.error.to_string();
    assert!(message.contains("access denied") && message.contains("verifiedpermissions:GetSchema"), "{message}");
    assert!(message.contains(STORE), "{message}");
}

#[tokio::test]
async fn an_invalid_policy_in_the_store_is_rejected_and_the_last_good_kept() {
    let store = shipped_store();
    let mut mirror = source(Mirror::new(client(&store), STORE, 100));
    let policy_store = PolicyStore::new(load_first(&mut mirror).await.unwrap());
    let version = policy_store.current().unwrap().version().clone();

    store.lock().unwrap().add_static(
        "SPbroken",
        None,
        "permit (principal, action == Studio::Action::\"CreatePresignedDomainUrl\", resource) when { resource.noSuchAttribute == 1 };",
    );
    assert_eq!(refresh(&mut mirror, &policy_store).await, ReloadOutcome::Failed);
    assert_eq!(policy_store.current().unwrap().version(), &version);
    let error = policy_store.stats().last_error.unwrap().to_string();
    assert!(error.contains("avp://PSEXAMPLEabcdefg111111/policies/SPbroken"), "{error}");
}

#[tokio::test]
async fn a_store_larger_than_one_refresh_budget_loads_over_several() {
    let store = shipped_store();
    // 1 GetSchema + 1 template page + 2 policy pages + 1 template + 1 batch = 6 calls
    let mut mirror = Mirror::new(client(&store), STORE, 5);
    let error = mirror.fetch().await.unwrap_err();
    assert!(matches!(error, AvpError::Budget { budget: 5, .. }), "{error}");
    assert_eq!(store.lock().unwrap().calls.len(), 5, "never more calls than the budget");
    // the template fetched in the first round is kept: the second round completes
    let contents = mirror.fetch().await.unwrap();
    assert_eq!(contents.templates.len(), 1);
    assert_eq!(store.lock().unwrap().count("GetPolicyTemplate"), 1);
}

#[tokio::test]
async fn push_plans_applies_and_then_has_nothing_left_to_do() {
    let ws = Workspace::shipped();
    let local = PolicySnapshot::load(&ws.dirs(), 1).unwrap();
    let mut ids: Vec<String> = local.policies().policies().map(|p| p.id().to_string()).collect();
    ids.sort();
    let first = ids[0].clone();
    let second = ids[1].clone();

    // a store that has: `first` with an extra condition (update), `second` with the
    // opposite effect (replace), an unnamed stray (delete), a linked policy (kept)
    let mut st = Store::default();
    let text = |id: &str| local.policies().policy(&cedar_policy::PolicyId::new(id)).unwrap().to_string();
    let changed = text(&first).trim_end().trim_end_matches(';').to_owned() + " when { true };";
    st.add_static("SPa", Some(&first), &changed);
    let flipped = if text(&second).contains("permit") {
        text(&second).replacen("permit", "forbid", 1)
    } else {
        text(&second).replacen("forbid", "permit", 1)
    };
    st.add_static("SPb", Some(&second), &flipped);
    st.add_static("SPstray", None, "permit (principal, action, resource) when { false };");
    st.templates.insert("PT".into(), ("permit (principal == ?principal, action, resource);".into(), 1));
    st.policies.insert(
        "LPkeep".into(),
        StoredPolicy {
            def: Def::Linked { template: "PT".into(), principal: ("Studio::User".into(), "u".into()), resource: None },
            name: None,
            updated: 1,
        },
    );
    let store = Arc::new(Mutex::new(st));
    let client = client(&store);

    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = push_to_store(&client, STORE, &ws.dirs(), true, &mut out, &mut err).await;
    let plan = String::from_utf8_lossy(&out).to_string();
    assert_eq!(code, 0, "{plan}{}", String::from_utf8_lossy(&err));
    assert!(plan.contains("schema: update"), "{plan}");
    assert!(plan.contains(&format!("update  {first} (policy SPa)")), "{plan}");
    assert!(plan.contains(&format!("replace {second} (policy SPb")), "{plan}");
    assert!(plan.contains("delete  <unnamed> (policy SPstray)"), "{plan}");
    assert!(plan.contains("keep    1 template-linked"), "{plan}");
    assert_eq!(plan.matches("create  ").count(), ids.len() - 2, "{plan}");
    assert!(plan.contains("dry run: nothing changed"));
    {
        let st = store.lock().unwrap();
        for write in ["PutSchema", "CreatePolicy", "UpdatePolicy", "DeletePolicy"] {
            assert_eq!(st.count(write), 0, "dry run called {write}");
        }
    }

    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = push_to_store(&client, STORE, &ws.dirs(), false, &mut out, &mut err).await;
    assert_eq!(code, 0, "{}{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    {
        let st = store.lock().unwrap();
        let mut names: Vec<String> = st
            .policies
            .values()
            .filter(|p| matches!(p.def, Def::Static(_)))
            .map(|p| p.name.clone().unwrap().trim_start_matches("name/").to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ids, "the store's static policies are exactly the local ones");
        assert!(st.policies.contains_key("LPkeep"));
        assert!(!st.policies.contains_key("SPb"), "a changed effect replaces the policy");
        let Def::Static(updated) = &st.policies["SPa"].def else { panic!() };
        assert_eq!(updated.trim(), text(&first).trim());
    }

    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(push_to_store(&client, STORE, &ws.dirs(), false, &mut out, &mut err).await, 0);
    let again = String::from_utf8_lossy(&out);
    assert!(again.contains("schema: unchanged") && again.contains("0 policy changes"), "{again}");
}

#[tokio::test]
async fn push_refuses_what_does_not_validate_locally() {
    let ws = Workspace::shipped();
    ws.write_policy(
        "broken.cedar",
        "@id(\"broken\") permit (principal, action == Studio::Action::\"CreatePresignedDomainUrl\", resource) when { resource.nope };",
    );
    let store = Arc::new(Mutex::new(Store::default()));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = push_to_store(&client(&store), STORE, &ws.dirs(), false, &mut out, &mut err).await;
    assert_eq!(code, 1);
    assert!(String::from_utf8_lossy(&err).contains("refusing to push"));
    assert!(store.lock().unwrap().calls.is_empty(), "nothing was sent");
}

#[tokio::test]
async fn pull_writes_files_that_load_as_the_same_policies() {
    let store = shipped_store();
    let out_dir = tempfile::tempdir().unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = pull_to_files(&client(&store), STORE, out_dir.path(), &mut out, &mut err).await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert!(out_dir.path().join("PTprofile.cedar.template").exists());

    let pulled = PolicySnapshot::load(&SourceDirs::new(out_dir.path(), repo_root().join("entities")), 1).unwrap();
    let statics = store.lock().unwrap().policies.values().filter(|p| matches!(p.def, Def::Static(_))).count();
    assert_eq!(pulled.policy_count(), statics);
    let decision = Engine::new().decide(&pulled, &presign("user-1", "user-1-team1")).unwrap();
    assert_eq!(decision.effect, Effect::Allow);
}

fn avp_toml(ws: &Workspace, avp: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [policies]\nentities = \"{}\"\n{avp}\n",
        ws.entities().display()
    )
}

#[test]
fn the_config_names_a_store_or_says_what_is_missing() {
    use authz_sidecar::config::{Config, PolicySource};
    let ws = Workspace::shipped();
    let config = Config::from_toml(
        &avp_toml(&ws, "source = \"avp\"\n[policies.avp]\npolicy_store_id = \"PS1\"\nmax_calls_per_refresh = 10"),
        "t",
    )
    .unwrap();
    let PolicySource::VerifiedPermissions(avp) = config.policy_source else { panic!("not avp") };
    assert_eq!((avp.policy_store_id.as_str(), avp.max_calls_per_refresh), ("PS1", 10));
    assert_eq!(avp.poll_interval, Duration::from_secs(60));

    let missing = Config::from_toml(&avp_toml(&ws, "source = \"avp\""), "t").unwrap_err().to_string();
    assert!(missing.contains("[policies.avp]"), "{missing}");
    let unknown = Config::from_toml(&avp_toml(&ws, "source = \"s3\""), "t").unwrap_err().to_string();
    assert!(unknown.contains("`s3`: use `files` or `avp`"), "{unknown}");
}

#[tokio::test]
async fn the_sidecar_is_not_ready_while_the_store_denies_access_and_ready_once_it_loads() {
    use authz_sidecar::app::App;
    use authz_sidecar::config::Config;
    let ws = Workspace::shipped();
    let toml = avp_toml(&ws, "source = \"avp\"\n[policies.avp]\npolicy_store_id = \"PSEXAMPLEabcdefg111111\"");
    let app = Arc::new(App::new(Config::from_toml(&toml, "t").unwrap(), false).unwrap());
    let store = shipped_store();
    store.lock().unwrap().failing = Some("AccessDeniedException");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mirror = Mirror::new(client(&store), STORE, 100);
    let task = tokio::spawn(lifecycle::run(source(mirror), app.store().clone(), app.fits(), shutdown.clone()));

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reason = loop {
        let reasons = app.not_ready_reasons();
        if let Some(reason) = reasons.iter().find(|r| r.contains("access denied")) {
            break reason.clone();
        }
        assert!(std::time::Instant::now() < deadline, "never reported: {reasons:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(reason.contains("verifiedpermissions:GetSchema"), "{reason}");
    assert!(app.store().current().is_none());

    store.lock().unwrap().failing = None;
    while app.store().current().is_none() {
        assert!(std::time::Instant::now() < deadline, "never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(app.not_ready_reasons().is_empty(), "{:?}", app.not_ready_reasons());
    shutdown.cancel();
    task.await.unwrap();
}
