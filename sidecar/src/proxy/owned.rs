//! Plain-HTTP upstream connections driven by the requests that use them.
//!
//! hyper-util's pooled client runs every upstream connection as a task of its own: a
//! forwarded request is handed to that task through a channel and its response handed
//! back, a task switch each way (see `bench/README.md`). Here a request takes an idle
//! connection from its upstream's [`UpstreamPool`] (or makes one) and drives it itself:
//! from the request's own future while the response head is awaited, and from the
//! response body while it streams. No task, no channel between tasks.
//!
//! - The pool is the upstream's, shared by every inbound connection: the upstream
//!   connections open are as many as requests have been in flight together, not as many
//!   as the inbound connections (a sidecar behind a load balancer holds hundreds of idle
//!   keep-alive connections, each of which would otherwise keep an upstream connection
//!   and its buffers). The most recently used idle connection is taken first.
//! - An idle connection is only its socket. hyper's state for a connection (its read and
//!   write buffers, and the channel a request is handed to it by, whose blocks of 32
//!   requests become two after the 32nd: some 33 KiB in all) is made when a request takes
//!   the connection and dropped when its response has ended. Under a flood the
//!   connections in use are as many as the requests in flight, so this bounds what each
//!   costs to one block of the channel; after it the idle ones cost next to nothing.
//! - A connection is used only by requests on the data-plane core that opened it (see
//!   `server::cores`): its socket is registered with that core's reactor, and a request
//!   on another core would wait for that core's turn at its reactor to hear from it.
//! - A connection goes back to the pool only when its response body has ended. A body
//!   cut short (the client went away) closes it, since it could not be reused.
//! - At most as many idle connections are kept as requests may be in flight together
//!   (`server.max_concurrent_requests`, never more than
//!   [`http_client::MAX_IDLE_PER_HOST`]); one given back past that is closed. One idle
//!   for [`http_client::IDLE_TIMEOUT`] is closed, whether or not requests come.
//! - A connection is parked only when hyper, polled after the response's end, asks for
//!   the next request (so never after `Connection: close`, an HTTP/1.0 answer without
//!   keep-alive, or a request body still being written) and has read nothing past the
//!   response.
//! - Before reuse its socket is looked at once: one the upstream closed (its keep-alive
//!   ran out), or sent anything on unasked, is dropped, and the next idle one is tried,
//!   then a new one. If the upstream closes it between that look and the request being
//!   written, hyper gives the request back unsent and it goes on a new connection, once.
//!   A request already written is never sent twice.
//! - Plain `http://` upstreams only (a sidecar's app is on the same host or pod); an
//!   `https://` upstream (TLS, perhaps HTTP/2 by ALPN) uses the pooled client.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};
use crate::http_client;

type Connection = http1::Connection<TokioIo<TcpStream>, Body>;

/// The idle connections to one plain-HTTP upstream (`host:port`), shared by every
/// request that forwards there.
pub(crate) struct UpstreamPool {
    address: String,
    /// The `Host` a request in origin form is sent with (see [`host_of`]).
    host: Option<HeaderValue>,
    /// Oldest first: a request takes the last, a connection given back goes last.
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Whether the task that closes connections idle too long has been started.
    reaping: AtomicBool,
}

/// A connection between two requests: its socket, and the core whose reactor it is
/// registered with.
struct Idle {
    core: Option<usize>,
    stream: TcpStream,
    since: Instant,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool").field("address", &self.address).finish_non_exhaustive()
    }
}

impl UpstreamPool {
    /// The pool of `uri`'s upstream, keeping at most `max_idle` idle connections (and
    /// never more than the pooled client's); `None` when the upstream is not plain
    /// HTTP (the pooled client carries those).
    pub(crate) fn for_uri(uri: &Uri, max_idle: usize) -> Option<Self> {
        if uri.scheme() != Some(&Scheme::HTTP) {
            return None;
        }
        let authority = uri.authority()?;
        let mut pool = Self::new(
            format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80)),
            max_idle,
            http_client::IDLE_TIMEOUT,
        );
        pool.host = host_of(authority);
        Some(pool)
    }

    fn new(address: String, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            address,
            host: None,
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.clamp(1, http_client::MAX_IDLE_PER_HOST),
            idle_timeout,
            reaping: AtomicBool::new(false),
        }
    }

    /// The upstream's `host:port`.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// The right to send one request on a connection of this pool's.
    pub(crate) fn claim(self: &Arc<Self>) -> Claim {
        Claim { pool: self.clone() }
    }

    /// The most recently used idle connection of this core's that has not been idle too
    /// long; those that have are closed.
    fn take_idle(&self) -> Option<Idle> {
        let here = crate::server::cores::current();
        let (expired, fresh) = {
            let mut idle = self.idle.lock().ok()?;
            let expired = self.expired(&mut idle);
            let fresh = idle.iter().rposition(|i| i.core == here).map(|at| idle.remove(at));
            (expired, fresh)
        };
        // closed outside the lock
        drop(expired);
        fresh
    }

    /// The connections of `idle` (oldest first) idle for the idle timeout or longer,
    /// taken out.
    fn expired(&self, idle: &mut Vec<Idle>) -> Vec<Idle> {
        let now = Instant::now();
        let stale = idle.iter().take_while(|i| now.duration_since(i.since) >= self.idle_timeout).count();
        idle.drain(..stale).collect()
    }

    /// Keep `owned`'s socket for the next request if it can carry one, unless as many
    /// are idle already.
    fn give_back(self: &Arc<Self>, owned: Owned) {
        let core = owned.core;
        let Some(stream) = owned.park() else { return };
        let refused = match self.idle.lock() {
            Ok(mut idle) if idle.len() < self.max_idle => {
                idle.push(Idle { core, stream, since: Instant::now() });
                None
            }
            _ => Some(stream),
        };
        // closed outside the lock
        drop(refused);
        self.start_reaping();
    }

    /// Close the connections idle for longer than the idle timeout, now and then, so
    /// that a quiet upstream's connections do not stay open until the next request.
    fn start_reaping(self: &Arc<Self>) {
        if self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaping.store(false, Ordering::Release);
            return;
        };
        let pool = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(10));
        runtime.spawn(async move {
            // however this ends (a data-plane core's runtime stops with its tasks), the
            // next connection given back starts another
            let _reaping = Reaping(pool.clone());
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                pool.reap();
            }
        });
    }

    fn reap(&self) {
        let expired = match self.idle.lock() {
            Ok(mut idle) => self.expired(&mut idle),
            Err(_) => return,
        };
        drop(expired);
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }
}

/// Held by the reaping task: its end lets another start.
struct Reaping(std::sync::Weak<UpstreamPool>);

impl Drop for Reaping {
    fn drop(&mut self) {
        if let Some(pool) = self.0.upgrade() {
            pool.reaping.store(false, Ordering::Release);
        }
    }
}

/// One request's use of an upstream connection: the connection goes back to the pool
/// only from a response body that ended; a request that fails, or whose response is
/// dropped before its end, drops its connection with it.
pub(crate) struct Claim {
    pool: Arc<UpstreamPool>,
}

impl Claim {
    /// Send `request` and return the response, whose body drives the connection until
    /// it ends. Its URI is the target in origin form (sent with the upstream's `Host`
    /// unless it has one), or absolute, as for the pooled client (sent in origin form,
    /// with the `Host` of its authority unless it has one).
    pub(crate) async fn send(
        self,
        mut request: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Response<Body>, BoxError> {
        if request.uri().authority().is_some() {
            to_origin_form(&mut request);
        } else if let Some(host) = &self.pool.host
            && !request.headers().contains_key(header::HOST)
        {
            request.headers_mut().insert(header::HOST, host.clone());
        }
        // idle connections the upstream has closed are passed over, one after another;
        // one it closes as the request goes out gives the request back, which then goes
        // on a new connection
        let mut reuse = true;
        loop {
            let idle = if reuse { self.pool.take_idle() } else { None };
            let fresh = idle.is_none();
            let mut owned = match idle {
                Some(idle) if !open(&idle.stream) => continue,
                Some(idle) => match Owned::wrap(idle.core, idle.stream).await {
                    Ok(owned) => owned,
                    Err(_) => continue,
                },
                // boxed: a new connection is the rare case, and its future would make
                // every forwarded request's as large
                None => Box::pin(Owned::connect(&self.pool.address, connect_timeout)).await?,
            };
            match owned.exchange(request).await {
                Ok(response) => return Ok(self.respond(owned, response)),
                Err(Exchange::Unsent(unsent)) if !fresh => {
                    request = *unsent;
                    reuse = false;
                }
                Err(Exchange::Unsent(_)) => {
                    return Err("the upstream closed a new connection before the request was sent".into());
                }
                Err(Exchange::Failed(error)) => return Err(error),
            }
        }
    }

    fn respond(self, owned: Owned, response: Response<Incoming>) -> Response<Body> {
        response.map(|inner| OwnedBody { inner, owned: Some(owned), claim: Some(self), ended: false }.boxed_unsync())
    }
}

/// The legacy client's framing of a request on an HTTP/1 connection: the target in
/// origin form, `Host` from the URI unless the request has one (the forwarder removes
/// the client's), with the port only when it is not the scheme's default.
fn to_origin_form(request: &mut Request<Body>) {
    let uri = request.uri().clone();
    if let Some(authority) = uri.authority()
        && !request.headers().contains_key(header::HOST)
        && let Some(value) = host_of(authority)
    {
        request.headers_mut().insert(header::HOST, value);
    }
    let target = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(target);
}

/// The `Host` of a plain-HTTP `authority`: its host, and its port when it is not 80.
fn host_of(authority: &http::uri::Authority) -> Option<HeaderValue> {
    let host = match authority.port_u16() {
        Some(port) if port != 80 => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    HeaderValue::from_str(&host).ok()
}

/// A connection and the handle that sends on it.
struct Owned {
    /// The data-plane core that opened it, whose reactor its socket is registered with.
    core: Option<usize>,
    send: http1::SendRequest<Body>,
    /// `None` once the connection has finished (closed by either side, or failed).
    /// Boxed: hyper's state for it is some 700 bytes, which every future and body
    /// holding the connection would otherwise hold too.
    conn: Option<Box<Connection>>,
}

/// Why an exchange gave no response.
enum Exchange {
    /// The connection closed before the request was written; here it is.
    Unsent(Box<Request<Body>>),
    Failed(BoxError),
}

impl Owned {
    async fn connect(address: &str, timeout: Duration) -> Result<Self, BoxError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| -> BoxError { "connecting to the upstream timed out".into() })??;
        stream.set_nodelay(true)?;
        metrics::counter!("authz_upstream_connections_total").increment(1);
        Self::wrap(crate::server::cores::current(), stream).await
    }

    /// hyper's state for carrying requests on `stream` (opened on `core`).
    async fn wrap(core: Option<usize>, stream: TcpStream) -> Result<Self, BoxError> {
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Self { core, send, conn: Some(Box::new(conn)) })
    }

    /// The socket alone, if the connection can carry another request: hyper, polled once
    /// more after the response's end, has asked for the next (it does not after
    /// `Connection: close`, or while a request body is still being written), and has read
    /// nothing past the response.
    fn park(mut self) -> Option<TcpStream> {
        if !self.drive(&mut Context::from_waker(Waker::noop())) || !self.send.is_ready() {
            return None;
        }
        let parts = self.conn.take()?.into_parts();
        parts.read_buf.is_empty().then(|| parts.io.into_inner())
    }

    /// Poll the connection (reading and writing what it can); `false` once it has
    /// finished.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = self.conn.as_mut() else { return false };
        match Pin::new(conn.as_mut()).poll(cx) {
            Poll::Pending => true,
            Poll::Ready(result) => {
                if let Err(error) = result {
                    tracing::debug!(error = %error, "upstream connection ended");
                }
                // dropping it answers a request still queued on it (unsent, given back)
                self.conn = None;
                false
            }
        }
    }

    /// Send `request` and drive the connection until the response head arrives.
    async fn exchange(&mut self, request: Request<Body>) -> Result<Response<Incoming>, Exchange> {
        let mut sending = pin!(self.send.try_send_request(request));
        let result = poll_fn(|cx| {
            // the request is queued on the connection: write it, read the answer
            self.drive(cx);
            sending.as_mut().poll(cx)
        })
        .await;
        result.map_err(|mut error| match error.take_message() {
            Some(request) => Exchange::Unsent(Box::new(request)),
            None => Exchange::Failed(error.into_error().into()),
        })
    }
}

/// Whether an idle connection's upstream has neither closed it nor sent anything on it:
/// its socket has nothing to read. Looks at the readiness its reactor has seen, and reads
/// only when that says readable (a read that then finds nothing keeps it).
fn open(stream: &TcpStream) -> bool {
    match stream.poll_read_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut byte = [0u8; 1];
            matches!(stream.try_read(&mut byte), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// A response body that drives its connection while it streams, and gives the
/// connection back to its slot when it has ended.
struct OwnedBody {
    inner: Incoming,
    owned: Option<Owned>,
    claim: Option<Claim>,
    /// The body said it had no more (a chunked body's end shows only here).
    ended: bool,
}

impl OwnedBody {
    fn seen(&mut self, frame: Option<Result<Frame<Bytes>, hyper::Error>>) -> Option<Result<Frame<Bytes>, BoxError>> {
        match frame {
            None => {
                self.ended = true;
                None
            }
            Some(frame) => Some(frame.map_err(Into::into)),
        }
    }
}

impl HttpBody for OwnedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(this.seen(frame));
        }
        // the body's bytes come through the connection: read them, then look again
        if let Some(owned) = this.owned.as_mut()
            && !owned.drive(cx)
        {
            this.owned = None;
        }
        Pin::new(&mut this.inner).poll_frame(cx).map(|frame| this.seen(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for OwnedBody {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else { return };
        // only a connection whose response was read to its end can carry another
        let ended = self.ended || self.inner.is_end_stream();
        if let Some(owned) = self.owned.take().filter(|owned| ended && owned.conn.is_some()) {
            claim.pool.give_back(owned);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// `n` connections to a listener of the test's, and the listener's side of each,
    /// in the same order.
    async fn connections(n: usize) -> (String, Vec<Owned>, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..n {
            ours.push(Owned::connect(&address, Duration::from_secs(1)).await.unwrap());
            theirs.push(listener.accept().await.unwrap().0);
        }
        (address, ours, theirs)
    }

    /// Whether the sidecar closed the connection (its peer reads the end of the stream
    /// within a short while).
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn connections_given_back_past_the_cap_are_closed() {
        let (address, ours, mut theirs) = connections(3).await;
        let pool = Arc::new(UpstreamPool::new(address, 2, http_client::IDLE_TIMEOUT));
        for owned in ours {
            pool.give_back(owned);
        }
        assert_eq!(pool.idle_count(), 2);
        assert!(!closed(&mut theirs[0]).await && !closed(&mut theirs[1]).await, "the first two are kept");
        assert!(closed(&mut theirs[2]).await, "the third is closed");
    }

    #[tokio::test]
    async fn the_most_recently_used_connection_is_taken_first() {
        let (address, ours, mut theirs) = connections(2).await;
        let pool = Arc::new(UpstreamPool::new(address, 4, http_client::IDLE_TIMEOUT));
        for owned in ours {
            pool.give_back(owned);
        }
        drop(pool.take_idle().expect("an idle connection"));
        assert!(closed(&mut theirs[1]).await, "the last given back was taken");
        assert!(!closed(&mut theirs[0]).await);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_idle_too_long_is_closed_and_never_taken() {
        let (address, mut ours, mut theirs) = connections(2).await;
        let timeout = Duration::from_millis(100);
        // the first goes stale while nothing asks: the pool's own reaper closes it
        let reaped = Arc::new(UpstreamPool::new(address.clone(), 4, timeout));
        reaped.give_back(ours.remove(0));
        assert!(closed(&mut theirs[0]).await, "closed by the reaper");
        assert_eq!(reaped.idle_count(), 0);
        // the second goes stale between two requests (no reaper here): the next request
        // never gets it, and it is closed then
        let unreaped = Arc::new(UpstreamPool::new(address, 4, timeout));
        unreaped.reaping.store(true, Ordering::Release);
        unreaped.give_back(ours.remove(0));
        tokio::time::sleep(timeout + Duration::from_millis(20)).await;
        assert_eq!(unreaped.idle_count(), 1, "still there: nothing has looked");
        assert!(unreaped.take_idle().is_none());
        assert_eq!(unreaped.idle_count(), 0);
        assert!(closed(&mut theirs[1]).await);
    }

    #[tokio::test]
    async fn a_connection_is_taken_only_on_the_core_that_opened_it() {
        use crate::server::cores::Cores;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let pool = Arc::new(UpstreamPool::new(address.clone(), 4, http_client::IDLE_TIMEOUT));
        let cores = Cores::start(2).unwrap();
        let on = |core: usize| {
            let pool = pool.clone();
            cores.spawn(core, async move { pool.take_idle().is_some() })
        };
        let (opener, to) = (pool.clone(), address.clone());
        cores
            .spawn(0, async move {
                let owned = Owned::connect(&to, Duration::from_secs(1)).await.unwrap();
                opener.give_back(owned);
            })
            .await
            .unwrap();
        let _theirs = listener.accept().await.unwrap();
        assert!(!on(1).await.unwrap(), "another core's connection is not taken");
        assert!(pool.take_idle().is_none(), "nor off the cores");
        assert_eq!(pool.idle_count(), 1);
        assert!(on(0).await.unwrap(), "the core that opened it takes it");
        assert_eq!(pool.idle_count(), 0);
        assert!(pool.reaping.load(Ordering::Acquire), "the reaper started on core 0");
        cores.stop().await;
        assert!(!pool.reaping.load(Ordering::Acquire), "its end, with its core, lets another start");
    }

    #[test]
    fn only_plain_http_upstreams_are_pooled_here_and_the_cap_is_bounded() {
        let pool = |uri: &str, max| UpstreamPool::for_uri(&uri.parse().unwrap(), max);
        assert_eq!(pool("http://127.0.0.1:8080/app", 8).unwrap().address(), "127.0.0.1:8080");
        assert_eq!(pool("http://app.internal", 8).unwrap().address(), "app.internal:80");
        assert!(pool("https://app.internal", 8).is_none());
        assert_eq!(pool("http://a:1", 100_000).unwrap().max_idle, http_client::MAX_IDLE_PER_HOST);
        assert_eq!(pool("http://a:1", 0).unwrap().max_idle, 1);
        let host = |authority: &str| host_of(&authority.parse().unwrap()).unwrap();
        assert_eq!(host("app.internal"), "app.internal");
        assert_eq!(host("app.internal:80"), "app.internal");
        assert_eq!(host("app.internal:8080"), "app.internal:8080");
        assert_eq!(host("[::1]:81"), "[::1]:81");
        assert_eq!(pool("http://app.internal:80/x", 8).unwrap().host.unwrap(), "app.internal");
    }

    /// Read one request's head on `stream` (the test's requests have no body, or one
    /// never sent) and write `answer`; the head read.
    async fn answer_one(stream: &mut TcpStream, answer: &[u8]) -> Vec<u8> {
        use tokio::io::AsyncWriteExt;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap() == 1 {
            head.push(byte[0]);
        }
        stream.write_all(answer).await.unwrap();
        head
    }

    /// Accept one connection on `listener` and answer its one request with `answer`; the
    /// connection back, open.
    async fn answering(listener: TcpListener, answer: &'static [u8]) -> TcpStream {
        let (mut stream, _) = listener.accept().await.unwrap();
        answer_one(&mut stream, answer).await;
        stream
    }

    /// A request body that never ends (its head is sent, then nothing).
    struct Endless;

    impl HttpBody for Endless {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_connection_is_kept_only_when_hyper_asks_for_the_next_request_and_nothing_was_read_past_the_answer() {
        let cases: [(&str, &[u8], Option<Body>); 5] = [
            ("keep-alive", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", None),
            ("connection: close", b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", None),
            ("HTTP/1.0", b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", None),
            ("bytes past the answer", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n", None),
            (
                "the request body still being sent",
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                Some(Endless.boxed_unsync()),
            ),
        ];
        for (case, answer, body) in cases {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let upstream = tokio::spawn(answering(listener, answer));
            let pool = Arc::new(UpstreamPool::new(address, 4, http_client::IDLE_TIMEOUT));
            let mut request =
                Request::post("/x").body(body.unwrap_or_else(|| crate::body::full(Bytes::new()))).unwrap();
            request.headers_mut().insert(header::HOST, HeaderValue::from_static("upstream"));
            let response = pool.claim().send(request, Duration::from_secs(2)).await.unwrap();
            assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "ok", "{case}");
            let mut theirs = upstream.await.unwrap();
            let kept = case == "keep-alive";
            assert_eq!(pool.idle_count(), usize::from(kept), "{case}");
            assert_eq!(closed(&mut theirs).await, !kept, "{case}");
        }
    }

    #[tokio::test]
    async fn an_idle_connection_its_upstream_wrote_on_or_closed_is_passed_over_for_the_next_idle_one() {
        use tokio::io::AsyncWriteExt;
        for (case, unasked) in [("wrote on", &b"HTTP/1.1 408 Request Timeout\r\n\r\n"[..]), ("closed", &b""[..])] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for _ in 0..2 {
                ours.push(Owned::connect(&address, Duration::from_secs(1)).await.unwrap());
                theirs.push(listener.accept().await.unwrap().0);
            }
            let pool = Arc::new(UpstreamPool::new(address, 4, http_client::IDLE_TIMEOUT));
            for owned in ours {
                pool.give_back(owned);
            }
            // the most recently used, taken first, is gone
            let mut gone = theirs.pop().unwrap();
            if unasked.is_empty() {
                gone.shutdown().await.unwrap();
            } else {
                gone.write_all(unasked).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let older = answer_on(theirs.pop().unwrap(), b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nolder");
            let mut request = Request::get("/x").body(crate::body::full(Bytes::new())).unwrap();
            request.headers_mut().insert(header::HOST, HeaderValue::from_static("upstream"));
            // a new connection would be accepted by the kernel and never answered
            let response =
                tokio::time::timeout(Duration::from_secs(2), pool.claim().send(request, Duration::from_secs(2)))
                    .await
                    .unwrap_or_else(|_| panic!("{case}: not answered on the older connection"))
                    .unwrap();
            assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "older", "{case}");
            assert!(
                tokio::time::timeout(Duration::from_millis(100), listener.accept()).await.is_err(),
                "{case}: no new connection"
            );
            assert!(closed(&mut gone).await, "{case}: the one gone was closed");
            drop(older.await.unwrap());
        }
    }

    /// Answer the one request that arrives on `stream` with `answer`; the stream back.
    fn answer_on(mut stream: TcpStream, answer: &'static [u8]) -> tokio::task::JoinHandle<TcpStream> {
        tokio::spawn(async move {
            answer_one(&mut stream, answer).await;
            stream
        })
    }

    /// The head of the one request a listener of the test's receives, answered 204.
    async fn head_received(listener: TcpListener) -> String {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = answer_one(&mut stream, b"HTTP/1.1 204 No Content\r\n\r\n").await;
        String::from_utf8(head).unwrap().to_ascii_lowercase()
    }

    #[tokio::test]
    async fn a_request_goes_out_in_origin_form_with_the_upstreams_host_whichever_form_it_came_in() {
        let base = |address: &str| -> Uri { format!("http://{address}/").parse().unwrap() };
        for (uri, own_host) in [("/x?y=1", None), ("http://{}/x?y=1", None), ("/x?y=1", Some("app.example"))] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let received = tokio::spawn(head_received(listener));
            let pool = Arc::new(UpstreamPool::for_uri(&base(&address), 4).unwrap());
            let mut request = Request::new(crate::body::full(Bytes::new()));
            *request.uri_mut() = uri.replace("{}", &address).parse().unwrap();
            if let Some(host) = own_host {
                request.headers_mut().insert(header::HOST, HeaderValue::from_static(host));
            }
            let response = pool.claim().send(request, Duration::from_secs(2)).await.unwrap();
            assert_eq!(response.status(), 204);
            let head = received.await.unwrap();
            assert!(head.starts_with("get /x?y=1 http/1.1\r\n"), "{uri}: {head}");
            let host = own_host.map_or_else(|| address.clone(), str::to_owned);
            assert_eq!(head.matches("\r\nhost: ").count(), 1, "{uri}: {head}");
            assert!(head.contains(&format!("\r\nhost: {host}\r\n")), "{uri}: {head}");
        }
    }
}
