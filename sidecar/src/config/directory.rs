//! `[directory]`: the tables entities of some types are read from, and how long what
//! was read is trusted.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use cedar_policy::EntityTypeName;
use serde::Deserialize;

use crate::directory::{AttributeMapping, CachePolicy, ParentMapping, TableMapping, ValueKind};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDirectory {
    /// The DynamoDB endpoint (a VPC endpoint, or a local emulator); else the region's.
    pub endpoint: Option<String>,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
    pub capacity: u64,
    pub tables: Vec<RawTable>,
}

impl Default for RawDirectory {
    fn default() -> Self {
        Self {
            endpoint: None,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(30),
            max_staleness: Duration::from_secs(300),
            capacity: 100_000,
            tables: Vec::new(),
        }
    }
}

/// `[[directory.tables]]`: one table, one entity type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    pub table: String,
    pub entity_type: String,
    /// The partition key attribute (a string): the entity id.
    pub key: String,
    /// Cedar attribute → item attribute, or `{ from, entity_type }` for a reference.
    #[serde(default)]
    pub attributes: BTreeMap<String, RawAttribute>,
    /// Item attribute → the entity type of the parents it names.
    #[serde(default)]
    pub parents: BTreeMap<String, String>,
    /// Cedar tag → item attribute.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawAttribute {
    Plain(String),
    Reference(RawReference),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReference {
    pub from: String,
    pub entity_type: String,
}

/// The validated `[directory]`.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    pub endpoint: Option<String>,
    pub policy: CachePolicy,
    pub tables: Vec<TableMapping>,
}

impl DirectoryConfig {
    /// Whether entities of `entity_type` are read from a table.
    pub fn holds(&self, entity_type: &EntityTypeName) -> bool {
        self.tables.iter().any(|t| &t.entity_type == entity_type)
    }
}

/// Why `[directory]` was refused: the key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryProblem {
    pub key: String,
    pub message: String,
}

pub(super) fn parse_directory(raw: &RawDirectory) -> Result<DirectoryConfig, DirectoryProblem> {
    let problem = |key: String, message: String| DirectoryProblem { key, message };
    if raw.tables.is_empty() {
        return Err(problem("directory.tables".into(), "name at least one table (or leave `[directory]` out)".into()));
    }
    if raw.ttl.is_zero() {
        return Err(problem("directory.ttl".into(), "must be longer than 0s".into()));
    }
    if raw.capacity == 0 {
        return Err(problem("directory.capacity".into(), "must be greater than 0".into()));
    }
    if let Some(endpoint) = &raw.endpoint {
        let uri = http::Uri::from_str(endpoint).map_err(|e| problem("directory.endpoint".into(), e.to_string()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(problem("directory.endpoint".into(), format!("`{endpoint}` must be an http(s) URL")));
        }
    }
    let mut tables: Vec<TableMapping> = Vec::new();
    for (i, table) in raw.tables.iter().enumerate() {
        let key = |field: &str| format!("directory.tables[{i}].{field}");
        let type_name = |field: &str, value: &str| {
            EntityTypeName::from_str(value)
                .map_err(|e| problem(key(field), format!("`{value}` is not a Cedar entity type: {e}")))
        };
        for (field, value) in [("table", &table.table), ("key", &table.key)] {
            if value.trim().is_empty() {
                return Err(problem(key(field), "must not be empty".into()));
            }
        }
        let entity_type = type_name("entity_type", &table.entity_type)?;
        if entity_type.basename() == "Action" {
            return Err(problem(key("entity_type"), "actions come from the schema, never from a table".into()));
        }
        if tables.iter().any(|t| t.entity_type == entity_type) {
            return Err(problem(key("entity_type"), format!("`{entity_type}` is read from two tables; name one")));
        }
        let mut attributes = Vec::new();
        for (name, from) in &table.attributes {
            let (from, kind) = match from {
                RawAttribute::Plain(from) => (from.clone(), ValueKind::Plain),
                RawAttribute::Reference(r) => {
                    (r.from.clone(), ValueKind::Entity(type_name(&format!("attributes.{name}"), &r.entity_type)?))
                }
            };
            attributes.push(AttributeMapping { name: name.clone(), from, kind });
        }
        let mut parents = Vec::new();
        for (from, parent_type) in &table.parents {
            parents.push(ParentMapping { from: from.clone(), entity_type: type_name("parents", parent_type)? });
        }
        tables.push(TableMapping {
            table: table.table.clone(),
            entity_type,
            key: table.key.clone(),
            attributes,
            parents,
            tags: table.tags.clone().into_iter().collect(),
        });
    }
    Ok(DirectoryConfig {
        endpoint: raw.endpoint.clone(),
        policy: CachePolicy {
            ttl: raw.ttl,
            negative_ttl: raw.negative_ttl,
            max_staleness: raw.max_staleness,
            capacity: raw.capacity,
        },
        tables,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, GroupMembership};

    fn config(extra: &str) -> Result<Config, String> {
        Config::from_toml(extra, "test").map_err(|e| e.to_string())
    }

    const USERS: &str = "[[directory.tables]]\ntable = \"users\"\nentity_type = \"Studio::User\"\nkey = \"userName\"\n\
                         parents = { lob = \"Studio::Lob\" }\n";

    #[test]
    fn the_shipped_example_maps_the_seeds_tables() {
        let text = include_str!("../../config/directory-example.toml");
        let config = config(text).unwrap();
        let directory = config.directory.unwrap();
        let tables: Vec<_> = directory.tables.iter().map(|t| (t.table.as_str(), t.entity_type.to_string())).collect();
        assert_eq!(
            tables,
            [
                ("authz-users", "Studio::User".to_owned()),
                ("authz-lobs", "Studio::Lob".to_owned()),
                ("authz-teams", "Studio::Team".to_owned()),
                ("authz-datazone-users", "DataZone::User".to_owned())
            ]
        );
        assert_eq!(config.principal.group_membership, GroupMembership::Both, "the directory holds the principals");
    }

    #[test]
    fn group_membership_defaults_to_both_only_when_the_directory_holds_the_principal_type() {
        assert_eq!(config("").unwrap().principal.group_membership, GroupMembership::Token);
        assert_eq!(config(USERS).unwrap().principal.group_membership, GroupMembership::Both);
        let lobs_only =
            USERS.replace("Studio::User", "Studio::Lob").replace("parents = { lob = \"Studio::Lob\" }\n", "");
        assert_eq!(config(&lobs_only).unwrap().principal.group_membership, GroupMembership::Token);
        let error = config("[principal]\ngroup_membership = \"either\"\n").unwrap_err();
        assert!(error.contains("`either`: use `token`, `stored` or `both`"), "{error}");
    }

    #[test]
    fn a_directory_that_cannot_work_is_refused_naming_the_key() {
        for (text, key) in [
            ("[directory]\n", "directory.tables"),
            (&format!("[directory]\nttl = \"0s\"\n{USERS}"), "directory.ttl"),
            (&format!("[directory]\ncapacity = 0\n{USERS}"), "directory.capacity"),
            (&format!("[directory]\nendpoint = \"dynamodb\"\n{USERS}"), "directory.endpoint"),
            (&format!("{USERS}{USERS}"), "directory.tables[1].entity_type"),
            (&USERS.replace("Studio::User", "Studio::Action"), "directory.tables[0].entity_type"),
            (&USERS.replace("Studio::Lob", "not a type"), "directory.tables[0].parents"),
            (&USERS.replace("key = \"userName\"", "key = \"\""), "directory.tables[0].key"),
            (&format!("{USERS}unknown = 1\n"), "unknown field"),
        ] {
            let error = config(text).unwrap_err();
            assert!(error.contains(key), "{text}: {error}");
        }
    }
}
