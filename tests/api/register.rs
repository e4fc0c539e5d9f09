use std::sync::Arc;

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn register_returns_a_token_response_that_logs_the_user_in() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .post(app.url("/auth/register"))
        .json(&json!({"email": "Test@Example.COM", "password": "TestPassword123!", "full_name": "Test User"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_token_shape(&body);
    // pydantic's normalisation: the domain is lower-cased, the local part kept.
    assert_eq!(body["user"]["email"], "Test@example.com");
    assert_eq!(body["user"]["full_name"], "Test User");
    assert_eq!(body["user"]["is_active"], true);

    let me = Answer::of(app.me(body["access_token"].as_str().unwrap()).await).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json(), body["user"]);

    // The hash is argon2id at no less than OWASP's minimum.
    let hash: String = app
        .db
        .client()
        .await
        .query_one("SELECT hashed_password FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
}

#[tokio::test]
async fn a_missing_full_name_is_stored_as_the_seed_stored_it() {
    let app = TestApp::spawn().await;
    let body: Value = app
        .register("nofullname@example.com", "Password123!")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["user"]["full_name"], "");
}

#[tokio::test]
async fn emails_are_unique_regardless_of_letter_case() {
    let app = TestApp::spawn().await;
    app.registered("case@example.com", "Password123!").await;
    for email in ["case@example.com", "CASE@example.com", "Case@Example.Com"] {
        let a = Answer::of(app.register(email, "Password123!").await).await;
        assert_eq!(a.status, 400, "{email}");
        assert_eq!(a.text, r#"{"detail":"Email already registered"}"#);
    }
}

#[tokio::test]
async fn password_policy_is_eight_to_1024_characters() {
    let app = TestApp::spawn().await;
    let a = Answer::of(app.register("short@example.com", "1234567").await).await;
    assert_eq!(a.status, 422);
    assert_eq!(
        a.text,
        r#"{"detail":[{"type":"string_too_short","loc":["body","password"],"msg":"String should have at least 8 characters","input":"1234567","ctx":{"min_length":8}}]}"#
    );
    let long = "p".repeat(1025);
    let a = Answer::of(app.register("long@example.com", &long).await).await;
    assert_eq!(a.status, 422);
    assert_eq!(a.json()["detail"][0]["type"], "string_too_long");
    assert_eq!(a.json()["detail"][0]["ctx"]["max_length"], 1024);
    // Characters, not bytes: eight non-ASCII characters are enough, 1024 are allowed.
    assert_eq!(
        app.register("eight@example.com", "ééééééé€").await.status(),
        200
    );
    assert_eq!(
        app.register("max@example.com", &"€".repeat(1024))
            .await
            .status(),
        200
    );
    let (_, _) = app
        .registered("then-login@example.com", &"€".repeat(1024))
        .await;
    assert_eq!(
        app.login("then-login@example.com", &"€".repeat(1024))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn fifty_concurrent_registrations_of_one_email_let_exactly_one_through() {
    let app = Arc::new(TestApp::spawn().await);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let app = Arc::clone(&app);
        tasks.push(tokio::spawn(async move {
            // Mixed letter case: still one account.
            let email = if i % 2 == 0 {
                "race@example.com"
            } else {
                "RACE@example.com"
            };
            let r = app.register(email, "RacePassword1!").await;
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (status, text) = t.await.unwrap();
        match status {
            200 => ok += 1,
            400 => assert_eq!(text, r#"{"detail":"Email already registered"}"#),
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert_eq!(ok, 1);
    let count = app.db.user_count().await;
    assert_eq!(count, 1);
}

#[tokio::test]
async fn validation_errors_have_fastapis_shape() {
    let app = TestApp::spawn().await;
    let cases: &[(&str, &str)] = &[
        (
            r#"[]"#,
            r#"{"detail":[{"type":"model_attributes_type","loc":["body"],"msg":"Input should be a valid dictionary or object to extract fields from","input":[]}]}"#,
        ),
        (
            r#"{"email":null,"password":"Whatever123!"}"#,
            r#"{"detail":[{"type":"string_type","loc":["body","email"],"msg":"Input should be a valid string","input":null}]}"#,
        ),
        (
            r#"{"email":"a@b.com","password":"Whatever123!","full_name":5}"#,
            r#"{"detail":[{"type":"string_type","loc":["body","full_name"],"msg":"Input should be a valid string","input":5}]}"#,
        ),
        (
            r#"{"email":"a..b@example.com","password":"Whatever123!"}"#,
            r#"{"detail":[{"type":"value_error","loc":["body","email"],"msg":"value is not a valid email address: An email address cannot have two periods in a row.","input":"a..b@example.com","ctx":{"reason":"An email address cannot have two periods in a row."}}]}"#,
        ),
        (
            r#"{"email":"a","password":"Whatever123!"} x"#,
            r#"{"detail":[{"type":"json_invalid","loc":["body",40],"msg":"JSON decode error","input":{},"ctx":{"error":"Extra data"}}]}"#,
        ),
        (
            "",
            r#"{"detail":[{"type":"missing","loc":["body"],"msg":"Field required","input":null}]}"#,
        ),
    ];
    for (body, expected) in cases {
        let a = Answer::of(
            app.client
                .post(app.url("/auth/register"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, 422, "{body}");
        assert_eq!(&a.text, expected, "{body}");
        assert_eq!(a.header("content-type"), Some("application/json"));
    }
}

#[tokio::test]
async fn registration_can_be_turned_off() {
    let app = TestApp::spawn_with(Spawn {
        env: vec![("SENTINEL_ALLOW_REGISTRATION".into(), "false".into())],
        ..Spawn::default()
    })
    .await;
    let a = Answer::of(
        app.register("invited@example.com", "InvitedPassword1!")
            .await,
    )
    .await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (403, r#"{"detail":"Registration is disabled"}"#)
    );
    assert_eq!(app.db.user_count().await, 0);
}
