//! One blocking HTTP/1.1 request over a fresh connection: enough for readiness polls
//! and the checks that each target answers as expected before it is measured.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, bail};

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> anyhow::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(text.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response from {addr}"))?;
    let Some((_, body)) = raw.split_once("\r\n\r\n") else {
        bail!("no end of headers in the response from {addr}");
    };
    Ok(Answer { status, body: body.to_owned() })
}

pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Answer> {
    request(addr, "GET", path, &[], "")
}
