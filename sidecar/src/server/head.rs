//! A request's head copied out of the connection's read buffer.
//!
//! hyper parses an HTTP/1 request head in place: the target and every header value are
//! slices of the connection's read buffer. Right after it hands the request to the
//! service, before the service's future first runs, hyper reads on (to see the client
//! leave mid-request), and since the request still shares the buffer it takes a new one
//! of 8 KiB: every request in flight held two read buffers, and every request allocated
//! one. Copying the head's bytes into one block of its own, in the service's synchronous
//! call, gives the read buffer back to hyper at once, which reads on into the same
//! memory (`bench/README.md`, "A request's head out of the read buffer").
//!
//! The copy is exact: the same header names in the same order with the same values and
//! sensitivity, the same target. A value or target that would not come back the same
//! (none that hyper parsed) is left as it was, still correct, only not detached.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::HeaderValue;
use http::{Request, Uri};

/// Copy `request`'s target and header values into one allocation of their own.
pub fn detach<B>(request: &mut Request<B>) {
    // the origin form's whole text is its path and query; the rare absolute form grows
    // the block once, before anything points into it
    let target = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let values: usize = request.headers().values().map(|value| value.len()).sum();
    let mut block = BytesMut::with_capacity(target + values);
    write_uri(&mut block, request.uri());
    let uri_end = block.len();
    for value in request.headers().values() {
        block.put_slice(value.as_bytes());
    }
    let block: Bytes = block.freeze();

    if let Some(target) = block.get(..uri_end)
        && let Ok(copied) = Uri::from_maybe_shared(block.slice_ref(target))
        && copied == *request.uri()
    {
        *request.uri_mut() = copied;
    }
    let mut at = uri_end;
    for value in request.headers_mut().values_mut() {
        let end = at + value.len();
        if let Some(bytes) = block.get(at..end)
            && let Ok(mut copied) = HeaderValue::from_maybe_shared(block.slice_ref(bytes))
        {
            copied.set_sensitive(value.is_sensitive());
            *value = copied;
        }
        at = end;
    }
}

/// `uri` as it parses back to itself: `scheme://authority` when it has them (the
/// absolute form), then the path and query (the origin form's whole text).
fn write_uri(block: &mut BytesMut, uri: &Uri) {
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            block.put_slice(scheme.as_bytes());
            block.put_slice(b"://");
            block.put_slice(authority.as_str().as_bytes());
        }
        (None, Some(authority)) => block.put_slice(authority.as_str().as_bytes()),
        _ => {}
    }
    if let Some(pq) = uri.path_and_query() {
        block.put_slice(pq.as_str().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use http::header::{AUTHORIZATION, HeaderName};
    use proptest::prelude::*;

    use super::*;

    /// A head parsed the way hyper parses one: its target and values slices of a read
    /// buffer, which keeps the rest of its capacity for the next read.
    fn parsed(target: &str, headers: &[(&str, &[u8])]) -> (BytesMut, Request<()>) {
        let mut read = BytesMut::with_capacity(8192);
        read.put_slice(target.as_bytes());
        for (_, value) in headers {
            read.put_slice(value);
        }
        let head = read.split_to(read.len()).freeze();
        let mut request = Request::new(());
        *request.uri_mut() = Uri::from_maybe_shared(head.slice(..target.len())).unwrap();
        let mut at = target.len();
        for (name, value) in headers {
            let end = at + value.len();
            let value = HeaderValue::from_maybe_shared(head.slice(at..end)).unwrap();
            request.headers_mut().append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
            at = end;
        }
        (read, request)
    }

    fn snapshot(request: &Request<()>) -> (Uri, Vec<(HeaderName, HeaderValue, bool)>) {
        let headers = request.headers().iter().map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive())).collect();
        (request.uri().clone(), headers)
    }

    #[test]
    fn a_detached_head_gives_the_read_buffer_back() {
        let (mut read, mut request) = parsed(
            "/studio/user-1/team1?x=1",
            &[("authorization", b"Bearer abc"), ("x-forwarded-for", b"10.1.2.3"), ("x-forwarded-for", b"10.0.0.1")],
        );
        // while the request points into it, the next read cannot reuse the buffer
        assert!(!read.try_reclaim(8192));
        detach(&mut request);
        assert!(read.try_reclaim(8192), "the read buffer is free for the next read once the head is copied out");
    }

    #[test]
    fn a_detached_head_is_the_same_head() {
        let (_read, mut request) = parsed(
            "http://upstream.internal:8080/a/b?c=d&e",
            &[("authorization", b"Bearer abc"), ("x-a", b""), ("x-a", b"\tobs \xe9text"), ("host", b"h")],
        );
        request.headers_mut().get_mut(AUTHORIZATION).unwrap().set_sensitive(true);
        let before = snapshot(&request);
        detach(&mut request);
        assert_eq!(snapshot(&request), before);
        assert!(request.headers()[AUTHORIZATION].is_sensitive());
        for target in ["*", "/", "example.com:443", "/%2e%2e/x?y=%00"] {
            let (_read, mut request) = parsed(target, &[]);
            let before = snapshot(&request);
            detach(&mut request);
            assert_eq!(snapshot(&request), before, "{target}");
            assert_eq!(request.uri().to_string(), before.0.to_string(), "{target}");
        }
    }

    proptest! {
        /// Any target hyper could have parsed and any header values: the copy is equal,
        /// value for value, in order.
        #[test]
        fn any_head_detaches_to_itself(
            target in prop_oneof![
                "/[a-zA-Z0-9/%._~!$&'()*+,;=:@-]{0,40}(\\?[a-zA-Z0-9/%._~!$&'()*+,;=:@?-]{0,20})?",
                "https?://[a-z0-9.-]{1,20}(:[0-9]{1,5})?/[a-z0-9/]{0,20}",
            ],
            values in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(9u8), 32u8..127, 128u8..=255], 0..40), 0..8),
        ) {
            let Ok(uri) = Uri::try_from(target.as_str()) else { return Ok(()) };
            let uri_text = uri.to_string();
            let names = ["a", "b", "a", "authorization", "c", "a", "d", "e"];
            let headers: Vec<(&str, &[u8])> = names.iter().zip(&values).map(|(n, v)| (*n, v.as_slice())).collect();
            let (_read, mut request) = parsed(&uri_text, &headers);
            let before = snapshot(&request);
            detach(&mut request);
            prop_assert_eq!(snapshot(&request), before);
        }
    }
}
