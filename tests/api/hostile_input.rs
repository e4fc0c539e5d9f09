//! Malformed and hostile bodies: always a clear 4xx in FastAPI's shape, never a 500.

use serde_json::json;

use crate::helpers::*;

async fn post(app: &TestApp, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Answer {
    let mut req = app.client.post(app.url(path)).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    Answer::of(req.send().await.unwrap()).await
}

#[tokio::test]
async fn malformed_bodies_never_cause_a_server_error() {
    let app = TestApp::spawn().await;
    let (token, _) = app
        .registered("target@example.com", "TargetPassword1!")
        .await;
    let json = Some("application/json");
    let form = Some("application/x-www-form-urlencoded");
    let bodies: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        ("/auth/register", json, b"{\"email\": \"\xff\xfe\"}".to_vec(), 400),
        ("/auth/register", json, b"NaN".to_vec(), 422),
        ("/auth/register", json, b"{\"email\":\"a@b.com\",\"password\":\"x\",\"full_name\":1e999}".to_vec(), 422),
        ("/auth/register", json, "[".repeat(60_000).into_bytes(), 422),
        ("/auth/register", json, b"{\"email\":\"nul\\u0000@example.com\",\"password\":\"Password1!\"}".to_vec(), 422),
        ("/auth/register", json, b"{\"email\":\"ok@example.com\",\"password\":\"Password1!\",\"full_name\":\"a\\u0000b\"}".to_vec(), 422),
        ("/auth/register", json, b"{\"email\":\"\xe2\x80\xae@example.com\",\"password\":\"Password1!\"}".to_vec(), 422),
        ("/auth/register", json, b"{\"email\":{\"$ne\":null},\"password\":\"Password1!\"}".to_vec(), 422),
        ("/auth/register", Some("application/x-www-form-urlencoded"), b"email=a@b.com&password=Password1!".to_vec(), 422),
        ("/auth/register", Some("no-slash"), b"{}".to_vec(), 422),
        ("/auth/token", Some("multipart/form-data"), b"--x\r\n".to_vec(), 400),
        ("/auth/token", Some("multipart/form-data; boundary=\"\""), b"--\r\n".to_vec(), 400),
        ("/auth/token", Some("multipart/form-data; boundary=zz"), b"--zz\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\n\xff\xff\r\n--zz--\r\n".to_vec(), 400),
        ("/auth/token", form, b"username=%ff%fe&password=%00".to_vec(), 401),
        ("/auth/token", form, b"username=target%00@example.com&password=x".to_vec(), 401),
        ("/auth/token", form, b"%%%=&&&==".to_vec(), 422),
        ("/auth/token", Some("text/plain"), b"username=a&password=b".to_vec(), 422),
        ("/auth/token", None, b"".to_vec(), 422),
        // Reset and verification: malformed, mistyped and hostile tokens are 400 or 422.
        ("/auth/password-reset", json, b"{\"email\":[1]}".to_vec(), 422),
        ("/auth/password-reset", json, b"{\"email\":\"x\\u0000@example.com\"}".to_vec(), 422),
        ("/auth/password-reset", Some("text/plain"), b"email=a@b.com".to_vec(), 422),
        ("/auth/password-reset", json, b"{".to_vec(), 422),
        ("/auth/password-reset/confirm", json, b"{\"token\":null,\"new_password\":\"Password1!\"}".to_vec(), 422),
        ("/auth/password-reset/confirm", json, b"{\"token\":\"a\\u0000b\",\"new_password\":\"Password1!\"}".to_vec(), 400),
        ("/auth/password-reset/confirm", json, format!("{{\"token\":\"{}\",\"new_password\":\"Password1!\"}}", "A".repeat(60_000)).into_bytes(), 400),
        ("/auth/password-reset/confirm", json, b"{\"token\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\",\"new_password\":\"Password1!\"}".to_vec(), 400),
        ("/auth/password-reset/confirm", json, b"{\"token\":\"../../etc/passwd%00xxxxxxxxxxxxxxxxxxxxxxxxxxx\",\"new_password\":\"Password1!\"}".to_vec(), 400),
        ("/auth/verify-email", json, b"{\"token\":{\"$ne\":null}}".to_vec(), 422),
        ("/auth/verify-email", json, b"{\"token\":\"\xff\xfe\"}".to_vec(), 400),
        ("/auth/verify-email", json, b"[]".to_vec(), 422),
        ("/auth/verify-email", None, b"".to_vec(), 422),
        ("/auth/refresh", json, b"{\"refresh_token\":\"\\u0000\"}".to_vec(), 400),
    ];
    for (path, ct, body, expected) in bodies {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).to_string();
        let a = post(&app, path, ct, body).await;
        assert_eq!(a.status, expected, "{path} {ct:?} {shown:?}: {}", a.text);
        assert!(a.json().get("detail").is_some(), "{shown:?}");
    }
    // Nothing was created by any of it, and the real user still works.
    let count = app.db.user_count().await;
    assert_eq!(count, 1);
    assert_eq!(app.me(&token).await.status(), 200);
}

#[tokio::test]
async fn oversized_bodies_get_413_before_being_read() {
    let app = TestApp::spawn().await;
    let big = vec![b'a'; 2 * 1024 * 1024];
    let a = post(
        &app,
        "/auth/register",
        Some("application/json"),
        big.clone(),
    )
    .await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (413, r#"{"detail":"Request body too large"}"#)
    );
    // Chunked (no Content-Length) is counted as it arrives.
    let stream = futures_util::stream::iter(
        big.chunks(16 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let r = app
        .client
        .post(app.url("/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    for path in [
        "/auth/password-reset",
        "/auth/password-reset/confirm",
        "/auth/verify-email",
    ] {
        let a = post(&app, path, Some("application/json"), big.clone()).await;
        assert_eq!(a.status, 413, "{path}");
    }
    assert_eq!(app.status("/health").await, 200);
}

#[tokio::test]
async fn raw_protocol_garbage_is_refused_and_the_gateway_stays_up() {
    let app = TestApp::spawn().await;
    for request in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST /auth/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let answer = raw(app.port, request).await;
        assert!(!answer.contains(" 500 "), "{answer}");
    }
    assert_eq!(app.status("/health").await, 200);
}

/// Spellings that registration normalises to an existing address cannot make a second account;
/// each of them logs in to the one account, and all share its rate-limit bucket.
#[tokio::test]
async fn unicode_and_quoting_tricks_reach_one_account_or_none() {
    // Cheap hashing: the attempts below must outpace the bucket's refill (one per 5 s) even
    // on a loaded machine, where argon2 at full cost took longer than that per login.
    let app = TestApp::spawn_with(Spawn {
        server_extra: "environment = \"development\"\n".into(),
        config_extra: "[password]\nargon2_memory_kib = 64\nargon2_iterations = 1\n\n\
                       [rate_limit]\nlogin_per_ip_per_minute = 1000\n\
                       login_per_account_per_minute = 12\nregister_per_ip_per_minute = 1000\n"
            .into(),
        ..Spawn::default()
    })
    .await;
    let password = "VictimPassword1!";
    // NFC "josé" on a non-ASCII domain.
    let (_, id) = app.registered("jos\u{e9}@ex\u{e4}mple.com", password).await;
    let same_account = [
        "jose\u{301}@ex\u{e4}mple.com",        // NFD local part
        "JOS\u{c9}@EX\u{c4}MPLE.COM",          // upper case
        "jos\u{e9}@xn--exmple-cua.com",        // the domain in punycode
        "Victim <jos\u{e9}@ex\u{e4}mple.com>", // a display name
        "  jos\u{e9}@ex\u{e4}mple.com  ",      // padding
    ];
    for spelling in same_account {
        let a = Answer::of(app.register(spelling, "OtherPassword1!").await).await;
        assert_eq!(
            (a.status, a.text.as_str()),
            (400, r#"{"detail":"Email already registered"}"#),
            "{spelling:?}"
        );
        let a = Answer::of(app.login(spelling, password).await).await;
        assert_eq!(a.status, 200, "{spelling:?}: {}", a.text);
        assert_eq!(a.json()["user"]["id"], id.as_str(), "{spelling:?}");
    }
    // Refused outright: quoting, invisible and bidi characters, look-alike at-signs, NUL,
    // a trailing dot.
    for trick in [
        "\"jos\u{e9}\"@ex\u{e4}mple.com",
        "\"jos\u{e9}@ex\u{e4}mple.com\"@evil.com",
        "jos\u{e9}\u{200b}@ex\u{e4}mple.com",
        "\u{202e}moc.elpmaxe@jos\u{e9}",
        "jos\u{e9}\u{ff20}ex\u{e4}mple.com",
        "jos\u{e9}@ex\u{e4}mple.com\u{0}",
        "jos\u{e9}@ex\u{e4}mple.com.",
        "jos\u{e9}@ex\u{e4}mple.com <attacker@evil.com>",
    ] {
        let a = Answer::of(app.register(trick, password).await).await;
        assert_eq!(a.status, 422, "{trick:?}: {}", a.text);
        assert_eq!(
            a.json()["detail"][0]["loc"],
            json!(["body", "email"]),
            "{trick:?}"
        );
        // As a login they name no account.
        assert_eq!(app.login(trick, password).await.status(), 401, "{trick:?}");
    }
    let count = app.db.user_count().await;
    assert_eq!(count, 1);
    // One bucket for all spellings: run it out under the first spelling, and every other
    // spelling is refused at once. (Were they separate buckets, each would still have its 12.)
    // Bounded loops and "within two attempts" keep this independent of the bucket refilling
    // one token per 5 s while a slow machine runs the test.
    let started = std::time::Instant::now();
    let mut attempts = 0;
    while app.login(same_account[0], "wrong").await.status() != 429 {
        attempts += 1;
        // What is left of the burst, plus one per 5 s the test has taken.
        assert!(
            attempts <= 12 + started.elapsed().as_secs() / 5,
            "never limited after {attempts}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(120));
    }
    for spelling in &same_account[1..] {
        let first = app.login(spelling, "wrong").await.status();
        let limited = first == 429 || app.login(spelling, "wrong").await.status() == 429;
        assert!(limited, "{spelling:?} has a bucket of its own");
    }
    // An unrelated account is not limited.
    assert_eq!(app.login("other@example.com", "wrong").await.status(), 401);
}
