//! The real `authz-sidecar` binary: `serve --dev` on loopback, a few calls, a real
//! SIGTERM. Checks the exit code and the log: exactly one JSON audit event per
//! decision, and never the token.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness;
use crate::support::Workspace;

/// `target/<profile>/authz-sidecar`, next to this test binary's `deps/` directory.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("authz-sidecar");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p authz-sidecar` first (scripts/check.sh does)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The real binary, serving `serve --dev` plus `args` on two free loopback ports, with
/// stderr in `log`; ready when this returns.
pub struct Running {
    pub child: Reaped,
    pub data: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
}

/// A sidecar process that is killed (and waited for) when dropped, so that a test that
/// ends without stopping it, or fails half-way, leaves no server running.
#[derive(Debug)]
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub async fn start_binary(args: &[&str], env: &[(&str, &std::ffi::OsStr)], log: &std::path::Path) -> Running {
    start_binary_in(Command::new(binary()), args, env, log, true).await
}

/// As [`start_binary`], with stderr a pipe that nobody reads (the returned end: hold it,
/// or the sidecar's writes fail instead of stalling).
pub async fn start_binary_stalled_stderr(args: &[&str]) -> (Running, std::process::ChildStderr) {
    let mut running = start(Command::new(binary()), args, &[], Stdio::piped(), true).await.expect("not ready");
    let stderr = running.child.stderr.take().unwrap();
    (running, stderr)
}

/// As [`start_binary`]; with `wait_ready` false it returns once the admin listener
/// answers, ready or not.
pub async fn start_binary_in_env(
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
    log: &std::path::Path,
    wait_ready: bool,
) -> Running {
    start_binary_in(Command::new(binary()), args, env, log, wait_ready).await
}

/// As [`start_binary`], under a descriptor limit of `nofile` (soft and hard, set by the
/// shell before it becomes the sidecar).
pub async fn start_binary_with_nofile(nofile: u64, args: &[&str], log: &std::path::Path) -> Running {
    let mut command = Command::new("sh");
    command.args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" \"$@\"")]).arg(binary());
    start_binary_in(command, args, &[], log, true).await
}

async fn start_binary_in(
    command: Command,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
    log: &std::path::Path,
    wait_ready: bool,
) -> Running {
    let stderr = std::fs::File::create(log).unwrap().into();
    match start(command, args, env, stderr, wait_ready).await {
        Some(running) => running,
        None => panic!("not ready: {}", std::fs::read_to_string(log).unwrap_or_default()),
    }
}

/// `serve --dev` plus `args` on two free loopback ports; `None` (the process killed)
/// when it is not up within 10 s.
async fn start(
    mut command: Command,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
    stderr: Stdio,
    wait_ready: bool,
) -> Option<Running> {
    let (data_port, admin_port) = (free_port(), free_port());
    command
        .args(["serve", "--dev"])
        .args(["--listen", &format!("127.0.0.1:{data_port}"), "--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .args(args)
        .stdout(Stdio::null())
        .stderr(stderr);
    if !env.is_empty() {
        command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (key, value) in env {
            command.env(key, value);
        }
    }
    let child = Reaped(command.spawn().unwrap());
    let admin = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let data = format!("127.0.0.1:{data_port}").parse().unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(admin).await.is_ok()
            && (!wait_ready || harness::get(admin, "/readyz", &[]).await.0 == 200)
        {
            return Some(Running { child, data, admin });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_audits_every_decision_and_exits_0_on_sigterm() {
    let ws = Workspace::shipped();
    let log = ws.dir.path().join("sidecar.log");
    let (policies, entities) = (ws.policies(), ws.entities());
    let args = ["--policies", policies.to_str().unwrap(), "--entities", entities.to_str().unwrap()];
    let Running { mut child, data, admin } = start_binary(&args, &[], &log).await;

    let (status, _, token) = harness::get(admin, "/dev/token?user=user-1&groups=Team1,Team2", &[]).await;
    assert_eq!(status, 200);
    let auth = format!("Bearer {token}");
    let through_lob_a = [
        ("authorization", auth.as_str()),
        ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
        ("x-forwarded-for", "10.1.2.3"),
    ];
    assert_eq!(harness::get(data, "/studio/user-1/team1", &through_lob_a).await.0, 200);
    assert_eq!(harness::get(data, "/studio/user-2/team2", &through_lob_a).await.0, 403);
    assert_eq!(harness::get(data, "/studio/user-1/team1", &[]).await.0, 401);

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the sidecar did not stop within 5 s of SIGTERM");
    };
    assert!(status.success(), "exit status {status:?}");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&token), "the token reached the log");
    let events: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let audits: Vec<&Value> = events.iter().filter(|e| e["target"] == "authz_sidecar::audit").collect();
    assert_eq!(audits.len(), 2, "one audit event per decision (the 401 never reached one):\n{text}");
    let fields: Vec<&Value> = audits.iter().map(|e| &e["fields"]).collect();
    assert_eq!(fields[0]["decision"], "allow");
    assert_eq!(fields[0]["policies"], serde_json::json!(["presign-own-profile"]), "an array, not a string");
    assert!(fields[0]["errors"].is_array() && fields[0]["latency_us"].is_u64(), "{}", fields[0]);
    assert_eq!(fields[0]["principal"], "Studio::User::\"user-1\"");
    assert_eq!(fields[0]["source_ip"], "10.1.2.3", "the source IP that decided");
    assert_eq!(fields[0]["vpce"], "vpce-0a1a000000000001a", "the VPC endpoint that decided");
    assert_eq!(fields[1]["decision"], "deny");
    assert_eq!(fields[1]["resource"], "Studio::UserProfile::\"user-2-team2\"");
    for f in &fields {
        for key in ["request_id", "route", "action", "reason", "snapshot", "latency_us", "errors"] {
            assert!(!f[key].is_null(), "audit event lacks {key}: {f}");
        }
    }
    assert!(audits.iter().all(|e| e["timestamp"].is_string()));
    assert!(text.contains("DEVELOPMENT ISSUER ENABLED"), "--dev says so loudly");
}

/// `--log-overflow drop` with a stderr that takes nothing (a log pipeline that stalled):
/// the sidecar keeps answering, and the lines it could not keep are counted on
/// `/metrics`. (With `block`, the default, the same requests would wait for room.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stderr_with_log_overflow_drop_keeps_serving_and_counts_what_it_dropped() {
    let ws = Workspace::shipped();
    let (policies, entities) = (ws.policies(), ws.entities());
    let args =
        ["--policies", policies.to_str().unwrap(), "--entities", entities.to_str().unwrap(), "--log-overflow", "drop"];
    let (Running { child: _child, data, admin }, _stderr) = start_binary_stalled_stderr(&args).await;
    let (status, _, token) = harness::get(admin, "/dev/token?user=user-1&groups=Team1,Team2", &[]).await;
    assert_eq!(status, 200);
    let auth = format!("Bearer {token}");
    // 12,000 audit lines of about 500 bytes: more than the pipe (64 KiB) and the
    // writer's bound (4 MiB) hold together
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let auth = auth.clone();
            tokio::spawn(async move {
                let headers = [
                    ("authorization", auth.as_str()),
                    ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
                    ("x-forwarded-for", "10.1.2.3"),
                ];
                let mut answered = 0;
                for _ in 0..1_500 {
                    let status = tokio::time::timeout(
                        Duration::from_secs(10),
                        harness::get(data, "/studio/user-1/team1", &headers),
                    )
                    .await
                    .expect("a request waited on the stalled log")
                    .0;
                    answered += usize::from(status == 200);
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap();
    }
    assert_eq!(answered, 12_000, "every request answered");
    // the drop count is reported by the upkeep task (every 250 ms)
    let mut dropped = 0.0;
    for _ in 0..40 {
        let (_, _, metrics) = harness::get(admin, "/metrics", &[]).await;
        dropped = metrics
            .lines()
            .find_map(|line| line.strip_prefix("authz_log_lines_dropped_total "))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped >= 1_000.0, "{dropped} lines counted as dropped");
}
