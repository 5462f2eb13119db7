//! Decision tables: the security team's unit tests for policies.
//!
//! A table is a YAML or JSON file of named cases, each a request and the decision it
//! must get (and, optionally, exactly which policies must decide it):
//!
//! ```yaml
//! defaults:                      # merged into every case; all keys optional
//!   action: Studio::Action::"CreatePresignedDomainUrl"
//!   context: { sourceVpce: vpce-0a1a000000000001a, sourceIp: 10.1.2.3 }
//! cases:
//!   - name: user-1 opens their own Team1 profile
//!     principal: Studio::User::"user-1"
//!     resource: Studio::UserProfile::"user-1-team1"
//!     expect: allow
//!     policies: [presign-own-profile]
//!   - name: not through a VPC endpoint
//!     principal: Studio::User::"user-1"
//!     resource: Studio::UserProfile::"user-1-team1"
//!     context: { sourceVpce: null }   # null removes a default key
//!     expect: deny
//! ```
//!
//! A case's `context` is laid over the defaults key by key; its `entities` (Cedar entity
//! JSON) are added to the defaults' and replace stored entities with the same uid for
//! that case, exactly as the data plane adds the principal it builds from a token.
//! The runner asks the same [`crate::authz::Engine`] as the sidecar.
//!
//! A `*.json` file holding an array is a suite of tests in the `cedar` CLI's
//! `run-tests` format instead (see [`cedar`]), and [`cedar::export`] writes the tables
//! in that format, so a team can move tests between the two tools.

pub mod cedar;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use cedar_policy::{Entity, EntityUid};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::authz::{Decision, DecisionRequest, Effect, Engine, RequestError, parse_entity_uid, resolve_action};
use crate::policy_store::{LoadError, Location, PolicySnapshot, Problem};

/// One table file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// What the table is about (shown nowhere but the file; for readers).
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub defaults: CaseFields,
    pub cases: Vec<Case>,
}

/// The request fields a case (or the defaults) may set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFields {
    pub principal: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub context: Option<Map<String, Value>>,
    pub entities: Option<Vec<Value>>,
}

/// One named case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(flatten)]
    pub fields: CaseFields,
    pub expect: Effect,
    /// When given, the deciding policies must be exactly these.
    #[serde(default)]
    pub policies: Option<Vec<String>>,
}

/// A table file and its cases.
#[derive(Debug, Clone)]
pub struct TableFile {
    pub path: PathBuf,
    pub suite: Suite,
}

/// What a file holds: a decision table, or tests in the `cedar` CLI's format.
#[derive(Debug, Clone)]
pub enum Suite {
    Table(Table),
    Cedar(Vec<cedar::CedarTest>),
}

/// What became of one case.
#[derive(Debug, Clone)]
pub enum Outcome {
    Passed(Decision),
    /// The decision came out other than expected.
    Failed {
        expected: String,
        got: Decision,
    },
    /// The case could not be run (it does not fit the schema, a uid does not parse...).
    Error(CaseError),
}

/// Why a case could not be run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaseError {
    #[error("the case has no `{0}` (and the table no default)")]
    Missing(&'static str),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("entity {json}: {reason}")]
    Entity { json: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    pub outcome: Outcome,
}

/// Results of a run, and which policies decided which passing cases.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub results: Vec<CaseResult>,
    /// Every policy of the snapshot, with how many passing cases it decided.
    pub coverage: BTreeMap<String, usize>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| matches!(r.outcome, Outcome::Passed(_))).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// Policies that decided no passing case: nothing shows they do what they say.
    pub fn uncovered(&self) -> Vec<&str> {
        self.coverage.iter().filter(|(_, n)| **n == 0).map(|(id, _)| id.as_str()).collect()
    }
}

/// Read every `*.yaml`, `*.yml` and `*.json` table in `dir` (top level, sorted).
pub fn load_tables(dir: &Path) -> Result<Vec<TableFile>, LoadError> {
    let entries = fs::read_dir(dir)
        .map_err(|e| LoadError::single(Problem::new(dir, None, format!("cannot read the directory: {e}"))))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(LoadError::single(Problem::new(
            dir,
            None,
            "no decision tables: expected `*.yaml`, `*.yml` or `*.json` files in this directory",
        )));
    }
    let mut problems = Vec::new();
    let mut tables = Vec::new();
    for path in paths {
        match parse_suite(&path) {
            Ok(suite) => tables.push(TableFile { path, suite }),
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() { Ok(tables) } else { Err(LoadError::new(problems)) }
}

fn parse_suite(path: &Path) -> Result<Suite, Problem> {
    let text = fs::read_to_string(path).map_err(|e| Problem::new(path, None, format!("cannot read the file: {e}")))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    // a JSON array is the `cedar` CLI's test format; a table is an object
    if is_json && text.trim_start().starts_with('[') {
        return cedar::parse(path, &text).map(Suite::Cedar);
    }
    let table: Table = if is_json {
        serde_json::from_str(&text).map_err(|e| {
            Problem::new(
                path,
                Some(Location { line: e.line(), column: e.column() }),
                format!("not a decision table: {e}"),
            )
        })?
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| {
            let location = e.location().map(|l| Location { line: l.line(), column: l.column() });
            Problem::new(path, location, format!("not a decision table: {e}"))
        })?
    };
    let mut seen = std::collections::HashSet::new();
    for case in &table.cases {
        if !seen.insert(case.name.as_str()) {
            return Err(Problem::new(path, None, format!("two cases are named `{}`; names must be unique", case.name)));
        }
    }
    Ok(Suite::Table(table))
}

/// Run every case of every table against `snapshot`.
pub fn run(snapshot: &PolicySnapshot, tables: &[TableFile]) -> Report {
    let engine = Engine::new();
    let mut report =
        Report { results: Vec::new(), coverage: snapshot.policy_ids().into_iter().map(|id| (id, 0)).collect() };
    for file in tables {
        let outcomes: Vec<(String, Outcome)> = match &file.suite {
            Suite::Table(table) => table
                .cases
                .iter()
                .map(|case| {
                    let outcome = run_case(&engine, snapshot, &table.defaults, case).unwrap_or_else(Outcome::Error);
                    (case.name.clone(), outcome)
                })
                .collect(),
            Suite::Cedar(tests) => tests
                .iter()
                .enumerate()
                .map(|(i, test)| (test.display_name(i), test.run(&engine, snapshot).unwrap_or_else(Outcome::Error)))
                .collect(),
        };
        for (name, outcome) in outcomes {
            if let Outcome::Passed(decision) = &outcome {
                for id in decision.policies.iter() {
                    *report.coverage.entry(id.clone()).or_default() += 1;
                }
            }
            report.results.push(CaseResult { file: file.path.clone(), name, outcome });
        }
    }
    report
}

/// A case with its table's defaults applied: the question it asks.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub principal: EntityUid,
    pub action: EntityUid,
    pub resource: EntityUid,
    pub context: Map<String, Value>,
    /// The case's entities (the defaults' and its own), as written.
    pub entities: Vec<Value>,
}

/// Apply `defaults` to `case`: its fields or the defaults', the context laid over the
/// defaults' key by key (`null` removes a key), the entities added to the defaults'.
pub fn resolve(snapshot: &PolicySnapshot, defaults: &CaseFields, case: &Case) -> Result<Resolved, CaseError> {
    let field = |name: &'static str, own: &Option<String>, default: &Option<String>| {
        own.clone().or_else(|| default.clone()).ok_or(CaseError::Missing(name))
    };
    let principal = parse_entity_uid(&field("principal", &case.fields.principal, &defaults.principal)?)?;
    let action = resolve_action(snapshot.schema(), &field("action", &case.fields.action, &defaults.action)?)?;
    let resource = parse_entity_uid(&field("resource", &case.fields.resource, &defaults.resource)?)?;

    let mut context = defaults.context.clone().unwrap_or_default();
    for (key, value) in case.fields.context.clone().unwrap_or_default() {
        if value.is_null() {
            context.remove(&key);
        } else {
            context.insert(key, value);
        }
    }
    let entities = defaults.entities.iter().flatten().chain(case.fields.entities.iter().flatten()).cloned().collect();
    Ok(Resolved { principal, action, resource, context, entities })
}

fn run_case(
    engine: &Engine,
    snapshot: &PolicySnapshot,
    defaults: &CaseFields,
    case: &Case,
) -> Result<Outcome, CaseError> {
    let decision = decide_case(engine, snapshot, &resolve(snapshot, defaults, case)?)?;
    let effect_ok = decision.effect == case.expect;
    let expected_policies = case.policies.as_ref().map(|p| {
        let mut p = p.clone();
        p.sort();
        p
    });
    let policies_ok = expected_policies.as_ref().is_none_or(|p| **p == *decision.policies);
    if effect_ok && policies_ok {
        return Ok(Outcome::Passed(decision));
    }
    let expected = match &expected_policies {
        Some(p) => format!("{} decided by [{}]", case.expect, p.join(", ")),
        None => case.expect.to_string(),
    };
    Ok(Outcome::Failed { expected, got: decision })
}

/// Decide a resolved case as the sidecar would: its entities laid over the stored ones.
pub fn decide_case(engine: &Engine, snapshot: &PolicySnapshot, case: &Resolved) -> Result<Decision, CaseError> {
    let entities = case
        .entities
        .iter()
        .map(|json| {
            Entity::from_json_value(json.clone(), Some(snapshot.schema()))
                .map_err(|e| CaseError::Entity { json: json.to_string(), reason: e.to_string() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let request = DecisionRequest::new(case.principal.clone(), case.action.clone(), case.resource.clone())
        .with_context(Value::Object(case.context.clone()))
        .with_entities(entities);
    Ok(engine.decide(snapshot, &request)?)
}

/// One line describing a decision: `allow decided by [a, b]`, `deny (no policy permits)`.
pub fn describe_decision(decision: &Decision) -> String {
    use crate::authz::DecisionReason;
    let mut text = match decision.reason {
        DecisionReason::Permitted | DecisionReason::Forbidden => {
            format!("{} decided by [{}]", decision.effect, decision.policies.join(", "))
        }
        DecisionReason::NoPermit => "deny (no policy permits the request)".to_owned(),
        DecisionReason::EvaluationError => "deny (a policy failed to evaluate)".to_owned(),
    };
    for error in &decision.errors {
        text.push_str(&format!("; error in `{}`: {}", error.policy, error.message));
    }
    text
}
