//! One issuer's signing keys: fetched from its JWKS URL (or read from a file), held in
//! one atomically replaced key set, refreshed when a token names a key we do not have,
//! at most once per configured interval.
//!
//! A failed refresh keeps the keys we have, so a JWKS outage never stops tokens signed
//! with known keys, and never lets a token with an unknown key through.
//!
//! Each published key is read on its own and kept only if it can verify signatures:
//! `use`, when present, must be `sig`; `key_ops`, when present, must hold `verify`; and
//! a key whose `alg` is set verifies only tokens with that `alg`. A key the library
//! cannot use is skipped with a log line and `authz_jwks_keys_skipped_total`; the rest
//! of the set still loads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http_body_util::{BodyExt, Empty, Limited};
use std::str::FromStr;

use jsonwebtoken::jwk::{Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::{IssuerConfig, KeySource};
use crate::http_client::HttpClient;

/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Why an issuer's keys could not be loaded (the keys already held are kept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeysError {
    #[error("not a JWKS document: {0}")]
    NotJwks(String),
    #[error("the JWKS holds no usable key ({skipped} skipped)")]
    NoUsableKey { skipped: usize },
    #[error("`{source_name}`: {message}")]
    Fetch { source_name: String, message: String },
}

/// One verification key and the algorithm its JWK pins (its `alg`), if any.
#[derive(Clone)]
struct Key {
    decoding: DecodingKey,
    alg: Option<Algorithm>,
}

impl Key {
    /// The key, if it may verify a token signed with `alg`.
    fn for_alg(&self, alg: Algorithm) -> Option<DecodingKey> {
        self.alg.is_none_or(|pinned| pinned == alg).then(|| self.decoding.clone())
    }
}

/// The usable keys of one JWKS.
pub(crate) struct KeySet {
    by_kid: HashMap<String, Key>,
    /// Keys published without a `kid`; tried only for tokens without one.
    without_kid: Vec<Key>,
    /// Keys left out, and why (for the log line and metric).
    skipped: Vec<(String, &'static str)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("kids", &self.by_kid.keys().collect::<Vec<_>>()).finish()
    }
}

/// Why a published key cannot verify tokens, or `None` when it can. A key that says
/// it is for something else (`use` other than `sig`, `key_ops` without `verify`) is left
/// out even when its type would work.
fn unusable(jwk: &Jwk) -> Option<&'static str> {
    if let Some(key_use) = &jwk.common.public_key_use
        && *key_use != PublicKeyUse::Signature
    {
        return Some("use_not_sig");
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Some("key_ops_without_verify");
    }
    None
}

impl KeySet {
    /// Parse a JWKS document, keeping every key that can verify signatures. Each key is
    /// read on its own: one the library cannot use (another curve, an `OKP` key, an
    /// unknown `alg`, an encryption key) is skipped and reported, never a reason to
    /// drop the whole set. Only a set with no usable key at all is an error.
    pub(crate) fn parse(json: &[u8]) -> Result<Self, KeysError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(json).map_err(|e| KeysError::NotJwks(e.to_string()))?;
        let mut by_kid = HashMap::new();
        let mut without_kid = Vec::new();
        let mut skipped = Vec::new();
        for (index, value) in document.keys.into_iter().enumerate() {
            let label = value
                .get("kid")
                .and_then(serde_json::Value::as_str)
                .map_or_else(|| format!("#{index}"), |kid| kid.chars().take(64).collect());
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(_) => {
                    skipped.push((label, "unsupported_key"));
                    continue;
                }
            };
            if let Some(reason) = unusable(&jwk) {
                skipped.push((label, reason));
                continue;
            }
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(pinned) => match Algorithm::from_str(&pinned.to_string()) {
                    Ok(alg) => Some(alg),
                    Err(_) => {
                        skipped.push((label, "not_a_signing_alg"));
                        continue;
                    }
                },
            };
            let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
                skipped.push((label, "unsupported_key"));
                continue;
            };
            let key = Key { decoding, alg };
            match &jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid.clone(), key);
                }
                None => without_kid.push(key),
            }
        }
        if by_kid.is_empty() && without_kid.is_empty() {
            return Err(KeysError::NoUsableKey { skipped: skipped.len() });
        }
        Ok(Self { by_kid, without_kid, skipped })
    }

    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    /// The keys left out of the set, with the reason.
    pub(crate) fn skipped(&self) -> &[(String, &'static str)] {
        &self.skipped
    }
}

/// Keys of one issuer, with the refresh policy.
pub(crate) struct IssuerKeys {
    pub config: IssuerConfig,
    keys: ArcSwapOption<KeySet>,
    /// When we last tried to fetch. A tokio mutex: held across the fetch so concurrent
    /// misses make one request, and the others then see its result.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Why the last fetch failed, until one succeeds (for `/readyz`).
    last_error: ArcSwapOption<String>,
    client: HttpClient,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys").field("issuer", &self.config.issuer).finish_non_exhaustive()
    }
}

impl IssuerKeys {
    pub(crate) fn new(config: IssuerConfig, client: HttpClient) -> Self {
        Self {
            config,
            keys: ArcSwapOption::empty(),
            last_fetch: tokio::sync::Mutex::new(None),
            last_error: ArcSwapOption::empty(),
            client,
        }
    }

    /// Why the last fetch failed, if it did.
    pub(crate) fn last_error(&self) -> Option<Arc<String>> {
        self.last_error.load_full()
    }

    /// Whether a key set has been loaded.
    pub(crate) fn has_keys(&self) -> bool {
        self.keys.load().is_some()
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.load();
        let keys = keys.as_ref()?;
        match kid {
            Some(kid) => keys.by_kid.get(kid)?.for_alg(alg),
            None => keys.without_kid.iter().find_map(|key| key.for_alg(alg)).or_else(|| {
                // a single published key may be used by tokens that do not name it
                if keys.by_kid.len() == 1 { keys.by_kid.values().next()?.for_alg(alg) } else { None }
            }),
        }
    }

    /// The key for `kid` that may verify `alg` (a key whose JWK pins another `alg` is
    /// no key for this token), refreshing the JWKS once if there is none and the last
    /// fetch is older than the configured interval.
    /// `None` when no such key is published (or no keys are loaded yet).
    pub(crate) async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        if let Some(key) = self.lookup(kid, alg) {
            return Some(key);
        }
        let mut last = self.last_fetch.lock().await;
        // another request may have refreshed while we waited for the lock
        if let Some(key) = self.lookup(kid, alg) {
            return Some(key);
        }
        if last.is_some_and(|t| t.elapsed() < self.config.refresh_min_interval) {
            return None;
        }
        *last = Some(Instant::now());
        let _ = self.fetch_and_install().await;
        drop(last);
        self.lookup(kid, alg)
    }

    /// Fetch now (start-up, periodic refresh), ignoring the interval. Keeps the old keys
    /// on failure.
    pub(crate) async fn refresh(&self) -> Result<usize, KeysError> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_install().await
    }

    async fn fetch_and_install(&self) -> Result<usize, KeysError> {
        let result = match &self.config.keys {
            KeySource::Url(uri) => fetch_url(&self.client, uri, self.config.fetch_timeout).await,
            KeySource::Discovery(document) => {
                match discover(&self.client, document, &self.config.issuer, self.config.fetch_timeout).await {
                    Ok(jwks) => fetch_url(&self.client, &jwks, self.config.fetch_timeout).await,
                    Err(e) => Err(e),
                }
            }
            KeySource::File(path) => {
                let path = path.clone();
                let fetch_error =
                    |message: String| KeysError::Fetch { source_name: path.display().to_string(), message };
                match tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || std::fs::read(&path)
                })
                .await
                {
                    Ok(Ok(bytes)) => Ok(bytes),
                    Ok(Err(e)) => Err(fetch_error(e.to_string())),
                    Err(e) => Err(fetch_error(e.to_string())),
                }
            }
            KeySource::Inline(json) => Ok(json.clone().into_bytes()),
        }
        .and_then(|bytes| KeySet::parse(&bytes));
        match result {
            Ok(keys) => {
                let count = keys.len();
                for (kid, reason) in keys.skipped() {
                    tracing::warn!(issuer = %self.config.issuer, kid = %kid, reason, "JWKS key skipped: it cannot verify tokens");
                    metrics::counter!("authz_jwks_keys_skipped_total", "issuer" => self.config.issuer.clone(), "reason" => *reason)
                        .increment(1);
                }
                metrics::counter!("authz_jwks_fetches_total", "issuer" => self.config.issuer.clone(), "result" => "success")
                    .increment(1);
                tracing::info!(issuer = %self.config.issuer, keys = count, "JWKS loaded");
                self.keys.store(Some(Arc::new(keys)));
                self.last_error.store(None);
                Ok(count)
            }
            Err(error) => {
                metrics::counter!("authz_jwks_fetches_total", "issuer" => self.config.issuer.clone(), "result" => "failure")
                    .increment(1);
                tracing::warn!(issuer = %self.config.issuer, %error, keeping = self.has_keys(), "JWKS fetch failed");
                self.last_error.store(Some(Arc::new(error.to_string())));
                Err(error)
            }
        }
    }
}

async fn fetch_url(client: &HttpClient, uri: &http::Uri, timeout: Duration) -> Result<Vec<u8>, KeysError> {
    let fail = |message: String| KeysError::Fetch { source_name: uri.to_string(), message };
    let request = http::Request::get(uri.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new().map_err(|never| match never {}).boxed_unsync())
        .map_err(|e| fail(e.to_string()))?;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| fail(format!("no answer within {timeout:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("answered {}", response.status())));
    }
    let body = tokio::time::timeout(timeout, Limited::new(response.into_body(), MAX_JWKS_BYTES).collect())
        .await
        .map_err(|_| fail(format!("no body within {timeout:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    Ok(body.to_bytes().to_vec())
}

/// The `jwks_uri` of `issuer`'s discovery document at `document`. The document must name
/// exactly the configured issuer (OpenID Connect Discovery 1.0, section 4.3: a document
/// served for another issuer would hand it this one's tokens), and its keys must be
/// fetched over HTTPS (HTTP on loopback).
async fn discover(
    client: &HttpClient,
    document: &http::Uri,
    issuer: &str,
    timeout: Duration,
) -> Result<http::Uri, KeysError> {
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
    }
    let fail = |message: String| KeysError::Fetch { source_name: document.to_string(), message };
    let bytes = fetch_url(client, document, timeout).await?;
    let found: Discovery =
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("not an OpenID Connect discovery document: {e}")))?;
    if found.issuer != issuer {
        return Err(fail(format!("the document is for issuer `{}`, not `{issuer}`", found.issuer)));
    }
    let jwks = http::Uri::from_str(&found.jwks_uri).map_err(|e| fail(format!("`jwks_uri` is not a URL: {e}")))?;
    if !crate::config::secure_or_loopback(&jwks) {
        return Err(fail(format!("`jwks_uri` `{jwks}` is not https: keys are never fetched in the clear")));
    }
    Ok(jwks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    fn rsa(extra: serde_json::Value) -> serde_json::Value {
        let mut key = serde_json::json!({"kty": "RSA", "n": RSA_N, "e": "AQAB"});
        if let (Some(key), Some(extra)) = (key.as_object_mut(), extra.as_object()) {
            key.extend(extra.clone());
        }
        key
    }

    fn parse(keys: Vec<serde_json::Value>) -> Result<KeySet, KeysError> {
        KeySet::parse(serde_json::json!({"keys": keys}).to_string().as_bytes())
    }

    #[test]
    fn keys_the_library_cannot_use_are_skipped_not_fatal() {
        let set = parse(vec![
            serde_json::json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AQ", "y": "AQ"}),
            serde_json::json!({"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": "AQ"}),
            serde_json::json!({"kty": "oct", "kid": "weird"}),
            rsa(serde_json::json!({"kid": "enc", "use": "enc"})),
            rsa(serde_json::json!({"kid": "wrap", "key_ops": ["wrapKey"]})),
            rsa(serde_json::json!({"kid": "oaep", "alg": "RSA-OAEP"})),
            rsa(serde_json::json!({"kid": "future", "alg": "RS999"})),
            rsa(serde_json::json!({"kid": "good", "use": "sig", "alg": "RS256"})),
        ])
        .unwrap();
        assert!(set.by_kid.contains_key("good"), "{set:?}");
        for kid in ["x25519", "weird", "enc", "wrap", "oaep", "future"] {
            assert!(!set.by_kid.contains_key(kid), "{kid} should be skipped: {set:?}");
        }
        let reasons: Vec<&str> = set.skipped().iter().map(|(_, r)| *r).collect();
        assert!(reasons.contains(&"use_not_sig") && reasons.contains(&"key_ops_without_verify"), "{reasons:?}");
        assert!(parse(vec![rsa(serde_json::json!({"kid": "enc", "use": "enc"}))]).is_err());
    }

    #[test]
    fn a_key_pinned_to_an_alg_verifies_only_that_alg() {
        let key = Key { decoding: DecodingKey::from_secret(b"x"), alg: Some(Algorithm::RS256) };
        assert!(key.for_alg(Algorithm::RS256).is_some());
        assert!(key.for_alg(Algorithm::PS256).is_none());
        let open = Key { alg: None, ..key };
        assert!(open.for_alg(Algorithm::PS256).is_some());
    }
}
