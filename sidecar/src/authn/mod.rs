//! Authentication: a bearer JWT, verified against its issuer's keys, becomes an
//! [`Identity`]. Requests with no token or a bad one never reach policy evaluation.
//!
//! Per token: the issuer is chosen by the (unverified) `iss` claim among the configured
//! ones, the algorithm must be on that issuer's allow-list (asymmetric only), the key is
//! found by `kid` (refreshing the JWKS once if unknown), then jsonwebtoken checks the
//! signature, `exp`, `nbf` and `iss`, and this module checks the audience (`aud` or
//! Cognito's `client_id`) and `token_use`. Verified tokens are cached (moka, keyed by
//! the token's SHA-256, never the token) until they expire.

pub mod dev;
mod jwks;
pub mod principal;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use jsonwebtoken::{Validation, decode, decode_header};
use moka::sync::Cache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use jwks::{IssuerKeys, KeySet};

use crate::config::IssuerConfig;
use crate::http_client::HttpClient;

/// Why a request is unauthenticated. Every variant is a 401; the label goes to logs
/// and metrics, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's issuer is not configured")]
    UnknownIssuer,
    #[error("the token's algorithm is not allowed for its issuer")]
    AlgorithmNotAllowed,
    #[error("the token's signing key is not known")]
    UnknownKey,
    #[error("the token is invalid: {0}")]
    Invalid(&'static str),
}

impl AuthnError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownIssuer => "unknown_issuer",
            Self::AlgorithmNotAllowed => "algorithm",
            Self::UnknownKey => "unknown_key",
            Self::Invalid(reason) => reason,
        }
    }
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub issuer: String,
    /// The value of the configured id claim.
    pub subject: String,
    pub claims: Map<String, Value>,
    /// Unix seconds.
    pub expires_at: u64,
    /// SHA-256 of the token: a key for what is built from it (never the token).
    pub token_digest: [u8; 32],
}

/// Verifies tokens for every configured issuer.
pub struct Authenticator {
    issuers: Vec<Arc<IssuerKeys>>,
    id_claim: String,
    /// SHA-256 of a token → its identity, until the token expires.
    verified: Cache<[u8; 32], Arc<Identity>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("issuers", &self.issuers).finish_non_exhaustive()
    }
}

struct UntilExpiry;

impl moka::Expiry<[u8; 32], Arc<Identity>> for UntilExpiry {
    fn expire_after_create(&self, _: &[u8; 32], identity: &Arc<Identity>, _: std::time::Instant) -> Option<Duration> {
        Some(Duration::from_secs(identity.expires_at.saturating_sub(now_secs())))
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(serde::Deserialize)]
struct Peek {
    iss: Option<String>,
}

impl Authenticator {
    pub fn new(issuers: &[IssuerConfig], id_claim: &str, client: &HttpClient) -> Self {
        Self {
            issuers: issuers.iter().map(|c| Arc::new(IssuerKeys::new(c.clone(), client.clone()))).collect(),
            id_claim: id_claim.to_owned(),
            verified: Cache::builder().max_capacity(100_000).expire_after(UntilExpiry).build(),
        }
    }

    pub fn issuers(&self) -> &[Arc<IssuerKeys>] {
        &self.issuers
    }

    /// Every issuer has a key set (readiness).
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|i| i.has_keys())
    }

    /// Verify the bearer token of a request.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Identity>, AuthnError> {
        let token = bearer_token(headers).ok_or(AuthnError::Missing)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(identity) = self.verified.get(&digest)
            && identity.expires_at > now_secs()
        {
            metrics::counter!("authz_token_cache_total", "result" => "hit").increment(1);
            return Ok(identity);
        }
        metrics::counter!("authz_token_cache_total", "result" => "miss").increment(1);
        let identity = Arc::new(self.verify(token, digest).await?);
        self.verified.insert(digest, identity.clone());
        Ok(identity)
    }

    async fn verify(&self, token: &str, token_digest: [u8; 32]) -> Result<Identity, AuthnError> {
        let header = decode_header(token).map_err(|_| AuthnError::Malformed)?;
        let peek = jsonwebtoken::dangerous::insecure_decode::<Peek>(token).map_err(|_| AuthnError::Malformed)?;
        let iss = peek.claims.iss.ok_or(AuthnError::Invalid("missing_iss"))?;
        let issuer = self.issuers.iter().find(|i| i.config.issuer == iss).ok_or(AuthnError::UnknownIssuer)?;
        let config = &issuer.config;
        if !config.algorithms.contains(&header.alg) {
            return Err(AuthnError::AlgorithmNotAllowed);
        }
        let key = issuer.key_for(header.kid.as_deref()).await.ok_or(AuthnError::UnknownKey)?;

        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = false; // checked below: `aud` or Cognito's `client_id`
        let data = decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            AuthnError::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not_yet_valid",
                ErrorKind::InvalidSignature => "bad_signature",
                ErrorKind::InvalidIssuer => "wrong_issuer",
                ErrorKind::MissingRequiredClaim(_) => "missing_claim",
                ErrorKind::InvalidAlgorithm => "algorithm",
                _ => "invalid",
            })
        })?;
        let claims = data.claims;
        if !config.audiences.is_empty() && !audience_matches(&claims, &config.audiences) {
            return Err(AuthnError::Invalid("wrong_audience"));
        }
        if let Some(expected) = &config.token_use
            && claims.get("token_use").and_then(Value::as_str) != Some(expected.as_str())
        {
            return Err(AuthnError::Invalid("wrong_token_use"));
        }
        let subject = claims
            .get(&self.id_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(AuthnError::Invalid("missing_id_claim"))?
            .to_owned();
        let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok(Identity { issuer: config.issuer.clone(), subject, claims, expires_at, token_digest })
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `aud` (a string or a list) or, for Cognito access tokens, `client_id` is one of
/// the configured audiences.
fn audience_matches(claims: &Map<String, Value>, audiences: &[String]) -> bool {
    let accepted = |v: &Value| v.as_str().is_some_and(|s| audiences.iter().any(|a| a == s));
    let aud = match claims.get("aud") {
        Some(Value::Array(items)) => items.iter().any(accepted),
        Some(value) => accepted(value),
        None => false,
    };
    aud || claims.get("client_id").is_some_and(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_found_case_insensitively() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(http::header::AUTHORIZATION, "bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc.def.ghi"));
        headers.insert(http::header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
        headers.insert(http::header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
    }

    #[test]
    fn audiences_match_aud_or_cognito_client_id() {
        let auds = vec!["client-a".to_owned()];
        let claims = |v: Value| v.as_object().cloned().unwrap();
        assert!(audience_matches(&claims(serde_json::json!({"aud": "client-a"})), &auds));
        assert!(audience_matches(&claims(serde_json::json!({"aud": ["x", "client-a"]})), &auds));
        assert!(audience_matches(&claims(serde_json::json!({"client_id": "client-a"})), &auds));
        assert!(!audience_matches(&claims(serde_json::json!({"aud": "client-b"})), &auds));
        assert!(!audience_matches(&claims(serde_json::json!({})), &auds));
    }
}
