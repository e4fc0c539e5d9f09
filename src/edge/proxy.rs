//! The pingora glue: each `ProxyHttp` hook is a few lines that hand over to the pure modules.
//!
//! - `request_filter`: the request's decision ([`Decider::decide`], the one every door shares:
//!   request id, preflight, route, rule, token, user), then the gateway's own endpoints
//!   (answered here, by [`write_reply`], which adds CORS and `X-Request-Id`) or, for routes,
//!   the upstream head ([`Decider::upstream_headers`]: every client-sent identity header
//!   removed, the identity and forwarding headers only the gateway sets added). A proxied
//!   request whose user is in memory is decided without waiting ([`Gateway::decide`]).
//! - `on_connection_reuse`: the connection from the front (head deadline, client address).
//! - `upstream_peer`: a healthy upstream of the route, with the route's timeouts.
//! - `response_filter`: CORS and `X-Request-Id` on upstream responses.
//! - `fail_to_proxy`: 502/504 as FastAPI-shaped JSON, and the failure's log line.
//! - `request_summary`, `suppress_error_log`, `suppress_proxy_warn_log`: pingora's own lines
//!   about failed requests carry the query string and, for a bad upstream head, its raw bytes;
//!   they are replaced by the gateway's ([`log_failure`]), which have neither.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};

use crate::edge::decision::{Decided, Decider, Head, Next};
use crate::edge::front::{Client, Connection};
use crate::edge::identity;
use crate::edge::routes::Endpoint;
use crate::edge::served;
use crate::own::api::{ApiError, Reply};
use crate::own::app::App;

pub struct Gateway {
    /// The one decision (shared by forward auth and every engine), with the gateway's own API
    /// (which answers the own endpoints, and whose caches of tokens and users the proxy path
    /// shares) and the edge.
    decider: Decider,
    /// Each own endpoint's request metrics, in [`Endpoint::ALL`] order (resolved once).
    endpoint_metrics: Vec<crate::metrics::RequestMetrics>,
}

impl Gateway {
    pub fn new(app: Arc<App>, edge: Arc<crate::edge::Edge>) -> Gateway {
        Gateway {
            decider: Decider { app, edge },
            endpoint_metrics: served::endpoint_metrics(),
        }
    }
}

/// Per-request state.
pub struct RequestCtx {
    /// When the request began, for the metrics and the access log (the clock is not read
    /// when both are off).
    started: Option<Instant>,
    /// The client connection (from the front, handed over with each request head).
    connection: Option<Arc<Connection>>,
    /// What the one decision learnt of the request (see [`crate::edge::decision`]).
    decided: Decided,
    connect_retries: usize,
    /// A connection upgraded on behalf of `user`, closed if the user is shut out.
    upgraded: Option<crate::edge::upgraded::Registration>,
}

fn header(session: &Session, name: impl http::header::AsHeaderName) -> Option<&[u8]> {
    session.req_header().headers.get(name).map(|v| v.as_bytes())
}

/// The request's client as the front described it once for the connection, or (should a
/// request arrive without the front's description) as described here into `fallback`.
fn client<'a>(
    session: &Session,
    ctx: &'a RequestCtx,
    fallback: &'a mut Option<Client>,
) -> &'a Client {
    match &ctx.connection {
        Some(conn) => &conn.client,
        None => fallback.insert(Client::of(
            session.client_addr().and_then(|a| a.as_inet()).copied(),
        )),
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Why a body could not be read in full.
enum BodyError {
    TooLarge,
    TooSlow,
    Io(Box<Error>),
}

/// Reads the whole body of a gateway-own request within `within`, refusing more than `limit`
/// bytes (by the declared length first, then by what actually arrives).
async fn read_body(
    session: &mut Session,
    limit: usize,
    within: Duration,
) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(within, read_body_unbounded(session, limit)).await {
        Ok(body) => body,
        Err(_) => Err(BodyError::TooSlow),
    }
}

async fn read_body_unbounded(session: &mut Session, limit: usize) -> Result<Bytes, BodyError> {
    let declared = header(session, http::header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await.map_err(BodyError::Io)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// How much of a refused body is read and dropped before answering 413.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

async fn discard_body(session: &mut Session, limit: usize, within: Duration) {
    let drain = async {
        let mut seen = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            seen += chunk.len();
            if seen > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(within, drain).await;
}

/// Writes a gateway-own answer followed by `extra` headers (CORS, request id).
async fn write_reply(
    session: &mut Session,
    reply: Reply,
    extra: Vec<(&'static str, String)>,
) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD;
    let mut resp =
        ResponseHeader::build(reply.status, Some(4 + reply.headers.len() + extra.len()))?;
    // Starlette's order: the endpoint's own headers, length and type, then CORS.
    for (name, value) in reply.headers {
        resp.append_header(name, value)?;
    }
    // A 204 has neither (RFC 9110 §8.6).
    if reply.status != 204 {
        resp.insert_header("content-length", reply.body.len().to_string())?;
        resp.insert_header("content-type", reply.content_type)?;
    }
    for (name, value) in extra {
        resp.append_header(name, value)?;
    }
    if head_only || reply.body.is_empty() {
        session.write_response_header(Box::new(resp), true).await
    } else {
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(reply.body), true).await
    }
}

/// What a failed proxy attempt is logged with: the error's kind and where it came from, the
/// request's method and path (never its query), and the underlying cause when that is an
/// operating-system or parser error. Pingora's own description of the error is left out: its
/// context can hold raw header bytes (an invalid upstream head is quoted in it).
fn log_failure(session: &Session, ctx: &RequestCtx, e: &Error, status: u16, what: &str) {
    let cause = e.root_cause();
    let cause = (!cause.is::<Error>()).then(|| cause.to_string());
    let req = session.req_header();
    macro_rules! log_at {
        ($level:ident) => {
            tracing::$level!(
                error = e.etype().as_str(),
                source = e.esource().as_str(),
                status,
                method = req.method.as_str(),
                path = req.uri.path(),
                request_id = ctx.decided.request_id.to_str().unwrap_or_default(),
                cause,
                "{what}"
            )
        };
    }
    // A client that went away, or sent something broken, is not the operator's problem.
    if matches!(e.esource(), ErrorSource::Downstream) {
        log_at!(debug);
    } else {
        log_at!(warn);
    }
}

impl Gateway {
    async fn answer_own(
        &self,
        session: &mut Session,
        endpoint: Endpoint,
        request_id: String,
    ) -> Result<Reply> {
        let body = if endpoint.reads_body() {
            match read_body(
                session,
                self.decider.edge.max_body_bytes,
                self.decider.edge.body_timeout,
            )
            .await
            {
                Ok(body) => body,
                Err(BodyError::TooLarge) => {
                    // Read (and drop) a bounded rest of the body so the client finishes sending
                    // and sees the 413 rather than a reset; then close the connection.
                    discard_body(session, DRAIN_LIMIT, Duration::from_secs(2)).await;
                    session.set_keepalive(None);
                    return Ok(ApiError::PayloadTooLarge.into_reply());
                }
                Err(BodyError::TooSlow) => {
                    session.set_keepalive(None);
                    return Ok(ApiError::BodyTimeout.into_reply());
                }
                Err(BodyError::Io(e)) => {
                    // Broken framing (a bad chunk size, a body cut short): the client's fault.
                    tracing::debug!(error = %e, "cannot read request body");
                    session.set_keepalive(None);
                    return Ok(ApiError::BodyParse.into_reply());
                }
            }
        } else {
            Bytes::new()
        };
        let request = served::own_request(
            &self.decider,
            session.req_header(),
            client_ip(session),
            request_id,
            body,
        );
        Ok(self.decider.app.handle(endpoint, &request).await)
    }

    /// Turns the client's request head into the one the upstream gets, in place (pingora
    /// copies the downstream head for each upstream attempt, so a retry does not redo this):
    /// see [`Decider::upstream_headers`].
    ///
    /// The head is edited as a plain `http` header map, without pingora's record of each
    /// name's original case: through `RequestHeader` every added header costs two map
    /// insertions, a name parse and an allocation, and the case record is copied again for
    /// each upstream attempt. Names therefore reach upstreams in lower case (as HAProxy
    /// sends them; HTTP names are case-insensitive). A request target that does not
    /// round-trip through the URI (absolute-form) is carried over verbatim.
    fn prepare_upstream_head(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        host: Option<http::HeaderValue>,
        cleanup: identity::Cleanup,
    ) -> Result<()> {
        let mut fallback = None;
        let client = client(session, ctx, &mut fallback);
        let peer = (client.ip, client.ip_header.clone());
        let req = session.req_header_mut();
        let verbatim_target = match ctx.decided.upstream_target(&req.uri) {
            // Another spelling of the path, in origin-form, the query as sent.
            Some(target) => Some(target.into_bytes()),
            None => (Some(req.raw_path())
                != req.uri.path_and_query().map(|p| p.as_str().as_bytes()))
            .then(|| req.raw_path().to_vec()),
        };
        let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
        let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder));
        let edited =
            self.decider
                .upstream_headers(&mut parts.headers, &ctx.decided, peer, host, cleanup);
        // The head goes back in place whether or not the edit failed.
        *req = RequestHeader::from(parts);
        edited.map_err(|what| Error::explain(InvalidHTTPHeader, what))?;
        match verbatim_target {
            // Parsed from this very request a moment ago (or made from its path by decoding
            // escapes of unreserved characters), so it parses again.
            Some(target) => req.set_raw_path(&target),
            None => Ok(()),
        }
    }

    /// What `request_filter` can decide without waiting for anything: nearly every proxied
    /// request ends here, so that its future (boxed by `async_trait` for every request) stays
    /// small; everything that waits is in [`Gateway::finish_slowly`]. The decision is
    /// [`Decider::decide`]'s, the one every door shares.
    fn decide(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Option<Next>> {
        // Pingora keeps the connection if the client asked to, with no time limit of its own:
        // the front closes one whose next head is not in within the keep-alive time.
        if self.decider.edge.keepalive_seconds == 0 {
            session.set_keepalive(None);
        }
        let req = session.req_header();
        let head = Head {
            method: &req.method,
            uri: &req.uri,
            target_len: req.raw_path().len(),
            headers: &req.headers,
            peer: client_ip(session),
        };
        let next = self.decider.decide(&head, &mut ctx.decided);
        if ctx.decided.close {
            session.set_keepalive(None);
        }
        match next {
            Next::Proxy { host, cleanup } => {
                self.prepare_upstream_head(session, ctx, host, cleanup)?;
                Ok(None)
            }
            next => Ok(Some(next)),
        }
    }

    /// The rest of `request_filter` for requests that wait: on the database, a body, or the
    /// client reading an answer. `Ok(true)`: answered.
    async fn finish_slowly(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut next: Next,
    ) -> Result<bool> {
        let reply = loop {
            match next {
                // The user's state read, the decision ends in one of the others.
                Next::FetchUser(pending) => {
                    next = self.decider.fetch_user(pending, &mut ctx.decided).await;
                }
                Next::Proxy { host, cleanup } => {
                    self.prepare_upstream_head(session, ctx, host, cleanup)?;
                    return Ok(false);
                }
                Next::Preflight(reply) => {
                    let extra = vec![(identity::REQUEST_ID_NAME, ctx.decided.request_id_text())];
                    write_reply(session, reply, extra).await?;
                    return Ok(true);
                }
                Next::Reply(reply) => break reply,
                Next::Own(endpoint) => {
                    break self
                        .answer_own(session, endpoint, ctx.decided.request_id_text())
                        .await?
                }
            }
        };
        let extra = self.decider.response_extras(&ctx.decided);
        write_reply(session, reply, extra).await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules. Pingora's default adds its response compression module (at
    /// level 0, i.e. off), which still builds a context and runs two boxed filters on every
    /// request; the gateway does not compress responses.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: (self.decider.edge.count_requests || self.decider.edge.access_log)
                .then(Instant::now),
            connection: None,
            decided: Decided::default(),
            connect_retries: 0,
            upgraded: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if crate::edge::front::draining() {
            session.set_keepalive(None);
        }
        ctx.decided.over_tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        match self.decide(session, ctx)? {
            // The upstream head is ready.
            None => Ok(false),
            // Boxed: the waiting paths' state (a database query, a body, a write) would
            // otherwise make every request's future kilobytes large.
            Some(pending) => Box::pin(self.finish_slowly(session, ctx, pending)).await,
        }
    }

    /// Called right after each request head is parsed, with the connection the front handed
    /// over: its head deadline stops, and the request keeps it.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        connection: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(conn) = connection.downcast::<Arc<Connection>>() {
            conn.head_in();
            ctx.connection = Some(*conn);
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx
            .decided
            .route
            .and_then(|i| self.decider.edge.routes.get(i))
        else {
            return Err(Error::explain(HTTPStatus(404), "no route"));
        };
        // The route's read timeout holds for upgrade requests too: until a 101 arrives (504
        // beyond), and then as the upgraded connection's limit on upstream silence.
        let Some(peer) = route.upstreams.select() else {
            crate::metrics::metrics().upstream_failed(&route.prefix, "no_healthy_upstream");
            return Err(Error::explain(HTTPStatus(502), "no healthy upstream"));
        };
        Ok(Box::new(peer))
    }

    /// A refused or timed-out connection sent nothing upstream: try the next upstream of the
    /// route (round-robin moves on), at most once per other upstream.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let others = ctx
            .decided
            .route
            .and_then(|i| self.decider.edge.routes.get(i))
            .map_or(0, |r| r.upstreams.len().saturating_sub(1));
        if ctx.connect_retries < others {
            ctx.connect_retries += 1;
            if let Some(route) = ctx
                .decided
                .route
                .and_then(|i| self.decider.edge.routes.get(i))
            {
                crate::metrics::metrics().upstream_retried(&route.prefix);
            }
            e.set_retry(true);
            log_failure(
                session,
                ctx,
                &e,
                0,
                "upstream connect failed; trying another",
            );
        }
        e
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            if let Some(conn) = &ctx.connection {
                let authorization = header(session, http::header::AUTHORIZATION);
                ctx.upgraded =
                    served::track_upgrade(&self.decider, authorization, &ctx.decided, conn);
            }
        }
        // Edited as a plain header map, as the request head is (see `prepare_upstream_head`):
        // header names reach the client in lower case, the reason phrase as the upstream sent it.
        let reason = upstream_response
            .get_reason_phrase()
            .filter(|r| Some(*r) != upstream_response.status.canonical_reason())
            .map(str::to_string);
        let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
        let mut parts =
            http::response::Parts::from(std::mem::replace(upstream_response, placeholder));
        self.decider
            .answer_headers(&mut parts.headers, &ctx.decided);
        *upstream_response = ResponseHeader::from(parts);
        if reason.is_some() {
            upstream_response.set_reason_phrase(reason.as_deref())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            HTTPStatus(code) => *code,
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError
            | ConnectProxyFailure => 502,
            ReadTimedout | WriteTimedout => 504,
            _ => match e.esource() {
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Upstream => 502,
                _ => 500,
            },
        };
        log_failure(session, ctx, e, code, "proxy failed");
        let upstream_kind = match e.etype() {
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError
            | ConnectProxyFailure => Some("connect"),
            ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
                Some("timeout")
            }
            _ if e.esource() == &ErrorSource::Upstream => Some("other"),
            _ => None,
        };
        if let (Some(kind), Some(route)) = (
            upstream_kind,
            ctx.decided
                .route
                .and_then(|i| self.decider.edge.routes.get(i)),
        ) {
            crate::metrics::metrics().upstream_failed(&route.prefix, kind);
        }
        // Pingora closes the connection after a failed proxy attempt: say so in the answer,
        // so that clients do not send their next request into a closing socket.
        session.set_keepalive(None);
        if code > 0 && session.response_written().is_none() {
            let detail = http::StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            let reply = Reply::json(code, &serde_json::json!({ "detail": detail }));
            let extra = self.decider.response_extras(&ctx.decided);
            if let Err(err) = write_reply(session, reply, extra).await {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Pingora's line for a failed request is replaced by [`log_failure`]'s, in `fail_to_proxy`.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    /// Pingora's line for a retried connect is replaced by [`log_failure`]'s, in
    /// `fail_to_connect`.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        true
    }

    /// For whatever else of pingora's mentions the request: method and path, no query.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // On HTTP/2: a stream the client gave up before its answer was complete counts
        // against the connection's budget (see `edge::h2`).
        if session.is_http2() {
            let cancelled = e.is_some_and(|e| e.esource() == &ErrorSource::Downstream);
            crate::edge::h2::stream_ended(cancelled);
        }
        let Some(started) = ctx.started else {
            return;
        };
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let mut fallback = None;
        let client = client(session, ctx, &mut fallback).text.as_str();
        let req = session.req_header();
        let done = served::Finished {
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            elapsed: started.elapsed(),
            client,
            decided: &ctx.decided,
            error: e.map(|e| e.etype().as_str()),
        };
        served::record(&self.decider, &self.endpoint_metrics, done);
    }
}
