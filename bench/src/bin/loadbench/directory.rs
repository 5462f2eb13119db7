//! The entity directory at scale: a users table of 100,000 users (generated into a fake
//! DynamoDB that answers `BatchGetItem` over HTTP, as the SDK calls it), 1,000 of them
//! active, against the same 1,000 users written into the entity files (today's
//! all-in-memory path). Reports the sidecar's ready time for tables of 1,000 and 100,000
//! users, its throughput and latency once every active user is cached, and its memory;
//! and the same with `[lifecycle]` revocations in a table of the same fake DynamoDB
//! (answering `Query`), read on every request (`believe_for = "0s"`, the default) or
//! believed for a second.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::procs::{Process, free_addr};
use crate::scenario;
use crate::setup::{self, SidecarFiles, Signer};
use authz_sidecar_bench::directory::{USERS_TABLE, user, user_item};

#[derive(Debug, clap::Args)]
pub struct DirectoryArgs {
    /// The authz-sidecar binary (default: beside this one, in the same target directory).
    #[arg(long)]
    sidecar: Option<PathBuf>,
    /// Users in the table.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Users making requests.
    #[arg(long, default_value_t = 1_000)]
    active: usize,
    /// How long each load runs.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Keep-alive connections of the load.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Also write the report (Markdown) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl DirectoryArgs {
    pub fn out(&self) -> Option<&Path> {
        self.out.as_deref()
    }
}

const VPCE_B: &str = "vpce-0b2b000000000001b";

pub fn run(args: &DirectoryArgs) -> anyhow::Result<String> {
    let me = std::env::current_exe()?;
    let sidecar = args.sidecar.clone().unwrap_or_else(|| me.with_file_name("authz-sidecar"));
    ensure!(sidecar.exists(), "no sidecar binary at {} (cargo build --release -p authz-sidecar)", sidecar.display());
    ensure!(args.active <= args.users && args.active > 0, "--active must be between 1 and --users");
    let dir = tempfile::Builder::new().prefix("authz-loadbench-directory-").tempdir()?;
    let run_dir = dir.path();
    eprintln!("loadbench: run directory {}", run_dir.display());
    let jwks = run_dir.join("jwks.json");
    let signer = Signer::new(&jwks)?;
    eprintln!("loadbench: minting {} tokens", args.active);
    let tokens: Vec<String> =
        (0..args.active).map(|i| signer.token(&user(i), &["Team1"])).collect::<anyhow::Result<_>>()?;
    let tokens = Arc::new(tokens);

    let upstream_addr = free_addr()?;
    let mut upstream_cmd = Command::new(&me);
    upstream_cmd.arg("upstream").arg("--listen").arg(upstream_addr.to_string());
    let mut upstream = Process::spawn("upstream", upstream_cmd, run_dir)?;
    upstream.wait_http_ok(upstream_addr, "/", Duration::from_secs(10))?;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut report = String::new();
    writeln!(report, "Machine: {}.", setup::machine())?;
    writeln!(
        report,
        "Table: {} users (fake DynamoDB over HTTP); {} active; {} connections; each load runs {:?}.\n",
        args.users, args.active, args.connections, args.duration
    )?;

    // files: the shipped ones without users and profiles (profiles are derived)
    let shipped = authz_sidecar_bench::shipped_dirs();
    let base = run_dir.join("entities-directory");
    std::fs::create_dir_all(&base)?;
    for file in ["lobs.json", "teams.json", "account-pool.json"] {
        std::fs::copy(shipped.entities.join(file), base.join(file))?;
    }
    let with_users = run_dir.join("entities-files");
    std::fs::create_dir_all(&with_users)?;
    for file in ["lobs.json", "teams.json", "account-pool.json"] {
        std::fs::copy(shipped.entities.join(file), with_users.join(file))?;
    }
    std::fs::write(with_users.join("users.json"), users_file(args.active))?;

    let mut rows = Vec::new();
    // ready time against the table's size: nothing is loaded before serving
    let mut ready = Vec::new();
    for size in [1_000.min(args.users), args.users] {
        let table = runtime.block_on(FakeTable::start(size))?;
        let files = files(run_dir, &base, &jwks, upstream_addr)?;
        let (process, took) = start(&sidecar, run_dir, &format!("ready-{size}"), &files, Some(table.addr), None)?;
        drop(process);
        ready.push((size, took));
    }

    let runs = [
        ("entity files (all in memory)", &with_users, false, None, "files"),
        ("directory, every active user cached", &base, true, None, "directory"),
        ("directory + revocations read on every request", &base, true, Some("0s"), "revocations-0s"),
        ("directory + revocations believed for 1 s", &base, true, Some("1s"), "revocations-1s"),
    ];
    for (label, entities, directory, believe_for, name) in runs {
        let table = runtime.block_on(FakeTable::start(args.users))?;
        let files = files(run_dir, entities, &jwks, upstream_addr)?;
        let (mut process, took) = start(&sidecar, run_dir, name, &files, directory.then_some(table.addr), believe_for)?;
        let before = process.memory_kib();
        // every active user once: the first requests (directory misses), checked
        let warm = runtime.block_on(drive(files.listen, tokens.clone(), args.connections, None))?;
        ensure!(warm.errors == 0, "{name}: {} of the first requests were not forwarded", warm.errors);
        let reads_after_warm = table.reads.load(Ordering::Relaxed);
        let queries_after_warm = table.queries.load(Ordering::Relaxed);
        let load = runtime.block_on(drive(files.listen, tokens.clone(), args.connections, Some(args.duration)))?;
        ensure!(load.errors == 0, "{name}: {} requests were not forwarded", load.errors);
        process.check_running()?;
        let reads = table.reads.load(Ordering::Relaxed) - reads_after_warm;
        let queries = table.queries.load(Ordering::Relaxed) - queries_after_warm;
        let after = process.memory_kib();
        rows.push((label, took, load, before, after, (reads, queries), warm.elapsed));
    }

    writeln!(
        report,
        "| sidecar | ready (ms) | first {} requests (ms) | req/s | p50 / p99 (ms) | RSS ready / after (MiB) | user reads / revocation reads under load |",
        args.active
    )?;
    writeln!(report, "|---|---:|---:|---:|---:|---:|---:|")?;
    let mib =
        |m: Option<(u64, u64)>| m.map_or_else(|| "?".to_owned(), |(_, rss)| format!("{:.1}", rss as f64 / 1024.0));
    for (label, took, load, before, after, (reads, queries), warm) in &rows {
        writeln!(
            report,
            "| {label} | {:.1} | {:.0} | {:.0} | {:.3} / {:.3} | {} / {} | {reads} / {queries} |",
            took.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3,
            load.requests as f64 / load.elapsed.as_secs_f64(),
            load.percentile(0.50),
            load.percentile(0.99),
            mib(*before),
            mib(*after),
        )?;
    }
    writeln!(report)?;
    for (size, took) in ready {
        writeln!(report, "- Ready with a table of {size} users: {:.1} ms.", took.as_secs_f64() * 1e3)?;
    }
    Ok(report)
}

/// The active users, as the entity files would list them (the same items).
fn users_file(active: usize) -> String {
    let users: Vec<Value> = (0..active)
        .map(|i| {
            let lob = if i % 2 == 0 { "lob-a" } else { "lob-b" };
            json!({"uid": {"type": "Studio::User", "id": user(i)}, "attrs": {"email": format!("{}@example.com", user(i))},
                   "parents": [{"type": "Studio::Lob", "id": lob}, {"type": "Studio::Team", "id": "Team1"}],
                   "tags": {"Team": ["Team1"]}})
        })
        .collect();
    Value::Array(users).to_string()
}

fn files(run_dir: &Path, entities: &Path, jwks: &Path, upstream: SocketAddr) -> anyhow::Result<SidecarFiles> {
    let shipped = authz_sidecar_bench::shipped_dirs();
    let _ = run_dir;
    Ok(SidecarFiles {
        listen: free_addr()?,
        admin: free_addr()?,
        policies: shipped.policies,
        entities: entities.to_path_buf(),
        jwks: jwks.to_path_buf(),
        upstream,
        ext_authz: None,
        otlp: None,
    })
}

/// Start a sidecar whose studio route derives profiles, reading users from the table at
/// `table` when given (and revocations, believed for `believe_for`, when given); the
/// time to `/readyz` 200.
fn start(
    sidecar: &Path,
    run_dir: &Path,
    name: &str,
    files: &SidecarFiles,
    table: Option<SocketAddr>,
    believe_for: Option<&str>,
) -> anyhow::Result<(Process, Duration)> {
    let mut config = setup::sidecar_config(files).replacen(
        "handler = \"forward\"",
        "handler = \"forward\"\nderive_profile = { user = \"user\", team = \"team\" }",
        1,
    );
    if let Some(table) = table {
        write!(
            config,
            r#"
[aws]
region = "us-east-1"

[directory]
endpoint = "http://{table}"

[[directory.tables]]
table = "{USERS_TABLE}"
entity_type = "Studio::User"
key = "userName"
attributes = {{ email = "email" }}
parents = {{ lob = "Studio::Lob", teams = "Studio::Team" }}
tags = {{ Team = "teams" }}
"#
        )?;
    }
    if let Some(believe_for) = believe_for {
        write!(config, "\n[lifecycle]\ntable = \"authz-lifecycle\"\nbelieve_for = \"{believe_for}\"\n")?;
    }
    let path = run_dir.join(format!("{name}.toml"));
    std::fs::write(&path, config)?;
    let mut command = Command::new(sidecar);
    command
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("GLIBC_TUNABLES", scenario::glibc_tunables())
        .env("AWS_ACCESS_KEY_ID", "AKIDBENCH")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let mut process = Process::spawn(name, command, run_dir)?;
    let ready = process.wait_http_ok(files.admin, "/readyz", Duration::from_secs(30))?;
    Ok((process, ready))
}

/// A DynamoDB users table in memory, answering `BatchGetItem` in DynamoDB's JSON
/// protocol, and an empty lifecycle table answering `Query` (nobody is revoked); stops
/// with the runtime.
struct FakeTable {
    addr: SocketAddr,
    reads: Arc<AtomicUsize>,
    queries: Arc<AtomicUsize>,
}

impl FakeTable {
    async fn start(users: usize) -> anyhow::Result<Self> {
        let items: Arc<HashMap<String, Value>> = Arc::new((0..users).map(|i| (user(i), item_json(i))).collect());
        let (reads, queries) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = (reads.clone(), queries.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (items, counters) = (items.clone(), counters.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let (items, (reads, queries)) = (items.clone(), counters.clone());
                        async move {
                            let target = request.headers().get("x-amz-target").cloned();
                            let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let answer = if target.as_ref().is_some_and(|t| t.as_bytes().ends_with(b".Query")) {
                                queries.fetch_add(1, Ordering::Relaxed);
                                json!({"Items": [], "Count": 0, "ScannedCount": 0})
                            } else {
                                reads.fetch_add(1, Ordering::Relaxed);
                                batch_get(&items, &body)
                            };
                            let response = hyper::Response::builder()
                                .header("content-type", "application/x-amz-json-1.0")
                                .body(Full::new(Bytes::from(answer.to_string())))
                                .unwrap_or_default();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, reads, queries })
    }
}

/// The `i`th user's item in DynamoDB's JSON.
fn item_json(i: usize) -> Value {
    use authz_sidecar::directory::AttributeValue;
    let item = user_item(i);
    let mut out = serde_json::Map::new();
    for (name, value) in item {
        let value = match value {
            AttributeValue::S(s) => json!({"S": s}),
            AttributeValue::Ss(set) => json!({"SS": set}),
            _ => continue,
        };
        out.insert(name, value);
    }
    Value::Object(out)
}

fn batch_get(items: &HashMap<String, Value>, body: &[u8]) -> Value {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut responses = serde_json::Map::new();
    if let Some(tables) = request.get("RequestItems").and_then(Value::as_object) {
        for (table, asked) in tables {
            let found: Vec<Value> = asked
                .get("Keys")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|key| key.get("userName")?.get("S")?.as_str())
                .filter_map(|id| items.get(id).cloned())
                .collect();
            responses.insert(table.clone(), Value::Array(found));
        }
    }
    json!({"Responses": responses, "UnprocessedKeys": {}})
}

/// What one load measured.
struct Load {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Load {
    fn percentile(&self, p: f64) -> f64 {
        let last = self.latencies_us.len().saturating_sub(1);
        let index = (last as f64 * p).round() as usize;
        self.latencies_us.get(index.min(last)).map_or(0.0, |us| *us as f64 / 1e3)
    }
}

/// `connections` keep-alive connections asking for the active users' profiles in turn:
/// each user once when `duration` is `None`, else for `duration`.
async fn drive(
    addr: SocketAddr,
    tokens: Arc<Vec<String>>,
    connections: usize,
    duration: Option<Duration>,
) -> anyhow::Result<Load> {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (tokens, next) = (tokens.clone(), next.clone());
        tasks.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let (mut latencies, mut errors) = (Vec::new(), 0usize);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                match duration {
                    None if n >= tokens.len() => break,
                    Some(limit) if started.elapsed() >= limit => break,
                    _ => {}
                }
                let i = n % tokens.len();
                let token = tokens.get(i).context("no token")?;
                let vpce = if i % 2 == 0 { setup::VPCE } else { VPCE_B };
                let request = hyper::Request::get(format!("/studio/{}/Team1", user(i)))
                    .header("host", addr.to_string())
                    .header("authorization", format!("Bearer {token}"))
                    .header("x-amzn-vpce-id", vpce)
                    .header("x-forwarded-for", setup::CLIENT_IP)
                    .body(http_body_util::Empty::<Bytes>::new())?;
                let sent = Instant::now();
                let response = sender.send_request(request).await?;
                let status = response.status();
                let _ = response.into_body().collect().await?;
                latencies.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
                if status != 200 {
                    errors += 1;
                }
            }
            anyhow::Ok((latencies, errors))
        });
    }
    let mut load = Load { requests: 0, errors: 0, elapsed: Duration::ZERO, latencies_us: Vec::new() };
    while let Some(result) = tasks.join_next().await {
        let (latencies, errors) = result.context("a load connection panicked")??;
        load.requests += latencies.len();
        load.errors += errors;
        load.latencies_us.extend(latencies);
    }
    load.elapsed = started.elapsed();
    load.latencies_us.sort_unstable();
    Ok(load)
}
