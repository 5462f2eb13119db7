//! What every request reads, and nothing else: the slices of the configuration the
//! phases need, the router, the authenticator, the policy store and engine, the
//! handlers' clients and the concurrency limit. Built once by the wiring (`app.rs`, which
//! starts the listeners and tasks on top of it); the data plane ([`super::pipeline`])
//! and the admin listener ([`super::admin`]) read it. Nothing here knows who serves it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::router::{RouteConflict, Router};
use crate::authn::Authenticator;
use crate::authn::dev::DevIssuer;
use crate::authz::{Engine, Observers};
use crate::config::{Config, ContextConfig, Handler, PrincipalConfig, ServerConfig};
use crate::directory::Directory;
use crate::handlers::account_pool::AccountPool;
use crate::handlers::presign::Presigner;
use crate::http_client::{self, HttpClient};
use crate::lifecycle::{Lifecycle, Revocations};
use crate::policy_store::PolicyStore;
use crate::proxy::owned::UpstreamPool;

/// Why the request-time state cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Routes(#[from] RouteConflict),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] rustls::Error),
    #[error(transparent)]
    Records(#[from] crate::records::RecordsError),
    #[error("cannot start the shadow policies' thread: {0}")]
    Shadow(std::io::Error),
}

/// Where a forwarding route's calls go out.
pub(crate) enum RouteUpstream {
    /// A plain-HTTP upstream's connections, driven by the requests themselves.
    Driven(Arc<UpstreamPool>),
    /// An `https://` upstream (TLS, perhaps HTTP/2): hyper-util's pooled client.
    Pooled(Box<HttpClient>),
}

/// The request-time state.
pub struct State {
    pub(crate) server: ServerConfig,
    pub(crate) context: ContextConfig,
    pub(crate) principal: PrincipalConfig,
    pub(crate) router: Router,
    pub(crate) authn: Authenticator,
    /// Serves nothing until the policy lifecycle publishes the first snapshot.
    pub(crate) store: PolicyStore,
    pub(crate) engine: Engine,
    pub(crate) account_pool: AccountPool,
    /// The upstream of each forwarding route.
    upstreams: HashMap<String, RouteUpstream>,
    /// Requests in flight; a request that finds none free is shed with 429.
    pub(crate) in_flight: Arc<Semaphore>,
    /// Whether the runtime is overloaded (see [`super::overload`]).
    pub(crate) overload: Arc<super::overload::Overload>,
    pub(crate) dev: Option<DevIssuer>,
    /// Set when a route uses the presign handler.
    pub(crate) presigner: Option<Presigner>,
    /// Set when `[directory]` names tables.
    pub(crate) directory: Option<Arc<Directory>>,
    /// Set with `[lifecycle]`: the teams principals have left, read on each request.
    pub(crate) revocations: Option<Arc<Revocations>>,
    /// Set with `[lifecycle]`: what a `membership_events` route applies events with.
    pub(crate) lifecycle: Option<Arc<Lifecycle>>,
    /// The routes that derive Studio profiles: an access query lists what they would derive.
    pub(crate) deriving: Arc<[Arc<crate::config::RouteConfig>]>,
    /// Access queries deciding now; one that finds none free is shed with 429.
    pub(crate) access_slots: Arc<Semaphore>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("routes", &self.upstreams.len()).finish_non_exhaustive()
    }
}

impl State {
    /// Build the state for `config` (no I/O besides creating clients and opening the
    /// decision-record file), serving `store`.
    pub fn new(config: &Config, store: PolicyStore, dev: Option<DevIssuer>) -> Result<Self, StateError> {
        let router = Router::new(&config.routes)?;
        let jwks_client = http_client::client(Duration::from_secs(5))?;
        let authn = Authenticator::new(&config.issuers, &config.principal, &jwks_client);
        let mut upstreams = HashMap::new();
        // routes to one upstream share its idle connections: no more are kept than
        // requests can be in flight together
        let mut pools: HashMap<String, Arc<UpstreamPool>> = HashMap::new();
        for route in &config.routes {
            if let Handler::Forward(upstream) = &route.handler {
                let way = match UpstreamPool::for_uri(&upstream.base, config.server.max_concurrent_requests) {
                    Some(pool) => RouteUpstream::Driven(
                        pools.entry(pool.address().to_owned()).or_insert_with(|| Arc::new(pool)).clone(),
                    ),
                    None => RouteUpstream::Pooled(Box::new(http_client::client(upstream.connect_timeout)?)),
                };
                upstreams.insert(route.name.clone(), way);
            }
        }
        // every decision site asks this engine, so it is where decisions are observed
        let engine = Engine::observed(Observers {
            recorder: config.records.as_ref().map(crate::records::Recorder::start).transpose()?,
            shadow: config.shadow.as_ref().map(crate::shadow::Shadow::start).transpose().map_err(StateError::Shadow)?,
        });
        Ok(Self {
            server: config.server.clone(),
            context: config.context.clone(),
            principal: config.principal.clone(),
            router,
            authn,
            store,
            account_pool: AccountPool::new(engine.clone()),
            engine,
            upstreams,
            in_flight: Arc::new(Semaphore::new(config.server.max_concurrent_requests)),
            overload: super::overload::Overload::new(config.server.shed_delay, config.server.threads),
            dev,
            presigner: None,
            directory: None,
            revocations: None,
            lifecycle: None,
            deriving: config.routes.iter().filter(|r| r.derive_profile.is_some()).cloned().map(Arc::new).collect(),
            access_slots: Arc::new(Semaphore::new(config.server.max_concurrent_access_queries)),
        })
    }

    pub(crate) fn upstream(&self, route: &str) -> Option<&RouteUpstream> {
        self.upstreams.get(route)
    }

    pub fn store(&self) -> &PolicyStore {
        &self.store
    }

    /// The DataZone account-pool handler (its index is warmed for each snapshot served).
    pub fn account_pool(&self) -> &AccountPool {
        &self.account_pool
    }

    /// Fetch the keys of every issuer that has none yet, once. Whether every issuer now
    /// has keys.
    pub async fn load_missing_keys(&self) -> bool {
        let mut all = true;
        for issuer in self.authn.issuers() {
            if !issuer.has_keys() && issuer.refresh().await.is_err() {
                all = false;
            }
        }
        all
    }

    /// Why the sidecar is not ready, or empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons: Vec<String> = self.store.not_serving().into_iter().collect();
        for issuer in self.authn.issuers() {
            if !issuer.has_keys() {
                let why = issuer.last_error().map(|e| format!(" (last attempt: {e})")).unwrap_or_default();
                reasons.push(format!("no keys yet for issuer `{}`{why}", issuer.config.issuer));
            }
        }
        if let Some(error) = self.directory.as_ref().and_then(|d| d.unreachable()) {
            reasons.push(format!("the directory is unreachable: {error}"));
        }
        reasons
    }
}
