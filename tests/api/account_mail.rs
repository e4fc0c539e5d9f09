//! Password reset, email verification and the mail they send: delivered by the real binary
//! to a real SMTP server the tests start, read back as it arrived.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;
use crate::mailbox::SmtpServer;

const PASSWORD: &str = "MailPassword1!";
const NEW_PASSWORD: &str = "BrandNewPassword2!";

async fn gateway(smtp: &SmtpServer, extra: &str) -> TestApp {
    TestApp::spawn_with(Spawn {
        config_extra: format!("{}{extra}", smtp.config()),
        ..Spawn::default()
    })
    .await
}

async fn post_json(app: &TestApp, path: &str, body: Value, token: Option<&str>) -> Answer {
    let mut req = app.client.post(app.url(path)).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Answer::of(req.send().await.unwrap()).await
}

/// `POST /auth/verify-email` with `token` (anything that serializes: a string, `{}`…).
async fn verify(app: &TestApp, token: impl serde::Serialize) -> Answer {
    post_json(app, "/auth/verify-email", json!({ "token": token }), None).await
}

fn assert_invalid_token(a: &Answer) {
    assert_eq!(
        (a.status, a.text.as_str()),
        (400, r#"{"detail":"Invalid or expired token"}"#)
    );
}

/// Moves the account tokens of `email` a minute and a half into the past, as if the last link
/// went out that long ago (past the one-a-minute limits).
async fn age_links(app: &TestApp, email: &str) {
    app.db
        .client()
        .await
        .execute(
            "UPDATE sentinel_account_tokens SET created_at = created_at - interval '90 seconds' \
             WHERE email = $1",
            &[&email],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn registration_mails_a_link_that_verifies_the_address_once() {
    let smtp = SmtpServer::start().await;
    let app = gateway(&smtp, "").await;
    let r = app.register("verify@example.com", PASSWORD).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["user"]["email_verified"], json!(false));
    let token = body["access_token"].as_str().unwrap().to_string();

    let mail = smtp.wait_for("verify@example.com", 1).await.remove(0);
    assert_eq!(mail.subject, "Confirm your email address");
    assert_eq!(mail.from, "SentinelShield <no-reply@sentinel.test>");
    assert_eq!(mail.to, "verify@example.com");
    assert!(mail.message_id.ends_with("@sentinel.test>"), "{mail:?}");
    assert!(
        mail.link()
            .starts_with("https://app.sentinel.test/verify-email#token="),
        "{}",
        mail.text
    );
    assert_eq!(mail.token().len(), 43);

    let verified = verify(&app, mail.token()).await;
    assert_eq!(verified.status, 200, "{}", verified.text);
    let user = verified.json();
    assert_eq!(user["email"], "verify@example.com");
    assert_eq!(user["email_verified"], json!(true));
    let me: Value = app.me(&token).await.json().await.unwrap();
    assert_eq!(me["email_verified"], json!(true));

    // Once only; and text that cannot be a token, or no token at all, is refused as such.
    assert_invalid_token(&verify(&app, mail.token()).await);
    assert_invalid_token(&verify(&app, "x").await);
    let forged = format!("{}A", &mail.token()[..42]);
    assert_invalid_token(&verify(&app, forged).await);
    let missing = post_json(&app, "/auth/verify-email", json!({}), None).await;
    assert_eq!(missing.status, 422);
    assert_eq!(missing.json()["detail"][0]["loc"], json!(["body", "token"]));
    let not_json = Answer::of(
        app.client
            .post(app.url("/auth/verify-email"))
            .header("content-type", "text/plain")
            .body("token")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(not_json.status, 422, "{}", not_json.text);
}

#[tokio::test]
async fn resending_waits_a_minute_and_voids_the_earlier_link() {
    let smtp = SmtpServer::start().await;
    let app = gateway(&smtp, "").await;
    let (token, _) = app.registered("resend@example.com", PASSWORD).await;
    let first = smtp.wait_for("resend@example.com", 1).await.remove(0);

    let unauthenticated = post_json(&app, "/auth/verify-email/resend", json!({}), None).await;
    assert_eq!(unauthenticated.status, 401);
    // Within a minute of the registration's link.
    let soon = post_json(&app, "/auth/verify-email/resend", json!({}), Some(&token)).await;
    assert_eq!(soon.status, 429, "{}", soon.text);
    assert_eq!(soon.header("retry-after"), Some("60"));

    age_links(&app, "resend@example.com").await;
    let resent = post_json(&app, "/auth/verify-email/resend", json!({}), Some(&token)).await;
    assert_eq!(
        (resent.status, resent.json()),
        (202, json!({"detail": "Verification email sent"}))
    );
    let second = smtp.wait_for("resend@example.com", 2).await.remove(1);
    assert_ne!(first.token(), second.token());
    assert_invalid_token(&verify(&app, first.token()).await);
    let ok = verify(&app, second.token()).await;
    assert_eq!(ok.status, 200);

    age_links(&app, "resend@example.com").await;
    let done = post_json(&app, "/auth/verify-email/resend", json!({}), Some(&token)).await;
    assert_eq!(
        (done.status, done.json()),
        (202, json!({"detail": "Email already verified"}))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.received_for("resend@example.com").len(), 2);
}

#[tokio::test]
async fn a_reset_link_comes_from_the_configured_base_and_ends_every_session() {
    let smtp = SmtpServer::start().await;
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "{}{}",
            smtp.config(),
            route("/api/", &[up.addr()], "required", "")
        ),
        // Info-level logs: what the gateway writes about mail is checked below.
        env: vec![("SENTINEL_LOG_LEVEL".into(), "info".into())],
        ..Spawn::default()
    })
    .await;
    let (registration_token, user_id) = app.registered("reset@example.com", PASSWORD).await;
    // A token of the seed's kind (no session) works until the reset.
    let seed_token = crate::sessions::seed_style_token(&user_id);
    assert_eq!(app.me(&seed_token).await.status(), 200);
    smtp.wait_for("reset@example.com", 1).await;
    let login: Value = app
        .login("reset@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let access = login["access_token"].as_str().unwrap().to_string();
    let refresh = login["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        get_status(&app.client, &app.url("/api/x"), Some(&access)).await,
        200
    );

    // A hostile Host header changes nothing in the link.
    let asked = Answer::of(
        app.client
            .post(app.url("/auth/password-reset"))
            .header("host", "evil.example")
            .header("x-forwarded-host", "evil.example")
            .json(&json!({"email": "RESET@example.com"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(asked.status, 202, "{}", asked.text);
    let mail = smtp.wait_for("reset@example.com", 2).await.remove(1);
    assert_eq!(mail.subject, "Reset your password");
    assert!(
        mail.link()
            .starts_with("https://app.sentinel.test/reset-password#token="),
        "{}",
        mail.text
    );
    assert!(!mail.text.contains("evil"));

    // The policy first (422), then the token.
    let weak = post_json(
        &app,
        "/auth/password-reset/confirm",
        json!({"token": mail.token(), "new_password": "short"}),
        None,
    )
    .await;
    assert_eq!(weak.status, 422, "{}", weak.text);
    assert_eq!(
        weak.json()["detail"][0]["loc"],
        json!(["body", "new_password"])
    );
    assert_invalid_token(
        &post_json(
            &app,
            "/auth/password-reset/confirm",
            json!({"token": "nonsense", "new_password": NEW_PASSWORD}),
            None,
        )
        .await,
    );

    let done = post_json(
        &app,
        "/auth/password-reset/confirm",
        json!({"token": mail.token(), "new_password": NEW_PASSWORD}),
        None,
    )
    .await;
    assert_eq!(
        (done.status, done.text.as_str()),
        (200, r#"{"detail":"Password has been reset"}"#)
    );
    // No sign-in: no token in the answer. Every session and earlier token ends, on the
    // proxied route within a second.
    let deadline = Instant::now() + Duration::from_secs(1);
    while get_status(&app.client, &app.url("/api/x"), Some(&access)).await != 401 {
        assert!(
            Instant::now() < deadline,
            "the old token still works after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.me(&access).await.status(), 401);
    assert_eq!(app.me(&registration_token).await.status(), 401);
    assert_eq!(app.me(&seed_token).await.status(), 401);
    let refreshed = post_json(
        &app,
        "/auth/refresh",
        json!({"refresh_token": refresh}),
        None,
    )
    .await;
    assert_eq!(refreshed.status, 400);
    assert_eq!(refreshed.json()["error"], "invalid_grant");

    assert_eq!(app.login("reset@example.com", PASSWORD).await.status(), 401);
    let fresh: Value = app
        .login("reset@example.com", NEW_PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fresh["user"]["email_verified"], json!(true));

    let notice = smtp.wait_for("reset@example.com", 3).await.remove(2);
    assert_eq!(notice.subject, "Your password was reset");
    assert!(!notice.text.contains("#token="));

    // Once only.
    assert_invalid_token(
        &post_json(
            &app,
            "/auth/password-reset/confirm",
            json!({"token": mail.token(), "new_password": "AnotherPassword3!"}),
            None,
        )
        .await,
    );
    // Outside the log transport, no token or link reaches the log.
    let logs = app.logs();
    // (The access log's line of the request shows info-level lines are written.)
    assert!(logs.contains("/auth/password-reset/confirm"), "{logs}");
    for secret in [mail.token(), refresh.clone(), access.clone()] {
        assert!(!logs.contains(&secret), "a secret in the log: {logs}");
    }
}

#[tokio::test]
async fn reset_requests_answer_alike_and_are_limited_per_address_and_account() {
    let smtp = SmtpServer::start().await;
    let limits =
        "[rate_limit]\nlogin_per_ip_per_minute = 1000\nlogin_per_account_per_minute = 1000\n\
                  register_per_ip_per_minute = 1000\npassword_reset_per_ip_per_minute = 4\n\n";
    let app = gateway(&smtp, limits).await;
    app.registered("known@example.com", PASSWORD).await;
    smtp.wait_for("known@example.com", 1).await;

    let ask = |email: &'static str| {
        let app = &app;
        async move { post_json(app, "/auth/password-reset", json!({"email": email}), None).await }
    };
    let known = ask("known@example.com").await;
    let unknown = ask("nobody@example.com").await;
    assert_eq!((known.status, &known.text), (unknown.status, &unknown.text));
    assert_eq!(known.status, 202);
    assert_eq!(
        known.json(),
        json!({"detail": "If an account exists for this address, a password reset link has been sent to it"})
    );
    // The second for the account within a minute is answered alike and sends nothing.
    let again = ask("known@example.com").await;
    assert_eq!((again.status, &again.text), (known.status, &known.text));
    // The address's fourth is the last it gets.
    let invalid = post_json(
        &app,
        "/auth/password-reset",
        json!({"email": "not-an-email"}),
        None,
    )
    .await;
    assert_eq!(invalid.status, 422);
    let limited = ask("known@example.com").await;
    assert_eq!(limited.status, 429, "{}", limited.text);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(
        limited.json(),
        json!({"detail": "Too many password reset requests, try again later"})
    );

    smtp.wait_for("known@example.com", 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.received_for("known@example.com").len(), 2);
    assert!(smtp.received_for("nobody@example.com").is_empty());
}

#[tokio::test]
async fn a_newer_reset_link_or_a_password_change_voids_the_older_link() {
    let smtp = SmtpServer::start().await;
    let app = gateway(&smtp, "").await;
    let (token, _) = app.registered("void@example.com", PASSWORD).await;
    let ask = || {
        post_json(
            &app,
            "/auth/password-reset",
            json!({"email": "void@example.com"}),
            None,
        )
    };
    assert_eq!(ask().await.status, 202);
    let first = smtp.wait_for("void@example.com", 2).await.remove(1);
    age_links(&app, "void@example.com").await;
    assert_eq!(ask().await.status, 202);
    let second = smtp.wait_for("void@example.com", 3).await.remove(2);
    assert_ne!(first.token(), second.token());
    let confirm = |t: String| {
        post_json(
            &app,
            "/auth/password-reset/confirm",
            json!({"token": t, "new_password": NEW_PASSWORD}),
            None,
        )
    };
    assert_invalid_token(&confirm(first.token()).await);

    // A password change ends the live link too, and says so by mail.
    let changed = post_json(
        &app,
        "/auth/users/me/password",
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
        Some(&token),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let notice = smtp.wait_for("void@example.com", 4).await.remove(3);
    assert_eq!(notice.subject, "Your password was changed");
    assert_invalid_token(&confirm(second.token()).await);
}

#[tokio::test]
async fn mail_outlives_an_smtp_outage_and_a_restart_and_arrives_once() {
    let mut smtp = SmtpServer::start().await;
    let mut app = gateway(&smtp, "").await;
    smtp.stop();
    let emails: Vec<String> = (0..4).map(|i| format!("outage{i}@example.com")).collect();
    for email in &emails {
        app.registered(email, PASSWORD).await;
    }
    // The worker has tried and failed; what waits in the outbox cannot be used as it is.
    let db = app.db.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let failed: i64 = db
            .query_one(
                "SELECT count(*) FROM sentinel_outbox WHERE last_error IS NOT NULL AND sent_at IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if failed == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{failed} of 4 mails failed to send"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for row in db
        .query("SELECT body, sealed_token FROM sentinel_outbox", &[])
        .await
        .unwrap()
    {
        let body: String = row.get(0);
        let sealed: Vec<u8> = row.get(1);
        assert!(body.contains("#token={token}"), "{body}");
        // ChaCha20-Poly1305: key id, nonce, the 32-byte secret, tag.
        assert_eq!(sealed.len(), 61);
    }

    // The gateway goes, the SMTP server comes back, a new gateway starts on the database.
    app.terminate(Duration::from_secs(10)).expect("stops");
    smtp.restart().await;
    let second = Instance::start(&app.db.url, &smtp.config()).await;
    for email in &emails {
        let got = smtp.wait_for(email, 1).await;
        assert_eq!(got[0].subject, "Confirm your email address");
    }
    // Each exactly once, however long one waits; sent mail keeps no sealed token.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for email in &emails {
        assert_eq!(smtp.received_for(email).len(), 1, "{email}");
    }
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM sentinel_outbox WHERE sent_at IS NULL OR sealed_token IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // The token in the mail is the one whose hash is stored, and it works.
    let token = smtp.received_for(&emails[0])[0].token();
    let r = reqwest::Client::new()
        .post(format!("{}/auth/verify-email", second.base))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn unverified_users_are_refused_on_protected_routes_when_verification_is_required() {
    let smtp = SmtpServer::start().await;
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "{}{}{}",
            smtp.config(),
            route("/api/", &[up.addr()], "required", ""),
            route("/open/", &[up.addr()], "public", "")
        ),
        auth_extra: "require_verified_email = true\n".into(),
        ..Spawn::default()
    })
    .await;
    let (token, _) = app.registered("strict@example.com", PASSWORD).await;
    let refused = app.get_as("/api/x", &token).await;
    assert_eq!(
        (refused.status, refused.text.as_str()),
        (403, r#"{"detail":"Email not verified"}"#)
    );
    // They can still manage their account, and public routes see who they are.
    assert_eq!(app.me(&token).await.status(), 200);
    let open = Answer::of(
        app.client
            .get(app.url("/open/x"))
            .bearer_auth(&token)
            .header("x-user-email-verified", "true")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let echo = Echo(open.json());
    assert_eq!(
        echo.one("x-user-email").as_deref(),
        Some("strict@example.com")
    );
    assert_eq!(echo.one("x-user-email-verified").as_deref(), Some("false"));

    let mail = smtp.wait_for("strict@example.com", 1).await.remove(0);
    let verified = verify(&app, mail.token()).await;
    assert_eq!(verified.status, 200);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let a = app.get_as("/api/x", &token).await;
        if a.status == 200 {
            assert_eq!(
                Echo(a.json()).one("x-user-email-verified").as_deref(),
                Some("true")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused 1 s after verifying"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn adopted_seed_users_start_unverified_and_the_log_transport_writes_links() {
    let app = TestApp::spawn_with(Spawn {
        seed_data: true,
        env: vec![("SENTINEL_LOG_LEVEL".into(), "info".into())],
        ..Spawn::default()
    })
    .await;
    let users = fixture_json("users.json");
    let user = &users["users"][0];
    let login: Value = app
        .login(
            user["email"].as_str().unwrap(),
            user["password"].as_str().unwrap(),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(login["user"]["email_verified"], json!(false));
    let asked = post_json(
        &app,
        "/auth/password-reset",
        json!({"email": user["email"]}),
        None,
    )
    .await;
    assert_eq!(asked.status, 202);
    let (line, _) = app.log_line("reset-password#token=").await;
    assert!(
        line.contains("http://localhost:3000/reset-password#token="),
        "{line}"
    );
}

#[tokio::test]
async fn expired_links_are_refused_and_mail_whose_link_expired_is_never_sent() {
    let mut smtp = SmtpServer::start().await;
    let app = gateway(&smtp, "").await;
    app.registered("late@example.com", PASSWORD).await;
    let link = smtp.wait_for("late@example.com", 1).await.remove(0);
    let asked = post_json(
        &app,
        "/auth/password-reset",
        json!({"email": "late@example.com"}),
        None,
    )
    .await;
    assert_eq!(asked.status, 202);
    let reset = smtp.wait_for("late@example.com", 2).await.remove(1);
    let db = app.db.client().await;
    db.execute(
        "UPDATE sentinel_account_tokens SET expires_at = now() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    assert_invalid_token(&verify(&app, link.token()).await);
    assert_invalid_token(
        &post_json(
            &app,
            "/auth/password-reset/confirm",
            json!({"token": reset.token(), "new_password": NEW_PASSWORD}),
            None,
        )
        .await,
    );

    // A mail held up until its link has expired is abandoned, its sealed token erased.
    smtp.stop();
    app.registered("later@example.com", PASSWORD).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while db
        .query_opt(
            "SELECT 1 FROM sentinel_outbox WHERE recipient = 'later@example.com' \
             AND last_error IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "no failed attempt recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.execute(
        "UPDATE sentinel_outbox SET expires_at = now() - interval '1 second' \
         WHERE recipient = 'later@example.com'",
        &[],
    )
    .await
    .unwrap();
    smtp.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = db
            .query_one(
                "SELECT abandoned_at IS NOT NULL, sealed_token IS NULL, sent_at IS NULL \
                 FROM sentinel_outbox WHERE recipient = 'later@example.com'",
                &[],
            )
            .await
            .unwrap();
        let (abandoned, erased, unsent): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
        if abandoned {
            assert!(erased && unsent);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stale mail was not abandoned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(smtp.received_for("later@example.com").is_empty());
}

/// A link secret sealed the way builds before the AEAD sealed it (an HMAC-SHA256 pad and tag
/// under the mail seal key of `secret`), written here from the construction's description.
fn legacy_seal(secret: &str, token: &[u8; 32]) -> Vec<u8> {
    use hmac::{Mac, SimpleHmac};
    use sha2::{Digest, Sha256};
    let key: [u8; 32] = Sha256::new()
        .chain_update(b"sentinel-gateway mail seal key\0")
        .chain_update(secret.as_bytes())
        .finalize()
        .into();
    let mac = |parts: &[&[u8]]| -> Vec<u8> {
        let mut mac = <SimpleHmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    };
    let nonce = [7u8; 16];
    let pad = mac(&[b"sentinel seal v1", &nonce]);
    let mut sealed = nonce.to_vec();
    sealed.extend(token.iter().zip(&pad).map(|(t, p)| t ^ p));
    let tag = mac(&[b"sentinel seal tag v1", &sealed]);
    sealed.extend_from_slice(&tag[..16]);
    sealed
}

#[tokio::test]
async fn mail_sealed_by_an_earlier_build_is_delivered_and_new_mail_is_hidden_from_its_workers() {
    let smtp = SmtpServer::start().await;
    let app = gateway(&smtp, "").await;
    // A mail an earlier build wrote: its 64-byte seal, due by `next_attempt_at` alone.
    let token: [u8; 32] = std::array::from_fn(|i| i as u8 * 3);
    let db = app.db.client().await;
    db.execute(
        "INSERT INTO sentinel_outbox (kind, recipient, subject, body, sealed_token, expires_at) \
         VALUES ('password_reset', 'earlier@example.com', 'Reset your password', \
                 'Reset: https://app.sentinel.test/reset-password#token={token}\n', $1, \
                 now() + interval '1 hour')",
        &[&legacy_seal(SEED_SECRET, &token)],
    )
    .await
    .unwrap();
    let got = smtp.wait_for("earlier@example.com", 1).await;
    use base64::Engine as _;
    assert_eq!(
        got[0].token(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
    );

    // A mail this build writes is never due where an earlier build's worker looks
    // (`next_attempt_at`), before or after its delivery.
    app.registered("now@example.com", PASSWORD).await;
    // (Its seal's length is checked where the SMTP server is down and mail waits.)
    let row = db
        .query_one(
            "SELECT next_attempt_at = 'infinity', due_at IS NOT NULL FROM sentinel_outbox \
             WHERE recipient = 'now@example.com'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (true, true));
    smtp.wait_for("now@example.com", 1).await;
    // What an earlier build's worker would claim (its query, verbatim): none of this build's.
    let visible: i64 = db
        .query_one(
            "SELECT count(*) FROM sentinel_outbox WHERE due_at IS NOT NULL AND \
             sent_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= now()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(visible, 0);
    let hidden: i64 = db
        .query_one(
            "SELECT count(*) FROM sentinel_outbox WHERE due_at IS NOT NULL \
             AND next_attempt_at <> 'infinity'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hidden, 0);
}
