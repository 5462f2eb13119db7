//! The entity files' entities, held compactly.
//!
//! A Cedar `Entity` costs about 5 KiB however small it is (two B-trees of attributes
//! and tags, two hash sets of ancestors), so 10,000 of them held whole were most of the
//! sidecar's memory. Here each entity is kept as the JSON it was written in, checked
//! against the schema once when the snapshot was built, with the uids it points at
//! (every ancestor, and every entity uid in its attributes and tags) as indexes. Cedar
//! entities are built again from that JSON only for the entities requests reach (see
//! [`super::PolicySnapshot::stored_entity`]), and kept, bounded, with the snapshot.
//!
//! The hierarchy is closed here, as Cedar closes it (`Entities::from_entities`), and a
//! cycle fails the build as it does in Cedar.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use cedar_policy::{Entity, EntityTypeName, EntityUid, EvalResult};
use indexmap::IndexMap;
use serde_json::value::RawValue;

use super::DefinedAt;
use crate::policy_store::diagnostics::{LineIndex, Location, Problem, describe};
use crate::policy_store::sources::SourceFile;

/// Every stored entity, and every uid a stored entity points at that none is.
#[derive(Debug, Default)]
pub(super) struct EntityStore {
    /// Keyed by uid; the index of a uid here names it in [`Stored::links`]. `None`: a
    /// uid a stored entity points at that no file defines.
    nodes: IndexMap<EntityUid, Option<Stored>>,
    /// Every stored entity's JSON, one after another (see [`Stored::json`]): one
    /// allocation instead of one an entity.
    json: String,
    /// The files entities came from, named by index in [`Stored::file`].
    files: Vec<PathBuf>,
    stored: usize,
    /// One copy of each entity type's name, which every stored uid of the type shares:
    /// Cedar's parse gives each uid a type name of its own (two allocations, about 80
    /// bytes an entity).
    types: HashSet<EntityTypeName>,
}

/// 40 bytes an entity, besides its JSON and its links.
#[derive(Debug)]
struct Stored {
    /// Where in the store's JSON the entity is (start and length): as written in its
    /// file without the whitespace between tokens, checked against the schema at build.
    json: (u32, u32),
    /// Every ancestor (transitively), sorted; then every uid it points at (the
    /// ancestors again, and every uid in the attributes and tags), sorted, without
    /// repeats, action uids included (they are not stored here).
    links: Box<[u32]>,
    /// How many of `links` are ancestors.
    ancestors: u32,
    file: u32,
    line: u32,
    column: u32,
}

impl Stored {
    fn ancestors(&self) -> &[u32] {
        self.links.get(..self.ancestors as usize).unwrap_or_default()
    }

    fn points_at(&self) -> &[u32] {
        self.links.get(self.ancestors as usize..).unwrap_or_default()
    }

    fn location(&self) -> Location {
        Location { line: self.line as usize, column: self.column as usize }
    }
}

/// An entity as parsed at build: its direct parents and the uids in its attributes and
/// tags, until the hierarchy is closed.
struct Parsed {
    index: u32,
    parents: Vec<u32>,
    references: Vec<u32>,
}

impl EntityStore {
    /// Parse every entity of `files` against `schema` and close the hierarchy. Every
    /// problem is pushed to `problems`; `None` when there was any.
    pub(super) fn build(
        files: &[SourceFile],
        schema: &cedar_policy::Schema,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        let before = problems.len();
        let mut store = Self::default();
        let mut parsed = Vec::new();
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
            let file_index = u32::try_from(store.files.len()).unwrap_or(u32::MAX);
            store.files.push(file.path.clone());
            let lines = LineIndex::new(&file.text);
            for item in items {
                let offset = (item.get().as_ptr() as usize).saturating_sub(file.text.as_ptr() as usize);
                let location = lines.locate(offset);
                match Entity::from_json_str(item.get(), Some(schema)) {
                    Ok(entity) => {
                        let Some(json) = store.keep_json(item.get()) else {
                            problems.push(Problem::new(
                                &file.path,
                                Some(location),
                                "the entity files hold more than 4 GiB of JSON, more than a snapshot can hold",
                            ));
                            return None;
                        };
                        let stored = Stored {
                            json,
                            links: Box::new([]),
                            ancestors: 0,
                            file: file_index,
                            line: u32::try_from(location.line).unwrap_or(u32::MAX),
                            column: u32::try_from(location.column).unwrap_or(u32::MAX),
                        };
                        if let Some(entity) = store.add(entity, stored, problems) {
                            parsed.push(entity);
                        }
                    }
                    Err(e) => problems.push(Problem::new(&file.path, Some(location), describe(&e, None))),
                }
            }
        }
        if problems.len() > before {
            return None;
        }
        store.close(parsed, problems)?;
        // grown by doubling: up to half of it would be room no entity uses, for as long
        // as the snapshot is served (1.2 MiB at 10,000 entities)
        store.nodes.shrink_to_fit();
        store.json.shrink_to_fit();
        Some(store)
    }

    /// Add one parsed entity; `None` (and a problem) when its uid is already stored.
    fn add(&mut self, entity: Entity, stored: Stored, problems: &mut Vec<Problem>) -> Option<Parsed> {
        let uid = entity.uid();
        if let Some(Some(first)) = self.nodes.get(&uid) {
            let first = self.defined_at(first);
            problems.push(Problem::new(
                self.file_path(stored.file),
                Some(stored.location()),
                format!("duplicate entity `{uid}`: it is already defined at {first}"),
            ));
            return None;
        }
        let mut uids = Vec::new();
        let attrs = entity.attrs().filter_map(|(_, v)| v.ok());
        let tags = entity.tags().filter_map(|(_, v)| v.ok());
        for value in attrs.chain(tags) {
            collect_uids(&value, &mut uids);
        }
        let references = uids.into_iter().map(|r| self.intern(r)).collect();
        let (_, _, parents) = entity.into_inner();
        let parents = parents.into_iter().map(|p| self.intern(p)).collect();
        let key = self.shared(&uid);
        let (index, _) = self.nodes.insert_full(key, Some(stored));
        self.stored += 1;
        Some(Parsed { index: index_u32(index), parents, references })
    }

    fn intern(&mut self, uid: EntityUid) -> u32 {
        if let Some(index) = self.nodes.get_index_of(&uid) {
            return index_u32(index);
        }
        let key = self.shared(&uid);
        let (index, _) = self.nodes.insert_full(key, None);
        index_u32(index)
    }

    /// `uid`, with the type name every stored uid of its type shares.
    fn shared(&mut self, uid: &EntityUid) -> EntityUid {
        let type_name = match self.types.get(uid.type_name()) {
            Some(shared) => shared.clone(),
            None => {
                self.types.insert(uid.type_name().clone());
                uid.type_name().clone()
            }
        };
        EntityUid::from_type_name_and_id(type_name, uid.id().clone())
    }

    /// Close the hierarchy: each stored entity's ancestors are its parents and theirs.
    /// A cycle is a problem, as in Cedar.
    fn close(&mut self, parsed: Vec<Parsed>, problems: &mut Vec<Problem>) -> Option<()> {
        let mut parents: HashMap<u32, Vec<u32>> = HashMap::with_capacity(parsed.len());
        let mut references = Vec::with_capacity(parsed.len());
        for entity in parsed {
            parents.insert(entity.index, entity.parents);
            references.push((entity.index, entity.references));
        }
        let mut ancestors: HashMap<u32, Box<[u32]>> = HashMap::with_capacity(parents.len());
        for &start in parents.keys() {
            if let Err(cycle) = close_from(start, &parents, &mut ancestors) {
                let (file, location, uid) = match self.nodes.get_index(cycle as usize) {
                    Some((uid, Some(stored))) => {
                        (self.file_path(stored.file), Some(stored.location()), uid.to_string())
                    }
                    _ => (self.files.first().cloned().unwrap_or_default(), None, String::from("?")),
                };
                problems.push(Problem::new(
                    file,
                    location,
                    format!("entity `{uid}` is its own ancestor: the entity hierarchy must not have cycles"),
                ));
                return None;
            }
        }
        for (index, mut points_at) in references {
            let above = ancestors.remove(&index).unwrap_or_default();
            points_at.extend(above.iter().copied());
            points_at.sort_unstable();
            points_at.dedup();
            if let Some((_, Some(stored))) = self.nodes.get_index_mut(index as usize) {
                stored.ancestors = u32::try_from(above.len()).unwrap_or(u32::MAX);
                stored.links = above.iter().chain(&points_at).copied().collect();
            }
        }
        Some(())
    }

    pub(super) fn len(&self) -> usize {
        self.stored
    }

    /// Whether an entity file defines `uid`.
    pub(super) fn holds(&self, uid: &EntityUid) -> bool {
        matches!(self.nodes.get(uid), Some(Some(_)))
    }

    /// The JSON `uid` was written in, when an entity file defines it.
    pub(super) fn json(&self, uid: &EntityUid) -> Option<&str> {
        self.json_of(self.nodes.get(uid)?.as_ref()?)
    }

    fn json_of(&self, stored: &Stored) -> Option<&str> {
        let (start, len) = (stored.json.0 as usize, stored.json.1 as usize);
        self.json.get(start..start.checked_add(len)?)
    }

    /// Keep `json` compact (see [`compact`]) at the end of the store's JSON; `None`
    /// when the store's JSON would be more than `u32` can name.
    fn keep_json(&mut self, json: &str) -> Option<(u32, u32)> {
        let start = u32::try_from(self.json.len()).ok()?;
        compact(json, &mut self.json);
        let len = u32::try_from(self.json.len()).ok()?.checked_sub(start)?;
        Some((start, len))
    }

    /// The JSON of the entity at `index`.
    pub(super) fn json_at(&self, index: u32) -> Option<&str> {
        match self.nodes.get_index(index as usize)? {
            (_, Some(stored)) => self.json_of(stored),
            _ => None,
        }
    }

    pub(super) fn index_of(&self, uid: &EntityUid) -> Option<u32> {
        self.nodes.get_index_of(uid).map(index_u32)
    }

    pub(super) fn uid(&self, index: u32) -> Option<&EntityUid> {
        self.nodes.get_index(index as usize).map(|(uid, _)| uid)
    }

    /// What the entity at `index` points at (empty for a uid no file defines).
    pub(super) fn points_at(&self, index: u32) -> &[u32] {
        match self.nodes.get_index(index as usize) {
            Some((_, Some(stored))) => stored.points_at(),
            _ => &[],
        }
    }

    /// Whether the stored entity `uid` has `ancestor` among its ancestors.
    pub(super) fn has_ancestor(&self, uid: &EntityUid, ancestor: &EntityUid) -> bool {
        let (Some((_, _, Some(stored))), Some(target)) = (self.nodes.get_full(uid), self.nodes.get_index_of(ancestor))
        else {
            return false;
        };
        stored.ancestors().binary_search(&index_u32(target)).is_ok()
    }

    /// Whether the stored entity `uid` points at `target` (an ancestor, or a uid in an
    /// attribute or tag).
    pub(super) fn points_at_uid(&self, uid: &EntityUid, target: &EntityUid) -> bool {
        let (Some((_, _, Some(stored))), Some(target)) = (self.nodes.get_full(uid), self.nodes.get_index_of(target))
        else {
            return false;
        };
        stored.points_at().binary_search(&index_u32(target)).is_ok()
    }

    /// The JSON of every stored entity, in file order.
    pub(super) fn jsons(&self) -> impl Iterator<Item = &str> {
        self.nodes.values().flatten().filter_map(|stored| self.json_of(stored))
    }

    /// The positions of the stored entities of each type, sorted by id (the uids
    /// themselves are held once, here; a copy of each cost 1.2 MiB at 10,000 entities).
    pub(super) fn by_type(&self) -> HashMap<EntityTypeName, Vec<u32>> {
        let mut by_type: HashMap<EntityTypeName, Vec<u32>> = HashMap::new();
        for (index, (uid, stored)) in self.nodes.iter().enumerate() {
            if let (Some(_), Ok(index)) = (stored, u32::try_from(index)) {
                by_type.entry(uid.type_name().clone()).or_default().push(index);
            }
        }
        let id = |index: &u32| self.uid(*index).map(|uid| uid.id().unescaped());
        for indexes in by_type.values_mut() {
            indexes.sort_by(|a, b| id(a).cmp(&id(b)));
        }
        by_type
    }

    fn defined_at(&self, stored: &Stored) -> DefinedAt {
        DefinedAt { file: self.file_path(stored.file), location: Some(stored.location()) }
    }

    fn file_path(&self, file: u32) -> PathBuf {
        self.files.get(file as usize).cloned().unwrap_or_default()
    }

    /// A warning for each stored entity that points at uids no file defines (actions
    /// aside): Cedar allows them (an `in` test against a missing entity is simply
    /// false), but in a hand-written entity file they are nearly always a typo.
    pub(super) fn dangling_warnings(&self) -> Vec<Problem> {
        let mut warnings = Vec::new();
        for (uid, stored) in &self.nodes {
            let Some(stored) = stored else { continue };
            let mut missing: Vec<String> = stored
                .points_at()
                .iter()
                .filter(
                    |&&i| matches!(self.nodes.get_index(i as usize), Some((r, None)) if !super::slices::is_action(r)),
                )
                .filter_map(|&i| Some(format!("`{}`", self.uid(i)?)))
                .collect();
            missing.sort();
            if !missing.is_empty() {
                let at = self.defined_at(stored);
                warnings.push(Problem::new(
                    at.file,
                    at.location,
                    format!("entity `{uid}` refers to {}, which no entity file defines", missing.join(", ")),
                ));
            }
        }
        warnings
    }
}

/// Close the hierarchy from `start` (depth first, without recursion), filling
/// `ancestors` for it and every stored entity above it. `Err(index)`: an entity on a
/// cycle.
fn close_from(
    start: u32,
    parents: &HashMap<u32, Vec<u32>>,
    ancestors: &mut HashMap<u32, Box<[u32]>>,
) -> Result<(), u32> {
    if ancestors.contains_key(&start) {
        return Ok(());
    }
    let mut on_path: Vec<u32> = vec![start];
    while let Some(&node) = on_path.last() {
        let direct = parents.get(&node).map_or(&[][..], Vec::as_slice);
        if let Some(&next) = direct.iter().find(|p| parents.contains_key(p) && !ancestors.contains_key(p)) {
            if on_path.contains(&next) {
                return Err(next);
            }
            on_path.push(next);
            continue;
        }
        // every stored parent is closed: this one's ancestors are its parents and theirs
        let mut all: Vec<u32> = direct.to_vec();
        for parent in direct {
            all.extend(ancestors.get(parent).into_iter().flat_map(|a| a.iter().copied()));
        }
        all.sort_unstable();
        all.dedup();
        if all.binary_search(&node).is_ok() {
            return Err(node);
        }
        ancestors.insert(node, all.into());
        on_path.pop();
    }
    Ok(())
}

/// `json` (valid JSON, as serde_json read it) without the whitespace between its tokens:
/// entity files are usually written indented, which is a third to a half of their bytes.
/// Every token is kept byte for byte (strings with their escapes, numbers as written,
/// keys in order and repeated ones too), so Cedar reads exactly what it read at build.
fn compact(json: &str, out: &mut String) {
    out.reserve(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
}

fn index_u32(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

pub(super) fn collect_uids(value: &EvalResult, out: &mut Vec<EntityUid>) {
    match value {
        EvalResult::EntityUid(uid) => out.push(uid.clone()),
        EvalResult::Set(set) => set.iter().for_each(|v| collect_uids(v, out)),
        EvalResult::Record(record) => record.iter().for_each(|(_, v)| collect_uids(v, out)),
        EvalResult::Bool(_) | EvalResult::Long(_) | EvalResult::String(_) | EvalResult::ExtensionValue(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compacted(json: &str) -> String {
        let mut out = String::new();
        compact(json, &mut out);
        out
    }

    #[test]
    fn compacting_drops_the_whitespace_between_tokens_and_keeps_every_token() {
        let written = "[ {\n  \"uid\" : { \"type\": \"Studio::User\", \"id\": \"a b\\\\\" },\r\n\t\"attrs\": {\n    \
                       \"note\": \"say \\\" } { \\\\\\\" \\n\",\n    \"n\": -1.50e3,\n    \"n\": 2 },\n  \
                       \"parents\": [ ] } ]";
        let once = compacted(written);
        assert_eq!(
            once,
            r#"[{"uid":{"type":"Studio::User","id":"a b\\"},"attrs":{"note":"say \" } { \\\" \n","n":-1.50e3,"n":2},"parents":[]}]"#
        );
        let read = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
        assert_eq!(read(&once), read(written));
        assert_eq!(compacted(&once), once, "compact JSON stays as it is");
    }

    #[test]
    fn an_indented_entity_is_stored_compact_and_built_as_cedar_reads_the_file() {
        let schema = cedar_policy::Schema::from_cedarschema_str(
            "namespace Studio { entity Team; entity User in [Team] { email: String, level: Long }; }",
        )
        .unwrap()
        .0;
        let text = "[\n  {\n    \"uid\": { \"type\": \"Studio::User\", \"id\": \"user 1\" },\n    \"attrs\": {\n      \
                    \"email\": \"a  b@example.com\",\n      \"level\": 3\n    },\n    \"parents\": [\n      \
                    { \"type\": \"Studio::Team\", \"id\": \"Team1\" }\n    ]\n  }\n]\n";
        let files = [SourceFile { path: "users.json".into(), text: text.to_owned() }];
        let mut problems = Vec::new();
        let store = EntityStore::build(&files, &schema, &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let uid: EntityUid = r#"Studio::User::"user 1""#.parse().unwrap();
        let json = store.json(&uid).unwrap();
        assert!(!json.contains('\n') && !json.contains(": "), "{json}");
        let stored = Entity::from_json_str(json, Some(&schema)).unwrap();
        let read = cedar_policy::Entities::from_json_str(text, Some(&schema)).unwrap();
        assert_eq!(Some(&stored), read.get(&uid));
        assert_eq!(stored.attr("email").unwrap().unwrap(), EvalResult::String("a  b@example.com".into()));
    }
}
