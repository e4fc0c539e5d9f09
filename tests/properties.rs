//! Property tests for the parsers and normalisers that see untrusted input.

use proptest::prelude::*;
use sentinel_gateway::{email, identity, pyjson, routes};

/// The decoded view the path check reasons about (what an upstream might resolve).
fn decoded_segments(path: &str) -> Vec<String> {
    let lower = path.to_ascii_lowercase();
    lower
        .replace("%2e", ".")
        .replace("%2f", "/")
        .split('/')
        .map(str::to_string)
        .collect()
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
    fn canonical_paths_have_no_dot_segments(path in "(/[a-z.%2eEfF5c\\\\]{0,6}){0,6}") {
        if routes::is_canonical(&path) {
            for segment in decoded_segments(&path) {
                prop_assert!(segment != "." && segment != "..", "{} has {:?}", path, segment);
            }
            prop_assert!(!path.contains('\\') && !path.to_ascii_lowercase().contains("%5c"));
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
