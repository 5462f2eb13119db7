//! A real sidecar on `127.0.0.1:0` with everything around it real too: an RSA key pair
//! made at test time, a JWKS served over HTTP (whose keys can rotate and which can go
//! down), an upstream that records what it receives (and can be slow), and tokens
//! minted with jsonwebtoken.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authz_sidecar::app::{self, App, Listeners};
use authz_sidecar::config::Config;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::Workspace;

pub const ISSUER: &str = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_TEST";
pub const CLIENT_ID: &str = "test-client";

/// An RSA signing key and its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Value,
    pub public_pem: String,
}

fn make_key(kid: &str) -> SigningKey {
    let mut rng = rsa::rand_core::OsRng;
    let private = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
    let pem = private.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let public = private.to_public_key();
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwk = json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                     "n": b64(public.n().to_bytes_be()), "e": b64(public.e().to_bytes_be())});
    let public_pem = rsa::pkcs8::EncodePublicKey::to_public_key_pem(&public, rsa::pkcs8::LineEnding::LF).unwrap();
    SigningKey { kid: kid.to_owned(), encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(), jwk, public_pem }
}

/// Two keys per test process (RSA generation is the slow part).
pub fn keys() -> &'static (SigningKey, SigningKey) {
    static KEYS: OnceLock<(SigningKey, SigningKey)> = OnceLock::new();
    KEYS.get_or_init(|| (make_key("key-1"), make_key("key-2")))
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims of a Cognito access token for `user` in `groups`, valid for an hour.
pub fn claims(user: &str, groups: &[&str]) -> Value {
    json!({"iss": ISSUER, "sub": format!("sub-{user}"), "username": user, "cognito:groups": groups,
           "client_id": CLIENT_ID, "token_use": "access", "iat": now(), "exp": now() + 3600})
}

pub fn sign(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

pub fn token(user: &str, groups: &[&str]) -> String {
    sign(&keys().0, &claims(user, groups))
}

/// A tiny HTTP server for tests: answers with `respond` and records every request.
pub struct TestServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<http::request::Parts>>>,
    stop: CancellationToken,
}

impl TestServer {
    pub async fn start<F>(respond: F) -> Self
    where
        F: Fn(&http::request::Parts) -> (u16, String, Duration) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let respond = Arc::new(respond);
        let (recorded, stopped) = (requests.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = stopped.cancelled() => break,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                };
                let (respond, recorded, stopped) = (respond.clone(), recorded.clone(), stopped.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: http::Request<Incoming>| {
                        let (respond, recorded) = (respond.clone(), recorded.clone());
                        async move {
                            // read the body first, as an upstream that handles the call
                            // does (one answering early races the sidecar's body limit)
                            let (parts, body) = request.into_parts();
                            let _ = http_body_util::BodyExt::collect(body).await;
                            let (status, body, delay) = respond(&parts);
                            recorded.lock().unwrap().push(parts);
                            tokio::time::sleep(delay).await;
                            let mut response = http::Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! { _ = conn => {}, () = stopped.cancelled() => {} }
                });
            }
        });
        Self { addr, requests, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// A JWKS endpoint whose document the test can change.
pub struct Jwks {
    pub server: TestServer,
    pub document: Arc<Mutex<Value>>,
}

impl Jwks {
    pub async fn start(keys: &[&SigningKey]) -> Self {
        let document = Arc::new(Mutex::new(json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})));
        let served = document.clone();
        let server = TestServer::start(move |_| (200, served.lock().unwrap().to_string(), Duration::ZERO)).await;
        Self { server, document }
    }

    pub fn url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.server.url())
    }

    pub fn publish(&self, keys: &[&SigningKey]) {
        *self.document.lock().unwrap() = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    }
}

/// Settings a test varies.
pub struct Setup {
    pub trusted_proxies: &'static str,
    pub mode: &'static str,
    pub upstream_timeout: &'static str,
    pub max_body_bytes: usize,
    pub max_concurrent: usize,
    pub header_read_timeout: &'static str,
    pub idle_timeout: &'static str,
    pub extra: String,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            trusted_proxies: r#"["127.0.0.1/32"]"#,
            mode: "enforce",
            upstream_timeout: "5s",
            max_body_bytes: 1024,
            max_concurrent: 64,
            header_read_timeout: "10s",
            idle_timeout: "60s",
            extra: String::new(),
        }
    }
}

/// The Studio route's template lines (name, method, handler are the caller's).
pub const STUDIO_ROUTE: &str = r#"path = "/studio/{user}/{team}"
action = 'Studio::Action::"CreatePresignedDomainUrl"'
resource_type = "Studio::UserProfile"
resource_id = "{user}-{team}""#;

/// A config on loopback port 0 over `ws`, trusting loopback as a proxy, with one issuer.
/// Append routes (and anything else) to it.
pub fn base_toml(ws: &Workspace, issuer: &str, jwks_url: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [policies]\ndir = \"{}\"\nentities = \"{}\"\n\
         [context]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         [[issuers]]\nissuer = \"{issuer}\"\njwks_url = \"{jwks_url}\"\n",
        ws.policies().display(),
        ws.entities().display(),
    )
}

pub fn config_toml(ws: &Workspace, jwks_url: &str, upstream: &str, setup: &Setup) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "5s"
max_body_bytes = {max_body}
max_concurrent_requests = {max_concurrent}
header_read_timeout = "{header_timeout}"
idle_timeout = "{idle_timeout}"

[policies]
dir = "{policies}"
entities = "{entities}"
poll_interval = "1s"

[context]
trusted_proxies = {trusted}

[[issuers]]
issuer = "{ISSUER}"
jwks_url = "{jwks_url}"
audiences = ["{CLIENT_ID}"]
token_use = "access"
leeway = "0s"
jwks_refresh_min_interval = "0s"
jwks_fetch_timeout = "1s"

[[routes]]
name = "studio"
method = "GET"
{STUDIO_ROUTE}
upstream = "{upstream}"
mode = "{mode}"
upstream_timeout = "{timeout}"

[[routes]]
name = "studio-post"
method = "POST"
{STUDIO_ROUTE}
upstream = "{upstream}"
{extra}
"#,
        max_body = setup.max_body_bytes,
        max_concurrent = setup.max_concurrent,
        header_timeout = setup.header_read_timeout,
        idle_timeout = setup.idle_timeout,
        policies = ws.policies().display(),
        entities = ws.entities().display(),
        trusted = setup.trusted_proxies,
        mode = setup.mode,
        timeout = setup.upstream_timeout,
        extra = setup.extra,
    )
}

/// The real app on two loopback listeners.
pub struct Launched {
    pub app: Arc<App>,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), authz_sidecar::app::StartError>>,
}

pub async fn launch(config: Config) -> Launched {
    launch_app(App::new(config, false).unwrap()).await
}

pub async fn launch_app(app: App) -> Launched {
    launch_on(app, None).await
}

/// As [`launch_app`], with the data plane on `cores` when given (the test's to load).
pub async fn launch_on(app: App, cores: Option<Arc<authz_sidecar::server::cores::Cores>>) -> Launched {
    let app = Arc::new(app);
    let data_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (data, admin) = (data_listener.local_addr().unwrap(), admin_listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let listeners = Listeners { data: data_listener, admin: admin_listener, ext_authz: None, ext_authz_grpc: None };
    let task = match cores {
        Some(cores) => tokio::spawn(app::run_on(app.clone(), listeners, None, cores, shutdown.clone())),
        None => tokio::spawn(app::run(app.clone(), listeners, shutdown.clone())),
    };
    Launched { app, data, admin, shutdown, task }
}

/// Wait (at most 10 s) until `/readyz` on `admin` says ready.
pub async fn wait_ready(admin: SocketAddr, app: &App) {
    for _ in 0..200 {
        if get(admin, "/readyz", &[]).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the sidecar did not become ready: {:?}", app.not_ready_reasons());
}

/// A running sidecar and what it talks to.
pub struct Sidecar {
    pub app: Arc<App>,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), authz_sidecar::app::StartError>>,
    /// Keeps the scratch policy directories alive for the sidecar's lifetime.
    pub _ws: Workspace,
    pub jwks: Jwks,
    pub upstream: TestServer,
}

impl Sidecar {
    pub async fn start(setup: Setup) -> Self {
        Self::start_with(Workspace::shipped(), setup, |_| (200, "upstream ok".to_owned(), Duration::ZERO)).await
    }

    pub async fn start_with<F>(ws: Workspace, setup: Setup, upstream: F) -> Self
    where
        F: Fn(&http::request::Parts) -> (u16, String, Duration) + Send + Sync + 'static,
    {
        let (key1, _) = keys();
        let jwks = Jwks::start(&[key1]).await;
        let upstream = TestServer::start(upstream).await;
        let toml = config_toml(&ws, &jwks.url(), &upstream.url(), &setup);
        let Launched { app, data, admin, shutdown, task } = launch(Config::from_toml(&toml, "test").unwrap()).await;
        Self { app, data, admin, shutdown, task, _ws: ws, jwks, upstream }
    }

    /// A sidecar the caller launched itself, with what it talks to.
    pub fn from_parts(launched: Launched, ws: Workspace, jwks: Jwks, upstream: TestServer) -> Self {
        let Launched { app, data, admin, shutdown, task } = launched;
        Self { app, data, admin, shutdown, task, _ws: ws, jwks, upstream }
    }

    /// Wait (at most 10 s) until `/readyz` says ready.
    pub async fn ready(self) -> Self {
        wait_ready(self.admin, &self.app).await;
        self
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
        get(self.data, path, headers).await
    }

    /// GET as user-1 through lob-a's endpoint from the corporate network (via a
    /// trusted proxy), with `token`.
    pub async fn studio(&self, path: &str, token: &str) -> (u16, String) {
        let auth = format!("Bearer {token}");
        let (status, _, body) = self
            .get(
                path,
                &[
                    ("authorization", &auth),
                    ("x-amzn-vpce-id", "vpce-0a1a000000000001a"),
                    ("x-forwarded-for", "10.1.2.3"),
                ],
            )
            .await;
        (status, body)
    }
}

/// One request with a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, http::HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut builder = http::Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = sender.send_request(builder.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// An HTTP/2 connection (prior knowledge, no TLS) to `addr`, driven in the background.
pub async fn http2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    request(addr, "GET", path, headers, Vec::new()).await
}

/// moto's server: `AUTHZ_MOTO_SERVER`, else where scripts/test-tools.sh installs it.
fn moto_server_path() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("AUTHZ_MOTO_SERVER") {
        return path.into();
    }
    let venv = std::env::var_os("AUTHZ_TEST_VENV").map_or_else(
        || std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/authz-sidecar/venv"),
        std::path::PathBuf::from,
    );
    venv.join("bin/moto_server")
}

/// The environment of a binary that calls AWS emulators: fixed base credentials
/// (`AKIDBASECREDENTIALS`), and none of this machine's instance metadata, AWS config or
/// credentials files.
pub fn aws_env(dir: &std::path::Path) -> Vec<(&'static str, std::ffi::OsString)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "AKIDBASECREDENTIALS".into()),
        ("AWS_SECRET_ACCESS_KEY", "base-secret".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", dir.join("no-config").into_os_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-credentials").into_os_string()),
    ]
}

pub struct Moto {
    child: std::process::Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start moto's server on a free loopback port.
/// One call of an AWS JSON-protocol API on moto: `x-amz-target` is `{target}.{operation}`,
/// signed as `service` (moto checks the shape, not the signature). Asserts 200.
pub async fn moto_json(moto: &Moto, service: &str, target: &str, operation: &str, body: Value) -> Value {
    let addr = format!("127.0.0.1:{}", moto.port).parse().unwrap();
    let content_type = if service == "dynamodb" { "application/x-amz-json-1.0" } else { "application/x-amz-json-1.1" };
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"
    );
    let target = format!("{target}.{operation}");
    let headers =
        [("content-type", content_type), ("x-amz-target", target.as_str()), ("authorization", authorization.as_str())];
    let (status, _, text) = request(addr, "POST", "/", &headers, body.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{operation}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

pub async fn start_moto() -> Moto {
    let path = moto_server_path();
    assert!(path.exists(), "{} is missing: run `bash scripts/test-tools.sh` (scripts/check.sh does)", path.display());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(&path)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let moto = Moto { child, port };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return moto;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("moto_server did not start on port {port}");
}
