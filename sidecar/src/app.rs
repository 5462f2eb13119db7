//! The wiring: building the sidecar from a validated [`Config`] and running it.
//!
//! [`App`] holds the configuration and the request-time [`State`] (in `server::state`,
//! which knows nothing of this module). [`run`] starts the background tasks (the policy
//! lifecycle, issuer keys, metrics upkeep) and both listeners on top of that state, and
//! returns when `shutdown` is cancelled and they have drained. Nothing below imports
//! this module.

use std::sync::Arc;
use std::time::Duration;

use cedar_policy::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::authn::dev::DevIssuer;
use crate::avp::mirror::Mirror;
use crate::avp::refresh::StoreSource;
use crate::config::{Config, ContextSource, Handler, PolicySource};
use crate::lifecycle::Revocations;
use crate::policy_store::lifecycle::{self, Fits};
use crate::policy_store::{FileSource, PolicySnapshot, PolicyStore, ReloadOptions, SourceDirs};
use crate::server::state::{State, StateError};
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
    #[error(transparent)]
    Records(#[from] crate::records::RecordsError),
    #[error("cannot start the shadow policies' thread: {0}")]
    Shadow(std::io::Error),
    #[error("cannot start the data plane's threads: {0}")]
    Cores(std::io::Error),
    #[error("cannot accept the {listener} listener's connections on every data-plane thread: {source}")]
    Accept { listener: &'static str, source: std::io::Error },
}

impl From<StateError> for StartError {
    fn from(error: StateError) -> Self {
        match error {
            StateError::Routes(e) => Self::Routes(e),
            StateError::Client(e) => Self::Client(e),
            StateError::Records(e) => Self::Records(e),
            StateError::Shadow(e) => Self::Shadow(e),
        }
    }
}

/// How often issuer keys are re-fetched even when no token names an unknown key.
const JWKS_REFRESH: Duration = Duration::from_secs(600);
/// How often an unreachable directory is probed.
const DIRECTORY_PROBE: Duration = Duration::from_secs(5);

/// The configuration and the state built from it.
pub struct App {
    pub config: Config,
    state: State,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("config", &self.config.origin).finish_non_exhaustive()
    }
}

impl AsRef<State> for App {
    fn as_ref(&self) -> &State {
        &self.state
    }
}

impl App {
    /// Build the state (no I/O besides creating clients) around a store that serves
    /// nothing until [`run`] loads it. `dev` adds the development issuer.
    pub fn new(mut config: Config, dev: bool) -> Result<Self, StartError> {
        let dev = if dev { Some(DevIssuer::generate()?) } else { None };
        if let Some(dev) = &dev {
            config.issuers.push(dev.issuer_config());
        }
        let state = State::new(&config, PolicyStore::pending(), dev)?;
        Ok(Self { config, state })
    }

    /// Whether any route needs AWS (and so a [`Presigner`](crate::handlers::presign::Presigner)).
    pub fn needs_aws(&self) -> bool {
        needs_aws(&self.config)
    }

    #[must_use]
    pub fn with_presigner(mut self, presigner: crate::handlers::presign::Presigner) -> Self {
        self.state.presigner = Some(presigner);
        self
    }

    /// A presigner on the standard AWS credential chain, region and endpoint overrides;
    /// an error when no region is set anywhere (every call would fail).
    pub async fn aws_presigner(&self) -> Result<crate::handlers::presign::Presigner, StartError> {
        presigner(&self.config).await
    }

    /// Serve entities of the directory's types from `directory` (see `[directory]`).
    #[must_use]
    pub fn with_directory(mut self, directory: Arc<crate::directory::Directory>) -> Self {
        self.state.directory = Some(directory);
        self
    }

    /// The directory `[directory]` configures, read from DynamoDB on the standard AWS
    /// credential chain and region (at `[directory] endpoint` when set); `None` when no
    /// directory is configured.
    pub async fn aws_directory(&self) -> Result<Option<crate::directory::Directory>, StartError> {
        aws_directory(&self.config).await
    }

    /// Apply membership events with `lifecycle`, and deny on every request what
    /// `revocations` says the principal has lost (see `[lifecycle]`).
    #[must_use]
    pub fn with_lifecycle(mut self, lifecycle: crate::lifecycle::Lifecycle, revocations: Arc<Revocations>) -> Self {
        self.state.lifecycle = Some(Arc::new(lifecycle));
        self.state.revocations = Some(revocations);
        self
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The request-time state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The policy store requests read (empty until the first snapshot loads).
    pub fn store(&self) -> &PolicyStore {
        &self.state.store
    }

    /// Why the sidecar is not ready, or empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        self.state.not_ready_reasons()
    }

    /// The check every snapshot passes before it is served: it fits the routes. A
    /// snapshot that fits is also readied for them, so that no request pays for what
    /// every snapshot needs built once (the account pool's index, when a route answers
    /// DataZone). The lifecycle runs it on a blocking thread.
    pub fn fits(&self) -> Fits {
        let config = self.config.clone();
        let pool = config
            .routes
            .iter()
            .any(|route| matches!(route.handler, Handler::AccountPool))
            .then(|| self.state.account_pool.clone());
        Arc::new(move |snapshot| {
            let problems = check_routes(&config, snapshot);
            if problems.is_empty()
                && let Some(pool) = &pool
            {
                pool.warm(snapshot);
            }
            problems
        })
    }

    /// Keep the store loaded from the configured policy source until `shutdown`.
    /// `initial` is a snapshot `serve` already built from the policy files for its
    /// start-up checks, served first instead of building the same files again.
    async fn load_policies(self: Arc<Self>, initial: Option<PolicySnapshot>, shutdown: CancellationToken) {
        let store = self.state.store.clone();
        match self.config.policy_source.clone() {
            PolicySource::VerifiedPermissions(avp) => {
                let base = crate::aws::load(&self.config.aws).await;
                let client = crate::avp::client(&base, self.config.aws.verifiedpermissions_endpoint.as_deref());
                let mirror = Mirror::new(client, &avp.policy_store_id, avp.max_calls_per_refresh);
                let source = StoreSource::new(mirror, self.config.sources.entities.clone(), avp.poll_interval);
                lifecycle::run(source, store, self.fits(), shutdown).await;
            }
            PolicySource::Files => {
                let options = ReloadOptions { poll_interval: self.config.poll_interval, ..ReloadOptions::default() };
                let source = FileSource::new(self.config.sources.clone(), options).with_initial(initial);
                lifecycle::run(source, store, self.fits(), shutdown).await;
            }
        }
    }

    /// Keep the shadow policies (`[policies.shadow]`) loaded until `shutdown`: the same
    /// lifecycle as the serving set's, over the same entities, into the shadow's own
    /// store. Checked against the routes, never readied for them (nothing is served
    /// from it).
    async fn load_shadow(self: Arc<Self>, shutdown: CancellationToken) {
        let (Some(config), Some(shadow)) = (&self.config.shadow, self.state.engine.shadow()) else { return };
        let store = shadow.store().clone();
        let routes = self.config.clone();
        let fits: Fits = Arc::new(move |snapshot| check_routes(&routes, snapshot));
        match &config.source {
            PolicySource::VerifiedPermissions(avp) => {
                let base = crate::aws::load(&self.config.aws).await;
                let client = crate::avp::client(&base, self.config.aws.verifiedpermissions_endpoint.as_deref());
                let mirror = Mirror::new(client, &avp.policy_store_id, avp.max_calls_per_refresh);
                let source = StoreSource::new(mirror, self.config.sources.entities.clone(), avp.poll_interval);
                lifecycle::run(source, store, fits, shutdown).await;
            }
            PolicySource::Files => {
                let dirs = SourceDirs::new(&config.dir, &self.config.sources.entities);
                let options = ReloadOptions { poll_interval: self.config.poll_interval, ..ReloadOptions::default() };
                lifecycle::run(FileSource::new(dirs, options), store, fits, shutdown).await;
            }
        }
    }

    /// Learn whether the directory can be read at start, and again every few seconds
    /// while it cannot (requests stop coming when `/readyz` says it is unreachable, so
    /// they cannot be what notices it is back).
    async fn watch_directory(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(directory) = self.state.directory.clone() else { return };
        loop {
            if !directory.probe().await {
                tracing::warn!(error = ?directory.unreachable().map(|e| e.to_string()), "directory unreachable");
            }
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(DIRECTORY_PROBE) => {}
                }
                if directory.unreachable().is_some() {
                    break;
                }
            }
        }
    }

    /// Synchronise memberships with the identity store once the first snapshot is
    /// served, then every `[lifecycle] sync_every` (with `identity_store_id` only).
    async fn sync_memberships(self: Arc<Self>, shutdown: CancellationToken) {
        let (Some(lifecycle), Some(config)) = (self.state.lifecycle.clone(), self.config.lifecycle.clone()) else {
            return;
        };
        if config.identity_store_id.is_none() {
            return;
        }
        let snapshot = loop {
            if let Some(snapshot) = self.state.store.current() {
                break snapshot;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        };
        let mut snapshot = snapshot;
        loop {
            if let Err(error) = lifecycle.sync(&snapshot, "sync").await {
                tracing::warn!(target: "authz_sidecar::lifecycle", %error, "memberships not synchronised");
            }
            if config.sync_every.is_zero() {
                return;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(config.sync_every) => {}
            }
            snapshot = self.state.store.current().unwrap_or(snapshot);
        }
    }

    /// Fetch every issuer's keys (retrying with backoff until each has some), then
    /// refresh them periodically.
    async fn load_keys(self: Arc<Self>, shutdown: CancellationToken) {
        let mut delay = Duration::from_millis(250);
        loop {
            let missing = !self.state.load_missing_keys().await;
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
                for issuer in self.state.authn.issuers() {
                    let _ = issuer.refresh().await;
                }
            }
        }
    }
}

/// A presigner on the standard AWS credential chain, region and `[aws]` endpoint
/// overrides of `config`.
async fn presigner(config: &Config) -> Result<crate::handlers::presign::Presigner, StartError> {
    let base = crate::aws::load(&config.aws).await;
    require_region(&base)?;
    let sts = crate::aws::sts(&base, &config.aws);
    let regional_sts = crate::aws::regional_sts(&base, &config.aws);
    let endpoint = config.aws.sagemaker_endpoint.clone();
    let regional = config.aws.sagemaker_endpoints.clone();
    let sagemaker = crate::handlers::presign::SdkSageMakerClients { base, endpoint, regional };
    Ok(crate::handlers::presign::Presigner::new(sts, Arc::new(sagemaker)).with_regional_sts(regional_sts))
}

/// The directory `[directory]` of `config` configures, read from DynamoDB on the
/// standard AWS credential chain and region; `None` when none is configured.
pub async fn aws_directory(config: &Config) -> Result<Option<crate::directory::Directory>, StartError> {
    let Some(directory) = &config.directory else { return Ok(None) };
    let base = crate::aws::load(&config.aws).await;
    require_region(&base)?;
    let client = crate::directory::dynamo::client(&base, directory.endpoint.as_deref());
    let reader = crate::directory::dynamo::DynamoReader::new(client);
    Ok(Some(crate::directory::Directory::over(reader, directory.tables.clone(), directory.policy)))
}

/// The membership-event handler and the data plane's revocations `[lifecycle]` of
/// `config` configures: the identity store on the standard AWS set-up, revocations in
/// the `[lifecycle] table` (else this process's memory); `None` when not configured.
///
/// With `[lifecycle] profile_route`, profiles follow membership through a presigner
/// of its own (the presign route's AWS set-up) and `directory` (else one of its own,
/// when `[directory]` is configured).
pub async fn aws_lifecycle(
    config: &Config,
    directory: Option<Arc<crate::directory::Directory>>,
) -> Result<Option<(crate::lifecycle::Lifecycle, Arc<Revocations>)>, StartError> {
    use crate::lifecycle::cleanup::CleanupOptions;
    use crate::lifecycle::{IdentityStore, Lifecycle, Profiles, Store, identity};
    let Some(lifecycle) = &config.lifecycle else { return Ok(None) };
    let base = crate::aws::load(&config.aws).await;
    require_region(&base)?;
    let store = match &lifecycle.table {
        Some(table) => Store::Table {
            client: crate::directory::dynamo::client(&base, lifecycle.endpoint.as_deref()),
            table: table.clone(),
        },
        None => Store::memory(),
    };
    let store = Arc::new(store);
    let revocations = Arc::new(Revocations::new(store.clone(), lifecycle));
    let identity = IdentityStore::new(identity::client(&base, lifecycle.identitystore_endpoint.as_deref()), lifecycle);
    let mut handler = Lifecycle::new(store, identity, revocations.clone(), lifecycle.token_lifetime)
        .only_store(lifecycle.identity_store_id.clone(), lifecycle.teams.clone());
    if let Some(steps) = &lifecycle.profiles {
        let route = config.routes.iter().find(|r| r.name == steps.route);
        if let Some((route, Handler::Presign(options), Some(derive))) =
            route.map(|r| (r, &r.handler, r.derive_profile.as_ref()))
        {
            let directory = match directory {
                Some(directory) => Some(directory),
                None => aws_directory(config).await?.map(Arc::new),
            };
            let provisioning = steps.provision.then(|| {
                options.provision.clone().unwrap_or(crate::config::Provisioning {
                    max_wait: Duration::from_secs(120),
                    poll_interval: Duration::from_secs(3),
                })
            });
            let cleanup = steps.cleanup_wait.map(|wait| CleanupOptions { wait, ..CleanupOptions::default() });
            let profiles = Profiles::new(
                route.clone(),
                derive.clone(),
                options.clone(),
                config.principal.clone(),
                Arc::new(presigner(config).await?),
                directory,
                provisioning,
                cleanup,
            );
            handler = handler.with_profiles(profiles);
        }
    }
    Ok(Some((handler, revocations)))
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
    if !needs_aws(config) && config.directory.is_none() && config.lifecycle.is_none() {
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
        if route.derive_profile.is_some()
            && let Err(error) = crate::handlers::profiles::check_shape(schema, principal)
        {
            problems.push(format!("route `{}`: derive_profile: {error}", route.name));
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
    problems.extend(check_directory(config, schema));
    problems.extend(check_lifecycle(config, schema));
    problems
}

/// With `[lifecycle] profile_route` and provisioning, the schema must let
/// `ProvisionUserProfile` be asked of the principal type and the route's profiles (else
/// every join would be refused, silently).
fn check_lifecycle(config: &Config, schema: &cedar_policy::Schema) -> Vec<String> {
    let Some(steps) = config.lifecycle.as_ref().and_then(|l| l.profiles.as_ref()) else { return Vec::new() };
    let Some(route) = config.routes.iter().find(|r| r.name == steps.route) else { return Vec::new() };
    if !steps.provision {
        return Vec::new();
    }
    let Ok(action) = crate::lifecycle::profiles::PROVISION_ACTION.parse::<cedar_policy::EntityUid>() else {
        return Vec::new();
    };
    let applies =
        schema.principals_for_action(&action).is_some_and(|mut p| p.any(|t| *t == config.principal.entity_type))
            && schema.resources_for_action(&action).is_some_and(|mut r| r.any(|t| *t == route.authz.resource_type));
    if applies {
        Vec::new()
    } else {
        vec![format!(
            "[lifecycle] provision: action `{action}` is not in the policy schema for `{}` and `{}` (add it, or set \
             `provision = false`)",
            config.principal.entity_type, route.authz.resource_type
        )]
    }
}

/// Every table's entity type, parent types and reference types are the schema's.
fn check_directory(config: &Config, schema: &cedar_policy::Schema) -> Vec<String> {
    let Some(directory) = &config.directory else { return Vec::new() };
    let known: std::collections::HashSet<&cedar_policy::EntityTypeName> = schema.entity_types().collect();
    let mut problems = Vec::new();
    for table in &directory.tables {
        let named = std::iter::once(&table.entity_type).chain(table.parents.iter().map(|p| &p.entity_type)).chain(
            table.attributes.iter().filter_map(|a| match &a.kind {
                crate::directory::ValueKind::Entity(t) => Some(t),
                crate::directory::ValueKind::Plain => None,
            }),
        );
        for entity_type in named {
            if !known.contains(entity_type) {
                problems.push(format!(
                    "directory table `{}`: `{entity_type}` is not an entity type of the policy schema",
                    table.table
                ));
            }
        }
    }
    problems
}

/// The bound listeners.
#[derive(Debug)]
pub struct Listeners {
    pub data: TcpListener,
    pub admin: TcpListener,
    /// Envoy's external authorization checks, HTTP form (`ext_authz.http_listen`), when
    /// configured.
    pub ext_authz: Option<TcpListener>,
    /// And gRPC form (`ext_authz.grpc_listen`).
    pub ext_authz_grpc: Option<TcpListener>,
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
    let cores = server::cores::Cores::start(app.config.server.threads).map_err(StartError::Cores)?;
    run_on(app, listeners, initial, Arc::new(cores), shutdown).await
}

/// As [`run_with_snapshot`], with the data plane and Envoy's checks on `cores` (see
/// [`server::cores`]), which are stopped at the end; the admin listener and the
/// background tasks on the calling runtime.
pub async fn run_on(
    app: Arc<App>,
    listeners: Listeners,
    initial: Option<PolicySnapshot>,
    cores: Arc<server::cores::Cores>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let tls = match &app.config.server.tls {
        Some(files) => Some(Arc::new(server::tls::ReloadingTls::load(files)?)),
        None => None,
    };
    // each listener the cores serve, shared with every core before anything starts
    let on_cores = |listener: TcpListener, name: &'static str| {
        let cores = cores.clone();
        async move {
            server::Accepting::on_cores(listener, &cores)
                .await
                .map_err(|source| StartError::Accept { listener: name, source })
        }
    };
    let accepting = async {
        let data = on_cores(listeners.data, "data").await?;
        let ext_authz = match listeners.ext_authz {
            Some(listener) => Some(on_cores(listener, "ext_authz").await?),
            None => None,
        };
        let ext_authz_grpc = match listeners.ext_authz_grpc {
            Some(listener) => Some(on_cores(listener, "ext_authz_grpc").await?),
            None => None,
        };
        Ok::<_, StartError>((data, ext_authz, ext_authz_grpc))
    };
    let (data_accepting, ext_authz_accepting, ext_authz_grpc_accepting) = match accepting.await {
        Ok(accepting) => accepting,
        Err(error) => {
            cores.stop().await;
            return Err(error);
        }
    };
    // the cap from what the descriptor limit leaves now that the threads hold theirs
    let soft = server::limits::nofile().map(|(soft, _)| soft);
    let open = server::limits::open_descriptors();
    let max_connections =
        server::limits::max_connections(app.config.server.max_connections, server::limits::headroom(soft, open));
    tracing::info!(max_connections, descriptor_limit = soft, open_descriptors = open, "data-plane connection cap");
    let limits = ConnLimits::from_config(&app.config.server, max_connections);
    let admin_limits = limits.admin();
    let metrics = crate::telemetry::metrics_handle();
    // Background tasks end with `tasks`, which is cancelled after the listeners drain.
    let tasks = CancellationToken::new();
    tokio::spawn(app.clone().load_policies(initial, tasks.clone()));
    tokio::spawn(app.clone().load_shadow(tasks.clone()));
    tokio::spawn(crate::telemetry::upkeep(metrics.clone(), crate::telemetry::UPKEEP_INTERVAL, tasks.clone()));
    tokio::spawn(app.clone().load_keys(tasks.clone()));
    tokio::spawn(app.clone().watch_directory(tasks.clone()));
    tokio::spawn(app.clone().sync_memberships(tasks.clone()));
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(tasks.clone()));
    }
    for index in 0..cores.len() {
        cores.spawn(index, app.state.overload.clone().probe(index, tasks.clone()));
    }
    let data_app = app.clone();
    let data = server::serve(data_accepting, tls, limits.clone(), shutdown.clone(), move |request, inbound| {
        let app = data_app.clone();
        async move { server::pipeline::handle_on(&app.state, request, inbound).await }
    });
    let admin_app = app.clone();
    let admin_accepting = server::Accepting::Here(listeners.admin);
    let admin = server::serve(admin_accepting, None, admin_limits, shutdown.clone(), move |request, _inbound| {
        let app = admin_app.clone();
        let metrics = metrics.clone();
        async move { server::admin::handle(&app.state, &metrics, request) }
    });
    let ext_authz_config = app.config.ext_authz.clone().map(Arc::new);
    let ext_authz = async {
        let (Some(accepting), Some(config)) = (ext_authz_accepting, ext_authz_config.clone()) else { return };
        let check_app = app.clone();
        let limits = ConnLimits { listener: "ext_authz", ..limits.clone() };
        server::serve(accepting, None, limits, shutdown.clone(), move |request, inbound| {
            let (app, config) = (check_app.clone(), config.clone());
            async move { server::ext_authz::check(&app.state, &config, request, inbound).await }
        })
        .await;
    };
    let ext_authz_grpc = async {
        let (Some(accepting), Some(config)) = (ext_authz_grpc_accepting, ext_authz_config.clone()) else { return };
        let max_message = server::ext_authz::grpc::max_message_bytes(app.config.server.max_header_bytes);
        let service = server::ext_authz::grpc::service(app.clone(), max_message);
        let limits = ConnLimits { listener: "ext_authz_grpc", ..limits.clone() };
        server::serve(accepting, None, limits, shutdown.clone(), move |request, inbound| {
            let (service, config) = (service.clone(), config.clone());
            async move { server::ext_authz::grpc::serve(&service, &config, request, inbound).await }
        })
        .await;
    };
    tokio::join!(data, admin, ext_authz, ext_authz_grpc);
    tasks.cancel();
    cores.stop().await;
    Ok(())
}
