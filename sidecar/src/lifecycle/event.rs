//! Group-membership events, as EventBridge delivers them from CloudTrail.
//!
//! Four API calls change who is in an IAM Identity Center group, and each reaches
//! EventBridge as `detail-type: "AWS API Call via CloudTrail"` with the call's
//! `requestParameters` (and `responseElements`) in `detail`:
//!
//! | `eventSource`                  | `eventName`             | what it names                          |
//! |--------------------------------|-------------------------|----------------------------------------|
//! | `sso-directory.amazonaws.com`  | `AddMemberToGroup`      | store, group, `member.memberId`         |
//! | `sso-directory.amazonaws.com`  | `RemoveMemberFromGroup` | store, group, `member.memberId`         |
//! | `identitystore.amazonaws.com`  | `CreateGroupMembership` | store, group, `memberId.userId`; the new membership id in `responseElements` |
//! | `identitystore.amazonaws.com`  | `DeleteGroupMembership` | store, `membershipId` only              |
//!
//! The console and AD / SCIM synchronisation record the first two; the Identity Store
//! API (and tools built on it) the last two. Keys are read in CloudTrail's camelCase or
//! the API's PascalCase, and every id must have the Identity Store's own form, so a
//! malformed one is refused here rather than sent to AWS.
//!
//! A call CloudTrail recorded as failed (`errorCode` set) changed nothing: it is
//! [`Parsed::Ignored`], never applied. Anything else this parser does not know (another
//! event, a missing field) is an [`EventError`]: the event is refused and nothing
//! changes. Nothing here is trusted: the handler confirms every change against the
//! identity store before it acts on it.

use std::time::SystemTime;

use serde_json::Value;

/// The `detail-type` of every CloudTrail-via-EventBridge event.
pub const CLOUDTRAIL_DETAIL_TYPE: &str = "AWS API Call via CloudTrail";
/// The two event sources of membership changes (the EventBridge `source` is `aws.` and
/// the service's name).
pub const SSO_DIRECTORY: &str = "sso-directory.amazonaws.com";
pub const IDENTITY_STORE: &str = "identitystore.amazonaws.com";

/// One membership change, as the event states it (not yet confirmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipEvent {
    /// CloudTrail's `eventID` (the EventBridge `id` when absent): the audit key.
    pub event_id: String,
    /// `eventName`.
    pub name: String,
    /// When the call was made (`eventTime`): a removal revokes tokens issued before it.
    pub at: SystemTime,
    /// The identity store id (`d-…` or a UUID).
    pub store: String,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A user was added to a group; the membership id when the event carries it.
    Joined { group: String, user: String, membership: Option<String> },
    /// A user was removed from a group.
    Left { group: String, user: String },
    /// A membership was deleted; who and which group must be recalled from when it was
    /// made (it no longer exists in the identity store).
    MembershipDeleted { membership: String },
}

/// What an event amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Change(MembershipEvent),
    /// A recorded call that failed: nothing changed.
    Ignored {
        event_id: String,
        reason: String,
    },
}

/// Why an event was refused. Nothing is changed for any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the event is not JSON: {0}")]
    NotJson(String),
    #[error("not a CloudTrail group-membership event: {0}")]
    NotMembership(String),
    #[error("the `{event}` event lacks `{field}`")]
    Missing { event: String, field: &'static str },
    #[error("the `{event}` event's `{field}` is not an identity store id")]
    BadId { event: String, field: &'static str },
    #[error("the event's `eventTime` is not an RFC 3339 time")]
    BadTime,
}

impl EventError {
    /// A stable name for the Lambda `errorType` and the metric label.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "InvalidEvent",
            Self::NotMembership(_) => "UnsupportedEvent",
            Self::Missing { .. } | Self::BadId { .. } | Self::BadTime => "MalformedEvent",
        }
    }
}

/// Whether `event` is a CloudTrail event of one of the two membership sources (what the
/// Lambda entry point dispatches on; [`parse`] then decides whether it is usable).
pub fn is_membership_source(event: &Value) -> bool {
    let detail_type = event.get("detail-type").and_then(Value::as_str);
    let source = event.get("detail").and_then(|d| d.get("eventSource")).and_then(Value::as_str);
    detail_type == Some(CLOUDTRAIL_DETAIL_TYPE) && matches!(source, Some(SSO_DIRECTORY | IDENTITY_STORE))
}

/// An EventBridge schedule (`detail-type: "Scheduled Event"`, `source: "aws.events"`):
/// what a rule that synchronises memberships sends.
pub fn is_schedule(event: &Value) -> bool {
    event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
        && event.get("source").and_then(Value::as_str) == Some("aws.events")
}

/// Read one event from its JSON bytes.
pub fn parse(body: &[u8]) -> Result<Parsed, EventError> {
    let event: Value = serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    parse_value(&event)
}

/// Read one event.
pub fn parse_value(event: &Value) -> Result<Parsed, EventError> {
    if !is_membership_source(event) {
        return Err(EventError::NotMembership(
            "`detail-type` must be `AWS API Call via CloudTrail` and `detail.eventSource` one of \
             `sso-directory.amazonaws.com` or `identitystore.amazonaws.com`"
                .to_owned(),
        ));
    }
    let detail = event.get("detail").unwrap_or(&Value::Null);
    let source = detail.get("eventSource").and_then(Value::as_str).unwrap_or_default();
    let name = detail.get("eventName").and_then(Value::as_str).unwrap_or_default().to_owned();
    let event_id = detail
        .get("eventID")
        .or_else(|| event.get("id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .ok_or(EventError::Missing { event: name.clone(), field: "detail.eventID" })?
        .to_owned();
    if let Some(code) = detail.get("errorCode").and_then(Value::as_str) {
        return Ok(Parsed::Ignored { event_id, reason: format!("the `{name}` call failed ({code}); nothing changed") });
    }
    let kind = match (source, name.as_str()) {
        (SSO_DIRECTORY, "AddMemberToGroup") => Kind::Add,
        (SSO_DIRECTORY, "RemoveMemberFromGroup") => Kind::Remove,
        (IDENTITY_STORE, "CreateGroupMembership") => Kind::Create,
        (IDENTITY_STORE, "DeleteGroupMembership") => Kind::Delete,
        _ => return Err(EventError::NotMembership(format!("`{source}` `{name}` is not a membership change"))),
    };
    let time = detail
        .get("eventTime")
        .and_then(Value::as_str)
        .ok_or(EventError::Missing { event: name.clone(), field: "detail.eventTime" })?;
    let at = humantime::parse_rfc3339(time).map_err(|_| EventError::BadTime)?;
    let reader = Reader { name: &name, params: detail.get("requestParameters").unwrap_or(&Value::Null) };
    let store = reader.id("identityStoreId", &["identityStoreId"], is_store_id)?;
    let change = match kind {
        Kind::Add | Kind::Remove => {
            let group = reader.id("groupId", &["groupId"], is_resource_id)?;
            let user = reader.id("member.memberId", &["member", "memberId"], is_resource_id)?;
            if kind == Kind::Add {
                Change::Joined { group, user, membership: None }
            } else {
                Change::Left { group, user }
            }
        }
        Kind::Create => {
            let group = reader.id("groupId", &["groupId"], is_resource_id)?;
            let user = reader.id("memberId.userId", &["memberId", "userId"], is_resource_id)?;
            let response = Reader { name: &name, params: detail.get("responseElements").unwrap_or(&Value::Null) };
            let membership = response.optional_id("membershipId", &["membershipId"], is_resource_id)?;
            Change::Joined { group, user, membership }
        }
        Kind::Delete => {
            Change::MembershipDeleted { membership: reader.id("membershipId", &["membershipId"], is_resource_id)? }
        }
    };
    Ok(Parsed::Change(MembershipEvent { event_id, name, at, store, change }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Remove,
    Create,
    Delete,
}

/// Reads ids from one object of the event.
struct Reader<'a> {
    name: &'a str,
    params: &'a Value,
}

impl Reader<'_> {
    fn id(&self, field: &'static str, path: &[&str], valid: fn(&str) -> bool) -> Result<String, EventError> {
        self.optional_id(field, path, valid)?.ok_or(EventError::Missing { event: self.name.to_owned(), field })
    }

    fn optional_id(
        &self,
        field: &'static str,
        path: &[&str],
        valid: fn(&str) -> bool,
    ) -> Result<Option<String>, EventError> {
        let mut at = self.params;
        for key in path {
            match lookup(at, key) {
                Some(next) => at = next,
                None => return Ok(None),
            }
        }
        match at {
            Value::Null => Ok(None),
            Value::String(id) if valid(id) => Ok(Some(id.clone())),
            _ => Err(EventError::BadId { event: self.name.to_owned(), field }),
        }
    }
}

/// `key` in CloudTrail's camelCase, else the API's PascalCase.
fn lookup<'a>(object: &'a Value, key: &str) -> Option<&'a Value> {
    object.get(key).or_else(|| {
        let mut chars = key.chars();
        let pascal: String = chars.next().map(|c| c.to_ascii_uppercase()).into_iter().chain(chars).collect();
        object.get(pascal)
    })
}

/// An identity store id: `d-` and 10 lowercase hex digits, or a UUID.
pub(crate) fn is_store_id(id: &str) -> bool {
    match id.strip_prefix("d-") {
        Some(hex) => hex.len() == 10 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        None => is_uuid(id, false),
    }
}

/// A user, group or membership id: a UUID, optionally after 10 lowercase hex digits and
/// a hyphen.
fn is_resource_id(id: &str) -> bool {
    match id.split_at_checked(11) {
        Some((prefix, rest)) if id.len() == 47 => {
            prefix.bytes().take(10).all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && prefix.ends_with('-')
                && is_uuid(rest, true)
        }
        _ => is_uuid(id, true),
    }
}

fn is_uuid(id: &str, any_case: bool) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || (any_case && (b'A'..=b'F').contains(&b));
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(group, len)| group.len() == len && group.bytes().all(hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event of `name` from `source` with these request parameters.
    fn event(source: &str, name: &str, params: Value, time: &str) -> Value {
        serde_json::json!({"detail-type": CLOUDTRAIL_DETAIL_TYPE, "id": "e-1",
            "detail": {"eventSource": source, "eventName": name, "eventTime": time, "eventID": "ev-1",
                       "requestParameters": params}})
    }

    fn ids(change: &Change) -> Vec<&str> {
        match change {
            Change::Joined { group, user, membership } => {
                [group.as_str(), user.as_str()].into_iter().chain(membership.as_deref()).collect()
            }
            Change::Left { group, user } => vec![group, user],
            Change::MembershipDeleted { membership } => vec![membership],
        }
    }

    proptest::proptest! {
        /// Whatever the ids, names and time an event carries, reading it never panics,
        /// and a change it reads names only ids of the Identity Store's forms.
        #[test]
        fn no_event_reads_as_a_change_with_an_id_of_another_form(
            store in "(d-[0-9a-f]{10}|[ -~]{0,40})",
            group in "([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[ -~]{0,50})",
            user in "([0-9a-f]{10}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\\PC{0,50})",
            which in 0usize..5,
            time in "(2026-11-0[1-9]T0[0-9]:00:00Z|\\PC{0,30})",
        ) {
            let (source, name, params) = match which {
                0 => (SSO_DIRECTORY, "AddMemberToGroup",
                      serde_json::json!({"identityStoreId": store, "groupId": group, "member": {"memberId": user}})),
                1 => (SSO_DIRECTORY, "RemoveMemberFromGroup",
                      serde_json::json!({"identityStoreId": store, "groupId": group, "member": {"memberId": user}})),
                2 => (IDENTITY_STORE, "CreateGroupMembership",
                      serde_json::json!({"IdentityStoreId": store, "GroupId": group, "MemberId": {"UserId": user}})),
                3 => (IDENTITY_STORE, "DeleteGroupMembership",
                      serde_json::json!({"identityStoreId": store, "membershipId": user})),
                _ => (IDENTITY_STORE, "DeleteUser", serde_json::json!({"identityStoreId": store, "userId": user})),
            };
            let read = parse(event(source, name, params, &time).to_string().as_bytes());
            if let Ok(Parsed::Change(change)) = read {
                proptest::prop_assert!(is_store_id(&change.store), "{change:?}");
                for id in ids(&change.change) {
                    proptest::prop_assert!(is_resource_id(id), "{change:?}");
                }
                proptest::prop_assert!(which < 4);
            }
        }

        /// Arbitrary bytes are refused or read, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn ids_have_the_identity_stores_forms() {
        assert!(is_store_id("d-906791299c"));
        assert!(is_store_id("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"));
        assert!(!is_store_id("d-906791299"));
        assert!(!is_store_id("d-906791299C"));
        assert!(is_resource_id("34887428-4081-7042-c3c6-928d413009e7"));
        assert!(is_resource_id("906791299c-34887428-4081-7042-c3c6-928d413009e7"));
        for bad in ["", "34887428-4081-7042-c3c6", "906791299c_34887428-4081-7042-c3c6-928d413009e7", "../x"] {
            assert!(!is_resource_id(bad), "{bad}");
        }
    }
}
