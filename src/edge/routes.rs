//! Where a request goes: one of the gateway's own endpoints, or a configured route (longest
//! prefix wins), or nowhere. Pure: method and path in, decision out.
//!
//! Routes are matched on the path as an upstream could read it at most: every percent-escape
//! decoded (`%2F` too) and runs of slashes merged. Upstreams decode paths before routing
//! (Starlette, Express, nginx's `location`), and some merge slashes, so matching the raw bytes
//! would let `/%61pi/admin`, `/api%2Fadmin` or `//api/admin` reach an upstream's `/api/admin`
//! through a public route. What goes upstream is the path as sent with escapes of unreserved
//! characters decoded (RFC 3986 §6.2.2.2), so a decoding upstream and one that routes on raw
//! bytes both see the route the gateway matched. Spellings no client needs are refused:
//! dot segments and backslashes (plain or escaped), malformed escapes, `%00`, and
//! double-encoding (`%25` followed by two hex digits).
//!
//! Letter case: Express, ASP.NET and many others route without regard to ASCII case, so by
//! default prefixes match that way too (`/API/admin` takes the `/api/` route). A spelling that
//! a case-sensitive upstream would read as another route's path is decided by the stricter of
//! the two routes' `auth` (see [`Router::classify`]). `[proxy] case_sensitive_paths = true`
//! matches bytes as they are, for operators whose upstreams all tell case apart.

use std::borrow::Cow;

use http::Method;

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{Networks, RouteAuth, RouteConfig, RuleAllow, RuleConfig};
use crate::own::api::ApiError;
pub use crate::own::endpoints::{classify as own_route, Endpoint, OwnRoute, JWKS_PATH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Own(Endpoint),
    /// One of our paths with another method: 405 with this `Allow`.
    MethodNotAllowed(&'static str),
    /// The index of a configured route.
    Proxy(usize),
    /// A path that [`read_path`] refuses (dot segments, backslashes, malformed or NUL
    /// escapes, double-encoding).
    BadPath,
    NotFound,
}

/// Who may pass, once a route (and perhaps one of its rules) has been chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone; a valid token's identity is forwarded.
    Public,
    /// A valid token of an active user who meets these requirements.
    Authenticated(Requirements),
    /// Nobody (403 `Forbidden`).
    Deny,
}

/// What a caller must have beyond a valid token: every set of `roles` (any one role of each),
/// a verified address, an `aal2` session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    pub roles: Arc<[Arc<[String]>]>,
    pub verified_email: bool,
    pub mfa: bool,
}

impl Requirements {
    /// The first requirement a signed-in caller fails, if any, in the order that tells the
    /// caller most: roles (nothing they can do), then the address (they can verify it), then
    /// a second factor (they can step up).
    pub fn unmet(&self, caller: Caller<'_>) -> Option<ApiError> {
        let holds = |role: &String| caller.roles.binary_search(role).is_ok();
        if !self.roles.iter().all(|any| any.iter().any(holds)) {
            Some(ApiError::NotEnoughPermissions)
        } else if self.verified_email && !caller.email_verified {
            Some(ApiError::EmailNotVerified)
        } else if (self.mfa || caller.step_up) && !caller.aal2 {
            Some(ApiError::MfaRequired)
        } else {
            None
        }
    }

    /// Both sets of requirements at once.
    fn and(&self, other: &Requirements) -> Requirements {
        Requirements {
            roles: self
                .roles
                .iter()
                .chain(other.roles.iter())
                .cloned()
                .collect(),
            verified_email: self.verified_email || other.verified_email,
            mfa: self.mfa || other.mfa,
        }
    }
}

/// A signed-in caller (a valid token of an active user), as far as rules ask.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// Sorted.
    pub roles: &'a [String],
    pub email_verified: bool,
    /// Whether the session passed a second factor.
    pub aal2: bool,
    /// Whether the user has a second factor that this session must have used wherever a
    /// token is needed (`mfa.enforcement = "highest_available"`), rule or not.
    pub step_up: bool,
}

impl Access {
    /// The verdict on a caller (`None`: no valid token): pass, or the answer the caller gets.
    /// The proxy and `check-access` both decide here.
    pub fn verdict(&self, caller: Option<Caller<'_>>) -> Result<(), ApiError> {
        match (self, caller) {
            (Access::Deny, _) => Err(ApiError::Forbidden),
            (Access::Public, _) => Ok(()),
            (Access::Authenticated(_), None) => Err(ApiError::NotAuthenticated),
            (Access::Authenticated(needs), Some(caller)) => needs.unmet(caller).map_or(Ok(()), Err),
        }
    }

    /// What both of two decisions let through (for a path two readings could mean).
    fn and(&self, other: &Access) -> Access {
        match (self, other) {
            (Access::Deny, _) | (_, Access::Deny) => Access::Deny,
            (Access::Public, other) | (other, Access::Public) => other.clone(),
            (Access::Authenticated(a), Access::Authenticated(b)) => Access::Authenticated(a.and(b)),
        }
    }
}

/// A route's rule, ready to match.
#[derive(Debug, Clone)]
struct Rule {
    paths: Vec<String>,
    methods: Vec<Method>,
    networks: Option<Networks>,
    access: Access,
}

impl Rule {
    fn compile(rule: &RuleConfig) -> Rule {
        Rule {
            paths: rule.paths.clone(),
            methods: rule
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                .collect(),
            networks: (!rule.networks.is_empty())
                .then(|| Networks::parse(&rule.networks).unwrap_or_default()),
            access: match rule.allow {
                RuleAllow::Public => Access::Public,
                RuleAllow::Deny => Access::Deny,
                RuleAllow::Authenticated => Access::Authenticated(Requirements {
                    roles: if rule.roles.is_empty() {
                        Arc::new([])
                    } else {
                        Arc::new([Arc::from(rule.roles.clone())])
                    },
                    verified_email: rule.verified_email,
                    mfa: rule.mfa,
                }),
            },
        }
    }

    /// Whether every matcher matches (`HEAD` is `GET` without the body: a rule for `GET`
    /// holds for it too).
    fn matches(&self, method: &Method, path: &[u8], client: Option<IpAddr>, cs: bool) -> bool {
        (self.paths.is_empty() || self.paths.iter().any(|p| starts_with(path, p, cs)))
            && (self.methods.is_empty()
                || self
                    .methods
                    .iter()
                    .any(|m| m == method || (method == Method::HEAD && m == Method::GET)))
            && self
                .networks
                .as_ref()
                .is_none_or(|n| client.is_some_and(|ip| n.contains(ip)))
    }
}

/// Whether `path` starts with `prefix`, in its letter case or in any (`cs`: case-sensitive).
fn starts_with(path: &[u8], prefix: &str, cs: bool) -> bool {
    if cs {
        path.starts_with(prefix.as_bytes())
    } else {
        path.get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
    }
}

/// A configured route, ready to match.
#[derive(Debug, Clone)]
struct CompiledRoute {
    prefix: String,
    /// Into the config's routes.
    index: usize,
    /// Who passes when no rule matches (the route's `auth`).
    access: Access,
    rules: Vec<Rule>,
}

/// The configured routes, longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    /// Whether prefixes match only in their own letter case (`proxy.case_sensitive_paths`).
    case_sensitive: bool,
    /// Whether any rule asks about the client's address (then it is worked out per request).
    networks: bool,
    /// Whether a prefix or a rule's path has capitals (then even a path without any may mean
    /// two things).
    capitals: bool,
    /// Whether `/openapi.json` and `/docs` are served (`[docs] enabled`); if not, their paths
    /// are the routes' like any other.
    docs: bool,
    /// Whether `/.well-known/jwks.json` is served (`[identity_assertion] enabled`).
    jwks: bool,
}

/// Whether `path` is one of the API documentation's paths.
fn is_docs_path(path: &[u8]) -> bool {
    matches!(classify(&Method::GET, path), Route::Own(e) if e.is_docs())
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Router {
        let mut compiled: Vec<_> = routes
            .iter()
            .enumerate()
            .map(|(index, r)| CompiledRoute {
                prefix: r.prefix.clone(),
                index,
                access: match r.auth {
                    RouteAuth::Required => Access::Authenticated(Requirements::default()),
                    RouteAuth::Public => Access::Public,
                },
                rules: r.rules.iter().map(Rule::compile).collect(),
            })
            .collect();
        compiled.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let capitals = |p: &String| p.bytes().any(|b| b.is_ascii_uppercase());
        Router {
            capitals: routes.iter().any(|r| {
                capitals(&r.prefix) || r.rules.iter().any(|rule| rule.paths.iter().any(capitals))
            }),
            networks: routes
                .iter()
                .any(|r| r.rules.iter().any(|rule| !rule.networks.is_empty())),
            routes: compiled,
            case_sensitive: false,
            docs: true,
            jwks: true,
        }
    }

    /// Whether deciding needs the client's address (some rule has `networks`).
    pub fn needs_client(&self) -> bool {
        self.networks
    }

    /// The router the configuration describes.
    pub fn from_config(config: &crate::config::Config) -> Router {
        Router::new(&config.routes)
            .with_case_sensitive_paths(config.proxy.case_sensitive_paths)
            .with_verified_email(config.auth.require_verified_email)
            .with_docs(config.docs.enabled)
            .with_jwks(config.identity_assertion.enabled)
    }

    /// With `auth.require_verified_email`: whatever needs a token needs a verified address
    /// too (a public route or rule still lets an unverified user through as themselves).
    pub fn with_verified_email(mut self, required: bool) -> Router {
        if required {
            for route in &mut self.routes {
                let accesses = std::iter::once(&mut route.access)
                    .chain(route.rules.iter_mut().map(|rule| &mut rule.access));
                for access in accesses {
                    if let Access::Authenticated(needs) = access {
                        needs.verified_email = true;
                    }
                }
            }
        }
        self
    }

    /// Matches prefixes in their own letter case only (off by default).
    pub fn with_case_sensitive_paths(mut self, case_sensitive: bool) -> Router {
        self.case_sensitive = case_sensitive;
        self
    }

    /// Serves the API documentation or not (on by default).
    pub fn with_docs(mut self, docs: bool) -> Router {
        self.docs = docs;
        self
    }

    /// Serves the identity assertions' keys or not (on by default).
    pub fn with_jwks(mut self, jwks: bool) -> Router {
        self.jwks = jwks;
        self
    }

    /// The gateway's own endpoints first, then the routes, both on the path as
    /// [`read_path`] reads it. `client` is the caller's address (after trusted proxies), asked
    /// for only when a rule has `networks` ([`Router::needs_client`]).
    pub fn classify<'r>(
        &'r self,
        method: &Method,
        raw_path: &str,
        client: Option<IpAddr>,
    ) -> Routed<'r> {
        let Some(path) = read_path(raw_path) else {
            return Routed::to(Route::BadPath);
        };
        match classify(method, &path.matched) {
            Route::NotFound => {}
            Route::Own(e) if e.is_docs() && !self.docs => {}
            Route::MethodNotAllowed(_) if !self.docs && is_docs_path(&path.matched) => {}
            Route::Own(Endpoint::Jwks) if !self.jwks => {}
            Route::MethodNotAllowed(_) if !self.jwks && path.matched.as_ref() == JWKS_PATH => {}
            own => return Routed::to(own),
        }
        let matched = path.matched.as_ref();
        let Some((route, rule, access)) = self.decide(method, matched, client, self.case_sensitive)
        else {
            return Routed::to(Route::NotFound);
        };
        // A letter-case variant that a case-sensitive upstream would read as another route's
        // path or another rule's (`/API/x` beside `/api/` and `/`, `/api/ADMIN/x` beside a rule
        // for `/api/admin/`): it passes only where both readings let it through.
        let two_readings = self.capitals || matched.iter().any(u8::is_ascii_uppercase);
        let access = if !self.case_sensitive && two_readings {
            match self.decide(method, matched, client, true) {
                Some((_, _, exact)) if exact != access => Cow::Owned(access.and(exact)),
                _ => Cow::Borrowed(access),
            }
        } else {
            Cow::Borrowed(access)
        };
        Routed {
            route: Route::Proxy(route),
            rule,
            access,
            forward_path: match path.forward {
                Cow::Owned(forward) => Some(forward),
                Cow::Borrowed(_) => None,
            },
        }
    }

    /// The one decision for a read path: the route (longest prefix), the first of its rules
    /// whose matchers all match, and who may pass. `None`: no route.
    fn decide(
        &self,
        method: &Method,
        path: &[u8],
        client: Option<IpAddr>,
        cs: bool,
    ) -> Option<(usize, Option<usize>, &Access)> {
        let route = self
            .routes
            .iter()
            .find(|r| starts_with(path, &r.prefix, cs))?;
        let rule = route
            .rules
            .iter()
            .position(|rule| rule.matches(method, path, client, cs));
        let access = match rule {
            Some(i) => &route.rules[i].access,
            None => &route.access,
        };
        Some((route.index, rule, access))
    }
}

/// Where a request goes, and the path it goes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<'r> {
    pub route: Route,
    /// For a proxied request: the route's rule that decided (its index), if one did.
    pub rule: Option<usize>,
    /// For a proxied request: who may pass (the rule's or the route's; for a letter-case
    /// variant, what both readings allow).
    pub access: Cow<'r, Access>,
    /// For a proxied request whose path the upstream should get in another spelling (escapes
    /// of unreserved characters decoded): that path. `None`: the path as sent.
    pub forward_path: Option<String>,
}

impl Routed<'_> {
    fn to(route: Route) -> Routed<'static> {
        Routed {
            route,
            rule: None,
            access: Cow::Borrowed(&Access::Deny),
            forward_path: None,
        }
    }
}

/// A request path as the gateway reads it (see the module notes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath<'a> {
    /// What an upstream gets: the path as sent, with escapes of unreserved characters decoded.
    pub forward: Cow<'a, str>,
    /// What routes are matched on: every escape decoded and runs of slashes merged.
    pub matched: Cow<'a, [u8]>,
}

/// RFC 3986's unreserved characters: an escape of one means the character itself.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The escape `%XY` at the start of `b`, decoded.
fn escape_at(b: &[u8]) -> Option<u8> {
    match b {
        [b'%', hi, lo, ..] => Some(hex_value(*hi)? << 4 | hex_value(*lo)?),
        _ => None,
    }
}

/// The path of an original request target as a proxy names it: origin-form (`/…`, the query
/// and any fragment cut off), visible ASCII only, and no encoded `/` or `\` (which the proxy
/// and the upstream could each read as a separator or not). Dot segments and the rest are
/// then refused or read by the router, as for a proxied request.
pub fn original_path(target: &[u8]) -> Option<String> {
    if target.first() != Some(&b'/') || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return None;
    }
    let end = target
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    let path = &target[..end];
    let encoded_separator = path.windows(3).any(|w| {
        w[0] == b'%'
            && (w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f')
                || w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c'))
    });
    if encoded_separator {
        return None;
    }
    String::from_utf8(path.to_vec()).ok()
}

/// Reads a request path (without its query) for routing; `None` when it is refused. Borrows
/// (no allocation) for a path without escapes, backslashes or repeated slashes: nearly every
/// request.
pub fn read_path(raw: &str) -> Option<RequestPath<'_>> {
    let b = raw.as_bytes();
    let plain = !b
        .windows(2)
        .any(|w| w[0] == b'%' || w[0] == b'\\' || w == b"//")
        && !matches!(b.last(), Some(b'%' | b'\\'));
    if plain {
        return no_dot_segments(b).then_some(RequestPath {
            forward: Cow::Borrowed(raw),
            matched: Cow::Borrowed(b),
        });
    }
    // Bytes: a decoded escape is ASCII, everything else is copied from `raw`, so this stays UTF-8.
    let mut forward = Vec::with_capacity(raw.len());
    let mut matched = Vec::with_capacity(raw.len());
    let mut changed = false;
    let mut i = 0;
    while i < b.len() {
        let (byte, escaped) = match b[i] {
            b'%' => {
                let value = escape_at(&b[i..])?;
                // NUL ends strings in C upstreams; `%25` before two hex digits is an escape
                // some upstream may decode a second time.
                let double = value == b'%'
                    && b.get(i + 3..i + 5)
                        .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                if value == 0 || double {
                    return None;
                }
                (value, true)
            }
            c => (c, false),
        };
        if byte == b'\\' {
            return None;
        }
        if escaped && !is_unreserved(byte) {
            forward.extend_from_slice(&b[i..i + 3]);
        } else {
            forward.push(byte);
            changed |= escaped;
        }
        if !(byte == b'/' && matched.last() == Some(&b'/')) {
            matched.push(byte);
        }
        i += if escaped { 3 } else { 1 };
    }
    no_dot_segments(&matched).then_some(RequestPath {
        forward: if changed {
            Cow::Owned(String::from_utf8(forward).ok()?)
        } else {
            Cow::Borrowed(raw)
        },
        matched: Cow::Owned(matched),
    })
}

/// No segment is `.` or `..`.
fn no_dot_segments(path: &[u8]) -> bool {
    !path
        .split(|b| *b == b'/')
        .any(|segment| segment == b"." || segment == b"..")
}

/// Whether a configured route prefix reads as itself (see [`read_path`]): no escapes, no
/// repeated slashes, no dot segments; otherwise no request could match it as written.
pub fn is_plain_prefix(prefix: &str) -> bool {
    prefix.starts_with('/')
        && !prefix.contains(['%', '?', '#'])
        && read_path(prefix).is_some_and(|p| matches!(p.matched, Cow::Borrowed(_)))
}

/// The gateway's own paths, as a [`Route`] (see [`own_route`]).
pub fn classify(method: &Method, path: &[u8]) -> Route {
    match own_route(method, path) {
        OwnRoute::Endpoint(endpoint) => Route::Own(endpoint),
        OwnRoute::MethodNotAllowed(allow) => Route::MethodNotAllowed(allow),
        OwnRoute::None => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_listed_once_in_declaration_order() {
        assert_eq!(Endpoint::ALL.len(), Endpoint::DocsAsset as usize + 1);
        for (i, endpoint) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(*endpoint as usize, i, "{}", endpoint.name());
        }
    }

    #[test]
    fn seed_paths_and_methods() {
        let cases: [(Method, &str, Route); 8] = [
            (Method::GET, "/health", Route::Own(Endpoint::Health)),
            (Method::HEAD, "/health", Route::Own(Endpoint::Health)),
            (Method::POST, "/auth/token", Route::Own(Endpoint::Token)),
            (Method::GET, "/auth/token", Route::MethodNotAllowed("POST")),
            (
                Method::PATCH,
                "/auth/users/me",
                Route::Own(Endpoint::UpdateMe),
            ),
            (
                Method::DELETE,
                "/auth/users/me",
                Route::MethodNotAllowed("GET, PATCH"),
            ),
            (Method::GET, "/nowhere", Route::NotFound),
            (Method::GET, "/auth/users/me/", Route::NotFound),
        ];
        for (method, path, expected) in cases {
            assert_eq!(
                classify(&method, path.as_bytes()),
                expected,
                "{method} {path}"
            );
        }
    }

    fn route(prefix: &str, auth: RouteAuth) -> RouteConfig {
        RouteConfig {
            prefix: prefix.into(),
            name: None,
            upstreams: vec!["127.0.0.1:9000".into()],
            auth,
            connect_timeout_ms: 1000,
            read_timeout_ms: 1000,
            tls: false,
            sni: None,
            rules: Vec::new(),
        }
    }

    fn required() -> Access {
        Access::Authenticated(Requirements::default())
    }

    fn routed(r: &Router, path: &str) -> Route {
        r.classify(&Method::GET, path, None).route
    }

    #[test]
    fn longest_prefix_wins_and_own_endpoints_come_first() {
        let r = Router::new(&[
            route("/api/", RouteAuth::Required),
            route("/api/public/", RouteAuth::Public),
            route("/", RouteAuth::Public),
        ]);
        assert_eq!(routed(&r, "/api/x"), Route::Proxy(0));
        assert_eq!(routed(&r, "/api/public/x"), Route::Proxy(1));
        assert_eq!(routed(&r, "/other"), Route::Proxy(2));
        assert_eq!(routed(&r, "/health"), Route::Own(Endpoint::Health));
        assert_eq!(routed(&r, "/auth/token"), Route::MethodNotAllowed("POST"));
        assert_eq!(routed(&Router::new(&[]), "/api/x"), Route::NotFound);
    }

    #[test]
    fn dot_segments_are_refused_in_any_spelling() {
        let r = Router::new(&[route("/api/public/", RouteAuth::Public)]);
        for path in [
            "/api/public/../admin",
            "/api/public/%2e%2e/admin",
            "/api/public/%2E./admin",
            "/api/public/.%2e%2fadmin",
            "/api/public/./x",
            "/api/public/..",
            "/api/public/a\\..\\b",
            "/api/public/%5c..",
            "/api/public/%5Cx",
        ] {
            assert_eq!(routed(&r, path), Route::BadPath, "{path}");
        }
        assert_eq!(routed(&r, "/api/public/a..b/.c"), Route::Proxy(0));
    }

    #[test]
    fn escapes_of_a_protected_prefix_reach_its_route() {
        let r = Router::new(&[
            route("/api/", RouteAuth::Required),
            route("/", RouteAuth::Public),
        ]);
        for path in [
            "/%61pi/admin",
            "/ap%69/admin",
            "/api%2Fadmin",
            "/api%2fadmin",
            "%2Fapi/admin",
            "//api/admin",
            "/%2F/api/admin",
            "/api//admin",
            "/%61%70%69%2f%61dmin",
        ] {
            assert_eq!(routed(&r, path), Route::Proxy(0), "{path}");
        }
        // Escapes of unreserved characters are decoded for the upstream; the rest stay.
        let forward = |path: &str| r.classify(&Method::GET, path, None).forward_path;
        assert_eq!(forward("/%61pi/admin").as_deref(), Some("/api/admin"));
        assert_eq!(
            forward("/%61pi%2Fa%20b%7e").as_deref(),
            Some("/api%2Fa%20b~")
        );
        assert_eq!(forward("/api%2Fadmin"), None);
        assert_eq!(forward("/api/admin"), None);
        assert_eq!(forward("/api/caf%C3%A9/ü"), None);
        assert_eq!(forward("/%61pi/ü").as_deref(), Some("/api/ü"));
        // Own endpoints read the same way (as the seed's Starlette decoded paths).
        assert_eq!(routed(&r, "/auth/users/%6De"), Route::Own(Endpoint::Me));
    }

    #[test]
    fn letter_case_variants_of_a_protected_prefix_take_its_route() {
        let r = Router::new(&[
            route("/api/", RouteAuth::Required),
            route("/", RouteAuth::Public),
        ]);
        for path in ["/API/admin/users", "/Api/Admin/users", "/%41pi/admin/users"] {
            let routed = r.classify(&Method::GET, path, None);
            assert_eq!(routed.route, Route::Proxy(0), "{path}");
            assert_eq!(*routed.access, required(), "{path}");
        }
        // The upstream gets the letters as sent.
        assert_eq!(
            r.classify(&Method::GET, "/%41pi/x", None)
                .forward_path
                .as_deref(),
            Some("/Api/x")
        );
        // Told that upstreams tell case apart, the gateway does too.
        let exact = r.clone().with_case_sensitive_paths(true);
        let routed = exact.classify(&Method::GET, "/API/admin/users", None);
        assert_eq!(
            (routed.route, routed.access.into_owned()),
            (Route::Proxy(1), Access::Public)
        );
    }

    #[test]
    fn a_case_variant_of_a_public_prefix_is_not_public_if_its_exact_reading_is_protected() {
        // To a case-sensitive upstream `/PUBLIC/x` is not under `/public/`, so it is `/`'s.
        let r = Router::new(&[
            route("/", RouteAuth::Required),
            route("/public/", RouteAuth::Public),
        ]);
        let routed = r.classify(&Method::GET, "/PUBLIC/x", None);
        assert_eq!(
            (routed.route, routed.access.into_owned()),
            (Route::Proxy(1), required())
        );
        let routed = r.classify(&Method::GET, "/public/x", None);
        assert_eq!(
            (routed.route, routed.access.into_owned()),
            (Route::Proxy(1), Access::Public)
        );
    }

    fn rule(paths: &[&str], allow: RuleAllow) -> RuleConfig {
        RuleConfig {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            allow,
            ..RuleConfig::default()
        }
    }

    fn needing(roles: &[&str]) -> Access {
        Access::Authenticated(Requirements {
            roles: Arc::new([roles.iter().map(|r| r.to_string()).collect()]),
            ..Requirements::default()
        })
    }

    /// The example of the configuration reference: health public, admin for admins and ops
    /// from inside on GET and POST, every other admin request denied.
    fn api_with_rules() -> Router {
        let mut api = route("/api/", RouteAuth::Required);
        api.rules = vec![
            rule(&["/api/health"], RuleAllow::Public),
            RuleConfig {
                paths: vec!["/api/admin/".into()],
                methods: vec!["GET".into(), "post".into()],
                networks: vec!["10.0.0.0/8".into(), "127.0.0.1/32".into()],
                roles: vec!["admin".into(), "ops".into()],
                ..RuleConfig::default()
            },
            rule(&["/api/admin/"], RuleAllow::Deny),
        ];
        Router::new(&[api, route("/", RouteAuth::Public)])
    }

    #[test]
    fn the_first_rule_whose_matchers_all_match_decides() {
        let r = api_with_rules();
        let inside = Some("10.1.2.3".parse().unwrap());
        let outside = Some("192.0.2.1".parse().unwrap());
        let decide = |method: Method, path: &str, client| {
            let routed = r.classify(&method, path, client);
            (routed.rule, routed.access.into_owned())
        };
        assert_eq!(
            decide(Method::GET, "/api/health", None),
            (Some(0), Access::Public)
        );
        assert_eq!(
            decide(Method::GET, "/api/healthz", None),
            (Some(0), Access::Public)
        );
        assert_eq!(decide(Method::GET, "/api/x", None), (None, required()));
        assert_eq!(
            decide(Method::GET, "/api/admin/users", inside),
            (Some(1), needing(&["admin", "ops"]))
        );
        // HEAD is GET without the body; methods are matched in any letter case as configured.
        assert_eq!(decide(Method::HEAD, "/api/admin/users", inside).0, Some(1));
        assert_eq!(decide(Method::POST, "/api/admin/users", inside).0, Some(1));
        // Another method, another network or no known address: the deny rule.
        for (method, client) in [
            (Method::DELETE, inside),
            (Method::GET, outside),
            (Method::GET, None),
        ] {
            assert_eq!(
                decide(method.clone(), "/api/admin/users", client),
                (Some(2), Access::Deny),
                "{method} {client:?}"
            );
        }
        // Rules are matched on the path as read: escapes, repeated slashes, letter case.
        for path in [
            "/api/%61dmin/x",
            "/api//admin/x",
            "/API/Admin/x",
            "/api/admin%2Fx",
        ] {
            assert_eq!(
                decide(Method::GET, path, outside),
                (Some(2), Access::Deny),
                "{path}"
            );
        }
        assert!(r.needs_client());
        assert!(!Router::new(&[route("/", RouteAuth::Public)]).needs_client());
    }

    #[test]
    fn a_case_variant_gets_what_both_readings_of_the_rules_allow() {
        // A case-sensitive upstream reads `/api/PUBLIC/x` as outside the public rule, so it
        // needs the route's token; `/api/Secret/x` is the deny rule's in one reading.
        let mut api = route("/api/", RouteAuth::Required);
        api.rules = vec![
            rule(&["/api/public/"], RuleAllow::Public),
            rule(&["/api/secret/"], RuleAllow::Deny),
        ];
        let r = Router::new(&[api]);
        let access = |path: &str| r.classify(&Method::GET, path, None).access.into_owned();
        assert_eq!(access("/api/public/x"), Access::Public);
        assert_eq!(access("/api/PUBLIC/x"), required());
        assert_eq!(access("/api/Secret/x"), Access::Deny);
        // Capitals in the configuration: a path in small letters may mean two things too.
        let mut api = route("/api/", RouteAuth::Required);
        api.rules = vec![rule(&["/api/Public/"], RuleAllow::Public)];
        let capitals = Router::new(&[api]);
        let routed = capitals.classify(&Method::GET, "/api/public/x", None);
        assert_eq!(*routed.access, required());
        let routed = capitals.classify(&Method::GET, "/api/Public/x", None);
        assert_eq!(*routed.access, Access::Public);
        let exact = r.clone().with_case_sensitive_paths(true);
        let access = |path: &str| exact.classify(&Method::GET, path, None).access.into_owned();
        assert_eq!(access("/api/PUBLIC/x"), required());
        assert_eq!(access("/api/Secret/x"), required());
    }

    #[test]
    fn both_readings_need_every_role_set_of_both() {
        let a = needing(&["admin"]);
        let b = Access::Authenticated(Requirements {
            roles: Arc::new([Arc::from(vec!["ops".to_string()])]),
            verified_email: true,
            mfa: false,
        });
        let both = a.and(&b);
        let Access::Authenticated(needs) = &both else {
            panic!("{both:?}");
        };
        assert_eq!(needs.roles.len(), 2);
        assert!(needs.verified_email && !needs.mfa);
        assert_eq!(Access::Public.and(&a), a);
        assert_eq!(a.and(&Access::Deny), Access::Deny);
    }

    #[test]
    fn escapes_no_client_needs_are_refused() {
        for path in [
            "/api/%",
            "/api/%4",
            "/api/%zz",
            "/api/%00",
            "/api/%2561dmin",
            "/api/%252F",
        ] {
            assert_eq!(read_path(path), None, "{path}");
        }
        // A `%25` that is not an escape of an escape is just a percent sign.
        assert!(read_path("/api/100%25").is_some());
        assert!(read_path("/api/100%25zz").is_some());
    }

    #[test]
    fn plain_paths_are_read_without_allocating() {
        for path in ["/", "/api/x", "/api/caf\u{e9}", "/a.b/c..d"] {
            let read = read_path(path).unwrap();
            assert!(matches!(read.forward, Cow::Borrowed(_)), "{path}");
            assert!(matches!(read.matched, Cow::Borrowed(_)), "{path}");
        }
    }

    #[test]
    fn prefixes_must_read_as_themselves() {
        for good in ["/", "/api/", "/api", "/a.b/"] {
            assert!(is_plain_prefix(good), "{good}");
        }
        for bad in [
            "api/", "/%61pi/", "//api/", "/api//x/", "/../", "/a\\b", "/a?b", "/a#b",
        ] {
            assert!(!is_plain_prefix(bad), "{bad}");
        }
    }
}
