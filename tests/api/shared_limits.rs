//! `[rate_limit] backend = "redis"`: two gateways on one Redis (one the test starts itself)
//! allow the configured number of attempts between them, and Redis going away fails open to the
//! local limits or closed with 503, never hanging, and both come back when Redis does.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

const PASSWORD: &str = "SharedLimits1!";

/// Cheap password hashing (development mode): the attempts of a test must all come well
/// within a bucket's refill interval (12 s and more), even on a loaded machine.
const CHEAP_HASHING: &str = "[password]\nargon2_memory_kib = 64\nargon2_iterations = 1\n\n";
const DEVELOPMENT: &str = "environment = \"development\"\n";

/// Two gateways on one database and one Redis, each with its admin listener.
struct Pair {
    a: TestApp,
    b: TestApp,
    admin: [String; 2],
}

async fn pair(redis: &OwnRedis, limits: &str) -> Pair {
    let admin = [free_port(), free_port()];
    let config = |admin_port: u16| Spawn {
        server_extra: DEVELOPMENT.into(),
        config_extra: format!(
            "{CHEAP_HASHING}[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
             [rate_limit]\nbackend = \"redis\"\nredis_url = \"{}\"\n{limits}\n",
            redis.url()
        ),
        // Redis coming back is logged at `info`.
        env: vec![("SENTINEL_LOG_LEVEL".into(), "info".into())],
        ..Spawn::default()
    };
    let a = TestApp::start_on(TestDb::create().await, config(admin[0])).await;
    let b = TestApp::start_on(a.db.share(), config(admin[1])).await;
    Pair {
        a,
        b,
        admin: admin.map(|p| format!("http://127.0.0.1:{p}")),
    }
}

impl Pair {
    fn one(&self, i: usize) -> &TestApp {
        if i % 2 == 0 {
            &self.a
        } else {
            &self.b
        }
    }
}

async fn post_json(app: &TestApp, path: &str, body: Value) -> Answer {
    Answer::of(
        app.client
            .post(app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// The statuses of `answers`, counted: (status, how many), in status order.
fn tally(answers: &[u16]) -> Vec<(u16, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for s in answers {
        *counts.entry(*s).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

async fn metric(admin: &str, line_start: &str) -> Option<f64> {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn two_instances_on_one_redis_allow_exactly_the_configured_attempts_between_them() {
    let redis = OwnRedis::start().await;
    // Slow refills (12 s and more a cell), so nothing refills while the test runs.
    let p = pair(
        &redis,
        "login_per_ip_per_minute = 1000\nlogin_per_account_per_minute = 5\n\
         register_per_ip_per_minute = 4\npassword_reset_per_ip_per_minute = 3\n\
         refresh_per_ip_per_minute = 4\n",
    )
    .await;

    // Refresh: the session's token passed from one instance to the other, 4 in all.
    let r = p.a.register("refresher@example.com", PASSWORD).await;
    assert_eq!(r.status(), 200);
    let mut refresh = r.json::<Value>().await.unwrap()["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_string();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let a = post_json(
            p.one(i),
            "/auth/refresh",
            json!({ "refresh_token": refresh }),
        )
        .await;
        if a.status == 200 {
            refresh = a.json()["refresh_token"].as_str().unwrap().to_string();
        } else {
            assert_eq!(
                a.json(),
                json!({"detail": "Too many refreshes, try again later"})
            );
        }
        statuses.push(a.status);
    }
    assert_eq!(tally(&statuses), [(200, 4), (429, 4)], "{statuses:?}");

    // Registration: one was spent above, 3 more of 8 attempts.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let email = format!("new{i}@example.com");
        statuses.push(p.one(i).register(&email, PASSWORD).await.status().as_u16());
    }
    assert_eq!(tally(&statuses), [(200, 3), (429, 5)], "{statuses:?}");

    // Password reset requests: 3.
    let mut statuses = Vec::new();
    for i in 0..7 {
        let a = post_json(
            p.one(i),
            "/auth/password-reset",
            json!({"email": "refresher@example.com"}),
        )
        .await;
        statuses.push(a.status);
    }
    assert_eq!(tally(&statuses), [(202, 3), (429, 4)], "{statuses:?}");

    // Logins to one account: 5, whichever instance is asked; and the 429s say when to return.
    let mut statuses = Vec::new();
    for i in 0..12 {
        let a = Answer::of(p.one(i).login("target@example.com", "wrong").await).await;
        if a.status == 429 {
            let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=12).contains(&retry), "Retry-After {retry}");
        }
        statuses.push(a.status);
    }
    assert_eq!(tally(&statuses), [(401, 5), (429, 7)], "{statuses:?}");

    // Each instance counted its own refusals.
    for admin in &p.admin {
        let refused = metric(
            admin,
            "sentinel_rate_limit_rejections_total{limit=\"login_account\"} ",
        )
        .await
        .unwrap_or(0.0);
        assert!(refused >= 3.0, "{admin}: {refused}");
    }
}

#[tokio::test]
async fn without_redis_each_instance_counts_alone() {
    // The control for the test above: the same logins, the local backend, twice as many.
    let db = TestDb::create().await;
    let spec = || Spawn {
        server_extra: DEVELOPMENT.into(),
        config_extra: format!(
            "{CHEAP_HASHING}[rate_limit]\nlogin_per_ip_per_minute = 1000\n\
             login_per_account_per_minute = 5\n"
        ),
        ..Spawn::default()
    };
    let a = TestApp::start_on(db, spec()).await;
    let b = TestApp::start_on(a.db.share(), spec()).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let app = if i % 2 == 0 { &a } else { &b };
        statuses.push(
            app.login("target@example.com", "wrong")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(tally(&statuses), [(401, 10), (429, 2)], "{statuses:?}");
}

/// Logs in (as throw-away accounts) through `app` until its checks reach Redis again.
async fn until_redis_answers(app: &TestApp, admin: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0.. {
        let email = format!("warm{i}-{}@example.com", app.port);
        app.login(&email, "wrong").await;
        if metric(admin, "sentinel_rate_limit_redis_up ").await == Some(1.0) {
            return;
        }
        assert!(Instant::now() < deadline, "{}", app.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_down_fails_open_to_each_instances_own_limits_and_sharing_resumes_when_it_is_back() {
    let mut redis = OwnRedis::start().await;
    let p = pair(
        &redis,
        "login_per_ip_per_minute = 1000\nlogin_per_account_per_minute = 4\n\
         redis_failure = \"open\"\nredis_timeout_ms = 300\nredis_connections = 1\n",
    )
    .await;
    let shared = |account: &'static str| {
        let p = &p;
        async move {
            let mut statuses = Vec::new();
            for i in 0..8 {
                statuses.push(p.one(i).login(account, "wrong").await.status().as_u16());
            }
            tally(&statuses)
        }
    };
    assert_eq!(shared("before@example.com").await, [(401, 4), (429, 4)]);

    redis.stop();
    // Each instance now allows the limit on its own: 4 each, answered at once.
    for (app, admin) in [(&p.a, &p.admin[0]), (&p.b, &p.admin[1])] {
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let started = Instant::now();
            statuses.push(
                app.login("during@example.com", "wrong")
                    .await
                    .status()
                    .as_u16(),
            );
            assert!(started.elapsed() < Duration::from_secs(2));
        }
        assert_eq!(tally(&statuses), [(401, 4), (429, 2)], "{statuses:?}");
        let allowed = metric(
            admin,
            "sentinel_rate_limit_redis_failures_total{outcome=\"allowed\"} ",
        )
        .await;
        assert_eq!(allowed, Some(4.0), "{admin}");
        assert_eq!(
            metric(admin, "sentinel_rate_limit_redis_up ").await,
            Some(0.0)
        );
    }
    p.a.log_line("Redis is unavailable: rate limits are counted by each instance alone")
        .await;

    redis.restart().await;
    until_redis_answers(&p.a, &p.admin[0]).await;
    until_redis_answers(&p.b, &p.admin[1]).await;
    assert_eq!(shared("after@example.com").await, [(401, 4), (429, 4)]);
    p.a.log_line("Redis answers again").await;
}

#[tokio::test]
async fn redis_down_fails_closed_with_503_within_the_timeout_and_recovers() {
    let mut redis = OwnRedis::start().await;
    let admin_port = free_port();
    let app = TestApp::spawn_with(Spawn {
        server_extra: DEVELOPMENT.into(),
        config_extra: format!(
            "{CHEAP_HASHING}[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
             [rate_limit]\nbackend = \"redis\"\nredis_url = \"{}\"\n\
             redis_failure = \"closed\"\nredis_timeout_ms = 300\n",
            redis.url()
        ),
        ..Spawn::default()
    })
    .await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    assert_eq!(app.login("x@example.com", "wrong").await.status(), 401);

    let unavailable = |a: &Answer| {
        assert_eq!(a.status, 503, "{}", a.text);
        assert_eq!(
            a.json(),
            json!({"detail": "Service temporarily unavailable"})
        );
        assert_eq!(a.header("retry-after"), Some("1"));
    };
    // Frozen: the connection stays open and nothing answers; the timeout ends each wait.
    redis.freeze(true);
    for _ in 0..3 {
        let started = Instant::now();
        let a = Answer::of(app.login("x@example.com", "wrong").await).await;
        let took = started.elapsed();
        unavailable(&a);
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }
    let started = Instant::now();
    let a = Answer::of(app.register("frozen@example.com", PASSWORD).await).await;
    unavailable(&a);
    assert!(started.elapsed() < Duration::from_millis(1500));
    redis.freeze(false);

    // Gone: connections are refused at once.
    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let a = Answer::of(app.login("x@example.com", "wrong").await).await;
        unavailable(&a);
        assert!(started.elapsed() < Duration::from_millis(1500));
    }
    let refused = metric(
        &admin,
        "sentinel_rate_limit_redis_failures_total{outcome=\"refused\"} ",
    )
    .await
    .unwrap();
    assert!(refused >= 7.0, "{refused}");
    // Public routes and the token check do not depend on Redis.
    assert_eq!(app.status("/health").await, 200);

    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = app.login("x@example.com", "wrong").await.status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "{}", app.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.register("back@example.com", PASSWORD).await.status(),
        200
    );
}

#[tokio::test]
async fn a_redis_backend_needs_a_redis_url() {
    let db = TestDb::create().await;
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    for (limits, message) in [
        (
            "backend = \"redis\"\n",
            "rate_limit.redis_url: required when backend = \"redis\"",
        ),
        (
            "backend = \"redis\"\nredis_url = \"http://127.0.0.1:6379\"\n",
            "rate_limit.redis_url: not a Redis URL",
        ),
        (
            "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nredis_timeout_ms = 0\n",
            "rate_limit.redis_timeout_ms must be between 1 and 10000",
        ),
        (
            "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nredis_ca_file = \"ca.pem\"\n",
            "rate_limit.redis_ca_file needs a rediss:// (TLS) rate_limit.redis_url",
        ),
        (
            "backend = \"redis\"\nredis_url = \"rediss://127.0.0.1:6379\"\nredis_ca_file = \"/nonexistent/ca.pem\"\n",
            "cannot read rate_limit.redis_ca_file /nonexistent/ca.pem",
        ),
    ] {
        std::fs::write(
            &config,
            config_text(free_port(), &db.url, &format!("[rate_limit]\n{limits}")),
        )
        .unwrap();
        let out = command(&dir.0, &config).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(message), "{stderr}");
    }
}

#[tokio::test]
async fn limits_are_shared_over_tls_with_redis_verified_against_the_configured_ca() {
    let certs = TempDir::new();
    let ca = crate::tls::ca(&certs.0);
    let (cert, key) = crate::tls::leaf(&certs.0, "redis");
    let redis = OwnRedis::start_tls(&cert, &key, &ca).await;
    let url = format!("rediss://localhost:{}", redis.port);
    let gateway = |ca_file: Option<&std::path::Path>| {
        let ca_line = ca_file
            .map(|p| format!("redis_ca_file = \"{}\"\n", p.display()))
            .unwrap_or_default();
        TestApp::spawn_with(Spawn {
            server_extra: DEVELOPMENT.into(),
            config_extra: format!(
                "{CHEAP_HASHING}[rate_limit]\nbackend = \"redis\"\nredis_url = \"{url}\"\n{ca_line}\
                 redis_failure = \"closed\"\nredis_timeout_ms = 1000\n\
                 login_per_ip_per_minute = 1000\nlogin_per_account_per_minute = 2\n"
            ),
            ..Spawn::default()
        })
    };
    // Verified against the CA: the limit is counted in Redis (fail-closed would say 503).
    let app = gateway(Some(&ca)).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            app.login("tls@example.com", "wrong")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [401, 401, 429, 429]);
    // Against the system's roots the certificate does not verify: Redis is unavailable.
    let untrusting = gateway(None).await;
    let a = Answer::of(untrusting.login("tls@example.com", "wrong").await).await;
    assert_eq!(a.status, 503, "{}", a.text);
}
