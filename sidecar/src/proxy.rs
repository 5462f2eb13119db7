//! Forwarding an allowed call to its upstream.
//!
//! Header hygiene, in order: hop-by-hop headers (and any the `Connection` header names)
//! are removed; every incoming header with the sidecar's `x-authz-` prefix is removed,
//! so a client cannot forge the identity headers; `Authorization` is removed unless the
//! route passes it on; then the sidecar adds the verified identity and decision.
//! The upstream has a connect timeout (502 when it cannot be reached) and a response
//! timeout (504).

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;

use crate::config::Upstream;
use crate::http_client::{Body, HttpClient};
use crate::rescue::{ApiError, full};

/// Headers the sidecar sets on forwarded requests; incoming ones with this prefix are dropped.
pub const IDENTITY_PREFIX: &str = "x-authz-";
pub const PRINCIPAL_HEADER: HeaderName = HeaderName::from_static("x-authz-principal");
pub const ISSUER_HEADER: HeaderName = HeaderName::from_static("x-authz-issuer");
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-authz-request-id");
pub const DECISION_HEADER: HeaderName = HeaderName::from_static("x-authz-decision");
pub const POLICIES_HEADER: HeaderName = HeaderName::from_static("x-authz-policies");

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Remove hop-by-hop headers, including those listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// What the sidecar vouches for on a forwarded call.
#[derive(Debug, Clone)]
pub struct Vouch {
    pub principal: String,
    pub issuer: String,
    pub request_id: String,
    /// `allow`, or `dry-run-deny` when a dry-run route let a denied call through.
    pub decision: &'static str,
    pub policies: Vec<String>,
    pub source_ip: IpAddr,
}

#[derive(Debug)]
pub struct Outgoing<'a> {
    pub method: http::Method,
    pub headers: HeaderMap,
    pub path_and_query: String,
    pub body: Bytes,
    pub vouch: &'a Vouch,
}

pub async fn forward(client: &HttpClient, upstream: &Upstream, call: Outgoing<'_>) -> Result<Response<Body>, ApiError> {
    let uri = upstream_uri(&upstream.base, &call.path_and_query).ok_or(ApiError::Internal)?;
    let mut headers = call.headers;
    strip_hop_by_hop(&mut headers);
    let forged: Vec<HeaderName> =
        headers.keys().filter(|name| name.as_str().starts_with(IDENTITY_PREFIX)).cloned().collect();
    for name in forged {
        headers.remove(name);
    }
    if !upstream.pass_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    let vouch = call.vouch;
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(&mut headers, PRINCIPAL_HEADER, &vouch.principal);
    set(&mut headers, ISSUER_HEADER, &vouch.issuer);
    set(&mut headers, REQUEST_ID_HEADER, &vouch.request_id);
    set(&mut headers, DECISION_HEADER, vouch.decision);
    set(&mut headers, POLICIES_HEADER, &vouch.policies.join(","));
    set(&mut headers, HeaderName::from_static("x-forwarded-for"), &vouch.source_ip.to_string());

    let mut request = Request::new(full(call.body));
    *request.method_mut() = call.method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;

    let started = std::time::Instant::now();
    let result = tokio::time::timeout(upstream.timeout, client.request(request)).await;
    metrics::histogram!("authz_upstream_seconds").record(started.elapsed().as_secs_f64());
    let response = match result {
        Err(_) => return Err(ApiError::GatewayTimeout),
        Ok(Err(e)) => {
            tracing::warn!(request_id = %vouch.request_id, error = %e, "upstream request failed");
            return Err(ApiError::BadGateway);
        }
        Ok(Ok(response)) => response,
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = body.map_err(|e| -> crate::http_client::BoxError { Box::new(e) }).boxed_unsync();
    Ok(Response::from_parts(parts, body))
}

/// The upstream base (scheme, authority, optional path prefix) joined with the path.
fn upstream_uri(base: &Uri, path_and_query: &str) -> Option<Uri> {
    let prefix = base.path().trim_end_matches('/');
    let joined = format!("{prefix}{path_and_query}");
    Uri::builder()
        .scheme(base.scheme()?.clone())
        .authority(base.authority()?.clone())
        .path_and_query(joined)
        .build()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            upstream_uri(&base, "/studio/u/t?x=1").unwrap().to_string(),
            "http://127.0.0.1:9000/api/studio/u/t?x=1"
        );
        let base: Uri = "https://up.example".parse().unwrap();
        assert_eq!(upstream_uri(&base, "/a").unwrap().to_string(), "https://up.example/a");
    }
}
