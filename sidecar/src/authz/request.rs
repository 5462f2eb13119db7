//! Parsing the parts of a request that people type: entity uids and action names.

use std::str::FromStr;

use cedar_policy::{EntityTypeName, EntityUid, Schema};

use super::engine::RequestError;

/// `uid.to_string()`, written for logs and headers on every request: Cedar's `Display`
/// escapes the id through a new string each time; an id of printable ASCII without
/// quotes or backslashes is written as it is, which is what that escaping gives it.
/// Anything else goes through Cedar's own `Display`.
pub fn uid_text(uid: &EntityUid) -> String {
    let id = uid.id().unescaped();
    if !id.bytes().all(|b| (b' '..=b'~').contains(&b) && !matches!(b, b'"' | b'\\' | b'\'')) {
        return uid.to_string();
    }
    let mut text = String::with_capacity(id.len() + 32);
    push_type_name(&mut text, uid.type_name());
    text.push_str("::\"");
    text.push_str(id);
    text.push('"');
    text
}

/// `name` as Cedar writes it, pushed onto `text`. Cedar's `Display` writes a name's
/// path one part at a time through the formatting machinery (some 600 instructions, up
/// to six times a request); the names of the first few types written on a thread are
/// kept there and copied.
fn push_type_name(text: &mut String, name: &EntityTypeName) {
    use std::fmt::Write;
    /// A process decides over a handful of types; past this many, the rest are written.
    const KEPT: usize = 16;
    thread_local! {
        static NAMES: std::cell::RefCell<Vec<(EntityTypeName, Box<str>)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    NAMES.with_borrow_mut(|names| {
        if let Some((_, written)) = names.iter().find(|(kept, _)| kept == name) {
            text.push_str(written);
            return;
        }
        let start = text.len();
        let _ = write!(text, "{name}");
        if names.len() < KEPT {
            names.push((name.clone(), text[start..].into()));
        }
    });
}

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

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use cedar_policy::{EntityId, EntityTypeName};
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Byte for byte Cedar's own `Display`, whatever the id holds (quotes,
        /// backslashes, control characters, combining marks, any Unicode).
        #[test]
        fn uid_text_is_cedars_display(
            id in prop_oneof![
                "[ -~]{0,24}",
                "[a-z0-9'\"\\\\ \t\n-]{0,12}",
                any::<String>(),
                "\\PC{0,6}\u{301}\\PC{0,3}",
            ],
            type_names in prop::collection::vec("[A-Z][a-z0-9_]{0,5}(::[A-Z][a-z0-9_]{0,5}){0,2}", 1..40),
        ) {
            // more types than a thread keeps the names of, each written twice
            for type_name in type_names.iter().chain(&type_names).map(String::as_str).chain(["Studio::User", "User"]) {
                let uid = EntityUid::from_type_name_and_id(EntityTypeName::from_str(type_name).unwrap(), EntityId::new(&id));
                prop_assert_eq!(uid_text(&uid), uid.to_string());
            }
        }
    }
}
