//! The `authz-sidecar` binary: parse the command line, run, exit with its code.

fn main() -> std::process::ExitCode {
    authz_sidecar::cli::main()
}
