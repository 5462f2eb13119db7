//! The life of one data-plane request, top to bottom:
//!
//! 0. **head**: more or larger headers than configured → 431;
//! 1. **shed**: overloaded (the runtime's scheduling delay past `shed_delay`, when set; see
//!    [`super::overload`]) or over the concurrency limit → 429, before any work;
//! 2. **ready**: no policy snapshot or issuer keys yet → 503;
//! 3. **authenticate**: bearer JWT → identity, or 401 (before routing, so unknown paths
//!    reveal nothing to anonymous callers);
//! 4. **route**: canonical path + method → route, or 400 (ambiguous path) / 404; a
//!    declared body larger than `max_body_bytes` → 413 (nothing of it is read);
//! 5. **authorize**: principal, action, resource and context → Cedar; one audit event;
//!    deny → 403 (a dry-run route logs and counts the denial and goes on). The body is
//!    not read before this: a denied call's body is never read, and an
//!    `Expect: 100-continue` client is never told to send it;
//! 6. **handle**: forward to the upstream, streaming the body (bounded as it flows), or
//!    answer (presign, echo). An account-pool route's question is whether the caller may
//!    ask the handler at all; once allowed, the handler reads the event (bounded) and
//!    asks its own questions.
//!
//! Each phase returns early with an [`ApiError`]; `rescue` turns it into the response.
//!
//! An external authorization check (Envoy asking, in either of its forms, see
//! [`super::ext_authz`]) runs the same phases on the request Envoy describes, and stops
//! before 6: allowed, it answers 200 with the headers the sidecar vouches with;
//! otherwise with the same error as the data plane. Only a route that forwards can be
//! checked: one whose handler answers itself (presign, account pool, membership events)
//! is refused, never allowed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use cedar_policy::{EntityId, EntityUid};
use http::{HeaderValue, Request, Response};
use hyper::body::Body as HttpBody;
use tracing::Instrument;

use super::Inbound;
use super::context;
use super::path::canonicalize;
use super::state::State;
use crate::authn::now_secs;
use crate::authn::principal::principal_entity;
use crate::authz::audit::Asked;
use crate::authz::{DecisionRequest, Permit, RequestError, authorize, context_from_strings, uid_text};
use crate::body::json_response;
use crate::body::{Body, BoxError};
use crate::config::team_type;
use crate::config::{Handler, RenderError};
use crate::directory::{GatherError, Gathered, gather};
use crate::handlers::presign::resolve;
use crate::handlers::profiles::derive_profile;
use crate::kept_metrics::{RouteMetrics, kept_histogram};
use crate::policy_store::PolicySnapshot;
use crate::proxy::{self, ClientBody, Hygiene, Outgoing, Vouch};
use crate::rescue::ApiError;

/// What a failed request is labelled with in metrics before a route is known.
const NO_ROUTE: &str = "-";

/// One request's own state, filled as the phases run and read by the last one
/// (logging and metrics), whatever the outcome: the per-request context instead of
/// out-parameters.
#[derive(Debug)]
pub struct Call {
    pub request_id: String,
    pub peer: SocketAddr,
    pub started: Instant,
    /// The matched route's name, once routed (the metrics label).
    pub route: Option<String>,
    pub purpose: Purpose,
}

/// What a request came for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Served on the data plane: decided, then handled.
    Serve,
    /// An external authorization check: decided, and answered with the decision. The
    /// proxy asking is trusted by the listener's own admission (`ext_authz.allowed_peers`);
    /// how it says where its client came from is the form's.
    Check(Reported),
}

/// How a proxy asking for a check says where the call it describes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// In the headers it passes on (Envoy's HTTP form): the call's peer is the proxy,
    /// whose forwarded-for and VPC endpoint headers are believed, walking back over
    /// `trusted_proxies` to the client.
    InHeaders,
    /// With the downstream peer it saw (the gRPC form's source address), which the
    /// call's peer then is: the client, unless it is one of `trusted_proxies`, in which
    /// case the forwarded-for header is walked back from it. The VPC endpoint header is
    /// the proxy's word, as in the HTTP form.
    Downstream,
}

impl Call {
    pub fn new(peer: SocketAddr) -> Self {
        Self {
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            peer,
            started: Instant::now(),
            route: None,
            purpose: Purpose::Serve,
        }
    }
}

/// Serve one data-plane request. Any body type: hyper's `Incoming` when served, a full
/// body when the phases are driven in-process.
pub async fn handle<B>(state: &State, request: Request<B>, peer: SocketAddr) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    handle_on(state, request, Inbound { peer }).await
}

/// Serve one data-plane request that came on `inbound`.
pub async fn handle_on<B>(state: &State, request: Request<B>, inbound: Inbound) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    handle_for(state, request, inbound, Purpose::Serve).await
}

/// Serve one request that came on `inbound` for `purpose`.
pub async fn handle_for<B>(state: &State, request: Request<B>, inbound: Inbound, purpose: Purpose) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut call = Call::new(inbound.peer);
    call.purpose = purpose;
    // A trusted proxy's word on the request (a check's proxy is trusted by its
    // listener's admission): its request id and the trace it belongs to are kept.
    let proxied = match purpose {
        Purpose::Serve => context::trusted(&state.context, inbound.peer.ip()),
        Purpose::Check(_) => true,
    };
    if proxied && let Some(id) = proxied_request_id(request.headers()) {
        call.request_id = id;
    }
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = request.uri().path(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        authz.request_id = %call.request_id,
        authz.check = matches!(purpose, Purpose::Check(_)),
    );
    let caller = if proxied { crate::otel::caller_trace(request.headers()) } else { None };
    // the trace of this request's audit events: its own, or with tracing off, the one a
    // trusted proxy says it belongs to
    let callers_id = caller.as_ref().and_then(crate::otel::trace_id_of);
    if let Some(caller) = caller {
        crate::otel::continue_trace(&span, caller);
    }
    let trace = crate::otel::trace_id(&span).or(callers_id).map(Arc::from);
    let outcome = crate::otel::with_audit_trace(
        trace,
        tokio::time::timeout(state.server.request_timeout, run(state, request, &mut call)),
    )
    .instrument(span.clone())
    .await;
    let response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => error.into_response(&call.request_id),
        Err(_) => ApiError::GatewayTimeout.into_response(&call.request_id),
    };
    span.record("http.response.status_code", response.status().as_u16());
    finish(&call, response)
}

/// The longest request id taken from a trusted proxy.
const MAX_REQUEST_ID: usize = 128;

const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The `x-request-id` a trusted proxy set: one value, of the characters request ids are
/// made of (it is written in logs and headers), or none.
fn proxied_request_id(headers: &http::HeaderMap) -> Option<String> {
    let mut values = headers.get_all(REQUEST_ID).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let id = value.to_str().ok()?;
    let well_formed = !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='));
    well_formed.then(|| id.to_owned())
}

/// The phase that always runs: the request id on the response, the request counted.
fn finish(call: &Call, mut response: Response<Body>) -> Response<Body> {
    if let Ok(value) = HeaderValue::from_str(&call.request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    RouteMetrics::of(call.route.as_deref().unwrap_or(NO_ROUTE))
        .request(response.status(), call.started.elapsed().as_secs_f64());
    response
}

async fn run<B>(state: &State, request: Request<B>, call: &mut Call) -> Result<Response<Body>, ApiError>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let request_id = call.request_id.clone();
    let request_id = request_id.as_str();
    // 0. a head past the configured limits (hyper's own are a looser backstop)
    let server = &state.server;
    if !super::head_within_limits(&request, server.max_header_bytes, server.max_headers) {
        return Err(ApiError::HeadersTooLarge);
    }
    // 1. shed
    if state.overload.shedding() {
        metrics::counter!("authz_requests_shed_total", "reason" => "scheduling_delay").increment(1);
        return Err(ApiError::Overloaded);
    }
    let _permit = state.in_flight.clone().try_acquire_owned().map_err(|_| {
        metrics::counter!("authz_requests_shed_total", "reason" => "in_flight").increment(1);
        ApiError::Overloaded
    })?;
    // 2. ready
    let snapshot = state.store.current().ok_or(ApiError::NotReady)?;
    if !state.authn.ready() {
        return Err(ApiError::NotReady);
    }
    let (parts, body) = request.into_parts();

    // 3. authenticate
    let authn_started = Instant::now();
    let identity = state.authn.authenticate(&parts.headers).instrument(tracing::info_span!("authenticate")).await;
    kept_histogram!("authz_authn_seconds").record(authn_started.elapsed().as_secs_f64());
    let identity = identity.map_err(|e| {
        tracing::info!(request_id, reason = e.label(), "unauthenticated");
        metrics::counter!("authz_authn_failures_total", "reason" => e.label()).increment(1);
        ApiError::Unauthenticated(e)
    })?;

    // 4. route
    let routing = tracing::info_span!("route", http.route = tracing::field::Empty, authz.route = tracing::field::Empty);
    let (path, matched) = routing.in_scope(|| {
        let path = canonicalize(parts.uri.path()).map_err(|e| ApiError::BadRequest(e.0))?;
        let matched = state.router.find(&parts.method, &path.decoded).ok_or(ApiError::NotFound)?;
        Ok::<_, ApiError>((path, matched))
    })?;
    let route = matched.route.clone();
    call.route = Some(route.name.clone());
    let request_span = tracing::Span::current();
    if !request_span.is_disabled() {
        let name = match call.purpose {
            Purpose::Serve => format!("{} {}", parts.method, route.path),
            Purpose::Check(_) => format!("check {} {}", parts.method, route.path),
        };
        crate::otel::rename(&request_span, name);
        request_span.record("http.route", route.path.as_str());
        routing.record("http.route", route.path.as_str()).record("authz.route", route.name.as_str());
    }
    if matches!(call.purpose, Purpose::Check(_)) && !matches!(route.handler, Handler::Forward(_)) {
        tracing::info!(request_id, route = %route.name, "an external check of a route the sidecar answers itself; refused");
        return Err(ApiError::NotCheckable);
    }
    let limit = state.server.max_body_bytes;
    if body.size_hint().lower() > limit as u64 {
        return Err(ApiError::PayloadTooLarge);
    }
    let body = ClientBody::new(body, limit);
    let authz = &route.authz;

    // 5. authorize
    let authz_started = Instant::now();
    let deciding = tracing::info_span!(
        "decide",
        authz.action = tracing::field::Empty,
        authz.resource = tracing::field::Empty,
        authz.decision = tracing::field::Empty,
        authz.policies = tracing::field::Empty,
        authz.snapshot = tracing::field::Empty,
    );
    let refused = |e: context::OriginError| {
        tracing::info!(request_id, route = %route.name, error = %e, "request refused");
        ApiError::BadRequest(e.public())
    };
    let origin = match call.purpose {
        Purpose::Serve => context::origin(&state.context, call.peer.ip(), &parts.headers),
        Purpose::Check(Reported::InHeaders) => context::behind_proxy(&state.context, call.peer.ip(), &parts.headers),
        Purpose::Check(Reported::Downstream) => {
            context::reported_downstream(&state.context, call.peer.ip(), &parts.headers)
        }
    }
    .map_err(refused)?;
    let resource_id = authz.resource_id.render(|name| matched.param(name)).map_err(|e| match e {
        RenderError::Missing(_) => ApiError::NotFound,
        RenderError::Ambiguous(_) => {
            tracing::info!(request_id, route = %route.name, error = %e, "request refused");
            ApiError::BadRequest("a path parameter holds the separator of the resource id")
        }
    })?;
    let resource = EntityUid::from_type_name_and_id(authz.resource_type.clone(), EntityId::new(resource_id));
    let context = context::context(
        &authz.context,
        &matched,
        &origin,
        &parts.method,
        &path.decoded,
        &parts.headers,
        SystemTime::now(),
    )
    .map_err(refused)?;
    let principal =
        EntityUid::from_type_name_and_id(state.principal.entity_type.clone(), EntityId::new(&identity.principal_id));
    // a profile no entity lists is derived for this one request, when the route says so
    let derive = route.derive_profile.as_ref().and_then(|d| Some((matched.param(&d.user)?, matched.param(&d.team)?)));
    // entities no file holds, from the directory: the principal, the resource, the
    // user and team a profile would be derived from, and what they reach; and, at the
    // same time, the teams the principal has left since the token was issued
    // (membership events), where not knowing is a refusal, never a guess
    let mut gathered = Gathered::default();
    // The awaits a forwarded call rarely makes (the directory, the lifecycle table, AWS
    // calls, the account-pool and membership handlers) are boxed: their futures hold
    // AWS SDK calls of tens of KiB, and unboxed they would make every request's future
    // (held for each request in flight, and moved into its box) that large too. A test
    // bounds its size.
    let gathering = async {
        let directory = state.directory.as_ref()?;
        let mut roots = vec![principal.clone(), resource.clone()];
        if let Some((user, team)) = derive {
            roots.push(EntityUid::from_type_name_and_id(state.principal.entity_type.clone(), EntityId::new(user)));
            if let Some(team_type) = team_type() {
                roots.push(EntityUid::from_type_name_and_id(team_type, EntityId::new(team)));
            }
        }
        Box::pin(gather(directory, &snapshot, roots, &mut gathered)).await.err()
    }
    .instrument(deciding.clone());
    let revoked = async {
        let revocations = state.revocations.as_ref()?;
        Some(
            Box::pin(revocations.of(&identity.principal_id))
                .await
                .map(|known| known.lost(identity.issued_at(), revocations.skew, now_secs())),
        )
    }
    .instrument(deciding.clone());
    let (mut gather_error, revoked) = tokio::join!(gathering, revoked);
    let (lost, revocations_unread) = match revoked {
        None => (Vec::new(), None),
        Some(Ok(lost)) => (lost, None),
        Some(Err(error)) => (Vec::new(), Some(error)),
    };
    let derived =
        derive.filter(|_| !snapshot.holds(&resource) && gathered.get(&resource).is_none()).and_then(|(user, team)| {
            // built once per snapshot and per read of the user's and team's entries
            let serial = |uid: EntityUid| gathered.get(&uid).map_or(0, |f| f.serial);
            let user_serial =
                serial(EntityUid::from_type_name_and_id(state.principal.entity_type.clone(), EntityId::new(user)));
            let team_serial = team_type()
                .map_or(0, |team_type| serial(EntityUid::from_type_name_and_id(team_type, EntityId::new(team))));
            let known = |uid: &EntityUid| gathered.known_or_none(&snapshot, uid);
            snapshot
                .derived_entity((resource.clone(), user_serial, team_serial), || {
                    derive_profile(&snapshot, known, &state.principal.entity_type, user, team, &resource)
                })
                .inspect_err(|e| tracing::info!(request_id, route = %route.name, error = %e, "no profile derived"))
                .ok()
        });
    // errors stay typed to here, so the metric and the audit event say which kind
    let base = gathered.get(&principal).map_or(0, |f| f.serial);
    let requester = snapshot.request_principal_over(identity.token_digest, base, &lost, || {
        // a stored entity that cannot be built fails the request, never drops its attributes
        let stored = gathered.known(&snapshot, &principal).map_err(|e| RequestError::BadEntities(e.to_string()))?;
        principal_entity(&identity, &state.principal, stored.as_deref(), snapshot.schema(), &lost)
            .map_err(|e| RequestError::BadEntities(e.to_string()))
    });
    // what the principal (its token's groups) and the derived profile point at
    if let (Some(directory), Ok(requester), None) = (&state.directory, &requester, &gather_error) {
        let more = requester.references().iter().chain(derived.iter().flat_map(|d| d.references())).cloned();
        gather_error = Box::pin(gather(directory, &snapshot, more.collect::<Vec<_>>(), &mut gathered))
            .instrument(deciding.clone())
            .await
            .err();
    }
    let unreachable = revocations_unread.is_some() || gather_error.as_ref().is_some_and(GatherError::is_unreachable);
    let question = match (revocations_unread, gather_error) {
        (Some(error), _) => Err(RequestError::Directory(error.to_string())),
        (None, Some(error)) => Err(RequestError::Directory(error.to_string())),
        (None, None) => requester.as_ref().map_err(Clone::clone).and_then(|requester| {
            let context = context_from_strings(&snapshot, &authz.action, &context)?;
            let checked = gathered.checked_except(&principal).into_iter().chain(derived.clone()).collect();
            Ok(DecisionRequest::built(Arc::clone(requester), authz.action.clone(), resource.clone(), context)
                .with_checked(checked))
        }),
    };
    let principal_text = uid_text(&principal);
    let asked = Asked {
        request_id: request_id.to_owned(),
        route: Some(route.name.clone()),
        principal: principal_text.clone(),
        action: uid_text(&authz.action),
        resource: uid_text(&resource),
        source_ip: Some(origin.source_ip),
        vpce: origin.vpce.clone(),
        ..Asked::default()
    };
    let permitted = deciding.in_scope(|| authorize(&state.engine, &snapshot, route.mode, asked, question));
    kept_histogram!("authz_authz_seconds").record(authz_started.elapsed().as_secs_f64());
    if !deciding.is_disabled() {
        deciding.record("authz.action", uid_text(&authz.action)).record("authz.resource", uid_text(&resource));
        match &permitted {
            Ok(Permit { decision, vouched }) => deciding
                .record("authz.decision", vouched.as_str())
                .record("authz.policies", decision.policies.join(","))
                .record("authz.snapshot", &*decision.snapshot),
            Err(_) => deciding.record("authz.decision", "deny"),
        };
    }
    let Permit { decision, vouched } = permitted.map_err(|_| {
        if unreachable {
            tracing::warn!(request_id, route = %route.name, "the directory or the lifecycle table is unreachable; denied");
            ApiError::DirectoryUnavailable
        } else {
            ApiError::Forbidden
        }
    })?;

    // 6. handle
    let vouch = Vouch {
        principal: &principal_text,
        issuer: &identity.issuer,
        request_id,
        decision: vouched.as_str(),
        policies: &decision.policies,
        source_ip: origin.source_ip,
    };
    // a check ends here, whatever the handler: allowed only where the call would be forwarded
    if matches!(call.purpose, Purpose::Check(_)) {
        return match &route.handler {
            Handler::Forward(upstream) => {
                Ok(proxy::check_allowed(&parts.headers, &vouch, &upstream.strip, upstream.pass_authorization))
            }
            _ => Err(ApiError::NotCheckable),
        };
    }
    match &route.handler {
        Handler::Forward(upstream) => {
            let route_upstream = state.upstream(&route.name).ok_or(ApiError::Internal)?;
            let path_and_query = match parts.uri.query() {
                Some(query) => format!("{}?{query}", path.encoded),
                None => path.encoded.clone(),
            };
            let hygiene = Hygiene {
                strip: &upstream.strip,
                forwarded_for: &state.context.forwarded_for_header,
                vpce: &state.context.vpce_header,
                vpce_believed: origin.peer_trusted,
                pass_authorization: upstream.pass_authorization,
            };
            let forwarding = tracing::info_span!(
                "upstream",
                otel.kind = "client",
                http.request.method = %parts.method,
                server.address = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
            );
            let mut headers = parts.headers;
            if !forwarding.is_disabled() {
                forwarding.record("server.address", upstream.base.host().unwrap_or_default());
                crate::otel::propagate(&forwarding, &mut headers);
            }
            let outgoing = Outgoing { method: parts.method, headers, path_and_query, body, vouch: &vouch, hygiene };
            // boxed too: only a forwarded call's future holds the upstream exchange, not
            // every request's (a 429, a 403, a request still deciding)
            let answer =
                Box::pin(proxy::forward(route_upstream, upstream, outgoing)).instrument(forwarding.clone()).await;
            if let Ok(response) = &answer {
                forwarding.record("http.response.status_code", response.status().as_u16());
            }
            answer
        }
        Handler::Presign(options) => {
            let presigner = state.presigner.as_ref().ok_or(ApiError::Internal)?;
            let known = |uid: &EntityUid| match &derived {
                Some(profile) if profile.uid() == uid => Some(profile.shared().clone()),
                _ => gathered.known_or_none(&snapshot, uid),
            };
            let target = resolve(known, &resource, resource.id().unescaped());
            let result = Box::pin(presigner.presign(target, &identity.subject, options))
                .instrument(tracing::info_span!("presign"))
                .await;
            if let Err(error) = &result {
                tracing::warn!(request_id, route = %route.name, resource = %resource, error = %error, "presign failed");
            }
            Ok(result?)
        }
        // the caller may ask; the handler reads the event and asks its own questions, one
        // per account and region (and audits each)
        Handler::AccountPool => {
            let event = body.collect().await?;
            Box::pin(account_pool(state, snapshot, &event, request_id)).await
        }
        // the caller may report membership changes; the handler confirms each with the
        // identity store before it acts
        Handler::MembershipEvents => {
            let lifecycle = state.lifecycle.as_ref().ok_or(ApiError::Internal)?;
            let event = body.collect().await?;
            let answer = Box::pin(lifecycle.handle(&event, request_id, &snapshot)).await?;
            Ok(json_response(http::StatusCode::OK, answer.to_string()))
        }
        // the caller may ask; the handler decides each resource for them
        Handler::Access => {
            let principal = requester.map_err(|_| ApiError::Forbidden)?;
            let caller = crate::handlers::access::Caller { principal, context, gathered };
            let query = parts.uri.query().unwrap_or_default();
            Box::pin(crate::handlers::access::answer(state, snapshot, caller, query, request_id)).await
        }
        Handler::Echo => {
            let body = serde_json::json!({
                "request_id": request_id,
                "route": route.name,
                "principal": vouch.principal,
                "action": authz.action.to_string(),
                "resource": resource.to_string(),
                "decision": vouch.decision,
                "policies": decision.policies,
                "snapshot": decision.snapshot,
            });
            Ok(json_response(http::StatusCode::OK, body.to_string()))
        }
    }
}

/// The HTTP form of the account-pool handler: the event in, the answer out, byte for
/// byte what the Lambda form answers. A list asks a question per account and region (a
/// millisecond for a thousand look-alike accounts, tens when every account differs), so
/// it runs on the blocking pool rather than holding up an async worker; a validation is
/// one decision and runs here.
async fn account_pool(
    state: &State,
    snapshot: Arc<PolicySnapshot>,
    body: &[u8],
    request_id: &str,
) -> Result<Response<Body>, ApiError> {
    use crate::handlers::account_pool::{EventError, Operation, directory_entities, parse};
    let refused = |e: EventError| {
        tracing::info!(request_id, error = %e, error_type = e.error_type(), "account-pool event refused");
        ApiError::from(e)
    };
    let operation = parse(body).map_err(refused)?;
    let entities = match &state.directory {
        Some(directory) => directory_entities(directory, &snapshot, &operation).await.map_err(|e| {
            tracing::warn!(request_id, error = %e, "account-pool user not read from the directory");
            if e.is_unreachable() { ApiError::DirectoryUnavailable } else { ApiError::Forbidden }
        })?,
        None => Vec::new(),
    };
    let pool = &state.account_pool;
    let answer = match operation {
        Operation::Validate(_) => pool.answer_over(&snapshot, &operation, request_id, entities),
        Operation::List(_) => {
            let (pool, id) = (pool.clone(), request_id.to_owned());
            let (span, trace) = (tracing::Span::current(), crate::otel::audit_trace());
            tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                crate::otel::with_audit_trace_sync(trace, || pool.answer_over(&snapshot, &operation, &id, entities))
            })
            .await
            .map_err(|_| ApiError::Internal)?
        }
    }
    .map_err(refused)?;
    Ok(json_response(http::StatusCode::OK, answer.to_json()))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A proxy's request id is taken exactly as sent, or not at all: never cut,
        /// never with a character a log line or a header could be broken by.
        #[test]
        fn a_request_id_is_taken_whole_or_not_at_all(id in "[ -~\\u{80}-\\u{ff}]{0,140}", twice in proptest::bool::ANY) {
            let mut headers = http::HeaderMap::new();
            let Ok(value) = HeaderValue::from_str(&id) else { return Ok(()) };
            headers.append("x-request-id", value.clone());
            if twice {
                headers.append("x-request-id", value);
            }
            match proxied_request_id(&headers) {
                Some(taken) => {
                    proptest::prop_assert!(!twice, "one of two values was taken");
                    proptest::prop_assert_eq!(&taken, &id);
                    proptest::prop_assert!(taken.len() <= MAX_REQUEST_ID);
                    proptest::prop_assert!(taken.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
                }
                None => {
                    let plain = !id.is_empty() && id.len() <= MAX_REQUEST_ID
                        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b));
                    proptest::prop_assert!(twice || !plain, "{:?} was refused", id);
                }
            }
        }
    }
}
