//! Envoy's HTTP form: the `envoy.filters.http.ext_authz` filter with an `http_service`
//! asks this listener about each client request, sending the request's method, its path
//! under `path_prefix`, and the headers its `allowed_headers` names. The answer comes
//! from the data plane's own phases ([`crate::server::pipeline`], [`Purpose::Check`]):
//! 200 with the `x-authz-` headers to set upstream and `x-envoy-auth-headers-to-remove`,
//! or the data plane's 400/401/403/429/503 and its JSON body, which Envoy returns to the
//! client.
//!
//! The proxy's forwarded-for and VPC endpoint headers are believed, as a trusted
//! proxy's are ([`Reported::InHeaders`]).

use http::{Request, Response, Uri};
use hyper::body::Incoming;

use super::refuse;
use crate::body::Body;
use crate::config::ExtAuthzConfig;
use crate::rescue::ApiError;
use crate::server::Inbound;
use crate::server::pipeline::{Purpose, Reported, handle_for};
use crate::server::state::State;

/// Answer one check.
pub async fn check(
    state: &State,
    config: &ExtAuthzConfig,
    mut request: Request<Incoming>,
    inbound: Inbound,
) -> Response<Body> {
    let refused = |error: ApiError, reason: &'static str| {
        refuse(reason);
        error.into_response(&uuid::Uuid::new_v4().simple().to_string())
    };
    if !super::admitted(config, &inbound) {
        return refused(ApiError::Forbidden, "peer");
    }
    let Some(uri) = under_prefix(request.uri(), &config.path_prefix) else {
        tracing::info!(peer = %inbound.peer, "an external authorization check outside ext_authz.path_prefix; refused");
        return refused(
            ApiError::BadRequest("the check's path is not under the configured path prefix"),
            "path_prefix",
        );
    };
    *request.uri_mut() = uri;
    // the proxy's connection carries checks, not calls to forward
    handle_for(state, request, Inbound { peer: inbound.peer }, Purpose::Check(Reported::InHeaders)).await
}

/// `uri` without `prefix` at the start of its path (the rest must start a segment), its
/// query kept; `None` when the path is not under `prefix`.
fn under_prefix(uri: &Uri, prefix: &str) -> Option<Uri> {
    let path = uri.path().strip_prefix(prefix)?;
    let path = match path {
        "" => "/",
        rest if rest.starts_with('/') => rest,
        _ => return None,
    };
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    Uri::builder().path_and_query(target).build().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_stripped_only_where_it_ends_a_segment() {
        let uri = |text: &str| text.parse::<Uri>().unwrap();
        let strip = |text: &str, prefix: &str| under_prefix(&uri(text), prefix).map(|u| u.to_string());
        assert_eq!(strip("/check/studio/u/t?x=1", "/check").as_deref(), Some("/studio/u/t?x=1"));
        assert_eq!(strip("/check", "/check").as_deref(), Some("/"));
        assert_eq!(strip("/checkout/a", "/check"), None);
        assert_eq!(strip("/other/a", "/check"), None);
        assert_eq!(strip("/a/b", "").as_deref(), Some("/a/b"));
    }

    proptest::proptest! {
        /// Whatever path a client makes Envoy send, what is checked is exactly the path
        /// under the prefix (never a neighbour of it, never a path that lost a segment),
        /// and it is a path.
        #[test]
        fn what_is_checked_is_the_path_under_the_prefix(
            path in "(/[a-zA-Z0-9._~%-]{0,6}){0,4}",
            prefix in proptest::sample::select(vec!["", "/check", "/ext-authz/v1"]),
        ) {
            let original = if path.is_empty() { "/".to_owned() } else { path };
            let uri: Uri = original.parse().unwrap();
            match under_prefix(&uri, prefix) {
                Some(checked) => {
                    let checked = checked.path().to_owned();
                    proptest::prop_assert!(checked.starts_with('/'));
                    let rebuilt = if checked == "/" && original == prefix { prefix.to_owned() } else { format!("{prefix}{checked}") };
                    proptest::prop_assert_eq!(rebuilt, original);
                }
                None => {
                    let under = original == prefix || original.starts_with(&format!("{prefix}/"));
                    proptest::prop_assert!(!under, "{} is under {} but was refused", original, prefix);
                }
            }
        }
    }
}
