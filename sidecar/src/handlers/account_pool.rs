//! The DataZone (SageMaker Unified Studio) custom account-pool handler.
//!
//! DataZone asks two questions: which accounts may this user's new project use
//! (`listAuthorizedAccounts`), and may it use this account in this region
//! (`validateAccountAuthorization`, GRANT or DENY). Both are the one Cedar question
//! `DataZone::Action::"UseAccount"`: validate asks it once; list asks it for every
//! account and region of the pools and returns those answered allow, so the two can
//! never disagree. Parse, then authorize, then answer: the event is parsed tolerantly
//! into a closed [`Operation`] (exactly one request; unknown fields ignored), and an
//! event that is neither, both, or not JSON is an error, never a GRANT.

use std::str::FromStr;

use cedar_policy::{Authorizer, EntityId, EntityTypeName, EntityUid, EvalResult};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::authz::{DecisionRequest, decide_with};
use crate::policy_store::PolicySnapshot;

/// The largest page a list answer has when the caller asks for pages.
const MAX_PAGE: usize = 100;
/// `AccountInfo.supportedRegions` holds 1 to 3 regions.
const MAX_REGIONS: usize = 3;
/// `AccountInfo.awsAccountName` is 1 to 256 characters.
const MAX_NAME: usize = 256;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Event {
    operation_request: Option<OperationRequest>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct OperationRequest {
    list_authorized_accounts_request: Option<ListRequest>,
    validate_account_authorization_request: Option<ValidateRequest>,
}

/// `listAuthorizedAccountsRequest`; every field optional as far as parsing goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListRequest {
    pub domain_identifier: Option<String>,
    pub domain_unit_identifier: Option<String>,
    pub domain_region: Option<String>,
    pub domain_partition: Option<String>,
    pub user_identifier: Option<String>,
    pub max_results: Option<i64>,
    pub next_token: Option<String>,
}

/// `validateAccountAuthorizationRequest`; every field optional as far as parsing goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ValidateRequest {
    pub domain_identifier: Option<String>,
    pub domain_unit_identifier: Option<String>,
    pub domain_region: Option<String>,
    pub aws_account_id: Option<String>,
    pub region_name: Option<String>,
    pub user_identifier: Option<String>,
}

/// The one question an event asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    List(ListRequest),
    Validate(ValidateRequest),
}

/// Why an event was refused (HTTP 400; an error result in the Lambda form).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the event is not a JSON object: {0}")]
    NotJson(String),
    #[error(
        "the event names no operation: expected `operationRequest` with `listAuthorizedAccountsRequest` or `validateAccountAuthorizationRequest`"
    )]
    NoOperation,
    #[error(
        "the event names both operations; exactly one of `listAuthorizedAccountsRequest` and `validateAccountAuthorizationRequest` must be non-null"
    )]
    BothOperations,
    #[error("`nextToken` is not one this handler issued")]
    BadNextToken,
}

/// Parse an event. A `null` or absent request counts as absent; an empty object is a request.
pub fn parse(body: &[u8]) -> Result<Operation, EventError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(EventError::NotJson("it is not an object".to_owned()));
    }
    let event: Event = serde_json::from_value(value).map_err(|e| EventError::NotJson(e.to_string()))?;
    let request = event.operation_request.ok_or(EventError::NoOperation)?;
    match (request.list_authorized_accounts_request, request.validate_account_authorization_request) {
        (Some(_), Some(_)) => Err(EventError::BothOperations),
        (None, Some(validate)) => Ok(Operation::Validate(validate)),
        (Some(list), None) => Ok(Operation::List(list)),
        (None, None) => Err(EventError::NoOperation),
    }
}

/// Answer an operation from the policies and entities of `snapshot`.
pub fn apply(snapshot: &PolicySnapshot, operation: &Operation, request_id: &str) -> Result<Value, EventError> {
    let authorizer = Authorizer::new();
    match operation {
        Operation::Validate(request) => {
            let grant = request.aws_account_id.as_deref().zip(request.region_name.as_deref()).is_some_and(
                |(account, region)| {
                    let asked = Question::new(
                        &request.user_identifier,
                        &request.domain_identifier,
                        &request.domain_unit_identifier,
                        &request.domain_region,
                    );
                    asked.allows(&authorizer, snapshot, account, region, request_id, tracing::Level::INFO)
                },
            );
            let result = if grant { "GRANT" } else { "DENY" };
            Ok(json!({"operationResponse": {"validateAccountAuthorizationResponse": {"authResult": result}}}))
        }
        Operation::List(request) => {
            let asked = Question::new(
                &request.user_identifier,
                &request.domain_identifier,
                &request.domain_unit_identifier,
                &request.domain_region,
            );
            let items = authorized_accounts(&authorizer, snapshot, &asked, request_id);
            tracing::info!(
                target: "authz_sidecar::audit",
                request_id,
                operation = "listAuthorizedAccounts",
                principal = request.user_identifier.as_deref().unwrap_or(""),
                accounts = items.len(),
                snapshot = %snapshot.version(),
                "decision"
            );
            page(items, request)
        }
    }
}

/// One `UseAccount` question's fixed parts.
struct Question<'a> {
    user: Option<&'a str>,
    domain: Option<&'a str>,
    domain_unit: Option<&'a str>,
    domain_region: Option<&'a str>,
}

impl<'a> Question<'a> {
    fn new(
        user: &'a Option<String>,
        domain: &'a Option<String>,
        domain_unit: &'a Option<String>,
        domain_region: &'a Option<String>,
    ) -> Self {
        Self {
            user: user.as_deref(),
            domain: domain.as_deref(),
            domain_unit: domain_unit.as_deref(),
            domain_region: domain_region.as_deref(),
        }
    }

    /// Whether the policies allow `account` in `region`. Anything missing, malformed or
    /// failing to evaluate is a deny.
    fn allows(
        &self,
        authorizer: &Authorizer,
        snapshot: &PolicySnapshot,
        account: &str,
        region: &str,
        request_id: &str,
        level: tracing::Level,
    ) -> bool {
        let Some(user) = self.user.filter(|u| !u.is_empty()) else { return false };
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        let mut context = serde_json::Map::new();
        context.insert("regionName".into(), json!(region));
        for (key, value) in [
            ("domainIdentifier", self.domain),
            ("domainUnitIdentifier", self.domain_unit),
            ("domainRegion", self.domain_region),
        ] {
            if let Some(value) = value {
                context.insert(key.into(), json!(value));
            }
        }
        let (Some(principal), Some(action), Some(resource)) =
            (uid("DataZone::User", user), uid("DataZone::Action", "UseAccount"), uid("DataZone::Account", account))
        else {
            return false;
        };
        let request = DecisionRequest::new(principal, action, resource).with_context(Value::Object(context));
        let decision = decide_with(authorizer, snapshot, &request);
        let allowed = decision.as_ref().is_ok_and(|d| d.is_allowed());
        let (policies, reason) = match &decision {
            Ok(d) => (d.policies.join(","), d.reason.as_str()),
            Err(e) => (String::new(), e.kind()),
        };
        if level == tracing::Level::INFO {
            tracing::info!(target: "authz_sidecar::audit", request_id, operation = "validateAccountAuthorization",
                principal = user, account, region, decision = if allowed { "allow" } else { "deny" }, reason, policies,
                snapshot = %snapshot.version(), "decision");
        } else {
            tracing::debug!(target: "authz_sidecar::audit", request_id, operation = "listAuthorizedAccounts",
                principal = user, account, region, decision = if allowed { "allow" } else { "deny" }, reason, policies,
                snapshot = %snapshot.version(), "decision");
        }
        allowed
    }
}

fn uid(type_name: &str, id: &str) -> Option<EntityUid> {
    Some(EntityUid::from_type_name_and_id(EntityTypeName::from_str(type_name).ok()?, EntityId::new(id)))
}

/// Every pool account with at least one region the user may use, sorted by account id:
/// `AccountInfo` items within the public limits.
fn authorized_accounts(
    authorizer: &Authorizer,
    snapshot: &PolicySnapshot,
    asked: &Question<'_>,
    request_id: &str,
) -> Vec<Value> {
    let mut accounts: Vec<_> =
        snapshot.entities().iter().filter(|e| e.uid().type_name().to_string() == "DataZone::Account").collect();
    accounts.sort_by_key(|e| e.uid().id().unescaped().to_owned());
    let mut items = Vec::new();
    for account in accounts {
        let id = account.uid().id().unescaped().to_owned();
        let mut regions: Vec<String> = match account.attr("regions").and_then(Result::ok) {
            Some(EvalResult::Set(set)) => set
                .iter()
                .filter_map(|r| match r {
                    EvalResult::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        regions.sort();
        let permitted: Vec<String> = regions
            .into_iter()
            .filter(|region| asked.allows(authorizer, snapshot, &id, region, request_id, tracing::Level::DEBUG))
            .take(MAX_REGIONS)
            .collect();
        if permitted.is_empty() {
            continue;
        }
        // the order of AWS's sample: id, name, regions
        let mut item = serde_json::Map::new();
        item.insert("awsAccountId".into(), json!(id));
        if let Some(EvalResult::String(name)) = account.attr("name").and_then(Result::ok) {
            let name: String = name.chars().take(MAX_NAME).collect();
            if !name.is_empty() {
                item.insert("awsAccountName".into(), json!(name));
            }
        }
        item.insert("supportedRegions".into(), json!(permitted));
        items.push(Value::Object(item));
    }
    items
}

/// Everything in one page, unless the caller asked for pages with `maxResults`.
fn page(items: Vec<Value>, request: &ListRequest) -> Result<Value, EventError> {
    let start = match request.next_token.as_deref() {
        None => 0,
        Some(token) => {
            token.strip_prefix("offset-").and_then(|n| n.parse::<usize>().ok()).ok_or(EventError::BadNextToken)?
        }
    };
    let size = match request.max_results {
        None => items.len().max(1),
        Some(n) => usize::try_from(n).unwrap_or(1).clamp(1, MAX_PAGE),
    };
    let end = start.saturating_add(size).min(items.len());
    let page: Vec<Value> = items.get(start.min(items.len())..end).unwrap_or_default().to_vec();
    let mut response = serde_json::Map::new();
    response.insert("items".into(), Value::Array(page));
    if end < items.len() {
        response.insert("nextToken".into(), json!(format!("offset-{end}")));
    }
    Ok(json!({"operationResponse": {"listAuthorizedAccountsResponse": response}}))
}
