//! The listeners: accept loops for the data plane and the admin endpoints.
//!
//! Both take a bound listener and a shutdown token from the caller, so tests run the
//! real server on `127.0.0.1:0`. The data plane's connections are served on the
//! data-plane cores (see [`cores`]), the admin listener's on the calling runtime. On
//! shutdown a listener stops accepting at once, lets in-flight requests finish for at
//! most the grace period, then closes what is left.
//!
//! Every connection is bounded, whatever the client does or does not send:
//!
//! - **open connections** are capped per listener; past the cap a new connection is
//!   accepted and closed at once (counted), so the cap holds below the process's
//!   descriptor limit and the admin listener, with its own cap, keeps answering;
//! - **the first request** (TLS handshake, HTTP/1 or HTTP/2 detection, and the complete
//!   request head) must arrive within `header_read_timeout` of the accept, or the
//!   connection is closed: a socket that sends nothing, one byte, half a preface or
//!   HTTP/2 `HEADERS` without `END_HEADERS` is gone after that;
//! - **idle connections** (no request in flight, no response body still flowing) are
//!   closed after `idle_timeout`; HTTP/2 connections are also pinged, and closed when
//!   a ping goes unanswered.
//!
//! Memory per connection is bounded by hyper's buffers (`max_header_bytes` for a
//! request head), so a flood holds at most the cap times that.

pub mod admin;
pub mod context;
pub mod cores;
pub mod ext_authz;
pub mod forwarded;
pub mod head;
pub mod limits;
pub mod overload;
pub mod path;
pub mod pipeline;
pub mod router;
pub mod state;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Body;
use crate::config::ServerConfig;

/// Limits every connection of a listener gets.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// The listener's name in logs and metrics (`data`, `admin`).
    pub listener: &'static str,
    /// The first request's head must be complete within this of the accept.
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight is closed after this.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub http2_keep_alive_interval: Duration,
    pub shutdown_grace: Duration,
}

impl ConnLimits {
    /// The data plane's limits, with `max_connections` already fitted to the process's
    /// descriptor budget.
    pub fn from_config(server: &ServerConfig, max_connections: usize) -> Self {
        Self {
            listener: "data",
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_header_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
            max_connections,
            http2_keep_alive_interval: server.http2_keep_alive_interval,
            shutdown_grace: server.shutdown_grace,
        }
    }

    /// The admin listener's: the same deadlines, a small cap of its own.
    #[must_use]
    pub fn admin(&self) -> Self {
        Self { listener: "admin", max_connections: ADMIN_MAX_CONNECTIONS, ..self.clone() }
    }
}

/// Open connections the admin listener accepts (probes and a scraper need a handful).
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// hyper's own limits on a request head are this many times the configured ones: a
/// head between the two reaches the pipeline, which answers 431 in the JSON shape of
/// every other error (see [`head_within_limits`]); only a head past hyper's backstop
/// gets hyper's bare 431.
const HYPER_BACKSTOP: usize = 2;

/// The builders one listener serves its connections with.
///
/// `auto` tells HTTP/2 from HTTP/1 by reading a connection's first bytes itself and
/// handing them back to hyper as a first read of their own (up to 24 bytes): hyper then
/// reads the rest of the request head behind them, past its 8 KiB buffer, which grows to
/// 16 KiB for the life of the connection. A connection whose protocol is known before
/// hyper reads (by a peek at a plain connection's first bytes, or TLS's ALPN) is served
/// by `http1` or `http2` directly, and its first read is the whole head. An HTTP/1
/// connection served by hyper's own HTTP/1 builder is also 880 bytes smaller than one
/// served through `auto`'s connection, which has room for either protocol.
#[derive(Debug)]
struct Builders {
    auto: Builder<TokioExecutor>,
    http1: hyper::server::conn::http1::Builder,
    http2: Builder<TokioExecutor>,
}

/// A connection's protocol, when known before hyper reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

impl Builders {
    fn new(limits: &ConnLimits) -> Self {
        let auto = builder(limits);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        let (max_buf_size, max_headers) = hyper_head_limits(limits);
        // the same settings as `builder`'s HTTP/1 side
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(max_buf_size)
            .max_headers(max_headers);
        Self { http1, http2: auto.clone().http2_only(), auto }
    }
}

/// What every HTTP/2 connection sends first (RFC 9113, section 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol of a plain connection from the first bytes it sent, peeked (they stay
/// to be read by hyper): HTTP/1 once they differ from HTTP/2's preface, HTTP/2 once the
/// whole preface is there. `None` when undecided (fewer bytes than the preface, all of
/// them its start; nothing sent; an error): hyper's own detection then decides.
fn protocol_of(first: &[u8]) -> Option<Protocol> {
    let first = first.get(..HTTP2_PREFACE.len()).unwrap_or(first);
    if first.is_empty() {
        None
    } else if !HTTP2_PREFACE.starts_with(first) {
        Some(Protocol::Http1)
    } else if first.len() == HTTP2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// Peek at a plain connection's first bytes (see [`protocol_of`]).
async fn sniff(stream: &tokio::net::TcpStream) -> Option<Protocol> {
    let mut first = [0u8; HTTP2_PREFACE.len()];
    match stream.peek(&mut first).await {
        Ok(n) => protocol_of(first.get(..n)?),
        Err(_) => None,
    }
}

/// A TLS connection's protocol from the one ALPN chose.
fn protocol_of_alpn(alpn: Option<&[u8]>) -> Option<Protocol> {
    match alpn {
        Some(b"h2") => Some(Protocol::Http2),
        Some(b"http/1.1") => Some(Protocol::Http1),
        _ => None,
    }
}

/// hyper's limits on a request head: its HTTP/1 read buffer, and its header count.
fn hyper_head_limits(limits: &ConnLimits) -> (usize, usize) {
    (limits.max_header_bytes.saturating_mul(HYPER_BACKSTOP), limits.max_headers.saturating_mul(HYPER_BACKSTOP))
}

fn builder(limits: &ConnLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    let (head_bytes, max_headers) = hyper_head_limits(limits);
    // the same settings as `Builders::new`'s HTTP/1 builder
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(head_bytes)
        .max_headers(max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(head_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_interval);
    builder
}

/// Whether a request head fits the configured limits: at most `max_headers` fields, and
/// at most `max_header_bytes` for the target and the fields (name, value and the four
/// bytes of `: ` and CRLF each), as HTTP/1 would send them.
pub fn head_within_limits<B>(request: &hyper::Request<B>, max_header_bytes: usize, max_headers: usize) -> bool {
    let headers = request.headers();
    if headers.len() > max_headers {
        return false;
    }
    let target = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let fields: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    target + fields <= max_header_bytes
}

/// What one connection is doing, for its deadlines.
#[derive(Debug)]
struct Activity {
    /// Requests whose response (body included) is not finished.
    in_flight: AtomicUsize,
    /// Requests started on this connection.
    started: AtomicUsize,
    /// When the connection last went idle (accept, or the end of its last response).
    idle_since: std::sync::Mutex<Instant>,
}

/// Held by a request from the service call until its response body is dropped.
struct Busy(Arc<Activity>);

impl Activity {
    /// A connection accepted at `accepted`, idle since then.
    fn new(accepted: Instant) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            idle_since: std::sync::Mutex::new(accepted),
        })
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// When the connection must be closed if nothing changes; `None` while a request
    /// is in flight (its own timeouts bound it).
    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.idle_since.lock().map(|t| *t).unwrap_or_else(|poisoned| *poisoned.into_inner());
        let allowed =
            if self.started.load(Ordering::Relaxed) == 0 { limits.header_read_timeout } else { limits.idle_timeout };
        Some(since + allowed)
    }
}

impl Busy {
    /// Nothing: lets a closure own the guard (and so the request stay in flight).
    fn touch(&self) {}
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(mut since) = self.0.idle_since.lock()
        {
            *since = Instant::now();
        }
    }
}

/// What a request knows of the connection it came on.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub peer: SocketAddr,
}

/// What every accept loop of one listener shares: its limits and builders, its cap on
/// open connections, its TLS configuration, and its connections, drained together.
struct Listening {
    limits: Arc<ConnLimits>,
    builders: Arc<Builders>,
    slots: Arc<Semaphore>,
    tls: Option<Arc<tls::ReloadingTls>>,
    connections: TaskTracker,
    /// Finish what is in flight, take nothing new.
    draining: CancellationToken,
    /// Drop it all.
    closing: CancellationToken,
}

/// Where a listener's connections are accepted.
pub enum Accepting {
    /// On the calling runtime, which serves them too.
    Here(TcpListener),
    /// On every data-plane core, each from its own copy of the listening socket,
    /// registered with that core's reactor (see [`cores`]).
    OnCores(Arc<cores::Cores>, Vec<TcpListener>),
}

impl std::fmt::Debug for Accepting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Here(listener) => f.debug_tuple("Here").field(&listener.local_addr().ok()).finish(),
            Self::OnCores(_, listeners) => f.debug_struct("OnCores").field("cores", &listeners.len()).finish(),
        }
    }
}

impl Accepting {
    /// `listener` accepted on every core of `cores`. The copies are made and registered
    /// here, before anything is served, so that a listener that cannot be shared (out
    /// of descriptors) fails the start instead of leaving a core, or the whole listener,
    /// accepting nothing while the sidecar says it is ready.
    pub async fn on_cores(listener: TcpListener, cores: &Arc<cores::Cores>) -> std::io::Result<Self> {
        let listener = listener.into_std()?;
        let mut copies = Vec::with_capacity(cores.len());
        for _ in 1..cores.len() {
            copies.push(listener.try_clone()?);
        }
        copies.push(listener);
        let mut registered = Vec::with_capacity(copies.len());
        for (core, copy) in copies.into_iter().enumerate() {
            let on_core = cores.spawn(core, async move { TcpListener::from_std(copy) });
            registered.push(on_core.await.map_err(std::io::Error::other)??);
        }
        Ok(Self::OnCores(cores.clone(), registered))
    }
}

/// Serve `handler` on the connections `accepting` takes until `shutdown`, then drain.
pub async fn serve<H, F>(
    accepting: Accepting,
    tls: Option<Arc<tls::ReloadingTls>>,
    limits: ConnLimits,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(hyper::Request<Incoming>, Inbound) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let limits = Arc::new(limits);
    let listening = Arc::new(Listening {
        builders: Arc::new(Builders::new(&limits)),
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        limits,
        tls,
        connections: TaskTracker::new(),
        draining: CancellationToken::new(),
        closing: CancellationToken::new(),
    });
    let name = listening.limits.listener;
    match accepting {
        Accepting::Here(listener) => listening.clone().accept(listener, None, shutdown, handler).await,
        Accepting::OnCores(cores, listeners) => {
            let mut loops = Vec::with_capacity(listeners.len());
            for (core, listener) in listeners.into_iter().enumerate() {
                let (listening, place) = (listening.clone(), Some((cores.clone(), core)));
                let (shutdown, handler) = (shutdown.clone(), handler.clone());
                loops.push(cores.spawn(core, listening.accept(listener, place, shutdown, handler)));
            }
            for ended in loops {
                if let Err(e) = ended.await {
                    tracing::error!(listener = name, error = %e, "a core's accept loop ended early");
                }
            }
        }
    }
    let Listening { limits, connections, draining, closing, .. } = listening.as_ref();
    draining.cancel();
    connections.close();
    tokio::select! {
        () = connections.wait() => tracing::debug!(listener = name, "all connections drained"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(listener = name, grace = ?limits.shutdown_grace, "shutdown grace elapsed; closing the connections left");
            closing.cancel();
            connections.wait().await;
        }
    }
}

impl Listening {
    /// Accept on `listener` until `shutdown`. On a core (`place`: the cores and this
    /// one's index), a connection is served here unless another core has fewer open by
    /// more than one (see [`cores::Cores::seat_from`]); off the cores, on this runtime.
    async fn accept<H, F>(
        self: Arc<Self>,
        listener: TcpListener,
        place: Option<(Arc<cores::Cores>, usize)>,
        shutdown: CancellationToken,
        handler: H,
    ) where
        H: Fn(hyper::Request<Incoming>, Inbound) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = hyper::Response<Body>> + Send + 'static,
    {
        let listener_name = self.limits.listener;
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // e.g. out of file descriptors: back off instead of spinning
                        tracing::warn!(listener = listener_name, error = %e, "accept failed");
                        metrics::counter!("authz_accept_errors_total", "listener" => listener_name).increment(1);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                tracing::debug!(listener = listener_name, %peer, "connection refused: at max_connections");
                metrics::counter!("authz_connections_refused_total", "listener" => listener_name).increment(1);
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let accepted = Accepted {
                peer,
                // the TLS configuration loaded last, for the life of this connection
                tls: self.tls.as_ref().map(|tls| tls.acceptor()),
                builders: self.builders.clone(),
                limits: self.limits.clone(),
                draining: self.draining.clone(),
                closing: self.closing.clone(),
                slot,
            };
            let handler = handler.clone();
            let Some((cores, here)) = &place else {
                self.connections.spawn(accepted.serve(stream, handler));
                continue;
            };
            let seat = cores.seat_from(*here);
            if seat.core() == *here {
                self.connections.spawn(async move {
                    let _seat = seat;
                    accepted.serve(stream, handler).await;
                });
                continue;
            }
            // registered with the other core's reactor instead of this one's
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(listener = listener_name, %peer, error = %e, "cannot hand a connection to a core");
                    continue;
                }
            };
            cores.spawn(
                seat.core(),
                self.connections.track_future(async move {
                    let _seat = seat;
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => accepted.serve(stream, handler).await,
                        Err(e) => tracing::warn!(%peer, error = %e, "a core cannot take a connection"),
                    }
                }),
            );
        }
    }
}

/// An accepted connection and what serving it takes.
struct Accepted {
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builders: Arc<Builders>,
    limits: Arc<ConnLimits>,
    draining: CancellationToken,
    closing: CancellationToken,
    /// Its place under the listener's cap, given back when it ends.
    slot: tokio::sync::OwnedSemaphorePermit,
}

impl Accepted {
    /// Serve the connection on `stream` until it ends.
    async fn serve<H, F>(self, stream: tokio::net::TcpStream, handler: H)
    where
        H: Fn(hyper::Request<Incoming>, Inbound) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = hyper::Response<Body>> + Send + 'static,
    {
        let Self { peer, tls, builders, limits, draining, closing, slot } = self;
        let listener_name = limits.listener;
        metrics::gauge!("authz_connections_open", "listener" => listener_name).increment(1.0);
        let accepted = Instant::now();
        match tls {
            None => {
                // the first bytes, peeked within the first request's deadline (past
                // it, the connection loop closes the connection and counts it)
                let peeked = tokio::time::timeout_at(accepted + limits.header_read_timeout, sniff(&stream));
                let protocol = tokio::select! {
                    () = closing.cancelled() => None,
                    () = draining.cancelled() => None,
                    protocol = peeked => Some(protocol.ok().flatten()),
                };
                // (none: shut down before the client said anything)
                if let Some(protocol) = protocol {
                    serve_connection(stream, peer, &builders, protocol, &limits, handler, accepted, &draining, &closing).await;
                }
            }
            // boxed: a TLS connection's state would otherwise make every plain
            // connection's task as large
            Some(acceptor) => Box::pin(async {
                let handshake = tokio::time::timeout_at(accepted + limits.header_read_timeout, acceptor.accept(stream));
                let stream = tokio::select! {
                    () = closing.cancelled() => None,
                    result = handshake => match result {
                        Ok(Ok(stream)) => Some(stream),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            None
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            metrics::counter!("authz_connections_timed_out_total", "listener" => listener_name, "phase" => "first_request").increment(1);
                            None
                        }
                    },
                };
                if let Some(stream) = stream {
                    let protocol = protocol_of_alpn(stream.get_ref().1.alpn_protocol());
                    serve_connection(stream, peer, &builders, protocol, &limits, handler, accepted, &draining, &closing).await;
                }
            })
            .await,
        }
        metrics::gauge!("authz_connections_open", "listener" => listener_name).decrement(1.0);
        drop(slot);
    }
}

/// Drive one connection under its deadlines (see the module documentation).
#[expect(clippy::too_many_arguments, reason = "one call site; the pieces of one connection")]
async fn serve_connection<IO, H, F>(
    io: IO,
    peer: SocketAddr,
    builders: &Builders,
    protocol: Option<Protocol>,
    limits: &ConnLimits,
    handler: H,
    accepted: Instant,
    draining: &CancellationToken,
    closing: &CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(hyper::Request<Incoming>, Inbound) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let activity = Activity::new(accepted);
    let tracked = activity.clone();
    let service = service_fn(move |mut request| {
        let busy = tracked.begin();
        // hyper reads on as soon as this returns: let it read into the buffer it has
        head::detach(&mut request);
        // hyper keeps room for the service's future for the life of the connection: the
        // request's future (kilobytes) is boxed for the life of the request instead, so
        // an idle keep-alive connection holds none of it
        let response = Box::pin(handler(request, Inbound { peer }));
        async move {
            let response = response.await;
            // the request stays in flight until its response body is done or dropped
            Ok::<_, Infallible>(response.map(|body| {
                body.map_frame(move |frame| {
                    busy.touch();
                    frame
                })
                .boxed_unsync()
            }))
        }
    });
    let io = TokioIo::new(io);
    let watch = Watch { peer, activity: &activity, limits, draining, closing };
    match protocol {
        Some(Protocol::Http1) => {
            let connection = builders.http1.serve_connection(io, service);
            watch.run(connection, |connection| connection.graceful_shutdown()).await;
        }
        // boxed: `auto`'s connection has room for HTTP/2, which an HTTP/1 connection's
        // task would otherwise carry
        Some(Protocol::Http2) => {
            let connection = builders.http2.serve_connection(io, service);
            Box::pin(watch.run(connection, |connection| connection.graceful_shutdown())).await;
        }
        None => {
            let connection = builders.auto.serve_connection(io, service);
            Box::pin(watch.run(connection, |connection| connection.graceful_shutdown())).await;
        }
    }
}

/// What drives one connection to its end under its deadlines.
struct Watch<'a> {
    peer: SocketAddr,
    activity: &'a Activity,
    limits: &'a ConnLimits,
    draining: &'a CancellationToken,
    closing: &'a CancellationToken,
}

impl Watch<'_> {
    /// Drive `connection` until it ends, the listener closes, or a deadline passes;
    /// `graceful` asks it to finish what is in flight and take nothing new.
    async fn run<C, E>(self, connection: C, graceful: impl Fn(std::pin::Pin<&mut C>))
    where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let Self { peer, activity, limits, draining, closing } = self;
        tokio::pin!(connection);
        let mut shutting_down = false;
        loop {
            // with a request in flight there is no deadline here; look again shortly
            let wake = activity.deadline(limits).unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = draining.cancelled(), if !shutting_down => {
                    graceful(connection.as_mut());
                    shutting_down = true;
                }
                () = closing.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {
                    // looked at again: a request may have started while this slept
                    if activity.deadline(limits).is_some_and(|d| d <= Instant::now()) {
                        let phase = if activity.started.load(Ordering::Relaxed) == 0 { "first_request" } else { "idle" };
                        tracing::debug!(%peer, phase, "connection closed: deadline passed");
                        metrics::counter!("authz_connections_timed_out_total", "listener" => limits.listener, "phase" => phase).increment(1);
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_http1_once_its_first_bytes_leave_the_http2_preface() {
        for first in [&b"G"[..], b"GET / HTTP/1.1\r\n", b"POST", b"PRI * HTTP/1.1\r\n", b"PRX", b"\x16\x03\x01"] {
            assert_eq!(protocol_of(first), Some(Protocol::Http1), "{first:?}");
        }
        let mut long = HTTP2_PREFACE.to_vec();
        long.extend_from_slice(b"\x00\x00\x00\x04");
        assert_eq!(protocol_of(HTTP2_PREFACE), Some(Protocol::Http2));
        assert_eq!(protocol_of(&long), Some(Protocol::Http2));
        // the preface's start, or nothing yet: hyper's own detection decides
        for first in [&b""[..], b"P", b"PRI * HTTP/2.0\r\n", &HTTP2_PREFACE[..23]] {
            assert_eq!(protocol_of(first), None, "{first:?}");
        }
        // a difference past the first byte still tells
        let mut almost = *HTTP2_PREFACE;
        almost[23] = b'x';
        assert_eq!(protocol_of(&almost), Some(Protocol::Http1));
    }

    /// Every open connection's task holds its serving future: an HTTP/1 connection's
    /// holds hyper's HTTP/1 connection alone, not `auto`'s room for HTTP/2 as well.
    #[tokio::test]
    async fn an_http1_connections_task_holds_no_room_for_http2() {
        let limits = ConnLimits {
            listener: "data",
            max_connections: 1,
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
            max_header_bytes: 8192,
            max_headers: 100,
            http2_keep_alive_interval: Duration::from_secs(1),
        };
        let builders = Builders::new(&limits);
        let (io, _) = tokio::io::duplex(64);
        let (draining, closing) = (CancellationToken::new(), CancellationToken::new());
        let handler =
            |_request: hyper::Request<Incoming>, _inbound: Inbound| async { hyper::Response::new(Body::default()) };
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let serving = serve_connection(
            io,
            peer,
            &builders,
            Some(Protocol::Http1),
            &limits,
            handler,
            Instant::now(),
            &draining,
            &closing,
        );
        let size = std::mem::size_of_val(&serving);
        assert!(size <= 2048, "an HTTP/1 connection's task holds {size} bytes");
    }

    #[test]
    fn alpn_names_the_protocol_and_anything_else_is_left_to_hyper() {
        assert_eq!(protocol_of_alpn(Some(b"h2")), Some(Protocol::Http2));
        assert_eq!(protocol_of_alpn(Some(b"http/1.1")), Some(Protocol::Http1));
        assert_eq!(protocol_of_alpn(Some(b"h3")), None);
        assert_eq!(protocol_of_alpn(None), None);
    }
}
