//! Envoy's external authorization: the sidecar as the authorization service of an Envoy
//! (or an Istio mesh, or a gateway built on Envoy) in front of the app, rather than a
//! proxy in the path. Both of Envoy's forms are answered, each on its own listener:
//! [`http`] (`ext_authz.http_listen`, an `http_service`) and [`grpc`]
//! (`ext_authz.grpc_listen`, `envoy.service.auth.v3.Authorization/Check`).
//!
//! One code path: each check is the request Envoy describes, run through the data
//! plane's own phases ([`crate::server::pipeline`], `Purpose::Check`), so routes,
//! authentication, context, decisions and audit events are the data plane's. A check
//! stops before the handler, and a route the sidecar answers itself is never allowed.
//!
//! Only the proxies `ext_authz.allowed_peers` names may ask (loopback by default): what
//! they say of the client is believed, so anyone else is refused before anything is read.

pub mod grpc;
pub mod http;

pub use http::check;

use crate::config::ExtAuthzConfig;
use crate::server::Inbound;

/// Whether the peer of `inbound` may ask; a refusal is logged and counted.
fn admitted(config: &ExtAuthzConfig, inbound: &Inbound) -> bool {
    let admitted = config.admits(inbound.peer.ip());
    if !admitted {
        tracing::warn!(peer = %inbound.peer, "an external authorization check from a peer ext_authz.allowed_peers does not name; refused");
    }
    admitted
}

/// Count a check refused before it reached the data plane's phases.
fn refuse(reason: &'static str) {
    metrics::counter!("authz_ext_authz_refused_total", "reason" => reason).increment(1);
}
