//! Driving oha (the load generator) and reading its JSON summary.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// What to send, to where, and what every answer must be.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub method: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub expect_status: u16,
}

/// How hard to push.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// As fast as `connections` keep-alive connections go.
    Saturate { connections: u32 },
    /// `rate` requests per second, latency corrected for coordinated omission.
    Rate { rate: u32, connections: u32 },
}

/// One oha run's summary. Latencies in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    /// Answers counted (all with the expected status).
    pub requests: u64,
}

/// Run oha against `target` (on CPU `cpu` only, when given).
pub fn measure(
    oha: &Path,
    cpu: Option<usize>,
    target: &Target,
    load: Load,
    duration: Duration,
) -> anyhow::Result<Measured> {
    parse(&run(oha, cpu, target, load, duration)?, target.expect_status)
}

/// An overload run: every answer is the target's status or 429 (shed); anything else
/// fails the run. Latencies (ms) are over every answer, shed ones included.
#[derive(Debug, Clone, Copy)]
pub struct Overloaded {
    pub rps: f64,
    pub served: u64,
    pub shed: u64,
    pub p50: f64,
    pub p99: f64,
}

/// Offer `rate` requests per second over `connections` connections.
pub fn overload(
    oha: &Path,
    cpu: Option<usize>,
    target: &Target,
    rate: u32,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<Overloaded> {
    let summary = run(oha, cpu, target, Load::Rate { rate, connections }, duration)?;
    parse_overload(&summary, target.expect_status)
}

fn parse_overload(summary: &Value, expect_status: u16) -> anyhow::Result<Overloaded> {
    let statuses = summary.get("statusCodeDistribution").and_then(Value::as_object).context("no status counts")?;
    let (mut served, mut shed) = (0, 0);
    for (status, count) in statuses {
        let count = count.as_u64().unwrap_or(0);
        match status.parse::<u16>() {
            Ok(s) if s == expect_status => served += count,
            Ok(429) => shed += count,
            _ => bail!("{count} answers were {status}: neither {expect_status} nor 429"),
        }
    }
    let seconds = |pointer: &str| summary.pointer(pointer).and_then(Value::as_f64).map(|s| s * 1000.0);
    Ok(Overloaded {
        rps: summary.pointer("/summary/requestsPerSec").and_then(Value::as_f64).context("no requestsPerSec")?,
        served,
        shed,
        p50: seconds("/latencyPercentiles/p50").context("no p50")?,
        p99: seconds("/latencyPercentiles/p99").context("no p99")?,
    })
}

fn run(oha: &Path, cpu: Option<usize>, target: &Target, load: Load, duration: Duration) -> anyhow::Result<Value> {
    let mut command = crate::procs::command_on(oha, cpu);
    command
        .arg("--no-tui")
        .arg("--output-format")
        .arg("json")
        .arg("-z")
        .arg(format!("{}ms", duration.as_millis()))
        .arg("-m")
        .arg(target.method);
    match load {
        Load::Saturate { connections } => {
            command.arg("-c").arg(connections.to_string());
        }
        Load::Rate { rate, connections } => {
            command.arg("-c").arg(connections.to_string()).arg("-q").arg(rate.to_string()).arg("--latency-correction");
        }
    }
    for (name, value) in &target.headers {
        command.arg("-H").arg(format!("{name}: {value}"));
    }
    if let Some(body) = &target.body {
        command.arg("-d").arg(body).arg("-T").arg("application/json");
    }
    command.arg(&target.url);
    let output = command.output().with_context(|| format!("cannot run {}", oha.display()))?;
    if !output.status.success() {
        bail!("oha failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("oha's output is not JSON")
}

fn parse(summary: &Value, expect_status: u16) -> anyhow::Result<Measured> {
    let statuses = summary.get("statusCodeDistribution").and_then(Value::as_object).context("no status counts")?;
    let mut requests = 0;
    for (status, count) in statuses {
        let count = count.as_u64().unwrap_or(0);
        if status != &expect_status.to_string() {
            bail!("{count} answers were {status}, not {expect_status}: the target is not doing the measured job");
        }
        requests += count;
    }
    if let Some(errors) = summary.get("errorDistribution").and_then(Value::as_object)
        && !errors.is_empty()
    {
        // Connections cut by the end of the run are reported too; anything else is a failure.
        let failed: u64 = errors.iter().filter(|(k, _)| !k.contains("aborted")).filter_map(|(_, v)| v.as_u64()).sum();
        if failed > requests / 1000 {
            bail!("oha saw errors: {errors:?}");
        }
    }
    if requests == 0 {
        bail!("no request succeeded");
    }
    let seconds = |pointer: &str| summary.pointer(pointer).and_then(Value::as_f64).map(|s| s * 1000.0);
    let p = |name: &str| seconds(&format!("/latencyPercentiles/{name}")).with_context(|| format!("no {name}"));
    Ok(Measured {
        rps: summary.pointer("/summary/requestsPerSec").and_then(Value::as_f64).context("no requestsPerSec")?,
        p50: p("p50")?,
        p99: p("p99")?,
        p999: p("p99.9")?,
        requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_read_and_wrong_statuses_fail_the_run() {
        let summary = serde_json::json!({
            "summary": {"requestsPerSec": 1000.5},
            "latencyPercentiles": {"p50": 0.0002, "p99": 0.001, "p99.9": 0.002},
            "statusCodeDistribution": {"200": 8000},
            "errorDistribution": {}
        });
        let m = parse(&summary, 200).unwrap();
        assert_eq!(m.requests, 8000);
        assert!((m.p99 - 1.0).abs() < 1e-9);
        assert!(parse(&summary, 403).is_err());
    }

    #[test]
    fn an_overload_run_counts_shed_answers_and_fails_on_any_other() {
        let mut summary = serde_json::json!({
            "summary": {"requestsPerSec": 9000.0},
            "latencyPercentiles": {"p50": 0.001, "p99": 0.02},
            "statusCodeDistribution": {"200": 5000, "429": 4000},
        });
        let m = parse_overload(&summary, 200).unwrap();
        assert_eq!((m.served, m.shed), (5000, 4000));
        assert!((m.p99 - 20.0).abs() < 1e-9);
        summary["statusCodeDistribution"]["503"] = serde_json::json!(1);
        assert!(parse_overload(&summary, 200).is_err());
    }
}
