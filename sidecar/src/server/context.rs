//! What the sidecar knows about a call, for the Cedar context: the source IP, the VPC
//! endpoint it came through, the time, the method and path.
//!
//! The source IP is the socket peer. Only when that peer is a configured trusted proxy
//! is the forwarded-for header read (right to left, skipping trusted proxies, so a
//! client cannot put an address of its choosing at the front), and only then is the VPC
//! endpoint header believed. From anyone else both headers are ignored.

use std::net::IpAddr;
use std::time::SystemTime;

use http::HeaderMap;

use super::router::Matched;
use crate::config::{ContextConfig, ContextSource};

/// Where a call came from, as far as the sidecar can trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub peer: IpAddr,
    pub peer_trusted: bool,
    pub source_ip: IpAddr,
    pub vpce: Option<String>,
}

fn trusted(config: &ContextConfig, ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    config.trusted_proxies.iter().any(|net| net.contains(&ip))
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) as the IPv4 address it is.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

pub fn origin(config: &ContextConfig, peer: IpAddr, headers: &HeaderMap) -> Origin {
    let peer = canonical_ip(peer);
    if !trusted(config, peer) {
        return Origin { peer, peer_trusted: false, source_ip: peer, vpce: None };
    }
    // Every forwarded-for header, in order, as one list of hops.
    let hops: Vec<IpAddr> = headers
        .get_all(&config.forwarded_for_header)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .map(canonical_ip)
        .collect();
    let source_ip = hops.iter().rev().find(|ip| !trusted(config, **ip)).or(hops.first()).copied().unwrap_or(peer);
    let vpce = headers
        .get(&config.vpce_header)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    Origin { peer, peer_trusted: true, source_ip, vpce }
}

/// The Cedar context attributes of a route's request, as strings (the schema says what
/// each becomes; see [`crate::authz::context_from_strings`]). Absent values (no VPC
/// endpoint, a missing header) are left out.
pub fn context(
    sources: &[(String, ContextSource)],
    matched: &Matched,
    origin: &Origin,
    method: &http::Method,
    path: &str,
    headers: &HeaderMap,
    now: SystemTime,
) -> Vec<(String, String)> {
    let mut pairs = Vec::with_capacity(sources.len());
    for (name, source) in sources {
        let value = match source {
            ContextSource::SourceIp => Some(origin.source_ip.to_string()),
            ContextSource::Vpce => origin.vpce.clone(),
            ContextSource::RequestTime => Some(humantime::format_rfc3339_seconds(now).to_string()),
            ContextSource::Method => Some(method.as_str().to_owned()),
            ContextSource::Path => Some(path.to_owned()),
            ContextSource::PathParam(param) => matched.param(param).map(str::to_owned),
            ContextSource::Header(header) => headers.get(header).and_then(|v| v.to_str().ok()).map(str::to_owned),
        };
        if let Some(value) = value {
            pairs.push((name.clone(), value));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(trusted: &[&str]) -> ContextConfig {
        ContextConfig {
            vpce_header: http::HeaderName::from_static("x-amzn-vpce-id"),
            forwarded_for_header: http::HeaderName::from_static("x-forwarded-for"),
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        map
    }

    #[test]
    fn an_untrusted_peer_cannot_set_the_source_ip_or_endpoint() {
        let h = headers(&[("x-forwarded-for", "10.1.2.3"), ("x-amzn-vpce-id", "vpce-0a1a000000000001a")]);
        let o = origin(&config(&["10.0.0.0/8"]), "192.168.1.5".parse().unwrap(), &h);
        assert_eq!(o.source_ip, "192.168.1.5".parse::<IpAddr>().unwrap());
        assert_eq!(o.vpce, None);
        assert!(!o.peer_trusted);
    }

    #[test]
    fn a_trusted_proxy_passes_the_rightmost_untrusted_hop() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 10.9.9.9"), ("x-forwarded-for", "10.0.0.7")]);
        // the client forged 6.6.6.6; the proxies 10.0.0.7 and 10.9.9.9 are trusted... the
        // last untrusted hop is what the first trusted proxy saw
        let o = origin(&config(&["10.0.0.0/8"]), "10.0.0.1".parse().unwrap(), &h);
        assert_eq!(o.source_ip, "6.6.6.6".parse::<IpAddr>().unwrap());
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 172.20.1.1, 10.0.0.7")]);
        let o = origin(&config(&["10.0.0.0/8"]), "10.0.0.1".parse().unwrap(), &h);
        assert_eq!(o.source_ip, "172.20.1.1".parse::<IpAddr>().unwrap(), "the forged front entry is skipped");
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_proxies() {
        let h = headers(&[("x-forwarded-for", "172.20.1.1"), ("x-amzn-vpce-id", "vpce-1")]);
        let o = origin(&config(&["127.0.0.1/32"]), "::ffff:127.0.0.1".parse().unwrap(), &h);
        assert!(o.peer_trusted);
        assert_eq!(o.source_ip, "172.20.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(o.vpce.as_deref(), Some("vpce-1"));
    }
}
