//! Parsing the parts of a request that people type: entity uids and action names.

use std::str::FromStr;

use cedar_policy::{EntityUid, Schema};

use super::engine::RequestError;

/// Parse `Type::"id"` (with any namespace, e.g. `Studio::User::"user-1"`).
pub fn parse_entity_uid(text: &str) -> Result<EntityUid, RequestError> {
    EntityUid::from_str(text.trim()).map_err(|e| RequestError::BadUid { text: text.to_owned(), reason: e.to_string() })
}

/// An action given in full (`Studio::Action::"CreatePresignedDomainUrl"`) or by its
/// bare name (`CreatePresignedDomainUrl`) when exactly one action of the schema has it.
pub fn resolve_action(schema: &Schema, text: &str) -> Result<EntityUid, RequestError> {
    let text = text.trim();
    if text.contains("::") {
        return parse_entity_uid(text);
    }
    let matches: Vec<EntityUid> = schema.actions().filter(|a| a.id().unescaped() == text).cloned().collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(RequestError::UnknownAction { action: text.to_owned(), known: known_actions(schema) }),
        _ => Err(RequestError::AmbiguousAction {
            action: text.to_owned(),
            candidates: matches.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        }),
    }
}

fn known_actions(schema: &Schema) -> String {
    let mut names: Vec<String> = schema.actions().map(ToString::to_string).collect();
    names.sort();
    names.join(", ")
}
