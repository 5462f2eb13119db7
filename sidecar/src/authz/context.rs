//! Cedar contexts from the strings the data plane knows (source IP, VPC endpoint, time,
//! path parameters, headers), built from typed values instead of parsed from JSON.
//!
//! Every value the data plane puts in a context is a string, and the schema says what
//! each becomes (`sourceIp: ipaddr`, `requestTime: datetime`, ...). Cedar's JSON parser
//! works that out on every request, and that was most of a decision's fixed cost. Here
//! the first context with a given attribute goes through Cedar's parser; the kind whose
//! constructor gives the same value from the same string is remembered for that action
//! and attribute in the snapshot, and later contexts are built from typed values.
//! Either way the context is type-checked against the schema (`Request::new`), so a
//! wrong kind is refused, never silently let through. A typed context also carries its
//! shape (each attribute's name and kind): every context of one shape has the same
//! Cedar type, so the engine checks a shape once per snapshot, principal type, action
//! and resource type, and skips the check for the same shape after that.

use std::sync::{Arc, LazyLock, OnceLock};

use cedar_policy::{Context, EntityTypeName, EntityUid, RestrictedExpression};
use cedar_policy_core::ast::{Name, RestrictedExpr};
use serde_json::Value;

use super::RequestError;
use crate::policy_store::{ContextValueKind, PolicySnapshot, next_serial};

/// The kinds tried, in order, when learning how an attribute is built.
const KINDS: [ContextValueKind; 5] = [
    ContextValueKind::String,
    ContextValueKind::Ip,
    ContextValueKind::Datetime,
    ContextValueKind::Decimal,
    ContextValueKind::Duration,
];

/// The names and kinds of a typed context's attributes, in order: every context of one
/// shape has the same Cedar type (each kind makes values of one type).
pub type ContextShape = Arc<[(String, ContextValueKind)]>;

/// A context built from typed values, and its shape when every attribute had a learned
/// kind (`None`: the engine checks it against the schema every time). Its parts are
/// shared, so the snapshot hands out a kept context without copying it.
#[derive(Debug, Clone)]
pub struct TypedContext {
    pub context: Arc<Context>,
    pub shape: Option<ContextShape>,
    /// Names this exact context among every context of the process (see
    /// [`crate::policy_store::next_serial`]) when it was built from strings and kept by
    /// the snapshot; 0 for a context made any other way. Only a named context lets a
    /// decision be kept (see [`crate::policy_store::PolicySnapshot::known_decision`]).
    pub serial: u64,
    /// The first principal and resource types this context's shape passed the schema
    /// check with, and the snapshot (its build id) that checked it: the same question
    /// again needs no check, not even the snapshot's lookup of checked shapes. Only a
    /// context with a shape has it (one without is checked every time).
    passed: Option<Arc<OnceLock<(u64, EntityTypeName, EntityTypeName)>>>,
}

impl TypedContext {
    fn new(context: Context, shape: Option<ContextShape>, serial: u64) -> Self {
        let passed = shape.as_ref().map(|_| Arc::default());
        Self { context: Arc::new(context), shape, serial, passed }
    }

    /// Whether this context's shape passed the schema check with these types in the
    /// snapshot built as `build_id` (see [`Self::remember_passed`]); `false` when it is
    /// not known here, which only costs the snapshot's own lookup.
    pub fn passed(&self, build_id: u64, principal: &EntityTypeName, resource: &EntityTypeName) -> bool {
        let passed = self.passed.as_deref().and_then(OnceLock::get);
        passed.is_some_and(|(id, p, r)| *id == build_id && p == principal && r == resource)
    }

    /// Remember that this context's shape passed the schema check with these types in
    /// the snapshot built as `build_id` (kept for the first types only: a context is
    /// almost always asked about with one).
    pub fn remember_passed(&self, build_id: u64, principal: &EntityTypeName, resource: &EntityTypeName) {
        if let Some(passed) = &self.passed {
            let _ = passed.set((build_id, principal.clone(), resource.clone()));
        }
    }
}

impl From<Context> for TypedContext {
    fn from(context: Context) -> Self {
        Self::new(context, None, 0)
    }
}

/// The context of a request about `action` with these string-valued attributes.
pub fn context_from_strings(
    snapshot: &PolicySnapshot,
    action: &EntityUid,
    pairs: &[(String, String)],
) -> Result<TypedContext, RequestError> {
    if let Some(known) = snapshot.typed_context(action, pairs) {
        return Ok(known);
    }
    let mut typed = Vec::with_capacity(pairs.len());
    let mut shape = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        match snapshot.context_kind(action, name) {
            Some(ContextValueKind::Other) | None => return parse_and_learn(snapshot, action, pairs).map(Into::into),
            Some(kind) => {
                typed.push((name.clone(), expression(snapshot, kind, value)));
                shape.push((name.clone(), kind));
            }
        }
    }
    let context = Context::from_pairs(typed).map_err(|e| bad_context(action, &e))?;
    let typed = TypedContext::new(context, Some(shape.into()), next_serial());
    snapshot.remember_typed_context(action, pairs, &typed);
    Ok(typed)
}

/// A typed value; extension values come from the snapshot's cache of them.
fn expression(snapshot: &PolicySnapshot, kind: ContextValueKind, value: &str) -> RestrictedExpression {
    if kind == ContextValueKind::String || kind == ContextValueKind::Other {
        return RestrictedExpression::new_string(value.to_owned());
    }
    snapshot.context_value(kind, value, || make(kind, value))
}

/// The names of Cedar's extension constructors, parsed once. Cedar's own
/// `RestrictedExpression::new_ip` (and `new_datetime`, ...) parse the constructor's name
/// with Cedar's whole parser on every call, building its lexer and the lexer's regular
/// expression caches anew: about 45,000 instructions, which every source IP new to a
/// snapshot paid. These make the same expression from the name parsed here.
struct Constructors {
    ip: Name,
    datetime: Name,
    decimal: Name,
    duration: Name,
}

static CONSTRUCTORS: LazyLock<Option<Constructors>> = LazyLock::new(|| {
    Some(Constructors {
        ip: Name::parse_unqualified_name("ip").ok()?,
        datetime: Name::parse_unqualified_name("datetime").ok()?,
        decimal: Name::parse_unqualified_name("decimal").ok()?,
        duration: Name::parse_unqualified_name("duration").ok()?,
    })
});

fn make(kind: ContextValueKind, value: &str) -> RestrictedExpression {
    let call = |name: &Name| RestrictedExpr::call_extension_fn(name.clone(), [RestrictedExpr::val(value)]).into();
    match (kind, CONSTRUCTORS.as_ref()) {
        (ContextValueKind::Ip, Some(names)) => call(&names.ip),
        (ContextValueKind::Datetime, Some(names)) => call(&names.datetime),
        (ContextValueKind::Decimal, Some(names)) => call(&names.decimal),
        (ContextValueKind::Duration, Some(names)) => call(&names.duration),
        // the names are Cedar's own and always parse; if they did not, Cedar's way
        (ContextValueKind::Ip, None) => RestrictedExpression::new_ip(value),
        (ContextValueKind::Datetime, None) => RestrictedExpression::new_datetime(value),
        (ContextValueKind::Decimal, None) => RestrictedExpression::new_decimal(value),
        (ContextValueKind::Duration, None) => RestrictedExpression::new_duration(value),
        (ContextValueKind::String | ContextValueKind::Other, _) => RestrictedExpression::new_string(value.to_owned()),
    }
}

/// Parse through Cedar's schema-directed JSON parser, and learn the kind of every
/// attribute not learned yet from what the parser made of it.
fn parse_and_learn(
    snapshot: &PolicySnapshot,
    action: &EntityUid,
    pairs: &[(String, String)],
) -> Result<Context, RequestError> {
    let json = Value::Object(pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect());
    let context =
        Context::from_json_value(json, Some((snapshot.schema(), action))).map_err(|e| bad_context(action, &e))?;
    for (name, value) in pairs {
        if snapshot.context_kind(action, name).is_some() {
            continue;
        }
        let Some(parsed) = context.get(name) else { continue };
        let same = |kind: &ContextValueKind| {
            Context::from_pairs([(name.clone(), expression(snapshot, *kind, value))])
                .ok()
                .and_then(|c| c.get(name))
                .as_ref()
                == Some(&parsed)
        };
        let kind = KINDS.iter().find(|k| same(k)).copied().unwrap_or(ContextValueKind::Other);
        snapshot.learn_context_kind(action, name, kind);
    }
    Ok(context)
}

fn bad_context(action: &EntityUid, error: &dyn std::fmt::Display) -> RequestError {
    RequestError::BadContext { action: action.to_string(), reason: error.to_string() }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use cedar_policy::{Entity, EvalResult};

    use super::*;
    use crate::policy_store::SourceDirs;

    fn shipped() -> PolicySnapshot {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        PolicySnapshot::load(&SourceDirs::new(root.join("policies"), root.join("entities")), 1).unwrap()
    }

    fn presign() -> EntityUid {
        r#"Studio::Action::"CreatePresignedDomainUrl""#.parse().unwrap()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn kinds_are_learned_from_the_schema_and_typed_contexts_equal_parsed_ones() {
        let snapshot = shipped();
        let action = presign();
        let items =
            pairs(&[("sourceIp", "10.1.2.3"), ("sourceVpce", "vpce-1"), ("requestTime", "2026-11-22T10:00:00Z")]);
        assert_eq!(snapshot.context_kind(&action, "sourceIp"), None);
        let parsed = context_from_strings(&snapshot, &action, &items).unwrap();
        assert_eq!(snapshot.context_kind(&action, "sourceIp"), Some(ContextValueKind::Ip));
        assert_eq!(snapshot.context_kind(&action, "sourceVpce"), Some(ContextValueKind::String));
        assert_eq!(snapshot.context_kind(&action, "requestTime"), Some(ContextValueKind::Datetime));
        let typed = context_from_strings(&snapshot, &action, &items).unwrap();
        for name in ["sourceIp", "sourceVpce", "requestTime"] {
            assert_eq!(typed.context.get(name), parsed.context.get(name), "{name}");
        }
        assert!(matches!(typed.context.get("sourceIp"), Some(EvalResult::ExtensionValue(_))));
    }

    #[test]
    fn a_bad_value_is_refused_on_both_paths() {
        let snapshot = shipped();
        let action = presign();
        let bad = pairs(&[("sourceIp", "not-an-ip")]);
        assert!(matches!(context_from_strings(&snapshot, &action, &bad), Err(RequestError::BadContext { .. })));
        context_from_strings(&snapshot, &action, &pairs(&[("sourceIp", "10.1.2.3")])).unwrap();
        assert!(matches!(context_from_strings(&snapshot, &action, &bad), Err(RequestError::BadContext { .. })));
    }

    #[test]
    fn an_attribute_the_schema_does_not_declare_is_refused_and_not_learned() {
        let snapshot = shipped();
        let action = presign();
        let items = pairs(&[("sourceIp", "10.1.2.3"), ("undeclared", "x")]);
        assert!(context_from_strings(&snapshot, &action, &items).is_err());
        assert_eq!(snapshot.context_kind(&action, "undeclared"), None);
    }

    /// The check a context remembers it passed holds for the snapshot that checked it
    /// and the types it was checked with, and for nothing else.
    #[test]
    fn a_context_remembers_passing_only_for_its_types_and_the_snapshot_that_checked_it() {
        use crate::authz::{DecisionRequest, Engine};
        let (first, second) = (shipped(), shipped());
        assert_ne!(first.build_id(), second.build_id());
        let action = presign();
        let items = pairs(&[("sourceIp", "10.1.2.3"), ("sourceVpce", "vpce-0a1a000000000001a")]);
        // the first context learns the kinds through Cedar's parser and has no shape
        let parsed = context_from_strings(&first, &action, &items).unwrap();
        assert!(parsed.shape.is_none());
        let typed = context_from_strings(&first, &action, &items).unwrap();
        assert!(typed.shape.is_some());
        let user: EntityUid = r#"Studio::User::"user-1""#.parse().unwrap();
        let profile: EntityUid = r#"Studio::UserProfile::"user-1-team1""#.parse().unwrap();
        let (user_type, profile_type) = (user.type_name(), profile.type_name());
        assert!(!typed.passed(first.build_id(), user_type, profile_type));

        let principal = first
            .stored_entity(&user)
            .unwrap()
            .map(|entity| Entity::clone(&entity))
            .ok_or_else(|| "no user-1".to_owned());
        let requester = first.request_principal([5; 32], || principal).unwrap();
        let request = DecisionRequest::built(requester, action, profile.clone(), typed.clone());
        assert!(Engine::new().decide(&first, &request).unwrap().is_allowed());

        // kept with the context (and every copy of it the snapshot hands out)
        let again = context_from_strings(&first, &presign(), &items).unwrap();
        assert!(again.passed(first.build_id(), user_type, profile_type));
        assert!(!again.passed(second.build_id(), user_type, profile_type), "another snapshot's schema");
        let team: EntityUid = r#"Studio::Team::"Team1""#.parse().unwrap();
        assert!(!again.passed(first.build_id(), user_type, team.type_name()), "another resource type");
        assert!(!again.passed(first.build_id(), profile_type, profile_type), "another principal type");

        // a context without a shape is checked every time
        parsed.remember_passed(first.build_id(), user_type, profile_type);
        assert!(!parsed.passed(first.build_id(), user_type, profile_type));
    }

    proptest::proptest! {
        /// Every kind's value is the expression Cedar's own constructor makes from the
        /// same string, valid or not (an invalid one fails alike when evaluated).
        #[test]
        fn extension_values_are_cedars_own(value in ".{0,40}", ip in "[0-9a-f:./]{0,24}") {
            for text in [value.as_str(), ip.as_str(), "10.1.2.3", "2026-12-01T19:03:15Z", "1.5", "1h2m"] {
                proptest::prop_assert_eq!(make(ContextValueKind::Ip, text), RestrictedExpression::new_ip(text));
                proptest::prop_assert_eq!(make(ContextValueKind::Datetime, text), RestrictedExpression::new_datetime(text));
                proptest::prop_assert_eq!(make(ContextValueKind::Decimal, text), RestrictedExpression::new_decimal(text));
                proptest::prop_assert_eq!(make(ContextValueKind::Duration, text), RestrictedExpression::new_duration(text));
                proptest::prop_assert_eq!(
                    make(ContextValueKind::String, text),
                    RestrictedExpression::new_string(text.to_owned())
                );
            }
        }
    }
}
