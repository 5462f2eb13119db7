//! `[lifecycle]`: group-membership events from IAM Identity Center, and where the
//! revocations they cause are kept for the fleet.

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::raw::{NotOneOf, closed_set};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLifecycle {
    /// The DynamoDB table (partition key `pk`, sort key `sk`, both strings) every
    /// sidecar and function of the fleet shares; without it, this process's memory.
    pub table: Option<String>,
    /// The DynamoDB endpoint; else `[directory] endpoint`, else the region's.
    pub endpoint: Option<String>,
    /// The Identity Store endpoint (a VPC endpoint, or a local emulator).
    pub identitystore_endpoint: Option<String>,
    /// Which attribute of an identity-store user is the principal's id.
    pub user_attribute: UserAttribute,
    /// Put before that attribute to make the principal id (an issuer's
    /// `principal_id_prefix`).
    pub principal_prefix: String,
    /// Which attribute of an identity-store group is the team's id.
    pub team_attribute: TeamAttribute,
    /// The longest a token of any issuer lives: a revocation is kept this long.
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// Tokens issued up to this long after a removal still lose the group (the issuer's
    /// groups may lag the identity store, and clocks differ).
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// How long the table's answer for a principal is reused before it is read again;
    /// `0s`: read on every request (a removal reaches every sidecar at once).
    #[serde(with = "humantime_serde")]
    pub believe_for: Duration,
    /// While the table cannot be read, the last answer is used up to this old; past it,
    /// requests are refused (503).
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
    /// The presign route (with `derive_profile`) whose profiles follow membership: made
    /// on join, removed on leave. Without it, only revocations.
    pub profile_route: Option<String>,
    /// Create the profile on join (when the policies allow it).
    pub provision: bool,
    /// Remove the profile and its apps on leave.
    pub cleanup: bool,
    /// The longest a removed profile's apps may take to stop.
    #[serde(with = "humantime_serde")]
    pub cleanup_wait: Duration,
    /// Only events of this identity store are applied (others are refused); with it,
    /// the memberships of the teams the policies know are synchronised.
    pub identity_store_id: Option<String>,
    /// Teams to synchronise besides those the entity files list (teams only the
    /// directory holds).
    pub teams: Vec<String>,
    /// How often `serve` synchronises memberships (`0s`: only at start).
    #[serde(with = "humantime_serde")]
    pub sync_every: Duration,
}

impl Default for RawLifecycle {
    fn default() -> Self {
        Self {
            table: None,
            endpoint: None,
            identitystore_endpoint: None,
            user_attribute: UserAttribute::UserName,
            principal_prefix: String::new(),
            team_attribute: TeamAttribute::DisplayName,
            token_lifetime: Duration::from_secs(12 * 3600),
            clock_skew: Duration::from_secs(300),
            believe_for: Duration::ZERO,
            max_staleness: Duration::from_secs(300),
            profile_route: None,
            provision: true,
            cleanup: true,
            cleanup_wait: Duration::from_secs(300),
            identity_store_id: None,
            teams: Vec::new(),
            sync_every: Duration::from_secs(900),
        }
    }
}

/// `[lifecycle] user_attribute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum UserAttribute {
    /// `UserName` (what AD synchronisation and Cognito call the user name).
    UserName,
    /// The identity store's `UserId`.
    UserId,
    /// The primary e-mail address.
    Email,
}
closed_set!(UserAttribute, "`user_name`, `user_id` or `email`", {
    "user_name" => Self::UserName,
    "user_id" => Self::UserId,
    "email" => Self::Email,
});

/// `[lifecycle] team_attribute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum TeamAttribute {
    /// The group's `DisplayName` (what the token's groups claim carries).
    DisplayName,
    /// The identity store's `GroupId`.
    GroupId,
}
closed_set!(TeamAttribute, "`display_name` or `group_id`", {
    "display_name" => Self::DisplayName,
    "group_id" => Self::GroupId,
});

/// The validated `[lifecycle]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleConfig {
    pub table: Option<String>,
    pub endpoint: Option<String>,
    pub identitystore_endpoint: Option<String>,
    pub user_attribute: UserAttribute,
    pub principal_prefix: String,
    pub team_attribute: TeamAttribute,
    pub token_lifetime: Duration,
    pub clock_skew: Duration,
    pub believe_for: Duration,
    pub max_staleness: Duration,
    /// The presign route whose profiles follow membership, and what to do with them.
    pub profiles: Option<ProfileSteps>,
    pub identity_store_id: Option<String>,
    pub teams: Vec<String>,
    pub sync_every: Duration,
}

/// `[lifecycle] profile_route` and what is done with its profiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileSteps {
    pub route: String,
    pub provision: bool,
    /// How long a removed profile's apps may take to stop; `None`: profiles stay.
    pub cleanup_wait: Option<Duration>,
}

/// Why `[lifecycle]` was refused: the key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LifecycleProblem {
    pub(super) key: String,
    pub(super) message: String,
}

pub(super) fn parse_lifecycle(
    raw: &RawLifecycle,
    directory_endpoint: Option<&str>,
) -> Result<LifecycleConfig, LifecycleProblem> {
    let problem = |key: &str, message: String| LifecycleProblem { key: format!("lifecycle.{key}"), message };
    if let Some(table) = &raw.table
        && table.trim().is_empty()
    {
        return Err(problem("table", "must not be empty (leave it out to keep revocations in memory)".into()));
    }
    for (key, endpoint) in [("endpoint", &raw.endpoint), ("identitystore_endpoint", &raw.identitystore_endpoint)] {
        if let Some(endpoint) = endpoint {
            let uri = http::Uri::from_str(endpoint).map_err(|e| problem(key, e.to_string()))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                return Err(problem(key, format!("`{endpoint}` must be an http(s) URL")));
            }
        }
    }
    let day = Duration::from_secs(24 * 3600);
    if raw.token_lifetime < Duration::from_secs(60) || raw.token_lifetime > 30 * day {
        return Err(problem(
            "token_lifetime",
            "must be between 1m and 30d (the longest token any issuer gives)".into(),
        ));
    }
    if raw.clock_skew > Duration::from_secs(3600) {
        return Err(problem("clock_skew", "must be at most 1h".into()));
    }
    if raw.believe_for > Duration::from_secs(60) {
        return Err(problem("believe_for", "must be at most 1m: a removal must reach every sidecar quickly".into()));
    }
    if raw.max_staleness < raw.believe_for {
        return Err(problem("max_staleness", "must be at least `believe_for`".into()));
    }
    if raw.cleanup_wait < Duration::from_secs(10) || raw.cleanup_wait > Duration::from_secs(840) {
        return Err(problem(
            "cleanup_wait",
            "must be between 10s and 14m (a Lambda function has 15 minutes in all)".into(),
        ));
    }
    if !raw.sync_every.is_zero() && raw.sync_every < Duration::from_secs(60) {
        return Err(problem("sync_every", "must be 0s (only at start) or at least 1m".into()));
    }
    if let Some(store) = &raw.identity_store_id
        && !crate::lifecycle::event::is_store_id(store)
    {
        return Err(problem("identity_store_id", format!("`{store}` is not an identity store id (d-…, or a UUID)")));
    }
    let profiles = raw.profile_route.as_ref().map(|route| ProfileSteps {
        route: route.clone(),
        provision: raw.provision,
        cleanup_wait: raw.cleanup.then_some(raw.cleanup_wait),
    });
    Ok(LifecycleConfig {
        table: raw.table.clone(),
        endpoint: raw.endpoint.clone().or_else(|| directory_endpoint.map(str::to_owned)),
        identitystore_endpoint: raw.identitystore_endpoint.clone(),
        user_attribute: raw.user_attribute,
        principal_prefix: raw.principal_prefix.clone(),
        team_attribute: raw.team_attribute,
        token_lifetime: raw.token_lifetime,
        clock_skew: raw.clock_skew,
        believe_for: raw.believe_for,
        max_staleness: raw.max_staleness,
        profiles,
        identity_store_id: raw.identity_store_id.clone(),
        teams: raw.teams.clone(),
        sync_every: raw.sync_every,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(lifecycle: &str) -> Result<Config, String> {
        Config::from_toml(&format!("[lifecycle]\n{lifecycle}\n"), "test").map_err(|e| e.to_string())
    }

    #[test]
    fn lifecycle_errors_name_their_key() {
        let config = load("table = \"authz-lifecycle\"").unwrap();
        let lifecycle = config.lifecycle.unwrap();
        assert_eq!(lifecycle.table.as_deref(), Some("authz-lifecycle"));
        assert!(lifecycle.believe_for.is_zero(), "a removal reaches every request by default");
        for (text, key) in [
            ("table = \" \"", "lifecycle.table"),
            ("endpoint = \"ftp://x\"", "lifecycle.endpoint"),
            ("token_lifetime = \"10s\"", "lifecycle.token_lifetime"),
            ("believe_for = \"5m\"", "lifecycle.believe_for"),
            ("believe_for = \"30s\"\nmax_staleness = \"10s\"", "lifecycle.max_staleness"),
            ("user_attribute = \"sub\"", "user_attribute"),
            ("cleanup_wait = \"1h\"", "lifecycle.cleanup_wait"),
            ("identity_store_id = \"d-1\"", "lifecycle.identity_store_id"),
            ("profile_route = \"nowhere\"", "lifecycle.profile_route"),
        ] {
            let error = load(text).unwrap_err();
            assert!(error.contains(key), "{text}: {error}");
        }
    }
}
