//! Where revocations and memberships are kept: one DynamoDB table every sidecar and
//! function of a fleet shares, or this process's memory.
//!
//! The table's key is `pk` (partition) and `sk` (sort), both strings:
//!
//! | item                          | `pk`                           | `sk`   | attributes                          |
//! |-------------------------------|--------------------------------|--------|-------------------------------------|
//! | a principal's revoked team    | `revoked#<principal id>`       | team   | `at`, `expiresAt` (Unix seconds)    |
//! | a membership seen being made  | `membership#<store>#<id>`      | `-`    | `userId`, `groupId`, `principal`, `team` |
//! | the same, listed by group     | `group#<store>#<group id>`     | id     | the same                            |
//!
//! A principal's revocations are one strongly consistent `Query`. A revocation is only
//! ever moved later (a conditional write), so a duplicate or an older event is
//! harmless. `expiresAt` is the revocation's end: turn on the table's TTL on it and
//! DynamoDB deletes them; reads ignore expired ones either way.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::AttributeValue;

/// One team a principal lost, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub team: String,
    /// When the principal left the team (Unix seconds).
    pub at: u64,
    /// When the revocation ends (Unix seconds).
    pub until: u64,
}

/// A membership as it was when it was made: what a deletion that names only its id
/// needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: String,
    pub group_id: String,
    /// The principal id and team id the ids resolved to.
    pub principal: String,
    pub team: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the lifecycle table cannot be used: {0}")]
pub struct StoreError(pub String);

/// DynamoDB's limits on a partition and a sort key.
const MAX_PK: usize = 2048;
const MAX_SK: usize = 1024;

pub enum Store {
    Table { client: aws_sdk_dynamodb::Client, table: String },
    Memory(Memory),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Table { table, .. } => f.debug_struct("Store").field("table", table).finish_non_exhaustive(),
            Self::Memory(_) => f.write_str("Store(memory)"),
        }
    }
}

/// Team → (when it was left, when the revocation ends), Unix seconds.
type Teams = HashMap<String, (u64, u64)>;

/// The store of a process that shares nothing (no `[lifecycle] table`).
#[derive(Debug, Default)]
pub struct Memory {
    revoked: Mutex<HashMap<String, Teams>>,
    members: Mutex<HashMap<String, Member>>,
}

impl Store {
    pub fn memory() -> Self {
        Self::Memory(Memory::default())
    }

    /// Whether every sidecar sharing the table sees what this one records.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Table { .. })
    }

    /// Record that `principal` left `team` at `at`, kept until `until`; a later
    /// revocation already recorded stays.
    pub async fn revoke(&self, principal: &str, team: &str, at: u64, until: u64) -> Result<(), StoreError> {
        let pk = key("revoked#", principal, MAX_PK)?;
        let sk = key("", team, MAX_SK)?;
        match self {
            Self::Memory(memory) => {
                let mut revoked = memory.revoked.lock().map_err(|_| StoreError("poisoned".into()))?;
                let teams = revoked.entry(principal.to_owned()).or_default();
                let entry = teams.entry(team.to_owned()).or_insert((at, until));
                if entry.0 < at {
                    *entry = (at, until);
                }
                Ok(())
            }
            Self::Table { client, table } => {
                let written = client
                    .put_item()
                    .table_name(table)
                    .item("pk", AttributeValue::S(pk))
                    .item("sk", AttributeValue::S(sk))
                    .item("at", AttributeValue::N(at.to_string()))
                    .item("expiresAt", AttributeValue::N(until.to_string()))
                    .condition_expression("attribute_not_exists(pk) OR #at < :at")
                    .expression_attribute_names("#at", "at")
                    .expression_attribute_values(":at", AttributeValue::N(at.to_string()))
                    .send()
                    .await;
                match written {
                    Ok(_) => Ok(()),
                    // a later (or the same) removal is already recorded
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(()),
                    Err(e) => Err(failed("PutItem", &e)),
                }
            }
        }
    }

    /// `principal`'s revocations that have not ended by `now` (Unix seconds).
    pub async fn revocations(&self, principal: &str, now: u64) -> Result<Vec<Revocation>, StoreError> {
        // a principal id no key can hold never had a revocation written (`revoke` refuses
        // it too): none, without a read
        let Ok(pk) = key("revoked#", principal, MAX_PK) else { return Ok(Vec::new()) };
        let mut found = Vec::new();
        match self {
            Self::Memory(memory) => {
                let revoked = memory.revoked.lock().map_err(|_| StoreError("poisoned".into()))?;
                for (team, (at, until)) in revoked.get(principal).into_iter().flatten() {
                    found.push(Revocation { team: team.clone(), at: *at, until: *until });
                }
            }
            Self::Table { client, table } => {
                for item in partition(client, table, pk).await? {
                    let number = |name: &str| match item.get(name) {
                        Some(AttributeValue::N(n)) => n.parse::<u64>().ok(),
                        _ => None,
                    };
                    // an item of another shape is not a revocation this sidecar wrote
                    if let (Some(AttributeValue::S(team)), Some(at), Some(until)) =
                        (item.get("sk"), number("at"), number("expiresAt"))
                    {
                        found.push(Revocation { team: team.clone(), at, until });
                    }
                }
            }
        }
        found.retain(|r| r.until > now);
        found.sort_by(|a, b| a.team.cmp(&b.team));
        Ok(found)
    }

    /// Remember who membership `id` of identity store `store` is (by its id, and under
    /// its group).
    pub async fn remember(&self, store: &str, id: &str, member: &Member) -> Result<(), StoreError> {
        let by_id = key("membership#", &format!("{store}#{id}"), MAX_PK)?;
        let by_group = key("group#", &format!("{store}#{}", member.group_id), MAX_PK)?;
        let sk = key("", id, MAX_SK)?;
        match self {
            Self::Memory(memory) => {
                let mut members = memory.members.lock().map_err(|_| StoreError("poisoned".into()))?;
                members.insert(by_id, member.clone());
                members.insert(format!("{by_group}\u{0}{sk}"), member.clone());
                Ok(())
            }
            Self::Table { client, table } => {
                for (pk, sk) in [(by_id, "-".to_owned()), (by_group, sk)] {
                    client
                        .put_item()
                        .table_name(table)
                        .item("pk", AttributeValue::S(pk))
                        .item("sk", AttributeValue::S(sk))
                        .item("userId", AttributeValue::S(member.user_id.clone()))
                        .item("groupId", AttributeValue::S(member.group_id.clone()))
                        .item("principal", AttributeValue::S(member.principal.clone()))
                        .item("team", AttributeValue::S(member.team.clone()))
                        .send()
                        .await
                        .map_err(|e| failed("PutItem", &e))?;
                }
                Ok(())
            }
        }
    }

    /// Take membership `id` of `store` off its group's list (it was removed). Its item by
    /// id stays, so a deletion delivered again is still attributed.
    pub async fn unlist(&self, store: &str, id: &str, member: &Member) -> Result<(), StoreError> {
        let by_group = key("group#", &format!("{store}#{}", member.group_id), MAX_PK)?;
        let sk = key("", id, MAX_SK)?;
        match self {
            Self::Memory(memory) => {
                memory
                    .members
                    .lock()
                    .map_err(|_| StoreError("poisoned".into()))?
                    .remove(&format!("{by_group}\u{0}{sk}"));
                Ok(())
            }
            Self::Table { client, table } => client
                .delete_item()
                .table_name(table)
                .key("pk", AttributeValue::S(by_group))
                .key("sk", AttributeValue::S(sk))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| failed("DeleteItem", &e)),
        }
    }

    /// The memberships of `group` of `store` remembered: (membership id, member).
    pub async fn members_of(&self, store: &str, group: &str) -> Result<Vec<(String, Member)>, StoreError> {
        let by_group = key("group#", &format!("{store}#{group}"), MAX_PK)?;
        match self {
            Self::Memory(memory) => {
                let members = memory.members.lock().map_err(|_| StoreError("poisoned".into()))?;
                let prefix = format!("{by_group}\u{0}");
                Ok(members
                    .iter()
                    .filter_map(|(k, m)| k.strip_prefix(&prefix).map(|id| (id.to_owned(), m.clone())))
                    .collect())
            }
            Self::Table { client, table } => {
                let mut found = Vec::new();
                for item in partition(client, table, by_group).await? {
                    let id = match item.get("sk") {
                        Some(AttributeValue::S(id)) => id.clone(),
                        _ => continue,
                    };
                    found.push((id, member_of(&item)?));
                }
                Ok(found)
            }
        }
    }

    /// Who membership `id` of identity store `store` was, if it was ever seen.
    pub async fn recall(&self, store: &str, id: &str) -> Result<Option<Member>, StoreError> {
        let pk = key("membership#", &format!("{store}#{id}"), MAX_PK)?;
        match self {
            Self::Memory(memory) => {
                Ok(memory.members.lock().map_err(|_| StoreError("poisoned".into()))?.get(&pk).cloned())
            }
            Self::Table { client, table } => {
                let output = client
                    .get_item()
                    .table_name(table)
                    .consistent_read(true)
                    .key("pk", AttributeValue::S(pk))
                    .key("sk", AttributeValue::S("-".to_owned()))
                    .send()
                    .await
                    .map_err(|e| failed("GetItem", &e))?;
                output.item().map(member_of).transpose()
            }
        }
    }
}

/// Every item of partition `pk`, read strongly consistent, every page.
async fn partition(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: String,
) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
    let mut pages = client
        .query()
        .table_name(table)
        .consistent_read(true)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(pk))
        .into_paginator()
        .items()
        .send();
    let mut items = Vec::new();
    while let Some(item) = pages.next().await {
        items.push(item.map_err(|e| failed("Query", &e))?);
    }
    Ok(items)
}

/// The member a membership item names.
fn member_of(item: &HashMap<String, AttributeValue>) -> Result<Member, StoreError> {
    let text = |name: &str| match item.get(name) {
        Some(AttributeValue::S(s)) => Ok(s.clone()),
        _ => Err(StoreError(format!("membership item lacks `{name}`"))),
    };
    Ok(Member {
        user_id: text("userId")?,
        group_id: text("groupId")?,
        principal: text("principal")?,
        team: text("team")?,
    })
}

/// `prefix` and `id` as a key, within DynamoDB's limit.
fn key(prefix: &str, id: &str, limit: usize) -> Result<String, StoreError> {
    let key = format!("{prefix}{id}");
    if id.is_empty() || key.len() > limit {
        return Err(StoreError(format!("`{}` cannot be a key (empty, or over {limit} bytes)", truncated(id))));
    }
    Ok(key)
}

fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

fn failed<E, R>(call: &str, error: &aws_sdk_dynamodb::error::SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata,
{
    let code = error.code().unwrap_or("no answer (unreachable, timed out, or no credentials)");
    StoreError(format!("DynamoDB {call} failed: {code}"))
}
