//! Mirroring a Verified Permissions policy store into a policy snapshot.
//!
//! One [`Mirror::fetch`] reads the store's listing (GetSchema, ListPolicyTemplates,
//! ListPolicies, all pages) and fetches only the definitions it has not seen at their
//! current last-updated time (GetPolicyTemplate, BatchGetPolicy in batches of 100), so an
//! unchanged store costs a handful of calls and no rebuild, and a changed policy costs
//! one more. Every call counts against a per-refresh budget; a store too large for one
//! budget is read over several refreshes, keeping what each fetched.
//!
//! [`snapshot`] turns the store into a [`PolicySnapshot`]: the schema (AVP keeps it as
//! JSON), templates, static policies and template-linked policies, each under its AVP
//! id, so decision logs name the store's policies; strict validation and entities from
//! the entity directory, as for files.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use aws_sdk_verifiedpermissions::Client;
use aws_sdk_verifiedpermissions::primitives::DateTime;
use aws_sdk_verifiedpermissions::types::{BatchGetPolicyInputItem, EntityIdentifier, PolicyDefinitionDetail};
use cedar_policy::{EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Schema, SlotId, Template};
use sha2::{Digest, Sha256};

use super::AvpError;
use crate::policy_store::{
    DefinedAt, EntitySources, LoadError, PolicyParts, PolicySnapshot, Problem, SnapshotSource, SourceFile,
};

/// BatchGetPolicy takes at most 100 requests.
const BATCH: usize = 100;
/// The largest page the list operations return.
const PAGE: i32 = 50;

/// A policy as the store defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorePolicy {
    /// A static policy: its Cedar statement.
    Static { statement: String },
    /// A policy linked from a template, with the entities for the slots it fills.
    Linked { template: String, principal: Option<(String, String)>, resource: Option<(String, String)> },
}

/// Everything a snapshot is built from, as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreContents {
    pub policy_store_id: String,
    /// The schema in Cedar's JSON format, as AVP keeps it.
    pub schema_json: String,
    /// Template id → statement.
    pub templates: BTreeMap<String, String>,
    /// Policy id → definition.
    pub policies: BTreeMap<String, StorePolicy>,
    /// Hex SHA-256 over the schema and every template's and policy's id and last-updated
    /// time: equal fingerprints mean an unchanged store.
    pub fingerprint: String,
}

#[derive(Debug, Clone)]
struct Fetched<T> {
    updated: DateTime,
    value: T,
}

/// A store being mirrored, with the definitions fetched so far.
#[derive(Debug)]
pub struct Mirror {
    client: Client,
    store: String,
    budget: usize,
    templates: HashMap<String, Fetched<String>>,
    policies: HashMap<String, Fetched<StorePolicy>>,
    last: Option<Arc<StoreContents>>,
}

impl Mirror {
    /// `budget` bounds the calls one [`Mirror::fetch`] makes (at least the 3 a listing of
    /// a small store needs).
    pub fn new(client: Client, policy_store_id: impl Into<String>, budget: usize) -> Self {
        Self {
            client,
            store: policy_store_id.into(),
            budget: budget.max(3),
            templates: HashMap::new(),
            policies: HashMap::new(),
            last: None,
        }
    }

    pub fn policy_store_id(&self) -> &str {
        &self.store
    }

    /// Read the store. Returns the same `Arc` as last time when nothing changed, so a
    /// caller can skip rebuilding with a pointer comparison or the fingerprint.
    pub async fn fetch(&mut self) -> Result<Arc<StoreContents>, AvpError> {
        let mut calls = Calls { made: 0, budget: self.budget };
        let store = self.store.clone();

        calls.check(0)?;
        calls.count();
        let schema = self
            .client
            .get_schema()
            .policy_store_id(&store)
            .send()
            .await
            .map_err(|e| AvpError::from_sdk("GetSchema", &store, "schema (the sidecar needs one)", e))?;
        let schema_json = schema.schema().to_owned();

        let mut listed_templates: Vec<(String, DateTime)> = Vec::new();
        let mut pages =
            self.client.list_policy_templates().policy_store_id(&store).max_results(PAGE).into_paginator().send();
        loop {
            calls.check(0)?;
            let Some(page) = pages.next().await else { break };
            calls.count();
            let page = page.map_err(|e| AvpError::from_sdk("ListPolicyTemplates", &store, "policy store", e))?;
            listed_templates.extend(
                page.policy_templates().iter().map(|t| (t.policy_template_id().to_owned(), *t.last_updated_date())),
            );
        }

        let mut listed_policies: Vec<(String, DateTime)> = Vec::new();
        let mut pages = self.client.list_policies().policy_store_id(&store).max_results(PAGE).into_paginator().send();
        loop {
            calls.check(0)?;
            let Some(page) = pages.next().await else { break };
            calls.count();
            let page = page.map_err(|e| AvpError::from_sdk("ListPolicies", &store, "policy store", e))?;
            listed_policies.extend(page.policies().iter().map(|p| (p.policy_id().to_owned(), *p.last_updated_date())));
        }

        let fingerprint = fingerprint(&schema_json, &listed_templates, &listed_policies);
        if let Some(last) = self.last.as_ref().filter(|last| last.fingerprint == fingerprint) {
            return Ok(last.clone());
        }

        self.templates.retain(|id, _| listed_templates.iter().any(|(listed, _)| listed == id));
        self.policies.retain(|id, _| listed_policies.iter().any(|(listed, _)| listed == id));

        let stale_templates: Vec<&String> = listed_templates
            .iter()
            .filter(|(id, updated)| self.templates.get(id).is_none_or(|f| f.updated != *updated))
            .map(|(id, _)| id)
            .collect();
        let stale_policies: Vec<&String> = listed_policies
            .iter()
            .filter(|(id, updated)| self.policies.get(id).is_none_or(|f| f.updated != *updated))
            .map(|(id, _)| id)
            .collect();

        for (done, id) in stale_templates.iter().enumerate() {
            let remaining = stale_templates.len() - done + stale_policies.len();
            calls.check(remaining)?;
            calls.count();
            let template = self
                .client
                .get_policy_template()
                .policy_store_id(&store)
                .policy_template_id(id.as_str())
                .send()
                .await
                .map_err(|e| AvpError::from_sdk("GetPolicyTemplate", &store, "policy template", e))?;
            let fetched = Fetched { updated: *template.last_updated_date(), value: template.statement().to_owned() };
            self.templates.insert((*id).clone(), fetched);
        }

        for (done, chunk) in stale_policies.chunks(BATCH).enumerate() {
            calls.check(stale_policies.len() - done * BATCH)?;
            calls.count();
            let requests = chunk
                .iter()
                .map(|id| BatchGetPolicyInputItem::builder().policy_store_id(&store).policy_id(id.as_str()).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| AvpError::Service {
                    operation: "BatchGetPolicy",
                    store: store.clone(),
                    message: e.to_string(),
                })?;
            let batch = self
                .client
                .batch_get_policy()
                .set_requests(Some(requests))
                .send()
                .await
                .map_err(|e| AvpError::from_sdk("BatchGetPolicy", &store, "policy store", e))?;
            if let Some(error) = batch.errors().first() {
                // e.g. a policy deleted between the listing and now: the next refresh sees
                // the store as it is then
                return Err(AvpError::Service {
                    operation: "BatchGetPolicy",
                    store,
                    message: format!("policy `{}`: {}: {}", error.policy_id(), error.code().as_str(), error.message()),
                });
            }
            for item in batch.results() {
                let value = definition(item.policy_id(), item.definition(), &store)?;
                self.policies
                    .insert(item.policy_id().to_owned(), Fetched { updated: *item.last_updated_date(), value });
            }
        }

        let templates = listed_templates
            .iter()
            .filter_map(|(id, _)| Some((id.clone(), self.templates.get(id)?.value.clone())))
            .collect::<BTreeMap<_, _>>();
        let policies = listed_policies
            .iter()
            .filter_map(|(id, _)| Some((id.clone(), self.policies.get(id)?.value.clone())))
            .collect::<BTreeMap<_, _>>();
        if templates.len() != listed_templates.len() || policies.len() != listed_policies.len() {
            return Err(AvpError::Service {
                operation: "BatchGetPolicy",
                store,
                message: "the store answered without some of the listed definitions".to_owned(),
            });
        }
        let contents =
            Arc::new(StoreContents { policy_store_id: store, schema_json, templates, policies, fingerprint });
        self.last = Some(contents.clone());
        Ok(contents)
    }
}

/// Counts calls against the budget.
struct Calls {
    made: usize,
    budget: usize,
}

impl Calls {
    /// Fail when the budget is spent, with `remaining` definitions still unfetched.
    fn check(&self, remaining: usize) -> Result<(), AvpError> {
        if self.made >= self.budget {
            return Err(AvpError::Budget { budget: self.budget, remaining });
        }
        Ok(())
    }

    fn count(&mut self) {
        self.made += 1;
    }
}

fn definition(id: &str, detail: Option<&PolicyDefinitionDetail>, store: &str) -> Result<StorePolicy, AvpError> {
    let entity = |e: Option<&EntityIdentifier>| e.map(|e| (e.entity_type().to_owned(), e.entity_id().to_owned()));
    match detail {
        Some(PolicyDefinitionDetail::Static(s)) => Ok(StorePolicy::Static { statement: s.statement().to_owned() }),
        Some(PolicyDefinitionDetail::TemplateLinked(t)) => Ok(StorePolicy::Linked {
            template: t.policy_template_id().to_owned(),
            principal: entity(t.principal()),
            resource: entity(t.resource()),
        }),
        _ => Err(AvpError::Service {
            operation: "BatchGetPolicy",
            store: store.to_owned(),
            message: format!("policy `{id}` has a definition this sidecar does not know; upgrade the sidecar"),
        }),
    }
}

fn fingerprint(schema: &str, templates: &[(String, DateTime)], policies: &[(String, DateTime)]) -> String {
    let mut hasher = Sha256::new();
    hasher.update((schema.len() as u64).to_be_bytes());
    hasher.update(schema.as_bytes());
    for (tag, listed) in [("templates", templates), ("policies", policies)] {
        let mut sorted: Vec<&(String, DateTime)> = listed.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        hasher.update(tag.as_bytes());
        for (id, updated) in sorted {
            hasher.update(id.as_bytes());
            hasher.update([0]);
            hasher.update(updated.secs().to_be_bytes());
            hasher.update(updated.subsec_nanos().to_be_bytes());
        }
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The version digest of a snapshot built from `contents` and `entities`.
pub fn combined_digest(contents: &StoreContents, entities: &EntitySources) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"avp");
    hasher.update(contents.fingerprint.as_bytes());
    hasher.update(entities.digest.as_bytes());
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a store's schema, template or policy is said to come from in errors and origins.
pub fn origin_path(store: &str, kind: &str, id: &str) -> PathBuf {
    PathBuf::from(format!("avp://{store}/{kind}/{id}"))
}

/// Build a snapshot from a store's contents and the entity files. Every problem is
/// collected before failing, as for files.
pub fn snapshot(
    contents: &StoreContents,
    entities: &EntitySources,
    entities_dir: PathBuf,
    generation: u64,
) -> Result<PolicySnapshot, LoadError> {
    let store = &contents.policy_store_id;
    let mut problems = Vec::new();
    let schema = match Schema::from_json_str(&contents.schema_json) {
        Ok(schema) => Some(schema),
        Err(e) => {
            let path = origin_path(store, "schema", "schema.json");
            problems.extend(Problem::from_diagnostic(&path, &contents.schema_json, &e));
            None
        }
    };

    let mut texts = Vec::new();
    let mut origins = HashMap::new();
    let mut set = PolicySet::new();
    for (id, statement) in &contents.templates {
        let path = origin_path(store, "templates", id);
        match Template::parse(Some(PolicyId::new(id)), statement) {
            Ok(template) => {
                if let Err(e) = set.add_template(template) {
                    problems.push(Problem::new(&path, None, e.to_string()));
                }
            }
            Err(e) => problems.extend(Problem::from_diagnostic(&path, statement, &e)),
        }
        texts.push(SourceFile { path, text: statement.clone() });
    }
    for (id, policy) in &contents.policies {
        let path = origin_path(store, "policies", id);
        origins.insert(PolicyId::new(id), DefinedAt { file: path.clone(), location: None });
        match policy {
            StorePolicy::Static { statement } => {
                match Policy::parse(Some(PolicyId::new(id)), statement) {
                    Ok(policy) => {
                        if let Err(e) = set.add(policy) {
                            problems.push(Problem::new(&path, None, e.to_string()));
                        }
                    }
                    Err(e) => problems.extend(Problem::from_diagnostic(&path, statement, &e)),
                }
                texts.push(SourceFile { path, text: statement.clone() });
            }
            StorePolicy::Linked { template, principal, resource } => {
                let mut slots = HashMap::new();
                for (slot, entity) in [(SlotId::principal(), principal), (SlotId::resource(), resource)] {
                    let Some((entity_type, entity_id)) = entity else { continue };
                    match EntityTypeName::from_str(entity_type) {
                        Ok(type_name) => {
                            slots.insert(slot, EntityUid::from_type_name_and_id(type_name, EntityId::new(entity_id)));
                        }
                        Err(e) => problems.push(Problem::new(
                            &path,
                            None,
                            format!("links `{entity_type}`, which is not an entity type name: {e}"),
                        )),
                    }
                }
                if let Err(e) = set.link(PolicyId::new(template), PolicyId::new(id), slots) {
                    problems.push(Problem::new(&path, None, format!("cannot link template `{template}`: {e}")));
                }
            }
        }
    }
    let Some(schema) = schema.filter(|_| problems.is_empty()) else {
        return Err(LoadError::new(problems));
    };

    let digest = combined_digest(contents, entities);
    let parts = PolicyParts {
        schema,
        policies: set,
        policy_origins: origins,
        statement_offsets: HashMap::new(),
        policy_texts: &texts,
    };
    let source = SnapshotSource::VerifiedPermissions { policy_store_id: store.clone(), entities: entities_dir };
    PolicySnapshot::from_parts(parts, &entities.entities, &digest, source, generation)
}
