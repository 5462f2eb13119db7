//! The one place where a failure becomes an HTTP response.
//!
//! Every phase returns an [`ApiError`]; this maps it to a status and a small JSON body
//! `{"error": "...", "request_id": "..."}` that names the problem without internal
//! detail (no policy text, no upstream address, no token). Nothing reaches hyper as an
//! error.

use http::{HeaderValue, Response, StatusCode, header};

use crate::authn::AuthnError;
use crate::body::{Body, json_response};
use crate::handlers::presign::PresignError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// An account-pool event that cannot be read; the message names the field and the
    /// type found, never a value.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// A query that cannot be answered; the message says why in the sidecar's words.
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(AuthnError),
    #[error("forbidden")]
    Forbidden,
    /// An external authorization check of a route whose handler answers itself.
    #[error("not checkable")]
    NotCheckable,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("too many requests")]
    Overloaded,
    #[error("not ready")]
    NotReady,
    /// The directory could not be read for an entity the request needs, or the lifecycle
    /// table for the principal's revocations (and no answer within the staleness bound
    /// was kept): denied, and worth retrying.
    #[error("directory unavailable")]
    DirectoryUnavailable,
    #[error("upstream unreachable")]
    BadGateway,
    #[error(transparent)]
    Presign(#[from] PresignError),
    /// A membership event refused (400, 422) or not applied yet (503).
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::LifecycleError),
    #[error("upstream timed out")]
    GatewayTimeout,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::InvalidEvent(_) | Self::BadQuery(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::NotCheckable => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Self::NotReady | Self::DirectoryUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::Presign(error) => match error {
                PresignError::ProfileNotFound(_) => StatusCode::NOT_FOUND,
                PresignError::AwsDenied(_) | PresignError::CredentialsRejected(_) | PresignError::NoCredentials => {
                    StatusCode::BAD_GATEWAY
                }
                PresignError::Throttled => StatusCode::SERVICE_UNAVAILABLE,
                PresignError::Aws { status, .. } => *status,
                PresignError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                PresignError::Incomplete => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Lifecycle(error) => error.status(),
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told: enough to act on, nothing internal.
    fn public_message(&self) -> String {
        match self {
            Self::BadRequest(why) => format!("bad request: {why}"),
            Self::InvalidEvent(why) => format!("invalid event: {why}"),
            Self::BadQuery(why) => format!("bad query: {why}"),
            Self::Unauthenticated(AuthnError::Missing) => "a bearer token is required".to_owned(),
            Self::Unauthenticated(AuthnError::Ambiguous) => "send exactly one Authorization header".to_owned(),
            Self::Unauthenticated(_) => "the bearer token is not valid".to_owned(),
            Self::Forbidden => "the policy does not allow this request".to_owned(),
            Self::NotCheckable => {
                "the sidecar answers this route itself: send it to the sidecar's data plane, not through an external check"
                    .to_owned()
            }
            Self::NotFound => "no route matches this method and path".to_owned(),
            Self::MethodNotAllowed => "this endpoint answers GET only".to_owned(),
            Self::PayloadTooLarge => "the request body is too large".to_owned(),
            Self::HeadersTooLarge => "the request headers are too large or too many".to_owned(),
            Self::Overloaded => "too many requests in flight; retry shortly".to_owned(),
            Self::NotReady => "the sidecar is not ready yet; retry shortly".to_owned(),
            Self::DirectoryUnavailable => {
                "the directory or the lifecycle table cannot be read; retry shortly".to_owned()
            }
            Self::BadGateway => "the upstream could not be reached".to_owned(),
            Self::Presign(error) => match error {
                PresignError::ProfileNotFound(message)
                | PresignError::AwsDenied(message)
                | PresignError::Aws { message, .. }
                | PresignError::CredentialsRejected(message) => message.clone(),
                PresignError::Throttled => "AWS is throttling the sidecar; retry shortly".to_owned(),
                PresignError::NoCredentials => Self::BadGateway.public_message(),
                PresignError::Timeout => Self::GatewayTimeout.public_message(),
                PresignError::Incomplete => Self::Internal.public_message(),
            },
            Self::Lifecycle(error) if error.status() == StatusCode::SERVICE_UNAVAILABLE => {
                "the identity store or the lifecycle table cannot be reached; deliver the event again".to_owned()
            }
            Self::Lifecycle(error) => error.to_string(),
            Self::GatewayTimeout => "the upstream did not answer in time".to_owned(),
            Self::Internal => "internal error".to_owned(),
        }
    }

    pub(crate) fn into_response(self, request_id: &str) -> Response<Body> {
        let mut response = json_response(self.status(), error_body(&self.public_message(), request_id));
        let headers = response.headers_mut();
        match &self {
            Self::Unauthenticated(AuthnError::Missing) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"authz-sidecar\""));
            }
            Self::Unauthenticated(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"authz-sidecar\", error=\"invalid_token\""),
                );
            }
            Self::Overloaded | Self::NotReady | Self::DirectoryUnavailable | Self::Presign(PresignError::Throttled) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Lifecycle(error) if error.status() == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// An error answer's body, `{"error":…,"request_id":…}`, serialized from borrowed
/// fields: every 401, 403 and 429 writes one, and a JSON value built for it (a map
/// with its own seeded hasher, then written and dropped) cost a shed request a fifth
/// of its instructions (`bench/README.md`).
fn error_body(message: &str, request_id: &str) -> String {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: &'a str,
        request_id: &'a str,
    }
    // serializing two strings cannot fail
    serde_json::to_string(&Body { error: message, request_id }).unwrap_or_default()
}

/// An account-pool event the handler refused: too large is 413, anything else 400 with
/// the handler's message (which names the field and type, never a value).
impl From<crate::handlers::account_pool::EventError> for ApiError {
    fn from(error: crate::handlers::account_pool::EventError) -> Self {
        match error {
            crate::handlers::account_pool::EventError::TooLarge { .. } => Self::PayloadTooLarge,
            other => Self::InvalidEvent(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_answers_carry_www_authenticate() {
        let r = ApiError::Unauthenticated(AuthnError::Missing).into_response("rid");
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"authz-sidecar\"");
        let r = ApiError::Unauthenticated(AuthnError::Invalid("expired")).into_response("rid");
        assert!(r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap().contains("invalid_token"));
    }

    #[test]
    fn every_error_has_its_status() {
        let cases = [
            (ApiError::BadRequest("x"), 400),
            (ApiError::Forbidden, 403),
            (ApiError::NotFound, 404),
            (ApiError::MethodNotAllowed, 405),
            (ApiError::PayloadTooLarge, 413),
            (ApiError::HeadersTooLarge, 431),
            (ApiError::Overloaded, 429),
            (ApiError::NotReady, 503),
            (ApiError::DirectoryUnavailable, 503),
            (ApiError::BadGateway, 502),
            (ApiError::GatewayTimeout, 504),
        ];
        for (error, status) in cases {
            assert_eq!(error.into_response("r").status().as_u16(), status);
        }
    }

    proptest::proptest! {
        /// The body is the JSON object of the message and the request id, whatever
        /// they hold (quotes, control characters, non-ASCII), in that order.
        #[test]
        fn the_error_body_is_the_json_object_of_its_two_fields(message in proptest::prelude::any::<String>(), id in "[ -~]{0,40}|\\PC{0,8}") {
            let body = error_body(&message, &id);
            let expected = serde_json::json!({"error": message, "request_id": id});
            proptest::prop_assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), expected.clone());
            proptest::prop_assert_eq!(body, expected.to_string());
        }
    }
}
