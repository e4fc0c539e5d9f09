//! Identity headers: what a client may not send (anything in the gateway's namespace, however
//! it is spelt), and what the gateway sets for upstreams. Pure functions over header names and
//! values; `edge::proxy` applies them to requests.

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, COOKIE, HOST, ORIGIN,
};

pub const USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub const USER_EMAIL: HeaderName = HeaderName::from_static("x-user-email");
pub const USER_EMAIL_VERIFIED: HeaderName = HeaderName::from_static("x-user-email-verified");
pub const USER_ROLES: HeaderName = HeaderName::from_static("x-user-roles");
pub const USER_AAL: HeaderName = HeaderName::from_static("x-user-aal");
/// `x-request-id`, as text for the gateway's own answers (which spell headers as uvicorn does).
pub const REQUEST_ID_NAME: &str = "x-request-id";
pub const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_NAME);
pub const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// A header name as the identity rules compare it: lower-cased, every character other than an
/// ASCII letter or digit turned into `-` (so `X_User_Id`, `x.user.id` and `X-USER-ID` are one).
pub fn normalize_name(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                b.to_ascii_lowercase() as char
            } else {
                '-'
            }
        })
        .collect()
}

/// Whether `name`, normalised as in [`normalize_name`], starts with (or, with `whole`, equals)
/// `target` (lower-case, `-` as separator). Allocation-free: this runs on every header of every
/// proxied request.
fn normalized_matches(name: &[u8], target: &[u8], whole: bool) -> bool {
    if name.len() < target.len() || (whole && name.len() != target.len()) {
        return false;
    }
    name.iter().zip(target).all(|(n, t)| {
        let n = if n.is_ascii_alphanumeric() {
            n.to_ascii_lowercase()
        } else {
            b'-'
        };
        n == *t
    })
}

/// Headers only the gateway may set: the `x-user-*` and `x-forwarded-*` families,
/// `x-identity-assertion`, `forwarded` and `x-real-ip`. (`x-request-id` is kept when well-formed; see [`valid_request_id`].)
pub fn is_reserved(name: &str) -> bool {
    is_reserved_name(name.as_bytes())
}

/// [`is_reserved`] over raw name bytes (as a request head carries them).
pub fn is_reserved_name(n: &[u8]) -> bool {
    normalized_matches(n, b"x-user-", false)
        || normalized_matches(n, b"x-identity-assertion", true)
        || normalized_matches(n, b"x-forwarded-", false)
        || normalized_matches(n, b"forwarded", true)
        || normalized_matches(n, b"x-real-ip", true)
}

/// Whether `name` is some spelling of `X-Request-Id` (the gateway's is the only one an upstream
/// sees: frameworks that fold `_` into `-` would otherwise see two).
pub fn is_request_id_name(name: &[u8]) -> bool {
    normalized_matches(name, b"x-request-id", true)
}

/// Request ids for requests that came without a good one: a random per-process prefix and a
/// counter, so that making one costs no system call. Unique, not secret.
pub struct RequestIds {
    prefix: u64,
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        let bytes = *uuid::Uuid::new_v4().as_bytes();
        let (a, b) = bytes.split_at(8);
        RequestIds {
            prefix: u64::from_le_bytes(a.try_into().unwrap_or_default()),
            next: std::sync::atomic::AtomicU64::new(u64::from_le_bytes(
                b.try_into().unwrap_or_default(),
            )),
        }
    }

    /// The next id (32 lower-case hex digits: prefix, counter) as a header value, made without
    /// formatting machinery: it is on every proxied request.
    pub fn next_header(&self) -> http::HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut id = [0u8; 32];
        for (i, word) in [self.prefix, n].into_iter().enumerate() {
            for (j, digit) in id[i * 16..(i + 1) * 16].iter_mut().enumerate() {
                *digit = HEX[((word >> (60 - 4 * j)) & 0xf) as usize];
            }
        }
        // An owned array: one allocation, and the clones for the upstream and the response
        // only count references (a copied slice would be promoted, a second allocation, at
        // its first clone).
        http::HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id))
            .unwrap_or_else(|_| http::HeaderValue::from_static("0"))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

/// A request id worth keeping: 1 to 128 characters of letters, digits, `-`, `_`, `.`, `:`.
pub fn valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A client's `Connection` header without the tokens that nominate identity headers. Pingora
/// removes nominated headers before the gateway sets its own (and refuses nominations of
/// `Host` and `X-Forwarded-*`); dropping our namespace from the list first keeps such requests
/// working while the client's values are gone anyway. `None`: nothing left.
pub fn connection_without_reserved(value: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(value);
    let kept: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty() && !is_reserved(t) && !is_request_id_name(t.as_bytes()))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// Whether a `Connection` value nominates a header in the identity namespace (see
/// [`connection_without_reserved`]); most requests' `keep-alive` does not.
fn nominates_reserved(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|t| is_reserved_name(t) || is_request_id_name(t))
}

/// Appends `ip` in its usual text form.
pub fn write_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => out.extend_from_slice(ipv4_text(v4, &mut [0; 15])),
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

/// `ip` as a header value, for `X-Forwarded-For`: made once per connection and cloned into
/// every request's upstream head, so its bytes are shared from the start (a clone counts a
/// reference; a value copied from a slice would allocate again at its first clone).
pub fn shared_ip_header(ip: IpAddr) -> HeaderValue {
    let mut text = Vec::with_capacity(15);
    write_ip(ip, &mut text);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .unwrap_or(HeaderValue::from_static(""))
}

/// Dotted-decimal IPv4, written digit by digit into `buf`. Nearly every client, and every
/// request of a benchmark, is IPv4, and this runs for every proxied request (for
/// `X-Forwarded-For` and the access log): `to_string` would go through the formatting
/// machinery and a growing `String`.
fn ipv4_text(ip: std::net::Ipv4Addr, buf: &mut [u8; 15]) -> &[u8] {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        for d in &digits[skip..] {
            buf[len] = b'0' + d;
            len += 1;
        }
    }
    &buf[..len]
}

/// What the proxy needs to know of a request's headers, found in one pass over them: a lookup
/// by name hashes the name and probes the map, and every header has to be looked at anyway for
/// the identity namespace. Each header value is the first of its name, as `HeaderMap::get`
/// would give it.
#[derive(Debug, Default)]
pub struct HeadFacts<'a> {
    /// Names, values and their separators (`": "`, CRLF), as the head arrived.
    pub headers_len: usize,
    pub request_id: Option<&'a HeaderValue>,
    pub origin: Option<&'a HeaderValue>,
    pub authorization: Option<&'a HeaderValue>,
    pub host: Option<&'a HeaderValue>,
    /// What [`prepare_upstream_headers`] will have to clean up.
    pub cleanup: Cleanup,
}

/// Client headers the upstream must not see.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleanup {
    /// A header in the identity namespace, or some spelling of `X-Request-Id`.
    pub reserved: bool,
    /// A `Connection` header that nominates one of those.
    pub nominations: bool,
}

/// [`HeadFacts`] of `headers`.
pub fn scan_head(headers: &HeaderMap) -> HeadFacts<'_> {
    let mut facts = HeadFacts::default();
    for (name, value) in headers {
        let text = name.as_str().as_bytes();
        facts.headers_len += text.len() + value.len() + ": \r\n".len();
        if *name == HOST {
            facts.host.get_or_insert(value);
        } else if *name == AUTHORIZATION {
            facts.authorization.get_or_insert(value);
        } else if *name == ORIGIN {
            facts.origin.get_or_insert(value);
        } else if *name == CONNECTION {
            facts.cleanup.nominations |= nominates_reserved(value.as_bytes());
        } else if matches!(text.first(), Some(b'x' | b'f')) {
            // Names are lower case, and every reserved one begins with `x` or `f`.
            if *name == REQUEST_ID {
                facts.request_id.get_or_insert(value);
            }
            facts.cleanup.reserved |= is_reserved_name(text) || is_request_id_name(text);
        }
    }
    facts
}

/// The identity headers of a signed-in user.
pub struct UserHeaders {
    pub id: HeaderValue,
    pub email: HeaderValue,
    pub email_verified: bool,
    /// `X-User-Roles`: sorted, comma-separated, empty when none.
    pub roles: HeaderValue,
    /// `X-User-Aal`: `aal2` when the session passed a second factor, `aal1` otherwise.
    pub aal2: bool,
    /// `X-Identity-Assertion` (with `[identity_assertion] enabled`).
    pub assertion: Option<HeaderValue>,
}

/// The headers of a forward-auth answer (`/auth/verify`'s 200), for the proxy in front to copy
/// to its upstream: the user's, or for an anonymous caller of a public rule every one of them
/// present and empty, so that a proxy which copies a header missing from the answer as some
/// placeholder of its own (Caddy 2.6) copies nothing.
pub fn forward_auth_headers(user: Option<UserHeaders>) -> Vec<(&'static str, String)> {
    const NAMES: [&str; 6] = [
        "x-user-id",
        "x-user-email",
        "x-user-email-verified",
        "x-user-roles",
        "x-user-aal",
        "x-identity-assertion",
    ];
    let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let values = match user {
        Some(user) => [
            text(&user.id),
            text(&user.email),
            if user.email_verified { "true" } else { "false" }.to_string(),
            text(&user.roles),
            if user.aal2 { "aal2" } else { "aal1" }.to_string(),
            user.assertion.as_ref().map(text).unwrap_or_default(),
        ],
        None => Default::default(),
    };
    NAMES.into_iter().zip(values).collect()
}

/// What the gateway tells an upstream about a request.
pub struct UpstreamIdentity {
    /// `X-User-Id`, `X-User-Email` and `X-User-Email-Verified`, for a signed-in user.
    pub user: Option<UserHeaders>,
    pub request_id: HeaderValue,
    pub forwarded_for: HeaderValue,
    pub forwarded_proto: HeaderValue,
    /// Absent when the client sent no `Host` (HTTP/1.0) and no trusted proxy named one.
    pub forwarded_host: Option<HeaderValue>,
}

/// Turns the client's headers into the upstream's, in place: every header in the identity
/// namespace (all spellings) and every spelling of `X-Request-Id` removed, `Connection`
/// nominations of those dropped, then the gateway's own headers added. `cleanup` is what
/// [`scan_head`] found in these headers.
pub fn prepare_upstream_headers(
    headers: &mut HeaderMap,
    identity: UpstreamIdentity,
    cleanup: Cleanup,
) {
    if cleanup.reserved {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| {
                let name = name.as_str().as_bytes();
                is_reserved_name(name) || is_request_id_name(name)
            })
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(&name);
        }
    }
    // `Connection: X-User-Id` must not make the proxy drop a header the gateway sets.
    if cleanup.nominations {
        let kept: Vec<String> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| connection_without_reserved(v.as_bytes()))
            .collect();
        headers.remove(CONNECTION);
        for value in kept {
            // A valid header value minus some tokens is still valid.
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.append(CONNECTION, value);
            }
        }
    }
    headers.reserve(8);
    if let Some(user) = identity.user {
        headers.append(USER_ID, user.id);
        headers.append(USER_EMAIL, user.email);
        headers.append(
            USER_EMAIL_VERIFIED,
            HeaderValue::from_static(if user.email_verified { "true" } else { "false" }),
        );
        headers.append(USER_ROLES, user.roles);
        headers.append(
            USER_AAL,
            HeaderValue::from_static(if user.aal2 { "aal2" } else { "aal1" }),
        );
        if let Some(assertion) = user.assertion {
            headers.append(crate::credentials::assertion::HEADER, assertion);
        }
    }
    headers.append(REQUEST_ID, identity.request_id);
    headers.append(FORWARDED_FOR, identity.forwarded_for);
    headers.append(FORWARDED_PROTO, identity.forwarded_proto);
    if let Some(host) = identity.forwarded_host {
        headers.append(FORWARDED_HOST, host);
    }
}

/// The pairs of a `Cookie` header value: `name=value` separated by `;` (RFC 6265 §5.4), each
/// trimmed; a pair without `=` has an empty name.
fn cookie_pairs(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    value.split(|b| *b == b';').map(|pair| {
        let pair = pair.trim_ascii();
        match pair.iter().position(|b| *b == b'=') {
            Some(at) => (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii()),
            None => (&b""[..], pair),
        }
    })
}

/// The value of the first cookie called `name` in `Cookie` header values, if any.
pub fn cookie_value<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
    name: &str,
) -> Option<String> {
    values.into_iter().find_map(|v| {
        cookie_pairs(v.as_bytes())
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    })
}

/// Removes every cookie called `name` from the `Cookie` headers; a header left with no
/// cookie goes.
pub fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let needle = name.as_bytes();
    if !headers
        .get_all(COOKIE)
        .iter()
        .any(|v| cookie_pairs(v.as_bytes()).any(|(n, _)| n == needle))
    {
        return;
    }
    let kept: Vec<Vec<u8>> = headers
        .get_all(COOKIE)
        .iter()
        .map(|v| {
            cookie_pairs(v.as_bytes())
                .filter(|(n, v)| *n != needle && !(n.is_empty() && v.is_empty()))
                .map(|(n, v)| {
                    if n.is_empty() {
                        v.to_vec()
                    } else {
                        [n, b"=", v].concat()
                    }
                })
                .collect::<Vec<_>>()
                .join(&b"; "[..])
        })
        .filter(|v| !v.is_empty())
        .collect();
    headers.remove(COOKIE);
    for value in kept {
        // Made of pieces of a valid value joined by "; ": valid.
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.append(COOKIE, value);
        }
    }
}

/// Every line of a list header as one value (RFC 9110 §5.3: the lines of a list header are
/// one list, in order), leaving out lines that are not text. Proxies that append their own
/// `X-Forwarded-For` line (HAProxy's `option forwardfor`) put the address they saw last, after
/// whatever the client sent. `None`: no text line.
pub fn joined_lines(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut lines = headers.get_all(name).iter().filter(|v| v.to_str().is_ok());
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(first.clone());
    };
    let mut joined = first.as_bytes().to_vec();
    for line in std::iter::once(second).chain(lines) {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(line.as_bytes());
    }
    // Text lines joined by ", " are text.
    HeaderValue::from_bytes(&joined).ok()
}

/// The last text line of a header (the one the nearest proxy added, when it appended one).
pub fn last_line(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    headers
        .get_all(name)
        .iter()
        .rev()
        .find(|v| v.to_str().is_ok())
        .cloned()
}

/// The client behind a chain of proxies: walking `X-Forwarded-For` from the right (the
/// nearest hop), the first address that is not a trusted proxy. `None`: every listed address
/// is trusted (or none parses).
pub fn nearest_untrusted(chain: &str, trusted: &TrustedProxies) -> Option<IpAddr> {
    chain
        .rsplit(',')
        .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
        .find(|ip| !trusted.contains(*ip))
}

/// The configured trusted proxies (exact addresses or CIDR blocks).
pub use crate::config::Networks as TrustedProxies;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_an_identity_header_is_reserved() {
        for name in [
            "X-User-Id",
            "x_user_id",
            "x.user.id",
            "X-USER-ID",
            "x-user-email",
            "X_User_Roles",
            "x-forwarded-for",
            "X_Forwarded_Host",
            "x.forwarded.proto",
            "Forwarded",
            "X-Real-IP",
            "x_real_ip",
            "X-Identity-Assertion",
            "x_identity.assertion",
        ] {
            assert!(is_reserved(name), "{name}");
        }
        for name in [
            "x-userid",
            "x-user",
            "authorization",
            "x-requested-with",
            "user-agent",
        ] {
            assert!(!is_reserved(name), "{name}");
        }
    }

    #[test]
    fn generated_request_ids_are_unique_and_well_formed() {
        let ids = RequestIds::new();
        let (a, b) = (ids.next_header(), ids.next_header());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(valid_request_id(a.as_bytes()));
        // prefix then counter, as hex
        let expected = format!(
            "{:016x}{:016x}",
            ids.prefix,
            ids.next.load(std::sync::atomic::Ordering::Relaxed) - 1
        );
        assert_eq!(b.to_str().unwrap(), expected);
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"3f2c-abc_DEF.1:2"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(b"line\nbreak"));
        assert!(!valid_request_id(&[b'a'; 129]));
    }

    #[test]
    fn connection_loses_identity_nominations_only() {
        assert_eq!(connection_without_reserved(b"X-User-Id"), None);
        assert_eq!(
            connection_without_reserved(b"keep-alive, X-User-Id, x_forwarded_for, X-Custom"),
            Some("keep-alive, X-Custom".into())
        );
        assert_eq!(
            connection_without_reserved(b"Upgrade, x-user-email"),
            Some("Upgrade".into())
        );
    }

    #[test]
    fn the_refresh_cookie_is_read_and_stripped_alone() {
        let mut headers = HeaderMap::new();
        for v in [
            "theme=dark; sg_refresh=abc.def; lang=en",
            "sg_refresh=second",
            "sg_refreshx=keep; x_sg_refresh=keep",
        ] {
            headers.append(COOKIE, HeaderValue::from_static(v));
        }
        assert_eq!(
            cookie_value(headers.get_all(COOKIE), "sg_refresh").as_deref(),
            Some("abc.def")
        );
        assert_eq!(cookie_value(headers.get_all(COOKIE), "nope"), None);
        strip_cookie(&mut headers, "sg_refresh");
        let left: Vec<&str> = headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            left,
            ["theme=dark; lang=en", "sg_refreshx=keep; x_sg_refresh=keep"]
        );
        // Nothing to strip: untouched.
        let mut plain = HeaderMap::new();
        plain.append(COOKIE, HeaderValue::from_static("a=1;b=2"));
        strip_cookie(&mut plain, "sg_refresh");
        assert_eq!(plain.get(COOKIE).unwrap(), "a=1;b=2");
    }

    #[test]
    fn upstream_headers_replace_every_client_identity_header() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "app.example"),
            ("x_user_id", "1"),
            ("x-user-email", "evil@example.com"),
            ("x-user-email-verified", "true"),
            ("x_user_roles", "admin"),
            ("x.forwarded.for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x_identity_assertion", "forged"),
            ("x.identity.assertion", "forged"),
            ("x_request_id", "client"),
            ("connection", "keep-alive, X-User-Id"),
            ("connection", "x-forwarded-host"),
            ("accept", "*/*"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let cleanup = scan_head(&headers).cleanup;
        assert_eq!(
            cleanup,
            Cleanup {
                reserved: true,
                nominations: true
            }
        );
        prepare_upstream_headers(
            &mut headers,
            UpstreamIdentity {
                user: Some(UserHeaders {
                    id: HeaderValue::from_static("42"),
                    email: HeaderValue::from_static("a@b.c"),
                    email_verified: false,
                    roles: HeaderValue::from_static("admin,ops"),
                    aal2: true,
                    assertion: Some(HeaderValue::from_static("signed")),
                }),
                request_id: HeaderValue::from_static("rid"),
                forwarded_for: HeaderValue::from_static("127.0.0.1"),
                forwarded_proto: HeaderValue::from_static("http"),
                forwarded_host: Some(HeaderValue::from_static("app.example")),
            },
            cleanup,
        );
        let mut seen: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        seen.sort();
        let expected = [
            ("accept", "*/*"),
            ("connection", "keep-alive"),
            ("host", "app.example"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-host", "app.example"),
            ("x-forwarded-proto", "http"),
            ("x-identity-assertion", "signed"),
            ("x-request-id", "rid"),
            ("x-user-aal", "aal2"),
            ("x-user-email", "a@b.c"),
            ("x-user-email-verified", "false"),
            ("x-user-id", "42"),
            ("x-user-roles", "admin,ops"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_plain_connection_header_is_left_as_sent() {
        let mut headers = HeaderMap::new();
        headers.append(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        let cleanup = scan_head(&headers).cleanup;
        assert_eq!(cleanup, Cleanup::default());
        prepare_upstream_headers(
            &mut headers,
            UpstreamIdentity {
                user: None,
                request_id: HeaderValue::from_static("rid"),
                forwarded_for: HeaderValue::from_static("127.0.0.1"),
                forwarded_proto: HeaderValue::from_static("http"),
                forwarded_host: None,
            },
            cleanup,
        );
        assert_eq!(headers.get(CONNECTION).unwrap(), "Keep-Alive");
        assert!(headers.get(USER_ID).is_none());
        assert!(headers.get(FORWARDED_HOST).is_none());
    }

    #[test]
    fn one_scan_finds_what_lookups_by_name_would() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "app.example"),
            ("authorization", "Bearer t1"),
            ("authorization", "Bearer t2"),
            ("x-request-id", "first"),
            ("x-request-id", "second"),
            ("origin", "http://localhost:3000"),
            ("upgrade", "websocket"),
            ("x-frame-options", "DENY"),
            ("connection", "Upgrade"),
            ("accept", "*/*"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let facts = scan_head(&headers);
        assert_eq!(facts.host, headers.get(HOST));
        assert_eq!(facts.authorization, headers.get(AUTHORIZATION));
        assert_eq!(facts.request_id, headers.get(REQUEST_ID));
        assert_eq!(facts.origin, headers.get(ORIGIN));
        let wire: usize = headers
            .iter()
            .map(|(n, v)| format!("{}: {}\r\n", n, v.to_str().unwrap()).len())
            .sum();
        assert_eq!(facts.headers_len, wire);
        // A kept X-Request-Id still has to go (the gateway writes its own).
        assert_eq!(
            facts.cleanup,
            Cleanup {
                reserved: true,
                nominations: false
            }
        );
        // Each spelling on its own is found.
        for name in [
            "forwarded",
            "x-real-ip",
            "x_user_id",
            "x.forwarded.for",
            "x-request-id",
            "x_request_id",
        ] {
            let mut one = HeaderMap::new();
            one.append(HeaderName::from_static(name), HeaderValue::from_static("v"));
            assert!(scan_head(&one).cleanup.reserved, "{name}");
        }
        let plain = HeaderMap::new();
        let facts = scan_head(&plain);
        assert_eq!((facts.headers_len, facts.host), (0, None));
    }

    #[test]
    fn addresses_as_header_values() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.9.99",
            "::1",
            "fd00::1:2",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(shared_ip_header(parsed), ip);
        }
    }

    #[test]
    fn forwarded_lines_are_one_list() {
        let mut headers = HeaderMap::new();
        assert_eq!(joined_lines(&headers, &FORWARDED_FOR), None);
        headers.append(FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        assert_eq!(joined_lines(&headers, &FORWARDED_FOR).unwrap(), "6.6.6.6");
        headers.append(FORWARDED_FOR, HeaderValue::from_bytes(b"\xff").unwrap());
        headers.append(FORWARDED_FOR, HeaderValue::from_static("1.1.1.1, 9.9.9.9"));
        let joined = joined_lines(&headers, &FORWARDED_FOR).unwrap();
        assert_eq!(joined, "6.6.6.6, 1.1.1.1, 9.9.9.9");
        assert_eq!(
            last_line(&headers, &FORWARDED_FOR).unwrap(),
            "1.1.1.1, 9.9.9.9"
        );
        let trusted = TrustedProxies::parse(&["9.9.9.0/24".into()]).unwrap();
        assert_eq!(
            nearest_untrusted(joined.to_str().unwrap(), &trusted),
            Some("1.1.1.1".parse().unwrap())
        );
        assert_eq!(nearest_untrusted("9.9.9.1, junk", &trusted), None);
    }

    #[test]
    fn trusted_proxies_match_addresses_and_blocks() {
        let t =
            TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.7".into(), "fd00::/8".into()])
                .unwrap();
        assert!(t.contains("10.1.2.3".parse().unwrap()));
        assert!(t.contains("192.168.1.7".parse().unwrap()));
        assert!(!t.contains("192.168.1.8".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(t.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!TrustedProxies::default().contains("127.0.0.1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["nope".into()]).is_err());
    }
}
