//! Forwarding on upstream connections the requests drive themselves, over real sockets,
//! against an upstream written byte by byte so that each test picks how it misbehaves:
//! connections reused and counted (as many as requests in flight together, whatever the
//! number of client connections), an upstream that closes idle connections without
//! saying so, chunked and large bodies, a client that leaves mid-body, request bodies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{self, Jwks, Launched, Setup, config_toml, keys, token};
use crate::support::Workspace;

const ALLOWED: &str = "/studio/user-1/team1";

/// One request as the raw upstream read it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    }
}

/// What the raw upstream does with a request: the bytes it answers with, and whether
/// it then closes the connection (without a `Connection: close` header unless the
/// bytes say so).
type Respond = dyn Fn(&Seen) -> (Vec<u8>, bool) + Send + Sync;

/// An HTTP/1.1 upstream that counts the connections it accepts.
struct RawUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections that have ended (the sidecar closed them, or a write to them failed).
    ended: Arc<AtomicUsize>,
}

impl RawUpstream {
    async fn start(respond: impl Fn(&Seen) -> (Vec<u8>, bool) + Send + Sync + 'static) -> Self {
        Self::start_delayed(Duration::ZERO, respond).await
    }

    /// As [`RawUpstream::start`], answering each request `delay` after it arrived.
    async fn start_delayed(
        delay: Duration,
        respond: impl Fn(&Seen) -> (Vec<u8>, bool) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let respond: Arc<Respond> = Arc::new(respond);
        let (counter, closed) = (accepted.clone(), ended.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_raw(stream, respond.clone(), closed.clone(), delay));
            }
        });
        Self { addr, accepted, ended }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve_raw(mut stream: TcpStream, respond: Arc<Respond>, ended: Arc<AtomicUsize>, delay: Duration) {
    let mut buffer = Vec::new();
    while let Some(seen) = read_request(&mut stream, &mut buffer).await {
        tokio::time::sleep(delay).await;
        let (bytes, close) = respond(&seen);
        if stream.write_all(&bytes).await.is_err() {
            break;
        }
        if close {
            let _ = stream.shutdown().await;
            break;
        }
    }
    ended.fetch_add(1, Ordering::SeqCst);
}

/// Read one request (a head and a `Content-Length` body); `None` at the end of the
/// stream.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Seen> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut seen = Seen { head, body: Vec::new() };
    let length: usize = seen.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    seen.body = buffer[head_end..head_end + length].to_vec();
    buffer.drain(..head_end + length);
    Some(seen)
}

/// A response with a `Content-Length` body.
fn sized(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// A sidecar forwarding the studio routes to `upstream`.
async fn sidecar(upstream: &str) -> (Launched, Workspace, Jwks) {
    let ws = Workspace::shipped();
    let jwks = Jwks::start(&[&keys().0]).await;
    let setup = Setup { max_body_bytes: 4 * 1024 * 1024, ..Setup::default() };
    let toml = config_toml(&ws, &jwks.url(), upstream, &setup);
    let launched = harness::launch(authz_sidecar::config::Config::from_toml(&toml, "test").unwrap()).await;
    harness::wait_ready(launched.admin, &launched.app).await;
    (launched, ws, jwks)
}

/// One keep-alive client connection to the sidecar.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    auth: String,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Self { sender, addr, auth: format!("Bearer {}", token("user-1", &["Team1", "Team2"])) }
    }

    async fn send(&mut self, method: &str, body: Vec<u8>) -> hyper::Response<hyper::body::Incoming> {
        let request = http::Request::builder()
            .method(method)
            .uri(ALLOWED)
            .header("host", self.addr.to_string())
            .header("authorization", &self.auth)
            .header("x-amzn-vpce-id", "vpce-0a1a000000000001a")
            .header("x-forwarded-for", "10.1.2.3")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.sender.ready().await.unwrap();
        self.sender.send_request(request).await.unwrap()
    }

    /// Send and read the whole answer.
    async fn call(&mut self, method: &str, body: Vec<u8>) -> (u16, Bytes) {
        let response = self.send(method, body).await;
        let status = response.status().as_u16();
        (status, response.into_body().collect().await.unwrap().to_bytes())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_one_after_another_share_one_upstream_connection_per_core_whatever_client_connection_they_came_on() {
    let upstream = RawUpstream::start(|seen| (sized(&seen.header("host").unwrap_or_default()), false)).await;
    let ws = Workspace::shipped();
    let jwks = Jwks::start(&[&keys().0]).await;
    let setup = Setup { max_body_bytes: 4 * 1024 * 1024, ..Setup::default() };
    // two data-plane cores: an upstream connection serves the requests of its own core
    let toml =
        config_toml(&ws, &jwks.url(), &upstream.url(), &setup).replacen("[server]\n", "[server]\nthreads = 2\n", 1);
    let launched = harness::launch(authz_sidecar::config::Config::from_toml(&toml, "test").unwrap()).await;
    harness::wait_ready(launched.admin, &launched.app).await;
    let mut client = Client::connect(launched.data).await;
    for _ in 0..5 {
        let (status, body) = client.call("GET", Vec::new()).await;
        assert_eq!(status, 200, "{body:?}");
        // the upstream's own authority, as the pooled client wrote it
        assert_eq!(body, upstream.addr.to_string());
    }
    assert_eq!(upstream.accepted(), 1, "one upstream connection carried every request");
    // more client connections, each kept open, asking in turn: they are placed on both
    // cores, and each core opens one upstream connection, then reuses it
    let mut others = Vec::new();
    for _ in 0..20 {
        let mut other = Client::connect(launched.data).await;
        assert_eq!(other.call("GET", Vec::new()).await.0, 200);
        others.push(other);
    }
    assert_eq!(client.call("GET", Vec::new()).await.0, 200);
    assert_eq!(upstream.accepted(), 2, "an idle client connection holds no upstream connection; a core holds one");
    launched.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_together_each_get_a_connection_and_leave_it_for_the_next() {
    let upstream = RawUpstream::start_delayed(Duration::from_millis(300), |_| (sized("slow"), false)).await;
    let (launched, _ws, _jwks) = sidecar(&upstream.url()).await;
    let connect = || Client::connect(launched.data);
    let (mut a, mut b, mut c, mut d) = (connect().await, connect().await, connect().await, connect().await);
    for round in 0..3 {
        let answers = tokio::join!(
            a.call("GET", Vec::new()),
            b.call("GET", Vec::new()),
            c.call("GET", Vec::new()),
            d.call("GET", Vec::new())
        );
        for (status, body) in [answers.0, answers.1, answers.2, answers.3] {
            assert_eq!((status, body.as_ref()), (200, b"slow".as_ref()), "round {round}");
        }
        assert_eq!(upstream.accepted(), 4, "round {round}: four at once, four connections, reused after");
    }
    assert_eq!(upstream.ended.load(Ordering::SeqCst), 0, "none was closed");
    launched.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_drops_idle_connections_unannounced_costs_no_request() {
    // the upstream closes every connection after its answer, without `Connection: close`
    let upstream = RawUpstream::start(|_| (sized("once"), true)).await;
    let (launched, _ws, _jwks) = sidecar(&upstream.url()).await;
    let mut client = Client::connect(launched.data).await;
    for round in 0..4 {
        let (status, body) = client.call("GET", Vec::new()).await;
        assert_eq!((status, body.as_ref()), (200, b"once".as_ref()), "round {round}");
        // time for the close to arrive: the sidecar sees it before it reuses
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.accepted(), 4, "a new connection for each request");
    launched.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_large_bodies_stream_through_both_ways_and_the_connection_is_reused() {
    let upstream = RawUpstream::start(|seen| {
        if seen.head.starts_with("POST") {
            // echo what arrived, with its length
            let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", seen.body.len()).into_bytes();
            answer.extend_from_slice(&seen.body);
            return (answer, false);
        }
        // 64 chunks of 16 KiB: 1 MiB, chunked
        let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for i in 0..64u8 {
            answer.extend_from_slice(format!("{:x}\r\n", 16 * 1024).as_bytes());
            answer.extend(std::iter::repeat_n(b'a' + (i % 26), 16 * 1024));
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        (answer, false)
    })
    .await;
    let (launched, _ws, _jwks) = sidecar(&upstream.url()).await;
    let mut client = Client::connect(launched.data).await;
    for _ in 0..3 {
        let (status, body) = client.call("GET", Vec::new()).await;
        assert_eq!(status, 200);
        assert_eq!(body.len(), 1024 * 1024);
        assert!(body.starts_with(b"aaaa") && body.ends_with(b"llll"), "the chunks arrive whole and in order");
        let sent: Vec<u8> = (0..3 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
        let (status, echoed) = client.call("POST", sent.clone()).await;
        assert_eq!(status, 200);
        assert!(echoed.as_ref() == sent.as_slice(), "the request body arrives whole ({} bytes)", echoed.len());
    }
    assert_eq!(upstream.accepted(), 1, "a chunked body's end gives the connection back too");
    launched.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_body_closes_its_upstream_connection_and_nothing_else() {
    // a body far larger than the socket buffers, so the client leaves while it flows
    let upstream = RawUpstream::start(|_| (sized(&"b".repeat(8 * 1024 * 1024)), false)).await;
    let (launched, _ws, _jwks) = sidecar(&upstream.url()).await;
    let mut leaving = Client::connect(launched.data).await;
    let response = leaving.send("GET", Vec::new()).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    drop(leaving);
    // the half-read upstream connection is closed, not given to anyone else
    for _ in 0..100 {
        if upstream.ended.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.ended.load(Ordering::SeqCst), 1);
    let mut next = Client::connect(launched.data).await;
    let (status, body) = next.call("GET", Vec::new()).await;
    assert_eq!((status, body.len()), (200, 8 * 1024 * 1024));
    assert_eq!(upstream.accepted(), 2);
    launched.shutdown.cancel();
}

/// An HTTP/2 client drops one stream's response mid-body (a stream reset) and goes on
/// using the connection: the half-read upstream connection is closed, never given to the
/// connection's next stream; and streams in flight together each get an answer, each on
/// a connection of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_reset_mid_body_never_hands_its_half_read_connection_on() {
    let upstream = RawUpstream::start(|_| (sized(&"c".repeat(8 * 1024 * 1024)), false)).await;
    let (launched, _ws, _jwks) = sidecar(&upstream.url()).await;
    let stream = TcpStream::connect(launched.data).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let auth = format!("Bearer {}", token("user-1", &["Team1"]));
    let request = || {
        http::Request::get(format!("http://{}{ALLOWED}", launched.data))
            .header("authorization", &auth)
            .header("x-amzn-vpce-id", "vpce-0a1a000000000001a")
            .header("x-forwarded-for", "10.1.2.3")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let response = sender.send_request(request()).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    drop(body);
    for _ in 0..100 {
        if upstream.ended.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.ended.load(Ordering::SeqCst), 1, "the half-read upstream connection is closed");
    // two streams at once on the same connection, each whole
    let (a, b) = tokio::join!(sender.send_request(request()), sender.clone().send_request(request()));
    for response in [a.unwrap(), b.unwrap()] {
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 8 * 1024 * 1024);
        assert!(body.iter().all(|&b| b == b'c'));
    }
    assert_eq!(upstream.accepted(), 3);
    launched.shutdown.cancel();
}
