//! Configuration: the TOML file (or the embedded default) parsed into raw structs, then
//! checked and turned into a [`Config`] with parsed addresses, durations, header names,
//! Cedar uids and route templates. Nothing binds a port before this succeeds, and every
//! error says which key is wrong and why.

mod directory;
pub mod env;
mod ext_authz;
mod lifecycle;
mod raw;
mod records;
mod routes;
mod shadow;
mod template;
mod traces;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use cedar_policy::EntityTypeName;
use http::{HeaderName, Uri};

use crate::policy_store::SourceDirs;
pub use directory::{DirectoryConfig, DirectoryProblem};
pub use ext_authz::{ExtAuthzConfig, RawExtAuthz};
pub use lifecycle::{LifecycleConfig, ProfileSteps, TeamAttribute, UserAttribute};
pub use raw::{GroupMembership, HandlerKind, NotOneOf, RawConfig, SourceKind};
pub use records::{Omitted, RecordsConfig};
use routes::parse_route;
pub use routes::{
    ACCESS_CALLER_ACTION, ACCESS_HANDLER_TYPE, ACCOUNT_POOL_CALLER_ACTION, ACCOUNT_POOL_HANDLER_TYPE, ContextSource,
    DEFAULT_STRIPPED_HEADERS, DeriveProfile, Handler, LOB_TYPE, MEMBERSHIP_EVENTS_CALLER_ACTION,
    MEMBERSHIP_EVENTS_HANDLER_TYPE, MIN_PROVISION_POLL, Mode, PROFILE_TYPE, PresignOptions, PresignResponse,
    Provisioning, RouteAuthz, RouteConfig, StripList, TEAM_TYPE, Upstream, profile_type, team_type,
};
pub use shadow::ShadowConfig;
pub use template::{IdTemplate, RenderError, TemplateError};
pub use traces::{RawTracing, TracingConfig};

/// The commented example configuration, compiled in: what `serve` uses without `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config `{origin}`: {message}")]
    Parse { origin: String, message: String },
    #[error("config `{origin}`: {key}: {message}")]
    Invalid { origin: String, key: String, message: String },
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from (a file path, or `embedded default`).
    pub origin: String,
    pub server: ServerConfig,
    pub sources: SourceDirs,
    pub poll_interval: Duration,
    /// Where policies come from; entities always come from `sources.entities`.
    pub policy_source: PolicySource,
    /// A candidate policy set decided beside the serving one; `None`: none.
    pub shadow: Option<ShadowConfig>,
    pub context: ContextConfig,
    pub principal: PrincipalConfig,
    pub issuers: Vec<IssuerConfig>,
    pub routes: Vec<RouteConfig>,
    pub aws: AwsConfig,
    /// Entity types read from tables instead of files; `None`: files only.
    pub directory: Option<DirectoryConfig>,
    /// Group-membership events and the revocations they cause; `None`: not handled.
    pub lifecycle: Option<LifecycleConfig>,
    /// Envoy's external authorization service; `None`: not served.
    pub ext_authz: Option<ExtAuthzConfig>,
    /// OpenTelemetry traces; `None`: none recorded or exported.
    pub tracing: Option<TracingConfig>,
    /// Decision records for `replay`; `None`: none written.
    pub records: Option<RecordsConfig>,
}

/// Where AWS is: region (else the standard chain's), endpoint overrides, and how long
/// one call (with its retries) may take.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    pub region: Option<String>,
    pub sts_endpoint: Option<String>,
    pub sagemaker_endpoint: Option<String>,
    /// Per-region endpoints (VPC endpoints are regional): STS is called in the LOB's
    /// region when it has one here; SageMaker always is, through its region's endpoint
    /// here, else `sagemaker_endpoint`, else the public one.
    pub sts_endpoints: std::collections::BTreeMap<String, String>,
    pub sagemaker_endpoints: std::collections::BTreeMap<String, String>,
    pub verifiedpermissions_endpoint: Option<String>,
    pub timeout: Duration,
}

/// Where the policies and schema come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// `*.cedar` and `*.cedarschema` files in `sources.policies`, reloaded on change.
    Files,
    /// A Verified Permissions policy store, mirrored and polled.
    VerifiedPermissions(AvpSource),
}

/// `[policies.avp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvpSource {
    pub policy_store_id: String,
    pub poll_interval: Duration,
    pub max_calls_per_refresh: usize,
}

/// Requests in flight per core that the default `max_concurrent_requests` allows.
///
/// Measured on one core (`bench/README.md`, 64, 128 and 256 side by side): with 384
/// connections offered twice its saturation rate, 128 sheds about half and serves two
/// thirds of the saturation rate (64 sheds four fifths and serves two fifths; 256 sheds
/// almost nothing); 1,000 connections sending in bursts at 40% of it lose about 1% to
/// 429 at 128. Unpinned on two cores, 64 and 48 per core served a fifth to two fifths
/// less than 128 during a flood and still let memory grow 1.5× (the connections' own
/// buffers are half of it). Past the limit a request is answered 429 before any work. Cores are what
/// the process may use (`available_parallelism`, which reads the cgroup's CPU quota),
/// at least one.
pub const REQUESTS_PER_CORE: usize = 128;

/// The most data-plane threads `server.threads` may ask for.
pub const MAX_THREADS: usize = 256;

/// The default in-flight limit for `cores` cores.
#[must_use]
pub fn requests_per_core(cores: usize) -> usize {
    REQUESTS_PER_CORE.saturating_mul(cores.max(1))
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    pub max_concurrent_requests: usize,
    /// Access queries deciding at once (each may decide thousands of resources on the
    /// blocking pool); one more is answered 429 rather than take the data plane's cores.
    pub max_concurrent_access_queries: usize,
    /// Threads serving the data plane and Envoy's checks, a single-threaded runtime each
    /// (see [`crate::server::cores`]); default: one per core the process may use.
    pub threads: usize,
    /// Shed new requests while the scheduling delay is past this; zero: never (see
    /// [`crate::server::overload`]).
    pub shed_delay: Duration,
    /// Open data-plane connections; `None`: what the descriptor limit allows (see
    /// `server/limits.rs`).
    pub max_connections: Option<usize>,
    pub idle_timeout: Duration,
    pub http2_keep_alive_interval: Duration,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// How often the files are read again (`ZERO`: never).
    pub reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct ContextConfig {
    pub vpce_header: HeaderName,
    pub forwarded_for_header: HeaderName,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub struct PrincipalConfig {
    pub entity_type: EntityTypeName,
    pub id_claim: String,
    pub groups_claim: Option<String>,
    pub group_type: EntityTypeName,
    pub tags: Vec<(String, String)>,
    pub attributes: Vec<(String, String)>,
    /// The operator says every issuer is one user directory.
    pub issuers_share_principals: bool,
    /// Which source says which groups the principal is in.
    pub group_membership: GroupMembership,
}

#[derive(Debug, Clone)]
pub enum KeySource {
    Url(Uri),
    File(PathBuf),
    /// The issuer's OpenID Connect discovery document (`<issuer>/.well-known/openid-configuration`),
    /// whose `jwks_uri` is fetched; read again at each refresh.
    Discovery(Uri),
    /// A JWKS document held in memory (the development issuer).
    Inline(String),
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub issuer: String,
    pub keys: KeySource,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub audiences: Vec<String>,
    pub token_use: Option<String>,
    pub leeway: Duration,
    pub refresh_min_interval: Duration,
    pub fetch_timeout: Duration,
    /// Put before the subject in the principal's id: binds principals to their issuer.
    pub principal_id_prefix: String,
}

/// Whether keys fetched from `uri` can be trusted in transit: HTTPS, or HTTP to this
/// machine (a development issuer, a test).
pub fn secure_or_loopback(uri: &Uri) -> bool {
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(_)) => true,
        (Some("http"), Some(host)) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

/// Where `issuer` publishes its OpenID Connect discovery document (OpenID Connect
/// Discovery 1.0, section 4): the issuer must be an HTTPS URL (HTTP on loopback) with
/// no query or fragment.
fn discovery_url(issuer: &str) -> Result<Uri, String> {
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let uri = Uri::from_str(&url).map_err(|e| format!("`{issuer}` is not a URL to discover keys from: {e}"))?;
    if !secure_or_loopback(&uri) || issuer.contains(['?', '#']) {
        return Err(format!(
            "without `jwks_url` or `jwks_file`, keys are found by OpenID Connect discovery, which needs the issuer \
             to be an https URL with no query or fragment (http only on loopback); `{issuer}` is not"
        ));
    }
    Ok(uri)
}

impl Config {
    /// The configuration from `path`, or the embedded default when `None`. Relative
    /// paths in a file are taken from the directory the process runs in, like the CLI's.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
                Self::from_toml(&text, &path.display().to_string())
            }
            None => Self::from_toml(EMBEDDED_DEFAULT, "embedded default"),
        }
    }

    /// The configuration `text` says, with the process's environment applied (see
    /// [`env`]: `${NAME}` in strings, `AUTHZ_SIDECAR__…` variables for any key).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let overrides = env::process_overrides()?;
        Self::from_toml_with(text, origin, &|name| std::env::var(name).ok(), &overrides)
    }

    /// As [`Self::from_toml`], with `lookup` answering `${NAME}` and `overrides` the
    /// `AUTHZ_SIDECAR__…` variables, in place of the process's environment.
    pub fn from_toml_with(
        text: &str,
        origin: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
        overrides: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let text = env::apply(text, origin, lookup, overrides)?;
        let raw: RawConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { origin: origin.to_owned(), message: e.to_string() })?;
        Self::from_raw(raw, origin)
    }

    pub fn from_raw(raw: RawConfig, origin: &str) -> Result<Self, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { origin: origin.to_owned(), key, message };
        let policy_source = match (raw.policies.source, &raw.policies.avp) {
            (SourceKind::Files, _) => PolicySource::Files,
            (SourceKind::Avp, Some(avp)) => PolicySource::VerifiedPermissions(
                avp_source(avp, "policies.avp").map_err(|(key, message)| invalid(key, message))?,
            ),
            (SourceKind::Avp, None) => {
                return Err(invalid(
                    "policies.source".into(),
                    "`avp` needs a `[policies.avp]` table with `policy_store_id`".into(),
                ));
            }
        };
        let shadow = match &raw.policies.shadow {
            Some(shadow) => {
                Some(shadow::parse_shadow(shadow, avp_source).map_err(|(key, message)| invalid(key, message))?)
            }
            None => None,
        };
        let server = &raw.server;
        for (key, value) in [
            ("server.max_header_bytes", server.max_header_bytes),
            ("server.max_headers", server.max_headers),
            ("server.max_concurrent_requests", server.max_concurrent_requests.unwrap_or(1)),
            ("server.max_concurrent_access_queries", server.max_concurrent_access_queries.unwrap_or(1)),
            ("server.threads", server.threads.unwrap_or(1)),
            ("server.max_connections", server.max_connections.unwrap_or(1)),
        ] {
            if value == 0 {
                return Err(invalid(key.to_owned(), "must be greater than 0".to_owned()));
            }
        }
        if server.threads.is_some_and(|threads| threads > MAX_THREADS) {
            return Err(invalid("server.threads".to_owned(), format!("must be at most {MAX_THREADS}")));
        }
        for (key, value) in [
            ("server.header_read_timeout", server.header_read_timeout),
            ("server.idle_timeout", server.idle_timeout),
            ("server.http2_keep_alive_interval", server.http2_keep_alive_interval),
            ("server.request_timeout", server.request_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(
                    key.to_owned(),
                    "must be longer than 0s: a connection needs a deadline".to_owned(),
                ));
            }
        }
        if server.max_header_bytes < 8192 {
            // hyper's HTTP/1 read buffer cannot be smaller than this
            return Err(invalid("server.max_header_bytes".into(), "must be at least 8192".into()));
        }
        let header = |key: &str, value: &str| {
            HeaderName::from_str(value).map_err(|_| invalid(key.to_owned(), format!("`{value}` is not a header name")))
        };
        let context = ContextConfig {
            vpce_header: header("context.vpce_header", &raw.context.vpce_header)?,
            forwarded_for_header: header("context.forwarded_for_header", &raw.context.forwarded_for_header)?,
            trusted_proxies: raw.context.trusted_proxies.clone(),
        };
        let type_name = |key: &str, value: &str| {
            EntityTypeName::from_str(value)
                .map_err(|e| invalid(key.to_owned(), format!("`{value}` is not a Cedar entity type: {e}")))
        };
        let directory = match &raw.directory {
            Some(directory) => Some(directory::parse_directory(directory).map_err(|p| invalid(p.key, p.message))?),
            None => None,
        };
        let lifecycle = match &raw.lifecycle {
            Some(lifecycle) => Some(
                lifecycle::parse_lifecycle(lifecycle, directory.as_ref().and_then(|d| d.endpoint.as_deref()))
                    .map_err(|p| invalid(p.key, p.message))?,
            ),
            None => None,
        };
        let ext_authz = match &raw.ext_authz {
            Some(ext_authz) => {
                Some(ext_authz::parse_ext_authz(ext_authz).map_err(|(key, message)| invalid(key, message))?)
            }
            None => None,
        };
        let tracing = match &raw.tracing {
            Some(tracing) => Some(traces::parse_tracing(tracing).map_err(|(key, message)| invalid(key, message))?),
            None => None,
        };
        let records = match &raw.records {
            Some(records) => Some(records::parse_records(records).map_err(|(key, message)| invalid(key, message))?),
            None => None,
        };
        let principal_type = type_name("principal.entity_type", &raw.principal.entity_type)?;
        // a principal the directory holds takes its groups from both by default, so
        // that a user removed from a group in the directory loses it within the TTL,
        // whatever their token still says
        let in_directory = directory.as_ref().is_some_and(|d| d.holds(&principal_type));
        let group_membership = match (raw.principal.group_membership, &raw.principal.groups_claim) {
            (Some(GroupMembership::Both), None) => {
                return Err(invalid(
                    "principal.group_membership".into(),
                    "`both` needs a `groups_claim` to compare with".into(),
                ));
            }
            (Some(chosen), _) => chosen,
            (None, Some(_)) if in_directory => GroupMembership::Both,
            (None, None) if in_directory => GroupMembership::Stored,
            (None, _) => GroupMembership::Token,
        };
        let principal = PrincipalConfig {
            entity_type: principal_type,
            id_claim: raw.principal.id_claim.clone(),
            groups_claim: raw.principal.groups_claim.clone(),
            group_type: type_name("principal.group_type", &raw.principal.group_type)?,
            tags: raw.principal.tags.clone().into_iter().collect(),
            attributes: raw.principal.attributes.clone().into_iter().collect(),
            issuers_share_principals: raw.principal.issuers_share_principals,
            group_membership,
        };

        let mut issuers = Vec::new();
        for (i, issuer) in raw.issuers.iter().enumerate() {
            let key = |field: &str| format!("issuers[{i}].{field}");
            let keys = match (&issuer.jwks_url, &issuer.jwks_file) {
                (Some(url), None) => {
                    let uri = Uri::from_str(url).map_err(|e| invalid(key("jwks_url"), format!("`{url}`: {e}")))?;
                    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                        return Err(invalid(key("jwks_url"), format!("`{url}` must be an http(s) URL")));
                    }
                    if !secure_or_loopback(&uri) {
                        // kept for internal endpoints, but whoever is on the path can swap the keys
                        tracing::warn!(issuer = %issuer.issuer, jwks_url = %url,
                            "the issuer's keys are fetched over plain http: anyone on the network path can replace them and mint tokens; use https");
                    }
                    KeySource::Url(uri)
                }
                (None, Some(file)) => KeySource::File(file.clone()),
                (None, None) => KeySource::Discovery(
                    discovery_url(&issuer.issuer).map_err(|message| invalid(key("issuer"), message))?,
                ),
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        key("jwks_url"),
                        "give at most one of `jwks_url` and `jwks_file` (neither: the keys are found by OpenID \
                         Connect discovery from `issuer`)"
                            .into(),
                    ));
                }
            };
            let mut algorithms = Vec::new();
            for name in &issuer.algorithms {
                let alg = jsonwebtoken::Algorithm::from_str(name)
                    .map_err(|_| invalid(key("algorithms"), format!("`{name}` is not a JWT algorithm")))?;
                if matches!(
                    alg,
                    jsonwebtoken::Algorithm::HS256 | jsonwebtoken::Algorithm::HS384 | jsonwebtoken::Algorithm::HS512
                ) {
                    return Err(invalid(
                        key("algorithms"),
                        format!("`{name}` is symmetric; only asymmetric algorithms verify tokens against a JWKS"),
                    ));
                }
                algorithms.push(alg);
            }
            if algorithms.is_empty() {
                return Err(invalid(key("algorithms"), "name at least one algorithm".into()));
            }
            if issuer.issuer.is_empty() {
                return Err(invalid(key("issuer"), "must not be empty".into()));
            }
            issuers.push(IssuerConfig {
                issuer: issuer.issuer.clone(),
                keys,
                algorithms,
                audiences: issuer.audiences.clone(),
                token_use: issuer.token_use.clone(),
                leeway: issuer.leeway,
                refresh_min_interval: issuer.jwks_refresh_min_interval,
                fetch_timeout: issuer.jwks_fetch_timeout,
                principal_id_prefix: issuer.principal_id_prefix.clone(),
            });
        }
        if !raw.principal.issuers_share_principals {
            check_principal_namespaces(&issuers).map_err(|e| invalid("issuers".into(), e.to_string()))?;
        }

        let endpoints =
            [("aws.sts_endpoint", &raw.aws.sts_endpoint), ("aws.sagemaker_endpoint", &raw.aws.sagemaker_endpoint)]
                .into_iter()
                .filter_map(|(key, url)| Some((key.to_owned(), url.as_ref()?)))
                .chain(raw.aws.sts_endpoints.iter().map(|(region, url)| (format!("aws.sts_endpoints.{region}"), url)))
                .chain(
                    raw.aws
                        .sagemaker_endpoints
                        .iter()
                        .map(|(region, url)| (format!("aws.sagemaker_endpoints.{region}"), url)),
                );
        for (key, url) in endpoints {
            let uri = Uri::from_str(url).map_err(|e| invalid(key.clone(), format!("`{url}`: {e}")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                return Err(invalid(key, format!("`{url}` must be an http(s) URL")));
            }
        }

        let mut routes = Vec::new();
        for (i, route) in raw.routes.iter().enumerate() {
            routes.push(parse_route(i, route, &invalid)?);
        }
        let mut names = std::collections::HashSet::new();
        for route in &routes {
            if !names.insert(route.name.as_str()) {
                return Err(invalid("routes".into(), format!("two routes are named `{}`", route.name)));
            }
            if let Some(steps) = lifecycle.as_ref().and_then(|l| l.profiles.as_ref())
                && steps.route == route.name
                && !(matches!(route.handler, Handler::Presign(_)) && route.derive_profile.is_some())
            {
                return Err(invalid(
                    "lifecycle.profile_route".into(),
                    format!("`{}` must be a `presign` route with `derive_profile`", route.name),
                ));
            }
            if matches!(route.handler, Handler::MembershipEvents) && lifecycle.is_none() {
                return Err(invalid(
                    format!("routes (`{}`).handler", route.name),
                    "a `membership_events` route needs a `[lifecycle]` section".into(),
                ));
            }
        }

        if let Some(steps) = lifecycle.as_ref().and_then(|l| l.profiles.as_ref())
            && !routes.iter().any(|r| r.name == steps.route)
        {
            return Err(invalid("lifecycle.profile_route".into(), format!("no route is named `{}`", steps.route)));
        }

        Ok(Self {
            origin: origin.to_owned(),
            server: ServerConfig {
                listen: server.listen,
                admin_listen: server.admin_listen,
                shutdown_grace: server.shutdown_grace,
                header_read_timeout: server.header_read_timeout,
                request_timeout: server.request_timeout,
                max_header_bytes: server.max_header_bytes,
                max_headers: server.max_headers,
                max_body_bytes: server.max_body_bytes,
                max_concurrent_requests: server
                    .max_concurrent_requests
                    .unwrap_or_else(|| requests_per_core(std::thread::available_parallelism().map_or(1, usize::from))),
                max_concurrent_access_queries: server
                    .max_concurrent_access_queries
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
                threads: server.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
                shed_delay: server.shed_delay,
                max_connections: server.max_connections,
                idle_timeout: server.idle_timeout,
                http2_keep_alive_interval: server.http2_keep_alive_interval,
                tls: server.tls.as_ref().map(|t| TlsFiles {
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                    client_ca: t.client_ca.clone(),
                    reload_interval: t.reload_interval,
                }),
            },
            sources: SourceDirs::new(&raw.policies.dir, &raw.policies.entities),
            poll_interval: raw.policies.poll_interval,
            policy_source,
            shadow,
            context,
            principal,
            issuers,
            routes,
            aws: AwsConfig {
                region: raw.aws.region.clone(),
                sts_endpoint: raw.aws.sts_endpoint.clone(),
                sagemaker_endpoint: raw.aws.sagemaker_endpoint.clone(),
                sts_endpoints: raw.aws.sts_endpoints.clone(),
                sagemaker_endpoints: raw.aws.sagemaker_endpoints.clone(),
                verifiedpermissions_endpoint: raw.aws.verifiedpermissions_endpoint.clone(),
                timeout: raw.aws.timeout,
            },
            directory,
            lifecycle,
            ext_authz,
            tracing,
            records,
        })
    }
}

/// `[policies.avp]` (or the shadow's, at `key`) checked.
fn avp_source(avp: &raw::RawAvp, key: &str) -> Result<AvpSource, (String, String)> {
    if avp.policy_store_id.trim().is_empty() {
        return Err((format!("{key}.policy_store_id"), "must not be empty".into()));
    }
    if avp.poll_interval < Duration::from_secs(1) || avp.max_calls_per_refresh < 3 {
        return Err((key.to_owned(), "poll_interval must be at least 1s and max_calls_per_refresh at least 3".into()));
    }
    Ok(AvpSource {
        policy_store_id: avp.policy_store_id.clone(),
        poll_interval: avp.poll_interval,
        max_calls_per_refresh: avp.max_calls_per_refresh,
    })
}

/// Two issuers with the same `principal_id_prefix` (two empty ones included) would
/// mint the same principal for the same subject. Nested prefixes (`""` and `partner/`)
/// are kept apart at run time instead: a token whose id falls in another issuer's
/// longer prefix is refused (see `authn/`).
fn check_principal_namespaces(issuers: &[IssuerConfig]) -> Result<(), NamespaceError> {
    for (i, a) in issuers.iter().enumerate() {
        for b in issuers.iter().skip(i + 1) {
            if a.issuer == b.issuer {
                return Err(NamespaceError::Twice(a.issuer.clone()));
            }
            if a.principal_id_prefix == b.principal_id_prefix {
                return Err(NamespaceError::SamePrefix {
                    a: a.issuer.clone(),
                    b: b.issuer.clone(),
                    prefix: a.principal_id_prefix.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Why two issuers cannot both be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    #[error("issuer `{0}` is configured twice")]
    Twice(String),
    #[error(
        "issuers `{a}` and `{b}` can mint the same principal id (both with prefix `{prefix}`): give one a \
         `principal_id_prefix` (e.g. \"partner/\"), or set `[principal] issuers_share_principals = true` if they \
         are one user directory"
    )]
    SamePrefix { a: String, b: String, prefix: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid() {
        let config = Config::load(None).unwrap();
        assert!(!config.routes.is_empty());
        assert!(config.server.listen.ip().is_loopback());
    }

    #[test]
    fn the_in_flight_limit_defaults_to_a_number_per_core() {
        assert_eq!((requests_per_core(0), requests_per_core(1), requests_per_core(4)), (128, 128, 512));
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let config = Config::load(None).unwrap();
        assert_eq!(config.server.max_concurrent_requests, requests_per_core(cores));
        let set = Config::from_toml("[server]\nmax_concurrent_requests = 7\n", "test").unwrap();
        assert_eq!(set.server.max_concurrent_requests, 7);
        assert!(Config::from_toml("[server]\nmax_concurrent_requests = 0\n", "test").is_err());
        assert_eq!(config.server.max_concurrent_access_queries, cores);
        assert!(Config::from_toml("[server]\nmax_concurrent_access_queries = 0\n", "test").is_err());
        assert_eq!(config.server.threads, cores);
        assert_eq!(Config::from_toml("[server]\nthreads = 3\n", "test").unwrap().server.threads, 3);
        assert!(Config::from_toml("[server]\nthreads = 0\n", "test").is_err());
        assert!(Config::from_toml("[server]\nthreads = 257\n", "test").is_err());
    }

    #[test]
    fn id_templates_fill_parameters() {
        let t = IdTemplate::parse("{user}-{team}").unwrap();
        assert_eq!(t.params().collect::<Vec<_>>(), vec!["user", "team"]);
        let lookup = |name: &str| match name {
            "user" => Some("user-1"),
            "team" => Some("team1"),
            _ => None,
        };
        assert_eq!(t.render(lookup).as_deref(), Ok("user-1-team1"));
        assert_eq!(t.render(|_| None), Err(RenderError::Missing("user".into())));
        assert!(IdTemplate::parse("{user").is_err());
        assert!(IdTemplate::parse("{a}{b}").is_err(), "adjacent parameters can never be told apart");
        assert!(IdTemplate::parse("a}b").is_err());
        assert!(IdTemplate::parse("{a b}").is_err());
    }

    fn render(template: &str, values: &[(&str, &str)]) -> Result<String, RenderError> {
        let t = IdTemplate::parse(template).unwrap();
        t.render(|name| values.iter().find(|(k, _)| *k == name).map(|(_, v)| *v))
    }

    #[test]
    fn ids_that_read_back_two_ways_are_refused() {
        // the attack: user-1 asks for /studio/user/1-team1 and would be authorized as
        // the owner of user-1-team1 while the upstream sees user `user`
        assert_eq!(
            render("{user}-{team}", &[("user", "user"), ("team", "1-team1")]),
            Err(RenderError::Ambiguous("team".into()))
        );
        assert_eq!(render("{user}-{team}", &[("user", "user-1"), ("team", "team1")]).as_deref(), Ok("user-1-team1"));
        // a self-overlapping separator: `xa`+`aa`+`b` and `x`+`aa`+`ab` are the same id
        assert!(render("{a}aa{b}", &[("a", "xa"), ("b", "b")]).is_err());
        assert!(render("{a}aa{b}", &[("a", "x"), ("b", "ab")]).is_err());
        assert_eq!(render("{a}aa{b}", &[("a", "x"), ("b", "b")]).as_deref(), Ok("xaab"));
        // literal prefixes and suffixes count as separators too
        assert!(render("p:{a}:{b}:s", &[("a", "x"), ("b", "y:s")]).is_err());
        assert_eq!(render("p:{a}:{b}:s", &[("a", "x:y"), ("b", "z")]).as_deref(), Ok("p:x:y:z:s"));
        assert_eq!(render("{only}", &[("only", "a-b-c")]).as_deref(), Ok("a-b-c"));
    }

    proptest::proptest! {
        /// Two requests whose ids are both accepted and equal carry the same values: no
        /// path makes the sidecar authorize one resource while the upstream sees another.
        #[test]
        fn an_accepted_id_names_one_set_of_values(
            template in proptest::sample::select(vec!["{a}-{b}", "{a}--{b}", "{a}aa{b}", "x{a}-{b}-{c}y", "{a}.{b}-{c}"]),
            v1 in proptest::collection::vec("[a\\-.xy]{1,5}", 3),
            v2 in proptest::collection::vec("[a\\-.xy]{1,5}", 3),
        ) {
            let t = IdTemplate::parse(template).unwrap();
            let names: Vec<&str> = t.params().collect();
            let pairs = |values: &[String]| -> Vec<(String, String)> {
                names.iter().zip(values).map(|(n, v)| ((*n).to_owned(), v.clone())).collect()
            };
            let (owned1, owned2) = (pairs(&v1), pairs(&v2));
            let id1 = t.render(|name| owned1.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()));
            let id2 = t.render(|name| owned2.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()));
            if let (Ok(id1), Ok(id2)) = (&id1, &id2)
                && id1 == id2
            {
                proptest::prop_assert_eq!(&owned1, &owned2, "{} renders both as {}", template, id1);
            }
        }
    }

    fn with_route(route: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&format!("[[routes]]\n{route}"), "test")
    }

    #[test]
    fn derived_profiles_name_path_parameters_of_a_profile_route() {
        let route = |path: &str, resource_type: &str, derive: &str| {
            with_route(&format!(
                "name = \"r\"\nmethod = \"GET\"\npath = \"{path}\"\naction = 'Studio::Action::\"A\"'\n\
                 resource_type = \"{resource_type}\"\nresource_id = \"{{user}}\"\nhandler = \"echo\"\n\
                 [routes.derive_profile]\n{derive}"
            ))
        };
        let ok = route("/s/{user}/{team}", "Studio::UserProfile", "user = \"user\"\nteam = \"team\"").unwrap();
        let derive = ok.routes[0].derive_profile.clone().unwrap();
        assert_eq!((derive.user.as_str(), derive.team.as_str()), ("user", "team"));
        let err = route("/s/{user}", "Studio::UserProfile", "user = \"user\"\nteam = \"team\"").unwrap_err();
        assert!(err.to_string().contains("derive_profile: `team` is not a parameter of `/s/{user}`"), "{err}");
        let err = route("/s/{user}/{team}", "Studio::Lob", "user = \"user\"\nteam = \"team\"").unwrap_err();
        assert!(err.to_string().contains("for `Studio::UserProfile` resources only"), "{err}");
        let err = route("/s/{user}/{team}", "Studio::UserProfile", "user = \"user\"").unwrap_err();
        assert!(err.to_string().contains("team"), "{err}");
    }

    #[test]
    fn route_errors_name_the_route_and_key() {
        let base = "name = \"r\"\nmethod = \"GET\"\npath = \"/s/{user}\"\naction = 'Studio::Action::\"A\"'\n\
                    resource_type = \"Studio::UserProfile\"\n";
        let err = with_route(&format!("{base}resource_id = \"{{team}}\"\nhandler = \"echo\"")).unwrap_err();
        assert!(err.to_string().contains("routes[0] (`r`).resource_id: `{team}` is not a parameter"), "{err}");
        let err = with_route(&format!("{base}resource_id = \"{{user}}\"")).unwrap_err();
        assert!(err.to_string().contains("needs an upstream"), "{err}");
        let err =
            with_route(&format!("{base}resource_id = \"{{user}}\"\nhandler = \"echo\"\nmode = \"audit\"")).unwrap_err();
        assert!(err.to_string().contains("`audit`: use `enforce` or `dry-run`"), "{err}");
        let err = with_route(&format!("{base}resource_id = \"{{user}}\"\nhandler = \"echo\"\nbogus = 1")).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        // no credential ever enters a context (records and replay reports copy contexts)
        for header in ["Authorization", "cookie", "proxy-authorization", "x-amz-security-token", "X-Api-Key"] {
            let route = format!(
                "{base}resource_id = \"{{user}}\"\nhandler = \"echo\"\ncontext = {{ t = \"header:{header}\" }}"
            );
            let err = with_route(&route).unwrap_err();
            assert!(err.to_string().contains("carries credentials"), "{header}: {err}");
        }
        let route =
            format!("{base}resource_id = \"{{user}}\"\nhandler = \"echo\"\ncontext = {{ t = \"header:x-tenant\" }}");
        assert!(with_route(&route).is_ok());
    }

    #[test]
    fn access_routes_ask_who_may_query_and_answer_get() {
        let base = "name = \"access\"\nmethod = \"GET\"\npath = \"/v1/access\"\nhandler = \"access\"\n";
        let ok = with_route(base).unwrap();
        assert!(matches!(ok.routes[0].handler, Handler::Access));
        assert_eq!(ok.routes[0].authz.action.to_string(), ACCESS_CALLER_ACTION);
        assert_eq!(ok.routes[0].authz.resource_type.to_string(), ACCESS_HANDLER_TYPE);
        let err = with_route(&base.replace("GET", "POST")).unwrap_err();
        assert!(err.to_string().contains("answers GET"), "{err}");
        let err = with_route(&format!("{base}mode = \"dry-run\"")).unwrap_err();
        assert!(err.to_string().contains("always enforces"), "{err}");
    }

    #[test]
    fn presign_durations_are_checked_at_load() {
        let route = "name = \"p\"\nmethod = \"GET\"\npath = \"/s/{u}\"\naction = 'Studio::Action::\"A\"'\n\
                     resource_type = \"Studio::UserProfile\"\nresource_id = \"{u}\"\nhandler = \"presign\"\n";
        let err = with_route(&format!("{route}presign = {{ expires_in = \"10m\" }}")).unwrap_err();
        assert!(err.to_string().contains("presign.expires_in: 600 s is outside SageMaker's 5..=300 s"), "{err}");
        let err = with_route(&format!("{route}presign = {{ session_expiration = \"1m\" }}")).unwrap_err();
        assert!(err.to_string().contains("presign.session_expiration"), "{err}");
        let ok = with_route(route).unwrap();
        assert!(matches!(&ok.routes[0].handler, Handler::Presign(p) if p.expires_in_seconds == 60));
    }

    #[test]
    fn account_pool_routes_ask_who_may_call_them() {
        let base = "name = \"ap\"\nmethod = \"POST\"\npath = \"/datazone/account-pool\"\nhandler = \"account_pool\"\n";
        let ok = with_route(base).unwrap();
        assert!(matches!(ok.routes[0].handler, Handler::AccountPool));
        let authz = &ok.routes[0].authz;
        assert_eq!(authz.action.to_string(), ACCOUNT_POOL_CALLER_ACTION);
        assert_eq!(authz.resource_type.to_string(), ACCOUNT_POOL_HANDLER_TYPE);
        assert_eq!(authz.resource_id.render(|_| None).as_deref(), Ok("ap"));
        let other = with_route(&format!("{base}action = 'DataZone::Action::\"AskPool\"'")).unwrap();
        assert_eq!(other.routes[0].authz.action.to_string(), r#"DataZone::Action::"AskPool""#);
        let err = with_route(&format!("{base}mode = \"dry-run\"")).unwrap_err();
        assert!(err.to_string().contains("always enforces"), "{err}");
        let err = with_route("name = \"e\"\nmethod = \"GET\"\npath = \"/e\"\nhandler = \"echo\"\n").unwrap_err();
        assert!(err.to_string().contains("a `echo` route needs `action`"), "{err}");
    }

    #[test]
    fn two_issuers_cannot_mint_the_same_principal_unless_the_operator_says_so() {
        let issuer = |name: &str, prefix: &str| {
            format!("[[issuers]]\nissuer = \"{name}\"\njwks_file = \"k.json\"\nprincipal_id_prefix = \"{prefix}\"\n")
        };
        let err = Config::from_toml(&format!("{}{}", issuer("a", ""), issuer("b", "")), "t").unwrap_err();
        assert!(err.to_string().contains("can mint the same principal id"), "{err}");
        let err = Config::from_toml(&format!("{}{}", issuer("a", "p/"), issuer("b", "p/")), "t").unwrap_err();
        assert!(err.to_string().contains("can mint the same principal id"), "{err}");
        let err = Config::from_toml(&format!("{}{}", issuer("a", "x/"), issuer("a", "y/")), "t").unwrap_err();
        assert!(err.to_string().contains("configured twice"), "{err}");
        let ok = Config::from_toml(&format!("{}{}", issuer("a", ""), issuer("b", "partner/")), "t").unwrap();
        assert_eq!(ok.issuers[1].principal_id_prefix, "partner/");
        let shared = format!("[principal]\nissuers_share_principals = true\n{}{}", issuer("a", ""), issuer("b", ""));
        assert!(Config::from_toml(&shared, "t").is_ok());
    }

    #[test]
    fn symmetric_algorithms_are_refused() {
        let err =
            Config::from_toml("[[issuers]]\nissuer = \"i\"\njwks_file = \"k.json\"\nalgorithms = [\"HS256\"]", "t")
                .unwrap_err();
        assert!(err.to_string().contains("symmetric"), "{err}");
    }
}
