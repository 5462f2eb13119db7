//! The policy lifecycle: one loop for every place policies come from.
//!
//! A [`PolicySource`] (the policy files, a Verified Permissions store) knows how to build
//! a snapshot and when to look again; [`run`] owns everything else: the first load,
//! retried with jittered exponential backoff until a snapshot builds and fits the routes
//! (until then the store serves nothing and `/readyz` says why), then refreshes, each
//! settled through one path ([`settle`]): unchanged inputs clear a recorded failure, a
//! new snapshot is published, a failure keeps the serving snapshot and is logged once,
//! counted and shown in `/readyz`, and the next look backs off as far as the source
//! allows. Every snapshot served, the first and every reload, is checked against the
//! routes by the same `fits` check: one whose schema does not fit them is never served.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio_util::sync::CancellationToken;

use super::{LoadError, PolicySnapshot, PolicyStore, Problem, Role};

/// A place policies come from.
pub trait PolicySource: Send {
    /// What the logs and `/readyz` call it (`policy files`, `policy store \`ps-…\``).
    fn describe(&self) -> String;

    /// Build a snapshot carrying `generation`, or `None` when the inputs are those of
    /// `serving` (so nothing is rebuilt).
    fn load(
        &mut self,
        serving: Option<&PolicySnapshot>,
        generation: u64,
    ) -> impl Future<Output = Result<Option<PolicySnapshot>, SourceError>> + Send;

    /// Resolves when something may have changed before the next poll (file events);
    /// never, for a source that is only polled.
    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// How often to look again when nothing says something changed.
    fn poll_interval(&self) -> Duration;

    /// How far the wait after consecutive failed refreshes may grow (from one poll
    /// interval, doubling, with jitter): a remote store is asked less often while it
    /// throttles or fails; files, which cost nothing to re-read, stay at the interval.
    fn max_backoff(&self) -> Duration {
        self.poll_interval()
    }
}

/// Why a source did not build a snapshot.
#[derive(Debug, Clone)]
pub struct SourceError {
    pub error: LoadError,
    /// Identifies the failure, so the same broken inputs are reported once.
    pub key: String,
    /// Expected and transient (a throttled store): logged as a warning.
    pub quiet: bool,
}

impl SourceError {
    pub fn new(key: impl Into<String>, error: LoadError) -> Self {
        Self { error, key: key.into(), quiet: false }
    }
}

/// Checks a snapshot against what will ask it (the routes): the problems, or none.
pub type Fits = Arc<dyn Fn(&PolicySnapshot) -> Vec<String> + Send + Sync>;

/// A check that accepts every snapshot (the CLI and tests, which have no routes).
pub fn fits_anything() -> Fits {
    Arc::new(|_| Vec::new())
}

/// What one look at a source did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The inputs are the ones already serving.
    Unchanged,
    /// A new snapshot with this generation now serves.
    Published(u64),
    /// The inputs do not build (or do not fit); the previous snapshot, if any, keeps
    /// serving. Reported (logged, counted) once per distinct failure.
    Failed,
}

/// Keep `store` loaded from `source` until `shutdown`: the first load (unless the store
/// already serves a snapshot), then refreshes.
pub async fn run<S: PolicySource>(mut source: S, store: PolicyStore, fits: Fits, shutdown: CancellationToken) {
    let what = source.describe();
    // a store that already serves (built by the caller) goes straight to refreshes
    if store.current().is_none() && !first_load(&mut source, &store, &fits, &what, &shutdown).await {
        return;
    }
    let interval = source.poll_interval();
    let mut delays = backoff(interval, source.max_backoff());
    let mut wait = interval;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
            () = source.changed() => {}
        }
        wait = match refresh_once(&mut source, &store, &fits).await {
            ReloadOutcome::Failed => delays.next().unwrap_or(interval),
            ReloadOutcome::Unchanged | ReloadOutcome::Published(_) => {
                delays = backoff(interval, source.max_backoff());
                interval
            }
        };
    }
    tracing::debug!(source = what, "policy refresh stopped");
}

/// Load until a snapshot builds and fits, backing off from half a second up to the poll
/// interval (at least a second), with jitter. False when shut down first.
async fn first_load<S: PolicySource>(
    source: &mut S,
    store: &PolicyStore,
    fits: &Fits,
    what: &str,
    shutdown: &CancellationToken,
) -> bool {
    let max_delay = source.poll_interval().max(Duration::from_secs(1));
    let mut delays = backoff(Duration::from_millis(500), max_delay);
    loop {
        let loaded = match source.load(None, store.next_generation()).await {
            Ok(Some(snapshot)) => admitted(snapshot, fits).await,
            Ok(None) => Err(SourceError::new("empty", LoadError::new(Vec::new()))),
            Err(error) => Err(error),
        };
        match loaded {
            Ok(snapshot) => {
                tracing::info!(set = store.role().as_str(), source = what, version = %snapshot.version(),
                    policies = snapshot.policy_count(), entities = snapshot.entity_count(), "policy snapshot loaded");
                store.publish(snapshot);
                return true;
            }
            Err(failure) => {
                match store.role() {
                    Role::Serving => tracing::error!(set = "serving", source = what, error = %failure.error,
                        "cannot serve a policy snapshot; not ready, retrying"),
                    // the candidate's failure is its own: serving goes on, undecided by it
                    Role::Shadow => tracing::error!(set = "shadow", source = what, error = %failure.error,
                        "cannot load the shadow policies; nothing is shadowed until they load, retrying"),
                }
                store.record_unloaded(failure.error);
            }
        }
        let delay = delays.next().unwrap_or(max_delay);
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One look at `source`, settled into `store`.
pub async fn refresh_once<S: PolicySource>(source: &mut S, store: &PolicyStore, fits: &Fits) -> ReloadOutcome {
    let serving = store.current();
    let loaded = match source.load(serving.as_deref(), store.next_generation()).await {
        Ok(Some(snapshot)) => admitted(snapshot, fits).await.map(Some),
        other => other,
    };
    settle_checked(store, loaded)
}

/// As [`refresh_once`], for a look already taken (on this thread).
pub fn settle(store: &PolicyStore, loaded: Result<Option<PolicySnapshot>, SourceError>, fits: &Fits) -> ReloadOutcome {
    settle_checked(store, loaded.and_then(|snapshot| snapshot.map(|s| checked(s, fits)).transpose()))
}

/// The one way a look's result reaches the store: unchanged inputs clear a recorded
/// failure; a snapshot that fits is published; anything else is recorded (once per
/// distinct failure) while the serving snapshot stays.
fn settle_checked(store: &PolicyStore, loaded: Result<Option<PolicySnapshot>, SourceError>) -> ReloadOutcome {
    match loaded {
        Ok(None) => {
            store.back_to_serving();
            ReloadOutcome::Unchanged
        }
        Ok(Some(snapshot)) => ReloadOutcome::Published(store.publish_reloaded(snapshot)),
        Err(failure) => {
            // logged and counted once per distinct failure; failed every time, so that
            // the loop keeps backing off while it lasts
            store.fail_reload(&failure.key, failure.error, failure.quiet);
            ReloadOutcome::Failed
        }
    }
}

/// [`checked`] on a blocking thread: the check also readies the snapshot for the routes
/// (see `App::fits`), milliseconds of work at a large account pool that no async worker
/// should be held for.
async fn admitted(snapshot: PolicySnapshot, fits: &Fits) -> Result<PolicySnapshot, SourceError> {
    let fits = Arc::clone(fits);
    match tokio::task::spawn_blocking(move || checked(snapshot, &fits)).await {
        Ok(admitted) => admitted,
        // a panic in the check admits nothing
        Err(error) => {
            let message = format!("the check of the snapshot against the routes failed: {error}");
            Err(SourceError::new("check", LoadError::new(vec![Problem::new("", None, message)])))
        }
    }
}

/// `snapshot` if it fits the routes; else why not, keyed by its digest.
fn checked(snapshot: PolicySnapshot, fits: &Fits) -> Result<PolicySnapshot, SourceError> {
    let problems = fits(&snapshot);
    if problems.is_empty() {
        return Ok(snapshot);
    }
    let message = format!("the policy schema does not fit the routes: {}", problems.join("; "));
    let key = format!("misfit:{}", snapshot.version().digest);
    Err(SourceError::new(key, LoadError::new(vec![Problem::new("", None, message)])))
}

/// Waits from `min`, doubling, with jitter, up to `max`, for as long as asked.
pub fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send {
    backon::ExponentialBuilder::default()
        .with_min_delay(min.min(max))
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}
