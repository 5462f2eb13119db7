//! Policy files as a [`PolicySource`]: the policy and entity directories, read and
//! built on the blocking pool, watched for changes.
//!
//! File events (inotify and friends, through `notify`) make changes show up within the
//! debounce delay; the lifecycle's poll runs as well, because events are lost in the
//! cases that matter in production (a Kubernetes ConfigMap swapping its `..data` link, a
//! directory replaced whole, a network file system). Both only wake the lifecycle loop,
//! which reads, compares digests, and publishes or records the failure.
//!
//! The watcher lives as long as the source; the event channel holds one pending wake-up,
//! so the loop never spins.

use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::PolicyStore;
use super::lifecycle::{self, PolicySource, ReloadOutcome, SourceError};
use super::snapshot::{PolicySnapshot, SnapshotSource};
use super::sources::{SourceDirs, Sources};

/// How the file source notices changes.
#[derive(Debug, Clone)]
pub struct ReloadOptions {
    /// Re-read both directories this often even without file events.
    pub poll_interval: Duration,
    /// After a file event, wait this long for the rest of a multi-file change.
    pub debounce: Duration,
    /// Use file events; when false (or when the platform has none) only poll.
    pub file_events: bool,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        Self { poll_interval: Duration::from_secs(10), debounce: Duration::from_millis(250), file_events: true }
    }
}

/// The policy and entity directories.
#[derive(Debug)]
pub struct FileSource {
    dirs: SourceDirs,
    options: ReloadOptions,
    /// A snapshot already built from these files (by `serve`'s start-up checks), served
    /// first instead of building the same files again.
    initial: Option<PolicySnapshot>,
    woken: Option<mpsc::Receiver<()>>,
    /// Kept for as long as the source lives; dropping it stops the events.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl FileSource {
    /// Read `dirs`, watching them for changes when `options` say so.
    pub fn new(dirs: SourceDirs, options: ReloadOptions) -> Self {
        let (wake, woken) = mpsc::channel::<()>(1);
        let watcher = if options.file_events { watch(&dirs, wake) } else { None };
        let woken = watcher.as_ref().map(|_| woken);
        Self { dirs, options, initial: None, woken, _watcher: watcher }
    }

    /// Serve `snapshot` (built from these files) as the first load.
    #[must_use]
    pub fn with_initial(mut self, snapshot: Option<PolicySnapshot>) -> Self {
        self.initial = snapshot;
        self
    }

    /// Read both directories and build a snapshot, unless their digest is `serving`'s.
    /// Blocking.
    pub fn read(
        dirs: &SourceDirs,
        serving: Option<&str>,
        generation: u64,
    ) -> Result<Option<PolicySnapshot>, SourceError> {
        let sources = Sources::read(dirs).map_err(|error| SourceError::new(format!("unreadable:{error}"), error))?;
        if serving == Some(sources.digest.as_str()) {
            return Ok(None);
        }
        PolicySnapshot::from_sources(&sources, SnapshotSource::Files(dirs.clone()), generation)
            .map(Some)
            .map_err(|error| SourceError::new(sources.digest.clone(), error))
    }
}

impl PolicySource for FileSource {
    fn describe(&self) -> String {
        "policy files".to_owned()
    }

    async fn load(
        &mut self,
        serving: Option<&PolicySnapshot>,
        generation: u64,
    ) -> Result<Option<PolicySnapshot>, SourceError> {
        if serving.is_none()
            && let Some(snapshot) = self.initial.take()
        {
            return Ok(Some(snapshot));
        }
        let dirs = self.dirs.clone();
        let serving = serving.map(|s| s.version().digest.clone());
        let built = tokio::task::spawn_blocking(move || Self::read(&dirs, serving.as_deref(), generation)).await;
        built.unwrap_or_else(|e| {
            let problem = super::Problem::new("", None, format!("the policy load task failed: {e}"));
            Err(SourceError::new("task", super::LoadError::single(problem)))
        })
    }

    async fn changed(&mut self) {
        let Some(woken) = &mut self.woken else { return std::future::pending().await };
        if woken.recv().await.is_none() {
            self.woken = None;
            return std::future::pending().await;
        }
        tokio::time::sleep(self.options.debounce).await;
        while woken.try_recv().is_ok() {}
    }

    fn poll_interval(&self) -> Duration {
        self.options.poll_interval
    }
}

/// Watch both directories (top level only) for changes; `None` when the platform
/// cannot, in which case polling alone keeps the snapshot fresh.
fn watch(dirs: &SourceDirs, wake: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            // Full means a wake-up is already pending, which is all we need.
            let _ = wake.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "file events unavailable; reloading by polling only");
            return None;
        }
    };
    for dir in [&dirs.policies, &dirs.entities] {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; reloading it by polling only");
        }
    }
    Some(watcher)
}

/// Read both directories and, if they changed, build and publish a new snapshot, as one
/// refresh of the lifecycle does (no route check). Blocking: for the CLI and tests.
pub fn reload_once(store: &PolicyStore, dirs: &SourceDirs) -> ReloadOutcome {
    let serving = store.current();
    let serving = serving.as_ref().map(|s| s.version().digest.as_str());
    let loaded = FileSource::read(dirs, serving, store.next_generation());
    lifecycle::settle(store, loaded, &lifecycle::fits_anything())
}
