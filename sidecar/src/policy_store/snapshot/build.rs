//! Building a snapshot: parse the schema and the policies (giving each its `@id`),
//! validate the policies strictly against the schema, parse the entities against it,
//! and index the policies by action. Every problem is collected before failing, so one
//! run lists them all.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, OnceLock, RwLock};

use super::slices::ByEntities;
use crate::cache::{bounded, weighed};
use cedar_policy::{
    ActionConstraint, Entities, EntityUid, Policy, PolicyId, PolicySet, Schema, SchemaFragment, ValidationMode,
    Validator,
};

use super::scope::ScopeIndex;
use super::store::EntityStore;
use super::{
    BUILT_CACHE_CAPACITY, DefinedAt, PRINCIPAL_CACHE_CAPACITY, PolicySnapshot, REQUEST_SETS_WEIGHT, SLICE_CACHE_WEIGHT,
    Slice, SnapshotSource, SnapshotVersion,
};
use crate::policy_store::diagnostics::{LineIndex, LoadError, Problem, describe};
use crate::policy_store::sources::{SourceDirs, SourceFile, Sources};
use crate::policy_store::statements::statement_starts;

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
        let (policies, policy_origins, statement_offsets) = parse_policies(&sources.policies, &mut problems);
        let (Some(schema), Some(policies)) = (schema, policies) else {
            return Err(LoadError::new(problems));
        };

        let parts =
            PolicyParts { schema, policies, policy_origins, statement_offsets, policy_texts: &sources.policies };
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
        let PolicyParts { schema, policies, policy_origins, statement_offsets, policy_texts } = parts;
        let origins = (&policy_origins, &statement_offsets);
        validate_policies(&schema, &policies, origins, policy_texts, &mut problems, &mut warnings);
        let store = EntityStore::build(entity_files, &schema, &mut problems);
        let actions = action_entities(&schema, entity_files, &mut problems);
        let (Some(store), Some(actions)) = (store, actions) else {
            return Err(LoadError::new(problems));
        };
        if !problems.is_empty() {
            return Err(LoadError::new(problems));
        }
        warnings.extend(store.dangling_warnings());

        let literals: HashSet<EntityUid> = policies.policies().flat_map(|p| p.entity_literals()).collect();
        let action_entities = actions.iter().cloned().collect();

        let by_action = index_by_action(&policies, &schema, &actions);
        static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let version = SnapshotVersion { digest: digest.to_owned(), generation };
        let mut snapshot = Self {
            build_id: BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            label: version.to_string().into(),
            version,
            source,
            policies: Arc::new(policies),
            by_action,
            schema,
            store,
            built: bounded(BUILT_CACHE_CAPACITY),
            policy_origins,
            literal_slice: Slice::default(),
            action_entities,
            warnings,
            by_type: OnceLock::new(),
            // slices name a few entities each, request sets 10 to 30
            slices: weighed(SLICE_CACHE_WEIGHT / 4, SLICE_CACHE_WEIGHT, ByEntities),
            principals: bounded(PRINCIPAL_CACHE_CAPACITY),
            derived: bounded(PRINCIPAL_CACHE_CAPACITY),
            request_sets: weighed(REQUEST_SETS_WEIGHT / 16, REQUEST_SETS_WEIGHT, ByEntities),
            context_kinds: RwLock::new(HashMap::new()),
            context_values: bounded(10_000),
            checked_shapes: bounded(1_024),
            typed_contexts: bounded(10_000),
            decisions: bounded(super::DECISION_CACHE_CAPACITY),
        };
        // every request's entities include the policies' literal entities and what they
        // reach, so those are built now, once
        snapshot.literal_slice = snapshot.reachable_from(literals).map_err(|e| {
            let dir = entity_files.first().and_then(|f| f.path.parent()).map(PathBuf::from).unwrap_or_default();
            LoadError::new(vec![Problem::new(dir, None, describe(&*e, None))])
        })?;
        Ok(snapshot)
    }
}

/// A schema and policies ready to be assembled with entities into a snapshot.
#[derive(Debug)]
pub struct PolicyParts<'a> {
    pub schema: Schema,
    pub policies: PolicySet,
    /// Where each policy came from (a file, or a pseudo-path naming a store's policy).
    pub policy_origins: HashMap<PolicyId, DefinedAt>,
    /// For each policy parsed on its own from a statement of a text, the byte offset of
    /// that statement in the text (its spans count from there); none: from the start.
    pub statement_offsets: HashMap<PolicyId, usize>,
    /// Texts that origins point into, so validation errors can quote lines. A policy
    /// whose origin names no text here is still reported, without a line.
    pub policy_texts: &'a [SourceFile],
}

fn index_by_action(policies: &PolicySet, schema: &Schema, entities: &Entities) -> HashMap<EntityUid, ScopeIndex> {
    let mut index = HashMap::new();
    for (slot, action) in schema.actions().enumerate() {
        let in_group = |group: &EntityUid| {
            group == action || entities.ancestors(action).is_some_and(|mut a| a.any(|g| g == group))
        };
        let applies = |p: &&Policy| match p.action_constraint() {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(a) => a == *action,
            ActionConstraint::In(groups) => groups.iter().any(in_group),
        };
        index.insert(action.clone(), ScopeIndex::new(slot, policies.policies().filter(applies)));
    }
    index
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

const TEMPLATES_IN_FILES: &str = "policy templates (policies with `?principal` or `?resource` slots) cannot be \
     linked from files; write a static policy, or keep templates in a Verified Permissions policy store";
const NO_ID: &str = "policy has no `@id(\"...\")` annotation; every policy needs a unique id so decisions can name it";

/// Policies parsed from files: the set, where each policy was defined, and for each
/// policy parsed on its own, the byte offset of its statement in its file (its spans
/// count from there).
type ParsedPolicies = (Option<PolicySet>, HashMap<PolicyId, DefinedAt>, HashMap<PolicyId, usize>);

fn parse_policies(files: &[SourceFile], problems: &mut Vec<Problem>) -> ParsedPolicies {
    let mut origins: HashMap<PolicyId, DefinedAt> = HashMap::new();
    let mut offsets: HashMap<PolicyId, usize> = HashMap::new();
    let mut policies = Vec::new();
    let mut failed = false;
    for file in files {
        let starts = statement_starts(&file.text);
        // One statement at a time: Cedar's parse of a whole file holds the parse tree of
        // every policy at once (some 20 MiB for a thousand policies, all of it peak
        // memory the process keeps), one statement's is a few KiB. A file that does not
        // split into statements that parse alone (a syntax error) is parsed whole, so
        // its errors are Cedar's own.
        let pieces = match by_statement(&file.text, &starts) {
            Some(pieces) => pieces,
            None => match PolicySet::from_str(&file.text) {
                Ok(parsed) => vec![(parsed, 0, None)],
                Err(e) => {
                    problems.extend(Problem::from_diagnostic(&file.path, &file.text, &e));
                    failed = true;
                    continue;
                }
            },
        };
        let lines = LineIndex::new(&file.text);
        for (parsed, first, offset) in pieces {
            let origin_of = |auto_id: &PolicyId| DefinedAt {
                file: file.path.clone(),
                location: auto_id
                    .to_string()
                    .strip_prefix("policy")
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| starts.get(first + n))
                    .map(|&offset| lines.locate(offset)),
            };
            for template in parsed.templates() {
                let origin = origin_of(template.id());
                problems.push(Problem::new(origin.file, origin.location, TEMPLATES_IN_FILES));
                failed = true;
            }
            for policy in parsed.policies() {
                let origin = origin_of(policy.id());
                let Some(id) = policy.annotation("id").map(str::trim).filter(|id| !id.is_empty()) else {
                    problems.push(Problem::new(origin.file, origin.location, NO_ID));
                    failed = true;
                    continue;
                };
                let id = PolicyId::new(id);
                if let Some(earlier) = origins.get(&id) {
                    problems.push(Problem::new(
                        origin.file.clone(),
                        origin.location,
                        format!("duplicate policy id `{id}`: it is already used by the policy at {earlier}"),
                    ));
                    failed = true;
                    continue;
                }
                policies.push(policy.new_id(id.clone()));
                if let Some(offset) = offset {
                    offsets.insert(id.clone(), offset);
                }
                origins.insert(id, origin);
            }
        }
    }
    if failed {
        return (None, origins, offsets);
    }
    match PolicySet::from_policies(policies) {
        Ok(set) => (Some(set), origins, offsets),
        Err(e) => {
            let dir = files.first().and_then(|f| f.path.parent()).map(PathBuf::from).unwrap_or_default();
            problems.push(Problem::new(dir, None, describe(&e, None)));
            (None, origins, offsets)
        }
    }
}

/// Each statement of `text` (starting at `starts`) parsed on its own, with its number
/// and offset; `None` unless every statement parses alone into exactly one policy or
/// template, so that the pieces are exactly what a parse of the whole file gives.
fn by_statement(text: &str, starts: &[usize]) -> Option<Vec<(PolicySet, usize, Option<usize>)>> {
    let mut pieces = Vec::with_capacity(starts.len());
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        let piece = PolicySet::from_str(text.get(start..end)?).ok()?;
        if piece.policies().count() + piece.templates().count() != 1 {
            return None;
        }
        pieces.push((piece, i, Some(start)));
    }
    Some(pieces)
}

fn validate_policies(
    schema: &Schema,
    policies: &PolicySet,
    (origins, offsets): (&HashMap<PolicyId, DefinedAt>, &HashMap<PolicyId, usize>),
    files: &[SourceFile],
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) {
    let result = Validator::new(schema.clone()).validate(policies, ValidationMode::Strict);
    let text_of = |id: &PolicyId| {
        let origin = origins.get(id)?;
        let file = files.iter().find(|f| f.path == origin.file)?;
        Some((file.path.clone(), file.text.as_str(), offsets.get(id).copied().unwrap_or(0)))
    };
    for error in result.validation_errors() {
        match text_of(error.policy_id()) {
            Some((path, text, base)) => problems.extend(Problem::from_diagnostic_at(&path, text, base, error)),
            // never drop an error for want of a text to point into
            None => problems.push(Problem::new(
                origins.get(error.policy_id()).map(|o| o.file.clone()).unwrap_or_default(),
                None,
                format!("policy `{}`: {}", error.policy_id(), describe(error, None)),
            )),
        }
    }
    for warning in result.validation_warnings() {
        if let Some((path, text, base)) = text_of(warning.policy_id()) {
            warnings.extend(Problem::from_diagnostic_at(&path, text, base, warning));
        }
    }
}

/// The schema's action entities, with their hierarchy.
fn action_entities(schema: &Schema, files: &[SourceFile], problems: &mut Vec<Problem>) -> Option<Entities> {
    let problem = |e: &dyn miette::Diagnostic| {
        let dir = files.first().and_then(|f| f.path.parent()).map(PathBuf::from).unwrap_or_default();
        Problem::new(dir, None, describe(e, None))
    };
    schema.action_entities().map_err(|e| problems.push(problem(&e))).ok()
}
