//! The admin listener: `/livez`, `/readyz`, `/metrics`, and with `--dev` the token
//! endpoint of the development issuer. A separate address, never the data plane.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

use super::state::State;
use crate::body::Body;
use crate::body::full;
use crate::body::json_response;
use crate::rescue::ApiError;

pub fn handle<B>(state: &State, metrics: &PrometheusHandle, request: Request<B>) -> Response<Body> {
    // errors take the same shape as the data plane's (rescue.rs), with a request id
    let refused = |error: ApiError| error.into_response(&uuid::Uuid::new_v4().simple().to_string());
    if request.method() != Method::GET {
        return refused(ApiError::MethodNotAllowed);
    }
    match request.uri().path() {
        "/livez" => json_response(StatusCode::OK, r#"{"live":true}"#.to_owned()),
        "/readyz" => {
            let reasons = state.not_ready_reasons();
            let snapshot = state.store.current().map(|s| s.version().to_string());
            // a failure before the first snapshot is a reason, not a reload failure
            let reloads = snapshot.as_ref().map(|_| state.store.stats());
            let body = serde_json::json!({
                "ready": reasons.is_empty(),
                "reasons": reasons,
                "snapshot": snapshot,
                "reload_failures": reloads.as_ref().map(|s| s.failures),
                "last_reload_error": reloads.and_then(|s| s.last_error).map(|e| e.to_string()),
            });
            let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json_response(status, body.to_string())
        }
        "/metrics" => {
            metrics.run_upkeep();
            let mut response = Response::new(full(metrics.render()));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
            response
        }
        "/dev/token" => match &state.dev {
            Some(dev) => dev_token(dev, request.uri().query().unwrap_or_default()),
            None => refused(ApiError::NotFound),
        },
        _ => refused(ApiError::NotFound),
    }
}

/// `/dev/token?user=user-1&groups=Team1,Team2`: a token from the development issuer.
fn dev_token(dev: &crate::authn::dev::DevIssuer, query: &str) -> Response<Body> {
    let mut user = None;
    let mut groups = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned();
        match key {
            "user" => user = Some(value),
            "groups" => groups = value.split(',').filter(|g| !g.is_empty()).map(str::to_owned).collect(),
            _ => {}
        }
    }
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return ApiError::BadRequest("give ?user=<name>&groups=<a,b>")
            .into_response(&uuid::Uuid::new_v4().simple().to_string());
    };
    match dev.mint(&user, &groups, Duration::from_secs(3600)) {
        Ok(token) => {
            let mut response = Response::new(full(token));
            response.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "dev token minting failed");
            ApiError::Internal.into_response(&uuid::Uuid::new_v4().simple().to_string())
        }
    }
}
