//! `[ext_authz]`: the sidecar as the external authorization service of an Envoy (or an
//! Istio mesh, or a gateway built on Envoy) in front of the app, rather than a proxy in
//! the path. Checks go through the data plane's own phases (authentication, routing,
//! context, the decision and its audit event), stopping before the handler.

use std::net::SocketAddr;

use serde::Deserialize;

/// What the file says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExtAuthz {
    /// Where Envoy's HTTP `ext_authz` service (`http_service`) asks.
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// Where Envoy's gRPC `ext_authz` service (`grpc_service`) asks:
    /// `envoy.service.auth.v3.Authorization/Check` over HTTP/2 without TLS.
    #[serde(default)]
    pub grpc_listen: Option<SocketAddr>,
    /// The `path_prefix` of Envoy's `http_service`: stripped from each check's path.
    #[serde(default)]
    pub path_prefix: String,
    /// Who may ask: the proxies, whose word on the client's address (the forwarded-for
    /// header) and VPC endpoint is then taken as a trusted proxy's. Loopback by default
    /// (Envoy beside the sidecar); anyone else is refused.
    #[serde(default = "loopback")]
    pub allowed_peers: Vec<ipnet::IpNet>,
}

fn loopback() -> Vec<ipnet::IpNet> {
    ["127.0.0.0/8", "::1/128"].iter().filter_map(|net| net.parse().ok()).collect()
}

/// Validated.
#[derive(Debug, Clone)]
pub struct ExtAuthzConfig {
    /// At least one of the two listeners is set.
    pub http_listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    /// Empty, or `/` and more, without a trailing `/`.
    pub path_prefix: String,
    pub allowed_peers: Vec<ipnet::IpNet>,
}

impl ExtAuthzConfig {
    /// Whether `peer` may ask.
    pub fn admits(&self, peer: std::net::IpAddr) -> bool {
        let peer = crate::server::forwarded::canonical_ip(peer);
        self.allowed_peers.iter().any(|net| net.contains(&peer))
    }
}

/// `raw` checked; the error names the key and what is wrong.
pub(super) fn parse_ext_authz(raw: &RawExtAuthz) -> Result<ExtAuthzConfig, (String, String)> {
    let prefix = raw.path_prefix.as_str();
    let well_formed = prefix.is_empty()
        || (prefix.starts_with('/')
            && !prefix.ends_with('/')
            && prefix.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%')));
    if !well_formed {
        return Err((
            "ext_authz.path_prefix".into(),
            format!("`{prefix}` is not a path prefix: empty, or `/` and more, without a trailing `/`, `?`, `#` or `%`"),
        ));
    }
    if raw.http_listen.is_none() && raw.grpc_listen.is_none() {
        return Err((
            "ext_authz".into(),
            "names neither `http_listen` nor `grpc_listen`: Envoy could ask nowhere".into(),
        ));
    }
    if raw.http_listen.is_some_and(|addr| addr.port() != 0) && raw.http_listen == raw.grpc_listen {
        return Err(("ext_authz.grpc_listen".into(), "is the same address as `http_listen`".into()));
    }
    if raw.allowed_peers.is_empty() {
        return Err(("ext_authz.allowed_peers".into(), "must name at least one network: no one could ask".into()));
    }
    Ok(ExtAuthzConfig {
        http_listen: raw.http_listen,
        grpc_listen: raw.grpc_listen,
        path_prefix: prefix.to_owned(),
        allowed_peers: raw.allowed_peers.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(path_prefix: &str, allowed_peers: &[&str]) -> RawExtAuthz {
        RawExtAuthz {
            http_listen: Some("127.0.0.1:9191".parse().unwrap()),
            grpc_listen: None,
            path_prefix: path_prefix.to_owned(),
            allowed_peers: allowed_peers.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_prefix_is_a_path_without_a_trailing_slash_and_someone_may_ask() {
        assert!(parse_ext_authz(&raw("", &["127.0.0.1/32"])).is_ok());
        assert!(parse_ext_authz(&raw("/ext-authz", &["127.0.0.1/32"])).is_ok());
        for bad in ["check", "/check/", "/", "/a?b", "/a%2f", "/a b"] {
            let (key, _) = parse_ext_authz(&raw(bad, &["127.0.0.1/32"])).unwrap_err();
            assert_eq!(key, "ext_authz.path_prefix", "{bad}");
        }
        let (key, _) = parse_ext_authz(&raw("", &[])).unwrap_err();
        assert_eq!(key, "ext_authz.allowed_peers");
    }

    #[test]
    fn one_listener_or_both_on_different_addresses() {
        let peers = ["127.0.0.1/32"];
        let grpc = Some("127.0.0.1:9192".parse().unwrap());
        assert!(parse_ext_authz(&RawExtAuthz { grpc_listen: grpc, ..raw("", &peers) }).is_ok());
        assert!(parse_ext_authz(&RawExtAuthz { http_listen: None, grpc_listen: grpc, ..raw("", &peers) }).is_ok());
        let (key, _) = parse_ext_authz(&RawExtAuthz { http_listen: None, ..raw("", &peers) }).unwrap_err();
        assert_eq!(key, "ext_authz");
        let same = RawExtAuthz { grpc_listen: Some("127.0.0.1:9191".parse().unwrap()), ..raw("", &peers) };
        assert_eq!(parse_ext_authz(&same).unwrap_err().0, "ext_authz.grpc_listen");
    }

    #[test]
    fn loopback_is_admitted_by_default_in_both_families_and_as_mapped_v4() {
        let config = parse_ext_authz(&RawExtAuthz { allowed_peers: loopback(), ..raw("", &[]) }).unwrap();
        for peer in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(config.admits(peer.parse().unwrap()), "{peer}");
        }
        assert!(!config.admits("10.0.0.1".parse().unwrap()));
    }
}
