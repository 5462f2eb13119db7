//! One decision, at 10, 100 and 1,000 policies over 10,000 entities.
//!
//! - `presign`: the whole-store path (no request entities), as the CLI and the
//!   account-pool handler decide.
//! - `presign_token_principal`: the data plane's path, with the principal passed as a
//!   request entity, so the engine builds a cached entity slice.
//! - `data_plane`: what the data plane does per request since the principal is built
//!   once per token and the context from typed values: context, request entities,
//!   schema check of the request, evaluation.
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
use authz_sidecar_bench::{grown_snapshot, grown_sources, shipped_dirs};
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
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for policies in POLICY_COUNTS {
        let snapshot = grown_snapshot(policies, ENTITIES).unwrap_or_else(|e| panic!("workload: {e}"));
        assert_eq!(snapshot.policy_count(), policies);
        assert!(snapshot.entity_count() >= ENTITIES);

        let presign = presign_request();
        let check = |r: &DecisionRequest, s: &PolicySnapshot| engine.decide(s, r).map(|d| d.effect);
        assert_eq!(check(&presign, &snapshot).ok(), Some(Effect::Allow));
        group.bench_with_input(BenchmarkId::new("presign", policies), &snapshot, |b, s| {
            b.iter(|| engine.decide(s, black_box(&presign)))
        });

        let Asker::Uid(user) = &presign.principal else { panic!("a stored principal") };
        let principal = snapshot.entities().get(user).cloned().into_iter().collect();
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

criterion_group!(benches, decisions, snapshot_build, list_accounts);
criterion_main!(benches);
