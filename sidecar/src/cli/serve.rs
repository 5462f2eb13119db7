//! `authz-sidecar serve`: check the configuration, bind, serve until SIGTERM/SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{CONFIG_VARIABLE, exit};
use crate::app::{self, App, Listeners, StartError};
use crate::config::{Config, ConfigError, KeySource};
use crate::policy_store::{LoadError, PolicySnapshot};
use crate::server::router::RouteConflict;
use crate::server::tls::TlsError;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Configuration file (TOML). Without it, the embedded example configuration
    /// (loopback addresses, the `policies/` and `entities/` of the working directory).
    #[arg(long, value_name = "FILE", env = CONFIG_VARIABLE)]
    config: Option<PathBuf>,
    /// Data-plane address, overriding `server.listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Admin address (/livez, /readyz, /metrics), overriding `server.admin_listen`.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Policies directory, overriding `policies.dir`.
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Entities directory, overriding `policies.entities`.
    #[arg(long, value_name = "DIR")]
    entities: Option<PathBuf>,
    /// Add a development token issuer, for trying the sidecar out: its tokens come from
    /// GET http://<admin address>/dev/token?user=NAME&groups=A,B. Loopback addresses only.
    #[arg(long)]
    dev: bool,
    /// Check the whole configuration (routes, issuers, TLS files, policies and entities,
    /// routes against the policy schema) and exit without serving.
    #[arg(long)]
    check_config: bool,
}

/// Why `serve` stopped before serving, or could not go on.
#[derive(Debug, thiserror::Error)]
pub(super) enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--dev mints tokens for anyone who asks: it only runs on loopback addresses")]
    DevNotLoopback,
    #[error(transparent)]
    Routes(#[from] RouteConflict),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("issuer `{issuer}`: `{}`: {reason}", path.display())]
    Keys { issuer: String, path: PathBuf, reason: String },
    #[error("policies: {0}")]
    Policies(#[from] LoadError),
    #[error("{}", .0.join("\n  "))]
    Misfit(Vec<String>),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { addr: SocketAddr, what: &'static str, source: std::io::Error },
    #[error("the listener has no address: {0}")]
    Address(std::io::Error),
    #[error(transparent)]
    Start(#[from] StartError),
}

pub(super) fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let (config, snapshot) = match prepare(args) {
        Ok(prepared) => prepared,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            return exit::FAILURE;
        }
    };
    // the control plane's (the admin listener, reloads, refreshes): the data plane runs
    // on threads of its own (`server::cores`), blocking work on the blocking pool
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    if args.check_config {
        if let Err(message) = runtime.block_on(app::check_aws(&config)).map_err(|e| e.to_string()) {
            let _ = writeln!(err, "error: {message}");
            return exit::FAILURE;
        }
        // a candidate that does not load never stops serving, but a check before a
        // deployment says so (a store's candidate is checked when it loads)
        if let Some(shadow) = config.shadow.as_ref().filter(|s| s.source == crate::config::PolicySource::Files) {
            let dirs = crate::policy_store::SourceDirs::new(&shadow.dir, &config.sources.entities);
            let problems = match PolicySnapshot::load(&dirs, 1) {
                Ok(candidate) => app::check_routes(&config, &candidate),
                Err(e) => e.problems.iter().map(ToString::to_string).collect(),
            };
            if !problems.is_empty() {
                let _ = writeln!(err, "error: the shadow policies in `{}` cannot be used:", shadow.dir.display());
                for problem in problems {
                    let _ = writeln!(err, "  {problem}");
                }
                return exit::FAILURE;
            }
        }
        let _ = writeln!(
            out,
            "configuration ok: {} ({} routes, {} issuers, policies `{}`, entities `{}`)",
            config.origin,
            config.routes.len(),
            config.issuers.len(),
            config.sources.policies.display(),
            config.sources.entities.display(),
        );
        return exit::OK;
    }
    match runtime.block_on(serve(config, snapshot, args.dev)) {
        Ok(()) => exit::OK,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            exit::FAILURE
        }
    }
}

/// The `[tracing]` of the configuration `serve` will load, if it has one and loads.
pub(super) fn traces(args: &Args) -> Option<crate::config::TracingConfig> {
    Config::load(args.config.as_deref()).ok().and_then(|config| config.tracing)
}

/// Load, override and check everything that can be checked without serving. The policy
/// snapshot built for the checks is served first.
fn prepare(args: &Args) -> Result<(Config, Option<PolicySnapshot>), ServeError> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(admin) = args.admin_listen {
        config.server.admin_listen = admin;
    }
    if let Some(dir) = &args.policies {
        config.sources.policies.clone_from(dir);
    }
    if let Some(dir) = &args.entities {
        config.sources.entities.clone_from(dir);
    }
    if args.dev && !(config.server.listen.ip().is_loopback() && config.server.admin_listen.ip().is_loopback()) {
        return Err(ServeError::DevNotLoopback);
    }
    crate::server::router::Router::new(&config.routes)?;
    if let Some(tls) = &config.server.tls {
        crate::server::tls::ReloadingTls::load(tls)?;
    }
    for issuer in &config.issuers {
        if let KeySource::File(path) = &issuer.keys {
            let keys_error =
                |reason: String| ServeError::Keys { issuer: issuer.issuer.clone(), path: path.clone(), reason };
            let bytes = std::fs::read(path).map_err(|e| keys_error(e.to_string()))?;
            crate::authn::KeySet::parse(&bytes).map_err(|e| keys_error(e.to_string()))?;
        }
    }
    // Policies from a Verified Permissions store are checked when the store loads (the
    // sidecar is not ready until they fit the routes): no local policy files are needed.
    if matches!(config.policy_source, crate::config::PolicySource::VerifiedPermissions(_)) {
        return Ok((config, None));
    }
    let snapshot = PolicySnapshot::load(&config.sources, 1)?;
    let problems = app::check_routes(&config, &snapshot);
    if !problems.is_empty() {
        return Err(ServeError::Misfit(problems));
    }
    Ok((config, Some(snapshot)))
}

async fn serve(config: Config, snapshot: Option<PolicySnapshot>, dev: bool) -> Result<(), ServeError> {
    // before anything opens a descriptor: the connection cap is fitted to this limit
    crate::server::limits::raise_nofile();
    let bind = |addr: SocketAddr, what: &'static str| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, what, source })
    };
    let listeners = Listeners {
        data: bind(config.server.listen, "data plane").await?,
        admin: bind(config.server.admin_listen, "admin").await?,
        ext_authz: match config.ext_authz.as_ref().and_then(|e| e.http_listen) {
            Some(addr) => Some(bind(addr, "external authorization (HTTP)").await?),
            None => None,
        },
        ext_authz_grpc: match config.ext_authz.as_ref().and_then(|e| e.grpc_listen) {
            Some(addr) => Some(bind(addr, "external authorization (gRPC)").await?),
            None => None,
        },
    };
    let mut app = App::new(config, dev)?;
    if app.needs_aws() {
        let presigner = app.aws_presigner().await?;
        app = app.with_presigner(presigner);
    }
    let directory = app.aws_directory().await?.map(Arc::new);
    if let Some((lifecycle, revocations)) = crate::app::aws_lifecycle(app.config(), directory.clone()).await? {
        // an API destination waits five seconds: profile steps run after the answer
        app = app.with_lifecycle(lifecycle.detach_profile_steps(), revocations);
    }
    if let Some(directory) = directory {
        app = app.with_directory(directory);
    }
    let app = Arc::new(app);
    let data = listeners.data.local_addr().map_err(ServeError::Address)?;
    let admin = listeners.admin.local_addr().map_err(ServeError::Address)?;
    if dev {
        tracing::warn!(
            "DEVELOPMENT ISSUER ENABLED: anyone on this machine can mint tokens at http://{admin}/dev/token; never use --dev in production"
        );
    }
    let address = |listener: &Option<tokio::net::TcpListener>| {
        listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string())
    };
    let (ext_authz, ext_authz_grpc) = (address(&listeners.ext_authz), address(&listeners.ext_authz_grpc));
    tracing::info!(%data, %admin, ext_authz, ext_authz_grpc, config = %app.config.origin, routes = app.config.routes.len(), "authz-sidecar listening");

    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(shutdown.clone()));
    app::run_with_snapshot(app, listeners, snapshot, shutdown).await?;
    tracing::info!("authz-sidecar stopped");
    Ok(())
}

/// Cancel `shutdown` on SIGTERM or SIGINT.
async fn shutdown_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: draining"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the sidecar");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
