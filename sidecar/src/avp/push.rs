//! Publishing `policies/` to a Verified Permissions store, and writing a store to files.
//!
//! [`plan`] compares the local snapshot (already validated, with entities, exactly as
//! the sidecar would load it) with the store: the schema, and the static policies keyed
//! by name, where a store policy's name is the local policy's `@id`. [`apply`] carries
//! the plan out: schema first, then new and changed policies, deletions last, so a
//! forbid is never missing while its replacement is being written. Template-linked
//! policies are left alone: they are made from templates in the store, not from files.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aws_sdk_verifiedpermissions::Client;
use aws_sdk_verifiedpermissions::types::{
    BatchGetPolicyInputItem, PolicyDefinition, PolicyDefinitionDetail, PolicyType, SchemaDefinition,
    StaticPolicyDefinition, UpdatePolicyDefinition, UpdateStaticPolicyDefinition,
};
use cedar_policy::{Policy, PolicyId, SchemaFragment};

use super::AvpError;
use super::mirror::{StoreContents, StorePolicy};
use crate::policy_store::{PolicySnapshot, SourceFile};

/// AVP policy names carry this prefix.
const NAME_PREFIX: &str = "name/";

/// A static policy in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePolicy {
    pub policy_id: String,
    /// The name without its `name/` prefix, when the policy has one.
    pub name: Option<String>,
    pub statement: String,
}

/// What a push changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The schema to put (AVP's JSON form), when it differs from the store's.
    pub schema: Option<String>,
    /// Local policies the store does not have: (`@id`, statement).
    pub create: Vec<(String, String)>,
    /// Store policies whose statement changed in what AVP lets an update change (the
    /// action and the conditions): (`@id`, store policy id, statement).
    pub update: Vec<(String, String, String)>,
    /// Store policies whose effect, principal or resource changed, which AVP cannot
    /// update: created anew, then the old one deleted. (`@id`, store policy id, statement)
    pub replace: Vec<(String, String, String)>,
    /// Store static policies with no local policy of their name: (store policy id, name).
    pub delete: Vec<(String, Option<String>)>,
    /// Template-linked policies in the store, which push leaves alone.
    pub kept_linked: usize,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.schema.is_none()
            && self.create.is_empty()
            && self.update.is_empty()
            && self.replace.is_empty()
            && self.delete.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "schema: {}", if self.schema.is_some() { "update" } else { "unchanged" })?;
        for (name, _) in &self.create {
            writeln!(f, "create  {name}")?;
        }
        for (name, id, _) in &self.update {
            writeln!(f, "update  {name} (policy {id})")?;
        }
        for (name, id, _) in &self.replace {
            writeln!(
                f,
                "replace {name} (policy {id}: effect, principal or resource changed, which AVP cannot update)"
            )?;
        }
        for (id, name) in &self.delete {
            writeln!(f, "delete  {} (policy {id})", name.as_deref().unwrap_or("<unnamed>"))?;
        }
        if self.kept_linked > 0 {
            writeln!(f, "keep    {} template-linked policies (push manages static policies only)", self.kept_linked)?;
        }
        let changes = self.create.len() + self.update.len() + self.replace.len() + self.delete.len();
        write!(f, "{} schema change, {changes} policy changes", usize::from(self.schema.is_some()))
    }
}

/// Why policies could not be converted between files and a store's forms.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{}: {reason}", path.display())]
    File { path: std::path::PathBuf, reason: String },
    #[error("namespace `{0}` is declared in more than one schema file")]
    SharedNamespace(String),
    #[error("the store's schema: {0}")]
    StoreSchema(String),
    #[error("policy `{id}`: {reason}")]
    Policy { id: String, reason: String },
}

impl ConvertError {
    fn file(path: &Path, reason: impl ToString) -> Self {
        Self::File { path: path.to_path_buf(), reason: reason.to_string() }
    }
}

/// The schema of `local` in AVP's JSON form: every `.cedarschema` file's namespaces in
/// one JSON object.
pub fn schema_json(files: &[SourceFile]) -> Result<String, ConvertError> {
    let mut merged = serde_json::Map::new();
    for file in files {
        let (fragment, _) =
            SchemaFragment::from_cedarschema_str(&file.text).map_err(|e| ConvertError::file(&file.path, e))?;
        let value = fragment.to_json_value().map_err(|e| ConvertError::file(&file.path, e))?;
        let serde_json::Value::Object(namespaces) = value else {
            return Err(ConvertError::file(&file.path, "the schema is not a JSON object"));
        };
        for (namespace, body) in namespaces {
            if merged.insert(namespace.clone(), body).is_some() {
                return Err(ConvertError::SharedNamespace(namespace));
            }
        }
    }
    Ok(serde_json::Value::Object(merged).to_string())
}

/// Read what push compares against: the schema (`None` when the store has none), the
/// static policies with their statements, and how many template-linked ones there are.
pub async fn read_remote(client: &Client, store: &str) -> Result<(Option<String>, Vec<RemotePolicy>, usize), AvpError> {
    let schema = match client.get_schema().policy_store_id(store).send().await {
        Ok(out) => Some(out.schema().to_owned()),
        Err(e) => match AvpError::from_sdk("GetSchema", store, "schema", e) {
            AvpError::NotFound { .. } => None,
            other => return Err(other),
        },
    };
    let mut statics: Vec<(String, Option<String>)> = Vec::new();
    let mut linked = 0;
    let mut pages = client.list_policies().policy_store_id(store).max_results(50).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AvpError::from_sdk("ListPolicies", store, "policy store", e))?;
        for item in page.policies() {
            if item.policy_type() == &PolicyType::Static {
                statics.push((item.policy_id().to_owned(), item.name().map(strip_name)));
            } else {
                linked += 1;
            }
        }
    }
    let mut remote = Vec::new();
    for chunk in statics.chunks(100) {
        let requests = chunk
            .iter()
            .map(|(id, _)| BatchGetPolicyInputItem::builder().policy_store_id(store).policy_id(id).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AvpError::Service {
                operation: "BatchGetPolicy",
                store: store.to_owned(),
                message: e.to_string(),
            })?;
        let batch = client
            .batch_get_policy()
            .set_requests(Some(requests))
            .send()
            .await
            .map_err(|e| AvpError::from_sdk("BatchGetPolicy", store, "policy store", e))?;
        if let Some(error) = batch.errors().first() {
            return Err(AvpError::Service {
                operation: "BatchGetPolicy",
                store: store.to_owned(),
                message: format!("policy `{}`: {}", error.policy_id(), error.message()),
            });
        }
        for item in batch.results() {
            if let Some(PolicyDefinitionDetail::Static(s)) = item.definition() {
                let name = chunk.iter().find(|(id, _)| id == item.policy_id()).and_then(|(_, name)| name.clone());
                remote.push(RemotePolicy {
                    policy_id: item.policy_id().to_owned(),
                    name,
                    statement: s.statement().to_owned(),
                });
            }
        }
    }
    Ok((schema, remote, linked))
}

fn strip_name(name: &str) -> String {
    name.strip_prefix(NAME_PREFIX).unwrap_or(name).to_owned()
}

/// Compare the local snapshot with the store.
pub fn plan(
    local: &PolicySnapshot,
    local_schema_json: &str,
    remote_schema: Option<&str>,
    remote: &[RemotePolicy],
    kept_linked: usize,
) -> Plan {
    let same_schema = remote_schema
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .zip(serde_json::from_str::<serde_json::Value>(local_schema_json).ok())
        .is_some_and(|(r, l)| r == l);
    let mut plan =
        Plan { schema: (!same_schema).then(|| local_schema_json.to_owned()), kept_linked, ..Plan::default() };
    let local_policies: BTreeMap<String, String> =
        local.policies().policies().map(|p| (p.id().to_string(), p.to_string())).collect();
    for (name, statement) in &local_policies {
        match remote.iter().find(|r| r.name.as_deref() == Some(name.as_str())) {
            None => plan.create.push((name.clone(), statement.clone())),
            Some(r) if r.statement.trim() == statement.trim() => {}
            Some(r) if updatable(&r.statement, statement) => {
                plan.update.push((name.clone(), r.policy_id.clone(), statement.clone()));
            }
            Some(r) => plan.replace.push((name.clone(), r.policy_id.clone(), statement.clone())),
        }
    }
    for r in remote {
        if !r.name.as_ref().is_some_and(|n| local_policies.contains_key(n)) {
            plan.delete.push((r.policy_id.clone(), r.name.clone()));
        }
    }
    plan
}

/// Whether AVP can update `old` into `new`: the same effect, principal and resource.
fn updatable(old: &str, new: &str) -> bool {
    let (Ok(old), Ok(new)) = (Policy::parse(None, old), Policy::parse(None, new)) else { return false };
    old.effect() == new.effect()
        && old.principal_constraint() == new.principal_constraint()
        && old.resource_constraint() == new.resource_constraint()
}

/// Carry out `plan` on the store, printing each step to `out`.
pub async fn apply(client: &Client, store: &str, plan: &Plan, out: &mut dyn std::io::Write) -> Result<(), AvpError> {
    let fail = |operation, e: String| AvpError::Service { operation, store: store.to_owned(), message: e };
    if let Some(schema) = &plan.schema {
        client
            .put_schema()
            .policy_store_id(store)
            .definition(SchemaDefinition::CedarJson(schema.clone()))
            .send()
            .await
            .map_err(|e| AvpError::from_sdk("PutSchema", store, "policy store", e))?;
        let _ = writeln!(out, "schema updated");
    }
    let static_definition = |statement: &str| {
        StaticPolicyDefinition::builder()
            .statement(statement)
            .build()
            .map(PolicyDefinition::Static)
            .map_err(|e| fail("CreatePolicy", e.to_string()))
    };
    for (name, statement) in &plan.create {
        client
            .create_policy()
            .policy_store_id(store)
            .name(format!("{NAME_PREFIX}{name}"))
            .definition(static_definition(statement)?)
            .send()
            .await
            .map_err(|e| AvpError::from_sdk("CreatePolicy", store, "policy store", e))?;
        let _ = writeln!(out, "created {name}");
    }
    for (name, id, statement) in &plan.update {
        let definition = UpdateStaticPolicyDefinition::builder()
            .statement(statement)
            .build()
            .map_err(|e| fail("UpdatePolicy", e.to_string()))?;
        client
            .update_policy()
            .policy_store_id(store)
            .policy_id(id)
            .definition(UpdatePolicyDefinition::Static(definition))
            .send()
            .await
            .map_err(|e| AvpError::from_sdk("UpdatePolicy", store, "policy", e))?;
        let _ = writeln!(out, "updated {name}");
    }
    for (name, old_id, statement) in &plan.replace {
        // new first (unnamed, names are unique), then the old one goes, then the new one
        // takes the name: the policy is never absent
        let created = client
            .create_policy()
            .policy_store_id(store)
            .definition(static_definition(statement)?)
            .send()
            .await
            .map_err(|e| AvpError::from_sdk("CreatePolicy", store, "policy store", e))?;
        client
            .delete_policy()
            .policy_store_id(store)
            .policy_id(old_id)
            .send()
            .await
            .map_err(|e| AvpError::from_sdk("DeletePolicy", store, "policy", e))?;
        client
            .update_policy()
            .policy_store_id(store)
            .policy_id(created.policy_id())
            .name(format!("{NAME_PREFIX}{name}"))
            .send()
            .await
            .map_err(|e| AvpError::from_sdk("UpdatePolicy", store, "policy", e))?;
        let _ = writeln!(out, "replaced {name}");
    }
    for (id, name) in &plan.delete {
        client
            .delete_policy()
            .policy_store_id(store)
            .policy_id(id)
            .send()
            .await
            .map_err(|e| AvpError::from_sdk("DeletePolicy", store, "policy", e))?;
        let _ = writeln!(out, "deleted {} (policy {id})", name.as_deref().unwrap_or("<unnamed>"));
    }
    Ok(())
}

/// Write a store as files a team can keep in git: `schema.cedarschema` (converted from
/// AVP's JSON), one `.cedar` file of static policies with `@id` set to the store's
/// policy ids, and one `.cedar` file per template (with the policies linked from it
/// listed in a comment, since files cannot link templates).
pub fn write_files(contents: &StoreContents, dir: &Path) -> Result<Vec<std::path::PathBuf>, ConvertError> {
    std::fs::create_dir_all(dir).map_err(|e| ConvertError::file(dir, e))?;
    let mut written = Vec::new();
    let mut write = |name: &str, text: String| -> Result<(), ConvertError> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| ConvertError::file(&path, e))?;
        written.push(path);
        Ok(())
    };
    let fragment =
        SchemaFragment::from_json_str(&contents.schema_json).map_err(|e| ConvertError::StoreSchema(e.to_string()))?;
    let schema = fragment.to_cedarschema().map_err(|e| ConvertError::StoreSchema(e.to_string()))?;
    write("schema.cedarschema", schema)?;

    let mut policies =
        format!("// Static policies of Verified Permissions policy store {}.\n", contents.policy_store_id);
    for (id, policy) in &contents.policies {
        if let StorePolicy::Static { statement } = policy {
            let parsed = Policy::parse(Some(PolicyId::new(id)), statement)
                .map_err(|e| ConvertError::Policy { id: id.clone(), reason: e.to_string() })?;
            let text = if parsed.annotation("id").is_some() {
                statement.trim().to_owned()
            } else {
                format!("@id({})\n{}", serde_json::Value::String(id.clone()), statement.trim())
            };
            policies.push('\n');
            policies.push_str(&text);
            policies.push('\n');
        }
    }
    write("policies.cedar", policies)?;

    for (template_id, statement) in &contents.templates {
        let links: Vec<String> = contents
            .policies
            .iter()
            .filter_map(|(id, p)| match p {
                StorePolicy::Linked { template, principal, resource } if template == template_id => Some(format!(
                    "//   {id}: principal {}, resource {}",
                    principal.as_ref().map_or("-".to_owned(), |(t, i)| format!("{t}::{i:?}")),
                    resource.as_ref().map_or("-".to_owned(), |(t, i)| format!("{t}::{i:?}")),
                )),
                _ => None,
            })
            .collect();
        let text = format!(
            "// Template {template_id} of policy store {}. Templates cannot be linked from files;\n\
             // this file is a record, not loaded by `authz-sidecar validate` (rename it to *.cedar.template).\n\
             // Linked policies:\n{}\n{}\n",
            contents.policy_store_id,
            if links.is_empty() { "//   (none)".to_owned() } else { links.join("\n") },
            statement.trim()
        );
        write(&format!("{template_id}.cedar.template"), text)?;
    }
    Ok(written)
}
