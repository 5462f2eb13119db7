//! The authorize step: one question of a caller's, decided, audited and counted, and
//! turned into what the handler receives: a [`Permit`] or a [`Denial`].
//!
//! Every request of the data plane goes through [`authorize`] once, whatever its handler.
//! A question that cannot be asked (a context or principal that does not fit the schema)
//! is a denial like any other, audited with the kind of error. A dry-run route's denial
//! is audited and counted as the deny it is, and permitted with that said in the permit,
//! so the upstream is told.

use super::audit::{Asked, AuditEvent};
use crate::config::Mode;
use crate::kept_metrics::RouteMetrics;
use crate::policy_store::PolicySnapshot;

use super::{Decision, DecisionRequest, Effect, Engine, RequestError};

/// The caller may go on: allowed, or denied on a dry-run route.
#[derive(Debug, Clone)]
pub struct Permit {
    pub decision: Decision,
    pub vouched: Vouched,
}

/// What a permit vouches for, as the upstream is told (`x-authz-decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vouched {
    Allowed,
    /// Denied, and let through because the route is in dry-run mode.
    DryRunDenied,
}

impl Vouched {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allow",
            Self::DryRunDenied => "dry-run-deny",
        }
    }
}

/// The caller may not go on (403).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Denial {
    #[error("denied: {}", .0.reason.as_str())]
    Denied(Decision),
    #[error("the request could not be decided: {0}")]
    Undecidable(RequestError),
}

/// Decide `request` (or audit why it could not be asked), write its one audit event,
/// count it, and apply the route's `mode`.
pub fn authorize(
    engine: &Engine,
    snapshot: &PolicySnapshot,
    mode: Mode,
    asked: Asked,
    request: Result<DecisionRequest, RequestError>,
) -> Result<Permit, Denial> {
    let metrics = RouteMetrics::of(asked.route.as_deref().unwrap_or_default());
    let decided = request.and_then(|request| {
        let decided = engine.decide(snapshot, &request);
        let origin = || crate::records::Origin {
            request_id: asked.request_id.clone(),
            route: asked.route.clone(),
            operation: asked.operation,
        };
        engine.observe(origin, snapshot, &request, &decided);
        decided
    });
    let decision = match decided {
        Ok(decision) => decision,
        Err(error) => {
            let event = AuditEvent::refused(asked, error.kind(), Some(&error), snapshot.version().to_string());
            event.emit(tracing::Level::WARN);
            metrics.decision("deny", error.kind());
            return Err(Denial::Undecidable(error));
        }
    };
    AuditEvent::decided(Asked { mode: Some(mode.as_str()), ..asked }, &decision).emit(tracing::Level::INFO);
    metrics.decision(decision.effect.as_str(), decision.reason.as_str());
    match (decision.effect, mode) {
        (Effect::Allow, _) => Ok(Permit { decision, vouched: Vouched::Allowed }),
        (Effect::Deny, Mode::Enforce) => Err(Denial::Denied(decision)),
        (Effect::Deny, Mode::DryRun) => {
            metrics.dry_run_denial();
            Ok(Permit { decision, vouched: Vouched::DryRunDenied })
        }
    }
}
