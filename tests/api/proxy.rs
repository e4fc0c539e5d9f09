//! The gateway in front of upstream services: routes, bearer verification, identity headers.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

async fn gateway_with(upstreams: &[String], extra_routes: &str) -> TestApp {
    let mut routes = route("/api/", upstreams, "required", "");
    routes.push_str(&route("/public/", upstreams, "public", ""));
    routes.push_str(extra_routes);
    TestApp::spawn_with(Spawn {
        config_extra: routes,
        ..Spawn::default()
    })
    .await
}

async fn echo(r: reqwest::Response) -> Echo {
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "expected the upstream's answer, got {text}");
    Echo(serde_json::from_str(&text).unwrap())
}

#[tokio::test]
async fn protected_routes_reach_the_upstream_only_with_a_valid_token() {
    let up = Upstream::start().await;
    let app = gateway_with(&[up.addr()], "").await;
    let (token, id) = app.registered("proxy@example.com", "ProxyPassword1!").await;

    let e = echo(
        app.client
            .get(app.url("/api/things?x=1"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e.0["path"], "/api/things?x=1");
    assert_eq!(e.one("x-user-id"), Some(id.clone()));
    assert_eq!(e.one("x-user-email"), Some("proxy@example.com".into()));
    assert_eq!(e.one("x-forwarded-for"), Some("127.0.0.1".into()));
    assert_eq!(e.one("x-forwarded-proto"), Some("http".into()));
    assert_eq!(
        e.one("x-forwarded-host"),
        Some(format!("127.0.0.1:{}", app.port))
    );
    assert!(e.one("x-request-id").is_some());

    // No token: 401 Not authenticated; bad ones: 401 Invalid token with invalid_token.
    let a = app.get("/api/things").await;
    assert_eq!(
        (a.status, a.json()),
        (401, json!({"detail": "Not authenticated"}))
    );
    let expired = fixture_json("tokens.json")["expired_2020"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let other = fixture_json("tokens.json")["other_secret"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let tampered = format!("{}x", &token[..token.len() - 1]);
    for bad in [
        "garbage",
        expired.as_str(),
        other.as_str(),
        tampered.as_str(),
    ] {
        let a = app.get_as("/api/things", bad).await;
        assert_eq!(
            (a.status, a.json()),
            (401, json!({"detail": "Invalid token"})),
            "{bad}"
        );
        assert_eq!(
            a.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
    }
}

#[tokio::test]
async fn unknown_paths_are_404_and_the_longest_prefix_wins() {
    let up = Upstream::start().await;
    let app = gateway_with(
        &[up.addr()],
        &route("/api/open/", &[up.addr()], "public", ""),
    )
    .await;
    let a = app.get("/elsewhere").await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (404, r#"{"detail":"Not Found"}"#)
    );
    // /api/open/ is public although /api/ is protected.
    let e = echo(app.client.get(app.url("/api/open/x")).send().await.unwrap()).await;
    assert_eq!(e.one("x-user-id"), None);
    assert_eq!(app.status("/api/closed").await, 401);
    // Dot segments cannot walk from a public prefix into a protected one (raw requests: HTTP
    // clients would normalise these paths away).
    for path in [
        "/api/open/../secret",
        "/api/open/%2e%2e/secret",
        "/public/..%2fapi/x",
    ] {
        let answer = raw(
            app.port,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains(r#"{"detail":"Invalid path"}"#), "{answer}");
    }
}

/// A real Express 4 upstream (`tests/support/express/upstream.js`), stopped on drop.
struct Express {
    port: u16,
    child: std::process::Child,
}

impl Express {
    async fn start() -> Express {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/express");
        assert!(
            dir.join("node_modules/express").exists(),
            "Express is not installed: scripts/test.sh runs npm ci in {}",
            dir.display()
        );
        let port = free_port();
        let child = std::process::Command::new("node")
            .arg(dir.join("upstream.js"))
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("node");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "Express did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Express { port, child }
    }
}

impl Drop for Express {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn no_letter_case_of_a_protected_path_reaches_express_without_a_user() {
    let express = Express::start().await;
    let upstream = format!("127.0.0.1:{}", express.port);
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "{}{}",
            route("/api/", std::slice::from_ref(&upstream), "required", ""),
            route("/", &[upstream], "public", "")
        ),
        ..Spawn::default()
    })
    .await;
    let (token, id) = app
        .registered("express@example.com", "ExpressPassword1!")
        .await;
    for path in [
        "/api/admin/users",
        "/API/admin/users",
        "/Api/Admin/users",
        "/%41pi/admin/users",
        "/api/ADMIN/USERS",
    ] {
        let anonymous = raw_get(app.port, path, None).await;
        assert!(anonymous.starts_with("HTTP/1.1 401"), "{path}: {anonymous}");
        // Signed in, Express serves it as its /api/admin/users, with the user.
        let answer = raw_get(app.port, path, Some(&token)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        let body: serde_json::Value =
            serde_json::from_str(&answer[answer.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert_eq!(body["route"], "/api/admin/users", "{path}");
        assert_eq!(body["user"], id.as_str(), "{path}");
    }
}

#[tokio::test]
async fn letter_case_decides_routes_only_when_upstreams_tell_case_apart() {
    let up = Upstream::start().await;
    let routes = format!(
        "{}{}",
        route("/", &[up.addr()], "required", ""),
        route("/public/", &[up.addr()], "public", "")
    );
    let app = TestApp::spawn_with(Spawn {
        config_extra: routes.clone(),
        ..Spawn::default()
    })
    .await;
    // To an upstream that tells case apart, /PUBLIC/x is not under /public/: it is refused
    // like the rest of `/` unless signed in.
    assert!(raw_get(app.port, "/public/x", None)
        .await
        .starts_with("HTTP/1.1 200"));
    for path in ["/PUBLIC/x", "/Public/x", "/%50ublic/x"] {
        let answer = raw_get(app.port, path, None).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
    }
    // Told that upstreams tell case apart, the gateway matches the configured case only.
    let exact = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "{}{}",
            route("/api/", &[up.addr()], "required", ""),
            route("/", &[up.addr()], "public", "")
        ),
        env: vec![("SENTINEL_CASE_SENSITIVE_PATHS".into(), "true".into())],
        ..Spawn::default()
    })
    .await;
    assert!(raw_get(exact.port, "/api/x", None)
        .await
        .starts_with("HTTP/1.1 401"));
    assert!(raw_get(exact.port, "/API/x", None)
        .await
        .starts_with("HTTP/1.1 200"));
}

/// A raw `GET path` (HTTP clients would re-spell these paths), with a bearer token if given.
async fn raw_get(port: u16, path: &str, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    raw(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
}

#[tokio::test]
async fn no_spelling_of_a_protected_prefix_reaches_the_upstream_as_public() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "{}{}",
            route("/api/", &[up.addr()], "required", ""),
            route("/", &[up.addr()], "public", "")
        ),
        ..Spawn::default()
    })
    .await;
    let (token, id) = app.registered("spell@example.com", "SpellPassword1!").await;
    let before = up.served().await;
    // Escapes of unreserved characters, of the slash, and repeated slashes: every one is the
    // protected route to an upstream that decodes (Starlette) or merges slashes (nginx).
    let spellings = [
        ("/%61pi/admin", "/api/admin"),
        ("/ap%69/admin", "/api/admin"),
        ("/%61%70%69/admin", "/api/admin"),
        ("/api%2Fadmin", "/api%2Fadmin"),
        ("/api%2fadmin?q=1", "/api%2fadmin?q=1"),
        ("//api/admin", "//api/admin"),
        ("/%2F%61pi/admin", "/%2Fapi/admin"),
        // Letter case: Express, ASP.NET and others route these as /api/admin/users.
        ("/API/admin/users", "/API/admin/users"),
        ("/Api/Admin/users", "/Api/Admin/users"),
        ("/%41pi/admin/users", "/Api/admin/users"),
        ("/%41%50%49/x", "/API/x"),
    ];
    for (path, _) in spellings {
        let answer = raw_get(app.port, path, None).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
        assert!(
            answer.contains(r#"{"detail":"Not authenticated"}"#),
            "{answer}"
        );
    }
    assert_eq!(
        up.served().await,
        before,
        "a refused request reached the upstream"
    );
    // With a token they go through, to the path as sent with unreserved escapes decoded.
    for (path, forwarded) in spellings {
        let answer = raw_get(app.port, path, Some(&token)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        let e = Echo(serde_json::from_str(body).unwrap());
        assert_eq!(e.0["path"], forwarded, "{path}");
        assert_eq!(e.one("x-user-id"), Some(id.clone()), "{path}");
    }
    // Spellings no client needs: 400 before any route is chosen.
    for path in [
        "/api/%",
        "/%2561pi/admin",
        "/api%00/x",
        "/%2e%2e/api/x",
        "/x%5c..%5capi",
    ] {
        let answer = raw_get(app.port, path, None).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains(r#"{"detail":"Invalid path"}"#), "{answer}");
    }
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_lines_reach_the_upstream_as_one_chain() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n\n{}",
            route("/public/", &[up.addr()], "public", "")
        ),
        ..Spawn::default()
    })
    .await;
    let answer = raw(
        app.port,
        b"GET /public/x HTTP/1.1\r\nHost: app.example\r\n\
          X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: http\r\n\
          X-Forwarded-For: 2.2.2.2, 3.3.3.3\r\nX-Forwarded-Proto: https\r\n\
          X-Forwarded-Host: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let e = Echo(serde_json::from_str(&answer[answer.find("\r\n\r\n").unwrap() + 4..]).unwrap());
    assert_eq!(
        e.one("x-forwarded-for"),
        Some("1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1".into())
    );
    assert_eq!(e.one("x-forwarded-proto"), Some("https".into()));
    assert_eq!(e.one("x-forwarded-host"), Some("shop.example".into()));
}

#[tokio::test]
async fn client_identity_headers_never_reach_the_upstream_in_any_spelling() {
    let up = Upstream::start().await;
    let app = gateway_with(&[up.addr()], "").await;
    let (token, id) = app.registered("spoof@example.com", "SpoofPassword1!").await;
    let spoofs = [
        ("X-User-Id", "admin"),
        ("x-user-id", "admin2"),
        ("X_User_Id", "admin3"),
        ("x.user.id", "admin4"),
        ("X-USER-EMAIL", "root@example.com"),
        ("x_user_email", "root2@example.com"),
        ("X-User-Roles", "admin"),
        ("X-User-Aal", "aal2"),
        ("x_user_aal", "aal2"),
        ("X-User-Email-Verified", "true"),
        ("x_user_email_verified", "true"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("x_forwarded_for", "5.6.7.8"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=1.2.3.4"),
        ("X-Real-IP", "1.2.3.4"),
        ("x.real.ip", "1.2.3.4"),
        ("X-Request-Id", "bad id with spaces"),
        ("X_Request_Id", "spoofed-id"),
        ("x.request.id", "spoofed-id-2"),
    ];
    for (path, auth) in [("/api/x", true), ("/public/x", false)] {
        let mut req = app.client.get(app.url(path)).header(
            "Connection",
            "keep-alive, X-User-Id, X-User-Email, X-Forwarded-For",
        );
        for (k, v) in spoofs {
            req = req.header(k, v);
        }
        // Duplicates too.
        req = req.header("X-User-Id", "dup1").header("X-User-Id", "dup2");
        if auth {
            req = req.bearer_auth(&token);
        }
        let e = echo(req.send().await.unwrap()).await;
        for name in e.names() {
            let normalized = name.replace(['_', '.'], "-");
            if normalized.starts_with("x-user-")
                || normalized.starts_with("x-forwarded-")
                || normalized == "forwarded"
                || normalized == "x-real-ip"
            {
                assert!(
                    [
                        "x-user-id",
                        "x-user-email",
                        "x-user-email-verified",
                        "x-user-roles",
                        "x-user-aal",
                        "x-forwarded-for",
                        "x-forwarded-proto",
                        "x-forwarded-host"
                    ]
                    .contains(&name.as_str()),
                    "{path}: client header {name} reached the upstream"
                );
            }
        }
        if auth {
            assert_eq!(e.one("x-user-id"), Some(id.clone()), "{path}");
            assert_eq!(
                e.one("x-user-email"),
                Some("spoof@example.com".into()),
                "{path}"
            );
            assert_eq!(
                e.one("x-user-email-verified"),
                Some("false".into()),
                "{path}"
            );
            // The gateway's own, empty: this user holds no role, whatever the client claimed.
            assert_eq!(e.one("x-user-roles"), Some(String::new()), "{path}");
            assert_eq!(e.one("x-user-aal"), Some("aal1".into()), "{path}");
        } else {
            assert_eq!(e.one("x-user-email-verified"), None, "{path}");
            assert_eq!(e.one("x-user-roles"), None, "{path}");
            assert_eq!(e.one("x-user-aal"), None, "{path}");
            assert_eq!(e.one("x-user-id"), None, "{path}");
            assert_eq!(e.one("x-user-email"), None, "{path}");
        }
        assert_eq!(e.one("x-forwarded-for"), Some("127.0.0.1".into()), "{path}");
        assert_eq!(e.one("x-forwarded-proto"), Some("http".into()), "{path}");
        assert_eq!(
            e.one("x-forwarded-host"),
            Some(format!("127.0.0.1:{}", app.port)),
            "{path}"
        );
        assert_ne!(e.one("x-request-id"), Some("bad id with spaces".into()));
        // Exactly one request id, the gateway's, in any spelling (frameworks that fold `_`
        // into `-` would otherwise see two).
        let ids: Vec<String> = e
            .names()
            .into_iter()
            .filter(|n| n.replace(['_', '.'], "-") == "x-request-id")
            .collect();
        assert_eq!(ids, ["x-request-id"], "{path}");
        assert_eq!(e.all("x-request-id").len(), 1, "{path}");
        assert!(e.all("x-real-ip").is_empty() && e.all("forwarded").is_empty());
    }
}

#[tokio::test]
async fn request_ids_are_kept_when_well_formed_and_echoed() {
    let up = Upstream::start().await;
    let app = gateway_with(&[up.addr()], "").await;
    let r = app
        .client
        .get(app.url("/public/x"))
        .header("X-Request-Id", "req-123.abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-123.abc");
    let e = echo(r).await;
    assert_eq!(e.one("x-request-id"), Some("req-123.abc".into()));
    let r = app.client.get(app.url("/public/x")).send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(echo(r).await.one("x-request-id"), Some(generated.clone()));
    assert!(generated.len() >= 16);
    // The gateway's own answers carry one too.
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert!(r.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn proxied_responses_carry_the_gateways_cors_headers() {
    let up = Upstream::start().await;
    let app = gateway_with(&[up.addr()], "").await;
    let r = app
        .client
        .get(app.url("/public/x"))
        .header("Origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    assert_eq!(r.headers()["vary"], "Origin");
    let r = app
        .client
        .get(app.url("/public/x"))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    // Preflights on routes are the gateway's, and never reach the upstream.
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/x"))
        .header("Origin", "http://localhost:3000")
        .header("Access-Control-Request-Method", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "OK");
}

#[tokio::test]
async fn deactivation_and_deletion_shut_users_out_within_a_second_on_every_instance() {
    let up = Upstream::start().await;
    let first = gateway_with(&[up.addr()], "").await;
    // A second instance on the same database.
    let mut extra = route("/api/", &[up.addr()], "required", "");
    extra.push_str(&route("/public/", &[up.addr()], "public", ""));
    let second = Instance::start(&first.db.url, &extra).await;
    let second_base = second.base.clone();

    let (token, id) = first
        .registered("deactivate@example.com", "DeactPassword1!")
        .await;
    let get = |base: String| {
        let client = first.client.clone();
        let token = token.clone();
        async move {
            client
                .get(format!("{base}/api/x"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let both_refused_within_a_second = || async {
        let changed = Instant::now();
        loop {
            let (a, b) = (
                get(first.base.clone()).await,
                get(second_base.clone()).await,
            );
            if a == 401 && b == 401 {
                return;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(1),
                "still {a}/{b} after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // Both instances have the user cached.
    for _ in 0..3 {
        assert_eq!(get(first.base.clone()).await, 200);
        assert_eq!(get(second_base.clone()).await, 200);
    }
    let db = first.db.client().await;
    db.execute("UPDATE users SET is_active = false WHERE id = $1", &[&id])
        .await
        .unwrap();
    both_refused_within_a_second().await;
    // Reactivated, then deleted.
    db.execute("UPDATE users SET is_active = true WHERE id = $1", &[&id])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(first.base.clone()).await, 200);
    db.execute("DELETE FROM users WHERE id = $1", &[&id])
        .await
        .unwrap();
    both_refused_within_a_second().await;
}

#[tokio::test]
async fn upstream_failures_are_json_502_and_504_and_nothing_else_suffers() {
    let up = Upstream::start().await;
    let dead = format!("127.0.0.1:{}", free_port());
    let app = gateway_with(
        &[up.addr()],
        &format!(
            "{}{}",
            route("/down/", &[dead], "public", ""),
            route("/slow/", &[up.addr()], "public", "read_timeout_ms = 300")
        ),
    )
    .await;
    let a = Answer::of(
        app.client
            .get(app.url("/down/x"))
            .header("Origin", "http://localhost:3000")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (502, r#"{"detail":"Bad Gateway"}"#)
    );
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    // The route waits 300 ms for the upstream's answer.
    let started = Instant::now();
    let a = app.get("/slow/x?delay_ms=3000").await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (504, r#"{"detail":"Gateway Timeout"}"#)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let a = app.get("/slow/x?delay_ms=10").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(app.status("/health").await, 200);
    assert_eq!(app.status("/public/fine").await, 200);
}

/// A failed proxied request is logged with its path, never its query string or the bytes of
/// a broken upstream head, at every log level.
#[tokio::test]
async fn failed_proxied_requests_are_logged_without_query_or_raw_bytes() {
    let up = Upstream::start().await;
    let broken =
        RawUpstream::start(b"HTTP/1.1 200 OK\r\nSet-Cookie SECRET_HEAD_BYTES\r\n\r\n").await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "{}{}",
            route("/slow/", &[up.addr()], "public", "read_timeout_ms = 300"),
            route("/broken/", &[broken.addr()], "public", "")
        ),
        env: vec![("SENTINEL_LOG_LEVEL".into(), "debug".into())],
        ..Spawn::default()
    })
    .await;
    let (token, _) = app
        .registered("failing@example.com", "FailingPassword1!")
        .await;
    let a = app
        .get("/slow/x?delay_ms=3000&api_key=QUERY_SECRET_1")
        .await;
    assert_eq!(a.status, 504, "{}", a.text);
    let a = app.get_as("/broken/y?api_key=QUERY_SECRET_2", &token).await;
    assert_eq!(a.status, 502, "{}", a.text);
    let (line, _) = app.log_line("/broken/y").await;
    assert!(line.contains("proxy failed"), "{line}");
    let (line, logs) = app.log_line("/slow/x").await;
    assert!(
        line.contains("proxy failed") && line.contains("ReadTimedout"),
        "{line}"
    );
    for secret in [
        "QUERY_SECRET",
        "api_key",
        "SECRET_HEAD_BYTES",
        "Set-Cookie",
        "FailingPassword1!",
        token.as_str(),
        "$argon2id$",
    ] {
        assert!(!logs.contains(secret), "{secret} in the log:\n{logs}");
    }
}

#[tokio::test]
async fn request_targets_and_reason_phrases_cross_the_gateway_as_sent() {
    let up = RawUpstream::start(
        b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\nX-Upstream: yes\r\n\r\nok",
    )
    .await;
    let app = gateway_with(&[up.addr()], "").await;
    // An absolute-form target is forwarded byte for byte, not as the URI's path. (Targets
    // that are not UTF-8 never get this far: pingora answers them 400 itself.)
    for target in [
        &b"/public/caf%C3%A9?q=%FF&r"[..],
        b"http://x/public/abs?q=1",
    ] {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = raw(app.port, &request).await;
        assert!(
            answer.starts_with("HTTP/1.1 200 Fine Thanks\r\n"),
            "{answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("x-upstream: yes\r\n"),
            "{answer}"
        );
        let heads = up.heads();
        let head = heads.last().expect("the upstream got the request");
        let mut line = b"GET ".to_vec();
        line.extend_from_slice(target);
        line.extend_from_slice(b" HTTP/1.1\r\n");
        assert!(head.starts_with(&line), "{}", String::from_utf8_lossy(head));
    }
    // Each header the gateway sets is written once.
    let head = String::from_utf8_lossy(&up.heads()[0]).to_ascii_lowercase();
    for name in [
        "x-request-id:",
        "x-forwarded-for:",
        "x-forwarded-proto:",
        "x-forwarded-host:",
    ] {
        assert_eq!(head.matches(name).count(), 1, "{name} in {head}");
    }
}

#[tokio::test]
async fn a_change_no_notification_announced_still_takes_effect_within_the_cache_ttl() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "[proxy]\nuser_cache_ttl_seconds = 2\n\n{}",
            route("/api/", &[up.addr()], "required", "")
        ),
        ..Spawn::default()
    })
    .await;
    let (token, id) = app.registered("quiet@example.com", "QuietPassword1!").await;
    let url = app.url("/api/x");
    for _ in 0..3 {
        assert_eq!(get_status(&app.client, &url, Some(&token)).await, 200);
    }
    // The change trigger does not fire for a session replaying changes as a replica: this is
    // the notification that got lost.
    let db = app.db.client().await;
    db.batch_execute(&format!(
        "SET session_replication_role = replica; \
         UPDATE users SET is_active = false WHERE id = '{id}'; \
         SET session_replication_role = DEFAULT;"
    ))
    .await
    .unwrap();
    // A notification would have arrived in well under 200 ms: none did, so the stale entry
    // still answers...
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get_status(&app.client, &url, Some(&token)).await, 200);
    // ...until the entry's time is up.
    let changed = Instant::now();
    while get_status(&app.client, &url, Some(&token)).await != 401 {
        assert!(
            changed.elapsed() < Duration::from_secs(4),
            "still let in well after the 2 s TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_bearer_token_that_is_not_text_counts_as_no_token() {
    let up = Upstream::start().await;
    let app = gateway_with(&[up.addr()], "").await;
    let (token, _) = app.registered("bytes@example.com", "BytesPassword1!").await;
    // A valid token first, so that the bytes below are looked up among verified ones too.
    let a = app
        .client
        .get(app.url("/api/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 200);
    for path in ["/api/x", "/auth/users/me"] {
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ").into_bytes();
        request.extend_from_slice(token.as_bytes());
        request.extend_from_slice(b"\xff\r\nConnection: close\r\n\r\n");
        let answer = raw(app.port, &request).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
        assert!(
            answer.ends_with(r#"{"detail":"Not authenticated"}"#),
            "{path}: {answer}"
        );
    }
    // On a public route it is forwarded, anonymous.
    let request = b"GET /public/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\r\nConnection: close\r\n\r\n";
    let answer = raw(app.port, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains("x-user-id"), "{answer}");
    assert_eq!(up.served().await, 2);
}

#[tokio::test]
async fn the_work_stealing_scheduler_serves_as_well() {
    let up = Upstream::start().await;
    let mut routes = route("/api/", &[up.addr()], "required", "");
    routes.push_str(&route("/public/", &[up.addr()], "public", ""));
    let app = TestApp::spawn_with(Spawn {
        server_extra: "work_stealing = true\n".into(),
        config_extra: routes,
        ..Spawn::default()
    })
    .await;
    let (token, id) = app.registered("steal@example.com", "StealPassword1!").await;
    let me = app.me(&token).await;
    assert_eq!(me.status(), 200);
    for _ in 0..20 {
        let e = echo(
            app.client
                .get(app.url("/api/x"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(e.one("x-user-id").as_deref(), Some(id.as_str()));
    }
}

/// Pingora's lines are at the level of what they describe: busy proxying that succeeds (which
/// makes pingora race its idle-connection watcher for pooled upstream connections) logs no
/// error.
#[tokio::test]
async fn requests_that_succeed_log_no_errors() {
    let up = Upstream::start().await;
    let app = std::sync::Arc::new(gateway_with(&[up.addr()], "").await);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..48 {
        let app = app.clone();
        clients.spawn(async move {
            let client = reqwest::Client::new();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                let status = get_status(&client, &app.url("/public/x"), None).await;
                assert_eq!(status, 200);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let logs = app.logs();
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "{} error lines, e.g. {:?}",
        errors.len(),
        errors.first()
    );
}
