//! The `access` handler: `GET <route>?action=…&resource_type=…` answers which resources
//! of the type the action allows the caller (see [`crate::access`]).
//!
//! The principal is the one the caller's token built (with the directory's entities,
//! and the teams it has since left taken away, as for any route); the context is the
//! caller's own (source IP, VPC endpoint, time), built for the action asked about from
//! the route's context sources. Studio profiles a `derive_profile` route would derive
//! for the caller's teams are candidates too. Each parameter must be given once, and no
//! other; a question that cannot be asked is a 400 naming why, never an empty list.

use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{EntityTypeName, EntityUid};

use crate::access::{self, Question};
use crate::authz::{Asker, QuestionContext, RequestError, context_from_strings, resolve_action};
use crate::body::{Body, json_response};
use crate::config::RouteConfig;
use crate::directory::Gathered;
use crate::policy_store::{CheckedEntity, PolicySnapshot};
use crate::rescue::ApiError;
use crate::server::state::State;

/// The query string read: the action and the resource type.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Asked {
    pub(crate) action: String,
    pub(crate) resource_type: String,
}

/// `action` and `resource_type`, each exactly once, and nothing else.
pub(crate) fn parse_query(query: &str) -> Result<Asked, ApiError> {
    let (mut action, mut resource_type) = (None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match key.as_ref() {
            "action" => &mut action,
            "resource_type" => &mut resource_type,
            _ => return Err(ApiError::BadQuery("only `action` and `resource_type` may be given".into())),
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(ApiError::BadQuery(format!("`{key}` is given more than once")));
        }
    }
    match (action.filter(|a| !a.is_empty()), resource_type.filter(|t| !t.is_empty())) {
        (Some(action), Some(resource_type)) => Ok(Asked { action, resource_type }),
        _ => Err(ApiError::BadQuery("give `?action=<action>&resource_type=<entity type>`".into())),
    }
}

/// What the pipeline knows of the caller when the route's own question allowed them.
pub(crate) struct Caller {
    pub(crate) principal: Arc<CheckedEntity>,
    /// The route's context attributes and their values, as strings.
    pub(crate) context: Vec<(String, String)>,
    /// What the directory gave for this request.
    pub(crate) gathered: Gathered,
}

/// Answer the query on the blocking pool: thousands of candidates are decided.
pub(crate) async fn answer(
    state: &State,
    snapshot: Arc<PolicySnapshot>,
    caller: Caller,
    query: &str,
    request_id: &str,
) -> Result<http::Response<Body>, ApiError> {
    let asked = parse_query(query)?;
    // a query decides up to every resource of a type: only so many at once, so that they
    // never take the cores the rest of the data plane needs
    let slot = state.access_slots.clone().try_acquire_owned().map_err(|_| {
        metrics::counter!("authz_requests_shed_total", "reason" => "access_queries").increment(1);
        tracing::info!(request_id, "every access-query slot is taken; shed");
        ApiError::Overloaded
    })?;
    let engine = state.engine.clone();
    let deriving = state.deriving.clone();
    let request_id = request_id.to_owned();
    let answered = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        decide(&engine, &snapshot, &deriving, caller, &asked)
            .inspect_err(|e| tracing::info!(request_id, error = %e, "access query refused"))
    })
    .await
    .map_err(|_| ApiError::Internal)??;
    Ok(json_response(http::StatusCode::OK, answered.to_string()))
}

fn decide(
    engine: &crate::authz::Engine,
    snapshot: &PolicySnapshot,
    deriving: &[Arc<RouteConfig>],
    caller: Caller,
    asked: &Asked,
) -> Result<serde_json::Value, ApiError> {
    let bad = |e: RequestError| ApiError::BadQuery(public(&e));
    let action = resolve_action(snapshot.schema(), &asked.action).map_err(bad)?;
    let resource_type = EntityTypeName::from_str(&asked.resource_type)
        .map_err(|_| ApiError::BadQuery(format!("`{}` is not an entity type", asked.resource_type)))?;
    let principal = caller.principal.uid().clone();
    // what the question is about first: a context is built for an action that applies
    access::applies(snapshot, principal.type_name(), &action, &resource_type).map_err(bad)?;
    let context = context_from_strings(snapshot, &action, &caller.context).map_err(bad)?;
    let known = |uid: &EntityUid| caller.gathered.known_or_none(snapshot, uid);
    // the profiles a deriving route would derive for the caller's teams
    let teams: Vec<EntityUid> = caller
        .principal
        .references()
        .iter()
        .filter(|uid| uid.type_name().to_string() == crate::config::TEAM_TYPE)
        .cloned()
        .collect();
    let mut unlisted = Vec::new();
    for route in deriving.iter().filter(|r| r.authz.action == action && r.authz.resource_type == resource_type) {
        let Some(derive) = &route.derive_profile else { continue };
        let id = |user: &str, team: &str| {
            route
                .authz
                .resource_id
                .render(|name| match name {
                    n if n == derive.user => Some(user),
                    n if n == derive.team => Some(team),
                    _ => None,
                })
                .ok()
        };
        // the token's principal is of the principal type, with the user's id
        unlisted.extend(access::derivable_profiles(snapshot, known, &principal, &teams, id, &resource_type));
    }
    let question = Question {
        principal: Asker::Built(caller.principal.clone()),
        action,
        resource_type,
        context: QuestionContext::Typed(context),
        checked: caller.gathered.checked_except(&principal),
        unlisted,
    };
    let answer = access::query(engine, snapshot, &question).map_err(bad)?;
    Ok(public_answer(&answer, &caller.context))
}

/// The answer as the caller is told it: what they may open, and where from. Nothing
/// trying each resource would not tell them: no count of the resources they may not
/// open, no policy ids, no names of what the policies read (the security team has
/// `authz-sidecar access` and the audit log for those).
fn public_answer(answer: &access::Answer, context: &[(String, String)]) -> serde_json::Value {
    use serde_json::{Value, json};
    let allowed: Vec<Value> = answer
        .allowed
        .iter()
        .map(|a| {
            if a.derived {
                json!({"resource": a.resource, "id": a.id, "derived": true})
            } else {
                json!({"resource": a.resource, "id": a.id})
            }
        })
        .collect();
    let context: serde_json::Map<String, Value> =
        context.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let mut json = json!({
        "principal": answer.principal,
        "action": answer.action,
        "resource_type": answer.resource_type,
        "allowed": allowed,
        "context": context,
        "context_dependent": !answer.context_read.is_empty(),
        "snapshot": answer.snapshot,
    });
    if !answer.context_read.is_empty()
        && let Some(object) = json.as_object_mut()
    {
        let note = "the policies read the request context: this answer holds for this context (where you call from, \
                    and when)";
        object.insert("note".to_owned(), Value::String(note.to_owned()));
    }
    json
}

/// What the caller is told of a question that cannot be asked: the kind of problem in
/// its own words, never the schema's list of actions or a policy's text.
fn public(error: &RequestError) -> String {
    match error {
        RequestError::UnknownAction { action, .. } => format!("no action `{action}` is known"),
        RequestError::AmbiguousAction { action, .. } => {
            format!("`{action}` names more than one action; give it in full")
        }
        RequestError::BadUid { text, .. } => format!("`{text}` is not an action uid"),
        RequestError::BadContext { .. } => {
            "the action needs a context this route does not give (its `context` sources)".to_owned()
        }
        RequestError::Invalid(why) => why.clone(),
        RequestError::BadEntities(_) | RequestError::Directory(_) => {
            "the request's entities do not fit the schema".to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_takes_each_parameter_once_and_nothing_else() {
        let asked = parse_query("action=CreatePresignedDomainUrl&resource_type=Studio%3A%3AUserProfile").unwrap();
        assert_eq!(
            asked,
            Asked { action: "CreatePresignedDomainUrl".into(), resource_type: "Studio::UserProfile".into() }
        );
        for bad in [
            "",
            "action=a",
            "resource_type=t",
            "action=&resource_type=t",
            "action=a&resource_type=t&action=b",
            "action=a&resource_type=t&principal=Studio::User::%22admin%22",
        ] {
            assert!(matches!(parse_query(bad), Err(ApiError::BadQuery(_))), "{bad}");
        }
    }
}
