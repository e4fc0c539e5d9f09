//! The pingora glue: each `ProxyHttp` hook is a few lines that hand over to the pure modules.
//!
//! - `request_filter`: request id, preflights, the gateway's own endpoints (answered here, by
//!   [`write_reply`], which adds CORS and `X-Request-Id`), and for routes: bearer
//!   verification, then the upstream head: every client-sent identity header removed, the
//!   identity and forwarding headers only the gateway sets added. A proxied request whose user
//!   is in memory is decided without waiting ([`Gateway::decide`]).
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

use crate::credentials::token;
use crate::edge::access_log;
use crate::edge::front::{Client, Connection};
use crate::edge::identity;
use crate::edge::routes::{Access, Caller, Endpoint, Route};
use crate::own::api::{ApiError, Reply};
use crate::own::app::{App, OwnRequest};
use crate::own::cors::Cors;
use crate::store::user_cache::{Cached, UserState};

thread_local! {
    /// Each proxy thread's access-line buffer, reused from request to request.
    static ACCESS_LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub struct Gateway {
    /// The gateway's own API (which answers the own endpoints, and whose caches of tokens and
    /// users the proxy path shares).
    app: Arc<App>,
    edge: Arc<crate::edge::Edge>,
    /// Each own endpoint's request metrics, in [`Endpoint::ALL`] order (resolved once).
    endpoint_metrics: Vec<crate::metrics::RequestMetrics>,
}

impl Gateway {
    pub fn new(app: Arc<App>, edge: Arc<crate::edge::Edge>) -> Gateway {
        let metrics = crate::metrics::metrics();
        Gateway {
            app,
            edge,
            endpoint_metrics: Endpoint::ALL
                .iter()
                .map(|e| metrics.endpoint(e.metrics_name()))
                .collect(),
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
    request_id: http::HeaderValue,
    origin: Option<http::HeaderValue>,
    endpoint: Option<Endpoint>,
    route: Option<usize>,
    /// The path the upstream gets, when it is not the request's own spelling
    /// (see [`crate::edge::routes::read_path`]).
    forward_path: Option<String>,
    user: Option<Arc<UserState>>,
    /// The session of the token `user` came with (none for the seed's tokens).
    sid: Option<uuid::Uuid>,
    connect_retries: usize,
    /// Whether the request came over TLS (HSTS, `X-Forwarded-Proto`).
    over_tls: bool,
    /// A connection upgraded on behalf of `user`, closed if the user is shut out.
    upgraded: Option<crate::edge::upgraded::Registration>,
    /// Forward auth (`/auth/verify`): the decision is the answer, nothing is proxied.
    forward_auth: bool,
}

impl RequestCtx {
    fn origin_bytes(&self) -> Option<&[u8]> {
        self.origin.as_ref().map(http::HeaderValue::as_bytes)
    }
}

/// `X-Forwarded-*` as a trusted proxy sent them (never from anyone else).
#[derive(Default)]
struct Forwarded {
    for_: Option<http::HeaderValue>,
    proto: Option<http::HeaderValue>,
    host: Option<http::HeaderValue>,
}

/// The request id as text (it was checked to be plain ASCII, or made so).
fn request_id_text(ctx: &RequestCtx) -> String {
    ctx.request_id.to_str().unwrap_or_default().to_string()
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

/// The client as the rate limits see it: the socket peer, or — when the peer is a trusted
/// proxy — the nearest untrusted address of its `X-Forwarded-For` chain (all lines of it).
fn client_ip_for_limits(session: &Session, trusted: &identity::TrustedProxies) -> Option<IpAddr> {
    let peer = client_ip(session)?;
    if !trusted.contains(peer) {
        return Some(peer);
    }
    identity::joined_lines(&session.req_header().headers, &identity::FORWARDED_FOR)
        .and_then(|chain| identity::nearest_untrusted(chain.to_str().ok()?, trusted))
        .or(Some(peer))
}

/// Why a body could not be read in full.
enum BodyError {
    TooLarge,
    TooSlow,
    Io(Box<Error>),
}

/// The size of a request head as it arrived: request line, names, values and separators.
/// Counted from the parsed head, so it is exact to the byte for a well-formed request.
fn head_size(req: &RequestHeader, facts: &identity::HeadFacts) -> usize {
    req.method.as_str().len() + req.raw_path().len() + "  HTTP/1.1\r\n".len() + facts.headers_len
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
                request_id = ctx.request_id.to_str().unwrap_or_default(),
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
    /// CORS and request-id headers for a response to this request.
    fn response_extras(&self, ctx: &RequestCtx) -> Vec<(&'static str, String)> {
        let mut headers = self.app.cors.simple_headers(ctx.origin_bytes());
        headers.push((identity::REQUEST_ID_NAME, request_id_text(ctx)));
        if let (true, Some(hsts)) = (ctx.over_tls, &self.edge.hsts) {
            headers.push(("strict-transport-security", hsts.clone()));
        }
        headers
    }

    async fn answer_own(
        &self,
        session: &mut Session,
        endpoint: Endpoint,
        request_id: String,
    ) -> Result<Reply> {
        let body = if endpoint.reads_body() {
            match read_body(session, self.edge.max_body_bytes, self.edge.body_timeout).await {
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
        let req = session.req_header();
        let request = OwnRequest {
            client_ip: client_ip_for_limits(session, &self.edge.trusted_proxies),
            // As routing read it (escapes decoded), for the path parameters.
            path: crate::edge::routes::read_path(req.uri.path())
                .map(|p| String::from_utf8_lossy(&p.matched).into_owned())
                .unwrap_or_default(),
            query: req.uri.query().map(str::to_string),
            user_agent: header(session, http::header::USER_AGENT)
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            content_type: header(session, http::header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            authorization: header(session, http::header::AUTHORIZATION).map(<[u8]>::to_vec),
            refresh_cookie: self.app.refresh_cookie.as_ref().and_then(|cookie| {
                identity::cookie_value(req.headers.get_all(http::header::COOKIE), &cookie.name)
            }),
            origin: header(session, http::header::ORIGIN).map(<[u8]>::to_vec),
            requested_with: req.headers.contains_key("x-requested-with"),
            request_id: Some(request_id),
            body,
        };
        Ok(self.app.handle(endpoint, &request).await)
    }

    /// Turns the client's request head into the one the upstream gets, in place (pingora
    /// copies the downstream head for each upstream attempt, so a retry does not redo this):
    /// see [`identity::prepare_upstream_headers`].
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
        let (peer, peer_header) = (client.ip, client.ip_header.clone());
        let forwarded = if peer.is_some_and(|ip| self.edge.trusted_proxies.contains(ip)) {
            // Text lines only (others are ignored, as if absent). The chain is every line of
            // it; proto and host are the nearest proxy's (the last line).
            let headers = &session.req_header().headers;
            Forwarded {
                for_: identity::joined_lines(headers, &identity::FORWARDED_FOR),
                proto: identity::last_line(headers, &identity::FORWARDED_PROTO),
                host: identity::last_line(headers, &identity::FORWARDED_HOST),
            }
        } else {
            Forwarded::default()
        };
        let forwarded_for = match forwarded.for_ {
            Some(chain) => {
                let chain = format!(
                    "{}, {}",
                    chain.to_str().unwrap_or_default(),
                    peer_header.to_str().unwrap_or_default()
                );
                // A header value plus an address: still a valid one.
                http::HeaderValue::try_from(chain)
                    .map_err(|_| Error::explain(InvalidHTTPHeader, "bad X-Forwarded-For"))?
            }
            None => peer_header,
        };
        let forwarded_proto =
            forwarded
                .proto
                .unwrap_or(http::HeaderValue::from_static(if ctx.over_tls {
                    "https"
                } else {
                    "http"
                }));

        // From here on nothing fails until the edited head is back in place.
        let req = session.req_header_mut();
        let verbatim_target = match &ctx.forward_path {
            // Another spelling of the path, in origin-form, the query as sent.
            Some(path) => Some(match req.uri.query() {
                Some(query) => format!("{path}?{query}").into_bytes(),
                None => path.as_bytes().to_vec(),
            }),
            None => (Some(req.raw_path())
                != req.uri.path_and_query().map(|p| p.as_str().as_bytes()))
            .then(|| req.raw_path().to_vec()),
        };
        let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
        let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder));
        let forwarded_host = forwarded.host.or(host);
        // The refresh cookie is the gateway's alone: no upstream sees it.
        if let Some(cookie) = &self.app.refresh_cookie {
            identity::strip_cookie(&mut parts.headers, &cookie.name);
        }
        identity::prepare_upstream_headers(
            &mut parts.headers,
            identity::UpstreamIdentity {
                user: self.user_headers(ctx),
                request_id: ctx.request_id.clone(),
                forwarded_for,
                forwarded_proto,
                forwarded_host,
            },
            cleanup,
        );
        *req = RequestHeader::from(parts);
        match verbatim_target {
            // Parsed from this very request a moment ago (or made from its path by decoding
            // escapes of unreserved characters), so it parses again.
            Some(target) => req.set_raw_path(&target),
            None => Ok(()),
        }
    }

    /// The admitted caller's identity headers (none for an anonymous one), for an upstream or,
    /// in forward auth, for the proxy in front.
    fn user_headers(&self, ctx: &RequestCtx) -> Option<identity::UserHeaders> {
        ctx.user.as_ref().map(|u| identity::UserHeaders {
            id: u.id_header.clone(),
            email: u.email_header.clone(),
            email_verified: u.email_verified,
            roles: u.roles_header.clone(),
            aal2: u.session_aal2(ctx.sid.as_ref()),
            assertion: self.assertion(u, ctx.sid, ctx.route),
        })
    }

    /// Forward auth's 200: the identity of the admitted caller (or none) as response headers
    /// for the proxy in front, and no body.
    fn forward_auth_reply(&self, ctx: &RequestCtx) -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            headers: identity::forward_auth_headers(self.user_headers(ctx)),
            body: Bytes::new(),
        }
    }

    /// The request a proxy in front asks forward auth about: its method (`X-Forwarded-Method`
    /// or `X-Original-Method`; this request's own without either) and path (from
    /// `X-Forwarded-Uri` or `X-Original-URI`). Only a trusted proxy may ask: anyone else could
    /// name any request. A target that is not a plain origin-form path, or one a proxy or an
    /// upstream could read as another path (an encoded slash or backslash), is refused.
    fn original_request(&self, session: &Session) -> Result<Original, ApiError> {
        if !client_ip(session).is_some_and(|ip| self.edge.trusted_proxies.contains(ip)) {
            return Err(ApiError::Forbidden);
        }
        let headers = &session.req_header().headers;
        let one = |names: [&str; 2]| -> Result<Option<&[u8]>, ApiError> {
            for name in names {
                let mut values = headers.get_all(name).iter();
                if let Some(value) = values.next() {
                    if values.next().is_some() {
                        return Err(ApiError::BadOriginalRequest(
                            "More than one original method or URI",
                        ));
                    }
                    return Ok(Some(value.as_bytes()));
                }
            }
            Ok(None)
        };
        let method = match one(["x-forwarded-method", "x-original-method"])? {
            Some(name) => http::Method::from_bytes(name)
                .map_err(|_| ApiError::BadOriginalRequest("Invalid original method"))?,
            None => session.req_header().method.clone(),
        };
        let uri = one(["x-forwarded-uri", "x-original-uri"])?
            .ok_or(ApiError::BadOriginalRequest("Missing original URI"))?;
        let path = crate::edge::routes::original_path(uri).ok_or(ApiError::BadPath)?;
        Ok(Original { method, path })
    }

    /// The `X-Identity-Assertion` for `user` on route number `route`.
    fn assertion(
        &self,
        user: &UserState,
        sid: Option<uuid::Uuid>,
        route: Option<usize>,
    ) -> Option<http::HeaderValue> {
        let assertions = self.app.assertions.as_ref()?;
        let route = route?;
        let audience = &self.edge.routes.get(route)?.audience;
        assertions.header(user, sid, route, audience)
    }

    /// Remembers an upgraded connection of a known user, to close it if the user is shut out.
    /// If the user changed since the request was admitted (the cache let go of them), they are
    /// read again at once rather than at the next sweep.
    fn track_upgrade(&self, session: &Session, ctx: &mut RequestCtx) {
        let (Some(user), Some(conn)) = (&ctx.user, &ctx.connection) else {
            return;
        };
        // The token that was admitted (verified a moment ago, so remembered): which session
        // the connection belongs to.
        let authorization = header(session, http::header::AUTHORIZATION);
        let Some(token) = token::bearer_credentials(authorization)
            .and_then(|t| self.app.verify_token(t, std::time::SystemTime::now()).ok())
        else {
            return;
        };
        ctx.upgraded = Some(self.edge.upgraded.register(&user.id, token, conn));
        let now = std::time::SystemTime::now();
        if self.app.users.cached(&user.id, now) == Cached::Unknown {
            self.edge.upgraded.recheck(&user.id);
        }
    }

    /// Bearer verification for a route, as far as memory answers (see [`Identity`]).
    fn identify(&self, authorization: Option<&[u8]>, access: &Access) -> Identity {
        let anonymous = match access.verdict(None) {
            Ok(()) => Identity::Known(None, None),
            Err(refusal) => Identity::Refused(refusal),
        };
        // Nobody passes: the token does not matter.
        if *access == Access::Deny {
            return anonymous;
        }
        let public = *access == Access::Public;
        let Some(token) = token::bearer_credentials(authorization) else {
            return anonymous;
        };
        // One reading of the clock for the token's expiry and the cached user's age.
        let now = std::time::SystemTime::now();
        let verified = match self.app.verify_token(token, now) {
            Ok(v) => v,
            // Bytes that are not text are no token at all (as for the own endpoints).
            Err(token::TokenError::NotText) => return anonymous,
            Err(_) if public => return Identity::Known(None, None),
            Err(_) => return Identity::Refused(ApiError::RejectedToken),
        };
        match self.app.users.cached(&verified.user_id, now) {
            Cached::Known(Some(state)) if state.may_predate(&verified) => Identity::Unknown {
                verified,
                now,
                reread: true,
            },
            Cached::Known(state) => match admit(state, &verified, now, access, self.edge.step_up) {
                Ok(user) => Identity::Known(user, verified.session_id),
                Err(e) => Identity::Refused(e),
            },
            Cached::Unknown => Identity::Unknown {
                verified,
                now,
                reread: false,
            },
        }
    }

    /// What `request_filter` can decide without waiting for anything: nearly every proxied
    /// request ends here, so that its future (boxed by `async_trait` for every request) stays
    /// small; everything that waits is in [`Gateway::finish_slowly`].
    fn decide(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Option<Pending>> {
        // Pingora keeps the connection if the client asked to, with no time limit of its own:
        // the front closes one whose next head is not in within the keep-alive time.
        if self.edge.keepalive_seconds == 0 {
            session.set_keepalive(None);
        }
        let req = session.req_header();
        let facts = identity::scan_head(&req.headers);
        ctx.request_id = match facts.request_id {
            Some(id) if identity::valid_request_id(id.as_bytes()) => id.clone(),
            _ => self.edge.request_ids.next_header(),
        };
        ctx.origin = facts.origin.cloned();
        if head_size(req, &facts) > self.edge.max_header_bytes {
            // Whatever body follows is not read: close after answering.
            session.set_keepalive(None);
            return Ok(Some(Pending::Reply(ApiError::HeadersTooLarge.into_reply())));
        }
        let method = &req.method;
        if method == http::Method::OPTIONS
            && Cors::is_preflight(
                method,
                ctx.origin_bytes(),
                header(session, http::header::ACCESS_CONTROL_REQUEST_METHOD),
            )
        {
            let reply = self.app.cors.preflight(
                ctx.origin_bytes().unwrap_or_default(),
                header(session, http::header::ACCESS_CONTROL_REQUEST_HEADERS),
            );
            return Ok(Some(Pending::Preflight(reply)));
        }
        // Only rules with `networks` ask who the client is.
        let client = if self.edge.router.needs_client() {
            client_ip_for_limits(session, &self.edge.trusted_proxies)
        } else {
            None
        };
        let req = session.req_header();
        let mut routed = self
            .edge
            .router
            .classify(&req.method, req.uri.path(), client);
        if routed.route == Route::Own(Endpoint::ForwardAuth) {
            // Forward auth: the same classification, identity and verdict, for the request
            // the proxy in front names; only the answer differs.
            ctx.endpoint = Some(Endpoint::ForwardAuth);
            ctx.forward_auth = true;
            let original = match self.original_request(session) {
                Ok(original) => original,
                Err(e) => return Ok(Some(Pending::Reply(e.into_reply()))),
            };
            routed = self
                .edge
                .router
                .classify(&original.method, &original.path, client);
            routed.forward_path = None;
            routed.route = match routed.route {
                Route::Proxy(index) => Route::Proxy(index),
                Route::BadPath => Route::BadPath,
                // Not a route: the gateway's own endpoints are not behind the proxy's check.
                _ => Route::NotFound,
            };
        }
        ctx.forward_path = routed.forward_path;
        let index = match routed.route {
            // A decision-only route answers forward auth alone.
            Route::Proxy(index)
                if !ctx.forward_auth && self.edge.routes[index].is_decision_only() =>
            {
                return Ok(Some(Pending::Reply(ApiError::NotFound.into_reply())))
            }
            Route::Proxy(index) => index,
            Route::Own(endpoint) => {
                ctx.endpoint = Some(endpoint);
                return Ok(Some(Pending::Own(endpoint)));
            }
            Route::MethodNotAllowed(allow) => {
                return Ok(Some(Pending::Reply(
                    ApiError::MethodNotAllowed { allow }.into_reply(),
                )))
            }
            Route::BadPath => return Ok(Some(Pending::Reply(ApiError::BadPath.into_reply()))),
            Route::NotFound => return Ok(Some(Pending::Reply(ApiError::NotFound.into_reply()))),
        };
        ctx.route = Some(index);
        let access = routed.access;
        let authorization = facts.authorization.map(http::HeaderValue::as_bytes);
        // HTTP/2 names the host in `:authority` (a `Host` header is optional there).
        let host = facts.host.cloned().or_else(|| {
            let authority = req.uri.authority()?;
            http::HeaderValue::from_str(authority.as_str()).ok()
        });
        match self.identify(authorization, &access) {
            Identity::Known(user, sid) => {
                ctx.sid = sid.filter(|_| user.is_some());
                ctx.user = user;
                if ctx.forward_auth {
                    return Ok(Some(Pending::Reply(self.forward_auth_reply(ctx))));
                }
                self.prepare_upstream_head(session, ctx, host, facts.cleanup)?;
                Ok(None)
            }
            Identity::Refused(e) => Ok(Some(Pending::Reply(e.into_reply()))),
            Identity::Unknown {
                verified,
                now,
                reread,
            } => Ok(Some(Pending::FetchUser {
                verified,
                now,
                reread,
                access: access.into_owned(),
                host,
                cleanup: facts.cleanup,
            })),
        }
    }

    /// The rest of `request_filter` for requests that wait: on the database, a body, or the
    /// client reading an answer. `Ok(true)`: answered.
    async fn finish_slowly(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        pending: Pending,
    ) -> Result<bool> {
        let reply = match pending {
            Pending::Preflight(reply) => {
                let extra = vec![(identity::REQUEST_ID_NAME, request_id_text(ctx))];
                write_reply(session, reply, extra).await?;
                return Ok(true);
            }
            Pending::Reply(reply) => reply,
            Pending::Own(endpoint) => {
                self.answer_own(session, endpoint, request_id_text(ctx))
                    .await?
            }
            Pending::FetchUser {
                verified,
                now,
                reread,
                access,
                host,
                cleanup,
            } => {
                let fetched = match self.app.check_ready() {
                    Ok(()) => self
                        .app
                        .users
                        .get(&verified.user_id, now, reread)
                        .await
                        .map_err(ApiError::from),
                    Err(e) => Err(e),
                };
                let step_up = self.edge.step_up;
                match fetched.and_then(|state| admit(state, &verified, now, &access, step_up)) {
                    Ok(user) => {
                        ctx.sid = verified.session_id.filter(|_| user.is_some());
                        ctx.user = user;
                        if ctx.forward_auth {
                            self.forward_auth_reply(ctx)
                        } else {
                            self.prepare_upstream_head(session, ctx, host, cleanup)?;
                            return Ok(false);
                        }
                    }
                    Err(e) => e.into_reply(),
                }
            }
        };
        let extra = self.response_extras(ctx);
        write_reply(session, reply, extra).await?;
        Ok(true)
    }
}

/// A route's verdict on a verified token and its user's state at `now` (unix seconds): the
/// user is active and the token still counts (its session is live, or it is sessionless and
/// not refused), and the user meets what `access` requires. `Ok(None)` is anonymous, for
/// public routes only.
fn admit(
    state: Option<Arc<UserState>>,
    token: &token::Verified,
    now: std::time::SystemTime,
    access: &Access,
    step_up: bool,
) -> Result<Option<Arc<UserState>>, ApiError> {
    match state {
        Some(user) if user.active && user.accepts(token, token::unix_seconds(now)) => {
            let caller = Caller {
                roles: &user.roles,
                email_verified: user.email_verified,
                aal2: user.aal2(token),
                step_up: step_up && user.has_factor,
            };
            access.verdict(Some(caller))?;
            Ok(Some(user))
        }
        _ if *access == Access::Public => Ok(None),
        _ => Err(ApiError::RejectedToken),
    }
}

/// The request forward auth decides for.
struct Original {
    method: http::Method,
    path: String,
}

/// Who is calling, as far as memory answers.
enum Identity {
    /// `None`: anonymous (public routes only); with the token's session, if it has one.
    Known(Option<Arc<UserState>>, Option<uuid::Uuid>),
    Refused(ApiError),
    /// A valid token whose user is not in memory (or not fresh), or whose session may be
    /// newer than what memory has (`reread`).
    Unknown {
        verified: Arc<token::Verified>,
        now: std::time::SystemTime,
        reread: bool,
    },
}

/// What is left of `request_filter` when [`Gateway::decide`] could not finish it.
enum Pending {
    /// Answer this (with CORS and request id).
    Reply(Reply),
    /// Answer this preflight (with the request id).
    Preflight(Reply),
    Own(Endpoint),
    FetchUser {
        verified: Arc<token::Verified>,
        now: std::time::SystemTime,
        reread: bool,
        access: Access,
        host: Option<http::HeaderValue>,
        cleanup: identity::Cleanup,
    },
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
            started: (self.edge.count_requests || self.edge.access_log).then(Instant::now),
            connection: None,
            request_id: http::HeaderValue::from_static(""),
            origin: None,
            endpoint: None,
            route: None,
            forward_path: None,
            user: None,
            sid: None,
            connect_retries: 0,
            over_tls: false,
            upgraded: None,
            forward_auth: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if crate::edge::front::draining() {
            session.set_keepalive(None);
        }
        ctx.over_tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
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
        let Some(route) = ctx.route.and_then(|i| self.edge.routes.get(i)) else {
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
            .route
            .and_then(|i| self.edge.routes.get(i))
            .map_or(0, |r| r.upstreams.len().saturating_sub(1));
        if ctx.connect_retries < others {
            ctx.connect_retries += 1;
            if let Some(route) = ctx.route.and_then(|i| self.edge.routes.get(i)) {
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
            self.track_upgrade(session, ctx);
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
        self.app
            .cors
            .apply_to_proxied(&mut parts.headers, ctx.origin_bytes());
        parts
            .headers
            .insert(identity::REQUEST_ID, ctx.request_id.clone());
        if let (true, Some(hsts)) = (ctx.over_tls, &self.edge.hsts) {
            if let Ok(value) = http::HeaderValue::from_str(hsts) {
                parts
                    .headers
                    .insert(http::header::STRICT_TRANSPORT_SECURITY, value);
            }
        }
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
            ctx.route.and_then(|i| self.edge.routes.get(i)),
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
            let extra = self.response_extras(ctx);
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
        let elapsed = started.elapsed();
        if self.edge.count_requests {
            let metrics = crate::metrics::metrics();
            let counted = match (
                ctx.endpoint,
                ctx.route.and_then(|i| self.edge.routes.get(i)),
            ) {
                // `Endpoint::ALL` is in declaration order (a unit test of routes.rs holds it).
                (Some(endpoint), _) => self
                    .endpoint_metrics
                    .get(endpoint as usize)
                    .unwrap_or(metrics.unmatched()),
                (None, Some(route)) => &route.metrics,
                (None, None) => metrics.unmatched(),
            };
            counted.observe(status, elapsed);
        }
        if !self.edge.access_log {
            return;
        }
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let mut fallback = None;
        let client = client(session, ctx, &mut fallback).text.as_str();
        let req = session.req_header();
        let entry = access_log::Entry {
            method: req.method.as_str(),
            // The path only: query strings can carry secrets.
            path: req.uri.path(),
            status,
            duration_us: elapsed.as_micros() as u64,
            client,
            request_id: ctx.request_id.to_str().unwrap_or_default(),
            endpoint: ctx.endpoint.map(Endpoint::name),
            route: ctx
                .route
                .and_then(|i| self.edge.routes.get(i))
                .map(|r| r.prefix.as_str()),
            user_id: ctx.user.as_ref().map(|u| u.id.as_str()),
            error: e.map(|e| e.etype().as_str()),
        };
        if access_log::access_lines_direct() {
            ACCESS_LINE.with_borrow_mut(|line| {
                line.clear();
                entry.write_json(std::time::SystemTime::now(), line);
                access_log::write_access_line(line);
            });
            return;
        }
        tracing::info!(
            target: "access",
            method = entry.method,
            path = entry.path,
            status = entry.status,
            duration_us = entry.duration_us,
            client = entry.client,
            request_id = entry.request_id,
            endpoint = entry.endpoint,
            route = entry.route,
            user_id = entry.user_id,
            error = entry.error,
        );
    }
}
