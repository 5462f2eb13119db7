//! Hot reload: a change is picked up, a broken file leaves the last good snapshot
//! serving and is reported once, a fix recovers. Waits are bounded polls, not timing
//! assertions.

use std::time::Duration;

use authz_sidecar::authz::{Decision, DecisionRequest, Effect, Engine, parse_entity_uid};
use authz_sidecar::policy_store::{FileSource, PolicyStore, ReloadOptions, ReloadOutcome, lifecycle};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::Workspace;

/// The quarantined seed account: denied only by `account-must-be-usable`.
fn quarantined() -> DecisionRequest {
    DecisionRequest::new(
        parse_entity_uid(r#"DataZone::User::"4b89ed84-9842-45dd-a2e5-15e49eda2b03""#).unwrap(),
        parse_entity_uid(r#"DataZone::Action::"UseAccount""#).unwrap(),
        parse_entity_uid(r#"DataZone::Account::"333333333333""#).unwrap(),
    )
    .with_context(json!({"regionName": "us-east-1", "domainIdentifier": "dzd-4igt64u5j25ko9"}))
}

/// Decide `request` against the snapshot `store` serves now.
fn decide(store: &PolicyStore, request: &DecisionRequest) -> Decision {
    Engine::new().decide(&store.current().unwrap(), request).unwrap()
}

/// Wait (at most 20 s) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Replace `path`'s contents in one step, as editors and mounted config maps do: a poll
/// between a truncate and a write would read half a file and count a failure no test
/// step caused.
fn replace(path: &std::path::Path, text: &str) {
    let staged = path.with_extension("staged~");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

fn options(file_events: bool) -> ReloadOptions {
    ReloadOptions {
        poll_interval: if file_events { Duration::from_secs(3600) } else { Duration::from_millis(100) },
        debounce: Duration::from_millis(50),
        file_events,
    }
}

async fn change_break_fix(file_events: bool) {
    let ws = Workspace::shipped();
    let store = PolicyStore::load_files(&ws.dirs()).unwrap();
    let shutdown = CancellationToken::new();
    let source = FileSource::new(ws.dirs(), options(file_events));
    let task = tokio::spawn(lifecycle::run(source, store.clone(), lifecycle::fits_anything(), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await; // let the watcher start
    assert_eq!(decide(&store, &quarantined()).effect, Effect::Deny);
    let first = store.current().unwrap().version().clone();

    // 1. A change is picked up: QUARANTINED becomes a usable status.
    let path = ws.policies().join("account-pool.cedar");
    let good = std::fs::read_to_string(&path).unwrap();
    let changed = good.replace(r#"["AVAILABLE", "ASSIGNED"]"#, r#"["AVAILABLE", "ASSIGNED", "QUARANTINED"]"#);
    assert_ne!(good, changed);
    replace(&path, &changed);
    eventually("the change is published", || store.current().unwrap().version().generation == 2).await;
    assert_ne!(store.current().unwrap().version().digest, first.digest);
    assert_eq!(decide(&store, &quarantined()).effect, Effect::Allow);

    // 2. A broken file: the last good snapshot keeps serving, the failure is reported.
    replace(&path, &changed.replace("forbid (", "forbid (( "));
    eventually("the failure is recorded", || store.stats().failures == 1).await;
    let stats = store.stats();
    let error = stats.last_error.expect("the error is kept for reporting");
    assert!(error.to_string().contains("account-pool.cedar:"), "{error}");
    assert_eq!(store.current().unwrap().version().generation, 2, "the good snapshot still serves");
    assert_eq!(decide(&store, &quarantined()).effect, Effect::Allow);
    // Reported once per change, not on every look at the same broken file.
    std::fs::write(ws.policies().join("unrelated.txt"), "wake the watcher").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.stats().failures, 1);

    // 3. The fix recovers.
    replace(&path, &good);
    eventually("the fix is published", || store.current().unwrap().version().generation == 3).await;
    assert_eq!(store.current().unwrap().version().digest, first.digest, "same files, same version");
    assert!(store.stats().last_error.is_none());
    assert_eq!(store.stats().successes, 2);
    assert_eq!(decide(&store, &quarantined()).effect, Effect::Deny);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("the reloader stops on shutdown").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_events_pick_up_a_change_survive_a_broken_file_and_recover() {
    change_break_fix(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_alone_does_the_same() {
    change_break_fix(false).await;
}

#[test]
fn an_entity_change_is_a_new_snapshot_and_a_broken_entity_file_is_not() {
    let ws = Workspace::shipped();
    let store = PolicyStore::load_files(&ws.dirs()).unwrap();
    let reload = |s: &PolicyStore| authz_sidecar::policy_store::reload_once(s, &ws.dirs());
    assert_eq!(reload(&store), ReloadOutcome::Unchanged);

    ws.write_entities(
        "more.json",
        r#"[{"uid": {"type": "Studio::Team", "id": "Team3"}, "attrs": {"executionRoleName": "t3"}, "parents": []}]"#,
    );
    assert_eq!(reload(&store), ReloadOutcome::Published(2));
    assert_eq!(store.current().unwrap().entity_count(), 23);

    ws.write_entities("more.json", r#"[{"uid": {"type": "Studio::Team", "id": "Team3"}, "attrs": {}, "parents": []}]"#);
    assert_eq!(reload(&store), ReloadOutcome::Failed);
    assert_eq!(reload(&store), ReloadOutcome::Failed, "still broken");
    assert_eq!(store.stats().failures, 1, "the same broken file is reported once");
    assert_eq!(store.current().unwrap().entity_count(), 23);

    // Putting the serving files back clears the failure without a new snapshot.
    ws.write_entities(
        "more.json",
        r#"[{"uid": {"type": "Studio::Team", "id": "Team3"}, "attrs": {"executionRoleName": "t3"}, "parents": []}]"#,
    );
    assert_eq!(reload(&store), ReloadOutcome::Unchanged);
    assert!(store.stats().last_error.is_none());
}

#[test]
fn a_vanished_directory_keeps_the_last_good_snapshot() {
    let ws = Workspace::shipped();
    let store = PolicyStore::load_files(&ws.dirs()).unwrap();
    std::fs::remove_dir_all(ws.entities()).unwrap();
    assert_eq!(authz_sidecar::policy_store::reload_once(&store, &ws.dirs()), ReloadOutcome::Failed);
    assert_eq!(store.current().unwrap().entity_count(), 22);
    let error = store.stats().last_error.unwrap();
    assert!(error.to_string().contains("cannot read the directory"), "{error}");
}

/// Lay `files` out the way the kubelet mounts a ConfigMap: the real files in a hidden
/// timestamped directory, a `..data` link to it, and one link per file through `..data`.
/// A second call swaps `..data` atomically to a new directory, as an update does.
#[cfg(unix)]
fn configmap_mount(dir: &std::path::Path, version: &str, files: &[(&str, String)]) {
    use std::os::unix::fs::symlink;
    let real = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&real).unwrap();
    for (name, text) in files {
        std::fs::write(real.join(name), text).unwrap();
        let link = dir.join(name);
        if !link.exists() {
            symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[cfg(unix)]
#[test]
fn a_configmap_mount_loads_through_its_links_and_reloads_on_the_data_swap() {
    let shipped = Workspace::shipped();
    let mount = tempfile::tempdir().unwrap();
    let policies = mount.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let read = |name: &str| std::fs::read_to_string(shipped.policies().join(name)).unwrap();
    let files = vec![
        ("schema.cedarschema", read("schema.cedarschema")),
        ("presign.cedar", read("presign.cedar")),
        ("account-pool.cedar", read("account-pool.cedar")),
    ];
    configmap_mount(&policies, "2026_11_22_v1", &files);
    let dirs = authz_sidecar::policy_store::SourceDirs::new(&policies, shipped.entities());

    let store = PolicyStore::load_files(&dirs).unwrap();
    assert_eq!(store.current().unwrap().policy_count(), 9, "the hidden ..data directory is not read twice");

    let mut changed = files.clone();
    changed[2].1 = changed[2].1.replace(r#"["AVAILABLE", "ASSIGNED"]"#, r#"["AVAILABLE"]"#);
    configmap_mount(&policies, "2026_11_22_v2", &changed);
    assert_eq!(authz_sidecar::policy_store::reload_once(&store, &dirs), ReloadOutcome::Published(2));
    let assigned = DecisionRequest::new(
        parse_entity_uid(r#"DataZone::User::"4b89ed84-9842-45dd-a2e5-15e49eda2b03""#).unwrap(),
        parse_entity_uid(r#"DataZone::Action::"UseAccount""#).unwrap(),
        parse_entity_uid(r#"DataZone::Account::"111122223333""#).unwrap(),
    )
    .with_context(json!({"regionName": "us-east-1", "domainIdentifier": "dzd-4igt64u5j25ko9"}));
    assert_eq!(decide(&store, &assigned).effect, Effect::Deny, "ASSIGNED is no longer usable");
}
