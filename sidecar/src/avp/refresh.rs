//! Keeping a store-sourced snapshot current.
//!
//! Each refresh reads the store's listing and the entity directory; when neither changed
//! it stops there (no definitions fetched, no rebuild). A change builds a new snapshot
//! off the async threads and swaps it in. Any failure (throttling, access denied, a
//! policy that does not validate, unreadable entities) keeps the snapshot serving, is
//! logged once per distinct error, counted in `authz_policy_reloads_total` and
//! `authz_avp_refresh_total`, and shown as `last_reload_error` in `/readyz`. After a
//! failure the next refresh waits longer (exponential, with jitter, so a fleet of
//! sidecars does not retry in step), up to 16 poll intervals.

use std::path::PathBuf;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio_util::sync::CancellationToken;

use super::AvpError;
use super::mirror::{self, Mirror};
use crate::policy_store::{EntitySources, LoadError, PolicySnapshot, PolicyStore, Problem, ReloadOutcome};

/// Why a refresh did not publish.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Store(#[from] AvpError),
    #[error("{0}")]
    Build(LoadError),
}

impl RefreshError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Store(e) => e.kind(),
            Self::Build(_) => "invalid",
        }
    }

    /// The error as a load error, for the store's status and `/readyz`.
    fn into_load_error(self, store: &str) -> LoadError {
        match self {
            Self::Build(error) => error,
            Self::Store(AvpError::Invalid(error)) => error,
            Self::Store(error) => LoadError::new(vec![Problem::new(format!("avp://{store}"), None, error.to_string())]),
        }
    }
}

/// Read the store and the entities and build a snapshot with `generation`. `None` when
/// both are unchanged from `serving` (the digest of the snapshot serving now).
pub async fn build(
    mirror: &mut Mirror,
    entities_dir: &std::path::Path,
    serving: Option<&str>,
    generation: u64,
) -> Result<Option<PolicySnapshot>, RefreshError> {
    let contents = mirror.fetch().await?;
    let dir = entities_dir.to_path_buf();
    let entities = tokio::task::spawn_blocking(move || EntitySources::read(&dir))
        .await
        .map_err(|e| RefreshError::Build(task_failed(&e)))?
        .map_err(RefreshError::Build)?;
    let dir = entities_dir.to_path_buf();
    let unchanged = serving.is_some_and(|digest| digest == mirror::combined_digest(&contents, &entities));
    if unchanged {
        return Ok(None);
    }
    tokio::task::spawn_blocking(move || mirror::snapshot(&contents, &entities, dir, generation))
        .await
        .map_err(|e| RefreshError::Build(task_failed(&e)))?
        .map(Some)
        .map_err(RefreshError::Build)
}

fn task_failed(e: &tokio::task::JoinError) -> LoadError {
    LoadError::new(vec![Problem::new("", None, format!("the snapshot build task failed: {e}"))])
}

/// The first snapshot. The caller retries (see [`backoff`]) until it loads; until then
/// the sidecar is not ready.
pub async fn load_first(mirror: &mut Mirror, entities_dir: &std::path::Path) -> Result<PolicySnapshot, RefreshError> {
    match build(mirror, entities_dir, None, 1).await? {
        Some(snapshot) => Ok(snapshot),
        None => Err(RefreshError::Build(LoadError::new(Vec::new()))),
    }
}

/// One refresh of `store`: publish a new snapshot, or report why not.
pub async fn refresh_once(mirror: &mut Mirror, store: &PolicyStore, entities_dir: &std::path::Path) -> ReloadOutcome {
    let serving = store.current();
    let generation = store.next_generation();
    match build(mirror, entities_dir, Some(&serving.version().digest), generation).await {
        Ok(None) => {
            metrics::counter!("authz_avp_refresh_total", "result" => "unchanged").increment(1);
            store.back_to_serving();
            ReloadOutcome::Unchanged
        }
        Ok(Some(snapshot)) => {
            metrics::counter!("authz_avp_refresh_total", "result" => "published").increment(1);
            ReloadOutcome::Published(store.publish_reloaded(snapshot))
        }
        Err(error) => {
            metrics::counter!("authz_avp_refresh_total", "result" => error.kind()).increment(1);
            let throttled = matches!(error, RefreshError::Store(AvpError::Throttled { .. }));
            let key = format!("{}:{error}", error.kind());
            store.fail_reload(&key, error.into_load_error(mirror.policy_store_id()), throttled);
            ReloadOutcome::Failed
        }
    }
}

/// Waits after consecutive failures: from one poll interval, doubling, with jitter, up
/// to 16 intervals, for as long as the failures go on.
pub fn backoff(interval: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(interval)
        .with_max_delay(interval.saturating_mul(16))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Refresh `store` every `interval` (backing off after failures) until `shutdown`.
pub async fn run(
    mut mirror: Mirror,
    store: PolicyStore,
    entities_dir: PathBuf,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut delays = backoff(interval);
    let mut wait = interval;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        wait = match refresh_once(&mut mirror, &store, &entities_dir).await {
            ReloadOutcome::Failed => delays.next().unwrap_or(interval),
            ReloadOutcome::Unchanged | ReloadOutcome::Published(_) => {
                delays = backoff(interval);
                interval
            }
        };
    }
    tracing::debug!("policy store refresher stopped");
}
