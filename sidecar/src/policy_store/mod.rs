//! Policy state: one immutable [`PolicySnapshot`] behind one atomic swap.
//!
//! Readers call [`PolicyStore::current`] on every decision and never lock: the snapshot
//! sits in an [`ArcSwapOption`], whose load is a few atomic operations. A store exists
//! before its first snapshot (serving nothing: the sidecar is not ready). Only the
//! [`lifecycle`] writes, and only whole snapshots, so a decision always sees policies,
//! schema and entities that were validated together. A failed rebuild leaves the current
//! snapshot in place and is recorded in [`ReloadStatus`] (and in metrics and logs).

mod diagnostics;
mod files;
pub mod lifecycle;
mod snapshot;
pub mod sources;
mod statements;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;

pub use diagnostics::{LoadError, Location, Problem};
pub use files::{FileSource, ReloadOptions, reload_once};
pub use lifecycle::{PolicySource, ReloadOutcome, SourceError};
pub use snapshot::{
    CheckedEntity, ContextValueKind, DecisionKey, DecisionLookup, DefinedAt, LOOKUP_SERIALS, OfType, PolicyParts,
    PolicySnapshot, RequestEntitiesKey, RequestSet, Selection, Settled, Slice, SnapshotSource, SnapshotVersion,
    next_serial,
};
pub use sources::{EntitySources, SourceDirs, SourceFile, Sources};

/// Shared handle on the current snapshot. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PolicyStore {
    inner: Arc<Inner>,
}

/// What a store's snapshots are for: logged and counted apart, so that a candidate's
/// reloads never read as the serving set's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The policies requests are decided by.
    Serving,
    /// A candidate decided beside them (`[policies.shadow]`), never answering.
    Shadow,
}

impl Role {
    /// The `set` field of the store's log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Shadow => "shadow",
        }
    }

    fn reloads_metric(self) -> &'static str {
        match self {
            Self::Serving => "authz_policy_reloads_total",
            Self::Shadow => "authz_shadow_reloads_total",
        }
    }
}

#[derive(Debug)]
struct Inner {
    role: Role,
    current: ArcSwapOption<PolicySnapshot>,
    /// Generation of the newest snapshot; each swap takes the next number.
    generation: AtomicU64,
    /// When the serving snapshot was published, in milliseconds since the Unix epoch
    /// (0 before the first).
    published_at_ms: AtomicU64,
    status: ReloadStatus,
}

/// What the reloader has seen: counters for metrics and `/readyz`, and the last error.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    successes: AtomicU64,
    failures: AtomicU64,
    /// The problems of the newest failed load or rebuild, until one succeeds. An
    /// `ArcSwapOption` so that reporting it never blocks the reloader.
    last_error: ArcSwapOption<LoadError>,
    /// Digest of the inputs that last failed, so an unchanged broken file is reported
    /// once, not on every poll.
    last_failed_digest: ArcSwapOption<String>,
}

/// A copy of the reload counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStats {
    pub successes: u64,
    pub failures: u64,
    pub last_error: Option<LoadError>,
}

impl PolicyStore {
    /// A store serving `initial`.
    pub fn new(initial: PolicySnapshot) -> Self {
        let store = Self::pending();
        store.publish(initial);
        store
    }

    /// A store with no snapshot yet: it serves nothing until the first is published.
    pub fn pending() -> Self {
        Self::pending_for(Role::Serving)
    }

    /// A store for `role` with no snapshot yet.
    pub fn pending_for(role: Role) -> Self {
        Self {
            inner: Arc::new(Inner {
                role,
                current: ArcSwapOption::empty(),
                generation: AtomicU64::new(0),
                published_at_ms: AtomicU64::new(0),
                status: ReloadStatus::default(),
            }),
        }
    }

    /// Build the first snapshot from two directories (blocking file I/O).
    pub fn load_files(dirs: &SourceDirs) -> Result<Self, LoadError> {
        PolicySnapshot::load(dirs, 1).map(Self::new)
    }

    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// The snapshot serving now, if one has loaded. Lock-free; hold it for the length of
    /// one decision.
    pub fn current(&self) -> Option<Arc<PolicySnapshot>> {
        self.inner.current.load_full()
    }

    /// The generation the next snapshot must carry.
    pub fn next_generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire) + 1
    }

    /// Publish a snapshot a reloader built (from files or a policy store): log it and
    /// its warnings, count it, swap it in. Every source publishes through this one place.
    pub fn publish_reloaded(&self, snapshot: PolicySnapshot) -> u64 {
        let generation = snapshot.version().generation;
        let set = self.role().as_str();
        tracing::info!(
            set,
            version = %snapshot.version(),
            generation,
            source = %snapshot.source(),
            policies = snapshot.policy_count(),
            entities = snapshot.entity_count(),
            "policy snapshot reloaded"
        );
        for warning in snapshot.warnings() {
            tracing::warn!(set, %warning, "policy snapshot warning");
        }
        self.publish(snapshot);
        metrics::counter!(self.role().reloads_metric(), "result" => "success").increment(1);
        generation
    }

    /// Record a failed reload of inputs identified by `key`: counted and logged once
    /// per distinct failure, the serving snapshot kept. `quiet` logs it as a warning
    /// (a throttled store) rather than an error. Returns whether it was new.
    pub fn fail_reload(&self, key: &str, error: LoadError, quiet: bool) -> bool {
        let message = error.to_string();
        if !self.record_failure(key, error) {
            return false;
        }
        metrics::counter!(self.role().reloads_metric(), "result" => "failure").increment(1);
        let serving = self.current().map(|s| s.version().to_string()).unwrap_or_default();
        let set = self.role().as_str();
        if quiet {
            tracing::warn!(set, serving, error = %message, "policy reload deferred; backing off");
        } else {
            tracing::error!(set, serving, error = %message, "policy reload failed; the previous snapshot keeps serving");
        }
        true
    }

    /// Forget a recorded failure because the inputs are back to the serving snapshot,
    /// and say so once.
    pub fn back_to_serving(&self) {
        if self.clear_failure() {
            let version = self.current().map(|s| s.version().to_string()).unwrap_or_default();
            tracing::info!(set = self.role().as_str(), version, "policy sources are back to the serving snapshot");
        }
    }

    /// Swap in a new snapshot and record the success (of a reload, when one was serving).
    ///
    /// The status is settled before the swap, so whoever sees the new snapshot also
    /// sees the success counted and the previous failure cleared.
    pub fn publish(&self, snapshot: PolicySnapshot) {
        let status = &self.inner.status;
        // a reload is a snapshot replacing another; the first is not one
        if self.inner.current.load().is_some() {
            status.successes.fetch_add(1, Ordering::Release);
        }
        status.last_error.store(None);
        status.last_failed_digest.store(None);
        self.inner.generation.fetch_max(snapshot.version().generation, Ordering::AcqRel);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.inner.published_at_ms.store(u64::try_from(now.as_millis()).unwrap_or(u64::MAX), Ordering::Release);
        self.inner.current.store(Some(Arc::new(snapshot)));
    }

    /// When the serving snapshot was published, in seconds since the Unix epoch; `None`
    /// before the first.
    pub fn published_at(&self) -> Option<f64> {
        let ms = self.inner.published_at_ms.load(Ordering::Acquire);
        #[expect(clippy::cast_precision_loss, reason = "milliseconds since 1970 fit an f64's 53 bits")]
        (ms > 0).then(|| ms as f64 / 1000.0)
    }

    /// Record why the first snapshot has not loaded (shown in `/readyz`; not counted as
    /// a failed reload, since nothing was being replaced).
    pub fn record_unloaded(&self, error: LoadError) {
        self.inner.status.last_error.store(Some(Arc::new(error)));
    }

    /// Why the store is not serving, or `None` when it is.
    pub fn not_serving(&self) -> Option<String> {
        if self.inner.current.load().is_some() {
            return None;
        }
        Some(match self.inner.status.last_error.load_full() {
            Some(error) => format!("no policy snapshot: {error}"),
            None => "no policy snapshot yet".to_owned(),
        })
    }

    /// Record a failed rebuild of inputs with `digest`. Returns false when the same
    /// inputs had already failed (so the caller logs each broken change once).
    pub fn record_failure(&self, digest: &str, error: LoadError) -> bool {
        let status = &self.inner.status;
        if status.last_failed_digest.load().as_deref().is_some_and(|d| d == digest) {
            return false;
        }
        // the error first, then the count: whoever sees the count sees the error
        status.last_error.store(Some(Arc::new(error)));
        status.last_failed_digest.store(Some(Arc::new(digest.to_owned())));
        status.failures.fetch_add(1, Ordering::Release);
        true
    }

    /// Forget a recorded failure because the files are back to the serving snapshot.
    /// Returns whether there was one.
    pub fn clear_failure(&self) -> bool {
        let status = &self.inner.status;
        status.last_failed_digest.swap(None).is_some() | status.last_error.swap(None).is_some()
    }

    pub fn stats(&self) -> ReloadStats {
        let status = &self.inner.status;
        ReloadStats {
            successes: status.successes.load(Ordering::Acquire),
            failures: status.failures.load(Ordering::Acquire),
            last_error: status.last_error.load_full().map(|e| (*e).clone()),
        }
    }
}
