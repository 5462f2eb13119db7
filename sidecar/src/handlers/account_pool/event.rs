//! The account-pool event: read by type at every level into a closed [`Operation`]
//! (exactly one request; objects must be objects and fields their types; unknown fields
//! ignored). An event that is neither, both, or of the wrong shape is an [`EventError`]
//! naming the field, never a GRANT.

use serde_json::Value;

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
