//! A load generator for Envoy's gRPC `Check` (oha speaks HTTP only): the `CheckRequest`
//! Envoy sends for the benchmark's Studio request, over a few HTTP/2 connections as an
//! Envoy's workers hold them, either as fast as `concurrency` calls in flight allow or
//! at a fixed rate with latency measured from each call's scheduled start when the
//! server kept its worker past it (corrected for coordinated omission, as oha's
//! `--latency-correction`). It runs as its own process
//! (`loadbench grpc-check`), so that `--pin` puts it on the load generator's CPU, and
//! prints one JSON summary that [`measure`] reads.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use authz_sidecar::server::ext_authz::grpc::envoy_check;
use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::Channel;

use crate::oha::{Load, Measured};
use crate::setup;

/// HTTP/2 connections the calls are spread over.
const CHANNELS: usize = 2;

#[derive(Debug, clap::Args)]
pub struct GrpcArgs {
    /// The sidecar's `ext_authz.grpc_listen`.
    #[arg(long)]
    addr: SocketAddr,
    /// The bearer token of the described request.
    #[arg(long)]
    token: String,
    /// Calls in flight at once.
    #[arg(long)]
    concurrency: u32,
    /// Calls per second; as fast as possible without it.
    #[arg(long)]
    rate: Option<u32>,
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Duration,
}

/// The check Envoy sends for the benchmark's Studio request, arriving from the gateway
/// (a trusted proxy) with the client's address and the VPC endpoint in its headers.
pub fn studio_check(token: &str) -> CheckRequest {
    let headers = setup::studio_headers(token);
    let mut headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    headers.extend([(":authority", "studio.example.com"), ("user-agent", "loadbench")]);
    let gateway = SocketAddr::from(([127, 0, 0, 1], 40_000));
    envoy_check("GET", setup::STUDIO_PATH, &headers, Some(gateway))
}

/// A client of the `Check` service at `addr`.
pub async fn client(addr: SocketAddr) -> anyhow::Result<AuthorizationClient<Channel>> {
    Ok(AuthorizationClient::new(Channel::from_shared(format!("http://{addr}"))?.connect().await?))
}

/// Whether a check was allowed; an error when the call itself failed.
pub async fn allowed(client: &mut AuthorizationClient<Channel>, check: CheckRequest) -> anyhow::Result<bool> {
    let answer = client.check(check).await.context("the Check call failed")?.into_inner();
    let ok = answer.status.is_some_and(|s| s.code == 0);
    Ok(ok && matches!(answer.http_response, Some(HttpResponse::OkResponse(_))))
}

/// `loadbench grpc-check`: drive the load and print the summary.
pub fn run(args: &GrpcArgs) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let summary = runtime.block_on(drive(args))?;
    Ok(summary.to_string())
}

async fn drive(args: &GrpcArgs) -> anyhow::Result<serde_json::Value> {
    let mut channels = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        channels.push(Channel::from_shared(format!("http://{}", args.addr))?.connect().await?);
    }
    let check = studio_check(&args.token);
    let mut connections = channels.iter().cycle();
    let mut probe = AuthorizationClient::new(connections.next().context("no connection")?.clone());
    ensure!(allowed(&mut probe, check.clone()).await?, "the measured check is not allowed");
    let started = Instant::now();
    let deadline = started + args.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let mut client = AuthorizationClient::new(connections.next().context("no connection")?.clone());
        let (check, next, rate) = (check.clone(), next.clone(), args.rate);
        workers.spawn(async move {
            let (mut latencies, mut denied) = (Vec::new(), 0u64);
            loop {
                // with a rate, each call has its slot: a call whose worker was still
                // waiting on the server at its slot counts from the slot (the server's
                // delay, coordinated omission); one whose worker was idle counts from
                // when it was sent, so the timer's own lateness (its wheel ticks in
                // milliseconds) is not counted as the server's
                let scheduled = match rate {
                    Some(rate) => {
                        let slot = next.fetch_add(1, Ordering::Relaxed);
                        let at = started + Duration::from_secs_f64(slot as f64 / f64::from(rate));
                        if Instant::now() >= at {
                            at
                        } else {
                            tokio::time::sleep_until(at.into()).await;
                            Instant::now()
                        }
                    }
                    None => Instant::now(),
                };
                if scheduled >= deadline {
                    break;
                }
                match allowed(&mut client, check.clone()).await {
                    Ok(true) => latencies.push(scheduled.elapsed()),
                    Ok(false) | Err(_) => denied += 1,
                }
            }
            (latencies, denied)
        });
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while let Some(joined) = workers.join_next().await {
        let (more, denied) = joined?;
        latencies.extend(more);
        failed += denied;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        latencies.get(index).map_or(0.0, Duration::as_secs_f64)
    };
    Ok(serde_json::json!({
        "requests": latencies.len(),
        "failed": failed,
        "requestsPerSec": latencies.len() as f64 / elapsed,
        "p50": percentile(0.50),
        "p99": percentile(0.99),
        "p99.9": percentile(0.999),
    }))
}

/// Run `loadbench grpc-check` (this binary) on CPU `cpu` when given, and read its summary.
pub fn measure(
    me: &Path,
    cpu: Option<usize>,
    addr: SocketAddr,
    token: &str,
    load: Load,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let mut command = crate::procs::command_on(me, cpu);
    command.arg("grpc-check").arg("--addr").arg(addr.to_string()).arg("--token").arg(token);
    command.arg("--duration").arg(format!("{}ms", duration.as_millis()));
    match load {
        Load::Saturate { connections } => command.arg("--concurrency").arg(connections.to_string()),
        Load::Rate { rate, connections } => {
            command.arg("--concurrency").arg(connections.to_string()).arg("--rate").arg(rate.to_string())
        }
    };
    let output = command.output().context("cannot run loadbench grpc-check")?;
    if !output.status.success() {
        bail!("grpc-check failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    parse(&serde_json::from_slice(&output.stdout).context("grpc-check's output is not JSON")?)
}

fn parse(summary: &serde_json::Value) -> anyhow::Result<Measured> {
    let number = |key: &str| summary.get(key).and_then(serde_json::Value::as_f64).with_context(|| format!("no {key}"));
    let requests = summary.get("requests").and_then(serde_json::Value::as_u64).context("no requests")?;
    let failed = summary.get("failed").and_then(serde_json::Value::as_u64).context("no failed")?;
    ensure!(requests > 0, "no check was allowed");
    if failed > requests / 1000 {
        bail!("{failed} checks were not allowed or failed: the target is not doing the measured job");
    }
    Ok(Measured {
        rps: number("requestsPerSec")?,
        p50: number("p50")? * 1000.0,
        p99: number("p99")? * 1000.0,
        p999: number("p99.9")? * 1000.0,
        requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_is_read_in_milliseconds_and_failures_fail_the_run() {
        let mut summary = serde_json::json!({
            "requests": 8000, "failed": 0, "requestsPerSec": 1000.0,
            "p50": 0.0002, "p99": 0.001, "p99.9": 0.002,
        });
        let m = parse(&summary).unwrap();
        assert_eq!(m.requests, 8000);
        assert!((m.p99 - 1.0).abs() < 1e-9);
        summary["failed"] = serde_json::json!(9);
        assert!(parse(&summary).is_err());
        summary["requests"] = serde_json::json!(0);
        assert!(parse(&summary).is_err());
    }

    #[test]
    fn the_measured_check_describes_the_studio_request_from_the_gateway() {
        let check = studio_check("t");
        let http = check.attributes.as_ref().unwrap().request.as_ref().unwrap().http.as_ref().unwrap();
        assert_eq!(http.path, setup::STUDIO_PATH);
        assert_eq!(http.headers["authorization"], "Bearer t");
        assert_eq!(http.headers["x-forwarded-for"], setup::CLIENT_IP);
    }
}
