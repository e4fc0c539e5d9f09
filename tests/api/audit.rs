//! The audit log: every security event of §10 written with who, where and which request, in
//! the transaction of its change; never a password, token or link; read by the admin API
//! (filters, pages) and `sentinel-gateway events`; pruned past `audit.retention_days`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::admin_cli::{cli, stdout};
use crate::helpers::*;
use crate::mailbox::SmtpServer;

const PASSWORD: &str = "AuditPassword1!";
const AGENT: &str = "audit-test/1.0";

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> Answer {
    let mut req = app
        .client
        .post(app.url(path))
        .header("user-agent", AGENT)
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Answer::of(req.send().await.unwrap()).await
}

async fn login(app: &TestApp, email: &str, password: &str) -> Answer {
    let r = app
        .client
        .post(app.url("/auth/token"))
        .header("user-agent", AGENT)
        .form(&[("username", email), ("password", password)])
        .send()
        .await
        .unwrap();
    Answer::of(r).await
}

/// Every event, oldest first, as the admin API shows them (through pages of 3).
async fn all_events(app: &TestApp, admin: &str, filter: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut before = String::new();
    loop {
        let a = app
            .get_as(
                &format!("/auth/admin/events?limit=3{filter}{before}"),
                admin,
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.header("cache-control"), Some("no-store"));
        let page = a.json();
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next"].as_i64() {
            Some(next) => before = format!("&before={next}"),
            None => break,
        }
    }
    events.reverse();
    events
}

/// Waits (5 s at most) until the log holds an event of `kind` about `user`.
async fn wait_for_event(app: &TestApp, kind: &str, user: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = app
            .db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM sentinel_audit_events WHERE type = $1 AND user_id = $2",
                &[&kind, &user],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no {kind} event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_security_event_is_recorded_with_who_and_where_and_never_a_secret() {
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: smtp.config(),
        auth_extra: "refresh_reuse_grace_seconds = 0\n".into(),
        ..Spawn::default()
    })
    .await;
    let (admin, admin_id) = app.registered("chief@example.com", PASSWORD).await;
    stdout(&cli(&app, &["grant", "chief@example.com", "admin"], ""));

    // A registration, its verification, a login and the three kinds of failure.
    let reg = post(
        &app,
        "/auth/register",
        None,
        json!({"email": "ann@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(reg.status, 200);
    let ann = reg.json()["user"]["id"].as_str().unwrap().to_string();
    let register_request = reg.header("x-request-id").unwrap().to_string();
    let verify_token = smtp.wait_for("ann@example.com", 1).await[0].token();
    assert_eq!(
        post(
            &app,
            "/auth/verify-email",
            None,
            json!({"token": verify_token})
        )
        .await
        .status,
        200
    );
    let ok = login(&app, "ann@example.com", PASSWORD).await;
    assert_eq!(ok.status, 200);
    let tokens = ok.json();
    let (access, refresh) = (
        tokens["access_token"].as_str().unwrap().to_string(),
        tokens["refresh_token"].as_str().unwrap().to_string(),
    );
    let wrong_password = "NotThePassword1!";
    let typo_email = "nobody-here@example.com";
    assert_eq!(
        login(&app, "ann@example.com", wrong_password).await.status,
        401
    );
    assert_eq!(login(&app, typo_email, PASSWORD).await.status, 401);

    // Refresh: rotated once, then the old token again (no grace): reuse, the session ends.
    let rotated = post(
        &app,
        "/auth/refresh",
        None,
        json!({"refresh_token": refresh}),
    )
    .await;
    assert_eq!(rotated.status, 200);
    let reused = post(
        &app,
        "/auth/refresh",
        None,
        json!({"refresh_token": refresh}),
    )
    .await;
    assert_eq!(reused.status, 400);

    // Password change, a session ended by id, logout.
    let second = login(&app, "ann@example.com", PASSWORD).await.json();
    let second_access = second["access_token"].as_str().unwrap().to_string();
    let changed = post(
        &app,
        "/auth/users/me/password",
        Some(&second_access),
        json!({"current_password": PASSWORD, "new_password": "AnnNewPassword2!"}),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let after_change = changed.json()["access_token"].as_str().unwrap().to_string();
    let third = login(&app, "ann@example.com", "AnnNewPassword2!")
        .await
        .json();
    let third_session = {
        let sessions = app.get_as("/auth/sessions", &after_change).await.json();
        sessions
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["current"] == false)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let r = app
        .client
        .delete(app.url(&format!("/auth/sessions/{third_session}")))
        .bearer_auth(&after_change)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .client
        .post(app.url("/auth/logout?scope=others"))
        .bearer_auth(&after_change)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // A reset, asked and carried out.
    assert_eq!(
        post(
            &app,
            "/auth/password-reset",
            None,
            json!({"email": "ann@example.com"})
        )
        .await
        .status,
        202
    );
    wait_for_event(&app, "password.reset_requested", &ann).await;
    let reset_token = smtp
        .wait_for("ann@example.com", 3)
        .await
        .iter()
        .find(|m| m.subject == "Reset your password")
        .unwrap()
        .token();
    let reset = post(
        &app,
        "/auth/password-reset/confirm",
        None,
        json!({"token": reset_token, "new_password": "AnnResetPassword3!"}),
    )
    .await;
    assert_eq!(reset.status, 200);

    // An administrator's changes: roles, deactivation (then a login of an inactive account),
    // activation, sessions ended, a user created.
    let path = format!("/auth/admin/users/{ann}");
    let patch = |body: Value| {
        app.client
            .patch(app.url(&path))
            .bearer_auth(&admin)
            .header("user-agent", AGENT)
            .json(&body)
            .send()
    };
    assert_eq!(
        patch(json!({"roles": ["ops", "billing"]}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        patch(json!({"roles": ["ops"], "is_active": false}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        login(&app, "ann@example.com", "AnnResetPassword3!")
            .await
            .status,
        401
    );
    assert_eq!(
        patch(json!({"is_active": true})).await.unwrap().status(),
        200
    );
    let r = app
        .client
        .delete(app.url(&format!("{path}/sessions")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let created = post(
        &app,
        "/auth/admin/users",
        Some(&admin),
        json!({"email": "bob@example.com", "roles": ["ops"]}),
    )
    .await;
    assert_eq!(created.status, 201);
    let bob = created.json()["id"].as_str().unwrap().to_string();

    // What the log says about Ann, in order, through the API's pages.
    let events = all_events(&app, &admin, &format!("&user_id={ann}")).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "user.registered",
            "email.verified",
            "login.succeeded",
            "login.failed",
            "refresh.reuse_detected",
            "login.succeeded",
            "password.changed",
            "login.succeeded",
            "session.revoked",
            "logout",
            "password.reset_requested",
            "password.reset",
            "role.granted",
            "user.deactivated",
            "role.revoked",
            "login.failed",
            "user.activated",
            "session.revoked",
        ]
    );
    for e in &events {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "id",
                "at",
                "type",
                "user_id",
                "actor_id",
                "session_id",
                "client_address",
                "user_agent",
                "request_id",
                "detail"
            ]
        );
        assert_eq!(e["user_id"], ann.as_str());
        assert_eq!(e["client_address"], "127.0.0.1", "{e}");
        let by_admin = [
            "role.granted",
            "role.revoked",
            "user.deactivated",
            "user.activated",
        ]
        .contains(&e["type"].as_str().unwrap())
            || (e["type"] == "session.revoked" && e["detail"]["all"] == true);
        assert_eq!(
            e["actor_id"],
            if by_admin {
                json!(admin_id)
            } else {
                Value::Null
            },
            "{e}"
        );
    }
    let first = &events[0];
    assert_eq!(first["request_id"], register_request.as_str());
    assert_eq!(first["user_agent"], AGENT);
    assert!(
        first["session_id"].is_string(),
        "a registration starts a session"
    );
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "login.failed")
        .collect();
    assert_eq!(failed[0]["detail"], json!({"reason": "wrong_password"}));
    assert_eq!(failed[1]["detail"], json!({"reason": "inactive"}));
    assert_eq!(events[9]["detail"], json!({"scope": "others"}));
    assert_eq!(events[12]["detail"], json!({"roles": ["billing", "ops"]}));
    assert_eq!(events[14]["detail"], json!({"roles": ["billing"]}));
    // The unknown account's failure is about nobody, and names no address (a password typed
    // into the email field must not end up in the log).
    let unknown = all_events(&app, &admin, "&type=login.failed").await;
    let unknown: Vec<&Value> = unknown.iter().filter(|e| e["user_id"].is_null()).collect();
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0]["detail"], json!({"reason": "unknown_account"}));
    // Bob's creation and roles, by the administrator.
    let bobs = all_events(&app, &admin, &format!("&user_id={bob}")).await;
    let kinds: Vec<&str> = bobs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["user.created", "role.granted"]);
    assert_eq!(bobs[0]["actor_id"], admin_id.as_str());

    // No secret anywhere in the table: passwords, tokens, links.
    let text: String = app
        .db
        .client()
        .await
        .query_one(
            "SELECT coalesce(string_agg(row_to_json(e)::text, ' '), '') FROM sentinel_audit_events e",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for secret in [
        PASSWORD,
        wrong_password,
        "AnnNewPassword2!",
        "AnnResetPassword3!",
        typo_email,
        access.as_str(),
        refresh.as_str(),
        second_access.as_str(),
        third["access_token"].as_str().unwrap(),
        verify_token.as_str(),
        reset_token.as_str(),
        "#token=",
        "reset-password",
    ] {
        assert!(!text.contains(secret), "the audit log holds {secret:?}");
    }

    // Filters and bad queries.
    let a = app.get_as("/auth/admin/events?type=logout", &admin).await;
    let kinds: Vec<Value> = a.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(kinds, [json!("logout")]);
    for (query, kind) in [
        ("type=login.maybe", "enum"),
        ("limit=0", "greater_than_equal"),
        ("limit=x", "int_parsing"),
        ("before=-3", "greater_than_equal"),
        ("before=1e3", "int_parsing"),
    ] {
        let a = app
            .get_as(&format!("/auth/admin/events?{query}"), &admin)
            .await;
        assert_eq!(a.status, 422, "{query}");
        assert_eq!(a.json()["detail"][0]["type"], kind, "{query}");
    }
    let a = app
        .get_as(
            &format!("/auth/admin/events?user_id={}", "x".repeat(65)),
            &admin,
        )
        .await;
    assert_eq!(a.status, 422);
    let a = app.get_as("/auth/admin/events?user_id=%00", &admin).await;
    assert_eq!((a.status, a.json()["events"].clone()), (200, json!([])));
    // Only for administrators.
    let a = app.get_as("/auth/admin/events", &after_change).await;
    assert!(a.status == 401 || a.status == 403, "{}", a.text);
    let (plain, _) = app.registered("plain@example.com", PASSWORD).await;
    let a = app.get_as("/auth/admin/events", &plain).await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (403, r#"{"detail":"Not enough permissions"}"#)
    );
}

#[tokio::test]
async fn the_events_command_reads_the_log_and_changes_from_the_command_line_are_in_it() {
    let app = TestApp::spawn().await;
    let (_, id) = app.registered("cli@example.com", PASSWORD).await;
    assert_eq!(
        app.login("cli@example.com", "wrong-password")
            .await
            .status(),
        401
    );
    stdout(&cli(
        &app,
        &["grant", "cli@example.com", "ops", "admin"],
        "",
    ));
    stdout(&cli(&app, &["revoke-role", "cli@example.com", "ops"], ""));
    stdout(&cli(&app, &["deactivate", "cli@example.com"], ""));
    stdout(&cli(&app, &["activate", "cli@example.com"], ""));
    stdout(&cli(&app, &["revoke-sessions", "cli@example.com"], ""));
    let events = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .env_clear()
            .arg("--config")
            .arg(app.dir.0.join("gateway.toml"))
            .arg("events")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = events(&["--user", "CLI@example.com", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let kinds: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "session.revoked",
            "user.activated",
            "user.deactivated",
            "role.revoked",
            "role.granted",
            "login.failed",
            "user.registered"
        ]
    );
    let granted: Value = serde_json::from_str(out.lines().nth(4).unwrap()).unwrap();
    assert_eq!(
        granted["detail"],
        json!({"roles": ["admin", "ops"], "via": "cli"})
    );
    assert_eq!(granted["actor_id"], Value::Null);
    // By id too, by type, by age; a table by default.
    let (code, out, _) = events(&["--user", &id, "--type", "login.failed", "--since", "1h"]);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("AT")
            && lines[1].contains("login.failed")
            && lines[1].contains("wrong_password"),
        "{out}"
    );
    // Nothing older than a second ago... once a second has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, out, _) = events(&["--since", "1s", "--json"]);
    assert_eq!(out, "");
    // Mistakes are one line each.
    for args in [
        &["--type", "login.maybe"][..],
        &["--since", "yesterday"],
        &["--limit", "0"],
        &["--user", "nobody@example.com"],
    ] {
        let (code, out, err) = events(args);
        assert_eq!(code, Some(1), "{args:?}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[tokio::test]
async fn events_past_the_retention_are_deleted_in_the_background() {
    let db = TestDb::create().await;
    // The database as a gateway leaves it, with events of every age.
    let first = TestApp::start_on(db.share(), Spawn::default()).await;
    drop(first);
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO sentinel_audit_events (at, type, detail) \
             SELECT now() - make_interval(days => d), 'logout', jsonb_build_object('age', d) \
             FROM generate_series(0, 60) AS d",
        )
        .await
        .unwrap();
    let _app = TestApp::start_on(
        db.share(),
        Spawn {
            config_extra: "[audit]\nretention_days = 30\n".into(),
            ..Spawn::default()
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ages: Vec<i32> = client
            .query(
                "SELECT (detail->>'age')::int FROM sentinel_audit_events \
                 WHERE detail ? 'age' ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ages.len() == 30 {
            assert_eq!(ages, (0..30).collect::<Vec<_>>());
            break;
        }
        assert!(Instant::now() < deadline, "not pruned: {} left", ages.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
