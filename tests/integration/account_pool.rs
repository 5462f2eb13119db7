//! The DataZone account-pool handler: the sample events and their field variants with
//! exact JSON answers, pagination, and list and validate never disagreeing.

use authz_sidecar::handlers::account_pool::{AccountPool, EventError, Operation, parse};
use authz_sidecar::policy_store::PolicySnapshot;
use proptest::prelude::*;
use serde_json::{Value, json};

const USER_1: &str = "4b89ed84-9842-45dd-a2e5-15e49eda2b03";
const USER_2: &str = "9d2f6c1e-37a4-4b0e-8f5a-6c7d8e9f0a1b";
const DOMAIN: &str = "dzd-4igt64u5j25ko9";

fn snapshot() -> std::sync::Arc<PolicySnapshot> {
    crate::support::shipped_snapshot()
}

/// The handler's answer to `operation` over `snapshot`, from one handler shared by the
/// tests as the sidecar shares one (it keeps the pool index of the snapshot it last saw).
fn apply(snapshot: &PolicySnapshot, operation: &Operation, request_id: &str) -> Result<Value, EventError> {
    static POOL: std::sync::OnceLock<AccountPool> = std::sync::OnceLock::new();
    POOL.get_or_init(AccountPool::default).apply(snapshot, operation, request_id)
}

/// The answer to an event, as the exact JSON text a handler sends.
fn answer(event: &str) -> Result<String, EventError> {
    let operation = parse(event.as_bytes())?;
    apply(&snapshot(), &operation, "test").map(|v| v.to_string())
}

fn validate(user: &str, account: &str, region: &str, domain: &str) -> String {
    let event = json!({"operationRequest": {"listAuthorizedAccountsRequest": null,
        "validateAccountAuthorizationRequest": {"domainIdentifier": domain, "awsAccountId": account,
                                                "regionName": region, "userIdentifier": user}}});
    answer(&event.to_string()).unwrap()
}

fn list(user: &str, domain: &str) -> Value {
    let event = json!({"operationRequest": {"validateAccountAuthorizationRequest": null,
        "listAuthorizedAccountsRequest": {"domainIdentifier": domain, "userIdentifier": user}}});
    serde_json::from_str(&answer(&event.to_string()).unwrap()).unwrap()
}

const GRANT: &str = r#"{"operationResponse":{"validateAccountAuthorizationResponse":{"authResult":"GRANT"}}}"#;
const DENY: &str = r#"{"operationResponse":{"validateAccountAuthorizationResponse":{"authResult":"DENY"}}}"#;

#[test]
fn the_sample_validate_event_is_granted_exactly() {
    // the captured event: both keys present, the other one null
    let event = r#"{"operationRequest": {"listAuthorizedAccountsRequest": null, "validateAccountAuthorizationRequest":
        {"domainIdentifier": "dzd-4igt64u5j25ko9", "awsAccountId": "004878717744", "regionName": "us-east-2",
         "userIdentifier": "4b89ed84-9842-45dd-a2e5-15e49eda2b03"}}}"#;
    assert_eq!(answer(event).unwrap(), GRANT);
}

#[test]
fn the_sample_list_event_lists_exactly_the_granted_accounts_and_regions() {
    let event = r#"{"operationRequest": {"listAuthorizedAccountsRequest": {"domainIdentifier": "dzd-4igt64u5j25ko9",
        "domainUnitIdentifier": "6kg8zlq8mvid9l", "domainRegion": "us-east-2", "domainPartition": "aws",
        "userIdentifier": "4b89ed84-9842-45dd-a2e5-15e49eda2b03", "maxResults": 100, "nextToken": null},
        "validateAccountAuthorizationRequest": null}}"#;
    assert_eq!(
        answer(event).unwrap(),
        concat!(
            r#"{"operationResponse":{"listAuthorizedAccountsResponse":{"items":["#,
            r#"{"awsAccountId":"004878717744","awsAccountName":"lob-a-analytics-1","supportedRegions":["us-east-1","us-east-2"]},"#,
            r#"{"awsAccountId":"111122223333","awsAccountName":"Acct1","supportedRegions":["eu-west-1","us-east-1","us-west-2"]},"#,
            r#"{"awsAccountId":"555555555555","awsAccountName":"shared-sandbox","supportedRegions":["eu-west-1","us-east-1"]}"#,
            r#"]}}}"#
        )
    );
}

/// A validate goes through the engine as the data plane's questions do: the same user,
/// account, region and domain asked again is answered from the decision kept for it, and
/// a question that differs in any of them is decided on its own.
#[test]
fn a_repeated_validate_is_answered_from_the_kept_decision() {
    let ws = crate::support::Workspace::shipped();
    let snapshot = PolicySnapshot::load(&ws.dirs(), 1).unwrap();
    let pool = AccountPool::default();
    let ask = |user: &str, account: &str, region: &str, domain: &str| {
        let event = json!({"operationRequest": {"listAuthorizedAccountsRequest": null,
            "validateAccountAuthorizationRequest": {"domainIdentifier": domain, "awsAccountId": account,
                                                    "regionName": region, "userIdentifier": user}}});
        let answer = pool.apply(&snapshot, &parse(event.to_string().as_bytes()).unwrap(), "t").unwrap();
        answer["operationResponse"]["validateAccountAuthorizationResponse"]["authResult"].as_str().unwrap().to_owned()
    };
    assert_eq!(snapshot.kept_decisions(), 0);
    // the first context of an action goes through Cedar's parser (not kept), then typed
    for _ in 0..4 {
        assert_eq!(ask(USER_1, "004878717744", "us-east-2", DOMAIN), "GRANT");
    }
    assert_eq!(snapshot.kept_decisions(), 1, "asked four times, decided twice, kept once");
    // another user, another region, another domain: each a question of its own
    assert_eq!(ask(USER_2, "004878717744", "us-east-2", DOMAIN), "DENY");
    assert_eq!(ask(USER_1, "004878717744", "us-east-2", "dzd-0therdomain01"), "DENY");
    assert_eq!(ask(USER_2, "004878717744", "us-east-2", DOMAIN), "DENY");
    assert_eq!(ask(USER_1, "004878717744", "us-east-2", DOMAIN), "GRANT");
    assert_eq!(snapshot.kept_decisions(), 3);
}

#[test]
fn field_variants_are_tolerated_and_fail_closed() {
    // the other key absent instead of null, unknown fields ignored
    let event = format!(
        r#"{{"operationRequest": {{"validateAccountAuthorizationRequest": {{"domainIdentifier": "{DOMAIN}",
        "awsAccountId": "004878717744", "regionName": "us-east-2", "userIdentifier": "{USER_1}",
        "projectId": "p-1", "someNewField": {{"x": 1}}}}}}, "extra": true}}"#
    );
    assert_eq!(answer(&event).unwrap(), GRANT);
    assert_eq!(validate(USER_1, "4878717744", "us-east-2", DOMAIN), DENY, "a non-12-digit id");
    assert_eq!(validate(USER_1, "004878717744", "us-west-2", DOMAIN), DENY, "a region the account does not support");
    assert_eq!(validate(USER_1, "999999999999", "us-east-1", DOMAIN), DENY, "an unknown account");
    assert_eq!(validate("", "004878717744", "us-east-2", DOMAIN), DENY, "no user");
    assert_eq!(validate(USER_2, "004878717744", "us-east-2", DOMAIN), DENY, "another LOB's pool");
    assert_eq!(validate(USER_1, "333333333333", "us-east-1", DOMAIN), DENY, "quarantined");
    assert_eq!(validate(USER_1, "004878717744", "us-east-2", "dzd-0therdomain01"), DENY, "another domain");
    let no_region = format!(
        r#"{{"operationRequest": {{"validateAccountAuthorizationRequest": {{"awsAccountId": "004878717744", "userIdentifier": "{USER_1}"}}}}}}"#
    );
    assert_eq!(answer(&no_region).unwrap(), DENY);
    // an empty list request is a list request (with nobody to list for)
    assert_eq!(
        answer(r#"{"operationRequest": {"listAuthorizedAccountsRequest": {}}}"#).unwrap(),
        r#"{"operationResponse":{"listAuthorizedAccountsResponse":{"items":[]}}}"#
    );
}

#[test]
fn malformed_events_are_errors_never_grants() {
    assert!(matches!(answer("not json"), Err(EventError::NotJson(_))));
    assert!(matches!(answer("[]"), Err(EventError::WrongType { field: "(the event)", .. })));
    assert_eq!(answer("{}"), Err(EventError::NoOperation));
    assert_eq!(answer(r#"{"operationRequest": null}"#), Err(EventError::NoOperation));
    assert_eq!(
        answer(
            r#"{"operationRequest": {"listAuthorizedAccountsRequest": null, "validateAccountAuthorizationRequest": null}}"#
        ),
        Err(EventError::NoOperation)
    );
    assert_eq!(
        answer(
            r#"{"operationRequest": {"listAuthorizedAccountsRequest": {}, "validateAccountAuthorizationRequest": {}}}"#
        ),
        Err(EventError::BothOperations)
    );
}

#[test]
fn arrays_are_never_read_as_objects_at_any_level() {
    // a positional validate request, an array operationRequest, a list request as an
    // array: serde's derive would read these as the struct's fields in order
    let positional = format!(
        r#"{{"operationRequest": {{"validateAccountAuthorizationRequest":
            ["{DOMAIN}", null, null, "004878717744", "us-east-2", "{USER_1}"]}}}}"#
    );
    let err = answer(&positional).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`operationRequest.validateAccountAuthorizationRequest` must be an object, not an array"
    );
    let as_array = format!(
        r#"{{"operationRequest": [null, {{"domainIdentifier": "{DOMAIN}", "awsAccountId": "004878717744",
            "regionName": "us-east-2", "userIdentifier": "{USER_1}"}}]}}"#
    );
    assert_eq!(answer(&as_array).unwrap_err().to_string(), "`operationRequest` must be an object, not an array");
    let list = format!(
        r#"{{"operationRequest": {{"listAuthorizedAccountsRequest": ["{DOMAIN}", null, null, null, "{USER_1}"]}}}}"#
    );
    assert!(matches!(answer(&list), Err(EventError::WrongType { .. })));
}

#[test]
fn a_wrong_typed_field_is_named_with_the_type_found_never_its_value() {
    let secret = "x".repeat(5000);
    let cases = [
        (
            json!({"awsAccountId": 4878717744_u64}),
            "`operationRequest.validateAccountAuthorizationRequest.awsAccountId` must be a string, not a number",
        ),
        (
            json!({"regionName": ["us-east-1"]}),
            "`operationRequest.validateAccountAuthorizationRequest.regionName` must be a string, not an array",
        ),
        (
            json!({"userIdentifier": {"id": secret}}),
            "`operationRequest.validateAccountAuthorizationRequest.userIdentifier` must be a string, not an object",
        ),
        (
            json!({"domainIdentifier": true}),
            "`operationRequest.validateAccountAuthorizationRequest.domainIdentifier` must be a string, not a boolean",
        ),
    ];
    for (fields, message) in cases {
        let event = json!({"operationRequest": {"validateAccountAuthorizationRequest": fields}});
        let err = answer(&event.to_string()).unwrap_err();
        assert_eq!(err.to_string(), message);
        assert_eq!(err.error_type(), "InvalidEvent");
    }
    let event = json!({"operationRequest": {"listAuthorizedAccountsRequest": {"maxResults": "10"}}});
    assert_eq!(
        answer(&event.to_string()).unwrap_err().to_string(),
        "`operationRequest.listAuthorizedAccountsRequest.maxResults` must be an integer, not a string"
    );
}

#[test]
fn an_event_larger_than_the_limit_is_refused_before_it_is_read() {
    use authz_sidecar::handlers::account_pool::MAX_EVENT_BYTES;
    let event = json!({"operationRequest": {"validateAccountAuthorizationRequest": {"domainIdentifier": DOMAIN,
        "awsAccountId": "004878717744", "regionName": "us-east-2", "userIdentifier": USER_1}},
        "padding": "p".repeat(MAX_EVENT_BYTES)});
    let err = answer(&event.to_string()).unwrap_err();
    assert_eq!(err, EventError::TooLarge { limit: MAX_EVENT_BYTES });
    assert_eq!(err.error_type(), "EventTooLarge");
}

/// The shipped files with the account-pool policies replaced by `policies`.
fn with_account_pool_policies(policies: &str) -> PolicySnapshot {
    use authz_sidecar::policy_store::{SnapshotSource, SourceDirs, Sources};
    let root = crate::support::repo_root();
    let dirs = SourceDirs::new(root.join("policies"), root.join("entities"));
    let mut sources = Sources::read(&dirs).unwrap();
    for file in &mut sources.policies {
        if file.path.ends_with("account-pool.cedar") {
            file.text = policies.to_owned();
        }
    }
    PolicySnapshot::from_sources(&sources, SnapshotSource::Files(dirs), 1).unwrap()
}

/// Policies that say nothing of status, pool or regions.
const LAX_POLICIES: [&str; 3] = [
    r#"@id("any-account-in-us-east-1") permit (principal, action == DataZone::Action::"UseAccount", resource)
       when { context.regionName == "us-east-1" };"#,
    r#"@id("any-account-anywhere") permit (principal, action == DataZone::Action::"UseAccount", resource);"#,
    r#"@id("lob-a-users") permit (principal in Studio::Lob::"lob-a", action == DataZone::Action::"UseAccount", resource);"#,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the policies say, an account that is in no pool, or a region the account
    /// does not list, is DENY, and list and validate agree.
    #[test]
    fn unknown_accounts_and_unsupported_regions_are_denied_whatever_the_policies_say(
        policy in prop::sample::select(LAX_POLICIES.to_vec()),
        user in prop::sample::select(vec![USER_1, USER_2]),
        account in prop::sample::select(vec!["004878717744", "111122223333", "555555555555", "999999999999",
                                             "000000000000", "123456789012"]),
        region in prop::sample::select(vec!["us-east-1", "us-east-2", "us-west-2", "eu-west-1", "ap-south-1"]),
    ) {
        let snapshot = with_account_pool_policies(policy);
        let answer = |event: Value| apply(&snapshot, &parse(event.to_string().as_bytes()).unwrap(), "t").unwrap();
        let validated = answer(json!({"operationRequest": {"validateAccountAuthorizationRequest":
            {"domainIdentifier": DOMAIN, "awsAccountId": account, "regionName": region, "userIdentifier": user}}}));
        let granted = validated["operationResponse"]["validateAccountAuthorizationResponse"]["authResult"] == "GRANT";
        let uid: cedar_policy::EntityUid = format!("DataZone::Account::\"{account}\"").parse().unwrap();
        let regions: Vec<String> = match snapshot.stored_entity(&uid).unwrap().and_then(|e| e.attr("regions")).and_then(Result::ok) {
            Some(cedar_policy::EvalResult::Set(set)) => set.iter().map(|r| format!("{r:?}")).collect(),
            _ => Vec::new(),
        };
        let supported = regions.iter().any(|r| r.contains(region));
        if granted {
            prop_assert!(supported, "GRANT for {} in {} (regions {:?})", account, region, regions);
        }
        let listed = answer(json!({"operationRequest": {"listAuthorizedAccountsRequest":
            {"domainIdentifier": DOMAIN, "userIdentifier": user}}}));
        let items = listed["operationResponse"]["listAuthorizedAccountsResponse"]["items"].as_array().unwrap().clone();
        let in_list = items.iter().any(|item| {
            item["awsAccountId"] == account && item["supportedRegions"].as_array().unwrap().iter().any(|r| r == region)
        });
        prop_assert_eq!(in_list, granted, "{} account {} region {}", policy, account, region);
    }
}

/// An arbitrary JSON value.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![DOMAIN, "004878717744", "us-east-2", USER_1, "GRANT", ""]).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "operationRequest",
                    "validateAccountAuthorizationRequest",
                    "listAuthorizedAccountsRequest",
                    "awsAccountId",
                    "regionName",
                    "userIdentifier",
                    "domainIdentifier",
                    "extra"
                ])
                .prop_map(str::to_owned),
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A validate event well-formed as the interface gives it: objects where objects go, a
/// string account, region and user.
fn well_formed_validate(event: &Value) -> bool {
    let Some(request) = event.as_object().and_then(|e| e.get("operationRequest")).and_then(Value::as_object) else {
        return false;
    };
    let list_absent = request.get("listAuthorizedAccountsRequest").is_none_or(Value::is_null);
    let Some(validate) = request.get("validateAccountAuthorizationRequest").and_then(Value::as_object) else {
        return false;
    };
    list_absent
        && ["awsAccountId", "regionName", "userIdentifier"]
            .iter()
            .all(|k| validate.get(*k).is_some_and(Value::is_string))
        && ["domainIdentifier", "domainUnitIdentifier", "domainRegion"]
            .iter()
            .all(|k| validate.get(*k).is_none_or(|v| v.is_string() || v.is_null()))
}

/// Ways to damage the sample GRANT event: a node replaced by another JSON value.
fn damaged_sample() -> impl Strategy<Value = Value> {
    let paths: Vec<Vec<&'static str>> = vec![
        vec!["operationRequest"],
        vec!["operationRequest", "validateAccountAuthorizationRequest"],
        vec!["operationRequest", "listAuthorizedAccountsRequest"],
        vec!["operationRequest", "validateAccountAuthorizationRequest", "awsAccountId"],
        vec!["operationRequest", "validateAccountAuthorizationRequest", "regionName"],
        vec!["operationRequest", "validateAccountAuthorizationRequest", "userIdentifier"],
        vec!["operationRequest", "validateAccountAuthorizationRequest", "domainIdentifier"],
    ];
    (prop::sample::select(paths), any_json(), 0u8..3).prop_map(|(path, replacement, how)| {
        let mut event = json!({"operationRequest": {"listAuthorizedAccountsRequest": null,
            "validateAccountAuthorizationRequest": {"domainIdentifier": DOMAIN, "awsAccountId": "004878717744",
            "regionName": "us-east-2", "userIdentifier": USER_1}}});
        let mut node = &mut event;
        for key in &path {
            node = &mut node[*key];
        }
        // the node is replaced, wrapped in an array, or (an object) written positionally,
        // its values in the interface's field order
        const ORDER: [&str; 6] = [
            "domainIdentifier",
            "domainUnitIdentifier",
            "domainRegion",
            "awsAccountId",
            "regionName",
            "userIdentifier",
        ];
        *node = match (how, node.take()) {
            (0, _) => replacement,
            (1, old) => Value::Array(vec![old]),
            (_, Value::Object(map)) => {
                Value::Array(ORDER.iter().map(|k| map.get(*k).cloned().unwrap_or(Value::Null)).collect())
            }
            (_, old) => Value::Array(vec![Value::Null, old]),
        };
        event
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Nothing but a well-formed validate event is ever answered GRANT.
    #[test]
    fn only_a_well_formed_validate_event_is_ever_granted(event in prop_oneof![any_json(), damaged_sample()]) {
        if answer(&event.to_string()).is_ok_and(|text| text == GRANT) {
            prop_assert!(well_formed_validate(&event), "GRANT for {}", event);
        }
    }
}

#[test]
fn pages_follow_max_results_and_next_token() {
    let page = |token: Option<&str>| {
        let event = json!({"operationRequest": {"listAuthorizedAccountsRequest":
            {"domainIdentifier": DOMAIN, "userIdentifier": USER_1, "maxResults": 2, "nextToken": token}}});
        answer(&event.to_string()).map(|text| serde_json::from_str::<Value>(&text).unwrap())
    };
    let first = page(None).unwrap();
    let body = &first["operationResponse"]["listAuthorizedAccountsResponse"];
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    let token = body["nextToken"].as_str().unwrap().to_owned();
    let second = page(Some(&token)).unwrap();
    let body = &second["operationResponse"]["listAuthorizedAccountsResponse"];
    assert_eq!(body["items"][0]["awsAccountId"], "555555555555");
    assert!(body.get("nextToken").is_none(), "the last page has no token");
    assert_eq!(page(Some("forged")), Err(EventError::BadNextToken));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// validate says GRANT exactly when list lists that account with that region.
    #[test]
    fn list_and_validate_never_disagree(
        user in prop::sample::select(vec![USER_1, USER_2, "00000000-0000-0000-0000-000000000000"]),
        account in prop::sample::select(vec!["004878717744", "111122223333", "333333333333", "444444444444",
                                             "555555555555", "666666666666", "777777777777", "000000000000"]),
        region in prop::sample::select(vec!["us-east-1", "us-east-2", "us-west-2", "eu-west-1", "ap-south-1"]),
        domain in prop::sample::select(vec![DOMAIN, "dzd-0therdomain01"]),
    ) {
        let listed = list(user, domain);
        let items = listed["operationResponse"]["listAuthorizedAccountsResponse"]["items"].as_array().unwrap().clone();
        let in_list = items.iter().any(|item| {
            item["awsAccountId"] == account && item["supportedRegions"].as_array().unwrap().iter().any(|r| r == region)
        });
        let granted = validate(user, account, region, domain) == GRANT;
        prop_assert_eq!(in_list, granted, "user {} account {} region {} domain {}", user, account, region, domain);
        for item in &items {
            let regions = item["supportedRegions"].as_array().unwrap();
            prop_assert!((1..=3).contains(&regions.len()));
            prop_assert_eq!(item["awsAccountId"].as_str().unwrap().len(), 12);
        }
    }
}

/// Extra `UseAccount` policies for [`shared_answers_match_fresh_decisions`]: each reads
/// accounts differently (status and region, a pool scope, the account's LOB, tags, the
/// name, an account named by id, and an account used as a value, which turns sharing off).
const EXTRA_POLICIES: [&str; 7] = [
    r#"forbid (principal, action == DataZone::Action::"UseAccount", resource)
       when { resource.status == "ASSIGNED" && context.regionName == "eu-west-1" };"#,
    r#"permit (principal in Studio::Lob::"lob-b", action == DataZone::Action::"UseAccount",
               resource in DataZone::AccountPool::"pool-lob-a") when { resource.lob == Studio::Lob::"lob-b" };"#,
    r#"permit (principal, action == DataZone::Action::"UseAccount", resource)
       when { resource.hasTag("env") && resource.getTag("env") == "sandbox" };"#,
    r#"forbid (principal, action == DataZone::Action::"UseAccount", resource)
       when { resource.name like "*-1" && principal in Studio::Team::"Team1" };"#,
    r#"forbid (principal in Studio::Team::"Team2", action == DataZone::Action::"UseAccount",
               resource in DataZone::AccountPool::"pool-shared") when { context.regionName == "us-east-1" };"#,
    r#"forbid (principal, action == DataZone::Action::"UseAccount", resource == DataZone::Account::"900000000003");"#,
    r#"forbid (principal, action == DataZone::Action::"UseAccount", resource)
       when { [resource].contains(DataZone::Account::"900000000006") && context.regionName == "us-east-1" };"#,
];

const REGIONS: [&str; 5] = ["us-east-1", "us-east-2", "us-west-2", "eu-west-1", "ap-south-1"];

/// What a generated account holds: status, pool, regions, LOB, env tag, name (indexes
/// into small lists, so accounts often look alike).
type Look = [u8; 6];

/// Generated accounts: an id number, a look to copy, and at most one field of it changed,
/// so that many accounts look alike or differ in exactly one thing a policy may read.
type GeneratedAccount = (u8, usize, Option<(usize, u8)>);

fn look_strategy() -> impl Strategy<Value = Look> {
    [0u8..4, 0u8..4, 0u8..3, 0u8..2, 0u8..3, 0u8..3]
}

/// The shipped files plus `extra` policies and the generated accounts.
fn generated_snapshot(extra: &[bool], looks: &[Look], accounts: &[GeneratedAccount]) -> PolicySnapshot {
    let mut seen = std::collections::HashSet::new();
    let entities: Vec<Value> = accounts
        .iter()
        .filter(|a| seen.insert(a.0))
        .map(|&(n, look, change)| {
            let mut look = looks[look % looks.len()];
            if let Some((field, value)) = change {
                look[field % 6] = value;
            }
            let [status, pool, regions, lob, env, name] = look.map(usize::from);
            // a few 11-digit ids, which are never granted
            let id = if n % 7 == 5 { format!("9{n:010}") } else { format!("9{n:011}") };
            let pool = ["pool-lob-a", "pool-lob-b", "pool-shared", "pool-other-domain"][pool % 4];
            let regions = [&["us-east-1", "eu-west-1"][..], &["us-east-1"], &["us-east-2", "us-west-2", "ap-south-1"]]
                [regions % 3];
            let status = ["AVAILABLE", "ASSIGNED", "QUARANTINED", "RETIRED"][status % 4];
            let lob = ["lob-a", "lob-b"][lob % 2];
            let env = [None, Some(true), Some(false)][env % 3];
            let mut account = json!({
                "uid": {"type": "DataZone::Account", "id": id},
                "attrs": {
                    "name": format!("acct-{name}"),
                    "status": status,
                    "regions": regions,
                    "pool": {"type": "DataZone::AccountPool", "id": pool},
                    "lob": {"type": "Studio::Lob", "id": lob},
                },
                "parents": [{"type": "DataZone::AccountPool", "id": pool}],
            });
            if let Some(sandbox) = env {
                account["tags"] = json!({"env": if sandbox { "sandbox" } else { "prod" }});
            }
            account
        })
        .collect();
    crate::support::shipped_with(&EXTRA_POLICIES, extra, entities)
}

#[test]
fn look_alike_accounts_share_one_class_unless_a_policy_uses_the_account_as_a_value() {
    let list_sharing = |snapshot: &PolicySnapshot| AccountPool::default().list_sharing(snapshot);
    let look: Look = [0, 0, 0, 0, 0, 0];
    let alike: Vec<GeneratedAccount> = (0..30).map(|n| (n, 0, None)).collect();
    let shipped = list_sharing(&generated_snapshot(&[false; 7], &[look], &[]));
    let grown = list_sharing(&generated_snapshot(&[false; 7], &[look], &alike));
    // 30 new accounts, one new class
    assert_eq!(grown.accounts, shipped.accounts + 30);
    assert_eq!(grown.classes, shipped.classes + 1, "{grown:?}");
    assert_eq!(grown.by_uid, None);
    let mut by_value = [false; 7];
    by_value[6] = true;
    let apart = list_sharing(&generated_snapshot(&by_value, &[look], &alike));
    assert_eq!(apart.classes, apart.accounts, "{apart:?}");
    assert!(apart.by_uid.unwrap().contains("`resource` used as a value"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(60))]

    /// A list shares one answer among accounts that no policy can tell apart. Over random
    /// policy sets and pools (with many look-alike accounts), every account and region is
    /// listed exactly when a fresh validate decision for it is GRANT.
    #[test]
    fn shared_answers_match_fresh_decisions(
        extra in prop::collection::vec(any::<bool>(), EXTRA_POLICIES.len()),
        looks in prop::collection::vec(look_strategy(), 1..4),
        accounts in prop::collection::vec((0u8..80, 0usize..4, prop::option::of((0usize..6, 0u8..4))), 10..50),
        user in prop::sample::select(vec![USER_1, USER_2, "00000000-0000-0000-0000-000000000000"]),
        domain in prop::sample::select(vec![DOMAIN, "dzd-0therdomain01"]),
    ) {
        let snapshot = generated_snapshot(&extra, &looks, &accounts);
        let answer = |event: Value| {
            let operation = parse(event.to_string().as_bytes()).unwrap();
            apply(&snapshot, &operation, "test").unwrap()
        };
        let listed = answer(json!({"operationRequest": {"listAuthorizedAccountsRequest":
            {"domainIdentifier": domain, "userIdentifier": user}}}));
        let items = listed["operationResponse"]["listAuthorizedAccountsResponse"]["items"].as_array().unwrap().clone();
        let mut granted_pairs = 0;
        for id in snapshot.entities_of_type(&"DataZone::Account".parse().unwrap()).iter().map(|u| u.id().unescaped().to_owned()) {
            for region in REGIONS {
                let validated = answer(json!({"operationRequest": {"validateAccountAuthorizationRequest":
                    {"domainIdentifier": domain, "awsAccountId": id, "regionName": region, "userIdentifier": user}}}));
                let granted = validated["operationResponse"]["validateAccountAuthorizationResponse"]["authResult"] == "GRANT";
                let in_list = items.iter().any(|item| {
                    item["awsAccountId"] == id.as_str()
                        && item["supportedRegions"].as_array().unwrap().iter().any(|r| r == region)
                });
                prop_assert_eq!(in_list, granted, "account {} region {} user {} domain {}", id, region, user, domain);
                granted_pairs += usize::from(granted);
            }
        }
        let listed_pairs: usize = items.iter().map(|item| item["supportedRegions"].as_array().unwrap().len()).sum();
        prop_assert_eq!(listed_pairs, granted_pairs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_form_answers_byte_for_byte_like_the_handler_behind_authentication() {
    use crate::harness::{self, Setup, Sidecar, token};
    let route = "[[routes]]\nname = \"account-pool\"\nmethod = \"POST\"\npath = \"/datazone/account-pool\"\nhandler = \"account_pool\"\n";
    let sidecar = Sidecar::start(Setup { extra: route.to_owned(), ..Setup::default() }).await.ready().await;
    let auth = format!("Bearer {}", token("datazone-service", &["DataZoneAccountPool"]));
    let post = |body: String, auth: Option<String>| {
        let addr = sidecar.data;
        async move {
            let mut headers = vec![("content-type", "application/json".to_owned())];
            if let Some(auth) = auth {
                headers.push(("authorization", auth));
            }
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            harness::request(addr, "POST", "/datazone/account-pool", &headers, body.into_bytes()).await
        }
    };
    for event in [
        json!({"operationRequest": {"listAuthorizedAccountsRequest": null, "validateAccountAuthorizationRequest":
            {"domainIdentifier": DOMAIN, "awsAccountId": "004878717744", "regionName": "us-east-2", "userIdentifier": USER_1}}}),
        json!({"operationRequest": {"validateAccountAuthorizationRequest": null, "listAuthorizedAccountsRequest":
            {"domainIdentifier": DOMAIN, "userIdentifier": USER_1, "maxResults": 100, "nextToken": null}}}),
        json!({"operationRequest": {"validateAccountAuthorizationRequest":
            {"domainIdentifier": DOMAIN, "awsAccountId": "333333333333", "regionName": "us-east-1", "userIdentifier": USER_1}}}),
    ] {
        let (status, headers, body) = post(event.to_string(), Some(auth.clone())).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body, answer(&event.to_string()).unwrap(), "the HTTP answer is the handler's, byte for byte");
    }
    let (status, _, _) =
        post(json!({"operationRequest": {"listAuthorizedAccountsRequest": {}}}).to_string(), None).await;
    assert_eq!(status, 401, "the HTTP form sits behind authentication");
    // an end user's valid token may not ask for anyone's accounts: 403 before the event is read
    let end_user = format!("Bearer {}", token("user-1", &["Team1", "Team2"]));
    let list = json!({"operationRequest": {"listAuthorizedAccountsRequest": {"domainIdentifier": DOMAIN,
        "userIdentifier": USER_1}}});
    let (status, _, body) = post(list.to_string(), Some(end_user.clone())).await;
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("awsAccountId"));
    let (status, _, _) = post("not json".to_owned(), Some(end_user)).await;
    assert_eq!(status, 403, "the caller is decided before the event is read");
    for bad in [
        "not json",
        "{}",
        r#"{"operationRequest": {"listAuthorizedAccountsRequest": {}, "validateAccountAuthorizationRequest": {}}}"#,
    ] {
        let (status, _, body) = post(bad.to_owned(), Some(auth.clone())).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(!body.contains("GRANT"));
    }
}
