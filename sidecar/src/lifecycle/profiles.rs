//! Studio profiles follow group membership: created on join when the policies allow it,
//! removed (with their apps) on leave.
//!
//! The profile of a user and team is the one the presign route (`[lifecycle]
//! profile_route`) would open for them: a listed `Studio::UserProfile` whose `owner` and
//! `team` are theirs, else the one its resource id template names for them, derived as
//! the presign handler derives it. Its LOB gives the account, region, domain and role,
//! exactly as for a presign, and the team its execution role.
//!
//! On join the policies decide: the question is `Studio::Action::"ProvisionUserProfile"`
//! on that profile, asked for a principal built as a token listing the joined team
//! would build it (over the user's stored entity, under `[principal]
//! group_membership`), and audited like every decision. Allowed, the profile is created
//! by the presign handler's own provisioning ([`Presigner::provision_profile`]).

use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{Context, Entity, EntityId, EntityUid};
use serde_json::{Map, Value};

use super::cleanup::{CleanupError, CleanupOptions, remove_profile};
use crate::authn::Identity;
use crate::authn::principal::principal_entity;
use crate::authz::audit::Asked;
use crate::authz::{DecisionRequest, Engine, RequestError, authorize};
use crate::config::{DeriveProfile, Mode, PresignOptions, PrincipalConfig, Provisioning, RouteConfig, TEAM_TYPE};
use crate::directory::{Directory, Gathered, gather};
use crate::handlers::presign::{PresignError, Presigner, Target, resolve};
use crate::handlers::profiles::derive_profile;
use crate::policy_store::{CheckedEntity, PolicySnapshot};

/// The action asked before a profile is created for a user who joined a team.
pub const PROVISION_ACTION: &str = r#"Studio::Action::"ProvisionUserProfile""#;

/// Why a profile step could not be done (the event is then delivered again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("the directory cannot be read: {0}")]
    Directory(String),
    #[error("the profile cannot be reached: {0}")]
    Presign(#[from] PresignError),
    #[error(transparent)]
    Cleanup(#[from] CleanupError),
}

/// What happened to the profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileOutcome {
    Created {
        profile: String,
        domain: String,
    },
    AlreadyThere {
        profile: String,
        domain: String,
    },
    /// The policies do not allow this user a profile for this team.
    NotAllowed {
        reason: String,
    },
    Removed {
        profile: String,
        domain: String,
        apps_deleted: usize,
    },
    AlreadyGone {
        profile: String,
        domain: String,
    },
    /// No profile can be named for the user and team (no LOB, no such team...).
    NoProfile {
        reason: String,
    },
    /// The step runs after the answer (see [`super::Lifecycle::detach_profile_steps`]).
    Started,
}

impl ProfileOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Created { .. } => "created",
            Self::AlreadyThere { .. } => "already_there",
            Self::NotAllowed { .. } => "not_allowed",
            Self::Removed { .. } => "removed",
            Self::AlreadyGone { .. } => "already_gone",
            Self::NoProfile { .. } => "no_profile",
            Self::Started => "started",
        }
    }

    pub fn to_json(&self) -> Value {
        let mut json = Map::new();
        json.insert("outcome".to_owned(), Value::String(self.label().to_owned()));
        let fields = match self {
            Self::Created { profile, domain }
            | Self::AlreadyThere { profile, domain }
            | Self::AlreadyGone { profile, domain } => vec![("profile", profile.clone()), ("domain", domain.clone())],
            Self::Removed { profile, domain, apps_deleted } => vec![
                ("profile", profile.clone()),
                ("domain", domain.clone()),
                ("appsDeleted", apps_deleted.to_string()),
            ],
            Self::NotAllowed { reason } | Self::NoProfile { reason } => vec![("reason", reason.clone())],
            Self::Started => Vec::new(),
        };
        for (key, value) in fields {
            json.insert(key.to_owned(), Value::String(value));
        }
        Value::Object(json)
    }
}

/// What the profile steps need: the presign route, the principal's shape, the
/// presigner's clients, the directory and the engine.
pub struct Profiles {
    route: RouteConfig,
    derive: DeriveProfile,
    options: PresignOptions,
    principal: PrincipalConfig,
    presigner: Arc<Presigner>,
    directory: Option<Arc<Directory>>,
    engine: Engine,
    /// Create profiles on join (`None`: do not).
    provisioning: Option<Provisioning>,
    /// Remove profiles on leave (`None`: do not).
    cleanup: Option<CleanupOptions>,
}

impl std::fmt::Debug for Profiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profiles").field("route", &self.route.name).finish_non_exhaustive()
    }
}

/// A profile named for a user and team, and what deciding about it needs.
struct Named {
    resource: EntityUid,
    target: Result<Target, PresignError>,
    principal: Result<Arc<CheckedEntity>, String>,
    checked: Vec<Arc<CheckedEntity>>,
}

impl Profiles {
    /// `route` must be a presign route with `derive_profile` (checked when the
    /// configuration is read).
    #[allow(clippy::too_many_arguments, reason = "the wiring's one constructor")]
    pub fn new(
        route: RouteConfig,
        derive: DeriveProfile,
        options: PresignOptions,
        principal: PrincipalConfig,
        presigner: Arc<Presigner>,
        directory: Option<Arc<Directory>>,
        provisioning: Option<Provisioning>,
        cleanup: Option<CleanupOptions>,
    ) -> Self {
        Self { route, derive, options, principal, presigner, directory, engine: Engine::new(), provisioning, cleanup }
    }

    /// On join: create `user`'s profile for `team` if the policies allow it.
    pub async fn provision(
        &self,
        snapshot: &PolicySnapshot,
        user: &str,
        team: &str,
        request_id: &str,
    ) -> Result<Option<ProfileOutcome>, ProfileError> {
        let Some(provisioning) = &self.provisioning else { return Ok(None) };
        let named = match self.name(snapshot, user, team).await? {
            Ok(named) => named,
            Err(reason) => return Ok(Some(ProfileOutcome::NoProfile { reason })),
        };
        let Ok(action) = EntityUid::from_str(PROVISION_ACTION) else {
            return Ok(Some(ProfileOutcome::NotAllowed { reason: "no provisioning action".to_owned() }));
        };
        let question = named.principal.clone().map_err(RequestError::BadEntities).map(|principal| {
            DecisionRequest::built(principal, action.clone(), named.resource.clone(), Context::empty())
                .with_checked(named.checked.clone())
        });
        let asked = Asked {
            request_id: request_id.to_owned(),
            route: Some(self.route.name.clone()),
            operation: Some("provision"),
            principal: format!("{}::\"{user}\"", self.principal.entity_type),
            action: PROVISION_ACTION.to_owned(),
            resource: named.resource.to_string(),
            ..Asked::default()
        };
        if let Err(denial) = authorize(&self.engine, snapshot, Mode::Enforce, asked, question) {
            return Ok(Some(ProfileOutcome::NotAllowed { reason: denial.to_string() }));
        }
        let target = named.target?;
        let created = self.presigner.provision_profile(&target, user, &self.options, provisioning).await?;
        let (profile, domain) = (target.profile_name, target.domain_id);
        Ok(Some(if created {
            ProfileOutcome::Created { profile, domain }
        } else {
            ProfileOutcome::AlreadyThere { profile, domain }
        }))
    }

    /// On leave: remove `user`'s profile for `team` and its apps.
    pub async fn clean_up(
        &self,
        snapshot: &PolicySnapshot,
        user: &str,
        team: &str,
    ) -> Result<Option<ProfileOutcome>, ProfileError> {
        let Some(cleanup) = &self.cleanup else { return Ok(None) };
        let named = match self.name(snapshot, user, team).await? {
            Ok(named) => named,
            Err(reason) => return Ok(Some(ProfileOutcome::NoProfile { reason })),
        };
        let target = match named.target {
            Ok(target) => target,
            Err(PresignError::ProfileNotFound(reason)) => return Ok(Some(ProfileOutcome::NoProfile { reason })),
            Err(error) => return Err(error.into()),
        };
        let client = self.presigner.lob_client(&target, user, &self.options).await?;
        let cleaned = remove_profile(&client, &target.domain_id, &target.profile_name, cleanup).await?;
        let (profile, domain) = (target.profile_name, target.domain_id);
        Ok(Some(if cleaned.profile_deleted {
            ProfileOutcome::Removed { profile, domain, apps_deleted: cleaned.apps_deleted }
        } else {
            ProfileOutcome::AlreadyGone { profile, domain }
        }))
    }

    /// The profile of `user` and `team` and what deciding on it needs; `Ok(Err(why))`
    /// when none can be named.
    async fn name(
        &self,
        snapshot: &PolicySnapshot,
        user: &str,
        team: &str,
    ) -> Result<Result<Named, String>, ProfileError> {
        let user_type = &self.principal.entity_type;
        let user_uid = EntityUid::from_type_name_and_id(user_type.clone(), EntityId::new(user));
        let team_uid = crate::config::team_type()
            .map(|t| EntityUid::from_type_name_and_id(t, EntityId::new(team)))
            .ok_or_else(|| ProfileError::Directory(format!("`{TEAM_TYPE}` is not an entity type name")))?;
        let resource = match listed_profile(snapshot, &user_uid, &team_uid) {
            Some(uid) => uid,
            None => {
                let id = self.route.authz.resource_id.render(|param| {
                    if param == self.derive.user {
                        Some(user)
                    } else if param == self.derive.team {
                        Some(team)
                    } else {
                        None
                    }
                });
                match id {
                    Ok(id) => {
                        EntityUid::from_type_name_and_id(self.route.authz.resource_type.clone(), EntityId::new(id))
                    }
                    Err(e) => return Ok(Err(format!("the profile route names no profile for them: {e}"))),
                }
            }
        };
        let mut gathered = Gathered::default();
        if let Some(directory) = &self.directory {
            let roots = [user_uid.clone(), team_uid.clone(), resource.clone()];
            gather(directory, snapshot, roots, &mut gathered)
                .await
                .map_err(|e| ProfileError::Directory(e.to_string()))?;
        }
        let derived = match gathered.known_or_none(snapshot, &resource) {
            Some(_) => None,
            None => {
                let known = |uid: &EntityUid| gathered.known_or_none(snapshot, uid);
                match derive_profile(snapshot, known, user_type, user, team, &resource) {
                    Ok(entity) => Some(Arc::new(CheckedEntity::new(entity))),
                    Err(e) => return Ok(Err(e.to_string())),
                }
            }
        };
        // a stored entity that cannot be built fails the principal, never drops its attributes
        let principal = gathered.known(snapshot, &user_uid).map_err(|e| e.to_string()).and_then(|stored| {
            let identity = self.member_identity(user, team);
            principal_entity(&identity, &self.principal, stored.as_deref(), snapshot.schema(), &[])
                .map(|entity| Arc::new(CheckedEntity::new(entity)))
                .map_err(|e| e.to_string())
        });
        let known = |uid: &EntityUid| match &derived {
            Some(profile) if profile.uid() == uid => Some(profile.shared().clone()),
            _ => gathered.known_or_none(snapshot, uid),
        };
        let target = resolve(known, &resource, resource.id().unescaped());
        let checked = gathered.checked_except(&user_uid).into_iter().chain(derived.clone()).collect();
        Ok(Ok(Named { resource, target, principal, checked }))
    }

    /// An identity whose groups claim lists `team`: the member as the identity store
    /// now has them, for this one team.
    fn member_identity(&self, user: &str, team: &str) -> Identity {
        let mut claims = Map::new();
        if let Some(claim) = &self.principal.groups_claim {
            claims.insert(claim.clone(), Value::Array(vec![Value::String(team.to_owned())]));
        }
        Identity {
            issuer: "identity-store".to_owned(),
            subject: user.to_owned(),
            principal_id: user.to_owned(),
            claims,
            expires_at: 0,
            token_digest: [0; 32],
        }
    }
}

/// A profile the entity files list for `user` and `team`.
fn listed_profile(snapshot: &PolicySnapshot, user: &EntityUid, team: &EntityUid) -> Option<EntityUid> {
    let profile_type = crate::config::profile_type()?;
    let points_at = |entity: &Entity, name: &str, uid: &EntityUid| matches!(entity.attr(name), Some(Ok(cedar_policy::EvalResult::EntityUid(found))) if &found == uid);
    snapshot.entities_of_type(&profile_type).iter().find_map(|uid| {
        // most profiles point at neither; only those that point at both are built
        if !(snapshot.stored_points_at(&uid, user) && snapshot.stored_points_at(&uid, team)) {
            return None;
        }
        let entity = snapshot.stored_entity(&uid).ok().flatten()?;
        (points_at(&entity, "owner", user) && points_at(&entity, "team", team)).then_some(uid)
    })
}
