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

/// What `serve` does with a log line (an audit line above all) when its writer's buffer
/// is full because stderr cannot keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum LogOverflow {
    /// Wait for room: requests slow down to what the log sink takes, and no decision
    /// goes unrecorded. The default: an authorization decision without its audit line
    /// is a gap in the record that a security team cannot close afterwards.
    #[default]
    Block,
    /// Drop the line, count it (`authz_log_lines_dropped_total`) and say so in a
    /// warning: for deployments that would rather keep serving at full speed than keep
    /// every line.
    Drop,
}

/// How many lines the background writer holds before `LogOverflow` applies: at about
/// 500 bytes an audit line, a few MiB.
pub(crate) const LOG_BUFFER_LINES: usize = 8_192;

/// How many bytes of lines the writer thread gathers into one write: it writes what it
/// has gathered whenever no line is waiting, so a line is never held back for more, but
/// under load one write carries many lines (a write per line was a system call per
/// request, on the core the requests need).
const LOG_WRITE_BYTES: usize = 64 * 1024;

/// What keeps logging and tracing going: hold it until the process ends. Dropping it
/// exports the spans still queued, then flushes the buffered log lines.
#[derive(Debug)]
pub(crate) struct Telemetry {
    _exporting: Option<crate::otel::Exporting>,
    _log_writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Install the global subscriber. `default_level` applies when `RUST_LOG` is unset.
///
/// With `background` (`serve`), lines are formatted on the thread that logs them and
/// written to stderr by a thread of their own through a bounded buffer, so no request
/// waits on a write. Without it (the CLI and the Lambda form, whose process may be
/// frozen between invocations with lines still buffered), lines are written at once.
///
/// With `traces` (`serve` with `[tracing]`), spans are recorded and exported too (see
/// [`crate::otel`]); an error says why they cannot be, and nothing is installed.
pub(crate) fn init(
    format: LogFormat,
    default_level: &str,
    background: Option<LogOverflow>,
    traces: Option<&crate::config::TracingConfig>,
) -> Result<Telemetry, crate::otel::TracingError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let Some(overflow) = background else {
        let exporting = install(format, filter, std::io::stderr, traces)?;
        return Ok(Telemetry { _exporting: exporting, _log_writer: None });
    };
    let (writer, guard) = background_writer(std::io::stderr(), overflow, LOG_BUFFER_LINES, LOG_WRITE_BYTES);
    let _ = DROPPED.set(writer.error_counter());
    let exporting = install(format, filter, writer, traces)?;
    Ok(Telemetry { _exporting: exporting, _log_writer: Some(guard) })
}

/// A writer that hands lines to a thread of their own, which writes them to `sink`,
/// the lines that waited together in one write of at most `write_bytes`; `lines`
/// bounds what waits, and `overflow` says what happens past it. While the sink stalls,
/// what is held is the lines waiting and at most `write_bytes` the thread took before
/// its write blocked.
fn background_writer<W: std::io::Write + Send + 'static>(
    sink: W,
    overflow: LogOverflow,
    lines: usize,
    write_bytes: usize,
) -> (tracing_appender::non_blocking::NonBlocking, tracing_appender::non_blocking::WorkerGuard) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(lines)
        .lossy(overflow == LogOverflow::Drop)
        .thread_name("authz-log-writer")
        // the thread flushes whenever it has written every line that was waiting
        .finish(std::io::BufWriter::with_capacity(write_bytes, sink))
}

fn install<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    traces: Option<&crate::config::TracingConfig>,
) -> Result<Option<crate::otel::Exporting>, crate::otel::TracingError>
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .event_format(crate::authz::audit::AuditJson::new())
            .with_writer(writer)
            .boxed(),
    };
    // spans are for traces: a log line never shows them, whether or not traces are on
    let logs = logs.with_filter(filter.and(tracing_subscriber::filter::filter_fn(|m| !m.is_span())));
    let subscriber = tracing_subscriber::registry().with(logs);
    // A second init (tests run several commands in one process) keeps the first. No
    // traces, no layer at all: an absent layer (`None`) would still let every span of
    // every crate be created and kept, to no one's use.
    match traces {
        Some(config) => {
            let (layer, exporting) = crate::otel::layer(config)?;
            let _ = subscriber.with(layer).try_init();
            Ok(Some(exporting))
        }
        None => {
            let _ = subscriber.try_init();
            Ok(None)
        }
    }
}

/// The background writer's count of dropped lines (see [`LogOverflow::Drop`]).
static DROPPED: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> = std::sync::OnceLock::new();

/// Count and report lines the background writer dropped since `*reported`.
fn report_dropped(reported: &mut usize) {
    let Some(counter) = DROPPED.get() else { return };
    let dropped = counter.dropped_lines();
    let new = dropped.saturating_sub(*reported);
    if new == 0 {
        return;
    }
    *reported = dropped;
    metrics::counter!("authz_log_lines_dropped_total").increment(u64::try_from(new).unwrap_or(u64::MAX));
    tracing::warn!(
        dropped = new,
        total = dropped,
        "stderr could not keep up: log lines were dropped (log_overflow = drop)"
    );
}

/// How often the recorder's histogram samples are folded into their buckets when no
/// scrape does it (see [`upkeep`]). Samples wait in blocks of 64 until then (about 2.6 a
/// request, 8 bytes each): at 25,000 requests a second, 5 s of them were some 3 MB at
/// the peak of a load; 1 s held a fifth of that, and 250 ms holds a quarter of what 1 s
/// held (about 0.2 MB at 40,000 requests a second, 0.8 MB at 1 s: see
/// `bench/README.md`, "A request's head out of the read buffer"), for the same folding
/// work and four wake-ups a second.
pub(crate) const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Keep the recorder's memory bounded whether or not anyone scrapes `/metrics`: each
/// histogram sample is held until upkeep folds it into the histogram's buckets, and
/// without this task that happened only on a scrape (a sidecar never scraped grew by
/// every request it served). Also reports log lines dropped (see [`LogOverflow`]). Runs
/// until `shutdown`.
pub(crate) async fn upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dropped = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                handle.run_upkeep();
                report_dropped(&mut dropped);
            }
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

    use std::io::Write as _;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A sink that holds every write until it is opened, then keeps what it is given.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Gate {
        fn open(&self) {
            let (lock, cvar) = &*self.open;
            *lock.lock().unwrap() = true;
            cvar.notify_all();
        }

        fn lines(&self) -> usize {
            self.written.lock().unwrap().iter().filter(|b| **b == b'\n').count()
        }
    }

    impl std::io::Write for Gate {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let (lock, cvar) = &*self.open;
            let _open = cvar.wait_while(lock.lock().unwrap(), |open| !*open).unwrap();
            self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// With `drop`, a sink that does not take lines never holds up the thread that logs:
    /// what does not fit is dropped and counted. With `block`, every line arrives.
    #[test]
    fn a_stalled_sink_drops_and_counts_or_holds_every_line() {
        let gate = Gate::default();
        // a write buffer of 64 bytes: the thread holds at most 9 of these lines (7 to 9
        // bytes each) before its write to the stalled sink blocks, and one more in hand
        let (mut writer, guard) = background_writer(gate.clone(), LogOverflow::Drop, 16, 64);
        let started = std::time::Instant::now();
        for i in 0..1_000 {
            // one write per line, as the subscriber writes each formatted line
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        // nothing was written yet, and the thread that logged did not wait for the sink
        assert!(started.elapsed() < Duration::from_secs(5));
        let dropped = writer.error_counter().dropped_lines();
        assert!(dropped >= 1_000 - 16 - 9 - 1, "{dropped} dropped");
        gate.open();
        drop(guard);
        assert_eq!(gate.lines() + dropped, 1_000, "every line was written or counted");

        let gate = Gate::default();
        let (mut writer, guard) = background_writer(gate.clone(), LogOverflow::Block, 16, 64);
        let opener = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                gate.open();
            })
        };
        for i in 0..1_000 {
            // one write per line, as the subscriber writes each formatted line
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert_eq!(writer.error_counter().dropped_lines(), 0);
        drop(guard);
        opener.join().unwrap();
        assert_eq!(gate.lines(), 1_000, "block loses nothing");
    }

    /// Lines that waited together reach the sink in one write, not one write each, and
    /// a line that waits alone is written at once.
    #[test]
    fn lines_that_waited_together_are_written_together() {
        let gate = Gate::default();
        let (mut writer, guard) = background_writer(gate.clone(), LogOverflow::Block, 2_048, LOG_WRITE_BYTES);
        for i in 0..1_000 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        gate.open();
        drop(guard);
        assert_eq!(gate.lines(), 1_000);
        let writes = gate.writes.load(std::sync::atomic::Ordering::Relaxed);
        assert!(writes <= 4, "1,000 lines that waited together took {writes} writes");

        // alone, with the sink open: written without waiting for more
        let gate = Gate::default();
        gate.open();
        let (mut writer, guard) = background_writer(gate.clone(), LogOverflow::Block, 16, LOG_WRITE_BYTES);
        writer.write_all(b"alone\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while gate.lines() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(gate.lines(), 1, "a line is not held back for company");
        drop(guard);
    }

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
