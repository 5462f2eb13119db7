//! The DataZone (SageMaker Unified Studio) custom account-pool handler.
//!
//! DataZone asks two questions: which accounts may this user's new project use
//! (`listAuthorizedAccounts`), and may it use this account in this region
//! (`validateAccountAuthorization`, GRANT or DENY). Both are the one Cedar question
//! `DataZone::Action::"UseAccount"`: validate asks it once; list asks it for every
//! account and region of the pools and returns those answered allow, so the two can
//! never disagree. A list asks Cedar once per region for each class of accounts that no
//! policy can tell apart ([`ResourceObservation`]), so a thousand look-alike accounts
//! cost a handful of decisions. Parse, then authorize, then answer: the event is read by
//! type at every level into a closed [`Operation`] (exactly one request; objects must be
//! objects and fields their types; unknown fields ignored), and an event that is neither,
//! both, or of the wrong shape is an error naming the field, never a GRANT. An account
//! that is not in the pool, or a region it does not list, is DENY before Cedar is asked,
//! so list and validate agree whatever the policies say.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, EntityId, EntityTypeName, EntityUid, EvalResult, Request, RestrictedExpression, Schema,
};
use serde_json::{Value, json};

use crate::authz::{Decision, RequestError, ResourceObservation, View, decide_prepared};
use crate::policy_store::PolicySnapshot;

/// The largest page a list answer has when the caller asks for pages.
const MAX_PAGE: usize = 100;
/// `AccountInfo.supportedRegions` holds 1 to 3 regions.
const MAX_REGIONS: usize = 3;
/// `AccountInfo.awsAccountName` is 1 to 256 characters.
const MAX_NAME: usize = 256;

/// The largest event either form accepts: DataZone's events are well under a
/// kilobyte, and nothing bigger is parsed (HTTP: 413; Lambda: `EventTooLarge`).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// `listAuthorizedAccountsRequest`; every field optional as far as parsing goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

/// Why an event was refused (HTTP 400 or 413; an error result in the Lambda form, whose
/// `errorType` is [`EventError::error_type`]). Messages name the field and the JSON
/// type found, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the event is not JSON: {0}")]
    NotJson(String),
    #[error("`{field}` must be {expected}, not {found}")]
    WrongType { field: &'static str, expected: &'static str, found: &'static str },
    #[error("the event is larger than {limit} bytes")]
    TooLarge { limit: usize },
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

impl EventError {
    /// The stable name of the error, for the Lambda form's `errorType` and for logs:
    /// `EventTooLarge`, `InvalidNextToken`, or `InvalidEvent` for everything else.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "EventTooLarge",
            Self::BadNextToken => "InvalidNextToken",
            Self::NotJson(_) | Self::WrongType { .. } | Self::NoOperation | Self::BothOperations => "InvalidEvent",
        }
    }
}

/// The JSON type of a value, for error messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One object of the event, read by type: every field is looked up by name and must have
/// the type the interface gives it (`null` and absent are the same); unknown fields are
/// ignored, since DataZone may add some. Arrays are never read as objects.
struct Fields<'v> {
    map: &'v serde_json::Map<String, Value>,
}

impl<'v> Fields<'v> {
    fn of(value: &'v Value, path: &'static str) -> Result<Option<Self>, EventError> {
        match value {
            Value::Null => Ok(None),
            Value::Object(map) => Ok(Some(Self { map })),
            other => Err(EventError::WrongType { field: path, expected: "an object", found: json_type(other) }),
        }
    }

    fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn object(&self, key: &str, path: &'static str) -> Result<Option<Fields<'v>>, EventError> {
        self.get(key).map_or(Ok(None), |value| Fields::of(value, path))
    }

    fn string(&self, key: &'static str, field: &'static str) -> Result<Option<String>, EventError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(EventError::WrongType { field, expected: "a string", found: json_type(other) }),
        }
    }

    fn integer(&self, key: &'static str, field: &'static str) -> Result<Option<i64>, EventError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value.as_i64().map(Some).ok_or(EventError::WrongType {
                field,
                expected: "an integer",
                found: json_type(value),
            }),
        }
    }
}

/// Parse an event (at most [`MAX_EVENT_BYTES`]). A `null` or absent request counts as
/// absent; an empty object is a request; every field that is present must have its type.
pub fn parse(body: &[u8]) -> Result<Operation, EventError> {
    if body.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge { limit: MAX_EVENT_BYTES });
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    let event = match Fields::of(&value, "(the event)")? {
        Some(event) => event,
        None => return Err(EventError::WrongType { field: "(the event)", expected: "an object", found: "null" }),
    };
    let request = event.object("operationRequest", "operationRequest")?.ok_or(EventError::NoOperation)?;
    const LIST: &str = "operationRequest.listAuthorizedAccountsRequest";
    const VALIDATE: &str = "operationRequest.validateAccountAuthorizationRequest";
    let list = request.object("listAuthorizedAccountsRequest", LIST)?;
    let validate = request.object("validateAccountAuthorizationRequest", VALIDATE)?;
    match (list, validate) {
        (Some(_), Some(_)) => Err(EventError::BothOperations),
        (None, None) => Err(EventError::NoOperation),
        (Some(list), None) => Ok(Operation::List(ListRequest {
            domain_identifier: list.string(
                "domainIdentifier",
                concat!("operationRequest.listAuthorizedAccountsRequest", ".domainIdentifier"),
            )?,
            domain_unit_identifier: list.string(
                "domainUnitIdentifier",
                concat!("operationRequest.listAuthorizedAccountsRequest", ".domainUnitIdentifier"),
            )?,
            domain_region: list
                .string("domainRegion", concat!("operationRequest.listAuthorizedAccountsRequest", ".domainRegion"))?,
            domain_partition: list.string(
                "domainPartition",
                concat!("operationRequest.listAuthorizedAccountsRequest", ".domainPartition"),
            )?,
            user_identifier: list.string(
                "userIdentifier",
                concat!("operationRequest.listAuthorizedAccountsRequest", ".userIdentifier"),
            )?,
            max_results: list
                .integer("maxResults", concat!("operationRequest.listAuthorizedAccountsRequest", ".maxResults"))?,
            next_token: list
                .string("nextToken", concat!("operationRequest.listAuthorizedAccountsRequest", ".nextToken"))?,
        })),
        (None, Some(validate)) => Ok(Operation::Validate(ValidateRequest {
            domain_identifier: validate.string(
                "domainIdentifier",
                concat!("operationRequest.validateAccountAuthorizationRequest", ".domainIdentifier"),
            )?,
            domain_unit_identifier: validate.string(
                "domainUnitIdentifier",
                concat!("operationRequest.validateAccountAuthorizationRequest", ".domainUnitIdentifier"),
            )?,
            domain_region: validate.string(
                "domainRegion",
                concat!("operationRequest.validateAccountAuthorizationRequest", ".domainRegion"),
            )?,
            aws_account_id: validate.string(
                "awsAccountId",
                concat!("operationRequest.validateAccountAuthorizationRequest", ".awsAccountId"),
            )?,
            region_name: validate
                .string("regionName", concat!("operationRequest.validateAccountAuthorizationRequest", ".regionName"))?,
            user_identifier: validate.string(
                "userIdentifier",
                concat!("operationRequest.validateAccountAuthorizationRequest", ".userIdentifier"),
            )?,
        })),
    }
}

/// Answer an operation from the policies and entities of `snapshot`.
pub fn apply(snapshot: &PolicySnapshot, operation: &Operation, request_id: &str) -> Result<Value, EventError> {
    let authorizer = Authorizer::new();
    match operation {
        Operation::Validate(request) => {
            let asked = Question::new(
                &request.user_identifier,
                &request.domain_identifier,
                &request.domain_unit_identifier,
                &request.domain_region,
            );
            let index = snapshot.derived(PoolIndex::build);
            let grant = request.aws_account_id.as_deref().zip(request.region_name.as_deref()).is_some_and(
                |(account, region)| {
                    // what a list would never offer is DENY before Cedar is asked, whatever
                    // the policies say: an account that is not in the pool, or a region
                    // the account does not support
                    let decision = match index.account(account) {
                        None => Err(Refusal::UnknownAccount),
                        Some(known) if !known.regions.iter().any(|r| r == region) => Err(Refusal::UnsupportedRegion),
                        Some(_) => asked.decide(&authorizer, snapshot, &mut HashMap::new(), account, region),
                    };
                    asked.audit(tracing::Level::INFO, snapshot, request_id, account, region, &decision)
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

/// One `UseAccount` question's fixed parts, built once per event: the principal, the
/// action and the domain fields of the context. Only the account and the region vary,
/// so a list of a thousand accounts parses no uid, no context JSON, and checks each
/// distinct context against the schema once.
struct Question<'a> {
    user: Option<&'a str>,
    principal: Option<EntityUid>,
    action: Option<EntityUid>,
    account_type: Option<EntityTypeName>,
    fixed_context: Vec<(String, RestrictedExpression)>,
}

impl<'a> Question<'a> {
    fn new(
        user: &'a Option<String>,
        domain: &'a Option<String>,
        domain_unit: &'a Option<String>,
        domain_region: &'a Option<String>,
    ) -> Self {
        let user = user.as_deref().filter(|u| !u.is_empty());
        let fixed_context =
            [("domainIdentifier", domain), ("domainUnitIdentifier", domain_unit), ("domainRegion", domain_region)]
                .into_iter()
                .filter_map(|(key, value)| Some((key.to_owned(), RestrictedExpression::new_string(value.clone()?))))
                .collect();
        Self {
            user,
            principal: user.and_then(|user| uid("DataZone::User", user)),
            action: use_account(),
            account_type: account_type(),
            fixed_context,
        }
    }

    /// The context for `region`: the fixed parts and `regionName`.
    fn context(&self, region: &str) -> Result<Context, Refusal> {
        let pairs = self
            .fixed_context
            .iter()
            .cloned()
            .chain([("regionName".to_owned(), RestrictedExpression::new_string(region.to_owned()))]);
        Context::from_pairs(pairs).map_err(|e| {
            Refusal::Request(RequestError::BadContext {
                action: "DataZone::Action::\"UseAccount\"".to_owned(),
                reason: e.to_string(),
            })
        })
    }

    /// The Cedar request for `account`, checked against `schema` when one is given. The
    /// principal, action and resource types never change between questions, so once a
    /// context has passed the check with one account it passes with every account.
    fn request(&self, account: &str, context: Context, schema: Option<&Schema>) -> Result<Request, Refusal> {
        let (Some(principal), Some(action), Some(account_type)) = (&self.principal, &self.action, &self.account_type)
        else {
            return Err(Refusal::NoUser);
        };
        if !is_account_id(account) {
            return Err(Refusal::BadAccountId);
        }
        let resource = EntityUid::from_type_name_and_id(account_type.clone(), EntityId::new(account));
        Request::new(principal.clone(), action.clone(), resource, context, schema)
            .map_err(|e| Refusal::Request(RequestError::Invalid(e.to_string())))
    }

    /// Decide `account` in `region`. `contexts` holds the context of each region once it
    /// has passed the schema check, so that check runs once per region.
    fn decide(
        &self,
        authorizer: &Authorizer,
        snapshot: &PolicySnapshot,
        contexts: &mut HashMap<String, Context>,
        account: &str,
        region: &str,
    ) -> Result<Decision, Refusal> {
        let request = match contexts.get(region) {
            Some(context) => self.request(account, context.clone(), None)?,
            None => {
                let context = self.context(region)?;
                let request = self.request(account, context.clone(), Some(snapshot.schema()))?;
                contexts.insert(region.to_owned(), context);
                request
            }
        };
        Ok(decide_prepared(authorizer, snapshot, &request))
    }

    /// Write the audit event of one decision and say whether it allowed. Validate
    /// decisions are info events; list decisions are debug events (the list writes one
    /// info event of its own), so a thousand-account list does not flood the log.
    fn audit(
        &self,
        level: tracing::Level,
        snapshot: &PolicySnapshot,
        request_id: &str,
        account: &str,
        region: &str,
        decision: &Result<Decision, Refusal>,
    ) -> bool {
        let allowed = decision.as_ref().is_ok_and(Decision::is_allowed);
        let verdict = if allowed { "allow" } else { "deny" };
        let reason = match decision {
            Ok(d) => d.reason.as_str(),
            Err(e) => e.kind(),
        };
        let policies = || decision.as_ref().map(|d| d.policies.join(",")).unwrap_or_default();
        // the same fields as the data plane's events: errors and latency too
        let errors = || {
            let errors: Vec<String> = match decision {
                Ok(d) => d.errors.iter().map(|e| format!("{}: {}", e.policy, e.message)).collect(),
                Err(Refusal::Request(e)) => vec![e.to_string()],
                Err(_) => Vec::new(),
            };
            serde_json::Value::from(errors)
        };
        let latency_us = decision.as_ref().map_or(0, |d| u64::try_from(d.elapsed.as_micros()).unwrap_or(u64::MAX));
        let principal = self.user.unwrap_or("");
        if level == tracing::Level::INFO {
            tracing::info!(target: "authz_sidecar::audit", request_id, operation = "validateAccountAuthorization",
                principal, account, region, decision = verdict, reason, policies = policies(), errors = %errors(),
                snapshot = %snapshot.version(), latency_us, "decision");
        } else {
            tracing::debug!(target: "authz_sidecar::audit", request_id, operation = "listAuthorizedAccounts",
                principal, account, region, decision = verdict, reason, policies = policies(), errors = %errors(),
                snapshot = %snapshot.version(), latency_us, "decision");
        }
        allowed
    }
}

/// Why a question was denied before Cedar saw it.
#[derive(Debug)]
enum Refusal {
    /// The event names no user.
    NoUser,
    /// The account id is not 12 digits.
    BadAccountId,
    /// No `DataZone::Account` entity has this id.
    UnknownAccount,
    /// The account does not list this region.
    UnsupportedRegion,
    /// The question does not fit the schema.
    Request(RequestError),
}

impl Refusal {
    fn kind(&self) -> &'static str {
        match self {
            Self::NoUser => "no_user",
            Self::BadAccountId => "bad_account_id",
            Self::UnknownAccount => "unknown_account",
            Self::UnsupportedRegion => "unsupported_region",
            Self::Request(e) => e.kind(),
        }
    }
}

/// An AWS account id: exactly 12 digits.
fn is_account_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit())
}

/// The action both operations ask.
fn use_account() -> Option<EntityUid> {
    uid("DataZone::Action", "UseAccount")
}

/// The type of pool accounts.
fn account_type() -> Option<EntityTypeName> {
    EntityTypeName::from_str("DataZone::Account").ok()
}

fn uid(type_name: &str, id: &str) -> Option<EntityUid> {
    Some(EntityUid::from_type_name_and_id(EntityTypeName::from_str(type_name).ok()?, EntityId::new(id)))
}

/// The pool accounts of one snapshot, read once and kept with it (see
/// [`PolicySnapshot::derived`]): each account's id, name and sorted regions, in id
/// order, and its class. Accounts of one class look the same to every `UseAccount`
/// policy ([`ResourceObservation`]), so they get the same answer to the same question,
/// and a list decides each class and region once, however many accounts share them.
struct PoolIndex {
    accounts: Vec<PoolAccount>,
    /// Account id → its place in `accounts`.
    by_id: HashMap<String, usize>,
    classes: usize,
    /// Why the policies can tell accounts apart by id, when they can.
    by_uid: Option<String>,
}

/// How lists over a snapshot's pool are decided (for `authz-sidecar validate` and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSharing {
    /// Pool accounts (`DataZone::Account` entities).
    pub accounts: usize,
    /// Classes of accounts that no `UseAccount` policy can tell apart; a list makes one
    /// decision per class and region.
    pub classes: usize,
    /// Why every account is its own class, when a policy uses the account as a value.
    pub by_uid: Option<String>,
}

/// How lists over `snapshot`'s pool are decided (builds the pool index if need be).
pub fn list_sharing(snapshot: &PolicySnapshot) -> ListSharing {
    let index = snapshot.derived(PoolIndex::build);
    ListSharing { accounts: index.accounts.len(), classes: index.classes, by_uid: index.by_uid.clone() }
}

struct PoolAccount {
    id: String,
    name: Option<String>,
    regions: Vec<String>,
    class: usize,
}

impl PoolIndex {
    fn build(snapshot: &PolicySnapshot) -> Self {
        let (Some(action), Some(account_type)) = (use_account(), account_type()) else {
            return Self { accounts: Vec::new(), by_id: HashMap::new(), classes: 0, by_uid: None };
        };
        let observation = ResourceObservation::of(snapshot.policies_for(&action), &account_type);
        let mut classes: BTreeMap<View, usize> = BTreeMap::new();
        let mut next_class = 0;
        let mut accounts = Vec::new();
        for uid in snapshot.entities_of_type(&account_type).iter() {
            let Some(account) = snapshot.entities().get(uid) else { continue };
            // a new view, or no view at all, starts a class of its own
            let mut new_class = || {
                next_class += 1;
                next_class - 1
            };
            let class = match observation.view(snapshot.entities(), uid) {
                Some(view) => *classes.entry(view).or_insert_with(new_class),
                None => new_class(),
            };
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
            let name = match account.attr("name").and_then(Result::ok) {
                Some(EvalResult::String(name)) if !name.is_empty() => Some(name.chars().take(MAX_NAME).collect()),
                _ => None,
            };
            accounts.push(PoolAccount { id: uid.id().unescaped().to_owned(), name, regions, class });
        }
        match observation.by_uid() {
            Some(reason) => tracing::info!(
                accounts = accounts.len(),
                reason,
                snapshot = %snapshot.version(),
                "account pool: the UseAccount policies can tell accounts apart by id, so a list decides every account on its own"
            ),
            None => tracing::debug!(
                accounts = accounts.len(),
                classes = next_class,
                attributes = %observation.attrs().collect::<Vec<_>>().join(","),
                snapshot = %snapshot.version(),
                "account pool indexed"
            ),
        }
        let by_id = accounts.iter().enumerate().map(|(i, a)| (a.id.clone(), i)).collect();
        Self { accounts, by_id, classes: next_class, by_uid: observation.by_uid().map(str::to_owned) }
    }

    /// The pool account with this id.
    fn account(&self, id: &str) -> Option<&PoolAccount> {
        self.accounts.get(*self.by_id.get(id)?)
    }
}

/// Every pool account with at least one region the user may use, sorted by account id:
/// `AccountInfo` items within the public limits. Each account and region is the same
/// question validate asks, decided by the same policies; an answer is shared with the
/// other accounts of its class only when it carries no evaluation error (an error's
/// message names the account it was evaluated for).
fn authorized_accounts(
    authorizer: &Authorizer,
    snapshot: &PolicySnapshot,
    asked: &Question<'_>,
    request_id: &str,
) -> Vec<Value> {
    let index = snapshot.derived(PoolIndex::build);
    let mut contexts = HashMap::new();
    let mut decided: HashMap<(usize, &str), Rc<Result<Decision, Refusal>>> = HashMap::new();
    let mut items = Vec::new();
    for account in &index.accounts {
        let id = account.id.as_str();
        let permitted: Vec<&str> = account
            .regions
            .iter()
            .map(String::as_str)
            .filter(|&region| {
                let decision = if !is_account_id(id) {
                    Rc::new(Err(Refusal::BadAccountId))
                } else if let Some(shared) = decided.get(&(account.class, region)) {
                    Rc::clone(shared)
                } else {
                    let decision = Rc::new(asked.decide(authorizer, snapshot, &mut contexts, id, region));
                    if matches!(&*decision, Ok(d) if d.errors.is_empty()) {
                        decided.insert((account.class, region), Rc::clone(&decision));
                    }
                    decision
                };
                asked.audit(tracing::Level::DEBUG, snapshot, request_id, id, region, &decision)
            })
            .take(MAX_REGIONS)
            .collect();
        if permitted.is_empty() {
            continue;
        }
        // the order of AWS's sample: id, name, regions
        let mut item = serde_json::Map::new();
        item.insert("awsAccountId".into(), json!(id));
        if let Some(name) = &account.name {
            item.insert("awsAccountName".into(), json!(name));
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
