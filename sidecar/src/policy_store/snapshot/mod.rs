//! The immutable policy snapshot: policies, schema and entities that were validated
//! together, with a version and where they came from.
//!
//! A snapshot is built whole or not at all: any problem in any file fails the build and
//! the caller keeps whatever snapshot it had. Once built it never changes, so readers
//! share it through an `Arc` with no lock; a reload builds a new one and swaps it in
//! (see [`super::PolicyStore`]). Per-snapshot caches live inside the snapshot, so a new
//! snapshot starts with empty caches and can never serve a stale entity.
//!
//! Four concerns, a file each: this one holds the snapshot and what it answers;
//! `build.rs` parses, validates and indexes the inputs into one; `store.rs` holds the
//! entity files' entities compactly; `slices.rs` cuts the entities one request needs
//! out of them (and keeps the principals built from tokens).

mod build;
mod scope;
mod slices;
mod store;

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};

use crate::cache::Bounded;
use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{Entities, Entity, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Schema};

pub use build::PolicyParts;
pub use scope::Selection;
pub use slices::{CheckedEntity, RequestSet, Settled, Slice, next_serial};

use super::diagnostics::{Location, Problem};
use super::sources::SourceDirs;
use crate::kept_metrics::kept_counter;

/// How many entities the per-entity slices a snapshot keeps may name in all (see
/// [`PolicySnapshot::entity_slice`]); a slice shares its entities with the cache of
/// built entities, so this bounds the entities kept alive by slices.
const SLICE_CACHE_WEIGHT: u64 = 8_192;

/// How many stored entities a snapshot keeps built as Cedar entities (see
/// [`PolicySnapshot::stored_entity`]): about 5 KiB each, so at most some 20 MiB, and
/// only as many as requests reach.
const BUILT_CACHE_CAPACITY: u64 = 4_096;
/// A request principal's cache key: the token's SHA-256, the directory entry's serial,
/// and the teams lost since the token was issued.
type PrincipalKey = ([u8; 32], u64, Box<[String]>);

/// A request entity set's cache key: the serials of the checked entities it was built
/// with, and its roots (see [`PolicySnapshot::request_entities`]). Compared whole;
/// hashed by its serials and its roots' ids (see [`hash_set_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestEntitiesKey {
    pub serials: Box<[u64]>,
    pub roots: Box<[EntityUid]>,
}

impl Hash for RequestEntitiesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_set_key(&self.serials, self.roots.iter(), state);
    }
}

/// What a request entity set's key hashes: its serials, and its roots' ids without their
/// types. SipHash over the uids' type names (basename and namespace) was most of a kept
/// set's lookup (bench/README.md, "The release profile"); keys are still compared whole,
/// so two roots that differ only by type share a hash, never an entry.
fn hash_set_key<'a, H: Hasher>(serials: &[u64], roots: impl ExactSizeIterator<Item = &'a EntityUid>, state: &mut H) {
    serials.hash(state);
    state.write_usize(roots.len());
    for root in roots {
        root.id().unescaped().hash(state);
    }
}

/// A decision's cache key: every input of a Cedar decision that is not the snapshot
/// itself. The request's entities are named by the key of their set (the serials of
/// the checked entities, and the roots: the principal's and the resource's uids); the
/// context by its serial (see [`crate::authz::TypedContext::serial`]); and the action.
/// Each serial names one immutable value, so two requests with one key are the same
/// question over the same entities and policies, and Cedar's answer is the same.
/// Compared whole; hashed as the set's key, the action's id and the context's serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionKey {
    pub entities: RequestEntitiesKey,
    pub action: EntityUid,
    pub context: u64,
}

impl Hash for DecisionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_set_key(&self.entities.serials, self.entities.roots.iter(), state);
        self.action.id().unescaped().hash(state);
        self.context.hash(state);
    }
}

/// A [`DecisionKey`] borrowed from the request, so that looking a decision up copies
/// nothing (see [`ContextLookup`]): the key's fields, hashed as the key hashes them.
#[derive(Debug)]
pub struct DecisionLookup<'a> {
    pub entities: (&'a [u64], &'a [&'a EntityUid]),
    pub action: &'a EntityUid,
    pub context: u64,
}

impl Hash for DecisionLookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_set_key(self.entities.0, self.entities.1.iter().copied(), state);
        self.action.id().unescaped().hash(state);
        self.context.hash(state);
    }
}

impl DecisionLookup<'_> {
    /// The key to keep a decision under.
    pub fn to_key(&self) -> DecisionKey {
        DecisionKey {
            entities: RequestEntitiesKey {
                serials: self.entities.0.into(),
                roots: self.entities.1.iter().copied().cloned().collect(),
            },
            action: self.action.clone(),
            context: self.context,
        }
    }
}

impl quick_cache::Equivalent<DecisionKey> for DecisionLookup<'_> {
    fn equivalent(&self, key: &DecisionKey) -> bool {
        *self.entities.0 == *key.entities.serials
            && self.entities.1.iter().copied().eq(key.entities.roots.iter())
            && *self.action == key.action
            && self.context == key.context
    }
}

/// A [`RequestEntitiesKey`] borrowed (see [`DecisionLookup`]).
pub(super) struct RequestSetLookup<'a>(pub &'a [u64], pub &'a [&'a EntityUid]);

impl Hash for RequestSetLookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_set_key(self.0, self.1.iter().copied(), state);
    }
}

impl quick_cache::Equivalent<RequestEntitiesKey> for RequestSetLookup<'_> {
    fn equivalent(&self, key: &RequestEntitiesKey) -> bool {
        *self.0 == *key.serials && self.1.iter().copied().eq(key.roots.iter())
    }
}

/// How many checked entities a request may bring and still be looked up without
/// copying: a request entity set with more is looked up with an owned key, and a
/// decision over more is not kept. The sidecar's questions bring one to three (the
/// token's principal, directory entities, a derived profile).
pub const LOOKUP_SERIALS: usize = 8;

/// How many decisions a snapshot keeps (each a few hundred bytes with its key).
const DECISION_CACHE_CAPACITY: u64 = 8_192;

/// How many entities the request entity sets a snapshot keeps may hold in all: at
/// 10 to 30 entities per set, some hundreds of sets (principal and resource pairs).
/// Each set holds copies of its entities (Cedar's `Entities` owns them), so this bounds
/// their memory too (some 20 MiB at most).
const REQUEST_SETS_WEIGHT: u64 = 4_096;

/// How many request principals (one per verified token) a snapshot keeps.
const PRINCIPAL_CACHE_CAPACITY: u64 = 10_000;

/// How a context attribute given as a string becomes a Cedar value, as the schema
/// declares it for an action (see [`PolicySnapshot::context_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContextValueKind {
    String,
    Ip,
    Datetime,
    Decimal,
    Duration,
    /// Anything else: the attribute goes through Cedar's schema-directed JSON parser.
    Other,
}

/// Identifies a snapshot: the digest of its inputs (the same on every sidecar that reads
/// the same files) and this process's generation counter (increases with every swap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotVersion {
    pub digest: String,
    pub generation: u64,
}

impl fmt::Display for SnapshotVersion {
    /// The first 12 hex digits of the digest: short enough for a log line, long enough
    /// to tell two policy sets apart.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.digest.get(..12).unwrap_or(&self.digest))
    }
}

/// Where a snapshot's policies came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotSource {
    /// `policies/` and `entities/` directories.
    Files(SourceDirs),
    /// An Amazon Verified Permissions policy store, with entities from a directory.
    VerifiedPermissions { policy_store_id: String, entities: PathBuf },
}

impl fmt::Display for SnapshotSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Files(dirs) => {
                write!(f, "files: policies `{}`, entities `{}`", dirs.policies.display(), dirs.entities.display())
            }
            Self::VerifiedPermissions { policy_store_id, entities } => {
                write!(f, "Verified Permissions policy store `{policy_store_id}`, entities `{}`", entities.display())
            }
        }
    }
}

/// Where a policy or entity was defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinedAt {
    pub file: PathBuf,
    pub location: Option<Location>,
}

impl fmt::Display for DefinedAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(loc) => write!(f, "{}:{}", self.file.display(), loc.line),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// One immutable, validated policy state.
pub struct PolicySnapshot {
    /// Unique among the snapshots this process builds (see [`Self::build_id`]).
    build_id: u64,
    version: SnapshotVersion,
    /// The version as decisions, logs and headers write it, shared with each of them.
    label: Arc<str>,
    source: SnapshotSource,
    policies: Arc<PolicySet>,
    /// The policies that can apply to each action of the schema, indexed by principal
    /// and resource scope. A policy whose action scope cannot match is never satisfied
    /// and never evaluated past its scope, so deciding over this subset gives exactly
    /// Cedar's answer over the whole set, in time proportional to the policies of that
    /// action only; and likewise for principal and resource scopes (see [`scope`]).
    by_action: HashMap<EntityUid, scope::ScopeIndex>,
    schema: Schema,
    /// The entity files' entities, held compactly (see [`store`]).
    store: store::EntityStore,
    /// Stored entities built as Cedar entities from their JSON, for the requests that
    /// reach them (see [`Self::stored_entity`]).
    built: Bounded<u32, Arc<Entity>>,
    policy_origins: HashMap<PolicyId, DefinedAt>,
    /// The entities written literally in policies (e.g. `Studio::Team::"admins"`) and
    /// everything reachable from them: every request slice includes them, since a policy
    /// may read their attributes. Fixed for the snapshot, so computed once.
    literal_slice: Slice,
    /// The schema's action entities (with their groups as parents), for request
    /// entities assembled without a second schema check.
    action_entities: Vec<Entity>,
    warnings: Vec<Problem>,
    /// The uids of each entity type, sorted by id; built on first use (see
    /// [`PolicySnapshot::entities_of_type`]).
    by_type: OnceLock<HashMap<EntityTypeName, Arc<[u32]>>>,
    /// Per-entity slice cache: uid → that entity and everything reachable from it.
    /// Bounded, weighed by the entities a slice names (see [`crate::cache`]).
    slices: Bounded<EntityUid, Arc<Slice>, slices::ByEntities>,
    /// Request principals by the SHA-256 of the token they were built from and the
    /// directory entry they were built on (0: none). A principal depends only on the
    /// token's claims, that entry and this snapshot, so it is built once per token and
    /// entry per snapshot; and by the teams that no longer count for the token (see
    /// [`crate::lifecycle::revocations`]), so a removal is never answered from a principal
    /// built before it.
    principals: Bounded<PrincipalKey, Arc<CheckedEntity>>,
    /// Request entity sets by the checked entities and roots they were built from (see
    /// [`PolicySnapshot::request_entities`]); weighed by the entities they hold.
    request_sets: Bounded<RequestEntitiesKey, Arc<RequestSet>, slices::ByEntities>,
    /// Entities derived for requests (Studio profiles), by uid and the serials of the
    /// directory entries they were derived from (see [`PolicySnapshot::derived_entity`]).
    derived: Bounded<(EntityUid, u64, u64), Arc<CheckedEntity>>,
    /// Learned per action and attribute name, from Cedar's own parse of the first
    /// context that had it (see [`PolicySnapshot::learn_context_kind`]). Attribute names
    /// come from the configuration, so this stays small.
    context_kinds: RwLock<HashMap<EntityUid, HashMap<String, ContextValueKind>>>,
    /// Typed context values by kind and string (see [`PolicySnapshot::context_value`]):
    /// making an extension value parses its constructor's name with Cedar's parser, which
    /// costs more than the rest of a context, and the same values recur (the current
    /// second, the addresses behind a NAT or endpoint). Bounded; it goes with the
    /// snapshot, so nothing of it outlives a reload.
    context_values: Bounded<(ContextValueKind, String), cedar_policy::RestrictedExpression>,
    /// Request shapes (principal type, action, resource type, context shape) that passed
    /// the schema check (see [`PolicySnapshot::request_shape_checked`]).
    checked_shapes: Bounded<RequestShape, ()>,
    /// Typed contexts by action and the strings they were built from (see
    /// [`PolicySnapshot::typed_context`]).
    typed_contexts: Bounded<TypedContextKey, crate::authz::TypedContext>,
    /// Decisions by every input but the snapshot (see [`DecisionKey`]).
    decisions: Bounded<DecisionKey, Arc<crate::authz::Decision>>,
}

/// An action and the strings of a context.
type TypedContextKey = (EntityUid, Box<[(String, String)]>);

/// A [`TypedContextKey`] borrowed from the request, so that looking a context up copies
/// nothing: it hashes as the key does (a reference hashes as what it points at, a boxed
/// slice as the slice) and is equivalent to the key with the same action and strings.
#[derive(Hash)]
struct ContextLookup<'a>(&'a EntityUid, &'a [(String, String)]);

impl quick_cache::Equivalent<TypedContextKey> for ContextLookup<'_> {
    fn equivalent(&self, key: &TypedContextKey) -> bool {
        *self.0 == key.0 && *self.1 == *key.1
    }
}

/// A request's types and its typed context's shape.
type RequestShape = (EntityTypeName, EntityUid, EntityTypeName, crate::authz::ContextShape);

/// A [`RequestShape`] borrowed from the request (see [`ContextLookup`]): a tuple of
/// references hashes as the tuple of what they point at, an `Arc<[T]>` as the slice.
#[derive(Hash)]
struct ShapeLookup<'a>(&'a EntityTypeName, &'a EntityUid, &'a EntityTypeName, &'a crate::authz::ContextShape);

impl quick_cache::Equivalent<RequestShape> for ShapeLookup<'_> {
    fn equivalent(&self, key: &RequestShape) -> bool {
        *self.0 == key.0 && *self.1 == key.1 && *self.2 == key.2 && *self.3 == key.3
    }
}

/// The stored entities of one type, sorted by id (see
/// [`PolicySnapshot::entities_of_type`]): their positions in the snapshot's store,
/// read as their uids.
#[derive(Clone)]
pub struct OfType<'a> {
    store: &'a store::EntityStore,
    indexes: Arc<[u32]>,
}

impl fmt::Debug for OfType<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> OfType<'a> {
    pub fn iter(&self) -> impl Iterator<Item = EntityUid> + '_ {
        self.indexes.iter().filter_map(|&index| self.store.uid(index))
    }

    pub fn len(&self) -> usize {
        self.indexes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indexes.is_empty()
    }
}

impl fmt::Debug for PolicySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySnapshot")
            .field("version", &self.version)
            .field("source", &self.source)
            .field("policies", &self.policy_count())
            .field("entities", &self.entity_count())
            .finish_non_exhaustive()
    }
}

impl PolicySnapshot {
    /// Identifies this snapshot among all this process builds, for caches kept beside
    /// it by its readers (two builds of the same inputs have the same version, not the
    /// same id).
    pub fn build_id(&self) -> u64 {
        self.build_id
    }

    pub fn version(&self) -> &SnapshotVersion {
        &self.version
    }

    /// The version written short (see [`SnapshotVersion`]'s `Display`), shared.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    pub fn source(&self) -> &SnapshotSource {
        &self.source
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The policies that can apply to `action` (all of them for an action the schema
    /// does not declare, which request validation rejects anyway).
    pub fn policies_for(&self, action: &EntityUid) -> impl Iterator<Item = &Policy> {
        let (indexed, all) = match self.by_action.get(action) {
            Some(index) => (Some(index.all(&self.policies)), None),
            None => (None, Some(self.policies.policies())),
        };
        indexed.into_iter().flatten().chain(all.into_iter().flatten())
    }

    /// The policies that can apply to a request by `principal` to do `action` on
    /// `resource`, evaluated over `entities` (whose ancestors decide `in` scopes): those
    /// whose principal, action and resource scopes all hold. Deciding over them gives
    /// exactly Cedar's answer over the whole set (see [`scope`]).
    pub fn policies_applying(
        &self,
        action: &EntityUid,
        principal: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> Arc<Selection> {
        match self.by_action.get(action) {
            Some(index) => index.select(&self.policies, principal, resource, entities),
            None => Arc::new(Selection::everything(self.policies.clone())),
        }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Whether the entity files define `uid`.
    pub fn holds(&self, uid: &EntityUid) -> bool {
        self.store.holds(uid)
    }

    /// The entity the entity files define as `uid`, as a Cedar entity (its parents as
    /// written; the hierarchy is closed over the entities of each request). Built from
    /// the JSON kept for it the first time a request reaches it, and kept (bounded).
    pub fn stored_entity(&self, uid: &EntityUid) -> Result<Option<Arc<Entity>>, Box<EntitiesError>> {
        match self.store.index_of(uid) {
            Some(index) => self.built_at(index),
            None => Ok(None),
        }
    }

    /// The entity the entity files define as `uid`, built and not kept: for a caller
    /// that reads many stored entities once each and keeps what it needs of them,
    /// without filling the cache of built entities.
    pub fn stored_entity_once(&self, uid: &EntityUid) -> Result<Option<Entity>, Box<EntitiesError>> {
        match self.store.json(uid) {
            Some(json) => Entity::from_json_str(&json, Some(&self.schema)).map(Some).map_err(Box::new),
            None => Ok(None),
        }
    }

    /// The stored entity at `index` of the store, built (see [`Self::stored_entity`]).
    fn built_at(&self, index: u32) -> Result<Option<Arc<Entity>>, Box<EntitiesError>> {
        if let Some(entity) = self.built.get(&index) {
            return Ok(Some(entity));
        }
        let Some(json) = self.store.json_at(index) else { return Ok(None) };
        // checked against this schema when the snapshot was built, so this only fails if
        // Cedar's parser does; then the request fails rather than go without the entity
        let entity = Arc::new(Entity::from_json_str(&json, Some(&self.schema)).map_err(Box::new)?);
        self.built.insert(index, entity.clone());
        Ok(Some(entity))
    }

    /// Whether the stored entity `uid` has `ancestor` among its ancestors, as the
    /// hierarchy of the entity files closes it.
    pub fn is_stored_ancestor(&self, ancestor: &EntityUid, uid: &EntityUid) -> bool {
        self.store.has_ancestor(uid, ancestor)
    }

    /// Whether the stored entity `uid` points at `target`: an ancestor, or a uid in an
    /// attribute or tag. Cheap, so a search over stored entities can rule most out
    /// before building any.
    pub fn stored_points_at(&self, uid: &EntityUid, target: &EntityUid) -> bool {
        self.store.points_at_uid(uid, target)
    }

    /// Every stored entity and the schema's action entities as one Cedar entity store.
    /// Builds every entity again: for tools and tests that compare with Cedar over the
    /// whole store, never for a request.
    pub fn all_entities(&self) -> Result<Entities, Box<EntitiesError>> {
        let mut all = Vec::with_capacity(self.store.len());
        for json in self.store.jsons() {
            all.push(Entity::from_json_str(&json, Some(&self.schema)).map_err(Box::new)?);
        }
        all.extend(self.action_entities.iter().cloned());
        Entities::from_entities(all, None).map_err(Box::new)
    }

    /// Warnings that did not stop the load (validator warnings, references to entities
    /// that no file defines).
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }

    /// Entities from the entity files (action entities from the schema not counted).
    pub fn entity_count(&self) -> usize {
        self.store.len()
    }

    /// Where a policy was defined, e.g. `policies/presign.cedar:14`.
    pub fn policy_origin(&self, id: &PolicyId) -> Option<&DefinedAt> {
        self.policy_origins.get(id)
    }

    /// Ids of every policy, sorted.
    pub fn policy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.policies.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        ids
    }

    /// The uids of every stored entity of `type_name`, sorted by id (e.g. the pool
    /// accounts a `listAuthorizedAccounts` answer walks). The index of all types is built
    /// in one pass the first time any type is asked for, and kept with the snapshot.
    pub fn entities_of_type(&self, type_name: &EntityTypeName) -> OfType<'_> {
        let index = self.by_type.get_or_init(|| {
            self.store.by_type().into_iter().map(|(type_name, indexes)| (type_name, indexes.into())).collect()
        });
        OfType { store: &self.store, indexes: index.get(type_name).cloned().unwrap_or_else(|| Arc::from([])) }
    }

    /// How `attr` of `action`'s context is built from a string, once learned.
    pub fn context_kind(&self, action: &EntityUid, attr: &str) -> Option<ContextValueKind> {
        let kinds = self.context_kinds.read().ok()?;
        kinds.get(action)?.get(attr).copied()
    }

    /// The typed context value of `kind` for `value`, made by `make` the first time.
    pub fn context_value(
        &self,
        kind: ContextValueKind,
        value: &str,
        make: impl FnOnce() -> cedar_policy::RestrictedExpression,
    ) -> cedar_policy::RestrictedExpression {
        let made: Result<_, std::convert::Infallible> =
            self.context_values.get_or_insert_with(&(kind, value.to_owned()), || Ok(make()));
        made.unwrap_or_else(|never| match never {})
    }

    /// Whether a request of these types with a typed context of `shape` passed the
    /// schema check in this snapshot: every such request has the same Cedar types (a
    /// shape names each attribute's kind, and each kind makes values of one type), so
    /// it passes too. Only shapes that passed are remembered; others are checked (and
    /// refused) every time.
    pub fn request_shape_checked(
        &self,
        principal: &EntityTypeName,
        action: &EntityUid,
        resource: &EntityTypeName,
        shape: &crate::authz::ContextShape,
    ) -> bool {
        self.checked_shapes.contains_key(&ShapeLookup(principal, action, resource, shape))
    }

    /// Remember that a request of these types and context shape passed the schema check.
    pub fn remember_request_shape(
        &self,
        principal: &EntityTypeName,
        action: &EntityUid,
        resource: &EntityTypeName,
        shape: &crate::authz::ContextShape,
    ) {
        self.checked_shapes.insert((principal.clone(), action.clone(), resource.clone(), shape.clone()), ());
    }

    /// The typed context built earlier from exactly these strings for `action`: a
    /// context is a pure function of its strings and the kinds this snapshot learned,
    /// and building one evaluates each extension constructor (`ip(..)`) again. The same
    /// strings recur: one client's address and endpoint within the same second.
    pub fn typed_context(&self, action: &EntityUid, pairs: &[(String, String)]) -> Option<crate::authz::TypedContext> {
        self.typed_contexts.get(&ContextLookup(action, pairs))
    }

    /// The decision made earlier in this snapshot for exactly this question (see
    /// [`DecisionKey`]): Cedar's evaluation is a pure function of the policies, the
    /// entities and the request, so it is made once per question and snapshot.
    pub fn known_decision(&self, key: &DecisionLookup<'_>) -> Option<Arc<crate::authz::Decision>> {
        let known = self.decisions.get(key);
        match known {
            Some(_) => kept_counter!("authz_decision_cache_total", "result" => "hit").increment(1),
            None => kept_counter!("authz_decision_cache_total", "result" => "miss").increment(1),
        }
        known
    }

    /// How many decisions this snapshot keeps (for tests and metrics).
    pub fn kept_decisions(&self) -> u64 {
        u64::try_from(self.decisions.len()).unwrap_or(u64::MAX)
    }

    /// Keep a decision made for `key` (see [`Self::known_decision`]).
    pub fn remember_decision(&self, key: DecisionKey, decision: Arc<crate::authz::Decision>) {
        self.decisions.insert(key, decision);
    }

    /// Keep a typed context built from `pairs` (see [`Self::typed_context`]).
    pub fn remember_typed_context(
        &self,
        action: &EntityUid,
        pairs: &[(String, String)],
        context: &crate::authz::TypedContext,
    ) {
        self.typed_contexts.insert((action.clone(), pairs.into()), context.clone());
    }

    /// Remember how `attr` of `action`'s context is built from a string.
    pub fn learn_context_kind(&self, action: &EntityUid, attr: &str, kind: ContextValueKind) {
        if let Ok(mut kinds) = self.context_kinds.write() {
            kinds.entry(action.clone()).or_default().insert(attr.to_owned(), kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;
    use std::str::FromStr;

    use super::*;

    fn uid(text: &str) -> EntityUid {
        EntityUid::from_str(text).unwrap()
    }

    /// A lookup borrowed from a request must land where its owned key was kept: same
    /// hash, and equivalent. Uids that differ only by type are different keys.
    #[test]
    fn borrowed_lookups_hash_as_their_keys_and_types_still_tell_keys_apart() {
        let hasher = std::collections::hash_map::RandomState::new();
        let (user, profile) = (uid(r#"Studio::User::"u-1""#), uid(r#"Studio::UserProfile::"u-1""#));
        let action = uid(r#"Studio::Action::"CreatePresignedDomainUrl""#);
        let serials = [7_u64, 9];
        let roots = [&user, &profile];

        let lookup = RequestSetLookup(&serials, &roots);
        let key = RequestEntitiesKey { serials: serials.into(), roots: owned_roots(&roots) };
        assert_eq!(hasher.hash_one(&lookup), hasher.hash_one(&key));
        assert!(quick_cache::Equivalent::equivalent(&lookup, &key));

        let decision = DecisionLookup { entities: (&serials, &roots), action: &action, context: 3 };
        let decision_key = decision.to_key();
        assert_eq!(hasher.hash_one(&decision), hasher.hash_one(&decision_key));
        assert!(quick_cache::Equivalent::equivalent(&decision, &decision_key));
        assert_eq!(decision_key.entities, key);

        // the same ids under other types: the same hash (types are not hashed), never equal
        let (team, other) = (uid(r#"Studio::Team::"u-1""#), uid(r#"Studio::User::"u-1""#));
        let swapped = [&team, &other];
        assert_eq!(hasher.hash_one(RequestSetLookup(&serials, &swapped)), hasher.hash_one(&key));
        assert!(!quick_cache::Equivalent::equivalent(&RequestSetLookup(&serials, &swapped), &key));
        let other_action = uid(r#"DataZone::Action::"CreatePresignedDomainUrl""#);
        let elsewhere = DecisionLookup { action: &other_action, ..decision };
        assert!(!quick_cache::Equivalent::equivalent(&elsewhere, &decision_key));
        // and what the hash does cover moves it
        let fewer = [&user];
        assert_ne!(hasher.hash_one(RequestSetLookup(&serials, &fewer)), hasher.hash_one(&key));
        assert_ne!(hasher.hash_one(RequestSetLookup(&serials[..1], &roots)), hasher.hash_one(&key));
    }

    fn owned_roots(roots: &[&EntityUid]) -> Box<[EntityUid]> {
        roots.iter().copied().cloned().collect()
    }
}
