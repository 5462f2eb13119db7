//! The life of one data-plane request, top to bottom:
//!
//! 0. **head**: more or larger headers than configured → 431;
//! 1. **shed**: over the concurrency limit → 429, before any work;
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use cedar_policy::{EntityId, EntityUid};
use http::{HeaderValue, Request, Response};
use hyper::body::{Body as _, Incoming};

use super::context;
use super::path::canonicalize;
use crate::app::App;
use crate::authn::principal::principal_entity;
use crate::authz::{Decision, Effect, RequestError, context_from_strings};
use crate::config::{Handler, Mode, RenderError};
use crate::http_client::Body;
use crate::policy_store::PolicySnapshot;
use crate::proxy::{self, ClientBody, Hygiene, Outgoing, Vouch};
use crate::rescue::{ApiError, json_response};

/// What a failed request is labelled with in metrics before a route is known.
const NO_ROUTE: &str = "-";

pub async fn handle(app: &App, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let mut route = NO_ROUTE.to_owned();
    let outcome =
        tokio::time::timeout(app.config.server.request_timeout, run(app, request, peer, &request_id, &mut route)).await;
    let mut response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => error.into_response(&request_id),
        Err(_) => ApiError::GatewayTimeout.into_response(&request_id),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("authz_requests_total", "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("authz_request_seconds", "route" => route).record(started.elapsed().as_secs_f64());
    response
}

async fn run(
    app: &App,
    request: Request<Incoming>,
    peer: SocketAddr,
    request_id: &str,
    route_label: &mut String,
) -> Result<Response<Body>, ApiError> {
    // 0. a head past the configured limits (hyper's own are a looser backstop)
    let server = &app.config.server;
    if !super::head_within_limits(&request, server.max_header_bytes, server.max_headers) {
        return Err(ApiError::HeadersTooLarge);
    }
    // 1. shed
    let _permit = app.in_flight.clone().try_acquire_owned().map_err(|_| ApiError::Overloaded)?;
    // 2. ready
    let engine = app.engine().ok_or(ApiError::NotReady)?;
    if !app.authn.ready() {
        return Err(ApiError::NotReady);
    }
    let (parts, body) = request.into_parts();

    // 3. authenticate
    let authn_started = Instant::now();
    let identity = app.authn.authenticate(&parts.headers).await;
    metrics::histogram!("authz_authn_seconds").record(authn_started.elapsed().as_secs_f64());
    let identity = identity.map_err(|e| {
        tracing::info!(request_id, reason = e.label(), "unauthenticated");
        metrics::counter!("authz_authn_failures_total", "reason" => e.label()).increment(1);
        ApiError::Unauthenticated(e)
    })?;

    // 4. route
    let path = canonicalize(parts.uri.path()).map_err(|e| ApiError::BadRequest(e.0))?;
    let matched = app.router.find(&parts.method, &path.decoded).ok_or(ApiError::NotFound)?;
    let route = matched.route.clone();
    route_label.clone_from(&route.name);
    let limit = app.config.server.max_body_bytes;
    if body.size_hint().lower() > limit as u64 {
        return Err(ApiError::PayloadTooLarge);
    }
    let body = ClientBody::new(body, limit);

    let snapshot = engine.store().current();
    let authz = &route.authz;

    // 5. authorize
    let authz_started = Instant::now();
    let refused = |e: context::OriginError| {
        tracing::info!(request_id, route = %route.name, error = %e, "request refused");
        ApiError::BadRequest(e.public())
    };
    let origin = context::origin(&app.config.context, peer.ip(), &parts.headers).map_err(refused)?;
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
    let principal = EntityUid::from_type_name_and_id(
        app.config.principal.entity_type.clone(),
        EntityId::new(&identity.principal_id),
    );
    // errors stay typed to here, so the metric and the audit event say which kind
    let decided = snapshot
        .request_principal(identity.token_digest, || principal_entity(&identity, &app.config.principal, &snapshot))
        .map_err(|e| RequestError::BadEntities(e.to_string()))
        .and_then(|requester| {
            let context = context_from_strings(&snapshot, &authz.action, &context)?;
            engine.decide_as(&snapshot, &requester, &authz.action, &resource, context)
        });
    metrics::histogram!("authz_authz_seconds").record(authz_started.elapsed().as_secs_f64());
    let decision = match decided {
        Ok(decision) => decision,
        Err(error) => {
            audit_error(
                request_id,
                &route.name,
                &principal,
                &authz.action,
                &resource,
                &error,
                &snapshot.version().to_string(),
            );
            metrics::counter!("authz_decisions_total", "route" => route.name.clone(), "decision" => "deny", "reason" => error.kind()).increment(1);
            return Err(ApiError::Forbidden);
        }
    };
    audit(request_id, &route.name, route.mode, &principal, &authz.action, &resource, &origin, &decision);
    metrics::counter!(
        "authz_decisions_total",
        "route" => route.name.clone(),
        "decision" => decision.effect.to_string(),
        "reason" => decision.reason.as_str()
    )
    .increment(1);
    let vouched = match (decision.effect, route.mode) {
        (Effect::Allow, _) => "allow",
        (Effect::Deny, Mode::Enforce) => return Err(ApiError::Forbidden),
        (Effect::Deny, Mode::DryRun) => {
            metrics::counter!("authz_dry_run_denials_total", "route" => route.name.clone()).increment(1);
            "dry-run-deny"
        }
    };

    // 6. handle
    let vouch = Vouch {
        principal: principal.to_string(),
        issuer: identity.issuer.clone(),
        request_id: request_id.to_owned(),
        decision: vouched,
        policies: decision.policies.clone(),
        source_ip: origin.source_ip,
    };
    match &route.handler {
        Handler::Forward(upstream) => {
            let client = app.upstream_client(&route.name).ok_or(ApiError::Internal)?;
            let path_and_query = match parts.uri.query() {
                Some(query) => format!("{}?{query}", path.encoded),
                None => path.encoded.clone(),
            };
            let hygiene = Hygiene {
                strip: &upstream.strip,
                forwarded_for: &app.config.context.forwarded_for_header,
                vpce: &app.config.context.vpce_header,
                vpce_believed: origin.peer_trusted,
                pass_authorization: upstream.pass_authorization,
            };
            let call =
                Outgoing { method: parts.method, headers: parts.headers, path_and_query, body, vouch: &vouch, hygiene };
            proxy::forward(client, upstream, call).await
        }
        Handler::Presign(options) => {
            let presigner = app.presigner.as_ref().ok_or(ApiError::Internal)?;
            let result =
                presigner.presign(&snapshot, &identity.subject, &resource, resource.id().unescaped(), options).await;
            if let Err(error) = &result {
                tracing::warn!(request_id, route = %route.name, resource = %resource, error = %error, "presign failed");
            }
            result
        }
        // the caller may ask; the handler reads the event and asks its own questions, one
        // per account and region (and audits each)
        Handler::AccountPool => {
            let event = body.collect().await?;
            account_pool(snapshot, &event, request_id).await
        }
        Handler::Echo => {
            let body = serde_json::json!({
                "request_id": request_id,
                "route": route.name,
                "principal": vouch.principal,
                "action": authz.action.to_string(),
                "resource": resource.to_string(),
                "decision": vouched,
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
    snapshot: Arc<PolicySnapshot>,
    body: &[u8],
    request_id: &str,
) -> Result<Response<Body>, ApiError> {
    use crate::handlers::account_pool::{EventError, Operation, apply, parse};
    let refused = |e: EventError| {
        tracing::info!(request_id, error = %e, error_type = e.error_type(), "account-pool event refused");
        ApiError::from(e)
    };
    let operation = parse(body).map_err(refused)?;
    let answer = match operation {
        Operation::Validate(_) => apply(&snapshot, &operation, request_id),
        Operation::List(_) => {
            let id = request_id.to_owned();
            tokio::task::spawn_blocking(move || apply(&snapshot, &operation, &id))
                .await
                .map_err(|_| ApiError::Internal)?
        }
    }
    .map_err(refused)?;
    Ok(json_response(http::StatusCode::OK, answer.to_string()))
}

/// The audit event: one per decision, JSON when logs are JSON. Ids only: never a token.
#[expect(clippy::too_many_arguments, reason = "the fields of one audit event, each named at the one call site")]
fn audit(
    request_id: &str,
    route: &str,
    mode: Mode,
    principal: &EntityUid,
    action: &EntityUid,
    resource: &EntityUid,
    origin: &context::Origin,
    decision: &Decision,
) {
    let errors: Vec<String> = decision.errors.iter().map(|e| format!("{}: {}", e.policy, e.message)).collect();
    tracing::info!(
        target: "authz_sidecar::audit",
        request_id,
        route,
        mode = mode.as_str(),
        principal = %principal,
        action = %action,
        resource = %resource,
        source_ip = %origin.source_ip,
        vpce = origin.vpce.as_deref().unwrap_or(""),
        decision = %decision.effect,
        reason = decision.reason.as_str(),
        policies = %decision.policies.join(","),
        errors = %serde_json::Value::from(errors),
        snapshot = %decision.snapshot,
        latency_us = u64::try_from(decision.elapsed.as_micros()).unwrap_or(u64::MAX),
        "decision"
    );
}

fn audit_error(
    request_id: &str,
    route: &str,
    principal: &EntityUid,
    action: &EntityUid,
    resource: &EntityUid,
    error: &RequestError,
    snapshot: &str,
) {
    tracing::warn!(
        target: "authz_sidecar::audit",
        request_id,
        route,
        principal = %principal,
        action = %action,
        resource = %resource,
        decision = "deny",
        reason = error.kind(),
        policies = "",
        errors = %serde_json::json!([error.to_string()]),
        snapshot,
        "decision"
    );
}
