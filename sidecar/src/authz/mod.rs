//! Authorization: turning a request into a Cedar decision over the current snapshot.

mod context;
mod engine;
mod observed;
mod request;

pub use context::context_from_strings;
pub use engine::{
    Decision, DecisionReason, DecisionRequest, Effect, Engine, EvaluationError, RequestError, decide_for_principal,
    decide_prepared, decide_with,
};
pub use observed::{ResourceObservation, View};
pub use request::{parse_entity_uid, resolve_action};
