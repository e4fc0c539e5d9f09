//! The one decision every request gets, whichever engine carried it in (pingora's HTTP/1 and
//! HTTP/2 sessions, forward auth, or another engine's connection): request id, preflight,
//! route, rule, token, user state and the identity the upstream is told of. Nothing here knows
//! of an engine: a request is a [`Head`] (method, target, headers, socket peer) and the
//! outcome is a [`Next`] plus what was learnt on the way ([`Decided`]), which the engine keeps
//! for the answer, the upstream head and the access log.
//!
//! What an engine does with it: [`Next::Proxy`] — edit the upstream head with
//! [`Decider::upstream_headers`] (and send the path [`Decided::forward_path`] names, if any) and
//! proxy to a peer of route [`Decided::route`], adding [`Decider::answer_headers`] to the
//! upstream's answer; [`Next::Reply`] — answer this, with [`Decider::response_extras`];
//! [`Next::Preflight`] — answer this with the request id only; [`Next::Own`] — the gateway's own
//! endpoint; [`Next::FetchUser`] — wait on [`Decider::fetch_user`] for one of the others.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::credentials::token;
use crate::edge::identity;
use crate::edge::routes::{Access, Caller, Endpoint, Route};
use crate::edge::Edge;
use crate::own::api::{ApiError, Reply};
use crate::own::app::App;
use crate::own::cors::Cors;
use crate::store::user_cache::{Cached, UserState};

/// A request head as the decision reads it.
pub struct Head<'a> {
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    /// The length of the request target as it arrived (the head's size counts it).
    pub target_len: usize,
    pub headers: &'a http::HeaderMap,
    /// The socket peer (a trusted proxy's `X-Forwarded-For` is read from `headers`).
    pub peer: Option<IpAddr>,
}

impl<'a> Head<'a> {
    /// The head of a request in the `http` crate's types (whose target is its URI).
    pub fn of(parts: &'a http::request::Parts, peer: Option<IpAddr>) -> Head<'a> {
        Head {
            method: &parts.method,
            uri: &parts.uri,
            target_len: parts.uri.path_and_query().map_or(1, |p| p.as_str().len()),
            headers: &parts.headers,
            peer,
        }
    }
}

/// What the decision learnt of a request, for the engine to keep until the request is done.
pub struct Decided {
    pub request_id: http::HeaderValue,
    pub origin: Option<http::HeaderValue>,
    /// The gateway's own endpoint that answers (forward auth included).
    pub endpoint: Option<Endpoint>,
    /// The route proxied to (or, in forward auth, decided for), as an index of `Edge::routes`.
    pub route: Option<usize>,
    /// The path the upstream gets, when it is not the request's own spelling
    /// (see [`crate::edge::routes::read_path`]).
    pub forward_path: Option<String>,
    pub user: Option<Arc<UserState>>,
    /// The session of the token `user` came with (none for the seed's tokens).
    pub sid: Option<uuid::Uuid>,
    /// Forward auth (`/auth/verify`): the decision is the answer, nothing is proxied.
    pub forward_auth: bool,
    /// Whether the request came over TLS (HSTS, `X-Forwarded-Proto`): set by the engine.
    pub over_tls: bool,
    /// The connection closes after the answer (whatever body follows the head is not read).
    pub close: bool,
}

impl Default for Decided {
    fn default() -> Decided {
        Decided {
            request_id: http::HeaderValue::from_static(""),
            origin: None,
            endpoint: None,
            route: None,
            forward_path: None,
            user: None,
            sid: None,
            forward_auth: false,
            over_tls: false,
            close: false,
        }
    }
}

impl Decided {
    pub fn origin_bytes(&self) -> Option<&[u8]> {
        self.origin.as_ref().map(http::HeaderValue::as_bytes)
    }

    /// The upstream's request target when it is not the request's own: the path in
    /// [`Decided::forward_path`]'s spelling, with the query as sent.
    pub fn upstream_target(&self, uri: &http::Uri) -> Option<String> {
        let path = self.forward_path.as_deref()?;
        Some(match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_string(),
        })
    }

    /// The request id as text (it was checked to be plain ASCII, or made so).
    pub fn request_id_text(&self) -> String {
        self.request_id.to_str().unwrap_or_default().to_string()
    }
}

/// What the engine does next with a request.
pub enum Next {
    /// Admitted to route [`Decided::route`]: edit the head with [`Decider::upstream_headers`]
    /// (the host is the request's, `Host` or HTTP/2's `:authority`) and proxy.
    Proxy {
        host: Option<http::HeaderValue>,
        cleanup: identity::Cleanup,
    },
    /// Answer this (with [`Decider::response_extras`]).
    Reply(Reply),
    /// Answer this preflight (with the request id only).
    Preflight(Reply),
    /// The gateway's own endpoint answers.
    Own(Endpoint),
    /// A valid token whose user memory cannot answer for: [`Decider::fetch_user`].
    FetchUser(FetchUser),
}

/// A decision that waits on the user's state from the database.
pub struct FetchUser {
    verified: Arc<token::Verified>,
    now: std::time::SystemTime,
    reread: bool,
    access: Access,
    host: Option<http::HeaderValue>,
    cleanup: identity::Cleanup,
}

/// The decision's inputs beyond the request: the gateway's API (token verification, the user
/// cache, CORS, assertions) and the edge (router, routes, trusted proxies, limits).
pub struct Decider {
    pub app: Arc<App>,
    pub edge: Arc<Edge>,
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

/// `X-Forwarded-*` as a trusted proxy sent them (never from anyone else).
#[derive(Default)]
struct Forwarded {
    for_: Option<http::HeaderValue>,
    proto: Option<http::HeaderValue>,
    host: Option<http::HeaderValue>,
}

impl Decider {
    /// Everything about a request that does not wait: nearly every proxied request is decided
    /// here. `decided` is filled in as far as the decision got.
    pub fn decide(&self, head: &Head<'_>, decided: &mut Decided) -> Next {
        let facts = identity::scan_head(head.headers);
        decided.request_id = match facts.request_id {
            Some(id) if identity::valid_request_id(id.as_bytes()) => id.clone(),
            _ => self.edge.request_ids.next_header(),
        };
        decided.origin = facts.origin.cloned();
        let head_size = head.method.as_str().len()
            + head.target_len
            + "  HTTP/1.1\r\n".len()
            + facts.headers_len;
        if head_size > self.edge.max_header_bytes {
            decided.close = true;
            return Next::Reply(ApiError::HeadersTooLarge.into_reply());
        }
        let headers = head.headers;
        let method = head.method;
        if method == http::Method::OPTIONS
            && Cors::is_preflight(
                method,
                decided.origin_bytes(),
                bytes_of(headers, http::header::ACCESS_CONTROL_REQUEST_METHOD),
            )
        {
            let reply = self.app.cors.preflight(
                decided.origin_bytes().unwrap_or_default(),
                bytes_of(headers, http::header::ACCESS_CONTROL_REQUEST_HEADERS),
            );
            return Next::Preflight(reply);
        }
        // Only rules with `networks` ask who the client is.
        let client = if self.edge.router.needs_client() {
            self.client_for_limits(head.peer, headers)
        } else {
            None
        };
        let mut routed = self.edge.router.classify(method, head.uri.path(), client);
        if routed.route == Route::Own(Endpoint::ForwardAuth) {
            // Forward auth: the same classification, identity and verdict, for the request
            // the proxy in front names; only the answer differs.
            decided.endpoint = Some(Endpoint::ForwardAuth);
            decided.forward_auth = true;
            let original = match self.original_request(head) {
                Ok(original) => original,
                Err(e) => return Next::Reply(e.into_reply()),
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
        decided.forward_path = routed.forward_path;
        let index = match routed.route {
            // A decision-only route answers forward auth alone.
            Route::Proxy(index)
                if !decided.forward_auth && self.edge.routes[index].is_decision_only() =>
            {
                return Next::Reply(ApiError::NotFound.into_reply())
            }
            Route::Proxy(index) => index,
            Route::Own(endpoint) => {
                decided.endpoint = Some(endpoint);
                return Next::Own(endpoint);
            }
            Route::MethodNotAllowed(allow) => {
                return Next::Reply(ApiError::MethodNotAllowed { allow }.into_reply())
            }
            Route::BadPath => return Next::Reply(ApiError::BadPath.into_reply()),
            Route::NotFound => return Next::Reply(ApiError::NotFound.into_reply()),
        };
        decided.route = Some(index);
        let access = routed.access;
        let authorization = facts.authorization.map(http::HeaderValue::as_bytes);
        // HTTP/2 names the host in `:authority` (a `Host` header is optional there).
        let host = facts.host.cloned().or_else(|| {
            let authority = head.uri.authority()?;
            http::HeaderValue::from_str(authority.as_str()).ok()
        });
        match self.identify(authorization, &access) {
            Identity::Known(user, sid) => self.admitted(decided, user, sid, host, facts.cleanup),
            Identity::Refused(e) => Next::Reply(e.into_reply()),
            Identity::Unknown {
                verified,
                now,
                reread,
            } => Next::FetchUser(FetchUser {
                verified,
                now,
                reread,
                access: access.into_owned(),
                host,
                cleanup: facts.cleanup,
            }),
        }
    }

    /// The rest of a decision that waited on the user's state: [`Next::Proxy`] or
    /// [`Next::Reply`].
    pub async fn fetch_user(&self, pending: FetchUser, decided: &mut Decided) -> Next {
        let FetchUser {
            verified,
            now,
            reread,
            access,
            host,
            cleanup,
        } = pending;
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
            Ok(user) => self.admitted(decided, user, verified.session_id, host, cleanup),
            Err(e) => Next::Reply(e.into_reply()),
        }
    }

    /// An admitted caller (`None`: anonymous): proxied, or in forward auth answered.
    fn admitted(
        &self,
        decided: &mut Decided,
        user: Option<Arc<UserState>>,
        sid: Option<uuid::Uuid>,
        host: Option<http::HeaderValue>,
        cleanup: identity::Cleanup,
    ) -> Next {
        decided.sid = sid.filter(|_| user.is_some());
        decided.user = user;
        if decided.forward_auth {
            return Next::Reply(self.forward_auth_reply(decided));
        }
        Next::Proxy { host, cleanup }
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

    /// The request a proxy in front asks forward auth about: its method (`X-Forwarded-Method`
    /// or `X-Original-Method`; this request's own without either) and path (from
    /// `X-Forwarded-Uri` or `X-Original-URI`). Only a trusted proxy may ask: anyone else could
    /// name any request. A target that is not a plain origin-form path, or one a proxy or an
    /// upstream could read as another path (an encoded slash or backslash), is refused.
    fn original_request(&self, head: &Head<'_>) -> Result<Original, ApiError> {
        if !head
            .peer
            .is_some_and(|ip| self.edge.trusted_proxies.contains(ip))
        {
            return Err(ApiError::Forbidden);
        }
        let one = |names: [&str; 2]| -> Result<Option<&[u8]>, ApiError> {
            for name in names {
                let mut values = head.headers.get_all(name).iter();
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
            None => head.method.clone(),
        };
        let uri = one(["x-forwarded-uri", "x-original-uri"])?
            .ok_or(ApiError::BadOriginalRequest("Missing original URI"))?;
        let path = crate::edge::routes::original_path(uri).ok_or(ApiError::BadPath)?;
        Ok(Original { method, path })
    }

    /// The client as the rate limits and `networks` rules see it: the socket peer, or — when
    /// the peer is a trusted proxy — the nearest untrusted address of its `X-Forwarded-For`
    /// chain (all lines of it).
    pub fn client_for_limits(
        &self,
        peer: Option<IpAddr>,
        headers: &http::HeaderMap,
    ) -> Option<IpAddr> {
        let peer = peer?;
        let trusted = &self.edge.trusted_proxies;
        if !trusted.contains(peer) {
            return Some(peer);
        }
        identity::joined_lines(headers, &identity::FORWARDED_FOR)
            .and_then(|chain| identity::nearest_untrusted(chain.to_str().ok()?, trusted))
            .or(Some(peer))
    }

    /// The admitted caller's identity headers (none for an anonymous one), for an upstream or,
    /// in forward auth, for the proxy in front.
    pub fn user_headers(&self, decided: &Decided) -> Option<identity::UserHeaders> {
        decided.user.as_ref().map(|u| identity::UserHeaders {
            id: u.id_header.clone(),
            email: u.email_header.clone(),
            email_verified: u.email_verified,
            roles: u.roles_header.clone(),
            aal2: u.session_aal2(decided.sid.as_ref()),
            assertion: self.assertion(u, decided.sid, decided.route),
        })
    }

    /// Forward auth's 200: the identity of the admitted caller (or none) as response headers
    /// for the proxy in front, and no body.
    fn forward_auth_reply(&self, decided: &Decided) -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            headers: identity::forward_auth_headers(self.user_headers(decided)),
            body: Bytes::new(),
        }
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

    /// Turns the client's headers into the ones the upstream gets, in place: every
    /// client-sent identity header (and the refresh cookie) removed, the identity and
    /// forwarding headers only the gateway sets added (see
    /// [`identity::prepare_upstream_headers`]). `peer` is the socket peer and `peer_header`
    /// the same address as a header value. `Err`: a trusted proxy's `X-Forwarded-For` chain
    /// could not be extended (it is read as text lines only, so this does not happen).
    pub fn upstream_headers(
        &self,
        headers: &mut http::HeaderMap,
        decided: &Decided,
        (peer, peer_header): (Option<IpAddr>, http::HeaderValue),
        host: Option<http::HeaderValue>,
        cleanup: identity::Cleanup,
    ) -> Result<(), &'static str> {
        let forwarded = if peer.is_some_and(|ip| self.edge.trusted_proxies.contains(ip)) {
            // Text lines only (others are ignored, as if absent). The chain is every line of
            // it; proto and host are the nearest proxy's (the last line).
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
                http::HeaderValue::try_from(chain).map_err(|_| "bad X-Forwarded-For")?
            }
            None => peer_header,
        };
        let forwarded_proto =
            forwarded
                .proto
                .unwrap_or(http::HeaderValue::from_static(if decided.over_tls {
                    "https"
                } else {
                    "http"
                }));
        // The refresh cookie is the gateway's alone: no upstream sees it.
        if let Some(cookie) = &self.app.refresh_cookie {
            identity::strip_cookie(headers, &cookie.name);
        }
        identity::prepare_upstream_headers(
            headers,
            identity::UpstreamIdentity {
                user: self.user_headers(decided),
                request_id: decided.request_id.clone(),
                forwarded_for,
                forwarded_proto,
                forwarded_host: forwarded.host.or(host),
            },
            cleanup,
        );
        Ok(())
    }

    /// What the gateway adds to an upstream's answer: CORS, `X-Request-Id`, and over TLS
    /// `Strict-Transport-Security`.
    pub fn answer_headers(&self, headers: &mut http::HeaderMap, decided: &Decided) {
        self.app
            .cors
            .apply_to_proxied(headers, decided.origin_bytes());
        headers.insert(identity::REQUEST_ID, decided.request_id.clone());
        if let (true, Some(hsts)) = (decided.over_tls, &self.edge.hsts) {
            if let Ok(value) = http::HeaderValue::from_str(hsts) {
                headers.insert(http::header::STRICT_TRANSPORT_SECURITY, value);
            }
        }
    }

    /// CORS and request-id headers for an answer of the gateway's own.
    pub fn response_extras(&self, decided: &Decided) -> Vec<(&'static str, String)> {
        let mut headers = self.app.cors.simple_headers(decided.origin_bytes());
        headers.push((identity::REQUEST_ID_NAME, decided.request_id_text()));
        if let (true, Some(hsts)) = (decided.over_tls, &self.edge.hsts) {
            headers.push(("strict-transport-security", hsts.clone()));
        }
        headers
    }
}

fn bytes_of(headers: &http::HeaderMap, name: http::header::HeaderName) -> Option<&[u8]> {
    headers.get(name).map(http::HeaderValue::as_bytes)
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
