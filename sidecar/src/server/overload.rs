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

/// Whether requests are being shed, as each core's probe last found it.
#[derive(Debug)]
pub struct Overload {
    limit: Duration,
    /// One per data-plane core: a core whose runtime falls behind sheds its own requests.
    probes: Box<[Probe]>,
}

/// What one core's probe found.
#[derive(Debug)]
struct Probe {
    /// The core's index, as the gauge's `core` label.
    core: String,
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
    /// `limit`: the scheduling delay past which requests are shed (zero: never), probed
    /// on each of `cores` cores (at least one).
    pub fn new(limit: Duration, cores: usize) -> Arc<Self> {
        let probes = (0..cores.max(1))
            .map(|core| Probe {
                core: core.to_string(),
                shedding: AtomicBool::new(false),
                state: std::sync::Mutex::new(Episode::default()),
            })
            .collect();
        Arc::new(Self { limit, probes })
    }

    /// Core `core`'s probe (the first's off the cores).
    fn probe_of(&self, core: Option<usize>) -> &Probe {
        let index = core.unwrap_or(0) % self.probes.len();
        #[expect(clippy::indexing_slicing, reason = "the index is taken modulo the length, which is at least one")]
        &self.probes[index]
    }

    /// Whether a request arriving now, on the calling thread's core, is to be shed.
    pub fn shedding(&self) -> bool {
        self.probe_of(super::cores::current()).shedding.load(Ordering::Relaxed)
    }

    /// Probe core `core`'s runtime (run this on it) until `shutdown` (at once when the
    /// limit is zero).
    pub async fn probe(self: Arc<Self>, core: usize, shutdown: CancellationToken) {
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
            self.observe(core, now.saturating_duration_since(asked), now);
        }
    }

    /// Take a delay measured on core `core` into account; whether that core's requests
    /// are shed after it.
    pub fn observe(&self, core: usize, delay: Duration, now: Instant) -> bool {
        let probe = self.probe_of(Some(core));
        metrics::gauge!("authz_scheduling_delay_seconds", "core" => probe.core.clone()).set(delay.as_secs_f64());
        let was = probe.shedding.load(Ordering::Relaxed);
        let Ok(mut episode) = probe.state.lock() else { return was };
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
            probe.shedding.store(shedding, Ordering::Relaxed);
            if shedding {
                tracing::warn!(
                    core,
                    delay_ms = delay.as_millis(),
                    limit_ms = self.limit.as_millis(),
                    "overloaded: shedding new requests with 429"
                );
            } else {
                episode.calm_since = None;
                tracing::info!(core, "no longer overloaded: serving every request again");
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
        let overload = Overload::new(Duration::from_millis(50), 1);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let ms = Duration::from_millis;
        assert!(!overload.observe(0, ms(5), at(0)));
        assert!(!overload.observe(0, ms(50), at(10)), "at the limit is not past it");
        assert!(overload.observe(0, ms(51), at(20)));
        assert!(overload.shedding());
        // under the limit but not under half of it: still shedding, and not calm
        assert!(overload.observe(0, ms(30), at(100)));
        assert!(overload.observe(0, ms(5), at(200)), "calm for no time yet");
        assert!(overload.observe(0, ms(5), at(900)));
        // a spike restarts the calm second
        assert!(overload.observe(0, ms(60), at(1_000)));
        assert!(overload.observe(0, ms(1), at(1_100)));
        assert!(overload.observe(0, ms(1), at(2_050)));
        assert!(!overload.observe(0, ms(1), at(2_100)), "calm for a second");
        assert!(!overload.shedding());
        assert!(!overload.observe(0, ms(40), at(2_200)), "half the limit does not start an episode");
    }

    #[tokio::test]
    async fn a_core_that_falls_behind_sheds_its_own_requests_only() {
        let overload = Overload::new(Duration::from_millis(50), 2);
        let now = Instant::now();
        assert!(overload.observe(1, Duration::from_millis(80), now));
        assert!(!overload.shedding(), "off the cores, a request is the first core's");
        let cores = super::super::cores::Cores::start(2).unwrap();
        let on = |core: usize| {
            let overload = overload.clone();
            cores.spawn(core, async move { overload.shedding() })
        };
        assert!(!on(0).await.unwrap());
        assert!(on(1).await.unwrap());
        assert!(!overload.observe(0, Duration::from_millis(5), now));
        assert!(overload.observe(1, Duration::from_millis(5), now), "core 1 is not calm yet");
        cores.stop().await;
    }

    #[test]
    fn a_zero_limit_never_probes() {
        let overload = Overload::new(Duration::ZERO, 1);
        let probe = tokio_test_block_on(overload.clone().probe(0, CancellationToken::new()));
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
