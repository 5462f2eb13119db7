//! What operators deploy with, through the real binary: the `healthcheck` subcommand and
//! the environment's part in the configuration.

use std::process::{Command, Output};
use std::time::Duration;

use crate::binary::{Running, binary, free_port, start_binary};
use crate::support::Workspace;

/// The binary with `args`, under exactly `env` (and `PATH`).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary());
    command.args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_for_a_ready_sidecar_and_1_otherwise() {
    let ws = Workspace::shipped();
    let log = ws.dir.path().join("sidecar.log");
    let (policies, entities) = (ws.policies(), ws.entities());
    let args = ["--policies", policies.to_str().unwrap(), "--entities", entities.to_str().unwrap()];
    let Running { mut child, admin, .. } = start_binary(&args, &[], &log).await;

    // the address from the flag
    let admin_flag = admin.to_string();
    let ready = run(&["healthcheck", "--admin-listen", &admin_flag], &[]);
    assert_eq!(ready.status.code(), Some(0), "{}", text(&ready.stderr));
    assert!(text(&ready.stdout).contains("ready"), "{}", text(&ready.stdout));
    // the address from the configuration, set by the environment as in a container
    let ready = run(&["healthcheck"], &[("AUTHZ_SIDECAR__SERVER__ADMIN_LISTEN", &admin_flag)]);
    assert_eq!(ready.status.code(), Some(0), "{}", text(&ready.stderr));
    // the address from the file AUTHZ_SIDECAR_CONFIG names, as a container sets it once
    // for both `serve` and its health check
    let named = ws.dir.path().join("named.toml");
    std::fs::write(&named, format!("[server]\nadmin_listen = \"{admin}\"\n")).unwrap();
    let ready = run(&["healthcheck"], &[("AUTHZ_SIDECAR_CONFIG", named.to_str().unwrap())]);
    assert_eq!(ready.status.code(), Some(0), "{}", text(&ready.stderr));
    // an unspecified address is asked on loopback
    let any = format!("0.0.0.0:{}", admin.port());
    assert_eq!(run(&["healthcheck", "--admin-listen", &any], &[]).status.code(), Some(0));

    let _ = child.kill();
    let _ = child.wait();
    // nothing listening
    let gone = run(&["healthcheck", "--admin-listen", &admin_flag], &[]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(text(&gone.stderr).contains("not ready"), "{}", text(&gone.stderr));
}

/// A listener that answers every connection with `response` (after `delay`).
async fn canned(response: &'static str, delay: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_says_why_a_sidecar_is_not_ready() {
    let body = r#"{"ready":false,"reasons":["no policy snapshot loaded"]}"#;
    let response: &'static str = Box::leak(
        format!("HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_boxed_str(),
    );
    let addr = canned(response, Duration::ZERO).await.to_string();
    let not_ready =
        tokio::task::spawn_blocking(move || run(&["healthcheck", "--admin-listen", &addr], &[])).await.unwrap();
    assert_eq!(not_ready.status.code(), Some(1));
    let stderr = text(&not_ready.stderr);
    assert!(stderr.contains("503") && stderr.contains("no policy snapshot loaded"), "{stderr}");

    // too slow: the timeout decides
    let addr = canned("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", Duration::from_secs(5)).await.to_string();
    let slow =
        tokio::task::spawn_blocking(move || run(&["healthcheck", "--admin-listen", &addr, "--timeout", "300ms"], &[]))
            .await
            .unwrap();
    assert_eq!(slow.status.code(), Some(1));
    assert!(text(&slow.stderr).contains("did not answer within"), "{}", text(&slow.stderr));
}

/// `${NAME}` in the file and `AUTHZ_SIDECAR__…` variables reach the configuration the
/// sidecar checks and serves; an unset variable or an override naming no key is refused.
#[test]
fn the_environment_sets_configuration_keys() {
    let ws = Workspace::shipped();
    let config = ws.dir.path().join("authz.toml");
    std::fs::write(&config, "[policies]\ndir = \"${POLICIES_DIR}\"\nentities = \"unused\"\n").unwrap();
    let (policies, entities) = (ws.policies(), ws.entities());
    let config_arg = config.to_str().unwrap();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("POLICIES_DIR", policies.to_str().unwrap()),
        ("AUTHZ_SIDECAR__POLICIES__ENTITIES", entities.to_str().unwrap()),
        ("AUTHZ_SIDECAR__SERVER__LISTEN", listen.as_str()),
    ];
    let ok = run(&["serve", "--check-config", "--config", config_arg], &env);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let stdout = text(&ok.stdout);
    assert!(
        stdout.contains(&format!("policies `{}`", policies.display()))
            && stdout.contains(&format!("entities `{}`", entities.display())),
        "{stdout}"
    );

    // the same file named by AUTHZ_SIDECAR_CONFIG rather than --config
    let named = [env[0], env[1], env[2], ("AUTHZ_SIDECAR_CONFIG", config_arg)];
    let ok = run(&["serve", "--check-config"], &named);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains(&format!("policies `{}`", policies.display())), "{}", text(&ok.stdout));

    // without the variable the file names, nothing is served
    let unset = run(&["serve", "--check-config", "--config", config_arg], &env[1..]);
    assert_eq!(unset.status.code(), Some(1));
    let stderr = text(&unset.stderr);
    assert!(stderr.contains("policies.dir") && stderr.contains("${POLICIES_DIR}"), "{stderr}");

    // an override whose key does not exist is refused like a typo in the file
    let typo = [env[0], env[1], ("AUTHZ_SIDECAR__SERVER__LISTN", "127.0.0.1:1")];
    let refused = run(&["serve", "--check-config", "--config", config_arg], &typo);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("listn"), "{}", text(&refused.stderr));

    // an override is overridden in turn by the command line
    let flagged = run(&["serve", "--check-config", "--config", config_arg, "--entities", "/nonexistent"], &env);
    assert_eq!(flagged.status.code(), Some(1), "{}", text(&flagged.stdout));
    assert!(text(&flagged.stderr).contains("/nonexistent"), "{}", text(&flagged.stderr));
}

/// An issuer on loopback serving its discovery document (whose contents `document`
/// writes from the issuer's own URL) and its keys at `/keys`.
async fn discoverable(document: fn(&str) -> serde_json::Value) -> (crate::harness::TestServer, String) {
    let issuer = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let known = issuer.clone();
    let server = crate::harness::TestServer::start(move |parts| {
        let issuer = known.get().cloned().unwrap_or_default();
        match parts.uri.path() {
            "/.well-known/openid-configuration" => (200, document(&issuer).to_string(), Duration::ZERO),
            "/keys" => (200, serde_json::json!({"keys": [crate::harness::keys().0.jwk]}).to_string(), Duration::ZERO),
            _ => (404, String::new(), Duration::ZERO),
        }
    })
    .await;
    let url = server.url();
    issuer.set(url.clone()).unwrap();
    (server, url)
}

fn discovery_config(ws: &Workspace, issuer: &str) -> authz_sidecar::config::Config {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [policies]\ndir = \"{}\"\nentities = \"{}\"\n\
         [context]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         [[issuers]]\nissuer = \"{issuer}\"\n\
         [[routes]]\nname = \"studio\"\nmethod = \"GET\"\n{}\nhandler = \"echo\"\n",
        ws.policies().display(),
        ws.entities().display(),
        crate::harness::STUDIO_ROUTE,
    );
    authz_sidecar::config::Config::from_toml_with(&toml, "discovery", &|_| None, &[]).unwrap()
}

/// An issuer configured by its URL alone: the keys come from its discovery document's
/// `jwks_uri`, and its tokens authenticate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_configured_by_discovery_alone_authenticates() {
    let (server, issuer) = discoverable(|issuer| {
        serde_json::json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys"),
                           "authorization_endpoint": format!("{issuer}/authorize")})
    })
    .await;
    let ws = Workspace::shipped();
    let launched = crate::harness::launch(discovery_config(&ws, &issuer)).await;
    crate::harness::wait_ready(launched.admin, &launched.app).await;
    let mut claims = crate::harness::claims("user-1", &["Team1", "Team2"]);
    claims["iss"] = serde_json::json!(issuer);
    let bearer = format!("Bearer {}", crate::harness::sign(&crate::harness::keys().0, &claims));
    let headers = [
        ("authorization", bearer.as_str()),
        ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
        ("x-forwarded-for", "10.1.2.3"),
    ];
    let (status, _, body) = crate::harness::get(launched.data, "/studio/user-1/team1", &headers).await;
    assert_eq!(status, 200, "{body}");
    let paths: Vec<String> = server.requests.lock().unwrap().iter().map(|p| p.uri.path().to_owned()).collect();
    assert_eq!(paths[..2], ["/.well-known/openid-configuration", "/keys"], "{paths:?}");
    launched.shutdown.cancel();
}

/// A discovery document for another issuer, or one whose keys would come in the clear,
/// loads no keys: the sidecar stays not ready and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_document_that_does_not_vouch_for_the_issuer_loads_no_keys() {
    let ws = Workspace::shipped();
    for (document, why) in [
        (
            (|issuer: &str| serde_json::json!({"issuer": format!("{issuer}/other"), "jwks_uri": format!("{issuer}/keys")}))
                as fn(&str) -> serde_json::Value,
            "is for issuer",
        ),
        (|_: &str| serde_json::json!({"issuer_missing": true}), "not an OpenID Connect discovery document"),
        (
            |issuer: &str| serde_json::json!({"issuer": issuer, "jwks_uri": "http://keys.example.com/keys"}),
            "never fetched in the clear",
        ),
    ] {
        let (_server, issuer) = discoverable(document).await;
        let app = authz_sidecar::app::App::new(discovery_config(&ws, &issuer), false).unwrap();
        assert!(!app.state().load_missing_keys().await, "{why}");
        let reasons = app.not_ready_reasons().join("; ");
        assert!(reasons.contains(why), "{why}: {reasons}");
    }
    // an issuer that is not an https URL cannot be discovered
    let err = authz_sidecar::config::Config::from_toml_with(
        "[[issuers]]\nissuer = \"http://idp.example.com\"\n",
        "t",
        &|_| None,
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("issuers[0].issuer") && err.contains("https"), "{err}");
}
