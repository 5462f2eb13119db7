//! Upstream connections owned by the inbound connection that uses them.
//!
//! hyper-util's pooled client runs every upstream connection as a task of its own: a
//! forwarded request is handed to that task through a channel and its response handed
//! back, a task switch each way and a pool checkout per request (see `bench/README.md`).
//! Here an inbound connection keeps one upstream connection per upstream in its own
//! [`UpstreamSlots`] and drives it itself: from the request's own future while the
//! response head is awaited, and from the response body while it streams. No task, no
//! channel between tasks; the next request on the inbound connection reuses it.
//!
//! - A connection goes back to its slot only when its response body has ended. A body
//!   cut short (the client went away) closes it, since it could not be reused.
//! - Before reuse it is polled once: a connection the upstream closed (its keep-alive
//!   ran out) is seen there, and a new one is made. If the upstream closes it between
//!   that look and the request being written, hyper gives the request back unsent and it
//!   goes on a new connection, once. A request already written is never sent twice.
//! - Plain `http://` upstreams only (a sidecar's app is on the same host or pod); an
//!   `https://` upstream (TLS, perhaps HTTP/2 by ALPN) uses the pooled client. So does a
//!   request that finds its inbound connection's upstream connection busy, which only
//!   happens on an HTTP/2 inbound connection with several streams in flight.
//! - An inbound connection holds at most one owned connection per upstream, which the
//!   descriptor budget already counts (see [`crate::server::limits`]), and closes it
//!   when it closes itself.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

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

type Connection = http1::Connection<TokioIo<TcpStream>, Body>;

/// The upstream connections of one inbound connection, by upstream `host:port`: an
/// idle connection (its last response ended), or `None` while a request uses it.
#[derive(Default)]
pub(crate) struct UpstreamSlots {
    slots: Mutex<Vec<(String, Option<Owned>)>>,
}

impl std::fmt::Debug for UpstreamSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSlots").finish_non_exhaustive()
    }
}

impl UpstreamSlots {
    /// The right to send a request to `uri`'s upstream on a connection of this inbound
    /// connection's own; `None` when the upstream is not plain HTTP or its connection is
    /// in use by another request (then the pooled client sends it).
    pub(crate) fn claim(self: &Arc<Self>, uri: &Uri) -> Option<Claim> {
        if uri.scheme() != Some(&Scheme::HTTP) {
            return None;
        }
        let authority = uri.authority()?;
        let address = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
        let mut slots = self.slots.lock().ok()?;
        let idle = match slots.iter_mut().find(|(key, _)| *key == address) {
            // in use: this is a second stream of an HTTP/2 connection
            Some((_, None)) => return None,
            Some((_, slot)) => slot.take(),
            None => {
                slots.push((address.clone(), None));
                None
            }
        };
        drop(slots);
        Some(Claim { slots: self.clone(), address, idle, settled: false })
    }

    /// End `address`'s claim: keep `owned` for the next request, or forget the slot.
    fn settle(&self, address: &str, owned: Option<Owned>) {
        let Ok(mut slots) = self.slots.lock() else { return };
        match owned {
            Some(owned) => {
                if let Some((_, slot)) = slots.iter_mut().find(|(key, _)| key == address) {
                    *slot = Some(owned);
                }
            }
            None => slots.retain(|(key, _)| key != address),
        }
    }
}

/// One request's use of its inbound connection's upstream connection: whatever happens
/// to the request, the slot is settled when the claim ends (kept idle only from a body
/// that ended; otherwise emptied).
pub(crate) struct Claim {
    slots: Arc<UpstreamSlots>,
    address: String,
    idle: Option<Owned>,
    settled: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.settled {
            self.slots.settle(&self.address, None);
        }
    }
}

impl Claim {
    /// Send `request` (its URI absolute, as for the pooled client) and return the
    /// response, whose body drives the connection until it ends.
    pub(crate) async fn send(
        mut self,
        mut request: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Response<Body>, BoxError> {
        to_origin_form(&mut request);
        if let Some(idle) = self.idle.take()
            && let Some(mut owned) = idle.ready().await
        {
            match owned.exchange(request).await {
                Ok(response) => return Ok(self.respond(owned, response)),
                // closed by the upstream before the request was written: a new connection
                Err(Exchange::Unsent(unsent)) => request = *unsent,
                Err(Exchange::Failed(error)) => return Err(error),
            }
        }
        let mut owned = Owned::connect(&self.address, connect_timeout).await?;
        match owned.exchange(request).await {
            Ok(response) => Ok(self.respond(owned, response)),
            Err(Exchange::Unsent(_)) => Err("the upstream closed a new connection before the request was sent".into()),
            Err(Exchange::Failed(error)) => Err(error),
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
    {
        let host = match authority.port_u16() {
            Some(port) if port != 80 => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        if let Ok(value) = HeaderValue::from_str(&host) {
            request.headers_mut().insert(header::HOST, value);
        }
    }
    let target = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(target);
}

/// A connection and the handle that sends on it.
struct Owned {
    send: http1::SendRequest<Body>,
    /// `None` once the connection has finished (closed by either side, or failed).
    conn: Option<Connection>,
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
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
        metrics::counter!("authz_upstream_connections_total").increment(1);
        Ok(Self { send, conn: Some(conn) })
    }

    /// Poll the connection until it is ready for a request, or gone (`None`).
    async fn ready(mut self) -> Option<Self> {
        let ready = poll_fn(|cx| {
            if !self.drive(cx) {
                return Poll::Ready(false);
            }
            self.send.poll_ready(cx).map(|ready| ready.is_ok())
        })
        .await;
        ready.then_some(self)
    }

    /// Poll the connection (reading and writing what it can); `false` once it has
    /// finished.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = self.conn.as_mut() else { return false };
        match Pin::new(conn).poll(cx) {
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
        let Some(mut claim) = self.claim.take() else { return };
        // only a connection whose response was read to its end can carry another
        let ended = self.ended || self.inner.is_end_stream();
        let owned = self.owned.take().filter(|owned| ended && owned.conn.is_some());
        claim.settled = true;
        claim.slots.settle(&claim.address, owned);
    }
}
