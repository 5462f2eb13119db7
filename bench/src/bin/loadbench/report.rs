//! The printed report: Markdown tables, so that `bench/README.md` can hold them as printed.

use std::fmt::Write as _;
use std::time::Duration;

use crate::RunArgs;
use crate::oha::{Measured, Overloaded};

/// The targets (issue 18).
const THROUGHPUT_VS_NGINX: f64 = 0.6;
const VALIDATE_VS_NGINX: f64 = 1.0;
const SWEEP_FLATNESS: f64 = 0.8;
const ADDED_P99_MS: f64 = 0.5;
const ADDED_P99_RATE: u32 = 5_000;
const RSS_MIB: f64 = 40.0;
const READY_MS: f64 = 100.0;
/// Offered over the forward path's saturation, and the peak RSS allowed over idle.
pub const OVERLOAD_FACTOR: f64 = 2.0;
const OVERLOAD_RSS: f64 = 1.5;

/// The forward path offered twice its saturation rate, on a sidecar of its own.
#[derive(Debug)]
pub struct OverloadRow {
    pub offered: u32,
    pub connections: u32,
    pub measured: Overloaded,
    /// RSS once ready, before the run, and the peak after it.
    pub idle_kib: Option<u64>,
    pub peak_kib: Option<u64>,
    /// `--pin`: core-0 CPU µs per answer (served or shed).
    pub cpu_us: Option<f64>,
}

/// One saturation of one target.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub measured: Measured,
    /// `--pin`: CPU time of the servers' core per request, in µs.
    pub cpu_us: Option<f64>,
}

#[derive(Debug)]
pub struct MainRow {
    pub name: String,
    /// The median round (the lower of the two middle ones when the rounds are even).
    pub saturated: Measured,
    /// Requests a second of every round, in the order run.
    pub rounds: Vec<f64>,
    pub at_rates: Vec<Measured>,
    /// `--pin`: the median of the rounds' CPU time per request, in µs.
    pub cpu_us: Option<f64>,
    /// Whether its rounds ran in turn with the other rows' (see [`MainRow::over`]).
    pub interleaved: bool,
}

impl MainRow {
    /// The row of `name` saturated in `rounds` (at least one).
    pub fn new(name: &str, rounds: &[Round], at_rates: Vec<Measured>) -> Option<Self> {
        let mut by_rps = rounds.to_vec();
        by_rps.sort_by(|a, b| a.measured.rps.total_cmp(&b.measured.rps));
        let middle = by_rps.get(by_rps.len().checked_sub(1)? / 2)?;
        let cpu: Vec<f64> = rounds.iter().filter_map(|r| r.cpu_us).collect();
        Some(Self {
            name: name.to_owned(),
            saturated: middle.measured,
            rounds: rounds.iter().map(|r| r.measured.rps).collect(),
            at_rates,
            cpu_us: median(&cpu),
            interleaved: true,
        })
    }

    /// This row's throughput over `base`'s: the median of the rounds' own ratios when
    /// both ran the same rounds in turn (round `i` of each shares the machine's state of
    /// that moment), else the ratio of the medians.
    pub fn over(&self, base: &MainRow) -> Option<Ratio> {
        let paired = self.interleaved && base.interleaved && self.rounds.len() == base.rounds.len();
        let ratios: Vec<f64> = if paired {
            self.rounds.iter().zip(&base.rounds).filter(|(_, b)| **b > 0.0).map(|(a, b)| a / b).collect()
        } else {
            vec![median(&self.rounds)? / median(&base.rounds)?]
        };
        Some(Ratio {
            median: median(&ratios)?,
            low: ratios.iter().copied().reduce(f64::min)?,
            high: ratios.iter().copied().reduce(f64::max)?,
        })
    }
}

/// A throughput ratio over rounds: their median and range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2}", self.median)?;
        if self.high > self.low {
            write!(f, " ({:.2}–{:.2})", self.low, self.high)?;
        }
        Ok(())
    }
}

/// The median of `values` (the mean of the two middle ones when they are even).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let upper = *sorted.get(sorted.len() / 2)?;
    if sorted.len() % 2 == 1 {
        return Some(upper);
    }
    Some((sorted.get(sorted.len() / 2 - 1)? + upper) / 2.0)
}

#[derive(Debug)]
pub struct SweepRow {
    pub policies: usize,
    pub entities: usize,
    pub ready: Duration,
    pub saturated: Measured,
    pub at_rate: Measured,
    pub rss_kib: Option<(u64, u64)>,
}

#[derive(Debug)]
pub struct ListRow {
    pub accounts: usize,
    pub items: usize,
    pub measured: Measured,
}

#[derive(Debug)]
pub struct Report {
    machine: String,
    tools: String,
    duration: Duration,
    sweep_duration: Duration,
    connections: u32,
    rates: Vec<u32>,
    rounds: u32,
    pub main: Vec<MainRow>,
    pub sidecar_ready: Option<Duration>,
    pub sidecar_rss_kib: Option<(u64, u64)>,
    pub sweep: Vec<SweepRow>,
    pub lists: Vec<ListRow>,
    pub overload: Option<OverloadRow>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn latencies(m: &Measured) -> String {
    format!("{:.3} / {:.3} / {:.3}", m.p50, m.p99, m.p999)
}

impl Report {
    pub fn new(machine: String, tools: String, args: &RunArgs) -> Self {
        Self {
            machine,
            tools,
            duration: args.duration,
            sweep_duration: args.sweep_duration,
            connections: args.connections,
            rates: args.rates.clone(),
            rounds: args.rounds,
            main: Vec::new(),
            sidecar_ready: None,
            sidecar_rss_kib: None,
            sweep: Vec::new(),
            lists: Vec::new(),
            overload: None,
        }
    }

    fn row(&self, prefix: &str) -> Option<&MainRow> {
        self.main.iter().find(|r| r.name.starts_with(prefix))
    }

    /// p99 at `rate` of the row named `prefix`.
    fn p99_at(&self, prefix: &str, rate: u32) -> Option<f64> {
        let index = self.rates.iter().position(|&r| r == rate)?;
        self.row(prefix)?.at_rates.get(index).map(|m| m.p99)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "## End-to-end: shipped policies and entities\n");
        let _ = writeln!(out, "Machine: {}. Tools: {}.", self.machine, self.tools);
        let _ = writeln!(
            out,
            "Each measurement runs {:?}; saturation with {} keep-alive connections; fixed rates with \
             latency correction (coordinated omission). Latencies in ms.\n",
            self.duration, self.connections
        );
        let pinned = self.main.iter().any(|r| r.cpu_us.is_some());
        if pinned {
            let _ = writeln!(
                out,
                "Pinned: every server (upstream, nginx with one worker, the sidecar) on CPU 0, the load \
                 generator on CPU 1. CPU µs per request: core 0's busy time at saturation over the answers \
                 (the upstream's share included; the upstream alone's row is that share).\n"
            );
        }
        if self.rounds > 1 {
            let _ = writeln!(
                out,
                "Saturation in {} rounds, every target once a round in turn: the median round is shown, and × \
                 nginx is the median of the rounds' own ratios (their range in brackets).\n",
                self.rounds
            );
        }
        let mut header = "| target | saturated req/s | × nginx |".to_owned();
        let mut rule = "|---|---:|---:|".to_owned();
        if pinned {
            header.push_str(" core-0 CPU µs / request |");
            rule.push_str("---:|");
        }
        for rate in &self.rates {
            let _ = write!(header, " p50 / p99 / p99.9 at {rate}/s |");
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        let nginx = self.row("nginx");
        for row in &self.main {
            let ratio = nginx.and_then(|n| row.over(n)).map_or_else(|| "-".to_owned(), |r| r.to_string());
            let _ = write!(
                out,
                "| {} | {:.0} ({} answers) | {ratio} |",
                row.name, row.saturated.rps, row.saturated.requests
            );
            if pinned {
                let _ = write!(out, " {} |", row.cpu_us.map_or_else(|| "-".to_owned(), |c| format!("{c:.1}")));
            }
            for m in &row.at_rates {
                let _ = write!(out, " {} |", latencies(m));
            }
            out.push('\n');
        }
        out.push('\n');
        for &rate in &self.rates {
            if let (Some(sidecar), Some(upstream), Some(nginx)) =
                (self.p99_at("authz-sidecar →", rate), self.p99_at("upstream", rate), self.p99_at("nginx", rate))
            {
                let _ = writeln!(
                    out,
                    "- Added p99 at {rate}/s: {:+.3} ms over the upstream alone ({:+.3} ms over nginx).",
                    sidecar - upstream,
                    sidecar - nginx
                );
            }
        }
        if let Some(ready) = self.sidecar_ready {
            let _ = writeln!(out, "- Sidecar ready (spawn to `/readyz` 200): {:.1} ms.", ms(ready));
        }
        if let Some((peak, now)) = self.sidecar_rss_kib {
            let _ = writeln!(out, "- Sidecar RSS after the runs: peak {:.1} MiB, now {:.1} MiB.", mib(peak), mib(now));
        }
        self.render_overload(&mut out);
        self.render_targets(&mut out);
        self.render_sweep(&mut out);
        out
    }

    fn render_overload(&self, out: &mut String) {
        let Some(o) = &self.overload else { return };
        let m = &o.measured;
        let answers = (m.served + m.shed).max(1);
        let _ = writeln!(
            out,
            "\n### Overload: the forward path offered {OVERLOAD_FACTOR}× its saturation rate\n\n\
             A sidecar of its own, {} connections, {:?}, latency corrected.\n\n\
             | offered req/s | answered req/s | served (200) | shed (429) | p50 / p99 of every answer (ms) | core-0 CPU µs / answer | RSS idle / peak (MiB) |\n\
             |---:|---:|---:|---:|---:|---:|---:|",
            o.connections, self.duration
        );
        let rss = match (o.idle_kib, o.peak_kib) {
            (Some(idle), Some(peak)) => format!("{:.1} / {:.1}", mib(idle), mib(peak)),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} ({:.0}%) | {:.3} / {:.3} | {} | {rss} |",
            o.offered,
            m.rps,
            m.served,
            m.shed,
            100.0 * m.shed as f64 / answers as f64,
            m.p50,
            m.p99,
            o.cpu_us.map_or_else(|| "-".to_owned(), |c| format!("{c:.1}")),
        );
    }

    fn render_targets(&self, out: &mut String) {
        let _ = writeln!(out, "\n### Targets\n\n| target | goal | measured | met |\n|---|---|---|---|");
        let mut line = |what: &str, goal: String, measured: Option<f64>, unit: &str, ok: &dyn Fn(f64) -> bool| {
            let (value, met) = match measured {
                Some(v) => (format!("{v:.2}{unit}"), if ok(v) { "yes" } else { "**no**" }),
                None => ("not measured".to_owned(), "-"),
            };
            let _ = writeln!(out, "| {what} | {goal} | {value} | {met} |");
        };
        let over_nginx = |prefix: &str| Some(self.row(prefix)?.over(self.row("nginx")?)?.median);
        let throughput = over_nginx("authz-sidecar →");
        line(
            "throughput, JWT + Cedar + forward",
            format!("≥ {THROUGHPUT_VS_NGINX}× nginx"),
            throughput,
            "×",
            &|v| v >= THROUGHPUT_VS_NGINX,
        );
        let validate = over_nginx("authz-sidecar account-pool");
        line("throughput, account-pool validate", format!("≥ {VALIDATE_VS_NGINX}× nginx"), validate, "×", &|v| {
            v >= VALIDATE_VS_NGINX
        });
        let at = |policies: usize| {
            self.sweep.iter().find(|r| r.policies == policies && r.entities == 10_000).map(|r| r.saturated.rps)
        };
        let flatness = at(1_000).zip(at(10)).map(|(many, few)| many / few);
        line(
            "sweep: throughput at 1,000 policies over 10, at 10,000 entities",
            format!("≥ {SWEEP_FLATNESS}×"),
            flatness,
            "×",
            &|v| v >= SWEEP_FLATNESS,
        );
        let added = match (self.p99_at("authz-sidecar →", ADDED_P99_RATE), self.p99_at("upstream", ADDED_P99_RATE)) {
            (Some(s), Some(u)) => Some(s - u),
            _ => None,
        };
        line(&format!("added p99 at {ADDED_P99_RATE}/s"), format!("< {ADDED_P99_MS} ms"), added, " ms", &|v| {
            v < ADDED_P99_MS
        });
        let rss = self
            .sweep
            .iter()
            .find(|r| r.policies == 1_000 && r.entities == 10_000)
            .and_then(|r| r.rss_kib)
            .map(|(peak, _)| mib(peak));
        line("peak RSS, 1,000 policies and 10,000 entities", format!("≤ {RSS_MIB} MiB"), rss, " MiB", &|v| {
            v <= RSS_MIB
        });
        line("ready, shipped policies", format!("< {READY_MS} ms"), self.sidecar_ready.map(ms), " ms", &|v| {
            v < READY_MS
        });
        let overload = self.overload.as_ref();
        let sheds = overload.map(|o| o.measured.shed as f64);
        line(
            &format!("overload at {OVERLOAD_FACTOR}× saturation: answers shed with 429"),
            "> 0".to_owned(),
            sheds,
            "",
            &|v| v > 0.0,
        );
        let growth = overload.and_then(|o| Some(o.peak_kib? as f64 / o.idle_kib? as f64));
        line(
            &format!("overload at {OVERLOAD_FACTOR}× saturation: peak RSS over idle"),
            format!("≤ {OVERLOAD_RSS}×"),
            growth,
            "×",
            &|v| v <= OVERLOAD_RSS,
        );
    }

    fn render_sweep(&self, out: &mut String) {
        if !self.sweep.is_empty() {
            let _ = writeln!(
                out,
                "\n## Scale sweep: the sidecar (JWT + Cedar + forward) over grown policy and entity sets\n\n\
                 Each measurement runs {:?}.\n\n\
                 | policies | entities | ready (ms) | saturated req/s | p50 / p99 / p99.9 at 1000/s | RSS peak / after (MiB) |\n\
                 |---:|---:|---:|---:|---:|---:|",
                self.sweep_duration
            );
            for r in &self.sweep {
                let rss = r
                    .rss_kib
                    .map_or_else(|| "-".to_owned(), |(peak, now)| format!("{:.1} / {:.1}", mib(peak), mib(now)));
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} | {:.0} | {} | {rss} |",
                    r.policies,
                    r.entities,
                    ms(r.ready),
                    r.saturated.rps,
                    latencies(&r.at_rate)
                );
            }
        }
        if !self.lists.is_empty() {
            let _ = writeln!(
                out,
                "\n## `listAuthorizedAccounts` over HTTP, 4 connections\n\n\
                 | pool accounts | items in the answer | req/s | p50 (ms) | p99 (ms) |\n|---:|---:|---:|---:|---:|"
            );
            for r in &self.lists {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.3} | {:.3} |",
                    r.accounts, r.items, r.measured.rps, r.measured.p50, r.measured.p99
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(rps: f64) -> Round {
        Round { measured: Measured { rps, p50: rps / 1e4, p99: 1.0, p999: 2.0, requests: rps as u64 }, cpu_us: None }
    }

    fn row(name: &str, rps: &[f64]) -> MainRow {
        let rounds: Vec<Round> = rps.iter().map(|&r| round(r)).collect();
        MainRow::new(name, &rounds, Vec::new()).unwrap()
    }

    #[test]
    fn a_row_is_its_median_round() {
        let r = row("x", &[300.0, 100.0, 200.0]);
        assert_eq!(r.saturated.rps, 200.0);
        assert_eq!(r.rounds, vec![300.0, 100.0, 200.0]);
        // an even count takes the lower middle round, a measured one
        assert_eq!(row("x", &[400.0, 100.0, 300.0, 200.0]).saturated.rps, 200.0);
        assert!(MainRow::new("x", &[], Vec::new()).is_none());
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn a_ratio_is_the_median_of_the_rounds_own_ratios() {
        // the machine was twice as fast in round 2: the medians' ratio (70 / 100) would
        // be 0.70, the rounds' own ratios are 0.60, 0.50, 0.70
        let nginx = row("nginx", &[100.0, 200.0, 100.0]);
        let sidecar = row("sidecar", &[60.0, 100.0, 70.0]);
        let ratio = sidecar.over(&nginx).unwrap();
        assert_eq!(ratio, Ratio { median: 0.6, low: 0.5, high: 0.7 });
        assert_eq!(ratio.to_string(), "0.60 (0.50–0.70)");
        // a row not run in turn with the others compares medians
        let mut apart = row("traced", &[60.0, 100.0, 70.0]);
        apart.interleaved = false;
        assert_eq!(apart.over(&nginx).unwrap().to_string(), "0.70");
        // so do rows of different round counts
        assert_eq!(row("one", &[50.0]).over(&nginx).unwrap().to_string(), "0.50");
    }

    #[test]
    fn the_table_and_the_targets_give_the_paired_median() {
        let args = RunArgs {
            oha: "oha".into(),
            nginx: "nginx".into(),
            sidecar: None,
            duration: Duration::from_secs(3),
            sweep_duration: Duration::from_secs(3),
            connections: 50,
            rounds: 3,
            rates: Vec::new(),
            no_sweep: true,
            out: None,
            pin: false,
        };
        let mut report = Report::new("m".into(), "t".into(), &args);
        report.main.push(row("nginx → upstream", &[100.0, 200.0, 100.0]));
        report.main.push(row("authz-sidecar → upstream", &[60.0, 100.0, 70.0]));
        report.main.push(row("authz-sidecar account-pool validate", &[110.0, 190.0, 90.0]));
        let text = report.render();
        assert!(text.contains("Saturation in 3 rounds"), "{text}");
        assert!(text.contains("| authz-sidecar → upstream | 70 (70 answers) | 0.60 (0.50–0.70) |"), "{text}");
        assert!(text.contains("| throughput, JWT + Cedar + forward | ≥ 0.6× nginx | 0.60× | yes |"), "{text}");
        // 1.10, 0.95, 0.90: the median round of each would give 110 / 100
        assert!(text.contains("| throughput, account-pool validate | ≥ 1× nginx | 0.95× | **no** |"), "{text}");
    }
}
