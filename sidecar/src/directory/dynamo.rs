//! DynamoDB as the directory's [`TableReader`]: `BatchGetItem`, 100 keys a call (the
//! API's limit), keys DynamoDB leaves unprocessed (throttling, the 16 MB answer limit)
//! asked again with a jittered backoff a bounded number of times, then the read fails:
//! the cache never takes a key it could not read for a key that does not exist.
//!
//! Reads are eventually consistent (half the cost of strongly consistent ones): a change
//! to a table reaches a sidecar within DynamoDB's propagation (typically under a second)
//! plus the cache's TTL.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue as Sdk, KeysAndAttributes};
use backon::BackoffBuilder;

use super::cache::{ReadError, TableReader};
use super::mapping::{AttributeValue, Item};

/// Keys per `BatchGetItem` call.
const BATCH: usize = 100;
/// Calls for one batch's unprocessed keys before the read fails.
const MAX_ROUNDS: usize = 5;

/// Reads directory tables from DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoReader {
    client: Client,
}

impl DynamoReader {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

/// A DynamoDB client on the standard AWS set-up, at `endpoint` when given (a VPC
/// endpoint, or a local emulator).
pub fn client(base: &aws_config::SdkConfig, endpoint: Option<&str>) -> Client {
    let mut builder = aws_sdk_dynamodb::config::Builder::from(base).interceptor(crate::otel::AwsTraceContext);
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    Client::from_conf(builder.build())
}

impl TableReader for DynamoReader {
    async fn read(&self, table: &str, key: &str, keys: &[String]) -> Result<HashMap<String, Item>, ReadError> {
        let failed = |reason: String| ReadError { table: table.to_owned(), reason };
        let mut found = HashMap::new();
        for chunk in keys.chunks(BATCH) {
            let wanted: Vec<HashMap<String, Sdk>> =
                chunk.iter().map(|k| HashMap::from([(key.to_owned(), Sdk::S(k.clone()))])).collect();
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(wanted))
                    .build()
                    .map_err(|e| failed(format!("the request cannot be built: {e}")))?,
            );
            let mut delays = backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(1))
                .with_jitter()
                .build();
            let mut rounds = 0;
            while let Some(request) = pending.take() {
                rounds += 1;
                if rounds > MAX_ROUNDS {
                    return Err(failed(format!("keys were still unprocessed after {MAX_ROUNDS} calls (throttled)")));
                }
                let output = self
                    .client
                    .batch_get_item()
                    .request_items(table, request)
                    .send()
                    .await
                    .map_err(|e| failed(describe(&e)))?;
                for item in output.responses().and_then(|r| r.get(table)).into_iter().flatten() {
                    if let Some(Sdk::S(id)) = item.get(key) {
                        found.insert(id.clone(), convert_item(item));
                    }
                }
                pending = output
                    .unprocessed_keys()
                    .and_then(|u| u.get(table))
                    .filter(|left| !left.keys().is_empty())
                    .cloned();
                if pending.is_some() {
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
                }
            }
        }
        Ok(found)
    }
}

/// The service's error code and message, or the kind of failure (never credentials).
fn describe<E, R>(error: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error,
    R: std::fmt::Debug,
{
    use aws_sdk_dynamodb::error::SdkError;
    match error {
        SdkError::ServiceError(service) => {
            let err = service.err();
            format!("BatchGetItem: {}: {}", err.code().unwrap_or("error"), err.message().unwrap_or_default())
        }
        SdkError::TimeoutError(_) => "BatchGetItem: timed out".to_owned(),
        SdkError::DispatchFailure(_) => "BatchGetItem: DynamoDB could not be reached".to_owned(),
        other => format!("BatchGetItem: {other}"),
    }
}

fn convert_item(item: &HashMap<String, Sdk>) -> Item {
    item.iter().map(|(name, value)| (name.clone(), convert(value))).collect()
}

fn convert(value: &Sdk) -> AttributeValue {
    match value {
        Sdk::S(text) => AttributeValue::S(text.clone()),
        Sdk::N(number) => AttributeValue::N(number.clone()),
        Sdk::Bool(b) => AttributeValue::Bool(*b),
        Sdk::Ss(texts) => AttributeValue::Ss(texts.clone()),
        Sdk::Ns(numbers) => AttributeValue::Ns(numbers.clone()),
        Sdk::L(items) => AttributeValue::L(items.iter().map(convert).collect()),
        Sdk::M(fields) => {
            AttributeValue::M(fields.iter().map(|(k, v)| (k.clone(), convert(v))).collect::<BTreeMap<_, _>>())
        }
        Sdk::Null(_) => AttributeValue::Null,
        // binary values, and kinds this SDK version does not know: nothing Cedar holds
        _ => AttributeValue::Unsupported,
    }
}
