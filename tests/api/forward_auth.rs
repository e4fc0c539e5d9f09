//! Forward auth (`/auth/verify`): the gateway decides for a request a proxy in front names —
//! the same routes, rules, identity and answers as a proxied request, as headers for the proxy
//! to copy. Asked here over HTTP as nginx, Traefik and Caddy ask; `beside_proxies.rs` runs the
//! real proxies.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::admin_cli::{cli, stdout};
use crate::helpers::*;

const PASSWORD: &str = "ForwardPassword1!";

/// `/api/` (an upstream, rules) and `/app/` (no upstream: decision only), with the test as
/// the trusted proxy.
pub(crate) fn forward_config(upstream: &str) -> String {
    format!(
        "[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n\n{}\n{}",
        route(
            "/api/",
            &[upstream.to_string()],
            "required",
            r#"name = "api"
  [[routes.rules]]
  paths = ["/api/health"]
  allow = "public"
  [[routes.rules]]
  paths = ["/api/admin/"]
  roles = ["admin"]
  [[routes.rules]]
  paths = ["/api/secret/"]
  allow = "deny"
  [[routes.rules]]
  paths = ["/api/reports/"]
  methods = ["POST"]
  roles = ["admin"]
"#
        ),
        route("/app/", &[], "required", "")
    )
}

/// `/auth/verify` as nginx asks (`X-Original-*`).
async fn verify(app: &TestApp, method: &str, uri: &str, token: Option<&str>) -> Answer {
    let mut request = app
        .client
        .get(app.url("/auth/verify"))
        .header("X-Original-Method", method)
        .header("X-Original-URI", uri);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Answer::of(request.send().await.unwrap()).await
}

/// The same request sent to the gateway as the proxy.
async fn proxied(app: &TestApp, method: &str, uri: &str, token: Option<&str>) -> Answer {
    let mut request = app.client.request(method.parse().unwrap(), app.url(uri));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Answer::of(request.send().await.unwrap()).await
}

const IDENTITY: [&str; 6] = [
    "x-user-id",
    "x-user-email",
    "x-user-email-verified",
    "x-user-roles",
    "x-user-aal",
    "x-identity-assertion",
];

async fn grant_admin(app: &TestApp, email: &str, token: &str) {
    stdout(&cli(app, &["grant", email, "admin"], ""));
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let answer = verify(app, "GET", "/api/admin/x", Some(token)).await;
        if answer.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the grant took more than a second"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn forward_auth_decides_as_the_proxy_would_and_answers_identity_headers() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: forward_config(&up.addr()),
        ..Spawn::default()
    })
    .await;
    let (token, user_id) = app.registered("fa@example.com", PASSWORD).await;
    let (boss, _) = app.registered("boss@example.com", PASSWORD).await;
    grant_admin(&app, "boss@example.com", &boss).await;

    // Allowed: 200, no body, the identity as headers for the proxy to copy.
    let allowed = verify(&app, "GET", "/api/items?x=1", Some(&token)).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text);
    assert_eq!(allowed.text, "");
    assert_eq!(allowed.header("x-user-id"), Some(user_id.as_str()));
    assert_eq!(allowed.header("x-user-email"), Some("fa@example.com"));
    assert_eq!(allowed.header("x-user-email-verified"), Some("false"));
    assert_eq!(allowed.header("x-user-roles"), Some(""));
    assert_eq!(allowed.header("x-user-aal"), Some("aal1"));
    assert!(allowed.header("x-request-id").is_some());
    // The assertion is the route's (`aud` its name), as the upstream would get it proxied.
    let assertion = allowed.header("x-identity-assertion").unwrap();
    let claims = assertion.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], "api");
    assert_eq!(claims["sub"], user_id.as_str());

    // Anonymous on a public rule: 200 with every identity header present and empty.
    let public = verify(&app, "GET", "/api/health", None).await;
    assert_eq!(public.status, 200);
    for name in IDENTITY {
        assert_eq!(
            public.header(name),
            Some(""),
            "{name}: {:?}",
            public.headers
        );
    }

    // Refusals: exactly what the same request gets proxied (status, body, WWW-Authenticate).
    let boss_token = boss.as_str();
    let cases: [(&str, &str, Option<&str>); 8] = [
        ("GET", "/api/items", None),
        ("GET", "/api/items", Some("not-a-token")),
        ("GET", "/api/admin/users", Some(&token)),
        ("GET", "/api/secret/x", Some(boss_token)),
        ("POST", "/api/reports/1", Some(&token)),
        // Letter case and escapes decide as the stricter reading does, proxied or not.
        ("GET", "/API/ADMIN/users", Some(&token)),
        ("GET", "/api/%61dmin/users", Some(&token)),
        ("GET", "/nowhere", Some(&token)),
    ];
    for (method, uri, who) in cases {
        let decided = verify(&app, method, uri, who).await;
        let served = proxied(&app, method, uri, who).await;
        assert_eq!(
            (decided.status, decided.json()),
            (served.status, served.json()),
            "{method} {uri}"
        );
        assert!(decided.status >= 400, "{method} {uri}: {}", decided.status);
        assert_eq!(
            decided.header("www-authenticate"),
            served.header("www-authenticate"),
            "{method} {uri}"
        );
        for name in IDENTITY {
            assert_eq!(decided.header(name), None, "{method} {uri}: {name}");
        }
    }
    // The method decides too: POST to the reports is the admins', GET is anyone's.
    assert_eq!(
        verify(&app, "GET", "/api/reports/1", Some(&token))
            .await
            .status,
        200
    );
    assert_eq!(
        verify(&app, "POST", "/api/reports/1", Some(boss_token))
            .await
            .status,
        200
    );
    let admin = verify(&app, "GET", "/api/admin/users", Some(boss_token)).await;
    assert_eq!(admin.header("x-user-roles"), Some("admin"));

    // Traefik's and Caddy's names for the same thing.
    let traefik = Answer::of(
        app.client
            .get(app.url("/auth/verify"))
            .header("X-Forwarded-Method", "POST")
            .header("X-Forwarded-Uri", "/api/reports/1")
            .header("X-Forwarded-Host", "app.example")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(traefik.status, 403);
    assert_eq!(traefik.json(), json!({"detail": "Not enough permissions"}));
    // Without a method header, the request's own (any method reaches /auth/verify).
    let own = Answer::of(
        app.client
            .post(app.url("/auth/verify"))
            .header("X-Forwarded-Uri", "/api/reports/1")
            .bearer_auth(boss_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(own.status, 200);

    // A decision-only route: decided for the proxy, 404 to a request sent straight to it.
    let decided = verify(&app, "GET", "/app/dashboard", Some(&token)).await;
    assert_eq!(decided.status, 200);
    assert_eq!(decided.header("x-user-id"), Some(user_id.as_str()));
    assert_eq!(
        verify(&app, "GET", "/app/dashboard", None).await.status,
        401
    );
    let direct = proxied(&app, "GET", "/app/dashboard", Some(&token)).await;
    assert_eq!(direct.status, 404);
    assert_eq!(direct.json(), json!({"detail": "Not Found"}));
    // The gateway's own endpoints are not behind the proxy's check.
    let own_path = verify(&app, "POST", "/auth/token", None).await;
    assert_eq!(own_path.status, 404);

    // Identity headers the client sent never come back as the user's.
    let spoofed = Answer::of(
        app.client
            .get(app.url("/auth/verify"))
            .header("X-Original-URI", "/api/items")
            .header("X-User-Id", "someone-else")
            .header("X-User-Roles", "admin")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(spoofed.header("x-user-id"), Some(user_id.as_str()));
    assert_eq!(spoofed.header("x-user-roles"), Some(""));
    // Nothing of it reached the upstream: forward auth proxies nothing.
    assert_eq!(up.served().await, 0);
}

#[tokio::test]
async fn malformed_or_ambiguous_original_requests_are_refused_never_guessed() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: forward_config(&up.addr()),
        ..Spawn::default()
    })
    .await;
    let (token, _) = app.registered("bad@example.com", PASSWORD).await;
    let invalid_path = json!({"detail": "Invalid path"});
    for uri in [
        "http://evil.example/api/items",
        "*",
        "api/items",
        "",
        "/api/%2Fadmin/users",
        "/api/admin%2fusers",
        "/api%5Cadmin/users",
        "/api/%2e%2e/secret/x",
        "/api/./admin/x",
        "/api/items/..",
        "/api/%00",
        "/api/%zz",
    ] {
        let answer = verify(&app, "GET", uri, Some(&token)).await;
        assert_eq!(answer.status, 400, "{uri:?}: {}", answer.text);
        assert_eq!(answer.json(), invalid_path, "{uri:?}");
    }
    // No URI at all; two of them; a method that is not one.
    let none = Answer::of(
        app.client
            .get(app.url("/auth/verify"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(none.status, 400);
    assert_eq!(none.json(), json!({"detail": "Missing original URI"}));
    let two = Answer::of(
        app.client
            .get(app.url("/auth/verify"))
            .header("X-Original-URI", "/api/items")
            .header("X-Original-URI", "/api/admin/x")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(two.status, 400);
    let bad_method = verify(&app, "GE T", "/api/items", Some(&token)).await;
    assert_eq!(bad_method.status, 400);
    // Control bytes and a tab, as raw bytes no client library sends.
    for target in ["/api/a\tb", "/api/a\x01b", "/api/caf\u{e9}"] {
        let request = format!(
            "GET /auth/verify HTTP/1.1\r\nHost: x\r\nX-Original-URI: {target}\r\n\
             Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        let answer = raw(app.port, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{target:?}: {}",
            answer.lines().next().unwrap_or_default()
        );
    }
    // 10 kB of path (within the head limit): decided as that path is when proxied.
    let long = format!("/api/{}", "a".repeat(10_000));
    let answer = verify(&app, "GET", &long, Some(&token)).await;
    assert_eq!(answer.status, proxied_status(&app, &long, &token).await);
    let long_admin = format!("/api/admin/{}", "a".repeat(10_000));
    let answer = verify(&app, "GET", &long_admin, Some(&token)).await;
    assert_eq!(answer.status, 403);
    let logs = app.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

async fn proxied_status(app: &TestApp, uri: &str, token: &str) -> u16 {
    proxied(app, "GET", uri, Some(token)).await.status
}

#[tokio::test]
async fn only_a_trusted_proxy_may_ask() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: forward_config(&up.addr()).replace(
            "trusted_proxies = [\"127.0.0.1\"]",
            "trusted_proxies = [\"10.9.9.9\"]",
        ),
        ..Spawn::default()
    })
    .await;
    let (token, _) = app.registered("direct@example.com", PASSWORD).await;
    for (uri, who) in [("/api/items", Some(token.as_str())), ("/api/health", None)] {
        let answer = verify(&app, "GET", uri, who).await;
        assert_eq!(answer.status, 403, "{uri}");
        assert_eq!(answer.json(), json!({"detail": "Forbidden"}));
        for name in IDENTITY {
            assert_eq!(answer.header(name), None);
        }
    }
    // Without any trusted proxy configured (the default), nobody may.
    let app = TestApp::spawn_with(Spawn {
        config_extra: route("/api/", &[up.addr()], "required", ""),
        ..Spawn::default()
    })
    .await;
    let (token, _) = app.registered("direct@example.com", PASSWORD).await;
    assert_eq!(
        verify(&app, "GET", "/api/items", Some(&token)).await.status,
        403
    );
}
