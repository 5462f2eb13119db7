//! The entities of one request: per-entity slices (an entity and everything reachable
//! from it), cached with the snapshot, assembled with the principal built from a token
//! and any entities the caller brings.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{Entities, Entity, EntityUid};

use super::scope::Selection;
use super::{LOOKUP_SERIALS, PolicySnapshot, RequestEntitiesKey, RequestSetLookup};
use crate::kept_metrics::kept_counter;

/// A number no other call in this process gets (never 0): names an immutable input of
/// decisions (a checked entity, a typed context) in cache keys, where an address could
/// be reused once the input is gone.
pub fn next_serial() -> u64 {
    static SERIALS: AtomicU64 = AtomicU64::new(1);
    SERIALS.fetch_add(1, Ordering::Relaxed)
}

/// An entity a request brings, already checked against the schema, with the uids it
/// points at (its direct parents, and the entity uids in its attributes and tags),
/// ready to be added to request entities: a principal built from a verified token, an
/// entity read from the directory, a derived profile.
#[derive(Debug)]
pub struct CheckedEntity {
    uid: EntityUid,
    entity: Arc<Entity>,
    references: Vec<EntityUid>,
    /// Unique in this process: names this entity (never reused, unlike an address) in
    /// the keys of request entity sets built with it.
    serial: u64,
}

impl CheckedEntity {
    /// `entity` must already conform to the snapshot's schema (it is added to request
    /// entities without another check).
    pub fn new(entity: Entity) -> Self {
        Self { uid: entity.uid(), references: references(&entity), entity: Arc::new(entity), serial: next_serial() }
    }

    pub fn uid(&self) -> &EntityUid {
        &self.uid
    }

    pub fn entity(&self) -> &Entity {
        &self.entity
    }

    /// The entity, shared.
    pub fn shared(&self) -> &Arc<Entity> {
        &self.entity
    }

    /// Names this entity among every entity checked in this process (see [`next_serial`]).
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The uids this entity points at.
    pub fn references(&self) -> &[EntityUid] {
        &self.references
    }
}

/// The entities of one request, and what has been settled over them for each action:
/// the policies that apply to their principal and resource, and the outcome of those
/// of them that never read the context (see [`PolicySnapshot::settled`]).
#[derive(Debug)]
pub struct RequestSet {
    entities: Entities,
    /// How many entities `entities` holds: the set's weight in the snapshot's cache.
    weight: u64,
    /// One place per indexed action; none when the set is not kept (built with a
    /// caller's own entities, for one decision).
    settled: Box<[OnceLock<Arc<Settled>>]>,
}

impl RequestSet {
    fn new(entities: Entities, settled: Box<[OnceLock<Arc<Settled>>]>) -> Self {
        let weight = u64::try_from(entities.iter().count()).unwrap_or(u64::MAX);
        Self { entities, weight, settled }
    }

    pub fn entities(&self) -> &Entities {
        &self.entities
    }
}

/// What the snapshot's caches of slices and request entity sets weigh an entry by: the
/// entities it holds (at least 1, for an entry of none still costs its key).
#[derive(Debug, Clone, Copy)]
pub(super) struct ByEntities;

impl quick_cache::Weighter<EntityUid, Arc<Slice>> for ByEntities {
    fn weight(&self, _: &EntityUid, slice: &Arc<Slice>) -> u64 {
        u64::try_from(slice.entities.len()).unwrap_or(u64::MAX).saturating_add(1)
    }
}

impl quick_cache::Weighter<super::RequestEntitiesKey, Arc<RequestSet>> for ByEntities {
    fn weight(&self, _: &super::RequestEntitiesKey, set: &Arc<RequestSet>) -> u64 {
        set.weight.max(1)
    }
}

/// For one request set and action: the policies selected, and the outcome of those of
/// them that never read the context, which holds for every context.
#[derive(Debug)]
pub struct Settled {
    pub selection: Arc<Selection>,
    pub context_free: crate::authz::Outcome,
}

/// A stored entity and every stored entity reachable from it, and the uids they point
/// at that no stored entity has (which another source, the directory, may hold).
#[derive(Debug, Default)]
pub struct Slice {
    pub entities: Vec<Arc<Entity>>,
    pub dangling: Vec<EntityUid>,
}

impl PolicySnapshot {
    /// A stored entity and every stored entity reachable from it through parents,
    /// entity-valued attributes and tags (the entity itself first when it exists).
    /// Cached per snapshot, with its entities built (see [`Self::stored_entity`]).
    pub fn entity_slice(&self, uid: &EntityUid) -> Result<Arc<Slice>, Box<EntitiesError>> {
        if let Some(slice) = self.slices.get(uid) {
            kept_counter!("authz_entity_cache_total", "result" => "hit").increment(1);
            return Ok(slice);
        }
        kept_counter!("authz_entity_cache_total", "result" => "miss").increment(1);
        let slice = Arc::new(self.reachable_from([uid.clone()])?);
        self.slices.insert(uid.clone(), slice.clone());
        Ok(slice)
    }

    /// Every stored entity reachable from `roots` through ancestors, entity-valued
    /// attributes and tags (roots included when they exist), built, and the uids reached
    /// that no stored entity has. Action entities excluded. Each entity's ancestors are
    /// closed when the snapshot is built, but what an entity's attributes point at has
    /// references of its own, so every entity reached is followed in turn.
    pub(super) fn reachable_from(
        &self,
        roots: impl IntoIterator<Item = EntityUid>,
    ) -> Result<Slice, Box<EntitiesError>> {
        let mut slice = Slice::default();
        let mut seen = HashSet::new();
        for root in roots {
            if is_action(&root) {
                continue;
            }
            let Some(index) = self.store.index_of(&root) else {
                if !slice.dangling.contains(&root) {
                    slice.dangling.push(root);
                }
                continue;
            };
            let mut stack = vec![index];
            while let Some(index) = stack.pop() {
                if !seen.insert(index) {
                    continue;
                }
                match self.built_at(index)? {
                    Some(entity) => {
                        slice.entities.push(entity);
                        stack.extend(self.store.points_at(index).iter().copied());
                    }
                    None => {
                        if let Some(uid) = self.store.uid(index).filter(|uid| !is_action(uid)) {
                            slice.dangling.push(uid);
                        }
                    }
                }
            }
        }
        Ok(slice)
    }

    /// Uids the policies name literally that no stored entity has.
    pub fn literal_dangling(&self) -> &[EntityUid] {
        &self.literal_slice.dangling
    }

    /// How many stored entities this snapshot holds built as Cedar entities (for
    /// metrics and tests).
    pub fn built_entities(&self) -> u64 {
        u64::try_from(self.built.len()).unwrap_or(u64::MAX)
    }

    /// How many entity slices this snapshot has cached (for metrics).
    pub fn cached_slices(&self) -> u64 {
        u64::try_from(self.slices.len()).unwrap_or(u64::MAX)
    }

    /// The entities of one request, when it brings entities of its own: `checked` (a
    /// principal built from a token, entities read from the directory, a derived
    /// profile: already checked against the schema) and `extra` (a caller's, checked
    /// here). The result holds the slices of every uid in `roots` (the principal, the
    /// resource, entity uids in the context) and of every uid the brought entities point
    /// at, the policies' literal entities, the schema's action entities, and the brought
    /// entities, which replace stored entities of the same uid. Stored entities were
    /// checked when the snapshot was built, so they are not checked again.
    ///
    /// This is complete for evaluation: a policy can only reach an entity from the
    /// principal, action, resource, context or a literal in a policy, by following
    /// parents, attributes and tags, and every such path is in the slices.
    ///
    /// Brought entities are meant to be leaves of the hierarchy (a principal). The
    /// hierarchy is closed over the request's entities (stored entities are built with
    /// their parents as written), so a brought entity's parents are what it gives the
    /// stored entities below it, if any.
    ///
    /// Without `extra`, the result depends only on `checked` (each immutable, named by
    /// its serial) and `roots`, so it is built once and kept with the snapshot (bounded
    /// by the number of entities held): a principal asking again about the same resource
    /// reuses it, with no copy and no transitive closure. A caller's `extra` entities are
    /// checked and assembled every time.
    pub fn request_entities(
        &self,
        checked: &[&CheckedEntity],
        roots: &[&EntityUid],
        extra: &[Entity],
    ) -> Result<Arc<RequestSet>, Box<EntitiesError>> {
        if !extra.is_empty() {
            let entities = self.assemble_request_entities(checked, roots, extra)?;
            return Ok(Arc::new(RequestSet::new(entities, Box::new([]))));
        }
        let mut serials = [0u64; LOOKUP_SERIALS];
        serials.iter_mut().zip(checked).for_each(|(slot, c)| *slot = c.serial);
        let found = match serials.get(..checked.len()) {
            Some(serials) => self.request_sets.get(&RequestSetLookup(serials, roots)),
            None => self
                .request_sets
                .get(&RequestEntitiesKey { serials: checked.iter().map(|c| c.serial).collect(), roots: owned(roots) }),
        };
        if let Some(set) = found {
            kept_counter!("authz_request_entities_total", "result" => "hit").increment(1);
            return Ok(set);
        }
        kept_counter!("authz_request_entities_total", "result" => "miss").increment(1);
        let key = RequestEntitiesKey { serials: checked.iter().map(|c| c.serial).collect(), roots: owned(roots) };
        let entities = self.assemble_request_entities(checked, roots, extra)?;
        let settled = (0..self.by_action.len()).map(|_| OnceLock::new()).collect();
        let set = Arc::new(RequestSet::new(entities, settled));
        self.request_sets.insert(key, set.clone());
        Ok(set)
    }

    /// What `set` has settled for `action` by `principal` on `resource` (the set's
    /// principal and resource, its first two roots): the policies that apply, and the
    /// outcome of those of them that never read the context, which `decide` gives the
    /// first time and every later request on the set reuses. `None` for a set that is not
    /// kept or an action the schema does not declare: decide over
    /// [`Self::policies_applying`] instead.
    pub fn settled(
        &self,
        set: &RequestSet,
        action: &EntityUid,
        (principal, resource): (&EntityUid, &EntityUid),
        decide: impl FnOnce(&cedar_policy::PolicySet) -> crate::authz::Outcome,
    ) -> Option<Arc<Settled>> {
        let index = self.by_action.get(action)?;
        let place = set.settled.get(index.slot())?;
        let settled = place.get_or_init(|| {
            let selection = index.select(&self.policies, principal, resource, &set.entities);
            let context_free = decide(selection.context_free());
            Arc::new(Settled { selection, context_free })
        });
        Some(settled.clone())
    }

    fn assemble_request_entities(
        &self,
        checked: &[&CheckedEntity],
        roots: &[&EntityUid],
        extra: &[Entity],
    ) -> Result<Entities, Box<EntitiesError>> {
        if !extra.is_empty() {
            Entities::from_entities(extra.iter().cloned(), Some(&self.schema)).map_err(Box::new)?;
        }
        let brought: Vec<&Entity> = checked.iter().map(|c| c.entity()).chain(extra).collect();
        let replaced: HashSet<EntityUid> = brought.iter().map(|e| e.uid()).collect();
        let mut chosen: HashMap<EntityUid, Entity> = HashMap::with_capacity(32);
        let mut choose = |entity: &Arc<Entity>| {
            let uid = entity.uid();
            if !replaced.contains(&uid) {
                chosen.entry(uid).or_insert_with(|| Entity::clone(entity));
            }
        };
        let checked_refs = checked.iter().flat_map(|c| c.references.iter());
        let extra_refs: Vec<EntityUid> = extra.iter().flat_map(references).collect();
        for root in roots.iter().copied().chain(checked_refs).chain(&extra_refs) {
            if !is_action(root) {
                self.entity_slice(root)?.entities.iter().for_each(&mut choose);
            }
        }
        self.literal_slice.entities.iter().for_each(choose);
        let all = chosen
            .into_values()
            .chain(brought.into_iter().cloned())
            .chain(self.action_entities.iter().filter(|e| !replaced.contains(&e.uid())).cloned());
        Entities::from_entities(all, None).map_err(Box::new)
    }

    /// The principal of the token with SHA-256 `token_digest`, built by `build` the first
    /// time this snapshot sees that token. Failures are not kept.
    pub fn request_principal<E>(
        &self,
        token_digest: [u8; 32],
        build: impl FnOnce() -> Result<Entity, E>,
    ) -> Result<Arc<CheckedEntity>, E> {
        self.request_principal_over(token_digest, 0, &[], build)
    }

    /// The principal of the token with SHA-256 `token_digest` over the stored entity
    /// the directory answered with `base` (a number that changes whenever the directory
    /// reads that entity again; 0 for none), built by `build` the first time this
    /// snapshot sees that pair: a principal never outlives the directory entry it was
    /// built on. `lost`: the teams that no longer count for the token (part of the key,
    /// so a principal built before a removal is not used after it). Failures are not
    /// kept.
    pub fn request_principal_over<E>(
        &self,
        token_digest: [u8; 32],
        base: u64,
        lost: &[String],
        build: impl FnOnce() -> Result<Entity, E>,
    ) -> Result<Arc<CheckedEntity>, E> {
        let key = (token_digest, base, lost.into());
        if let Some(principal) = self.principals.get(&key) {
            return Ok(principal);
        }
        let principal = Arc::new(CheckedEntity::new(build()?));
        self.principals.insert(key, principal.clone());
        Ok(principal)
    }
}

impl PolicySnapshot {
    /// An entity the data plane derives for requests (a Studio profile no entity lists)
    /// from this snapshot and directory entries: `key` is the entity's uid and the
    /// serials of the entries it was derived from (0 for none), so it is built by `build`
    /// once per key per snapshot and never outlives an entry it was derived from.
    /// Failures are not kept.
    pub fn derived_entity<E>(
        &self,
        key: (EntityUid, u64, u64),
        build: impl FnOnce() -> Result<Entity, E>,
    ) -> Result<Arc<CheckedEntity>, E> {
        if let Some(entity) = self.derived.get(&key) {
            return Ok(entity);
        }
        let entity = Arc::new(CheckedEntity::new(build()?));
        self.derived.insert(key, entity.clone());
        Ok(entity)
    }
}

/// Uids an entity not in the store points at: its parents, and every entity uid inside
/// its attributes and tags.
pub(super) fn references(entity: &Entity) -> Vec<EntityUid> {
    let mut out = Vec::new();
    if let Ok(serde_json::Value::Object(json)) = entity.to_json_value()
        && let Some(serde_json::Value::Array(parents)) = json.get("parents")
    {
        // the public API gives an entity's parents only in its JSON form
        out.extend(parents.iter().filter_map(|p| EntityUid::from_json(p.clone()).ok()));
    }
    let attrs = entity.attrs().filter_map(|(_, v)| v.ok());
    let tags = entity.tags().filter_map(|(_, v)| v.ok());
    for value in attrs.chain(tags) {
        super::store::collect_uids(&value, &mut out);
    }
    out
}

/// Action entities come from the schema, never from slices.
/// Borrowed roots as a key's own.
fn owned(roots: &[&EntityUid]) -> Box<[EntityUid]> {
    roots.iter().copied().cloned().collect()
}

pub(super) fn is_action(uid: &EntityUid) -> bool {
    uid.type_name().basename() == "Action"
}
