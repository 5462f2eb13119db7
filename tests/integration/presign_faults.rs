//! The presign handler under faults: profiles that exist but are not in service yet
//! (made by a concurrent request or another sidecar), credentials AWS rejects before
//! their stated expiry, errors told apart, regional endpoints for SageMaker and STS, and
//! the AWS set-up checked before serving.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authz_sidecar::handlers::presign::{Presigner, SageMakerClients, SdkSageMakerClients};
use aws_credential_types::Credentials;
use aws_sdk_sagemaker::operation::create_presigned_domain_url::{
    CreatePresignedDomainUrlError, CreatePresignedDomainUrlOutput,
};
use aws_sdk_sagemaker::operation::create_user_profile::{CreateUserProfileError, CreateUserProfileOutput};
use aws_sdk_sagemaker::operation::describe_user_profile::{DescribeUserProfileError, DescribeUserProfileOutput};
use aws_sdk_sagemaker::types::UserProfileStatus;
use aws_smithy_mocks::{MockResponse, Rule, RuleMode, mock, mock_client};
use aws_smithy_types::error::ErrorMetadata;

use crate::harness::{self, Launched, token};
use crate::support::Workspace;

const LOB_A: &str = "vpce-0a1a000000000001a";
const LOB_B: &str = "vpce-0b2b000000000001b";

fn sts_output(role: &str, n: usize) -> aws_sdk_sts::operation::assume_role::AssumeRoleOutput {
    let account = role.split(':').nth(4).unwrap_or("unknown");
    crate::presign::sts_credentials_keyed(format!("ASIA{account}-{n}"), Duration::from_secs(3600))
}

/// An STS mock handing out numbered credentials, and how many it handed out.
fn numbered_sts() -> (aws_sdk_sts::Client, Rule) {
    let issued = Arc::new(AtomicUsize::new(0));
    let rule = mock!(aws_sdk_sts::Client::assume_role)
        .then_compute_output(move |input| sts_output(input.role_arn().unwrap(), issued.fetch_add(1, Ordering::SeqCst)));
    (mock_client!(aws_sdk_sts, RuleMode::MatchAny, &[&rule]), rule)
}

/// SageMaker clients by rules; `per_key` picks the rules by the credentials' access key.
struct Clients<F: Fn(&str) -> Vec<Rule> + Send + Sync> {
    per_key: F,
}

impl<F: Fn(&str) -> Vec<Rule> + Send + Sync> SageMakerClients for Clients<F> {
    fn client(&self, credentials: Credentials, _region: &str) -> aws_sdk_sagemaker::Client {
        let rules = (self.per_key)(credentials.access_key_id());
        let rules: Vec<&Rule> = rules.iter().collect();
        mock_client!(aws_sdk_sagemaker, RuleMode::MatchAny, &rules)
    }
}

async fn start(presigner: Presigner, extra: &str, aws: &str) -> (Launched, Workspace) {
    let ws = Workspace::shipped();
    let jwks = harness::Jwks::start(&[&harness::keys().0]).await;
    let toml = format!(
        "{base}[[routes]]\nname = \"studio\"\nmethod = \"GET\"\nhandler = \"presign\"\n{route}\n{extra}\n{aws}\n",
        base = harness::base_toml(&ws, harness::ISSUER, &jwks.url()),
        route = harness::STUDIO_ROUTE,
    );
    let config = authz_sidecar::config::Config::from_toml(&toml, "presign faults").unwrap();
    let app = authz_sidecar::app::App::new(config, false).unwrap().with_presigner(presigner);
    let launched = harness::launch_app(app).await;
    harness::wait_ready(launched.admin, &launched.app).await;
    std::mem::forget(jwks);
    (launched, ws)
}

async fn open(data: std::net::SocketAddr, path: &str, user: &str, team: &str, vpce: &str) -> (u16, String) {
    let auth = format!("Bearer {}", token(user, &[team]));
    let (status, headers, body) = harness::get(
        data,
        path,
        &[("authorization", &auth), ("x-amzn-vpce-id", vpce), ("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    let location = headers.get("location").map(|l| l.to_str().unwrap().to_owned());
    (status, location.unwrap_or(body))
}

fn presigned(profile: &str) -> MockResponse<CreatePresignedDomainUrlOutput, CreatePresignedDomainUrlError> {
    MockResponse::Output(
        CreatePresignedDomainUrlOutput::builder()
            .authorized_url(format!("https://studio/auth?token=SECRET-{profile}"))
            .build(),
    )
}

fn service_error(code: &str) -> ErrorMetadata {
    ErrorMetadata::builder().code(code).message("stand-in").build()
}

/// A stand-in SageMaker for one fleet: profiles become visible a moment after they are
/// created (DescribeUserProfile says ResourceNotFound once), stay Pending for two more
/// looks, and until InService CreatePresignedDomainUrl refuses with a ValidationException.
#[derive(Clone, Default)]
struct StandIn {
    /// profile → how many times it was described since it was created
    profiles: Arc<Mutex<HashMap<String, usize>>>,
    created: Arc<AtomicUsize>,
}

impl StandIn {
    fn with_pending(profile: &str) -> Self {
        let stand_in = Self::default();
        stand_in.profiles.lock().unwrap().insert(profile.to_owned(), 1);
        stand_in
    }

    fn rules(&self) -> Vec<Rule> {
        let profiles = self.profiles.clone();
        let presign =
            mock!(aws_sdk_sagemaker::Client::create_presigned_domain_url).then_compute_response(move |input| {
                let name = input.user_profile_name().unwrap().to_owned();
                match profiles.lock().unwrap().get(&name) {
                    None => MockResponse::Error(CreatePresignedDomainUrlError::ResourceNotFound(
                        aws_sdk_sagemaker::types::error::ResourceNotFound::builder().message("no such profile").build(),
                    )),
                    Some(looks) if *looks < 4 => MockResponse::Error(CreatePresignedDomainUrlError::generic(
                        service_error("ValidationException"),
                    )),
                    Some(_) => presigned(&name),
                }
            });
        let (profiles, created) = (self.profiles.clone(), self.created.clone());
        let create = mock!(aws_sdk_sagemaker::Client::create_user_profile).then_compute_response(move |input| {
            let name = input.user_profile_name().unwrap().to_owned();
            let mut profiles = profiles.lock().unwrap();
            if profiles.contains_key(&name) {
                return MockResponse::Error(CreateUserProfileError::ResourceInUse(
                    aws_sdk_sagemaker::types::error::ResourceInUse::builder().message("exists").build(),
                ));
            }
            profiles.insert(name, 0);
            created.fetch_add(1, Ordering::SeqCst);
            MockResponse::Output(CreateUserProfileOutput::builder().user_profile_arn("arn:x").build())
        });
        let profiles = self.profiles.clone();
        let describe = mock!(aws_sdk_sagemaker::Client::describe_user_profile).then_compute_response(move |input| {
            let name = input.user_profile_name().unwrap().to_owned();
            let mut profiles = profiles.lock().unwrap();
            let Some(looks) = profiles.get_mut(&name) else {
                return MockResponse::Error(DescribeUserProfileError::ResourceNotFound(
                    aws_sdk_sagemaker::types::error::ResourceNotFound::builder().message("no such profile").build(),
                ));
            };
            *looks += 1;
            let status = match *looks {
                1 => {
                    return MockResponse::Error(DescribeUserProfileError::ResourceNotFound(
                        aws_sdk_sagemaker::types::error::ResourceNotFound::builder().message("not yet").build(),
                    ));
                }
                2 | 3 => UserProfileStatus::Pending,
                _ => UserProfileStatus::InService,
            };
            MockResponse::Output(DescribeUserProfileOutput::builder().status(status).build())
        });
        vec![presign, create, describe]
    }
}

const PROVISION: &str = "presign = { provision = true, provision_poll = \"500ms\", provision_wait = \"20s\" }";

async fn all_at_once(
    data: std::net::SocketAddr,
    asks: Vec<(&'static str, &'static str, &'static str, &'static str)>,
) -> Vec<(u16, String)> {
    crate::presign::futures_join_all(
        asks.into_iter().map(|(path, user, team, vpce)| open(data, path, user, team, vpce)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_first_requests_for_one_profile_all_get_their_302() {
    let stand_in = StandIn::default();
    let rules = stand_in.rules();
    let (sts, _) = numbered_sts();
    let presigner = Presigner::new(sts, Arc::new(Clients { per_key: move |_: &str| rules.clone() }));
    let (sidecar, _ws) = start(presigner, PROVISION, "").await;
    let results = all_at_once(sidecar.data, vec![("/studio/user-1/team1", "user-1", "Team1", LOB_A); 20]).await;
    for (status, location) in &results {
        assert_eq!(*status, 302, "{location}");
        assert!(location.ends_with("SECRET-user-1-team1"), "{location}");
    }
    assert_eq!(stand_in.created.load(Ordering::SeqCst), 1, "created once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_and_ten_first_requests_across_two_lobs_all_get_their_302() {
    let stand_in = StandIn::default();
    let rules = stand_in.rules();
    let (sts, _) = numbered_sts();
    let presigner = Presigner::new(sts, Arc::new(Clients { per_key: move |_: &str| rules.clone() }));
    let (sidecar, _ws) = start(presigner, PROVISION, "").await;
    let mut asks = vec![("/studio/user-1/team1", "user-1", "Team1", LOB_A); 10];
    asks.extend(vec![("/studio/user-2/team2", "user-2", "Team2", LOB_B); 10]);
    let results = all_at_once(sidecar.data, asks).await;
    for (i, (status, location)) in results.iter().enumerate() {
        assert_eq!(*status, 302, "{i}: {location}");
        let profile = if i < 10 { "user-1-team1" } else { "user-2-team2" };
        assert!(location.ends_with(profile), "{location}");
    }
    assert_eq!(stand_in.created.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_another_sidecar_is_creating_is_waited_for() {
    let stand_in = StandIn::with_pending("user-1-team1");
    let rules = stand_in.rules();
    let (sts, _) = numbered_sts();
    let presigner = Presigner::new(sts, Arc::new(Clients { per_key: move |_: &str| rules.clone() }));
    let (sidecar, _ws) = start(presigner, PROVISION, "").await;
    let (status, location) = open(sidecar.data, "/studio/user-1/team1", "user-1", "Team1", LOB_A).await;
    assert_eq!(status, 302, "{location}");
    assert_eq!(stand_in.created.load(Ordering::SeqCst), 0, "this sidecar created nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_aws_rejects_are_dropped_and_the_role_assumed_again() {
    for code in ["ExpiredToken", "InvalidClientTokenId", "UnrecognizedClientException"] {
        // the first credentials are rejected; any later ones work
        let per_key = move |key: &str| {
            let presign = if key.ends_with("-0") {
                mock!(aws_sdk_sagemaker::Client::create_presigned_domain_url)
                    .then_error(move || CreatePresignedDomainUrlError::generic(service_error(code)))
            } else {
                mock!(aws_sdk_sagemaker::Client::create_presigned_domain_url)
                    .then_compute_response(|input| presigned(input.user_profile_name().unwrap()))
            };
            vec![presign]
        };
        let (sts, rule) = numbered_sts();
        let presigner = Presigner::new(sts, Arc::new(Clients { per_key }));
        let (sidecar, _ws) = start(presigner, "", "").await;
        let (status, location) = open(sidecar.data, "/studio/user-1/team1", "user-1", "Team1", LOB_A).await;
        assert_eq!(status, 302, "{code}: {location}");
        assert_eq!(rule.num_calls(), 2, "{code}: assumed again once");
        assert_eq!(open(sidecar.data, "/studio/user-1/team1", "user-1", "Team1", LOB_A).await.0, 302);
        assert_eq!(rule.num_calls(), 2, "{code}: the fresh credentials are cached");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_errors_are_told_apart() {
    // a service error is named by its code, not "unreachable"
    let per_key = |_: &str| {
        vec![
            mock!(aws_sdk_sagemaker::Client::create_presigned_domain_url)
                .then_error(|| CreatePresignedDomainUrlError::generic(service_error("ValidationException"))),
        ]
    };
    let (sts, _) = numbered_sts();
    let (sidecar, _ws) = start(Presigner::new(sts, Arc::new(Clients { per_key })), "", "").await;
    let (status, body) = open(sidecar.data, "/studio/user-1/team1", "user-1", "Team1", LOB_A).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("SageMaker CreatePresignedDomainUrl failed: ValidationException"), "{body}");

    // a SageMaker endpoint nothing listens on: a connection failure, said as such
    // port 1 (tcpmux) on loopback: nothing listens there, and no test binds it (a port
    // freed by a test listener could be taken by another test running in parallel)
    let closed = "127.0.0.1:1";
    let base = test_sdk_config().await;
    let sagemaker = SdkSageMakerClients { base, endpoint: Some(format!("http://{closed}")), regional: BTreeMap::new() };
    let (sts, _) = numbered_sts();
    let (sidecar, _ws) = start(Presigner::new(sts, Arc::new(sagemaker)), "", "").await;
    let (status, body) = open(sidecar.data, "/studio/user-1/team1", "user-1", "Team1", LOB_A).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("AWS could not be reached for SageMaker CreatePresignedDomainUrl"), "{body}");
}

async fn test_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(authz_sidecar::aws::http_client())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(aws_config::timeout::TimeoutConfig::builder().operation_timeout(Duration::from_secs(5)).build())
        .load()
        .await
}

/// An STS endpoint that answers AssumeRole with credentials named after it.
async fn fake_sts(name: &'static str) -> harness::TestServer {
    harness::TestServer::start(move |_| {
        let body = format!(
            "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult>\
             <Credentials><AccessKeyId>ASIA{name}</AccessKeyId><SecretAccessKey>s</SecretAccessKey>\
             <SessionToken>t</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>\
             <AssumedRoleUser><AssumedRoleId>AROA:s</AssumedRoleId><Arn>arn:aws:sts::1:assumed-role/r/s</Arn>\
             </AssumedRoleUser></AssumeRoleResult></AssumeRoleResponse>"
        );
        (200, body, Duration::ZERO)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lob_region_is_reached_through_its_own_endpoints() {
    // SageMaker and STS endpoints per region (VPC endpoints are regional): lob-a is in
    // us-east-1, lob-b in us-west-2
    let url = |name: &str| format!(r#"{{"AuthorizedUrl":"https://studio/{name}?token=SECRET"}}"#);
    let (east_url, west_url) = (url("east"), url("west"));
    let east = harness::TestServer::start(move |_| (200, east_url.clone(), Duration::ZERO)).await;
    let west = harness::TestServer::start(move |_| (200, west_url.clone(), Duration::ZERO)).await;
    let (sts_east, sts_west) = (fake_sts("EAST").await, fake_sts("WEST").await);
    let aws = format!(
        "[aws]\nregion = \"eu-central-1\"\nsagemaker_endpoint = \"http://127.0.0.1:9\"\n\
         [aws.sagemaker_endpoints]\nus-east-1 = \"{}\"\nus-west-2 = \"{}\"\n\
         [aws.sts_endpoints]\nus-east-1 = \"{}\"\nus-west-2 = \"{}\"\n",
        east.url(),
        west.url(),
        sts_east.url(),
        sts_west.url()
    );
    let ws = Workspace::shipped();
    let toml = format!(
        "{base}[[routes]]\nname = \"studio\"\nmethod = \"GET\"\nhandler = \"presign\"\n{route}\n{aws}",
        base = harness::base_toml(&ws, harness::ISSUER, "http://127.0.0.1:9/jwks"),
        route = harness::STUDIO_ROUTE,
    );
    let config = authz_sidecar::config::Config::from_toml(&toml, "regional").unwrap();
    let base = test_sdk_config().await;
    let sts_default = aws_sdk_sts::Client::new(&base); // nothing answers in eu-central-1 here
    let sagemaker = SdkSageMakerClients {
        base: base.clone(),
        endpoint: config.aws.sagemaker_endpoint.clone(),
        regional: config.aws.sagemaker_endpoints.clone(),
    };
    let presigner = Presigner::new(sts_default, Arc::new(sagemaker))
        .with_regional_sts(authz_sidecar::aws::regional_sts(&base, &config.aws));
    let (sidecar, _ws) = start(presigner, "", &aws).await;
    let (status, location) = open(sidecar.data, "/studio/user-1/team1", "user-1", "Team1", LOB_A).await;
    assert_eq!((status, location.as_str()), (302, "https://studio/east?token=SECRET"));
    let (status, location) = open(sidecar.data, "/studio/user-2/team2", "user-2", "Team2", LOB_B).await;
    assert_eq!((status, location.as_str()), (302, "https://studio/west?token=SECRET"));
    assert_eq!((east.calls(), west.calls(), sts_east.calls(), sts_west.calls()), (1, 1, 1, 1));
    let seen = west.requests.lock().unwrap();
    let auth = seen[0].headers["authorization"].to_str().unwrap();
    assert!(auth.contains("Credential=ASIAWEST/") && auth.contains("/us-west-2/sagemaker/"), "{auth}");
}

#[test]
fn provisioning_polls_have_a_floor() {
    let ws = Workspace::shipped();
    let toml = format!(
        "{base}[[routes]]\nname = \"studio\"\nmethod = \"GET\"\nhandler = \"presign\"\n{route}\n\
         presign = {{ provision = true, provision_poll = \"0s\" }}\n",
        base = harness::base_toml(&ws, harness::ISSUER, "http://127.0.0.1:9/jwks"),
        route = harness::STUDIO_ROUTE,
    );
    let err = authz_sidecar::config::Config::from_toml(&toml, "t").unwrap_err();
    assert!(err.to_string().contains("presign.provision_poll: must be at least 500ms"), "{err}");
}

#[test]
fn check_config_fails_when_no_aws_region_is_set_anywhere() {
    let ws = Workspace::shipped();
    let config = ws.dir.path().join("presign.toml");
    let write = |aws: &str| {
        std::fs::write(
            &config,
            format!(
                "[policies]\ndir = \"{}\"\nentities = \"{}\"\n[[routes]]\nname = \"studio\"\nmethod = \"GET\"\n\
                 handler = \"presign\"\n{}\n{aws}",
                ws.policies().display(),
                ws.entities().display(),
                harness::STUDIO_ROUTE
            ),
        )
        .unwrap();
    };
    let check = || {
        std::process::Command::new(crate::binary::binary())
            .args(["serve", "--check-config", "--config", config.to_str().unwrap()])
            .env_clear()
            .env("HOME", ws.dir.path())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap()
    };
    write("");
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no AWS region is set"), "{stderr}");
    write("[aws]\nregion = \"us-east-1\"\n");
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_readme_configuration_for_real_aws_passes_check_config() {
    let root = crate::support::repo_root();
    let example = root.join("sidecar/config/presign-example.toml");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let text = std::fs::read_to_string(&example).unwrap();
    assert!(readme.contains(text.trim()), "the README shows sidecar/config/presign-example.toml as it is");
    let ws = Workspace::shipped();
    let out = std::process::Command::new(crate::binary::binary())
        .args(["serve", "--check-config", "--config", example.to_str().unwrap()])
        .args(["--policies", ws.policies().to_str().unwrap(), "--entities", ws.entities().to_str().unwrap()])
        .env_clear()
        .env("HOME", ws.dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
