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
    /// Write every case as a test in the `cedar` CLI's `run-tests` JSON format to FILE
    /// (`-`: standard output) instead of running them.
    #[arg(long, value_name = "FILE")]
    export: Option<PathBuf>,
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
    if let Some(target) = &args.export {
        return export(&snapshot, &tables, target, out, err);
    }
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

/// `--export`: the tables as `cedar run-tests` JSON, or every case that cannot be written.
fn export(
    snapshot: &crate::policy_store::PolicySnapshot,
    tables: &[decision_tables::TableFile],
    target: &std::path::Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let tests = match decision_tables::cedar::export(snapshot, tables) {
        Ok(tests) => tests,
        Err(problems) => {
            for problem in &problems {
                let file = problem.file.display();
                let _ = writeln!(err, "error: {file}: case `{}` cannot be exported: {}", problem.case, problem.error);
            }
            return exit::FAILURE;
        }
    };
    let json = match serde_json::to_string_pretty(&tests) {
        Ok(json) => json + "\n",
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return exit::FAILURE;
        }
    };
    if target.as_os_str() == "-" {
        let _ = out.write_all(json.as_bytes());
        return exit::OK;
    }
    if let Err(e) = std::fs::write(target, json) {
        let _ = writeln!(err, "error: cannot write `{}`: {e}", target.display());
        return exit::FAILURE;
    }
    let _ = writeln!(out, "exported {} tests to {}", tests.len(), target.display());
    exit::OK
}
