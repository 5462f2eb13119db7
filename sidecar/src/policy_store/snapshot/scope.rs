//! The policies of one action, indexed by what their principal and resource scopes can
//! match, so a request evaluates only the policies whose scope holds for it.
//!
//! A Cedar policy is `principal-scope && action-scope && resource-scope && conditions`,
//! evaluated left to right with a short-circuiting `&&`. A scope never errors: `==`
//! compares uids, `is` compares types, and `in` asks the entity store for ancestors (an
//! entity the store lacks has none). So a policy whose principal or resource scope is
//! false for a request is not satisfied and reports no error, and deciding over the
//! policies whose scopes hold gives exactly Cedar's answer over the whole set (the
//! property tests in `tests/integration/policy_index.rs` compare the two).
//!
//! The scopes are read from each policy as linked, so a template-linked policy (Verified
//! Permissions) is indexed by the values its slots were linked to. Selecting is a few
//! hash lookups per ancestor of the principal and of the resource; the policy set of a
//! selection is built once and kept (selections repeat: they depend only on the
//! ancestors and types of who asks for what).
//!
//! A selection is split by whether a policy reads the context. A policy evaluates the
//! principal, action, resource, context and entities of its request, and reaches the
//! context only through the `context` variable, so one that never names it has the same
//! result (satisfied, not, or an error) for every context of one principal, action,
//! resource and entity set. Cedar's decision is a function of each policy's result (a
//! satisfied forbid denies, else a satisfied permit allows, else deny; an error is
//! reported and the policy ignored), so the results of the two parts, taken apart and
//! put together, are exactly Cedar's over both (see [`crate::authz::Outcome`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::cache::{Bounded, bounded};
use cedar_policy::{
    Entities, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, ResourceConstraint,
};

/// How many distinct selections an action keeps the policy set of.
const SELECTION_CACHE_CAPACITY: u64 = 4_096;

/// One side's scope (principal or resource), as linked.
#[derive(Debug, Clone)]
enum Scope {
    Any,
    Eq(EntityUid),
    In(EntityUid),
    Is(EntityTypeName),
    IsIn(EntityTypeName, EntityUid),
}

impl Scope {
    fn of_principal(policy: &Policy) -> Self {
        match policy.principal_constraint() {
            PrincipalConstraint::Any => Self::Any,
            PrincipalConstraint::Eq(uid) => Self::Eq(uid),
            PrincipalConstraint::In(uid) => Self::In(uid),
            PrincipalConstraint::Is(ty) => Self::Is(ty),
            PrincipalConstraint::IsIn(ty, uid) => Self::IsIn(ty, uid),
        }
    }

    fn of_resource(policy: &Policy) -> Self {
        match policy.resource_constraint() {
            ResourceConstraint::Any => Self::Any,
            ResourceConstraint::Eq(uid) => Self::Eq(uid),
            ResourceConstraint::In(uid) => Self::In(uid),
            ResourceConstraint::Is(ty) => Self::Is(ty),
            ResourceConstraint::IsIn(ty, uid) => Self::IsIn(ty, uid),
        }
    }

    /// Whether the scope holds for `subject`, whose ancestors in the request's entity
    /// store are `ancestors`: Cedar's own semantics of `==`, `in`, `is` and `is ... in`.
    fn holds(&self, subject: &Subject<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::Eq(uid) => uid == subject.uid,
            Self::In(uid) => subject.is_in(uid),
            Self::Is(ty) => ty == subject.ty,
            Self::IsIn(ty, uid) => ty == subject.ty && subject.is_in(uid),
        }
    }
}

/// The principal or resource of a request, with its ancestors in the request's store.
struct Subject<'a> {
    uid: &'a EntityUid,
    ty: &'a EntityTypeName,
    ancestors: HashSet<&'a EntityUid>,
}

impl<'a> Subject<'a> {
    fn of(uid: &'a EntityUid, entities: &'a Entities) -> Self {
        let ancestors = entities.ancestors(uid).map(Iterator::collect).unwrap_or_default();
        Self { uid, ty: uid.type_name(), ancestors }
    }

    /// Cedar's `in`: the entity itself, or one of its ancestors.
    fn is_in(&self, uid: &EntityUid) -> bool {
        uid == self.uid || self.ancestors.contains(uid)
    }
}

/// One side's index: the policies whose scope can hold, by the uid or type it names.
#[derive(Debug, Default)]
struct SideIndex {
    scopes: Vec<Scope>,
    any: Vec<u32>,
    /// `==` by its uid.
    eq: HashMap<EntityUid, Vec<u32>>,
    /// `in` and `is ... in` by the uid they name (the type is checked on selection).
    within: HashMap<EntityUid, Vec<u32>>,
    /// `is` by its type.
    is: HashMap<EntityTypeName, Vec<u32>>,
}

impl SideIndex {
    fn push(&mut self, index: u32, scope: Scope) {
        match &scope {
            Scope::Any => self.any.push(index),
            Scope::Eq(uid) => self.eq.entry(uid.clone()).or_default().push(index),
            Scope::In(uid) | Scope::IsIn(_, uid) => self.within.entry(uid.clone()).or_default().push(index),
            Scope::Is(ty) => self.is.entry(ty.clone()).or_default().push(index),
        }
        self.scopes.push(scope);
    }

    /// The policies whose scope on this side holds for `subject`.
    fn candidates(&self, subject: &Subject<'_>) -> Vec<u32> {
        let mut out = self.any.clone();
        let mut extend = |list: Option<&Vec<u32>>| out.extend(list.into_iter().flatten());
        extend(self.eq.get(subject.uid));
        extend(self.is.get(subject.ty));
        let within = std::iter::once(subject.uid)
            .chain(subject.ancestors.iter().copied())
            .filter_map(|uid| self.within.get(uid))
            .flatten()
            .filter(|&&i| self.holds(i, subject));
        out.extend(within);
        out
    }

    fn shrink_to_fit(&mut self) {
        self.scopes.shrink_to_fit();
        self.any.shrink_to_fit();
        for map in [&mut self.eq, &mut self.within] {
            map.values_mut().for_each(Vec::shrink_to_fit);
            map.shrink_to_fit();
        }
        self.is.values_mut().for_each(Vec::shrink_to_fit);
        self.is.shrink_to_fit();
    }

    fn holds(&self, index: u32, subject: &Subject<'_>) -> bool {
        usize::try_from(index).ok().and_then(|i| self.scopes.get(i)).is_some_and(|scope| scope.holds(subject))
    }
}

/// The policies selected for a request, split by whether they read the context. The
/// two parts are all that is kept (a third set of the same policies whole would hold
/// each of them once more, for every selection kept): the engine asks each part and
/// puts the outcomes together with Cedar's own rule.
#[derive(Debug)]
pub struct Selection {
    context_free: Arc<PolicySet>,
    contextual: Arc<PolicySet>,
}

impl Selection {
    /// The policies `picked` from `whole`, each with whether it reads the context.
    fn of<'a>(whole: &PolicySet, picked: impl Iterator<Item = (&'a Policy, bool)> + Clone) -> Option<Self> {
        let part = |reads: bool| {
            let policies = picked.clone().filter(move |(_, r)| *r == reads);
            subset(whole, policies.map(|(policy, _)| policy)).map(Arc::new)
        };
        Some(Self { context_free: part(false)?, contextual: part(true)? })
    }

    /// Every policy of `set`, all of them taken to read the context.
    pub(super) fn everything(set: Arc<PolicySet>) -> Self {
        Self { context_free: Arc::new(PolicySet::new()), contextual: set }
    }

    /// Every policy selected, as one set, built on each call (for tools and tests: the
    /// engine asks the two parts); `None` only if Cedar refuses to put them together.
    pub fn all(&self) -> Option<PolicySet> {
        let parts = [&*self.context_free, &*self.contextual];
        let mut set = PolicySet::new();
        for template in parts.iter().flat_map(|part| part.templates()) {
            if set.template(template.id()).is_none() {
                set.add_template(template.clone()).ok()?;
            }
        }
        for policy in parts.iter().flat_map(|part| part.policies()) {
            match policy.template_id() {
                None => set.add(policy.clone()).ok()?,
                Some(template) => {
                    let links = policy.template_links().unwrap_or_default();
                    set.link(template.clone(), policy.id().clone(), links).ok()?;
                }
            }
        }
        Some(set)
    }

    /// The policies selected that never name `context`: their results hold for every
    /// context of the request's principal, action, resource and entities.
    pub fn context_free(&self) -> &PolicySet {
        &self.context_free
    }

    /// The policies selected that name `context`.
    pub fn contextual(&self) -> &PolicySet {
        &self.contextual
    }
}

/// The policies of one action, indexed by principal and resource scope.
///
/// It holds no policy itself, only ids into the snapshot's set: a policy set costs about
/// 1.3 KiB a policy (Cedar's maps, and a copy of each policy's text), so the selection of
/// every policy of the action is built only when a request selects them all, and kept
/// with the other selections.
#[derive(Debug)]
pub(super) struct ScopeIndex {
    /// This action's place among the snapshot's indexed actions (see
    /// [`super::RequestSet`]).
    slot: usize,
    /// Every policy of the action (static and linked), in the snapshot's order, by id.
    policies: Vec<PolicyId>,
    /// Whether each policy names `context` (or could not be read, and is taken to).
    reads_context: Vec<bool>,
    principal: SideIndex,
    resource: SideIndex,
    /// Selections by the sorted positions of their policies.
    selections: Bounded<Box<[u32]>, Arc<Selection>>,
}

impl ScopeIndex {
    /// Index `policies`, policies of the snapshot's set (selections are built from it).
    pub(super) fn new<'a>(slot: usize, policies: impl IntoIterator<Item = &'a Policy>) -> Self {
        let mut ids = Vec::new();
        let mut reads = Vec::new();
        let mut principal = SideIndex::default();
        let mut resource = SideIndex::default();
        for (i, policy) in policies.into_iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            ids.push(policy.id().clone());
            reads.push(reads_context(policy));
            principal.push(i, Scope::of_principal(policy));
            resource.push(i, Scope::of_resource(policy));
        }
        ids.shrink_to_fit();
        reads.shrink_to_fit();
        principal.shrink_to_fit();
        resource.shrink_to_fit();
        let selections = bounded(SELECTION_CACHE_CAPACITY);
        Self { slot, policies: ids, reads_context: reads, principal, resource, selections }
    }

    /// Every policy of the action, in the snapshot's order, taken from `whole` (the
    /// snapshot's set).
    pub(super) fn all<'a>(&'a self, whole: &'a PolicySet) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies.iter().filter_map(|id| whole.policy(id))
    }

    pub(super) fn slot(&self) -> usize {
        self.slot
    }

    /// The policies of the action whose principal and resource scopes hold for a
    /// request by `principal` on `resource`, over `entities` (the store the request is
    /// evaluated against: ancestors come from it). `whole`: the snapshot's policies,
    /// where the templates of linked ones are.
    pub(super) fn select(
        &self,
        whole: &Arc<PolicySet>,
        principal: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> Arc<Selection> {
        let principal = Subject::of(principal, entities);
        let resource = Subject::of(resource, entities);
        let by_principal = self.principal.candidates(&principal);
        let by_resource = self.resource.candidates(&resource);
        // check the other side's scope on the shorter list
        let mut chosen: Vec<u32> = if by_principal.len() <= by_resource.len() {
            by_principal.into_iter().filter(|&i| self.resource.holds(i, &resource)).collect()
        } else {
            by_resource.into_iter().filter(|&i| self.principal.holds(i, &principal)).collect()
        };
        chosen.sort_unstable();
        chosen.dedup();
        if let Some(set) = self.selections.get(chosen.as_slice()) {
            return set;
        }
        let picked: Option<Vec<(&Policy, bool)>> = chosen
            .iter()
            .map(|&i| {
                let i = usize::try_from(i).ok()?;
                let policy = whole.policy(self.policies.get(i)?)?;
                Some((policy, self.reads_context.get(i).copied().unwrap_or(true)))
            })
            .collect();
        match picked.and_then(|picked| Selection::of(whole, picked.iter().copied())) {
            Some(selection) => {
                let selection = Arc::new(selection);
                self.selections.insert(chosen.into_boxed_slice(), selection.clone());
                selection
            }
            // every policy is in `whole`, with its template, so this cannot happen; the
            // whole snapshot's set (every policy taken to read the context) decides alike
            None => Arc::new(Selection::everything(Arc::clone(whole))),
        }
    }
}

/// Whether `policy` (as linked) names the `context` variable anywhere: read from its
/// JSON form, where a variable is `{"Var": "context"}`. A policy that cannot be written
/// as JSON is taken to read it, which only costs it being evaluated with every request.
fn reads_context(policy: &Policy) -> bool {
    fn names_context(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::Object(map) => {
                map.get("Var").and_then(serde_json::Value::as_str) == Some("context") || map.values().any(names_context)
            }
            serde_json::Value::Array(items) => items.iter().any(names_context),
            _ => false,
        }
    }
    policy.to_json().map_or(true, |json| names_context(&json))
}

/// A policy set of `policies`, taken from `whole`: static policies as they are, linked
/// policies linked again to their templates (added once each). `None` if `whole` lacks
/// a template of theirs.
fn subset<'a>(whole: &PolicySet, policies: impl IntoIterator<Item = &'a Policy>) -> Option<PolicySet> {
    let mut set = PolicySet::new();
    let mut templates = HashSet::new();
    for policy in policies {
        let Some(template_id) = policy.template_id() else {
            set.add(policy.clone()).ok()?;
            continue;
        };
        if templates.insert(template_id.clone()) {
            set.add_template(whole.template(template_id)?.clone()).ok()?;
        }
        let links = policy.template_links().unwrap_or_default();
        set.link(template_id.clone(), policy.id().clone(), links).ok()?;
    }
    Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: &str = r#"
        permit (principal, action == Action::"read", resource);
        permit (principal in Team::"a", action == Action::"read", resource) when { context.x };
        forbid (principal == User::"b", action == Action::"read", resource is Doc);
    "#;

    fn uid(text: &str) -> EntityUid {
        text.parse().unwrap()
    }

    fn ids(set: &PolicySet) -> std::collections::BTreeSet<String> {
        set.policies().map(|p| p.id().to_string()).collect()
    }

    /// The index holds ids only: each selection, the one of every policy included, is
    /// built from the snapshot's set when a request first asks for it, and kept.
    #[test]
    fn selections_are_built_from_the_snapshots_set_when_first_asked_for_and_kept() {
        let whole = Arc::new(POLICIES.parse::<PolicySet>().unwrap());
        let index = ScopeIndex::new(0, whole.policies());
        assert_eq!(index.selections.len(), 0, "nothing is built with the index");
        assert_eq!(index.all(&whole).count(), 3);
        let entities = Entities::from_json_value(
            serde_json::json!([
                {"uid": {"type": "User", "id": "b"}, "attrs": {}, "parents": [{"type": "Team", "id": "a"}]},
                {"uid": {"type": "Team", "id": "a"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Doc", "id": "d"}, "attrs": {}, "parents": []}
            ]),
            None,
        )
        .unwrap();

        let every = index.select(&whole, &uid(r#"User::"b""#), &uid(r#"Doc::"d""#), &entities);
        assert_eq!(ids(every.context_free()), ["policy0".to_owned(), "policy2".to_owned()].into());
        assert_eq!(ids(every.contextual()), ["policy1".to_owned()].into());
        assert_eq!(index.selections.len(), 1);
        let again = index.select(&whole, &uid(r#"User::"b""#), &uid(r#"Doc::"d""#), &entities);
        assert!(Arc::ptr_eq(&every, &again), "kept");

        let outsider = index.select(&whole, &uid(r#"User::"c""#), &uid(r#"Doc::"d""#), &entities);
        assert_eq!(ids(outsider.context_free()), ["policy0".to_owned()].into());
        assert!(outsider.contextual().is_empty());
        assert_eq!(index.selections.len(), 2);
    }
}
