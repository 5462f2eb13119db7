//! The end-to-end load benchmark: the sidecar against the upstream alone and against
//! nginx as a plain reverse proxy, on one machine, in one run. `bench/run.sh` installs
//! the tools, builds, and calls `loadbench run`; see `bench/README.md`.
//!
//! `loadbench upstream` is the minimal upstream every proxy forwards to.

// A benchmark driver reports on stdout and stderr.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line tool: its report is its output")]

mod directory;
mod grpc;
mod http1;
mod oha;
mod procs;
mod report;
mod scenario;
mod setup;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "loadbench", about = "End-to-end load benchmark for authz-sidecar")]
enum Command {
    /// Serve 200 "ok" to every request (the upstream of every proxy in the benchmark).
    Upstream {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// Run the whole benchmark and print the tables.
    Run(RunArgs),
    /// The entity directory at scale: a users table of 100,000 users, 1,000 active.
    Directory(directory::DirectoryArgs),
    /// Load Envoy's gRPC `Check` on a sidecar's `ext_authz.grpc_listen` (what `run` uses
    /// for its gRPC target) and print a JSON summary.
    GrpcCheck(grpc::GrpcArgs),
    /// Write a new key's JWKS to a file and print a token signed by it (the benchmark's
    /// user and groups, valid for two hours), to profile by hand.
    Token {
        #[arg(long)]
        jwks: PathBuf,
    },
    /// Write a sweep workload (`<dir>/policies`, `<dir>/entities`) and a sidecar
    /// configuration for it (`<dir>/config.toml`: the benchmark's, listening on
    /// 127.0.0.1:18181 with its admin on :18182, forwarding to an upstream on :18190,
    /// trusting the keys `loadbench token --jwks <dir>/jwks.json` writes), to profile by
    /// hand (see bench/sweep-memory.sh).
    Workload {
        #[arg(long)]
        policies: usize,
        #[arg(long)]
        entities: usize,
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The oha load generator.
    #[arg(long, default_value = "oha")]
    oha: PathBuf,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    /// The authz-sidecar binary (default: beside this one, in the same target directory).
    #[arg(long)]
    sidecar: Option<PathBuf>,
    /// How long each measurement runs.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long each scale-sweep measurement runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    sweep_duration: Duration,
    /// Connections for the saturation runs.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// Saturation rounds: every target of the main table is saturated once a round, the
    /// targets in turn, so that each round's figures share the machine's state; the
    /// table gives the median round, and "× nginx" the median of the rounds' own ratios.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=15))]
    rounds: u32,
    /// Fixed request rates for the latency runs.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u32>,
    /// Skip the scale sweep.
    #[arg(long)]
    no_sweep: bool,
    /// Also write the report (Markdown) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Pin every server (upstream, nginx with one worker, the sidecar) to CPU 0 and the
    /// load generator to CPU 1 (`taskset`), the way a sidecar shares a core with its
    /// app; the report then gives the CPU time of core 0 per request.
    #[arg(long)]
    pin: bool,
}

fn main() -> ExitCode {
    match Command::parse() {
        Command::Upstream { listen } => match upstream::serve(listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("upstream: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Workload { policies, entities, dir } => match setup::write_workload(&dir, policies, entities) {
            Ok((p, e)) => {
                let files = setup::SidecarFiles {
                    listen: std::net::SocketAddr::from(([127, 0, 0, 1], 18181)),
                    admin: std::net::SocketAddr::from(([127, 0, 0, 1], 18182)),
                    policies: p.clone(),
                    entities: e.clone(),
                    jwks: dir.join("jwks.json"),
                    upstream: std::net::SocketAddr::from(([127, 0, 0, 1], 18190)),
                    ext_authz: None,
                    otlp: None,
                };
                let config = dir.join("config.toml");
                if let Err(err) = std::fs::write(&config, setup::sidecar_config(&files)) {
                    eprintln!("loadbench: {}: {err}", config.display());
                    return ExitCode::FAILURE;
                }
                println!("policies: {}\nentities: {}\nconfig: {}", p.display(), e.display(), config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadbench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Token { jwks } => match setup::key_and_token(&jwks) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadbench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Directory(args) => report(directory::run(&args), args.out()),
        Command::GrpcCheck(args) => report(grpc::run(&args), None),
        Command::Run(args) => report(scenario::run(&args), args.out.as_deref()),
    }
}

/// Print a run's report (and write it to `out` when given), or its error.
fn report(result: anyhow::Result<String>, out: Option<&std::path::Path>) -> ExitCode {
    match result {
        Ok(report) => {
            println!("{report}");
            if let Some(path) = out
                && let Err(e) = std::fs::write(path, &report)
            {
                eprintln!("loadbench: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
