//! Metric handles kept, for the metrics every request records.
//!
//! `metrics::counter!("name", "label" => value)` looks the metric up in the recorder each
//! time: it builds the key, allocates for it and hashes every label. On the data plane's
//! path that was about twenty allocations a request. The handles here are registered
//! once and then only incremented. Each is registered on first use, after the
//! process's recorder is installed ([`crate::telemetry::metrics_handle`]), so no handle
//! is bound to the no-op recorder that `metrics` falls back to before one is.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, OnceLock, RwLock};

use metrics::{Counter, Histogram, SharedString};

/// A counter or histogram with fixed labels, registered once per process.
macro_rules! kept {
    ($kind:ident, $handle:ty, $name:literal $(, $key:literal => $value:literal)*) => {{
        static HANDLE: std::sync::OnceLock<$handle> = std::sync::OnceLock::new();
        HANDLE.get_or_init(|| {
            let _recorder = $crate::telemetry::metrics_handle();
            metrics::$kind!($name $(, $key => $value)*)
        })
    }};
}

/// A counter with fixed labels (see the module documentation).
macro_rules! kept_counter {
    ($name:literal $(, $key:literal => $value:literal)*) => {
        $crate::kept_metrics::kept!(counter, metrics::Counter, $name $(, $key => $value)*)
    };
}

/// A histogram with fixed labels (see the module documentation).
macro_rules! kept_histogram {
    ($name:literal $(, $key:literal => $value:literal)*) => {
        $crate::kept_metrics::kept!(histogram, metrics::Histogram, $name $(, $key => $value)*)
    };
}

pub(crate) use {kept, kept_counter, kept_histogram};

/// Handles registered on first use for each value of their labels.
struct ByLabels<K, H>(RwLock<HashMap<K, H>>);

impl<K: Hash + Eq + Copy, H: Clone> ByLabels<K, H> {
    fn new() -> Self {
        Self(RwLock::new(HashMap::new()))
    }

    fn get(&self, labels: K, register: impl FnOnce() -> H) -> H {
        if let Some(handle) = self.0.read().ok().and_then(|kept| kept.get(&labels).cloned()) {
            return handle;
        }
        let handle = register();
        if let Ok(mut kept) = self.0.write() {
            kept.entry(labels).or_insert_with(|| handle.clone());
        }
        handle
    }
}

/// The metrics of one route: requests by status, their duration, and decisions.
pub(crate) struct RouteMetrics {
    route: SharedString,
    requests: ByLabels<u16, Counter>,
    seconds: OnceLock<Histogram>,
    decisions: ByLabels<(&'static str, &'static str), Counter>,
    dry_run_denials: OnceLock<Counter>,
}

impl RouteMetrics {
    /// The metrics of the route named `route` (`-` for a request no route matched, empty
    /// for the Lambda form's questions). Route names come from the configuration, so
    /// the routes kept are few.
    pub(crate) fn of(route: &str) -> Arc<Self> {
        static ROUTES: OnceLock<RwLock<HashMap<Box<str>, Arc<RouteMetrics>>>> = OnceLock::new();
        let routes = ROUTES.get_or_init(|| RwLock::new(HashMap::new()));
        if let Some(kept) = routes.read().ok().and_then(|routes| routes.get(route).cloned()) {
            return kept;
        }
        let _recorder = crate::telemetry::metrics_handle();
        let metrics = Arc::new(Self {
            route: SharedString::from_owned(route.to_owned()),
            requests: ByLabels::new(),
            seconds: OnceLock::new(),
            decisions: ByLabels::new(),
            dry_run_denials: OnceLock::new(),
        });
        match routes.write() {
            Ok(mut routes) => routes.entry(route.into()).or_insert(metrics).clone(),
            Err(_) => metrics,
        }
    }

    /// `authz_requests_total{route,status}` and `authz_request_seconds{route}`.
    pub(crate) fn request(&self, status: http::StatusCode, seconds: f64) {
        let route = &self.route;
        self.requests
            .get(status.as_u16(), || {
                metrics::counter!("authz_requests_total", "route" => route.clone(), "status" => status.as_str().to_owned())
            })
            .increment(1);
        self.seconds
            .get_or_init(|| metrics::histogram!("authz_request_seconds", "route" => route.clone()))
            .record(seconds);
    }

    /// `authz_decisions_total{route,decision,reason}`.
    pub(crate) fn decision(&self, decision: &'static str, reason: &'static str) {
        let route = &self.route;
        self.decisions
            .get((decision, reason), || {
                metrics::counter!("authz_decisions_total", "route" => route.clone(), "decision" => decision, "reason" => reason)
            })
            .increment(1);
    }

    /// `authz_dry_run_denials_total{route}`.
    pub(crate) fn dry_run_denial(&self) {
        let route = &self.route;
        self.dry_run_denials
            .get_or_init(|| metrics::counter!("authz_dry_run_denials_total", "route" => route.clone()))
            .increment(1);
    }
}
