//! One directory table's items as Cedar entities: the key attribute is the entity id;
//! each mapped item attribute becomes a Cedar attribute, parents or a tag. Items are
//! read in DynamoDB's data model (strings, numbers, booleans, string sets, lists, maps),
//! and the entity is checked against the schema like any entity from a file.

use std::collections::BTreeMap;

use cedar_policy::{Entity, EntityTypeName, Schema};
use serde_json::{Map, Value, json};

/// A DynamoDB attribute value, as far as entities use them (binary values are not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    S(String),
    /// A number, as DynamoDB sends it: text.
    N(String),
    Bool(bool),
    Ss(Vec<String>),
    Ns(Vec<String>),
    L(Vec<AttributeValue>),
    M(BTreeMap<String, AttributeValue>),
    Null,
    /// Binary values, and kinds Cedar has no value for: refused where mapped.
    Unsupported,
}

/// One item: attribute name → value.
pub type Item = BTreeMap<String, AttributeValue>;

/// What an item attribute becomes in Cedar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// A string, long, boolean, set or record, as the value is (a string set is a set of
    /// strings; numbers must be integers). Extension values (`ipaddr`, `decimal`, ...)
    /// are written as strings and typed by the schema.
    Plain,
    /// A reference to an entity of this type: a string is one, a string set or list of
    /// strings a set of them.
    Entity(EntityTypeName),
}

/// A Cedar attribute read from an item attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeMapping {
    /// The Cedar attribute.
    pub name: String,
    /// The item attribute it is read from.
    pub from: String,
    pub kind: ValueKind,
}

/// Parents read from an item attribute: one id (a string) or several (a string set or a
/// list of strings), all of `entity_type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentMapping {
    pub from: String,
    pub entity_type: EntityTypeName,
}

/// How one table's items become entities of one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMapping {
    pub table: String,
    pub entity_type: EntityTypeName,
    /// The partition key attribute: a string, the entity id.
    pub key: String,
    pub attributes: Vec<AttributeMapping>,
    pub parents: Vec<ParentMapping>,
    /// Cedar tag → item attribute (a string, or a string set).
    pub tags: Vec<(String, String)>,
}

/// Why an item is not an entity (the table holds something the mapping or the schema
/// does not allow): denied, never guessed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("table `{table}`, item `{id}`: `{attribute}` {problem}")]
    Attribute { table: String, id: String, attribute: String, problem: &'static str },
    #[error("table `{table}`, item `{id}` does not fit the schema: {reason}")]
    Schema { table: String, id: String, reason: String },
}

impl TableMapping {
    /// The entity of `item`, whose key is `id`. Item attributes the mapping does not
    /// name are ignored; a mapped one that is absent (or null) is left out, and the schema
    /// says whether that is allowed.
    pub fn entity(&self, id: &str, item: &Item, schema: &Schema) -> Result<Entity, MappingError> {
        let problem = |attribute: &str, problem: &'static str| MappingError::Attribute {
            table: self.table.clone(),
            id: id.to_owned(),
            attribute: attribute.to_owned(),
            problem,
        };
        let present = |name: &str| item.get(name).filter(|v| **v != AttributeValue::Null);

        let mut attrs = Map::new();
        for mapping in &self.attributes {
            let Some(value) = present(&mapping.from) else { continue };
            let json = match &mapping.kind {
                ValueKind::Plain => {
                    plain(value).ok_or_else(|| problem(&mapping.from, "has a value Cedar cannot hold"))?
                }
                ValueKind::Entity(entity_type) => {
                    let ids = strings(value).ok_or_else(|| problem(&mapping.from, "is not a string or strings"))?;
                    let refs = ids.iter().map(|id| json!({"__entity": {"type": entity_type.to_string(), "id": id}}));
                    match value {
                        AttributeValue::S(_) => refs.into_iter().next().unwrap_or(Value::Null),
                        _ => Value::Array(refs.collect()),
                    }
                }
            };
            attrs.insert(mapping.name.clone(), json);
        }
        let mut parents = Vec::new();
        for mapping in &self.parents {
            let Some(value) = present(&mapping.from) else { continue };
            let ids = strings(value).ok_or_else(|| problem(&mapping.from, "is not a string or strings"))?;
            parents.extend(ids.into_iter().map(|id| json!({"type": mapping.entity_type.to_string(), "id": id})));
        }
        let mut tags = Map::new();
        for (tag, from) in &self.tags {
            let Some(value) = present(from) else { continue };
            let json = match value {
                AttributeValue::S(text) => Value::String(text.clone()),
                AttributeValue::Ss(texts) => Value::Array(texts.iter().cloned().map(Value::String).collect()),
                _ => return Err(problem(from, "is not a string or a string set")),
            };
            tags.insert(tag.clone(), json);
        }
        let json = json!({
            "uid": {"type": self.entity_type.to_string(), "id": id},
            "attrs": attrs,
            "parents": parents,
            "tags": tags,
        });
        Entity::from_json_value(json, Some(schema)).map_err(|e| MappingError::Schema {
            table: self.table.clone(),
            id: id.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// A value as Cedar JSON, or `None` when Cedar has no such value (a fraction, binary).
fn plain(value: &AttributeValue) -> Option<Value> {
    Some(match value {
        AttributeValue::S(text) => Value::String(text.clone()),
        AttributeValue::N(number) => Value::from(number.parse::<i64>().ok()?),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Ss(texts) => Value::Array(texts.iter().cloned().map(Value::String).collect()),
        AttributeValue::Ns(numbers) => {
            Value::Array(numbers.iter().map(|n| n.parse::<i64>().ok().map(Value::from)).collect::<Option<_>>()?)
        }
        AttributeValue::L(items) => Value::Array(items.iter().map(plain).collect::<Option<_>>()?),
        AttributeValue::M(fields) => {
            Value::Object(fields.iter().map(|(k, v)| Some((k.clone(), plain(v)?))).collect::<Option<_>>()?)
        }
        AttributeValue::Null | AttributeValue::Unsupported => return None,
    })
}

/// A string, a string set, or a list of strings, as strings.
fn strings(value: &AttributeValue) -> Option<Vec<String>> {
    match value {
        AttributeValue::S(text) => Some(vec![text.clone()]),
        AttributeValue::Ss(texts) => Some(texts.clone()),
        AttributeValue::L(items) => items
            .iter()
            .map(|item| match item {
                AttributeValue::S(text) => Some(text.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn schema() -> Schema {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/schema.cedarschema");
        Schema::from_cedarschema_str(&std::fs::read_to_string(path).unwrap()).unwrap().0
    }

    fn s(text: &str) -> AttributeValue {
        AttributeValue::S(text.to_owned())
    }

    /// The seed's LOBs table: account, region, Studio domain, presign role, endpoints.
    fn lobs() -> TableMapping {
        let plain =
            |name: &str| AttributeMapping { name: name.to_owned(), from: name.to_owned(), kind: ValueKind::Plain };
        TableMapping {
            table: "lobs".to_owned(),
            entity_type: EntityTypeName::from_str("Studio::Lob").unwrap(),
            key: "lob".to_owned(),
            attributes: ["name", "accountId", "region", "domainId", "presignRoleArn", "vpceIds"].map(plain).into(),
            parents: Vec::new(),
            tags: Vec::new(),
        }
    }

    fn lob_item() -> Item {
        [
            ("lob".to_owned(), s("lob-z")),
            ("name".to_owned(), s("Line of business Z")),
            ("accountId".to_owned(), s("999999999999")),
            ("region".to_owned(), s("eu-west-1")),
            ("domainId".to_owned(), s("d-zzzz")),
            ("presignRoleArn".to_owned(), s("arn:aws:iam::999999999999:role/presign")),
            ("vpceIds".to_owned(), AttributeValue::Ss(vec!["vpce-1".to_owned(), "vpce-2".to_owned()])),
            ("unmapped".to_owned(), AttributeValue::N("1.5".to_owned())),
        ]
        .into()
    }

    #[test]
    fn an_item_becomes_the_entity_its_mapping_says_checked_by_the_schema() {
        let entity = lobs().entity("lob-z", &lob_item(), &schema()).unwrap();
        let json = entity.to_json_value().unwrap();
        assert_eq!(json["uid"]["id"], "lob-z");
        assert_eq!(json["attrs"]["accountId"], "999999999999");
        assert_eq!(json["attrs"]["vpceIds"].as_array().map(Vec::len), Some(2), "{json}");

        // a required attribute missing, or of the wrong type: an error naming the item
        let mut missing = lob_item();
        missing.remove("region");
        let error = lobs().entity("lob-z", &missing, &schema()).unwrap_err();
        assert!(matches!(&error, MappingError::Schema { id, .. } if id == "lob-z"), "{error}");
        let mut wrong = lob_item();
        wrong.insert("accountId".to_owned(), AttributeValue::N("999999999999".to_owned()));
        assert!(lobs().entity("lob-z", &wrong, &schema()).is_err());
        // a number Cedar cannot hold is refused where it is mapped
        let mut fraction = lob_item();
        fraction.insert("name".to_owned(), AttributeValue::N("1.5".to_owned()));
        let error = lobs().entity("lob-z", &fraction, &schema()).unwrap_err();
        assert!(matches!(&error, MappingError::Attribute { attribute, .. } if attribute == "name"), "{error}");
    }

    #[test]
    fn references_become_entity_uids_and_parents_come_from_strings_or_sets() {
        let profile = TableMapping {
            table: "profiles".to_owned(),
            entity_type: EntityTypeName::from_str("Studio::UserProfile").unwrap(),
            key: "id".to_owned(),
            attributes: vec![
                AttributeMapping { name: "profileName".to_owned(), from: "name".to_owned(), kind: ValueKind::Plain },
                AttributeMapping {
                    name: "owner".to_owned(),
                    from: "user".to_owned(),
                    kind: ValueKind::Entity(EntityTypeName::from_str("Studio::User").unwrap()),
                },
                AttributeMapping {
                    name: "team".to_owned(),
                    from: "team".to_owned(),
                    kind: ValueKind::Entity(EntityTypeName::from_str("Studio::Team").unwrap()),
                },
                AttributeMapping {
                    name: "lob".to_owned(),
                    from: "lob".to_owned(),
                    kind: ValueKind::Entity(EntityTypeName::from_str("Studio::Lob").unwrap()),
                },
            ],
            parents: vec![ParentMapping {
                from: "lobs".to_owned(),
                entity_type: EntityTypeName::from_str("Studio::Lob").unwrap(),
            }],
            tags: vec![("Team".to_owned(), "team".to_owned())],
        };
        let item: Item = [
            ("name".to_owned(), s("u-t")),
            ("user".to_owned(), s("u")),
            ("team".to_owned(), s("Team1")),
            ("lob".to_owned(), s("lob-a")),
            ("lobs".to_owned(), AttributeValue::L(vec![s("lob-a")])),
        ]
        .into();
        let entity = profile.entity("u-t", &item, &schema()).unwrap();
        let json = entity.to_json_value().unwrap();
        assert_eq!(json["attrs"]["owner"]["__entity"]["id"], "u", "{json}");
        assert_eq!(json["parents"][0]["id"], "lob-a", "{json}");
        assert_eq!(json["tags"]["Team"], "Team1", "{json}");
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = AttributeValue> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            "[a-zA-Z0-9 _-]{0,12}".prop_map(AttributeValue::S),
            "-?[0-9]{1,20}(\\.[0-9]{1,3})?".prop_map(AttributeValue::N),
            any::<bool>().prop_map(AttributeValue::Bool),
            proptest::collection::vec("[a-z0-9-]{1,8}", 0..4).prop_map(AttributeValue::Ss),
            Just(AttributeValue::Null),
            Just(AttributeValue::Unsupported),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(AttributeValue::L),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4).prop_map(AttributeValue::M),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever a table holds, an item is the entity it maps to (with the asked id) or
        /// an error naming it: never a panic, never another entity.
        #[test]
        fn any_item_is_its_entity_or_an_error(
            values in proptest::collection::vec(any_value(), 8),
            id in "[a-z0-9-]{1,12}",
        ) {
            let names = ["lob", "name", "accountId", "region", "domainId", "presignRoleArn", "vpceIds", "extra"];
            let item: Item = names.iter().map(|n| (*n).to_owned()).zip(values).collect();
            static SCHEMA: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
            match lobs().entity(&id, &item, SCHEMA.get_or_init(schema)) {
                Ok(entity) => {
                    let uid = entity.uid();
                    proptest::prop_assert_eq!(uid.id().unescaped(), id.as_str());
                }
                Err(MappingError::Attribute { id: named, .. } | MappingError::Schema { id: named, .. }) => {
                    proptest::prop_assert_eq!(named, id)
                }
            }
        }
    }
}
