//! The development token issuer of `serve --dev`: a P-256 key made at start, kept in
//! memory only, and a loopback-only endpoint that mints tokens with it. Never for
//! production: `serve` refuses it on any non-loopback address and warns at start.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::ecdsa::SigningKey;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{Value, json};

use crate::config::{IssuerConfig, KeySource};

pub(crate) const DEV_ISSUER: &str = "urn:authz-sidecar:dev";
const DEV_KID: &str = "authz-sidecar-dev";

pub struct DevIssuer {
    key: EncodingKey,
    jwks: String,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer").finish_non_exhaustive()
    }
}

/// Why the development issuer cannot make its key or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("development issuer: {0}")]
pub struct DevIssuerError(String);

fn dev_error(e: impl std::fmt::Display) -> DevIssuerError {
    DevIssuerError(e.to_string())
}

impl DevIssuer {
    pub fn generate() -> Result<Self, DevIssuerError> {
        let signing = SigningKey::random(&mut rand_core::OsRng);
        let pem = signing.to_pkcs8_pem(LineEnding::LF).map_err(dev_error)?;
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(dev_error)?;
        let public: Value =
            serde_json::from_str(&p256::PublicKey::from(signing.verifying_key()).to_jwk_string()).map_err(dev_error)?;
        let mut jwk = public.as_object().cloned().unwrap_or_default();
        jwk.insert("kid".into(), json!(DEV_KID));
        jwk.insert("alg".into(), json!("ES256"));
        jwk.insert("use".into(), json!("sig"));
        Ok(Self { key, jwks: json!({"keys": [jwk]}).to_string() })
    }

    /// The issuer entry that verifies this issuer's tokens.
    pub fn issuer_config(&self) -> IssuerConfig {
        IssuerConfig {
            issuer: DEV_ISSUER.to_owned(),
            keys: KeySource::Inline(self.jwks.clone()),
            algorithms: vec![Algorithm::ES256],
            audiences: Vec::new(),
            token_use: None,
            leeway: Duration::from_secs(5),
            refresh_min_interval: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(1),
            principal_id_prefix: String::new(),
        }
    }

    /// A token for `user` in `groups`, valid for `ttl`, shaped like a Cognito access token.
    pub fn mint(&self, user: &str, groups: &[String], ttl: Duration) -> Result<String, DevIssuerError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(dev_error)?.as_secs();
        let claims = json!({
            "iss": DEV_ISSUER, "sub": user, "username": user, "cognito:groups": groups,
            "token_use": "access", "iat": now, "exp": now + ttl.as_secs(),
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(DEV_KID.to_owned());
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(dev_error)
    }
}
