//! The account-pool handler's Lambda form: the real binary against a fake Lambda Runtime
//! API on loopback. Its answers must be the HTTP form's, byte for byte.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::binary::binary;
use crate::support::{Workspace, run_cli};

/// (path, body) of every result the function posted.
type Posted = Arc<Mutex<Vec<(String, String)>>>;

/// Serves `events` one by one at `/invocation/next` (then holds the next poll open) and
/// records what the function posts back.
async fn fake_runtime_api(events: Vec<String>) -> (std::net::SocketAddr, Posted) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let queue = Arc::new(Mutex::new(events.into_iter().enumerate().collect::<std::collections::VecDeque<_>>()));
    let posted: Posted = Arc::new(Mutex::new(Vec::new()));
    let recorded = posted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (queue, recorded) = (queue.clone(), recorded.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<Incoming>| {
                    let (queue, recorded) = (queue.clone(), recorded.clone());
                    async move {
                        let path = request.uri().path().to_owned();
                        if request.method() == http::Method::GET && path.ends_with("/invocation/next") {
                            let next = queue.lock().unwrap().pop_front();
                            let Some((n, event)) = next else {
                                tokio::time::sleep(Duration::from_secs(60)).await;
                                return Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())));
                            };
                            let deadline = (std::time::SystemTime::now() + Duration::from_secs(60))
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap()
                                .as_millis();
                            let response = http::Response::builder()
                                .header("lambda-runtime-aws-request-id", format!("req-{n}"))
                                .header("lambda-runtime-deadline-ms", deadline.to_string())
                                .header(
                                    "lambda-runtime-invoked-function-arn",
                                    "arn:aws:lambda:us-east-1:123456789012:function:authz",
                                )
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(event)))
                                .unwrap();
                            return Ok(response);
                        }
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        recorded.lock().unwrap().push((path, String::from_utf8_lossy(&body).into_owned()));
                        let mut response = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                        *response.status_mut() = http::StatusCode::ACCEPTED;
                        Ok(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, posted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_form_answers_like_the_http_form_and_refuses_bad_events() {
    let validate =
        json!({"operationRequest": {"listAuthorizedAccountsRequest": null, "validateAccountAuthorizationRequest":
        {"domainIdentifier": "dzd-4igt64u5j25ko9", "awsAccountId": "004878717744", "regionName": "us-east-2",
         "userIdentifier": "4b89ed84-9842-45dd-a2e5-15e49eda2b03"}}})
        .to_string();
    let list =
        json!({"operationRequest": {"validateAccountAuthorizationRequest": null, "listAuthorizedAccountsRequest":
        {"domainIdentifier": "dzd-4igt64u5j25ko9", "userIdentifier": "4b89ed84-9842-45dd-a2e5-15e49eda2b03"}}})
        .to_string();
    let both =
        json!({"operationRequest": {"listAuthorizedAccountsRequest": {}, "validateAccountAuthorizationRequest": {}}})
            .to_string();
    let huge = json!({"operationRequest": {"validateAccountAuthorizationRequest": {"domainIdentifier": "dzd-4igt64u5j25ko9",
        "awsAccountId": "004878717744", "regionName": "us-east-2", "userIdentifier": "4b89ed84-9842-45dd-a2e5-15e49eda2b03"}},
        "padding": "p".repeat(3 * 1024 * 1024)})
    .to_string();
    let ws = Workspace::shipped();
    let posted = run_lambda(&ws, &[], vec![validate.clone(), list.clone(), both, huge]).await;
    assert_eq!(posted.len(), 4, "{posted:?}");

    // the same bytes the HTTP form sends (its test compares them to the handler's answer)
    let expected = |event: &str| {
        let operation = authz_sidecar::handlers::account_pool::parse(event.as_bytes()).unwrap();
        let ws = Workspace::shipped();
        let store = authz_sidecar::policy_store::PolicyStore::load_files(&ws.dirs()).unwrap();
        authz_sidecar::handlers::account_pool::AccountPool::default()
            .apply(&store.current().unwrap(), &operation, "x")
            .unwrap()
            .to_string()
    };
    assert_eq!(posted[0], ("/2018-06-01/runtime/invocation/req-0/response".to_owned(), expected(&validate)));
    assert!(posted[0].1.contains("GRANT"));
    assert_eq!(posted[1], ("/2018-06-01/runtime/invocation/req-1/response".to_owned(), expected(&list)));
    assert_eq!(posted[2].0, "/2018-06-01/runtime/invocation/req-2/error", "a malformed event is an error result");
    assert!(posted[2].1.contains("both operations"), "{}", posted[2].1);
    let error: Value = serde_json::from_str(&posted[2].1).unwrap();
    assert_eq!(error["errorType"], "InvalidEvent", "a stable, documented name: {error}");
    // one size limit for both forms: a 3 MB event is refused, never granted
    assert_eq!(posted[3].0, "/2018-06-01/runtime/invocation/req-3/error");
    let error: Value = serde_json::from_str(&posted[3].1).unwrap();
    assert_eq!(error["errorType"], "EventTooLarge", "{error}");
}

/// Packaged as Lambda's custom runtime expects (`bootstrap` beside `policies/` and
/// `entities/`, run with no arguments in that directory), the binary is the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_bootstrap_the_binary_is_the_lambda_handler_over_its_package() {
    let ws = Workspace::shipped();
    let package = ws.dir.path();
    std::os::unix::fs::symlink(binary(), package.join("bootstrap")).unwrap();
    let validate =
        json!({"operationRequest": {"listAuthorizedAccountsRequest": null, "validateAccountAuthorizationRequest":
        {"domainIdentifier": "dzd-4igt64u5j25ko9", "awsAccountId": "004878717744", "regionName": "us-east-2",
         "userIdentifier": "4b89ed84-9842-45dd-a2e5-15e49eda2b03"}}})
        .to_string();
    let mut command = std::process::Command::new(package.join("bootstrap"));
    command.current_dir(package);
    let posted = run_lambda_command(command, vec![validate]).await;
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0].0, "/2018-06-01/runtime/invocation/req-0/response");
    assert!(posted[0].1.contains("GRANT"), "{}", posted[0].1);
}

/// The package as `scripts/package-lambda.sh` lays it out (`bootstrap`, the policies,
/// the entities and the shipped `deploy/lambda/sidecar.toml`), run with the environment
/// `deploy/lambda/account-pool.yaml` gives the function: with a lifecycle table, the one
/// package also takes the membership events and the sync schedule; without one, it is
/// the account-pool handler and refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packaged_function_takes_membership_events_when_its_template_names_a_table() {
    use std::time::SystemTime;

    use crate::lifecycle::{STORE, event_about, lifecycle_table, person_in_group};

    let moto = crate::harness::start_moto().await;
    lifecycle_table(&moto).await;
    let erin = person_in_group(&moto, "erin", "Team1").await;
    let ws = Workspace::shipped();
    let package = ws.dir.path();
    std::os::unix::fs::symlink(binary(), package.join("bootstrap")).unwrap();
    std::fs::copy(crate::support::repo_root().join("deploy/lambda/sidecar.toml"), package.join("sidecar.toml"))
        .unwrap();
    let joined = event_about("create-group-membership.json", &erin, SystemTime::now()).to_string();
    let schedule =
        json!({"version": "0", "id": "7d3c8e1a-2b44-4f0e-9a51-0c6f2d9e8b17", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "111122223333", "time": "2026-11-30T06:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:111122223333:rule/MembershipSync"], "detail": {}})
        .to_string();
    let function = |lifecycle: bool| {
        let mut command = std::process::Command::new(package.join("bootstrap"));
        command.current_dir(package).env("AUTHZ_SIDECAR_CONFIG", "sidecar.toml");
        if lifecycle {
            let endpoint = format!("http://127.0.0.1:{}", moto.port);
            command
                .env("AUTHZ_SIDECAR__LIFECYCLE__TABLE", "authz-lifecycle")
                .env("AUTHZ_SIDECAR__LIFECYCLE__IDENTITY_STORE_ID", STORE)
                // moto in place of DynamoDB and the identity store
                .env("AUTHZ_SIDECAR__LIFECYCLE__ENDPOINT", &endpoint)
                .env("AUTHZ_SIDECAR__LIFECYCLE__IDENTITYSTORE_ENDPOINT", &endpoint);
        }
        command
    };

    let posted = run_lambda_command(function(true), vec![joined.clone(), schedule]).await;
    assert_eq!(posted.len(), 2, "{posted:?}");
    let answer: Value = serde_json::from_str(&posted[0].1).unwrap();
    assert_eq!(
        (answer["outcome"].as_str(), answer["principal"].as_str()),
        (Some("recorded"), Some("erin")),
        "{answer}"
    );
    let synced: Value = serde_json::from_str(&posted[1].1).unwrap();
    assert_eq!(synced["outcome"], "synced", "{synced}");

    let posted = run_lambda_command(function(false), vec![joined]).await;
    assert!(posted[0].0.ends_with("/error"), "{posted:?}");
    let error: Value = serde_json::from_str(&posted[0].1).unwrap();
    assert_eq!(error["errorType"], "LifecycleNotConfigured", "{error}");
}

#[test]
fn outside_lambda_the_command_says_so() {
    let ws = Workspace::shipped();
    let policies = ws.policies();
    let out = run_cli(&["lambda", "--policies", policies.to_str().unwrap()]);
    // the test process has no Lambda environment
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not running in AWS Lambda"), "{}", out.stderr);
}

/// Runs the Lambda form over `ws`'s files (and `extra` arguments) on `events`, against
/// a fake Runtime API; what it posted, once it has answered them all (at most 10 s).
async fn run_lambda(ws: &Workspace, extra: &[&str], events: Vec<String>) -> Vec<(String, String)> {
    let mut command = std::process::Command::new(binary());
    command
        .args(["lambda", "--policies", ws.policies().to_str().unwrap(), "--entities", ws.entities().to_str().unwrap()])
        .args(extra);
    run_lambda_command(command, events).await
}

/// Run `command` as Lambda runs a function against a fake Runtime API serving
/// `events`, in Lambda's environment plus the variables `command` sets (the function's
/// own); what it posted back.
async fn run_lambda_command(mut command: std::process::Command, events: Vec<String>) -> Vec<(String, String)> {
    let count = events.len();
    let (api, posted) = fake_runtime_api(events).await;
    let own: Vec<_> = command.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))).collect();
    let mut child = command
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "authz-account-pool")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // Lambda sets the function's region
        .env("AWS_REGION", "us-east-1")
        .envs(own)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if posted.lock().unwrap().len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    posted.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_form_reads_datazone_users_from_the_directory_and_never_grants_what_it_cannot_read() {
    let moto = crate::harness::start_moto().await;
    let dynamodb =
        |op: &'static str, body: Value| crate::harness::moto_json(&moto, "dynamodb", "DynamoDB_20120810", op, body);
    dynamodb(
        "CreateTable",
        json!({"TableName": "authz-datazone-users", "BillingMode": "PAY_PER_REQUEST",
               "KeySchema": [{"AttributeName": "userIdentifier", "KeyType": "HASH"}],
               "AttributeDefinitions": [{"AttributeName": "userIdentifier", "AttributeType": "S"}]}),
    )
    .await;
    let user = "0d9e6f5a-0000-4000-8000-00000000da7a";
    dynamodb(
        "PutItem",
        json!({"TableName": "authz-datazone-users",
               "Item": {"userIdentifier": {"S": user}, "displayName": {"S": "dana"}, "lob": {"S": "lob-a"}}}),
    )
    .await;
    let validate = |who: &str| {
        json!({"operationRequest": {"listAuthorizedAccountsRequest": null, "validateAccountAuthorizationRequest":
            {"domainIdentifier": "dzd-4igt64u5j25ko9", "awsAccountId": "004878717744", "regionName": "us-east-2",
             "userIdentifier": who}}})
        .to_string()
    };
    let ws = Workspace::shipped();
    let config = |table: &str| {
        let path = ws.dir.path().join(format!("{table}.toml"));
        std::fs::write(
            &path,
            format!(
                "[aws]\nregion = \"us-east-1\"\n[directory]\nendpoint = \"http://127.0.0.1:{}\"\n\
                 [[directory.tables]]\ntable = \"{table}\"\nentity_type = \"DataZone::User\"\nkey = \"userIdentifier\"\n\
                 attributes = {{ displayName = \"displayName\" }}\nparents = {{ lob = \"Studio::Lob\" }}\n",
                moto.port
            ),
        )
        .unwrap();
        path
    };

    // a user only the table knows is granted lob-a's account; one it lacks is denied
    let posted = run_lambda(
        &ws,
        &["--config", config("authz-datazone-users").to_str().unwrap()],
        vec![validate(user), validate("nobody")],
    )
    .await;
    assert_eq!(posted.len(), 2, "{posted:?}");
    assert!(posted[0].0.ends_with("/response") && posted[0].1.contains("GRANT"), "{posted:?}");
    assert!(posted[1].0.ends_with("/response") && posted[1].1.contains("DENY"), "{posted:?}");

    // a table that cannot be read: an error result, never an answer
    let posted = run_lambda(&ws, &["--config", config("no-such-table").to_str().unwrap()], vec![validate(user)]).await;
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert!(posted[0].0.ends_with("/error"), "{posted:?}");
    let error: Value = serde_json::from_str(&posted[0].1).unwrap();
    assert_eq!(error["errorType"], "DirectoryUnavailable", "{error}");
}

/// The membership events' Lambda form: the same handler as the HTTP route, on
/// recorded event shapes, against moto's Identity Store and DynamoDB. Two cold starts
/// share the table: the second attributes a deletion by the membership the first saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_form_applies_membership_events_and_schedules_and_refuses_malformed_ones() {
    use std::time::SystemTime;

    use crate::lifecycle::{STORE, event_about, leave, lifecycle_table, person_in_group, recorded, without};

    let moto = crate::harness::start_moto().await;
    lifecycle_table(&moto).await;
    let dana = person_in_group(&moto, "dana", "Team1").await;
    let ws = Workspace::shipped();
    let config = ws.dir.path().join("lifecycle.toml");
    std::fs::write(
        &config,
        format!(
            "[aws]\nregion = \"us-east-1\"\n[lifecycle]\ntable = \"authz-lifecycle\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
             identitystore_endpoint = \"http://127.0.0.1:{port}\"\nidentity_store_id = \"{STORE}\"\n",
            port = moto.port
        ),
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let schedule = json!({"version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "111122223333", "time": "2026-11-30T06:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:111122223333:rule/authz-membership-sync"], "detail": {}});
    let malformed = without(recorded("add-member-to-group.json"), "/detail/requestParameters", "groupId");
    let events = vec![
        event_about("create-group-membership.json", &dana, SystemTime::now()).to_string(),
        malformed.to_string(),
        schedule.to_string(),
    ];
    let posted = run_lambda(&ws, &args, events).await;
    assert_eq!(posted.len(), 3, "{posted:?}");
    assert!(posted[0].0.ends_with("/response"), "{posted:?}");
    let answer: Value = serde_json::from_str(&posted[0].1).unwrap();
    assert_eq!((answer["outcome"].as_str(), answer["principal"].as_str()), (Some("recorded"), Some("dana")));
    assert!(posted[1].0.ends_with("/error"), "a malformed event is an error result: {posted:?}");
    let error: Value = serde_json::from_str(&posted[1].1).unwrap();
    assert_eq!(error["errorType"], "MalformedEvent", "{error}");
    let synced: Value = serde_json::from_str(&posted[2].1).unwrap();
    assert_eq!(synced["outcome"], "synced", "{synced}");

    // another cold start, after dana left: the deletion names only the membership, which
    // the first instance remembered in the shared table
    leave(&moto, &dana.membership).await;
    let deleted = event_about("delete-group-membership.json", &dana, SystemTime::now());
    let posted = run_lambda(&ws, &args, vec![deleted.to_string()]).await;
    let answer: Value = serde_json::from_str(&posted[0].1).unwrap();
    assert_eq!((answer["outcome"].as_str(), answer["team"].as_str()), (Some("revoked"), Some("Team1")), "{posted:?}");

    // without [lifecycle], a membership event is an error result, never ignored
    let posted = run_lambda(&ws, &[], vec![deleted.to_string()]).await;
    let error: Value = serde_json::from_str(&posted[0].1).unwrap();
    assert_eq!(error["errorType"], "LifecycleNotConfigured", "{posted:?}");
}
