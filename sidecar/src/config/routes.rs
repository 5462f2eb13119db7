//! Routes: what each route asks Cedar and what it does once allowed, parsed from
//! `[[routes]]` and checked key by key.

use std::str::FromStr;
use std::time::Duration;

use cedar_policy::{EntityTypeName, EntityUid};
use http::{HeaderName, Method, Uri};

use super::ConfigError;
use super::raw::{self, HandlerKind};
use super::template::IdTemplate;

/// How the presign handler answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum PresignResponse {
    /// 302 to the URL.
    Redirect,
    /// 200 with `{"url": ..., "expires_in": ...}`.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignOptions {
    pub session_expiration_seconds: i32,
    pub expires_in_seconds: i32,
    pub space_name: Option<String>,
    pub landing_uri: Option<String>,
    pub response: PresignResponse,
    pub external_id: Option<String>,
    pub source_identity: bool,
    /// Create a missing profile before presigning (off by default).
    pub provision: Option<Provisioning>,
}

/// How long to wait for a profile the sidecar created to become InService.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioning {
    pub max_wait: Duration,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Mode {
    /// Deny means 403.
    Enforce,
    /// Deny is logged and counted, and the call proceeds.
    DryRun,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::DryRun => "dry-run",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Handler {
    /// Proxy to an upstream.
    Forward(Upstream),
    /// Answer 200 with the decision and identity (for trying the sidecar out).
    Echo,
    /// Answer with a SageMaker Studio presigned URL for the resource's profile.
    Presign(PresignOptions),
    /// Answer DataZone account-pool events (the handler decides per event).
    AccountPool,
    /// Apply IAM Identity Center group-membership events (EventBridge API destinations).
    MembershipEvents,
    /// Answer what the caller may open: `?action=…&resource_type=…` (see [`crate::access`]).
    Access,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    /// Scheme and authority (and an optional path prefix) the request path is appended to.
    pub base: Uri,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub pass_authorization: bool,
    /// Client headers removed before the upstream, besides the ones the sidecar always
    /// removes: [`DEFAULT_STRIPPED_HEADERS`] less the route's `keep_headers`, plus its
    /// `strip_headers`.
    pub strip: StripList,
}

/// Header names a forwarding route removes, sorted and without repeats, so that each
/// header of a forwarded call is looked up by a binary search instead of compared with
/// each of the thirty-odd names a route strips by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StripList(Vec<HeaderName>);

impl StripList {
    pub fn new(mut names: Vec<HeaderName>) -> Self {
        names.sort_unstable_by(|a, b| Self::key(a.as_str()).cmp(&Self::key(b.as_str())));
        names.dedup();
        Self(names)
    }

    /// Names ordered by length first: most steps of a search compare two lengths, and
    /// only names of the same length are compared byte by byte.
    fn key(name: &str) -> (usize, &str) {
        (name.len(), name)
    }

    /// Whether `name` (lower case, as `http` keeps header names) is on the list.
    pub fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|listed| Self::key(listed.as_str()).cmp(&Self::key(name))).is_ok()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, HeaderName> {
        self.0.iter()
    }
}

/// Request-routing and client-address headers a client must not set through an
/// authorization proxy: an upstream framework may route, re-method or re-address the
/// call by them after the sidecar authorized another. Removed from every forwarded call
/// unless a route's `keep_headers` names them (`Forwarded` is not read, only removed).
pub const DEFAULT_STRIPPED_HEADERS: &[&str] = &[
    "forwarded",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-forwarded-uri",
    "x-original-host",
    "x-host",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "x-original-forwarded-for",
];

/// Where a context attribute's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSource {
    SourceIp,
    Vpce,
    RequestTime,
    Method,
    Path,
    PathParam(String),
    Header(HeaderName),
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub method: Method,
    pub path: String,
    /// The route's Cedar question. For an account-pool route it is whether the caller
    /// may ask the handler at all; the handler then asks its own per account and region.
    pub authz: RouteAuthz,
    pub handler: Handler,
    pub mode: Mode,
    /// Derive the Studio user profile the route asks about when no entity lists it
    /// (see [`crate::handlers::profiles`]).
    pub derive_profile: Option<DeriveProfile>,
}

/// The type of derived profiles, and of the teams and lines of business they point at.
pub const PROFILE_TYPE: &str = "Studio::UserProfile";
pub const TEAM_TYPE: &str = "Studio::Team";
pub const LOB_TYPE: &str = "Studio::Lob";

/// [`TEAM_TYPE`], parsed once: Cedar's parser builds its lexer anew for every name it
/// reads (tens of thousands of instructions), too much for a request's path.
pub fn team_type() -> Option<EntityTypeName> {
    static TEAM: std::sync::OnceLock<Option<EntityTypeName>> = std::sync::OnceLock::new();
    TEAM.get_or_init(|| EntityTypeName::from_str(TEAM_TYPE).ok()).clone()
}

/// [`PROFILE_TYPE`], parsed once (see [`team_type`]).
pub fn profile_type() -> Option<EntityTypeName> {
    static PROFILE: std::sync::OnceLock<Option<EntityTypeName>> = std::sync::OnceLock::new();
    PROFILE.get_or_init(|| EntityTypeName::from_str(PROFILE_TYPE).ok()).clone()
}

/// The path parameters a derived profile is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeriveProfile {
    pub user: String,
    pub team: String,
}

/// The question an `account_pool` route asks of its caller unless the route names
/// another: may this principal ask the handler?
pub const ACCOUNT_POOL_CALLER_ACTION: &str = r#"DataZone::Action::"InvokeAccountPoolHandler""#;
/// The type of the handler as a resource; its id is the route's name.
pub const ACCOUNT_POOL_HANDLER_TYPE: &str = "DataZone::AccountPoolHandler";
/// The question a `membership_events` route asks of its caller unless the route names
/// another: may this principal report membership changes?
pub const MEMBERSHIP_EVENTS_CALLER_ACTION: &str = r#"Studio::Action::"ReportMembershipChange""#;
/// The type of that handler as a resource; its id is the route's name.
pub const MEMBERSHIP_EVENTS_HANDLER_TYPE: &str = "Studio::MembershipEventsHandler";
/// The question an `access` route asks of its caller unless the route names another:
/// may this principal ask what they may open?
pub const ACCESS_CALLER_ACTION: &str = r#"Studio::Action::"QueryAccess""#;
/// The type of that handler as a resource; its id is the route's name.
pub const ACCESS_HANDLER_TYPE: &str = "Studio::AccessHandler";

/// How a route's call becomes a Cedar request.
#[derive(Debug, Clone)]
pub struct RouteAuthz {
    pub action: EntityUid,
    pub resource_type: EntityTypeName,
    pub resource_id: IdTemplate,
    pub context: Vec<(String, ContextSource)>,
}

/// One `[[routes]]` entry: its method and path, its Cedar question, its context, and its
/// handler, each checked by its own function below.
pub(super) fn parse_route(
    i: usize,
    route: &raw::RawRoute,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<RouteConfig, ConfigError> {
    let key = |field: &str| format!("routes[{i}] (`{}`).{field}", route.name);
    let method = Method::from_str(&route.method.to_ascii_uppercase())
        .map_err(|_| invalid(key("method"), format!("`{}` is not an HTTP method", route.method)))?;
    if !route.path.starts_with('/') {
        return Err(invalid(key("path"), format!("`{}` must start with `/`", route.path)));
    }
    let path_params: Vec<&str> = route
        .path
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| name.trim_start_matches('*'))
        .collect();
    if route.handler != HandlerKind::Forward && !(route.strip_headers.is_empty() && route.keep_headers.is_empty()) {
        return Err(invalid(
            key("strip_headers"),
            "`strip_headers` and `keep_headers` apply to `forward` routes only".into(),
        ));
    }
    let (action, resource_type, resource_id) = route_question(route, &path_params, &key, invalid)?;
    let context = route_context(route, &path_params, &key, invalid)?;
    let handler = route_handler(route, &key, invalid)?;
    let derive_profile = match &route.derive_profile {
        None => None,
        Some(derive) => {
            if resource_type.to_string() != PROFILE_TYPE {
                return Err(invalid(
                    key("derive_profile"),
                    format!("profiles are derived for `{}` resources only", PROFILE_TYPE),
                ));
            }
            for param in [&derive.user, &derive.team] {
                if !path_params.contains(&param.as_str()) {
                    return Err(invalid(
                        key("derive_profile"),
                        format!("`{param}` is not a parameter of `{}`", route.path),
                    ));
                }
            }
            Some(DeriveProfile { user: derive.user.clone(), team: derive.team.clone() })
        }
    };
    Ok(RouteConfig {
        name: route.name.clone(),
        method,
        path: route.path.clone(),
        authz: RouteAuthz { action, resource_type, resource_id, context },
        handler,
        mode: route.mode,
        derive_profile,
    })
}

/// The route's action, resource type and resource id template. An account-pool route
/// asks of its caller whether it may ask the handler at all (one resource per route),
/// unless it names another question.
fn route_question(
    route: &raw::RawRoute,
    path_params: &[&str],
    key: &dyn Fn(&str) -> String,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<(EntityUid, EntityTypeName, IdTemplate), ConfigError> {
    let asks_its_caller = match route.handler {
        HandlerKind::AccountPool => Some((ACCOUNT_POOL_CALLER_ACTION, ACCOUNT_POOL_HANDLER_TYPE)),
        HandlerKind::MembershipEvents => Some((MEMBERSHIP_EVENTS_CALLER_ACTION, MEMBERSHIP_EVENTS_HANDLER_TYPE)),
        HandlerKind::Access => Some((ACCESS_CALLER_ACTION, ACCESS_HANDLER_TYPE)),
        _ => None,
    };
    let (action_text, type_text, id_text) = if let Some((action, handler_type)) = asks_its_caller {
        let or = |value: &Option<String>, default: String| value.clone().unwrap_or(default);
        (
            or(&route.action, action.to_owned()),
            or(&route.resource_type, handler_type.to_owned()),
            or(&route.resource_id, route.name.replace(['{', '}'], "")),
        )
    } else {
        let required = |field: &str, value: &Option<String>| {
            value
                .clone()
                .ok_or_else(|| invalid(key(field), format!("a `{}` route needs `{field}`", route.handler.as_str())))
        };
        (
            required("action", &route.action)?,
            required("resource_type", &route.resource_type)?,
            required("resource_id", &route.resource_id)?,
        )
    };
    let action = EntityUid::from_str(&action_text)
        .map_err(|e| invalid(key("action"), format!("`{action_text}` is not an action uid: {e}")))?;
    let resource_type = EntityTypeName::from_str(&type_text)
        .map_err(|e| invalid(key("resource_type"), format!("`{type_text}`: {e}")))?;
    let resource_id = IdTemplate::parse(&id_text).map_err(|e| invalid(key("resource_id"), e.to_string()))?;
    for param in resource_id.params() {
        if !path_params.contains(&param) {
            return Err(invalid(key("resource_id"), format!("`{{{param}}}` is not a parameter of `{}`", route.path)));
        }
    }
    Ok((action, resource_type, resource_id))
}

/// The context the route sends: each attribute and where its value comes from
/// (default: `sourceVpce`, `sourceIp`, `requestTime`).
fn route_context(
    route: &raw::RawRoute,
    path_params: &[&str],
    key: &dyn Fn(&str) -> String,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<Vec<(String, ContextSource)>, ConfigError> {
    let Some(map) = &route.context else {
        return Ok(vec![
            ("sourceVpce".to_owned(), ContextSource::Vpce),
            ("sourceIp".to_owned(), ContextSource::SourceIp),
            ("requestTime".to_owned(), ContextSource::RequestTime),
        ]);
    };
    let mut out = Vec::new();
    for (name, source) in map {
        let field = || key(&format!("context.{name}"));
        let parsed = match source.as_str() {
            "source_ip" => ContextSource::SourceIp,
            "vpce" => ContextSource::Vpce,
            "request_time" => ContextSource::RequestTime,
            "method" => ContextSource::Method,
            "path" => ContextSource::Path,
            other => match other.split_once(':') {
                Some(("path", param)) if path_params.contains(&param) => ContextSource::PathParam(param.to_owned()),
                Some(("header", header)) => {
                    let name = HeaderName::from_str(header)
                        .map_err(|_| invalid(field(), format!("`{header}` is not a header name")))?;
                    // a credential in the context would reach decision records and logs
                    if CREDENTIAL_HEADERS.contains(&name.as_str()) {
                        return Err(invalid(
                            field(),
                            format!("`{header}` carries credentials and never enters a Cedar context"),
                        ));
                    }
                    ContextSource::Header(name)
                }
                _ => {
                    return Err(invalid(
                        field(),
                        format!(
                            "`{other}` is not a context source; use source_ip, vpce, request_time, method, path, \
                             path:<parameter> or header:<name>"
                        ),
                    ));
                }
            },
        };
        out.push((name.clone(), parsed));
    }
    Ok(out)
}

/// Headers that carry credentials: no route may put them in a context, where decision
/// records, replay reports and shadow comparisons would copy them.
const CREDENTIAL_HEADERS: &[&str] =
    &["authorization", "proxy-authorization", "cookie", "x-amz-security-token", "x-api-key"];

/// What the route does once allowed.
fn route_handler(
    route: &raw::RawRoute,
    key: &dyn Fn(&str) -> String,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<Handler, ConfigError> {
    Ok(match route.handler {
        HandlerKind::Forward => {
            let Some(upstream) = &route.upstream else {
                return Err(invalid(key("upstream"), "a `forward` route needs an upstream URL".into()));
            };
            let base = Uri::from_str(upstream).map_err(|e| invalid(key("upstream"), format!("`{upstream}`: {e}")))?;
            if !matches!(base.scheme_str(), Some("http" | "https")) || base.authority().is_none() {
                return Err(invalid(key("upstream"), format!("`{upstream}` must be an http(s) URL")));
            }
            Handler::Forward(Upstream {
                base,
                connect_timeout: route.connect_timeout,
                timeout: route.upstream_timeout,
                pass_authorization: route.pass_authorization,
                strip: stripped_headers(route, key, invalid)?,
            })
        }
        HandlerKind::Echo => Handler::Echo,
        HandlerKind::AccountPool => {
            if route.mode == Mode::DryRun {
                return Err(invalid(key("mode"), "an `account_pool` route always enforces who may ask it".into()));
            }
            Handler::AccountPool
        }
        HandlerKind::MembershipEvents => {
            if route.mode == Mode::DryRun {
                return Err(invalid(key("mode"), "a `membership_events` route always enforces who may call it".into()));
            }
            Handler::MembershipEvents
        }
        HandlerKind::Access => {
            if route.mode == Mode::DryRun {
                return Err(invalid(key("mode"), "an `access` route always enforces who may ask it".into()));
            }
            if !route.method.eq_ignore_ascii_case("GET") {
                return Err(invalid(key("method"), "an `access` route answers GET".into()));
            }
            Handler::Access
        }
        HandlerKind::Presign => {
            Handler::Presign(presign_options(route.presign.clone().unwrap_or_default(), key, invalid)?)
        }
    })
}

/// The headers a forward route strips: the default list, less `keep_headers`, plus
/// `strip_headers`. Keeping a header that is not on the default list is refused (it
/// would keep nothing, which is nearly always a typo), and so is keeping one of the
/// sidecar's own.
fn stripped_headers(
    route: &raw::RawRoute,
    key: &dyn Fn(&str) -> String,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<StripList, ConfigError> {
    let name = |field: &str, text: &str| {
        HeaderName::from_str(text).map_err(|_| invalid(key(field), format!("`{text}` is not a header name")))
    };
    let mut keep = Vec::new();
    for text in &route.keep_headers {
        let header = name("keep_headers", text)?;
        if !DEFAULT_STRIPPED_HEADERS.contains(&header.as_str()) {
            return Err(invalid(
                key("keep_headers"),
                format!(
                    "`{text}` is not one of the headers stripped by default: {}",
                    DEFAULT_STRIPPED_HEADERS.join(", ")
                ),
            ));
        }
        keep.push(header);
    }
    let mut strip: Vec<HeaderName> = DEFAULT_STRIPPED_HEADERS
        .iter()
        .map(|text| HeaderName::from_static(text))
        .filter(|header| !keep.contains(header))
        .collect();
    for text in &route.strip_headers {
        strip.push(name("strip_headers", text)?);
    }
    Ok(StripList::new(strip))
}

/// The shortest `provision_poll`: each poll is a SageMaker API call.
pub const MIN_PROVISION_POLL: Duration = Duration::from_millis(500);

fn presign_options(
    raw: raw::RawPresign,
    key: &dyn Fn(&str) -> String,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<PresignOptions, ConfigError> {
    let seconds = |field: &str, value: Duration, min: u64, max: u64| {
        let secs = value.as_secs();
        if (min..=max).contains(&secs) {
            Ok(i32::try_from(secs).unwrap_or(i32::MAX))
        } else {
            Err(invalid(key(field), format!("{secs} s is outside SageMaker's {min}..={max} s")))
        }
    };
    if raw.provision && raw.provision_poll < MIN_PROVISION_POLL {
        return Err(invalid(
            key("presign.provision_poll"),
            format!("must be at least {MIN_PROVISION_POLL:?}: each poll is a DescribeUserProfile call"),
        ));
    }
    if let Some(id) = &raw.external_id
        && !(2..=1224).contains(&id.len())
    {
        return Err(invalid(key("presign.external_id"), "must be 2 to 1224 characters".into()));
    }
    Ok(PresignOptions {
        session_expiration_seconds: seconds("presign.session_expiration", raw.session_expiration, 1800, 43200)?,
        expires_in_seconds: seconds("presign.expires_in", raw.expires_in, 5, 300)?,
        space_name: raw.space_name,
        landing_uri: raw.landing_uri,
        response: raw.response,
        external_id: raw.external_id,
        source_identity: raw.source_identity,
        provision: raw
            .provision
            .then_some(Provisioning { max_wait: raw.provision_wait, poll_interval: raw.provision_poll }),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn header_name() -> impl Strategy<Value = String> {
        // short names from few letters, so that lists and lookups share names often
        "[a-c_-]{1,4}|x-forwarded-[a-z]{1,3}"
    }

    proptest! {
        /// The binary search finds exactly what a look at every listed name finds,
        /// whatever the order and repeats the list was built from.
        #[test]
        fn the_strip_list_finds_what_a_linear_look_finds(
            listed in proptest::collection::vec(header_name(), 0..40),
            asked in proptest::collection::vec(header_name(), 1..20),
        ) {
            let names: Vec<HeaderName> = listed.iter().map(|n| HeaderName::from_str(n).unwrap()).collect();
            let list = StripList::new(names.clone());
            for name in asked.iter().chain(&listed) {
                prop_assert_eq!(list.contains(name), names.iter().any(|n| n.as_str() == name), "{}", name);
            }
            prop_assert!(list.iter().count() <= names.len());
        }
    }

    /// The default list with every spelling a route could keep or add.
    #[test]
    fn the_default_strip_list_holds_every_default_name() {
        let list = StripList::new(DEFAULT_STRIPPED_HEADERS.iter().map(|h| HeaderName::from_static(h)).collect());
        for name in DEFAULT_STRIPPED_HEADERS {
            assert!(list.contains(name), "{name}");
        }
        assert!(!list.contains("x-forwarded-for"), "the sidecar writes its own, not on the route's list");
        assert!(!list.contains("host"));
    }
}
