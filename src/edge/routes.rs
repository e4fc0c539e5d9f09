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

use crate::config::{RouteAuth, RouteConfig};
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

/// The configured routes, longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// (prefix, index into the config's routes, auth)
    prefixes: Vec<(String, usize, RouteAuth)>,
    /// Whether prefixes match only in their own letter case (`proxy.case_sensitive_paths`).
    case_sensitive: bool,
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
        let mut prefixes: Vec<_> = routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.prefix.clone(), i, r.auth))
            .collect();
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Router {
            prefixes,
            case_sensitive: false,
            docs: true,
            jwks: true,
        }
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
    /// [`read_path`] reads it.
    pub fn classify(&self, method: &Method, raw_path: &str) -> Routed {
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
        let exact = |prefix: &str| matched.starts_with(prefix.as_bytes());
        let folded = |prefix: &str| {
            matched
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
        };
        let found = if self.case_sensitive {
            self.prefixes.iter().find(|(prefix, _, _)| exact(prefix))
        } else {
            self.prefixes.iter().find(|(prefix, _, _)| folded(prefix))
        };
        let Some((prefix, index, auth)) = found else {
            return Routed::to(Route::NotFound);
        };
        // A letter-case variant that a case-sensitive upstream would read as a path of
        // another route (`/API/x` beside `/api/` and `/`, or `/PUBLIC/x` beside `/public/`
        // and `/`): it is refused unless both routes would let it through.
        let mut auth = *auth;
        if !self.case_sensitive && !exact(prefix) {
            let other = self.prefixes.iter().find(|(prefix, _, _)| exact(prefix));
            if let Some((_, _, RouteAuth::Required)) = other {
                auth = RouteAuth::Required;
            }
        }
        Routed {
            route: Route::Proxy(*index),
            auth,
            forward_path: match path.forward {
                Cow::Owned(forward) => Some(forward),
                Cow::Borrowed(_) => None,
            },
        }
    }
}

/// Where a request goes, and the path it goes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub route: Route,
    /// For a proxied request: whether it needs a signed-in user (the route's `auth`, or the
    /// stricter of two routes a letter-case variant could mean).
    pub auth: RouteAuth,
    /// For a proxied request whose path the upstream should get in another spelling (escapes
    /// of unreserved characters decoded): that path. `None`: the path as sent.
    pub forward_path: Option<String>,
}

impl Routed {
    fn to(route: Route) -> Routed {
        Routed {
            route,
            auth: RouteAuth::Required,
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
        }
    }

    fn routed(r: &Router, path: &str) -> Route {
        r.classify(&Method::GET, path).route
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
        let forward = |path: &str| r.classify(&Method::GET, path).forward_path;
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
            let routed = r.classify(&Method::GET, path);
            assert_eq!(routed.route, Route::Proxy(0), "{path}");
            assert_eq!(routed.auth, RouteAuth::Required, "{path}");
        }
        // The upstream gets the letters as sent.
        assert_eq!(
            r.classify(&Method::GET, "/%41pi/x").forward_path.as_deref(),
            Some("/Api/x")
        );
        // Told that upstreams tell case apart, the gateway does too.
        let exact = r.clone().with_case_sensitive_paths(true);
        let routed = exact.classify(&Method::GET, "/API/admin/users");
        assert_eq!(
            (routed.route, routed.auth),
            (Route::Proxy(1), RouteAuth::Public)
        );
    }

    #[test]
    fn a_case_variant_of_a_public_prefix_is_not_public_if_its_exact_reading_is_protected() {
        // To a case-sensitive upstream `/PUBLIC/x` is not under `/public/`, so it is `/`'s.
        let r = Router::new(&[
            route("/", RouteAuth::Required),
            route("/public/", RouteAuth::Public),
        ]);
        let routed = r.classify(&Method::GET, "/PUBLIC/x");
        assert_eq!(
            (routed.route, routed.auth),
            (Route::Proxy(1), RouteAuth::Required)
        );
        let routed = r.classify(&Method::GET, "/public/x");
        assert_eq!(
            (routed.route, routed.auth),
            (Route::Proxy(1), RouteAuth::Public)
        );
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
