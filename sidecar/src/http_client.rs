//! The outbound HTTP client (JWKS fetches, forwarding): hyper-util's pooled client over
//! plain TCP or rustls, sending the one [`Body`] type.

use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::body::Body;

pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Idle connections kept per upstream host.
pub(crate) const MAX_IDLE_PER_HOST: usize = 256;

/// How long an idle connection is kept.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A client that speaks http and https (webpki roots), HTTP/1.1 and HTTP/2.
pub(crate) fn client(connect_timeout: Duration) -> Result<HttpClient, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let https = HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    // idle pooled connections are descriptors too: keep a bounded number per host
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .build(https))
}
