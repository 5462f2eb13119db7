//! The files of a run, all in its own temporary directory: a signing key's JWKS and a
//! token, the sidecar's configuration, nginx's configuration, and policy/entity sets.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::json;

pub const ISSUER: &str = "https://issuer.bench.authz-sidecar.invalid";
const KID: &str = "bench-1";

/// The user every measured request is made as, and what makes the request allowed.
pub const USER: &str = "user-1";
/// The token's groups: the user's teams, and the group the shipped `account-pool-callers`
/// policy admits to the account-pool route (the validate target shares the token).
pub const GROUPS: [&str; 3] = ["Team1", "Team2", "DataZoneAccountPool"];
pub const STUDIO_PATH: &str = "/studio/user-1/team1";
pub const VPCE: &str = "vpce-0a1a000000000001a";
pub const CLIENT_IP: &str = "10.1.2.3";
/// The DataZone user of the seed sample's events, and its domain.
pub const DZ_USER: &str = "4b89ed84-9842-45dd-a2e5-15e49eda2b03";
pub const DZ_DOMAIN: &str = "dzd-4igt64u5j25ko9";

/// Make an RS256 key (as Cognito signs), write its JWKS to `jwks_path`, and return a
/// Cognito-shaped access token for [`USER`], valid for two hours.
pub fn key_and_token(jwks_path: &Path) -> anyhow::Result<String> {
    Signer::new(jwks_path)?.token(USER, &GROUPS)
}

/// An RS256 key whose JWKS is written to a file, minting Cognito-shaped access tokens.
pub struct Signer {
    key: EncodingKey,
}

impl Signer {
    pub fn new(jwks_path: &Path) -> anyhow::Result<Self> {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)?;
        let pem = private.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)?;
        let public = private.to_public_key();
        let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwks = json!({"keys": [{"kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig",
                                    "n": b64(public.n().to_bytes_be()), "e": b64(public.e().to_bytes_be())}]});
        std::fs::write(jwks_path, jwks.to_string())?;
        Ok(Self { key: EncodingKey::from_rsa_pem(pem.as_bytes())? })
    }

    /// A token for `user` in `groups`, valid for two hours.
    pub fn token(&self, user: &str, groups: &[&str]) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = json!({"iss": ISSUER, "sub": format!("sub-{user}"), "username": user, "cognito:groups": groups,
                            "client_id": "bench-client", "token_use": "access", "iat": now, "exp": now + 7200});
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.to_owned());
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

/// Where a sidecar listens and what it reads.
#[derive(Debug, Clone)]
pub struct SidecarFiles {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub policies: PathBuf,
    pub entities: PathBuf,
    pub jwks: PathBuf,
    pub upstream: SocketAddr,
    /// Envoy's external authorization listeners, HTTP and gRPC, when measured.
    pub ext_authz: Option<(SocketAddr, SocketAddr)>,
    /// An OTLP/HTTP traces receiver, when the sidecar exports traces.
    pub otlp: Option<SocketAddr>,
}

/// The sidecar's configuration: the embedded default's principal mapping and context,
/// one RS256 issuer from a JWKS file, the studio route forwarding to the upstream, and
/// the account-pool route. The load generator plays the API Gateway (a trusted proxy).
pub fn sidecar_config(files: &SidecarFiles) -> String {
    format!(
        r#"[server]
listen = "{listen}"
admin_listen = "{admin}"

[policies]
dir = "{policies}"
entities = "{entities}"

[context]
trusted_proxies = ["127.0.0.1/32"]

[principal]
entity_type = "Studio::User"
id_claim = "username"
groups_claim = "cognito:groups"
group_type = "Studio::Team"
tags = {{ Team = "cognito:groups" }}

[[issuers]]
issuer = "{ISSUER}"
jwks_file = "{jwks}"
algorithms = ["RS256"]
audiences = ["bench-client"]
token_use = "access"

[[routes]]
name = "studio"
method = "GET"
path = "/studio/{{user}}/{{team}}"
action = 'Studio::Action::"CreatePresignedDomainUrl"'
resource_type = "Studio::UserProfile"
resource_id = "{{user}}-{{team}}"
handler = "forward"
upstream = "http://{upstream}"

[[routes]]
name = "account-pool"
method = "POST"
path = "/datazone/account-pool"
handler = "account_pool"
{ext_authz}{tracing}"#,
        ext_authz = files.ext_authz.map_or_else(String::new, |(http, grpc)| format!(
            "\n[ext_authz]\nhttp_listen = \"{http}\"\ngrpc_listen = \"{grpc}\"\n"
        )),
        tracing = files.otlp.map_or_else(String::new, |otlp| format!(
            "\n[tracing]\notlp_endpoint = \"http://{otlp}{}\"\n",
            crate::upstream::OTLP_TRACES
        )),
        listen = files.listen,
        admin = files.admin,
        policies = files.policies.display(),
        entities = files.entities.display(),
        jwks = files.jwks.display(),
        upstream = files.upstream,
    )
}

/// nginx as the plain reverse proxy a platform team would deploy: a worker per core,
/// keep-alive to the upstream, an access log line per request (the sidecar writes an
/// audit line per request).
/// With `one_worker` (pinned runs), one worker process, since it has one core.
pub fn nginx_config(dir: &Path, listen: SocketAddr, upstream: SocketAddr, one_worker: bool) -> String {
    let d = dir.display();
    let workers = if one_worker { "1" } else { "auto" };
    format!(
        r#"daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/nginx-access.log;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    upstream app {{ server {upstream}; keepalive 64; }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

/// Write the shipped policy model grown to `policies` policies and `entities` entities
/// (the criterion benchmarks' workload) into `<dir>/policies` and `<dir>/entities`.
pub fn write_workload(dir: &Path, policies: usize, entities: usize) -> anyhow::Result<(PathBuf, PathBuf)> {
    let sources = authz_sidecar_bench::grown_sources(policies, entities);
    anyhow::ensure!(!sources.policies.is_empty(), "cannot read the shipped policies/ and entities/");
    let policy_dir = dir.join("policies");
    let entity_dir = dir.join("entities");
    std::fs::create_dir_all(&policy_dir)?;
    std::fs::create_dir_all(&entity_dir)?;
    for file in sources.schemas.iter().chain(&sources.policies) {
        let name = file.path.file_name().context("a source file without a name")?;
        std::fs::write(policy_dir.join(name), &file.text)?;
    }
    for file in &sources.entities {
        let name = file.path.file_name().context("a source file without a name")?;
        std::fs::write(entity_dir.join(name), &file.text)?;
    }
    Ok((policy_dir, entity_dir))
}

/// The seed sample's validateAccountAuthorization event (answered GRANT).
pub fn validate_event() -> String {
    json!({"operationRequest": {"listAuthorizedAccountsRequest": null, "validateAccountAuthorizationRequest":
        {"domainIdentifier": DZ_DOMAIN, "awsAccountId": "004878717744", "regionName": "us-east-2",
         "userIdentifier": DZ_USER}}})
    .to_string()
}

/// A listAuthorizedAccounts event for the seed sample's user, one page.
pub fn list_event() -> String {
    json!({"operationRequest": {"validateAccountAuthorizationRequest": null, "listAuthorizedAccountsRequest":
        {"domainIdentifier": DZ_DOMAIN, "domainRegion": "us-east-2", "userIdentifier": DZ_USER}}})
    .to_string()
}

/// Header lines for requests through a proxy: the token, the VPC endpoint and client IP
/// the API Gateway in front would set.
pub fn studio_headers(token: &str) -> Vec<(String, String)> {
    let mut headers = gateway_headers();
    headers.push(("authorization".into(), format!("Bearer {token}")));
    headers
}

pub fn gateway_headers() -> Vec<(String, String)> {
    vec![("x-amzn-vpce-id".into(), VPCE.into()), ("x-forwarded-for".into(), CLIENT_IP.into())]
}

/// A line about this machine for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned()))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or_else(String::new, |kib| format!(", {} GiB", kib / 1024 / 1024));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut line = String::new();
    let _ = write!(line, "{cores} cores ({cpu}){memory}, Linux {}", kernel.trim());
    line
}
