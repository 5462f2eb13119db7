//! The admin listener: `/livez`, `/readyz`, `/metrics`, and with `--dev` the token
//! endpoint of the development issuer. A separate address, never the data plane.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

use super::state::State;
use crate::body::Body;
use crate::body::full;
use crate::body::json_response;
use crate::rescue::ApiError;

pub fn handle<B>(state: &State, metrics: &PrometheusHandle, request: Request<B>) -> Response<Body> {
    // errors take the same shape as the data plane's (rescue.rs), with a request id
    let refused = |error: ApiError| error.into_response(&uuid::Uuid::new_v4().simple().to_string());
    if request.method() != Method::GET {
        return refused(ApiError::MethodNotAllowed);
    }
    match request.uri().path() {
        "/livez" => json_response(StatusCode::OK, r#"{"live":true}"#.to_owned()),
        "/readyz" => {
            let reasons = state.not_ready_reasons();
            let snapshot = state.store.current().map(|s| s.version().to_string());
            // a failure before the first snapshot is a reason, not a reload failure
            let reloads = snapshot.as_ref().map(|_| state.store.stats());
            let mut body = serde_json::json!({
                "ready": reasons.is_empty(),
                "reasons": reasons,
                "snapshot": snapshot,
                "reload_failures": reloads.as_ref().map(|s| s.failures),
                "last_reload_error": reloads.and_then(|s| s.last_error).map(|e| e.to_string()),
            });
            // the candidate's state, for whoever runs one: never a reason not to be ready
            if let Some(shadow) = state.engine.shadow() {
                let store = shadow.store();
                let stats = store.stats();
                let shadow = serde_json::json!({
                    "snapshot": store.current().map(|s| s.version().to_string()),
                    "reload_failures": stats.failures,
                    "last_error": stats.last_error.map(|e| e.to_string()),
                });
                if let Some(body) = body.as_object_mut() {
                    body.insert("shadow".to_owned(), shadow);
                }
            }
            let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json_response(status, body.to_string())
        }
        "/metrics" => {
            metrics.run_upkeep();
            process_metrics().collect();
            let mut text = metrics.render();
            info_metrics(state, &mut text);
            let mut response = Response::new(full(text));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
            response
        }
        "/dev/token" => match &state.dev {
            Some(dev) => dev_token(dev, request.uri().query().unwrap_or_default()),
            None => refused(ApiError::NotFound),
        },
        _ => refused(ApiError::NotFound),
    }
}

/// The process collector (CPU, memory, descriptors, threads, start time: the
/// `process_*` series Prometheus users expect), described once.
fn process_metrics() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let collector = metrics_process::Collector::default();
        collector.describe();
        collector
    })
}

/// Append the info series to `text`: the build, and the snapshot serving now. Written
/// at each scrape from what serves, rather than kept in the recorder, so a snapshot a
/// reload replaced leaves no series behind.
fn info_metrics(state: &State, text: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        text,
        "# HELP authz_build_info The running build: its version and the Cedar SDK and language it decides with.\n\
         # TYPE authz_build_info gauge\n\
         authz_build_info{{version=\"{}\",cedar_sdk=\"{}\",cedar_lang=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        cedar_policy::get_sdk_version(),
        cedar_policy::get_lang_version(),
    );
    if let Some(shadow) = state.engine.shadow().and_then(|shadow| shadow.store().current()) {
        let _ = writeln!(
            text,
            "# HELP authz_shadow_snapshot_info The shadow policies deciding beside the serving ones: their digest.\n\
             # TYPE authz_shadow_snapshot_info gauge\n\
             authz_shadow_snapshot_info{{digest=\"{}\",source=\"{}\"}} 1",
            label_value(&shadow.version().digest),
            label_value(&shadow.source().to_string()),
        );
    }
    let Some(snapshot) = state.store.current() else { return };
    let version = snapshot.version();
    let _ = writeln!(
        text,
        "# HELP authz_policy_snapshot_info The policy snapshot serving now: its digest and where it came from.\n\
         # TYPE authz_policy_snapshot_info gauge\n\
         authz_policy_snapshot_info{{digest=\"{}\",source=\"{}\"}} 1",
        label_value(&version.digest),
        label_value(&snapshot.source().to_string()),
    );
    let published = state.store.published_at().unwrap_or_default();
    for (name, help, value) in [
        (
            "authz_policy_snapshot_generation",
            "The serving snapshot's generation (one more at each reload).",
            version.generation as f64,
        ),
        ("authz_policy_snapshot_policies", "Policies in the serving snapshot.", snapshot.policy_count() as f64),
        ("authz_policy_snapshot_entities", "Entities in the serving snapshot.", snapshot.entity_count() as f64),
        (
            "authz_policy_snapshot_loaded_timestamp_seconds",
            "When the serving snapshot was swapped in, in seconds since the Unix epoch.",
            published,
        ),
    ] {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
}

/// `value` as a Prometheus label value: backslash, quote and line feed escaped.
fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `/dev/token?user=user-1&groups=Team1,Team2`: a token from the development issuer.
fn dev_token(dev: &crate::authn::dev::DevIssuer, query: &str) -> Response<Body> {
    let mut user = None;
    let mut groups = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned();
        match key {
            "user" => user = Some(value),
            "groups" => groups = value.split(',').filter(|g| !g.is_empty()).map(str::to_owned).collect(),
            _ => {}
        }
    }
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return ApiError::BadRequest("give ?user=<name>&groups=<a,b>")
            .into_response(&uuid::Uuid::new_v4().simple().to_string());
    };
    match dev.mint(&user, &groups, Duration::from_secs(3600)) {
        Ok(token) => {
            let mut response = Response::new(full(token));
            response.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "dev token minting failed");
            ApiError::Internal.into_response(&uuid::Uuid::new_v4().simple().to_string())
        }
    }
}
