//! Shedding while the runtime itself is stalled: answer 429 early rather than let
//! requests wait for a worker that is not coming.
//!
//! A flood of requests is shed by the in-flight limit (`server.max_concurrent_requests`,
//! 128 per core by default). This catches what that limit cannot: the runtime falling
//! behind on everything, a CPU quota throttled or a worker held by something that should
//! not block. The *scheduling delay*, how late the runtime runs a task that asked to be
//! woken at a given time, measures it. It does not measure a flood: the runtime takes
//! ready connections in batches and runs its timers between them, so the delay stays
//! within a few milliseconds even while hundreds of connections queue (measured in
//! `bench/README.md`).
//!
//! A probe task asks to be woken every [`PROBE_INTERVAL`] and measures how late it ran
//! (`authz_scheduling_delay_seconds`). When the delay passes `server.shed_delay`
//! (off by default: a one-off stall would shed everyone for a second), every request that arrives is answered 429 with `Retry-After`
//! before any work is done for it: no token check, no decision, no upstream call. A 429
//! costs a small fraction of a served request, so the CPU goes to the requests already
//! admitted and the queue drains. Shedding stops once the delay has stayed under half the
//! limit for [`CALM`], so one quiet moment in an overload does not let the flood back in
//! (the same second that `Retry-After` asks clients to wait). Each start and stop is
//! logged; shed requests are counted in `authz_requests_shed_total{reason}`.
//!
//! `shed_delay = "0s"`, the default, turns the probe off (the in-flight limit holds).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the probe asks to be woken.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// How long the delay must stay under half the limit before shedding stops.
pub const CALM: Duration = Duration::from_secs(1);

/// Whether requests are being shed, as the probe last found it.
#[derive(Debug)]
pub struct Overload {
    limit: Duration,
    shedding: AtomicBool,
    state: std::sync::Mutex<Episode>,
}

/// The state of the probe between two looks.
#[derive(Debug, Default)]
struct Episode {
    /// Since when the delay has been under half the limit, during a shed episode.
    calm_since: Option<Instant>,
}

impl Overload {
    /// `limit`: the scheduling delay past which requests are shed (zero: never).
    pub fn new(limit: Duration) -> Arc<Self> {
        Arc::new(Self { limit, shedding: AtomicBool::new(false), state: std::sync::Mutex::new(Episode::default()) })
    }

    /// Whether a request arriving now is to be shed.
    pub fn shedding(&self) -> bool {
        self.shedding.load(Ordering::Relaxed)
    }

    /// Probe the runtime until `shutdown` (at once when the limit is zero).
    pub async fn probe(self: Arc<Self>, shutdown: CancellationToken) {
        if self.limit.is_zero() {
            return;
        }
        loop {
            let asked = Instant::now() + PROBE_INTERVAL;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(asked) => {}
            }
            let now = Instant::now();
            self.observe(now.saturating_duration_since(asked), now);
        }
    }

    /// Take a measured delay into account; whether requests are shed after it.
    pub fn observe(&self, delay: Duration, now: Instant) -> bool {
        metrics::gauge!("authz_scheduling_delay_seconds").set(delay.as_secs_f64());
        let was = self.shedding();
        let Ok(mut episode) = self.state.lock() else { return was };
        let shedding = if delay > self.limit {
            episode.calm_since = None;
            true
        } else if !was {
            false
        } else if delay * 2 >= self.limit {
            // not calm yet
            episode.calm_since = None;
            true
        } else {
            let calm_since = *episode.calm_since.get_or_insert(now);
            now.duration_since(calm_since) < CALM
        };
        if shedding != was {
            self.shedding.store(shedding, Ordering::Relaxed);
            if shedding {
                tracing::warn!(
                    delay_ms = delay.as_millis(),
                    limit_ms = self.limit.as_millis(),
                    "overloaded: shedding new requests with 429"
                );
            } else {
                episode.calm_since = None;
                tracing::info!("no longer overloaded: serving every request again");
            }
        }
        shedding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shedding_starts_past_the_limit_and_stops_after_a_calm_second() {
        let overload = Overload::new(Duration::from_millis(50));
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let ms = Duration::from_millis;
        assert!(!overload.observe(ms(5), at(0)));
        assert!(!overload.observe(ms(50), at(10)), "at the limit is not past it");
        assert!(overload.observe(ms(51), at(20)));
        assert!(overload.shedding());
        // under the limit but not under half of it: still shedding, and not calm
        assert!(overload.observe(ms(30), at(100)));
        assert!(overload.observe(ms(5), at(200)), "calm for no time yet");
        assert!(overload.observe(ms(5), at(900)));
        // a spike restarts the calm second
        assert!(overload.observe(ms(60), at(1_000)));
        assert!(overload.observe(ms(1), at(1_100)));
        assert!(overload.observe(ms(1), at(2_050)));
        assert!(!overload.observe(ms(1), at(2_100)), "calm for a second");
        assert!(!overload.shedding());
        assert!(!overload.observe(ms(40), at(2_200)), "half the limit does not start an episode");
    }

    #[test]
    fn a_zero_limit_never_probes() {
        let overload = Overload::new(Duration::ZERO);
        let probe = tokio_test_block_on(overload.clone().probe(CancellationToken::new()));
        assert!(probe);
        assert!(!overload.shedding());
    }

    /// Run `future` to completion on a fresh current-thread runtime with a one-second
    /// bound; whether it completed.
    fn tokio_test_block_on(future: impl std::future::Future<Output = ()>) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(1), future).await.is_ok() })
    }
}
