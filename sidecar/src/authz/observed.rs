//! What a set of policies can see of a resource, so that a caller asking one question of
//! many resources decides once for resources the policies cannot tell apart.
//!
//! Cedar's answer is a function of the request, the entities and the policies. Fix the
//! principal, the action and the context, and let only the resource vary over entities
//! of one type. If every policy reads the resource only through
//!
//! - named attributes (`resource.status`, `resource has status`),
//! - tags (`resource.getTag(..)`, `resource.hasTag(..)`),
//! - its type (`resource is T`, always true or always false within one type),
//! - equality with literal entities (`resource == Account::"1"`, `!=`), and
//! - membership in literal entities (`resource in Pool::"p"`), in the scope or the
//!   condition,
//!
//! then two resources that agree on those values get the same answer, errors included,
//! step for step. Those values are the resource's [`View`]: attribute and tag values,
//! and one yes/no per literal it is compared with or tested `in`. So a policy that names
//! one account by id sets that account apart and leaves the rest alike. Any other use of
//! `resource` (compared with or tested `in` an entity computed when the policy runs, put
//! in a set or a record, passed to a function) lets a policy tell resources apart by
//! uid: then no view exists, and every resource is decided on its own.
//!
//! The analysis reads each policy's JSON form (Cedar's documented EST) and is
//! conservative: a shape it does not know counts as telling resources apart.

use std::collections::BTreeSet;

use cedar_policy::{Entity, EntityTypeName, EntityUid, EvalResult, Policy};
use serde_json::Value;

/// How a policy set observes resources of one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceObservation {
    resource_type: EntityTypeName,
    seen: Seen,
}

/// What the policies see of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Only these reads.
    Reads(Reads),
    /// Its uid as a value, for this reason: every resource looks different.
    ByUid(String),
}

/// Everything the policies read of the resource, when that is all they can see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Reads {
    attrs: BTreeSet<String>,
    tags: bool,
    /// Literal entities the resource is compared with (`==`, `!=`).
    identities: BTreeSet<EntityUid>,
    /// Literal entities the resource is tested to be `in`.
    memberships: BTreeSet<EntityUid>,
}

/// The values of a resource that the policies can see. Two resources with equal views
/// get the same answer to the same question.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct View {
    attrs: Vec<Option<EvalResult>>,
    tags: Vec<(String, EvalResult)>,
    identities: Vec<bool>,
    memberships: Vec<bool>,
}

impl ResourceObservation {
    /// Analyse `policies` for resources of `resource_type`.
    pub fn of<'a>(policies: impl IntoIterator<Item = &'a Policy>, resource_type: &EntityTypeName) -> Self {
        let mut walk = Walk { reads: Reads::default(), by_uid: None };
        for policy in policies {
            match policy.to_json() {
                Ok(est) => walk.policy(&est),
                Err(e) => walk.by_uid(format!("policy `{}` has no JSON form: {e}", policy.id())),
            }
            if walk.by_uid.is_some() {
                break;
            }
        }
        let seen = match walk.by_uid {
            Some(reason) => Seen::ByUid(reason),
            None => Seen::Reads(walk.reads),
        };
        Self { resource_type: resource_type.clone(), seen }
    }

    /// Why the policies can tell resources apart by uid, if they can.
    pub fn by_uid(&self) -> Option<&str> {
        match &self.seen {
            Seen::ByUid(reason) => Some(reason),
            Seen::Reads(_) => None,
        }
    }

    /// The attribute names the policies read of the resource (empty when they read by uid).
    pub fn attrs(&self) -> impl Iterator<Item = &str> {
        let reads = match &self.seen {
            Seen::Reads(reads) => Some(reads),
            Seen::ByUid(_) => None,
        };
        reads.into_iter().flat_map(|reads| reads.attrs.iter().map(String::as_str))
    }

    /// The view of the stored resource `entity`, whose ancestors `is_in` tells: `None`
    /// when the policies can tell resources apart by uid, when it is of another type,
    /// or when a value it holds is not concrete.
    pub fn view(&self, entity: &Entity, is_in: impl Fn(&EntityUid) -> bool) -> Option<View> {
        let Seen::Reads(reads) = &self.seen else { return None };
        let uid = &entity.uid();
        if uid.type_name() != &self.resource_type {
            return None;
        }
        let attrs = reads
            .attrs
            .iter()
            .map(|name| entity.attr(name).transpose().ok())
            .collect::<Option<Vec<Option<EvalResult>>>>()?;
        let mut tags = Vec::new();
        if reads.tags {
            for (name, value) in entity.tags() {
                tags.push((name.to_owned(), value.ok()?));
            }
            tags.sort();
        }
        let identities = reads.identities.iter().map(|target| target == uid).collect();
        // Cedar's `in` for a stored entity: itself, or one of its ancestors
        let memberships = reads.memberships.iter().map(|target| target == uid || is_in(target)).collect();
        Some(View { attrs, tags, identities, memberships })
    }
}

struct Walk {
    reads: Reads,
    by_uid: Option<String>,
}

impl Walk {
    fn by_uid(&mut self, reason: impl Into<String>) {
        self.by_uid.get_or_insert_with(|| reason.into());
    }

    /// A policy's EST: the resource scope and the conditions. The principal and action
    /// scopes do not read the resource.
    fn policy(&mut self, est: &Value) {
        match est.get("resource") {
            Some(scope) => self.scope(scope),
            None => self.by_uid("a policy without a resource scope"),
        }
        for condition in est.get("conditions").and_then(Value::as_array).into_iter().flatten() {
            match condition.get("body") {
                Some(body) => self.expr(body),
                None => self.by_uid("a condition without a body"),
            }
        }
    }

    fn scope(&mut self, scope: &Value) {
        match scope.get("op").and_then(Value::as_str) {
            Some("All") => {}
            Some("==") => match scope_entity(scope) {
                Some(uid) => {
                    self.reads.identities.insert(uid);
                }
                None => self.by_uid("`resource ==` a template slot"),
            },
            Some("in") => self.scope_membership(scope),
            Some("is") => {
                if let Some(target) = scope.get("in") {
                    self.scope_membership(target);
                }
            }
            _ => self.by_uid("a resource scope of unknown shape"),
        }
    }

    /// `in` a literal entity (or a template slot, whose linked value is not known here).
    fn scope_membership(&mut self, constraint: &Value) {
        match scope_entity(constraint) {
            Some(uid) => {
                self.reads.memberships.insert(uid);
            }
            None => self.by_uid("`resource in` a template slot"),
        }
    }

    /// The right side of `resource in ...` in a condition: literal entities only.
    fn membership(&mut self, target: &Value) {
        match literal_entities(target) {
            Some(uids) => self.reads.memberships.extend(uids),
            None => self.by_uid("`resource in` an entity computed when the policy runs"),
        }
    }

    /// The other side of `resource == ...`: a literal entity only.
    fn identity(&mut self, other: Option<&Value>) {
        match other.and_then(literal_entities).as_deref() {
            Some([uid]) => {
                self.reads.identities.insert(uid.clone());
            }
            _ => self.by_uid("`resource` compared with something other than a literal entity"),
        }
    }

    fn expr(&mut self, e: &Value) {
        if self.by_uid.is_some() {
            return;
        }
        let Some((op, arg)) = single(e) else {
            return self.by_uid("an expression of unknown shape");
        };
        match op {
            "Value" | "Slot" | "Unknown" => {}
            "Var" => {
                if arg.as_str() == Some("resource") {
                    self.by_uid("`resource` used as a value (compared, collected or passed on)");
                }
            }
            "==" | "!=" if is_resource(arg.get("left")) => self.identity(arg.get("right")),
            "==" | "!=" if is_resource(arg.get("right")) => self.identity(arg.get("left")),
            "." | "has" => {
                let left = arg.get("left");
                if is_resource(left) {
                    // `has a.b.c` tests a path; the resource's part of it is its first attribute
                    let attr = match arg.get("attr") {
                        Some(Value::String(name)) => Some(name.as_str()),
                        Some(Value::Array(path)) => path.first().and_then(Value::as_str),
                        _ => None,
                    };
                    match attr {
                        Some(name) => {
                            self.reads.attrs.insert(name.to_owned());
                        }
                        None => self.by_uid("an attribute access of unknown shape"),
                    }
                } else {
                    self.child(left);
                }
            }

            "getTag" | "hasTag" => {
                let left = arg.get("left");
                if is_resource(left) {
                    self.reads.tags = true;
                } else {
                    self.child(left);
                }
                self.child(arg.get("right"));
            }
            "in" => {
                let (left, right) = (arg.get("left"), arg.get("right"));
                if is_resource(left) {
                    match right {
                        Some(target) => self.membership(target),
                        None => self.by_uid("`in` without a right side"),
                    }
                } else {
                    self.child(left);
                    self.child(right);
                }
            }
            "is" => {
                let left = arg.get("left");
                let target = arg.get("in");
                if is_resource(left) {
                    if let Some(target) = target {
                        self.membership(target);
                    }
                } else {
                    self.child(left);
                    if target.is_some() {
                        self.child(target);
                    }
                }
            }
            "Set" => match arg {
                Value::Array(items) => items.iter().for_each(|item| self.expr(item)),
                _ => self.by_uid("a set of unknown shape"),
            },
            "Record" => match arg {
                Value::Object(fields) => fields.values().for_each(|value| self.expr(value)),
                _ => self.by_uid("a record of unknown shape"),
            },
            // operators (`==`, `&&`, `!`, `like`, `if-then-else`, ...) and extension calls
            _ => match arg {
                Value::Object(operands) => {
                    for (key, operand) in operands {
                        // names and patterns, not expressions
                        if !matches!(key.as_str(), "attr" | "pattern" | "entity_type") {
                            self.expr(operand);
                        }
                    }
                }
                Value::Array(args) => args.iter().for_each(|a| self.expr(a)),
                _ => self.by_uid(format!("an operator `{op}` of unknown shape")),
            },
        }
    }

    fn child(&mut self, e: Option<&Value>) {
        match e {
            Some(e) => self.expr(e),
            None => self.by_uid("an operator without its operand"),
        }
    }
}

/// The literal entity of a scope constraint (`None` for a template slot).
fn scope_entity(constraint: &Value) -> Option<EntityUid> {
    EntityUid::from_json(constraint.get("entity")?.clone()).ok()
}

/// A literal entity, or a literal set of them (`Pool::"p"`, `[Pool::"p", Pool::"q"]`).
fn literal_entities(e: &Value) -> Option<Vec<EntityUid>> {
    let uid = |v: &Value| EntityUid::from_json(v.clone()).ok();
    match single(e)? {
        ("Value", Value::Array(items)) => items.iter().map(uid).collect(),
        ("Value", value) => uid(value).map(|uid| vec![uid]),
        ("Set", Value::Array(items)) => items
            .iter()
            .map(|item| match single(item) {
                Some(("Value", v)) => uid(v),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// The one key and value of an EST node.
fn single(e: &Value) -> Option<(&str, &Value)> {
    let map = e.as_object()?;
    if map.len() != 1 {
        return None;
    }
    map.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn is_resource(e: Option<&Value>) -> bool {
    e.and_then(single).is_some_and(|(op, arg)| op == "Var" && arg.as_str() == Some("resource"))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use cedar_policy::{Entities, EntityTypeName, EntityUid, PolicyId, PolicySet, SlotId, Template};

    use super::Seen;

    use super::ResourceObservation;

    fn observe(src: &str) -> ResourceObservation {
        let policies = PolicySet::from_str(src).unwrap();
        ResourceObservation::of(policies.policies(), &EntityTypeName::from_str("DataZone::Account").unwrap())
    }

    fn attrs(o: &ResourceObservation) -> Vec<&str> {
        o.attrs().collect()
    }

    #[test]
    fn attributes_tags_types_and_foreign_memberships_are_all_a_policy_sees() {
        let o = observe(
            r#"permit (principal, action, resource is DataZone::Account in DataZone::AccountPool::"p")
               when { principal in resource.pool.allowedLobs && resource has name.first
                      && resource.regions.contains(context.regionName) && resource is DataZone::Account
                      && (resource.hasTag("env") || resource in [Studio::Lob::"a", Studio::Lob::"b"]) };
               forbid (principal, action, resource) unless { ["A", "B"].contains(resource.status) };"#,
        );
        assert_eq!(o.by_uid(), None);
        assert_eq!(attrs(&o), ["name", "pool", "regions", "status"]);
        let Seen::Reads(reads) = &o.seen else { panic!("{o:?}") };
        assert!(reads.tags);
        assert_eq!(reads.memberships.len(), 3);
    }

    #[test]
    fn any_other_use_of_the_resource_tells_resources_apart() {
        for (src, reason) in [
            (r#"permit (principal, action, resource) when { resource == context.account };"#, "literal entity"),
            (r#"permit (principal, action, resource) when { principal.home != resource };"#, "literal entity"),
            (r#"permit (principal, action, resource) when { principal in resource };"#, "as a value"),
            (r#"permit (principal, action, resource) when { [resource].isEmpty() };"#, "as a value"),
            (r#"permit (principal, action, resource) when { resource in principal.pools };"#, "computed"),
            (
                r#"permit (principal, action, resource) when { resource is DataZone::Account in context.p };"#,
                "computed",
            ),
        ] {
            let o = observe(src);
            let why = o.by_uid().unwrap_or_else(|| panic!("{src} reads by uid"));
            assert!(why.contains(reason), "{src}: {why}");
            assert_eq!(attrs(&o), Vec::<&str>::new());
        }
    }

    #[test]
    fn template_links_are_read_with_their_linked_entity() {
        let linked = |target: &str| {
            let template =
                Template::parse(Some(PolicyId::new("t")), "permit (principal, action, resource in ?resource);")
                    .unwrap();
            let mut policies = PolicySet::new();
            policies.add_template(template).unwrap();
            let values = [(SlotId::resource(), EntityUid::from_str(target).unwrap())].into();
            policies.link(PolicyId::new("t"), PolicyId::new("link"), values).unwrap();
            ResourceObservation::of(policies.policies(), &EntityTypeName::from_str("DataZone::Account").unwrap())
        };
        for target in [r#"DataZone::AccountPool::"p""#, r#"DataZone::Account::"111111111111""#] {
            let o = linked(target);
            assert_eq!(o.by_uid(), None);
            let Seen::Reads(reads) = &o.seen else { panic!("{o:?}") };
            assert_eq!(reads.memberships, [EntityUid::from_str(target).unwrap()].into());
        }
    }

    fn accounts() -> Entities {
        Entities::from_json_value(
            serde_json::json!([
                {"uid": {"type": "DataZone::AccountPool", "id": "p"}, "attrs": {}, "parents": []},
                {"uid": {"type": "DataZone::Account", "id": "0"}, "attrs": {}, "parents": []},
                {"uid": {"type": "DataZone::Account", "id": "1"}, "attrs": {"status": "A", "name": "one"},
                 "parents": [{"type": "DataZone::AccountPool", "id": "p"}]},
                {"uid": {"type": "DataZone::Account", "id": "2"}, "attrs": {"status": "A", "name": "two"},
                 "parents": [{"type": "DataZone::AccountPool", "id": "p"}, {"type": "DataZone::Account", "id": "0"}]},
                {"uid": {"type": "DataZone::Account", "id": "3"}, "attrs": {"status": "A"}, "parents": []},
                {"uid": {"type": "DataZone::Account", "id": "4"}, "attrs": {"status": "B"},
                 "parents": [{"type": "DataZone::AccountPool", "id": "p"}]},
                {"uid": {"type": "DataZone::Account", "id": "5"}, "attrs": {"status": "A", "name": "five"},
                 "parents": [{"type": "DataZone::AccountPool", "id": "p"}]},
            ]),
            None,
        )
        .unwrap()
    }

    fn view(o: &ResourceObservation, entities: &Entities, id: &str) -> Option<super::View> {
        let uid = EntityUid::from_str(&format!("DataZone::Account::\"{id}\"")).unwrap();
        o.view(entities.get(&uid)?, |target| entities.is_ancestor_of(target, &uid))
    }

    #[test]
    fn a_literal_account_sets_only_itself_apart() {
        let entities = accounts();
        for src in [
            r#"permit (principal, action, resource == DataZone::Account::"1");"#,
            r#"permit (principal, action, resource) when { DataZone::Account::"1" != resource };"#,
            r#"permit (principal, action, resource in DataZone::Account::"1");"#,
        ] {
            let o = observe(src);
            assert_eq!(o.by_uid(), None, "{src}");
            assert_ne!(view(&o, &entities, "1"), view(&o, &entities, "5"), "{src}");
            assert_eq!(view(&o, &entities, "5"), view(&o, &entities, "3"), "{src}");
        }
        // `in` an account is also true for the accounts under it
        let o = observe(r#"permit (principal, action, resource in DataZone::Account::"0");"#);
        assert_eq!(view(&o, &entities, "0"), view(&o, &entities, "2"));
        assert_ne!(view(&o, &entities, "0"), view(&o, &entities, "1"));
    }

    #[test]
    fn views_hold_exactly_what_the_policies_read() {
        let o = observe(
            r#"permit (principal, action, resource) when { resource.status == "A" && resource in DataZone::AccountPool::"p" };"#,
        );
        let entities = accounts();
        let view = |id: &str| view(&o, &entities, id);
        assert_eq!(view("1"), view("5"), "the name is not read");
        assert_ne!(view("1"), view("3"), "membership differs");
        assert_ne!(view("1"), view("4"), "status differs");
        assert!(view("1").is_some());
        let pool = cedar_policy::Entity::new_no_attrs(
            EntityUid::from_str(r#"DataZone::AccountPool::"p""#).unwrap(),
            std::collections::HashSet::new(),
        );
        assert_eq!(o.view(&pool, |_| false), None, "another type");
        assert_eq!(view("9"), None, "not stored");
    }
}
