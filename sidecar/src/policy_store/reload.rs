//! Hot reload of file snapshots.
//!
//! One background task per store watches both directories. File events (inotify and
//! friends, through `notify`) make changes show up within the debounce delay; a slow
//! poll runs as well, because events are lost in the cases that matter in production
//! (a Kubernetes ConfigMap swapping its `..data` link, a directory replaced whole, a
//! network file system). Both only wake the task; the task reads and builds on the
//! blocking pool, compares digests, and publishes or records the failure.
//!
//! The task owns its watcher, ends when `shutdown` is cancelled, and never spins: the
//! event channel holds one pending wake-up and the poll interval bounds the rest.

use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::PolicyStore;
use super::snapshot::{PolicySnapshot, SnapshotSource};
use super::sources::{SourceDirs, Sources};

/// How the reloader notices changes.
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

/// What one reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files are the ones already serving (or already known to be broken).
    Unchanged,
    /// A new snapshot with this generation now serves.
    Published(u64),
    /// The files changed but do not build; the previous snapshot keeps serving.
    Failed,
}

/// Start the reload task for `store`, reading `dirs`.
pub fn spawn_file_reloader(
    store: PolicyStore,
    dirs: SourceDirs,
    options: ReloadOptions,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(store, dirs, options, shutdown))
}

async fn run(store: PolicyStore, dirs: SourceDirs, options: ReloadOptions, shutdown: CancellationToken) {
    let (wake, mut woken) = mpsc::channel::<()>(1);
    // Keep the watcher alive for as long as the task runs; dropping it stops the events.
    let _watcher = if options.file_events { watch(&dirs, wake) } else { None };

    let mut poll = tokio::time::interval(options.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await; // the first tick is immediate; the store was just loaded

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = poll.tick() => {}
            Some(()) = woken.recv() => {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(options.debounce) => {}
                }
                while woken.try_recv().is_ok() {}
            }
        }
        let (store, dirs) = (store.clone(), dirs.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || reload_once(&store, &dirs)).await {
            tracing::error!(error = %e, "policy reload task failed");
        }
    }
    tracing::debug!("policy reloader stopped");
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

/// Read both directories and, if they changed, build and publish a new snapshot.
/// Blocking: call it from the blocking pool (or a CLI).
pub fn reload_once(store: &PolicyStore, dirs: &SourceDirs) -> ReloadOutcome {
    let sources = match Sources::read(dirs) {
        Ok(sources) => sources,
        Err(error) => return fail(store, &format!("unreadable:{error}"), error),
    };
    if sources.digest == store.current().version().digest {
        store.back_to_serving();
        return ReloadOutcome::Unchanged;
    }
    let generation = store.next_generation();
    match PolicySnapshot::from_sources(&sources, SnapshotSource::Files(dirs.clone()), generation) {
        Ok(snapshot) => ReloadOutcome::Published(store.publish_reloaded(snapshot)),
        Err(error) => fail(store, &sources.digest, error),
    }
}

fn fail(store: &PolicyStore, digest: &str, error: super::LoadError) -> ReloadOutcome {
    if store.fail_reload(digest, error, false) { ReloadOutcome::Failed } else { ReloadOutcome::Unchanged }
}
