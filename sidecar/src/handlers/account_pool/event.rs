//! The account-pool event: read by type at every level into a closed [`Operation`]
//! (exactly one request; objects must be objects and fields their types; unknown fields
//! ignored; a field the interface names given twice refused). An event that is neither,
//! both, or of the wrong shape is an [`EventError`] naming the field, never a GRANT.
//!
//! The event is read in one pass straight into the fields the interface names, without
//! a JSON tree in between (the tree, its map of keys and its strings were a tenth of a
//! validate request's instructions). What is not read is still parsed as strictly as a
//! tree would parse it: every string of the event must be valid, whatever field it is in.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

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
    /// A field the interface names appears twice in one object: which one counts would
    /// be a guess (a proxy in front may have read the other), so neither does.
    #[error("`{field}` appears more than once")]
    DuplicateField { field: &'static str },
}

impl EventError {
    /// The stable name of the error, for the Lambda form's `errorType` and for logs:
    /// `EventTooLarge`, `InvalidNextToken`, or `InvalidEvent` for everything else.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "EventTooLarge",
            Self::BadNextToken => "InvalidNextToken",
            Self::NotJson(_)
            | Self::WrongType { .. }
            | Self::NoOperation
            | Self::BothOperations
            | Self::DuplicateField { .. } => "InvalidEvent",
        }
    }
}

/// One field as the event has it: absent or `null` (the same), a value of the type the
/// interface gives it, or another JSON type (named by the error, never shown).
#[derive(Debug)]
enum Read<T> {
    Absent,
    Value(T),
    Wrong(&'static str),
}

/// What a field may hold: each kind takes one JSON type and refuses the others.
trait Kind<'de>: Sized {
    fn string(_: &str) -> Option<Self> {
        None
    }

    fn integer(_: i64) -> Option<Self> {
        None
    }

    /// An object: read it, or skip it (strictly) and answer `None`.
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(None)
    }
}

impl Kind<'_> for String {
    fn string(text: &str) -> Option<Self> {
        Some(text.to_owned())
    }
}

impl Kind<'_> for i64 {
    fn integer(value: i64) -> Option<Self> {
        Some(value)
    }
}

impl<'de, T: Kind<'de>> Deserialize<'de> for Read<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ReadVisitor(PhantomData))
    }
}

struct ReadVisitor<T>(PhantomData<T>);

impl<T> ReadVisitor<T> {
    fn or_wrong(read: Option<T>, found: &'static str) -> Read<T> {
        read.map_or(Read::Wrong(found), Read::Value)
    }
}

impl<'de, T: Kind<'de>> Visitor<'de> for ReadVisitor<T> {
    type Value = Read<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Read<T>, E> {
        Ok(Read::Absent)
    }

    fn visit_none<E: de::Error>(self) -> Result<Read<T>, E> {
        Ok(Read::Absent)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Read<T>, E> {
        Ok(Read::Wrong("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Read<T>, E> {
        Ok(Self::or_wrong(T::integer(value), "a number"))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Read<T>, E> {
        // past `i64` is not an integer the interface takes
        Ok(Self::or_wrong(i64::try_from(value).ok().and_then(T::integer), "a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Read<T>, E> {
        // a fraction or an exponent is not an integer, even `1.0`
        Ok(Read::Wrong("a number"))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Read<T>, E> {
        Ok(Self::or_wrong(T::string(text), "a string"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Read<T>, A::Error> {
        // never read as an object's fields in order, as serde's derive would
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Read::Wrong("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Read<T>, A::Error> {
        Ok(Self::or_wrong(T::object(map)?, "an object"))
    }
}

/// A value nobody reads, parsed as strictly as one that is read (serde's `IgnoredAny`
/// would let invalid strings through): every string is decoded, every number parsed.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_none<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

/// An object's key, unescaped (borrowed from the event when it has no escapes).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A field the interface names: where it is in the event (for errors), and what was
/// read there (`None` until seen).
#[derive(Debug)]
struct Field<T> {
    path: &'static str,
    read: Option<Read<T>>,
}

/// An object of the event with the fields the interface names, the first of them found
/// twice, and every other field skipped.
macro_rules! object {
    ($name:ident at $prefix:literal { $($field:ident: $kind:ty = $key:literal),* $(,)? }) => {
        #[derive(Debug)]
        struct $name {
            $($field: Field<$kind>,)*
            duplicate: Option<&'static str>,
        }

        impl<'de> Kind<'de> for $name {
            fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
                let mut this = Self {
                    $($field: Field { path: concat!($prefix, $key), read: None },)*
                    duplicate: None,
                };
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    match &*key {
                        $($key => {
                            let read = map.next_value::<Read<$kind>>()?;
                            if this.$field.read.replace(read).is_some() && this.duplicate.is_none() {
                                this.duplicate = Some(this.$field.path);
                            }
                        })*
                        _ => {
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(Some(this))
            }
        }
    };
}

object!(Event at "" { operation_request: OperationRequest = "operationRequest" });

object!(OperationRequest at "operationRequest." {
    list: ListFields = "listAuthorizedAccountsRequest",
    validate: ValidateFields = "validateAccountAuthorizationRequest",
});

object!(ListFields at "operationRequest.listAuthorizedAccountsRequest." {
    domain_identifier: String = "domainIdentifier",
    domain_unit_identifier: String = "domainUnitIdentifier",
    domain_region: String = "domainRegion",
    domain_partition: String = "domainPartition",
    user_identifier: String = "userIdentifier",
    max_results: i64 = "maxResults",
    next_token: String = "nextToken",
});

object!(ValidateFields at "operationRequest.validateAccountAuthorizationRequest." {
    domain_identifier: String = "domainIdentifier",
    domain_unit_identifier: String = "domainUnitIdentifier",
    domain_region: String = "domainRegion",
    aws_account_id: String = "awsAccountId",
    region_name: String = "regionName",
    user_identifier: String = "userIdentifier",
});

/// A field read: its value, or none when absent or `null`; another type is an error
/// naming the field (`expected` is what the interface gives it).
fn take<T>(field: Field<T>, expected: &'static str) -> Result<Option<T>, EventError> {
    match field.read {
        None | Some(Read::Absent) => Ok(None),
        Some(Read::Value(value)) => Ok(Some(value)),
        Some(Read::Wrong(found)) => Err(EventError::WrongType { field: field.path, expected, found }),
    }
}

/// An object read, refused when a field it names appears twice.
fn whole<T>(read: Option<T>, duplicate: impl Fn(&T) -> Option<&'static str>) -> Result<Option<T>, EventError> {
    match read.as_ref().and_then(duplicate) {
        Some(field) => Err(EventError::DuplicateField { field }),
        None => Ok(read),
    }
}

/// Parse an event (at most [`MAX_EVENT_BYTES`]). A `null` or absent request counts as
/// absent; an empty object is a request; every field that is present must have its type.
pub fn parse(body: &[u8]) -> Result<Operation, EventError> {
    const OBJECT: &str = "an object";
    const STRING: &str = "a string";
    if body.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge { limit: MAX_EVENT_BYTES });
    }
    let event: Read<Event> = serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    let event = match event {
        Read::Value(event) => event,
        Read::Absent => return Err(EventError::WrongType { field: "(the event)", expected: OBJECT, found: "null" }),
        Read::Wrong(found) => return Err(EventError::WrongType { field: "(the event)", expected: OBJECT, found }),
    };
    if let Some(field) = event.duplicate {
        return Err(EventError::DuplicateField { field });
    }
    let request = whole(take(event.operation_request, OBJECT)?, |r| r.duplicate)?.ok_or(EventError::NoOperation)?;
    let list = whole(take(request.list, OBJECT)?, |l| l.duplicate)?;
    let validate = whole(take(request.validate, OBJECT)?, |v| v.duplicate)?;
    match (list, validate) {
        (Some(_), Some(_)) => Err(EventError::BothOperations),
        (None, None) => Err(EventError::NoOperation),
        (Some(list), None) => Ok(Operation::List(ListRequest {
            domain_identifier: take(list.domain_identifier, STRING)?,
            domain_unit_identifier: take(list.domain_unit_identifier, STRING)?,
            domain_region: take(list.domain_region, STRING)?,
            domain_partition: take(list.domain_partition, STRING)?,
            user_identifier: take(list.user_identifier, STRING)?,
            max_results: take(list.max_results, "an integer")?,
            next_token: take(list.next_token, STRING)?,
        })),
        (None, Some(validate)) => Ok(Operation::Validate(ValidateRequest {
            domain_identifier: take(validate.domain_identifier, STRING)?,
            domain_unit_identifier: take(validate.domain_unit_identifier, STRING)?,
            domain_region: take(validate.domain_region, STRING)?,
            aws_account_id: take(validate.aws_account_id, STRING)?,
            region_name: take(validate.region_name, STRING)?,
            user_identifier: take(validate.user_identifier, STRING)?,
        })),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// The reading this module replaced, over a JSON tree: the oracle for events without
    /// a repeated key (a tree keeps the last of a repeated key silently).
    fn read_as_tree(body: &[u8]) -> Result<Operation, EventError> {
        fn kind(value: &Value) -> &'static str {
            match value {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            }
        }
        type Object = serde_json::Map<String, Value>;
        fn object<'v>(value: Option<&'v Value>, field: &'static str) -> Result<Option<&'v Object>, EventError> {
            match value {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Object(map)) => Ok(Some(map)),
                Some(other) => Err(EventError::WrongType { field, expected: "an object", found: kind(other) }),
            }
        }
        fn string(map: &Object, key: &str, field: &'static str) -> Result<Option<String>, EventError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.clone())),
                Some(other) => Err(EventError::WrongType { field, expected: "a string", found: kind(other) }),
            }
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
        let event = object(Some(&value), "(the event)")?.ok_or(EventError::WrongType {
            field: "(the event)",
            expected: "an object",
            found: "null",
        })?;
        let request = object(event.get("operationRequest"), "operationRequest")?.ok_or(EventError::NoOperation)?;
        const LIST: &str = "operationRequest.listAuthorizedAccountsRequest";
        const VALIDATE: &str = "operationRequest.validateAccountAuthorizationRequest";
        let list = object(request.get("listAuthorizedAccountsRequest"), LIST)?;
        let validate = object(request.get("validateAccountAuthorizationRequest"), VALIDATE)?;
        match (list, validate) {
            (Some(_), Some(_)) => Err(EventError::BothOperations),
            (None, None) => Err(EventError::NoOperation),
            (Some(l), None) => Ok(Operation::List(ListRequest {
                domain_identifier: string(
                    l,
                    "domainIdentifier",
                    concat!("operationRequest.listAuthorizedAccountsRequest", ".domainIdentifier"),
                )?,
                domain_unit_identifier: string(
                    l,
                    "domainUnitIdentifier",
                    concat!("operationRequest.listAuthorizedAccountsRequest", ".domainUnitIdentifier"),
                )?,
                domain_region: string(
                    l,
                    "domainRegion",
                    concat!("operationRequest.listAuthorizedAccountsRequest", ".domainRegion"),
                )?,
                domain_partition: string(
                    l,
                    "domainPartition",
                    concat!("operationRequest.listAuthorizedAccountsRequest", ".domainPartition"),
                )?,
                user_identifier: string(
                    l,
                    "userIdentifier",
                    concat!("operationRequest.listAuthorizedAccountsRequest", ".userIdentifier"),
                )?,
                max_results: match l.get("maxResults") {
                    None | Some(Value::Null) => None,
                    Some(value) => Some(value.as_i64().ok_or(EventError::WrongType {
                        field: concat!("operationRequest.listAuthorizedAccountsRequest", ".maxResults"),
                        expected: "an integer",
                        found: kind(value),
                    })?),
                },
                next_token: string(
                    l,
                    "nextToken",
                    concat!("operationRequest.listAuthorizedAccountsRequest", ".nextToken"),
                )?,
            })),
            (None, Some(v)) => Ok(Operation::Validate(ValidateRequest {
                domain_identifier: string(
                    v,
                    "domainIdentifier",
                    concat!("operationRequest.validateAccountAuthorizationRequest", ".domainIdentifier"),
                )?,
                domain_unit_identifier: string(
                    v,
                    "domainUnitIdentifier",
                    concat!("operationRequest.validateAccountAuthorizationRequest", ".domainUnitIdentifier"),
                )?,
                domain_region: string(
                    v,
                    "domainRegion",
                    concat!("operationRequest.validateAccountAuthorizationRequest", ".domainRegion"),
                )?,
                aws_account_id: string(
                    v,
                    "awsAccountId",
                    concat!("operationRequest.validateAccountAuthorizationRequest", ".awsAccountId"),
                )?,
                region_name: string(
                    v,
                    "regionName",
                    concat!("operationRequest.validateAccountAuthorizationRequest", ".regionName"),
                )?,
                user_identifier: string(
                    v,
                    "userIdentifier",
                    concat!("operationRequest.validateAccountAuthorizationRequest", ".userIdentifier"),
                )?,
            })),
        }
    }

    /// Any JSON value a few levels deep, numbers of every form included.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            Just(json!(1.0)),
            "[a-z0-9\\-\u{e9}\"\\\\]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// An object with some of `keys` (mostly of the type the interface gives each, else
    /// any value) and an unknown field.
    fn object_with(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
        let typed = prop_oneof![
            4 => ("[ a-z0-9\\-\u{e9}\"]{0,12}", any::<i64>()).prop_map(|(text, number)| (json!(text), json!(number))),
            1 => (any_json(), any_json()),
        ];
        let field = (prop::sample::select(keys), typed)
            .prop_map(|(key, (text, number))| (key.to_owned(), if key == "maxResults" { number } else { text }));
        (prop::collection::vec(field, 0..6), any_json()).prop_map(|(fields, extra)| {
            let mut map: serde_json::Map<String, Value> = fields.into_iter().collect();
            map.insert("unknownField".to_owned(), extra);
            Value::Object(map)
        })
    }

    const LIST_KEYS: &[&str] = &[
        "domainIdentifier",
        "domainUnitIdentifier",
        "domainRegion",
        "domainPartition",
        "userIdentifier",
        "maxResults",
        "nextToken",
    ];
    const VALIDATE_KEYS: &[&str] =
        &["domainIdentifier", "domainUnitIdentifier", "domainRegion", "awsAccountId", "regionName", "userIdentifier"];

    fn any_event() -> impl Strategy<Value = Value> {
        let request = |keys| prop_oneof![3 => object_with(keys), 1 => any_json()];
        let operation = (request(LIST_KEYS), request(VALIDATE_KEYS), 0u8..4, any_json()).prop_map(
            |(list, validate, which, extra)| {
                let mut map = serde_json::Map::new();
                if which & 1 == 1 {
                    map.insert("listAuthorizedAccountsRequest".to_owned(), list);
                }
                if which & 2 == 2 {
                    map.insert("validateAccountAuthorizationRequest".to_owned(), validate);
                }
                map.insert("other".to_owned(), extra);
                Value::Object(map)
            },
        );
        prop_oneof![
            8 => operation.prop_map(|request| json!({"operationRequest": request, "version": "0"})),
            1 => any_json().prop_map(|request| json!({"operationRequest": request})),
            1 => any_json(),
        ]
    }

    proptest! {
        #[test]
        fn every_event_reads_as_its_json_tree_read(event in any_event()) {
            let body = event.to_string();
            prop_assert_eq!(parse(body.as_bytes()), read_as_tree(body.as_bytes()), "{}", body);
        }

        #[test]
        fn every_text_is_refused_or_read_as_its_json_tree_read(body in "[ -~]{0,40}") {
            prop_assert_eq!(parse(body.as_bytes()), read_as_tree(body.as_bytes()), "{}", body);
        }
    }

    #[test]
    fn a_named_field_given_twice_is_refused_at_every_level() {
        let cases = [
            (
                r#"{"operationRequest": null, "operationRequest": {"validateAccountAuthorizationRequest": {}}}"#,
                "operationRequest",
            ),
            (
                r#"{"operationRequest": {"listAuthorizedAccountsRequest": null, "listAuthorizedAccountsRequest": {}}}"#,
                "operationRequest.listAuthorizedAccountsRequest",
            ),
            (
                r#"{"operationRequest": {"validateAccountAuthorizationRequest":
                    {"awsAccountId": "004878717744", "regionName": "us-east-2", "awsAccountId": "111111111111"}}}"#,
                "operationRequest.validateAccountAuthorizationRequest.awsAccountId",
            ),
            (
                r#"{"operationRequest": {"listAuthorizedAccountsRequest": {"maxResults": 1, "maxResults": null}}}"#,
                "operationRequest.listAuthorizedAccountsRequest.maxResults",
            ),
            // the same key however it is escaped
            (
                r#"{"operationRequest": {"validateAccountAuthorizationRequest":
                    {"userIdentifier": "a", "user\u0049dentifier": "b"}}}"#,
                "operationRequest.validateAccountAuthorizationRequest.userIdentifier",
            ),
        ];
        for (body, field) in cases {
            let error = parse(body.as_bytes()).unwrap_err();
            assert_eq!(error, EventError::DuplicateField { field }, "{body}");
            assert_eq!(error.error_type(), "InvalidEvent");
            assert_eq!(error.to_string(), format!("`{field}` appears more than once"));
        }
        // a field nobody reads may repeat, as any unknown field may appear
        let body = r#"{"operationRequest": {"validateAccountAuthorizationRequest": {"regionName": "us-east-2", "x": 1, "x": 2}}, "v": 1, "v": 2}"#;
        let Ok(Operation::Validate(read)) = parse(body.as_bytes()) else { panic!("{body} not read") };
        assert_eq!(read.region_name.as_deref(), Some("us-east-2"));
    }

    #[test]
    fn escaped_keys_and_values_are_read_unescaped_and_bad_strings_anywhere_refused() {
        let body = r#"{"operation\u0052equest": {"validateAccountAuthorizationRequest": {"aws\u0041ccountId": "0048\u00377"}}}"#;
        let Ok(Operation::Validate(read)) = parse(body.as_bytes()) else { panic!("{body} not read") };
        assert_eq!(read.aws_account_id.as_deref(), Some("004877"));
        // a lone surrogate or a raw control character in a field nobody reads is still
        // not JSON a tree would take
        for bad in [r#""\ud800""#, "\"a\u{1}b\"", r#""\x""#, "[1, \"\\ud800\"]", "1e400"] {
            let body =
                format!(r#"{{"operationRequest": {{"validateAccountAuthorizationRequest": {{}}}}, "unread": {bad}}}"#);
            assert!(matches!(parse(body.as_bytes()), Err(EventError::NotJson(_))), "{body}");
            assert!(read_as_tree(body.as_bytes()).is_err(), "{body}");
        }
        let invalid_utf8 =
            b"{\"operationRequest\": {\"validateAccountAuthorizationRequest\": {}}, \"unread\": \"\xff\"}";
        assert!(matches!(parse(invalid_utf8), Err(EventError::NotJson(_))));
    }

    #[test]
    fn nesting_past_the_parsers_depth_limit_is_refused_wherever_it_is() {
        // in a field nobody reads, in a field read as a string, and as the request: the
        // parser's depth limit holds for what is skipped too (no deep recursion)
        let deep = format!("{}1{}", "[".repeat(20_000), "]".repeat(20_000));
        for body in [
            format!(r#"{{"operationRequest": {{"validateAccountAuthorizationRequest": {{}}}}, "unread": {deep}}}"#),
            format!(r#"{{"operationRequest": {{"validateAccountAuthorizationRequest": {{"regionName": {deep}}}}}}}"#),
            format!(r#"{{"operationRequest": {{"listAuthorizedAccountsRequest": {deep}}}}}"#),
        ] {
            assert!(matches!(parse(body.as_bytes()), Err(EventError::NotJson(_))), "{}", &body[..80]);
        }
        // within the limit, a deep value nobody reads is skipped
        let nested = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let body =
            format!(r#"{{"operationRequest": {{"validateAccountAuthorizationRequest": {{}}}}, "unread": {nested}}}"#);
        assert!(matches!(parse(body.as_bytes()), Ok(Operation::Validate(_))));
    }
}
