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
