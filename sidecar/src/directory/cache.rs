//! The directory's cache: entities fetched on demand, kept for a TTL, never fetched
//! twice at once, read in batches, and never allowed to stand in for data that could
//! not be read beyond a configured staleness.
//!
//! - A fresh entry (fetched within `ttl`; a missing entity within `negative_ttl`) is
//!   served from memory.
//! - Everything else a request needs is read in one batch per table. A key another
//!   request is already reading is not read again: that request's answer is awaited.
//! - When a read fails, an entry older than `ttl` but within `max_staleness` is served
//!   (and counted); without one the read's error is the answer, which the caller turns
//!   into a denial. A missing entity is never assumed to exist, and data that could not
//!   be read is never assumed absent.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cedar_policy::{EntityTypeName, EntityUid, Schema};
use moka::sync::Cache;
use tokio::sync::watch;

use super::mapping::{Item, MappingError, TableMapping};
use crate::policy_store::CheckedEntity;

/// Reads items by key from a table (DynamoDB's `BatchGetItem`, or a fake in tests).
pub trait TableReader: Send + Sync {
    /// The items of `keys` (partition key attribute `key`) that exist; absent keys are
    /// simply not in the answer. An error means nothing can be said of any key.
    fn read(
        &self,
        table: &str,
        key: &str,
        keys: &[String],
    ) -> impl Future<Output = Result<HashMap<String, Item>, ReadError>> + Send;
}

/// A table that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("table `{table}` cannot be read: {reason}")]
pub struct ReadError {
    pub table: String,
    pub reason: String,
}

/// Why the directory could not answer for an entity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error(transparent)]
    Unreachable(#[from] ReadError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// The request reading it was dropped before it answered.
    #[error("the read of `{0}` was abandoned")]
    Abandoned(String),
}

/// How long entries are kept and trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// A found entity is served without a read for this long.
    pub ttl: Duration,
    /// A missing entity is answered "missing" without a read for this long.
    pub negative_ttl: Duration,
    /// When a read fails, an entry this old at most is still served; older, or none,
    /// and the answer is the error.
    pub max_staleness: Duration,
    /// Entries kept at most.
    pub capacity: u64,
}

/// One entity as the directory answered it: checked against the asking snapshot's
/// schema, and the serial of the read it came from (a new read, a new serial).
#[derive(Debug, Clone)]
pub struct Fetched {
    pub entity: Arc<CheckedEntity>,
    pub serial: u64,
}

/// What the directory knows of one entity.
pub type Answer = Result<Option<Fetched>, DirectoryError>;

/// A read's answer for one key: the entry it made (or the stale one kept), or why not.
type Read = Result<Arc<Entry>, DirectoryError>;

/// A key an asker has no fresh entry of, and its place in the asker's answers.
type Wanted<'u> = (usize, &'u EntityUid);

/// The entries past their TTL of the keys an asker wants, served if their read fails
/// within the staleness bound.
type Stale = HashMap<EntityUid, Arc<Entry>>;

/// A wanted key's place in the asker's answers, the key, and where its read's answer
/// will be sent.
type Wait<'u> = (usize, &'u EntityUid, watch::Receiver<Option<Read>>);

/// What was read for one key: the item (`None`: the table has none), when, and the
/// entity it maps to under the last schema that asked.
#[derive(Debug)]
struct Entry {
    item: Option<Item>,
    fetched: Instant,
    serial: u64,
    mapped: Mutex<Option<Mapped>>,
}

/// An item's entity under the schema of one snapshot build (its id first).
type Mapped = (u64, Result<Arc<CheckedEntity>, MappingError>);

/// The cache over a reader, for the tables of `mappings` (one entity type each).
pub struct DirectoryCache<R> {
    reader: R,
    tables: HashMap<EntityTypeName, TableMapping>,
    policy: CachePolicy,
    entries: Cache<EntityUid, Arc<Entry>>,
    /// Reads under way: a second asker of one of these keys awaits the first's answer.
    reading: Mutex<HashMap<EntityUid, watch::Receiver<Option<Read>>>>,
    /// The last read's failure, until a read succeeds (for `/readyz`).
    unreachable: Mutex<Option<ReadError>>,
    serials: AtomicU64,
}

impl<R> std::fmt::Debug for DirectoryCache<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryCache").field("tables", &self.tables.len()).finish_non_exhaustive()
    }
}

impl<R: TableReader> DirectoryCache<R> {
    pub fn new(reader: R, mappings: Vec<TableMapping>, policy: CachePolicy) -> Self {
        let entries = Cache::builder()
            .max_capacity(policy.capacity)
            .time_to_live(policy.max_staleness.max(policy.ttl).max(policy.negative_ttl))
            .build();
        let tables = mappings.into_iter().map(|m| (m.entity_type.clone(), m)).collect();
        Self {
            reader,
            tables,
            policy,
            entries,
            reading: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(None),
            serials: AtomicU64::new(1),
        }
    }

    /// Whether entities of this type come from the directory.
    pub fn holds(&self, entity_type: &EntityTypeName) -> bool {
        self.tables.contains_key(entity_type)
    }

    /// The tables read, each once.
    pub fn tables(&self) -> impl Iterator<Item = &TableMapping> {
        self.tables.values()
    }

    /// Why the directory cannot be read, when its last read failed (until one succeeds).
    pub fn unreachable(&self) -> Option<ReadError> {
        self.unreachable.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Read one key that need not exist from every table, to learn whether the
    /// directory can be read (at start, and while it cannot). Whether every table could.
    pub async fn probe(&self) -> bool {
        let mut all = true;
        for mapping in self.tables.values() {
            let read = self.reader.read(&mapping.table, &mapping.key, &["authz-sidecar-probe".to_owned()]).await;
            all &= self.note(read.as_ref().map(|_| ()).map_err(Clone::clone));
        }
        all
    }

    /// Record a read's outcome for `/readyz`; whether it succeeded.
    fn note(&self, read: Result<(), ReadError>) -> bool {
        let mut unreachable = self.unreachable.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match read {
            Ok(()) => {
                *unreachable = None;
                true
            }
            Err(error) => {
                *unreachable = Some(error);
                false
            }
        }
    }

    /// The entities of `uids` (each a type the directory holds), in order, checked
    /// against `schema` (of the snapshot with build id `build`): `Some` when the table
    /// has it, `None` when it does not.
    pub async fn get(&self, uids: &[EntityUid], schema: &Schema, build: u64) -> Vec<Answer> {
        let mut answers: Vec<Option<Read>> = vec![None; uids.len()];
        let (wanted, stale) = self.lookup(uids, &mut answers);
        let (senders, waits) = self.claim(wanted, &mut answers);
        let mine: Vec<EntityUid> = senders.keys().cloned().collect();
        let _release = Release { cache: self, uids: mine.clone() };

        let mut read = self.read(&mine).await;
        for (uid, sender) in &senders {
            let answer = match read.remove(uid) {
                Some(Ok(item)) => {
                    let serial = self.serials.fetch_add(1, Ordering::Relaxed);
                    let entry = Arc::new(Entry { item, fetched: Instant::now(), serial, mapped: Mutex::new(None) });
                    self.entries.insert(uid.clone(), entry.clone());
                    Ok(entry)
                }
                Some(Err(error)) => match stale.get(uid).filter(|e| e.fetched.elapsed() <= self.policy.max_staleness) {
                    Some(entry) => {
                        metrics::counter!("authz_directory_cache_total", "result" => "stale").increment(1);
                        tracing::warn!(entity = %uid, error = %error, "directory unreadable; serving a stale entry");
                        Ok(entry.clone())
                    }
                    None => Err(error),
                },
                None => Err(DirectoryError::Abandoned(uid.to_string())),
            };
            sender.send_replace(Some(answer));
        }

        for (i, uid, mut receiver) in waits {
            let answer = match receiver.wait_for(Option::is_some).await {
                Ok(answer) => answer.clone().unwrap_or_else(|| Err(DirectoryError::Abandoned(uid.to_string()))),
                Err(_) => Err(DirectoryError::Abandoned(uid.to_string())),
            };
            if let Some(slot) = answers.get_mut(i) {
                *slot = Some(answer);
            }
        }
        uids.iter()
            .zip(answers)
            .map(|(uid, answer)| {
                let entry = answer.unwrap_or_else(|| Err(DirectoryError::Abandoned(uid.to_string())))?;
                self.entity(uid, &entry, schema, build)
            })
            .collect()
    }

    /// The fresh entries of `uids` into `answers`; the others are wanted (their places
    /// in `answers`), each with its stale entry if one is kept.
    fn lookup<'u>(&self, uids: &'u [EntityUid], answers: &mut [Option<Read>]) -> (Vec<Wanted<'u>>, Stale) {
        let mut stale = Stale::new();
        let mut wanted = Vec::new();
        for ((i, uid), slot) in uids.iter().enumerate().zip(answers.iter_mut()) {
            match self.entries.get(uid) {
                Some(entry) if self.is_fresh(&entry) => {
                    metrics::counter!("authz_directory_cache_total", "result" => "hit").increment(1);
                    *slot = Some(Ok(entry));
                }
                kept => {
                    metrics::counter!("authz_directory_cache_total", "result" => "miss").increment(1);
                    if let Some(entry) = kept {
                        stale.insert(uid.clone(), entry);
                    }
                    wanted.push((i, uid));
                }
            }
        }
        (wanted, stale)
    }

    /// Claim the `wanted` keys nobody is reading (a sender each, to answer with what this
    /// asker reads) and a receiver for every wanted key, to await its answer. A key whose
    /// read ended after [`Self::lookup`] missed it (its entry inserted, its claim released)
    /// is answered from that entry into `answers` instead of being read a second time: a
    /// reader inserts before it releases, and both sides hold the lock, so a key no one
    /// is reading any more has its entry by now.
    fn claim<'u>(
        &self,
        wanted: Vec<Wanted<'u>>,
        answers: &mut [Option<Read>],
    ) -> (HashMap<EntityUid, watch::Sender<Option<Read>>>, Vec<Wait<'u>>) {
        let mut senders: HashMap<EntityUid, watch::Sender<Option<Read>>> = HashMap::new();
        let mut waits = Vec::with_capacity(wanted.len());
        let mut reading = self.reading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (i, uid) in wanted {
            if let Some(receiver) = reading.get(uid) {
                waits.push((i, uid, receiver.clone()));
                continue;
            }
            if let Some(entry) = self.entries.get(uid).filter(|entry| self.is_fresh(entry)) {
                if let Some(slot) = answers.get_mut(i) {
                    *slot = Some(Ok(entry));
                }
                continue;
            }
            let (sender, receiver) = watch::channel(None);
            senders.insert(uid.clone(), sender);
            reading.insert(uid.clone(), receiver.clone());
            waits.push((i, uid, receiver));
        }
        (senders, waits)
    }

    /// The entity of `entry` under `schema`: mapped once per snapshot build, so a new
    /// schema checks every cached item again, and a cached item never skips the check.
    fn entity(&self, uid: &EntityUid, entry: &Entry, schema: &Schema, build: u64) -> Answer {
        let Some(item) = &entry.item else { return Ok(None) };
        let mut mapped = entry.mapped.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = match &*mapped {
            Some((at, result)) if *at == build => result.clone(),
            _ => {
                let Some(mapping) = self.tables.get(uid.type_name()) else { return Ok(None) };
                let result =
                    mapping.entity(uid.id().unescaped(), item, schema).map(|e| Arc::new(CheckedEntity::new(e)));
                *mapped = Some((build, result.clone()));
                result
            }
        };
        Ok(Some(Fetched { entity: result?, serial: entry.serial }))
    }

    fn is_fresh(&self, entry: &Entry) -> bool {
        let ttl = if entry.item.is_some() { self.policy.ttl } else { self.policy.negative_ttl };
        entry.fetched.elapsed() < ttl
    }

    /// Read `uids`, one batch per table: each uid's item, or `None` when its table has
    /// none.
    async fn read(&self, uids: &[EntityUid]) -> HashMap<EntityUid, Result<Option<Item>, DirectoryError>> {
        let mut by_table: HashMap<&EntityTypeName, Vec<&EntityUid>> = HashMap::new();
        for uid in uids {
            by_table.entry(uid.type_name()).or_default().push(uid);
        }
        let mut out = HashMap::new();
        for (entity_type, uids) in by_table {
            let Some(mapping) = self.tables.get(entity_type) else {
                for uid in uids {
                    out.insert(uid.clone(), Ok(None));
                }
                continue;
            };
            // a key no table can hold (a request names it, e.g. from a path) is absent,
            // never sent: DynamoDB would refuse the whole batch, and a refused batch must
            // not be mistaken for an unreachable directory
            let (uids, unstorable): (Vec<&EntityUid>, Vec<&EntityUid>) =
                uids.into_iter().partition(|uid| is_storable_key(uid.id().unescaped()));
            for uid in unstorable {
                out.insert(uid.clone(), Ok(None));
            }
            if uids.is_empty() {
                continue;
            }
            let keys: Vec<String> = uids.iter().map(|uid| uid.id().unescaped().to_owned()).collect();
            let started = Instant::now();
            let read = self.reader.read(&mapping.table, &mapping.key, &keys).await;
            metrics::histogram!("authz_directory_fetch_seconds", "table" => mapping.table.clone())
                .record(started.elapsed().as_secs_f64());
            self.note(read.as_ref().map(|_| ()).map_err(Clone::clone));
            match read {
                Ok(mut items) => {
                    for (uid, key) in uids.into_iter().zip(&keys) {
                        out.insert(uid.clone(), Ok(items.remove(key)));
                    }
                }
                Err(error) => {
                    metrics::counter!("authz_directory_errors_total", "table" => mapping.table.clone()).increment(1);
                    for uid in uids {
                        out.insert(uid.clone(), Err(DirectoryError::Unreachable(error.clone())));
                    }
                }
            }
        }
        out
    }
}

/// DynamoDB's partition keys: 1 to 2,048 bytes.
const MAX_KEY_BYTES: usize = 2_048;

fn is_storable_key(key: &str) -> bool {
    (1..=MAX_KEY_BYTES).contains(&key.len())
}

/// Removes this request's claims on keys when it is done, or dropped mid-read (its
/// waiters then see the read abandoned, and the next asker reads again).
struct Release<'a, R> {
    cache: &'a DirectoryCache<R>,
    uids: Vec<EntityUid>,
}

impl<R> Drop for Release<'_, R> {
    fn drop(&mut self) {
        let mut reading = self.cache.reading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for uid in &self.uids {
            reading.remove(uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;
    use crate::directory::mapping::{AttributeMapping, AttributeValue, ParentMapping, ValueKind};

    fn schema() -> Schema {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/schema.cedarschema");
        let text = std::fs::read_to_string(path).unwrap();
        Schema::from_cedarschema_str(&text).unwrap().0
    }

    fn type_name(text: &str) -> EntityTypeName {
        EntityTypeName::from_str(text).unwrap()
    }

    fn user(id: &str) -> EntityUid {
        EntityUid::from_str(&format!("Studio::User::\"{id}\"")).unwrap()
    }

    /// The users table of the seed's layout: keyed by user name, with the user's LOB and
    /// teams.
    fn users() -> TableMapping {
        TableMapping {
            table: "users".to_owned(),
            entity_type: type_name("Studio::User"),
            key: "userName".to_owned(),
            attributes: vec![AttributeMapping {
                name: "email".to_owned(),
                from: "email".to_owned(),
                kind: ValueKind::Plain,
            }],
            parents: vec![ParentMapping { from: "lob".to_owned(), entity_type: type_name("Studio::Lob") }],
            tags: vec![("Team".to_owned(), "teams".to_owned())],
        }
    }

    fn item(lob: &str) -> Item {
        [
            ("userName".to_owned(), AttributeValue::S("x".to_owned())),
            ("lob".to_owned(), AttributeValue::S(lob.to_owned())),
            ("teams".to_owned(), AttributeValue::Ss(vec!["Team1".to_owned()])),
        ]
        .into()
    }

    #[derive(Default)]
    struct Fake {
        items: Mutex<HashMap<String, Item>>,
        reads: AtomicUsize,
        keys_read: AtomicUsize,
        failing: AtomicBool,
        delay: Duration,
    }

    impl TableReader for Arc<Fake> {
        async fn read(&self, table: &str, _key: &str, keys: &[String]) -> Result<HashMap<String, Item>, ReadError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.keys_read.fetch_add(keys.len(), Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(ReadError { table: table.to_owned(), reason: "unreachable".to_owned() });
            }
            let items = self.items.lock().unwrap();
            Ok(keys.iter().filter_map(|k| Some((k.clone(), items.get(k)?.clone()))).collect())
        }
    }

    fn policy(ttl: Duration, max_staleness: Duration) -> CachePolicy {
        CachePolicy { ttl, negative_ttl: ttl, max_staleness, capacity: 1_000 }
    }

    fn lob_of(answer: &Answer) -> Option<String> {
        let fetched = answer.as_ref().ok()?.as_ref()?;
        let json = fetched.entity.entity().to_json_value().ok()?;
        json["parents"][0]["id"].as_str().map(str::to_owned)
    }

    #[tokio::test]
    async fn one_batch_for_what_is_missing_then_hits_and_negative_entries() {
        let fake = Arc::new(Fake::default());
        fake.items.lock().unwrap().insert("user-1".to_owned(), item("lob-a"));
        fake.items.lock().unwrap().insert("user-2".to_owned(), item("lob-b"));
        let cache = DirectoryCache::new(fake.clone(), vec![users()], policy(Duration::from_secs(60), Duration::ZERO));
        let schema = schema();

        let asked = [user("user-1"), user("user-2"), user("nobody")];
        let answers = cache.get(&asked, &schema, 0).await;
        assert_eq!(lob_of(&answers[0]).as_deref(), Some("lob-a"));
        assert_eq!(lob_of(&answers[1]).as_deref(), Some("lob-b"));
        assert!(matches!(answers[2], Ok(None)), "a user the table does not have: {:?}", answers[2]);
        assert_eq!(fake.reads.load(Ordering::SeqCst), 1, "one batch");
        assert_eq!(fake.keys_read.load(Ordering::SeqCst), 3);

        // found and missing alike are answered from memory until their TTL
        let again = cache.get(&asked, &schema, 0).await;
        assert!(matches!(again[2], Ok(None)));
        assert_eq!(fake.reads.load(Ordering::SeqCst), 1, "nothing read again, the missing user included");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_hundred_concurrent_first_requests_for_one_user_make_one_read() {
        let fake = Arc::new(Fake { delay: Duration::from_millis(50), ..Fake::default() });
        fake.items.lock().unwrap().insert("user-1".to_owned(), item("lob-a"));
        let cache =
            Arc::new(DirectoryCache::new(fake.clone(), vec![users()], policy(Duration::from_secs(60), Duration::ZERO)));
        let schema = Arc::new(schema());
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (cache, schema) = (cache.clone(), schema.clone());
                tokio::spawn(async move { cache.get(&[user("user-1")], &schema, 0).await })
            })
            .collect();
        for task in tasks {
            let answers = task.await.unwrap();
            assert_eq!(lob_of(&answers[0]).as_deref(), Some("lob-a"));
        }
        assert_eq!(fake.reads.load(Ordering::SeqCst), 1);
    }

    /// The race behind "a hundred first requests, one read": an asker that found no
    /// fresh entry, then claims the key only after another asker's read of it ended
    /// (entry inserted, claim released), takes that entry instead of reading again.
    #[tokio::test]
    async fn a_read_that_ends_between_an_askers_lookup_and_its_claim_is_not_read_again() {
        let fake = Arc::new(Fake::default());
        fake.items.lock().unwrap().insert("user-1".to_owned(), item("lob-a"));
        let cache = DirectoryCache::new(fake.clone(), vec![users()], policy(Duration::from_secs(60), Duration::ZERO));
        let schema = schema();
        let asked = [user("user-1"), user("user-2")];

        // this asker finds nothing fresh for either...
        let mut answers: Vec<Option<Read>> = vec![None; asked.len()];
        let (wanted, _stale) = cache.lookup(&asked, &mut answers);
        assert_eq!(wanted.len(), 2);
        // ...another asker reads user-1 and is done before this one claims...
        assert_eq!(lob_of(&cache.get(&asked[..1], &schema, 0).await[0]).as_deref(), Some("lob-a"));
        assert_eq!(fake.reads.load(Ordering::SeqCst), 1);
        // ...so this one claims user-2 alone, and has user-1 from the other's read
        let (senders, waits) = cache.claim(wanted, &mut answers);
        assert_eq!(senders.keys().collect::<Vec<_>>(), [&asked[1]], "user-1 is not read a second time");
        assert_eq!(waits.iter().map(|(i, _, _)| *i).collect::<Vec<_>>(), [1]);
        assert!(matches!(&answers[0], Some(Ok(entry)) if entry.item.is_some()), "user-1 answered from the entry");
        assert!(answers[1].is_none());
        drop(senders);
        cache.reading.lock().unwrap().clear();

        // end to end, the asker that claimed user-2 reads it alone
        let again = cache.get(&asked, &schema, 0).await;
        assert_eq!(lob_of(&again[0]).as_deref(), Some("lob-a"));
        assert_eq!(fake.reads.load(Ordering::SeqCst), 2);
        assert_eq!(fake.keys_read.load(Ordering::SeqCst), 2, "user-1 once, user-2 once");
    }

    #[tokio::test]
    async fn a_change_shows_after_the_ttl_and_an_outage_is_served_stale_only_within_the_bound() {
        let fake = Arc::new(Fake::default());
        fake.items.lock().unwrap().insert("user-1".to_owned(), item("lob-a"));
        let ttl = Duration::from_millis(100);
        let cache = DirectoryCache::new(fake.clone(), vec![users()], policy(ttl, Duration::from_millis(400)));
        let schema = schema();
        assert_eq!(lob_of(&cache.get(&[user("user-1")], &schema, 0).await[0]).as_deref(), Some("lob-a"));

        // moved to another LOB in the table: served from the new LOB once the TTL is up
        fake.items.lock().unwrap().insert("user-1".to_owned(), item("lob-b"));
        assert_eq!(lob_of(&cache.get(&[user("user-1")], &schema, 0).await[0]).as_deref(), Some("lob-a"));
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(lob_of(&cache.get(&[user("user-1")], &schema, 0).await[0]).as_deref(), Some("lob-b"));

        // the table goes away: the cached user is served (stale) within the bound, an
        // uncached one is an error, never "absent"
        fake.failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(ttl * 2).await;
        let answers = cache.get(&[user("user-1"), user("user-2")], &schema, 0).await;
        assert_eq!(lob_of(&answers[0]).as_deref(), Some("lob-b"), "stale within the bound: {:?}", answers[0]);
        assert!(matches!(answers[1], Err(DirectoryError::Unreachable(_))), "{:?}", answers[1]);
        // past the bound, the cached user is an error too
        tokio::time::sleep(Duration::from_millis(500)).await;
        let answers = cache.get(&[user("user-1")], &schema, 0).await;
        assert!(matches!(answers[0], Err(DirectoryError::Unreachable(_))), "{:?}", answers[0]);
    }

    #[tokio::test]
    async fn a_key_no_table_can_hold_is_absent_without_a_read_and_leaves_the_directory_ready() {
        let fake = Arc::new(Fake::default());
        fake.items.lock().unwrap().insert("user-1".to_owned(), item("lob-a"));
        let cache = DirectoryCache::new(fake.clone(), vec![users()], policy(Duration::from_secs(60), Duration::ZERO));
        let long = user(&"x".repeat(MAX_KEY_BYTES + 1));
        let answers = cache.get(&[long.clone(), user("")], &schema(), 0).await;
        assert!(answers.iter().all(|a| matches!(a, Ok(None))), "{answers:?}");
        assert_eq!(fake.reads.load(Ordering::SeqCst), 0, "nothing sent for keys DynamoDB would refuse");
        // in a batch with a real key, only the real key is read
        let answers = cache.get(&[long, user("user-1")], &schema(), 0).await;
        assert!(matches!(answers[0], Ok(None)));
        assert_eq!(lob_of(&answers[1]).as_deref(), Some("lob-a"));
        assert_eq!(fake.keys_read.load(Ordering::SeqCst), 1);
        assert!(cache.unreachable().is_none());
        // a read that does fail marks the directory unreachable until one succeeds
        fake.failing.store(true, Ordering::SeqCst);
        assert!(cache.get(&[user("user-2")], &schema(), 0).await[0].is_err());
        assert!(cache.unreachable().is_some());
        fake.failing.store(false, Ordering::SeqCst);
        assert!(cache.probe().await);
        assert!(cache.unreachable().is_none());
    }

    #[tokio::test]
    async fn an_item_the_schema_does_not_allow_is_an_error_not_an_entity() {
        let fake = Arc::new(Fake::default());
        let mut bad = item("lob-a");
        bad.insert("email".to_owned(), AttributeValue::N("7".to_owned()));
        fake.items.lock().unwrap().insert("user-1".to_owned(), bad);
        let cache = DirectoryCache::new(fake, vec![users()], policy(Duration::from_secs(60), Duration::ZERO));
        let answers = cache.get(&[user("user-1")], &schema(), 0).await;
        assert!(matches!(&answers[0], Err(DirectoryError::Mapping(MappingError::Schema { .. }))), "{:?}", answers[0]);
    }
}
