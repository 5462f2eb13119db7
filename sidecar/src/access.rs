//! What may I open: for one principal, the resources of a type that an action allows,
//! in the context the question is asked from.
//!
//! Every stored resource of the type is a candidate, and so is every resource the
//! caller names besides (the Studio profiles a route would derive for the user's teams,
//! see [`crate::handlers::profiles`]). The answer is exactly the engine's, resource by
//! resource: candidates the action's policies cannot tell apart (the same
//! [`ResourceObservation`] view the account-pool list uses) are decided once per class,
//! and a class whose decision carries an evaluation error is decided member by member.
//! When the question brings entities of its own (the directory's), every candidate is
//! decided alone: a view is read from the stored entities, which those may change.
//! A question that cannot be asked (the action does not apply to the principal's type
//! or to the resource type, a context that does not fit) is an error, never an empty
//! list.
//!
//! Policies that read the context (a VPC endpoint, a source IP) make the answer hold
//! for that context only: [`Answer::context_read`] says which of its attributes the
//! action's policies read, so a caller can say "from this network".

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use cedar_policy::{Entity, EntityTypeName, EntityUid};
use serde::Serialize;
use serde_json::Value;

use crate::authz::{
    Asker, Decision, DecisionRequest, Engine, QuestionContext, RequestError, ResourceObservation, View, uid_text,
};
use crate::policy_store::{CheckedEntity, PolicySnapshot};

/// The question.
#[derive(Debug, Clone)]
pub struct Question {
    pub principal: Asker,
    pub action: EntityUid,
    pub resource_type: EntityTypeName,
    pub context: QuestionContext,
    /// Entities the request brought that are not candidates (from the directory).
    pub checked: Vec<Arc<CheckedEntity>>,
    /// Candidates no file lists (derived profiles), decided with themselves added.
    pub unlisted: Vec<Arc<CheckedEntity>>,
}

/// One resource the action allows.
#[derive(Debug, Clone, Serialize)]
pub struct Allowed {
    /// `Type::"id"`.
    pub resource: String,
    pub id: String,
    /// The policies that allowed it.
    pub policies: Arc<[String]>,
    /// Not listed by any entity file: derived for this answer (it exists once used).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub derived: bool,
}

/// The answer.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub principal: String,
    pub action: String,
    pub resource_type: String,
    /// Sorted by uid.
    pub allowed: Vec<Allowed>,
    /// Resources considered, and decisions made for them.
    pub candidates: usize,
    pub decisions: usize,
    /// The context attributes the action's policies read (`*`: the context as a
    /// whole): when any, the answer holds for this context only.
    pub context_read: Vec<String>,
    pub snapshot: String,
}

/// Decide `question` for every candidate resource.
pub fn query(engine: &Engine, snapshot: &PolicySnapshot, question: &Question) -> Result<Answer, RequestError> {
    applies(snapshot, question.principal.uid().type_name(), &question.action, &question.resource_type)?;
    let mut allowed = Vec::new();
    let mut decisions = 0;
    let decide = |resource: &EntityUid, extra: Option<&Arc<CheckedEntity>>| {
        let mut checked = question.checked.clone();
        checked.extend(extra.cloned());
        let request = DecisionRequest {
            principal: question.principal.clone(),
            action: question.action.clone(),
            resource: resource.clone(),
            context: question.context.clone(),
            entities: Vec::new(),
            checked,
        };
        engine.decide(snapshot, &request)
    };

    // stored candidates, a decision per class of look-alikes
    let observation = ResourceObservation::of(snapshot.policies_for(&question.action), &question.resource_type);
    let stored: Vec<EntityUid> = snapshot.entities_of_type(&question.resource_type).iter().collect();
    let mut classes: BTreeMap<View, Vec<&EntityUid>> = BTreeMap::new();
    let mut alone: Vec<&EntityUid> = Vec::new();
    // A view is read from the stored entities. Entities the request brings (the
    // directory's) may stand in for stored ones, or sit in a candidate's hierarchy where
    // the stored closure cannot see them: then two candidates with one stored view may
    // differ to the policies, so each is decided alone.
    let shareable = question.checked.is_empty();
    for uid in &stored {
        let view = shareable
            .then(|| snapshot.stored_entity(uid).ok().flatten())
            .flatten()
            .and_then(|entity| observation.view(&entity, |target| snapshot.is_stored_ancestor(target, uid)));
        match view {
            Some(view) => classes.entry(view).or_default().push(uid),
            None => alone.push(uid),
        }
    }
    let mut answers: Vec<(&EntityUid, Decision)> = Vec::new();
    for members in classes.into_values() {
        let Some((first, rest)) = members.split_first() else { continue };
        let decision = decide(first, None)?;
        decisions += 1;
        if decision.errors.is_empty() {
            answers.extend(rest.iter().map(|uid| (*uid, decision.clone())));
            answers.push((first, decision));
        } else {
            // an error's message names the resource it was evaluated for
            answers.push((first, decision));
            for uid in rest {
                answers.push((uid, decide(uid, None)?));
                decisions += 1;
            }
        }
    }
    for uid in alone {
        answers.push((uid, decide(uid, None)?));
        decisions += 1;
    }
    for (uid, decision) in answers {
        if decision.is_allowed() {
            allowed.push(listed(uid, &decision, false));
        }
    }

    // unlisted candidates, each with itself among the request's entities
    let mut unlisted: BTreeSet<&EntityUid> = BTreeSet::new();
    for entity in &question.unlisted {
        let uid = entity.uid();
        if uid.type_name() != &question.resource_type || snapshot.holds(uid) || !unlisted.insert(uid) {
            continue;
        }
        let decision = decide(uid, Some(entity))?;
        decisions += 1;
        if decision.is_allowed() {
            allowed.push(listed(uid, &decision, true));
        }
    }
    allowed.sort_by(|a, b| a.resource.cmp(&b.resource));
    Ok(Answer {
        principal: uid_text(question.principal.uid()),
        action: uid_text(&question.action),
        resource_type: question.resource_type.to_string(),
        allowed,
        candidates: stored.len() + unlisted.len(),
        decisions,
        context_read: context_read(snapshot, &question.action),
        snapshot: snapshot.version().to_string(),
    })
}

fn listed(uid: &EntityUid, decision: &Decision, derived: bool) -> Allowed {
    Allowed {
        resource: uid_text(uid),
        id: uid.id().unescaped().to_owned(),
        policies: decision.policies.clone(),
        derived,
    }
}

/// The action must apply to the principal's type and to the resource type.
pub fn applies(
    snapshot: &PolicySnapshot,
    principal_type: &EntityTypeName,
    action: &EntityUid,
    resource_type: &EntityTypeName,
) -> Result<(), RequestError> {
    let schema = snapshot.schema();
    let Some(principals) = schema.principals_for_action(action) else {
        return Err(RequestError::Invalid(format!("no action `{action}` in the schema")));
    };
    if !principals.into_iter().any(|t| t == principal_type) {
        return Err(RequestError::Invalid(format!(
            "`{action}` does not apply to principals of type `{principal_type}`"
        )));
    }
    if !schema.resources_for_action(action).into_iter().flatten().any(|t| t == resource_type) {
        return Err(RequestError::Invalid(format!("`{action}` does not apply to resources of type `{resource_type}`")));
    }
    Ok(())
}

/// The context attributes the policies of `action` read, sorted (`*`: they use the
/// context in a way that reads all of it).
pub fn context_read(snapshot: &PolicySnapshot, action: &EntityUid) -> Vec<String> {
    let mut read = BTreeSet::new();
    for policy in snapshot.policies_for(action) {
        match policy.to_json() {
            Ok(est) => reads_of_context(&est, &mut read),
            Err(_) => {
                read.insert("*".to_owned());
            }
        }
    }
    read.into_iter().collect()
}

/// Walk a policy's JSON form: `context.x` and `context has x` read `x`; any other use
/// of `context` reads it all.
fn reads_of_context(value: &Value, read: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for op in [".", "has"] {
                if let Some(Value::Object(access)) = map.get(op)
                    && access.get("left") == Some(&serde_json::json!({"Var": "context"}))
                    && let Some(Value::String(attr)) = access.get("attr")
                {
                    read.insert(attr.clone());
                    return;
                }
            }
            if map.get("Var") == Some(&Value::String("context".to_owned())) {
                read.insert("*".to_owned());
                return;
            }
            map.values().for_each(|v| reads_of_context(v, read));
        }
        Value::Array(items) => items.iter().for_each(|v| reads_of_context(v, read)),
        _ => {}
    }
}

/// The Studio profiles a route deriving them would derive for `user` in each of
/// `teams` (see [`crate::handlers::profiles`]): one per team with no stored profile of
/// that owner and team, whose id the route's `resource_id` template gives.
pub fn derivable_profiles(
    snapshot: &PolicySnapshot,
    known: impl Fn(&EntityUid) -> Option<Arc<Entity>>,
    user: &EntityUid,
    teams: &[EntityUid],
    resource_id: impl Fn(&str, &str) -> Option<String>,
    profile_type: &EntityTypeName,
) -> Vec<Arc<CheckedEntity>> {
    // (owner, team) of every stored profile
    let mut listed: HashSet<(EntityUid, EntityUid)> = HashSet::new();
    for uid in snapshot.entities_of_type(profile_type).iter() {
        let Some(profile) = snapshot.stored_entity(&uid).ok().flatten() else { continue };
        let attr = |name: &str| match profile.attr(name).and_then(Result::ok) {
            Some(cedar_policy::EvalResult::EntityUid(uid)) => Some(uid),
            _ => None,
        };
        if let (Some(owner), Some(team)) = (attr("owner"), attr("team")) {
            listed.insert((owner, team));
        }
    }
    let user_id = user.id().unescaped();
    teams
        .iter()
        .filter(|team| !listed.contains(&((*user).clone(), (*team).clone())))
        .filter_map(|team| {
            let id = resource_id(user_id, team.id().unescaped())?;
            let resource = EntityUid::from_type_name_and_id(profile_type.clone(), cedar_policy::EntityId::new(id));
            if snapshot.holds(&resource) {
                return None;
            }
            let derived = crate::handlers::profiles::derive_profile(
                snapshot,
                &known,
                user.type_name(),
                user_id,
                team.id().unescaped(),
                &resource,
            )
            .ok()?;
            Some(Arc::new(CheckedEntity::new(derived)))
        })
        .collect()
}
