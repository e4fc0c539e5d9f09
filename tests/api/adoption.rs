//! Taking over the seed backend's database: same users, same ids, same passwords, upgraded hashes.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn every_seed_user_logs_in_keeps_their_id_and_gets_an_argon2id_hash() {
    let app = TestApp::spawn_seeded().await;
    let users = fixture_json("users.json");
    let db = app.db.client().await;
    for user in users["users"].as_array().unwrap() {
        let email = user["email"].as_str().unwrap();
        let password = user["password"].as_str().unwrap();
        let id = user["id"].as_str().unwrap();
        let before: String = db
            .query_one("SELECT hashed_password FROM users WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert!(before.starts_with("$2b$12$"), "{email}");
        // A wrong password changes nothing.
        assert_eq!(app.login(email, "not-the-password").await.status(), 401);

        let r = app.login(email, password).await;
        assert_eq!(r.status(), 200, "{email}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["user"]["id"], id, "{email}");
        assert_eq!(body["user"]["email"], email);

        let after: String = db
            .query_one("SELECT hashed_password FROM users WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert!(
            after.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{email}: {after}"
        );
        // And the new hash works.
        let r = app.login_multipart(email, password).await;
        assert_eq!(r.status(), 200, "{email} after upgrade");
    }
    // Rows, ids and profile data are all still there.
    let count: i64 = db
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 4);
    let ada: Value = app
        .me(fixture_json("tokens.json")["valid_until_2100"]["token"]
            .as_str()
            .unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ada["full_name"], "Ada King");
    assert_eq!(ada["created_at"], "2026-11-25T15:56:59.033749Z");
    let long: Value = app
        .login("long@example.com", &"L".repeat(100))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(long["user"]["full_name"], "");
}

#[tokio::test]
async fn a_database_with_emails_equal_but_for_case_is_refused_untouched() {
    let db = TestDb::create().await;
    db.load_seed().await;
    db.client()
        .await
        .batch_execute(
            "INSERT INTO users (id, email, full_name, hashed_password, is_active, created_at, updated_at) \
             VALUES ('11111111-1111-4111-8111-111111111111', 'ADA@example.com', 'Other Ada', 'x', true, now(), now())",
        )
        .await
        .unwrap();
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    std::fs::write(&config, config_text(free_port(), &db.url, "")).unwrap();
    let out = command(&dir.0, &config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("letter case") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
    // Nothing changed: no history table, no new index.
    let client = db.client().await;
    let history: bool = client
        .query_one(
            "SELECT to_regclass('public.sentinel_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!history);
    let index: bool = client
        .query_one(
            "SELECT to_regclass('public.users_email_lower_key') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!index);
}

#[tokio::test]
async fn migrate_is_idempotent_on_fresh_and_adopted_databases() {
    for seeded in [false, true] {
        let db = TestDb::create().await;
        if seeded {
            db.load_seed().await;
        }
        let dir = TempDir::new();
        let config = dir.0.join("gateway.toml");
        std::fs::write(&config, config_text(free_port(), &db.url, "")).unwrap();
        let first = command(&dir.0, &config).arg("migrate").output().unwrap();
        assert!(
            first.status.success(),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
        let stdout = String::from_utf8_lossy(&first.stdout);
        assert!(stdout.contains("V2__gateway_user_rules"), "{stdout}");
        assert_eq!(stdout.contains("adopted"), seeded, "{stdout}");
        let second = command(&dir.0, &config).arg("migrate").output().unwrap();
        assert!(second.status.success());
        assert!(String::from_utf8_lossy(&second.stdout).contains("up to date"));
        // A migrated database starts too.
        let app = TestApp::start_on(db, Spawn::default()).await;
        assert_eq!(app.status("/ready").await, 200);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
