//! Group-membership events: the CloudTrail shapes read (and malformed ones refused),
//! each change confirmed against a real Identity Store API and recorded in a real
//! DynamoDB API (moto's server), and a removal denied at once on the data plane of
//! every sidecar sharing the table.

use std::time::{Duration, SystemTime};

use authz_sidecar::lifecycle::{
    EventError, IdentityStore, Lifecycle, LifecycleError, Parsed, Revocations, Store, event, identity,
};
use aws_credential_types::Credentials;
use serde_json::{Value, json};

use crate::harness::{self, Moto, start_moto};

/// One of the recorded event shapes in `events/`.
pub(crate) fn recorded(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/events").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `event` with `value` at the JSON pointer `at` (its parent must exist).
pub(crate) fn with(mut event: Value, at: &str, value: Value) -> Value {
    let (parent, key) = at.rsplit_once('/').unwrap();
    let parent = event.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}"));
    parent.as_object_mut().unwrap().insert(key.to_owned(), value);
    event
}

pub(crate) fn without(mut event: Value, parent: &str, key: &str) -> Value {
    event.pointer_mut(parent).unwrap().as_object_mut().unwrap().remove(key);
    event
}

fn parse(event: &Value) -> Result<Parsed, EventError> {
    event::parse(event.to_string().as_bytes())
}

#[test]
fn the_four_recorded_shapes_are_read_and_anything_else_is_refused_or_ignored() {
    use authz_sidecar::lifecycle::Change;
    let (store, group, user) =
        ("d-906791299c", "34887428-4081-7042-c3c6-928d413009e7", "94482488-3041-7026-18f0-b6f23d8e0b55");
    let membership = "f4a8b4c8-1071-70a4-2a4e-7d3e0b9c5a61";
    let change = |name: &str| match parse(&recorded(name)).unwrap() {
        Parsed::Change(event) => {
            assert_eq!(event.store, store);
            event
        }
        other => panic!("{name}: {other:?}"),
    };
    let added = change("add-member-to-group.json");
    assert_eq!(added.change, Change::Joined { group: group.into(), user: user.into(), membership: None });
    assert_eq!(added.event_id, "1f5c2a8e-7d4b-4e21-9c3a-6b8d0e2f4a17");
    assert_eq!(added.at, humantime::parse_rfc3339("2026-11-02T09:14:05Z").unwrap());
    let removed = change("remove-member-from-group.json");
    assert_eq!(removed.change, Change::Left { group: group.into(), user: user.into() });
    let created = change("create-group-membership.json");
    assert_eq!(
        created.change,
        Change::Joined { group: group.into(), user: user.into(), membership: Some(membership.into()) }
    );
    let deleted = change("delete-group-membership.json");
    assert_eq!(deleted.change, Change::MembershipDeleted { membership: membership.into() });
    // the API's PascalCase reads the same
    let pascal = json!({"IdentityStoreId": store, "MembershipId": membership});
    let deleted_pascal = with(recorded("delete-group-membership.json"), "/detail/requestParameters", pascal);
    assert!(matches!(parse(&deleted_pascal), Ok(Parsed::Change(e)) if e.change == deleted.change));

    // a call CloudTrail recorded as failed changed nothing
    let failed = with(recorded("remove-member-from-group.json"), "/detail/errorCode", json!("AccessDenied"));
    let failed = match parse(&failed).unwrap() {
        Parsed::Ignored { reason, .. } => reason,
        other => panic!("{other:?}"),
    };
    assert!(failed.contains("AccessDenied"), "{failed}");

    // refused, each with a clear error and its errorType
    let remove = || recorded("remove-member-from-group.json");
    let cases: Vec<(Value, &str, &str)> = vec![
        (without(remove(), "/detail/requestParameters", "groupId"), "MalformedEvent", "lacks `groupId`"),
        (
            with(remove(), "/detail/requestParameters/member/memberId", json!("../../admin")),
            "MalformedEvent",
            "member.memberId",
        ),
        (with(remove(), "/detail/requestParameters/member/memberId", json!(7)), "MalformedEvent", "member.memberId"),
        (
            with(remove(), "/detail/requestParameters/identityStoreId", json!("d-XYZ")),
            "MalformedEvent",
            "identityStoreId",
        ),
        (with(remove(), "/detail/requestParameters", Value::Null), "MalformedEvent", "lacks `identityStoreId`"),
        (with(remove(), "/detail/eventTime", json!("yesterday")), "MalformedEvent", "eventTime"),
        (without(remove(), "/detail", "eventTime"), "MalformedEvent", "eventTime"),
        (with(remove(), "/detail/eventName", json!("DeleteUser")), "UnsupportedEvent", "DeleteUser"),
        (with(remove(), "/detail/eventSource", json!("iam.amazonaws.com")), "UnsupportedEvent", "eventSource"),
        (with(remove(), "/detail-type", json!("Scheduled Event")), "UnsupportedEvent", "detail-type"),
        (recorded("delete-group-membership.json")["detail"].clone(), "UnsupportedEvent", "detail-type"),
    ];
    for (event, error_type, says) in cases {
        let error = parse(&event).unwrap_err();
        assert_eq!(error.error_type(), error_type, "{error}");
        assert!(error.to_string().contains(says), "{error} should say {says}");
        assert!(!error.to_string().contains("admin"), "no value is echoed: {error}");
    }
    assert_eq!(event::parse(b"{not json").unwrap_err().error_type(), "InvalidEvent");
}

pub(crate) async fn identitystore(moto: &Moto, operation: &str, body: Value) -> Value {
    harness::moto_json(moto, "identitystore", "AWSIdentityStore", operation, body).await
}

async fn dynamodb(moto: &Moto, operation: &str, body: Value) -> Value {
    harness::moto_json(moto, "dynamodb", "DynamoDB_20120810", operation, body).await
}

pub(crate) const STORE: &str = "d-906791299c";

/// The identity store's people: `user` (user name) in `group` (display name); their ids
/// and the membership's.
pub(crate) struct Directory {
    pub user: String,
    pub group: String,
    pub membership: String,
}

pub(crate) async fn person_in_group(moto: &Moto, user_name: &str, group_name: &str) -> Directory {
    let user = person(moto, user_name).await;
    let group = identitystore(moto, "CreateGroup", json!({"IdentityStoreId": STORE, "DisplayName": group_name})).await
        ["GroupId"]
        .as_str()
        .unwrap()
        .to_owned();
    let membership = join(moto, &user, &group).await;
    Directory { user, group, membership }
}

/// A user of the identity store, in no group: their id.
async fn person(moto: &Moto, user_name: &str) -> String {
    identitystore(
        moto,
        "CreateUser",
        json!({"IdentityStoreId": STORE, "UserName": user_name, "DisplayName": user_name,
               "Name": {"GivenName": user_name, "FamilyName": "Example"}}),
    )
    .await["UserId"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) async fn join(moto: &Moto, user: &str, group: &str) -> String {
    identitystore(
        moto,
        "CreateGroupMembership",
        json!({"IdentityStoreId": STORE, "GroupId": group, "MemberId": {"UserId": user}}),
    )
    .await["MembershipId"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) async fn leave(moto: &Moto, membership: &str) {
    identitystore(moto, "DeleteGroupMembership", json!({"IdentityStoreId": STORE, "MembershipId": membership})).await;
}

pub(crate) async fn lifecycle_table(moto: &Moto) {
    dynamodb(
        moto,
        "CreateTable",
        json!({"TableName": "authz-lifecycle", "BillingMode": "PAY_PER_REQUEST",
               "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
               "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"},
                                        {"AttributeName": "sk", "AttributeType": "S"}]}),
    )
    .await;
}

/// The recorded `name` event about `person`, made at `at`.
pub(crate) fn event_about(name: &str, person: &Directory, at: SystemTime) -> Value {
    let mut event = recorded(name);
    let params = event.pointer_mut("/detail/requestParameters").unwrap();
    for (key, value) in [("groupId", &person.group), ("membershipId", &person.membership)] {
        if params.get(key).is_some() {
            params[key] = json!(value);
        }
    }
    if let Some(member) = params.get_mut("member") {
        member["memberId"] = json!(person.user);
    }
    if let Some(member) = params.get_mut("memberId") {
        member["userId"] = json!(person.user);
    }
    if let Some(response) = event.pointer_mut("/detail/responseElements").filter(|r| !r.is_null()) {
        response["membershipId"] = json!(person.membership);
    }
    with(event, "/detail/eventTime", json!(humantime::format_rfc3339_seconds(at).to_string()))
}

async fn in_process(moto: &Moto) -> (Lifecycle, std::sync::Arc<Store>) {
    in_process_serving(moto, None).await
}

/// As [`in_process`], serving identity store `only` (and so synchronising with it).
async fn in_process_serving(moto: &Moto, only: Option<&str>) -> (Lifecycle, std::sync::Arc<Store>) {
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(authz_sidecar::aws::http_client())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .load()
        .await;
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let config = authz_sidecar::config::Config::from_toml("[lifecycle]\ntable = \"authz-lifecycle\"\n", "test")
        .unwrap()
        .lifecycle
        .unwrap();
    let client = authz_sidecar::directory::dynamo::client(&base, Some(&endpoint));
    let store = std::sync::Arc::new(Store::Table { client, table: "authz-lifecycle".to_owned() });
    let revocations = std::sync::Arc::new(Revocations::new(store.clone(), &config));
    let identity = IdentityStore::new(identity::client(&base, Some(&endpoint)), &config);
    let lifecycle = Lifecycle::new(store.clone(), identity, revocations, config.token_lifetime)
        .only_store(only.map(str::to_owned), Vec::new());
    (lifecycle, store)
}

fn secs(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_confirmed_with_the_identity_store_and_every_delivery_is_harmless() {
    let moto = start_moto().await;
    lifecycle_table(&moto).await;
    let dana = person_in_group(&moto, "dana", "Team1").await;
    let (lifecycle, store) = in_process(&moto).await;
    let snapshot = crate::support::shipped_snapshot();
    let apply = |event: Value| {
        let (lifecycle, snapshot) = (&lifecycle, snapshot.clone());
        async move { lifecycle.handle(event.to_string().as_bytes(), "test", &snapshot).await }
    };
    let now = SystemTime::now();

    // the membership is made: remembered under its id, with the names it resolved to
    let answer = apply(event_about("create-group-membership.json", &dana, now)).await.unwrap();
    assert_eq!(answer["outcome"], "recorded", "{answer}");
    assert_eq!((answer["principal"].as_str(), answer["team"].as_str()), (Some("dana"), Some("Team1")));
    assert!(store.revocations("dana", secs(now)).await.unwrap().is_empty());

    // a deletion delivered while the identity store still has the membership (a forged
    // or early event) revokes nothing
    let deleted = event_about("delete-group-membership.json", &dana, now);
    let answer = apply(deleted.clone()).await.unwrap();
    assert_eq!(answer["outcome"], "unchanged", "{answer}");
    assert!(store.revocations("dana", secs(now)).await.unwrap().is_empty());

    // deleted for real: the deletion names only the membership id, and is attributed
    leave(&moto, &dana.membership).await;
    let answer = apply(deleted.clone()).await.unwrap();
    assert_eq!(answer["outcome"], "revoked", "{answer}");
    let revoked = store.revocations("dana", secs(now)).await.unwrap();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!((revoked[0].team.as_str(), revoked[0].at), ("Team1", secs(now)));
    assert_eq!(revoked[0].until, secs(now) + 12 * 3600, "kept as long as the longest token lives");

    // delivered again, and an older removal delivered late: the record stays as it is
    assert_eq!(apply(deleted).await.unwrap()["outcome"], "revoked");
    let older = now - Duration::from_secs(600);
    let answer = apply(event_about("remove-member-from-group.json", &dana, older)).await.unwrap();
    assert_eq!(answer["outcome"], "revoked", "{answer}");
    assert_eq!(store.revocations("dana", secs(now)).await.unwrap(), revoked, "never moved earlier");

    // added back: a removal delivered now (out of order) revokes nothing, the add is
    // remembered under its new id
    dana_rejoins(&moto, &dana).await;
    let later = now + Duration::from_secs(60);
    let answer = apply(event_about("remove-member-from-group.json", &dana, later)).await.unwrap();
    assert_eq!(answer["outcome"], "unchanged", "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains("member again"), "{answer}");
    assert_eq!(store.revocations("dana", secs(now)).await.unwrap(), revoked);

    // an add the identity store no longer agrees with changes nothing
    let erin = person_in_group(&moto, "erin", "Team2").await;
    leave(&moto, &erin.membership).await;
    let answer = apply(event_about("add-member-to-group.json", &erin, now)).await.unwrap();
    assert_eq!(answer["outcome"], "unchanged", "{answer}");

    // a deletion of a membership never seen cannot be attributed: an error, nothing revoked
    let stranger = Directory { membership: "906791299c-00000000-0000-4000-8000-000000000000".to_owned(), ..erin };
    let error = apply(event_about("delete-group-membership.json", &stranger, now)).await.unwrap_err();
    assert!(matches!(error, LifecycleError::UnknownMembership { .. }), "{error}");
    assert_eq!(error.error_type(), "UnknownMembership");

    // a failed call recorded by CloudTrail is ignored
    let failed =
        with(event_about("remove-member-from-group.json", &dana, now), "/detail/errorCode", json!("Throttling"));
    assert_eq!(apply(failed).await.unwrap()["outcome"], "unchanged");
}

async fn dana_rejoins(moto: &Moto, dana: &Directory) {
    join(moto, &dana.user, &dana.group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_cannot_be_read_so_the_answer_is_an_error_never_no_revocation() {
    let moto = start_moto().await; // no table
    let (_, store) = in_process(&moto).await;
    let error = store.revocations("dana", 0).await.unwrap_err();
    assert!(error.to_string().contains("ResourceNotFoundException"), "{error}");
}

/// Two sidecar processes sharing one lifecycle table: a token cached by both for Team1
/// and Team2, the removal from Team1 reported to one of them, and the next request with
/// the same token denied by both for Team1 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_denies_the_next_request_with_the_same_token_on_every_sidecar() {
    use crate::binary::{Running, start_binary};

    let moto = start_moto().await;
    lifecycle_table(&moto).await;
    let user1 = person_in_group(&moto, "user-1", "Team1").await;
    let jwks = harness::Jwks::start(&[&harness::keys().0]).await;
    let ws = crate::support::Workspace::shipped();
    let config = ws.dir.path().join("authz.toml");
    std::fs::write(
        &config,
        format!(
            r#"{base}
[aws]
region = "us-east-1"
[lifecycle]
table = "authz-lifecycle"
endpoint = "http://127.0.0.1:{moto}"
identitystore_endpoint = "http://127.0.0.1:{moto}"
clock_skew = "0s"
[[routes]]
name = "studio"
method = "GET"
handler = "echo"
{studio}
[[routes]]
name = "membership-events"
method = "POST"
path = "/identity-center/membership-events"
handler = "membership_events"
"#,
            base = harness::base_toml(&ws, harness::ISSUER, &jwks.url()),
            moto = moto.port,
            studio = harness::STUDIO_ROUTE,
        ),
    )
    .unwrap();
    let env = harness::aws_env(ws.dir.path());
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    let args = ["--config", config.to_str().unwrap()];
    let (log_a, log_b) = (ws.dir.path().join("a.log"), ws.dir.path().join("b.log"));
    let Running { child: mut a, data: data_a, .. } = start_binary(&args, &env, &log_a).await;
    // a fresh table, so each sidecar reads it on every request (believe_for = 0s)
    let Running { child: mut b, data: data_b, .. } = start_binary(&args, &env, &log_b).await;
    let logs = || {
        format!(
            "{}\n{}",
            std::fs::read_to_string(&log_a).unwrap_or_default(),
            std::fs::read_to_string(&log_b).unwrap_or_default()
        )
    };
    // issued a minute ago, before the removal
    let issued = with(harness::claims("user-1", &["Team1", "Team2"]), "/iat", json!(harness::now() - 60));
    let token = harness::sign(&harness::keys().0, &issued);
    let studio = |data: std::net::SocketAddr, team: &'static str| {
        let auth = format!("Bearer {token}");
        async move {
            let headers = [
                ("authorization", auth.as_str()),
                ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
                ("x-forwarded-for", "10.1.2.3"),
            ];
            harness::get(data, &format!("/studio/user-1/{}", team.to_lowercase()), &headers).await.0
        }
    };
    for data in [data_a, data_b] {
        for team in ["Team1", "Team2"] {
            assert_eq!(studio(data, team).await, 200, "{team}\n{}", logs());
        }
    }

    let report = |caller: String, event: Value| async move {
        let auth = format!("Bearer {caller}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        harness::request(data_a, "POST", "/identity-center/membership-events", &headers, event.to_string().into_bytes())
            .await
    };
    let relay = harness::token("membership-events", &["MembershipEvents"]);
    let removal = event_about("remove-member-from-group.json", &user1, SystemTime::now());
    // only the event bus's identity may report; a malformed event changes nothing
    let (status, _, _) = report(harness::token("user-1", &["Team1"]), removal.clone()).await;
    assert_eq!(status, 403);
    let (status, _, body) =
        report(relay.clone(), without(removal.clone(), "/detail/requestParameters", "groupId")).await;
    assert_eq!(status, 400, "{body}");
    for data in [data_a, data_b] {
        assert_eq!(studio(data, "Team1").await, 200, "nothing changed yet\n{}", logs());
    }

    leave(&moto, &user1.membership).await;
    let (status, _, body) = report(relay, removal).await;
    assert_eq!(status, 200, "{body}\n{}", logs());
    assert!(body.contains("\"revoked\""), "{body}");
    for data in [data_a, data_b] {
        assert_eq!(studio(data, "Team1").await, 403, "the same token, the next request\n{}", logs());
        assert_eq!(studio(data, "Team2").await, 200, "only the team left is lost\n{}", logs());
    }
    // a token issued after the removal is the issuer's word since: it is not revoked
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let fresh =
        harness::sign(&harness::keys().0, &with(harness::claims("user-1", &["Team1"]), "/iat", json!(harness::now())));
    let auth = format!("Bearer {fresh}");
    let headers = [
        ("authorization", auth.as_str()),
        ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
        ("x-forwarded-for", "10.1.2.3"),
    ];
    assert_eq!(harness::get(data_b, "/studio/user-1/team1", &headers).await.0, 200, "{}", logs());

    // the table goes away: with nothing known within max_staleness for a new principal,
    // the request is refused, never let through on a guess
    drop(moto);
    let other = harness::token("user-2", &["Team2"]);
    let auth = format!("Bearer {other}");
    let headers = [
        ("authorization", auth.as_str()),
        ("x-amzn-vpce-id", "vpce-0b2b000000000001b"),
        ("x-forwarded-for", "10.1.2.3"),
    ];
    assert_eq!(harness::get(data_b, "/studio/user-2/team2", &headers).await.0, 503, "{}", logs());

    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(!logs().contains(&token), "a token reached the log");
}

/// (domain, profile, execution role, tags) of every CreateUserProfile.
type Made = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String, Vec<(String, String)>)>>>;

/// Profiles follow membership: on join the profile is made (the policies allowing it)
/// with the team's execution role and tags; on leave its apps and then it are removed.
/// The identity store and the table are moto's; SageMaker and STS the SDK's mocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_makes_the_profile_the_policies_allow_and_a_leave_removes_it_with_its_apps() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use authz_sidecar::handlers::presign::Presigner;
    use authz_sidecar::lifecycle::Profiles;
    use aws_sdk_sagemaker::operation::create_user_profile::CreateUserProfileOutput;
    use aws_sdk_sagemaker::operation::delete_app::DeleteAppOutput;
    use aws_sdk_sagemaker::operation::delete_user_profile::DeleteUserProfileOutput;
    use aws_sdk_sagemaker::operation::describe_user_profile::{DescribeUserProfileError, DescribeUserProfileOutput};
    use aws_sdk_sagemaker::operation::list_apps::ListAppsOutput;
    use aws_sdk_sagemaker::types::{AppDetails, AppStatus, AppType, UserProfileStatus};
    use aws_smithy_mocks::{MockResponse, mock};

    let moto = start_moto().await;
    lifecycle_table(&moto).await;
    let user1 = person_in_group(&moto, "user-1", "Team1").await;

    // SageMaker: no profile until it is created; one running app until it is deleted
    let exists: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let app_gone = Arc::new(AtomicBool::new(false));
    let made: Made = Arc::default();
    let (record, created) = (made.clone(), exists.clone());
    let create = mock!(aws_sdk_sagemaker::Client::create_user_profile).then_compute_output(move |input| {
        let tags = input.tags().iter().map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned())).collect();
        let role = input.user_settings().and_then(|u| u.execution_role()).unwrap().to_owned();
        let (domain, name) = (input.domain_id().unwrap().to_owned(), input.user_profile_name().unwrap().to_owned());
        created.lock().unwrap().insert(name.clone());
        record.lock().unwrap().push((domain, name, role, tags));
        CreateUserProfileOutput::builder()
            .user_profile_arn("arn:aws:sagemaker:us-east-1:111111111111:user-profile/x")
            .build()
    });
    let there = exists.clone();
    let describe = mock!(aws_sdk_sagemaker::Client::describe_user_profile).then_compute_response(move |input| {
        if there.lock().unwrap().contains(input.user_profile_name().unwrap()) {
            MockResponse::Output(DescribeUserProfileOutput::builder().status(UserProfileStatus::InService).build())
        } else {
            MockResponse::Error(DescribeUserProfileError::ResourceNotFound(
                aws_sdk_sagemaker::types::error::ResourceNotFound::builder().message("no such profile").build(),
            ))
        }
    });
    let gone = app_gone.clone();
    let list = mock!(aws_sdk_sagemaker::Client::list_apps).then_compute_output(move |input| {
        assert_eq!(input.user_profile_name_equals(), Some("user-1-team1"));
        let status = if gone.load(Ordering::SeqCst) { AppStatus::Deleted } else { AppStatus::InService };
        let app = AppDetails::builder().app_type(AppType::JupyterLab).app_name("default").status(status).build();
        ListAppsOutput::builder().apps(app).build()
    });
    let stop = app_gone.clone();
    let delete_app = mock!(aws_sdk_sagemaker::Client::delete_app).then_compute_output(move |_| {
        stop.store(true, Ordering::SeqCst);
        DeleteAppOutput::builder().build()
    });
    let delete_profile = mock!(aws_sdk_sagemaker::Client::delete_user_profile).then_compute_output(|input| {
        assert_eq!((input.domain_id(), input.user_profile_name()), (Some("d-lobaexample01"), Some("user-1-team1")));
        DeleteUserProfileOutput::builder().build()
    });
    let assumed: Arc<Mutex<Vec<String>>> = Arc::default();
    let roles = assumed.clone();
    let sts = mock!(aws_sdk_sts::Client::assume_role).then_compute_output(move |input| {
        roles.lock().unwrap().push(input.role_arn().unwrap().to_owned());
        crate::presign::sts_credentials_keyed("ASIALOBA".to_owned(), Duration::from_secs(3600))
    });
    let sagemaker = crate::presign::MockSageMaker {
        rules: vec![create.clone(), describe, list, delete_app.clone(), delete_profile.clone()],
    };
    let presigner = Arc::new(Presigner::new(
        aws_smithy_mocks::mock_client!(aws_sdk_sts, aws_smithy_mocks::RuleMode::MatchAny, &[&sts]),
        Arc::new(sagemaker),
    ));

    let config = authz_sidecar::config::Config::from_toml(
        &format!(
            r#"
[lifecycle]
table = "authz-lifecycle"
profile_route = "studio"
[[routes]]
name = "studio"
method = "GET"
handler = "presign"
presign = {{ provision = true, provision_poll = "500ms", provision_wait = "5s" }}
derive_profile = {{ user = "user", team = "team" }}
{studio}
"#,
            studio = harness::STUDIO_ROUTE
        ),
        "test",
    )
    .unwrap();
    let route = config.routes[0].clone();
    let authz_sidecar::config::Handler::Presign(options) = route.handler.clone() else { panic!() };
    let profiles = || {
        Profiles::new(
            route.clone(),
            route.derive_profile.clone().unwrap(),
            options.clone(),
            config.principal.clone(),
            presigner.clone(),
            None,
            options.provision.clone(),
            Some(authz_sidecar::lifecycle::cleanup::CleanupOptions {
                wait: Duration::from_secs(5),
                first_poll: Duration::from_millis(20),
                ..Default::default()
            }),
        )
    };
    let (lifecycle, _) = in_process(&moto).await;
    let lifecycle = lifecycle.with_profiles(profiles());
    let snapshot = crate::support::shipped_snapshot();
    let apply = |event: Value| {
        let (lifecycle, snapshot) = (&lifecycle, snapshot.clone());
        async move { lifecycle.handle(event.to_string().as_bytes(), "test", &snapshot).await }
    };

    // user-1 joins Team1: their Team1 profile is made in lob-a's domain, through lob-a's
    // role, with Team1's execution role and the tags the presign handler writes
    let answer = apply(event_about("add-member-to-group.json", &user1, SystemTime::now())).await.unwrap();
    assert_eq!(answer["profile"]["outcome"], "created", "{answer}");
    let first = made.lock().unwrap().clone();
    assert_eq!(first.len(), 1, "{first:?}");
    let (domain, name, role, tags) = &first[0];
    assert_eq!((domain.as_str(), name.as_str()), ("d-lobaexample01", "user-1-team1"));
    assert_eq!(role, "arn:aws:iam::111111111111:role/sagemaker-team1-execution");
    for tag in [("Owner", "user-1"), ("Team", "Team1")] {
        assert!(tags.iter().any(|(k, v)| (k.as_str(), v.as_str()) == tag), "{tag:?} in {tags:?}");
    }
    assert_eq!(assumed.lock().unwrap().as_slice(), ["arn:aws:iam::111111111111:role/authz-sidecar-presign"]);
    // delivered again: the profile is there, nothing is made twice
    let answer = apply(event_about("add-member-to-group.json", &user1, SystemTime::now())).await.unwrap();
    assert_eq!(answer["profile"]["outcome"], "already_there", "{answer}");
    assert_eq!(create.num_calls(), 1);

    // the security team decides: without the permit, a join makes nothing
    let ws = crate::support::Workspace::shipped();
    let policy = std::fs::read_to_string(ws.policies().join("lifecycle.cedar")).unwrap();
    let without_permit = policy.replace("@id(\"provision-own-profile-on-join\")\npermit", "@id(\"x\")\nforbid");
    assert_ne!(policy, without_permit);
    std::fs::write(ws.policies().join("lifecycle.cedar"), without_permit).unwrap();
    let strict = authz_sidecar::policy_store::PolicyStore::load_files(&ws.dirs()).unwrap().current().unwrap();
    let event = event_about("add-member-to-group.json", &user1, SystemTime::now());
    let answer = lifecycle.handle(event.to_string().as_bytes(), "test", &strict).await.unwrap();
    assert_eq!(answer["profile"]["outcome"], "not_allowed", "{answer}");
    assert_eq!(create.num_calls(), 1);

    // someone no entity knows (so no line of business) joins: nothing is made
    let stranger = person_in_group(&moto, "user-9", "Team2").await;
    let answer = apply(event_about("add-member-to-group.json", &stranger, SystemTime::now())).await.unwrap();
    assert_eq!(answer["outcome"], "recorded", "{answer}");
    assert_eq!(answer["profile"]["outcome"], "no_profile", "{answer}");
    assert_eq!(create.num_calls(), 1);

    // the HTTP form answers before the profile step (an API destination waits 5 s) and
    // runs it after: user-2 joins Team2 and gets their profile made in the background
    let user = person(&moto, "user-2").await;
    let user2 =
        Directory { membership: join(&moto, &user, &stranger.group).await, user, group: stranger.group.clone() };
    let (detached, _) = in_process(&moto).await;
    let detached = detached.with_profiles(profiles()).detach_profile_steps();
    let event = event_about("add-member-to-group.json", &user2, SystemTime::now());
    let answer = detached.handle(event.to_string().as_bytes(), "test", &snapshot).await.unwrap();
    assert_eq!(answer["profile"]["outcome"], "started", "{answer}");
    for _ in 0..100 {
        if create.num_calls() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(create.num_calls(), 2, "made after the answer");
    assert_eq!(made.lock().unwrap()[1].1, "user-2-team2");

    // user-1 leaves Team1: revoked, then the app and the profile are deleted
    leave(&moto, &user1.membership).await;
    let answer = apply(event_about("remove-member-from-group.json", &user1, SystemTime::now())).await.unwrap();
    assert_eq!(answer["outcome"], "revoked", "{answer}");
    assert_eq!(answer["profile"]["outcome"], "removed", "{answer}");
    assert_eq!(answer["profile"]["appsDeleted"], "1", "{answer}");
    assert_eq!((delete_app.num_calls(), delete_profile.num_calls()), (1, 1));
}

/// The memberships of the teams the policies know, synchronised: one made without an
/// event is remembered, one removed without an event (or whose event was lost) is
/// revoked, and a deletion nobody saw being made reconciles instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_remembers_what_no_event_told_and_revokes_what_was_lost() {
    let moto = start_moto().await;
    lifecycle_table(&moto).await;
    let dana = person_in_group(&moto, "dana", "Team1").await;
    let (lifecycle, store) = in_process_serving(&moto, Some(STORE)).await;
    let snapshot = crate::support::shipped_snapshot();
    let now = secs_now;

    // no event was ever seen: the first sync remembers dana's membership (Team2 has no
    // group in this identity store, and is skipped)
    let synced = lifecycle.sync(&snapshot, "test").await.unwrap();
    assert_eq!((synced["teams"].as_u64(), synced["groups"].as_u64()), (Some(2), Some(1)), "{synced}");
    assert_eq!(synced["remembered"], 1, "{synced}");
    assert_eq!(synced["errors"], json!([]), "{synced}");
    // so its deletion, which names only the membership, is attributed
    leave(&moto, &dana.membership).await;
    let deleted = event_about("delete-group-membership.json", &dana, SystemTime::now());
    let answer = lifecycle.handle(deleted.to_string().as_bytes(), "test", &snapshot).await.unwrap();
    assert_eq!((answer["outcome"].as_str(), answer["principal"].as_str()), (Some("revoked"), Some("dana")), "{answer}");

    // erin joins and leaves while both events are lost: the next sync remembers, the one
    // after revokes as of then
    let erin = join(&moto, &person(&moto, "erin").await, &dana.group).await;
    assert_eq!(lifecycle.sync(&snapshot, "test").await.unwrap()["remembered"], 1);
    leave(&moto, &erin).await;
    let before = now();
    let synced = lifecycle.sync(&snapshot, "test").await.unwrap();
    assert_eq!(synced["revoked"], 1, "{synced}");
    let revoked = store.revocations("erin", now()).await.unwrap();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert!(revoked[0].team == "Team1" && revoked[0].at >= before, "{revoked:?}");
    assert_eq!(lifecycle.sync(&snapshot, "test").await.unwrap()["revoked"], 0, "revoked once, then forgotten");

    // frank joins and leaves between two syncs; his deletion names a membership never
    // seen: the teams are synchronised instead of failing, and nothing wrong is revoked
    let frank = person(&moto, "frank").await;
    let franks = join(&moto, &frank, &dana.group).await;
    leave(&moto, &franks).await;
    let unseen = Directory { user: frank, group: dana.group.clone(), membership: franks };
    let event = event_about("delete-group-membership.json", &unseen, SystemTime::now());
    let answer = lifecycle.handle(event.to_string().as_bytes(), "test", &snapshot).await.unwrap();
    assert_eq!(answer["outcome"], "reconciled", "{answer}");
    assert!(store.revocations("frank", now()).await.unwrap().is_empty());

    // an event about another identity store is refused
    let other = with(event, "/detail/requestParameters/identityStoreId", json!("d-0000000000"));
    let error = lifecycle.handle(other.to_string().as_bytes(), "test", &snapshot).await.unwrap_err();
    assert_eq!((error.error_type(), error.status().as_u16()), ("UnsupportedEvent", 400), "{error}");
}

fn secs_now() -> u64 {
    secs(SystemTime::now())
}

/// A schema that cannot ask whether a joining user gets a profile is refused when the
/// snapshot is checked against the configuration, not discovered join by join.
#[test]
fn provisioning_needs_its_action_in_the_schema() {
    let ws = crate::support::Workspace::shipped();
    let schema_path = ws.policies().join("schema.cedarschema");
    let schema = std::fs::read_to_string(&schema_path).unwrap();
    let start = schema.find("  action ProvisionUserProfile").unwrap();
    let end = start + schema[start..].find("};").unwrap() + 2;
    std::fs::write(&schema_path, format!("{}{}", &schema[..start], &schema[end..])).unwrap();
    let policy_path = ws.policies().join("lifecycle.cedar");
    let policy = std::fs::read_to_string(&policy_path).unwrap();
    std::fs::write(&policy_path, &policy[..policy.find("// Who gets a Studio profile made").unwrap()]).unwrap();
    let snapshot = authz_sidecar::policy_store::PolicyStore::load_files(&ws.dirs()).unwrap().current().unwrap();
    let config = |provision: bool| {
        authz_sidecar::config::Config::from_toml(
            &format!(
                "[lifecycle]\nprofile_route = \"studio\"\nprovision = {provision}\n[[routes]]\nname = \"studio\"\n\
                 method = \"GET\"\nhandler = \"presign\"\nderive_profile = {{ user = \"user\", team = \"team\" }}\n{}\n",
                harness::STUDIO_ROUTE
            ),
            "test",
        )
        .unwrap()
    };
    let problems = authz_sidecar::app::check_routes(&config(true), &snapshot);
    assert!(problems.iter().any(|p| p.contains("ProvisionUserProfile")), "{problems:?}");
    assert!(authz_sidecar::app::check_routes(&config(false), &snapshot).is_empty());
    assert!(authz_sidecar::app::check_routes(&config(true), &crate::support::shipped_snapshot()).is_empty());
}
