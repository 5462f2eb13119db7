//! One decision, at 10, 100 and 1,000 policies over 10,000 entities.
//!
//! - `presign`: the whole-store path (no request entities), as the CLI and the
//!   account-pool handler decide.
//! - `presign_token_principal`: the data plane's path, with the principal passed as a
//!   request entity, so the engine builds a cached entity slice.
//! - `data_plane`: what the data plane does per request since the principal is built
//!   once per token and the context from typed values: context, request entities,
//!   schema check of the request, evaluation; asked again, so answered from the
//!   decisions the snapshot keeps.
//! - `data_plane_evaluated`: the same, evaluated every time (a question seen for the
//!   first time in a snapshot).
//! - `use_account`: one validateAccountAuthorization question.
//! - `account_pool_list*`: whole listAuthorizedAccounts answers (see [`list_accounts`]).
//! - `snapshot_build`: parsing, validating and indexing everything (reload cost).
//!
//! Run: `cargo bench -p authz-sidecar-bench --bench decision`. Results: bench/README.md.

#![allow(clippy::panic, clippy::unwrap_used, reason = "benchmark harness: a broken workload must stop the run")]

use std::hint::black_box;
use std::time::Duration;

use authz_sidecar::authz::{Asker, DecisionRequest, Effect, Engine, context_from_strings, parse_entity_uid};
use authz_sidecar::policy_store::{PolicySnapshot, SnapshotSource, SourceFile};
use authz_sidecar_bench::{grown_snapshot, grown_sources, shipped_dirs, shipped_policy_count};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::json;

const ENTITIES: usize = 10_000;
const POLICY_COUNTS: [usize; 3] = [10, 100, 1_000];

fn uid(text: &str) -> cedar_policy::EntityUid {
    parse_entity_uid(text).unwrap_or_else(|e| panic!("{e}"))
}

fn presign_request() -> DecisionRequest {
    DecisionRequest::new(
        uid(r#"Studio::User::"user-1""#),
        uid(r#"Studio::Action::"CreatePresignedDomainUrl""#),
        uid(r#"Studio::UserProfile::"user-1-team1""#),
    )
    .with_context(json!({"sourceVpce": "vpce-0a1a000000000001a", "sourceIp": "10.1.2.3"}))
}

fn use_account_request() -> DecisionRequest {
    DecisionRequest::new(
        uid(r#"DataZone::User::"4b89ed84-9842-45dd-a2e5-15e49eda2b03""#),
        uid(r#"DataZone::Action::"UseAccount""#),
        uid(r#"DataZone::Account::"004878717744""#),
    )
    .with_context(json!({"regionName": "us-east-2", "domainIdentifier": "dzd-4igt64u5j25ko9"}))
}

fn decisions(c: &mut Criterion) {
    let engine = Engine::new();
    let mut group = c.benchmark_group("decide");
    let shipped = shipped_policy_count();
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for policies in POLICY_COUNTS {
        let snapshot = grown_snapshot(policies, ENTITIES).unwrap_or_else(|e| panic!("workload: {e}"));
        // the smallest set is the shipped policies alone
        assert!(snapshot.policy_count() >= policies && snapshot.policy_count() <= policies.max(shipped));
        assert!(snapshot.entity_count() >= ENTITIES);

        let presign = presign_request();
        let check = |r: &DecisionRequest, s: &PolicySnapshot| engine.decide(s, r).map(|d| d.effect);
        assert_eq!(check(&presign, &snapshot).ok(), Some(Effect::Allow));
        group.bench_with_input(BenchmarkId::new("presign", policies), &snapshot, |b, s| {
            b.iter(|| engine.decide(s, black_box(&presign)))
        });

        let Asker::Uid(user) = &presign.principal else { panic!("a stored principal") };
        let principal =
            snapshot.stored_entity(user).unwrap().map(|e| cedar_policy::Entity::clone(&e)).into_iter().collect();
        let with_token = presign.clone().with_entities(principal);
        assert_eq!(check(&with_token, &snapshot).ok(), Some(Effect::Allow));
        group.bench_with_input(BenchmarkId::new("presign_token_principal", policies), &snapshot, |b, s| {
            b.iter(|| engine.decide(s, black_box(&with_token)))
        });

        let requester = snapshot
            .request_principal([1; 32], || with_token.entities.first().cloned().ok_or_else(|| "no user-1".to_owned()))
            .unwrap();
        let pairs: Vec<(String, String)> = [("sourceVpce", "vpce-0a1a000000000001a"), ("sourceIp", "10.1.2.3")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let data_plane = |s: &PolicySnapshot| {
            let context = context_from_strings(s, &presign.action, &pairs)?;
            let request =
                DecisionRequest::built(requester.clone(), presign.action.clone(), presign.resource.clone(), context);
            engine.decide(s, &request)
        };
        assert_eq!(data_plane(&snapshot).map(|d| d.effect).ok(), Some(Effect::Allow));
        group.bench_with_input(BenchmarkId::new("data_plane", policies), &snapshot, |b, s| {
            b.iter(|| data_plane(black_box(s)))
        });
        // the same question evaluated every time: a context with no serial is never kept
        let evaluated = |s: &PolicySnapshot| {
            let mut context = context_from_strings(s, &presign.action, &pairs)?;
            context.serial = 0;
            let request =
                DecisionRequest::built(requester.clone(), presign.action.clone(), presign.resource.clone(), context);
            engine.decide(s, &request)
        };
        assert_eq!(evaluated(&snapshot).map(|d| (d.effect, d.cached)).ok(), Some((Effect::Allow, false)));
        group.bench_with_input(BenchmarkId::new("data_plane_evaluated", policies), &snapshot, |b, s| {
            b.iter(|| evaluated(black_box(s)))
        });

        let account = use_account_request();
        assert_eq!(check(&account, &snapshot).ok(), Some(Effect::Allow));
        group.bench_with_input(BenchmarkId::new("use_account", policies), &snapshot, |b, s| {
            b.iter(|| engine.decide(s, black_box(&account)))
        });
    }
    group.finish();
}

fn snapshot_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_build");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(10));
    let sources = grown_sources(1_000, ENTITIES);
    group.bench_function("1000_policies_10000_entities", |b| {
        b.iter(|| PolicySnapshot::from_sources(black_box(&sources), SnapshotSource::Files(shipped_dirs()), 1))
    });
    group.finish();
}

/// `listAuthorizedAccounts` for user-1 over pools of about 10, 100 and 1,000 accounts.
///
/// - `account_pool_list/N`: a list on a snapshot that has listed before. Accounts the
///   policies cannot tell apart share one decision per region.
/// - `account_pool_list_cold/1000`: the first list after a reload, which also reads the
///   pool into the snapshot's index (the snapshot build itself is not timed).
/// - `account_pool_list_distinct/1000`: one extra policy reads each account's name, which
///   differs for every account, so each account and region is decided on its own (the
///   cost before answers were shared, and the worst case now).
fn list_accounts(c: &mut Criterion) {
    use authz_sidecar::handlers::account_pool::{AccountPool, parse};
    let pool = AccountPool::default();
    let mut group = c.benchmark_group("account_pool_list");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    let event = br#"{"operationRequest": {"listAuthorizedAccountsRequest": {"domainIdentifier": "dzd-4igt64u5j25ko9",
        "userIdentifier": "4b89ed84-9842-45dd-a2e5-15e49eda2b03"}}}"#;
    let operation = parse(event).unwrap_or_else(|e| panic!("{e}"));
    // the generator makes about half of its entities pool accounts
    let entities = |accounts: usize| 22 + 2 * accounts;
    for accounts in [10, 100, 1_000] {
        let snapshot = grown_snapshot(10, entities(accounts)).unwrap_or_else(|e| panic!("workload: {e}"));
        group.bench_with_input(BenchmarkId::from_parameter(accounts), &snapshot, |b, s| {
            b.iter(|| pool.apply(s, black_box(&operation), "bench"))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("account_pool_list_cold");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(8));
    group.bench_function("1000", |b| {
        b.iter_batched_ref(
            // a handler of its own each time: one that has seen these inputs keeps the index
            || {
                (
                    AccountPool::default(),
                    grown_snapshot(10, entities(1_000)).unwrap_or_else(|e| panic!("workload: {e}")),
                )
            },
            |(pool, s)| pool.apply(s, black_box(&operation), "bench"),
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("account_pool_list_distinct");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    let mut sources = grown_sources(10, entities(1_000));
    sources.policies.push(SourceFile {
        path: "by-name.cedar".into(),
        text: "@id(\"no-retired-names\")\nforbid (principal, action == DataZone::Action::\"UseAccount\", resource)\n\
               when { resource.name like \"*-retired\" };\n"
            .to_owned(),
    });
    let snapshot = PolicySnapshot::from_sources(&sources, SnapshotSource::Files(shipped_dirs()), 1)
        .unwrap_or_else(|e| panic!("workload: {e}"));
    group.bench_function("1000", |b| b.iter(|| pool.apply(&snapshot, black_box(&operation), "bench")));
    group.finish();
}

/// The data plane's entity work for a user only the directory holds, on a warm cache
/// over a table of 100,000 users (in memory: the read is not what is measured), against
/// the same request over the entity files (`decide/data_plane`):
///
/// - `directory/gather_hit`: gathering the principal, the path's user and team and the
///   resource from the cache (every key a hit), and taking the derived profile and the
///   token principal cached for the entry;
/// - `directory/derive_only`: deriving the profile when it is not cached (the first
///   request after the user's entry is read);
/// - `directory/decide_only`: the decision alone, with the derived profile;
/// - `directory/data_plane_hit`: that and the decision, the whole per-request cost to
///   set against `decide/data_plane/10`.
fn directory_hit(c: &mut Criterion) {
    use std::sync::Arc;

    use authz_sidecar::directory::{CachePolicy, Directory, Gathered, gather};
    use authz_sidecar::handlers::profiles::derive_profile;
    use authz_sidecar::policy_store::CheckedEntity;
    use authz_sidecar_bench::directory::{MemoryTable, Shared, user, users_mapping};

    const USERS: usize = 100_000;
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let snapshot = grown_snapshot(10, ENTITIES).unwrap_or_else(|e| panic!("workload: {e}"));
    let table = Arc::new(MemoryTable::with_users(USERS));
    let minute = Duration::from_secs(3_600);
    let policy = CachePolicy { ttl: minute, negative_ttl: minute, max_staleness: minute, capacity: 100_000 };
    let directory = Directory::over(Shared(table.clone()), vec![users_mapping().unwrap()], policy);
    let name = user(42);
    let principal = uid(&format!("Studio::User::\"{name}\""));
    let resource = uid(&format!("Studio::UserProfile::\"{name}-Team1\""));
    let team = uid(r#"Studio::Team::"Team1""#);
    let action = uid(r#"Studio::Action::"CreatePresignedDomainUrl""#);
    let user_type = principal.type_name().clone();
    let pairs: Vec<(String, String)> = [("sourceVpce", "vpce-0a1a000000000001a"), ("sourceIp", "10.1.2.3")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
    let engine = Engine::new();

    // what the pipeline does for such a request, as far as entities go
    let entities = || async {
        let mut gathered = Gathered::default();
        let roots = [principal.clone(), resource.clone(), principal.clone(), team.clone()];
        gather(&directory, &snapshot, roots, &mut gathered).await.unwrap();
        let known = |uid: &cedar_policy::EntityUid| gathered.known_or_none(&snapshot, uid);
        let fetched = gathered.get(&principal).unwrap().clone();
        let key = (resource.clone(), fetched.serial, 0);
        let derived = snapshot
            .derived_entity(key, || derive_profile(&snapshot, known, &user_type, &name, "Team1", &resource))
            .unwrap();
        let requester = snapshot
            .request_principal_over([3; 32], fetched.serial, &[], || Ok::<_, ()>(fetched.entity.entity().clone()));
        let mut checked = gathered.checked_except(&principal);
        checked.push(derived);
        (requester.unwrap(), checked)
    };
    let decide = |(requester, checked): (Arc<CheckedEntity>, Vec<Arc<CheckedEntity>>)| {
        let context = context_from_strings(&snapshot, &action, &pairs).unwrap();
        let request =
            DecisionRequest::built(requester, action.clone(), resource.clone(), context).with_checked(checked);
        engine.decide(&snapshot, &request)
    };
    let first = runtime.block_on(entities());
    assert_eq!(decide(first).map(|d| d.effect).ok(), Some(Effect::Allow), "the directory user may open their profile");
    let reads = table.reads.load(std::sync::atomic::Ordering::Relaxed);

    let mut group = c.benchmark_group("directory");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    group.bench_function("gather_hit", |b| b.iter(|| runtime.block_on(entities())));
    group.bench_function("data_plane_hit", |b| b.iter(|| decide(runtime.block_on(entities()))));
    let prepared = runtime.block_on(entities());
    group.bench_function("decide_only", |b| b.iter(|| decide(prepared.clone())));
    group.bench_function("derive_only", |b| {
        let gathered = runtime.block_on(async {
            let mut gathered = Gathered::default();
            gather(&directory, &snapshot, [principal.clone(), team.clone()], &mut gathered).await.unwrap();
            gathered
        });
        b.iter(|| {
            let known = |uid: &cedar_policy::EntityUid| gathered.known_or_none(&snapshot, uid);
            CheckedEntity::new(derive_profile(&snapshot, known, &user_type, &name, "Team1", &resource).unwrap())
        })
    });
    group.finish();
    assert_eq!(table.reads.load(std::sync::atomic::Ordering::Relaxed), reads, "every measured request was a hit");
}

criterion_group!(benches, decisions, snapshot_build, list_accounts, directory_hit);
criterion_main!(benches);
