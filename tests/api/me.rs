use serde_json::{json, Value};

use crate::helpers::*;

fn token(name: &str) -> String {
    fixture_json("tokens.json")[name]["token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn the_seed_backends_tokens_behave_as_their_names_say() {
    let app = TestApp::spawn_seeded().await;
    let a = Answer::of(app.me(&token("valid_until_2100")).await).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["id"], "cf33c6d8-c568-40da-85d6-bad6a194617e");
    assert_user_shape(&a.json());
    for (name, detail) in [
        ("expired_2020", "Invalid token"),
        ("other_secret", "Invalid token"),
        ("unknown_user", "User not found"),
    ] {
        let a = Answer::of(app.me(&token(name)).await).await;
        assert_eq!(a.status, 401, "{name}");
        assert_eq!(a.json(), json!({ "detail": detail }), "{name}");
        assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{name}");
    }
}

#[tokio::test]
async fn our_tokens_carry_sub_and_integer_exp_for_the_configured_lifetime() {
    let app = TestApp::spawn().await;
    let (token, id) = app
        .registered("claims@example.com", "ClaimsPassword1!")
        .await;
    let [header, payload, _sig]: [&str; 3] =
        token.split('.').collect::<Vec<_>>().try_into().unwrap();
    let decode = |s: &str| -> Value { serde_json::from_slice(&base64_decode(s)).unwrap() };
    let header = decode(header);
    assert_eq!(header["alg"], "HS256");
    assert!(header.get("kid").is_none());
    let claims = decode(payload);
    assert_eq!(claims["sub"], id.as_str());
    assert!(claims.get("aud").is_none());
    let exp = claims["exp"].as_i64().expect("integer exp");
    let now = chrono::Utc::now().timestamp();
    assert!((exp - now - 30 * 60).abs() < 60, "exp {exp} now {now}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    const A: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.chars() {
        bits = (bits << 6) | A.find(c).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

#[tokio::test]
async fn missing_other_scheme_and_garbage_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let cases = [
        (None, "Not authenticated"),
        (Some("Basic YTpi"), "Not authenticated"),
        (Some("Bearer not.a.token"), "Invalid token"),
        (Some("bearer not.a.token"), "Invalid token"),
        (Some("Bearer"), "Invalid token"),
    ];
    for (header, detail) in cases {
        let mut req = app.client.get(app.url("/auth/users/me"));
        if let Some(h) = header {
            req = req.header("authorization", h);
        }
        let a = Answer::of(req.send().await.unwrap()).await;
        assert_eq!(a.status, 401, "{header:?}");
        assert_eq!(a.json(), json!({ "detail": detail }), "{header:?}");
        assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    }
    // A token far beyond the length cap is refused without trouble.
    let huge = format!("Bearer {}", "a".repeat(6000));
    let a = Answer::of(
        app.client
            .get(app.url("/auth/users/me"))
            .header("authorization", huge)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 401);
}

/// What `GET /auth/users/me` answers once a change made elsewhere has arrived: within a
/// second (it answers from the user-state cache that PostgreSQL's notifications keep).
async fn me_within_a_second(app: &TestApp, token: &str, expected: (u16, Value)) {
    let started = std::time::Instant::now();
    loop {
        let a = Answer::of(app.me(token).await).await;
        if (a.status, a.json()) == expected {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "still {} {}",
            a.status,
            a.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn deactivated_and_deleted_users_cannot_use_their_tokens() {
    let app = TestApp::spawn().await;
    let (token, id) = app.registered("gone@example.com", "GonePassword1!").await;
    assert_eq!(app.me(&token).await.status(), 200);
    let db = app.db.client().await;
    db.execute("UPDATE users SET is_active = false WHERE id = $1", &[&id])
        .await
        .unwrap();
    me_within_a_second(&app, &token, (401, json!({"detail": "Invalid token"}))).await;
    db.execute("DELETE FROM users WHERE id = $1", &[&id])
        .await
        .unwrap();
    me_within_a_second(&app, &token, (401, json!({"detail": "User not found"}))).await;
}

#[tokio::test]
async fn patch_me_changes_only_what_is_sent() {
    let app = TestApp::spawn().await;
    let (token, _) = app.registered("patch@example.com", "PatchPassword1!").await;
    let patch = |body: &'static str, auth: bool| {
        let mut r = app
            .client
            .patch(app.url("/auth/users/me"))
            .header("content-type", "application/json")
            .body(body);
        if auth {
            r = r.bearer_auth(&token);
        }
        r.send()
    };
    let a = Answer::of(patch(r#"{"full_name":"Ada King"}"#, true).await.unwrap()).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["full_name"], "Ada King");
    assert_user_shape(&a.json());
    // Absent: unchanged. Unknown fields (email) are ignored.
    let a = Answer::of(
        patch(r#"{"email":"other@example.com"}"#, true)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (a.json()["full_name"].clone(), a.json()["email"].clone()),
        (json!("Ada King"), json!("patch@example.com"))
    );
    // Null clears.
    let a = Answer::of(patch(r#"{"full_name":null}"#, true).await.unwrap()).await;
    assert_eq!(a.json()["full_name"], Value::Null);
    // Wrong type: 422 and nothing changed.
    let a = Answer::of(patch(r#"{"full_name":5}"#, true).await.unwrap()).await;
    assert_eq!(a.status, 422);
    assert_eq!(a.json()["detail"][0]["type"], "string_type");
    // No token: 401, even with a valid body; malformed JSON is reported first, as FastAPI does.
    let a = Answer::of(patch(r#"{"full_name":"x"}"#, false).await.unwrap()).await;
    assert_eq!(
        (a.status, a.json()),
        (401, json!({"detail": "Not authenticated"}))
    );
    let a = Answer::of(patch("{bad", false).await.unwrap()).await;
    assert_eq!(a.status, 422);
    assert_eq!(a.json()["detail"][0]["type"], "json_invalid");
    let me: Value = app.me(&token).await.json().await.unwrap();
    assert_eq!(me["full_name"], Value::Null);
}

/// `sentinel_cache_lookups_total{cache="user",result}` on the admin listener.
async fn user_cache(admin: &str, result: &str) -> u64 {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!("sentinel_cache_lookups_total{{cache=\"user\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn me_answers_from_the_user_cache_and_sees_every_change_in_time() {
    let admin_port = free_port();
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"),
        ..Spawn::default()
    })
    .await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    let (token, _) = app
        .registered("cached@example.com", "CachedPassword1!")
        .await;
    // Known once read: the login's own notifications (its session, last_login_at) may still
    // be on their way and drop the entry once, so read until an answer reads nothing.
    let started = std::time::Instant::now();
    loop {
        let misses = user_cache(&admin, "miss").await;
        assert_eq!(app.me(&token).await.status(), 200);
        if user_cache(&admin, "miss").await == misses {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Fifty more answers read nothing from PostgreSQL.
    let (hits, misses) = (
        user_cache(&admin, "hit").await,
        user_cache(&admin, "miss").await,
    );
    for _ in 0..50 {
        assert_eq!(app.me(&token).await.status(), 200);
    }
    assert_eq!(user_cache(&admin, "miss").await, misses);
    assert!(user_cache(&admin, "hit").await >= hits + 50);

    // A change made here is seen here at once.
    let patched = app
        .client
        .patch(app.url("/auth/users/me"))
        .bearer_auth(&token)
        .json(&json!({"full_name": "Here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let me: Value = app.me(&token).await.json().await.unwrap();
    assert_eq!(me["full_name"], "Here");
    let logout = app
        .client
        .post(app.url("/auth/logout?scope=local"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    assert_eq!(app.me(&token).await.status(), 401);

    // A change made on another instance is seen here within a second.
    let (token, _) = app
        .registered("elsewhere@example.com", "CachedPassword1!")
        .await;
    let me: Value = app.me(&token).await.json().await.unwrap();
    assert_eq!(me["full_name"], "");
    let other = Instance::start(&app.db.url, "").await;
    let patched = app
        .client
        .patch(format!("{}/auth/users/me", other.base))
        .bearer_auth(&token)
        .json(&json!({"full_name": "There"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let started = std::time::Instant::now();
    loop {
        let me: Value = app.me(&token).await.json().await.unwrap();
        if me["full_name"] == "There" {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{me}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
