//! The DataZone (SageMaker Unified Studio) custom account-pool handler.
//!
//! DataZone asks two questions: which accounts may this user's new project use
//! (`listAuthorizedAccounts`), and may it use this account in this region
//! (`validateAccountAuthorization`, GRANT or DENY). Both are the one Cedar question
//! `DataZone::Action::"UseAccount"`: validate asks it once; list asks it for every
//! account and region of the pools and returns those answered allow, so the two can
//! never disagree. A list asks Cedar once per region for each class of accounts that no
//! policy can tell apart ([`ResourceObservation`](crate::authz::ResourceObservation)),
//! so a thousand look-alike accounts cost a handful of decisions. An account that is not
//! in the pool, or a region it does not list, is DENY before Cedar is asked, so list and
//! validate agree whatever the policies say.
//!
//! Parse (`event.rs`), then ask (`question.rs`) over the pool index (`pool.rs`), then
//! answer, in pages when asked (`paging.rs`).

mod event;
mod paging;
mod pool;
mod question;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use serde_json::{Value, json};

pub use event::{EventError, ListRequest, MAX_EVENT_BYTES, Operation, ValidateRequest, parse};
pub use pool::ListSharing;
pub use question::{USER_TYPE, user_uid};

use crate::authz::Engine;
use crate::policy_store::{CheckedEntity, PolicySnapshot};
use pool::PoolIndex;
use question::{Question, Refusal};

/// Why the event's user could not be read from the directory: the event is refused,
/// never answered as if the user had no entity.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UserError {
    #[error("the directory could not answer for the event's user: {0}")]
    Directory(#[from] crate::directory::GatherError),
}

impl UserError {
    /// Whether the directory could not be read (worth retrying), rather than read and
    /// found wanting.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Directory(e) if e.is_unreachable())
    }

    /// A stable name for the Lambda form's error result.
    pub fn error_type(&self) -> &'static str {
        if self.is_unreachable() { "DirectoryUnavailable" } else { "UserNotReadable" }
    }
}

/// The event's user and what it reaches, from `directory`, when it holds DataZone users
/// and no entity file lists this one; empty: decide over the snapshot's own entities.
pub async fn directory_entities(
    directory: &crate::directory::Directory,
    snapshot: &PolicySnapshot,
    operation: &Operation,
) -> Result<Vec<Arc<CheckedEntity>>, UserError> {
    let user = match operation {
        Operation::List(list) => list.user_identifier.as_deref(),
        Operation::Validate(validate) => validate.user_identifier.as_deref(),
    };
    let Some(uid) = user.filter(|u| !u.is_empty()).and_then(user_uid) else { return Ok(Vec::new()) };
    if snapshot.holds(&uid) || !directory.holds(uid.type_name()) {
        return Ok(Vec::new());
    }
    let mut gathered = crate::directory::Gathered::default();
    crate::directory::gather(directory, snapshot, [uid], &mut gathered).await?;
    Ok(gathered.shared().collect())
}

/// An answer to DataZone: a validation's GRANT or DENY, or a list's page.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Validate { grant: bool },
    List(Value),
}

/// A validation's two answers as JSON text, exactly as their [`Answer::into_value`]
/// serializes (a test holds them to it).
const GRANT_TEXT: &str = r#"{"operationResponse":{"validateAccountAuthorizationResponse":{"authResult":"GRANT"}}}"#;
const DENY_TEXT: &str = r#"{"operationResponse":{"validateAccountAuthorizationResponse":{"authResult":"DENY"}}}"#;

impl Answer {
    /// The answer as the interface's JSON.
    pub fn into_value(self) -> Value {
        match self {
            Self::Validate { grant } => {
                let result = if grant { "GRANT" } else { "DENY" };
                json!({"operationResponse": {"validateAccountAuthorizationResponse": {"authResult": result}}})
            }
            Self::List(page) => page,
        }
    }

    /// The answer's JSON text, the bytes [`Self::into_value`] serializes to: a
    /// validation's is one of two fixed texts, written without building the JSON (a
    /// tree of three maps built, written and dropped was 5,000 instructions a call).
    pub fn to_json(&self) -> String {
        match self {
            Self::Validate { grant: true } => GRANT_TEXT.to_owned(),
            Self::Validate { grant: false } => DENY_TEXT.to_owned(),
            Self::List(page) => page.to_string(),
        }
    }
}

/// The handler: the shared engine, and the pool index of the newest snapshot it has
/// answered from or been warmed with (see [`AccountPool::warm`]). Share one per
/// process; clones share the index.
#[derive(Debug, Clone, Default)]
pub struct AccountPool {
    engine: Engine,
    index: Arc<ArcSwapOption<(u64, Arc<PoolIndex>)>>,
}

impl AccountPool {
    pub fn new(engine: Engine) -> Self {
        Self { engine, index: Arc::default() }
    }

    /// Answer an operation from the policies and entities of `snapshot`.
    pub fn apply(
        &self,
        snapshot: &PolicySnapshot,
        operation: &Operation,
        request_id: &str,
    ) -> Result<Value, EventError> {
        self.apply_over(snapshot, operation, request_id, Vec::new())
    }

    /// As [`Self::apply`], with `fetched` (the event's user and what it reaches, from
    /// the directory) among each question's entities.
    pub fn apply_over(
        &self,
        snapshot: &PolicySnapshot,
        operation: &Operation,
        request_id: &str,
        fetched: Vec<Arc<CheckedEntity>>,
    ) -> Result<Value, EventError> {
        self.answer_over(snapshot, operation, request_id, fetched).map(Answer::into_value)
    }

    /// As [`Self::apply_over`], the answer not yet made JSON (see [`Answer::to_json`]).
    pub fn answer_over(
        &self,
        snapshot: &PolicySnapshot,
        operation: &Operation,
        request_id: &str,
        fetched: Vec<Arc<CheckedEntity>>,
    ) -> Result<Answer, EventError> {
        let index = self.index(snapshot);
        match operation {
            Operation::Validate(request) => {
                let asked = Question::new(
                    &request.user_identifier,
                    &request.domain_identifier,
                    &request.domain_unit_identifier,
                    &request.domain_region,
                )
                .over(fetched);
                let grant = request.aws_account_id.as_deref().zip(request.region_name.as_deref()).is_some_and(
                    |(account, region)| {
                        // what a list would never offer is DENY before Cedar is asked,
                        // whatever the policies say: an account that is not in the pool,
                        // or a region the account does not support
                        let decision = match index.account(account) {
                            None => Err(Refusal::UnknownAccount),
                            Some(known) if !known.regions.iter().any(|r| **r == *region) => {
                                Err(Refusal::UnsupportedRegion)
                            }
                            Some(_) => asked.decide(
                                &self.engine,
                                snapshot,
                                (question::Operation::Validate, request_id),
                                account,
                                region,
                            ),
                        };
                        asked.audit(question::Operation::Validate, snapshot, request_id, account, region, &decision)
                    },
                );
                Ok(Answer::Validate { grant })
            }
            Operation::List(request) => {
                let asked = Question::new(
                    &request.user_identifier,
                    &request.domain_identifier,
                    &request.domain_unit_identifier,
                    &request.domain_region,
                )
                .over(fetched);
                let items = pool::authorized_accounts(&self.engine, snapshot, &index, &asked, request_id);
                asked.audit_list(snapshot, request_id, items.len());
                paging::page(items, request).map(Answer::List)
            }
        }
    }

    /// How lists over `snapshot`'s pool are decided (builds the pool index if need be).
    pub fn list_sharing(&self, snapshot: &PolicySnapshot) -> ListSharing {
        self.index(snapshot).sharing()
    }

    /// Build and keep the pool index of `snapshot`, a snapshot about to be served, so
    /// that no request pays for it: reading every pool account costs tens of
    /// microseconds an account (Cedar builds each from its JSON), a first list or
    /// validate after a reload at a thousand accounts some 70 ms.
    pub fn warm(&self, snapshot: &PolicySnapshot) {
        let _ = self.index(snapshot);
    }

    /// The build id of the snapshot whose pool index is kept, if any.
    pub fn indexed(&self) -> Option<u64> {
        self.index.load().as_deref().map(|kept| kept.0)
    }

    /// The pool index of `snapshot`: the one kept for it, else built now. A new index
    /// is kept only in place of an older snapshot's: a request still answering from the
    /// snapshot a reload replaced builds its own and leaves the newer one (perhaps
    /// warmed before it was served) in place.
    fn index(&self, snapshot: &PolicySnapshot) -> Arc<PoolIndex> {
        let id = snapshot.build_id();
        let kept = self.index.load();
        if let Some(kept) = kept.as_deref()
            && kept.0 == id
        {
            return Arc::clone(&kept.1);
        }
        let built = Arc::new(PoolIndex::build(snapshot));
        let newest = Some(Arc::new((id, Arc::clone(&built))));
        // replaced only if still what was read, and older: a concurrent build of a
        // newer snapshot wins
        self.index.rcu(|current| match current.as_deref() {
            Some(other) if other.0 > id => current.clone(),
            _ => newest.clone(),
        });
        built
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answers_text_is_its_json_serialized() {
        let page = json!({"operationResponse": {"listAuthorizedAccountsResponse": {"items": [], "nextToken": "t"}}});
        for answer in [Answer::Validate { grant: true }, Answer::Validate { grant: false }, Answer::List(page)] {
            let text = answer.to_json();
            assert_eq!(text, answer.into_value().to_string());
            assert_eq!(serde_json::to_vec(&serde_json::from_str::<Value>(&text).unwrap()).unwrap(), text.as_bytes());
        }
    }
}
