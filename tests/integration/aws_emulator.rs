//! The presign path end to end over real HTTP: the real binary takes credentials from
//! the standard chain (the environment here), assumes the LOB role through STS at a
//! local emulator (moto's server) via the `sts_endpoint` override, and calls SageMaker
//! through the `sagemaker_endpoint` override with the assumed credentials, signed for
//! the LOB's region. moto has no CreatePresignedDomainUrl, so SageMaker is a local fake
//! that records what it was sent.

use std::process::Command;
use std::time::Duration;

use crate::binary::{Running, start_binary};
use crate::harness::{self, TestServer, start_moto};
use crate::support::Workspace;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presign_assumes_the_lob_role_through_sts_and_signs_sagemaker_with_it() {
    let moto = start_moto().await;
    let sagemaker = TestServer::start(|_| {
        (
            200,
            r#"{"AuthorizedUrl":"https://d-lobaexample01.studio.us-east-1.sagemaker.aws/auth?token=FAKE"}"#.to_owned(),
            Duration::ZERO,
        )
    })
    .await;
    let ws = Workspace::shipped();
    let config = ws.dir.path().join("authz.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[policies]
dir = "{policies}"
entities = "{entities}"
[context]
trusted_proxies = ["127.0.0.1/32"]
[aws]
region = "us-east-1"
sts_endpoint = "http://127.0.0.1:{moto}"
sagemaker_endpoint = "{sagemaker}"
[[routes]]
name = "studio"
method = "GET"
handler = "presign"
{route}
"#,
            policies = ws.policies().display(),
            entities = ws.entities().display(),
            moto = moto.port,
            sagemaker = sagemaker.url(),
            route = harness::STUDIO_ROUTE,
        ),
    )
    .unwrap();
    let log = ws.dir.path().join("sidecar.log");
    let env = harness::aws_env(ws.dir.path());
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    let Running { mut child, data, admin } = start_binary(&["--config", config.to_str().unwrap()], &env, &log).await;
    let (_, _, token) = harness::get(admin, "/dev/token?user=user-1&groups=Team1,Team2", &[]).await;
    let auth = format!("Bearer {token}");
    let (status, headers, body) = harness::get(
        data,
        "/studio/user-1/team1",
        &[("authorization", &auth), ("x-amzn-vpce-id", "vpce-0a1a000000000001a"), ("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status, 302, "{body}\n{text}");
    assert_eq!(headers["location"], "https://d-lobaexample01.studio.us-east-1.sagemaker.aws/auth?token=FAKE");
    assert!(!text.contains("token=FAKE"), "the presigned URL reached the log");

    let seen = sagemaker.requests.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.headers["x-amz-target"], "SageMaker.CreatePresignedDomainUrl");
    let authorization = request.headers["authorization"].to_str().unwrap();
    assert!(
        authorization.contains("/us-east-1/sagemaker/aws4_request"),
        "signed for the LOB's region: {authorization}"
    );
    assert!(!authorization.contains("AKIDBASECREDENTIALS"), "not the base credentials: {authorization}");
    assert!(authorization.contains("Credential=ASIA"), "the role credentials moto's STS issued: {authorization}");
    assert!(request.headers.contains_key("x-amz-security-token"), "a session token from AssumeRole");
}
