//! Shadow policies (`[policies.shadow]`): a candidate policy set decides every request
//! (or a sample) beside the serving set, off the request path, and never changes an
//! answer. A security team runs a candidate next to production, reads where the two
//! disagree, then promotes it.
//!
//! A decision site hands the question it asked and its answer to a bounded queue
//! ([`Shadow::offer`] never waits; a full queue skips the question and counts it in
//! `authz_shadow_dropped_total`). A thread of its own asks the candidate the same
//! question exactly as `replay` does (see [`crate::records::replay::decide`]: the
//! principal the token built, the context and entities of the request, checked against
//! the candidate's schema), over the serving set's entities. Where the answers differ
//! it counts `authz_shadow_disagreements_total{route,live,shadow}` and logs both sides
//! with their deciding policies (target `authz_sidecar::shadow`); where only the
//! deciding policies differ it counts `authz_shadow_policy_differences_total{route}`.
//!
//! The candidate loads and reloads through the same lifecycle as the serving set (its
//! own store, `Role::Shadow`): a candidate that does not build is logged and counted
//! (`authz_shadow_reloads_total{result}`) and shadows nothing until it does, and the
//! sidecar serves, and stays ready, all the while.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::SystemTime;

use crate::authz::{Decision, DecisionRequest, Engine, RequestError};
use crate::config::ShadowConfig;
use crate::policy_store::{PolicyStore, Role};
use crate::records::replay::{self, Answer, Change};
use crate::records::{JsonOf, Origin, Record};

/// The `tracing` target of the lines that report disagreements.
pub const TARGET: &str = "authz_sidecar::shadow";

/// A question the serving set answered, waiting for the candidate.
#[derive(Debug)]
struct Job {
    origin: Origin,
    request: DecisionRequest,
    live: Result<Decision, RequestError>,
    snapshot: Arc<str>,
}

/// The candidate: its store, and the queue to the thread that asks it.
#[derive(Debug, Clone)]
pub struct Shadow {
    store: PolicyStore,
    queue: SyncSender<Job>,
    /// A request is shadowed when the hash of its id falls below this (`u64::MAX`:
    /// every request).
    below: u64,
}

impl Shadow {
    /// An empty candidate store and the thread that decides with it. The store is
    /// loaded by the policy lifecycle (`app.rs`).
    pub fn start(config: &ShadowConfig) -> std::io::Result<Self> {
        let store = PolicyStore::pending_for(Role::Shadow);
        let (queue, jobs) = std::sync::mpsc::sync_channel(config.queue);
        let deciding = store.clone();
        std::thread::Builder::new().name("authz-shadow".into()).spawn(move || decide_all(&deciding, &jobs))?;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a ratio in (0, 1) of the hash space: a bound, not an exact count"
        )]
        let below = if config.sample_ratio >= 1.0 { u64::MAX } else { (config.sample_ratio * u64::MAX as f64) as u64 };
        Ok(Self { store, queue, below })
    }

    pub fn store(&self) -> &PolicyStore {
        &self.store
    }

    /// Hand a decided question to the candidate, unless it has no snapshot yet, the
    /// request is outside the sample (by its id, so every decision of one request is
    /// shadowed or none), or the queue is full. Never waits.
    pub fn offer(
        &self,
        origin: Origin,
        request: &DecisionRequest,
        live: &Result<Decision, RequestError>,
        snapshot: Arc<str>,
    ) {
        if self.store.current().is_none() || !self.samples(&origin.request_id) {
            return;
        }
        let job = Job { origin, request: request.clone(), live: live.clone(), snapshot };
        if self.queue.try_send(job).is_err() {
            metrics::counter!("authz_shadow_dropped_total").increment(1);
        }
    }

    fn samples(&self, request_id: &str) -> bool {
        self.below == u64::MAX || BuildHasherDefault::<DefaultHasher>::default().hash_one(request_id) < self.below
    }
}

/// The thread: each question asked again of the candidate serving at that moment.
fn decide_all(store: &PolicyStore, jobs: &Receiver<Job>) {
    let engine = Engine::new();
    let mut json = JsonOf::default();
    while let Ok(job) = jobs.recv() {
        let Some(candidate) = store.current() else { continue };
        let Job { origin, request, live, snapshot } = job;
        let record = Record::of(SystemTime::now(), origin, &request, &live, (&snapshot, &[]), &mut json);
        let decided = replay::decide(&engine, &candidate, &record);
        metrics::counter!("authz_shadow_decisions_total").increment(1);
        let (before, after) = (Answer::recorded(&record), Answer::of(&decided));
        let Some(change) = Change::between(&before, &after) else { continue };
        let route = record.route.clone().or_else(|| record.operation.clone()).unwrap_or_default();
        let error = decided.as_ref().err().map(ToString::to_string);
        if change == Change::Policies {
            metrics::counter!("authz_shadow_policy_differences_total", "route" => route.clone()).increment(1);
        } else {
            let (live, shadow) = (before.decision.as_str(), after.decision.as_str());
            metrics::counter!("authz_shadow_disagreements_total", "route" => route.clone(), "live" => live,
                "shadow" => shadow)
            .increment(1);
        }
        let level_warn = change != Change::Policies;
        macro_rules! report {
            ($level:ident, $message:literal) => {
                tracing::$level!(
                    target: TARGET,
                    request_id = %record.request_id,
                    route,
                    change = change.as_str(),
                    principal = %record.principal,
                    action = %record.action,
                    resource = %record.resource,
                    live = before.decision.as_str(),
                    live_reason = %before.reason,
                    live_policies = %before.policies.join(","),
                    live_snapshot = %record.snapshot,
                    shadow = after.decision.as_str(),
                    shadow_reason = %after.reason,
                    shadow_policies = %after.policies.join(","),
                    shadow_snapshot = %candidate.version(),
                    error,
                    $message
                )
            };
        }
        if level_warn {
            report!(warn, "the shadow policies disagree with the serving ones");
        } else {
            report!(debug, "the shadow policies decide by other policies");
        }
    }
}
