//! Sessions: refresh tokens with rotation and reuse detection, logout, the caller's sessions,
//! and revocation reaching every route on every instance.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::helpers::*;

const PASSWORD: &str = "SessionPassword1!";

/// The `TokenResponse` of a login.
async fn login_tokens(app: &TestApp, email: &str) -> Value {
    let r = app.login(email, PASSWORD).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn refresh(app: &TestApp, refresh_token: &str) -> Answer {
    Answer::of(
        app.client
            .post(app.url("/auth/refresh"))
            .json(&json!({ "refresh_token": refresh_token }))
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn assert_invalid_grant(a: &Answer) {
    assert_eq!(
        (a.status, a.json()),
        (
            400,
            json!({"detail": "Invalid refresh token", "error": "invalid_grant"})
        ),
        "{}",
        a.text
    );
}

async fn sessions_of(app: &TestApp, access_token: &str) -> Vec<Value> {
    let a = app.get_as("/auth/sessions", access_token).await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.json().as_array().unwrap().clone()
}

async fn logout(app: &TestApp, access_token: &str, scope: &str) -> u16 {
    app.client
        .post(app.url(&format!("/auth/logout?scope={scope}")))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn logins_start_sessions_and_their_tokens_name_them() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .post(app.url("/auth/register"))
        .header("user-agent", "Tests/1.0")
        .json(&json!({"email": "sess@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    let registered: Value = r.json().await.unwrap();
    assert_token_shape(&registered);
    assert_eq!(registered["expires_in"], 1800);
    let sid = claims(registered["access_token"].as_str().unwrap())["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let login = login_tokens(&app, "sess@example.com").await;
    let access = login["access_token"].as_str().unwrap();
    let list = sessions_of(&app, access).await;
    assert_eq!(list.len(), 2, "{list:?}");
    let keys: Vec<&str> = list[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "created_at",
            "last_used_at",
            "user_agent",
            "ip_address",
            "current"
        ]
    );
    let current: Vec<&Value> = list.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["id"], claims(access)["sid"]);
    let registration = list.iter().find(|s| s["id"] == sid.as_str()).unwrap();
    assert_eq!(registration["user_agent"], "Tests/1.0");
    assert_eq!(registration["ip_address"], "127.0.0.1");
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_ends_the_session_after_the_grace_period() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        auth_extra: "refresh_reuse_grace_seconds = 2\n".into(),
        config_extra: route("/api/", &[up.addr()], "required", ""),
        ..Spawn::default()
    })
    .await;
    app.registered("rotate@example.com", PASSWORD).await;
    let first = login_tokens(&app, "rotate@example.com").await;
    let r0 = first["refresh_token"].as_str().unwrap().to_string();
    let a = refresh(&app, &r0).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let second = a.json();
    assert_token_shape(&second);
    let r1 = second["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r0);
    assert_eq!(
        claims(second["access_token"].as_str().unwrap())["sid"],
        claims(first["access_token"].as_str().unwrap())["sid"]
    );
    // Within the grace period the old token gets the session's current tokens (a second tab,
    // a lost answer): the same refresh token, a working access token.
    let again = refresh(&app, &r0).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json()["refresh_token"], r1.as_str());
    let access = again.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(app.me(&access).await.status(), 200);
    // Every token rotated away within the grace period, not just the last one: a tab two
    // rotations behind gets the current pair too.
    let r2 = refresh(&app, &r1).await.json()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    for behind in [&r0, &r1] {
        let again = refresh(&app, behind).await;
        assert_eq!(again.status, 200, "{}", again.text);
        assert_eq!(again.json()["refresh_token"], r2.as_str());
    }
    let r1 = r2;
    // After it, the old token is a stolen one: the whole session ends.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_invalid_grant(&refresh(&app, &r0).await);
    let (line, _) = app
        .log_line("rotated away longer ago than the grace period; session revoked")
        .await;
    assert!(line.contains("generations_behind=2"), "{line}");
    assert_invalid_grant(&refresh(&app, &r1).await);
    let started = Instant::now();
    assert_eq!(app.me(&access).await.status(), 401);
    loop {
        let status = get_status(&app.client, &app.url("/api/x"), Some(&access)).await;
        if status == 401 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "still {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The account's other sessions are untouched.
    let other = login_tokens(&app, "rotate@example.com").await;
    assert_eq!(
        refresh(&app, other["refresh_token"].as_str().unwrap())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn fifty_concurrent_refreshes_of_one_token_leave_one_live_token() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    app.registered("race@example.com", PASSWORD).await;
    let tokens = login_tokens(&app, "race@example.com").await;
    let r0 = tokens["refresh_token"].as_str().unwrap().to_string();
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (app, r0) = (app.clone(), r0.clone());
        all.spawn(async move { refresh(&app, &r0).await });
    }
    let mut issued = std::collections::BTreeSet::new();
    while let Some(done) = all.join_next().await {
        let a = done.unwrap();
        assert_eq!(a.status, 200, "{}", a.text);
        issued.insert(a.json()["refresh_token"].as_str().unwrap().to_string());
    }
    assert_eq!(issued.len(), 1, "{issued:?}");
    let sid = claims(tokens["access_token"].as_str().unwrap())["sid"]
        .as_str()
        .unwrap()
        .parse::<uuid::Uuid>()
        .unwrap();
    let generation: i32 = app
        .db
        .client()
        .await
        .query_one(
            "SELECT generation FROM sentinel_sessions WHERE id = $1",
            &[&sid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(generation, 1);
    let live = issued.into_iter().next().unwrap();
    assert_eq!(refresh(&app, &live).await.status, 200);
}

#[tokio::test]
async fn every_bad_refresh_token_is_invalid_grant_and_a_forged_one_revokes_nothing() {
    let app = TestApp::spawn().await;
    let (_, id) = app.registered("bad@example.com", PASSWORD).await;
    let tokens = login_tokens(&app, "bad@example.com").await;
    let good = tokens["refresh_token"].as_str().unwrap().to_string();
    let sid: uuid::Uuid = claims(tokens["access_token"].as_str().unwrap())["sid"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // A token naming the real session at a later generation, without the gateway's key.
    let mut forged = sid.as_bytes().to_vec();
    forged.extend_from_slice(&1u32.to_be_bytes());
    forged.extend_from_slice(&[7u8; 32]);
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
    let mut tampered = good.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [
        "",
        "garbage",
        &forged,
        &tampered,
        &"A".repeat(10_000),
        tokens["access_token"].as_str().unwrap(),
    ] {
        assert_invalid_grant(&refresh(&app, bad).await);
    }
    // Wrong shapes of the body are the seed's 422s, never a 500.
    for body in [r#"{"refresh_token": 5}"#, "[1]", "{"] {
        let a = app
            .client
            .post(app.url("/auth/refresh"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(a.status(), 422, "{body}");
    }
    // The forgery revoked nothing.
    let a = refresh(&app, &good).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let current = a.json()["refresh_token"].as_str().unwrap().to_string();
    // Sessions that ended, and users who cannot log in, get nothing either.
    let db = app.db.client().await;
    db.execute("UPDATE users SET is_active = false WHERE id = $1", &[&id])
        .await
        .unwrap();
    assert_invalid_grant(&refresh(&app, &current).await);
    db.execute("UPDATE users SET is_active = true WHERE id = $1", &[&id])
        .await
        .unwrap();
    db.execute(
        "UPDATE sentinel_sessions SET absolute_expires_at = now() - interval '1 second' \
         WHERE id = $1",
        &[&sid],
    )
    .await
    .unwrap();
    assert_invalid_grant(&refresh(&app, &current).await);
}

#[tokio::test]
async fn the_token_endpoint_takes_the_refresh_grant_from_a_standard_oauth2_client() {
    use oauth2::basic::BasicClient;
    use oauth2::{ClientId, ResourceOwnerPassword, ResourceOwnerUsername, TokenResponse};

    let app = TestApp::spawn().await;
    app.registered("oauth@example.com", PASSWORD).await;
    let client = BasicClient::new(ClientId::new("frontend".into()))
        .set_token_uri(oauth2::TokenUrl::new(app.url("/auth/token")).unwrap());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let username = ResourceOwnerUsername::new("oauth@example.com".into());
    let password = ResourceOwnerPassword::new(PASSWORD.into());
    let first = client
        .exchange_password(&username, &password)
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(first.expires_in(), Some(Duration::from_secs(1800)));
    let refresh_token = first.refresh_token().unwrap().clone();
    let second = client
        .exchange_refresh_token(&refresh_token)
        .request_async(&http)
        .await
        .unwrap();
    assert_ne!(
        second.refresh_token().unwrap().secret(),
        refresh_token.secret()
    );
    assert_eq!(app.me(second.access_token().secret()).await.status(), 200);
    // A bad refresh token is the OAuth2 error the library understands.
    let bad = oauth2::RefreshToken::new("not-a-token".into());
    match client
        .exchange_refresh_token(&bad)
        .request_async(&http)
        .await
    {
        Err(oauth2::RequestTokenError::ServerResponse(e)) => {
            assert_eq!(
                e.error(),
                &oauth2::basic::BasicErrorResponseType::InvalidGrant
            );
        }
        other => panic!("expected invalid_grant, got {other:?}"),
    }
}

#[tokio::test]
async fn logout_ends_this_session_others_or_all_and_is_idempotent() {
    let app = TestApp::spawn().await;
    let (registration, _) = app.registered("out@example.com", PASSWORD).await;
    let a = login_tokens(&app, "out@example.com").await;
    let b = login_tokens(&app, "out@example.com").await;
    let c = login_tokens(&app, "out@example.com").await;
    let access = |t: &Value| t["access_token"].as_str().unwrap().to_string();
    // local: this session only; again: still 204.
    assert_eq!(logout(&app, &access(&a), "local").await, 204);
    assert_eq!(logout(&app, &access(&a), "local").await, 204);
    assert_eq!(app.me(&access(&a)).await.status(), 401);
    assert_invalid_grant(&refresh(&app, a["refresh_token"].as_str().unwrap()).await);
    assert_eq!(app.me(&access(&b)).await.status(), 200);
    // others: every session but this one.
    assert_eq!(logout(&app, &access(&b), "others").await, 204);
    assert_eq!(app.me(&access(&b)).await.status(), 200);
    assert_eq!(app.me(&access(&c)).await.status(), 401);
    assert_eq!(app.me(&registration).await.status(), 401);
    assert_eq!(sessions_of(&app, &access(&b)).await.len(), 1);
    // A scope that does not exist is FastAPI's 422; no token, the seed's 401.
    assert_eq!(logout(&app, &access(&b), "everything").await, 422);
    let r = app
        .client
        .post(app.url("/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // global: all sessions; the default scope is local.
    let d = login_tokens(&app, "out@example.com").await;
    assert_eq!(logout(&app, &access(&d), "global").await, 204);
    assert_eq!(app.me(&access(&b)).await.status(), 401);
    assert_eq!(app.me(&access(&d)).await.status(), 401);
    let e = login_tokens(&app, "out@example.com").await;
    let r = app
        .client
        .post(app.url("/auth/logout"))
        .bearer_auth(access(&e))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers().get("content-length").is_none());
    assert_eq!(app.me(&access(&e)).await.status(), 401);
}

#[tokio::test]
async fn a_global_logout_also_ends_the_seed_tokens_without_a_session() {
    let app = TestApp::spawn_seeded().await;
    // A token made as the seed made them (no sid, no iat), still valid.
    let ada = "cf33c6d8-c568-40da-85d6-bad6a194617e";
    let sessionless = seed_style_token(ada);
    assert_eq!(app.me(&sessionless).await.status(), 200);
    let tokens = login_tokens_for(&app, "ada@example.com", "AdaLovelace1815!").await;
    assert_eq!(
        logout(&app, tokens["access_token"].as_str().unwrap(), "global").await,
        204
    );
    assert_eq!(app.me(&sessionless).await.status(), 401);
    // A new login works as before.
    let again = login_tokens_for(&app, "ada@example.com", "AdaLovelace1815!").await;
    assert_eq!(
        app.me(again["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
}

async fn login_tokens_for(app: &TestApp, email: &str, password: &str) -> Value {
    let r = app.login(email, password).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// An HS256 token as the seed's python-jose code made them: `sub` and `exp` only.
/// A token as the seed issued them (no `sid`, no `iat`), for `user_id`, valid 10 minutes.
pub fn seed_style_token(user_id: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    signed_token(&json!({ "sub": user_id, "exp": exp }))
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

#[tokio::test]
async fn a_user_ends_their_own_sessions_only() {
    let app = TestApp::spawn().await;
    app.registered("mine@example.com", PASSWORD).await;
    app.registered("theirs@example.com", PASSWORD).await;
    let mine = login_tokens(&app, "mine@example.com").await;
    let other = login_tokens(&app, "mine@example.com").await;
    let theirs = login_tokens(&app, "theirs@example.com").await;
    let sid = |t: &Value| claims(t["access_token"].as_str().unwrap())["sid"].clone();
    let delete = |token: String, id: String| {
        let client = app.client.clone();
        let url = app.url(&format!("/auth/sessions/{id}"));
        async move {
            client
                .delete(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let my_access = mine["access_token"].as_str().unwrap().to_string();
    let theirs_id = sid(&theirs).as_str().unwrap().to_string();
    let a = Answer::of(
        app.client
            .delete(app.url(&format!("/auth/sessions/{theirs_id}")))
            .bearer_auth(&my_access)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (404, r#"{"detail":"Session not found"}"#)
    );
    assert_eq!(
        app.me(theirs["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
    assert_eq!(delete(my_access.clone(), "not-a-uuid".into()).await, 404);
    let other_id = sid(&other).as_str().unwrap().to_string();
    assert_eq!(delete(my_access.clone(), other_id.clone()).await, 204);
    assert_eq!(delete(my_access.clone(), other_id).await, 404);
    assert_eq!(
        app.me(other["access_token"].as_str().unwrap())
            .await
            .status(),
        401
    );
    assert_eq!(app.me(&my_access).await.status(), 200);
    // Another method on a session is 405.
    let r = app
        .client
        .get(app.url(&format!("/auth/sessions/{theirs_id}")))
        .bearer_auth(&my_access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "DELETE");
}

/// Logout on one instance: every instance refuses the session's access token on a protected
/// route within a second, without asking PostgreSQL per request.
#[tokio::test]
async fn a_revoked_session_is_refused_on_every_instance_within_a_second() {
    let up = Upstream::start().await;
    let routes = route("/api/", &[up.addr()], "required", "");
    let a = TestApp::spawn_with(Spawn {
        config_extra: routes.clone(),
        ..Spawn::default()
    })
    .await;
    let b = Instance::start(&a.db.url, &routes).await;
    a.registered("everywhere@example.com", PASSWORD).await;
    let tokens = login_tokens(&a, "everywhere@example.com").await;
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let on_b = format!("{}/api/x", b.base);
    assert_eq!(get_status(&a.client, &on_b, Some(&access)).await, 200);
    assert_eq!(logout(&a, &access, "local").await, 204);
    let started = Instant::now();
    loop {
        let status = get_status(&a.client, &on_b, Some(&access)).await;
        if status == 401 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "still {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get_status(&a.client, &a.url("/api/x"), Some(&access)).await,
        401
    );
}

async fn change_password(app: &TestApp, access: &str, current: &str, new: &str) -> Answer {
    Answer::of(
        app.client
            .post(app.url("/auth/users/me/password"))
            .bearer_auth(access)
            .json(&json!({"current_password": current, "new_password": new}))
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_password_change_keeps_this_session_and_ends_every_other() {
    let app = TestApp::spawn_seeded().await;
    let email = "ada@example.com";
    let old = "AdaLovelace1815!";
    let here = login_tokens_for(&app, email, old).await;
    let elsewhere = login_tokens_for(&app, email, old).await;
    let sessionless = seed_style_token("cf33c6d8-c568-40da-85d6-bad6a194617e");
    let access = here["access_token"].as_str().unwrap();
    // A wrong current password, a new one against the policy: nothing changes.
    let a = change_password(&app, access, "wrong", "NewPassword123!").await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (401, r#"{"detail":"Incorrect password"}"#)
    );
    let a = change_password(&app, access, old, "short").await;
    assert_eq!(a.status, 422);
    assert_eq!(
        a.json()["detail"][0]["loc"],
        json!(["body", "new_password"])
    );
    assert_eq!(
        app.me(elsewhere["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
    // The change: new tokens for this session, every other session and sessionless token ended.
    let a = change_password(&app, access, old, "NewPassword123!").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let changed = a.json();
    assert_token_shape(&changed);
    assert_eq!(
        claims(changed["access_token"].as_str().unwrap())["sid"],
        claims(access)["sid"]
    );
    assert_eq!(
        app.me(changed["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
    assert_eq!(app.me(access).await.status(), 200, "this session goes on");
    assert_eq!(
        app.me(elsewhere["access_token"].as_str().unwrap())
            .await
            .status(),
        401
    );
    assert_eq!(app.me(&sessionless).await.status(), 401);
    assert_invalid_grant(&refresh(&app, elsewhere["refresh_token"].as_str().unwrap()).await);
    assert_eq!(
        refresh(&app, changed["refresh_token"].as_str().unwrap())
            .await
            .status,
        200
    );
    assert_eq!(app.login(email, old).await.status(), 401);
    assert_eq!(app.login(email, "NewPassword123!").await.status(), 200);
}

#[tokio::test]
async fn password_change_attempts_are_limited_like_logins() {
    let app = TestApp::spawn_with(Spawn {
        config_extra:
            "[rate_limit]\nlogin_per_ip_per_minute = 1000\nlogin_per_account_per_minute = 2\n\
                       register_per_ip_per_minute = 1000\n"
                .into(),
        ..Spawn::default()
    })
    .await;
    let (access, _) = app.registered("guess@example.com", PASSWORD).await;
    for _ in 0..2 {
        assert_eq!(
            change_password(&app, &access, "guess", "NewPassword123!")
                .await
                .status,
            401
        );
    }
    let a = change_password(&app, &access, PASSWORD, "NewPassword123!").await;
    assert_eq!(a.status, 429, "{}", a.text);
    assert!(a.header("retry-after").is_some());
}

/// A login on one instance is announced to the others a moment after its answer has gone out:
/// meanwhile another instance that remembers the user must not refuse the new session's token.
/// Here the announcement never comes (the session is written with triggers off), as the
/// slowest case of that moment.
#[tokio::test]
async fn a_session_newer_than_what_an_instance_remembers_is_admitted() {
    let up = Upstream::start().await;
    let routes = route("/api/", &[up.addr()], "required", "");
    let a = TestApp::spawn_with(Spawn {
        config_extra: routes.clone(),
        ..Spawn::default()
    })
    .await;
    let b = Instance::start(&a.db.url, &routes).await;
    let (first, user_id) = a.registered("fresh@example.com", PASSWORD).await;
    let on_b = format!("{}/api/x", b.base);
    // B now remembers the user, with the sessions of that moment.
    assert_eq!(get_status(&a.client, &on_b, Some(&first)).await, 200);
    let session = uuid::Uuid::new_v4();
    let db = a.db.client().await;
    db.batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    db.execute(
        "INSERT INTO sentinel_sessions (id, user_id, idle_expires_at, absolute_expires_at) \
         VALUES ($1, $2, now() + interval '1 day', now() + interval '1 day')",
        &[&session, &user_id],
    )
    .await
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = signed_token(&json!({
        "sub": user_id, "exp": now + 600, "iat": now, "sid": session.to_string()
    }));
    assert_eq!(get_status(&a.client, &on_b, Some(&token)).await, 200);
    // A session B knows nothing of and that is not in the database either stays refused.
    let stranger = signed_token(&json!({
        "sub": user_id, "exp": now + 600, "iat": now, "sid": uuid::Uuid::new_v4().to_string()
    }));
    assert_eq!(get_status(&a.client, &on_b, Some(&stranger)).await, 401);
}

/// An HS256 token with these claims, signed with the test gateways' secret.
fn signed_token(claims: &Value) -> String {
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let signing_input = format!(
        "{}.{}",
        encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        encode(claims.to_string().as_bytes())
    );
    let signature = hmac_sha256(SEED_SECRET.as_bytes(), signing_input.as_bytes());
    format!("{signing_input}.{}", encode(&signature))
}

#[tokio::test]
async fn a_login_past_max_sessions_ends_the_least_recently_used_session() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        auth_extra: "max_sessions_per_user = 3\n".into(),
        config_extra: route("/api/", &[up.addr()], "required", ""),
        ..Spawn::default()
    })
    .await;
    // The registration is session 0; then two logins: three sessions, all live.
    let (registered, _) = app.registered("many@example.com", PASSWORD).await;
    let one = login_tokens(&app, "many@example.com").await;
    let two = login_tokens(&app, "many@example.com").await;
    let access = |t: &Value| t["access_token"].as_str().unwrap().to_string();
    for token in [registered.clone(), access(&one), access(&two)] {
        assert_eq!(app.me(&token).await.status(), 200);
    }
    // The registration's session is used now (a request through the proxy does not count as
    // use; a refresh does): session one becomes the least recently used.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refreshed = refresh(&app, one["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed.status, 200);
    let one = refreshed.json();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = refresh(&app, two["refresh_token"].as_str().unwrap()).await;
    // A fourth login ends the registration's session (used least recently), and only it.
    let three = login_tokens(&app, "many@example.com").await;
    let ended = |token: String| {
        let app = &app;
        async move {
            let started = Instant::now();
            loop {
                let me = app.me(&token).await.status();
                let proxied = get_status(&app.client, &app.url("/api/x"), Some(&token)).await;
                if me == 401 && proxied == 401 {
                    return;
                }
                assert!(started.elapsed() < Duration::from_secs(1), "{me} {proxied}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    ended(registered).await;
    for token in [access(&one), access(&three)] {
        assert_eq!(app.me(&token).await.status(), 200);
    }
    let list: Vec<Value> = app
        .client
        .get(app.url("/auth/sessions"))
        .bearer_auth(access(&three))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
}

#[tokio::test]
async fn every_read_of_a_users_sessions_is_bounded_by_max_sessions() {
    let app = TestApp::spawn().await;
    let (token, id) = app.registered("hoard@example.com", PASSWORD).await;
    // Sessions from before the bound existed: 20,000 live ones, used earlier than this one.
    app.db
        .client()
        .await
        .execute(
            "INSERT INTO sentinel_sessions (id, user_id, idle_expires_at, absolute_expires_at, \
             last_used_at) SELECT gen_random_uuid(), $1, now() + interval '1 day', \
             now() + interval '1 day', now() - interval '1 hour' FROM generate_series(1, 20000)",
            &[&id],
        )
        .await
        .unwrap();
    let list: Vec<Value> = app
        .client
        .get(app.url("/auth/sessions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 100);
    assert!(list.iter().any(|s| s["current"] == true));
    assert_eq!(app.me(&token).await.status(), 200);
    // The next login ends all but the 100 most recently used.
    login_tokens(&app, "hoard@example.com").await;
    let live: i64 = app
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM sentinel_sessions WHERE user_id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 100);
    assert_eq!(app.me(&token).await.status(), 200);
}
