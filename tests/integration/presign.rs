//! The presign handler against the AWS SDK's own mocks (aws-smithy-mocks): which account,
//! role, region, domain, profile and durations are used for each seed user; credentials
//! reused until near expiry; every AWS error mapped; nothing reaches AWS for a denied call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use authz_sidecar::config::Config;
use authz_sidecar::handlers::presign::{Presigner, SageMakerClients};
use aws_credential_types::Credentials;
use aws_sdk_sagemaker::operation::create_presigned_domain_url::{
    CreatePresignedDomainUrlError, CreatePresignedDomainUrlOutput,
};
use aws_sdk_sts::operation::assume_role::{AssumeRoleError, AssumeRoleOutput};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use aws_smithy_types::error::ErrorMetadata;

use crate::harness::{self, Launched, token};
use crate::support::Workspace;

/// What SageMaker was asked: (access key, region, domain, profile, session seconds, expires seconds).
type Call = (String, String, String, String, i32, i32);

/// Hands out mock SageMaker clients answering by `rules`, whatever the credentials.
pub struct MockSageMaker {
    pub rules: Vec<Rule>,
}

impl SageMakerClients for MockSageMaker {
    fn client(&self, _credentials: Credentials, _region: &str) -> aws_sdk_sagemaker::Client {
        let rules: Vec<&Rule> = self.rules.iter().collect();
        mock_client!(aws_sdk_sagemaker, RuleMode::MatchAny, &rules)
    }
}

fn sts_credentials(role: &str, expires_in: Duration) -> AssumeRoleOutput {
    let account = role.split(':').nth(4).unwrap_or("unknown");
    sts_credentials_keyed(format!("ASIA{account}"), expires_in)
}

/// AssumeRole's answer: credentials with this access key, expiring in `expires_in`.
pub fn sts_credentials_keyed(access_key: String, expires_in: Duration) -> AssumeRoleOutput {
    let expiration = aws_smithy_types::DateTime::from(std::time::SystemTime::now() + expires_in);
    AssumeRoleOutput::builder()
        .credentials(
            aws_sdk_sts::types::Credentials::builder()
                .access_key_id(access_key)
                .secret_access_key("secret")
                .session_token("session")
                .expiration(expiration)
                .build()
                .unwrap(),
        )
        .build()
}

struct Aws {
    sts: Rule,
    /// (role, session name, source identity) of every AssumeRole.
    assumed: Arc<Mutex<Vec<(String, String, String)>>>,
    sagemaker: Arc<Mutex<Vec<Call>>>,
    /// (access key, region) of every SageMaker client made.
    regions: Arc<Mutex<Vec<(String, String)>>>,
}

/// A presigner on mocks. `sts_lifetime` is how long assumed credentials last.
fn mocked_presigner(
    sts_lifetime: Duration,
    sts_error: Option<&'static str>,
    sagemaker_not_found: bool,
) -> (Presigner, Aws) {
    let assumed = Arc::new(Mutex::new(Vec::new()));
    let record = assumed.clone();
    let sts = match sts_error {
        None => mock!(aws_sdk_sts::Client::assume_role).then_compute_output(move |input| {
            let role = input.role_arn().unwrap().to_owned();
            record.lock().unwrap().push((
                role.clone(),
                input.role_session_name().unwrap().to_owned(),
                input.source_identity().unwrap_or_default().to_owned(),
            ));
            sts_credentials(&role, sts_lifetime)
        }),
        Some(code) => mock!(aws_sdk_sts::Client::assume_role)
            .then_error(move || AssumeRoleError::generic(ErrorMetadata::builder().code(code).message("no").build())),
    };
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let rule = if sagemaker_not_found {
        mock!(aws_sdk_sagemaker::Client::create_presigned_domain_url).then_error(|| {
            CreatePresignedDomainUrlError::ResourceNotFound(
                aws_sdk_sagemaker::types::error::ResourceNotFound::builder().message("no profile").build(),
            )
        })
    } else {
        mock!(aws_sdk_sagemaker::Client::create_presigned_domain_url).then_compute_output(move |input| {
            let domain = input.domain_id().unwrap().to_owned();
            let profile = input.user_profile_name().unwrap().to_owned();
            seen.lock().unwrap().push((
                String::new(),
                String::new(),
                domain.clone(),
                profile.clone(),
                input.session_expiration_duration_in_seconds().unwrap(),
                input.expires_in_seconds().unwrap(),
            ));
            CreatePresignedDomainUrlOutput::builder()
                .authorized_url(format!("https://{domain}.studio.sagemaker.aws/auth?token=SECRET-{profile}"))
                .build()
        })
    };
    let regions = Arc::new(Mutex::new(Vec::new()));
    let sagemaker = RecordingFactory { inner: MockSageMaker { rules: vec![rule] }, regions: regions.clone() };
    let sts_client = mock_client!(aws_sdk_sts, RuleMode::MatchAny, &[&sts]);
    let presigner = Presigner::new(sts_client, Arc::new(sagemaker));
    (presigner, Aws { sts, assumed, sagemaker: calls, regions })
}

/// Records the credentials and region handed to each SageMaker client.
struct RecordingFactory {
    inner: MockSageMaker,
    regions: Arc<Mutex<Vec<(String, String)>>>,
}

impl SageMakerClients for RecordingFactory {
    fn client(&self, credentials: Credentials, region: &str) -> aws_sdk_sagemaker::Client {
        self.regions.lock().unwrap().push((credentials.access_key_id().to_owned(), region.to_owned()));
        self.inner.client(credentials, region)
    }
}

async fn start_sidecar(presigner: Presigner, extra: &str) -> (Launched, Workspace) {
    let ws = Workspace::shipped();
    let (key1, _) = harness::keys();
    let jwks = harness::Jwks::start(&[key1]).await;
    let toml = format!(
        "{base}[[routes]]\nname = \"studio\"\nmethod = \"GET\"\nhandler = \"presign\"\n{route}\n{extra}\n",
        base = harness::base_toml(&ws, harness::ISSUER, &jwks.url()),
        route = harness::STUDIO_ROUTE,
    );
    let app = authz_sidecar::app::App::new(Config::from_toml(&toml, "presign test").unwrap(), false)
        .unwrap()
        .with_presigner(presigner);
    let launched = harness::launch_app(app).await;
    harness::wait_ready(launched.admin, &launched.app).await;
    std::mem::forget(jwks); // keep the JWKS server running for the test's lifetime
    (launched, ws)
}

async fn open(
    data: std::net::SocketAddr,
    path: &str,
    user: &str,
    groups: &[&str],
    vpce: &str,
) -> (u16, http::HeaderMap, String) {
    let auth = format!("Bearer {}", token(user, groups));
    harness::get(data, path, &[("authorization", &auth), ("x-amzn-vpce-id", vpce), ("x-forwarded-for", "10.1.2.3")])
        .await
}

const LOB_A: &str = "vpce-0a1a000000000001a";
const LOB_B: &str = "vpce-0b2b000000000001b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_seed_user_gets_the_right_account_role_region_domain_and_profile() {
    let (presigner, aws) = mocked_presigner(Duration::from_secs(3600), None, false);
    let (sidecar, _ws) = start_sidecar(presigner, "").await;

    let (status, headers, body) =
        open(sidecar.data, "/studio/user-1/team1", "user-1", &["Team1", "Team2"], LOB_A).await;
    assert_eq!(status, 302, "{body}");
    assert_eq!(headers["location"], "https://d-lobaexample01.studio.sagemaker.aws/auth?token=SECRET-user-1-team1");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(body.is_empty());

    let (status, headers, _) = open(sidecar.data, "/studio/user-1/team2", "user-1", &["Team1", "Team2"], LOB_A).await;
    assert_eq!(status, 302);
    assert!(
        headers["location"].to_str().unwrap().ends_with("SECRET-user-1-team2"),
        "a different profile for the other team"
    );

    let (status, headers, _) = open(sidecar.data, "/studio/user-2/team2", "user-2", &["Team2"], LOB_B).await;
    assert_eq!(status, 302);
    assert!(headers["location"].to_str().unwrap().starts_with("https://d-lobbexample01."));

    let assumed = aws.assumed.lock().unwrap().clone();
    assert_eq!(
        assumed,
        vec![
            (
                "arn:aws:iam::111111111111:role/authz-sidecar-presign".to_owned(),
                "authz-user-1".to_owned(),
                "authz-user-1".to_owned()
            ),
            (
                "arn:aws:iam::222222222222:role/authz-sidecar-presign".to_owned(),
                "authz-user-2".to_owned(),
                "authz-user-2".to_owned()
            ),
        ],
        "one AssumeRole per user and LOB role: user-1's two profiles share the session"
    );
    let regions = aws.regions.lock().unwrap().clone();
    assert_eq!(
        regions,
        vec![
            ("ASIA111111111111".to_owned(), "us-east-1".to_owned()),
            ("ASIA111111111111".to_owned(), "us-east-1".to_owned()),
            ("ASIA222222222222".to_owned(), "us-west-2".to_owned()),
        ],
        "SageMaker is called in the LOB's region with the LOB role's credentials"
    );
    let calls = aws.sagemaker.lock().unwrap().clone();
    let asked: Vec<(&str, &str, i32, i32)> = calls.iter().map(|c| (c.2.as_str(), c.3.as_str(), c.4, c.5)).collect();
    assert_eq!(
        asked,
        vec![
            ("d-lobaexample01", "user-1-team1", 43200, 60),
            ("d-lobaexample01", "user-1-team2", 43200, 60),
            ("d-lobbexample01", "user-2-team2", 43200, 60),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_calls_never_reach_aws() {
    let (presigner, aws) = mocked_presigner(Duration::from_secs(3600), None, false);
    let (sidecar, _ws) = start_sidecar(presigner, "").await;
    // user-2 asks for a Team1 profile and for a lob-a profile
    assert_eq!(open(sidecar.data, "/studio/user-1/team1", "user-2", &["Team2"], LOB_A).await.0, 403);
    assert_eq!(open(sidecar.data, "/studio/user-1/team2", "user-2", &["Team2"], LOB_A).await.0, 403);
    // user-1 through lob-b's endpoint
    assert_eq!(open(sidecar.data, "/studio/user-1/team1", "user-1", &["Team1"], LOB_B).await.0, 403);
    assert_eq!(aws.sts.num_calls(), 0);
    assert!(aws.sagemaker.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_reused_until_near_expiry() {
    let (presigner, aws) = mocked_presigner(Duration::from_secs(3600), None, false);
    let (sidecar, _ws) = start_sidecar(presigner, "").await;
    for _ in 0..3 {
        assert_eq!(open(sidecar.data, "/studio/user-1/team1", "user-1", &["Team1"], LOB_A).await.0, 302);
    }
    assert_eq!(aws.sts.num_calls(), 1, "fresh credentials are reused");

    // credentials that expire within the refresh margin are fetched again every time
    let (presigner, aws) = mocked_presigner(Duration::from_secs(120), None, false);
    let (sidecar, _ws) = start_sidecar(presigner, "").await;
    for _ in 0..2 {
        assert_eq!(open(sidecar.data, "/studio/user-1/team1", "user-1", &["Team1"], LOB_A).await.0, 302);
    }
    assert_eq!(aws.sts.num_calls(), 2, "near-expiry credentials are refreshed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_errors_map_to_clear_statuses() {
    // STS refuses the role: 502 naming the role, not the credentials
    let (presigner, _aws) = mocked_presigner(Duration::from_secs(3600), Some("AccessDenied"), false);
    let (sidecar, _ws) = start_sidecar(presigner, "").await;
    let (status, _, body) = open(sidecar.data, "/studio/user-1/team1", "user-1", &["Team1"], LOB_A).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("arn:aws:iam::111111111111:role/authz-sidecar-presign"), "{body}");

    // the profile does not exist in the domain: 404 with a clear message
    let (presigner, _aws) = mocked_presigner(Duration::from_secs(3600), None, true);
    let (sidecar, _ws) = start_sidecar(presigner, "").await;
    let (status, _, body) = open(sidecar.data, "/studio/user-1/team1", "user-1", &["Team1"], LOB_A).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no Studio user profile `user-1-team1` exists in domain `d-lobaexample01`"), "{body}");

    // throttling, after the SDK's own retries: 503 with Retry-After
    let (presigner, aws) = mocked_presigner(Duration::from_secs(3600), Some("Throttling"), false);
    let (sidecar, _ws) = start_sidecar(presigner, "").await;
    let (status, headers, body) = open(sidecar.data, "/studio/user-1/team1", "user-1", &["Team1"], LOB_A).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert!(aws.sts.num_calls() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_form_returns_the_url_without_caching() {
    let (presigner, _aws) = mocked_presigner(Duration::from_secs(3600), None, false);
    let (sidecar, _ws) = start_sidecar(presigner, "presign = { response = \"json\", expires_in = \"30s\" }").await;
    let (status, headers, body) = open(sidecar.data, "/studio/user-1/team1", "user-1", &["Team1"], LOB_A).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["url"].as_str().unwrap().contains("SECRET-user-1-team1"));
    assert_eq!(json["expires_in"], 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_profile_is_provisioned_once_under_concurrency() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use aws_sdk_sagemaker::operation::create_user_profile::CreateUserProfileOutput;
    use aws_sdk_sagemaker::operation::describe_user_profile::DescribeUserProfileOutput;
    use aws_sdk_sagemaker::types::UserProfileStatus;
    use aws_smithy_mocks::MockResponse;

    let created = Arc::new(AtomicBool::new(false));
    let (exists, describes) = (created.clone(), Arc::new(AtomicUsize::new(0)));
    let presign = mock!(aws_sdk_sagemaker::Client::create_presigned_domain_url).then_compute_response(move |input| {
        if exists.load(Ordering::SeqCst) {
            MockResponse::Output(
                CreatePresignedDomainUrlOutput::builder()
                    .authorized_url(format!("https://studio/auth?token=SECRET-{}", input.user_profile_name().unwrap()))
                    .build(),
            )
        } else {
            MockResponse::Error(CreatePresignedDomainUrlError::ResourceNotFound(
                aws_sdk_sagemaker::types::error::ResourceNotFound::builder().message("no such profile").build(),
            ))
        }
    });
    let made = Arc::new(Mutex::new(Vec::new()));
    let record = made.clone();
    let create = mock!(aws_sdk_sagemaker::Client::create_user_profile).then_compute_output(move |input| {
        let tags: Vec<(String, String)> = input
            .tags()
            .iter()
            .map(|t| (t.key().unwrap_or_default().to_owned(), t.value().unwrap_or_default().to_owned()))
            .collect();
        let role = input.user_settings().and_then(|u| u.execution_role()).unwrap_or_default().to_owned();
        record.lock().unwrap().push((input.user_profile_name().unwrap().to_owned(), role, tags));
        CreateUserProfileOutput::builder()
            .user_profile_arn("arn:aws:sagemaker:us-east-1:111111111111:user-profile/x")
            .build()
    });
    let (polls, ready) = (describes.clone(), created.clone());
    let describe = mock!(aws_sdk_sagemaker::Client::describe_user_profile).then_compute_output(move |_| {
        // pending for the first two looks; usable (and presignable) once in service
        let status = if polls.fetch_add(1, Ordering::SeqCst) < 2 {
            UserProfileStatus::Pending
        } else {
            ready.store(true, Ordering::SeqCst);
            UserProfileStatus::InService
        };
        DescribeUserProfileOutput::builder().status(status).build()
    });
    let sts = mock!(aws_sdk_sts::Client::assume_role)
        .then_compute_output(|input| sts_credentials(input.role_arn().unwrap(), Duration::from_secs(3600)));
    let presigner = Presigner::new(
        mock_client!(aws_sdk_sts, RuleMode::MatchAny, &[&sts]),
        Arc::new(MockSageMaker { rules: vec![presign, create.clone(), describe] }),
    );
    let extra = "presign = { provision = true, provision_poll = \"500ms\", provision_wait = \"10s\" }";
    let (sidecar, _ws) = start_sidecar(presigner, extra).await;

    let data = sidecar.data;
    let requests = (0..5).map(|_| open(data, "/studio/user-1/team1", "user-1", &["Team1"], LOB_A));
    let results = futures_join_all(requests).await;
    for (status, headers, body) in &results {
        assert_eq!(*status, 302, "{body}");
        assert!(headers["location"].to_str().unwrap().ends_with("SECRET-user-1-team1"));
    }
    assert_eq!(create.num_calls(), 1, "five concurrent first requests create the profile once");
    assert_eq!(sts.num_calls(), 1, "and share one AssumeRole");
    let made = made.lock().unwrap().clone();
    let (profile, role, mut tags) = made[0].clone();
    tags.sort();
    assert_eq!(profile, "user-1-team1");
    assert_eq!(role, "arn:aws:iam::111111111111:role/sagemaker-team1-execution", "the team's role, in the LOB account");
    assert_eq!(
        tags,
        vec![
            ("CreatedBy".to_owned(), "authz-sidecar".to_owned()),
            ("Owner".to_owned(), "user-1".to_owned()),
            ("Team".to_owned(), "Team1".to_owned()),
        ]
    );
    assert!(describes.load(Ordering::SeqCst) >= 3, "it waited for InService");
}

/// Run futures concurrently on the runtime and collect their results in order.
pub async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sagemaker_call_past_the_aws_timeout_is_504() {
    use authz_sidecar::handlers::presign::SdkSageMakerClients;
    // The real SDK client over real HTTP, at a SageMaker endpoint that answers too late.
    let slow =
        harness::TestServer::start(|_| (200, r#"{"AuthorizedUrl":"https://late"}"#.to_owned(), Duration::from_secs(3)))
            .await;
    let base = aws_config_for_tests(Duration::from_millis(300)).await;
    let sagemaker = SdkSageMakerClients { base, endpoint: Some(slow.url()), regional: Default::default() };
    let sts = mock!(aws_sdk_sts::Client::assume_role)
        .then_compute_output(|input| sts_credentials(input.role_arn().unwrap(), Duration::from_secs(3600)));
    let presigner = Presigner::new(mock_client!(aws_sdk_sts, RuleMode::MatchAny, &[&sts]), Arc::new(sagemaker));
    let (sidecar, _ws) = start_sidecar(presigner, "").await;
    let (status, _, body) = open(sidecar.data, "/studio/user-1/team1", "user-1", &["Team1"], LOB_A).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(slow.calls(), 1, "the call did reach SageMaker");
}

/// An SDK configuration like `authz_sidecar::aws::load` makes, with fixed test credentials.
async fn aws_config_for_tests(timeout: Duration) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(authz_sidecar::aws::http_client())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .timeout_config(aws_config::timeout::TimeoutConfig::builder().operation_timeout(timeout).build())
        .load()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_nobody_listed_is_presigned_in_the_users_lob_once_derived() {
    // user-2 joins Team1 in the identity provider; no one lists a user-2-team1 profile
    let (presigner, aws) = mocked_presigner(Duration::from_secs(3600), None, false);
    let (listing_only, _ws) = start_sidecar(presigner, "").await;
    let path = "/studio/user-2/team1";
    assert_eq!(open(listing_only.data, path, "user-2", &["Team1", "Team2"], LOB_B).await.0, 403);
    assert_eq!(aws.sts.num_calls(), 0);

    let (presigner, aws) = mocked_presigner(Duration::from_secs(3600), None, false);
    let (sidecar, _ws) = start_sidecar(presigner, "derive_profile = { user = \"user\", team = \"team\" }").await;
    let (status, headers, body) = open(sidecar.data, path, "user-2", &["Team1", "Team2"], LOB_B).await;
    assert_eq!(status, 302, "{body}");
    assert_eq!(headers["location"], "https://d-lobbexample01.studio.sagemaker.aws/auth?token=SECRET-user-2-team1");
    let calls = aws.sagemaker.lock().unwrap().clone();
    assert_eq!((calls[0].2.as_str(), calls[0].3.as_str()), ("d-lobbexample01", "user-2-team1"), "lob-b's domain");
    // still the user's own, through their own LOB's endpoint only
    assert_eq!(open(sidecar.data, path, "user-1", &["Team1", "Team2"], LOB_B).await.0, 403);
    assert_eq!(open(sidecar.data, path, "user-2", &["Team1", "Team2"], LOB_A).await.0, 403);
}
