//! Decision records: each decision the sidecar makes, written with what deciding it
//! again takes, for `authz-sidecar replay` (see [`replay`]).
//!
//! A record holds the question exactly as the engine was asked it: the principal entity
//! as the token built it (attributes, tags and parents), the action, the resource, the
//! context as Cedar JSON, the entities the request brought (derived profiles, directory
//! entities), the snapshot that decided, and the answer with its deciding policies.
//! Never the token, never a credential: a principal is what the token said of its
//! subject after verification. Parts named in `[records] omit` are left out of every
//! record, and the record lists what was left out.
//!
//! The request hands its question to a bounded queue and goes on ([`Recorder::record`]
//! never waits); a thread of its own turns it into JSON and appends it to the file,
//! rotating it by size. A full queue drops the record and counts it
//! (`authz_records_dropped_total`): records are for replaying policy changes, not the
//! audit log (that one is written in full, see [`crate::authz::audit`]), so a missing
//! record costs a replay one example and must never cost a request its latency.

pub mod replay;
mod rotating;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::authz::{Asker, Decision, DecisionRequest, Effect, QuestionContext, RequestError, uid_text};
use crate::config::{Omitted, RecordsConfig};

pub use rotating::RotatingFile;

/// The version of the record format written in every record (`v`).
pub const FORMAT: u32 = 1;

/// One decision as a record file holds it: a JSON object on a line of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub v: u32,
    /// When it was decided (RFC 3339, UTC).
    pub time: String,
    pub request_id: String,
    /// The data plane's route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The account-pool operation (`listAuthorizedAccounts`, `validateAccountAuthorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The principal's uid (`Studio::User::"user-1"`).
    pub principal: String,
    /// The principal entity the token built (Cedar entity JSON); absent when the
    /// principal is a stored entity (the account-pool handler's user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_entity: Option<Value>,
    pub action: String,
    pub resource: String,
    /// The context, as Cedar JSON (extension values written `{"__extn": …}`).
    pub context: Value,
    /// The entities the request brought besides its principal (Cedar entity JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<Value>,
    /// The snapshot that decided.
    pub snapshot: String,
    pub decision: Effect,
    /// As in the audit event: `permitted`, `forbidden`, `no_permit`,
    /// `evaluation_error`, or the kind of error that kept the question from Cedar.
    pub reason: String,
    /// The deciding policies, sorted.
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// What `[records] omit` left out of this record (`principal.email`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omitted: Vec<String>,
}

/// Who asked, for the record (the rest is the question itself).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub request_id: String,
    pub route: Option<String>,
    pub operation: Option<&'static str>,
}

/// A decision waiting for the writer: shared parts only, turned into JSON there.
#[derive(Debug)]
struct Pending {
    time: SystemTime,
    origin: Origin,
    request: DecisionRequest,
    outcome: Result<Decision, RequestError>,
    snapshot: Arc<str>,
}

impl Pending {
    fn into_record(self, omit: &[Omitted], json: &mut JsonOf) -> Record {
        let Self { time, origin, request, outcome, snapshot } = self;
        Record::of(time, origin, &request, &outcome, (&snapshot, omit), json)
    }
}

impl Record {
    /// The record of `request`, decided (or refused) as `outcome` says by `snapshot`,
    /// with the parts `omit` names left out; the JSON of principals, contexts and
    /// entities already written for an earlier record is taken from `json`.
    pub fn of(
        time: SystemTime,
        origin: Origin,
        request: &DecisionRequest,
        outcome: &Result<Decision, RequestError>,
        (snapshot, omit): (&str, &[Omitted]),
        json: &mut JsonOf,
    ) -> Self {
        let principal_entity = match &request.principal {
            Asker::Built(principal) => json.entity(principal),
            Asker::Uid(_) => None,
        };
        let context = match &request.context {
            QuestionContext::Json(json) => json.clone(),
            QuestionContext::Typed(typed) => json.context(typed),
        };
        let entities = request
            .entities
            .iter()
            .filter_map(|e| e.to_json_value().ok())
            .chain(request.checked.iter().filter_map(|e| json.entity(e)))
            .collect();
        let (decision, reason, policies, errors) = match outcome {
            Ok(decision) => (
                decision.effect,
                decision.reason.as_str().to_owned(),
                decision.policies.to_vec(),
                decision.errors.iter().map(|e| format!("{}: {}", e.policy, e.message)).collect(),
            ),
            Err(error) => (Effect::Deny, error.kind().to_owned(), Vec::new(), vec![error.to_string()]),
        };
        let mut record = Self {
            v: FORMAT,
            time: humantime::format_rfc3339_millis(time).to_string(),
            request_id: origin.request_id,
            route: origin.route,
            operation: origin.operation.map(str::to_owned),
            principal: uid_text(request.principal.uid()),
            principal_entity,
            action: uid_text(&request.action),
            resource: uid_text(&request.resource),
            context,
            entities,
            snapshot: snapshot.to_string(),
            decision,
            reason,
            policies,
            errors,
            omitted: Vec::new(),
        };
        record.leave_out(omit);
        record
    }

    /// Remove the parts `omit` names, and say which were there.
    fn leave_out(&mut self, omit: &[Omitted]) {
        for part in omit {
            let removed = match part {
                Omitted::PrincipalAttribute(name) => self.principal_entity.as_mut().is_some_and(|entity| {
                    let mut removed = false;
                    for field in ["attrs", "tags"] {
                        if let Some(Value::Object(map)) = entity.get_mut(field) {
                            removed |= map.remove(name).is_some();
                        }
                    }
                    removed
                }),
                Omitted::ContextKey(name) => {
                    self.context.as_object_mut().is_some_and(|context| context.remove(name).is_some())
                }
            };
            if removed {
                self.omitted.push(part.to_string());
            }
        }
    }
}

/// The JSON of entities and contexts the writer has written lately, by serial: a
/// token's principal (kept per token) and a kept context come back request after
/// request, and turning a Cedar entity or context into JSON is most of a record's cost.
#[derive(Debug, Default)]
pub struct JsonOf {
    entities: std::collections::HashMap<u64, Value>,
    contexts: std::collections::HashMap<u64, Value>,
}

/// Entries [`JsonOf`] keeps of each kind before it starts again.
const JSON_KEPT: usize = 4_096;

impl JsonOf {
    fn entity(&mut self, entity: &crate::policy_store::CheckedEntity) -> Option<Value> {
        if let Some(json) = self.entities.get(&entity.serial()) {
            return Some(json.clone());
        }
        let json = entity.entity().to_json_value().ok()?;
        if self.entities.len() >= JSON_KEPT {
            self.entities.clear();
        }
        self.entities.insert(entity.serial(), json.clone());
        Some(json)
    }

    fn context(&mut self, typed: &crate::authz::TypedContext) -> Value {
        // serial 0: a context nobody kept, written once
        if let Some(json) = self.contexts.get(&typed.serial).filter(|_| typed.serial != 0) {
            return json.clone();
        }
        let json = typed.context.to_json_value().unwrap_or(Value::Null);
        if typed.serial != 0 {
            if self.contexts.len() >= JSON_KEPT {
                self.contexts.clear();
            }
            self.contexts.insert(typed.serial, json.clone());
        }
        json
    }
}

/// Hands decisions to the record writer. Cheap to clone; every clone feeds one file.
#[derive(Debug, Clone)]
pub struct Recorder {
    queue: SyncSender<Pending>,
    dropped: Arc<AtomicU64>,
}

/// Why records cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write decision records to `{path}`: {source}")]
pub struct RecordsError {
    path: String,
    source: std::io::Error,
}

impl Recorder {
    /// Open (or create, readable by its owner only) the records file and start the
    /// writer thread. An unwritable file is an error here, before serving.
    pub fn start(config: &RecordsConfig) -> Result<Self, RecordsError> {
        let file = RotatingFile::open(&config.path, config.max_bytes, config.keep)
            .map_err(|source| RecordsError { path: config.path.display().to_string(), source })?;
        let (queue, pending) = std::sync::mpsc::sync_channel(config.queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer { file, omit: config.omit.clone(), dropped: dropped.clone(), reported: 0 };
        std::thread::Builder::new()
            .name("authz-records".into())
            .spawn(move || writer.run(&pending))
            .map_err(|source| RecordsError { path: config.path.display().to_string(), source })?;
        Ok(Self { queue, dropped })
    }

    /// Record one decision (or the error that kept it from Cedar). Never waits: a full
    /// queue drops the record and counts it.
    pub fn record(
        &self,
        origin: Origin,
        request: &DecisionRequest,
        outcome: &Result<Decision, RequestError>,
        snapshot: Arc<str>,
    ) {
        let pending =
            Pending { time: SystemTime::now(), origin, request: request.clone(), outcome: outcome.clone(), snapshot };
        match self.queue.try_send(pending) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("authz_records_dropped_total").increment(1);
            }
        }
    }
}

/// The writer thread's side.
struct Writer {
    file: RotatingFile,
    omit: Vec<Omitted>,
    dropped: Arc<AtomicU64>,
    reported: u64,
}

/// How often a failing records file or dropped records are reported, at most.
const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Writer {
    /// Write what comes until every [`Recorder`] is gone: the records that waited
    /// together, then a flush, so a record is on disk as soon as none is waiting.
    fn run(mut self, pending: &Receiver<Pending>) {
        let mut line = Vec::with_capacity(4_096);
        let mut json = JsonOf::default();
        let mut last_report: Option<Instant> = None;
        while let Ok(first) = pending.recv() {
            let mut failure = None;
            let mut next = Some(first);
            while let Some(one) = next {
                line.clear();
                let record = one.into_record(&self.omit, &mut json);
                if serde_json::to_writer(&mut line, &record).is_ok() {
                    line.push(b'\n');
                    match self.file.write_line(&line) {
                        Ok(()) => metrics::counter!("authz_records_written_total").increment(1),
                        Err(error) => {
                            metrics::counter!("authz_records_write_errors_total").increment(1);
                            failure = Some(error);
                        }
                    }
                }
                next = pending.try_recv().ok();
            }
            if let Err(error) = self.file.flush() {
                metrics::counter!("authz_records_write_errors_total").increment(1);
                failure = Some(error);
            }
            let due = last_report.is_none_or(|at| at.elapsed() >= REPORT_EVERY);
            let dropped = self.dropped.load(Ordering::Relaxed);
            if due && (failure.is_some() || dropped > self.reported) {
                last_report = Some(Instant::now());
                if let Some(error) = failure {
                    tracing::error!(path = %self.file.path().display(), %error, "cannot write decision records");
                }
                if dropped > self.reported {
                    tracing::warn!(
                        dropped = dropped - self.reported,
                        total = dropped,
                        "the decision-record writer could not keep up: records were dropped"
                    );
                    self.reported = dropped;
                }
            }
        }
        let _ = self.file.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use cedar_policy::{Entity, EntityUid};
    use serde_json::json;

    use super::*;
    use crate::policy_store::CheckedEntity;

    fn uid(text: &str) -> EntityUid {
        EntityUid::from_str(text).unwrap()
    }

    fn pending(outcome: Result<Decision, RequestError>) -> Pending {
        let principal = Entity::from_json_value(
            json!({"uid": {"type": "Studio::User", "id": "user-1"},
                   "attrs": {"email": "u1@example.com", "lob": "lob-a"},
                   "parents": [{"type": "Studio::Team", "id": "Team1"}]}),
            None,
        )
        .unwrap();
        let request = DecisionRequest::built(
            Arc::new(CheckedEntity::new(principal)),
            uid(r#"Studio::Action::"CreatePresignedDomainUrl""#),
            uid(r#"Studio::UserProfile::"user-1-team1""#),
            cedar_policy::Context::from_json_value(json!({"sourceIp": "10.1.2.3", "sourceVpce": "vpce-1"}), None)
                .unwrap(),
        );
        Pending {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_547_200),
            origin: Origin { request_id: "req-1".into(), route: Some("studio".into()), operation: None },
            request,
            outcome,
            snapshot: "abc#1".into(),
        }
    }

    #[test]
    fn a_record_holds_the_question_and_leaves_out_what_it_is_told() {
        let error = RequestError::BadContext { action: "a".into(), reason: "no".into() };
        let omit = [
            Omitted::PrincipalAttribute("email".into()),
            Omitted::ContextKey("sourceIp".into()),
            Omitted::ContextKey("absent".into()),
        ];
        let mut json = JsonOf::default();
        let record = pending(Err(error.clone())).into_record(&omit, &mut json);
        // the principal's JSON written once is written again the same, and what is left
        // out of one record is never left out of the JSON kept for the next
        let again = pending(Err(error.clone())).into_record(&[], &mut json);
        assert_eq!(again.principal_entity.as_ref().unwrap()["attrs"]["email"], "u1@example.com");
        assert_eq!(record.principal, r#"Studio::User::"user-1""#);
        assert_eq!(record.principal_entity.as_ref().unwrap()["attrs"], json!({"lob": "lob-a"}));
        assert_eq!(record.principal_entity.as_ref().unwrap()["parents"][0]["id"], "Team1");
        assert_eq!(record.context, json!({"sourceVpce": "vpce-1"}));
        assert_eq!(record.omitted, vec!["principal.email", "context.sourceIp"], "only what was there");
        assert_eq!((record.decision, record.reason.as_str()), (Effect::Deny, "bad_context"));
        assert_eq!(record.errors, vec![error.to_string()]);
        assert_eq!(record.time, "2025-12-01T00:00:00.000Z");
        // the line reads back as the same record
        let line = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), record);
        assert!(!line.contains("u1@example.com") && !line.contains("10.1.2.3"), "{line}");
    }

    #[test]
    fn records_reach_the_file_and_a_full_queue_drops_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let config = RecordsConfig {
            path: dir.path().join("records.jsonl"),
            max_bytes: 1 << 20,
            keep: 1,
            queue: 1,
            omit: Vec::new(),
        };
        let recorder = Recorder::start(&config).unwrap();
        let one = pending(Err(RequestError::Invalid("x".into())));
        for _ in 0..2_000 {
            recorder.record(one.origin.clone(), &one.request, &one.outcome, "abc#1".into());
        }
        let dropped = recorder.dropped.load(Ordering::Relaxed);
        drop(recorder);
        let deadline = Instant::now() + Duration::from_secs(10);
        let lines = loop {
            let text = std::fs::read_to_string(&config.path).unwrap_or_default();
            let lines = text.lines().count() as u64;
            if lines + dropped == 2_000 || Instant::now() > deadline {
                break lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(lines + dropped, 2_000, "every record written or counted as dropped");
        assert!(lines >= 1, "the writer wrote");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&config.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "records are readable by their owner only: {mode:o}");
        }
    }
}
