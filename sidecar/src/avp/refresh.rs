//! A Verified Permissions store as a policy source (see
//! [`lifecycle`](crate::policy_store::lifecycle), which owns the loop).
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

use super::AvpError;
use super::mirror::{self, Mirror};
use crate::policy_store::{EntitySources, LoadError, PolicySnapshot, PolicySource, Problem, SourceError};

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

/// A Verified Permissions store (and the entity directory) as a [`PolicySource`].
#[derive(Debug)]
pub struct StoreSource {
    mirror: Mirror,
    entities_dir: PathBuf,
    interval: Duration,
}

impl StoreSource {
    pub fn new(mirror: Mirror, entities_dir: PathBuf, interval: Duration) -> Self {
        Self { mirror, entities_dir, interval }
    }
}

impl PolicySource for StoreSource {
    fn describe(&self) -> String {
        format!("policy store `{}`", self.mirror.policy_store_id())
    }

    async fn load(
        &mut self,
        serving: Option<&PolicySnapshot>,
        generation: u64,
    ) -> Result<Option<PolicySnapshot>, SourceError> {
        let serving = serving.map(|s| s.version().digest.clone());
        let built = build(&mut self.mirror, &self.entities_dir, serving.as_deref(), generation).await;
        let result = match &built {
            Ok(None) => "unchanged",
            Ok(Some(_)) => "published",
            Err(error) => error.kind(),
        };
        if serving.is_some() {
            metrics::counter!("authz_avp_refresh_total", "result" => result).increment(1);
        }
        built.map_err(|error| {
            let quiet = matches!(&error, RefreshError::Store(store) if store.is_throttling());
            let key = format!("{}:{error}", error.kind());
            SourceError { error: error.into_load_error(self.mirror.policy_store_id()), key, quiet }
        })
    }

    fn poll_interval(&self) -> Duration {
        self.interval
    }

    /// Up to 16 poll intervals while the store fails or throttles.
    fn max_backoff(&self) -> Duration {
        self.interval.saturating_mul(16)
    }
}
