//! Replay: decide recorded requests again under a candidate policy set, and report what
//! would change.
//!
//! Each record is asked again exactly as it was asked (its principal entity, action,
//! resource, context and entities; see [`super::Record`]) of the candidate snapshot,
//! and its answer compared with the recorded one, or with a baseline snapshot's answer
//! to the same question (so that entities changed since the record was written do not
//! show as policy changes). What differs is grouped by the kind of change, the route
//! (or account-pool operation), the action, and the answers before and after with their
//! deciding policies; each group counts its requests and keeps a few examples.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cedar_policy::Entity;
use serde::Serialize;

use super::{FORMAT, Record};
use crate::authz::{Asker, Decision, DecisionRequest, Effect, Engine, RequestError, parse_entity_uid};
use crate::policy_store::{CheckedEntity, LoadError, Location, PolicySnapshot, Problem};

/// A record's version alone, to tell a record of another format from garbage.
#[derive(serde::Deserialize)]
struct Version {
    v: u32,
}

/// The longest record line read; a longer one is reported, not read.
const MAX_LINE: u64 = 4 * 1024 * 1024;

/// What changed for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Denied before, allowed now: the candidate lets someone through.
    Widened,
    /// Allowed before, denied now.
    Narrowed,
    /// The same answer, decided by other policies.
    Policies,
}

impl Change {
    /// How `after` differs from `before`, if it does.
    pub fn between(before: &Answer, after: &Answer) -> Option<Self> {
        match (before.decision, after.decision) {
            (Effect::Deny, Effect::Allow) => Some(Self::Widened),
            (Effect::Allow, Effect::Deny) => Some(Self::Narrowed),
            _ if before.policies != after.policies || before.reason != after.reason => Some(Self::Policies),
            _ => None,
        }
    }

    /// The label of metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Widened => "widened",
            Self::Narrowed => "narrowed",
            Self::Policies => "policies",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Widened => "WIDENED (deny → allow)",
            Self::Narrowed => "NARROWED (allow → deny)",
            Self::Policies => "OTHER POLICIES (same answer, other deciding policies)",
        }
    }
}

/// An answer, as compared: the effect, why, and the deciding policies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Answer {
    pub decision: Effect,
    pub reason: String,
    pub policies: Vec<String>,
}

impl Answer {
    /// The answer a record holds.
    pub fn recorded(record: &Record) -> Self {
        Self { decision: record.decision, reason: record.reason.clone(), policies: record.policies.clone() }
    }

    /// The answer of a decision, or the deny of a question that could not be asked.
    pub fn of(decided: &Result<Decision, RequestError>) -> Self {
        match decided {
            Ok(decision) => Self {
                decision: decision.effect,
                reason: decision.reason.as_str().to_owned(),
                policies: decision.policies.to_vec(),
            },
            Err(error) => Self { decision: Effect::Deny, reason: error.kind().to_owned(), policies: Vec::new() },
        }
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.policies.is_empty() {
            write!(f, "{} ({})", self.decision, self.reason)
        } else {
            write!(f, "{} by [{}] ({})", self.decision, self.policies.join(", "), self.reason)
        }
    }
}

/// A request of a group, to look at.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub request_id: String,
    pub time: String,
    pub principal: String,
    pub resource: String,
    /// Where the record is: `file:line`.
    pub record: String,
    /// Why the candidate could not decide it, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Requests that changed alike.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub change: Change,
    /// The data plane's route, or the account-pool operation.
    pub route: String,
    pub action: String,
    pub before: Answer,
    pub after: Answer,
    pub count: usize,
    pub examples: Vec<Example>,
}

/// What a replay found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Records decided again.
    pub records: usize,
    pub unchanged: usize,
    pub widened: usize,
    pub narrowed: usize,
    pub other_policies: usize,
    /// Records with parts left out (`[records] omit`): a policy that reads a part left
    /// out decides them otherwise than it did.
    pub with_omissions: usize,
    /// Records that could not be read (`file:line: why`).
    pub unreadable: Vec<String>,
    pub groups: Vec<Group>,
}

type GroupKey = (Change, String, String, Answer, Answer);

/// Decides records again under `candidate`, against their recorded answers or against
/// `baseline`'s.
#[derive(Debug)]
pub struct Replay<'a> {
    engine: Engine,
    candidate: &'a PolicySnapshot,
    baseline: Option<&'a PolicySnapshot>,
    examples: usize,
    groups: BTreeMap<GroupKey, Group>,
    report: Report,
}

impl<'a> Replay<'a> {
    /// `examples`: how many requests each group keeps to show.
    pub fn new(candidate: &'a PolicySnapshot, baseline: Option<&'a PolicySnapshot>, examples: usize) -> Self {
        Self {
            engine: Engine::new(),
            candidate,
            baseline,
            examples,
            groups: BTreeMap::new(),
            report: Report::default(),
        }
    }

    /// Read and replay every record of `paths` (files, directories whose files are all
    /// read, sorted, or `-` for standard input). A file that cannot be read is an error; a line that is not a
    /// record is counted in [`Report::unreadable`].
    pub fn files(&mut self, paths: &[PathBuf]) -> Result<(), LoadError> {
        let mut files = Vec::new();
        for path in paths {
            // `-`: standard input (`zcat decisions.jsonl.*.gz | authz-sidecar replay -`)
            if path.as_os_str() == "-" {
                files.push(path.clone());
            } else if path.is_dir() {
                let entries = std::fs::read_dir(path).map_err(|e| unreadable(path, &e))?;
                let mut inside: Vec<PathBuf> =
                    entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
                inside.sort();
                files.extend(inside);
            } else {
                files.push(path.clone());
            }
        }
        for path in files {
            if path.as_os_str() == "-" {
                self.read(Path::new("stdin"), std::io::stdin().lock()).map_err(|e| unreadable(&path, &e))?;
                continue;
            }
            let file = File::open(&path).map_err(|e| unreadable(&path, &e))?;
            self.read(&path, BufReader::new(file)).map_err(|e| unreadable(&path, &e))?;
        }
        Ok(())
    }

    /// Replay the records `reader` holds, one a line (`path` names them in the report).
    pub fn read(&mut self, path: &Path, mut reader: impl BufRead) -> std::io::Result<()> {
        let mut line = Vec::new();
        for number in 1.. {
            line.clear();
            let read = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
            if read == 0 {
                break;
            }
            let at = format!("{}:{number}", path.display());
            if read as u64 == MAX_LINE && line.last() != Some(&b'\n') {
                self.report.unreadable.push(format!("{at}: longer than {MAX_LINE} bytes"));
                skip_line(&mut reader)?;
                continue;
            }
            let Ok(text) = std::str::from_utf8(&line) else {
                self.report.unreadable.push(format!("{at}: not UTF-8"));
                continue;
            };
            if text.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(text) {
                Ok(record) if record.v == FORMAT => self.replay(&record, at),
                other => {
                    let version = serde_json::from_str::<Version>(text).ok().map(|found| found.v);
                    let why = match (version.filter(|v| *v != FORMAT), other) {
                        (Some(v), _) => format!("record format {v} (this build reads {FORMAT})"),
                        (None, Err(error)) => format!("not a decision record: {error}"),
                        (None, Ok(_)) => "not a decision record".to_owned(),
                    };
                    self.report.unreadable.push(format!("{at}: {why}"));
                }
            }
        }
        Ok(())
    }

    /// Replay one record (`at` says where it is).
    pub fn replay(&mut self, record: &Record, at: String) {
        self.report.records += 1;
        if !record.omitted.is_empty() {
            self.report.with_omissions += 1;
        }
        let before = match self.baseline {
            Some(baseline) => Answer::of(&decide(&self.engine, baseline, record)),
            None => Answer::recorded(record),
        };
        let decided = decide(&self.engine, self.candidate, record);
        let after = Answer::of(&decided);
        let Some(change) = Change::between(&before, &after) else {
            self.report.unchanged += 1;
            return;
        };
        match change {
            Change::Widened => self.report.widened += 1,
            Change::Narrowed => self.report.narrowed += 1,
            Change::Policies => self.report.other_policies += 1,
        }
        let route = record.route.clone().or_else(|| record.operation.clone()).unwrap_or_else(|| "-".to_owned());
        let key = (change, route.clone(), record.action.clone(), before.clone(), after.clone());
        let group = self.groups.entry(key).or_insert_with(|| Group {
            change,
            route,
            action: record.action.clone(),
            before,
            after,
            count: 0,
            examples: Vec::new(),
        });
        group.count += 1;
        if group.examples.len() < self.examples {
            group.examples.push(Example {
                request_id: record.request_id.clone(),
                time: record.time.clone(),
                principal: record.principal.clone(),
                resource: record.resource.clone(),
                record: at,
                error: decided.err().map(|e| e.to_string()),
            });
        }
    }

    /// The report: groups by kind of change, then by how many requests each holds.
    pub fn finish(mut self) -> Report {
        let mut groups: Vec<Group> = std::mem::take(&mut self.groups).into_values().collect();
        groups.sort_by(|a, b| a.change.cmp(&b.change).then(b.count.cmp(&a.count)));
        self.report.groups = groups;
        self.report
    }
}

/// Read past the rest of a line, a buffer at a time (never holding it whole).
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(());
        }
        if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            reader.consume(end + 1);
            return Ok(());
        }
        let all = buffer.len();
        reader.consume(all);
    }
}

fn unreadable(path: &Path, error: &std::io::Error) -> LoadError {
    LoadError::single(Problem::new(path, None::<Location>, format!("cannot read the records: {error}")))
}

/// The record's question, asked of `snapshot` as the sidecar asked it: the principal
/// the token built, the entities the request brought, the context as recorded. A
/// question the snapshot's schema no longer accepts is an error, and so a deny.
pub fn decide(engine: &Engine, snapshot: &PolicySnapshot, record: &Record) -> Result<Decision, RequestError> {
    let schema = snapshot.schema();
    let principal = parse_entity_uid(&record.principal)?;
    let action = parse_entity_uid(&record.action)?;
    let resource = parse_entity_uid(&record.resource)?;
    let entity = |json: &serde_json::Value| {
        Entity::from_json_value(json.clone(), Some(schema)).map_err(|e| RequestError::BadEntities(e.to_string()))
    };
    let entities = record.entities.iter().map(entity).collect::<Result<Vec<_>, _>>()?;
    let mut request = DecisionRequest::new(principal.clone(), action, resource)
        .with_context(record.context.clone())
        .with_entities(entities);
    if let Some(json) = &record.principal_entity {
        let built = entity(json)?;
        if built.uid() != principal {
            return Err(RequestError::BadEntities(format!(
                "the principal entity is `{}`, not the record's principal `{principal}`",
                built.uid()
            )));
        }
        request.principal = Asker::Built(Arc::new(CheckedEntity::new(built)));
    }
    engine.decide(snapshot, &request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_store::SourceDirs;

    #[test]
    fn lines_that_are_not_records_are_named_and_the_rest_still_read() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let snapshot = PolicySnapshot::load(&SourceDirs::new(root.join("policies"), root.join("entities")), 1).unwrap();
        let mut replay = Replay::new(&snapshot, None, 3);
        let mut text = Vec::new();
        text.extend_from_slice(b"\n{\"v\": 2}\n");
        text.extend_from_slice(b"\xff\xfe not text\n");
        text.extend(std::iter::repeat_n(b'x', usize::try_from(MAX_LINE).unwrap() + 10));
        text.extend_from_slice(b"\nnot json\n");
        replay.read(Path::new("r.jsonl"), &text[..]).unwrap();
        let report = replay.finish();
        assert_eq!(report.records, 0);
        let unreadable: Vec<&str> = report.unreadable.iter().map(String::as_str).collect();
        assert_eq!(unreadable.len(), 4, "{unreadable:?}");
        assert_eq!(unreadable[0], "r.jsonl:2: record format 2 (this build reads 1)");
        assert_eq!(unreadable[1], "r.jsonl:3: not UTF-8");
        assert!(unreadable[2].starts_with("r.jsonl:4: longer than"), "{unreadable:?}");
        assert!(unreadable[3].starts_with("r.jsonl:5: not a decision record"), "{unreadable:?}");
    }
}
