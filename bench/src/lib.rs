//! Workloads for the benchmarks: the shipped policy model grown to a given number of
//! policies and entities, in memory.
//!
//! The generated policies have the shapes of the shipped ones (team-scoped presign
//! permits with tag and network conditions, pool-scoped account forbids), so Cedar does
//! the same kind of work per policy as it would for a real policy set. The generated
//! entities are users, Studio profiles and pool accounts hanging off the seed LOBs,
//! teams and pools, so the seed requests still decide as in the decision tables.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use authz_sidecar::policy_store::sources::SourceFile;
use authz_sidecar::policy_store::{LoadError, PolicySnapshot, SnapshotSource, SourceDirs, Sources};

/// The repository's `policies/` and `entities/`.
pub fn shipped_dirs() -> SourceDirs {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default();
    SourceDirs::new(root.join("policies"), root.join("entities"))
}

/// The shipped files plus generated ones, for `policies` policies in all and at least
/// `entities` entities in all.
pub fn grown_sources(policies: usize, entities: usize) -> Sources {
    let dirs = shipped_dirs();
    let Ok(mut sources) = Sources::read(&dirs) else {
        return empty_sources();
    };
    let shipped_policies = count_policies(&sources);
    let shipped_entities: usize = sources.entities.iter().map(|f| f.text.matches("\"uid\"").count()).sum();
    sources.policies.push(SourceFile {
        path: PathBuf::from("generated.cedar"),
        text: generated_policies(policies.saturating_sub(shipped_policies)),
    });
    sources.entities.push(SourceFile {
        path: PathBuf::from("generated.json"),
        text: generated_entities(entities.saturating_sub(shipped_entities)),
    });
    sources.digest = format!("grown-{policies}-{entities}");
    sources
}

/// Build the snapshot of [`grown_sources`].
pub fn grown_snapshot(policies: usize, entities: usize) -> Result<PolicySnapshot, LoadError> {
    let sources = grown_sources(policies, entities);
    PolicySnapshot::from_sources(&sources, SnapshotSource::Files(shipped_dirs()), 1)
}

fn empty_sources() -> Sources {
    Sources { schemas: Vec::new(), policies: Vec::new(), entities: Vec::new(), digest: String::new() }
}

/// How many policies the shipped files hold (the smallest grown set is those).
pub fn shipped_policy_count() -> usize {
    Sources::read(&shipped_dirs()).map(|s| count_policies(&s)).unwrap_or(0)
}

fn count_policies(sources: &Sources) -> usize {
    sources.policies.iter().map(|f| f.text.matches("@id(").count()).sum()
}

/// `n` policies: alternately a team presign permit and a pool account forbid.
pub fn generated_policies(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        if i % 2 == 0 {
            let _ = writeln!(
                text,
                "@id(\"gen-team-{i}-presign\")\npermit (principal in Studio::Team::\"gen-team-{i}\", \
                 action == Studio::Action::\"CreatePresignedDomainUrl\", resource is Studio::UserProfile)\n\
                 when {{ resource.owner == principal && resource.hasTag(\"Team\") && \
                 resource.getTag(\"Team\") == \"gen-team-{i}\" && context.sourceIp.isInRange(ip(\"10.0.0.0/8\")) }};\n"
            );
        } else {
            let _ = writeln!(
                text,
                "@id(\"gen-pool-{i}-region\")\nforbid (principal, action == DataZone::Action::\"UseAccount\", \
                 resource in DataZone::AccountPool::\"gen-pool-{i}\")\n\
                 when {{ context.regionName == \"ap-south-{}\" || resource.status == \"RETIRED\" }};\n",
                i % 3
            );
        }
    }
    text
}

/// `n` entities: users with a Studio profile each (two entities per user), and pool
/// accounts, roughly half and half.
pub fn generated_entities(n: usize) -> String {
    let mut items: Vec<String> = Vec::with_capacity(n);
    let users = n / 4;
    for u in 0..users {
        let team = if u % 2 == 0 { "Team1" } else { "Team2" };
        let lob = if u % 3 == 0 { "lob-b" } else { "lob-a" };
        items.push(format!(
            r#"{{"uid":{{"type":"Studio::User","id":"gen-user-{u}"}},"attrs":{{"email":"gen-user-{u}@example.com"}},"parents":[{{"type":"Studio::Team","id":"{team}"}},{{"type":"Studio::Lob","id":"{lob}"}}],"tags":{{"Team":["{team}"]}}}}"#
        ));
        items.push(format!(
            r#"{{"uid":{{"type":"Studio::UserProfile","id":"gen-user-{u}-{team}"}},"attrs":{{"profileName":"gen-user-{u}-{team}","owner":{{"type":"Studio::User","id":"gen-user-{u}"}},"team":{{"type":"Studio::Team","id":"{team}"}},"lob":{{"type":"Studio::Lob","id":"{lob}"}}}},"parents":[{{"type":"Studio::Lob","id":"{lob}"}}],"tags":{{"Team":"{team}"}}}}"#
        ));
    }
    for a in 0..n.saturating_sub(users * 2) {
        let pool = match a % 3 {
            0 => "pool-lob-a",
            1 => "pool-lob-b",
            _ => "pool-shared",
        };
        let status = match a % 4 {
            2 => "QUARANTINED",
            1 => "ASSIGNED",
            _ => "AVAILABLE",
        };
        items.push(format!(
            r#"{{"uid":{{"type":"DataZone::Account","id":"9{a:011}"}},"attrs":{{"name":"gen-{a}","status":"{status}","regions":["us-east-1","eu-west-1"],"pool":{{"type":"DataZone::AccountPool","id":"{pool}"}},"lob":{{"type":"Studio::Lob","id":"lob-a"}}}},"parents":[{{"type":"DataZone::AccountPool","id":"{pool}"}}]}}"#
        ));
    }
    format!("[\n{}\n]\n", items.join(",\n"))
}

/// The directory workload: the seed's users table grown to `users` users, `dir-user-<i>`,
/// alternately in lob-a and lob-b, all in Team1, as DynamoDB items.
pub mod directory {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use authz_sidecar::directory::{AttributeValue, Item, ParentMapping, ReadError, TableMapping, TableReader};

    /// The table's name, as in `sidecar/config/directory-example.toml`.
    pub const USERS_TABLE: &str = "authz-users";

    /// The id of the `i`th user.
    pub fn user(i: usize) -> String {
        format!("dir-user-{i}")
    }

    /// The `i`th user's item.
    pub fn user_item(i: usize) -> Item {
        let lob = if i.is_multiple_of(2) { "lob-a" } else { "lob-b" };
        [
            ("userName".to_owned(), AttributeValue::S(user(i))),
            ("lob".to_owned(), AttributeValue::S(lob.to_owned())),
            ("teams".to_owned(), AttributeValue::Ss(vec!["Team1".to_owned()])),
            ("email".to_owned(), AttributeValue::S(format!("{}@example.com", user(i)))),
        ]
        .into()
    }

    /// The users table's mapping, as in the shipped example.
    pub fn users_mapping() -> Result<TableMapping, Box<cedar_policy::ParseErrors>> {
        let type_name = |t: &str| t.parse::<cedar_policy::EntityTypeName>().map_err(Box::new);
        Ok(TableMapping {
            table: USERS_TABLE.to_owned(),
            entity_type: type_name("Studio::User")?,
            key: "userName".to_owned(),
            attributes: vec![authz_sidecar::directory::AttributeMapping {
                name: "email".to_owned(),
                from: "email".to_owned(),
                kind: authz_sidecar::directory::ValueKind::Plain,
            }],
            parents: vec![
                ParentMapping { from: "lob".to_owned(), entity_type: type_name("Studio::Lob")? },
                ParentMapping { from: "teams".to_owned(), entity_type: type_name("Studio::Team")? },
            ],
            tags: vec![("Team".to_owned(), "teams".to_owned())],
        })
    }

    /// The table in memory, counting reads.
    #[derive(Debug, Default)]
    pub struct MemoryTable {
        items: HashMap<String, Item>,
        pub reads: AtomicUsize,
    }

    impl MemoryTable {
        pub fn with_users(users: usize) -> Self {
            Self { items: (0..users).map(|i| (user(i), user_item(i))).collect(), reads: AtomicUsize::new(0) }
        }
    }

    /// A [`MemoryTable`] shared between the directory reading it and its owner.
    #[derive(Debug, Clone)]
    pub struct Shared(pub std::sync::Arc<MemoryTable>);

    impl TableReader for Shared {
        async fn read(&self, _table: &str, _key: &str, keys: &[String]) -> Result<HashMap<String, Item>, ReadError> {
            self.0.reads.fetch_add(1, Ordering::Relaxed);
            Ok(keys.iter().filter_map(|k| Some((k.clone(), self.0.items.get(k)?.clone()))).collect())
        }
    }
}
