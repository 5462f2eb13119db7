//! Reading the client's address out of a forwarded-for header, failing closed.
//!
//! Each proxy appends the address it saw to the right of the list, so the list is read
//! right to left: a hop written by a trusted proxy is believed, and the first address
//! that is *not* a trusted proxy is the client. Everything to its left was written by the
//! client (or by proxies the sidecar does not know) and is never believed.
//!
//! A hop is read in every form real proxies write: a bare IPv4 or IPv6 address, either
//! with a port (`10.1.2.3:5678`, `[2001:db8::1]:443`), bracketed IPv6 without a port,
//! and IPv4-mapped IPv6 (`::ffff:10.1.2.3`, taken as the IPv4 address it is). Anything
//! else (`unknown`, an obfuscated RFC 7239 name, a zone id such as `fe80::1%eth0`, an
//! empty hop, a header value that is not visible ASCII) cannot be read; if the walk
//! reaches such a hop before it finds the client, the walk **stops there** and the
//! request is refused: skipping the hop would believe the address to its left, which
//! the client wrote.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{HeaderMap, HeaderName};

/// The first hop (from the right) that could not be read. The message is for logs only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("forwarded-for hop {position} from the right cannot be read as an address")]
pub struct UnreadableHop {
    pub position: usize,
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) as the IPv4 address it is.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// One hop as a proxy wrote it, or `None` when it is not an address in a form proxies
/// write.
pub fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim_matches([' ', '\t']);
    let ip = if let Some(rest) = text.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        IpAddr::V6(inside.parse::<Ipv6Addr>().ok()?)
    } else if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else {
        // `v4:port` (a bare IPv6 address has more than one colon and parsed above)
        let (host, port) = text.split_once(':')?;
        if !is_port(port) {
            return None;
        }
        IpAddr::V4(host.parse::<Ipv4Addr>().ok()?)
    };
    Some(canonical_ip(ip))
}

/// A TCP port as proxies write it: 1 to 5 digits, at most 65535.
fn is_port(text: &str) -> bool {
    (1..=5).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u16>().is_ok()
}

/// Every hop of every `name` header, in order (left to right, first header first); a
/// hop that cannot be read is `None`, and so is a whole header value that is not
/// visible ASCII.
pub fn hops(headers: &HeaderMap, name: &HeaderName) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(name) {
        match value.to_str() {
            Ok(text) => hops.extend(text.split(',').map(parse_hop)),
            Err(_) => hops.push(None),
        }
    }
    hops
}

/// The client's address: walk `hops` from the right past every trusted proxy. When every
/// hop is a trusted proxy, the leftmost is the client (it is inside the trusted
/// networks); with no hops at all, the peer is.
pub fn client_address(
    peer: IpAddr,
    hops: &[Option<IpAddr>],
    trusted: impl Fn(IpAddr) -> bool,
) -> Result<IpAddr, UnreadableHop> {
    let mut client = peer;
    for (position, hop) in hops.iter().rev().enumerate() {
        let ip = hop.ok_or(UnreadableHop { position: position + 1 })?;
        client = ip;
        if !trusted(ip) {
            break;
        }
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_form_proxies_write_is_read() {
        for (text, expected) in [
            ("10.1.2.3", "10.1.2.3"),
            (" 10.1.2.3 ", "10.1.2.3"),
            ("10.1.2.3:5678", "10.1.2.3"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("[::ffff:10.1.2.3]:80", "10.1.2.3"),
            ("::1", "::1"),
        ] {
            assert_eq!(parse_hop(text), Some(ip(expected)), "{text}");
        }
    }

    #[test]
    fn anything_else_cannot_be_read() {
        for text in [
            "",
            "unknown",
            "_hidden",
            "fe80::1%eth0",
            "[fe80::1%eth0]:80",
            "10.1.2.3:",
            "10.1.2.3:99999",
            "10.1.2.3:0x50",
            "10.1.2.3:80:80",
            "[::1]x",
            "[::1]:",
            "[10.1.2.3]",
            "010.1.2.3",
            "10.1.2",
            "\"10.1.2.3\"",
            "for=10.1.2.3",
            "10.1.2.3 10.1.2.4",
        ] {
            assert_eq!(parse_hop(text), None, "{text:?}");
        }
    }

    fn trusted_10(ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10)
    }

    fn walk(peer: &str, header: &str) -> Result<IpAddr, UnreadableHop> {
        let hops: Vec<_> = header.split(',').map(parse_hop).collect();
        client_address(ip(peer), &hops, trusted_10)
    }

    #[test]
    fn an_unreadable_hop_written_by_a_trusted_proxy_stops_the_walk() {
        // the proxy appended the client as `ip:port`, `[v6]:port`, `unknown`: what the
        // client wrote to the left of it is never believed
        assert_eq!(walk("10.0.0.1", "10.1.2.3, 6.6.6.6:5555"), Ok(ip("6.6.6.6")));
        assert_eq!(walk("10.0.0.1", "10.1.2.3, [2001:db8::6]:5555"), Ok(ip("2001:db8::6")));
        assert_eq!(walk("10.0.0.1", "10.1.2.3, unknown"), Err(UnreadableHop { position: 1 }));
        assert_eq!(walk("10.0.0.1", "10.1.2.3, fe80::1%eth0, 10.0.0.9"), Err(UnreadableHop { position: 2 }));
        // garbage left of the client is the client's own and does not matter
        assert_eq!(walk("10.0.0.1", "unknown, 6.6.6.6"), Ok(ip("6.6.6.6")));
        // every hop trusted: the leftmost is the client
        assert_eq!(walk("10.0.0.1", "10.1.2.3, 10.0.0.9"), Ok(ip("10.1.2.3")));
    }

    #[test]
    fn a_header_value_that_is_not_ascii_is_an_unreadable_hop() {
        let mut headers = HeaderMap::new();
        let name = HeaderName::from_static("x-forwarded-for");
        headers.append(&name, "10.1.2.3".parse().unwrap());
        headers.append(&name, http::HeaderValue::from_bytes(b"6.6.6.6\xff").unwrap());
        let hops = hops(&headers, &name);
        assert_eq!(hops, vec![Some(ip("10.1.2.3")), None]);
        assert!(client_address(ip("10.0.0.1"), &hops, trusted_10).is_err());
    }

    /// One hop as a proxy might write `ip`.
    fn written(ip: IpAddr, form: u8, port: u16) -> String {
        match (ip, form % 3) {
            (IpAddr::V4(v4), 0) => v4.to_string(),
            (IpAddr::V4(v4), 1) => format!("{v4}:{port}"),
            (IpAddr::V4(v4), _) => format!("[{}]:{port}", v4.to_ipv6_mapped()),
            (IpAddr::V6(v6), 0) => v6.to_string(),
            (IpAddr::V6(v6), 1) => format!("[{v6}]:{port}"),
            (IpAddr::V6(v6), _) => format!("[{v6}]"),
        }
    }

    proptest! {
        /// Whatever the client writes, and whatever the trusted proxies append, the
        /// address the sidecar believes is the one the outermost trusted proxy saw,
        /// or the request is refused.
        #[test]
        fn the_client_never_chooses_its_own_address(
            forged in proptest::collection::vec(".{0,24}", 0..4),
            client in any::<IpAddr>(),
            proxies in proptest::collection::vec(any::<[u8; 3]>(), 0..3),
            form in any::<u8>(),
            port in any::<u16>(),
            garble in any::<bool>(),
        ) {
            let client = canonical_ip(client);
            prop_assume!(!trusted_10(client));
            // what the client sent, then what each trusted proxy appended
            let mut list: Vec<String> = forged.clone();
            list.push(if garble { "unknown".to_owned() } else { written(client, form, port) });
            for p in &proxies {
                list.push(format!("10.{}.{}.{}", p[0], p[1], p[2]));
            }
            let header = list.join(", ");
            let hops: Vec<_> = header.split(',').map(parse_hop).collect();
            let got = client_address(ip("10.0.0.1"), &hops, trusted_10);
            if garble {
                prop_assert!(got.is_err(), "{header} -> {got:?}");
            } else {
                prop_assert_eq!(got, Ok(client), "{}", header);
            }
        }

        #[test]
        fn every_written_form_reads_back(ip in any::<IpAddr>(), form in any::<u8>(), port in any::<u16>()) {
            prop_assert_eq!(parse_hop(&written(ip, form, port)), Some(canonical_ip(ip)));
        }
    }
}
