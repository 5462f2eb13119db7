//! One `UseAccount` question, asked once by a validate and once per account and region
//! by a list, and its audit event.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use cedar_policy::{EntityId, EntityTypeName, EntityUid};

use crate::authz::audit::{Asked, AuditEvent};
use crate::authz::{Decision, DecisionRequest, Engine, RequestError, context_from_strings, uid_text};
use crate::policy_store::{CheckedEntity, PolicySnapshot};

/// One `UseAccount` question's fixed parts, built once per event: the principal, the
/// action and the domain fields of the context. Only the account and the region vary.
/// Each question goes through the engine as the data plane's do: its context is built
/// from its strings and kept by the snapshot, its shape checked against the schema once,
/// and its decision kept (the same user asking about the same account, region and
/// domain is answered without evaluating).
pub(super) struct Question {
    principal: Option<EntityUid>,
    action: Option<EntityUid>,
    account_type: Option<EntityTypeName>,
    fixed_context: Vec<(String, String)>,
    /// The user and what it reaches, from the directory, when it came from there.
    fetched: Vec<Arc<CheckedEntity>>,
}

impl Question {
    pub(super) fn new(
        user: &Option<String>,
        domain: &Option<String>,
        domain_unit: &Option<String>,
        domain_region: &Option<String>,
    ) -> Self {
        let user = user.as_deref().filter(|u| !u.is_empty());
        let fixed_context =
            [("domainIdentifier", domain), ("domainUnitIdentifier", domain_unit), ("domainRegion", domain_region)]
                .into_iter()
                .filter_map(|(key, value)| Some((key.to_owned(), value.clone()?)))
                .collect();
        Self {
            principal: user.and_then(user_uid),
            action: use_account(),
            account_type: account_type(),
            fixed_context,
            fetched: Vec::new(),
        }
    }

    /// Decide with `fetched` (from the directory) among the question's entities.
    pub(super) fn over(mut self, fetched: Vec<Arc<CheckedEntity>>) -> Self {
        self.fetched = fetched;
        self
    }

    /// Decide `account` in `region` (recorded, when records are on, as `operation` of
    /// the request `request_id`).
    pub(super) fn decide(
        &self,
        engine: &Engine,
        snapshot: &PolicySnapshot,
        (operation, request_id): (Operation, &str),
        account: &str,
        region: &str,
    ) -> Result<Decision, Refusal> {
        let (Some(principal), Some(action), Some(account_type)) = (&self.principal, &self.action, &self.account_type)
        else {
            return Err(Refusal::NoUser);
        };
        if !is_account_id(account) {
            return Err(Refusal::BadAccountId);
        }
        let mut pairs = Vec::with_capacity(self.fixed_context.len() + 1);
        pairs.extend(self.fixed_context.iter().cloned());
        pairs.push(("regionName".to_owned(), region.to_owned()));
        let context = context_from_strings(snapshot, action, &pairs).map_err(Refusal::Request)?;
        let resource = EntityUid::from_type_name_and_id(account_type.clone(), EntityId::new(account));
        let request = DecisionRequest::new(principal.clone(), action.clone(), resource)
            .with_typed_context(context)
            .with_checked(self.fetched.clone());
        let decided = engine.decide(snapshot, &request);
        let origin = || crate::records::Origin {
            request_id: request_id.to_owned(),
            route: None,
            operation: Some(operation.as_str()),
        };
        engine.observe(origin, snapshot, &request, &decided);
        decided.map_err(Refusal::Request)
    }

    /// What the audit event says of this question before it is decided.
    fn asked(&self, operation: Operation, request_id: &str) -> Asked {
        Asked {
            request_id: request_id.to_owned(),
            operation: Some(operation.as_str()),
            principal: self.principal.as_ref().map_or_else(String::new, uid_text),
            action: self.action.as_ref().map_or_else(String::new, uid_text),
            ..Asked::default()
        }
    }

    /// Write the audit event of one decision and say whether it allowed. Validate
    /// decisions are info events; list decisions are debug events (the list writes one
    /// info event of its own, [`Self::audit_list`]), so a thousand-account list does not
    /// flood the log.
    pub(super) fn audit(
        &self,
        operation: Operation,
        snapshot: &PolicySnapshot,
        request_id: &str,
        account: &str,
        region: &str,
        decision: &Result<Decision, Refusal>,
    ) -> bool {
        let allowed = decision.as_ref().is_ok_and(Decision::is_allowed);
        let level = match operation {
            Operation::Validate => tracing::Level::INFO,
            Operation::List => tracing::Level::DEBUG,
        };
        if !AuditEvent::enabled(level) {
            return allowed;
        }
        let asked = Asked {
            resource: self.resource(account),
            account: Some(account.to_owned()),
            region: Some(region.to_owned()),
            ..self.asked(operation, request_id)
        };
        let event = match decision {
            Ok(decision) => AuditEvent::decided(asked, decision),
            Err(Refusal::Request(error)) => {
                AuditEvent::refused(asked, error.kind(), Some(error), snapshot.version().to_string())
            }
            Err(refusal) => AuditEvent::refused(asked, refusal.kind(), None, snapshot.version().to_string()),
        };
        event.emit(level);
        allowed
    }

    /// The list's own audit event: who asked, and how many accounts the answer holds
    /// (`allow` when any, `reason` `listed`; each account's decisions are debug events).
    pub(super) fn audit_list(&self, snapshot: &PolicySnapshot, request_id: &str, accounts: usize) {
        let asked = Asked {
            resource: self.account_type.as_ref().map_or_else(String::new, ToString::to_string),
            ..self.asked(Operation::List, request_id)
        };
        let mut event = AuditEvent::refused(asked, "listed", None, snapshot.version().to_string());
        event.decision = if accounts > 0 { "allow" } else { "deny" };
        event.accounts = Some(accounts);
        event.emit(tracing::Level::INFO);
    }

    /// The resource uid of `account`, as the audit event writes it.
    fn resource(&self, account: &str) -> String {
        match &self.account_type {
            Some(account_type) => {
                uid_text(&EntityUid::from_type_name_and_id(account_type.clone(), EntityId::new(account)))
            }
            None => String::new(),
        }
    }
}

/// The two operations, as their audit events name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operation {
    List,
    Validate,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::List => "listAuthorizedAccounts",
            Self::Validate => "validateAccountAuthorization",
        }
    }
}

/// Why a question was denied before Cedar saw it.
#[derive(Debug)]
pub(super) enum Refusal {
    /// The event names no user.
    NoUser,
    /// The account id is not 12 digits.
    BadAccountId,
    /// No `DataZone::Account` entity has this id.
    UnknownAccount,
    /// The account does not list this region.
    UnsupportedRegion,
    /// The question does not fit the schema.
    Request(RequestError),
}

impl Refusal {
    fn kind(&self) -> &'static str {
        match self {
            Self::NoUser => "no_user",
            Self::BadAccountId => "bad_account_id",
            Self::UnknownAccount => "unknown_account",
            Self::UnsupportedRegion => "unsupported_region",
            Self::Request(e) => e.kind(),
        }
    }
}

/// An AWS account id: exactly 12 digits.
pub(super) fn is_account_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit())
}

/// The action both operations ask (parsed once: Cedar's name parser is slow next to
/// the rest of a question).
pub(super) fn use_account() -> Option<EntityUid> {
    static ACTION: OnceLock<Option<EntityUid>> = OnceLock::new();
    ACTION
        .get_or_init(|| {
            Some(EntityUid::from_type_name_and_id(type_name("DataZone::Action")?, EntityId::new("UseAccount")))
        })
        .clone()
}

/// The type of pool accounts.
pub(super) fn account_type() -> Option<EntityTypeName> {
    static ACCOUNT: OnceLock<Option<EntityTypeName>> = OnceLock::new();
    ACCOUNT.get_or_init(|| type_name("DataZone::Account")).clone()
}

/// The type of the users the events name.
pub const USER_TYPE: &str = "DataZone::User";

/// The uid of the user an event names.
pub fn user_uid(user: &str) -> Option<EntityUid> {
    static USER: OnceLock<Option<EntityTypeName>> = OnceLock::new();
    let user_type = USER.get_or_init(|| type_name(USER_TYPE)).clone()?;
    Some(EntityUid::from_type_name_and_id(user_type, EntityId::new(user)))
}

fn type_name(text: &str) -> Option<EntityTypeName> {
    EntityTypeName::from_str(text).ok()
}
