//! `/openapi.json` and the Swagger UI page at `/docs`: the document passes a real OpenAPI 3.1
//! validator and real answers match its schemas (tests/support/openapi_check.py); the page's
//! assets come from the gateway itself; headless Chromium lists the operations and runs "Try it
//! out" on `/health`; `[docs] enabled = false` turns it all off.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::admin_cli::{cli, stdout};
use crate::browser::{in_chromium, page};
use crate::helpers::*;

const PASSWORD: &str = "DocsPassword123!";

/// Runs the validator on `spec` and the `samples` (see openapi_check.py).
fn check(dir: &TempDir, spec: &str, samples: &Value) {
    let spec_file = dir.0.join("openapi.json");
    let samples_file = dir.0.join("samples.json");
    std::fs::write(&spec_file, spec).unwrap();
    std::fs::write(&samples_file, samples.to_string()).unwrap();
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/openapi_check.py"
        ))
        .arg(&spec_file)
        .arg(&samples_file)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the OpenAPI check failed (scripts/test.sh installs tests/support/requirements.txt):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sample(method: &str, path: &str, a: &Answer) -> Value {
    let body = if a.text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&a.text).unwrap()
    };
    json!({ "method": method, "path": path, "status": a.status, "body": body })
}

#[tokio::test]
async fn the_document_is_valid_openapi_and_real_answers_match_it() {
    let app = TestApp::spawn().await;
    let spec = app.get("/openapi.json").await;
    assert_eq!(spec.status, 200);
    assert_eq!(spec.header("content-type"), Some("application/json"));
    let doc: Value = serde_json::from_str(&spec.text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    // Answers of many kinds, each checked against its operation's documented response.
    let c = &app.client;
    let mut samples = vec![
        sample("GET", "/health", &app.get("/health").await),
        sample("GET", "/ready", &app.get("/ready").await),
        sample(
            "GET",
            "/.well-known/jwks.json",
            &app.get("/.well-known/jwks.json").await,
        ),
    ];
    let post_json = |path: &str, body: Value| c.post(app.url(path)).json(&body).send();
    let r = Answer::of(
        post_json(
            "/auth/register",
            json!({"email": "docs@example.com", "password": PASSWORD, "full_name": "Doc"}),
        )
        .await
        .unwrap(),
    )
    .await;
    samples.push(sample("POST", "/auth/register", &r));
    let tokens = r.json();
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    for body in [
        json!({"email": "docs@example.com", "password": PASSWORD}),
        json!({"email": "x"}),
    ] {
        let r = Answer::of(post_json("/auth/register", body).await.unwrap()).await;
        samples.push(sample("POST", "/auth/register", &r));
    }
    for password in [PASSWORD, "wrong-password"] {
        let r = Answer::of(app.login("docs@example.com", password).await).await;
        samples.push(sample("POST", "/auth/token", &r));
    }
    let r = Answer::of(
        c.post(app.url("/auth/token"))
            .form(&[("username", "x")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    samples.push(sample("POST", "/auth/token", &r));
    let r = Answer::of(
        post_json("/auth/refresh", json!({"refresh_token": refresh}))
            .await
            .unwrap(),
    )
    .await;
    samples.push(sample("POST", "/auth/refresh", &r));
    let r = Answer::of(
        post_json("/auth/refresh", json!({"refresh_token": "nope"}))
            .await
            .unwrap(),
    )
    .await;
    samples.push(sample("POST", "/auth/refresh", &r));
    samples.push(sample(
        "GET",
        "/auth/users/me",
        &app.get_as("/auth/users/me", &access).await,
    ));
    samples.push(sample(
        "GET",
        "/auth/users/me",
        &app.get("/auth/users/me").await,
    ));
    let r = Answer::of(
        c.patch(app.url("/auth/users/me"))
            .bearer_auth(&access)
            .json(&json!({"full_name": null}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    samples.push(sample("PATCH", "/auth/users/me", &r));
    let sessions = app.get_as("/auth/sessions", &access).await;
    samples.push(sample("GET", "/auth/sessions", &sessions));
    let r = Answer::of(
        c.delete(app.url("/auth/sessions/0b6e5c52-7f1c-4c4e-9c0e-2a8f3c1d9e77"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap(),
    )
    .await;
    samples.push(sample("DELETE", "/auth/sessions/{session_id}", &r));
    let r = Answer::of(
        post_json("/auth/password-reset", json!({"email": "docs@example.com"}))
            .await
            .unwrap(),
    )
    .await;
    samples.push(sample("POST", "/auth/password-reset", &r));
    let r = Answer::of(
        post_json(
            "/auth/password-reset/confirm",
            json!({"token": "x", "new_password": PASSWORD}),
        )
        .await
        .unwrap(),
    )
    .await;
    samples.push(sample("POST", "/auth/password-reset/confirm", &r));
    let r = Answer::of(
        post_json("/auth/verify-email", json!({"token": "x"}))
            .await
            .unwrap(),
    )
    .await;
    samples.push(sample("POST", "/auth/verify-email", &r));
    let r = Answer::of(
        c.post(app.url("/auth/verify-email/resend"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap(),
    )
    .await;
    // Registration sent a link a moment ago: a new one is refused for a minute.
    samples.push(sample("POST", "/auth/verify-email/resend", &r));
    let r = Answer::of(
        c.post(app.url("/auth/users/me/password"))
            .bearer_auth(&access)
            .json(&json!({"current_password": PASSWORD, "new_password": "AnotherPassword1!"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    samples.push(sample("POST", "/auth/users/me/password", &r));
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    // The admin API: refused, then as a holder of the admin role.
    let admin = |method: &str, path: &str, body: Option<Value>| {
        let mut req = c
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(&access);
        if let Some(body) = body {
            req = req.json(&body);
        }
        async move { Answer::of(req.send().await.unwrap()).await }
    };
    samples.push(sample(
        "GET",
        "/auth/admin/users",
        &admin("GET", "/auth/admin/users", None).await,
    ));
    stdout(&cli(&app, &["grant", "docs@example.com", "admin"], ""));
    let created = admin(
        "POST",
        "/auth/admin/users",
        Some(json!({"email": "made@example.com", "roles": ["ops"]})),
    )
    .await;
    let made = format!(
        "/auth/admin/users/{}",
        created.json()["id"].as_str().unwrap()
    );
    samples.push(sample("POST", "/auth/admin/users", &created));
    let one = "/auth/admin/users/{user_id}";
    let sessions = format!("{made}/sessions");
    for (method, path, documented, body) in [
        (
            "GET",
            "/auth/admin/users?limit=1",
            "/auth/admin/users",
            None,
        ),
        (
            "GET",
            "/auth/admin/users?limit=0",
            "/auth/admin/users",
            None,
        ),
        ("GET", &made, one, None),
        ("GET", "/auth/admin/users/nobody", one, None),
        (
            "PATCH",
            &made,
            one,
            Some(json!({"roles": ["a", "b"], "is_active": false})),
        ),
        ("PATCH", &made, one, Some(json!({"roles": ["Not A Role"]}))),
        (
            "DELETE",
            &sessions,
            "/auth/admin/users/{user_id}/sessions",
            None,
        ),
        (
            "GET",
            "/auth/admin/events?limit=2",
            "/auth/admin/events",
            None,
        ),
        (
            "GET",
            "/auth/admin/events?type=nope",
            "/auth/admin/events",
            None,
        ),
    ] {
        samples.push(sample(method, documented, &admin(method, path, body).await));
    }
    // Second factors: status, enrolment, activation (wrong, then right), verification,
    // new recovery codes.
    samples.push(sample(
        "GET",
        "/auth/mfa",
        &admin("GET", "/auth/mfa", None).await,
    ));
    let enrolled = admin("POST", "/auth/mfa/totp", Some(json!({"name": "phone"}))).await;
    samples.push(sample("POST", "/auth/mfa/totp", &enrolled));
    let secret = enrolled.json()["secret"].as_str().unwrap().to_string();
    let activate = format!(
        "/auth/mfa/totp/{}/activate",
        enrolled.json()["factor_id"].as_str().unwrap()
    );
    let documented = "/auth/mfa/totp/{factor_id}/activate";
    for code in [
        crate::mfa::wrong_code(&secret),
        crate::mfa::totp(&secret, 0),
    ] {
        let a = admin("POST", &activate, Some(json!({ "code": code }))).await;
        samples.push(sample("POST", documented, &a));
    }
    let a = admin("POST", "/auth/mfa/verify", Some(json!({}))).await;
    samples.push(sample("POST", "/auth/mfa/verify", &a));
    let a = admin("POST", "/auth/mfa/recovery-codes", None).await;
    samples.push(sample("POST", "/auth/mfa/recovery-codes", &a));
    // Passkeys: options, a finish without a credential, none to verify with, a passwordless
    // start and an answer no ceremony issued.
    for (path, body) in [
        (
            "/auth/mfa/webauthn/register/start",
            Some(json!({"name": "key"})),
        ),
        ("/auth/mfa/webauthn/register/finish", Some(json!({}))),
        ("/auth/mfa/webauthn/verify/start", None),
        ("/auth/passkey/start", Some(json!({}))),
    ] {
        samples.push(sample("POST", path, &admin("POST", path, body).await));
    }
    let unknown = json!({"credential": {"id": "AAAA", "rawId": "AAAA", "type": "public-key",
        "response": {"clientDataJSON": "e30", "authenticatorData": "AAAA", "signature": "AAAA"}}});
    let a = admin("POST", "/auth/passkey/finish", Some(unknown)).await;
    samples.push(sample("POST", "/auth/passkey/finish", &a));
    // Forward auth from a peer that is not a trusted proxy.
    let a = admin("GET", "/auth/verify", None).await;
    samples.push(sample("GET", "/auth/verify", &a));
    let r = Answer::of(
        c.post(app.url("/auth/logout?scope=global"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap(),
    )
    .await;
    samples.push(sample("POST", "/auth/logout", &r));
    let statuses: Vec<u64> = samples
        .iter()
        .map(|s| s["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            200, 200, 200, 200, 400, 422, 200, 401, 422, 200, 400, 200, 401, 200, 200, 404, 202,
            400, 400, 429, 200, 403, 201, 200, 422, 200, 404, 200, 422, 204, 200, 422, 200, 201,
            400, 200, 422, 200, 200, 422, 400, 200, 400, 403, 204
        ]
    );
    check(&app.dir, &spec.text, &Value::Array(samples));
}

#[tokio::test]
async fn the_checker_refuses_an_answer_the_document_does_not_describe() {
    // The check above could pass by checking nothing: an answer that contradicts the document
    // must fail it.
    let app = TestApp::spawn().await;
    let spec = app.get("/openapi.json").await.text;
    let dir = TempDir::new();
    let wrong =
        json!([{ "method": "GET", "path": "/health", "status": 200, "body": {"state": "ok"} }]);
    let result = std::panic::catch_unwind(|| check(&dir, &spec, &wrong));
    assert!(result.is_err(), "a body without `status` passed");
    let undocumented = json!([{ "method": "GET", "path": "/health", "status": 418, "body": {} }]);
    let result = std::panic::catch_unwind(|| check(&dir, &spec, &undocumented));
    assert!(result.is_err(), "an undocumented status passed");
}

#[tokio::test]
async fn the_docs_page_and_its_assets_come_from_the_gateway() {
    let app = TestApp::spawn().await;
    let docs = app.get("/docs").await;
    assert_eq!(docs.status, 200);
    assert_eq!(
        docs.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let policy = docs.header("content-security-policy").unwrap();
    assert!(
        policy.contains("script-src 'self'") && !policy.contains("http"),
        "{policy}"
    );
    for asset in [
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
        "/docs/init.js",
    ] {
        assert!(
            docs.text.contains(asset) || asset == "/docs/init.js" && docs.text.contains("init.js")
        );
        let a = app.get(asset).await;
        assert_eq!(a.status, 200, "{asset}");
        assert!(a.text.len() > 100, "{asset}");
    }
    // No CDN: the page names no other host.
    assert!(!docs.text.contains("//"), "{}", docs.text);
    assert_eq!(
        app.get("/docs/swagger-ui-bundle.js")
            .await
            .header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(app.get("/docs/nothing.js").await.status, 404);
    // Nothing about the document leaves for swagger.io's validator.
    assert!(app
        .get("/docs/init.js")
        .await
        .text
        .contains("validatorUrl: null"));
    let post = Answer::of(app.client.post(app.url("/docs")).send().await.unwrap()).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET"));
}

#[tokio::test]
async fn docs_can_be_turned_off_and_their_paths_then_go_to_the_routes() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "[docs]\nenabled = false\n\n{}",
            route("/", &[up.addr()], "public", "")
        ),
        ..Spawn::default()
    })
    .await;
    for path in ["/docs", "/openapi.json", "/docs/swagger-ui-bundle.js"] {
        let a = app.get(path).await;
        assert_eq!(a.status, 200, "{path}");
        // The demo upstream's echo, not the gateway's document.
        assert!(a.json()["path"] == path, "{path}: {}", a.text);
    }
    assert_eq!(up.served().await, 3);

    let off = TestApp::spawn_with(Spawn {
        config_extra: "[docs]\nenabled = false\n".into(),
        ..Spawn::default()
    })
    .await;
    assert_eq!(off.status("/docs").await, 404);
    assert_eq!(off.status("/openapi.json").await, 404);
}

#[tokio::test]
async fn chromium_lists_the_operations_and_tries_out_health() {
    // The page is driven from a page of the same origin (served through a public route), which
    // frames /docs, as a person would click: expand GET /health, "Try it out", "Execute".
    let site = TempDir::new();
    std::fs::create_dir_all(site.0.join("harness")).unwrap();
    std::fs::write(
        site.0.join("harness/index.html"),
        page(
            "const frame = document.createElement('iframe');
             frame.style = 'width: 1200px; height: 3000px';
             frame.src = '/docs';
             document.body.appendChild(frame);
             await new Promise(r => frame.onload = r);
             const doc = () => frame.contentDocument;
             const until = async (what, f) => {
               for (let i = 0; i < 200; i++) { const v = f(); if (v) return v;
                 await new Promise(r => setTimeout(r, 50)); }
               throw new Error('timed out waiting for ' + what);
             };
             await until('operations', () => doc().querySelectorAll('.opblock').length > 10);
             out.operations = [...doc().querySelectorAll('.opblock')].map(b =>
               b.querySelector('.opblock-summary-method').textContent + ' ' +
               b.querySelector('.opblock-summary-path').getAttribute('data-path'));
             const health = doc().getElementById('operations-service-health');
             health.querySelector('.opblock-summary-control').click();
             (await until('try it out', () => health.querySelector('.try-out__btn'))).click();
             (await until('execute', () => health.querySelector('.execute'))).click();
             out.status = await until('the answer', () =>
               [...health.querySelectorAll('.live-responses-table .response-col_status')]
                 .map(e => e.textContent.trim()).find(t => /^[0-9]+$/.test(t)));
             out.body = health.querySelector('.live-responses-table .response-col_description pre').textContent;",
        ),
    )
    .unwrap();
    let site_port = free_port();
    let _site = StaticSite::serve(&site.0, site_port);
    let app = TestApp::spawn_with(Spawn {
        config_extra: route(
            "/harness/",
            &[format!("127.0.0.1:{site_port}")],
            "public",
            "",
        ),
        ..Spawn::default()
    })
    .await;
    wait_for_status(
        &app.url("/harness/index.html"),
        200,
        Duration::from_secs(10),
        "the harness server did not start",
    )
    .await;
    let profile = TempDir::new();
    let seen = in_chromium(&profile, app.url("/harness/index.html")).await;
    assert!(seen.get("error").is_none(), "{seen}");
    let operations: Vec<&str> = seen["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for op in [
        "GET /health",
        "POST /auth/token",
        "POST /auth/register",
        "GET /auth/users/me",
        "DELETE /auth/sessions/{session_id}",
        "GET /.well-known/jwks.json",
    ] {
        assert!(operations.contains(&op), "{op} not listed: {operations:?}");
    }
    // Every operation of the document, each once.
    let doc = app.get("/openapi.json").await.json();
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(operations.len(), documented, "{operations:?}");
    assert!(operations.contains(&"PATCH /auth/admin/users/{user_id}"));
    assert_eq!(seen["status"], "200", "{seen}");
    let body: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"status": "ok"}));
}
