//! `[tracing]`: OpenTelemetry traces of the data plane's requests, exported over OTLP.
//! Off unless `otlp_endpoint` is set.

use std::time::Duration;

use http::Uri;
use serde::Deserialize;

/// What the file says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// The OTLP/HTTP traces endpoint (protobuf): a collector's `http://…:4318/v1/traces`.
    pub otlp_endpoint: String,
    /// `service.name` of the spans.
    #[serde(default = "service_name")]
    pub service_name: String,
    /// The share of new traces recorded; a trace a trusted proxy started is recorded
    /// exactly when its `traceparent` says it is sampled.
    #[serde(default = "one")]
    pub sample_ratio: f64,
    /// How long spans wait to be sent together.
    #[serde(default = "batch_delay", with = "humantime_serde")]
    pub batch_delay: Duration,
    /// Spans held for export at most; past it, new spans are dropped (never waited for).
    #[serde(default = "max_queue")]
    pub max_queue: usize,
    /// One export may take this long.
    #[serde(default = "export_timeout", with = "humantime_serde")]
    pub export_timeout: Duration,
}

fn service_name() -> String {
    "authz-sidecar".to_owned()
}
fn one() -> f64 {
    1.0
}
fn batch_delay() -> Duration {
    Duration::from_secs(5)
}
fn max_queue() -> usize {
    2_048
}
fn export_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    pub otlp_endpoint: Uri,
    pub service_name: String,
    pub sample_ratio: f64,
    pub batch_delay: Duration,
    pub max_queue: usize,
    pub export_timeout: Duration,
}

/// `raw` checked; the error names the key and what is wrong.
pub(super) fn parse_tracing(raw: &RawTracing) -> Result<TracingConfig, (String, String)> {
    let endpoint: Uri = raw
        .otlp_endpoint
        .parse()
        .map_err(|e| ("tracing.otlp_endpoint".to_owned(), format!("`{}` is not a URL: {e}", raw.otlp_endpoint)))?;
    if !matches!(endpoint.scheme_str(), Some("http" | "https")) || endpoint.host().is_none() {
        return Err((
            "tracing.otlp_endpoint".into(),
            format!("`{}` is not an http:// or https:// URL with a host", raw.otlp_endpoint),
        ));
    }
    if !(0.0..=1.0).contains(&raw.sample_ratio) {
        return Err(("tracing.sample_ratio".into(), format!("{} is not between 0 and 1", raw.sample_ratio)));
    }
    if raw.service_name.trim().is_empty() {
        return Err(("tracing.service_name".into(), "must not be empty".into()));
    }
    if raw.max_queue == 0 {
        return Err(("tracing.max_queue".into(), "must be at least 1".into()));
    }
    if raw.batch_delay.is_zero() || raw.export_timeout.is_zero() {
        return Err(("tracing.batch_delay".into(), "`batch_delay` and `export_timeout` must be positive".into()));
    }
    Ok(TracingConfig {
        otlp_endpoint: endpoint,
        service_name: raw.service_name.clone(),
        sample_ratio: raw.sample_ratio,
        batch_delay: raw.batch_delay,
        max_queue: raw.max_queue,
        export_timeout: raw.export_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(endpoint: &str) -> RawTracing {
        toml::from_str(&format!("otlp_endpoint = \"{endpoint}\"")).unwrap()
    }

    #[test]
    fn defaults_and_every_bad_value_named() {
        let config = parse_tracing(&raw("http://127.0.0.1:4318/v1/traces")).unwrap();
        assert_eq!(config.service_name, "authz-sidecar");
        assert!((config.sample_ratio - 1.0).abs() < f64::EPSILON);
        for bad in ["127.0.0.1:4318", "ftp://collector/v1/traces", "/v1/traces", "not a url"] {
            assert_eq!(parse_tracing(&raw(bad)).unwrap_err().0, "tracing.otlp_endpoint", "{bad}");
        }
        let ratio = RawTracing { sample_ratio: 1.5, ..raw("http://c:4318/v1/traces") };
        assert_eq!(parse_tracing(&ratio).unwrap_err().0, "tracing.sample_ratio");
        let queue = RawTracing { max_queue: 0, ..raw("http://c:4318/v1/traces") };
        assert_eq!(parse_tracing(&queue).unwrap_err().0, "tracing.max_queue");
    }
}
