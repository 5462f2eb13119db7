//! One whole run: start the upstream, nginx and the sidecar, check that each answers as
//! it must (so a sidecar that denies everything cannot look fast), measure, then sweep
//! the sidecar over policy, entity and pool-account counts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};

use crate::RunArgs;
use crate::grpc;
use crate::http1;
use crate::oha::{self, Load, Target};
use crate::procs::{Process, command_on, cpu_busy_ticks, free_addr};
use crate::report::{ListRow, MainRow, OVERLOAD_FACTOR, OverloadRow, Report, Round, SweepRow};
use crate::setup::{self, SidecarFiles};

/// Policy and entity counts of the sweep, and pool sizes of the list sweep.
const SWEEP_POLICIES: [usize; 3] = [10, 100, 1_000];
const SWEEP_ENTITIES: [usize; 2] = [100, 10_000];
const LIST_ACCOUNTS: [usize; 3] = [10, 100, 1_000];
/// Connections of the overload run. Each holds one request at a time, so the sidecar
/// can only have as many in flight: 384 go past the default in-flight limit (128 per
/// core) when the sidecar falls behind, where 50 would never reach it.
const OVERLOAD_CONNECTIONS: u32 = 384;
/// The sweep's latency run, and the list runs' concurrency (a list is a big answer).
const SWEEP_RATE: u32 = 1_000;
const LIST_CONNECTIONS: u32 = 4;

struct Tools {
    oha: PathBuf,
    nginx: PathBuf,
    sidecar: PathBuf,
    me: PathBuf,
    /// `--pin`: the CPU every server runs on, and the load generator's.
    server_cpu: Option<usize>,
    load_cpu: Option<usize>,
}

pub fn run(args: &RunArgs) -> anyhow::Result<String> {
    let tools = tools(args)?;
    let dir = tempfile::Builder::new().prefix("authz-loadbench-").tempdir()?;
    let run_dir = dir.path();
    eprintln!("loadbench: run directory {}", run_dir.display());
    let jwks = run_dir.join("jwks.json");
    let token = setup::key_and_token(&jwks)?;

    let upstream_addr = free_addr()?;
    let mut upstream_cmd = command_on(&tools.me, tools.server_cpu);
    upstream_cmd.arg("upstream").arg("--listen").arg(upstream_addr.to_string());
    let mut upstream = Process::spawn("upstream", upstream_cmd, run_dir)?;
    upstream.wait_http_ok(upstream_addr, "/", Duration::from_secs(10))?;

    let nginx_addr = free_addr()?;
    let nginx_conf = run_dir.join("nginx.conf");
    std::fs::write(&nginx_conf, setup::nginx_config(run_dir, nginx_addr, upstream_addr, args.pin))?;
    let mut nginx_cmd = command_on(&tools.nginx, tools.server_cpu);
    nginx_cmd.arg("-p").arg(run_dir).arg("-e").arg(run_dir.join("nginx-error.log")).arg("-c").arg(&nginx_conf);
    let mut nginx = Process::spawn("nginx", nginx_cmd, run_dir)?;
    nginx.wait_http_ok(nginx_addr, "/", Duration::from_secs(10))?;

    let shipped = authz_sidecar_bench::shipped_dirs();
    let files = SidecarFiles {
        listen: free_addr()?,
        admin: free_addr()?,
        policies: shipped.policies.clone(),
        entities: shipped.entities.clone(),
        jwks: jwks.clone(),
        upstream: upstream_addr,
        ext_authz: Some((free_addr()?, free_addr()?)),
        otlp: None,
    };
    let (mut sidecar, ready) = start_sidecar(&tools, run_dir, "sidecar", &files)?;
    check_sidecar(files.listen, &token)?;
    check_forwarded(nginx_addr)?;

    let studio = |addr: SocketAddr, headers: Vec<(String, String)>| Target {
        url: format!("http://{addr}{}", setup::STUDIO_PATH),
        method: "GET",
        headers,
        body: None,
        expect_status: 200,
    };
    let (http_check, grpc_check) = files.ext_authz.context("the main sidecar has its check listeners")?;
    check_ext_authz(http_check, grpc_check, &token)?;

    let targets = [
        ("upstream alone (hyper)", Measure::Oha(studio(upstream_addr, setup::gateway_headers()))),
        ("nginx → upstream (no authorization)", Measure::Oha(studio(nginx_addr, setup::gateway_headers()))),
        (
            "authz-sidecar → upstream (JWT + Cedar + forward)",
            Measure::Oha(studio(files.listen, setup::studio_headers(&token))),
        ),
        (
            "authz-sidecar account-pool validate (no upstream)",
            Measure::Oha(Target {
                url: format!("http://{}/datazone/account-pool", files.listen),
                method: "POST",
                headers: setup::studio_headers(&token),
                body: Some(setup::validate_event()),
                expect_status: 200,
            }),
        ),
        (
            "authz-sidecar Envoy check, HTTP (JWT + Cedar, 200)",
            Measure::Oha(studio(http_check, setup::studio_headers(&token))),
        ),
        ("authz-sidecar Envoy check, gRPC (JWT + Cedar, OK)", Measure::Grpc(grpc_check)),
    ];
    let mut report = Report::new(setup::machine(), versions(&tools), args);
    let measure = |target: &Measure, load: Load| match target {
        Measure::Oha(target) => oha::measure(&tools.oha, tools.load_cpu, target, load, args.duration),
        Measure::Grpc(addr) => grpc::measure(&tools.me, tools.load_cpu, *addr, &token, load, args.duration),
    };
    let saturate = |name: &str, target: &Measure| -> anyhow::Result<Round> {
        let busy_before = tools.server_cpu.and_then(cpu_busy_ticks);
        let measured = measure(target, Load::Saturate { connections: args.connections })
            .with_context(|| format!("{name}, saturation"))?;
        let busy_after = tools.server_cpu.and_then(cpu_busy_ticks);
        // clock ticks are 1/100 s (Linux's USER_HZ)
        let cpu_us = match (busy_before, busy_after) {
            (Some(before), Some(after)) if measured.requests > 0 => {
                Some((after.saturating_sub(before)) as f64 * 10_000.0 / measured.requests as f64)
            }
            _ => None,
        };
        Ok(Round { measured, cpu_us })
    };
    let row = |name: &str, target: &Measure, rounds: &[Round]| -> anyhow::Result<MainRow> {
        eprintln!("loadbench: {name}, fixed rates");
        let mut at_rates = Vec::new();
        for &rate in &args.rates {
            let load = Load::Rate { rate, connections: args.connections };
            at_rates.push(measure(target, load).with_context(|| format!("{name}, {rate}/s"))?);
        }
        MainRow::new(name, rounds, at_rates).context("no saturation rounds")
    };
    // saturation in rounds, every target once a round: the machine's drift (another
    // tenant, its clock) then weighs on each round's targets alike
    let in_rounds = |targets: &[(&str, Measure)]| -> anyhow::Result<Vec<Vec<Round>>> {
        let mut rounds = vec![Vec::new(); targets.len()];
        for round in 1..=args.rounds {
            for ((name, target), taken) in targets.iter().zip(&mut rounds) {
                eprintln!("loadbench: {name}, saturation round {round} of {}", args.rounds);
                taken.push(saturate(name, target)?);
            }
        }
        Ok(rounds)
    };
    for ((name, target), taken) in targets.iter().zip(&in_rounds(&targets)?) {
        report.main.push(row(name, target, taken)?);
    }
    sidecar.check_running()?;
    report.sidecar_ready = Some(ready);
    report.sidecar_rss_kib = sidecar.memory_kib();
    drop(sidecar);

    // the forward path with every span exported (the upstream as its collector), on a
    // sidecar of its own that runs only for its row, shown beside the untraced one
    let traced_files = SidecarFiles {
        listen: free_addr()?,
        admin: free_addr()?,
        ext_authz: None,
        otlp: Some(upstream_addr),
        ..files.clone()
    };
    let (mut traced, _) = start_sidecar(&tools, run_dir, "traced", &traced_files)?;
    check_sidecar(traced_files.listen, &token)?;
    let name = "authz-sidecar → upstream, traced (every span exported over OTLP)";
    let alone = [(name, Measure::Oha(studio(traced_files.listen, setup::studio_headers(&token))))];
    let taken = in_rounds(&alone)?.concat();
    let [(_, traced_target)] = &alone;
    let mut traced_row = row(name, traced_target, &taken)?;
    // its rounds ran after the others', on a sidecar of its own
    traced_row.interleaved = false;
    traced.check_running()?;
    drop(traced);
    let after_forward = report.main.iter().position(|r| r.name.starts_with("authz-sidecar →")).map_or(0, |i| i + 1);
    report.main.insert(after_forward, traced_row);

    if let Some(forward) = report.main.iter().find(|r| r.name.starts_with("authz-sidecar →")) {
        let offered = (forward.saturated.rps * OVERLOAD_FACTOR) as u32;
        let fresh =
            SidecarFiles { listen: free_addr()?, admin: free_addr()?, ext_authz: None, otlp: None, ..files.clone() };
        report.overload = Some(overload(&tools, args, run_dir, &fresh, &token, offered)?);
    }

    if !args.no_sweep {
        sweep(&tools, args, run_dir, &files, &token, &mut report)?;
    }
    drop(nginx);
    drop(upstream);
    Ok(report.render())
}

/// How a target of the main table is loaded: oha for HTTP, this binary for gRPC.
enum Measure {
    Oha(Target),
    Grpc(SocketAddr),
}

/// The studio route of the sidecar on `listen`, as user-1 through the gateway.
fn studio_target(listen: SocketAddr, token: &str) -> Target {
    Target {
        url: format!("http://{listen}{}", setup::STUDIO_PATH),
        method: "GET",
        headers: setup::studio_headers(token),
        body: None,
        expect_status: 200,
    }
}

/// The forward path offered `offered` requests per second (twice its saturation) over
/// many connections, on a sidecar of its own so that its idle RSS is measured first.
fn overload(
    tools: &Tools,
    args: &RunArgs,
    run_dir: &Path,
    files: &SidecarFiles,
    token: &str,
    offered: u32,
) -> anyhow::Result<OverloadRow> {
    eprintln!("loadbench: overload, {offered}/s offered");
    let (mut sidecar, _) = start_sidecar(tools, run_dir, "overload", files)?;
    check_sidecar(files.listen, token)?;
    let target = studio_target(files.listen, token);
    std::thread::sleep(Duration::from_secs(1));
    let idle_kib = sidecar.memory_kib().map(|(_, now)| now);
    let busy_before = tools.server_cpu.and_then(cpu_busy_ticks);
    let measured = oha::overload(&tools.oha, tools.load_cpu, &target, offered, OVERLOAD_CONNECTIONS, args.duration)
        .context("overload")?;
    let busy_after = tools.server_cpu.and_then(cpu_busy_ticks);
    let answers = measured.served + measured.shed;
    let cpu_us = match (busy_before, busy_after) {
        (Some(before), Some(after)) if answers > 0 => {
            Some((after.saturating_sub(before)) as f64 * 10_000.0 / answers as f64)
        }
        _ => None,
    };
    sidecar.check_running()?;
    let peak_kib = sidecar.memory_kib().map(|(peak, _)| peak);
    Ok(OverloadRow { offered, connections: OVERLOAD_CONNECTIONS, measured, idle_kib, peak_kib, cpu_us })
}

fn sweep(
    tools: &Tools,
    args: &RunArgs,
    run_dir: &Path,
    base: &SidecarFiles,
    token: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    for &entities in &SWEEP_ENTITIES {
        for &policies in &SWEEP_POLICIES {
            let name = format!("sweep-{policies}p-{entities}e");
            eprintln!("loadbench: {name}");
            let files = workload_files(base, &run_dir.join(&name), policies, entities)?;
            let (mut sidecar, ready) = start_sidecar(tools, run_dir, &name, &files)?;
            check_sidecar(files.listen, token)?;
            let target = studio_target(files.listen, token);
            let saturated = oha::measure(
                &tools.oha,
                tools.load_cpu,
                &target,
                Load::Saturate { connections: args.connections },
                args.sweep_duration,
            )?;
            let load = Load::Rate { rate: SWEEP_RATE, connections: args.connections };
            let at_rate = oha::measure(&tools.oha, tools.load_cpu, &target, load, args.sweep_duration)?;
            sidecar.check_running()?;
            report.sweep.push(SweepRow {
                policies,
                entities,
                ready,
                saturated,
                at_rate,
                rss_kib: sidecar.memory_kib(),
            });
        }
    }
    for &accounts in &LIST_ACCOUNTS {
        let name = format!("list-{accounts}");
        eprintln!("loadbench: {name}");
        // the generator makes about half of its entities pool accounts (as the criterion bench)
        let (policy_dir, entity_dir) = setup::write_workload(&run_dir.join(&name), 10, 22 + 2 * accounts)?;
        let files = SidecarFiles {
            listen: free_addr()?,
            admin: free_addr()?,
            policies: policy_dir,
            entities: entity_dir,
            ext_authz: None,
            otlp: None,
            ..base.clone()
        };
        let (mut sidecar, _) = start_sidecar(tools, run_dir, &name, &files)?;
        let headers = setup::studio_headers(token);
        let answer = http1::request(files.listen, "POST", "/datazone/account-pool", &headers, &setup::list_event())?;
        ensure!(answer.status == 200, "the list answered {}: {}", answer.status, answer.body);
        let items = answer.body.matches("\"awsAccountId\"").count();
        ensure!(items > 0, "the list is empty: {}", answer.body);
        let target = Target {
            url: format!("http://{}/datazone/account-pool", files.listen),
            method: "POST",
            headers,
            body: Some(setup::list_event()),
            expect_status: 200,
        };
        let load = Load::Saturate { connections: LIST_CONNECTIONS };
        let measured = oha::measure(&tools.oha, tools.load_cpu, &target, load, args.sweep_duration)?;
        sidecar.check_running()?;
        report.lists.push(ListRow { accounts, items, measured });
    }
    Ok(())
}

/// A sidecar on fresh ports over a grown workload written into `dir`.
fn workload_files(base: &SidecarFiles, dir: &Path, policies: usize, entities: usize) -> anyhow::Result<SidecarFiles> {
    let (policy_dir, entity_dir) = setup::write_workload(dir, policies, entities)?;
    Ok(SidecarFiles {
        listen: free_addr()?,
        admin: free_addr()?,
        policies: policy_dir,
        entities: entity_dir,
        ext_authz: None,
        otlp: None,
        ..base.clone()
    })
}

/// glibc's malloc settings in `deploy/Dockerfile`'s image (`scripts/deploy-check.sh`
/// checks that the two agree).
const IMAGE_GLIBC_TUNABLES: &str = "glibc.malloc.mmap_threshold=131072";

/// The `GLIBC_TUNABLES` every sidecar here runs with: the image's, so that its memory is
/// what the image's would be, unless the caller's environment sets the variable (to
/// anything, empty for glibc's own defaults).
pub fn glibc_tunables() -> String {
    std::env::var("GLIBC_TUNABLES").unwrap_or_else(|_| IMAGE_GLIBC_TUNABLES.to_owned())
}

/// Start a sidecar and time it from spawn to `/readyz` 200.
fn start_sidecar(
    tools: &Tools,
    run_dir: &Path,
    name: &str,
    files: &SidecarFiles,
) -> anyhow::Result<(Process, Duration)> {
    let config = run_dir.join(format!("{name}.toml"));
    std::fs::write(&config, setup::sidecar_config(files))?;
    let mut command = command_on(&tools.sidecar, tools.server_cpu);
    command.arg("serve").arg("--config").arg(&config).env("RUST_LOG", "info").env("GLIBC_TUNABLES", glibc_tunables());
    let mut process = Process::spawn(name, command, run_dir)?;
    let ready = process.wait_http_ok(files.admin, "/readyz", Duration::from_secs(30))?;
    Ok((process, ready))
}

/// The sidecar allows the measured request (and forwards it), and really authenticates
/// and authorizes: no token is 401, a call from outside the LOB's VPC endpoint is 403.
fn check_sidecar(addr: SocketAddr, token: &str) -> anyhow::Result<()> {
    let allowed = http1::request(addr, "GET", setup::STUDIO_PATH, &setup::studio_headers(token), "")?;
    ensure!(
        allowed.status == 200 && allowed.body == "ok\n",
        "the measured request is not forwarded: {} {}",
        allowed.status,
        allowed.body
    );
    let anonymous = http1::request(addr, "GET", setup::STUDIO_PATH, &setup::gateway_headers(), "")?;
    ensure!(anonymous.status == 401, "a request without a token answered {}", anonymous.status);
    let auth = vec![("authorization".to_owned(), format!("Bearer {token}"))];
    let outside = http1::request(addr, "GET", setup::STUDIO_PATH, &auth, "")?;
    ensure!(outside.status == 403, "a request from outside the VPC endpoint answered {}", outside.status);
    let validate = http1::request(addr, "POST", "/datazone/account-pool", &auth, &setup::validate_event())?;
    ensure!(
        validate.status == 200 && validate.body.contains("\"GRANT\""),
        "the validate event is not granted: {} {}",
        validate.status,
        validate.body
    );
    Ok(())
}

/// Both check listeners allow the measured request and deny one without a token.
fn check_ext_authz(http: SocketAddr, grpc: SocketAddr, token: &str) -> anyhow::Result<()> {
    let allowed = http1::request(http, "GET", setup::STUDIO_PATH, &setup::studio_headers(token), "")?;
    ensure!(allowed.status == 200, "the HTTP check of the measured request answered {}", allowed.status);
    let anonymous = http1::request(http, "GET", setup::STUDIO_PATH, &setup::gateway_headers(), "")?;
    ensure!(anonymous.status == 401, "an HTTP check without a token answered {}", anonymous.status);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut client = grpc::client(grpc).await?;
        ensure!(grpc::allowed(&mut client, grpc::studio_check(token)).await?, "the gRPC check is not allowed");
        let mut anonymous = grpc::studio_check(token);
        if let Some(http) = anonymous.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut())
        {
            http.headers.remove("authorization");
        }
        ensure!(!grpc::allowed(&mut client, anonymous).await?, "a gRPC check without a token is allowed");
        Ok(())
    })
}

fn check_forwarded(addr: SocketAddr) -> anyhow::Result<()> {
    let answer = http1::request(addr, "GET", setup::STUDIO_PATH, &setup::gateway_headers(), "")?;
    ensure!(answer.status == 200 && answer.body == "ok\n", "nginx does not forward: {} {}", answer.status, answer.body);
    Ok(())
}

fn tools(args: &RunArgs) -> anyhow::Result<Tools> {
    let me = std::env::current_exe()?;
    let sidecar = match &args.sidecar {
        Some(path) => path.clone(),
        None => me.with_file_name("authz-sidecar"),
    };
    if !sidecar.exists() {
        bail!("no sidecar binary at {} (build it: cargo build --release -p authz-sidecar)", sidecar.display());
    }
    for (tool, flag) in [(&args.oha, "--version"), (&args.nginx, "-v")] {
        let ok = Command::new(tool).arg(flag).output().is_ok_and(|o| o.status.success());
        ensure!(ok, "{} is not runnable (bench/run.sh installs it)", tool.display());
    }
    if args.pin {
        let ok = Command::new("taskset").arg("-c").arg("1").arg("true").status().is_ok_and(|s| s.success());
        ensure!(ok, "--pin needs `taskset` (util-linux) and at least two CPUs");
    }
    Ok(Tools {
        oha: args.oha.clone(),
        nginx: args.nginx.clone(),
        sidecar,
        me,
        server_cpu: args.pin.then_some(0),
        load_cpu: args.pin.then_some(1),
    })
}

fn versions(tools: &Tools) -> String {
    let first_line = |tool: &Path, flag: &str| {
        Command::new(tool)
            .arg(flag)
            .output()
            .ok()
            .map(|o| {
                let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
                String::from_utf8_lossy(&text).lines().next().unwrap_or_default().trim().to_owned()
            })
            .unwrap_or_default()
    };
    format!(
        "{}; {}; the sidecar with `GLIBC_TUNABLES={}`",
        first_line(&tools.oha, "--version"),
        first_line(&tools.nginx, "-v"),
        glibc_tunables()
    )
}
