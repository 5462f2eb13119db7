//! `authz-sidecar replay`: decide recorded requests again under a candidate policy set.

use std::io::Write;
use std::path::PathBuf;

use super::{Sources, exit, print_problems};
use crate::policy_store::{PolicySnapshot, SourceDirs};
use crate::records::replay::{Replay, Report};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// `--policies` is the candidate policy set; `--entities` the entities it is asked over.
    #[command(flatten)]
    sources: Sources,
    /// Compare with this policy directory's answers (over the same entities) instead of
    /// the recorded ones: only what the policies change shows, not what entities
    /// changed since the records were written.
    #[arg(long, value_name = "DIR")]
    baseline: Option<PathBuf>,
    /// Decision-record files written by `serve` (`[records]`), directories of them, or
    /// `-` for standard input.
    #[arg(value_name = "RECORDS", required = true)]
    records: Vec<PathBuf>,
    /// Exit 0 even when a request denied before would be allowed.
    #[arg(long)]
    allow_widening: bool,
    /// Exit 1 when a request allowed before would be denied.
    #[arg(long)]
    fail_on_narrowing: bool,
    /// Requests shown for each group of changes.
    #[arg(long, value_name = "N", default_value_t = 3)]
    examples: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let candidate = match args.sources.load(err) {
        Ok(snapshot) => snapshot,
        Err(code) => return code,
    };
    let baseline = match &args.baseline {
        Some(dir) => match PolicySnapshot::load(&SourceDirs::new(dir, &args.sources.entities), 1) {
            Ok(snapshot) => Some(snapshot),
            Err(e) => {
                let _ = writeln!(err, "error: the baseline policies cannot be loaded");
                print_problems(err, &e);
                return exit::FAILURE;
            }
        },
        None => None,
    };
    let mut replay = Replay::new(&candidate, baseline.as_ref(), args.examples);
    if let Err(e) = replay.files(&args.records) {
        print_problems(err, &e);
        return exit::FAILURE;
    }
    let report = replay.finish();
    let gate = Gate::of(&report, args);
    if args.json {
        let json = serde_json::json!({
            "candidate": {"policies": args.sources.policies, "snapshot": candidate.version().to_string()},
            "baseline": baseline.as_ref().map(|b| serde_json::json!({
                "policies": args.baseline, "snapshot": b.version().to_string(),
            })),
            "report": report,
            "gate": {"passed": gate.failures.is_empty(), "failures": gate.failures},
        });
        let _ = writeln!(out, "{json}");
    } else {
        print_text(out, args, &candidate, baseline.as_ref(), &report, &gate);
    }
    for problem in &report.unreadable {
        let _ = writeln!(err, "error: {problem}");
    }
    if gate.failures.is_empty() { exit::OK } else { exit::FAILURE }
}

/// Why the replay fails a CI job, if it does.
struct Gate {
    failures: Vec<String>,
}

impl Gate {
    fn of(report: &Report, args: &Args) -> Self {
        let mut failures = Vec::new();
        if report.records == 0 && report.unreadable.is_empty() {
            failures.push("no records to replay: nothing shows what the candidate would change".to_owned());
        }
        if !report.unreadable.is_empty() {
            let count = report.unreadable.len();
            failures.push(format!("{count} record{} could not be read", if count == 1 { "" } else { "s" }));
        }
        if report.widened > 0 && !args.allow_widening {
            failures.push(format!(
                "{} denied before would be allowed (pass --allow-widening to accept)",
                requests(report.widened)
            ));
        }
        if report.narrowed > 0 && args.fail_on_narrowing {
            failures
                .push(format!("{} allowed before would be denied (--fail-on-narrowing)", requests(report.narrowed)));
        }
        Self { failures }
    }
}

fn print_text(
    out: &mut dyn Write,
    args: &Args,
    candidate: &PolicySnapshot,
    baseline: Option<&PolicySnapshot>,
    report: &Report,
    gate: &Gate,
) {
    let _ = writeln!(
        out,
        "replayed {} records under `{}` (snapshot {})",
        report.records,
        args.sources.policies.display(),
        candidate.version()
    );
    match (baseline, &args.baseline) {
        (Some(baseline), Some(dir)) => {
            let _ = writeln!(out, "compared with `{}` (snapshot {})", dir.display(), baseline.version());
        }
        _ => {
            let _ = writeln!(out, "compared with the recorded answers");
        }
    }
    let mut shown = None;
    for group in &report.groups {
        if shown != Some(group.change) {
            let total: usize = report.groups.iter().filter(|g| g.change == group.change).map(|g| g.count).sum();
            let _ = writeln!(out, "\n{}: {}", group.change.title(), requests(total));
            shown = Some(group.change);
        }
        let _ = writeln!(out, "  route {}, action {}: {}", group.route, group.action, requests(group.count));
        let _ = writeln!(out, "    before: {}", group.before);
        let _ = writeln!(out, "    after:  {}", group.after);
        for example in &group.examples {
            let _ = writeln!(
                out,
                "    e.g. {} {} → {} at {} ({})",
                example.request_id, example.principal, example.resource, example.time, example.record
            );
            if let Some(error) = &example.error {
                let _ = writeln!(out, "         {error}");
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{} unchanged, {} widened, {} narrowed, {} decided by other policies, {} unreadable",
        report.unchanged,
        report.widened,
        report.narrowed,
        report.other_policies,
        report.unreadable.len()
    );
    if report.with_omissions > 0 {
        let _ = writeln!(
            out,
            "note: {} records had parts left out ([records] omit); a policy reading them decides those otherwise",
            report.with_omissions
        );
    }
    if gate.failures.is_empty() {
        let _ = writeln!(out, "gate: passed");
    } else {
        for failure in &gate.failures {
            let _ = writeln!(out, "gate: FAILED: {failure}");
        }
    }
}

fn requests(count: usize) -> String {
    format!("{count} request{}", if count == 1 { "" } else { "s" })
}
