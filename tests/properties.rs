//! Property tests for the parsers and normalisers that see untrusted input.

use http::Method;
use proptest::prelude::*;
use sentinel_gateway::config::{RouteAuth, RouteConfig, RuleAllow, RuleConfig};
use sentinel_gateway::credentials::email;
use sentinel_gateway::edge::identity;
use sentinel_gateway::edge::routes::{self, Access, Requirements, Route, Router};
use sentinel_gateway::own::pyjson;

/// Every escape in `path` decoded (what a decoding upstream routes on).
fn fully_decoded(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < path.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            path[i],
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// `path` with each byte percent-encoded where `encode` says so (hex digits in either case),
/// and each slash doubled where `double` says so.
fn respell(path: &str, encode: &[bool], upper: &[bool], double: &[bool]) -> String {
    let mut out = String::new();
    for (i, b) in path.bytes().enumerate() {
        let n = |v: &[bool]| v.get(i % v.len().max(1)).copied().unwrap_or(false);
        if b == b'/' && n(double) {
            out.push('/');
        }
        if n(encode) {
            let escape = format!("%{b:02x}");
            out.push_str(&if n(upper) {
                escape.to_uppercase()
            } else {
                escape
            });
        } else {
            out.push(b as char);
        }
    }
    out
}

/// `path` with the letter case of each letter switched where `flip` says so.
fn flip_case(path: &str, flip: &[bool]) -> String {
    path.chars()
        .enumerate()
        .map(|(i, c)| match flip.get(i % flip.len().max(1)) {
            Some(true) if c.is_ascii_lowercase() => c.to_ascii_uppercase(),
            Some(true) => c.to_ascii_lowercase(),
            _ => c,
        })
        .collect()
}

/// Runs of slashes merged into one.
fn merged(path: Vec<u8>) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    for b in path {
        if !(b == b'/' && out.last() == Some(&b'/')) {
            out.push(b);
        }
    }
    out
}

/// The `auth` of the route an upstream reading `path` would take: the longest prefix, in its
/// own letter case or in any.
fn longest(routes: &[RouteConfig], path: &[u8], case_sensitive: bool) -> Option<RouteAuth> {
    routes
        .iter()
        .filter(|r| under(path, &r.prefix, case_sensitive))
        .max_by_key(|r| r.prefix.len())
        .map(|r| r.auth)
}

fn config_route(prefix: &str, auth: RouteAuth) -> RouteConfig {
    RouteConfig {
        prefix: prefix.into(),
        name: None,
        upstreams: vec!["127.0.0.1:9".into()],
        auth,
        connect_timeout_ms: 1000,
        read_timeout_ms: 1000,
        tls: false,
        sni: None,
        rules: Vec::new(),
    }
}

/// What a route's `auth` lets through when no rule decides.
fn access_of(auth: RouteAuth) -> Access {
    match auth {
        RouteAuth::Required => Access::Authenticated(Requirements::default()),
        RouteAuth::Public => Access::Public,
    }
}

/// Whether `path` (as an upstream reads it) is under `prefix`, in its own letter case or in any.
fn under(path: &[u8], prefix: &str, case_sensitive: bool) -> bool {
    path.len() >= prefix.len()
        && if case_sensitive {
            path.starts_with(prefix.as_bytes())
        } else {
            path[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn json_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = pyjson::parse(&bytes);
    }

    #[test]
    fn json_parser_agrees_with_serde_on_valid_documents(
        value in proptest::arbitrary::any::<std::collections::BTreeMap<String, (i32, bool, Option<String>)>>()
    ) {
        let text = serde_json::to_string(&value).unwrap();
        let ours = pyjson::parse(text.as_bytes()).unwrap();
        let theirs: serde_json::Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(ours, theirs);
    }

    #[test]
    fn email_normalisation_never_panics_and_is_idempotent(input in "\\PC{0,80}") {
        if let Ok(normalized) = email::normalize(&input) {
            prop_assert_eq!(email::normalize(&normalized), Ok(normalized.clone()));
        }
    }

    #[test]
    fn emails_of_plain_shape_are_accepted(local in "[a-z0-9]{1,20}", domain in "[a-z]{1,20}", tld in "[a-z]{2,6}") {
        let address = format!("{local}@{domain}.{tld}");
        prop_assume!(!["test", "local", "localhost", "onion", "invalid", "arpa"].contains(&tld.as_str()));
        prop_assert_eq!(email::normalize(&address), Ok(address.clone()));
    }

    #[test]
    fn reserved_check_matches_the_normalised_name(name in "[A-Za-z0-9_.\\-]{0,24}") {
        let n = identity::normalize_name(&name);
        let expected = n.starts_with("x-user-") || n.starts_with("x-forwarded-") || n == "forwarded" || n == "x-real-ip";
        prop_assert_eq!(identity::is_reserved(&name), expected);
    }

    #[test]
    fn every_spelling_of_x_user_id_is_reserved(seps in proptest::collection::vec(prop_oneof![Just("-"), Just("_"), Just(".")], 2), upper in any::<[bool; 9]>()) {
        let mut name = String::new();
        for (i, part) in ["x", "user", "id"].iter().enumerate() {
            if i > 0 { name.push_str(seps[i - 1]); }
            name.push_str(part);
        }
        let name: String = name.chars().enumerate().map(|(i, c)| if upper[i % 9] { c.to_ascii_uppercase() } else { c }).collect();
        prop_assert!(identity::is_reserved(&name), "{}", name);
    }

    #[test]
    fn read_paths_have_no_dot_segments(path in "(/[a-z.%2eEfF5c\\\\]{0,6}){0,6}") {
        if let Some(read) = routes::read_path(&path) {
            for segment in read.matched.split(|b| *b == b'/') {
                prop_assert!(segment != b"." && segment != b"..", "{} has {:?}", path, segment);
            }
            prop_assert!(!read.matched.contains(&b'\\'));
            let forward = fully_decoded(read.forward.as_bytes());
            prop_assert!(!forward.split(|b| *b == b'/').any(|s| s == b"." || s == b".."));
        }
    }

    /// Any letter case of any letter, any percent-encoding of any byte of a path (and any
    /// doubled slash) is routed as the path itself: no spelling of a protected prefix reaches
    /// a public route. The decision is at least as strict as what an upstream reading the
    /// decoded path would expect, whether it tells case apart or not. What goes upstream
    /// decodes to the same path, in the letter case sent.
    #[test]
    fn every_spelling_of_a_path_takes_its_route(
        prefix in "(/[a-zA-Z0-9_~.-]{1,6}){1,3}/?",
        tail in "[a-zA-Z0-9_~/:@!$&'()*+,;= -]{0,12}",
        public_extra in "[a-zA-Z]{1,4}",
        flip in proptest::collection::vec(any::<bool>(), 1..24),
        encode in proptest::collection::vec(any::<bool>(), 1..24),
        upper in proptest::collection::vec(any::<bool>(), 1..24),
        double in proptest::collection::vec(any::<bool>(), 1..8),
        root_required in any::<bool>(),
    ) {
        prop_assume!(routes::is_plain_prefix(&prefix));
        let root = if root_required { RouteAuth::Required } else { RouteAuth::Public };
        let configured = [
            config_route(&prefix, RouteAuth::Required),
            config_route(&format!("{prefix}{public_extra}/"), RouteAuth::Public),
            config_route("/", root),
        ];
        let router = Router::new(&configured);
        let path = format!("{prefix}{tail}");
        let plain = router.classify(&Method::GET, &path, None);
        let cased = flip_case(&path, &flip);
        let spelt = respell(&cased, &encode, &upper, &double);
        let respelt = router.classify(&Method::GET, &spelt, None);
        prop_assert_eq!(respelt.route, plain.route, "{} vs {}", spelt, path);
        let Route::Proxy(_) = respelt.route else {
            return Ok(());
        };
        // Escapes and doubled slashes never loosen the decision. (Letter case may: to an
        // upstream that tells case apart, `/ak/` is under a protected `/a` and `/AK/` is not,
        // while one that does not reads both as a public `/aK/`. Whatever either reading
        // protects, the check below holds.)
        let required = access_of(RouteAuth::Required);
        let as_cased = router.classify(&Method::GET, &cased, None);
        if *as_cased.access == required {
            prop_assert_eq!(&*respelt.access, &required, "{}", spelt);
        }
        // What an upstream routes on: the decoded path, slashes merged, in either reading.
        let read = merged(fully_decoded(spelt.as_bytes()));
        for case_sensitive in [true, false] {
            if longest(&configured, &read, case_sensitive) == Some(RouteAuth::Required) {
                prop_assert_eq!(&*respelt.access, &required, "{} ({})", spelt, case_sensitive);
            }
        }
        let forward = respelt.forward_path.unwrap_or_else(|| spelt.clone());
        prop_assert_eq!(merged(fully_decoded(forward.as_bytes())), merged(cased.into_bytes()));

        // Told to, the gateway matches in the configured case only, as such an upstream does.
        let exact = Router::new(&configured).with_case_sensitive_paths(true);
        let decided = exact.classify(&Method::GET, &spelt, None);
        let expected = longest(&configured, &read, true).map(access_of);
        prop_assert_eq!(
            matches!(decided.route, Route::Proxy(_)).then(|| decided.access.into_owned()),
            expected,
            "{}",
            spelt
        );
    }

    /// No spelling of a path under a `deny` rule — letter case, escapes, doubled slashes —
    /// is let through: if an upstream could read it (decoded, slashes merged, telling case
    /// apart or not) as under the denied paths, the gateway refuses it (or refuses the
    /// spelling itself), whatever public route or earlier-ending rule it might otherwise meet.
    #[test]
    fn no_spelling_of_a_denied_path_is_let_through(
        word in "[a-zA-Z]{1,4}",
        rest in "(/[a-zA-Z0-9_~.-]{1,6}){0,2}/?",
        tail in "[a-zA-Z0-9_~/:@!$&'()*+,;= -]{0,12}",
        other in "[a-zA-Z]{1,4}",
        public_shares in any::<bool>(),
        public_flip in proptest::collection::vec(any::<bool>(), 1..4),
        flip in proptest::collection::vec(any::<bool>(), 1..24),
        encode in proptest::collection::vec(any::<bool>(), 1..24),
        upper in proptest::collection::vec(any::<bool>(), 1..24),
        double in proptest::collection::vec(any::<bool>(), 1..8),
        root_public in any::<bool>(),
        case_sensitive in any::<bool>(),
    ) {
        let denied = format!("/{word}{rest}");
        prop_assume!(routes::is_plain_prefix(&denied));
        // The public rule before the deny rule is often the same word in another letter case:
        // the two readings of a spelling then disagree.
        let public_extra = if public_shares { flip_case(&word, &public_flip) } else { other };
        let mut root = config_route("/", if root_public { RouteAuth::Public } else { RouteAuth::Required });
        // A public rule for a longer path inside the denied one comes after the deny rule
        // (first match wins), and a public one beside it comes before.
        root.rules = vec![
            RuleConfig {
                paths: vec![format!("/{public_extra}")],
                allow: RuleAllow::Public,
                ..RuleConfig::default()
            },
            RuleConfig {
                paths: vec![denied.clone()],
                allow: RuleAllow::Deny,
                ..RuleConfig::default()
            },
            RuleConfig {
                paths: vec![format!("{denied}{public_extra}")],
                allow: RuleAllow::Public,
                ..RuleConfig::default()
            },
        ];
        let configured = [root];
        let router = Router::new(&configured).with_case_sensitive_paths(case_sensitive);
        let path = format!("{denied}{tail}");
        let spelt = respell(&flip_case(&path, &flip), &encode, &upper, &double);
        let decided = router.classify(&Method::GET, &spelt, None);
        // Forward auth reads the same spelling from a proxy's X-Original-URI (with a query):
        // refused outright, or decided exactly as the proxied request.
        if let Some(named) = routes::original_path(format!("{spelt}?x=/..%2F").as_bytes()) {
            let asked = router.classify(&Method::GET, &named, None);
            prop_assert_eq!(&asked.route, &decided.route, "{}", spelt);
            prop_assert_eq!(&*asked.access, &*decided.access, "{}", spelt);
        }
        let Route::Proxy(_) = decided.route else {
            return Ok(());
        };
        let read = merged(fully_decoded(spelt.as_bytes()));
        // What the rules say to an upstream's reading: the first rule whose path it is under.
        let denied_by = |cs: bool| {
            let public_first = under(&read, &format!("/{public_extra}"), cs);
            !public_first && under(&read, &denied, cs)
        };
        let readings: &[bool] = if case_sensitive { &[true] } else { &[true, false] };
        for cs in readings {
            if denied_by(*cs) {
                prop_assert_eq!(&*decided.access, &Access::Deny, "{} (case-sensitive {})", spelt, cs);
            }
        }
    }

    #[test]
    fn the_head_scan_flags_exactly_the_headers_that_must_go(
        headers in proptest::collection::vec(("[A-Za-z0-9_.\\-]{1,20}", "[ -~]{0,20}"), 0..12)
    ) {
        let mut map = http::HeaderMap::new();
        for (name, value) in &headers {
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) else {
                continue;
            };
            map.append(name, value);
        }
        let must_go = map.keys().any(|n| {
            identity::is_reserved(n.as_str()) || identity::normalize_name(n.as_str()) == "x-request-id"
        });
        prop_assert_eq!(identity::scan_head(&map).cleanup.reserved, must_go);
    }

    #[test]
    fn request_id_validation_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = identity::valid_request_id(&bytes);
        let _ = identity::connection_without_reserved(&bytes);
    }
}
