//! A login flood against everyone else: queued logins must not take the connections that
//! signed-in users' proxied requests and database-backed endpoints need.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// (status, how long it took) of each request a task made until `stop`; 0 for no answer.
type Timings = Vec<(u16, Duration)>;

async fn until_stopped<F, Fut>(stop: Arc<AtomicBool>, mut request: F) -> Timings
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let mut timings = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        // A request that fails outright (reset, timed out) counts as status 0.
        let status = request().await.map_or(0, |r| r.status().as_u16());
        timings.push((status, started.elapsed()));
    }
    timings
}

fn assert_all_fast_and_fine(what: &str, timings: &Timings) {
    assert!(!timings.is_empty(), "{what}: no request completed");
    let slowest = timings.iter().map(|t| t.1).max().unwrap_or_default();
    let failed: Vec<_> = timings.iter().filter(|t| t.0 != 200).collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} failed: {:?}",
        failed.len(),
        timings.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        slowest < Duration::from_secs(1),
        "{what}: slowest of {} took {slowest:?}",
        timings.len()
    );
}

#[tokio::test]
async fn a_login_flood_leaves_signed_in_users_and_their_endpoints_served() {
    let up = Upstream::start().await;
    // The login limits are lifted (as for a flood from many addresses), the user-cache TTL is
    // 1 s so that the signed-in user's state falls due for refresh again and again, and one
    // hashing thread keeps the flood to one core. 32 queued logins are more than the 16 pooled
    // connections.
    let admin_port = free_port();
    let app = Arc::new(
        TestApp::spawn_with(Spawn {
            config_extra: format!(
                "[proxy]\nuser_cache_ttl_seconds = 1\n\n\
                 [password]\nhash_workers = 1\nhash_queue = 32\n\n\
                 [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n{}",
                route("/api/", &[up.addr()], "required", "")
            ),
            ..Spawn::default()
        })
        .await,
    );
    let (token, _) = app
        .registered("steady@example.com", "SteadyPassword1!")
        .await;
    app.registered("target@example.com", "TargetPassword1!")
        .await;
    assert_eq!(
        get_status(&app.client, &app.url("/api/x"), Some(&token)).await,
        200
    );

    // Answers to the flood: 401 (a wrong password, hashed), 503 (the hashing queue full),
    // anything else.
    let answers = Arc::new([(); 3].map(|_| std::sync::atomic::AtomicUsize::new(0)));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (app, answers) = (app.clone(), answers.clone());
        flood.spawn(async move {
            loop {
                let status = app
                    .login("target@example.com", "wrong")
                    .await
                    .status()
                    .as_u16();
                match status {
                    401 => answers[0].fetch_add(1, Ordering::Relaxed),
                    503 => answers[1].fetch_add(1, Ordering::Relaxed),
                    _ => answers[2].fetch_add(1, Ordering::Relaxed),
                };
                if status == 503 {
                    // The queue stays full while the others keep at it.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
    }
    // Let the hashing queue fill up.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut users = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (app, token, stop) = (app.clone(), token.clone(), stop.clone());
        users.spawn(async move {
            let timings = until_stopped(stop, || {
                app.client.get(app.url("/api/x")).bearer_auth(&token).send()
            });
            ("proxied", timings.await)
        });
    }
    {
        let (app, token, stop) = (app.clone(), token.clone(), stop.clone());
        users.spawn(async move {
            let timings = until_stopped(stop, || {
                app.client
                    .get(app.url("/auth/users/me"))
                    .bearer_auth(&token)
                    .send()
            });
            ("GET /auth/users/me", timings.await)
        });
    }
    {
        let (app, token, stop) = (app.clone(), token.clone(), stop.clone());
        users.spawn(async move {
            let timings = until_stopped(stop, || {
                app.client
                    .patch(app.url("/auth/users/me"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "full_name": "Still Here" }))
                    .send()
            });
            ("PATCH /auth/users/me", timings.await)
        });
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    while let Some(done) = users.join_next().await {
        results.push(done.unwrap());
    }
    // The flood did reach the hashing, and filled its queue.
    let (wrong, busy) = (
        answers[0].load(Ordering::Relaxed),
        answers[1].load(Ordering::Relaxed),
    );
    assert!(wrong > 0 && busy > 0, "401: {wrong}, 503: {busy}");
    flood.abort_all();
    for (what, timings) in &results {
        assert_all_fast_and_fine(what, timings);
    }
    // The audit log got one event per attempt that reached hashing, none for the attempts a
    // full queue turned away: no more than the hashing pool could verify.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let hashed_failures: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sentinel_logins_total{outcome=\"failure\"} "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let events: i64 = app
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM sentinel_audit_events WHERE type = 'login.failed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        events > 0 && events <= hashed_failures,
        "events {events}, 401s seen {wrong}, failures hashed {hashed_failures}, 503s {busy}"
    );
    assert!((events as usize) < wrong + busy);
}

/// A burst of concurrent requests of one user whom memory does not hold (a cold start, or
/// just after a login elsewhere announced a change of theirs) makes one database read, not
/// one per request: with a single cache connection, none of them gets a 503.
#[tokio::test]
async fn a_burst_for_one_uncached_user_shares_one_read() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: route("/api/", &[up.addr()], "required", ""),
        database_extra: "proxy_pool_size = 1\n".into(),
        ..Spawn::default()
    })
    .await;
    let (token, _) = app.registered("burst@example.com", "BurstPassword1!").await;
    for round in 0..2 {
        // A login starts a session: a change of the user that every instance forgets it for.
        assert_eq!(
            app.login("burst@example.com", "BurstPassword1!")
                .await
                .status(),
            200
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let requests = (0..200).map(|_| {
            let client = reqwest::Client::new();
            let url = app.url("/api/x");
            let token = token.clone();
            async move {
                client
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16())
            }
        });
        let statuses = futures_util::future::join_all(requests).await;
        let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
        assert!(
            failed.is_empty(),
            "round {round}: {} of 200 failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(10)]
        );
    }
}
