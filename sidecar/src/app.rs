//! Building and running the sidecar from a validated [`Config`].
//!
//! [`App`] is the state every request reads: config, router, authenticator, the engine
//! (set once the first policy snapshot loads), one HTTP client per upstream, the
//! concurrency limit. [`run`] starts the background tasks (snapshot load and reload,
//! JWKS load and refresh) and both listeners, and returns when `shutdown` is cancelled
//! and they have drained.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use cedar_policy::Context;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::authn::Authenticator;
use crate::authn::dev::DevIssuer;
use crate::authz::Engine;
use crate::avp::mirror::Mirror;
use crate::config::PolicySource;
use crate::config::{Config, ContextSource, Handler};
use crate::http_client::{self, HttpClient};
use crate::policy_store::{PolicySnapshot, PolicyStore, ReloadOptions, spawn_file_reloader};
use crate::server::router::Router;
use crate::server::{self, ConnLimits};

/// Why the sidecar cannot start serving (each says what to fix).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Routes(#[from] crate::server::router::RouteConflict),
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsError),
    #[error(transparent)]
    DevIssuer(#[from] crate::authn::dev::DevIssuerError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] rustls::Error),
    #[error(
        "the presign handler calls AWS, and no AWS region is set: set `[aws] region` in the config (or AWS_REGION, \
         or a region in the AWS profile)"
    )]
    NoRegion,
}

/// How often issuer keys are re-fetched even when no token names an unknown key.
const JWKS_REFRESH: Duration = Duration::from_secs(600);

pub struct App {
    pub config: Config,
    pub router: Router,
    pub authn: Authenticator,
    engine: OnceLock<Engine>,
    /// Why the policy snapshot is not loaded yet, for `/readyz`.
    load_error: ArcSwapOption<String>,
    upstreams: HashMap<String, HttpClient>,
    /// Requests in flight; a request that finds none free is shed with 429.
    pub in_flight: Arc<Semaphore>,
    pub dev: Option<DevIssuer>,
    /// Set when a route uses the presign handler (see [`App::with_presigner`]).
    pub presigner: Option<crate::handlers::presign::Presigner>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("config", &self.config.origin).finish_non_exhaustive()
    }
}

impl App {
    /// Build the state (no I/O besides creating clients). `dev` adds the development issuer.
    pub fn new(mut config: Config, dev: bool) -> Result<Self, StartError> {
        let dev = if dev { Some(DevIssuer::generate()?) } else { None };
        if let Some(dev) = &dev {
            config.issuers.push(dev.issuer_config());
        }
        let router = Router::new(&config.routes)?;
        let jwks_client = http_client::client(Duration::from_secs(5))?;
        let authn = Authenticator::new(&config.issuers, &config.principal, &jwks_client);
        let mut upstreams = HashMap::new();
        for route in &config.routes {
            if let Handler::Forward(upstream) = &route.handler {
                let client = http_client::client(upstream.connect_timeout)?;
                upstreams.insert(route.name.clone(), client);
            }
        }
        let in_flight = Arc::new(Semaphore::new(config.server.max_concurrent_requests));
        Ok(Self {
            config,
            router,
            authn,
            engine: OnceLock::new(),
            load_error: ArcSwapOption::empty(),
            upstreams,
            in_flight,
            dev,
            presigner: None,
        })
    }

    /// Whether any route needs AWS (and so a [`Presigner`](crate::handlers::presign::Presigner)).
    pub fn needs_aws(&self) -> bool {
        needs_aws(&self.config)
    }

    #[must_use]
    pub fn with_presigner(mut self, presigner: crate::handlers::presign::Presigner) -> Self {
        self.presigner = Some(presigner);
        self
    }

    /// A presigner on the standard AWS credential chain, region and endpoint overrides;
    /// an error when no region is set anywhere (every call would fail).
    pub async fn aws_presigner(&self) -> Result<crate::handlers::presign::Presigner, StartError> {
        let base = crate::aws::load(&self.config.aws).await;
        require_region(&base)?;
        let sts = crate::aws::sts(&base, &self.config.aws);
        let regional_sts = crate::aws::regional_sts(&base, &self.config.aws);
        let endpoint = self.config.aws.sagemaker_endpoint.clone();
        let regional = self.config.aws.sagemaker_endpoints.clone();
        let sagemaker = crate::handlers::presign::SdkSageMakerClients { base, endpoint, regional };
        Ok(crate::handlers::presign::Presigner::new(sts, Arc::new(sagemaker)).with_regional_sts(regional_sts))
    }

    pub fn engine(&self) -> Option<&Engine> {
        self.engine.get()
    }

    pub fn upstream_client(&self, route: &str) -> Option<&HttpClient> {
        self.upstreams.get(route)
    }

    /// Why the sidecar is not ready, or empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.engine.get().is_none() {
            match self.load_error.load_full() {
                Some(error) => reasons.push(format!("no policy snapshot: {error}")),
                None => reasons.push("no policy snapshot yet".to_owned()),
            }
        }
        for issuer in self.authn.issuers() {
            if !issuer.has_keys() {
                reasons.push(format!("no keys yet for issuer `{}`", issuer.config.issuer));
            }
        }
        reasons
    }

    /// Load the first snapshot (retrying until it loads or `shutdown`), then keep it fresh.
    /// `initial` is a snapshot `serve` already built from the policy files for its
    /// start-up checks, served first instead of building the same files again.
    async fn load_policies(self: Arc<Self>, initial: Option<PolicySnapshot>, shutdown: CancellationToken) {
        if let PolicySource::VerifiedPermissions(avp) = self.config.policy_source.clone() {
            let base = crate::aws::load(&self.config.aws).await;
            let client = crate::avp::client(&base, self.config.aws.verifiedpermissions_endpoint.as_deref());
            let mirror = Mirror::new(client, &avp.policy_store_id, avp.max_calls_per_refresh);
            return self.load_from_store(mirror, avp.poll_interval, shutdown).await;
        }
        let dirs = self.config.sources.clone();
        let mut initial = initial;
        let max_delay = self.config.poll_interval.max(Duration::from_secs(1));
        let loaded = self
            .first_load("policy files", max_delay, &shutdown, || {
                let (dirs, initial) = (dirs.clone(), initial.take());
                async move {
                    if let Some(snapshot) = initial {
                        return Ok(snapshot);
                    }
                    tokio::task::spawn_blocking(move || PolicySnapshot::load(&dirs, 1))
                        .await
                        .map_err(|e| format!("the policy load task failed: {e}"))?
                        .map_err(|e| e.to_string())
                }
            })
            .await;
        let Some(snapshot) = loaded else { return };
        let store = PolicyStore::new(snapshot);
        let _ = self.engine.set(Engine::new(store.clone()));
        let options = ReloadOptions { poll_interval: self.config.poll_interval, ..ReloadOptions::default() };
        let _ = spawn_file_reloader(store, dirs, options, shutdown).await;
    }

    /// Mirror a Verified Permissions store: not ready until the first snapshot builds
    /// (retrying with backoff, the error shown in `/readyz`), then refreshed by polling.
    pub async fn load_from_store(self: Arc<Self>, mirror: Mirror, interval: Duration, shutdown: CancellationToken) {
        let entities = self.config.sources.entities.clone();
        let what = format!("policy store `{}`", mirror.policy_store_id());
        let shared = std::sync::Arc::new(tokio::sync::Mutex::new(mirror));
        let loaded = self
            .first_load(&what, interval, &shutdown, || {
                let (shared, entities) = (shared.clone(), entities.clone());
                async move {
                    let mut mirror = shared.lock().await;
                    crate::avp::refresh::load_first(&mut mirror, &entities).await.map_err(|e| e.to_string())
                }
            })
            .await;
        let Some(snapshot) = loaded else { return };
        let store = PolicyStore::new(snapshot);
        let _ = self.engine.set(Engine::new(store.clone()));
        let Ok(mirror) = Arc::try_unwrap(shared).map(tokio::sync::Mutex::into_inner) else {
            tracing::error!("the store mirror is still shared; not refreshing");
            return;
        };
        crate::avp::refresh::run(mirror, store, entities, interval, shutdown).await;
    }

    /// The one first-load loop of every policy source: `load` until a snapshot builds
    /// and fits the routes (a snapshot whose schema does not fit them is not served:
    /// every request would be denied), retrying with jittered exponential backoff (from
    /// half a second up to `max_delay`) until `shutdown`. Each failure is logged and shown
    /// in `/readyz`; `None` when shut down first.
    async fn first_load<F, Fut>(
        &self,
        what: &str,
        max_delay: Duration,
        shutdown: &CancellationToken,
        mut load: F,
    ) -> Option<PolicySnapshot>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<PolicySnapshot, String>>,
    {
        use backon::BackoffBuilder;
        let min_delay = Duration::from_millis(500).min(max_delay);
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(min_delay)
            .with_max_delay(max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let loaded = load().await.and_then(|snapshot| match check_routes(&self.config, &snapshot).as_slice() {
                [] => Ok(snapshot),
                problems => Err(format!("the policy schema does not fit the routes: {}", problems.join("; "))),
            });
            match loaded {
                Ok(snapshot) => {
                    tracing::info!(source = what, version = %snapshot.version(), policies = snapshot.policy_count(),
                        entities = snapshot.entity_count(), "policy snapshot loaded");
                    self.load_error.store(None);
                    return Some(snapshot);
                }
                Err(error) => {
                    tracing::error!(source = what, error = %error, "cannot serve a policy snapshot; not ready, retrying");
                    self.load_error.store(Some(Arc::new(error)));
                }
            }
            let delay = delays.next().unwrap_or(max_delay);
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Fetch every issuer's keys (retrying with backoff until each has some), then
    /// refresh them periodically.
    async fn load_keys(self: Arc<Self>, shutdown: CancellationToken) {
        let mut delay = Duration::from_millis(250);
        loop {
            let mut missing = false;
            for issuer in self.authn.issuers() {
                if !issuer.has_keys() && issuer.refresh().await.is_err() {
                    missing = true;
                }
            }
            let wait = if missing {
                delay = (delay * 2).min(Duration::from_secs(30));
                delay
            } else {
                JWKS_REFRESH
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if !missing {
                for issuer in self.authn.issuers() {
                    let _ = issuer.refresh().await;
                }
            }
        }
    }
}

/// Whether any route of `config` calls AWS (the presign handler).
pub fn needs_aws(config: &Config) -> bool {
    config.routes.iter().any(|r| matches!(r.handler, Handler::Presign(_)))
}

fn require_region(base: &aws_config::SdkConfig) -> Result<(), StartError> {
    base.region().map(|_| ()).ok_or(StartError::NoRegion)
}

/// What `--check-config` can tell of the AWS set-up without calling AWS: a region is
/// known (from the config, the environment, the profile or the instance).
pub async fn check_aws(config: &Config) -> Result<(), StartError> {
    if !needs_aws(config) {
        return Ok(());
    }
    require_region(&crate::aws::load(&config.aws).await)
}

/// Check every route against the snapshot's schema: the action exists, the principal and
/// resource types are ones it applies to, and the context the route sends (sample values
/// of each source's type) is the one the action declares. No entity id is invented, so
/// enumerated entity types check like any other.
pub fn check_routes(config: &Config, snapshot: &PolicySnapshot) -> Vec<String> {
    let schema = snapshot.schema();
    let mut problems = Vec::new();
    for route in &config.routes {
        let authz = &route.authz;
        let action = &authz.action;
        let (Some(principals), Some(resources)) =
            (schema.principals_for_action(action), schema.resources_for_action(action))
        else {
            problems.push(format!("route `{}`: action `{action}` is not in the policy schema", route.name));
            continue;
        };
        let principal = &config.principal.entity_type;
        let principals: Vec<_> = principals.collect();
        if !principals.contains(&principal) {
            problems.push(format!(
                "route `{}`: action `{action}` does not apply to principals of type `{principal}`",
                route.name
            ));
        }
        let resources: Vec<_> = resources.collect();
        if !resources.contains(&&authz.resource_type) {
            problems.push(format!(
                "route `{}`: action `{action}` does not apply to resources of type `{}`",
                route.name, authz.resource_type
            ));
        }
        let mut sample = serde_json::Map::new();
        for (name, source) in &authz.context {
            let value = match source {
                ContextSource::SourceIp => serde_json::json!({"__extn": {"fn": "ip", "arg": "10.0.0.1"}}),
                ContextSource::RequestTime => {
                    serde_json::json!({"__extn": {"fn": "datetime", "arg": "2026-01-01T00:00:00Z"}})
                }
                _ => serde_json::Value::String("sample".to_owned()),
            };
            sample.insert(name.clone(), value);
        }
        if let Err(error) = Context::from_json_value(serde_json::Value::Object(sample), Some((schema, action))) {
            problems.push(format!("route `{}`: {error}", route.name));
        }
    }
    problems
}

/// The bound listeners.
#[derive(Debug)]
pub struct Listeners {
    pub data: TcpListener,
    pub admin: TcpListener,
}

/// Run until `shutdown` is cancelled and both listeners have drained.
pub async fn run(app: Arc<App>, listeners: Listeners, shutdown: CancellationToken) -> Result<(), StartError> {
    run_with_snapshot(app, listeners, None, shutdown).await
}

/// As [`run`], serving `initial` first: a snapshot `serve` built from the policy files
/// for its start-up checks (a 10,000-entity snapshot takes a third of a second and tens
/// of MiB to build, so it is not built twice). Ignored for a Verified Permissions source.
pub async fn run_with_snapshot(
    app: Arc<App>,
    listeners: Listeners,
    initial: Option<PolicySnapshot>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let tls = match &app.config.server.tls {
        Some(files) => Some(server::tls::acceptor(files)?),
        None => None,
    };
    let metrics = crate::telemetry::metrics_handle();
    // Background tasks end with `tasks`, which is cancelled after the listeners drain.
    let tasks = CancellationToken::new();
    tokio::spawn(app.clone().load_policies(initial, tasks.clone()));
    tokio::spawn(crate::telemetry::upkeep(metrics.clone(), crate::telemetry::UPKEEP_INTERVAL, tasks.clone()));
    tokio::spawn(app.clone().load_keys(tasks.clone()));

    let soft = server::limits::nofile().map(|(soft, _)| soft);
    let max_connections = server::limits::max_connections(app.config.server.max_connections, soft);
    tracing::info!(max_connections, descriptor_limit = soft, "data-plane connection cap");
    let limits = ConnLimits::from_config(&app.config.server, max_connections);
    let admin_limits = limits.admin();
    let data_app = app.clone();
    let data = server::serve(listeners.data, tls, limits.clone(), shutdown.clone(), move |request, peer| {
        let app = data_app.clone();
        async move { server::pipeline::handle(&app, request, peer).await }
    });
    let admin_app = app.clone();
    let admin = server::serve(listeners.admin, None, admin_limits, shutdown.clone(), move |request, _peer| {
        let app = admin_app.clone();
        let metrics = metrics.clone();
        async move { crate::admin::handle(&app, &metrics, request) }
    });
    tokio::join!(data, admin);
    tasks.cancel();
    Ok(())
}
