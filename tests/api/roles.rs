//! Roles: granted and revoked from the command line (the admin API grants them too), shown in
//! `UserResponse`, sent to upstreams as `X-User-Roles` and in the identity assertion, in
//! effect on every instance within a second; a client's copy of the header never arrives.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use crate::admin_cli::{cli, stdout};
use crate::helpers::*;

const PASSWORD: &str = "RolesPassword1!";

/// What the demo upstream saw of `name` on `GET /api/x` with `token`.
async fn upstream_saw(app: &TestApp, token: &str, name: &str) -> Vec<String> {
    let echo = Echo(app.get_as("/api/x", token).await.json());
    echo.all(name)
}

/// The claims of the assertion an upstream got (read, not verified: the assertion tests
/// verify them).
async fn assertion_claims(app: &TestApp, token: &str) -> Value {
    let jwt = upstream_saw(app, token, "x-identity-assertion")
        .await
        .remove(0);
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Waits (a second at most) until `check` holds.
async fn within_a_second<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(1);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn roles_reach_users_me_upstreams_and_assertions_on_every_instance_within_a_second() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "{}{}",
            route("/api/", &[up.addr()], "required", ""),
            route("/public/", &[up.addr()], "public", "")
        ),
        ..Spawn::default()
    })
    .await;
    let other = Instance::start(&app.db.url, &route("/api/", &[up.addr()], "required", "")).await;
    let (token, _) = app.registered("roles@example.com", PASSWORD).await;
    let me: Value = app.me(&token).await.json().await.unwrap();
    assert_eq!(me["roles"], serde_json::json!([]));
    // No roles: the header is there, and empty.
    assert_eq!(upstream_saw(&app, &token, "x-user-roles").await, [""]);

    let granted = stdout(&cli(
        &app,
        &["grant", "roles@example.com", "ops", "admin"],
        "",
    ));
    assert!(granted.contains("granted admin, ops to"), "{granted}");
    within_a_second("the grant on this instance", || async {
        upstream_saw(&app, &token, "x-user-roles").await == ["admin,ops"]
    })
    .await;
    within_a_second("the grant on the other instance", || async {
        let echo = Echo(
            app.client
                .get(format!("{}/api/x", other.base))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap(),
        );
        echo.all("x-user-roles") == ["admin,ops"]
    })
    .await;
    let me: Value = app.me(&token).await.json().await.unwrap();
    assert_eq!(me["roles"], serde_json::json!(["admin", "ops"]));
    assert_eq!(
        assertion_claims(&app, &token).await["roles"],
        serde_json::json!(["admin", "ops"])
    );

    // A client's copy of the header, in any spelling, never arrives; the gateway's does.
    for name in ["X-User-Roles", "x_user_roles", "X.USER.ROLES"] {
        let echo = Echo(
            app.client
                .get(app.url("/api/x"))
                .bearer_auth(&token)
                .header(name, "superuser")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap(),
        );
        assert_eq!(echo.all("x-user-roles"), ["admin,ops"], "{name}");
        let anonymous = Echo(
            app.client
                .get(app.url("/public/x"))
                .header(name, "superuser")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap(),
        );
        // Forwarded without a user: none of the X-User-* headers.
        assert!(anonymous.all("x-user-roles").is_empty(), "{name}");
    }

    let revoked = stdout(&cli(
        &app,
        &["revoke-role", "roles@example.com", "admin"],
        "",
    ));
    assert!(revoked.contains("revoked admin from"), "{revoked}");
    within_a_second("the revocation", || async {
        upstream_saw(&app, &token, "x-user-roles").await == ["ops"]
    })
    .await;
    // The reused assertion follows within the same second.
    within_a_second("the assertion", || async {
        assertion_claims(&app, &token).await["roles"] == serde_json::json!(["ops"])
    })
    .await;
}

#[tokio::test]
async fn the_command_line_lists_shows_and_creates_by_role_and_refuses_bad_names() {
    let app = TestApp::spawn().await;
    let created = stdout(&cli(
        &app,
        &[
            "create",
            "boss@example.com",
            "--role",
            "admin",
            "--role",
            "billing.read",
        ],
        &format!("{PASSWORD}\n"),
    ));
    assert!(created.contains("created"), "{created}");
    app.registered("plain@example.com", PASSWORD).await;
    let admins = stdout(&cli(&app, &["list", "--role", "admin"], ""));
    assert!(admins.contains("boss@example.com"), "{admins}");
    assert!(!admins.contains("plain@example.com"), "{admins}");
    assert!(admins.contains("admin,billing.read"), "{admins}");
    let shown = stdout(&cli(&app, &["show", "BOSS@example.com"], ""));
    assert!(
        shown.contains("roles:          admin, billing.read"),
        "{shown}"
    );
    let json: Value = serde_json::from_str(&stdout(&cli(
        &app,
        &["show", "boss@example.com", "--json"],
        "",
    )))
    .unwrap();
    assert_eq!(json["roles"], serde_json::json!(["admin", "billing.read"]));
    for bad in ["Admin", "1ops", "ops\u{7}", "a b", &"x".repeat(65)] {
        let out = cli(&app, &["grant", "plain@example.com", bad], "");
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("is not a role name"), "{bad:?}: {stderr}");
    }
    // Granting twice is fine and says so.
    stdout(&cli(&app, &["grant", "plain@example.com", "ops"], ""));
    let again = stdout(&cli(&app, &["grant", "plain@example.com", "ops"], ""));
    assert!(again.contains("granted nothing new"), "{again}");
}
