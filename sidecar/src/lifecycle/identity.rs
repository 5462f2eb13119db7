//! The identity store as the truth about users, groups and memberships: the ids an event
//! names resolved to the principal and team ids the policies use, and every change
//! confirmed before it is acted on.
//!
//! Names are cached (moka) for five minutes: a user's name and a group's display name
//! rarely change, and a removal must still resolve while the user is being deleted. A
//! membership is never cached: it is the question each event asks afresh.

use std::time::Duration;

use aws_sdk_identitystore::Client;
use aws_sdk_identitystore::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_identitystore::types::MemberId;

use crate::config::{LifecycleConfig, TeamAttribute, UserAttribute};

/// Why the identity store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity store `{store}` has no {what} `{id}`")]
    NotFound { store: String, what: &'static str, id: String },
    #[error("the {what} `{id}` has no {attribute}")]
    NoAttribute { what: &'static str, id: String, attribute: &'static str },
    #[error("Identity Store {call} failed: {code}")]
    Call { call: &'static str, code: String },
}

/// How names are cached.
const NAME_TTL: Duration = Duration::from_secs(300);

pub struct IdentityStore {
    client: Client,
    user_attribute: UserAttribute,
    team_attribute: TeamAttribute,
    principal_prefix: String,
    /// (store, user id) → principal id.
    users: moka::future::Cache<(String, String), String>,
    /// (store, group id) → team id.
    groups: moka::future::Cache<(String, String), String>,
}

impl std::fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityStore").field("user_attribute", &self.user_attribute).finish_non_exhaustive()
    }
}

/// An Identity Store client on the standard AWS set-up, at `endpoint` when given.
pub fn client(base: &aws_config::SdkConfig, endpoint: Option<&str>) -> Client {
    let mut builder = aws_sdk_identitystore::config::Builder::from(base).interceptor(crate::otel::AwsTraceContext);
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    Client::from_conf(builder.build())
}

impl IdentityStore {
    pub fn new(client: Client, config: &LifecycleConfig) -> Self {
        let cache = || moka::future::Cache::builder().max_capacity(100_000).time_to_live(NAME_TTL).build();
        Self {
            client,
            user_attribute: config.user_attribute,
            team_attribute: config.team_attribute,
            principal_prefix: config.principal_prefix.clone(),
            users: cache(),
            groups: cache(),
        }
    }

    /// The principal id of user `user` of `store`.
    pub async fn principal(&self, store: &str, user: &str) -> Result<String, IdentityError> {
        if let Some(known) = self.users.get(&(store.to_owned(), user.to_owned())).await {
            return Ok(known);
        }
        let name = match self.user_attribute {
            UserAttribute::UserId => user.to_owned(),
            attribute => {
                let output = self
                    .client
                    .describe_user()
                    .identity_store_id(store)
                    .user_id(user)
                    .send()
                    .await
                    .map_err(|e| call_error("DescribeUser", store, "user", user, &e))?;
                let value = match attribute {
                    UserAttribute::Email => output
                        .emails()
                        .iter()
                        .find(|e| e.primary())
                        .or_else(|| output.emails().first())
                        .and_then(|e| e.value()),
                    _ => output.user_name(),
                };
                value
                    .filter(|v| !v.is_empty())
                    .ok_or(IdentityError::NoAttribute {
                        what: "user",
                        id: user.to_owned(),
                        attribute: attribute_name(attribute),
                    })?
                    .to_owned()
            }
        };
        let principal = format!("{}{name}", self.principal_prefix);
        self.users.insert((store.to_owned(), user.to_owned()), principal.clone()).await;
        Ok(principal)
    }

    /// The team id of group `group` of `store`.
    pub async fn team(&self, store: &str, group: &str) -> Result<String, IdentityError> {
        if let Some(known) = self.groups.get(&(store.to_owned(), group.to_owned())).await {
            return Ok(known);
        }
        let team = match self.team_attribute {
            TeamAttribute::GroupId => group.to_owned(),
            TeamAttribute::DisplayName => self
                .client
                .describe_group()
                .identity_store_id(store)
                .group_id(group)
                .send()
                .await
                .map_err(|e| call_error("DescribeGroup", store, "group", group, &e))?
                .display_name()
                .filter(|v| !v.is_empty())
                .ok_or(IdentityError::NoAttribute { what: "group", id: group.to_owned(), attribute: "DisplayName" })?
                .to_owned(),
        };
        self.groups.insert((store.to_owned(), group.to_owned()), team.clone()).await;
        Ok(team)
    }

    /// The id of `user`'s membership of `group` now, if they are a member.
    pub async fn membership(&self, store: &str, group: &str, user: &str) -> Result<Option<String>, IdentityError> {
        let answer = self
            .client
            .get_group_membership_id()
            .identity_store_id(store)
            .group_id(group)
            .member_id(MemberId::UserId(user.to_owned()))
            .send()
            .await;
        match answer {
            Ok(output) => Ok(Some(output.membership_id().to_owned())),
            Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => Ok(None),
            Err(e) => Err(call_error("GetGroupMembershipId", store, "membership", group, &e)),
        }
    }
}

impl IdentityStore {
    /// The group of `store` whose team id is `team`, if there is one.
    pub async fn group_of(&self, store: &str, team: &str) -> Result<Option<String>, IdentityError> {
        use aws_sdk_identitystore::types::{AlternateIdentifier, UniqueAttribute};
        if self.team_attribute == TeamAttribute::GroupId {
            return Ok(Some(team.to_owned()));
        }
        let unique = UniqueAttribute::builder()
            .attribute_path("displayName")
            .attribute_value(aws_smithy_types::Document::String(team.to_owned()))
            .build()
            .map_err(|e| IdentityError::Call { call: "GetGroupId", code: e.to_string() })?;
        let answer = self
            .client
            .get_group_id()
            .identity_store_id(store)
            .alternate_identifier(AlternateIdentifier::UniqueAttribute(unique))
            .send()
            .await;
        match answer {
            Ok(output) => {
                let group = output.group_id().to_owned();
                self.groups.insert((store.to_owned(), group.clone()), team.to_owned()).await;
                Ok(Some(group))
            }
            Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => Ok(None),
            Err(e) => Err(call_error("GetGroupId", store, "group", team, &e)),
        }
    }

    /// Every membership of `group` now: (membership id, user id), every page.
    pub async fn memberships(&self, store: &str, group: &str) -> Result<Vec<(String, String)>, IdentityError> {
        let mut pages =
            self.client.list_group_memberships().identity_store_id(store).group_id(group).into_paginator().send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| call_error("ListGroupMemberships", store, "group", group, &e))?;
            for membership in page.group_memberships() {
                if let Some(MemberId::UserId(user)) = membership.member_id() {
                    found.push((membership.membership_id().to_owned(), user.clone()));
                }
            }
        }
        Ok(found)
    }
}

fn attribute_name(attribute: UserAttribute) -> &'static str {
    match attribute {
        UserAttribute::UserName => "UserName",
        UserAttribute::UserId => "UserId",
        UserAttribute::Email => "e-mail address",
    }
}

fn call_error<E, R>(
    call: &'static str,
    store: &str,
    what: &'static str,
    id: &str,
    error: &SdkError<E, R>,
) -> IdentityError
where
    E: ProvideErrorMetadata,
{
    match error.code() {
        Some("ResourceNotFoundException") => {
            IdentityError::NotFound { store: store.to_owned(), what, id: id.to_owned() }
        }
        Some(code) => IdentityError::Call { call, code: code.to_owned() },
        None => IdentityError::Call { call, code: "no answer (unreachable, timed out, or no credentials)".to_owned() },
    }
}
