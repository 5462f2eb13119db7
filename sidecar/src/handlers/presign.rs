//! The presign handler: an allowed call gets a SageMaker Studio presigned URL.
//!
//! Where to call comes from entities, never from the request: the Studio profile entity
//! names its LOB, and the LOB entity its account, region, Studio domain and presign role.
//! The sidecar assumes that role with STS (session name and source identity derived from
//! the user), caches the credentials per role and session until shortly before they
//! expire (moka; concurrent misses make one STS call), and calls
//! CreatePresignedDomainUrl in the LOB's region. The URL goes back as a 302 (or JSON)
//! with `Cache-Control: no-store`; it is never logged and never cached.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sdk_sagemaker::error::ProvideErrorMetadata;
use aws_sdk_sts::error::SdkError;
use cedar_policy::{Entity, EntityUid, EvalResult};
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::Body;
use crate::body::full;
use crate::body::json_response;
use crate::config::{PresignOptions, PresignResponse, Provisioning};

/// Why a presign failed: `rescue.rs` turns each into its status and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresignError {
    /// The resource names no Studio user profile the sidecar knows or SageMaker has.
    #[error("profile not found: {0}")]
    ProfileNotFound(String),
    /// AWS refused the sidecar (its role, a trust policy, an SCP).
    #[error("AWS denied: {0}")]
    AwsDenied(String),
    #[error("AWS throttled")]
    Throttled,
    /// An AWS call failed in a way the client may be told of (the message names the call
    /// and the service's error code or the kind of failure, never credentials).
    #[error("AWS call failed: {message}")]
    Aws { status: StatusCode, message: String },
    /// AWS rejected the assumed-role credentials the sidecar held (expired, revoked):
    /// the handler drops them and tries once more with fresh ones.
    #[error("AWS rejected the credentials: {0}")]
    CredentialsRejected(String),
    /// STS answered without credentials.
    #[error("STS returned no credentials")]
    NoCredentials,
    #[error("AWS did not answer in time")]
    Timeout,
    /// The entities lack what a presign needs (a LOB's account, region, domain, role):
    /// the snapshot validated, so this is a schema that allows it; not the caller's fault.
    #[error("the profile's entities are incomplete for a presign")]
    Incomplete,
}

/// Credentials are refreshed this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// How long assumed-role sessions last (STS's minimum: they are refreshed anyway).
const SESSION_SECONDS: i32 = 900;

/// Builds the SageMaker client for one set of credentials and region. A trait so tests
/// hand out the SDK's mock clients and see which credentials and region were used.
pub trait SageMakerClients: Send + Sync {
    fn client(&self, credentials: Credentials, region: &str) -> aws_sdk_sagemaker::Client;
}

/// SageMaker clients from the base SDK configuration, through the region's own endpoint
/// (`sagemaker_endpoints`), else `sagemaker_endpoint`, else the public one.
#[derive(Debug)]
pub struct SdkSageMakerClients {
    pub base: aws_config::SdkConfig,
    pub endpoint: Option<String>,
    pub regional: std::collections::BTreeMap<String, String>,
}

impl SageMakerClients for SdkSageMakerClients {
    fn client(&self, credentials: Credentials, region: &str) -> aws_sdk_sagemaker::Client {
        let mut builder = aws_sdk_sagemaker::config::Builder::from(&self.base)
            .interceptor(crate::otel::AwsTraceContext)
            .credentials_provider(credentials)
            .region(aws_config::Region::new(region.to_owned()));
        if let Some(endpoint) = self.regional.get(region).or(self.endpoint.as_ref()) {
            builder = builder.endpoint_url(endpoint.clone());
        }
        aws_sdk_sagemaker::Client::from_conf(builder.build())
    }
}

/// Where a user's Studio URL comes from, read from the entities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub account_id: String,
    pub region: String,
    pub domain_id: String,
    pub role_arn: String,
    pub profile_name: String,
    /// The execution role a new profile of this team runs as, in the LOB's account.
    pub execution_role_arn: Option<String>,
    /// The profile's `Team` tag, copied onto a profile the sidecar creates.
    pub team_tag: Option<String>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    role_arn: String,
    session_name: String,
}

struct UntilNearExpiry;

impl moka::Expiry<SessionKey, Arc<Credentials>> for UntilNearExpiry {
    fn expire_after_create(&self, _: &SessionKey, creds: &Arc<Credentials>, _: std::time::Instant) -> Option<Duration> {
        let left = creds.expiry().and_then(|at| at.duration_since(SystemTime::now()).ok()).unwrap_or_default();
        Some(left.saturating_sub(REFRESH_BEFORE_EXPIRY))
    }
}

pub struct Presigner {
    sts: aws_sdk_sts::Client,
    /// STS clients in the regions with an endpoint of their own: a LOB's role is assumed
    /// through its region's endpoint when there is one.
    regional_sts: std::collections::HashMap<String, aws_sdk_sts::Client>,
    sagemaker: Arc<dyn SageMakerClients>,
    credentials: moka::future::Cache<SessionKey, Arc<Credentials>>,
    /// (domain, profile) being or just provisioned: concurrent first requests share one
    /// creation. Entries go after a minute, so a profile deleted later is made again.
    provisioned: moka::future::Cache<(String, String), ()>,
}

impl std::fmt::Debug for Presigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presigner").finish_non_exhaustive()
    }
}

impl Presigner {
    pub fn new(sts: aws_sdk_sts::Client, sagemaker: Arc<dyn SageMakerClients>) -> Self {
        let credentials = moka::future::Cache::builder().max_capacity(10_000).expire_after(UntilNearExpiry).build();
        let provisioned =
            moka::future::Cache::builder().max_capacity(10_000).time_to_live(Duration::from_secs(60)).build();
        Self { sts, regional_sts: std::collections::HashMap::new(), sagemaker, credentials, provisioned }
    }

    /// Assume roles through these per-region STS clients for LOBs in their regions.
    #[must_use]
    pub fn with_regional_sts(mut self, clients: std::collections::HashMap<String, aws_sdk_sts::Client>) -> Self {
        self.regional_sts = clients;
        self
    }

    /// The presigned URL for `user`'s profile `resource`, as the route's response.
    ///
    /// Credentials that AWS rejects (expired or revoked before their stated expiry) are
    /// dropped from the cache and the role is assumed again, once per request.
    pub async fn presign(
        &self,
        target: Result<Target, PresignError>,
        user: &str,
        options: &PresignOptions,
    ) -> Result<Response<Body>, PresignError> {
        let target = target?;
        let key = SessionKey { role_arn: target.role_arn.clone(), session_name: session_name(user) };
        let url = match self.attempt(&target, &key, user, options).await {
            Err(PresignError::CredentialsRejected(why)) => {
                tracing::warn!(role = %target.role_arn, %why, "AWS rejected cached credentials; assuming the role again");
                metrics::counter!("authz_aws_credentials_rejected_total").increment(1);
                self.credentials.invalidate(&key).await;
                self.attempt(&target, &key, user, options).await?
            }
            other => other?,
        };
        Ok(respond(&url, options))
    }

    /// A SageMaker client in `target`'s LOB account and region, on the LOB role's
    /// credentials (assumed for `user`, cached like the presign handler's).
    pub async fn lob_client(
        &self,
        target: &Target,
        user: &str,
        options: &PresignOptions,
    ) -> Result<aws_sdk_sagemaker::Client, PresignError> {
        let key = SessionKey { role_arn: target.role_arn.clone(), session_name: session_name(user) };
        let credentials = self.credentials_for(&key, &target.region, user, options).await?;
        Ok(self.sagemaker.client((*credentials).clone(), &target.region))
    }

    /// Make sure `user`'s profile `target` exists and is InService, creating it (once,
    /// however many ask) with the team's execution role and the `Owner`, `Team` and
    /// `CreatedBy` tags: the presign handler's own provisioning. Whether this call
    /// created it.
    pub async fn provision_profile(
        &self,
        target: &Target,
        user: &str,
        options: &PresignOptions,
        provisioning: &Provisioning,
    ) -> Result<bool, PresignError> {
        let client = self.lob_client(target, user, options).await?;
        match profile_state(&client, target).await {
            ProfileState::Ready => Ok(false),
            ProfileState::Coming | ProfileState::Unusable => {
                self.ensure_profile(&client, target, user, provisioning).await?;
                Ok(true)
            }
        }
    }

    /// One try: credentials (cached), then the URL, creating the profile or waiting for
    /// it to be InService when provisioning is on.
    async fn attempt(
        &self,
        target: &Target,
        key: &SessionKey,
        user: &str,
        options: &PresignOptions,
    ) -> Result<String, PresignError> {
        let credentials = self.credentials_for(key, &target.region, user, options).await?;
        let client = self.sagemaker.client((*credentials).clone(), &target.region);
        match (self.create_url(&client, target, options).await, &options.provision) {
            (Ok(url), _) => Ok(url),
            (Err(PresignError::ProfileNotFound(message)), None) => Err(PresignError::ProfileNotFound(message)),
            (Err(PresignError::ProfileNotFound(_)), Some(provisioning)) => {
                self.ensure_profile(&client, target, user, provisioning).await?;
                self.create_url(&client, target, options).await
            }
            // the profile may exist and not be InService yet (made by a concurrent
            // request or another sidecar): wait for it as for one this request made
            (Err(error @ PresignError::Aws { .. }), Some(provisioning)) => match profile_state(&client, target).await {
                ProfileState::Unusable => Err(error),
                ProfileState::Ready => self.create_url(&client, target, options).await,
                ProfileState::Coming => {
                    wait_in_service(&client, target, provisioning).await?;
                    self.create_url(&client, target, options).await
                }
            },
            (Err(error), _) => Err(error),
        }
    }

    async fn create_url(
        &self,
        client: &aws_sdk_sagemaker::Client,
        target: &Target,
        options: &PresignOptions,
    ) -> Result<String, PresignError> {
        let mut call = client
            .create_presigned_domain_url()
            .domain_id(&target.domain_id)
            .user_profile_name(&target.profile_name)
            .session_expiration_duration_in_seconds(options.session_expiration_seconds)
            .expires_in_seconds(options.expires_in_seconds);
        if let Some(space) = &options.space_name {
            call = call.space_name(space);
        }
        if let Some(uri) = &options.landing_uri {
            call = call.landing_uri(uri);
        }
        let output = call.send().await.map_err(|e| match e {
            SdkError::ServiceError(service) if service.err().is_resource_not_found() => PresignError::ProfileNotFound(
                format!("no Studio user profile `{}` exists in domain `{}`", target.profile_name, target.domain_id),
            ),
            e => map_sdk_error(e, "SageMaker CreatePresignedDomainUrl", &target.role_arn),
        })?;
        output.authorized_url().map(str::to_owned).ok_or(PresignError::Aws {
            status: StatusCode::BAD_GATEWAY,
            message: "SageMaker CreatePresignedDomainUrl answered without a URL".to_owned(),
        })
    }

    /// Create the profile (once, however many requests ask at the same time) with the
    /// team's execution role and tags, and wait until it is InService.
    async fn ensure_profile(
        &self,
        client: &aws_sdk_sagemaker::Client,
        target: &Target,
        user: &str,
        provisioning: &Provisioning,
    ) -> Result<(), PresignError> {
        let key = (target.domain_id.clone(), target.profile_name.clone());
        let (client, target, user, provisioning) =
            (client.clone(), target.clone(), user.to_owned(), provisioning.clone());
        self.provisioned
            .try_get_with(key, async move { provision(&client, &target, &user, &provisioning).await })
            .await
            .map_err(|e: Arc<PresignError>| (*e).clone())
    }

    async fn credentials_for(
        &self,
        key: &SessionKey,
        region: &str,
        user: &str,
        options: &PresignOptions,
    ) -> Result<Arc<Credentials>, PresignError> {
        let key = key.clone();
        let source_identity = options.source_identity.then(|| session_name(user));
        let external_id = options.external_id.clone();
        let sts = self.regional_sts.get(region).unwrap_or(&self.sts).clone();
        let fetch_key = key.clone();
        self.credentials
            .try_get_with(key, async move {
                let mut call = sts
                    .assume_role()
                    .role_arn(&fetch_key.role_arn)
                    .role_session_name(&fetch_key.session_name)
                    .duration_seconds(SESSION_SECONDS);
                if let Some(id) = external_id {
                    call = call.external_id(id);
                }
                if let Some(identity) = source_identity {
                    call = call.source_identity(identity);
                }
                let output = call.send().await.map_err(|e| map_sdk_error(e, "STS AssumeRole", &fetch_key.role_arn))?;
                let c = output.credentials().ok_or(PresignError::NoCredentials)?;
                let expiry = SystemTime::try_from(*c.expiration()).ok();
                Ok::<_, PresignError>(Arc::new(Credentials::new(
                    c.access_key_id(),
                    c.secret_access_key(),
                    Some(c.session_token().to_owned()),
                    expiry,
                    "authz-sidecar-assume-role",
                )))
            })
            .await
            .map_err(|e: Arc<PresignError>| (*e).clone())
    }
}

async fn provision(
    client: &aws_sdk_sagemaker::Client,
    target: &Target,
    user: &str,
    provisioning: &Provisioning,
) -> Result<(), PresignError> {
    use aws_sdk_sagemaker::types::{Tag, UserSettings};
    let Some(role) = &target.execution_role_arn else {
        tracing::warn!(profile = %target.profile_name, "cannot provision: the profile's team has no execution role");
        return Err(PresignError::ProfileNotFound(format!(
            "no Studio user profile `{}` exists in domain `{}`, and its team names no execution role to create it with",
            target.profile_name, target.domain_id
        )));
    };
    let mut create = client
        .create_user_profile()
        .domain_id(&target.domain_id)
        .user_profile_name(&target.profile_name)
        .user_settings(UserSettings::builder().execution_role(role).build())
        .tags(Tag::builder().key("Owner").value(user).build())
        .tags(Tag::builder().key("CreatedBy").value("authz-sidecar").build());
    if let Some(team) = &target.team_tag {
        create = create.tags(Tag::builder().key("Team").value(team).build());
    }
    match create.send().await {
        Ok(_) => tracing::info!(profile = %target.profile_name, domain = %target.domain_id, "Studio profile created"),
        // someone else (another sidecar) is creating it: wait for it like our own
        Err(SdkError::ServiceError(e)) if e.err().is_resource_in_use() => {}
        Err(e) => return Err(map_sdk_error(e, "SageMaker CreateUserProfile", &target.role_arn)),
    }
    wait_in_service(client, target, provisioning).await
}

/// Where a profile SageMaker just refused to presign stands.
enum ProfileState {
    /// Pending or Updating, or not visible yet (SageMaker refused it as existing but not
    /// usable, so a DescribeUserProfile that cannot find it lags behind a creation).
    Coming,
    /// InService by now (it became so between the two calls).
    Ready,
    /// Failed, being deleted, or the call failed: the refusal stands.
    Unusable,
}

type Described = Result<
    aws_sdk_sagemaker::operation::describe_user_profile::DescribeUserProfileOutput,
    SdkError<
        aws_sdk_sagemaker::operation::describe_user_profile::DescribeUserProfileError,
        aws_sdk_sagemaker::config::http::HttpResponse,
    >,
>;

/// DescribeUserProfile for the target's profile.
async fn describe(client: &aws_sdk_sagemaker::Client, target: &Target) -> Described {
    client.describe_user_profile().domain_id(&target.domain_id).user_profile_name(&target.profile_name).send().await
}

async fn profile_state(client: &aws_sdk_sagemaker::Client, target: &Target) -> ProfileState {
    use aws_sdk_sagemaker::types::UserProfileStatus;
    match describe(client, target).await {
        Ok(described) => match described.status() {
            Some(UserProfileStatus::InService) => ProfileState::Ready,
            Some(UserProfileStatus::Pending | UserProfileStatus::Updating) => ProfileState::Coming,
            _ => ProfileState::Unusable,
        },
        Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found() => ProfileState::Coming,
        Err(_) => ProfileState::Unusable,
    }
}

/// Poll until the profile is InService, within `provisioning.max_wait` (else 504). A
/// profile not found yet is taken as on its way (a creation is not visible at once).
async fn wait_in_service(
    client: &aws_sdk_sagemaker::Client,
    target: &Target,
    provisioning: &Provisioning,
) -> Result<(), PresignError> {
    use aws_sdk_sagemaker::types::UserProfileStatus;
    let deadline = tokio::time::Instant::now() + provisioning.max_wait;
    loop {
        match describe(client, target).await {
            Ok(described) => match described.status() {
                Some(UserProfileStatus::InService) => return Ok(()),
                Some(UserProfileStatus::Failed | UserProfileStatus::DeleteFailed | UserProfileStatus::Deleting) => {
                    tracing::warn!(profile = %target.profile_name, status = ?described.status(), "Studio profile cannot be used");
                    return Err(PresignError::Aws {
                        status: StatusCode::BAD_GATEWAY,
                        message: format!(
                            "the Studio user profile `{}` cannot be used (it failed or is being deleted)",
                            target.profile_name
                        ),
                    });
                }
                _ => {}
            },
            Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found() => {}
            Err(e) => return Err(map_sdk_error(e, "SageMaker DescribeUserProfile", &target.role_arn)),
        }
        if tokio::time::Instant::now() + provisioning.poll_interval > deadline {
            return Err(PresignError::Timeout);
        }
        tokio::time::sleep(provisioning.poll_interval).await;
    }
}

/// Error codes that mean AWS did not accept the credentials the call was signed with.
const REJECTED_CREDENTIALS: [&str; 8] = [
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidToken",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidSignatureException",
];

/// Map an SDK failure, told apart: a service error by its code (access denied names the
/// role, never the credentials; throttling is 503 after the SDK's own retries; rejected
/// credentials are retried by the caller; any other code is named), a timeout (504), a
/// connection failure (502), and the sidecar's own AWS configuration (no region or
/// credentials: 500).
fn map_sdk_error<E, R>(error: SdkError<E, R>, call: &'static str, role_arn: &str) -> PresignError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_sts::error::DisplayErrorContext;
    let aws = |status: StatusCode, message: String| PresignError::Aws { status, message };
    let (kind, mapped) = match &error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown").to_owned();
            let mapped = match code.as_str() {
                "AccessDenied" | "AccessDeniedException" => PresignError::AwsDenied(format!(
                    "the sidecar is not allowed to use role `{role_arn}` ({call} was denied)"
                )),
                "Throttling" | "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => {
                    PresignError::Throttled
                }
                code if REJECTED_CREDENTIALS.contains(&code) => PresignError::CredentialsRejected(format!(
                    "{call} rejected the credentials of role `{role_arn}` ({code})"
                )),
                code => aws(StatusCode::BAD_GATEWAY, format!("{call} failed: {code}")),
            };
            (code, mapped)
        }
        SdkError::TimeoutError(_) => ("timeout".to_owned(), PresignError::Timeout),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => ("timeout".to_owned(), PresignError::Timeout),
        SdkError::DispatchFailure(failure) if failure.is_io() => {
            ("unreachable".to_owned(), aws(StatusCode::BAD_GATEWAY, format!("AWS could not be reached for {call}")))
        }
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) => (
            "configuration".to_owned(),
            aws(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the sidecar's AWS configuration cannot make {call} (region, credentials or endpoint)"),
            ),
        ),
        _ => (
            "bad_response".to_owned(),
            aws(StatusCode::BAD_GATEWAY, format!("{call} gave an answer that cannot be read")),
        ),
    };
    tracing::warn!(call, role = role_arn, kind = %kind, error = %DisplayErrorContext(&error), "AWS call failed");
    metrics::counter!("authz_aws_errors_total", "call" => call, "kind" => kind).increment(1);
    mapped
}

fn respond(url: &str, options: &PresignOptions) -> Response<Body> {
    match options.response {
        PresignResponse::Redirect => {
            let mut response = Response::new(full(""));
            *response.status_mut() = StatusCode::FOUND;
            if let Ok(location) = HeaderValue::from_str(url) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        PresignResponse::Json => json_response(
            StatusCode::OK,
            serde_json::json!({"url": url, "expires_in": options.expires_in_seconds}).to_string(),
        ),
    }
}

/// The account, region, domain, role and profile name for `resource`, from the entities
/// `known` finds (the entity files, then what the directory answered and the profile
/// derived for this request): the same entities the decision was made over.
pub fn resolve(
    known: impl Fn(&EntityUid) -> Option<Arc<Entity>>,
    resource: &EntityUid,
    profile_name_fallback: &str,
) -> Result<Target, PresignError> {
    let unknown =
        || PresignError::ProfileNotFound(format!("no Studio user profile `{}` is known", resource.id().unescaped()));
    let profile = known(resource).ok_or_else(unknown)?;
    let profile = profile.as_ref();
    let lob_uid = match attr(profile, "lob") {
        Some(EvalResult::EntityUid(uid)) => uid,
        _ => return Err(unknown()),
    };
    let lob = known(&lob_uid).ok_or(PresignError::Incomplete)?;
    let lob = lob.as_ref();
    let text = |entity: &Entity, name: &str| match attr(entity, name) {
        Some(EvalResult::String(s)) => Some(s),
        _ => None,
    };
    let name = text(profile, "profileName").unwrap_or_else(|| profile_name_fallback.to_owned());
    let account_id = text(lob, "accountId").ok_or(PresignError::Incomplete)?;
    let team = match attr(profile, "team") {
        Some(EvalResult::EntityUid(uid)) => known(&uid),
        _ => None,
    };
    let execution_role_arn =
        team.and_then(|t| text(&t, "executionRoleName")).map(|name| format!("arn:aws:iam::{account_id}:role/{name}"));
    let team_tag = match profile.tag("Team").and_then(Result::ok) {
        Some(EvalResult::String(tag)) => Some(tag),
        _ => None,
    };
    Ok(Target {
        account_id,
        region: text(lob, "region").ok_or(PresignError::Incomplete)?,
        domain_id: text(lob, "domainId").ok_or(PresignError::Incomplete)?,
        role_arn: text(lob, "presignRoleArn").ok_or(PresignError::Incomplete)?,
        profile_name: profile_name(&name).ok_or(PresignError::Incomplete)?,
        execution_role_arn,
        team_tag,
    })
}

fn attr(entity: &Entity, name: &str) -> Option<EvalResult> {
    entity.attr(name).and_then(Result::ok)
}

/// An STS session name (and source identity) for `user`: `authz-` and the user, with
/// characters outside `[\w+=,.@-]` replaced by `-`, at most 64 characters.
pub fn session_name(user: &str) -> String {
    let cleaned: String =
        user.chars().map(|c| if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) { c } else { '-' }).collect();
    format!("authz-{cleaned}").chars().take(64).collect()
}

/// A valid SageMaker user profile name (`[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}`) from `raw`:
/// other characters become `-`, leading and trailing `-` go, at most 63 characters.
pub fn profile_name(raw: &str) -> Option<String> {
    let mapped: String = raw.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let trimmed: String = mapped.trim_matches('-').chars().take(63).collect();
    let trimmed = trimmed.trim_end_matches('-').to_owned();
    (!trimmed.is_empty()).then_some(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_fit_sts_rules() {
        assert_eq!(session_name("user-1"), "authz-user-1");
        assert_eq!(session_name("jane doe/ä"), "authz-jane-doe--");
        assert_eq!(session_name(&"x".repeat(100)).len(), 64);
        assert!(session_name("").len() >= 2);
    }

    #[test]
    fn profile_names_fit_sagemaker_rules() {
        assert_eq!(profile_name("user-1-team1").as_deref(), Some("user-1-team1"));
        assert_eq!(profile_name("User_1.Team 1").as_deref(), Some("User-1-Team-1"));
        assert_eq!(profile_name("--a--").as_deref(), Some("a"));
        assert_eq!(profile_name("___"), None);
        let long = profile_name(&format!("{}-{}", "a".repeat(62), "b".repeat(10))).unwrap();
        assert!(long.len() <= 63 && !long.ends_with('-'));
    }
}
