//! The decision engine: the one call the data plane, the account-pool handler and the
//! CLI make to ask Cedar a question.
//!
//! `decide` takes the snapshot serving now, checks the request against its schema,
//! gathers the entities (the snapshot's own, or a cached slice of them plus the
//! caller's entities) and evaluates. It fails closed: a request that does not fit the
//! schema is an error the caller must treat as a deny, and a policy that errors during
//! evaluation turns the decision into a deny even when another policy permits.

use std::fmt;
use std::time::{Duration, Instant};

use cedar_policy::{
    Authorizer, Context, Entity, EntityUid, PolicyId, Request, Response, entities_errors::EntitiesError,
};
use serde::Serialize;

use crate::policy_store::{PolicySnapshot, PolicyStore, RequestPrincipal};

/// Allow or deny, the only two answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        })
    }
}

/// Why the decision came out as it did; a metrics label and a log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionReason {
    /// At least one permit matched and no forbid did.
    Permitted,
    /// A forbid matched.
    Forbidden,
    /// No permit matched (Cedar's default deny).
    NoPermit,
    /// A policy failed to evaluate, so the request is denied whatever else matched.
    EvaluationError,
}

impl DecisionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permitted => "permitted",
            Self::Forbidden => "forbidden",
            Self::NoPermit => "no_permit",
            Self::EvaluationError => "evaluation_error",
        }
    }
}

/// A policy that failed while being evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvaluationError {
    pub policy: String,
    pub message: String,
}

/// The answer to one request.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub effect: Effect,
    pub reason: DecisionReason,
    /// The policies that decided: the matching permits on allow, the matching forbids
    /// on a forbidden deny, none on a default deny. Sorted.
    pub policies: Vec<String>,
    pub errors: Vec<EvaluationError>,
    /// The snapshot that decided (its short digest).
    pub snapshot: String,
    #[serde(rename = "elapsed_us", serialize_with = "micros")]
    pub elapsed: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.effect == Effect::Allow
    }

    fn from_response(response: &Response, snapshot: &PolicySnapshot, started: Instant) -> Self {
        let mut policies: Vec<String> = response.diagnostics().reason().map(PolicyId::to_string).collect();
        policies.sort();
        let errors: Vec<EvaluationError> = response
            .diagnostics()
            .errors()
            .map(|e| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
                EvaluationError { policy: e.policy_id().to_string(), message: e.inner().to_string() }
            })
            .collect();
        let (effect, reason) = match (response.decision(), errors.is_empty(), policies.is_empty()) {
            (_, false, _) => (Effect::Deny, DecisionReason::EvaluationError),
            (cedar_policy::Decision::Allow, true, _) => (Effect::Allow, DecisionReason::Permitted),
            (cedar_policy::Decision::Deny, true, false) => (Effect::Deny, DecisionReason::Forbidden),
            (cedar_policy::Decision::Deny, true, true) => (Effect::Deny, DecisionReason::NoPermit),
        };
        Self { effect, reason, policies, errors, snapshot: snapshot.version().to_string(), elapsed: started.elapsed() }
    }
}

/// A question for the engine.
#[derive(Debug, Clone)]
pub struct DecisionRequest {
    pub principal: EntityUid,
    pub action: EntityUid,
    pub resource: EntityUid,
    /// The context as Cedar JSON: an object whose shape the schema declares for the
    /// action. Extension values may be written plainly (`"sourceIp": "10.1.2.3"`).
    pub context: serde_json::Value,
    /// Entities the caller knows and the snapshot does not, or knows better (e.g. the
    /// principal built from a verified token). They replace stored entities of the same
    /// uid for this one decision.
    pub entities: Vec<Entity>,
}

impl DecisionRequest {
    pub fn new(principal: EntityUid, action: EntityUid, resource: EntityUid) -> Self {
        Self { principal, action, resource, context: serde_json::json!({}), entities: Vec::new() }
    }

    #[must_use]
    pub fn with_context(mut self, context: serde_json::Value) -> Self {
        self.context = context;
        self
    }

    #[must_use]
    pub fn with_entities(mut self, entities: Vec<Entity>) -> Self {
        self.entities = entities;
        self
    }
}

/// Why a request could not be decided. Callers treat every one of these as a deny.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("`{text}` is not an entity uid such as `Studio::User::\"user-1\"`: {reason}")]
    BadUid { text: String, reason: String },
    #[error("no action named `{action}` in the schema; known actions: {known}")]
    UnknownAction { action: String, known: String },
    #[error("`{action}` names more than one action ({candidates}); give the full uid")]
    AmbiguousAction { action: String, candidates: String },
    #[error("the context does not fit the schema for `{action}`: {reason}")]
    BadContext { action: String, reason: String },
    #[error("the request does not fit the schema: {0}")]
    Invalid(String),
    #[error("the request's entities do not fit the schema: {0}")]
    BadEntities(String),
}

impl RequestError {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadUid { .. } => "bad_uid",
            Self::UnknownAction { .. } | Self::AmbiguousAction { .. } => "unknown_action",
            Self::BadContext { .. } => "bad_context",
            Self::Invalid(_) => "invalid_request",
            Self::BadEntities(_) => "bad_entities",
        }
    }
}

/// The decision engine over a [`PolicyStore`]. Cheap to clone; share one per process.
#[derive(Debug, Clone)]
pub struct Engine {
    store: PolicyStore,
    authorizer: std::sync::Arc<Authorizer>,
}

impl Engine {
    pub fn new(store: PolicyStore) -> Self {
        Self { store, authorizer: std::sync::Arc::new(Authorizer::new()) }
    }

    pub fn store(&self) -> &PolicyStore {
        &self.store
    }

    /// Decide one request against the snapshot serving now.
    pub fn decide(&self, request: &DecisionRequest) -> Result<Decision, RequestError> {
        let snapshot = self.store.current();
        decide_with(&self.authorizer, &snapshot, request)
    }

    /// Decide against a snapshot the caller already holds (and built request entities
    /// from), so one request never mixes two snapshots.
    pub fn decide_on(&self, snapshot: &PolicySnapshot, request: &DecisionRequest) -> Result<Decision, RequestError> {
        decide_with(&self.authorizer, snapshot, request)
    }

    /// [`decide_for_principal`] with this engine's authorizer.
    pub fn decide_as(
        &self,
        snapshot: &PolicySnapshot,
        principal: &RequestPrincipal,
        action: &EntityUid,
        resource: &EntityUid,
        context: Context,
    ) -> Result<Decision, RequestError> {
        decide_for_principal(&self.authorizer, snapshot, principal, action, resource, context)
    }
}

/// Decide against one given snapshot (tests and the CLI use this directly).
pub fn decide_with(
    authorizer: &Authorizer,
    snapshot: &PolicySnapshot,
    request: &DecisionRequest,
) -> Result<Decision, RequestError> {
    let started = Instant::now();
    let schema = snapshot.schema();
    let context = Context::from_json_value(request.context.clone(), Some((schema, &request.action)))
        .map_err(|e| RequestError::BadContext { action: request.action.to_string(), reason: e.to_string() })?;
    let cedar_request = Request::new(
        request.principal.clone(),
        request.action.clone(),
        request.resource.clone(),
        context,
        Some(schema),
    )
    .map_err(|e| RequestError::Invalid(e.to_string()))?;

    let response = if request.entities.is_empty() {
        authorizer.is_authorized(&cedar_request, snapshot.policies_for(&request.action), snapshot.entities())
    } else {
        let mut roots = vec![request.principal.clone(), request.resource.clone()];
        roots.extend(context_uids(&request.context));
        let entities = snapshot
            .request_entities(&roots, &request.entities)
            .map_err(|e: Box<EntitiesError>| RequestError::BadEntities(e.to_string()))?;
        authorizer.is_authorized(&cedar_request, snapshot.policies_for(&request.action), &entities)
    };
    let decision = Decision::from_response(&response, snapshot, started);
    tracing::debug!(
        principal = %request.principal,
        action = %request.action,
        resource = %request.resource,
        effect = %decision.effect,
        reason = decision.reason.as_str(),
        policies = ?decision.policies,
        errors = decision.errors.len(),
        snapshot = %decision.snapshot,
        "decision"
    );
    Ok(decision)
}

/// The data plane's question: `principal` (built from a verified token, see
/// [`PolicySnapshot::request_principal`]) asks for `action` on `resource` with a typed
/// `context` (see [`super::context_from_strings`]). The request is checked against the
/// schema (principal and resource types, the context's shape) exactly as in
/// [`decide_with`]; the entities are the request's slices plus the principal.
pub fn decide_for_principal(
    authorizer: &Authorizer,
    snapshot: &PolicySnapshot,
    principal: &RequestPrincipal,
    action: &EntityUid,
    resource: &EntityUid,
    context: Context,
) -> Result<Decision, RequestError> {
    let started = Instant::now();
    let request =
        Request::new(principal.uid().clone(), action.clone(), resource.clone(), context, Some(snapshot.schema()))
            .map_err(|e| RequestError::Invalid(e.to_string()))?;
    let entities = snapshot
        .entities_for_principal(principal, std::slice::from_ref(resource))
        .map_err(|e| RequestError::BadEntities(e.to_string()))?;
    let response = authorizer.is_authorized(&request, snapshot.policies_for(action), &entities);
    Ok(Decision::from_response(&response, snapshot, started))
}

/// Decide a Cedar request the caller built itself, over the snapshot's stored entities.
///
/// For callers that ask many questions of one shape (the account-pool list asks one per
/// account and region): they build the context from typed pairs instead of JSON and check
/// the request against the schema themselves, which is most of a decision's fixed cost.
/// The request's action picks the policies, as in [`decide_with`].
pub fn decide_prepared(authorizer: &Authorizer, snapshot: &PolicySnapshot, request: &Request) -> Decision {
    let started = Instant::now();
    let policies = request.action().map_or(snapshot.policies(), |action| snapshot.policies_for(action));
    let response = authorizer.is_authorized(request, policies, snapshot.entities());
    Decision::from_response(&response, snapshot, started)
}

/// Entity uids written in a context (`{"type": .., "id": ..}` or `{"__entity": ..}`),
/// so their slices are part of the request's entities.
fn context_uids(value: &serde_json::Value) -> Vec<EntityUid> {
    let mut out = Vec::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                if let Ok(uid) = EntityUid::from_json(v.clone()) {
                    out.push(uid);
                } else {
                    stack.extend(map.values());
                }
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out
}
