//! Logging set-up: human-readable text for a terminal, JSON lines for a log pipeline.
//!
//! Log lines go to stderr so that command output (decisions, test results) on stdout
//! stays machine-readable. `RUST_LOG` overrides the level filter.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the global subscriber. `default_level` applies when `RUST_LOG` is unset.
pub(crate) fn init(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests run several commands in one process) keeps the first.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().event_format(crate::authz::audit::AuditJson::new()).try_init(),
    };
}

/// How often the recorder's histogram samples are folded into their buckets when no
/// scrape does it (see [`upkeep`]).
pub(crate) const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Keep the recorder's memory bounded whether or not anyone scrapes `/metrics`: each
/// histogram sample is held until upkeep folds it into the histogram's buckets, and
/// without this task that happened only on a scrape (a sidecar never scraped grew by
/// every request it served). Runs until `shutdown`.
pub(crate) async fn upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => handle.run_upkeep(),
        }
    }
}

/// The process's Prometheus recorder, installed on first use (one per process: tests
/// run several servers and share it).
pub(crate) fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0,
            ];
            let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()), &buckets);
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(_) => metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours just renders nothing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Resident memory of this process, in bytes (Linux).
    fn rss() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
    }

    /// A million requests' worth of latency samples with no scrape: memory stays flat.
    /// (Without the upkeep task the samples are held until a scrape: about 8 bytes
    /// each, 8 MB here, which this bound catches.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn histogram_samples_do_not_pile_up_without_a_scrape() {
        let handle = metrics_handle();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(upkeep(handle.clone(), Duration::from_millis(10), stop.clone()));
        let record = |n: usize| {
            for _ in 0..n {
                metrics::histogram!("authz_request_seconds", "route" => "soak").record(0.000_42);
            }
        };
        // warm up: the allocator's arenas and the metric's own entry
        for _ in 0..20 {
            record(10_000);
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        let before = rss();
        for _ in 0..100 {
            record(10_000);
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        let grown = rss().saturating_sub(before);
        stop.cancel();
        assert!(grown < 3 * 1024 * 1024, "RSS grew by {grown} bytes over a million samples with no scrape");
        // the samples were recorded and counted (the exporter's bucket may drop a sample
        // written while a drain clears it: a handful per drain at worst, here with a drain
        // every 10 ms on a busy machine; at the 5 s interval, nothing a histogram shows)
        let text = handle.render();
        let count: u64 = text
            .lines()
            .find_map(|line| line.strip_prefix("authz_request_seconds_count{route=\"soak\"} "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!((1_180_000..=1_200_000).contains(&count), "{count} of 1200000 samples counted");
    }
}
