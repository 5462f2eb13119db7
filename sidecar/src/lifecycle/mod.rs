//! Group membership drives access: IAM Identity Center's membership changes, as
//! EventBridge delivers them, applied at once.
//!
//! - [`event`] reads the four CloudTrail event shapes (add and remove through the
//!   console or AD synchronisation, create and delete through the Identity Store API).
//! - [`identity`] resolves the ids an event names to the principal and team ids the
//!   policies use, and confirms each change against the identity store.
//! - [`store`] keeps revocations and the memberships seen being made, in a DynamoDB
//!   table the fleet shares (or this process's memory).
//! - [`revocations`] is the data plane's side: a token issued before a removal no
//!   longer counts the team, on every sidecar reading the same table.
//!
//! [`Lifecycle::handle`] is the one code path of both ways in: the `lambda` entry point
//! and the `membership_events` HTTP route. What it does with each change:
//!
//! - **removal** (`RemoveMemberFromGroup`, or `DeleteGroupMembership` of a membership
//!   seen being made): the user and group are resolved; unless the identity store says
//!   the user is a member again (a later add won), the revocation is recorded. If the
//!   identity store cannot be asked whether the user is a member again, the revocation
//!   is recorded anyway: it only ever takes access away.
//! - **add** (`AddMemberToGroup`, `CreateGroupMembership`): confirmed against the
//!   identity store (an add already undone changes nothing), and the membership is
//!   remembered, so that its deletion, which names only its id, can be attributed.
//! - a `DeleteGroupMembership` of a membership never seen cannot say whose it was (the
//!   identity store has forgotten it). With `[lifecycle] identity_store_id`, the teams
//!   are synchronised instead ([`Lifecycle::sync`]): every remembered membership now
//!   gone is revoked. Without it, the event is an error (`UnknownMembership`).
//! - with `identity_store_id`, [`Lifecycle::sync`] also runs at start and every
//!   `sync_every` (`serve`), or on an EventBridge schedule (`lambda`): memberships made
//!   without an event seen are remembered, and removals whose events were lost are
//!   revoked as of the sync.
//!
//! With `[lifecycle] profile_route`, Studio profiles follow ([`profiles`]): made on join
//! when the policies allow (`Studio::Action::"ProvisionUserProfile"`), removed with their
//! apps on leave once the identity store has confirmed it ([`cleanup`]).
//!
//! Every event is idempotent (EventBridge delivers at least once, in any order): a
//! revocation only ever moves later, a membership is written whole and stays
//! attributable after its removal, a profile already made or gone is left so. Each
//! outcome is one log line (target `authz_sidecar::lifecycle`) and one count of
//! `authz_membership_events_total{event, outcome}`.

pub mod cleanup;
pub mod event;
pub mod identity;
pub mod profiles;
pub mod revocations;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::policy_store::PolicySnapshot;

pub use event::{Change, EventError, MembershipEvent, Parsed, is_membership_source};
pub use identity::{IdentityError, IdentityStore};
pub use profiles::{ProfileError, ProfileOutcome, Profiles};
pub use revocations::{Known, Revocations};
pub use store::{Member, Revocation, Store, StoreError};

/// Why an event could not be applied. Nothing is changed for a refused event; a failed
/// one may be delivered again and will do what is left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error("the identity store cannot answer: {0}")]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "membership `{membership}` of identity store `{store}` was never seen being made, so whose it was is \
         unknown; nothing was revoked"
    )]
    UnknownMembership { store: String, membership: String },
    #[error("the event is about identity store `{0}`, not the one this sidecar serves")]
    OtherStore(String),
    #[error("memberships are synchronised only with `[lifecycle] identity_store_id`")]
    NoStoreToSync,
    /// The change is recorded; its profile step failed and is done again when the event
    /// is delivered again.
    #[error("the profile step failed: {0}")]
    Profile(#[from] ProfileError),
    /// A removal is recorded, but whether the user is really no longer a member could not
    /// be asked, so their profile is not removed yet.
    #[error("the removal is recorded; its clean-up waits for the identity store: {0}")]
    Unconfirmed(IdentityError),
}

impl LifecycleError {
    /// A stable name for the Lambda `errorType`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Event(e) => e.error_type(),
            Self::Identity(IdentityError::NotFound { .. } | IdentityError::NoAttribute { .. }) => "IdentityNotFound",
            Self::Identity(IdentityError::Call { .. }) => "IdentityStoreUnavailable",
            Self::Store(_) => "LifecycleStoreUnavailable",
            Self::UnknownMembership { .. } => "UnknownMembership",
            Self::OtherStore(_) => "UnsupportedEvent",
            Self::NoStoreToSync => "LifecycleNotConfigured",
            Self::Profile(_) => "ProfileStepFailed",
            Self::Unconfirmed(_) => "IdentityStoreUnavailable",
        }
    }

    /// The HTTP status of the `membership_events` route: the caller's fault (400, 422),
    /// or worth delivering again (503).
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::Event(_) | Self::OtherStore(_) | Self::NoStoreToSync => http::StatusCode::BAD_REQUEST,
            Self::Profile(_) | Self::Unconfirmed(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            Self::Identity(IdentityError::NotFound { .. } | IdentityError::NoAttribute { .. })
            | Self::UnknownMembership { .. } => http::StatusCode::UNPROCESSABLE_ENTITY,
            Self::Identity(IdentityError::Call { .. }) | Self::Store(_) => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// What an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A failed call, or an add or removal the identity store no longer agrees with.
    Unchanged { reason: String },
    /// The principal lost the team for every token issued before the removal (and
    /// what became of their profile for it).
    Revoked { principal: String, team: String, profile: Option<ProfileOutcome> },
    /// The membership is remembered (and what became of their profile for it).
    Recorded { principal: String, team: String, profile: Option<ProfileOutcome> },
    /// A deletion of a membership never seen: the teams were synchronised instead, so
    /// every remembered membership that is gone is revoked.
    Reconciled { reason: String },
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Self::Unchanged { .. } => "unchanged",
            Self::Revoked { .. } => "revoked",
            Self::Recorded { .. } => "recorded",
            Self::Reconciled { .. } => "reconciled",
        }
    }
}

/// Applies membership events.
pub struct Lifecycle {
    store: Arc<Store>,
    identity: IdentityStore,
    revocations: Arc<Revocations>,
    token_lifetime: Duration,
    /// Set with `[lifecycle] profile_route`.
    profiles: Option<Arc<Profiles>>,
    /// Run profile steps after answering (the HTTP form: an API destination waits 5 s).
    detached: bool,
    /// Set with `[lifecycle] identity_store_id`.
    only_store: Option<String>,
    /// `[lifecycle] teams`: synchronised besides the entity files' teams.
    teams: Vec<String>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").field("store", &self.store).finish_non_exhaustive()
    }
}

impl Lifecycle {
    pub fn new(
        store: Arc<Store>,
        identity: IdentityStore,
        revocations: Arc<Revocations>,
        token_lifetime: Duration,
    ) -> Self {
        Self {
            store,
            identity,
            revocations,
            token_lifetime,
            profiles: None,
            detached: false,
            only_store: None,
            teams: Vec::new(),
        }
    }

    /// Make and remove Studio profiles as members join and leave.
    #[must_use]
    pub fn with_profiles(mut self, profiles: Profiles) -> Self {
        self.profiles = Some(Arc::new(profiles));
        self
    }

    /// Run profile steps after the event is answered, in the background, tried three
    /// times (the HTTP form: an EventBridge API destination waits five seconds, and a
    /// profile takes minutes). Their outcome is then only logged and counted
    /// (`authz_profile_steps_total{step, outcome}`).
    #[must_use]
    pub fn detach_profile_steps(mut self) -> Self {
        self.detached = true;
        self
    }

    /// Apply only events of identity store `store`, and synchronise the entity files'
    /// teams and `teams` with it.
    #[must_use]
    pub fn only_store(mut self, store: Option<String>, teams: Vec<String>) -> Self {
        self.only_store = store;
        self.teams = teams;
        self
    }

    /// Synchronise with the identity store: for every team the entity files list (and
    /// `[lifecycle] teams`), its group's memberships now are compared with those
    /// remembered. A new one is remembered; one remembered and gone is a removal missed,
    /// revoked as of now (and its profile removed). A team whose sync fails is named in
    /// `errors`; the others are synchronised all the same.
    pub async fn sync(&self, snapshot: &Arc<PolicySnapshot>, request_id: &str) -> Result<Value, LifecycleError> {
        let store = self.only_store.as_deref().ok_or(LifecycleError::NoStoreToSync)?;
        let mut teams: Vec<String> = match crate::config::team_type() {
            Some(team_type) => {
                snapshot.entities_of_type(&team_type).iter().map(|t| t.id().unescaped().to_owned()).collect()
            }
            None => Vec::new(),
        };
        teams.extend(self.teams.iter().cloned());
        teams.sort();
        teams.dedup();
        let (mut groups, mut remembered, mut revoked, mut errors) = (0, 0, 0, Vec::new());
        for team in &teams {
            match self.sync_team(store, team, snapshot).await {
                Ok(None) => {}
                Ok(Some((new, gone))) => {
                    groups += 1;
                    remembered += new;
                    revoked += gone;
                }
                Err(error) => errors.push(format!("{team}: {error}")),
            }
        }
        metrics::counter!("authz_membership_syncs_total", "outcome" => if errors.is_empty() { "ok" } else { "partial" })
            .increment(1);
        tracing::info!(
            target: "authz_sidecar::lifecycle", request_id, teams = teams.len(), groups, remembered, revoked,
            errors = errors.len(), "memberships synchronised"
        );
        Ok(json!({"outcome": "synced", "teams": teams.len(), "groups": groups, "remembered": remembered,
                  "revoked": revoked, "errors": errors}))
    }

    /// One team's sync: (memberships newly remembered, removals revoked); `None` when
    /// the identity store has no group for the team.
    async fn sync_team(
        &self,
        store: &str,
        team: &str,
        snapshot: &Arc<PolicySnapshot>,
    ) -> Result<Option<(usize, usize)>, LifecycleError> {
        let Some(group) = self.identity.group_of(store, team).await? else { return Ok(None) };
        let current = self.identity.memberships(store, &group).await?;
        let known = self.store.members_of(store, &group).await?;
        let mut new = 0;
        for (id, user) in &current {
            if !known.iter().any(|(k, _)| k == id) {
                let principal = self.identity.principal(store, user).await?;
                let member =
                    Member { user_id: user.clone(), group_id: group.clone(), principal, team: team.to_owned() };
                self.store.remember(store, id, &member).await?;
                new += 1;
            }
        }
        let mut gone = 0;
        for (id, member) in known {
            if current.iter().any(|(c, _)| *c == id) {
                continue;
            }
            let at = std::time::SystemTime::now();
            let outcome = self.revoke(at, store, &member, snapshot).await?;
            if matches!(outcome, Outcome::Revoked { .. }) {
                gone += 1;
            }
            self.store.unlist(store, &id, &member).await?;
        }
        Ok(Some((new, gone)))
    }

    /// Apply the event in `body` (deciding over `snapshot`) and say what it did, as JSON.
    pub async fn handle(
        &self,
        body: &[u8],
        request_id: &str,
        snapshot: &Arc<PolicySnapshot>,
    ) -> Result<Value, LifecycleError> {
        match serde_json::from_slice::<Value>(body) {
            Ok(event) => self.handle_value(&event, request_id, snapshot).await,
            Err(e) => self.handle_parsed(Err(EventError::NotJson(e.to_string())), request_id, snapshot).await,
        }
    }

    /// Apply an event already read as JSON (the Lambda form). An EventBridge schedule
    /// synchronises memberships instead ([`Lifecycle::sync`]).
    pub async fn handle_value(
        &self,
        event: &Value,
        request_id: &str,
        snapshot: &Arc<PolicySnapshot>,
    ) -> Result<Value, LifecycleError> {
        if event::is_schedule(event) {
            return self.sync(snapshot, request_id).await;
        }
        self.handle_parsed(event::parse_value(event), request_id, snapshot).await
    }

    async fn handle_parsed(
        &self,
        parsed: Result<Parsed, EventError>,
        request_id: &str,
        snapshot: &Arc<PolicySnapshot>,
    ) -> Result<Value, LifecycleError> {
        let parsed = parsed.inspect_err(|e| {
            tracing::info!(target: "authz_sidecar::lifecycle", request_id, error = %e, "membership event refused");
            metrics::counter!("authz_membership_events_total", "event" => "-", "outcome" => e.error_type())
                .increment(1);
        })?;
        let (event_id, name, outcome) = match parsed {
            Parsed::Ignored { event_id, reason } => (event_id, "-".to_owned(), Ok(Outcome::Unchanged { reason })),
            Parsed::Change(event) => {
                let outcome = self.apply(&event, request_id, snapshot).await;
                (event.event_id, event.name, outcome)
            }
        };
        let label = match &outcome {
            Ok(outcome) => outcome.label(),
            Err(error) => error.error_type(),
        };
        metrics::counter!("authz_membership_events_total", "event" => name.clone(), "outcome" => label).increment(1);
        match outcome {
            Ok(outcome) => {
                let (principal, team, reason, profile) = match &outcome {
                    Outcome::Unchanged { reason } | Outcome::Reconciled { reason } => {
                        (None, None, Some(reason.as_str()), None)
                    }
                    Outcome::Revoked { principal, team, profile } | Outcome::Recorded { principal, team, profile } => {
                        (Some(principal.as_str()), Some(team.as_str()), None, profile.as_ref())
                    }
                };
                tracing::info!(
                    target: "authz_sidecar::lifecycle", request_id, event_id, event = %name, outcome = label,
                    principal, team, reason, profile = profile.map(ProfileOutcome::label), "membership event applied"
                );
                Ok(json!({"eventId": event_id, "event": name, "outcome": label,
                          "principal": principal, "team": team, "reason": reason,
                          "profile": profile.map(ProfileOutcome::to_json)}))
            }
            Err(error) => {
                tracing::warn!(
                    target: "authz_sidecar::lifecycle", request_id, event_id, event = %name, error = %error,
                    error_type = label, "membership event not applied"
                );
                Err(error)
            }
        }
    }

    async fn apply(
        &self,
        event: &MembershipEvent,
        request_id: &str,
        snapshot: &Arc<PolicySnapshot>,
    ) -> Result<Outcome, LifecycleError> {
        let store = event.store.as_str();
        if let Some(only) = &self.only_store
            && only != store
        {
            return Err(LifecycleError::OtherStore(store.to_owned()));
        }
        match &event.change {
            Change::Joined { group, user, membership } => {
                let Some(current) = self.identity.membership(store, group, user).await? else {
                    return Ok(Outcome::Unchanged {
                        reason: "the identity store says the user is not a member (removed since)".to_owned(),
                    });
                };
                let member = Member {
                    user_id: user.clone(),
                    group_id: group.clone(),
                    principal: self.identity.principal(store, user).await?,
                    team: self.identity.team(store, group).await?,
                };
                self.store.remember(store, &current, &member).await?;
                if let Some(stated) = membership.as_ref().filter(|m| **m != current) {
                    self.store.remember(store, stated, &member).await?;
                }
                let step = Step::Provision { principal: member.principal.clone(), team: member.team.clone() };
                let profile = self.profile_step(step, snapshot, request_id).await?;
                Ok(Outcome::Recorded { principal: member.principal, team: member.team, profile })
            }
            Change::Left { group, user } => {
                let member = Member {
                    user_id: user.clone(),
                    group_id: group.clone(),
                    principal: self.identity.principal(store, user).await?,
                    team: self.identity.team(store, group).await?,
                };
                let outcome = self.revoke(event.at, store, &member, snapshot).await?;
                if matches!(outcome, Outcome::Revoked { .. }) {
                    for (id, member) in self.store.members_of(store, group).await? {
                        if member.user_id == *user {
                            self.store.unlist(store, &id, &member).await?;
                        }
                    }
                }
                Ok(outcome)
            }
            Change::MembershipDeleted { membership } => {
                let Some(member) = self.store.recall(store, membership).await? else {
                    if self.only_store.is_none() {
                        return Err(LifecycleError::UnknownMembership {
                            store: store.to_owned(),
                            membership: membership.clone(),
                        });
                    }
                    // fail safe: whoever it was, every remembered membership now gone
                    // is revoked
                    let synced = self.sync(snapshot, request_id).await?;
                    return Ok(Outcome::Reconciled {
                        reason: format!(
                            "membership `{membership}` was never seen; the teams were synchronised: {synced}"
                        ),
                    });
                };
                let outcome = self.revoke(event.at, store, &member, snapshot).await?;
                if matches!(outcome, Outcome::Revoked { .. }) {
                    self.store.unlist(store, membership, &member).await?;
                }
                Ok(outcome)
            }
        }
    }

    /// Run `step` now, or (detached) in the background after the answer.
    async fn profile_step(
        &self,
        step: Step,
        snapshot: &Arc<PolicySnapshot>,
        request_id: &str,
    ) -> Result<Option<ProfileOutcome>, LifecycleError> {
        let Some(profiles) = &self.profiles else { return Ok(None) };
        if !self.detached {
            return Ok(step.run(profiles, snapshot, request_id).await?);
        }
        let (profiles, snapshot, request_id) = (profiles.clone(), snapshot.clone(), request_id.to_owned());
        tokio::spawn(async move {
            let mut pause = Duration::from_secs(10);
            for attempt in 1..=3 {
                match step.run(&profiles, &snapshot, &request_id).await {
                    Ok(outcome) => {
                        let label = outcome.as_ref().map_or("none", ProfileOutcome::label);
                        tracing::info!(target: "authz_sidecar::lifecycle", request_id, step = step.label(), outcome = label,
                                       "profile step done");
                        metrics::counter!("authz_profile_steps_total", "step" => step.label(), "outcome" => label)
                            .increment(1);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(target: "authz_sidecar::lifecycle", request_id, step = step.label(), attempt,
                                       %error, "profile step failed");
                        if attempt < 3 {
                            tokio::time::sleep(pause).await;
                            pause *= 2;
                        }
                    }
                }
            }
            metrics::counter!("authz_profile_steps_total", "step" => step.label(), "outcome" => "failed").increment(1);
        });
        Ok(Some(ProfileOutcome::Started))
    }

    /// Record that `member` left their group at `at`, unless the identity store says
    /// they are a member again; then, once the identity store has confirmed it, remove
    /// their profile for the team.
    async fn revoke(
        &self,
        at: std::time::SystemTime,
        store: &str,
        member: &Member,
        snapshot: &Arc<PolicySnapshot>,
    ) -> Result<Outcome, LifecycleError> {
        let (principal, team) = (member.principal.clone(), member.team.clone());
        let unconfirmed = match self.identity.membership(store, &member.group_id, &member.user_id).await {
            Ok(Some(_)) => {
                return Ok(Outcome::Unchanged {
                    reason: "the identity store says the user is a member again (added since)".to_owned(),
                });
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(target: "authz_sidecar::lifecycle", %error, "membership not confirmed; revoking anyway");
                Some(error)
            }
        };
        // a removal cannot have happened later than now: a future time is not believed
        let at = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).min(crate::authn::now_secs());
        let until = at.saturating_add(self.token_lifetime.as_secs());
        self.store.revoke(&principal, &team, at, until).await?;
        self.revocations.note(&principal, Revocation { team: team.clone(), at, until });
        let profile = match (&self.profiles, unconfirmed) {
            (None, _) => None,
            // destroying a profile needs the identity store's word, not the event's
            (Some(_), Some(error)) => return Err(LifecycleError::Unconfirmed(error)),
            (Some(_), None) => {
                let step = Step::CleanUp { principal: principal.clone(), team: team.clone() };
                self.profile_step(step, snapshot, "-").await?
            }
        };
        Ok(Outcome::Revoked { principal, team, profile })
    }
}

/// A profile step a membership change asks for.
#[derive(Debug, Clone)]
enum Step {
    Provision { principal: String, team: String },
    CleanUp { principal: String, team: String },
}

impl Step {
    fn label(&self) -> &'static str {
        match self {
            Self::Provision { .. } => "provision",
            Self::CleanUp { .. } => "clean_up",
        }
    }

    async fn run(
        &self,
        profiles: &Profiles,
        snapshot: &PolicySnapshot,
        request_id: &str,
    ) -> Result<Option<ProfileOutcome>, ProfileError> {
        match self {
            Self::Provision { principal, team } => profiles.provision(snapshot, principal, team, request_id).await,
            Self::CleanUp { principal, team } => profiles.clean_up(snapshot, principal, team).await,
        }
    }
}
