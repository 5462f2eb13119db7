//! Forwarding an allowed call to its upstream.
//!
//! Header hygiene, in order: hop-by-hop headers (and any the `Connection` header names)
//! are removed; every client header the sidecar speaks for is removed, under its own
//! name *and every spelling an upstream could fold into it* (`x_authz_principal` is
//! `X-Authz-Principal` to a CGI/WSGI server: names are compared lower-cased with `_`
//! read as `-`): the `x-authz-` identity headers, the route's strip list (request-routing
//! and client-address headers, see [`crate::config::DEFAULT_STRIPPED_HEADERS`]), the
//! forwarded-for header (the sidecar writes its own), and the VPC endpoint header unless
//! a trusted proxy set it. `Authorization` is removed unless the route passes it on. Then
//! the sidecar adds the verified identity and decision. The same removal runs in
//! `enforce` and `dry-run` modes.
//!
//! The body is streamed, never buffered: it is read only after the decision, bounded by
//! `max_body_bytes` as it flows (413 past it, 400 when the client's framing is broken).
//! The upstream has a connect timeout (502 when it cannot be reached) and a response
//! timeout (504).
//!
//! A call to a plain-HTTP upstream goes out on a connection of the upstream's own pool,
//! driven by the request itself (see [`owned`]); the pooled client carries calls to
//! HTTPS upstreams.

pub(crate) mod owned;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};
use crate::config::{StripList, Upstream};
use crate::kept_metrics::kept_histogram;
use crate::rescue::ApiError;
use crate::server::state::RouteUpstream;

/// Headers the sidecar sets on forwarded requests; incoming ones with this prefix are dropped.
pub(crate) const IDENTITY_PREFIX: &str = "x-authz-";
pub(crate) const PRINCIPAL_HEADER: HeaderName = HeaderName::from_static("x-authz-principal");
pub(crate) const ISSUER_HEADER: HeaderName = HeaderName::from_static("x-authz-issuer");
pub(crate) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-authz-request-id");
pub(crate) const DECISION_HEADER: HeaderName = HeaderName::from_static("x-authz-decision");
pub(crate) const POLICIES_HEADER: HeaderName = HeaderName::from_static("x-authz-policies");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// As header names, not strings: removing by a string parses it into a name first,
/// eight times a forwarded request.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Remove hop-by-hop headers, including those listed in `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: a look at each name is a few comparisons, where each
    // removal hashes its name and probes the map (eight of them, about 1,700
    // instructions a forwarded call for its request and its response). A name listed
    // in `Connection` goes with it, and `Connection` is one of the eight.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A header name as an upstream may read it: lower-cased (already, in `http`), with `_`
/// read as `-`.
fn folded(name: &HeaderName) -> std::borrow::Cow<'_, str> {
    let text = name.as_str();
    if text.contains('_') { std::borrow::Cow::Owned(text.replace('_', "-")) } else { std::borrow::Cow::Borrowed(text) }
}

/// What to remove from a client's headers before the upstream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hygiene<'a> {
    /// The route's strip list.
    pub strip: &'a StripList,
    /// The forwarded-for header the sidecar reads (the sidecar writes `x-forwarded-for`).
    pub forwarded_for: &'a HeaderName,
    /// The VPC endpoint header, and whether a trusted proxy set it (only then is it kept).
    pub vpce: &'a HeaderName,
    pub vpce_believed: bool,
    pub pass_authorization: bool,
}

/// Remove every client header the sidecar speaks for (see the module documentation).
pub(crate) fn strip_client_headers(headers: &mut HeaderMap, hygiene: &Hygiene<'_>) {
    strip_hop_by_hop(headers);
    let spoken_for = |name: &HeaderName| -> bool {
        let folded = folded(name);
        let is = |other: &HeaderName| folded == other.as_str();
        folded.starts_with(IDENTITY_PREFIX)
            || hygiene.strip.contains(&folded)
            || is(hygiene.forwarded_for)
            || is(&FORWARDED_FOR)
            || (is(hygiene.vpce) && !(hygiene.vpce_believed && name == hygiene.vpce))
            || (is(&header::AUTHORIZATION) && !(hygiene.pass_authorization && name == header::AUTHORIZATION))
    };
    let doomed: Vec<HeaderName> = headers.keys().filter(|name| spoken_for(name)).cloned().collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// What the sidecar vouches for on a forwarded call.
#[derive(Debug, Clone)]
pub(crate) struct Vouch<'a> {
    pub principal: &'a str,
    pub issuer: &'a str,
    pub request_id: &'a str,
    /// `allow`, or `dry-run-deny` when a dry-run route let a denied call through.
    pub decision: &'static str,
    pub policies: &'a [String],
    pub source_ip: IpAddr,
}

impl Vouch<'_> {
    /// The identity headers the sidecar sets, with their values.
    fn identity_headers(&self) -> [(HeaderName, String); 5] {
        [
            (PRINCIPAL_HEADER, self.principal.to_owned()),
            (ISSUER_HEADER, self.issuer.to_owned()),
            (REQUEST_ID_HEADER, self.request_id.to_owned()),
            (DECISION_HEADER, self.decision.to_owned()),
            (POLICIES_HEADER, self.policies.join(",")),
        ]
    }
}

/// The header in which Envoy's HTTP external authorization filter takes the names of the
/// request headers to remove before the upstream (a comma-separated list).
pub(crate) const ENVOY_HEADERS_TO_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// The answer to an allowed external authorization check (Envoy's HTTP form): 200, the
/// identity headers the sidecar vouches with (Envoy sets them on the upstream request,
/// over the client's copies), and the names of the client headers the sidecar would
/// have removed: the route's strip list, `Authorization` unless the route passes it on,
/// and any other `x-authz-` header the check carried, under whatever spelling (the
/// forwarded-for and VPC endpoint headers are the trusted proxy's, and stay).
pub(crate) fn check_allowed(
    headers: &HeaderMap,
    vouch: &Vouch<'_>,
    strip: &StripList,
    pass_authorization: bool,
) -> Response<Body> {
    let set = vouch.identity_headers();
    let mut remove: Vec<&str> = strip.iter().map(HeaderName::as_str).collect();
    if !pass_authorization {
        remove.push(header::AUTHORIZATION.as_str());
    }
    let claimed = headers
        .keys()
        .filter(|name| folded(name).starts_with(IDENTITY_PREFIX) && !set.iter().any(|(ours, _)| ours == *name));
    remove.extend(claimed.map(HeaderName::as_str));
    remove.sort_unstable();
    remove.dedup();
    let mut response = Response::new(crate::body::full(Bytes::new()));
    let out = response.headers_mut();
    for (name, value) in set {
        if let Ok(value) = HeaderValue::from_str(&value) {
            out.insert(name, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&remove.join(",")) {
        out.insert(ENVOY_HEADERS_TO_REMOVE, value);
    }
    response
}

#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
    pub method: http::Method,
    pub headers: HeaderMap,
    pub path_and_query: String,
    pub body: ClientBody,
    pub vouch: &'a Vouch<'a>,
    pub hygiene: Hygiene<'a>,
}

/// Why the client's body stopped flowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// Past `max_body_bytes`: 413.
    TooLarge,
    /// The client's framing was broken (a malformed chunk, a connection cut short): 400.
    Malformed,
}

/// The client's request body on its way out: bounded as it flows, and remembering why
/// it failed, so that an upstream call that fails because of the *client's* body is
/// answered 413 or 400, not 502.
pub(crate) struct ClientBody {
    inner: Pin<Box<Limited<Body>>>,
    fault: Arc<OnceLock<BodyFault>>,
}

impl std::fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBody").field("fault", &self.fault.get()).finish_non_exhaustive()
    }
}

impl ClientBody {
    /// Any request body (hyper's `Incoming` when served, a full body in tests).
    pub(crate) fn new<B>(body: B, limit: usize) -> Self
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let body = body.map_err(Into::into).boxed_unsync();
        Self { inner: Box::pin(Limited::new(body, limit)), fault: Arc::new(OnceLock::new()) }
    }

    /// A handle on why the body failed, readable after the body is gone.
    pub(crate) fn fault(&self) -> Arc<OnceLock<BodyFault>> {
        self.fault.clone()
    }

    /// Read it all (for handlers that need the bytes): 413 or 400 on a fault.
    pub(crate) async fn collect(self) -> Result<Bytes, ApiError> {
        match BodyExt::collect(self).await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) => Err(ApiError::from(fault_of(&error))),
        }
    }
}

impl From<BodyFault> for ApiError {
    fn from(fault: BodyFault) -> Self {
        match fault {
            BodyFault::TooLarge => Self::PayloadTooLarge,
            BodyFault::Malformed => Self::BadRequest("the request body is malformed"),
        }
    }
}

/// The limit's own error is "too large"; any other error of the client's body is its
/// framing (hyper's parse of it).
fn fault_of(error: &BoxError) -> BodyFault {
    if error.downcast_ref::<LengthLimitError>().is_some() { BodyFault::TooLarge } else { BodyFault::Malformed }
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Err(error))) = &polled {
            let _ = self.fault.set(fault_of(error));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub(crate) async fn forward(
    route: &RouteUpstream,
    upstream: &Upstream,
    call: Outgoing<'_>,
) -> Result<Response<Body>, ApiError> {
    let target = upstream_target(&upstream.base, &call.path_and_query).ok_or(ApiError::Internal)?;
    // a driven connection takes the target in origin form (its pool knows the `Host`);
    // the pooled client, the absolute URI
    let uri = match route {
        RouteUpstream::Driven(_) => Uri::from(target),
        RouteUpstream::Pooled(_) => upstream_uri(&upstream.base, target).ok_or(ApiError::Internal)?,
    };
    let mut headers = call.headers;
    strip_client_headers(&mut headers, &call.hygiene);
    headers.remove(header::HOST);
    // the body is re-framed for the upstream from what actually flows (hyper sets the
    // length from the body's exact size, or chunks it), never from the client's claim;
    // and `100-continue` was this hop's business
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    let vouch = call.vouch;
    let source_ip = crate::authz::audit::ip_text(vouch.source_ip);
    for (name, value) in vouch.identity_headers().into_iter().chain([(FORWARDED_FOR, source_ip)]) {
        // the string's own bytes, checked as `from_str` checks them, not copied again
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
            headers.insert(name, value);
        }
    }

    let fault = call.body.fault();
    let mut request = Request::new(call.body.boxed_unsync());
    *request.method_mut() = call.method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;

    let started = std::time::Instant::now();
    let sent = async {
        match route {
            RouteUpstream::Driven(pool) => pool.claim().send(request, upstream.connect_timeout).await,
            RouteUpstream::Pooled(client) => match client.request(request).await {
                Ok(response) => Ok(response.map(|body| body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync())),
                Err(error) => Err(error.into()),
            },
        }
    };
    let result = tokio::time::timeout(upstream.timeout, sent).await;
    kept_histogram!("authz_upstream_seconds").record(started.elapsed().as_secs_f64());
    let response = match result {
        Err(_) => return Err(ApiError::GatewayTimeout),
        Ok(Err(e)) => {
            if let Some(fault) = fault.get() {
                return Err(ApiError::from(*fault));
            }
            tracing::warn!(request_id = %vouch.request_id, error = %e, "upstream request failed");
            return Err(ApiError::BadGateway);
        }
        Ok(Ok(response)) => response,
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body))
}

/// The upstream base's path prefix joined with the path: the target the upstream
/// receives.
fn upstream_target(base: &Uri, path_and_query: &str) -> Option<PathAndQuery> {
    let prefix = base.path().trim_end_matches('/');
    let mut joined = String::with_capacity(prefix.len() + path_and_query.len());
    joined.push_str(prefix);
    joined.push_str(path_and_query);
    PathAndQuery::from_maybe_shared(Bytes::from(joined)).ok()
}

/// The upstream base (scheme, authority) with `target`: the absolute URI.
fn upstream_uri(base: &Uri, target: PathAndQuery) -> Option<Uri> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(base.scheme()?.clone());
    parts.authority = Some(base.authority()?.clone());
    parts.path_and_query = Some(target);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever a message carries, what is left is what removing every hop-by-hop
        /// name and every name `Connection` lists leaves.
        #[test]
        fn hop_by_hop_headers_go_whatever_else_a_message_carries(
            names in proptest::collection::vec(
                proptest::sample::select(vec![
                    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                    "transfer-encoding", "upgrade", "host", "accept", "x-secret", "x-keep", "authorization",
                ]),
                0..8,
            ),
            listed in proptest::collection::vec(proptest::sample::select(vec!["x-secret", "accept", "host", "close"]), 0..3),
        ) {
            let mut h = HeaderMap::new();
            for name in &names {
                let value = if *name == "connection" { listed.join(", ") } else { "v".to_owned() };
                h.append(HeaderName::from_static(name), value.parse().unwrap());
            }
            let mut expected = h.clone();
            let connection_listed: Vec<HeaderName> = expected
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(|v| v.to_str().unwrap().split(','))
                .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
                .collect();
            for name in connection_listed.iter().chain(&HOP_BY_HOP) {
                expected.remove(name);
            }
            strip_hop_by_hop(&mut h);
            proptest::prop_assert_eq!(h, expected);
        }
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn upstream_uris_keep_the_base_prefix() {
        let base: Uri = "http://127.0.0.1:9000/api/".parse().unwrap();
        let uri = |base: &Uri, path| upstream_uri(base, upstream_target(base, path).unwrap()).unwrap().to_string();
        assert_eq!(uri(&base, "/studio/u/t?x=1"), "http://127.0.0.1:9000/api/studio/u/t?x=1");
        assert_eq!(upstream_target(&base, "/studio/u/t?x=1").unwrap(), "/api/studio/u/t?x=1");
        let base: Uri = "https://up.example".parse().unwrap();
        assert_eq!(uri(&base, "/a"), "https://up.example/a");
        assert_eq!(upstream_target(&base, "/a?b").unwrap(), "/a?b");
        // what no URI may carry is refused, as the URI builder refused it
        assert!(upstream_target(&base, "/a b").is_none());
    }

    #[test]
    fn spoken_for_headers_go_under_every_spelling() {
        let strip = StripList::new(
            crate::config::DEFAULT_STRIPPED_HEADERS.iter().map(|h| HeaderName::from_static(h)).collect(),
        );
        let vpce = HeaderName::from_static("x-amzn-vpce-id");
        let xff = HeaderName::from_static("x-forwarded-for");
        let hygiene =
            Hygiene { strip: &strip, forwarded_for: &xff, vpce: &vpce, vpce_believed: true, pass_authorization: false };
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-authz-principal", "Studio::User::\"admin\""),
            ("x_authz_principal", "Studio::User::\"admin\""),
            ("x-authz_decision", "allow"),
            ("x_original_url", "/admin"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "10.1.2.3"),
            ("forwarded", "for=10.1.2.3"),
            ("x_forwarded_for", "10.1.2.3"),
            ("x_amzn_vpce_id", "vpce-forged"),
            ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
            ("authorization", "Bearer t"),
            ("x_authorization", "keep: not spoken for"),
            ("x-app", "1"),
        ] {
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        strip_client_headers(&mut h, &hygiene);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-amzn-vpce-id", "x-app", "x_authorization"]);
        // an endpoint header no trusted proxy set is removed too
        let untrusted = Hygiene { vpce_believed: false, ..hygiene };
        strip_client_headers(&mut h, &untrusted);
        assert!(!h.contains_key("x-amzn-vpce-id"));
    }

    #[test]
    fn a_route_keeps_or_adds_to_the_strip_list() {
        let strip = StripList::new(vec![HeaderName::from_static("x-tenant")]);
        let (vpce, xff) = (HeaderName::from_static("x-amzn-vpce-id"), HeaderName::from_static("x-client"));
        let hygiene =
            Hygiene { strip: &strip, forwarded_for: &xff, vpce: &vpce, vpce_believed: false, pass_authorization: true };
        let mut h = HeaderMap::new();
        for name in ["x-tenant", "x_tenant", "x-forwarded-host", "x-client", "x-forwarded-for", "authorization"] {
            h.append(HeaderName::from_static(name), "v".parse().unwrap());
        }
        strip_client_headers(&mut h, &hygiene);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "x-forwarded-host"]);
    }
}
