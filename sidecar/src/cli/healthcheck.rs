//! `authz-sidecar healthcheck`: ask a running sidecar's admin listener whether it is
//! ready, for images without curl (a Docker `HEALTHCHECK`, an ECS `healthCheck`).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;

use super::{CONFIG_VARIABLE, exit};
use crate::config::Config;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// The sidecar's configuration file, to find `server.admin_listen` (with the same
    /// environment overrides the sidecar applies). Without it, the embedded default's.
    #[arg(long, value_name = "FILE", env = CONFIG_VARIABLE)]
    config: Option<PathBuf>,
    /// The admin address to ask, overriding the configuration's. An unspecified address
    /// (`0.0.0.0`, `::`) is asked on loopback.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// How long to wait for the answer, connecting included.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// The most of `/readyz`'s body shown when it is not ready.
const MAX_BODY: usize = 16 * 1024;

/// Exit 0 when `/readyz` answers 200; 1, saying why, otherwise.
pub(super) fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let admin = match args.admin_listen {
        Some(admin) => admin,
        None => match Config::load(args.config.as_deref()) {
            Ok(config) => config.server.admin_listen,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                return exit::FAILURE;
            }
        },
    };
    let admin = on_loopback(admin);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    match runtime.block_on(async { tokio::time::timeout(args.timeout, readyz(admin)).await }) {
        Ok(Ok((200, _))) => {
            let _ = writeln!(out, "ready: http://{admin}/readyz");
            exit::OK
        }
        Ok(Ok((status, body))) => {
            let _ = writeln!(err, "not ready: http://{admin}/readyz answered {status}: {}", body.trim());
            exit::FAILURE
        }
        Ok(Err(e)) => {
            let _ = writeln!(err, "not ready: http://{admin}/readyz: {e}");
            exit::FAILURE
        }
        Err(_) => {
            let _ = writeln!(err, "not ready: http://{admin}/readyz did not answer within {:?}", args.timeout);
            exit::FAILURE
        }
    }
}

/// `addr`, with an unspecified IP (a listener on every interface) made loopback.
fn on_loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port()),
        _ => addr,
    }
}

/// GET `/readyz` on `admin`: the status and the start of the body.
async fn readyz(admin: SocketAddr) -> Result<(u16, String), Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(admin).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/readyz")
        .header(hyper::header::HOST, admin.to_string())
        .header(hyper::header::USER_AGENT, concat!("authz-sidecar-healthcheck/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    if status == 200 {
        return Ok((status, String::new()));
    }
    let body = Limited::new(response.into_body(), MAX_BODY).collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_address_is_asked_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:9901".parse().unwrap();
        assert_eq!(on_loopback(v4), "127.0.0.1:9901".parse().unwrap());
        let v6: SocketAddr = "[::]:9901".parse().unwrap();
        assert_eq!(on_loopback(v6), "[::1]:9901".parse().unwrap());
        let given: SocketAddr = "10.0.0.5:9901".parse().unwrap();
        assert_eq!(on_loopback(given), given);
    }
}
