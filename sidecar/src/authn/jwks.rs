//! One issuer's signing keys: fetched from its JWKS URL (or read from a file), held in
//! one atomically replaced key set, refreshed when a token names a key we do not have,
//! at most once per configured interval.
//!
//! A failed refresh keeps the keys we have, so a JWKS outage never stops tokens signed
//! with known keys, and never lets a token with an unknown key through.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;

use crate::config::{IssuerConfig, KeySource};
use crate::http_client::HttpClient;

/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The usable keys of one JWKS.
pub struct KeySet {
    by_kid: HashMap<String, DecodingKey>,
    /// Keys published without a `kid`; tried only for tokens without one.
    without_kid: Vec<DecodingKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("kids", &self.by_kid.keys().collect::<Vec<_>>()).finish()
    }
}

impl KeySet {
    /// Parse a JWKS document, keeping every key jsonwebtoken can verify with (an
    /// unsupported key type is skipped, not an error: issuers publish keys for others).
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut by_kid = HashMap::new();
        let mut without_kid = Vec::new();
        for jwk in &set.keys {
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            match &jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid.clone(), key);
                }
                None => without_kid.push(key),
            }
        }
        if by_kid.is_empty() && without_kid.is_empty() {
            return Err("the JWKS holds no usable key".to_owned());
        }
        Ok(Self { by_kid, without_kid })
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keys of one issuer, with the refresh policy.
pub struct IssuerKeys {
    pub config: IssuerConfig,
    keys: ArcSwapOption<KeySet>,
    /// When we last tried to fetch. A tokio mutex: held across the fetch so concurrent
    /// misses make one request, and the others then see its result.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    client: HttpClient,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys").field("issuer", &self.config.issuer).finish_non_exhaustive()
    }
}

impl IssuerKeys {
    pub fn new(config: IssuerConfig, client: HttpClient) -> Self {
        Self { config, keys: ArcSwapOption::empty(), last_fetch: tokio::sync::Mutex::new(None), client }
    }

    /// Whether a key set has been loaded.
    pub fn has_keys(&self) -> bool {
        self.keys.load().is_some()
    }

    /// Install keys directly (the development issuer, tests).
    pub fn install(&self, keys: KeySet) {
        self.keys.store(Some(Arc::new(keys)));
    }

    fn lookup(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let keys = self.keys.load();
        let keys = keys.as_ref()?;
        match kid {
            Some(kid) => keys.by_kid.get(kid).cloned(),
            None => keys.without_kid.first().cloned().or_else(|| {
                // a single published key may be used by tokens that do not name it
                if keys.by_kid.len() == 1 { keys.by_kid.values().next().cloned() } else { None }
            }),
        }
    }

    /// The key for `kid`, refreshing the JWKS once if it is unknown and the last fetch
    /// is older than the configured interval.
    /// `None` when no key has that `kid` (or no keys are loaded yet).
    pub async fn key_for(&self, kid: Option<&str>) -> Option<DecodingKey> {
        if let Some(key) = self.lookup(kid) {
            return Some(key);
        }
        let mut last = self.last_fetch.lock().await;
        // another request may have refreshed while we waited for the lock
        if let Some(key) = self.lookup(kid) {
            return Some(key);
        }
        if last.is_some_and(|t| t.elapsed() < self.config.refresh_min_interval) {
            return None;
        }
        *last = Some(Instant::now());
        let _ = self.fetch_and_install().await;
        drop(last);
        self.lookup(kid)
    }

    /// Fetch now (start-up, periodic refresh), ignoring the interval. Keeps the old keys
    /// on failure.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_install().await
    }

    async fn fetch_and_install(&self) -> Result<usize, String> {
        let result = match &self.config.keys {
            KeySource::Url(uri) => fetch_url(&self.client, uri, self.config.fetch_timeout).await,
            KeySource::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    std::fs::read(&path).map_err(|e| format!("`{}`: {e}", path.display()))
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
            }
            KeySource::Inline(json) => Ok(json.clone().into_bytes()),
        }
        .and_then(|bytes| KeySet::parse(&bytes));
        match result {
            Ok(keys) => {
                let count = keys.len();
                metrics::counter!("authz_jwks_fetches_total", "issuer" => self.config.issuer.clone(), "result" => "success")
                    .increment(1);
                tracing::info!(issuer = %self.config.issuer, keys = count, "JWKS loaded");
                self.keys.store(Some(Arc::new(keys)));
                Ok(count)
            }
            Err(error) => {
                metrics::counter!("authz_jwks_fetches_total", "issuer" => self.config.issuer.clone(), "result" => "failure")
                    .increment(1);
                tracing::warn!(issuer = %self.config.issuer, %error, keeping = self.has_keys(), "JWKS fetch failed");
                Err(error)
            }
        }
    }
}

async fn fetch_url(client: &HttpClient, uri: &http::Uri, timeout: Duration) -> Result<Vec<u8>, String> {
    let request = http::Request::get(uri.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new().map_err(|never| match never {}).boxed_unsync())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| format!("`{uri}` did not answer within {timeout:?}"))?
        .map_err(|e| format!("`{uri}`: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("`{uri}` answered {}", response.status()));
    }
    let body = tokio::time::timeout(timeout, Limited::new(response.into_body(), MAX_JWKS_BYTES).collect())
        .await
        .map_err(|_| format!("`{uri}` did not send its body within {timeout:?}"))?
        .map_err(|e| format!("`{uri}`: {e}"))?;
    Ok(body.to_bytes().to_vec())
}
