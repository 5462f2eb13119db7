//! `authz-sidecar test`: run the decision tables.

use std::io::Write;
use std::path::PathBuf;

use super::{Sources, exit, print_problems};
use crate::decision_tables::{self, Outcome, describe_decision};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    sources: Sources,
    /// Directory of decision tables (default: the `tests` directory inside --policies).
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Also fail when a policy decides none of the passing cases.
    #[arg(long)]
    require_coverage: bool,
    /// Print passing cases too.
    #[arg(long, short)]
    verbose: bool,
}

pub(super) fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let snapshot = match args.sources.load(err) {
        Ok(snapshot) => snapshot,
        Err(code) => return code,
    };
    let dir = args.dir.clone().unwrap_or_else(|| args.sources.policies.join("tests"));
    let tables = match decision_tables::load_tables(&dir) {
        Ok(tables) => tables,
        Err(e) => {
            print_problems(err, &e);
            return exit::FAILURE;
        }
    };
    let report = decision_tables::run(&snapshot, &tables);
    for result in &report.results {
        let file = result.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        match &result.outcome {
            Outcome::Passed(decision) if args.verbose => {
                let _ = writeln!(out, "PASS  {file}: {}  ({})", result.name, describe_decision(decision));
            }
            Outcome::Passed(_) => {}
            Outcome::Failed { expected, got } => {
                let _ = writeln!(out, "FAIL  {file}: {}", result.name);
                let _ = writeln!(out, "      expected: {expected}");
                let _ = writeln!(out, "      got:      {}", describe_decision(got));
            }
            Outcome::Error(message) => {
                let _ = writeln!(out, "ERROR {file}: {}", result.name);
                let _ = writeln!(out, "      {message}");
            }
        }
    }
    let uncovered = report.uncovered();
    let _ = writeln!(out, "{} passed, {} failed", report.passed(), report.failed());
    if uncovered.is_empty() {
        let _ =
            writeln!(out, "coverage: each of the {} policies decided at least one passing case", report.coverage.len());
    } else {
        let _ = writeln!(out, "coverage: no passing case is decided by: {}", uncovered.join(", "));
    }
    let coverage_failed = args.require_coverage && !uncovered.is_empty();
    if report.failed() > 0 || coverage_failed { exit::FAILURE } else { exit::OK }
}
