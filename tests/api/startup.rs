//! Operating the binary: configuration, start-up failures, shutdown, side-by-side instances.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::helpers::*;

fn one_line_failure(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn a_bad_config_file_is_one_line_and_exit_code_2() {
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    for (text, expect) in [
        ("[server]\nlisten = 5\n", "line 2, column 10"),
        ("[server]\nlisten_on = \"x\"\n", "unknown field"),
        ("[server\n", "line 1, column 8"),
        ("[auth]\nsecret_key = \"unterminated\n", "line 2, column"),
        (
            "[log]\nlevel = \"infoo\"\n",
            "log.level: \"infoo\" is not a level",
        ),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = command(&dir.0, &config)
            .arg("check-config")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(one_line_failure(&out).contains(expect), "{text}");
    }
    let missing = command(&dir.0, &dir.0.join("nope.toml")).output().unwrap();
    assert!(one_line_failure(&missing).contains("cannot read config file"));
}

#[test]
fn a_misspelt_log_level_from_the_environment_is_refused() {
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        config_text(free_port(), "postgres://postgres@127.0.0.1/x", ""),
    )
    .unwrap();
    let out = command(&dir.0, &config)
        .env("SENTINEL_LOG_LEVEL", "infoo")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_failure(&out).contains("log.level"));
}

#[tokio::test]
async fn migrate_and_check_config_need_no_secret_but_serving_does() {
    let db = TestDb::create().await;
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", db.url)).unwrap();
    let migrate = command(&dir.0, &config).arg("migrate").output().unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert!(String::from_utf8_lossy(&migrate.stdout).contains("V1__users"));
    let check = command(&dir.0, &config)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(check.status.success());
    let warning = String::from_utf8_lossy(&check.stderr);
    assert!(
        warning.contains("warning") && warning.contains("auth.secret_key is not set"),
        "{warning}"
    );
    let serve = command(&dir.0, &config).output().unwrap();
    assert_eq!(serve.status.code(), Some(2));
    assert!(one_line_failure(&serve).contains("auth.secret_key is not set"));
}

#[test]
fn weak_or_placeholder_secrets_are_refused_outside_development() {
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        "[database]\nurl = \"postgres://postgres@127.0.0.1/x\"\n",
    )
    .unwrap();
    for secret in ["your-secret-key-change-in-production", "short"] {
        let out = command(&dir.0, &config)
            .env("SECRET_KEY", secret)
            .arg("check-config")
            .output()
            .unwrap();
        assert!(one_line_failure(&out).contains("secret_key"));
        let ok = command(&dir.0, &config)
            .env("SECRET_KEY", secret)
            .env("SENTINEL_ENVIRONMENT", "development")
            .arg("check-config")
            .output()
            .unwrap();
        assert!(ok.status.success());
    }
}

#[test]
fn check_config_prints_the_effective_config_without_secrets() {
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:8123\"\n").unwrap();
    // The seed's variables, from a .env file and from the environment (which wins).
    std::fs::write(
        dir.0.join(".env"),
        format!("DATABASE_URL=postgresql+psycopg://app:dotenv-pass@db.internal/seed\nSECRET_KEY={SEED_SECRET}\nACCESS_TOKEN_EXPIRE_MINUTES=15\n"),
    )
    .unwrap();
    let out = command(&dir.0, &config)
        .env("ACCESS_TOKEN_EXPIRE_MINUTES", "45")
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"127.0.0.1:8123\""), "{text}");
    assert!(
        text.contains("url = \"postgresql://app:[redacted]@db.internal/seed\""),
        "{text}"
    );
    assert!(text.contains("access_token_expire_minutes = 45"), "{text}");
    assert!(
        !text.contains("dotenv-pass") && !text.contains(SEED_SECRET),
        "{text}"
    );
}

#[test]
fn a_database_that_never_answers_ends_start_up_after_the_wait_with_one_line() {
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    let dead_port = free_port();
    std::fs::write(
        &config,
        config_text_with(
            free_port(),
            &format!("postgres://postgres@127.0.0.1:{dead_port}/x"),
            &Tables {
                database: "startup_wait_seconds = 2\n".into(),
                ..Tables::default()
            },
            "",
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = command(&dir.0, &config).output().unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(out.status.code(), Some(1));
    let line = one_line_failure(&out);
    assert!(
        line.contains(&format!(
            "cannot connect to PostgreSQL: at 127.0.0.1:{dead_port}"
        )) && line.contains("gave up after"),
        "{line}"
    );
}

#[tokio::test]
async fn a_port_in_use_stops_start_up_with_one_line() {
    let db = TestDb::create().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    std::fs::write(&config, config_text(port, &db.url, "")).unwrap();
    let started = Instant::now();
    let out = command(&dir.0, &config).output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(one_line_failure(&out).contains(&format!("cannot listen on 127.0.0.1:{port}")));
}

#[tokio::test]
async fn sigterm_ends_the_process_within_seconds() {
    let mut app = TestApp::spawn().await;
    let (status, took) = app
        .terminate(Duration::from_secs(10))
        .expect("exited after SIGTERM");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn two_instances_run_side_by_side_on_one_database() {
    let first = TestApp::spawn().await;
    let second = Instance::start(&first.db.url, "").await;
    let client = reqwest::Client::new();
    let base = second.base.clone();
    // A user registered through one logs in through the other.
    first.registered("both@example.com", "BothPassword1!").await;
    let r = client
        .post(format!("{base}/auth/token"))
        .form(&[
            ("username", "both@example.com"),
            ("password", "BothPassword1!"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(second);
    // The first is unaffected by the second's exit.
    assert_eq!(first.status("/health").await, 200);
}

#[tokio::test]
async fn health_and_ready() {
    let app = TestApp::spawn().await;
    let a = app.get("/health").await;
    assert_eq!((a.status, a.text.as_str()), (200, r#"{"status":"ok"}"#));
    let a = app.get("/ready").await;
    assert_eq!((a.status, a.text.as_str()), (200, r#"{"status":"ready"}"#));
    let a = Answer::of(app.client.head(app.url("/health")).send().await.unwrap()).await;
    assert_eq!((a.status, a.text.as_str()), (200, ""));
    let a = app.get("/nowhere").await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (404, r#"{"detail":"Not Found"}"#)
    );
    let a = app.get("/auth/register").await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (405, r#"{"detail":"Method Not Allowed"}"#)
    );
    assert_eq!(a.header("allow"), Some("POST"));
}

#[test]
fn check_config_finds_what_start_up_would_refuse_and_both_exit_2() {
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    let port = free_port();
    let db = "postgres://postgres@127.0.0.1/x";
    let cases = [
        (
            format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"),
            "admin.listen shares",
        ),
        (
            format!("[admin]\nlisten = \"0.0.0.0:{port}\"\n"),
            "admin.listen shares",
        ),
        (
            format!(
                "[tls]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"{0}/c.pem\"\nkey_file = \"{0}/k.pem\"\n",
                dir.0.display()
            ),
            "tls.listen shares",
        ),
        (
            format!(
                "[tls]\nlisten = \"127.0.0.1:{tls}\"\ncert_file = \"{d}/missing.pem\"\nkey_file = \"{d}/missing.key\"\n",
                d = dir.0.display(),
                tls = free_port()
            ),
            "missing.pem",
        ),
    ];
    for (extra, says) in cases {
        std::fs::write(&config, config_text(port, db, &extra)).unwrap();
        for args in [&["check-config"][..], &["serve"][..]] {
            let out = output_within(command(&dir.0, &config).args(args), Duration::from_secs(20));
            let stderr = one_line_failure(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?} {extra}: {stderr}");
            assert!(stderr.contains(says), "{args:?} {extra}: {stderr}");
        }
    }
}

/// `scripts/run-dev.sh` with the test's binaries (no release build), on the test's database.
fn run_dev(db: &str, upstream_port: u16, listen: u16) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin_dir = std::path::Path::new(binary()).parent().unwrap();
    let mut cmd = std::process::Command::new(root.join("scripts/run-dev.sh"));
    cmd.env("SENTINEL_DEV_BIN_DIR", bin_dir)
        .env("SENTINEL_DEV_DB", db)
        .env("SENTINEL_DEV_UPSTREAM_PORT", upstream_port.to_string())
        .env("SENTINEL_LISTEN", format!("127.0.0.1:{listen}"))
        .env(
            "SENTINEL_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("SENTINEL_ENVIRONMENT", "development")
        .env_remove("DATABASE_URL")
        .env_remove("SECRET_KEY")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A process group of its own, so that the gateway and the upstream stop with it.
        .process_group(0);
    cmd
}

#[tokio::test]
async fn the_development_script_takes_its_port_and_database_and_refuses_a_foreign_listener() {
    let db = TestDb::create().await;
    let name = db.url.rsplit('/').next().unwrap().to_string();
    // Something that is not a demo upstream on the port: refused, not proxied to.
    let foreign = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = foreign.local_addr().unwrap().port();
    let out = output_within(
        &mut run_dev(&name, taken, free_port()),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("something else listens on 127.0.0.1:{taken}")),
        "{stderr}"
    );
    drop(foreign);

    // A free port of the caller's choice: the demo upstream there, the routes following it.
    let (upstream, listen) = (free_port(), free_port());
    let child = run_dev(&name, upstream, listen).spawn().unwrap();
    let group = child.id() as i32;
    struct StopGroup(i32, std::process::Child);
    impl Drop for StopGroup {
        fn drop(&mut self) {
            unsafe {
                libc::kill(-self.0, libc::SIGTERM);
            }
            let _ = self.1.wait();
        }
    }
    let _running = StopGroup(group, child);
    let base = format!("http://127.0.0.1:{listen}");
    wait_for_status(
        &format!("{base}/ready"),
        200,
        Duration::from_secs(60),
        "not ready",
    )
    .await;
    let echo: serde_json::Value = reqwest::get(format!("{base}/public/hello"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["server"], format!("127.0.0.1:{upstream}"), "{echo}");
}
