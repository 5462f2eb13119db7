//! The command line: `validate`, `authorize` and `test` for security teams.
//!
//! [`run`] takes the arguments and two writers and returns the exit code, so the
//! integration tests drive the real commands in-process and read what they print.
//! Results go to `out`; problems and log lines go to `err`.

mod access;
mod authorize;
pub mod avp;
mod healthcheck;
mod lambda;
mod replay;
mod serve;
mod test;
mod validate;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::policy_store::{LoadError, PolicySnapshot, SourceDirs};
use crate::telemetry::{self, LogFormat, LogOverflow};

/// The variable that names the configuration file where `--config` is not given, for
/// `serve`, `healthcheck` and `lambda` alike: a container or a Lambda function sets it
/// once, and every command run in it reads the same file.
pub const CONFIG_VARIABLE: &str = "AUTHZ_SIDECAR_CONFIG";

/// Exit codes, the same for every command.
pub mod exit {
    /// All valid; allowed; every case passed.
    pub const OK: u8 = 0;
    /// Something is invalid, a case failed, or the request could not be decided.
    pub const FAILURE: u8 = 1;
    /// The command line itself is wrong (clap's convention).
    pub const USAGE: u8 = 2;
    /// `authorize`: the request was decided and denied.
    pub const DENIED: u8 = 3;
}

#[derive(Debug, Parser)]
#[command(
    name = "authz-sidecar",
    version,
    about = "Policy-driven authorization sidecar: JWT authentication, Cedar decisions, forwarding",
    long_about = "Policy-driven authorization sidecar.\n\n\
        Security teams keep Cedar policies (`*.cedar`) and their schema (`*.cedarschema`) in a \
        policies directory, and the entities the policies talk about (users, teams, lines of \
        business, Studio profiles, pool accounts) as Cedar entity JSON in an entities directory. \
        These commands check and exercise them offline, exactly as the sidecar will decide.\n\n\
        Start with:\n  \
        authz-sidecar serve --dev\n  \
        authz-sidecar validate\n  \
        authz-sidecar test\n  \
        authz-sidecar authorize --principal 'Studio::User::\"user-1\"' \\\n    \
        --action CreatePresignedDomainUrl --resource 'Studio::UserProfile::\"user-1-team1\"' \\\n    \
        --context '{\"sourceVpce\": \"vpce-0a1a000000000001a\", \"sourceIp\": \"10.1.2.3\"}'\n\n\
        Exit codes: 0 ok/allow, 1 invalid or failed, 2 bad command line, 3 denied (authorize).",
    propagate_version = true
)]
struct Cli {
    /// How log lines on stderr are written (default: json for `serve`, text otherwise).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,

    /// `serve`: what to do with a log line when stderr cannot keep up and the writer's
    /// buffer is full: wait for room (no decision goes unrecorded), or drop it (counted
    /// in `authz_log_lines_dropped_total` and reported in a warning).
    #[arg(long, global = true, value_enum, default_value_t = LogOverflow::Block)]
    log_overflow: LogOverflow,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the schema, every policy (strictly, against the schema) and every entity.
    ///
    /// Exits 0 with a one-line summary when everything is valid. Otherwise lists every
    /// problem as `file:line:column: what is wrong` and exits 1.
    Validate(validate::Args),
    /// Decide one request and explain the decision.
    ///
    /// Prints allow or deny, the policies that decided it (with the file and line each
    /// is defined at) and any evaluation errors. Exits 0 on allow, 3 on deny, 1 when the
    /// request cannot be decided (e.g. it does not fit the schema).
    Authorize(authorize::Args),
    /// List the resources of a type an action allows one principal.
    ///
    /// Decides the question for every stored resource of the type (and those given in
    /// --request-entities), once per class of resources the policies cannot tell apart,
    /// and prints the allowed ones with the policies that allowed each. Exits 0 with the
    /// list (empty or not), 1 when the question cannot be asked.
    Access(access::Args),
    /// Run the decision tables: named requests and the decision each must get.
    ///
    /// Reads every `*.yaml`/`*.yml`/`*.json` table in DIR (default: `<policies>/tests`),
    /// prints each failing case with what was expected and what came, then a summary.
    /// Exits 1 if any case fails. See the README for the table format.
    Test(test::Args),
    /// Decide recorded requests again under a candidate policy set, and report changes.
    ///
    /// Reads the decision records `serve` writes (`[records]`), decides each again
    /// under --policies (the candidate) over --entities, and lists every request whose
    /// answer would flip (deny → allow, allow → deny) or be decided by other policies,
    /// grouped by route, action and policies, with counts and examples. Exits 1 when a
    /// denied request would be allowed (unless --allow-widening), when a record cannot
    /// be read, or when there is nothing to replay.
    Replay(replay::Args),
    /// Serve: authenticate, authorize and forward every call (see the README).
    ///
    /// Checks the whole configuration first and exits 1 naming what is wrong. Then
    /// serves the data plane and the admin endpoints until SIGTERM or SIGINT, drains
    /// in-flight requests for at most `server.shutdown_grace`, and exits 0.
    Serve(serve::Args),
    /// Run as the DataZone account-pool handler in AWS Lambda.
    ///
    /// The Lambda entry point (package this binary as `bootstrap` with the policies and
    /// entities): answers `listAuthorizedAccounts` and `validateAccountAuthorization`
    /// events exactly as the HTTP route does.
    Lambda(lambda::Args),
    Avp(avp::Args),
    /// Ask a running sidecar whether it is ready (its admin listener's `/readyz`).
    ///
    /// For container health checks in images without curl: exits 0 when the sidecar
    /// answers ready, 1 (saying why on stderr) when it is not ready, not listening or
    /// too slow. The admin address comes from `--admin-listen`, else from the
    /// configuration file (with the same environment overrides `serve` applies).
    Healthcheck(healthcheck::Args),
}

/// Where the policies and entities are.
#[derive(Debug, Clone, clap::Args)]
struct Sources {
    /// Directory holding the schema (`*.cedarschema`) and the policies (`*.cedar`).
    #[arg(long, value_name = "DIR", default_value = "policies")]
    policies: PathBuf,
    /// Directory holding the entities, as Cedar entity JSON files (`*.json`).
    #[arg(long, value_name = "DIR", default_value = "entities")]
    entities: PathBuf,
}

impl Sources {
    fn dirs(&self) -> SourceDirs {
        SourceDirs::new(&self.policies, &self.entities)
    }

    /// Load the snapshot, or print every problem to `err`.
    fn load(&self, err: &mut dyn Write) -> Result<PolicySnapshot, u8> {
        PolicySnapshot::load(&self.dirs(), 1).map_err(|e| {
            print_problems(err, &e);
            exit::FAILURE
        })
    }
}

fn print_problems(err: &mut dyn Write, error: &LoadError) {
    for problem in &error.problems {
        let _ = writeln!(err, "error: {problem}");
    }
    let count = error.problems.len();
    let _ = writeln!(err, "{count} problem{} found", if count == 1 { "" } else { "s" });
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    // Lambda's custom runtime runs a file named `bootstrap` with no arguments: the
    // account-pool handler, over the `policies/` and `entities/` packaged beside it
    // (the function's working directory), without a shell wrapper; the function's
    // `AUTHZ_SIDECAR_CONFIG` names its configuration, if it has one
    let program = args.first().map(std::path::Path::new).and_then(std::path::Path::file_name);
    if args.len() == 1 && program.is_some_and(|name| name == "bootstrap") {
        args.push("lambda".into());
    }
    // Unlocked handles: `serve` logs to stderr from other threads while this one waits.
    let code = run(args, &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}

/// Parse `args` (the first is the program name) and run the command.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let target: &mut dyn Write = if e.use_stderr() { err } else { out };
            let _ = write!(target, "{}", e.render());
            return u8::try_from(e.exit_code()).unwrap_or(exit::USAGE);
        }
    };
    let (format, level, background) = match cli.command {
        Command::Serve(_) => (cli.log_format.unwrap_or(LogFormat::Json), "info", Some(cli.log_overflow)),
        Command::Lambda(_) => (cli.log_format.unwrap_or(LogFormat::Json), "info", None),
        _ => (cli.log_format.unwrap_or(LogFormat::Text), "warn", None),
    };
    // traces are `serve`'s, when its configuration asks for them (a configuration that
    // cannot be read is reported by `serve` itself)
    let traces = match &cli.command {
        Command::Serve(args) => serve::traces(args),
        _ => None,
    };
    // exports queued spans and flushes buffered lines when the command returns
    let _telemetry = match telemetry::init(format, level, background, traces.as_ref()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            return exit::FAILURE;
        }
    };
    match cli.command {
        Command::Validate(args) => validate::run(&args, out, err),
        Command::Authorize(args) => authorize::run(&args, out, err),
        Command::Access(args) => access::run(&args, out, err),
        Command::Test(args) => test::run(&args, out, err),
        Command::Replay(args) => replay::run(&args, out, err),
        Command::Serve(args) => serve::run(&args, out, err),
        Command::Lambda(args) => lambda::run(&args, out, err),
        Command::Avp(args) => avp::run(&args, out, err),
        Command::Healthcheck(args) => healthcheck::run(&args, out, err),
    }
}
