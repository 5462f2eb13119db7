//! Authorization: turning a request into a Cedar decision over a snapshot.
//!
//! [`Engine`] is the one way to ask Cedar; [`authorize`] is the data plane's step
//! around it (decide, audit, count, apply the route's mode).

pub mod audit;
mod authorize;
mod context;
mod engine;
mod observed;
mod request;

pub use authorize::{Denial, Permit, Vouched, authorize};
pub use context::{ContextShape, TypedContext, context_from_strings};
pub use engine::{
    Asker, Decision, DecisionReason, DecisionRequest, Effect, Engine, EvaluationError, Observers, Outcome,
    QuestionContext, RequestError,
};
pub use observed::{ResourceObservation, View};
pub use request::{parse_entity_uid, resolve_action, uid_text};
