//! The decision engine: the one call the data plane, the account-pool handler and the
//! CLI make to ask Cedar a question.
//!
//! [`Engine::decide`] takes the snapshot the caller holds, checks the request against
//! its schema, gathers the entities (the snapshot's own, or cached slices of them plus
//! the caller's principal and entities) and evaluates. It fails closed: a request that does not fit the
//! schema is an error the caller must treat as a deny, and a policy that errors during
//! evaluation turns the decision into a deny even when another policy permits.

use std::fmt;
use std::time::{Duration, Instant};

use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Entity, EntityUid, PolicyId, PolicySet, Request, Response, entities_errors::EntitiesError,
};
use serde::Serialize;

use super::context::TypedContext;
use crate::policy_store::{CheckedEntity, DecisionLookup, LOOKUP_SERIALS, PolicySnapshot};

/// Allow or deny, the only two answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    /// on a forbidden deny, none on a default deny. Sorted. Shared: a kept decision is
    /// handed to every request that asks it again, and to its audit event, uncopied.
    pub policies: Arc<[String]>,
    pub errors: Vec<EvaluationError>,
    /// The snapshot that decided (its short digest).
    pub snapshot: Arc<str>,
    #[serde(rename = "elapsed_us", serialize_with = "micros")]
    pub elapsed: Duration,
    /// Made earlier in this snapshot for exactly this question, and kept (see
    /// [`crate::policy_store::DecisionKey`]); said in the audit event only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.effect == Effect::Allow
    }

    fn from_response(response: &Response, snapshot: &PolicySnapshot, started: Instant) -> Self {
        Self::from_outcome(Outcome::of(response), snapshot, started)
    }

    fn from_outcome(outcome: Outcome, snapshot: &PolicySnapshot, started: Instant) -> Self {
        let Outcome { permits, forbids, mut errors } = outcome;
        // Cedar's reasons: the satisfied forbids on a deny they decide, else the
        // satisfied permits; an error denies whatever else was satisfied
        let (effect, reason, mut policies) = match (errors.is_empty(), forbids.is_empty(), permits.is_empty()) {
            (false, true, _) => (Effect::Deny, DecisionReason::EvaluationError, permits),
            (false, false, _) => (Effect::Deny, DecisionReason::EvaluationError, forbids),
            (true, false, _) => (Effect::Deny, DecisionReason::Forbidden, forbids),
            (true, true, false) => (Effect::Allow, DecisionReason::Permitted, permits),
            (true, true, true) => (Effect::Deny, DecisionReason::NoPermit, permits),
        };
        policies.sort();
        errors.sort_by(|a, b| a.policy.cmp(&b.policy));
        Self {
            effect,
            reason,
            policies: policies.into(),
            errors,
            snapshot: snapshot.label().clone(),
            elapsed: started.elapsed(),
            cached: false,
        }
    }
}

/// What Cedar answered over some policies, kept apart so that the answers over two
/// disjoint sets of policies can be put together into the answer over both: the
/// satisfied permits, the satisfied forbids, and the policies that failed.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    permits: Vec<String>,
    forbids: Vec<String>,
    errors: Vec<EvaluationError>,
}

impl Outcome {
    /// Cedar's response, taken apart: a response that allows gives its satisfied permits
    /// as reasons (and had no satisfied forbid); one that denies gives its satisfied
    /// forbids (none when no permit was satisfied either).
    pub fn of(response: &Response) -> Self {
        let reasons =
            response.diagnostics().reason().map(|id: &PolicyId| AsRef::<str>::as_ref(id).to_owned()).collect();
        let errors = response
            .diagnostics()
            .errors()
            .map(|e| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
                EvaluationError { policy: e.policy_id().to_string(), message: e.inner().to_string() }
            })
            .collect();
        match response.decision() {
            cedar_policy::Decision::Allow => Self { permits: reasons, forbids: Vec::new(), errors },
            cedar_policy::Decision::Deny => Self { permits: Vec::new(), forbids: reasons, errors },
        }
    }

    /// This outcome and `other`'s, over policies disjoint from this one's: Cedar's over
    /// both, for a deny by one forbid wins over every permit, and every policy's result
    /// is its own.
    fn merged(&self, other: Self) -> Self {
        let join = |mine: &[String], mut theirs: Vec<String>| {
            theirs.extend_from_slice(mine);
            theirs
        };
        let mut errors = other.errors;
        errors.extend_from_slice(&self.errors);
        Self { permits: join(&self.permits, other.permits), forbids: join(&self.forbids, other.forbids), errors }
    }
}

/// Who asks: a uid whose entity is stored (or absent), or a principal built from a
/// verified token (see [`PolicySnapshot::request_principal`]).
#[derive(Debug, Clone)]
pub enum Asker {
    Uid(EntityUid),
    Built(Arc<CheckedEntity>),
}

impl Asker {
    pub fn uid(&self) -> &EntityUid {
        match self {
            Self::Uid(uid) => uid,
            Self::Built(principal) => principal.uid(),
        }
    }
}

/// The context of a question: Cedar JSON, checked against the schema for the action
/// (extension values may be written plainly, `"sourceIp": "10.1.2.3"`), or a context
/// already typed (see [`super::context_from_strings`]), checked when the request is.
#[derive(Debug, Clone)]
pub enum QuestionContext {
    Json(serde_json::Value),
    Typed(TypedContext),
}

/// A question for the engine.
#[derive(Debug, Clone)]
pub struct DecisionRequest {
    pub principal: Asker,
    pub action: EntityUid,
    pub resource: EntityUid,
    pub context: QuestionContext,
    /// Entities the caller knows and the snapshot does not, or knows better. They
    /// replace stored entities of the same uid for this one decision, and are checked
    /// against the schema.
    pub entities: Vec<Entity>,
    /// Entities already checked against this snapshot's schema (read from the
    /// directory, derived): added like `entities`, without another check.
    pub checked: Vec<Arc<CheckedEntity>>,
}

impl DecisionRequest {
    pub fn new(principal: EntityUid, action: EntityUid, resource: EntityUid) -> Self {
        Self {
            principal: Asker::Uid(principal),
            action,
            resource,
            context: QuestionContext::Json(serde_json::json!({})),
            entities: Vec::new(),
            checked: Vec::new(),
        }
    }

    /// The data plane's question: `principal` was built from a verified token and
    /// checked against the schema when it was built.
    pub fn built(
        principal: Arc<CheckedEntity>,
        action: EntityUid,
        resource: EntityUid,
        context: impl Into<TypedContext>,
    ) -> Self {
        Self {
            principal: Asker::Built(principal),
            action,
            resource,
            context: QuestionContext::Typed(context.into()),
            entities: Vec::new(),
            checked: Vec::new(),
        }
    }

    #[must_use]
    pub fn with_context(mut self, context: serde_json::Value) -> Self {
        self.context = QuestionContext::Json(context);
        self
    }

    /// A context built from strings (see [`crate::authz::context_from_strings`]): its
    /// shape is checked once, and a decision over it can be kept.
    #[must_use]
    pub fn with_typed_context(mut self, context: TypedContext) -> Self {
        self.context = QuestionContext::Typed(context);
        self
    }

    #[must_use]
    pub fn with_entities(mut self, entities: Vec<Entity>) -> Self {
        self.entities = entities;
        self
    }

    #[must_use]
    pub fn with_checked(mut self, checked: Vec<Arc<CheckedEntity>>) -> Self {
        self.checked = checked;
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
    #[error("the directory could not answer for the request's entities: {0}")]
    Directory(String),
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
            Self::Directory(_) => "directory",
        }
    }
}

/// The decision engine: the one way every caller (data plane, account pool, CLI,
/// decision tables, tests) asks Cedar. It holds the one shared [`Authorizer`] and no
/// policy state: the caller passes the snapshot it holds, so one request never mixes
/// two snapshots. Cheap to clone; share one per process.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    authorizer: Arc<Authorizer>,
    /// What the decision sites hand each decision to, off the request path.
    observers: Arc<Observers>,
}

/// Who is told of each decision a decision site makes: the decision-record writer
/// (`[records]`) and the shadow policies (`[policies.shadow]`), each when configured.
#[derive(Debug, Default)]
pub struct Observers {
    pub recorder: Option<crate::records::Recorder>,
    pub shadow: Option<crate::shadow::Shadow>,
}

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    /// An engine whose decision sites hand each decision to `observers`.
    #[must_use]
    pub fn observed(observers: Observers) -> Self {
        Self { observers: Arc::new(observers), ..Self::default() }
    }

    /// The shadow policies, when configured.
    pub fn shadow(&self) -> Option<&crate::shadow::Shadow> {
        self.observers.shadow.as_ref()
    }

    /// Tell the observers of a decision a decision site made with this engine (or of
    /// the error that kept it from Cedar); nothing when there are none. Never waits.
    pub fn observe(
        &self,
        origin: impl FnOnce() -> crate::records::Origin,
        snapshot: &PolicySnapshot,
        request: &DecisionRequest,
        outcome: &Result<Decision, RequestError>,
    ) {
        let Observers { recorder, shadow } = self.observers.as_ref();
        if recorder.is_none() && shadow.is_none() {
            return;
        }
        let version = match outcome {
            Ok(decision) => decision.snapshot.clone(),
            Err(_) => snapshot.label().clone(),
        };
        let origin = origin();
        if let Some(shadow) = shadow {
            shadow.offer(origin.clone(), request, outcome, version.clone());
        }
        if let Some(recorder) = recorder {
            recorder.record(origin, request, outcome, version);
        }
    }

    /// Decide `request` against `snapshot`: the request is checked against the schema
    /// (principal and resource types, the context's shape), and the entities are the
    /// snapshot's own, or, when the request brings a principal or entities of its own,
    /// the slices it reaches (see [`PolicySnapshot::request_entities`]).
    pub fn decide(&self, snapshot: &PolicySnapshot, request: &DecisionRequest) -> Result<Decision, RequestError> {
        let started = Instant::now();
        let roots = [request.principal.uid(), &request.resource];
        let mut serials = [0u64; LOOKUP_SERIALS];
        let key = decision_lookup(request, &mut serials, &roots);
        if let Some(known) = key.as_ref().and_then(|key| snapshot.known_decision(key)) {
            return Ok(Decision { elapsed: started.elapsed(), cached: true, ..Decision::clone(&known) });
        }
        let decision = self.evaluate(snapshot, request, &roots, started)?;
        if let Some(key) = key {
            snapshot.remember_decision(key.to_key(), Arc::new(decision.clone()));
        }
        Ok(decision)
    }

    /// Decide over `entities` as the whole entity store of the question (how Cedar's
    /// own test format gives a test's entities), with every policy of `snapshot`: the
    /// request and its context are checked against the snapshot's schema, and an
    /// evaluation error denies, as it does in the sidecar.
    pub fn decide_in_store(
        &self,
        snapshot: &PolicySnapshot,
        (principal, action, resource): (EntityUid, EntityUid, EntityUid),
        context: serde_json::Value,
        entities: &cedar_policy::Entities,
    ) -> Result<Decision, RequestError> {
        let started = Instant::now();
        let schema = snapshot.schema();
        let context = Context::from_json_value(context, Some((schema, &action)))
            .map_err(|e| RequestError::BadContext { action: action.to_string(), reason: e.to_string() })?;
        let request = Request::new(principal, action, resource, context, Some(schema))
            .map_err(|e| RequestError::Invalid(e.to_string()))?;
        let response = self.authorizer.is_authorized(&request, snapshot.policies(), entities);
        Ok(Decision::from_response(&response, snapshot, started))
    }

    /// `roots`: the request's principal and resource uids, as [`Self::decide`] has them.
    fn evaluate(
        &self,
        snapshot: &PolicySnapshot,
        request: &DecisionRequest,
        roots: &[&EntityUid; 2],
        started: Instant,
    ) -> Result<Decision, RequestError> {
        let schema = snapshot.schema();
        let (context, context_roots, typed) = match &request.context {
            QuestionContext::Json(json) => {
                let context = Context::from_json_value(json.clone(), Some((schema, &request.action))).map_err(|e| {
                    RequestError::BadContext { action: request.action.to_string(), reason: e.to_string() }
                })?;
                (context, context_uids(json), None)
            }
            QuestionContext::Typed(typed) => (Context::clone(&typed.context), Vec::new(), Some(typed)),
        };
        let principal = request.principal.uid();
        let (principal_type, resource_type) = (principal.type_name(), request.resource.type_name());
        // a shape checked once for these types needs no second check (see `TypedContext`):
        // the context may know it passed, else the snapshot may
        let build_id = snapshot.build_id();
        let remembered = typed.is_some_and(|typed| typed.passed(build_id, principal_type, resource_type));
        let checked_shape = typed
            .and_then(|typed| typed.shape.as_ref())
            .filter(|_| !remembered)
            .map(|shape| (principal_type, &request.action, resource_type, shape));
        let known =
            remembered || checked_shape.as_ref().is_some_and(|(p, a, r, s)| snapshot.request_shape_checked(p, a, r, s));
        let cedar_request = Request::new(
            principal.clone(),
            request.action.clone(),
            request.resource.clone(),
            context,
            if known { None } else { Some(schema) },
        )
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
        if let Some((p, a, r, s)) = checked_shape {
            if !known {
                snapshot.remember_request_shape(p, a, r, s);
            }
            if let Some(typed) = typed {
                typed.remember_passed(build_id, principal_type, resource_type);
            }
        }

        let built = match &request.principal {
            Asker::Built(principal) => Some(principal.as_ref()),
            Asker::Uid(_) => None,
        };
        // entity uids written in a JSON context are roots too
        let roots: std::borrow::Cow<'_, [&EntityUid]> = if context_roots.is_empty() {
            std::borrow::Cow::Borrowed(roots)
        } else {
            roots.iter().copied().chain(&context_roots).collect()
        };
        let checked: Vec<&CheckedEntity> = built.into_iter().chain(request.checked.iter().map(Arc::as_ref)).collect();
        let assembled = snapshot
            .request_entities(&checked, &roots, &request.entities)
            .map_err(|e: Box<EntitiesError>| RequestError::BadEntities(e.to_string()))?;
        let entities = assembled.entities();
        let ask =
            |policies: &PolicySet| Outcome::of(&self.authorizer.is_authorized(&cedar_request, policies, entities));
        let sides = (request.principal.uid(), &request.resource);
        let settled = snapshot.settled(&assembled, &request.action, sides, ask);
        let selection;
        // what the context-free policies answer: settled with a kept set, asked now for
        // a set built with the caller's own entities; the policies that read the context
        // are evaluated for every question
        let (context_free, contextual) = match &settled {
            Some(settled) => (std::borrow::Cow::Borrowed(&settled.context_free), settled.selection.contextual()),
            None => {
                selection = snapshot.policies_applying(&request.action, sides.0, sides.1, entities);
                (std::borrow::Cow::Owned(ask(selection.context_free())), selection.contextual())
            }
        };
        let outcome =
            if contextual.is_empty() { context_free.into_owned() } else { context_free.merged(ask(contextual)) };
        Ok(Decision::from_outcome(outcome, snapshot, started))
    }
}

/// The key a decision is kept under, when every input of the question is named by a
/// serial (see [`DecisionKey`]): a typed context kept by the snapshot, and no entities
/// of the caller's own (those are checked and assembled every time), borrowed from the
/// request, `roots` (its principal's and resource's uids) and `serials` (filled here).
/// `None`: decided afresh every time (also a question that brings more than
/// [`LOOKUP_SERIALS`] checked entities, which none of the sidecar's does).
fn decision_lookup<'a>(
    request: &'a DecisionRequest,
    serials: &'a mut [u64; LOOKUP_SERIALS],
    roots: &'a [&'a EntityUid; 2],
) -> Option<DecisionLookup<'a>> {
    let QuestionContext::Typed(typed) = &request.context else { return None };
    if typed.serial == 0 || !request.entities.is_empty() {
        return None;
    }
    let built = match &request.principal {
        Asker::Built(principal) => Some(principal.as_ref()),
        Asker::Uid(_) => None,
    };
    // the same serials and roots, in the same order, as the request's entity set
    let all = built.into_iter().chain(request.checked.iter().map(Arc::as_ref)).map(CheckedEntity::serial);
    let count = usize::from(built.is_some()) + request.checked.len();
    serials.iter_mut().zip(all).for_each(|(slot, serial)| *slot = serial);
    let serials: &'a [u64] = serials.get(..count)?;
    Some(DecisionLookup { entities: (serials, roots), action: &request.action, context: typed.serial })
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
