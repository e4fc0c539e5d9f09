use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn login_accepts_urlencoded_and_multipart_forms() {
    let app = TestApp::spawn().await;
    let (_, id) = app.registered("form@example.com", "FormPassword1!").await;
    for answer in [
        app.login("form@example.com", "FormPassword1!").await,
        app.login_multipart("form@example.com", "FormPassword1!")
            .await,
    ] {
        assert_eq!(answer.status(), 200);
        let body: Value = answer.json().await.unwrap();
        assert_token_shape(&body);
        assert_eq!(body["user"]["id"], id.as_str());
        assert_eq!(
            app.me(body["access_token"].as_str().unwrap())
                .await
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn login_ignores_the_letter_case_of_the_email() {
    let app = TestApp::spawn().await;
    app.registered("Mixed.Case@example.com", "CasePassword1!")
        .await;
    let r = app.login("mixed.case@EXAMPLE.com", "CasePassword1!").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["user"]["email"], "Mixed.Case@example.com");
}

#[tokio::test]
async fn unknown_email_wrong_password_and_inactive_account_get_the_same_answer() {
    let app = TestApp::spawn().await;
    app.registered("known@example.com", "KnownPassword1!").await;
    app.registered("inactive@example.com", "InactivePassword1!")
        .await;
    app.db
        .client()
        .await
        .execute(
            "UPDATE users SET is_active = false WHERE email = 'inactive@example.com'",
            &[],
        )
        .await
        .unwrap();
    let answers = [
        Answer::of(app.login("nobody@example.com", "KnownPassword1!").await).await,
        Answer::of(app.login("known@example.com", "wrong-password").await).await,
        Answer::of(
            app.login("inactive@example.com", "InactivePassword1!")
                .await,
        )
        .await,
        // Short legacy-style passwords are just wrong at login, never a 422.
        Answer::of(app.login("known@example.com", "x").await).await,
    ];
    for a in &answers {
        assert_eq!(a.status, 401);
        assert_eq!(a.text, r#"{"detail":"Incorrect email or password"}"#);
        assert_eq!(a.header("www-authenticate"), Some("Bearer"));
        let mut names: Vec<_> = a.headers.keys().map(|k| k.as_str().to_string()).collect();
        names.sort();
        let mut first: Vec<_> = answers[0]
            .headers
            .keys()
            .map(|k| k.as_str().to_string())
            .collect();
        first.sort();
        assert_eq!(names, first);
    }
}

#[tokio::test]
async fn form_field_rules_follow_oauth2_password_request_form() {
    let app = TestApp::spawn().await;
    let (_, _) = app
        .registered("fields@example.com", "FieldsPassword1!")
        .await;
    let post = |body: &'static str| {
        app.client
            .post(app.url("/auth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    // grant_type, when present and not empty, must be "password".
    assert_eq!(
        post("username=fields@example.com&password=FieldsPassword1!&grant_type=password")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post("username=fields@example.com&password=FieldsPassword1!&grant_type=")
            .await
            .unwrap()
            .status(),
        200
    );
    let a = Answer::of(
        post("username=fields@example.com&password=FieldsPassword1!&grant_type=client_credentials")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 422);
    assert_eq!(
        a.json()["detail"][0]["loc"],
        serde_json::json!(["body", "grant_type"])
    );
    // The refresh grant needs its token (RFC 6749 §6).
    let a = Answer::of(
        post("username=fields@example.com&password=FieldsPassword1!&grant_type=refresh_token")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 422);
    assert_eq!(
        a.json()["detail"][0]["loc"],
        serde_json::json!(["body", "refresh_token"])
    );
    // scope, client_id and client_secret are accepted and ignored.
    assert_eq!(
        post("username=fields@example.com&password=FieldsPassword1!&scope=a+b&client_id=x&client_secret=y").await.unwrap().status(),
        200
    );
    // Empty values count as missing.
    let a = Answer::of(post("username=&password=").await.unwrap()).await;
    assert_eq!(
        a.text,
        r#"{"detail":[{"type":"missing","loc":["body","username"],"msg":"Field required","input":null},{"type":"missing","loc":["body","password"],"msg":"Field required","input":null}]}"#
    );
    // Multipart with a missing password.
    let form = reqwest::multipart::Form::new().text("username", "fields@example.com");
    let a = Answer::of(
        app.client
            .post(app.url("/auth/token"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 422);
    assert_eq!(
        a.text,
        r#"{"detail":[{"type":"missing","loc":["body","password"],"msg":"Field required","input":null}]}"#
    );
}

/// Password hashing runs on threads of lower priority than the proxy's, so that a login flood
/// leaves the cores to proxied traffic and `/health` whenever they need them.
#[tokio::test]
async fn hashing_threads_run_at_a_lower_priority_than_request_threads() {
    let app = TestApp::spawn().await;
    // (thread name, nice) of every thread of the gateway; field 19 of stat is the nice value,
    // counted after the `(comm)` field, which may itself contain spaces.
    let threads: Vec<(String, i64)> = std::fs::read_dir(format!("/proc/{}/task", app.pid()))
        .unwrap()
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm"))
                .ok()?
                .trim()
                .to_string();
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let after_comm = &stat[stat.rfind(')')? + 2..];
            let nice = after_comm.split_whitespace().nth(16)?.parse().ok()?;
            Some((name, nice))
        })
        .collect();
    let hashing: Vec<i64> = threads
        .iter()
        .filter(|(name, _)| name.starts_with("sg-hash-"))
        .map(|(_, nice)| *nice)
        .collect();
    assert!(!hashing.is_empty(), "no hashing threads among {threads:?}");
    assert!(hashing.iter().all(|n| *n == 10), "{threads:?}");
    let others: Vec<&(String, i64)> = threads
        .iter()
        .filter(|(name, _)| !name.starts_with("sg-hash-"))
        .collect();
    assert!(others.iter().all(|(_, n)| *n == 0), "{threads:?}");
    // Logins still work.
    app.registered("nice@example.com", "NicePassword1!").await;
    assert_eq!(
        app.login("nice@example.com", "NicePassword1!")
            .await
            .status(),
        200
    );
}

/// The access log: one line per request with what an operator needs, and never a secret (no
/// query string, no token, no password, no request body).
#[tokio::test]
async fn the_access_log_records_requests_without_secrets() {
    let app = TestApp::spawn_with(Spawn {
        env: vec![
            ("SENTINEL_LOG_LEVEL".into(), "info".into()),
            ("SENTINEL_LOG_FORMAT".into(), "json".into()),
        ],
        ..Spawn::default()
    })
    .await;
    let password = "LoggedPassword1!";
    let (token, _) = app.registered("logged@example.com", password).await;
    assert_eq!(
        app.login("logged@example.com", password).await.status(),
        200
    );
    let r = app
        .client
        .get(app.url("/auth/users/me?api_key=query-secret"))
        .bearer_auth(&token)
        .header("x-request-id", "trace-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (line, logs) = app.log_line("trace-me-1").await;
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["target"], "access");
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/auth/users/me");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["endpoint"], "users_me");
    assert!(entry["duration_us"].is_u64(), "{line}");
    // The client's address and port (made once per connection).
    let client = entry["client"].as_str().unwrap_or_default();
    let (ip, port) = client.rsplit_once(':').unwrap_or_default();
    assert_eq!(ip, "127.0.0.1", "{line}");
    assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "{line}");
    // Three requests before this one: register, login, me.
    assert!(
        logs.lines()
            .filter(|l| l.contains("\"target\":\"access\""))
            .count()
            >= 3
    );
    for secret in [password, token.as_str(), "query-secret", "api_key"] {
        assert!(!logs.contains(secret), "{secret} in the log:\n{logs}");
    }
}

/// With the text format (for development) access lines still appear, through `tracing`.
#[tokio::test]
async fn the_access_log_also_speaks_the_text_format() {
    let app = TestApp::spawn_with(Spawn {
        env: vec![("SENTINEL_LOG_LEVEL".into(), "info".into())],
        ..Spawn::default()
    })
    .await;
    let r = app
        .client
        .get(app.url("/health?token=query-secret"))
        .header("x-request-id", "text-trace-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (line, logs) = app.log_line("text-trace-1").await;
    assert!(line.contains("access"), "{line}");
    assert!(
        line.contains("path=\"/health\"") || line.contains("path=/health"),
        "{line}"
    );
    assert!(line.contains("status=200"), "{line}");
    assert!(!logs.contains("query-secret"), "{logs}");
}
