//! Authorization: turning a request into a Cedar decision over the current snapshot.

mod engine;
mod request;

pub use engine::{
    Decision, DecisionReason, DecisionRequest, Effect, Engine, EvaluationError, RequestError, decide_prepared,
    decide_with,
};
pub use request::{parse_entity_uid, resolve_action};
