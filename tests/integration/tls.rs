//! TLS and mTLS on the data plane, with a certificate authority, server and client
//! certificates made at test time (rcgen).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::harness::{Setup, Sidecar, token};
use crate::support::Workspace;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
}

/// (certificate PEM, key PEM) signed by `ca`.
fn leaf(ca: &Ca, names: &[&str], client: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("client"));
    params.extended_key_usages =
        vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn client_config(ca_pem: &str, identity: Option<&(String, String)>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).map(Result::unwrap).collect();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// GET the allowed profile over TLS; `Err` when the connection or handshake fails.
async fn get_tls(sidecar: &Sidecar, config: rustls::ClientConfig) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(sidecar.data).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = http::Request::get("/studio/user-1/team1")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {}", token("user-1", &["Team1"])))
        .header("x-amzn-vpce-id", "vpce-0a1a000000000001a")
        .header("x-forwarded-for", "10.1.2.3")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Ok(status)
}

async fn tls_sidecar(client_ca: Option<&str>) -> (Sidecar, Ca) {
    tls_sidecar_with(client_ca, "").await
}

/// As [`tls_sidecar`], with `more` added to `[server.tls]`.
async fn tls_sidecar_with(client_ca: Option<&str>, more: &str) -> (Sidecar, Ca) {
    let authority = ca("authz-sidecar test CA");
    let (cert, key) = leaf(&authority, &["localhost"], false);
    let ws = Workspace::shipped();
    let dir = ws.dir.path().to_path_buf();
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    let mut extra = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{more}",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    );
    if let Some(pem) = client_ca {
        std::fs::write(dir.join("clients.crt"), pem).unwrap();
        extra.push_str(&format!("client_ca = \"{}\"\n", dir.join("clients.crt").display()));
    }
    let setup = Setup { extra, ..Setup::default() };
    let sidecar =
        Sidecar::start_with(ws, setup, |_| (200, "upstream ok".to_owned(), Duration::ZERO)).await.ready().await;
    (sidecar, authority)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_serves_https() {
    let (sidecar, authority) = tls_sidecar(None).await;
    assert_eq!(get_tls(&sidecar, client_config(&authority.pem, None)).await, Ok(200));
    // a client that does not trust the server's CA refuses it
    let stranger = ca("another CA");
    assert!(get_tls(&sidecar, client_config(&stranger.pem, None)).await.is_err());
    // and plain HTTP gets nowhere
    let plain = tokio::time::timeout(Duration::from_secs(3), async {
        let stream = tokio::net::TcpStream::connect(sidecar.data).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        let request = http::Request::get("/studio/user-1/team1").body(Full::new(Bytes::new())).ok()?;
        sender.send_request(request).await.ok().map(|r| r.status().as_u16())
    })
    .await
    .ok()
    .flatten();
    assert_eq!(plain, None, "no HTTP answer without TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_configured_ca() {
    let clients = ca("studio clients CA");
    let (sidecar, authority) = tls_sidecar(Some(&clients.pem)).await;
    let good = leaf(&clients, &["studio-api"], true);
    assert_eq!(get_tls(&sidecar, client_config(&authority.pem, Some(&good))).await, Ok(200));
    assert!(get_tls(&sidecar, client_config(&authority.pem, None)).await.is_err(), "no client certificate");
    let rogue_ca = ca("rogue CA");
    let rogue = leaf(&rogue_ca, &["studio-api"], true);
    assert!(
        get_tls(&sidecar, client_config(&authority.pem, Some(&rogue))).await.is_err(),
        "a certificate from another CA"
    );
    assert_eq!(sidecar.upstream.calls(), 1);
}

/// A rotated certificate (cert-manager replacing the secret's files) is served to new
/// connections without a restart; files that do not load leave the last good one
/// serving, and are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let (sidecar, first) = tls_sidecar_with(None, "reload_interval = \"100ms\"\n").await;
    assert_eq!(get_tls(&sidecar, client_config(&first.pem, None)).await, Ok(200));
    let dir = sidecar._ws.dir.path().to_path_buf();

    // the key written before its certificate: for a moment the pair does not match
    let second = ca("the rotated CA");
    let (cert, key) = leaf(&second, &["localhost"], false);
    std::fs::write(dir.join("tls.key"), key).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get_tls(&sidecar, client_config(&first.pem, None)).await, Ok(200), "the last good pair serves");
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    let mut served = Err(String::new());
    for _ in 0..100 {
        served = get_tls(&sidecar, client_config(&second.pem, None)).await;
        if served == Ok(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, Ok(200), "the rotated certificate is served");
    assert!(get_tls(&sidecar, client_config(&first.pem, None)).await.is_err(), "the old one no longer is");

    // a certificate file that is not one: the rotated pair keeps serving
    std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get_tls(&sidecar, client_config(&second.pem, None)).await, Ok(200));
    let (_, _, metrics) = crate::harness::get(sidecar.admin, "/metrics", &[]).await;
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("authz_tls_reloads_total{result=\"failure\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(failures.is_some_and(|n| n >= 2.0), "the mismatched pair and the broken file: {metrics}");
}

/// The AWS SDK's calls go through the sidecar's own HTTP client (`aws::http_client`:
/// rustls on ring, the system's trust roots): over TLS, and refused when the server's
/// certificate is signed by a CA the system does not trust, before any request is sent.
/// (A CA the system trusts is the real AWS endpoints' case: see the README for what
/// needs a real account.)
#[tokio::test]
async fn aws_calls_use_tls_on_ring_and_refuse_an_untrusted_certificate() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let untrusted = ca("not in the system store");
    let (cert, key) = leaf(&untrusted, &["localhost", "127.0.0.1"], false);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.as_bytes()).map(Result::unwrap).collect();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (hellos, handshakes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (seen, done) = (hellos.clone(), handshakes.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            if acceptor.accept(tcp).await.is_ok() {
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });

    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(authz_sidecar::aws::http_client())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sts::config::Credentials::for_tests())
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(aws_config::timeout::TimeoutConfig::builder().operation_timeout(Duration::from_secs(5)).build())
        .load()
        .await;
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::config::Builder::from(&base).endpoint_url(format!("https://localhost:{port}")).build(),
    );
    let error = sts.get_caller_identity().send().await.expect_err("a certificate from an untrusted CA was accepted");
    let error = format!("{:?}", aws_smithy_types::error::display::DisplayErrorContext(&error));
    assert!(error.to_lowercase().contains("certificate"), "not refused for its certificate: {error}");
    assert!(hellos.load(Ordering::SeqCst) >= 1, "the call never reached the server: {error}");
    assert_eq!(handshakes.load(Ordering::SeqCst), 0, "a TLS session was set up with an untrusted server");
}
