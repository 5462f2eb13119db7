//! The entity directory against a real DynamoDB API (moto's server over HTTP): tables
//! created and filled by the test, read by the sidecar's own DynamoDB reader through its
//! cache.

use std::time::Duration;

use authz_sidecar::directory::dynamo::{DynamoReader, client};
use authz_sidecar::directory::{CachePolicy, DirectoryCache, DirectoryError, ParentMapping, TableMapping, TableReader};
use aws_credential_types::Credentials;
use cedar_policy::EntityUid;
use serde_json::{Value, json};

use crate::harness::{self, Moto, start_moto};

async fn dynamodb(moto: &Moto, operation: &str, body: Value) -> Value {
    harness::moto_json(moto, "dynamodb", "DynamoDB_20120810", operation, body).await
}

/// The seed's users table, keyed by user name, with `count` users in lob-a.
async fn users_table(moto: &Moto, count: usize) {
    dynamodb(
        moto,
        "CreateTable",
        json!({"TableName": "users", "BillingMode": "PAY_PER_REQUEST",
               "KeySchema": [{"AttributeName": "userName", "KeyType": "HASH"}],
               "AttributeDefinitions": [{"AttributeName": "userName", "AttributeType": "S"}]}),
    )
    .await;
    let users: Vec<usize> = (0..count).collect();
    for chunk in users.chunks(25) {
        let puts: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"PutRequest": {"Item": {"userName": {"S": format!("user-{i}")}, "lob": {"S": "lob-a"},
                                                "teams": {"SS": ["Team1"]}, "badge": {"B": "AAE="}}}})
            })
            .collect();
        dynamodb(moto, "BatchWriteItem", json!({"RequestItems": {"users": puts}})).await;
    }
}

async fn reader(moto: &Moto) -> DynamoReader {
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(authz_sidecar::aws::http_client())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .load()
        .await;
    DynamoReader::new(client(&base, Some(&format!("http://127.0.0.1:{}", moto.port))))
}

/// A minute for everything: these tests are not about expiry.
fn minute_policy() -> CachePolicy {
    let minute = Duration::from_secs(60);
    CachePolicy { ttl: minute, negative_ttl: minute, max_staleness: minute, capacity: 1_000 }
}

fn users_mapping() -> TableMapping {
    TableMapping {
        table: "users".to_owned(),
        entity_type: "Studio::User".parse().unwrap(),
        key: "userName".to_owned(),
        attributes: Vec::new(),
        parents: vec![ParentMapping { from: "lob".to_owned(), entity_type: "Studio::Lob".parse().unwrap() }],
        tags: vec![("Team".to_owned(), "teams".to_owned())],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_read_from_dynamodb_in_batches_of_a_hundred_and_a_missing_one_is_absent() {
    let moto = start_moto().await;
    users_table(&moto, 150).await;
    let reader = reader(&moto).await;

    let mut keys: Vec<String> = (0..150).map(|i| format!("user-{i}")).collect();
    keys.push("nobody".to_owned());
    let items = reader.read("users", "userName", &keys).await.unwrap();
    assert_eq!(items.len(), 150, "two calls' worth, every existing key, not the missing one");
    assert!(!items.contains_key("nobody"));

    let schema = crate::support::shipped_snapshot().schema().clone();
    let cache = DirectoryCache::new(reader, vec![users_mapping()], minute_policy());
    let asked: Vec<EntityUid> =
        ["user-7", "nobody"].iter().map(|u| format!("Studio::User::\"{u}\"").parse().unwrap()).collect();
    let answers = cache.get(&asked, &schema, 0).await;
    let user = answers[0].as_ref().unwrap().as_ref().expect("user-7 is in the table");
    let json = user.entity.entity().to_json_value().unwrap();
    assert_eq!(json["parents"][0]["id"], "lob-a", "{json}");
    assert_eq!(json["tags"]["Team"], json!(["Team1"]), "{json}");
    assert!(matches!(answers[1], Ok(None)), "{:?}", answers[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_cannot_be_read_is_an_error_never_an_absent_user() {
    let moto = start_moto().await; // no table created
    let reader = reader(&moto).await;
    let error = reader.read("users", "userName", &["user-1".to_owned()]).await.unwrap_err();
    assert!(error.reason.contains("ResourceNotFoundException"), "{error}");

    let cache = DirectoryCache::new(reader, vec![users_mapping()], minute_policy());
    let schema = crate::support::shipped_snapshot().schema().clone();
    let answers = cache.get(&["Studio::User::\"user-1\"".parse().unwrap()], &schema, 0).await;
    assert!(matches!(answers[0], Err(DirectoryError::Unreachable(_))), "{:?}", answers[0]);
}

/// The shipped directory example's tables (`sidecar/config/directory-example.toml`),
/// created and filled in the seed's layout: lob-a and lob-b as in `entities/lobs.json`,
/// Team1, and `users` (name, LOB).
async fn seed_tables(moto: &Moto, users: &[(&str, &str)]) {
    for (table, key) in [
        ("authz-users", "userName"),
        ("authz-lobs", "lob"),
        ("authz-teams", "team"),
        ("authz-datazone-users", "userIdentifier"),
    ] {
        dynamodb(
            moto,
            "CreateTable",
            json!({"TableName": table, "BillingMode": "PAY_PER_REQUEST",
                   "KeySchema": [{"AttributeName": key, "KeyType": "HASH"}],
                   "AttributeDefinitions": [{"AttributeName": key, "AttributeType": "S"}]}),
        )
        .await;
    }
    let lob = |id: &str, account: &str, region: &str, vpce: &str| {
        json!({"lob": {"S": id}, "name": {"S": format!("Line of business {id}")}, "accountId": {"S": account},
               "region": {"S": region}, "domainId": {"S": format!("d-{id}example01")},
               "presignRoleArn": {"S": format!("arn:aws:iam::{account}:role/authz-sidecar-presign")},
               "vpceIds": {"SS": [vpce]}})
    };
    dynamodb(
        moto,
        "PutItem",
        json!({"TableName": "authz-lobs", "Item": lob("lob-a", "111111111111", "us-east-1", VPCE_A)}),
    )
    .await;
    dynamodb(
        moto,
        "PutItem",
        json!({"TableName": "authz-lobs", "Item": lob("lob-b", "222222222222", "us-west-2", VPCE_B)}),
    )
    .await;
    let team = json!({"team": {"S": "Team1"}, "executionRoleName": {"S": "sagemaker-team1-execution"}});
    dynamodb(moto, "PutItem", json!({"TableName": "authz-teams", "Item": team})).await;
    for (user, lob) in users {
        put_user(moto, user, lob).await;
    }
    // the caller DataZone uses for the account-pool handler, and one DataZone user
    let caller = json!({"userName": {"S": "datazone"}, "teams": {"SS": ["DataZoneAccountPool"]}});
    dynamodb(moto, "PutItem", json!({"TableName": "authz-users", "Item": caller})).await;
    let user = json!({"userIdentifier": {"S": DATAZONE_USER}, "displayName": {"S": "dana"}, "lob": {"S": "lob-a"}});
    dynamodb(moto, "PutItem", json!({"TableName": "authz-datazone-users", "Item": user})).await;
}

const DATAZONE_USER: &str = "0d9e6f5a-0000-4000-8000-00000000da7a";

const VPCE_A: &str = "vpce-0a1a000000000001a";
const VPCE_B: &str = "vpce-0b2b000000000001b";

async fn put_user(moto: &Moto, user: &str, lob: &str) {
    let item = json!({"userName": {"S": user}, "lob": {"S": lob}, "teams": {"SS": ["Team1"]}});
    dynamodb(moto, "PutItem", json!({"TableName": "authz-users", "Item": item})).await;
}

/// `user`'s Team1 profile, through `vpce`, from the corporate network.
async fn studio(data: std::net::SocketAddr, user: &str, vpce: &str, auth: String) -> (u16, http::HeaderMap, String) {
    let path = format!("/studio/{user}/Team1");
    let headers = [("authorization", auth.as_str()), ("x-amzn-vpce-id", vpce), ("x-forwarded-for", "10.1.2.3")];
    harness::get(data, &path, &headers).await
}

/// How many reads of `table` the sidecar has made, from its metrics.
async fn reads_of(admin: std::net::SocketAddr, table: &str) -> u64 {
    let (_, _, text) = harness::get(admin, "/metrics", &[]).await;
    let prefix = format!("authz_directory_fetch_seconds_count{{table=\"{table}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// The binary serving from the shipped directory example's tables on moto: nobody is in
/// an entity file (users, LOBs, teams and profiles files are empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_users_nobody_listed_from_the_tables_and_denies_what_it_cannot_read() {
    use crate::binary::{Running, start_binary};
    use crate::harness::TestServer;

    let moto = start_moto().await;
    seed_tables(&moto, &[("dana", "lob-a")]).await;
    let sagemaker = TestServer::start(|_| {
        (200, r#"{"AuthorizedUrl":"https://studio.example/auth?token=FAKE"}"#.to_owned(), Duration::ZERO)
    })
    .await;
    let ws = crate::support::Workspace::shipped();
    for file in ["users.json", "lobs.json", "teams.json", "user-profiles.json"] {
        ws.write_entities(file, "[]");
    }
    // the shipped example's [directory], at moto, with short times
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = std::fs::read_to_string(root.join("sidecar/config/directory-example.toml")).unwrap();
    let directory = &example[example.find("[directory]").unwrap()..];
    let directory = directory
        .replacen("[directory]", &format!("[directory]\nendpoint = \"http://127.0.0.1:{}\"", moto.port), 1)
        .replacen("ttl = \"60s\"", "ttl = \"2s\"", 1)
        .replacen("negative_ttl = \"30s\"", "negative_ttl = \"2s\"", 1)
        .replacen("max_staleness = \"5m\"", "max_staleness = \"10s\"", 1);
    let config = ws.dir.path().join("authz.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[policies]
dir = "{policies}"
entities = "{entities}"
[context]
trusted_proxies = ["127.0.0.1/32"]
[aws]
region = "us-east-1"
sts_endpoint = "http://127.0.0.1:{moto}"
sagemaker_endpoint = "{sagemaker}"
[[routes]]
name = "studio"
method = "GET"
handler = "presign"
derive_profile = {{ user = "user", team = "team" }}
{route}
[[routes]]
name = "account-pool"
method = "POST"
path = "/datazone/account-pool"
handler = "account_pool"
{directory}
"#,
            policies = ws.policies().display(),
            entities = ws.entities().display(),
            moto = moto.port,
            sagemaker = sagemaker.url(),
            route = harness::STUDIO_ROUTE,
        ),
    )
    .unwrap();
    let log = ws.dir.path().join("sidecar.log");
    let env = harness::aws_env(ws.dir.path());
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    let Running { mut child, data, admin } = start_binary(&["--config", config.to_str().unwrap()], &env, &log).await;
    let token = |user: &'static str| async move {
        let (_, _, token) = harness::get(admin, &format!("/dev/token?user={user}&groups=Team1"), &[]).await;
        format!("Bearer {token}")
    };
    let studio = move |user: &'static str, vpce: &'static str, auth: String| studio(data, user, vpce, auth);
    let signed_region = |i: usize| {
        let seen = sagemaker.requests.lock().unwrap();
        let authorization = seen[i].headers["authorization"].to_str().unwrap().to_owned();
        authorization.split('/').nth(2).unwrap_or_default().to_owned()
    };
    let (dana, nobody, frank, erin) =
        (token("dana").await, token("nobody").await, token("frank").await, token("erin").await);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // a user only the table knows gets their URL, in their LOB's region
    let (status, _, body) = studio("dana", VPCE_A, dana.clone()).await;
    assert_eq!(status, 302, "{body}\n{}", log_text());
    assert_eq!(signed_region(0), "us-east-1");
    // a user the table does not have is denied
    assert_eq!(studio("nobody", VPCE_A, nobody).await.0, 403);

    // the account-pool handler reads a DataZone user nobody listed from its table: lob-a's
    // pool grants them lob-a's account, and nothing of lob-b's
    let (_, _, caller) = harness::get(admin, "/dev/token?user=datazone&groups=DataZoneAccountPool", &[]).await;
    let caller = format!("Bearer {caller}");
    let validate = |account: &str| {
        json!({"operationRequest": {"listAuthorizedAccountsRequest": null,
            "validateAccountAuthorizationRequest": {"domainIdentifier": "dzd-4igt64u5j25ko9",
                "awsAccountId": account, "regionName": "us-east-1", "userIdentifier": DATAZONE_USER}}})
        .to_string()
    };
    for (account, answer) in [("004878717744", "GRANT"), ("444444444444", "DENY")] {
        let headers = [("authorization", caller.as_str()), ("content-type", "application/json")];
        let (status, _, body) =
            harness::request(data, "POST", "/datazone/account-pool", &headers, validate(account).into_bytes()).await;
        assert_eq!(status, 200, "{body}\n{}", log_text());
        assert!(body.contains(answer), "{account}: {body}");
    }

    // moved to lob-b in the table: after the TTL, served from lob-b (its endpoint, its
    // region), and no longer through lob-a's
    put_user(&moto, "dana", "lob-b").await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(studio("dana", VPCE_A, dana.clone()).await.0, 403, "lob-a's endpoint no longer serves dana");
    let (status, _, body) = studio("dana", VPCE_B, dana.clone()).await;
    assert_eq!(status, 302, "{body}\n{}", log_text());
    assert_eq!(signed_region(1), "us-west-2");

    // a hundred concurrent first requests for one user: one read of the users table
    put_user(&moto, "frank", "lob-a").await;
    let before = reads_of(admin, "authz-users").await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let frank = frank.clone();
        tasks.spawn(async move { studio("frank", VPCE_A, frank).await.0 });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 302);
    }
    assert_eq!(reads_of(admin, "authz-users").await - before, 1, "one read for a hundred first requests");

    // the directory goes away: a cached user is served within the staleness bound, an
    // uncached one is denied with 503, and /readyz says why
    let outage = std::time::Instant::now();
    drop(moto);
    let (status, _, body) = studio("dana", VPCE_B, dana.clone()).await;
    assert_eq!(status, 302, "stale within the bound: {body}\n{}", log_text());
    assert_eq!(studio("erin", VPCE_A, erin).await.0, 503);
    let (status, _, body) = harness::get(admin, "/readyz", &[]).await;
    assert_eq!(status, 503);
    assert!(body.contains("directory"), "{body}");
    // past the bound, the cached user is denied too
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(outage.elapsed())).await;
    assert_eq!(studio("dana", VPCE_B, dana).await.0, 503);

    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert!(!log_text().contains("token=FAKE"), "the presigned URL reached the log");
}
