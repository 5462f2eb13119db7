//! Authentication: a bearer JWT, verified against its issuer's keys, becomes an
//! [`Identity`]. Requests with no token or a bad one never reach policy evaluation.
//!
//! Per token: the issuer is chosen by the (unverified) `iss` claim among the configured
//! ones, the algorithm must be on that issuer's allow-list (asymmetric only), the key is
//! found by `kid` (refreshing the JWKS once if unknown) and must allow the token's
//! algorithm (its `alg`, `use` and `key_ops`, see `jwks.rs`), then jsonwebtoken checks
//! the signature, `exp`, `nbf` and `iss`, and this module checks the audience and
//! `token_use`. The audience is the claim that fits the token: a present `aud` must
//! name a configured audience (ID tokens, OIDC access tokens); only a token with no
//! `aud` that says it is a Cognito access token (`token_use: access`) is checked by its
//! `client_id`. Verified tokens are cached (moka, keyed by the token's SHA-256, never
//! the token) until they expire.
//!
//! A principal is bound to its issuer: its id is the issuer's `principal_id_prefix`
//! followed by the subject. The config refuses two issuers with the same prefix, and a
//! token whose id falls inside another issuer's longer prefix is refused, so no two
//! issuers can mint the same principal (unless `issuers_share_principals` says they are
//! one directory). A request with two `Authorization` headers is refused,
//! never "the first wins".

pub(crate) mod dev;
mod jwks;
pub(crate) mod principal;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub(crate) use jwks::{IssuerKeys, KeySet};

use crate::cache::{Bounded, bounded};
use crate::config::{IssuerConfig, PrincipalConfig};
use crate::http_client::HttpClient;
use crate::kept_metrics::kept_counter;

/// Why a request is unauthenticated. Every variant is a 401; the label goes to logs
/// and metrics, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthnError {
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
    #[error("the request has more than one Authorization header")]
    Ambiguous,
}

impl AuthnError {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownIssuer => "unknown_issuer",
            Self::AlgorithmNotAllowed => "algorithm",
            Self::UnknownKey => "unknown_key",
            Self::Invalid(reason) => reason,
            Self::Ambiguous => "ambiguous",
        }
    }
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Identity {
    pub issuer: String,
    /// The value of the configured id claim.
    pub subject: String,
    /// The id of the Cedar principal: the issuer's namespace prefix, then the subject.
    pub principal_id: String,
    pub claims: Map<String, Value>,
    /// Unix seconds.
    pub expires_at: u64,
    /// SHA-256 of the token: a key for what is built from it (never the token).
    pub token_digest: [u8; 32],
}

impl Identity {
    /// The token's `iat` (Unix seconds), when it has one.
    pub(crate) fn issued_at(&self) -> Option<u64> {
        let iat = self.claims.get("iat")?;
        // a fractional or negative `iat` counts as the second before it (or none)
        iat.as_u64().or_else(|| iat.as_f64().filter(|f| *f >= 0.0 && f.is_finite()).map(|f| f as u64))
    }
}

/// How many verified tokens are kept (their identities, a few hundred bytes each).
const VERIFIED_CAPACITY: u64 = 100_000;

/// Verifies tokens for every configured issuer.
pub(crate) struct Authenticator {
    issuers: Vec<Arc<IssuerKeys>>,
    id_claim: String,
    /// Keep each issuer's principals out of the others' longer prefixes (off when the
    /// operator says the issuers are one user directory).
    namespaced: bool,
    /// SHA-256 of a token → its identity, read only until the token expires (an
    /// expired entry is dropped when found; bounded).
    verified: Bounded<[u8; 32], Arc<Identity>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("issuers", &self.issuers).finish_non_exhaustive()
    }
}

/// Now, in Unix seconds (0 before 1970).
pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(serde::Deserialize)]
struct Peek {
    iss: Option<String>,
}

impl Authenticator {
    pub(crate) fn new(issuers: &[IssuerConfig], principal: &PrincipalConfig, client: &HttpClient) -> Self {
        Self {
            issuers: issuers.iter().map(|c| Arc::new(IssuerKeys::new(c.clone(), client.clone()))).collect(),
            id_claim: principal.id_claim.clone(),
            namespaced: !principal.issuers_share_principals,
            verified: bounded(VERIFIED_CAPACITY),
        }
    }

    pub(crate) fn issuers(&self) -> &[Arc<IssuerKeys>] {
        &self.issuers
    }

    /// Every issuer has a key set (readiness).
    pub(crate) fn ready(&self) -> bool {
        self.issuers.iter().all(|i| i.has_keys())
    }

    /// Verify the bearer token of a request.
    pub(crate) async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Identity>, AuthnError> {
        let token = bearer_token(headers)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match self.verified.get(&digest) {
            Some(identity) if identity.expires_at > now_secs() => {
                kept_counter!("authz_token_cache_total", "result" => "hit").increment(1);
                return Ok(identity);
            }
            Some(_) => {
                self.verified.remove(&digest);
            }
            None => {}
        }
        kept_counter!("authz_token_cache_total", "result" => "miss").increment(1);
        // boxed: a token new to the cache is the rare case, and its verification (a key
        // set perhaps fetched) would make every request's future as large
        let identity = Arc::new(Box::pin(self.verify(token, digest)).await?);
        self.verified.insert(digest, identity.clone());
        Ok(identity)
    }

    async fn verify(&self, token: &str, token_digest: [u8; 32]) -> Result<Identity, AuthnError> {
        let header = decode_header(token).map_err(|_| AuthnError::Malformed)?;
        if names_critical_extensions(token) {
            // RFC 7515 §4.1.11: a recipient that does not understand a `crit` extension
            // must reject the token; this verifier understands none (nor RFC 7797's `b64`)
            return Err(AuthnError::Invalid("critical_extension"));
        }
        let peek = jsonwebtoken::dangerous::insecure_decode::<Peek>(token).map_err(|_| AuthnError::Malformed)?;
        let iss = peek.claims.iss.ok_or(AuthnError::Invalid("missing_iss"))?;
        let issuer = self.issuers.iter().find(|i| i.config.issuer == iss).ok_or(AuthnError::UnknownIssuer)?;
        let config = &issuer.config;
        if !config.algorithms.contains(&header.alg) {
            return Err(AuthnError::AlgorithmNotAllowed);
        }
        let key = issuer.key_for(header.kid.as_deref(), header.alg).await.ok_or(AuthnError::UnknownKey)?;

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
        let principal_id = format!("{}{subject}", config.principal_id_prefix);
        if self.namespaced && self.in_another_namespace(config, &principal_id) {
            return Err(AuthnError::Invalid("foreign_namespace"));
        }
        Ok(Identity { issuer: config.issuer.clone(), subject, principal_id, claims, expires_at, token_digest })
    }
}

impl Authenticator {
    /// Whether `principal_id`, minted by `issuer`, lies in another issuer's longer
    /// prefix: with prefixes `""` and `partner/`, the first issuer's subject
    /// `partner/alice` would be the partner's `alice`. Equal prefixes are refused when
    /// the config loads, so this keeps every issuer's principals apart.
    fn in_another_namespace(&self, issuer: &IssuerConfig, principal_id: &str) -> bool {
        let own = &issuer.principal_id_prefix;
        self.issuers.iter().map(|other| &other.config).any(|other| {
            other.issuer != issuer.issuer
                && other.principal_id_prefix.len() > own.len()
                && principal_id.starts_with(&other.principal_id_prefix)
        })
    }
}

/// Whether the token's protected header names `crit` extensions or RFC 7797's `b64`
/// (unencoded payload), neither of which this verifier implements. An unreadable header
/// counts as naming them.
fn names_critical_extensions(token: &str) -> bool {
    use base64::Engine as _;
    let Some(encoded) = token.split('.').next() else { return true };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded) else { return true };
    match serde_json::from_slice::<Map<String, Value>>(&bytes) {
        Ok(header) => header.contains_key("crit") || header.contains_key("b64"),
        Err(_) => true,
    }
}

/// The token of the one `Authorization: Bearer <token>` header (scheme
/// case-insensitive). Two `Authorization` headers are refused: which one a proxy or the
/// upstream would read cannot be known.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthnError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthnError::Missing)?;
    if values.next().is_some() {
        return Err(AuthnError::Ambiguous);
    }
    let value = value.to_str().map_err(|_| AuthnError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthnError::Missing)?;
    let token = token.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() { Ok(token) } else { Err(AuthnError::Missing) }
}

/// The token's audience is one of the configured ones. A present `aud` (a string or a
/// list) decides alone, whatever else the token says; without `aud`, only a Cognito
/// access token (`token_use: access`) is checked by its `client_id`.
fn audience_matches(claims: &Map<String, Value>, audiences: &[String]) -> bool {
    let accepted = |v: &Value| v.as_str().is_some_and(|s| audiences.iter().any(|a| a == s));
    match claims.get("aud") {
        Some(Value::Array(items)) => items.iter().any(accepted),
        Some(value) => accepted(value),
        None => {
            claims.get("token_use").and_then(Value::as_str) == Some("access")
                && claims.get("client_id").is_some_and(accepted)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A verified token's identity is kept by the token's digest; once the token's
    /// `exp` has passed, the kept identity is never handed out again, and is dropped.
    #[tokio::test]
    async fn a_kept_identity_is_not_read_once_its_token_has_expired() {
        let authenticator =
            Authenticator { issuers: Vec::new(), id_claim: "sub".into(), namespaced: true, verified: bounded(16) };
        let kept = |token: &str, expires_at: u64| {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            let identity = Identity {
                issuer: "https://issuer.example".into(),
                subject: "user-1".into(),
                principal_id: "user-1".into(),
                claims: Map::new(),
                expires_at,
                token_digest: digest,
            };
            authenticator.verified.insert(digest, Arc::new(identity));
            digest
        };
        let bearer = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
            headers
        };
        // still valid: read from the cache (there is no issuer to verify it again)
        kept("a.b.live", now_secs() + 60);
        assert_eq!(
            authenticator.authenticate(&bearer("a.b.live")).await.map(|i| i.subject.clone()).ok().as_deref(),
            Some("user-1")
        );
        // expired a second ago, or this very second: verified again, which fails here
        for (token, expires_at) in [("a.b.past", now_secs() - 1), ("a.b.now", now_secs())] {
            let digest = kept(token, expires_at);
            assert!(authenticator.authenticate(&bearer(token)).await.is_err(), "{token} was read after it expired");
            assert!(authenticator.verified.get(&digest).is_none(), "{token} is still kept");
        }
    }

    #[test]
    fn bearer_tokens_are_found_case_insensitively() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), Err(AuthnError::Missing));
        headers.insert(http::header::AUTHORIZATION, "bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer_token(&headers), Ok("abc.def.ghi"));
        headers.insert(http::header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(bearer_token(&headers), Err(AuthnError::Missing));
        headers.insert(http::header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&headers), Err(AuthnError::Missing));
    }

    #[test]
    fn critical_header_extensions_are_refused() {
        use base64::Engine as _;
        let token = |header: Value| {
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!("{}.{}.sig", b64.encode(header.to_string()), b64.encode("{}"))
        };
        assert!(!names_critical_extensions(&token(serde_json::json!({"alg": "RS256", "kid": "k"}))));
        assert!(names_critical_extensions(&token(serde_json::json!({"alg": "RS256", "crit": ["exp"], "exp": 1}))));
        assert!(names_critical_extensions(&token(serde_json::json!({"alg": "RS256", "b64": false, "crit": ["b64"]}))));
        assert!(names_critical_extensions("!!!.e30.sig"));
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let mut headers = HeaderMap::new();
        headers.append(http::header::AUTHORIZATION, "Bearer a.b.c".parse().unwrap());
        headers.append(http::header::AUTHORIZATION, "Bearer d.e.f".parse().unwrap());
        assert_eq!(bearer_token(&headers), Err(AuthnError::Ambiguous));
    }

    #[test]
    fn audiences_match_aud_or_cognito_client_id() {
        let auds = vec!["client-a".to_owned()];
        let claims = |v: Value| v.as_object().cloned().unwrap();
        assert!(audience_matches(&claims(serde_json::json!({"aud": "client-a"})), &auds));
        assert!(audience_matches(&claims(serde_json::json!({"aud": ["x", "client-a"]})), &auds));
        assert!(audience_matches(&claims(serde_json::json!({"client_id": "client-a", "token_use": "access"})), &auds));
        assert!(!audience_matches(&claims(serde_json::json!({"aud": "client-b"})), &auds));
        assert!(!audience_matches(&claims(serde_json::json!({})), &auds));
        // a present `aud` decides: `client_id` cannot stand in for another API's audience
        assert!(!audience_matches(
            &claims(serde_json::json!({"aud": "other-api", "client_id": "client-a", "token_use": "access"})),
            &auds
        ));
        // `client_id` alone counts only on a Cognito access token
        assert!(!audience_matches(&claims(serde_json::json!({"client_id": "client-a"})), &auds));
        assert!(!audience_matches(&claims(serde_json::json!({"client_id": "client-a", "token_use": "id"})), &auds));
    }
}
