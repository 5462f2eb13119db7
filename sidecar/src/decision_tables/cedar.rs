//! The `cedar` CLI's `run-tests` format: a JSON array of tests, each a request, the
//! whole entity store it is decided over, the decision, policies that must be among
//! the deciding ones (`reason`), and the exact number of evaluation errors:
//!
//! ```json
//! [{ "name": "user-1 opens their Team1 profile",
//!    "request": { "principal": "Studio::User::\"user-1\"",
//!                 "action": "Studio::Action::\"CreatePresignedDomainUrl\"",
//!                 "resource": "Studio::UserProfile::\"user-1-team1\"",
//!                 "context": { "sourceVpce": "vpce-0a1a000000000001a", "sourceIp": "10.1.2.3" } },
//!    "entities": [ … every entity of the question … ],
//!    "decision": "allow", "reason": ["presign-own-profile"], "num_errors": 0 }]
//! ```
//!
//! `authz-sidecar test` runs such a file with the sidecar's policies and schema and
//! the sidecar's semantics: unlike the `cedar` CLI, a policy that fails to evaluate
//! denies the request (fail closed), so a test expecting `allow` with errors fails here.
//! A test's entities are its whole store, unlike a table case's, which are laid over
//! the stored entities; [`export`] writes each table case with the stored entities and
//! its own, so an exported test asks exactly the question the case asked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cedar_policy::Entities;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CaseError, Outcome, Suite, TableFile, decide_case, resolve};
use crate::authz::{Effect, Engine, parse_entity_uid, resolve_action, uid_text};
use crate::policy_store::{Location, PolicySnapshot, Problem};

/// One test as the `cedar` CLI writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CedarTest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub request: CedarRequest,
    /// Cedar entity JSON: every entity the question is decided over.
    pub entities: Value,
    pub decision: Effect,
    /// Policies that must be among those that decided.
    pub reason: Vec<String>,
    /// How many policies must fail to evaluate, exactly.
    pub num_errors: usize,
}

/// The request of a test: uids as text, the context as Cedar JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CedarRequest {
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub context: Value,
}

/// Read a file of tests (`text`, from `path`).
pub(super) fn parse(path: &Path, text: &str) -> Result<Vec<CedarTest>, Problem> {
    serde_json::from_str(text).map_err(|e| {
        Problem::new(
            path,
            Some(Location { line: e.line(), column: e.column() }),
            format!("not a list of `cedar run-tests` tests: {e}"),
        )
    })
}

impl CedarTest {
    /// Its name, or its place in the file.
    pub fn display_name(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("(unnamed test #{})", index + 1))
    }

    /// Decide the test over its entities alone, with every policy of `snapshot`.
    pub(super) fn run(&self, engine: &Engine, snapshot: &PolicySnapshot) -> Result<Outcome, CaseError> {
        let principal = parse_entity_uid(&self.request.principal)?;
        let action = resolve_action(snapshot.schema(), &self.request.action)?;
        let resource = parse_entity_uid(&self.request.resource)?;
        let entities = Entities::from_json_value(self.entities.clone(), Some(snapshot.schema()))
            .map_err(|e| CaseError::Entity { json: "the test's `entities`".to_owned(), reason: e.to_string() })?;
        let decision =
            engine.decide_in_store(snapshot, (principal, action, resource), self.request.context.clone(), &entities)?;
        let missing: Vec<&String> = self.reason.iter().filter(|id| !decision.policies.contains(*id)).collect();
        if decision.effect == self.decision && missing.is_empty() && decision.errors.len() == self.num_errors {
            return Ok(Outcome::Passed(decision));
        }
        let reason = if self.reason.is_empty() {
            String::new()
        } else {
            format!(" with [{}] among the deciding policies", self.reason.join(", "))
        };
        let expected = format!("{}{reason} and {} evaluation errors", self.decision, self.num_errors);
        Ok(Outcome::Failed { expected, got: decision })
    }
}

/// A case that cannot be written as a `cedar` test.
#[derive(Debug, Clone)]
pub struct ExportProblem {
    pub file: PathBuf,
    pub case: String,
    pub error: CaseError,
}

/// Every case of `tables` as a `cedar` test named `<file stem>: <case name>`: the
/// context with the table's defaults applied, the action in full, the stored entities
/// with the case's own laid over them, `reason` the case's `policies` (Cedar checks
/// them as a subset; `test` here checks them exactly), and `num_errors` what the case
/// gets from the policies now. Tests already in the format are written as they are.
pub fn export(snapshot: &PolicySnapshot, tables: &[TableFile]) -> Result<Vec<CedarTest>, Vec<ExportProblem>> {
    let engine = Engine::new();
    let stored = snapshot.all_entities().map_err(|e| e.to_string()).and_then(|entities| {
        let mut json = entities.to_json_value().map_err(|e| e.to_string())?;
        // in the order of their uids, so that an export changes only where the entities do
        if let Value::Array(entities) = &mut json {
            entities.sort_by_cached_key(|e| e.get("uid").map(ToString::to_string));
        }
        Ok(json)
    });
    let mut tests = Vec::new();
    let mut problems = Vec::new();
    for file in tables {
        let stem = file.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match &file.suite {
            Suite::Cedar(own) => tests.extend(own.iter().enumerate().map(|(i, test)| CedarTest {
                name: Some(format!("{stem}: {}", test.display_name(i))),
                ..test.clone()
            })),
            Suite::Table(table) => {
                for case in &table.cases {
                    let written = resolve(snapshot, &table.defaults, case).and_then(|resolved| {
                        let decision = decide_case(&engine, snapshot, &resolved)?;
                        let stored = stored
                            .clone()
                            .map_err(|reason| CaseError::Entity { json: "the stored entities".to_owned(), reason })?;
                        let (context, own) = explicit(snapshot, &resolved)?;
                        Ok(CedarTest {
                            name: Some(format!("{stem}: {}", case.name)),
                            request: CedarRequest {
                                principal: uid_text(&resolved.principal),
                                action: uid_text(&resolved.action),
                                resource: uid_text(&resolved.resource),
                                context,
                            },
                            entities: laid_over(stored, &own),
                            decision: case.expect,
                            reason: case.policies.clone().unwrap_or_default(),
                            num_errors: decision.errors.len(),
                        })
                    });
                    match written {
                        Ok(test) => tests.push(test),
                        Err(error) => {
                            problems.push(ExportProblem { file: file.path.clone(), case: case.name.clone(), error });
                        }
                    }
                }
            }
        }
    }
    if problems.is_empty() { Ok(tests) } else { Err(problems) }
}

/// The case's context and entities with every value written as Cedar JSON says it
/// without a schema (`{"__extn": {"fn": "ip", "arg": "10.1.2.3"}}`, `{"__entity": …}`):
/// the `cedar` CLI's `run-tests` reads them without one, so a plain `"10.1.2.3"` would
/// be a string there, not an IP address.
fn explicit(snapshot: &PolicySnapshot, case: &super::Resolved) -> Result<(Value, Vec<Value>), CaseError> {
    let schema = snapshot.schema();
    let context =
        cedar_policy::Context::from_json_value(Value::Object(case.context.clone()), Some((schema, &case.action)))
            .map_err(|e| e.to_string())
            .and_then(|context| context.to_json_value().map_err(|e| e.to_string()))
            .map_err(|reason| {
                CaseError::Request(crate::authz::RequestError::BadContext { action: case.action.to_string(), reason })
            })?;
    let entities = case
        .entities
        .iter()
        .map(|json| {
            cedar_policy::Entity::from_json_value(json.clone(), Some(schema))
                .map_err(|e| e.to_string())
                .and_then(|entity| entity.to_json_value().map_err(|e| e.to_string()))
                .map_err(|reason| CaseError::Entity { json: json.to_string(), reason })
        })
        .collect::<Result<_, _>>()?;
    Ok((context, entities))
}

/// `stored` (a JSON array of entities) with each of `own` replacing the entity of the
/// same uid, or added.
fn laid_over(stored: Value, own: &[Value]) -> Value {
    let Value::Array(mut entities) = stored else { return stored };
    let uid = |entity: &Value| cedar_policy::EntityUid::from_json(entity.get("uid")?.clone()).ok();
    let at: HashMap<cedar_policy::EntityUid, usize> =
        entities.iter().enumerate().filter_map(|(i, e)| Some((uid(e)?, i))).collect();
    for entity in own {
        match uid(entity).and_then(|uid| at.get(&uid)).and_then(|&i| entities.get_mut(i)) {
            Some(stored) => *stored = entity.clone(),
            None => entities.push(entity.clone()),
        }
    }
    Value::Array(entities)
}
