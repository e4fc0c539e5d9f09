//! PostgreSQL going away and coming back, on a cluster this test owns (initdb + pg_ctl on a
//! port of its own), never the shared one.

use std::time::{Duration, Instant};

use crate::cluster::OwnCluster;
use crate::helpers::*;

#[tokio::test]
async fn a_database_outage_degrades_gracefully_and_recovers_without_a_restart() {
    let cluster = OwnCluster::create();
    let up = Upstream::start().await;
    let gateway = Instance::start(
        &cluster.url(),
        &route("/api/", &[up.addr()], "required", ""),
    )
    .await;
    let base = gateway.base.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let r = client
        .post(format!("{base}/auth/register"))
        .json(&serde_json::json!({"email": "outage@example.com", "password": "OutagePassword1!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<serde_json::Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get_status(&client, &format!("{base}/api/x"), Some(&token)).await,
        200
    );

    cluster.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Liveness stays, readiness goes, auth endpoints answer 503 JSON within a bounded wait.
    assert_eq!(
        get_status(&client, &format!("{base}/health"), None).await,
        200
    );
    let started = Instant::now();
    let r = client.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    let started = Instant::now();
    let r = client
        .post(format!("{base}/auth/token"))
        .form(&[
            ("username", "outage@example.com"),
            ("password", "OutagePassword1!"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.json::<serde_json::Value>().await.unwrap()["detail"].is_string());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // A user verified before the outage keeps getting through, quickly.
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(
            get_status(&client, &format!("{base}/api/x"), Some(&token)).await,
            200
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    cluster.start();
    let back = Instant::now();
    loop {
        let ready = get_status(&client, &format!("{base}/ready"), None).await == 200;
        let login = client
            .post(format!("{base}/auth/token"))
            .form(&[
                ("username", "outage@example.com"),
                ("password", "OutagePassword1!"),
            ])
            .send()
            .await
            .unwrap()
            .status()
            == 200;
        if ready && login {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "not recovered after {:?}",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Terminates every connection the gateway holds to its database (as `pg_terminate_backend`
/// does when an operator or a failover ends them); how many.
async fn terminate_gateway_connections(db: &tokio_postgres::Client, name: &str) -> i64 {
    db.query_one(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid() AND application_name = 'sentinel-gateway'",
        &[&name],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn terminated_database_connections_are_503_never_500() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let (token, _) = app
        .registered("killed@example.com", "KilledPassword1!")
        .await;
    let killer = app.db.client().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (app, token, stop) = (app.clone(), token.clone(), stop.clone());
        load.spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(app.me(&token).await.status().as_u16());
            }
            statuses
        });
    }
    let mut killed = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        killed += terminate_gateway_connections(&killer, &app.db.name).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statuses = Vec::new();
    while let Some(done) = load.join_next().await {
        statuses.extend(done.unwrap());
    }
    let count = |code: u16| statuses.iter().filter(|s| **s == code).count();
    assert!(killed >= 10, "only {killed} connections terminated");
    assert_eq!(
        count(200) + count(503),
        statuses.len(),
        "statuses other than 200 and 503 among {} ({} x 500)",
        statuses.len(),
        count(500)
    );
    assert!(count(200) > 0);
    // The pool drops the dead connections: afterwards everything answers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..40 {
        assert_eq!(app.me(&token).await.status(), 200);
    }
}

#[tokio::test]
async fn a_statement_stuck_behind_a_lock_is_cut_off_by_the_statement_timeout() {
    let app = TestApp::spawn_with(Spawn {
        database_extra: "statement_timeout_ms = 1000\n".into(),
        ..Spawn::default()
    })
    .await;
    let (token, id) = app
        .registered("locked@example.com", "LockedPassword1!")
        .await;
    // Another session holds the user's row for 10 s.
    let locker = app.db.client().await;
    locker.batch_execute("BEGIN").await.unwrap();
    locker
        .execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .unwrap();
    let started = Instant::now();
    let r = app
        .client
        .patch(app.url("/auth/users/me"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "full_name": "Waiting" }))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(app.me(&token).await.status(), 200);
}

/// The gateway's LISTEN connection, once it is listening.
async fn listener_pid(db: &tokio_postgres::Client, name: &str) -> Option<i32> {
    db.query_opt(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN %' \
         AND application_name = 'sentinel-gateway'",
        &[&name],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

#[tokio::test]
async fn the_listener_reconnects_quickly_after_each_loss_that_follows_a_healthy_spell() {
    let app = TestApp::spawn().await;
    let db = app.db.client().await;
    let mut took = Vec::new();
    for _ in 0..5 {
        // Healthy for longer than the back-off needs to forget earlier losses.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let pid = listener_pid(&db, &app.db.name).await.expect("a listener");
        db.execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        let killed = Instant::now();
        loop {
            match listener_pid(&db, &app.db.name).await {
                Some(new) if new != pid => break,
                _ if killed.elapsed() > Duration::from_secs(10) => panic!("no new listener"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        took.push(killed.elapsed());
    }
    assert!(
        took.iter().all(|t| *t < Duration::from_millis(1000)),
        "reconnections took {took:?}"
    );
}

#[tokio::test]
async fn the_gateway_waits_for_its_database_at_start_up_and_answers_health_meanwhile() {
    let cluster = OwnCluster::create();
    cluster.stop();
    let dir = TempDir::new();
    let port = free_port();
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        config_text_with(
            port,
            &cluster.url(),
            &Tables {
                database: "startup_wait_seconds = 60\n".into(),
                ..Tables::default()
            },
            "",
        ),
    )
    .unwrap();
    let log = dir.0.join("gateway.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = command(&dir.0, &config)
        .env("SENTINEL_LOG_LEVEL", "info")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let health = format!("{base}/health");
    wait_for_status(
        &health,
        200,
        Duration::from_secs(10),
        "no /health while waiting",
    )
    .await;
    // Waiting: alive, not ready, and saying for what.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        get_status(&client, &format!("{base}/ready"), None).await,
        503
    );
    let r = client
        .post(format!("{base}/auth/register"))
        .json(&serde_json::json!({"email": "early@example.com", "password": "EarlyPassword1!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("waiting for PostgreSQL")
            && logs.contains(&format!("127.0.0.1:{}", cluster.port)),
        "{logs}"
    );
    assert!(child.try_wait().unwrap().is_none(), "exited while waiting");

    cluster.start();
    let ready = format!("{base}/ready");
    wait_for_status(
        &ready,
        200,
        Duration::from_secs(10),
        "not ready after the database came",
    )
    .await;
    let r = client
        .post(format!("{base}/auth/register"))
        .json(&serde_json::json!({"email": "early@example.com", "password": "EarlyPassword1!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}
