//! The admin API under `/auth/admin/`: only for holders of `auth.admin_role`, every answer
//! `no-store`; pages of users with filters and a cursor; creation with roles and an invitation
//! whose link sets the password; changes in effect on every instance within a second; the last
//! administrator kept; a user's sessions ended; hostile input refused with nothing written.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::admin_cli::{cli, stdout};
use crate::helpers::*;
use crate::mailbox::SmtpServer;

const PASSWORD: &str = "AdminPassword1!";

/// A gateway and a signed-in holder of the admin role (token, id).
async fn with_admin(extra: &str) -> (TestApp, String, String) {
    let app = TestApp::spawn_with(Spawn {
        config_extra: extra.to_string(),
        ..Spawn::default()
    })
    .await;
    let (token, id) = app.registered("boss@example.com", PASSWORD).await;
    stdout(&cli(&app, &["grant", "boss@example.com", "admin"], ""));
    (app, token, id)
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = app.client.request(method.parse().unwrap(), app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    Answer::of(req.send().await.unwrap()).await
}

/// Every key of an admin API user, in order: `UserResponse`, then the last sign-in.
fn assert_admin_user_shape(user: &Value) {
    let mut plain = user.clone();
    let last = plain.as_object_mut().unwrap().shift_remove("last_login_at");
    assert!(last.is_some_and(|l| l.is_null() || l.is_string()), "{user}");
    assert_eq!(
        user.as_object().unwrap().keys().next_back().unwrap(),
        "last_login_at"
    );
    assert_user_shape(&plain);
}

/// Everything the admin API may have written: users, roles, sessions, mail, events.
async fn snapshot(app: &TestApp) -> Vec<String> {
    let db = app.db.client().await;
    let mut out = Vec::new();
    for sql in [
        "SELECT id || email || coalesce(full_name, '~') || is_active::text || email_verified::text \
         || hashed_password FROM users ORDER BY id",
        "SELECT user_id || role FROM sentinel_user_roles ORDER BY 1",
        "SELECT id::text || coalesce(revoked_at::text, '-') FROM sentinel_sessions ORDER BY 1",
        "SELECT recipient || kind FROM sentinel_outbox ORDER BY 1",
        "SELECT id::text || type FROM sentinel_audit_events ORDER BY id",
    ] {
        for row in db.query(sql, &[]).await.unwrap() {
            out.push(row.get::<_, String>(0));
        }
    }
    out
}

#[tokio::test]
async fn only_holders_of_the_admin_role_may_use_it_and_nothing_is_cached() {
    let (app, admin, admin_id) = with_admin("").await;
    let (user, user_id) = app.registered("plain@example.com", PASSWORD).await;
    let target = format!("/auth/admin/users/{user_id}");
    let sessions = format!("{target}/sessions");
    let calls: [(&str, &str, Option<Value>); 5] = [
        ("GET", "/auth/admin/users", None),
        (
            "POST",
            "/auth/admin/users",
            Some(json!({"email": "new@example.com"})),
        ),
        ("GET", &target, None),
        ("PATCH", &target, Some(json!({"full_name": "X"}))),
        ("DELETE", &sessions, None),
    ];
    let before = snapshot(&app).await;
    for (method, path, body) in &calls {
        let a = call(&app, method, path, None, body.clone()).await;
        assert_eq!(
            (a.status, a.text.as_str()),
            (401, r#"{"detail":"Not authenticated"}"#),
            "{method} {path}"
        );
        assert_eq!(
            a.header("cache-control"),
            Some("no-store"),
            "{method} {path}"
        );
        let a = call(&app, method, path, Some(&user), body.clone()).await;
        assert_eq!(
            (a.status, a.text.as_str()),
            (403, r#"{"detail":"Not enough permissions"}"#),
            "{method} {path}"
        );
        assert_eq!(
            a.header("cache-control"),
            Some("no-store"),
            "{method} {path}"
        );
    }
    assert_eq!(
        snapshot(&app).await,
        before,
        "a refused caller changed something"
    );
    // The holder of the role gets answers, none of them cacheable either.
    let a = call(&app, "GET", "/auth/admin/users", Some(&admin), None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let a = call(
        &app,
        "GET",
        &format!("/auth/admin/users/{admin_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["roles"], json!(["admin"]));
    assert_admin_user_shape(&a.json());
    // Losing the role loses the API at once (read from the database on every request).
    stdout(&cli(&app, &["grant", "plain@example.com", "admin"], ""));
    assert_eq!(
        call(&app, "GET", "/auth/admin/users", Some(&user), None)
            .await
            .status,
        200
    );
    stdout(&cli(
        &app,
        &["revoke-role", "plain@example.com", "admin"],
        "",
    ));
    assert_eq!(
        call(&app, "GET", "/auth/admin/users", Some(&user), None)
            .await
            .status,
        403
    );

    // Another role can be the admin role; then `admin` is just a name.
    let other = TestApp::spawn_with(Spawn {
        auth_extra: "admin_role = \"people.ops\"\n".into(),
        ..Spawn::default()
    })
    .await;
    let (token, _) = other.registered("boss@example.com", PASSWORD).await;
    stdout(&cli(&other, &["grant", "boss@example.com", "admin"], ""));
    assert_eq!(
        call(&other, "GET", "/auth/admin/users", Some(&token), None)
            .await
            .status,
        403
    );
    stdout(&cli(
        &other,
        &["grant", "boss@example.com", "people.ops"],
        "",
    ));
    assert_eq!(
        call(&other, "GET", "/auth/admin/users", Some(&token), None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn pages_follow_creation_order_with_filters_and_a_cursor() {
    let (app, admin, _) = with_admin("").await;
    let mut ids = Vec::new();
    for (i, name) in [
        "Ann Able",
        "Bob Baker",
        "Cid Cooper",
        "Dee Dunn",
        "Eve Evans",
    ]
    .iter()
    .enumerate()
    {
        let email = format!("user{i}@example.com");
        let r = app
            .client
            .post(app.url("/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD, "full_name": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        ids.push(
            r.json::<Value>().await.unwrap()["user"]["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    stdout(&cli(&app, &["grant", "user1@example.com", "billing"], ""));
    stdout(&cli(&app, &["grant", "user3@example.com", "billing"], ""));
    stdout(&cli(&app, &["deactivate", "user2@example.com"], ""));
    let list = |query: String| {
        let app = &app;
        let admin = admin.clone();
        async move {
            let a = call(
                app,
                "GET",
                &format!("/auth/admin/users{query}"),
                Some(&admin),
                None,
            )
            .await;
            assert_eq!(a.status, 200, "{query}: {}", a.text);
            a.json()
        }
    };
    let emails = |page: &Value| -> Vec<String> {
        page["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["email"].as_str().unwrap().to_string())
            .collect()
    };

    // Two at a time, in creation order, the cursor the last id of each page.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_string();
    let mut pages = 0;
    loop {
        let page = list(query.clone()).await;
        pages += 1;
        let users = page["users"].as_array().unwrap();
        assert!(users.len() <= 2);
        users.iter().for_each(assert_admin_user_shape);
        seen.extend(emails(&page));
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(next, users.last().unwrap()["id"]);
                query = format!("?limit=2&after={next}");
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        [
            "boss@example.com",
            "user0@example.com",
            "user1@example.com",
            "user2@example.com",
            "user3@example.com",
            "user4@example.com"
        ]
    );
    let all = list(String::new()).await;
    assert_eq!(all["next"], Value::Null);
    let created: Vec<&str> = all["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["created_at"].as_str().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] <= w[1]), "{created:?}");

    // q: a piece of the email or the name, any case; role; is_active; and all of them at once.
    assert_eq!(emails(&list("?q=COOP".into()).await), ["user2@example.com"]);
    assert_eq!(
        emails(&list("?q=USER4%40".into()).await),
        ["user4@example.com"]
    );
    assert_eq!(
        emails(&list("?role=billing".into()).await),
        ["user1@example.com", "user3@example.com"]
    );
    assert_eq!(
        emails(&list("?is_active=false".into()).await),
        ["user2@example.com"]
    );
    assert_eq!(
        emails(&list("?role=billing&is_active=true&q=dunn".into()).await),
        ["user3@example.com"]
    );
    assert_eq!(
        emails(&list("?q=nobody-at-all".into()).await),
        Vec::<String>::new()
    );

    // Who signed in when: registration is not a password sign-in, a login is.
    let row = |page: &Value, email: &str| {
        page["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["email"] == email)
            .unwrap()
            .clone()
    };
    assert_eq!(row(&all, "user0@example.com")["last_login_at"], Value::Null);
    assert_eq!(app.login("user0@example.com", PASSWORD).await.status(), 200);
    let after = list(String::new()).await;
    let at = row(&after, "user0@example.com")["last_login_at"]
        .as_str()
        .unwrap()
        .to_string();
    let at = chrono::DateTime::parse_from_rfc3339(&at).unwrap();
    assert!((chrono::Utc::now() - at.with_timezone(&chrono::Utc)).num_seconds() < 60);

    // Bad queries: FastAPI's 422 for each parameter, in order.
    for (query, kinds) in [
        ("?limit=0", vec!["greater_than_equal"]),
        ("?limit=201", vec!["less_than_equal"]),
        ("?limit=ten", vec!["int_parsing"]),
        ("?is_active=perhaps", vec!["bool_parsing"]),
        ("?role=Admin", vec!["string_pattern_mismatch"]),
        (
            "?role=%07admin&limit=-1",
            vec!["string_pattern_mismatch", "greater_than_equal"],
        ),
        ("?after=no-such-user", vec!["value_error"]),
        ("?after=%00", vec!["value_error"]),
    ] {
        let a = call(
            &app,
            "GET",
            &format!("/auth/admin/users{query}"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(a.status, 422, "{query}: {}", a.text);
        let got: Vec<String> = a.json()["detail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, kinds, "{query}");
    }
}

#[tokio::test]
async fn an_admin_creates_users_whose_invitation_sets_the_password() {
    let smtp = SmtpServer::start().await;
    let (app, admin, admin_id) = with_admin(&smtp.config()).await;

    // No password: an invitation whose link sets it (and proves the address).
    let a = call(
        &app,
        "POST",
        "/auth/admin/users",
        Some(&admin),
        Some(json!({"email": "Invited@Example.com", "full_name": "In Vited", "roles": ["ops", "billing.read", "ops"]})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let user = a.json();
    assert_admin_user_shape(&user);
    assert_eq!(user["email"], "Invited@example.com");
    assert_eq!(user["roles"], json!(["billing.read", "ops"]));
    assert_eq!(
        (user["is_active"].clone(), user["email_verified"].clone()),
        (json!(true), json!(false))
    );
    let granted_by: Vec<Option<String>> = app
        .db
        .client()
        .await
        .query(
            "SELECT granted_by FROM sentinel_user_roles WHERE user_id = $1",
            &[&user["id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(granted_by, [Some(admin_id.clone()), Some(admin_id.clone())]);
    // Nobody knows the password it has meanwhile.
    assert_eq!(app.login("invited@example.com", "").await.status(), 422);
    let mail = smtp.wait_for("Invited@example.com", 1).await.remove(0);
    assert_eq!(mail.subject, "You have been invited");
    assert!(mail.text.contains("within 7 days"), "{}", mail.text);
    let link_lifetime: f64 = app
        .db
        .client()
        .await
        .query_one(
            "SELECT extract(epoch FROM expires_at - created_at)::float8 FROM sentinel_account_tokens \
             WHERE user_id = $1",
            &[&user["id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        (link_lifetime - 7.0 * 86_400.0).abs() < 5.0,
        "{link_lifetime}"
    );
    let set = call(
        &app,
        "POST",
        "/auth/password-reset/confirm",
        None,
        Some(json!({"token": mail.token(), "new_password": "ChosenPassword9!"})),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text);
    let login = app.login("invited@example.com", "ChosenPassword9!").await;
    assert_eq!(login.status(), 200);
    let body: Value = login.json().await.unwrap();
    assert_eq!(body["user"]["email_verified"], true);
    assert_eq!(body["user"]["roles"], json!(["billing.read", "ops"]));

    // With a password: signs in at once, and gets the verification mail a registration gets.
    let a = call(
        &app,
        "POST",
        "/auth/admin/users",
        Some(&admin),
        Some(json!({"email": "ready@example.com", "password": "ReadyPassword1!"})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json()["roles"], json!([]));
    assert_eq!(
        app.login("ready@example.com", "ReadyPassword1!")
            .await
            .status(),
        200
    );
    let mail = smtp.wait_for("ready@example.com", 1).await.remove(0);
    assert_eq!(mail.subject, "Confirm your email address");

    // Taken, in any letter case: the seed's answer, nothing written.
    let before = snapshot(&app).await;
    for email in ["READY@example.com", "boss@EXAMPLE.com"] {
        let a = call(
            &app,
            "POST",
            "/auth/admin/users",
            Some(&admin),
            Some(json!({ "email": email })),
        )
        .await;
        assert_eq!(
            (a.status, a.text.as_str()),
            (400, r#"{"detail":"Email already registered"}"#)
        );
    }
    assert_eq!(snapshot(&app).await, before);
}

#[tokio::test]
async fn changes_reach_every_instance_within_a_second_and_the_last_admin_stays() {
    let up = Upstream::start().await;
    let (app, admin, admin_id) = with_admin(&route("/api/", &[up.addr()], "required", "")).await;
    let other = Instance::start(&app.db.url, &route("/api/", &[up.addr()], "required", "")).await;
    let (token, id) = app.registered("staff@example.com", PASSWORD).await;
    let me_there = |token: String| {
        let other = &other;
        let client = app.client.clone();
        async move {
            let r = client
                .get(format!("{}/auth/users/me", other.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(me_there(token.clone()).await.0, 200);
    let path = format!("/auth/admin/users/{id}");

    // Roles, name and address at once; the answer is the user after the change.
    let a = call(
        &app,
        "PATCH",
        &path,
        Some(&admin),
        Some(json!({"roles": ["ops", "auditor"], "full_name": "Staff Member", "email_verified": true})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let user = a.json();
    assert_admin_user_shape(&user);
    assert_eq!(user["roles"], json!(["auditor", "ops"]));
    assert_eq!(
        (user["full_name"].clone(), user["email_verified"].clone()),
        (json!("Staff Member"), json!(true))
    );
    let started = Instant::now();
    loop {
        let (_, me) = me_there(token.clone()).await;
        if me["roles"] == json!(["auditor", "ops"]) && me["full_name"] == "Staff Member" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "{me}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `roles` is the whole set: one dropped, one added; null leaves them be and clears the name.
    let a = call(
        &app,
        "PATCH",
        &path,
        Some(&admin),
        Some(json!({"roles": ["ops", "support"]})),
    )
    .await;
    assert_eq!(a.json()["roles"], json!(["ops", "support"]));
    let a = call(
        &app,
        "PATCH",
        &path,
        Some(&admin),
        Some(json!({"roles": null, "full_name": null})),
    )
    .await;
    assert_eq!(
        (a.json()["roles"].clone(), a.json()["full_name"].clone()),
        (json!(["ops", "support"]), Value::Null)
    );
    let a = call(&app, "PATCH", &path, Some(&admin), Some(json!({}))).await;
    assert_eq!(a.status, 200);

    // Deactivated here: refused there within a second (proxied and own endpoints alike).
    let a = call(
        &app,
        "PATCH",
        &path,
        Some(&admin),
        Some(json!({"is_active": false})),
    )
    .await;
    assert_eq!(a.json()["is_active"], false);
    let started = Instant::now();
    while me_there(token.clone()).await.0 != 401 {
        assert!(started.elapsed() < Duration::from_secs(1), "still admitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get_status(&app.client, &format!("{}/api/x", other.base), Some(&token)).await,
        401
    );
    call(
        &app,
        "PATCH",
        &path,
        Some(&admin),
        Some(json!({"is_active": true})),
    )
    .await;

    // The last active administrator can neither leave the role nor be deactivated...
    let admin_path = format!("/auth/admin/users/{admin_id}");
    let before = snapshot(&app).await;
    for body in [
        json!({"roles": []}),
        json!({"roles": ["ops"]}),
        json!({"is_active": false}),
        json!({"is_active": false, "roles": ["admin"]}),
    ] {
        let a = call(&app, "PATCH", &admin_path, Some(&admin), Some(body.clone())).await;
        assert_eq!(
            (a.status, a.text.as_str()),
            (
                409,
                r#"{"detail":"The last active administrator cannot be deactivated or lose the admin role"}"#
            ),
            "{body}"
        );
    }
    assert_eq!(
        snapshot(&app).await,
        before,
        "a refused change wrote something"
    );
    // ...but may change anything else, and step down once someone else holds it.
    let a = call(
        &app,
        "PATCH",
        &admin_path,
        Some(&admin),
        Some(json!({"roles": ["admin", "ops"]})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = call(
        &app,
        "PATCH",
        &path,
        Some(&admin),
        Some(json!({"roles": ["admin"]})),
    )
    .await;
    assert_eq!(a.status, 200);
    let a = call(
        &app,
        "PATCH",
        &admin_path,
        Some(&admin),
        Some(json!({"roles": ["ops"]})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        call(&app, "GET", "/auth/admin/users", Some(&admin), None)
            .await
            .status,
        403
    );

    // Two administrators demoting each other at the same moment: one of them stays.
    for round in 0..5 {
        stdout(&cli(&app, &["grant", "boss@example.com", "admin"], ""));
        let (a, b) = tokio::join!(
            call(
                &app,
                "PATCH",
                &admin_path,
                Some(&token),
                Some(json!({"roles": []}))
            ),
            call(
                &app,
                "PATCH",
                &path,
                Some(&admin),
                Some(json!({"roles": []}))
            ),
        );
        // The second either finds the other's change done before it (403: no longer an
        // administrator) or waits for it and counts (409); never both through.
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert!(
            statuses == [200, 403] || statuses == [200, 409],
            "round {round}: {} / {}",
            a.text,
            b.text
        );
        let holders: i64 = app
            .db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM sentinel_user_roles WHERE role = 'admin'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(holders, 1, "round {round}");
        // Whoever is left gives the role back to the other for the next round.
        stdout(&cli(&app, &["grant", "staff@example.com", "admin"], ""));
    }
}

#[tokio::test]
async fn ending_a_users_sessions_ends_every_token_they_hold() {
    let (app, admin, _) = with_admin("").await;
    let r = app.register("leaver@example.com", PASSWORD).await;
    let body: Value = r.json().await.unwrap();
    let (access, refresh, id) = (
        body["access_token"].as_str().unwrap().to_string(),
        body["refresh_token"].as_str().unwrap().to_string(),
        body["user"]["id"].as_str().unwrap().to_string(),
    );
    let second = app.login("leaver@example.com", PASSWORD).await;
    let second: Value = second.json().await.unwrap();
    assert_eq!(app.me(&access).await.status(), 200);
    let a = call(
        &app,
        "DELETE",
        &format!("/auth/admin/users/{id}/sessions"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!((a.status, a.text.as_str()), (204, ""));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    for token in [&access, second["access_token"].as_str().unwrap()] {
        assert_eq!(app.me(token).await.status(), 401);
    }
    let r = call(
        &app,
        "POST",
        "/auth/refresh",
        None,
        Some(json!({ "refresh_token": refresh })),
    )
    .await;
    assert_eq!(r.status, 400);
    // The admin's own sessions are untouched; the user can sign in again.
    assert_eq!(app.me(&admin).await.status(), 200);
    assert_eq!(
        app.login("leaver@example.com", PASSWORD).await.status(),
        200
    );
}

#[tokio::test]
async fn hostile_input_gets_a_4xx_in_the_seeds_shape_and_writes_nothing() {
    let (app, admin, _) = with_admin("").await;
    let (_, id) = app.registered("victim@example.com", PASSWORD).await;
    let before = snapshot(&app).await;
    let long = "a".repeat(10_000);
    // Ids no user has: unknown UUIDs, non-UUIDs, escapes, very long ones.
    for who in [
        "00000000-0000-0000-0000-000000000000".to_string(),
        "not-a-uuid".into(),
        "%00".into(),
        "%2e%2e".into(),
        "'%20OR%201=1--".into(),
        long.clone(),
    ] {
        for (method, path, body) in [
            ("GET", format!("/auth/admin/users/{who}"), None),
            (
                "PATCH",
                format!("/auth/admin/users/{who}"),
                Some(json!({"is_active": false})),
            ),
            ("DELETE", format!("/auth/admin/users/{who}/sessions"), None),
        ] {
            let a = call(&app, method, &path, Some(&admin), body).await;
            assert!(
                (400..500).contains(&a.status),
                "{method} {path}: {} {}",
                a.status,
                a.text
            );
            assert!(
                a.json()["detail"].is_string() || a.json()["detail"].is_array(),
                "{}",
                a.text
            );
        }
    }
    let target = format!("/auth/admin/users/{id}");
    // 10,000 roles within the body limit, and 1,000 different ones.
    let roles_10k = vec!["a"; 10_000];
    let roles_1k: Vec<String> = (0..1_000).map(|i| format!("role{i}")).collect();
    let bodies = [
        json!({"roles": roles_10k}),
        json!({"roles": roles_1k}),
        json!({"roles": ["ops", "Admin"]}),
        json!({"roles": ["ops\u{7}"]}),
        json!({"roles": ["ops\nadmin"]}),
        json!({"roles": [long.clone()]}),
        json!({"roles": [null]}),
        json!({"roles": "admin"}),
        json!({"roles": {"admin": true}}),
        json!({"is_active": "no"}),
        json!({"email_verified": 1}),
        json!({"full_name": "nul\u{0}name"}),
        json!({"full_name": ["x"]}),
        json!("a string"),
        json!([1, 2, 3]),
        // A valid field next to a bad one: nothing of it is written.
        json!({"full_name": "Renamed", "roles": ["ok", "NOT OK"]}),
        json!({"is_active": false, "email_verified": "yes"}),
    ];
    for body in &bodies {
        let a = call(&app, "PATCH", &target, Some(&admin), Some(body.clone())).await;
        let shown: String = body.to_string().chars().take(80).collect();
        assert_eq!(a.status, 422, "{shown}: {}", a.text);
        assert!(a.json()["detail"].is_array());
        assert!(
            a.text.len() <= body.to_string().len() + 1024,
            "the answer outgrows the input: {} bytes",
            a.text.len()
        );
        // The same bodies to creation, where they can be wrong (it has no `is_active`).
        let patch_only = body.get("is_active").is_some() || body.get("email_verified").is_some();
        if !patch_only {
            let mut create = body.clone();
            if let Some(map) = create.as_object_mut() {
                map.insert("email".into(), json!("created@example.com"));
            }
            let a = call(
                &app,
                "POST",
                "/auth/admin/users",
                Some(&admin),
                Some(create.clone()),
            )
            .await;
            assert_eq!(a.status, 422, "{shown}: {}", a.text);
        }
    }
    for (body, ctype) in [
        ("{not json", "application/json"),
        ("", "application/json"),
        ("email=x@example.com", "application/x-www-form-urlencoded"),
    ] {
        for (method, path) in [("PATCH", target.as_str()), ("POST", "/auth/admin/users")] {
            let r = app
                .client
                .request(method.parse().unwrap(), app.url(path))
                .bearer_auth(&admin)
                .header("content-type", ctype)
                .body(body)
                .send()
                .await
                .unwrap();
            let a = Answer::of(r).await;
            assert!(
                (400..500).contains(&a.status),
                "{method} {body:?}: {} {}",
                a.status,
                a.text
            );
            assert!(a.json().get("detail").is_some(), "{}", a.text);
        }
    }
    // Bodies past the limit are refused before they are read.
    let huge = json!({"full_name": "x".repeat(100_000)});
    let a = call(&app, "PATCH", &target, Some(&admin), Some(huge)).await;
    assert_eq!(a.status, 413, "{}", a.text);
    // Methods the paths do not take.
    for (method, path) in [
        ("PUT", "/auth/admin/users".to_string()),
        ("DELETE", target.clone()),
        ("GET", format!("{target}/sessions")),
    ] {
        let a = call(&app, method, &path, Some(&admin), None).await;
        assert_eq!(a.status, 405, "{method} {path}");
    }
    assert_eq!(
        snapshot(&app).await,
        before,
        "hostile input wrote something"
    );
    assert!(!app.logs().contains("panicked"));
}
