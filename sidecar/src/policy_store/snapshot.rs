//! The immutable policy snapshot: policies, schema and entities that were validated
//! together, with a version and where they came from.
//!
//! A snapshot is built whole or not at all: any problem in any file fails the build and
//! the caller keeps whatever snapshot it had. Once built it never changes, so readers
//! share it through an `Arc` with no lock; a reload builds a new one and swaps it in
//! (see [`super::PolicyStore`]). Per-snapshot caches live inside the snapshot, so a new
//! snapshot starts with empty caches and can never serve a stale entity.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::SystemTime;

use cedar_policy::{
    ActionConstraint, Entities, Entity, EntityTypeName, EntityUid, EvalResult, Policy, PolicyId, PolicySet, Schema,
    SchemaFragment, ValidationMode, Validator,
};
use moka::sync::Cache;
use serde_json::value::RawValue;

use super::diagnostics::{LineIndex, LoadError, Location, Problem, describe};
use super::sources::{SourceDirs, SourceFile, Sources};
use super::statements::statement_starts;

/// How many per-entity slices a snapshot keeps (see [`PolicySnapshot::entity_slice`]).
const SLICE_CACHE_CAPACITY: u64 = 50_000;
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

/// A principal built for requests (from a verified token) and checked against the
/// schema, with the uids it points at, ready to be added to request entities.
#[derive(Debug)]
pub struct RequestPrincipal {
    uid: EntityUid,
    entity: Entity,
    references: Vec<EntityUid>,
}

impl RequestPrincipal {
    /// `entity` must already conform to the snapshot's schema (it is added to request
    /// entities without another check).
    pub fn new(entity: Entity) -> Self {
        Self { uid: entity.uid(), references: references(&entity, None), entity }
    }

    pub fn uid(&self) -> &EntityUid {
        &self.uid
    }

    pub fn entity(&self) -> &Entity {
        &self.entity
    }
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
    source: SnapshotSource,
    loaded_at: SystemTime,
    policies: PolicySet,
    /// The policies that can apply to each action of the schema. A policy whose action
    /// scope cannot match is never satisfied and never evaluated past its scope, so
    /// deciding over this subset gives exactly Cedar's answer over the whole set, in
    /// time proportional to the policies of that action only.
    by_action: HashMap<EntityUid, PolicySet>,
    schema: Schema,
    entities: Entities,
    policy_origins: HashMap<PolicyId, DefinedAt>,
    entity_origins: HashMap<EntityUid, DefinedAt>,
    /// The entities written literally in policies (e.g. `Studio::Team::"admins"`) and
    /// everything reachable from them: every request slice includes them, since a policy
    /// may read their attributes. Fixed for the snapshot, so computed once.
    literal_slice: Vec<Entity>,
    /// The schema's action entities (with their groups as parents), for request
    /// entities assembled without a second schema check.
    action_entities: Vec<Entity>,
    warnings: Vec<Problem>,
    /// The uids of each entity type, sorted by id; built on first use (see
    /// [`PolicySnapshot::entities_of_type`]).
    by_type: OnceLock<HashMap<EntityTypeName, Arc<[EntityUid]>>>,
    /// Per-entity slice cache: uid → that entity and everything reachable from it.
    /// moka because readers on every core hit it concurrently and it must stay bounded.
    slices: Cache<EntityUid, Arc<[Entity]>>,
    /// Request principals by the SHA-256 of the token they were built from. A principal
    /// depends only on the token's claims and this snapshot, so it is built once per
    /// token per snapshot.
    principals: Cache<[u8; 32], Arc<RequestPrincipal>>,
    /// Learned per action and attribute name, from Cedar's own parse of the first
    /// context that had it (see [`PolicySnapshot::learn_context_kind`]). Attribute names
    /// come from the configuration, so this stays small.
    context_kinds: RwLock<HashMap<EntityUid, HashMap<String, ContextValueKind>>>,
    /// Typed context values by kind and string (see [`PolicySnapshot::context_value`]):
    /// making an extension value parses its constructor's name with Cedar's parser, which
    /// costs more than the rest of a context, and the same values recur (the current
    /// second, the addresses behind a NAT or endpoint). Bounded; it goes with the
    /// snapshot, so nothing of it outlives a reload.
    context_values: Cache<(ContextValueKind, String), cedar_policy::RestrictedExpression>,
    /// Values derived from this snapshot by other modules, one per type, built on first
    /// use (see [`PolicySnapshot::derived`]).
    derived: RwLock<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
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
    /// Read and build a snapshot from two directories (blocking file I/O).
    pub fn load(dirs: &SourceDirs, generation: u64) -> Result<Self, LoadError> {
        let sources = Sources::read(dirs)?;
        Self::from_sources(&sources, SnapshotSource::Files(dirs.clone()), generation)
    }

    /// Build a snapshot from file texts already read: parse the schema, parse the
    /// policies and give them their `@id`s, validate them strictly against the schema,
    /// and parse the entities against the schema. Every problem is collected before
    /// failing, so one run lists them all.
    pub fn from_sources(sources: &Sources, source: SnapshotSource, generation: u64) -> Result<Self, LoadError> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();

        let schema = parse_schema(&sources.schemas, &mut problems, &mut warnings);
        let (policies, policy_origins) = parse_policies(&sources.policies, &mut problems);
        let (Some(schema), Some(policies)) = (schema, policies) else {
            return Err(LoadError::new(problems));
        };

        let parts = PolicyParts { schema, policies, policy_origins, policy_texts: &sources.policies };
        Self::assemble(parts, &sources.entities, &sources.digest, source, generation, problems, warnings)
    }

    /// Build a snapshot from a schema and policies that did not come from files (a
    /// Verified Permissions store), and entity files. The checks are those of
    /// [`Self::from_sources`]: strict validation, entities against the schema, all or
    /// nothing.
    pub fn from_parts(
        parts: PolicyParts<'_>,
        entities: &[SourceFile],
        digest: &str,
        source: SnapshotSource,
        generation: u64,
    ) -> Result<Self, LoadError> {
        Self::assemble(parts, entities, digest, source, generation, Vec::new(), Vec::new())
    }

    fn assemble(
        parts: PolicyParts<'_>,
        entity_files: &[SourceFile],
        digest: &str,
        source: SnapshotSource,
        generation: u64,
        mut problems: Vec<Problem>,
        mut warnings: Vec<Problem>,
    ) -> Result<Self, LoadError> {
        let PolicyParts { schema, policies, policy_origins, policy_texts } = parts;
        validate_policies(&schema, &policies, &policy_origins, policy_texts, &mut problems, &mut warnings);
        let entities = parse_entities(entity_files, &schema, &mut problems);
        let Some((entities, entity_origins)) = entities else {
            return Err(LoadError::new(problems));
        };
        if !problems.is_empty() {
            return Err(LoadError::new(problems));
        }
        warnings.extend(dangling_references(&entities, &entity_origins));

        let literals: HashSet<EntityUid> = policies.policies().flat_map(|p| p.entity_literals()).collect();
        let literal_slice = reachable_from(&entities, literals);
        let action_entities = entities.iter().filter(|e| is_action(&e.uid())).cloned().collect();

        let by_action = index_by_action(&policies, &schema, &entities);
        static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(Self {
            build_id: BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            version: SnapshotVersion { digest: digest.to_owned(), generation },
            source,
            loaded_at: SystemTime::now(),
            policies,
            by_action,
            schema,
            entities,
            policy_origins,
            entity_origins,
            literal_slice,
            action_entities,
            warnings,
            by_type: OnceLock::new(),
            slices: Cache::builder().max_capacity(SLICE_CACHE_CAPACITY).build(),
            principals: Cache::builder().max_capacity(PRINCIPAL_CACHE_CAPACITY).build(),
            context_kinds: RwLock::new(HashMap::new()),
            context_values: Cache::builder().max_capacity(10_000).build(),
            derived: RwLock::new(HashMap::new()),
        })
    }

    /// Identifies this snapshot among all this process builds, for caches kept beside
    /// it by its readers (two builds of the same inputs have the same version, not the
    /// same id).
    pub fn build_id(&self) -> u64 {
        self.build_id
    }

    pub fn version(&self) -> &SnapshotVersion {
        &self.version
    }

    pub fn source(&self) -> &SnapshotSource {
        &self.source
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The policies that can apply to `action` (all of them for an action the schema
    /// does not declare, which request validation rejects anyway).
    pub fn policies_for(&self, action: &EntityUid) -> &PolicySet {
        self.by_action.get(action).unwrap_or(&self.policies)
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn entities(&self) -> &Entities {
        &self.entities
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
        self.entity_origins.len()
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

    /// A stored entity and every stored entity reachable from it through parents,
    /// entity-valued attributes and tags (the entity itself first when it exists).
    /// Cached per snapshot.
    pub fn entity_slice(&self, uid: &EntityUid) -> Arc<[Entity]> {
        if let Some(slice) = self.slices.get(uid) {
            metrics::counter!("authz_entity_cache_total", "result" => "hit").increment(1);
            return slice;
        }
        metrics::counter!("authz_entity_cache_total", "result" => "miss").increment(1);
        self.slices.get_with_by_ref(uid, || reachable_from(&self.entities, [uid.clone()]).into())
    }

    /// The uids of every stored entity of `type_name`, sorted by id (e.g. the pool
    /// accounts a `listAuthorizedAccounts` answer walks). The index of all types is built
    /// in one pass the first time any type is asked for, and kept with the snapshot.
    pub fn entities_of_type(&self, type_name: &EntityTypeName) -> Arc<[EntityUid]> {
        let index = self.by_type.get_or_init(|| {
            let mut by_type: HashMap<EntityTypeName, Vec<EntityUid>> = HashMap::new();
            for entity in self.entities.iter() {
                let uid = entity.uid();
                by_type.entry(uid.type_name().clone()).or_default().push(uid);
            }
            by_type
                .into_iter()
                .map(|(type_name, mut uids)| {
                    uids.sort_by(|a, b| a.id().unescaped().cmp(b.id().unescaped()));
                    (type_name, uids.into())
                })
                .collect()
        });
        index.get(type_name).cloned().unwrap_or_else(|| Arc::from([]))
    }

    /// How many entity slices this snapshot has cached (for metrics).
    pub fn cached_slices(&self) -> u64 {
        // moka counts lazily; settle its pending bookkeeping first
        self.slices.run_pending_tasks();
        self.slices.entry_count()
    }

    /// The entities of one request, when it brings entities of its own: `principal`
    /// (built from a token, already checked against the schema) and `extra` (a caller's,
    /// checked here). The result holds the slices of every uid in `roots` (the principal,
    /// the resource, entity uids in the context) and of every uid the brought entities
    /// point at, the policies' literal entities, the schema's action entities, and the
    /// brought entities, which replace stored entities of the same uid. Stored entities
    /// were checked when the snapshot was built, so they are not checked again.
    ///
    /// This is complete for evaluation: a policy can only reach an entity from the
    /// principal, action, resource, context or a literal in a policy, by following
    /// parents, attributes and tags, and every such path is in the slices.
    ///
    /// Brought entities are meant to be leaves of the hierarchy (a principal). Stored
    /// entities keep the ancestors the snapshot computed for them, so replacing an entity
    /// that stored entities descend from changes its own ancestors, not theirs.
    pub fn request_entities(
        &self,
        principal: Option<&RequestPrincipal>,
        roots: &[EntityUid],
        extra: &[Entity],
    ) -> Result<Entities, Box<cedar_policy::entities_errors::EntitiesError>> {
        if !extra.is_empty() {
            Entities::from_entities(extra.iter().cloned(), Some(&self.schema)).map_err(Box::new)?;
        }
        let brought: Vec<&Entity> = principal.map(|p| &p.entity).into_iter().chain(extra).collect();
        let replaced: HashSet<EntityUid> = brought.iter().map(|e| e.uid()).collect();
        let mut chosen: HashMap<EntityUid, Entity> = HashMap::with_capacity(32);
        let mut choose = |entity: &Entity| {
            let uid = entity.uid();
            if !replaced.contains(&uid) {
                chosen.entry(uid).or_insert_with(|| entity.clone());
            }
        };
        let principal_refs = principal.into_iter().flat_map(|p| p.references.iter().cloned());
        let extra_refs = extra.iter().flat_map(|e| references(e, None));
        for root in roots.iter().cloned().chain(principal_refs).chain(extra_refs) {
            if !is_action(&root) {
                self.entity_slice(&root).iter().for_each(&mut choose);
            }
        }
        self.literal_slice.iter().for_each(choose);
        let all = chosen
            .into_values()
            .chain(brought.into_iter().cloned())
            .chain(self.action_entities.iter().filter(|e| !replaced.contains(&e.uid())).cloned());
        Entities::from_entities(all, None).map_err(Box::new)
    }
}

impl PolicySnapshot {
    /// The principal of the token with SHA-256 `token_digest`, built by `build` the first
    /// time this snapshot sees that token. Failures are not kept.
    pub fn request_principal<E>(
        &self,
        token_digest: [u8; 32],
        build: impl FnOnce() -> Result<Entity, E>,
    ) -> Result<Arc<RequestPrincipal>, E> {
        if let Some(principal) = self.principals.get(&token_digest) {
            return Ok(principal);
        }
        let principal = Arc::new(RequestPrincipal::new(build()?));
        self.principals.insert(token_digest, principal.clone());
        Ok(principal)
    }

    /// How `attr` of `action`'s context is built from a string, once learned.
    pub fn context_kind(&self, action: &EntityUid, attr: &str) -> Option<ContextValueKind> {
        let kinds = self.context_kinds.read().ok()?;
        kinds.get(action)?.get(attr).copied()
    }

    /// The value of type `T` derived from this snapshot: built by `build` the first time
    /// it is asked for, then kept (and dropped) with the snapshot. For indexes that only
    /// one caller needs (e.g. the account pool's), so this module need not know them.
    /// Two first callers at once may both build; the first to finish is kept.
    pub fn derived<T: Any + Send + Sync>(&self, build: impl FnOnce(&Self) -> T) -> Arc<T> {
        let key = TypeId::of::<T>();
        let stored = |map: &HashMap<TypeId, Arc<dyn Any + Send + Sync>>| {
            map.get(&key).and_then(|value| Arc::clone(value).downcast::<T>().ok())
        };
        if let Some(value) = self.derived.read().ok().and_then(|map| stored(&map)) {
            return value;
        }
        let built = Arc::new(build(self));
        match self.derived.write() {
            Ok(mut map) => {
                let kept = map.entry(key).or_insert_with(|| Arc::clone(&built) as Arc<dyn Any + Send + Sync>);
                Arc::clone(kept).downcast::<T>().unwrap_or(built)
            }
            Err(_) => built,
        }
    }

    /// Remember how `attr` of `action`'s context is built from a string.
    /// The typed context value of `kind` for `value`, made by `make` the first time.
    pub fn context_value(
        &self,
        kind: ContextValueKind,
        value: &str,
        make: impl FnOnce() -> cedar_policy::RestrictedExpression,
    ) -> cedar_policy::RestrictedExpression {
        self.context_values.get_with((kind, value.to_owned()), make)
    }

    pub fn learn_context_kind(&self, action: &EntityUid, attr: &str, kind: ContextValueKind) {
        if let Ok(mut kinds) = self.context_kinds.write() {
            kinds.entry(action.clone()).or_default().insert(attr.to_owned(), kind);
        }
    }
}

/// A schema and policies ready to be assembled with entities into a snapshot.
#[derive(Debug)]
pub struct PolicyParts<'a> {
    pub schema: Schema,
    pub policies: PolicySet,
    /// Where each policy came from (a file, or a pseudo-path naming a store's policy).
    pub policy_origins: HashMap<PolicyId, DefinedAt>,
    /// Texts that origins point into, so validation errors can quote lines. A policy
    /// whose origin names no text here is still reported, without a line.
    pub policy_texts: &'a [SourceFile],
}

/// Every stored entity reachable from `roots` through ancestors, entity-valued
/// attributes and tags (roots included when they exist). Action entities excluded.
fn reachable_from(entities: &Entities, roots: impl IntoIterator<Item = EntityUid>) -> Vec<Entity> {
    let mut seen = HashSet::new();
    let mut stack: Vec<EntityUid> = roots.into_iter().collect();
    let mut found = Vec::new();
    while let Some(uid) = stack.pop() {
        if is_action(&uid) || !seen.insert(uid.clone()) {
            continue;
        }
        let Some(entity) = entities.get(&uid) else { continue };
        stack.extend(references(entity, Some(entities)));
        found.push(entity.clone());
    }
    found
}

/// Uids an entity points at: its ancestors (all of them, from `store`, which has
/// computed the hierarchy; for an entity of a caller's, not in any store, its direct
/// parents) and every entity uid inside its attributes and tags.
fn references(entity: &Entity, store: Option<&Entities>) -> Vec<EntityUid> {
    let uid = entity.uid();
    let mut out: Vec<EntityUid> = match store.and_then(|s| s.ancestors(&uid)) {
        Some(ancestors) => ancestors.cloned().collect(),
        None => Vec::new(),
    };
    if store.is_none()
        && let Ok(serde_json::Value::Object(json)) = entity.to_json_value()
        && let Some(serde_json::Value::Array(parents)) = json.get("parents")
    {
        // an entity of the caller's, not in the store: its parents are in its JSON form
        out.extend(parents.iter().filter_map(|p| EntityUid::from_json(p.clone()).ok()));
    }
    let attrs = entity.attrs().filter_map(|(_, v)| v.ok());
    let tags = entity.tags().filter_map(|(_, v)| v.ok());
    for value in attrs.chain(tags) {
        collect_uids(&value, &mut out);
    }
    out
}

fn collect_uids(value: &EvalResult, out: &mut Vec<EntityUid>) {
    match value {
        EvalResult::EntityUid(uid) => out.push(uid.clone()),
        EvalResult::Set(set) => set.iter().for_each(|v| collect_uids(v, out)),
        EvalResult::Record(record) => record.iter().for_each(|(_, v)| collect_uids(v, out)),
        EvalResult::Bool(_) | EvalResult::Long(_) | EvalResult::String(_) | EvalResult::ExtensionValue(_) => {}
    }
}

fn index_by_action(policies: &PolicySet, schema: &Schema, entities: &Entities) -> HashMap<EntityUid, PolicySet> {
    let mut index = HashMap::new();
    for action in schema.actions() {
        let in_group = |group: &EntityUid| {
            group == action || entities.ancestors(action).is_some_and(|mut a| a.any(|g| g == group))
        };
        let applies = |p: &&Policy| match p.action_constraint() {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(a) => a == *action,
            ActionConstraint::In(groups) => groups.iter().any(in_group),
        };
        let subset = PolicySet::from_policies(policies.policies().filter(applies).cloned());
        // ids are unique in `policies`, so a subset cannot fail; keep the whole set if it did
        index.insert(action.clone(), subset.unwrap_or_else(|_| policies.clone()));
    }
    index
}

/// Action entities come from the schema, never from slices.
pub(crate) fn is_action(uid: &EntityUid) -> bool {
    uid.type_name().basename() == "Action"
}

fn parse_schema(files: &[SourceFile], problems: &mut Vec<Problem>, warnings: &mut Vec<Problem>) -> Option<Schema> {
    let mut fragments = Vec::new();
    for file in files {
        match SchemaFragment::from_cedarschema_str(&file.text) {
            Ok((fragment, found)) => {
                fragments.push(fragment);
                for w in found {
                    warnings.extend(Problem::from_diagnostic(&file.path, &file.text, &w));
                }
            }
            Err(e) => problems.extend(Problem::from_diagnostic(&file.path, &file.text, &e)),
        }
    }
    if fragments.len() != files.len() {
        return None;
    }
    match Schema::from_schema_fragments(fragments) {
        Ok(schema) => Some(schema),
        Err(e) => {
            // Errors across fragments have no single source; with one file its spans
            // point into it.
            match files {
                [only] => problems.extend(Problem::from_diagnostic(&only.path, &only.text, &e)),
                _ => {
                    let names: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
                    problems.push(Problem::new(names.join(", "), None, describe(&e, None)));
                }
            }
            None
        }
    }
}

fn parse_policies(
    files: &[SourceFile],
    problems: &mut Vec<Problem>,
) -> (Option<PolicySet>, HashMap<PolicyId, DefinedAt>) {
    let mut origins: HashMap<PolicyId, DefinedAt> = HashMap::new();
    let mut policies = Vec::new();
    let mut failed = false;
    for file in files {
        let parsed = match PolicySet::from_str(&file.text) {
            Ok(parsed) => parsed,
            Err(e) => {
                problems.extend(Problem::from_diagnostic(&file.path, &file.text, &e));
                failed = true;
                continue;
            }
        };
        let starts = statement_starts(&file.text);
        let lines = LineIndex::new(&file.text);
        let origin_of = |auto_id: &PolicyId| DefinedAt {
            file: file.path.clone(),
            location: auto_id
                .to_string()
                .strip_prefix("policy")
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| starts.get(n))
                .map(|&offset| lines.locate(offset)),
        };
        for template in parsed.templates() {
            let origin = origin_of(template.id());
            problems.push(Problem::new(
                origin.file,
                origin.location,
                "policy templates (policies with `?principal` or `?resource` slots) cannot be linked from files; \
                 write a static policy, or keep templates in a Verified Permissions policy store",
            ));
            failed = true;
        }
        for policy in parsed.policies() {
            let origin = origin_of(policy.id());
            let Some(id) = policy.annotation("id").map(str::trim).filter(|id| !id.is_empty()) else {
                problems.push(Problem::new(
                    origin.file,
                    origin.location,
                    "policy has no `@id(\"...\")` annotation; every policy needs a unique id so decisions can name it",
                ));
                failed = true;
                continue;
            };
            let id = PolicyId::new(id);
            if let Some(first) = origins.get(&id) {
                problems.push(Problem::new(
                    origin.file.clone(),
                    origin.location,
                    format!("duplicate policy id `{id}`: it is already used by the policy at {first}"),
                ));
                failed = true;
                continue;
            }
            policies.push(policy.new_id(id.clone()));
            origins.insert(id, origin);
        }
    }
    if failed {
        return (None, origins);
    }
    match PolicySet::from_policies(policies) {
        Ok(set) => (Some(set), origins),
        Err(e) => {
            let dir = files.first().and_then(|f| f.path.parent()).map(PathBuf::from).unwrap_or_default();
            problems.push(Problem::new(dir, None, describe(&e, None)));
            (None, origins)
        }
    }
}

fn validate_policies(
    schema: &Schema,
    policies: &PolicySet,
    origins: &HashMap<PolicyId, DefinedAt>,
    files: &[SourceFile],
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) {
    let result = Validator::new(schema.clone()).validate(policies, ValidationMode::Strict);
    let text_of = |id: &PolicyId| {
        let origin = origins.get(id)?;
        let file = files.iter().find(|f| f.path == origin.file)?;
        Some((file.path.clone(), file.text.as_str()))
    };
    for error in result.validation_errors() {
        match text_of(error.policy_id()) {
            Some((path, text)) => problems.extend(Problem::from_diagnostic(&path, text, error)),
            // never drop an error for want of a text to point into
            None => problems.push(Problem::new(
                origins.get(error.policy_id()).map(|o| o.file.clone()).unwrap_or_default(),
                None,
                format!("policy `{}`: {}", error.policy_id(), describe(error, None)),
            )),
        }
    }
    for warning in result.validation_warnings() {
        if let Some((path, text)) = text_of(warning.policy_id()) {
            warnings.extend(Problem::from_diagnostic(&path, text, warning));
        }
    }
}

type ParsedEntities = (Entities, HashMap<EntityUid, DefinedAt>);

fn parse_entities(files: &[SourceFile], schema: &Schema, problems: &mut Vec<Problem>) -> Option<ParsedEntities> {
    let before = problems.len();
    let mut origins: HashMap<EntityUid, DefinedAt> = HashMap::new();
    let mut all = Vec::new();
    for file in files {
        let items: Vec<&RawValue> = match serde_json::from_str(&file.text) {
            Ok(items) => items,
            Err(e) => {
                let location = Location { line: e.line(), column: e.column() };
                problems.push(Problem::new(
                    &file.path,
                    Some(location).filter(|l| l.line > 0),
                    format!("expected a JSON array of Cedar entities: {e}"),
                ));
                continue;
            }
        };
        let lines = LineIndex::new(&file.text);
        for item in items {
            let offset = (item.get().as_ptr() as usize).saturating_sub(file.text.as_ptr() as usize);
            let origin = DefinedAt { file: file.path.clone(), location: Some(lines.locate(offset)) };
            match Entity::from_json_str(item.get(), Some(schema)) {
                Ok(entity) => {
                    let uid = entity.uid();
                    if let Some(first) = origins.get(&uid) {
                        problems.push(Problem::new(
                            origin.file,
                            origin.location,
                            format!("duplicate entity `{uid}`: it is already defined at {first}"),
                        ));
                        continue;
                    }
                    origins.insert(uid, origin);
                    all.push(entity);
                }
                Err(e) => problems.push(Problem::new(origin.file, origin.location, describe(&e, None))),
            }
        }
    }
    if problems.len() > before {
        return None;
    }
    // Each entity was checked against the schema as it was parsed; what is left is to
    // add the schema's action entities and compute the hierarchy.
    let actions = match schema.action_entities() {
        Ok(actions) => actions,
        Err(e) => {
            let dir = files.first().and_then(|f| f.path.parent()).map(PathBuf::from).unwrap_or_default();
            problems.push(Problem::new(dir, None, describe(&e, None)));
            return None;
        }
    };
    match Entities::from_entities(all.into_iter().chain(actions.iter().cloned()), None) {
        Ok(entities) => Some((entities, origins)),
        Err(e) => {
            let dir = files.first().and_then(|f| f.path.parent()).map(PathBuf::from).unwrap_or_default();
            problems.push(Problem::new(dir, None, describe(&e, None)));
            None
        }
    }
}

/// References to entities no file defines. Cedar allows them (an `in` test against a
/// missing entity is simply false), but in a hand-written entity file they are nearly
/// always a typo, so they are reported.
fn dangling_references(entities: &Entities, origins: &HashMap<EntityUid, DefinedAt>) -> Vec<Problem> {
    let mut warnings = Vec::new();
    for entity in entities.iter() {
        let uid = entity.uid();
        let Some(origin) = origins.get(&uid) else {
            continue;
        };
        let mut missing: Vec<String> = references(entity, Some(entities))
            .into_iter()
            .filter(|r| !is_action(r) && entities.get(r).is_none())
            .map(|r| format!("`{r}`"))
            .collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            warnings.push(Problem::new(
                origin.file.clone(),
                origin.location,
                format!("entity `{uid}` refers to {}, which no entity file defines", missing.join(", ")),
            ));
        }
    }
    warnings
}
