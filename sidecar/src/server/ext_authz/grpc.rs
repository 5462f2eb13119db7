//! Envoy's gRPC form: `envoy.service.auth.v3.Authorization/Check`, as the
//! `envoy.filters.http.ext_authz` filter with a `grpc_service` (and Istio's
//! `envoyExtAuthzGrpc` provider) asks it.
//!
//! A `CheckRequest` describes the client's request: its method, its request target, its
//! headers (as the `headers` map, or as `header_map` with `encode_raw_headers`) and the
//! downstream peer Envoy saw (`source.address`). That description becomes the request
//! the data plane would have received, and runs through the data plane's phases. Envoy
//! is a trusted proxy by this listener's admission, so its word on the downstream peer
//! is believed ([`Reported::Downstream`]): that peer is the client, unless it is one of
//! `trusted_proxies` (a load balancer in front of Envoy), in which case the forwarded-for
//! header is walked back from it; and the VPC endpoint header is Envoy's to pass on. Their answer, in the HTTP form's shape, is then
//! carried in Envoy's: 200 becomes an `OkHttpResponse` whose `headers` are the
//! `x-authz-` headers the sidecar vouches with (overwriting the client's copies) and
//! whose `headers_to_remove` are what the HTTP form lists; anything else becomes a
//! `DeniedHttpResponse` with the data plane's status, headers and JSON body.
//!
//! A `CheckRequest` that cannot be read as one HTTP request (no HTTP attributes, a
//! method or target that is not HTTP, a header that is not, headers in both forms, no
//! source address) is answered with the gRPC status `INVALID_ARGUMENT` and a message
//! saying what is wrong, which Envoy treats as a failed check: denied, never allowed.

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::ext_authz::v3::pb::{
    Address, Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue as EnvoyHeader, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::rpc;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tonic::codegen::Service;

use super::refuse;
use crate::body::Body;
use crate::config::ExtAuthzConfig;
use crate::proxy::{ENVOY_HEADERS_TO_REMOVE, IDENTITY_PREFIX};
use crate::server::Inbound;
use crate::server::pipeline::{Purpose, Reported, handle_for};
use crate::server::state::State;

/// The `Authorization` service over whatever holds the sidecar's state.
#[derive(Debug)]
pub struct Checks<A> {
    app: Arc<A>,
}

/// The service as tonic serves it, its messages bounded by `max_message_bytes`.
pub fn service<A>(app: Arc<A>, max_message_bytes: usize) -> AuthorizationServer<Checks<A>>
where
    A: AsRef<State> + Send + Sync + 'static,
{
    AuthorizationServer::new(Checks { app })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes)
}

/// The largest `CheckRequest` taken: a request head at the data plane's own limit,
/// with room for the protobuf framing and the attributes around it. A larger one (Envoy
/// configured to send bodies with `with_request_body`, say) is answered
/// `RESOURCE_EXHAUSTED`, a failed check.
pub fn max_message_bytes(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(2).saturating_add(16 * 1024)
}

/// Answer one HTTP/2 call on the gRPC listener: a peer `allowed_peers` does not name is
/// refused with `PERMISSION_DENIED` before anything is read.
pub async fn serve<A>(
    service: &AuthorizationServer<Checks<A>>,
    config: &ExtAuthzConfig,
    request: Request<Incoming>,
    inbound: Inbound,
) -> Response<Body>
where
    A: AsRef<State> + Send + Sync + 'static,
{
    if !super::admitted(config, &inbound) {
        refuse("peer");
        return tonic::Status::permission_denied("this peer may not ask for external authorization checks").into_http();
    }
    let mut service = service.clone();
    let answer = match poll_fn(|cx| Service::<Request<Incoming>>::poll_ready(&mut service, cx)).await {
        Ok(()) => service.call(request).await,
        Err(never) => match never {},
    };
    match answer {
        Ok(response) => response.map(|body| body.map_err(Into::into).boxed_unsync()),
        Err(never) => match never {},
    }
}

#[tonic::async_trait]
impl<A> Authorization for Checks<A>
where
    A: AsRef<State> + Send + Sync + 'static,
{
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let (described, downstream) = described(request.get_ref()).map_err(|malformed| {
            refuse("malformed");
            tracing::info!(error = %malformed, "a malformed external authorization check; refused");
            tonic::Status::invalid_argument(malformed.to_string())
        })?;
        let inbound = Inbound { peer: downstream };
        let state = (*self.app).as_ref();
        let answer = handle_for(state, described, inbound, Purpose::Check(Reported::Downstream)).await;
        Ok(tonic::Response::new(check_response(answer).await))
    }
}

/// Why a `CheckRequest` is not one HTTP request. Messages name fields, never values
/// (a header value may be a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the check has no HTTP request attributes (attributes.request.http)")]
    NoHttpRequest,
    #[error("the check's method is not an HTTP method")]
    Method,
    #[error("the check's path is not a request target that starts with `/` (without a fragment)")]
    Path,
    #[error("the check names no source address (attributes.source.address.socket_address)")]
    NoSource,
    #[error("the check's source address is not an IP address with a numeric port")]
    Source,
    #[error("the check carries its headers both as `headers` and as `header_map`")]
    TwoHeaderForms,
    #[error("a header name of the check is not an HTTP header name")]
    HeaderName,
    #[error("the value of the check's `{0}` header is not an HTTP header value")]
    HeaderValue(HeaderName),
    #[error("the check's `{0}` header has both a `value` and a `raw_value`")]
    TwoValues(HeaderName),
}

/// The request a `CheckRequest` describes, with the downstream peer Envoy saw.
pub fn described(check: &CheckRequest) -> Result<(Request<Empty<Bytes>>, SocketAddr), Malformed> {
    let attributes = check.attributes.as_ref();
    let http =
        attributes.and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref()).ok_or(Malformed::NoHttpRequest)?;
    let method = Method::from_bytes(http.method.as_bytes()).map_err(|_| Malformed::Method)?;
    // a fragment is never sent (Envoy's field says so): one here would be dropped from
    // the target checked, which would then not be the target asked about
    if !http.path.starts_with('/') || http.path.contains('#') {
        return Err(Malformed::Path);
    }
    let uri = Uri::builder().path_and_query(http.path.as_str()).build().map_err(|_| Malformed::Path)?;
    let source = attributes.and_then(|a| a.source.as_ref()).and_then(|peer| peer.address.as_ref());
    let downstream = match source.and_then(|address| address.address.as_ref()) {
        Some(Address::SocketAddress(socket)) => {
            let ip: IpAddr = socket.address.parse().map_err(|_| Malformed::Source)?;
            let port = match &socket.port_specifier {
                Some(PortSpecifier::PortValue(port)) => u16::try_from(*port).map_err(|_| Malformed::Source)?,
                None => 0,
                Some(PortSpecifier::NamedPort(_)) => return Err(Malformed::Source),
            };
            SocketAddr::new(ip, port)
        }
        Some(_) => return Err(Malformed::Source),
        None => return Err(Malformed::NoSource),
    };
    let mut request = Request::new(Empty::new());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers(http)?;
    Ok((request, downstream))
}

/// The described request's headers, from whichever form Envoy sent (never both).
/// Pseudo-headers are left out: the method and target have fields of their own.
fn headers(http: &HttpRequest) -> Result<HeaderMap, Malformed> {
    let raw = http.header_map.as_ref().map_or(&[][..], |map| map.headers.as_slice());
    if !http.headers.is_empty() && !raw.is_empty() {
        return Err(Malformed::TwoHeaderForms);
    }
    let mut headers = HeaderMap::with_capacity(http.headers.len() + raw.len());
    let mut add = |key: &str, value: &[u8]| -> Result<(), Malformed> {
        if key.starts_with(':') {
            return Ok(());
        }
        let name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| Malformed::HeaderName)?;
        let value = HeaderValue::from_bytes(value).map_err(|_| Malformed::HeaderValue(name.clone()))?;
        headers.append(name, value);
        Ok(())
    };
    for (key, value) in &http.headers {
        add(key, value.as_bytes())?;
    }
    for header in raw {
        let value = match (header.value.is_empty(), header.raw_value.is_empty()) {
            (_, true) => header.value.as_bytes(),
            (true, false) => header.raw_value.as_slice(),
            (false, false) => {
                let name = HeaderName::from_bytes(header.key.as_bytes()).map_err(|_| Malformed::HeaderName)?;
                return Err(Malformed::TwoValues(name));
            }
        };
        add(&header.key, value)?;
    }
    Ok(headers)
}

/// The `CheckRequest` Envoy sends for a client request from `source` (with the
/// pseudo-headers in the map, as Envoy sends them): for tools, load generators and tests
/// that speak for Envoy. [`described`] reads it back.
pub fn envoy_check(method: &str, path: &str, headers: &[(&str, &str)], source: Option<SocketAddr>) -> CheckRequest {
    use envoy_types::pb::envoy::config::core::v3::{Address as EnvoyAddress, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{Peer, Request as Described};

    let pseudo = [(":method", method), (":path", path)];
    let http = HttpRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        headers: pseudo.iter().chain(headers).map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        protocol: "HTTP/1.1".to_owned(),
        ..HttpRequest::default()
    };
    let source = source.map(|source| Peer {
        address: Some(EnvoyAddress {
            address: Some(Address::SocketAddress(SocketAddress {
                address: source.ip().to_string(),
                port_specifier: Some(PortSpecifier::PortValue(u32::from(source.port()))),
                ..SocketAddress::default()
            })),
        }),
        ..Peer::default()
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source,
            request: Some(Described { http: Some(http), ..Described::default() }),
            ..AttributeContext::default()
        }),
    }
}

/// The data plane's answer to a check (the HTTP form's) in Envoy's gRPC shape.
async fn check_response(answer: Response<Body>) -> CheckResponse {
    let (parts, body) = answer.into_parts();
    if parts.status == StatusCode::OK {
        return allowed(&parts.headers);
    }
    // a full body the pipeline made: reading it cannot fail, and if it did the denial stands
    let body = body.collect().await.map(|collected| collected.to_bytes()).unwrap_or_default();
    denied(parts.status, &parts.headers, &body)
}

fn overwrite(name: &HeaderName, value: &HeaderValue) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(EnvoyHeader {
            key: name.as_str().to_owned(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

/// `OK`: the vouched headers set upstream over the client's copies, and the HTTP form's
/// removals.
fn allowed(headers: &HeaderMap) -> CheckResponse {
    let set = headers.iter().filter(|(name, _)| name.as_str().starts_with(IDENTITY_PREFIX));
    let remove = headers.get(ENVOY_HEADERS_TO_REMOVE).and_then(|value| value.to_str().ok()).unwrap_or_default();
    CheckResponse {
        status: Some(rpc::Status { code: tonic::Code::Ok.into(), ..rpc::Status::default() }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: set.map(|(name, value)| overwrite(name, value)).collect(),
            headers_to_remove: remove.split(',').filter(|name| !name.is_empty()).map(str::to_owned).collect(),
            ..OkHttpResponse::default()
        })),
        ..CheckResponse::default()
    }
}

/// Denied, or failed: the data plane's status, headers and body for Envoy to send the
/// client, under a gRPC status that says why.
fn denied(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> CheckResponse {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|error| error.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("denied").to_owned());
    let carried = headers.iter().filter(|(name, _)| *name != http::header::CONTENT_LENGTH);
    CheckResponse {
        status: Some(rpc::Status { code: grpc_code(status).into(), message, ..rpc::Status::default() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(status.as_u16()) }),
            headers: carried.map(|(name, value)| overwrite(name, value)).collect(),
            body: String::from_utf8_lossy(body).into_owned(),
        })),
        ..CheckResponse::default()
    }
}

/// The gRPC status for a denied check's HTTP status: never `OK`.
fn grpc_code(status: StatusCode) -> tonic::Code {
    match status {
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
        StatusCode::NOT_FOUND => tonic::Code::NotFound,
        StatusCode::TOO_MANY_REQUESTS => tonic::Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => tonic::Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT => tonic::Code::DeadlineExceeded,
        status if status.is_client_error() => tonic::Code::InvalidArgument,
        _ => tonic::Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderMap as EnvoyHeaderMap;

    fn check(method: &str, path: &str, headers: &[(&str, &str)], source: Option<&str>) -> CheckRequest {
        let mut check = envoy_check(method, path, headers, source.map(|_| "127.0.0.1:40000".parse().unwrap()));
        // an address as Envoy could write it, valid or not
        if let (Some(source), Some(Address::SocketAddress(socket))) = (source, socket_of(&mut check)) {
            source.clone_into(&mut socket.address);
        }
        check
    }

    fn socket_of(check: &mut CheckRequest) -> Option<&mut Address> {
        check.attributes.as_mut()?.source.as_mut()?.address.as_mut()?.address.as_mut()
    }

    #[test]
    fn a_check_describes_the_request_its_peer_made() {
        let (request, peer) = described(&check(
            "POST",
            "/studio/u/t?x=1",
            &[(":path", "/other"), (":method", "GET"), ("authorization", "Bearer t"), ("x-forwarded-for", "1.2.3.4")],
            Some("10.1.2.3"),
        ))
        .unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/studio/u/t?x=1");
        assert_eq!(peer, "10.1.2.3:40000".parse().unwrap());
        assert_eq!(request.headers().len(), 2, "pseudo-headers are fields, not headers");
        assert_eq!(request.headers()["authorization"], "Bearer t");
    }

    #[test]
    fn every_kind_of_malformed_check_is_named() {
        let ok = || check("GET", "/a", &[], Some("10.0.0.1"));
        assert_eq!(described(&CheckRequest::default()).unwrap_err(), Malformed::NoHttpRequest);
        assert_eq!(described(&check("G ET", "/a", &[], Some("10.0.0.1"))).unwrap_err(), Malformed::Method);
        assert_eq!(described(&check("", "/a", &[], Some("10.0.0.1"))).unwrap_err(), Malformed::Method);
        for path in ["", "a", "*", "http://x/a", "/a b", "/a\u{7f}", "/a#b"] {
            assert_eq!(described(&check("GET", path, &[], Some("10.0.0.1"))).unwrap_err(), Malformed::Path, "{path:?}");
        }
        assert_eq!(described(&check("GET", "/a", &[], None)).unwrap_err(), Malformed::NoSource);
        assert_eq!(described(&check("GET", "/a", &[], Some("envoy.local"))).unwrap_err(), Malformed::Source);
        assert_eq!(
            described(&check("GET", "/a", &[("bad name", "v")], Some("10.0.0.1"))).unwrap_err(),
            Malformed::HeaderName
        );
        assert_eq!(
            described(&check("GET", "/a", &[("x-a", "line\nbreak")], Some("10.0.0.1"))).unwrap_err(),
            Malformed::HeaderValue(HeaderName::from_static("x-a"))
        );
        let mut port = ok();
        if let Some(Address::SocketAddress(socket)) = socket_of(&mut port) {
            socket.port_specifier = Some(PortSpecifier::PortValue(70_000));
        }
        assert_eq!(described(&port).unwrap_err(), Malformed::Source);
        let raw = |headers: Vec<EnvoyHeader>, map: &[(&str, &str)]| {
            let mut request = check("GET", "/a", map, Some("10.0.0.1"));
            let http = request.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap();
            // with `encode_raw_headers`, Envoy sends every header (pseudo ones too) in the list
            if map.is_empty() {
                http.headers.clear();
            }
            http.header_map = Some(EnvoyHeaderMap { headers });
            described(&request)
        };
        let header = |key: &str, value: &str, raw_value: &[u8]| EnvoyHeader {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: raw_value.to_vec(),
        };
        assert_eq!(raw(vec![header("x-a", "1", b"")], &[("x-b", "2")]).unwrap_err(), Malformed::TwoHeaderForms);
        assert_eq!(
            raw(vec![header("x-a", "1", b"2")], &[]).unwrap_err(),
            Malformed::TwoValues(HeaderName::from_static("x-a"))
        );
        // the raw form keeps repeated headers apart, as the client sent them
        let (request, _) =
            raw(vec![header("x-forwarded-for", "", b"1.1.1.1"), header("x-forwarded-for", "2.2.2.2", b"")], &[])
                .unwrap();
        assert_eq!(request.headers().get_all("x-forwarded-for").iter().count(), 2);
    }

    #[test]
    fn only_200_is_ok_and_every_denial_keeps_the_data_planes_answer() {
        let mut headers = HeaderMap::new();
        headers.insert("x-authz-principal", HeaderValue::from_static("Studio::User::\"u\""));
        headers.insert(ENVOY_HEADERS_TO_REMOVE, HeaderValue::from_static("authorization,x_authz_team"));
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        let ok = allowed(&headers);
        assert_eq!(ok.status.as_ref().unwrap().code, 0);
        let Some(HttpResponse::OkResponse(ok)) = ok.http_response else { panic!("not OK") };
        let set: Vec<_> = ok.headers.iter().map(|h| h.header.as_ref().unwrap().key.as_str()).collect();
        assert_eq!(set, ["x-authz-principal"], "only the vouched headers go upstream");
        assert_eq!(ok.headers[0].append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
        assert_eq!(ok.headers_to_remove, ["authorization", "x_authz_team"]);
        for status in [400, 401, 403, 404, 405, 413, 429, 431, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(status).unwrap();
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static("application/json"));
            headers.insert("content-length", HeaderValue::from_static("20"));
            let denial = denied(status, &headers, br#"{"error":"forbidden"}"#);
            let rpc_status = denial.status.unwrap();
            assert_ne!(rpc_status.code, 0, "{status}");
            assert_eq!(rpc_status.message, "forbidden");
            let Some(HttpResponse::DeniedResponse(denied)) = denial.http_response else { panic!("{status}") };
            assert_eq!(denied.status.unwrap().code, i32::from(status.as_u16()));
            assert_eq!(denied.body, r#"{"error":"forbidden"}"#);
            let names: Vec<_> = denied.headers.iter().map(|h| h.header.as_ref().unwrap().key.as_str()).collect();
            assert_eq!(names, ["content-type"], "Envoy frames the body itself");
        }
    }

    proptest::proptest! {
        /// Whatever headers, method and path a `CheckRequest` carries, it is either
        /// refused or read as exactly what it says: the method and target, every header
        /// it names (pseudo-headers aside) with its value, and nothing else.
        #[test]
        fn a_check_is_refused_or_read_exactly(
            method in "[A-Za-z!#%&*+.^_-]{0,8}|G ET|GET\u{0}",
            path in "/[ -~]{0,12}|[a-z*]{0,3}",
            headers in proptest::collection::btree_map("[a-zA-Z0-9:_ -]{0,6}", "[ -~\t\r\n\u{80}-\u{ff}]{0,8}", 0..6),
        ) {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let check = envoy_check(&method, &path, &pairs, Some("10.0.0.1:1".parse().unwrap()));
            if let Ok((request, peer)) = described(&check) {
                proptest::prop_assert_eq!(request.method().as_str(), method.as_str());
                proptest::prop_assert_eq!(request.uri().to_string(), path.clone());
                proptest::prop_assert_eq!(peer, "10.0.0.1:1".parse::<SocketAddr>().unwrap());
                let named: Vec<(&String, &String)> = headers.iter().filter(|(k, _)| !k.starts_with(':')).collect();
                proptest::prop_assert_eq!(request.headers().len(), named.len());
                for (key, value) in named {
                    let got = request.headers().get_all(key.to_ascii_lowercase()).iter().map(|v| v.as_bytes().to_vec()).collect::<Vec<_>>();
                    proptest::prop_assert!(got.contains(&value.as_bytes().to_vec()), "{} lost or changed", key);
                }
            }
        }
    }
}
