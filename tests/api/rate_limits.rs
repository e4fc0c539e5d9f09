//! Login and registration rate limits: 429 with Retry-After, before any hashing; proxied
//! traffic untouched.

use serde_json::json;

use crate::helpers::*;

async fn limited_app(ip: u32, account: u32, register: u32, extra: &str) -> TestApp {
    TestApp::spawn_with(Spawn {
        config_extra: format!(
            "[rate_limit]\nlogin_per_ip_per_minute = {ip}\nlogin_per_account_per_minute = {account}\n\
             register_per_ip_per_minute = {register}\n\n{extra}"
        ),
        ..Spawn::default()
    })
    .await
}

fn assert_429(a: &Answer, detail: &str) {
    assert_eq!(a.status, 429, "{}", a.text);
    assert_eq!(a.json(), json!({ "detail": detail }));
    let retry: u64 = a
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
}

#[tokio::test]
async fn an_account_is_limited_whether_or_not_it_exists_and_even_with_the_right_password() {
    let app = limited_app(1000, 3, 1000, "").await;
    app.registered("limited@example.com", "LimitedPassword1!")
        .await;
    for _ in 0..3 {
        assert_eq!(
            app.login("limited@example.com", "wrong").await.status(),
            401
        );
    }
    let a = Answer::of(app.login("LIMITED@example.com", "LimitedPassword1!").await).await;
    assert_429(&a, "Too many login attempts, try again later");
    // An unknown account runs out the same way.
    for _ in 0..3 {
        assert_eq!(
            app.login("ghost@example.com", "whatever").await.status(),
            401
        );
    }
    assert_429(
        &Answer::of(app.login("ghost@example.com", "whatever").await).await,
        "Too many login attempts, try again later",
    );
    // Other accounts are not affected.
    assert_eq!(
        app.login("someone@example.com", "whatever").await.status(),
        401
    );
}

#[tokio::test]
async fn a_client_address_is_limited_across_accounts_and_registrations_too() {
    let app = limited_app(4, 1000, 2, "").await;
    for i in 0..4 {
        assert_eq!(
            app.login(&format!("u{i}@example.com"), "x").await.status(),
            401
        );
    }
    assert_429(
        &Answer::of(app.login("u9@example.com", "x").await).await,
        "Too many login attempts, try again later",
    );
    assert_eq!(
        app.register("r1@example.com", "Password123!")
            .await
            .status(),
        200
    );
    assert_eq!(
        app.register("r2@example.com", "Password123!")
            .await
            .status(),
        200
    );
    assert_429(
        &Answer::of(app.register("r3@example.com", "Password123!").await).await,
        "Too many registrations, try again later",
    );
    // The form is checked before the limits: a malformed login is still a 422.
    let a = Answer::of(
        app.client
            .post(app.url("/auth/token"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 422);
}

#[tokio::test]
async fn proxied_traffic_and_health_ignore_the_login_limiter() {
    let up = Upstream::start().await;
    let app = limited_app(1, 1, 1, &route("/public/", &[up.addr()], "public", "")).await;
    assert_eq!(app.login("a@example.com", "x").await.status(), 401);
    assert_eq!(app.login("a@example.com", "x").await.status(), 429);
    for _ in 0..20 {
        assert_eq!(app.status("/public/x").await, 200);
        assert_eq!(app.status("/health").await, 200);
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_limited() {
    let app = limited_app(
        2,
        1000,
        1000,
        "[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n",
    )
    .await;
    let login = |xff: &'static str| {
        app.client
            .post(app.url("/auth/token"))
            .header("X-Forwarded-For", xff)
            .form(&[("username", "p@example.com"), ("password", "x")])
            .send()
    };
    assert_eq!(login("203.0.113.1").await.unwrap().status(), 401);
    assert_eq!(login("203.0.113.1").await.unwrap().status(), 401);
    assert_eq!(login("203.0.113.1").await.unwrap().status(), 429);
    // Another client behind the same proxy has its own budget.
    assert_eq!(
        login("198.51.100.7, 203.0.113.99").await.unwrap().status(),
        401
    );
}

/// A raw login from behind a trusted proxy, with the `X-Forwarded-For` lines given.
async fn login_forwarded_for(port: u16, lines: &[&str]) -> String {
    let body = "username=behind%40example.com&password=wrong";
    let forwarded: String = lines
        .iter()
        .map(|l| format!("X-Forwarded-For: {l}\r\n"))
        .collect();
    raw(
        port,
        format!(
            "POST /auth/token HTTP/1.1\r\nHost: x\r\n{forwarded}Content-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
}

#[tokio::test]
async fn behind_a_proxy_that_appends_its_own_line_the_real_client_is_limited() {
    // The trusted proxy (this test, on 127.0.0.1) appends the address it saw as a line of its
    // own after the client's, as HAProxy's `option forwardfor` does. The client varies its
    // own first line on every attempt.
    let app = limited_app(
        2,
        1000,
        1000,
        "[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n",
    )
    .await;
    for i in 0..2 {
        let spoof = format!("6.6.6.{i}");
        let answer = login_forwarded_for(app.port, &[&spoof, "9.9.9.9"]).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    let answer = login_forwarded_for(app.port, &["6.6.6.99", "9.9.9.9"]).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    // Another client behind the same proxy is not limited.
    let answer = login_forwarded_for(app.port, &["6.6.6.99", "9.9.9.8"]).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}
