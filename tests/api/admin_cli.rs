//! `sentinel-gateway users …`: the operator's commands against the gateway's own database,
//! reaching a running gateway through the same NOTIFY path as the API.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

const PASSWORD: &str = "CliPassword1!";

/// Runs `sentinel-gateway --config <app's config> users ARGS`, `stdin` as its input.
pub(crate) fn cli(app: &TestApp, args: &[&str], stdin: &str) -> Output {
    cli_with(&app.dir.0.join("gateway.toml"), args, stdin)
}

fn cli_with(config: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(binary())
        .env_clear()
        .arg("--config")
        .arg(config)
        .arg("users")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub(crate) fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Polls `GET path` with `token` until it answers `status` (1 s at most).
async fn within_a_second(app: &TestApp, path: &str, token: &str, status: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while app.get_as(path, token).await.status != status {
        assert!(Instant::now() < deadline, "{what}: not {status} within 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn users_are_created_listed_and_shown_with_passwords_from_stdin() {
    let app = TestApp::spawn().await;
    let created = stdout(&cli(
        &app,
        &[
            "create",
            "Ops.Person@Example.com",
            "--full-name",
            "Ops Person",
        ],
        "CliPassword1!\n",
    ));
    assert!(created.starts_with("created "), "{created}");
    let login: Value = app
        .login("ops.person@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(login["user"]["full_name"], "Ops Person");
    assert_eq!(login["user"]["email_verified"], false);
    let id = login["user"]["id"].as_str().unwrap().to_string();

    let again = cli(
        &app,
        &["create", "ops.person@example.com"],
        "CliPassword1!\n",
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already registered"));
    let short = cli(&app, &["create", "short@example.com"], "short\n");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("8 to 1024 characters"));
    let verified = stdout(&cli(
        &app,
        &["create", "verified@example.com", "--verified"],
        "CliPassword2!\n",
    ));
    assert!(verified.contains("verified@example.com"));

    let table = stdout(&cli(&app, &["list"], ""));
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(
        table.contains(&id) && table.contains("verified@example.com"),
        "{table}"
    );
    let json: Vec<Value> = stdout(&cli(&app, &["list", "--json", "--search", "VERIFIED@"], ""))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["email"], "verified@example.com");
    assert_eq!(json[0]["email_verified"], true);

    let shown: Value =
        serde_json::from_str(&stdout(&cli(&app, &["show", &id, "--json"], ""))).unwrap();
    // Normalised as registration normalises it: the domain lower-cased, the local part kept.
    assert_eq!(shown["email"], "Ops.Person@example.com");
    assert_eq!(shown["sessions"].as_array().unwrap().len(), 1);
    let by_email = stdout(&cli(&app, &["show", "OPS.PERSON@example.com"], ""));
    assert!(
        by_email.contains(&id) && by_email.contains("live sessions:  1"),
        "{by_email}"
    );

    let unknown = cli(&app, &["show", "nobody@example.com"], "");
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&unknown.stderr).trim(),
        "sentinel-gateway: no user with the id or email \"nobody@example.com\""
    );
}

#[tokio::test]
async fn deactivation_and_revocation_reach_a_running_gateway_within_a_second() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: route("/api/", &[up.addr()], "required", ""),
        ..Spawn::default()
    })
    .await;
    let (token, id) = app.registered("managed@example.com", PASSWORD).await;
    assert_eq!(app.get_as("/api/x", &token).await.status, 200);

    stdout(&cli(&app, &["deactivate", "managed@example.com"], ""));
    within_a_second(&app, "/api/x", &token, 401, "deactivated").await;
    assert_eq!(app.me(&token).await.status(), 401);
    assert_eq!(
        app.login("managed@example.com", PASSWORD).await.status(),
        401
    );
    stdout(&cli(&app, &["activate", &id], ""));
    within_a_second(&app, "/api/x", &token, 200, "activated").await;

    let out = stdout(&cli(&app, &["revoke-sessions", &id], ""));
    assert!(out.contains("ended 1 sessions"), "{out}");
    within_a_second(&app, "/api/x", &token, 401, "revoked").await;

    // A new password: the old one and every earlier token stop working.
    let fresh: Value = app
        .login("managed@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let fresh = fresh["access_token"].as_str().unwrap().to_string();
    stdout(&cli(&app, &["set-password", &id], "AnotherPassword9!\n"));
    within_a_second(&app, "/api/x", &fresh, 401, "password set").await;
    assert_eq!(
        app.login("managed@example.com", PASSWORD).await.status(),
        401
    );
    assert_eq!(
        app.login("managed@example.com", "AnotherPassword9!")
            .await
            .status(),
        200
    );

    stdout(&cli(&app, &["verify-email", &id], ""));
    let me: Value = app
        .login("managed@example.com", "AnotherPassword9!")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"]["email_verified"], true);
}

#[tokio::test]
async fn a_database_that_is_down_is_a_clear_error_at_once() {
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    let closed = free_port();
    std::fs::write(
        &config,
        config_text(
            free_port(),
            &format!("postgres://postgres@127.0.0.1:{closed}/none"),
            "",
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = cli_with(&config, &["list"], "");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("sentinel-gateway: ") && err.contains(&format!("127.0.0.1:{closed}")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
