//! The Cedar principal of a verified token.
//!
//! The entity's id is the configured id claim. When an entity with that uid is stored
//! (in the entity files, or in the directory's users table: the user's LOB, teams,
//! tags), it is the starting point; then the token speaks. Group parents follow
//! `group_membership`: `token` replaces the stored parents of the group type with the
//! groups claim, `stored` keeps them, `both` keeps only those the claim names too
//! (other parents, such as the user's LOB, always stay). Each mapped claim sets its tag
//! or attribute.
//! Teams the principal has left since the token was issued (`lost`, see
//! [`crate::lifecycle::revocations`]) count in no source: they are dropped from the
//! groups claim, from the stored group parents and from every tag mapped from the
//! groups claim.
//! The result is checked against the schema, so a claim of the wrong shape is an error,
//! never a silently different principal. One exception, so that the sidecar decides as
//! Cedar does: a user no entity file knows, of a type that declares required attributes,
//! cannot get them from a token; that principal is built without the schema check (its
//! groups and tags still apply, and a policy reading a missing attribute errors, which
//! denies).

use cedar_policy::conformance_errors::EntitySchemaConformanceError;
use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{Entity, Schema};
use serde_json::{Map, Value, json};

use super::Identity;
use crate::config::{GroupMembership, PrincipalConfig};

/// Why a token's principal could not be built: a claim of the wrong shape for the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PrincipalError {
    #[error("the principal built from the token does not fit the schema: {0}")]
    DoesNotFit(String),
    #[error("the principal built from the token is not an entity: {0}")]
    NotAnEntity(String),
}

/// Build the principal entity for `identity` under `schema`, over `stored`, the entity
/// the files or the directory hold for its uid. Its uid is `config.entity_type` with
/// the identity's principal id (its issuer's namespace prefix, then the subject) as id.
/// `lost`: the teams (group ids) that no longer count for this token.
pub(crate) fn principal_entity(
    identity: &Identity,
    config: &PrincipalConfig,
    stored: Option<&Entity>,
    schema: &Schema,
    lost: &[String],
) -> Result<Entity, PrincipalError> {
    let stored = stored.map(Entity::to_json_value);
    let is_stored = matches!(stored, Some(Ok(Value::Object(_))));
    let mut json = match stored {
        Some(Ok(Value::Object(stored))) => stored,
        _ => {
            json!({"uid": {"type": config.entity_type.to_string(), "id": identity.principal_id}, "attrs": {}, "parents": []})
                .as_object()
                .cloned()
                .unwrap_or_default()
        }
    };

    if let Some(claim) = &config.groups_claim {
        let group_type = config.group_type.to_string();
        let mut groups = strings(identity.claims.get(claim));
        groups.retain(|g| !lost.contains(g));
        let parents = json.entry("parents").or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(parents) = parents {
            let is_group = |p: &Value| p.get("type").and_then(Value::as_str) == Some(group_type.as_str());
            let claimed =
                |p: &Value| p.get("id").and_then(Value::as_str).is_some_and(|id| groups.iter().any(|g| g == id));
            match config.group_membership {
                GroupMembership::Token => {
                    parents.retain(|p| !is_group(p));
                    parents.extend(groups.iter().map(|g| json!({"type": group_type, "id": g})));
                }
                GroupMembership::Stored => {}
                GroupMembership::Both => parents.retain(|p| !is_group(p) || claimed(p)),
            }
            let was_lost =
                |p: &Value| p.get("id").and_then(Value::as_str).is_some_and(|id| lost.iter().any(|l| l == id));
            parents.retain(|p| !(is_group(p) && was_lost(p)));
        }
    }
    for (field, pairs) in [("tags", &config.tags), ("attrs", &config.attributes)] {
        let target = json.entry(field).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(target) = target {
            for (name, claim) in pairs {
                if let Some(value) = identity.claims.get(claim) {
                    target.insert(name.clone(), value.clone());
                }
                // a tag of group ids never names a lost one, whichever source set it
                if config.groups_claim.as_ref() == Some(claim)
                    && let Some(value) = target.get_mut(name)
                {
                    without(value, lost);
                }
            }
        }
    }
    match Entity::from_json_value(Value::Object(json.clone()), Some(schema)) {
        Ok(entity) => Ok(entity),
        // A user the entities do not know, of a type that declares required attributes:
        // the token cannot supply them. Cedar does not need the principal to exist, so
        // decide as Cedar does: the token's groups and tags apply, and a policy that
        // reads a missing attribute errors (and so denies).
        Err(EntitiesError::InvalidEntity(EntitySchemaConformanceError::MissingRequiredEntityAttr(_))) if !is_stored => {
            Entity::from_json_value(Value::Object(json), None).map_err(|e| PrincipalError::NotAnEntity(e.to_string()))
        }
        Err(e) => Err(PrincipalError::DoesNotFit(e.to_string())),
    }
}

/// `value` (a string or a list of them) without the strings in `lost`.
fn without(value: &mut Value, lost: &[String]) {
    match value {
        Value::Array(items) => items.retain(|item| !item.as_str().is_some_and(|s| lost.iter().any(|l| l == s))),
        Value::String(s) if lost.iter().any(|l| l == s) => *value = Value::Array(Vec::new()),
        _ => {}
    }
}

/// A claim as a list of strings: a JSON array of strings, or one string.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn schema() -> Schema {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/schema.cedarschema");
        Schema::from_cedarschema_str(&std::fs::read_to_string(path).unwrap()).unwrap().0
    }

    fn identity(groups: &[&str]) -> Identity {
        let claims = json!({"username": "jane", "cognito:groups": groups});
        Identity {
            issuer: "https://issuer.example".to_owned(),
            subject: "jane".to_owned(),
            principal_id: "jane".to_owned(),
            claims: claims.as_object().cloned().unwrap_or_default(),
            expires_at: u64::MAX,
            token_digest: [0; 32],
        }
    }

    /// jane as the directory has her: in lob-a, and in Team1 only.
    fn stored() -> Entity {
        Entity::from_json_value(
            json!({"uid": {"type": "Studio::User", "id": "jane"}, "attrs": {}, "tags": {"Team": ["Team1"]},
                   "parents": [{"type": "Studio::Lob", "id": "lob-a"}, {"type": "Studio::Team", "id": "Team1"}]}),
            Some(&schema()),
        )
        .unwrap()
    }

    fn groups(membership: &str, claimed: &[&str]) -> Vec<String> {
        let text = format!("[principal]\ngroup_membership = \"{membership}\"\n");
        let config = Config::from_toml(&text, "test").unwrap();
        let entity = principal_entity(&identity(claimed), &config.principal, Some(&stored()), &schema(), &[]).unwrap();
        let json = entity.to_json_value().unwrap();
        let mut ids: Vec<String> = json["parents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| format!("{}::{}", p["type"].as_str().unwrap(), p["id"].as_str().unwrap()))
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn group_parents_come_from_the_token_the_store_or_only_what_both_say() {
        // the token still claims Team2, which the directory no longer lists
        let claimed = ["Team1", "Team2"];
        assert_eq!(groups("token", &claimed), ["Studio::Lob::lob-a", "Studio::Team::Team1", "Studio::Team::Team2"]);
        assert_eq!(groups("stored", &claimed), ["Studio::Lob::lob-a", "Studio::Team::Team1"]);
        assert_eq!(groups("both", &claimed), ["Studio::Lob::lob-a", "Studio::Team::Team1"]);
        // a group the directory lists and the token does not (added since sign-in)
        assert_eq!(groups("stored", &[]), ["Studio::Lob::lob-a", "Studio::Team::Team1"]);
        assert_eq!(groups("both", &[]), ["Studio::Lob::lob-a"], "both: the token must say so too");
    }

    #[test]
    fn a_lost_team_counts_in_no_source() {
        for membership in ["token", "stored", "both"] {
            let text = format!("[principal]\ngroup_membership = \"{membership}\"\n");
            let config = Config::from_toml(&text, "test").unwrap();
            let lost = ["Team1".to_owned()];
            let entity =
                principal_entity(&identity(&["Team1", "Team2"]), &config.principal, Some(&stored()), &schema(), &lost)
                    .unwrap();
            let json = entity.to_json_value().unwrap();
            let text = json.to_string();
            assert!(!json["parents"].as_array().unwrap().iter().any(|p| p["id"] == "Team1"), "{membership}: {text}");
            assert!(!json["tags"]["Team"].as_array().unwrap().iter().any(|t| t == "Team1"), "{membership}: {text}");
            assert!(json["parents"].as_array().unwrap().iter().any(|p| p["id"] == "lob-a"), "{membership}: {text}");
        }
    }
}
