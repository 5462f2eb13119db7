//! What one request needs from the directory: the principal, the resource, and every
//! entity their parents, attributes and tags reach (through the entity files too), read
//! in one batch per table per hop, and only for uids no entity file holds (a listed
//! entity always wins, like a listed profile).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{Entity, EntityUid};

use super::cache::{DirectoryCache, DirectoryError, Fetched, ReadError, TableReader};
use super::mapping::Item;
use crate::policy_store::{CheckedEntity, PolicySnapshot};

/// Entities one request may gather from the directory: past this the request is
/// denied (a hierarchy that large is a mistake in the tables, not a user).
pub const MAX_ENTITIES: usize = 256;
/// Hops from the request's roots: past this the request is denied.
pub const MAX_HOPS: usize = 8;

/// A reader of any kind, behind one type (so the state holds one directory type,
/// DynamoDB in service and a fake in tests).
pub trait ErasedReader: Send + Sync {
    fn read_boxed<'a>(&'a self, table: &'a str, key: &'a str, keys: &'a [String]) -> ReadFuture<'a>;
}

/// A read under way, behind one type.
pub type ReadFuture<'a> = Pin<Box<dyn Future<Output = Result<HashMap<String, Item>, ReadError>> + Send + 'a>>;

impl<T: TableReader> ErasedReader for T {
    fn read_boxed<'a>(&'a self, table: &'a str, key: &'a str, keys: &'a [String]) -> ReadFuture<'a> {
        Box::pin(self.read(table, key, keys))
    }
}

/// A reader behind one type.
pub struct AnyReader(pub Box<dyn ErasedReader>);

impl std::fmt::Debug for AnyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnyReader")
    }
}

impl TableReader for AnyReader {
    async fn read(&self, table: &str, key: &str, keys: &[String]) -> Result<HashMap<String, Item>, ReadError> {
        self.0.read_boxed(table, key, keys).await
    }
}

/// The directory the sidecar serves from.
pub type Directory = DirectoryCache<AnyReader>;

impl Directory {
    /// The directory over any reader.
    pub fn over(
        reader: impl TableReader + 'static,
        mappings: Vec<super::TableMapping>,
        policy: super::CachePolicy,
    ) -> Self {
        DirectoryCache::new(AnyReader(Box::new(reader)), mappings, policy)
    }
}

/// Why a request's entities could not be gathered. Every one denies.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatherError {
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error("the request reaches more than {MAX_ENTITIES} directory entities")]
    TooMany,
    #[error("the request's entities are more than {MAX_HOPS} hops deep in the directory")]
    TooDeep,
    #[error("a stored entity could not be built: {0}")]
    Unbuilt(String),
}

impl GatherError {
    /// Whether the directory could not be read (503: try again), rather than read and
    /// found wanting (403).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Directory(DirectoryError::Unreachable(_) | DirectoryError::Abandoned(_)))
    }
}

/// What one request has gathered from the directory so far.
#[derive(Debug, Default)]
pub struct Gathered {
    found: HashMap<EntityUid, Fetched>,
    asked: HashSet<EntityUid>,
}

impl Gathered {
    /// The directory's entity for `uid`, when it has one.
    pub fn get(&self, uid: &EntityUid) -> Option<&Fetched> {
        self.found.get(uid)
    }

    /// Everything gathered but `replaced` (the entity a token's principal is built
    /// on, which the built principal stands in for), for the request's entities.
    pub fn checked_except(&self, replaced: &EntityUid) -> Vec<Arc<CheckedEntity>> {
        self.found.iter().filter(|(uid, _)| *uid != replaced).map(|(_, f)| f.entity.clone()).collect()
    }

    /// Everything gathered, shared.
    pub fn shared(&self) -> impl Iterator<Item = Arc<CheckedEntity>> + '_ {
        self.found.values().map(|f| f.entity.clone())
    }

    /// `uid`'s entity from the entity files, else from what was gathered.
    pub fn known(&self, snapshot: &PolicySnapshot, uid: &EntityUid) -> Result<Option<Arc<Entity>>, Box<EntitiesError>> {
        if snapshot.holds(uid) {
            return snapshot.stored_entity(uid);
        }
        Ok(self.found.get(uid).map(|f| f.entity.shared().clone()))
    }

    /// As [`Self::known`], for lookups where an entity that cannot be built is as good
    /// as none (it only ever narrows what the request gets).
    pub fn known_or_none(&self, snapshot: &PolicySnapshot, uid: &EntityUid) -> Option<Arc<Entity>> {
        self.known(snapshot, uid).ok().flatten()
    }
}

/// Gather from `directory` the entities of `roots` and everything they reach, hop by
/// hop, into `gathered`: uids the entity files hold are not read (their slices' own
/// references to entities no file holds are followed instead), and a uid is read once
/// per request. The policies' literal uids that no file holds are roots too.
pub async fn gather(
    directory: &Directory,
    snapshot: &PolicySnapshot,
    roots: impl IntoIterator<Item = EntityUid>,
    gathered: &mut Gathered,
) -> Result<(), GatherError> {
    let schema = snapshot.schema();
    let mut frontier: Vec<EntityUid> = roots.into_iter().chain(snapshot.literal_dangling().iter().cloned()).collect();
    for _ in 0..=MAX_HOPS {
        let mut wanted = Vec::new();
        let mut next = Vec::new();
        for uid in frontier.drain(..) {
            if uid.type_name().basename() == "Action" || !gathered.asked.insert(uid.clone()) {
                continue;
            }
            if snapshot.holds(&uid) {
                let slice = snapshot.entity_slice(&uid).map_err(|e| GatherError::Unbuilt(e.to_string()))?;
                next.extend(slice.dangling.iter().cloned());
            } else if directory.holds(uid.type_name()) {
                wanted.push(uid);
            }
        }
        if !wanted.is_empty() {
            let answers = directory.get(&wanted, schema, snapshot.build_id()).await;
            for (uid, answer) in wanted.into_iter().zip(answers) {
                if let Some(fetched) = answer? {
                    next.extend(fetched.entity.references().iter().cloned());
                    gathered.found.insert(uid, fetched);
                }
            }
            if gathered.found.len() > MAX_ENTITIES {
                return Err(GatherError::TooMany);
            }
        }
        if next.is_empty() {
            return Ok(());
        }
        frontier = next;
    }
    Err(GatherError::TooDeep)
}
