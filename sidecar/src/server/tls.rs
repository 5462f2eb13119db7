//! TLS for the data plane: a certificate chain and key from PEM files, and optionally a
//! CA bundle whose client certificates are required (mTLS). ALPN offers h2 and http/1.1.
//!
//! The files are read again every `reload_interval` ([`ReloadingTls::watch`]): when
//! their bytes change and they still make a valid configuration (the key matching the
//! certificate), new connections get it; connections already open keep theirs. A set
//! that does not load (a key written before its certificate, say) is logged, counted
//! and retried at the next look, and the last good one keeps serving.

use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::Digest;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Why the data plane's TLS cannot be set up (checked before a port is bound).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate `{path}`: {message}")]
    Certificate { path: String, message: String },
    #[error("TLS key `{path}`: {message}")]
    Key { path: String, message: String },
    #[error("client CA `{path}`: {message}")]
    ClientCa { path: String, message: String },
    #[error("TLS certificate and key: {0}")]
    Config(String),
}

/// The data plane's TLS, read again from its files while it serves.
pub struct ReloadingTls {
    files: TlsFiles,
    current: ArcSwap<rustls::ServerConfig>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls").field("cert", &self.files.cert).finish_non_exhaustive()
    }
}

impl ReloadingTls {
    /// Load the files (an error names the one that does not load).
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(files)?;
        Ok(Self { files: files.clone(), current: ArcSwap::from_pointee(config) })
    }

    /// An acceptor for one new connection, with the configuration loaded last.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Read the files every `reload_interval` until `shutdown`, and swap in what they
    /// say when it changed and loads.
    pub async fn watch(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let interval = self.files.reload_interval;
        if interval.is_zero() {
            return;
        }
        let mut seen = self.fingerprint().await;
        // the files that last failed to load (`Some(None)`: could not be read)
        let mut failed: Option<Option<[u8; 32]>> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let now = self.fingerprint().await;
            if now == seen || failed == Some(now) {
                continue;
            }
            let files = self.files.clone();
            let loaded = tokio::task::spawn_blocking(move || server_config(&files))
                .await
                .unwrap_or_else(|e| Err(TlsError::Config(format!("the reload panicked: {e}"))));
            match loaded {
                Ok(config) => {
                    self.current.store(Arc::new(config));
                    seen = now;
                    failed = None;
                    metrics::counter!("authz_tls_reloads_total", "result" => "success").increment(1);
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded: new connections use it");
                }
                Err(error) => {
                    // reported once per distinct set of files, tried again when they change
                    metrics::counter!("authz_tls_reloads_total", "result" => "failure").increment(1);
                    tracing::error!(%error, "TLS files changed but do not load; the previous certificate keeps serving");
                    failed = Some(now);
                }
            }
        }
    }

    /// A digest of the files' bytes; `None` when one cannot be read (being replaced).
    async fn fingerprint(&self) -> Option<[u8; 32]> {
        let paths: Vec<std::path::PathBuf> =
            [Some(&self.files.cert), Some(&self.files.key), self.files.client_ca.as_ref()]
                .into_iter()
                .flatten()
                .cloned()
                .collect();
        tokio::task::spawn_blocking(move || {
            let mut digest = sha2::Sha256::new();
            for path in paths {
                let bytes = std::fs::read(path).ok()?;
                digest.update(u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_le_bytes());
                digest.update(bytes);
            }
            Some(digest.finalize().into())
        })
        .await
        .ok()
        .flatten()
    }
}

fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let cert_error = |message: String| TlsError::Certificate { path: files.cert.display().to_string(), message };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("it holds no certificate".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError::Key { path: files.key.display().to_string(), message: e.to_string() })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_error = |e: &dyn std::fmt::Display| TlsError::ClientCa {
                path: ca.display().to_string(),
                message: e.to_string(),
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| ca_error(&e))? {
                let cert = cert.map_err(|e| ca_error(&e))?;
                roots.add(cert).map_err(|e| ca_error(&e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ca_error(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
