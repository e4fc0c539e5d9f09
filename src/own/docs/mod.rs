//! The seed's API documentation, as FastAPI served it: `GET /openapi.json` (OpenAPI 3.1, kept in
//! `openapi.json` beside this file; a unit test below fails when it and the router disagree)
//! and `GET /docs`, a Swagger UI page whose assets are compiled into the binary
//! (`swagger-ui/`, from the npm package `swagger-ui-dist`; no CDN, so it works offline).
//! `[docs] enabled = false` turns all of it off (the paths then fall through to the routes).

use bytes::Bytes;

use crate::own::api::Reply;

pub const OPENAPI: &str = include_str!("openapi.json");

/// The Swagger UI version vendored in `swagger-ui/` (npm `swagger-ui-dist`).
pub const SWAGGER_UI_VERSION: &str = "5.35.0";

const PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>SentinelShield AI auth - Swagger UI</title>
<link rel="stylesheet" type="text/css" href="/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"#;

/// What FastAPI's `get_swagger_ui_html` configures, in a file of its own so that the page's
/// Content-Security-Policy can forbid inline scripts.
const INIT: &str = r##"window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  // Swagger UI would otherwise send the document to validator.swagger.io for a badge.
  validatorUrl: null,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]
});
"##;

/// The page may load only its own scripts and styles (Swagger UI sets inline styles and shows
/// data: images), talk only to this origin, and be framed only by it.
const PAGE_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'self'; base-uri 'none'; \
     form-action 'self'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "swagger-ui-bundle.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("swagger-ui/swagger-ui-bundle.js"),
    },
    Asset {
        name: "swagger-ui.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("swagger-ui/swagger-ui.css"),
    },
    Asset {
        name: "favicon-32x32.png",
        content_type: "image/png",
        body: include_bytes!("swagger-ui/favicon-32x32.png"),
    },
    Asset {
        name: "init.js",
        content_type: "text/javascript; charset=utf-8",
        body: INIT.as_bytes(),
    },
];

/// Whether `/docs/{name}` is one of the page's assets.
pub fn is_asset(name: &[u8]) -> bool {
    ASSETS.iter().any(|a| a.name.as_bytes() == name)
}

fn with_headers(mut reply: Reply, cache: &'static str) -> Reply {
    reply.headers.push(("cache-control", cache.to_string()));
    reply
        .headers
        .push(("x-content-type-options", "nosniff".to_string()));
    reply
}

pub fn openapi() -> Reply {
    with_headers(
        Reply {
            status: 200,
            content_type: "application/json",
            headers: Vec::new(),
            body: Bytes::from_static(OPENAPI.as_bytes()),
        },
        "no-cache",
    )
}

pub fn page() -> Reply {
    let mut reply = with_headers(
        Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            headers: Vec::new(),
            body: Bytes::from_static(PAGE.as_bytes()),
        },
        "no-cache",
    );
    reply
        .headers
        .push(("content-security-policy", PAGE_POLICY.to_string()));
    reply
}

/// `/docs/{name}`: an asset of the page (the router sends only names [`is_asset`] knows).
pub fn asset(path: &str) -> Reply {
    let name = path.rsplit('/').next().unwrap_or_default();
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => with_headers(
            Reply {
                status: 200,
                content_type: a.content_type,
                headers: Vec::new(),
                body: Bytes::from_static(a.body),
            },
            // The assets change only with the binary.
            "public, max-age=3600",
        ),
        None => crate::own::api::ApiError::NotFound.into_reply(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use http::Method;
    use serde_json::Value;

    use crate::own::endpoints::{classify, Endpoint, OwnRoute};

    const METHODS: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];

    fn doc() -> Value {
        serde_json::from_str(super::OPENAPI).unwrap()
    }

    /// A request path for a documented path (its parameters filled in).
    fn concrete(path: &str) -> String {
        path.replace("{session_id}", "0b6e5c52-7f1c-4c4e-9c0e-2a8f3c1d9e77")
    }

    #[test]
    fn every_documented_operation_is_the_endpoint_it_names() {
        for (path, item) in doc()["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let m: Method = method.to_uppercase().parse().unwrap();
                let OwnRoute::Endpoint(endpoint) = classify(&m, concrete(path).as_bytes()) else {
                    panic!("{method} {path} is documented but not an endpoint");
                };
                // One endpoint answering several methods (forward auth) names each operation
                // `{name}_{method}` beyond the first: operation ids are unique.
                let id = op["operationId"].as_str().unwrap_or_default();
                assert!(
                    id == endpoint.name() || id == format!("{}_{method}", endpoint.name()),
                    "{method} {path}: {id}"
                );
            }
        }
    }

    #[test]
    fn every_endpoint_and_method_is_documented() {
        let doc = doc();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let item = item.as_object().unwrap();
            for method in METHODS {
                let m: Method = method.to_uppercase().parse().unwrap();
                match classify(&m, concrete(path).as_bytes()) {
                    // HEAD is GET without the body (not listed separately, as in FastAPI).
                    OwnRoute::Endpoint(e) if method == "head" => {
                        assert!(item.contains_key("get"), "{e:?}")
                    }
                    OwnRoute::Endpoint(e) => {
                        assert!(item.contains_key(method), "{method} {path} is undocumented");
                        documented.insert(e.name());
                    }
                    _ => assert!(!item.contains_key(method), "{method} {path}"),
                }
            }
        }
        let served: BTreeSet<_> = Endpoint::ALL
            .iter()
            .filter(|e| !e.is_docs())
            .map(|e| e.name())
            .collect();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_reference_resolves() {
        let doc = doc();
        let text = super::OPENAPI;
        for part in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{name} is referenced but not defined"
            );
        }
    }
}
