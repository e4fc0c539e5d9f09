//! Where a request goes: one of the gateway's own endpoints, or a configured route (longest
//! prefix wins), or nowhere. Pure: method and path in, decision out.

use http::Method;

use crate::config::{RouteAuth, RouteConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    Register,
    Token,
    Me,
    UpdateMe,
}

impl Endpoint {
    /// Whether the handler reads a request body.
    pub fn reads_body(self) -> bool {
        matches!(
            self,
            Endpoint::Register | Endpoint::Token | Endpoint::UpdateMe
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Health => "health",
            Endpoint::Ready => "ready",
            Endpoint::Register => "register",
            Endpoint::Token => "token",
            Endpoint::Me => "users_me",
            Endpoint::UpdateMe => "update_users_me",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Own(Endpoint),
    /// One of our paths with another method: 405 with this `Allow`.
    MethodNotAllowed(&'static str),
    /// The index of a configured route.
    Proxy(usize),
    /// A path with `.`/`..` segments (plain or percent-encoded) or backslashes: refused before
    /// it can match one prefix here and mean another path upstream.
    BadPath,
    NotFound,
}

/// The configured routes, longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// (prefix, index into the config's routes, auth)
    prefixes: Vec<(String, usize, RouteAuth)>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Router {
        let mut prefixes: Vec<_> = routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.prefix.clone(), i, r.auth))
            .collect();
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Router { prefixes }
    }

    /// The gateway's own endpoints first, then the routes.
    pub fn classify(&self, method: &Method, path: &str) -> Route {
        match classify(method, path) {
            Route::NotFound => {}
            own => return own,
        }
        if !is_canonical(path) {
            return Route::BadPath;
        }
        self.prefixes
            .iter()
            .find(|(prefix, _, _)| path.starts_with(prefix.as_str()))
            .map_or(Route::NotFound, |(_, i, _)| Route::Proxy(*i))
    }
}

/// No dot segments and no backslashes, also when percent-encoded. Allocation-free: it runs on
/// every proxied request.
pub fn is_canonical(path: &str) -> bool {
    let b = path.as_bytes();
    // Decoded view: `%2e` is a dot, `%2f` a slash, `%5c` (like `\`) refuses outright.
    let mut segment_dots = 0usize; // dots seen in the current segment, -1 when anything else
    let mut only_dots = true;
    let mut i = 0;
    let end_segment = |dots: usize, only: bool| only && (dots == 1 || dots == 2);
    while i <= b.len() {
        let (unit, step) = match b.get(i) {
            None => (b'/', 1),
            Some(b'%') if i + 3 <= b.len() => {
                match (b[i + 1].to_ascii_lowercase(), b[i + 2].to_ascii_lowercase()) {
                    (b'2', b'e') => (b'.', 3),
                    (b'2', b'f') => (b'/', 3),
                    (b'5', b'c') => return false,
                    _ => (b'%', 1),
                }
            }
            Some(b'\\') => return false,
            Some(c) => (*c, 1),
        };
        match unit {
            b'/' => {
                if end_segment(segment_dots, only_dots) {
                    return false;
                }
                segment_dots = 0;
                only_dots = true;
            }
            b'.' => segment_dots += 1,
            _ => only_dots = false,
        }
        i += step;
    }
    true
}

pub fn classify(method: &Method, path: &str) -> Route {
    // HEAD is answered like GET, without the body (as Starlette does).
    let get = method == Method::GET || method == Method::HEAD;
    match path {
        "/health" if get => Route::Own(Endpoint::Health),
        "/health" => Route::MethodNotAllowed("GET"),
        "/ready" if get => Route::Own(Endpoint::Ready),
        "/ready" => Route::MethodNotAllowed("GET"),
        "/auth/register" if method == Method::POST => Route::Own(Endpoint::Register),
        "/auth/register" => Route::MethodNotAllowed("POST"),
        "/auth/token" if method == Method::POST => Route::Own(Endpoint::Token),
        "/auth/token" => Route::MethodNotAllowed("POST"),
        "/auth/users/me" if get => Route::Own(Endpoint::Me),
        "/auth/users/me" if method == Method::PATCH => Route::Own(Endpoint::UpdateMe),
        "/auth/users/me" => Route::MethodNotAllowed("GET, PATCH"),
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_paths_and_methods() {
        assert_eq!(
            classify(&Method::GET, "/health"),
            Route::Own(Endpoint::Health)
        );
        assert_eq!(
            classify(&Method::HEAD, "/health"),
            Route::Own(Endpoint::Health)
        );
        assert_eq!(
            classify(&Method::POST, "/auth/token"),
            Route::Own(Endpoint::Token)
        );
        assert_eq!(
            classify(&Method::GET, "/auth/token"),
            Route::MethodNotAllowed("POST")
        );
        assert_eq!(
            classify(&Method::PATCH, "/auth/users/me"),
            Route::Own(Endpoint::UpdateMe)
        );
        assert_eq!(
            classify(&Method::DELETE, "/auth/users/me"),
            Route::MethodNotAllowed("GET, PATCH")
        );
        assert_eq!(classify(&Method::GET, "/nowhere"), Route::NotFound);
        assert_eq!(classify(&Method::GET, "/auth/users/me/"), Route::NotFound);
    }

    fn route(prefix: &str, auth: RouteAuth) -> RouteConfig {
        RouteConfig {
            prefix: prefix.into(),
            upstreams: vec!["127.0.0.1:9000".into()],
            auth,
            connect_timeout_ms: 1000,
            read_timeout_ms: 1000,
        }
    }

    #[test]
    fn longest_prefix_wins_and_own_endpoints_come_first() {
        let r = Router::new(&[
            route("/api/", RouteAuth::Required),
            route("/api/public/", RouteAuth::Public),
            route("/", RouteAuth::Public),
        ]);
        assert_eq!(r.classify(&Method::GET, "/api/x"), Route::Proxy(0));
        assert_eq!(r.classify(&Method::GET, "/api/public/x"), Route::Proxy(1));
        assert_eq!(r.classify(&Method::GET, "/other"), Route::Proxy(2));
        assert_eq!(
            r.classify(&Method::GET, "/health"),
            Route::Own(Endpoint::Health)
        );
        assert_eq!(
            r.classify(&Method::GET, "/auth/token"),
            Route::MethodNotAllowed("POST")
        );
        assert_eq!(
            Router::new(&[]).classify(&Method::GET, "/api/x"),
            Route::NotFound
        );
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
        ] {
            assert_eq!(r.classify(&Method::GET, path), Route::BadPath, "{path}");
        }
        assert_eq!(
            r.classify(&Method::GET, "/api/public/a..b/.c"),
            Route::Proxy(0)
        );
    }
}
