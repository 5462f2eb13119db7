//! The configuration file as written: plain serde structs, every unknown key an error.
//!
//! [`super::Config::from_raw`] turns this into the validated form; nothing outside the
//! config module sees these types.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::routes::{Mode, PresignResponse};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub policies: RawPolicies,
    pub context: RawContext,
    pub principal: RawPrincipal,
    pub issuers: Vec<RawIssuer>,
    pub routes: Vec<RawRoute>,
    pub aws: RawAws,
    pub directory: Option<super::directory::RawDirectory>,
    pub lifecycle: Option<super::lifecycle::RawLifecycle>,
    pub ext_authz: Option<super::ext_authz::RawExtAuthz>,
    pub tracing: Option<super::traces::RawTracing>,
    pub records: Option<super::records::RawRecords>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAws {
    pub region: Option<String>,
    pub sts_endpoint: Option<String>,
    pub sagemaker_endpoint: Option<String>,
    /// Region → STS endpoint (e.g. the STS VPC endpoint of that region).
    pub sts_endpoints: BTreeMap<String, String>,
    /// Region → SageMaker API endpoint (e.g. the SageMaker API VPC endpoint of that region).
    pub sagemaker_endpoints: BTreeMap<String, String>,
    pub verifiedpermissions_endpoint: Option<String>,
    /// Each AWS call, retries included, must finish within this.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RawAws {
    fn default() -> Self {
        Self {
            region: None,
            sts_endpoint: None,
            sagemaker_endpoint: None,
            sts_endpoints: BTreeMap::new(),
            sagemaker_endpoints: BTreeMap::new(),
            verifiedpermissions_endpoint: None,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPresign {
    #[serde(with = "humantime_serde")]
    pub session_expiration: Duration,
    #[serde(with = "humantime_serde")]
    pub expires_in: Duration,
    pub space_name: Option<String>,
    pub landing_uri: Option<String>,
    pub response: PresignResponse,
    pub external_id: Option<String>,
    pub source_identity: bool,
    pub provision: bool,
    #[serde(with = "humantime_serde")]
    pub provision_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub provision_poll: Duration,
}

impl Default for RawPresign {
    fn default() -> Self {
        Self {
            session_expiration: Duration::from_secs(12 * 3600),
            expires_in: Duration::from_secs(60),
            space_name: None,
            landing_uri: None,
            response: PresignResponse::Redirect,
            external_id: None,
            source_identity: true,
            provision: false,
            provision_wait: Duration::from_secs(120),
            provision_poll: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    /// Requests in flight at once; default: [`super::REQUESTS_PER_CORE`] per core.
    pub max_concurrent_requests: Option<usize>,
    /// Access queries (`handler = "access"`) deciding at once; default: one per core.
    pub max_concurrent_access_queries: Option<usize>,
    /// Data-plane threads, each with a runtime of its own; default: one per core.
    pub threads: Option<usize>,
    /// Shed new requests while the runtime's scheduling delay is past this (0: never).
    #[serde(with = "humantime_serde")]
    pub shed_delay: Duration,
    /// Open data-plane connections; default: what the descriptor limit allows.
    pub max_connections: Option<usize>,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_interval: Duration,
    pub tls: Option<RawTls>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            shutdown_grace: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 1024 * 1024,
            max_concurrent_requests: None,
            max_concurrent_access_queries: None,
            threads: None,
            shed_delay: Duration::ZERO,
            max_connections: None,
            idle_timeout: Duration::from_secs(60),
            http2_keep_alive_interval: Duration::from_secs(20),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
    /// How often the files are read again, so a rotated certificate is served without a
    /// restart; `0s`: never.
    #[serde(default = "default_tls_reload", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicies {
    /// `files` (the `dir` directory) or `avp` (the `[policies.avp]` store).
    pub source: SourceKind,
    pub dir: PathBuf,
    pub entities: PathBuf,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub avp: Option<RawAvp>,
    pub shadow: Option<super::shadow::RawShadow>,
}

impl Default for RawPolicies {
    fn default() -> Self {
        Self {
            source: SourceKind::Files,
            dir: "policies".into(),
            entities: "entities".into(),
            poll_interval: Duration::from_secs(10),
            avp: None,
            shadow: None,
        }
    }
}

/// `[policies.avp]`: a Verified Permissions policy store as the policy source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAvp {
    pub policy_store_id: String,
    #[serde(with = "humantime_serde", default = "RawAvp::default_poll_interval")]
    pub poll_interval: Duration,
    #[serde(default = "RawAvp::default_max_calls")]
    pub max_calls_per_refresh: usize,
}

impl RawAvp {
    fn default_poll_interval() -> Duration {
        Duration::from_secs(60)
    }

    fn default_max_calls() -> usize {
        100
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawContext {
    pub vpce_header: String,
    pub forwarded_for_header: String,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for RawContext {
    fn default() -> Self {
        Self {
            vpce_header: "x-amzn-vpce-id".into(),
            forwarded_for_header: "x-forwarded-for".into(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPrincipal {
    pub entity_type: String,
    pub id_claim: String,
    pub groups_claim: Option<String>,
    pub group_type: String,
    /// Cedar tag name → claim name.
    pub tags: BTreeMap<String, String>,
    /// Cedar attribute name → claim name.
    pub attributes: BTreeMap<String, String>,
    /// The operator's statement that the issuers are one user directory, so a subject
    /// means the same person whichever issuer signed the token.
    pub issuers_share_principals: bool,
    /// Where the principal's group parents come from; the default depends on whether
    /// the directory holds the principal type (see `Config::from_raw`).
    pub group_membership: Option<GroupMembership>,
}

impl Default for RawPrincipal {
    fn default() -> Self {
        Self {
            entity_type: "Studio::User".into(),
            id_claim: "username".into(),
            groups_claim: Some("cognito:groups".into()),
            group_type: "Studio::Team".into(),
            tags: BTreeMap::from([("Team".to_owned(), "cognito:groups".to_owned())]),
            attributes: BTreeMap::new(),
            issuers_share_principals: false,
            group_membership: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub issuer: String,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub token_use: Option<String>,
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub jwks_refresh_min_interval: Duration,
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub jwks_fetch_timeout: Duration,
    /// Put before the subject in the principal's id (e.g. `partner/`), so that two
    /// issuers never mint the same principal.
    #[serde(default)]
    pub principal_id_prefix: String,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub method: String,
    pub path: String,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// Cedar context attribute → source (`source_ip`, `vpce`, `request_time`, `method`,
    /// `path`, `path:<param>`, `header:<name>`). Default: sourceVpce, sourceIp, requestTime.
    pub context: Option<BTreeMap<String, String>>,
    #[serde(default = "default_handler")]
    pub handler: HandlerKind,
    pub upstream: Option<String>,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub pass_authorization: bool,
    /// Client headers to remove before the upstream, besides the default list.
    #[serde(default)]
    pub strip_headers: Vec<String>,
    /// Headers of the default strip list this route's upstream should receive after all.
    #[serde(default)]
    pub keep_headers: Vec<String>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub upstream_timeout: Duration,
    pub presign: Option<RawPresign>,
    /// Derive the route's Studio user profile from these path parameters when no entity
    /// lists it.
    pub derive_profile: Option<RawDeriveProfile>,
}

/// `[routes.derive_profile]`: the path parameters holding the user and the team.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeriveProfile {
    pub user: String,
    pub team: String,
}

fn default_handler() -> HandlerKind {
    HandlerKind::Forward
}
fn default_mode() -> Mode {
    Mode::Enforce
}

/// A value outside one of the configuration's closed sets: which value, and what the
/// key takes instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}`: use {allowed}")]
pub struct NotOneOf {
    pub(super) value: String,
    pub(super) allowed: &'static str,
}

/// A closed set read from its strings (so an unknown value is refused while parsing,
/// naming the value and the choices).
macro_rules! closed_set {
    ($ty:ty, $allowed:literal, { $($text:literal => $variant:expr),+ $(,)? }) => {
        impl TryFrom<String> for $ty {
            type Error = NotOneOf;

            fn try_from(value: String) -> Result<Self, NotOneOf> {
                match value.as_str() {
                    $($text => Ok($variant),)+
                    _ => Err(NotOneOf { value, allowed: $allowed }),
                }
            }
        }
    };
}

pub(super) use closed_set;

/// `[policies] source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SourceKind {
    Files,
    Avp,
}
closed_set!(SourceKind, "`files` or `avp`", { "files" => Self::Files, "avp" => Self::Avp });

/// `[[routes]] handler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum HandlerKind {
    Forward,
    Echo,
    Presign,
    AccountPool,
    MembershipEvents,
    Access,
}
closed_set!(HandlerKind, "`forward`, `presign`, `account_pool`, `membership_events`, `access` or `echo`", {
    "membership_events" => Self::MembershipEvents,
    "access" => Self::Access,
    "forward" => Self::Forward,
    "echo" => Self::Echo,
    "presign" => Self::Presign,
    "account_pool" => Self::AccountPool,
});

impl HandlerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Echo => "echo",
            Self::Presign => "presign",
            Self::AccountPool => "account_pool",
            Self::MembershipEvents => "membership_events",
            Self::Access => "access",
        }
    }
}

/// `[principal] group_membership`: which source says which groups a principal is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum GroupMembership {
    /// The token's groups claim replaces the stored entity's group parents.
    Token,
    /// The stored entity's group parents (files, directory); the claim is not used for
    /// them.
    Stored,
    /// A group parent only when the token and the stored entity both say so.
    Both,
}
closed_set!(GroupMembership, "`token`, `stored` or `both`", {
    "token" => Self::Token,
    "stored" => Self::Stored,
    "both" => Self::Both,
});

closed_set!(Mode, "`enforce` or `dry-run`", { "enforce" => Self::Enforce, "dry-run" => Self::DryRun });
closed_set!(PresignResponse, "`redirect` or `json`", { "redirect" => Self::Redirect, "json" => Self::Json });
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(15)
}
