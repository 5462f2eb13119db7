//! Request paths, made canonical before routing.
//!
//! The sidecar authorizes the path it forwards, so the two must be the same string.
//! Each segment is percent-decoded; empty segments (`//`) and `.` are dropped and `..`
//! removes the segment before it (RFC 3986 dot-segment removal, also for `%2e%2e`); the
//! canonical path is re-encoded from the decoded segments. What cannot be made
//! unambiguous is refused: an encoded `/` (`%2F`) or `\`, a backslash, a NUL, invalid
//! UTF-8, or `..` climbing above the root.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// Characters encoded when a decoded segment is written back into a path.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// A path in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    /// Decoded segments, for routing (`/studio/user 1` matches `/studio/{user}` with `user 1`).
    pub decoded: String,
    /// Re-encoded, for forwarding.
    pub encoded: String,
}

/// Why a path was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the request path is ambiguous or malformed: {0}")]
pub struct BadPath(pub &'static str);

pub fn canonicalize(raw: &str) -> Result<CanonicalPath, BadPath> {
    if already_canonical(raw) {
        return Ok(CanonicalPath { decoded: raw.to_owned(), encoded: raw.to_owned() });
    }
    by_segments(raw)
}

/// Whether `raw` is its own canonical form, decoded and encoded alike: segments of
/// unreserved characters only (letters, digits, `-._~`: nothing to decode, nothing to
/// encode), none empty, `.` or `..`, and at most a trailing `/`. Most paths are; a look
/// at their bytes is a tenth of taking them apart and putting them together again.
fn already_canonical(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else { return false };
    if rest.is_empty() {
        return true;
    }
    let inner = rest.strip_suffix('/').unwrap_or(rest);
    inner.split('/').all(|segment| {
        !matches!(segment, "" | "." | "..")
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    })
}

/// The canonical form, segment by segment (see the module documentation).
fn by_segments(raw: &str) -> Result<CanonicalPath, BadPath> {
    if !raw.starts_with('/') {
        return Err(BadPath("it does not start with `/`"));
    }
    // segments borrow the raw path unless percent-decoding changed them
    let mut segments: Vec<std::borrow::Cow<'_, str>> = Vec::new();
    for raw_segment in raw.split('/') {
        let decoded =
            percent_decode_str(raw_segment).decode_utf8().map_err(|_| BadPath("it is not UTF-8 once decoded"))?;
        if decoded.contains('/') {
            return Err(BadPath("it has an encoded `/`"));
        }
        if decoded.contains('\\') {
            return Err(BadPath("it has a backslash"));
        }
        if decoded.contains('\0') {
            return Err(BadPath("it has a NUL character"));
        }
        match decoded.as_ref() {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(BadPath("`..` climbs above the root"));
                }
            }
            _ => segments.push(decoded),
        }
    }
    // a trailing slash is kept: `/a/` and `/a` may be different resources upstream
    let trailing = raw.len() > 1 && raw.ends_with('/') && !segments.is_empty();
    let mut decoded = String::with_capacity(raw.len() + 1);
    let mut encoded = String::with_capacity(raw.len() + 1);
    for segment in &segments {
        decoded.push('/');
        decoded.push_str(segment);
        encoded.push('/');
        encoded.extend(utf8_percent_encode(segment, SEGMENT));
    }
    if segments.is_empty() || trailing {
        decoded.push('/');
        encoded.push('/');
    }
    Ok(CanonicalPath { decoded, encoded })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> String {
        canonicalize(raw).unwrap().decoded
    }

    #[test]
    fn dot_segments_and_duplicate_slashes_are_resolved() {
        assert_eq!(canon("/studio/user-1/team1"), "/studio/user-1/team1");
        assert_eq!(canon("//studio///user-1/./team1"), "/studio/user-1/team1");
        assert_eq!(canon("/admin/../studio/user-1/team1"), "/studio/user-1/team1");
        assert_eq!(canon("/studio/%2e%2e/studio/u/t"), "/studio/u/t");
        assert_eq!(canon("/studio/user%2D1/team1"), "/studio/user-1/team1");
        assert_eq!(canon("/"), "/");
        assert_eq!(canon("/a/b/"), "/a/b/");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for raw in
            ["/studio/user-1%2Fteam1", "/studio/a%2fb", "/a\\b", "/a%5Cb", "/a%00b", "/..", "/a/../..", "/%ff", "x"]
        {
            assert!(canonicalize(raw).is_err(), "{raw} should be refused");
        }
    }

    #[test]
    fn the_forwarded_form_re_encodes_what_needs_it() {
        let path = canonicalize("/files/a%20b/c%3Fd").unwrap();
        assert_eq!(path.decoded, "/files/a b/c?d");
        assert_eq!(path.encoded, "/files/a%20b/c%3Fd");
    }

    fn segment() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just(String::new()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2E%2e".to_owned()),
            Just("%2F".to_owned()),
            Just("%5c".to_owned()),
            Just("%25".to_owned()),
            Just("%".to_owned()),
            Just("%00".to_owned()),
            Just("%3F".to_owned()),
            Just("%23".to_owned()),
            "[a-z0-9._~-]{1,6}",
            "[A-Za-z0-9._~!$&'()*+,;=:@-]{1,6}",
            Just("...".to_owned()),
            "[a-z%0-9]{1,8}",
            "\\PC{1,3}",
        ]
    }

    proptest::proptest! {
        /// A path taken as it is gives what taking it apart gives, and every path
        /// taken as it is would have been.
        #[test]
        fn a_path_taken_as_it_is_is_its_canonical_form(
            segments in proptest::collection::vec(segment(), 0..8),
            leading in proptest::bool::ANY,
            trailing in proptest::bool::ANY,
        ) {
            let mut raw = format!("{}{}", if leading { "/" } else { "" }, segments.join("/"));
            if trailing {
                raw.push('/');
            }
            let by_segments = by_segments(&raw);
            proptest::prop_assert_eq!(canonicalize(&raw), by_segments.clone(), "{}", raw);
            if already_canonical(&raw) {
                let canonical = by_segments.unwrap();
                proptest::prop_assert_eq!(&canonical.decoded, &raw);
                proptest::prop_assert_eq!(&canonical.encoded, &raw);
            }
        }

        /// Whatever path a client sends, what the sidecar routes (`decoded`) is what the
        /// upstream reads from what it forwards (`encoded`), by the same rules or by a
        /// plain percent-decode: a path is never authorized as one resource and served
        /// as another.
        #[test]
        fn the_forwarded_path_reads_back_as_the_authorized_one(
            segments in proptest::collection::vec(segment(), 0..8),
            trailing in proptest::bool::ANY,
        ) {
            let mut raw = format!("/{}", segments.join("/"));
            if trailing {
                raw.push('/');
            }
            if let Ok(canonical) = canonicalize(&raw) {
                proptest::prop_assert_eq!(canonicalize(&canonical.encoded), Ok(canonical.clone()), "{}", raw);
                let plain = percent_encoding::percent_decode_str(&canonical.encoded).decode_utf8().unwrap();
                proptest::prop_assert_eq!(plain.as_ref(), canonical.decoded.as_str(), "{}", raw);
                let inner = canonical.decoded.trim_end_matches('/');
                for part in inner.split('/').skip(1) {
                    proptest::prop_assert!(!matches!(part, "" | "." | ".."), "{} -> {}", raw, canonical.decoded);
                }
            }
        }
    }
}
