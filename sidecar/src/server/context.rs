//! What the sidecar knows about a call, for the Cedar context: the source IP, the VPC
//! endpoint it came through, the time, the method and path.
//!
//! The source IP is the socket peer. Only when that peer is a configured trusted proxy
//! is the forwarded-for header read (right to left, skipping trusted proxies, so a
//! client cannot put an address of its choosing at the front; a hop that cannot be read
//! stops the walk and refuses the request, see [`super::forwarded`]), and only then is
//! the VPC endpoint header believed. From anyone else both headers are ignored (and the
//! proxy removes them before the upstream).
//!
//! Headers the decision reads (the VPC endpoint, headers a route maps into the context)
//! must appear at most once: two values are refused with 400, never "the first wins".

use std::net::IpAddr;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName};

use super::forwarded::{self, canonical_ip};
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

/// Why the headers that say where a call came from were refused (400): the sidecar
/// never resolves an ambiguity in the caller's favour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("a forwarded-for hop written by a trusted proxy cannot be read as an address")]
    UnreadableForwardedFor,
    #[error("the request has more than one `{0}` header")]
    Duplicate(HeaderName),
    #[error("the `{0}` header is not one visible-ASCII value")]
    Unreadable(HeaderName),
}

impl OriginError {
    /// The client-facing reason (no header values).
    pub fn public(&self) -> &'static str {
        match self {
            Self::UnreadableForwardedFor => "a forwarded-for hop from a trusted proxy cannot be read",
            Self::Duplicate(_) => "a header that must appear once appears more than once",
            Self::Unreadable(_) => "a header the decision reads is not visible ASCII",
        }
    }
}

/// Whether `ip` is one of `trusted_proxies`.
pub fn trusted(config: &ContextConfig, ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    config.trusted_proxies.iter().any(|net| net.contains(&ip))
}

/// The one value of a header that must appear at most once: `None` when absent, an
/// error when it appears twice or more (never "the first wins") or is not visible ASCII.
pub fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, OriginError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(OriginError::Duplicate(name.clone()));
    }
    first.to_str().map(Some).map_err(|_| OriginError::Unreadable(name.clone()))
}

pub fn origin(config: &ContextConfig, peer: IpAddr, headers: &HeaderMap) -> Result<Origin, OriginError> {
    let peer = canonical_ip(peer);
    if !trusted(config, peer) {
        return Ok(Origin { peer, peer_trusted: false, source_ip: peer, vpce: None });
    }
    behind_proxy(config, peer, headers)
}

/// The origin of a request that `peer`, a proxy trusted by the listener it asked on (an
/// external authorization listener admits only its proxies), passes on: the client's
/// address from the forwarded-for header (walking back over `trusted_proxies`), the VPC
/// endpoint from its header.
pub fn behind_proxy(config: &ContextConfig, peer: IpAddr, headers: &HeaderMap) -> Result<Origin, OriginError> {
    let peer = canonical_ip(peer);
    let source_ip = walk(config, peer, headers)?;
    Ok(Origin { peer, peer_trusted: true, source_ip, vpce: vpce(config, headers)? })
}

/// The origin of a request that a proxy trusted by the listener it asked on describes
/// together with `downstream`, the peer it saw the request from (Envoy's gRPC form):
/// `downstream` is the client unless it is itself one of `trusted_proxies`, in which
/// case the forwarded-for header is walked back from it; the VPC endpoint is the
/// proxy's word, as in [`behind_proxy`].
pub fn reported_downstream(
    config: &ContextConfig,
    downstream: IpAddr,
    headers: &HeaderMap,
) -> Result<Origin, OriginError> {
    let downstream = canonical_ip(downstream);
    let source_ip = if trusted(config, downstream) { walk(config, downstream, headers)? } else { downstream };
    Ok(Origin { peer: downstream, peer_trusted: true, source_ip, vpce: vpce(config, headers)? })
}

/// The client's address, walking the forwarded-for header back from `peer`, a proxy.
fn walk(config: &ContextConfig, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, OriginError> {
    let hops = forwarded::hops(headers, &config.forwarded_for_header);
    forwarded::client_address(peer, &hops, |ip| trusted(config, ip)).map_err(|_| OriginError::UnreadableForwardedFor)
}

/// The VPC endpoint a trusted proxy passes on. An id never holds a comma: one means a
/// proxy appended to a value the client sent, and which part is whose cannot be told.
fn vpce(config: &ContextConfig, headers: &HeaderMap) -> Result<Option<String>, OriginError> {
    match single(headers, &config.vpce_header)?.map(str::trim) {
        Some(value) if value.contains(',') => Err(OriginError::Duplicate(config.vpce_header.clone())),
        Some("") | None => Ok(None),
        Some(value) => Ok(Some(value.to_owned())),
    }
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
) -> Result<Vec<(String, String)>, OriginError> {
    let mut pairs = Vec::with_capacity(sources.len());
    for (name, source) in sources {
        let value = match source {
            ContextSource::SourceIp => Some(crate::authz::audit::ip_text(origin.source_ip)),
            ContextSource::Vpce => origin.vpce.clone(),
            ContextSource::RequestTime => Some(humantime::format_rfc3339_seconds(now).to_string()),
            ContextSource::Method => Some(method.as_str().to_owned()),
            ContextSource::Path => Some(path.to_owned()),
            ContextSource::PathParam(param) => matched.param(param).map(str::to_owned),
            ContextSource::Header(header) => single(headers, header)?.map(str::to_owned),
        };
        if let Some(value) = value {
            pairs.push((name.clone(), value));
        }
    }
    Ok(pairs)
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
        let o = origin(&config(&["10.0.0.0/8"]), "192.168.1.5".parse().unwrap(), &h).unwrap();
        assert_eq!(o.source_ip, "192.168.1.5".parse::<IpAddr>().unwrap());
        assert_eq!(o.vpce, None);
        assert!(!o.peer_trusted);
    }

    #[test]
    fn a_trusted_proxy_passes_the_rightmost_untrusted_hop() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 10.9.9.9"), ("x-forwarded-for", "10.0.0.7")]);
        // the client forged 6.6.6.6; the proxies 10.0.0.7 and 10.9.9.9 are trusted... the
        // last untrusted hop is what the first trusted proxy saw
        let o = origin(&config(&["10.0.0.0/8"]), "10.0.0.1".parse().unwrap(), &h).unwrap();
        assert_eq!(o.source_ip, "6.6.6.6".parse::<IpAddr>().unwrap());
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 172.20.1.1, 10.0.0.7")]);
        let o = origin(&config(&["10.0.0.0/8"]), "10.0.0.1".parse().unwrap(), &h).unwrap();
        assert_eq!(o.source_ip, "172.20.1.1".parse::<IpAddr>().unwrap(), "the forged front entry is skipped");
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_proxies() {
        let h = headers(&[("x-forwarded-for", "172.20.1.1"), ("x-amzn-vpce-id", "vpce-1")]);
        let o = origin(&config(&["127.0.0.1/32"]), "::ffff:127.0.0.1".parse().unwrap(), &h).unwrap();
        assert!(o.peer_trusted);
        assert_eq!(o.source_ip, "172.20.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(o.vpce.as_deref(), Some("vpce-1"));
    }

    #[test]
    fn ambiguous_endpoint_headers_are_refused() {
        let c = config(&["10.0.0.0/8"]);
        let peer = "10.0.0.1".parse().unwrap();
        let h = headers(&[("x-amzn-vpce-id", "vpce-0a1a000000000001a"), ("x-amzn-vpce-id", "vpce-other")]);
        assert!(matches!(origin(&c, peer, &h), Err(OriginError::Duplicate(_))));
        let h = headers(&[("x-amzn-vpce-id", "vpce-forged, vpce-0a1a000000000001a")]);
        assert!(matches!(origin(&c, peer, &h), Err(OriginError::Duplicate(_))));
        // from an untrusted peer the header is not read at all
        let o = origin(&c, "192.168.1.5".parse().unwrap(), &h).unwrap();
        assert_eq!(o.vpce, None);
    }

    #[test]
    fn a_port_on_the_proxys_hop_does_not_hand_the_walk_to_the_client() {
        let c = config(&["10.0.0.0/8"]);
        let peer = "10.0.0.1".parse().unwrap();
        let o = origin(&c, peer, &headers(&[("x-forwarded-for", "10.1.2.3, 6.6.6.6:41234")])).unwrap();
        assert_eq!(o.source_ip, "6.6.6.6".parse::<IpAddr>().unwrap());
        for appended in ["unknown", "fe80::1%eth0", "", "_proxy"] {
            let h = headers(&[("x-forwarded-for", &format!("10.1.2.3, {appended}"))]);
            assert_eq!(origin(&c, peer, &h), Err(OriginError::UnreadableForwardedFor), "{appended:?}");
        }
    }

    #[test]
    fn a_header_the_decision_reads_must_appear_once() {
        let name = HeaderName::from_static("x-tenant");
        assert_eq!(single(&headers(&[]), &name), Ok(None));
        assert_eq!(single(&headers(&[("x-tenant", "a")]), &name), Ok(Some("a")));
        let twice = headers(&[("x-tenant", "a"), ("x-tenant", "b")]);
        assert_eq!(single(&twice, &name), Err(OriginError::Duplicate(name.clone())));
        let mut bytes = HeaderMap::new();
        bytes.insert(&name, http::HeaderValue::from_bytes(b"a\xff").unwrap());
        assert_eq!(single(&bytes, &name), Err(OriginError::Unreadable(name.clone())));
    }
}
