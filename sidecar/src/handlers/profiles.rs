//! Studio user profiles derived instead of listed.
//!
//! A route with `derive_profile` does not need a `Studio::UserProfile` entity per user
//! and team: when the snapshot lists none for the request's resource, the profile is
//! derived for that one request from the path's user and team and the user's line of
//! business, exactly as a listed one would be written:
//!
//! - `owner`: the principal type with the user as id (so the own-profile permit matches
//!   the user who asks for it, and nobody else);
//! - `team`: the team whose id is the path's team (from the entity files or the
//!   directory), else the one team of the entity files whose id equals it ignoring ASCII
//!   case (two such teams derive nothing; the directory is only asked by exact id);
//! - `lob`, and the one parent: the user's line of business (the user's one parent of
//!   the LOB type, from the entity files or the directory; none or several derive
//!   nothing);
//! - the `Team` tag: the team's id;
//! - `profileName`: [`derived_profile_name`] of the resource id.
//!
//! The derived entity is checked against the schema like any entity. A profile that
//! cannot be derived is not invented: the request is decided without it, which denies.
//! A listed profile always wins, so legacy names keep working.

use std::sync::Arc;

use std::str::FromStr;

use cedar_policy::{Entity, EntityTypeName, EntityUid};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::{LOB_TYPE, TEAM_TYPE};
use crate::policy_store::PolicySnapshot;

/// SageMaker's limit on a user profile name.
const MAX_NAME: usize = 63;
/// Hex digits of the digest that ends a hashed name.
const DIGEST_HEX: usize = 16;

/// Why no profile was derived (the request is then decided without one, and denied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeriveError {
    #[error("no team `{0}` is known")]
    NoTeam(String),
    #[error("more than one team is named `{0}` (ignoring case)")]
    AmbiguousTeam(String),
    #[error("user `{0}` is not known, so their line of business is unknown")]
    NoUser(String),
    #[error("user `{user}` belongs to {count} lines of business; a profile needs exactly one")]
    Lobs { user: String, count: usize },
    #[error("the derived profile does not fit the schema: {0}")]
    Schema(String),
}

/// The profile of `user` in `team`, whose uid is `resource`, derived from `snapshot`
/// and what `known` finds (the snapshot's entities, then the directory's answers for
/// this request). `user_type` is the principal's type.
pub fn derive_profile(
    snapshot: &PolicySnapshot,
    known: impl Fn(&EntityUid) -> Option<Arc<Entity>>,
    user_type: &EntityTypeName,
    user: &str,
    team: &str,
    resource: &EntityUid,
) -> Result<Entity, DeriveError> {
    let team_id = known_team(snapshot, &known, team)?;
    let user_uid = EntityUid::from_type_name_and_id(user_type.clone(), cedar_policy::EntityId::new(user));
    let lob = user_lob(known(&user_uid).as_deref(), user)?;
    let json = profile_json(resource, user_type, user, &team_id, &lob);
    Entity::from_json_value(json, Some(snapshot.schema())).map_err(|e| DeriveError::Schema(e.to_string()))
}

/// Whether profiles derived for `user_type` fit `schema` (checked when a snapshot is
/// about to be served, with sample ids, so that a schema they do not fit is refused
/// then, not on a request).
pub fn check_shape(schema: &cedar_policy::Schema, user_type: &EntityTypeName) -> Result<(), DeriveError> {
    let sample = EntityUid::from_str(&format!("{}::\"u-t\"", crate::config::PROFILE_TYPE))
        .map_err(|e| DeriveError::Schema(e.to_string()))?;
    let json = profile_json(&sample, user_type, "u", "t", "l");
    Entity::from_json_value(json, Some(schema)).map(|_| ()).map_err(|e| DeriveError::Schema(e.to_string()))
}

/// The entity JSON of a derived profile.
fn profile_json(
    resource: &EntityUid,
    user_type: &EntityTypeName,
    user: &str,
    team: &str,
    lob: &str,
) -> serde_json::Value {
    json!({
        "uid": {"type": resource.type_name().to_string(), "id": resource.id().unescaped()},
        "attrs": {
            "profileName": derived_profile_name(resource.id().unescaped()),
            "owner": {"type": user_type.to_string(), "id": user},
            "team": {"type": TEAM_TYPE, "id": team},
            "lob": {"type": LOB_TYPE, "id": lob},
        },
        "parents": [{"type": LOB_TYPE, "id": lob}],
        "tags": {"Team": team},
    })
}

/// The team `name` names: itself when known, else the one stored team equal to it
/// ignoring case.
fn known_team(
    snapshot: &PolicySnapshot,
    known: impl Fn(&EntityUid) -> Option<Arc<Entity>>,
    name: &str,
) -> Result<String, DeriveError> {
    let Some(team_type) = crate::config::team_type() else {
        return Err(DeriveError::NoTeam(name.to_owned()));
    };
    if known(&EntityUid::from_type_name_and_id(team_type.clone(), cedar_policy::EntityId::new(name))).is_some() {
        return Ok(name.to_owned());
    }
    let teams = snapshot.entities_of_type(&team_type);
    let mut alike = teams.iter().filter(|uid| uid.id().unescaped().eq_ignore_ascii_case(name));
    match (alike.next(), alike.next()) {
        (Some(one), None) => Ok(one.id().unescaped().to_owned()),
        (Some(_), Some(_)) => Err(DeriveError::AmbiguousTeam(name.to_owned())),
        (None, _) => Err(DeriveError::NoTeam(name.to_owned())),
    }
}

/// The one line of business the known `user` belongs to.
fn user_lob(known: Option<&Entity>, user: &str) -> Result<String, DeriveError> {
    let stored = known.ok_or_else(|| DeriveError::NoUser(user.to_owned()))?;
    let json = stored.to_json_value().map_err(|e| DeriveError::Schema(e.to_string()))?;
    let lobs: Vec<&str> = json
        .get("parents")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter(|parent| parent.get("type").and_then(serde_json::Value::as_str) == Some(LOB_TYPE))
        .filter_map(|parent| parent.get("id").and_then(serde_json::Value::as_str))
        .collect();
    match lobs.as_slice() {
        [one] => Ok((*one).to_owned()),
        other => Err(DeriveError::Lobs { user: user.to_owned(), count: other.len() }),
    }
}

/// The SageMaker user profile name of a derived profile whose resource id is `id`.
///
/// The rule, so that two users or teams never share a profile: `id` itself when it is
/// a valid SageMaker name (1 to 63 letters, digits and hyphens, a letter or digit at
/// each end) that does not end in a hyphen and 16 lowercase hex digits; otherwise its
/// letters and digits (anything else becoming `-`) cut to 46 characters, a hyphen, and
/// the first 16 hex digits of the SHA-256 of `id`. The two forms never meet (only the
/// second ends in `-` and 16 hex digits), the first is `id` (unique per user and team,
/// since a resource id template reads back one way only), and the second is unique as
/// far as SHA-256 is.
pub fn derived_profile_name(id: &str) -> String {
    if is_valid_name(id) && !ends_in_digest(id) {
        return id.to_owned();
    }
    let mapped: String = id.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let cut = MAX_NAME - 1 - DIGEST_HEX;
    let prefix: String = mapped.trim_matches('-').chars().take(cut).collect();
    let prefix = match prefix.trim_end_matches('-') {
        "" => "p",
        kept => kept,
    };
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest.iter().take(DIGEST_HEX / 2).map(|byte| format!("{byte:02x}")).collect();
    format!("{prefix}-{hex}")
}

fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=MAX_NAME).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn ends_in_digest(name: &str) -> bool {
    let Some(split) = name.len().checked_sub(DIGEST_HEX + 1) else { return false };
    let (head, tail) = name.split_at(split);
    !head.is_empty()
        && tail.starts_with('-')
        && tail.bytes().skip(1).all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_are_their_own_names_and_others_are_hashed_within_sagemakers_rules() {
        assert_eq!(derived_profile_name("user-1-team1"), "user-1-team1");
        for id in ["User_1.Team 1", "jane@example.com-team1", &"x".repeat(80), "-", "ä-team1"] {
            let name = derived_profile_name(id);
            assert!(is_valid_name(&name) && name.len() <= MAX_NAME, "{id} -> {name}");
            assert!(ends_in_digest(&name), "{id} -> {name}");
        }
        // sanitising alone would give these one name
        assert_ne!(derived_profile_name("a_b-c"), derived_profile_name("a.b-c"));
        // an id shaped like a hashed name is hashed too, so it cannot take one
        let hashed = derived_profile_name("a_b-c");
        assert_ne!(derived_profile_name(&hashed), hashed);
    }

    proptest::proptest! {
        #[test]
        fn different_ids_never_share_a_name(a in "[a-zA-Z0-9_.@ -]{1,80}", b in "[a-zA-Z0-9_.@ -]{1,80}") {
            let (x, y) = (derived_profile_name(&a), derived_profile_name(&b));
            proptest::prop_assert!(is_valid_name(&x));
            if a != b {
                proptest::prop_assert_ne!(x, y);
            }
        }
    }
}
