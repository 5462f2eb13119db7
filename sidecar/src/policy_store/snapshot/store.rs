//! The entity files' entities, held compactly.
//!
//! A Cedar `Entity` costs about 5 KiB however small it is (two B-trees of attributes
//! and tags, two hash sets of ancestors), so 10,000 of them held whole were most of the
//! sidecar's memory. Here each entity is kept as the JSON of its attributes and tags as
//! they were written (checked against the schema once when the snapshot was built), and
//! its uid, its parents and the uids it points at (every ancestor, and every entity uid
//! in its attributes and tags) as indexes. The uid and the parents are most of an
//! entity's JSON and are already held as indexes, so they are not kept twice. Cedar
//! entities are built again (from JSON written back from those parts) only for the
//! entities requests reach (see [`super::PolicySnapshot::stored_entity`]), and kept,
//! bounded, with the snapshot.
//!
//! The hierarchy is closed here, as Cedar closes it (`Entities::from_entities`), and a
//! cycle fails the build as it does in Cedar.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, EvalResult};
use indexmap::{IndexMap, IndexSet};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::DefinedAt;
use crate::policy_store::diagnostics::{LineIndex, Location, Problem, describe};
use crate::policy_store::sources::SourceFile;

/// Every stored entity, and every uid a stored entity points at that none is.
#[derive(Debug, Default)]
pub(super) struct EntityStore {
    /// Keyed by uid; the index of a uid here names it in [`Stored::links`]. `None`: a
    /// uid a stored entity points at that no file defines.
    nodes: IndexMap<Key, Option<Stored>>,
    /// Every stored entity's attributes and tags as JSON, one after another (see
    /// [`Stored::body`]): one allocation instead of one an entity.
    json: String,
    /// Every stored entity's links, one after another (see [`Stored::links`]): one
    /// allocation instead of one an entity, none of them left among the build's
    /// garbage.
    links: Vec<u32>,
    /// The files entities came from, named by index in [`Stored::file`].
    files: Vec<PathBuf>,
    stored: usize,
    /// Each entity type's name, once: a key names its type by its position here (Cedar's
    /// uid holds a type name of its own, 64 bytes and two allocations an entity).
    types: IndexSet<EntityTypeName>,
}

/// A uid as the store keys it: its type, by position in [`EntityStore::types`], and its
/// id. 32 bytes, against 120 for a Cedar uid.
#[derive(Debug, PartialEq, Eq)]
struct Key {
    ty: u32,
    id: EntityId,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Lookup(self.ty, self.id.unescaped()).hash(state);
    }
}

/// A uid looked up by its type's position and its id: hashed as its [`Key`] is.
#[derive(Hash)]
struct Lookup<'a>(u32, &'a str);

impl indexmap::Equivalent<Key> for Lookup<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.ty && self.1 == key.id.unescaped()
    }
}

/// 40 bytes an entity, besides its attributes' and tags' JSON and its links.
#[derive(Debug)]
struct Stored {
    /// Where in the store's JSON the entity's attributes and then its tags are: their
    /// start, the attributes' length and the tags' length, each as written in its file
    /// without the whitespace between tokens (a length of 0: the file left it out).
    body: (u32, u32, u32),
    /// Where in the store's links the entity's are (start and length): every ancestor
    /// (transitively), sorted; then every uid it points at (the ancestors again, and
    /// every uid in the attributes and tags), sorted, without repeats, action uids
    /// included (they are not stored here); then its parents as written, sorted,
    /// without repeats.
    links: (u32, u32),
    /// How many of `links` are ancestors.
    ancestors: u32,
    /// How many of `links` are parents (the last ones).
    parents: u32,
    file: u32,
    line: u32,
    column: u32,
}

impl Stored {
    /// This entity's links, out of the store's `all`.
    fn links<'a>(&self, all: &'a [u32]) -> &'a [u32] {
        let (start, len) = (self.links.0 as usize, self.links.1 as usize);
        start.checked_add(len).and_then(|end| all.get(start..end)).unwrap_or_default()
    }

    fn ancestors<'a>(&self, all: &'a [u32]) -> &'a [u32] {
        self.links(all).get(..self.ancestors as usize).unwrap_or_default()
    }

    fn points_at<'a>(&self, all: &'a [u32]) -> &'a [u32] {
        let links = self.links(all);
        let end = links.len().saturating_sub(self.parents as usize);
        links.get(self.ancestors as usize..end).unwrap_or_default()
    }

    fn parents<'a>(&self, all: &'a [u32]) -> &'a [u32] {
        let links = self.links(all);
        links.get(links.len().saturating_sub(self.parents as usize)..).unwrap_or_default()
    }

    fn location(&self) -> Location {
        Location { line: self.line as usize, column: self.column as usize }
    }
}

/// The two parts of an entity's JSON that are kept as JSON. Cedar has already read the
/// entity whole (and refused it if anything was wrong with it), so the other fields are
/// only skipped here.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    attrs: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tags: Option<&'a RawValue>,
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
                let entity = Entity::from_json_str(item.get(), Some(schema));
                match entity.map(|e| (e, serde_json::from_str::<Body<'_>>(item.get()))) {
                    Ok((entity, Ok(body))) => {
                        let Some(body) = store.keep_body(&body) else {
                            problems.push(Problem::new(
                                &file.path,
                                Some(location),
                                "the entity files hold more than 4 GiB of JSON, more than a snapshot can hold",
                            ));
                            return None;
                        };
                        let stored = Stored {
                            body,
                            links: (0, 0),
                            ancestors: 0,
                            parents: 0,
                            file: file_index,
                            line: u32::try_from(location.line).unwrap_or(u32::MAX),
                            column: u32::try_from(location.column).unwrap_or(u32::MAX),
                        };
                        if let Some(entity) = store.add(entity, stored, problems) {
                            parsed.push(entity);
                        }
                    }
                    // Cedar read it, so it is an object whose attrs and tags are JSON
                    Ok((_, Err(e))) => problems.push(Problem::new(&file.path, Some(location), e.to_string())),
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
        store.links.shrink_to_fit();
        Some(store)
    }

    /// Add one parsed entity; `None` (and a problem) when its uid is already stored.
    fn add(&mut self, entity: Entity, stored: Stored, problems: &mut Vec<Problem>) -> Option<Parsed> {
        let uid = entity.uid();
        if let Some((_, first)) = self.stored(&uid) {
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
        let key = self.key(&uid);
        let (index, _) = self.nodes.insert_full(key, Some(stored));
        self.stored += 1;
        Some(Parsed { index: index_u32(index), parents, references })
    }

    fn intern(&mut self, uid: EntityUid) -> u32 {
        if let Some(index) = self.position(&uid) {
            return index_u32(index);
        }
        let key = self.key(&uid);
        let (index, _) = self.nodes.insert_full(key, None);
        index_u32(index)
    }

    /// `uid` as a key, its type added to the store's types if new.
    fn key(&mut self, uid: &EntityUid) -> Key {
        let ty = match self.types.get_index_of(uid.type_name()) {
            Some(ty) => ty,
            None => self.types.insert_full(uid.type_name().clone()).0,
        };
        Key { ty: index_u32(ty), id: uid.id().clone() }
    }

    /// Where `uid` is in the store, stored or only pointed at.
    fn position(&self, uid: &EntityUid) -> Option<usize> {
        let ty = self.types.get_index_of(uid.type_name())?;
        self.nodes.get_index_of(&Lookup(index_u32(ty), uid.id().unescaped()))
    }

    /// Where `uid` is in the store, and the entity, when an entity file defines it.
    fn stored(&self, uid: &EntityUid) -> Option<(usize, &Stored)> {
        let index = self.position(uid)?;
        match self.nodes.get_index(index)? {
            (_, Some(stored)) => Some((index, stored)),
            (_, None) => None,
        }
    }

    fn type_of(&self, key: &Key) -> Option<&EntityTypeName> {
        self.types.get_index(key.ty as usize)
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
                let (file, location, uid) = match (self.nodes.get_index(cycle as usize), self.uid(cycle)) {
                    (Some((_, Some(stored))), Some(uid)) => {
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
            let mut direct = parents.remove(&index).unwrap_or_default();
            direct.sort_unstable();
            direct.dedup();
            if let Some((_, Some(stored))) = self.nodes.get_index_mut(index as usize) {
                let start = self.links.len();
                self.links.extend(above.iter().chain(&points_at).chain(&direct));
                let (Ok(start), Ok(len)) = (u32::try_from(start), u32::try_from(self.links.len() - start)) else {
                    problems.push(Problem::new(
                        self.files.first().cloned().unwrap_or_default(),
                        None,
                        "the entities point at more than 4 billion uids, more than a snapshot can hold",
                    ));
                    return None;
                };
                stored.links = (start, len);
                stored.ancestors = u32::try_from(above.len()).unwrap_or(u32::MAX);
                stored.parents = u32::try_from(direct.len()).unwrap_or(u32::MAX);
            }
        }
        Some(())
    }

    pub(super) fn len(&self) -> usize {
        self.stored
    }

    /// Whether an entity file defines `uid`.
    pub(super) fn holds(&self, uid: &EntityUid) -> bool {
        self.stored(uid).is_some()
    }

    /// JSON for the entity an entity file defines as `uid`, which Cedar reads as the
    /// entity it read from the file (see [`Self::json_at`]).
    pub(super) fn json(&self, uid: &EntityUid) -> Option<String> {
        self.json_at(index_u32(self.stored(uid)?.0))
    }

    /// JSON for the stored entity at `index`: its uid, its attributes and tags as they
    /// were written (without the whitespace between tokens), and its parents. Cedar
    /// reads it as the entity it read from the file: the same uid and parents (written
    /// in the one form Cedar reads them in), and the same attributes and tags read
    /// against the same entity type's schema. Fields Cedar does not read are dropped.
    pub(super) fn json_at(&self, index: u32) -> Option<String> {
        let (key, Some(stored)) = self.nodes.get_index(index as usize)? else { return None };
        let (start, attrs_len, tags_len) = (stored.body.0 as usize, stored.body.1 as usize, stored.body.2 as usize);
        let attrs = self.json.get(start..start.checked_add(attrs_len)?)?;
        let tags_start = start.checked_add(attrs_len)?;
        let tags = self.json.get(tags_start..tags_start.checked_add(tags_len)?)?;
        let parents = stored.parents(&self.links);
        let mut out = Vec::with_capacity(attrs.len() + tags.len() + 64 * (1 + parents.len()));
        out.extend_from_slice(br#"{"uid":"#);
        write_uid(&mut out, self.type_of(key)?, &key.id).ok()?;
        if !attrs.is_empty() {
            out.extend_from_slice(br#","attrs":"#);
            out.extend_from_slice(attrs.as_bytes());
        }
        out.extend_from_slice(br#","parents":["#);
        for (i, &parent) in parents.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let (parent, _) = self.nodes.get_index(parent as usize)?;
            write_uid(&mut out, self.type_of(parent)?, &parent.id).ok()?;
        }
        out.push(b']');
        if !tags.is_empty() {
            out.extend_from_slice(br#","tags":"#);
            out.extend_from_slice(tags.as_bytes());
        }
        out.push(b'}');
        String::from_utf8(out).ok()
    }

    /// Keep an entity's attributes and then its tags compact (see [`compact`]) at the
    /// end of the store's JSON; `None` when the store's JSON would be more than `u32`
    /// can name.
    fn keep_body(&mut self, body: &Body<'_>) -> Option<(u32, u32, u32)> {
        let start = u32::try_from(self.json.len()).ok()?;
        let mut keep = |part: Option<&RawValue>| {
            let before = self.json.len();
            if let Some(part) = part {
                compact(part.get(), &mut self.json);
            }
            u32::try_from(self.json.len().checked_sub(before)?).ok()
        };
        let attrs = keep(body.attrs)?;
        let tags = keep(body.tags)?;
        u32::try_from(self.json.len()).ok()?;
        Some((start, attrs, tags))
    }

    pub(super) fn index_of(&self, uid: &EntityUid) -> Option<u32> {
        self.position(uid).map(index_u32)
    }

    /// The uid at `index`, made from its key (a few reference counts).
    pub(super) fn uid(&self, index: u32) -> Option<EntityUid> {
        let (key, _) = self.nodes.get_index(index as usize)?;
        Some(EntityUid::from_type_name_and_id(self.type_of(key)?.clone(), key.id.clone()))
    }

    /// Whether the uid at `index` is an action's.
    pub(super) fn is_action_at(&self, index: u32) -> bool {
        self.nodes
            .get_index(index as usize)
            .and_then(|(key, _)| self.type_of(key))
            .is_some_and(|ty| ty.basename() == "Action")
    }

    /// What the entity at `index` points at (empty for a uid no file defines).
    pub(super) fn points_at(&self, index: u32) -> &[u32] {
        match self.nodes.get_index(index as usize) {
            Some((_, Some(stored))) => stored.points_at(&self.links),
            _ => &[],
        }
    }

    /// Whether the stored entity `uid` has `ancestor` among its ancestors.
    pub(super) fn has_ancestor(&self, uid: &EntityUid, ancestor: &EntityUid) -> bool {
        let (Some((_, stored)), Some(target)) = (self.stored(uid), self.position(ancestor)) else {
            return false;
        };
        stored.ancestors(&self.links).binary_search(&index_u32(target)).is_ok()
    }

    /// Whether the stored entity `uid` points at `target` (an ancestor, or a uid in an
    /// attribute or tag).
    pub(super) fn points_at_uid(&self, uid: &EntityUid, target: &EntityUid) -> bool {
        let (Some((_, stored)), Some(target)) = (self.stored(uid), self.position(target)) else {
            return false;
        };
        stored.points_at(&self.links).binary_search(&index_u32(target)).is_ok()
    }

    /// JSON for every stored entity, in file order (see [`Self::json_at`]).
    pub(super) fn jsons(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.nodes.len()).filter_map(|index| self.json_at(index_u32(index)))
    }

    /// The positions of the stored entities of each type, sorted by id (the uids
    /// themselves are held once, here; a copy of each cost 1.2 MiB at 10,000 entities).
    pub(super) fn by_type(&self) -> HashMap<EntityTypeName, Vec<u32>> {
        let mut by_type: HashMap<u32, Vec<u32>> = HashMap::new();
        for (index, (key, stored)) in self.nodes.iter().enumerate() {
            if let (Some(_), Ok(index)) = (stored, u32::try_from(index)) {
                by_type.entry(key.ty).or_default().push(index);
            }
        }
        let id = |index: &u32| self.nodes.get_index(*index as usize).map(|(key, _)| key.id.unescaped());
        for indexes in by_type.values_mut() {
            indexes.sort_by(|a, b| id(a).cmp(&id(b)));
        }
        by_type
            .into_iter()
            .filter_map(|(ty, indexes)| Some((self.types.get_index(ty as usize)?.clone(), indexes)))
            .collect()
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
        for (index, (_, stored)) in self.nodes.iter().enumerate() {
            let (Some(stored), Some(uid)) = (stored, self.uid(index_u32(index))) else { continue };
            let mut missing: Vec<String> = stored
                .points_at(&self.links)
                .iter()
                .filter(|&&i| matches!(self.nodes.get_index(i as usize), Some((_, None))) && !self.is_action_at(i))
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

/// A uid as Cedar's entity JSON writes one: `{"type":..,"id":..}`, the id unescaped.
fn write_uid(out: &mut Vec<u8>, ty: &EntityTypeName, id: &EntityId) -> serde_json::Result<()> {
    out.extend_from_slice(br#"{"type":"#);
    serde_json::to_writer(&mut *out, &ty.to_string())?;
    out.extend_from_slice(br#","id":"#);
    serde_json::to_writer(&mut *out, id.unescaped())?;
    out.push(b'}');
    Ok(())
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
        let stored = Entity::from_json_str(&json, Some(&schema)).unwrap();
        let read = cedar_policy::Entities::from_json_str(text, Some(&schema)).unwrap();
        assert_eq!(Some(&stored), read.get(&uid));
        assert_eq!(stored.attr("email").unwrap().unwrap(), EvalResult::String("a  b@example.com".into()));
    }

    const SCHEMA: &str = "namespace Ns {\n  entity Team in [Team] = { name?: String };\n  \
                          entity User in [Team] = { email: String, level?: Long, manager?: User, teams?: Set<Team>, \
                          ip?: ipaddr, meta?: { k: String } } tags Set<String>;\n}\n";

    fn schema() -> cedar_policy::Schema {
        cedar_policy::Schema::from_cedarschema_str(SCHEMA).unwrap().0
    }

    /// A uid as an entity file may write it: plainly, or in Cedar's `__entity` escape.
    fn uid_json(ty: &str, id: &str, escaped: bool) -> serde_json::Value {
        let plain = serde_json::json!({"type": format!("Ns::{ty}"), "id": id});
        if escaped { serde_json::json!({"__entity": plain}) } else { plain }
    }

    /// Only what the store keeps of each entity is attributes and tags: the uid and the
    /// parents, most of an entity's bytes, are held as indexes already.
    #[test]
    fn the_store_keeps_attributes_and_tags_but_not_uids_or_parents_twice() {
        let text = r#"[
            {"uid": {"type": "Ns::Team", "id": "team-with-a-long-id"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Ns::User", "id": "user-with-a-long-id"}, "attrs": {"email": "a@example.com"},
             "parents": [{"type": "Ns::Team", "id": "team-with-a-long-id"}], "tags": {"Team": ["blue"]}}
        ]"#;
        let files = [SourceFile { path: "e.json".into(), text: text.to_owned() }];
        let mut problems = Vec::new();
        let store = EntityStore::build(&files, &schema(), &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(store.json, r#"{}{"email":"a@example.com"}{"Team":["blue"]}"#);
        let user: EntityUid = r#"Ns::User::"user-with-a-long-id""#.parse().unwrap();
        assert_eq!(
            store.json(&user).unwrap(),
            r#"{"uid":{"type":"Ns::User","id":"user-with-a-long-id"},"attrs":{"email":"a@example.com"},"parents":[{"type":"Ns::Team","id":"team-with-a-long-id"}],"tags":{"Team":["blue"]}}"#
        );
    }

    /// The store keys a uid by its type's position and its id: a lookup by a Cedar uid
    /// hashes as the key does, finds it, and gives the same uid back; equal ids of two
    /// types stay two entities.
    #[test]
    fn a_uid_is_found_by_its_type_and_id_and_equal_ids_of_two_types_are_two_entities() {
        use std::hash::BuildHasher;
        let text = r#"[
            {"uid": {"type": "Ns::Team", "id": "x"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Ns::User", "id": "x"}, "attrs": {"email": ""}, "parents": []},
            {"uid": {"type": "Ns::User", "id": "y\"z\\"}, "attrs": {"email": "", "manager": {"type": "Ns::User", "id": "gone"}},
             "parents": [{"type": "Ns::Team", "id": "x"}]}
        ]"#;
        let files = [SourceFile { path: "e.json".into(), text: text.to_owned() }];
        let mut problems = Vec::new();
        let store = EntityStore::build(&files, &schema(), &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let team: EntityUid = r#"Ns::Team::"x""#.parse().unwrap();
        let user: EntityUid = r#"Ns::User::"x""#.parse().unwrap();
        let quoted: EntityUid = r#"Ns::User::"y\"z\\""#.parse().unwrap();
        let gone: EntityUid = r#"Ns::User::"gone""#.parse().unwrap();
        let (t, u, q) =
            (store.index_of(&team).unwrap(), store.index_of(&user).unwrap(), store.index_of(&quoted).unwrap());
        assert_ne!(t, u);
        for (uid, index) in [(&team, t), (&user, u), (&quoted, q)] {
            assert_eq!(store.uid(index).as_ref(), Some(uid));
            assert!(store.holds(uid));
        }
        assert!(store.index_of(&gone).is_some() && !store.holds(&gone), "pointed at, not stored");
        assert!(!store.holds(&r#"Ns::Team::"y\"z\\""#.parse().unwrap()), "the id under another type");
        assert!(store.has_ancestor(&quoted, &team) && !store.has_ancestor(&user, &team));
        assert!(store.points_at_uid(&quoted, &gone));
        let hasher = std::hash::RandomState::new();
        for (key, _) in &store.nodes {
            assert_eq!(hasher.hash_one(key), hasher.hash_one(Lookup(key.ty, key.id.unescaped())));
        }
    }

    /// An entity as an entity file may write it, and the JSON text of the file.
    #[derive(Debug, Clone)]
    struct Written {
        id: String,
        email: Option<String>,
        level: Option<i64>,
        manager: Option<(usize, bool)>,
        teams: Option<Vec<(usize, bool)>>,
        ip: Option<(String, bool)>,
        meta: Option<String>,
        parents: Vec<(usize, bool)>,
        tags: Option<Vec<(String, Vec<String>)>>,
        escaped_uid: bool,
        uid_last: bool,
    }

    fn written() -> impl proptest::strategy::Strategy<Value = Written> {
        use proptest::prelude::*;
        let text = "[ a-zA-Z0-9\"\\\\/\u{e9}\u{1F600}\n\t:-]{0,12}";
        let uid_ref = (0usize..6, any::<bool>());
        (
            (
                text,
                proptest::option::of(text),
                proptest::option::of(any::<i64>()),
                proptest::option::of(uid_ref.clone()),
            ),
            (
                proptest::option::of(proptest::collection::vec(uid_ref.clone(), 0..4)),
                proptest::option::of((
                    prop_oneof![Just("10.0.0.1/8"), Just("::1"), Just("192.168.1.1")],
                    any::<bool>(),
                )),
                proptest::option::of(text),
            ),
            (
                proptest::collection::vec(uid_ref, 0..4),
                proptest::option::of(proptest::collection::vec((text, proptest::collection::vec(text, 0..3)), 0..3)),
                any::<bool>(),
                any::<bool>(),
            ),
        )
            .prop_map(
                |((id, email, level, manager), (teams, ip, meta), (parents, tags, escaped_uid, uid_last))| Written {
                    id,
                    email,
                    level,
                    manager,
                    teams,
                    ip: ip.map(|(ip, extn)| (ip.to_owned(), extn)),
                    meta,
                    parents,
                    tags,
                    escaped_uid,
                    uid_last,
                },
            )
    }

    /// The file's text: teams `team-0`..`team-5` (the first of them in the second, each
    /// later one in the one before), then the users, indented or not.
    fn file_text(users: &[Written], ids: &[String], pretty: bool) -> String {
        use serde_json::{Map, Value, json};
        let team = |i: usize| format!("team-{i}");
        let mut items: Vec<Value> = (0..6)
            .map(|i| {
                let parents: Vec<Value> = if i == 0 { vec![] } else { vec![uid_json("Team", &team(i - 1), false)] };
                json!({"uid": uid_json("Team", &team(i), i % 2 == 0), "attrs": {}, "parents": parents})
            })
            .collect();
        for (user, id) in users.iter().zip(ids) {
            let mut attrs = Map::new();
            if let Some(email) = &user.email {
                attrs.insert("email".into(), json!(email));
            } else {
                attrs.insert("email".into(), json!(""));
            }
            if let Some(level) = user.level {
                attrs.insert("level".into(), json!(level));
            }
            if let Some((i, escaped)) = user.manager {
                attrs.insert("manager".into(), uid_json("User", &ids[i % ids.len()], escaped));
            }
            if let Some(teams) = &user.teams {
                let teams: Vec<Value> = teams.iter().map(|&(i, e)| uid_json("Team", &team(i), e)).collect();
                attrs.insert("teams".into(), Value::Array(teams));
            }
            if let Some((ip, extn)) = &user.ip {
                let value = if *extn { json!({"__extn": {"fn": "ip", "arg": ip}}) } else { json!(ip) };
                attrs.insert("ip".into(), value);
            }
            if let Some(k) = &user.meta {
                attrs.insert("meta".into(), json!({"k": k}));
            }
            let parents: Vec<Value> = user.parents.iter().map(|&(i, e)| uid_json("Team", &team(i), e)).collect();
            let uid = uid_json("User", id, user.escaped_uid);
            let mut item = Map::new();
            if !user.uid_last {
                item.insert("uid".into(), uid.clone());
            }
            item.insert("attrs".into(), Value::Object(attrs));
            item.insert("parents".into(), Value::Array(parents));
            if let Some(tags) = &user.tags {
                let tags: Map<String, Value> = tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                item.insert("tags".into(), Value::Object(tags));
            }
            if user.uid_last {
                item.insert("uid".into(), uid);
            }
            items.push(Value::Object(item));
        }
        let items = Value::Array(items);
        if pretty { serde_json::to_string_pretty(&items).unwrap() } else { items.to_string() }
    }

    proptest::proptest! {
        /// Every stored entity is built as Cedar reads it from the file, whatever form
        /// the file writes it in: uids plain or escaped, fields in any order, optional
        /// attributes and tags left out, extension values either way, repeated parents,
        /// ids with quotes, backslashes and characters outside ASCII.
        #[test]
        fn every_stored_entity_is_built_as_cedar_reads_it_from_the_file(
            users in proptest::collection::vec(written(), 1..6),
            pretty in proptest::bool::ANY,
        ) {
            // ids made unique, so that the file is one Cedar accepts
            let ids: Vec<String> = users.iter().enumerate().map(|(i, u)| format!("{}#{i}", u.id)).collect();
            let text = file_text(&users, &ids, pretty);
            let schema = schema();
            let files = [SourceFile { path: "e.json".into(), text: text.clone() }];
            let mut problems = Vec::new();
            let store = EntityStore::build(&files, &schema, &mut problems);
            let items: Vec<&RawValue> = serde_json::from_str(&text).unwrap();
            let read: Option<Vec<Entity>> = items.iter().map(|i| Entity::from_json_str(i.get(), Some(&schema)).ok()).collect();
            let Some(read) = read else {
                proptest::prop_assert!(store.is_none(), "Cedar refused the file, the store did not");
                return Ok(());
            };
            let store = store.unwrap();
            proptest::prop_assert!(problems.is_empty(), "{:?}", problems);
            proptest::prop_assert_eq!(store.len(), read.len());
            for entity in read {
                let json = store.json(&entity.uid()).unwrap();
                let built = Entity::from_json_str(&json, Some(&schema)).unwrap();
                proptest::prop_assert_eq!(&built, &entity, "{}", json);
                // every field compared, parents included (Entity's equality may not)
                proptest::prop_assert_eq!(built.into_inner(), entity.into_inner());
            }
        }
    }
}
