//! What every engine does around the one decision ([`crate::edge::decision`]), so that pingora's
//! hooks and the hyper engine (`edge::h1`) do it the same way: the request an own endpoint
//! gets, the registration of an upgraded connection, and the request's metrics and access line.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::credentials::token;
use crate::edge::access_log;
use crate::edge::decision::{Decided, Decider};
use crate::edge::front::Connection;
use crate::edge::identity;
use crate::edge::routes::Endpoint;
use crate::own::app::OwnRequest;
use crate::store::user_cache::Cached;

thread_local! {
    /// Each thread's access-line buffer, reused from request to request.
    static ACCESS_LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn header_text(head: &http::request::Parts, name: http::header::HeaderName) -> Option<String> {
    head.headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The request a gateway-own endpoint answers, from its head, socket peer and whole body.
pub fn own_request(
    decider: &Decider,
    head: &http::request::Parts,
    peer: Option<IpAddr>,
    request_id: String,
    body: Bytes,
) -> OwnRequest {
    OwnRequest {
        client_ip: decider.client_for_limits(peer, &head.headers),
        // As routing read it (escapes decoded), for the path parameters.
        path: crate::edge::routes::read_path(head.uri.path())
            .map(|p| String::from_utf8_lossy(&p.matched).into_owned())
            .unwrap_or_default(),
        query: head.uri.query().map(str::to_string),
        user_agent: header_text(head, http::header::USER_AGENT),
        content_type: header_text(head, http::header::CONTENT_TYPE),
        authorization: head
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec()),
        refresh_cookie: decider.app.refresh_cookie.as_ref().and_then(|cookie| {
            identity::cookie_value(head.headers.get_all(http::header::COOKIE), &cookie.name)
        }),
        origin: head
            .headers
            .get(http::header::ORIGIN)
            .map(|v| v.as_bytes().to_vec()),
        requested_with: head.headers.contains_key("x-requested-with"),
        request_id: Some(request_id),
        body,
    }
}

/// Remembers a connection upgraded for a known user, to close it if the user is shut out
/// (`None` for an anonymous one). If the user changed since the request was admitted (the
/// cache let go of them), they are read again at once rather than at the next sweep.
pub fn track_upgrade(
    decider: &Decider,
    authorization: Option<&[u8]>,
    decided: &Decided,
    conn: &Arc<Connection>,
) -> Option<crate::edge::upgraded::Registration> {
    let user = decided.user.as_ref()?;
    // The token that was admitted (verified a moment ago, so remembered): which session the
    // connection belongs to.
    let now = std::time::SystemTime::now();
    let token = token::bearer_credentials(authorization)
        .and_then(|t| decider.app.verify_token(t, now).ok())?;
    let registration = decider.edge.upgraded.register(&user.id, token, conn);
    if decider.app.users.cached(&user.id, now) == Cached::Unknown {
        decider.edge.upgraded.recheck(&user.id);
    }
    Some(registration)
}

/// Each own endpoint's request metrics, in [`Endpoint::ALL`] order (resolved once).
pub fn endpoint_metrics() -> Vec<crate::metrics::RequestMetrics> {
    let metrics = crate::metrics::metrics();
    Endpoint::ALL
        .iter()
        .map(|e| metrics.endpoint(e.metrics_name()))
        .collect()
}

/// A finished request as the metrics and the access log see it.
pub struct Finished<'a> {
    pub method: &'a str,
    /// The path only: query strings can carry secrets.
    pub path: &'a str,
    /// 0: no answer was written.
    pub status: u16,
    pub elapsed: Duration,
    pub client: &'a str,
    pub decided: &'a Decided,
    pub error: Option<&'a str>,
}

/// Counts a finished request for `/metrics` and writes its access line (each if configured).
pub fn record(
    decider: &Decider,
    endpoint_metrics: &[crate::metrics::RequestMetrics],
    done: Finished<'_>,
) {
    let edge = &decider.edge;
    let route = done.decided.route.and_then(|i| edge.routes.get(i));
    if edge.count_requests {
        let metrics = crate::metrics::metrics();
        let counted = match (done.decided.endpoint, route) {
            // `Endpoint::ALL` is in declaration order (a unit test of routes.rs holds it).
            (Some(endpoint), _) => endpoint_metrics
                .get(endpoint as usize)
                .unwrap_or(metrics.unmatched()),
            (None, Some(route)) => &route.metrics,
            (None, None) => metrics.unmatched(),
        };
        counted.observe(done.status, done.elapsed);
    }
    if !edge.access_log || !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    let entry = access_log::Entry {
        method: done.method,
        path: done.path,
        status: done.status,
        duration_us: done.elapsed.as_micros() as u64,
        client: done.client,
        request_id: done.decided.request_id.to_str().unwrap_or_default(),
        endpoint: done.decided.endpoint.map(Endpoint::name),
        route: route.map(|r| r.prefix.as_str()),
        user_id: done.decided.user.as_ref().map(|u| u.id.as_str()),
        error: done.error,
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
