//! HTTP/1 on hyper (`server.http1_engine = "hyper"`): each plain or TLS HTTP/1 connection the
//! front accepts is served by hyper 1.x's server codec, every request gets the one decision
//! ([`Decider`]), and proxied requests go upstream over hyper's client codec on pooled
//! connections that pingora's transport connector opens (TCP, and TLS with the route's SNI
//! and the configured roots). Pingora keeps the listeners, TLS handshakes, HTTP/2, health
//! checks and the upgrade hand-over; the front keeps admission and the head deadlines.
//!
//! What the pingora engine does, this does the same way, through the same functions:
//! - head deadlines: the front's [`Connection`] (set when a head is in, started again when an
//!   answer is done) and its sweeper; slow writes to the client: `server.send_timeout_ms`;
//! - own endpoints: bodies bounded in size and time, answered with CORS and the request id;
//! - proxying: the client's hop-by-hop headers and identity headers gone, the gateway's set
//!   ([`Decider::upstream_headers`]); another upstream of the route after a refused connect;
//!   the route's read timeout on the answer's head (while the request body is still moving
//!   it waits) and on each read of its body; 502/504 in FastAPI's shape; WebSocket and other
//!   upgrades relayed, closed when the user is shut out or the upstream is silent for the
//!   read timeout;
//! - metrics and the access line ([`served::record`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::prelude::HttpPeer;
use pingora::protocols::Stream;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::Peer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::edge::decision::{Decided, Decider, Head, Next};
use crate::edge::front::{self, ClientTimeouts, Connection, Deadlines, UntilCutOff};
use crate::edge::identity;
use crate::edge::routes::Endpoint;
use crate::edge::served;
use crate::own::api::{ApiError, Reply};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// How many idle connections each thread keeps per upstream (address, TLS name and options).
const IDLE_PER_UPSTREAM: usize = 128;

/// An idle upstream connection, and since when.
type Idle = (SendRequest<Upload>, Instant);

/// How long a pooled connection must have been idle before a request sent on it keeps a copy
/// of its head, to be sent again should the upstream have closed the connection meanwhile
/// (upstreams close idle connections after their keep-alive timeout, Node's after 5 s).
/// Connections in steady use are reused within milliseconds and skip the copy.
const RISKY_IDLE: Duration = Duration::from_millis(500);

/// How long a connection whose answer is done may take to send the rest of its request body
/// and still go back to the pool.
const LAST_SEND: Duration = Duration::from_secs(5);

/// How much of a refused own-endpoint body is read and dropped before answering 413.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// Upgraded connections' relays, started once the 101 has gone out.
type Relay = Pin<Box<dyn Future<Output = ()> + Send>>;
type RelaySlot = Arc<Mutex<Option<Relay>>>;

/// The hyper engine: the decision, the upstream pool and the codecs' settings.
pub struct H1 {
    decider: Decider,
    endpoint_metrics: Vec<crate::metrics::RequestMetrics>,
    connector: TransportConnector,
    /// Idle upstream connections by [`PoolKey`].
    idle: Mutex<HashMap<PoolKey, Vec<Idle>, foldhash::fast::RandomState>>,
    server: hyper::server::conn::http1::Builder,
    deadlines: &'static Deadlines,
    timeouts: ClientTimeouts,
}

impl H1 {
    pub fn new(
        decider: Decider,
        conf: &ServerConf,
        deadlines: &'static Deadlines,
        timeouts: ClientTimeouts,
    ) -> H1 {
        let mut server = hyper::server::conn::http1::Builder::new();
        server
            .timer(TokioTimer::new())
            // The head deadline is the front's; hyper's own timer is off.
            .header_read_timeout(None)
            .keep_alive(decider.edge.keepalive_seconds > 0)
            // Larger than `server.max_header_bytes`, which the decision holds heads to with a
            // 431 in the seed's shape; these only stop what could not be answered at all (as
            // pingora's 1 MiB buffer does). At most 100 header lines (hyper's default, 431
            // beyond): a larger limit costs an allocation and its initialisation per head
            // (78k instructions a request at 4096).
            .max_buf_size(1024 * 1024 + 8192)
            .max_header_size(1024 * 1024)
            .auto_date_header(false)
            .half_close(false);
        H1 {
            decider,
            endpoint_metrics: served::endpoint_metrics(),
            connector: TransportConnector::new(Some(ConnectorOptions::from_server_conf(conf))),
            idle: Mutex::new(HashMap::default()),
            server,
            deadlines,
            timeouts,
        }
    }

    /// Serves one HTTP/1 connection until it closes, is cut off at a head deadline or shut
    /// out, or (after shutdown) goes idle; then its upgraded relay, if a request upgraded it.
    pub async fn serve(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
        conn: Arc<Connection>,
    ) {
        let over_tls = stream.get_ssl_digest().is_some();
        let relay: RelaySlot = Arc::default();
        let service = {
            let (this, conn, relay) = (Arc::clone(self), Arc::clone(&conn), Arc::clone(&relay));
            hyper::service::service_fn(move |req| {
                let (this, conn, relay) =
                    (Arc::clone(&this), Arc::clone(&conn), Arc::clone(&relay));
                async move { Ok::<_, Infallible>(this.handle(req, conn, over_tls, relay).await) }
            })
        };
        conn.await_head(self.deadlines, self.timeouts.head);
        let io = TokioIo::new(SendLimit::new(stream, self.timeouts.send));
        let connection = self.server.serve_connection(io, service).with_upgrades();
        tokio::pin!(connection);
        let mut shutdown = shutdown.clone();
        let served = async {
            // Once the listener stops, answers close their connections (`front::draining`);
            // an idle one gets `front::LINGER` to send its request, then goes.
            let linger = async {
                if !*shutdown.borrow() {
                    let _ = shutdown.changed().await;
                }
                tokio::time::sleep(front::LINGER).await;
            };
            tokio::pin!(linger);
            let mut lingered = false;
            loop {
                tokio::select! {
                    done = connection.as_mut() => return Some(done),
                    () = &mut linger, if !lingered => {
                        lingered = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        };
        tokio::pin!(served);
        let Some(Ok(())) = (UntilCutOff {
            request: served,
            conn: &conn,
        })
        .await
        else {
            return;
        };
        let upgraded = relay.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(relay) = upgraded {
            let relay = async {
                relay.await;
                Some(())
            };
            tokio::pin!(relay);
            UntilCutOff {
                request: relay,
                conn: &conn,
            }
            .await;
        }
    }

    /// One request: the decision, then the answer, the own endpoint's or the upstream's.
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<Connection>,
        over_tls: bool,
        relay: RelaySlot,
    ) -> Response<Out> {
        conn.head_in();
        let edge = &self.decider.edge;
        let started = (edge.count_requests || edge.access_log).then(Instant::now);
        let (mut parts, body) = req.into_parts();
        let mut decided = Decided {
            over_tls,
            ..Decided::default()
        };
        let head = Head::of(&parts, conn.client.ip);
        let mut next = self.decider.decide(&head, &mut decided);
        let mut close = decided.close || front::draining() || edge.keepalive_seconds == 0;
        let mut error = None;
        let (method, path) = (parts.method.clone(), started.map(|_| parts.uri.clone()));
        let head_only = parts.method == Method::HEAD;
        let mut resp = loop {
            match next {
                Next::FetchUser(pending) => {
                    next = self.decider.fetch_user(pending, &mut decided).await;
                }
                Next::Preflight(reply) => {
                    let extra = vec![(identity::REQUEST_ID_NAME, decided.request_id_text())];
                    break answer(reply, extra, head_only);
                }
                Next::Reply(reply) => {
                    break answer(reply, self.decider.response_extras(&decided), head_only);
                }
                Next::Own(endpoint) => {
                    let (reply, closing) = self.own(&parts, body, endpoint, &decided, &conn).await;
                    close |= closing;
                    break answer(reply, self.decider.response_extras(&decided), head_only);
                }
                Next::Proxy { host, cleanup } => {
                    match self
                        .proxy(&mut parts, body, &decided, (host, cleanup), &conn, &relay)
                        .await
                    {
                        Ok(resp) => break resp,
                        Err(failed) => {
                            self.failed(&parts, &decided, &failed);
                            error = Some(failed.error);
                            // As pingora does after a failed attempt: the connection closes.
                            close = true;
                            let reply = Reply::json(
                                failed.status,
                                &serde_json::json!({ "detail": failed.detail() }),
                            );
                            break answer(reply, self.decider.response_extras(&decided), head_only);
                        }
                    }
                }
            }
        };
        if close {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let done = Done {
            conn,
            engine: Arc::clone(&self),
            upgraded,
            record: started.map(|started| {
                Box::new(Record {
                    method,
                    uri: path.unwrap_or_default(),
                    status: resp.status().as_u16(),
                    started,
                    decided,
                    error,
                })
            }),
        };
        resp.map(|body| body.until_done(done))
    }

    /// A gateway-own endpoint's answer; `true`: the connection closes after it (the body was
    /// refused, and may still be arriving).
    async fn own(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
        endpoint: Endpoint,
        decided: &Decided,
        conn: &Connection,
    ) -> (Reply, bool) {
        let body = if endpoint.reads_body() {
            let edge = &self.decider.edge;
            match read_body(parts, body, edge.max_body_bytes, edge.body_timeout).await {
                Ok(body) => body,
                Err(refused) => return (refused.into_reply(), true),
            }
        } else {
            Bytes::new()
        };
        let request = served::own_request(
            &self.decider,
            parts,
            conn.client.ip,
            decided.request_id_text(),
            body,
        );
        let reply = self.decider.app.handle(endpoint, &request).await;
        (reply, false)
    }

    /// Proxies an admitted request to a healthy upstream of its route.
    async fn proxy(
        &self,
        parts: &mut http::request::Parts,
        body: Incoming,
        decided: &Decided,
        (host, cleanup): (Option<HeaderValue>, identity::Cleanup),
        conn: &Arc<Connection>,
        relay: &RelaySlot,
    ) -> Result<Response<Out>, Failed> {
        let route = decided
            .route
            .and_then(|i| self.decider.edge.routes.get(i))
            .ok_or(Failed::new(404, "HTTPStatus", "no route"))?;
        // Another spelling of the path (origin-form, the query as sent), or the target as the
        // client sent it (an absolute-form one too).
        let uri = match decided.upstream_target(&parts.uri) {
            Some(target) => target
                .parse()
                .map_err(|_| Failed::new(400, "InvalidHTTPHeader", "request target"))?,
            None => parts.uri.clone(),
        };
        let client_upgrade = wants_upgrade(&parts.headers)
            .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
            .flatten();
        // Whose session an upgraded connection belongs to, read before the head moves on.
        let authorization = client_upgrade
            .as_ref()
            .and_then(|_| parts.headers.get(http::header::AUTHORIZATION).cloned());
        let mut headers = std::mem::take(&mut parts.headers);
        let peer = (conn.client.ip, conn.client.ip_header.clone());
        self.decider
            .upstream_headers(&mut headers, decided, peer, host, cleanup)
            .map_err(|what| Failed::new(400, "InvalidHTTPHeader", what))?;
        strip_hop_by_hop(&mut headers, client_upgrade.is_some());
        let progress = Arc::new(Progress::default());
        let mut request = Request::new(Upload {
            body: Some(body),
            progress: Arc::clone(&progress),
        });
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;

        let others = route.upstreams.len().saturating_sub(1);
        let mut retries = 0;
        let mut resend;
        let (peer, key, sender, mut response) = loop {
            let Some(peer) = route.upstreams.select() else {
                crate::metrics::metrics().upstream_failed(&route.prefix, "no_healthy_upstream");
                return Err(Failed::new(502, "HTTPStatus", "no healthy upstream"));
            };
            let key = PoolKey::of(&peer);
            let pooled = self.checkout(key);
            let fresh = pooled.is_none();
            // A connection that sat idle may be closed by the upstream just as the request
            // goes out (an upstream's keep-alive timeout): a request without a body is then
            // sent again on a new connection, as pingora does, and needs its head kept.
            resend = match &pooled {
                Some((_, idle_for))
                    if *idle_for >= RISKY_IDLE && request.body().is_end_stream() =>
                {
                    Some(copy_head(&request))
                }
                _ => None,
            };
            let mut sender = match pooled {
                Some((sender, _)) => sender,
                None => match self.connect(&peer).await {
                    Ok(sender) => sender,
                    Err(e) if retries < others => {
                        retries += 1;
                        crate::metrics::metrics().upstream_retried(&route.prefix);
                        self.log(
                            parts,
                            decided,
                            &e,
                            0,
                            "upstream connect failed; trying another",
                        );
                        continue;
                    }
                    Err(e) => {
                        crate::metrics::metrics().upstream_failed(&route.prefix, "connect");
                        return Err(e);
                    }
                },
            };
            let read = peer.options.read_timeout.unwrap_or(Duration::from_secs(60));
            let sending = sender.try_send_request(request);
            match wait_for_head(sending, read, &progress).await {
                Ok(response) => break (peer, key, sender, response),
                // A pooled connection the upstream had closed, and the request not sent:
                // again on a new one.
                Err(Waited::NotSent(again)) if !fresh => {
                    request = *again;
                }
                Err(Waited::NotSent(_)) => {
                    crate::metrics::metrics().upstream_failed(&route.prefix, "other");
                    return Err(Failed::new(502, "ConnectionClosed", "upstream closed"));
                }
                // The client's body broke off or was malformed (the client's fault).
                Err(Waited::Failed(_)) if progress.broken.load(Ordering::Relaxed) => {
                    return Err(Failed::new(400, "InvalidHTTPHeader", "request body"));
                }
                Err(Waited::Failed(e)) => match resend.take() {
                    Some(again) => {
                        request = again;
                        // The pool may hold more connections the upstream has closed.
                        self.forget(key);
                    }
                    None => {
                        crate::metrics::metrics().upstream_failed(&route.prefix, "other");
                        let mut failed = Failed::new(502, "InvalidHTTPHeader", "upstream answer");
                        // hyper's descriptions name the fault, never the bytes.
                        failed.cause = Some(e.to_string());
                        return Err(failed);
                    }
                },
                Err(Waited::TimedOut) => {
                    crate::metrics::metrics().upstream_failed(&route.prefix, "timeout");
                    return Err(Failed::new(504, "ReadTimedout", "upstream read"));
                }
            }
        };
        let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(response.headers_mut(), upgraded);
        self.decider.answer_headers(response.headers_mut(), decided);
        let read = peer.options.read_timeout.unwrap_or(Duration::from_secs(60));
        if upgraded {
            // A 101 the client did not ask for cannot be relayed.
            let Some(client) = client_upgrade else {
                crate::metrics::metrics().upstream_failed(&route.prefix, "other");
                return Err(Failed::new(502, "InvalidHTTPHeader", "unasked upgrade"));
            };
            let upstream = hyper::upgrade::on(&mut response);
            let authorization = authorization.as_ref().map(HeaderValue::as_bytes);
            let registration = served::track_upgrade(&self.decider, authorization, decided, conn);
            let relayed: Relay = Box::pin(async move {
                let _registration = registration;
                if let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) {
                    relay_upgraded(client, upstream, read).await;
                }
            });
            *relay.lock().unwrap_or_else(PoisonError::into_inner) = Some(relayed);
            return Ok(response.map(|_| Out::empty()));
        }
        let (parts_back, body) = response.into_parts();
        // Kept for the next request once this answer's body is done.
        let download = Download {
            body,
            read,
            sleep: None,
            returning: Some((key, sender)),
            engine: None,
        };
        Ok(Response::from_parts(parts_back, Out::download(download)))
    }

    /// An idle connection that can take a request, if the pool has one, and how long it
    /// was idle.
    fn checkout(&self, key: PoolKey) -> Option<(SendRequest<Upload>, Duration)> {
        loop {
            let (sender, since) = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                idle.get_mut(&key)?.pop()?
            };
            // Ready: open, and done with its last exchange (a connection whose upstream
            // answered before the request body was all sent may still be sending it).
            if sender.is_ready() {
                return Some((sender, since.elapsed()));
            }
        }
    }

    /// Gives a connection whose answer has been read back to the pool, once it can take
    /// another request: at once, nearly always; else when it has sent the rest of the request
    /// body (an upstream may answer before reading it all), if within the `LAST_SEND` limit.
    fn checkin(self: &Arc<Self>, key: PoolKey, mut sender: SendRequest<Upload>) {
        if sender.is_closed() {
            return;
        }
        if !sender.is_ready() {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(LAST_SEND, sender.ready()).await {
                    this.keep(key, sender);
                }
            });
            return;
        }
        self.keep(key, sender);
    }

    fn keep(&self, key: PoolKey, sender: SendRequest<Upload>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = idle.entry(key).or_default();
        if kept.len() < IDLE_PER_UPSTREAM {
            kept.push((sender, Instant::now()));
        }
    }

    /// Drops the idle connections to one upstream (this thread's).
    fn forget(&self, key: PoolKey) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.remove(&key);
    }

    /// A new connection to `peer` (TCP, TLS as the route asks, within its connect timeout).
    async fn connect(&self, peer: &HttpPeer) -> Result<SendRequest<Upload>, Failed> {
        let stream = self.connector.new_stream(peer).await.map_err(|e| {
            let mut failed = Failed::new(502, e.etype().as_str(), "upstream connect");
            failed.cause = Some(e.root_cause().to_string());
            failed
        })?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Failed::new(502, "ConnectError", "upstream handshake"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    fn failed(&self, parts: &http::request::Parts, decided: &Decided, failed: &Failed) {
        self.log(parts, decided, failed, failed.status, "proxy failed");
    }

    /// A failed proxy attempt's log line: the error's kind, the request's method and path
    /// (never its query), the cause when it is the operating system's.
    fn log(
        &self,
        parts: &http::request::Parts,
        decided: &Decided,
        e: &Failed,
        status: u16,
        what: &str,
    ) {
        macro_rules! log_at {
            ($level:ident, $source:literal) => {
                tracing::$level!(
                    error = e.error,
                    source = $source,
                    status,
                    method = parts.method.as_str(),
                    path = parts.uri.path(),
                    request_id = decided.request_id.to_str().unwrap_or_default(),
                    during = e.what,
                    cause = e.cause,
                    "{what}"
                )
            };
        }
        // A client that sent something broken is not the operator's problem.
        if e.status == 400 {
            log_at!(debug, "Downstream");
        } else {
            log_at!(warn, "Upstream");
        }
    }
}

/// Where an idle upstream connection is kept: per upstream (pingora's hash of the peer:
/// address, TLS name, options) and per thread, so that a request is relayed by a connection
/// task on its own thread's runtime (each proxy thread runs one) rather than woken across
/// threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    peer: u64,
    thread: u64,
}

impl PoolKey {
    fn of(peer: &HttpPeer) -> PoolKey {
        static THREADS: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static THREAD: u64 = THREADS.fetch_add(1, Ordering::Relaxed);
        }
        PoolKey {
            peer: peer.reuse_hash(),
            thread: THREAD.with(|t| *t),
        }
    }
}

/// Why a proxied request got no upstream answer.
struct Failed {
    status: u16,
    /// The kind, in pingora's names (the access log's `error`).
    error: &'static str,
    what: &'static str,
    cause: Option<String>,
}

impl Failed {
    fn new(status: u16, error: &'static str, what: &'static str) -> Failed {
        Failed {
            status,
            error,
            what,
            cause: None,
        }
    }

    fn detail(&self) -> &'static str {
        http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error")
    }
}

/// How waiting for an upstream's answer head ended, when it did not arrive.
enum Waited {
    /// The connection could not take the request (it is handed back).
    NotSent(Box<Request<Upload>>),
    Failed(hyper::Error),
    TimedOut,
}

/// Waits for the answer's head: no longer than `read` after the request body last moved.
async fn wait_for_head(
    sending: impl Future<
        Output = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Upload>>>,
    >,
    read: Duration,
    progress: &Progress,
) -> Result<Response<Incoming>, Waited> {
    tokio::pin!(sending);
    let mut seen = progress.frames.load(Ordering::Relaxed);
    loop {
        match tokio::time::timeout(read, sending.as_mut()).await {
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(mut e)) => {
                return Err(match e.take_message() {
                    Some(request) => Waited::NotSent(Box::new(request)),
                    None => Waited::Failed(e.into_error()),
                })
            }
            Err(_) => {
                let now = progress.frames.load(Ordering::Relaxed);
                if now == seen {
                    return Err(Waited::TimedOut);
                }
                seen = now;
            }
        }
    }
}

/// A request without a body, again (its body was empty, so nothing of it is lost).
fn copy_head(request: &Request<Upload>) -> Request<Upload> {
    let mut copy = Request::new(Upload {
        body: None,
        progress: Arc::clone(&request.body().progress),
    });
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Whether a request asks for a protocol upgrade (`Connection: upgrade` and `Upgrade`).
fn wants_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers.get_all(CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// Removes the headers that belong to one connection rather than the message (RFC 9110
/// §7.6.1): those `Connection` names, and the fixed ones. An upgrade keeps `Upgrade` and
/// says `Connection: upgrade`. Framing is the codec's (`Content-Length` stays, as sent).
fn strip_hop_by_hop(headers: &mut http::HeaderMap, upgrade: bool) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .filter(|name| *name != UPGRADE)
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION, TE, TRAILER, TRANSFER_ENCODING] {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Relays an upgraded connection both ways until either side ends it, the upstream is silent
/// for `silence` (the route's read timeout) or the client for [`CLIENT_SILENCE`].
async fn relay_upgraded(
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    silence: Duration,
) {
    let (mut client_in, mut client_out) = tokio::io::split(TokioIo::new(client));
    let (mut upstream_in, mut upstream_out) = tokio::io::split(TokioIo::new(upstream));
    let _ = tokio::try_join!(
        relay_one_way(&mut client_in, &mut upstream_out, CLIENT_SILENCE),
        relay_one_way(&mut upstream_in, &mut client_out, silence),
    );
}

/// How long the client of an upgraded connection may stay silent (pingora's engine reads
/// with this timeout too).
const CLIENT_SILENCE: Duration = Duration::from_secs(60);

/// Copies `from` to `to` until `from` ends (then `to` is shut down for writing) or is silent
/// for `silence` (an error, which ends the relay both ways).
async fn relay_one_way(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    silence: Duration,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::time::timeout(silence, from.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
}

/// Why an own endpoint's body was refused.
enum Refused {
    TooLarge,
    TooSlow,
    Broken,
}

impl Refused {
    fn into_reply(self) -> Reply {
        match self {
            Refused::TooLarge => ApiError::PayloadTooLarge.into_reply(),
            Refused::TooSlow => ApiError::BodyTimeout.into_reply(),
            Refused::Broken => ApiError::BodyParse.into_reply(),
        }
    }
}

/// Reads an own endpoint's whole body within `within`, refusing more than `limit` bytes (by
/// the declared length first, then by what arrives). A refused body's rest is read and
/// dropped (up to [`DRAIN_LIMIT`], for two seconds) so the client sees the answer, not a reset.
async fn read_body(
    parts: &http::request::Parts,
    mut body: Incoming,
    limit: usize,
    within: Duration,
) -> Result<Bytes, Refused> {
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let read = async {
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(Refused::TooLarge);
        }
        let mut whole = BytesMut::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let Ok(data) = frame.map_err(|_| Refused::Broken)?.into_data() else {
                continue;
            };
            if whole.len() + data.len() > limit {
                return Err(Refused::TooLarge);
            }
            whole.extend_from_slice(&data);
        }
        Ok(whole.freeze())
    };
    let outcome = tokio::time::timeout(within, read)
        .await
        .unwrap_or(Err(Refused::TooSlow));
    if let Err(Refused::TooLarge) = outcome {
        let drain = async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                seen += frame.data_ref().map_or(0, Bytes::len);
                if seen > DRAIN_LIMIT {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
    outcome
}

/// A gateway answer as the pingora engine writes it: the endpoint's headers, length and type
/// (none on a 204), then `extra` (CORS, request id).
fn answer(reply: Reply, extra: Vec<(&'static str, String)>, head_only: bool) -> Response<Out> {
    let mut resp = Response::new(Out::empty());
    *resp.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.append(name, value);
        }
    }
    if reply.status != 204 {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(reply.body.len()));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    }
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.append(name, value);
        }
    }
    if !head_only && !reply.body.is_empty() {
        *resp.body_mut() = Out::full(reply.body);
    }
    resp
}

/// How far a request body has gone upstream.
#[derive(Default)]
struct Progress {
    /// Frames passed on (see [`wait_for_head`]).
    frames: AtomicU64,
    /// The client's body broke off or was malformed.
    broken: std::sync::atomic::AtomicBool,
}

/// A request's body on its way upstream.
pub struct Upload {
    body: Option<Incoming>,
    progress: Arc<Progress>,
}

impl Body for Upload {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(_))) => {
                self.progress.frames.fetch_add(1, Ordering::Relaxed);
            }
            Poll::Ready(Some(Err(_))) => self.progress.broken.store(true, Ordering::Relaxed),
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or(SizeHint::with_exact(0), Body::size_hint)
    }
}

/// An upstream answer's body: each read within the route's read timeout; the connection goes
/// back to the pool when the body has been read to its end.
struct Download {
    body: Incoming,
    read: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    returning: Option<(PoolKey, SendRequest<Upload>)>,
    engine: Option<Arc<H1>>,
}

/// What the client gets: an answer of the gateway's own or an upstream's.
pub struct Out {
    inner: OutInner,
    done: Option<Done>,
}

enum OutInner {
    Full(Option<Bytes>),
    Download(Box<Download>),
}

impl Out {
    fn empty() -> Out {
        Out {
            inner: OutInner::Full(None),
            done: None,
        }
    }

    fn full(bytes: Bytes) -> Out {
        Out {
            inner: OutInner::Full(Some(bytes)),
            done: None,
        }
    }

    fn download(download: Download) -> Out {
        Out {
            inner: OutInner::Download(Box::new(download)),
            done: None,
        }
    }

    fn until_done(mut self, done: Done) -> Out {
        if let OutInner::Download(download) = &mut self.inner {
            download.engine = Some(Arc::clone(&done.engine));
        }
        self.done = Some(done);
        self
    }
}

impl Body for Out {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut self.inner {
            OutInner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            OutInner::Download(download) => download.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            OutInner::Full(bytes) => bytes.is_none(),
            OutInner::Download(download) => download.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            OutInner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            OutInner::Download(download) => download.body.size_hint(),
        }
    }
}

impl Download {
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.sleep = None;
                match frame {
                    None => {
                        self.give_back();
                        Poll::Ready(None)
                    }
                    Some(Ok(frame)) => {
                        if self.body.is_end_stream() {
                            self.give_back();
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => Poll::Ready(Some(Err(std::io::Error::other(e)))),
                }
            }
            Poll::Pending => {
                let read = self.read;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(read)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(std::io::ErrorKind::TimedOut.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn give_back(&mut self) {
        if let (Some((key, sender)), Some(engine)) = (self.returning.take(), &self.engine) {
            engine.checkin(key, sender);
        }
    }
}

/// What happens when an answer has gone out (or was abandoned): the connection's next head
/// deadline starts, and the request is counted and logged.
struct Done {
    conn: Arc<Connection>,
    engine: Arc<H1>,
    /// A 101: the connection is the relay's now, with no head to wait for.
    upgraded: bool,
    record: Option<Box<Record>>,
}

struct Record {
    method: Method,
    uri: http::Uri,
    status: u16,
    started: Instant,
    decided: Decided,
    error: Option<&'static str>,
}

impl Drop for Done {
    fn drop(&mut self) {
        if !self.upgraded {
            self.conn
                .await_head(self.engine.deadlines, self.engine.timeouts.keepalive);
        }
        if let Some(record) = self.record.take() {
            let done = served::Finished {
                method: record.method.as_str(),
                path: record.uri.path(),
                status: record.status,
                elapsed: record.started.elapsed(),
                client: &self.conn.client.text,
                decided: &record.decided,
                error: record.error,
            };
            served::record(&self.engine.decider, &self.engine.endpoint_metrics, done);
        }
    }
}

/// The client's socket with `server.send_timeout_ms` on each write: a client that stops
/// reading does not hold its request (and upstream connection) for ever.
struct SendLimit {
    io: Stream,
    limit: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SendLimit {
    fn new(io: Stream, limit: Option<Duration>) -> SendLimit {
        SendLimit {
            io,
            limit,
            sleep: None,
        }
    }

    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.sleep = None;
            return poll;
        }
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for SendLimit {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendLimit {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.timed(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.timed(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.timed(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
