//! CORS as the seed's Starlette middleware answered it (credentials allowed, any method and
//! requested header, configured origins), with one deliberate difference: a preflight from a
//! foreign origin learns nothing about the policy (no `Access-Control-*` headers at all).

use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_ALLOW_ORIGIN, VARY,
};

use crate::own::api::Reply;

pub const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, Access-Control-Request-Private-Network";
const ALLOW_METHODS: &str = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, QUERY";
const MAX_AGE: &str = "600";

#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<AllowedOrigin>,
}

/// A configured origin, also as the header value that allows it (made once: every proxied
/// response to a browser carries one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    pub text: String,
    pub value: HeaderValue,
}

impl Cors {
    /// Origins that cannot be header values (configuration validation already refuses them)
    /// are left out.
    pub fn new(origins: &[String]) -> Cors {
        Cors {
            origins: origins
                .iter()
                .filter_map(|o| {
                    Some(AllowedOrigin {
                        text: o.clone(),
                        value: HeaderValue::from_str(o).ok()?,
                    })
                })
                .collect(),
        }
    }

    /// The configured origin equal to `origin`, if any.
    pub fn allowed_origin(&self, origin: &[u8]) -> Option<&AllowedOrigin> {
        self.origins.iter().find(|o| o.text.as_bytes() == origin)
    }

    /// A preflight is `OPTIONS` with both `Origin` and `Access-Control-Request-Method`.
    pub fn is_preflight(
        method: &http::Method,
        origin: Option<&[u8]>,
        request_method: Option<&[u8]>,
    ) -> bool {
        method == http::Method::OPTIONS && origin.is_some() && request_method.is_some()
    }

    /// The gateway's answer to a preflight, on any path.
    pub fn preflight(&self, origin: &[u8], request_headers: Option<&[u8]>) -> Reply {
        let Some(origin) = self.allowed_origin(origin).map(|o| o.text.as_str()) else {
            return Reply::text(400, "Disallowed CORS origin").with_header("vary", PREFLIGHT_VARY);
        };
        let mut reply = Reply::text(200, "OK")
            .with_header("vary", PREFLIGHT_VARY)
            .with_header("access-control-allow-methods", ALLOW_METHODS)
            .with_header("access-control-max-age", MAX_AGE)
            .with_header("access-control-allow-credentials", "true")
            .with_header("access-control-allow-origin", origin);
        if let Some(requested) = request_headers.and_then(|h| std::str::from_utf8(h).ok()) {
            // Any requested header is allowed: echo the list back.
            reply = reply.with_header("access-control-allow-headers", requested);
        }
        reply
    }

    /// The CORS rule for an ordinary (non-preflight) response, own or proxied: with an
    /// `Origin`, credentials are allowed (as Starlette sends it) and a configured origin is
    /// echoed; `Vary: Origin` always. Allocation-free for the proxy's hot path.
    pub fn simple(&self, origin: Option<&[u8]>) -> SimpleCors<'_> {
        SimpleCors {
            allow_credentials: origin.is_some(),
            allow_origin: origin.and_then(|o| self.allowed_origin(o)),
        }
    }

    /// [`Cors::simple`] as headers, in the order Starlette sends them.
    pub fn simple_headers(&self, origin: Option<&[u8]>) -> Vec<(&'static str, String)> {
        let rule = self.simple(origin);
        let mut headers = Vec::with_capacity(3);
        if rule.allow_credentials {
            headers.push(("access-control-allow-credentials", "true".to_string()));
        }
        if let Some(o) = rule.allow_origin {
            headers.push(("access-control-allow-origin", o.text.clone()));
        }
        headers.push(("vary", "Origin".to_string()));
        headers
    }
}

impl Cors {
    /// Puts the gateway's CORS rule on a proxied response: an upstream's own
    /// `Access-Control-*` headers are replaced (the gateway owns the policy), and `Origin` is
    /// added to whatever `Vary` the upstream sent.
    pub fn apply_to_proxied(&self, headers: &mut HeaderMap, origin: Option<&[u8]>) {
        // One pass over the names: the upstream's `Access-Control-*` (usually none, and then no
        // allocation) and whether it sent a `Vary`.
        let mut theirs: Vec<HeaderName> = Vec::new();
        let mut vary = false;
        for name in headers.keys() {
            if *name == VARY {
                vary = true;
            } else if name.as_str().starts_with("access-control-") {
                theirs.push(name.clone());
            }
        }
        for name in theirs {
            headers.remove(&name);
        }
        let rule = self.simple(origin);
        if rule.allow_credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(allowed) = rule.allow_origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed.value.clone());
        }
        if !vary {
            headers.append(VARY, HeaderValue::from_static("Origin"));
            return;
        }
        let merged = headers
            .get(VARY)
            .filter(|theirs| !theirs.is_empty())
            .and_then(|theirs| {
                let mut merged = theirs.as_bytes().to_vec();
                merged.extend_from_slice(b", Origin");
                HeaderValue::from_bytes(&merged).ok()
            });
        headers.insert(VARY, merged.unwrap_or(HeaderValue::from_static("Origin")));
    }
}

/// See [`Cors::simple`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleCors<'a> {
    pub allow_credentials: bool,
    pub allow_origin: Option<&'a AllowedOrigin>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors::new(&["http://localhost:3000".to_string()])
    }

    #[test]
    fn preflight_from_the_frontend_echoes_requested_headers() {
        let r = cors().preflight(
            b"http://localhost:3000",
            Some(b"content-type,authorization"),
        );
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"OK");
        let h: Vec<_> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert!(h.contains(&("access-control-allow-origin", "http://localhost:3000")));
        assert!(h.contains(&("access-control-allow-headers", "content-type,authorization")));
        assert!(h.contains(&("access-control-allow-credentials", "true")));
    }

    #[test]
    fn proxied_responses_carry_the_gateways_policy_not_the_upstreams() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        headers.insert(
            HeaderName::from_static("access-control-allow-headers"),
            HeaderValue::from_static("*"),
        );
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        cors().apply_to_proxied(&mut headers, Some(b"http://localhost:3000"));
        assert_eq!(
            headers[ACCESS_CONTROL_ALLOW_ORIGIN],
            "http://localhost:3000"
        );
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(headers.get("access-control-allow-headers").is_none());
        assert_eq!(headers[VARY], "Accept-Encoding, Origin");

        let mut headers = HeaderMap::new();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        cors().apply_to_proxied(&mut headers, Some(b"http://evil.example"));
        assert!(headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(headers[VARY], "Origin");

        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static(""));
        cors().apply_to_proxied(&mut headers, None);
        assert_eq!(headers.get_all(VARY).iter().collect::<Vec<_>>(), ["Origin"]);
        assert!(headers.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    }

    #[test]
    fn foreign_origins_get_no_allow_headers() {
        let r = cors().preflight(b"http://evil.example", None);
        assert_eq!(r.status, 400);
        assert!(r
            .headers
            .iter()
            .all(|(k, _)| !k.starts_with("access-control")));
        let simple = cors().simple_headers(Some(b"http://evil.example"));
        assert!(simple
            .iter()
            .all(|(k, _)| *k != "access-control-allow-origin"));
        let own = cors().simple_headers(Some(b"http://localhost:3000"));
        assert!(own.contains(&(
            "access-control-allow-origin",
            "http://localhost:3000".into()
        )));
        assert_eq!(
            cors().simple_headers(None),
            vec![("vary", "Origin".to_string())]
        );
    }
}
