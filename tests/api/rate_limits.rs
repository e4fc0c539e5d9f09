//! Login and registration rate limits: 429 with Retry-After, before any hashing; proxied
//! traffic untouched.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

async fn limited_app(ip: u32, account: u32, register: u32, extra: &str) -> TestApp {
    TestApp::spawn_with(Spawn {
        config_extra: format!(
            "[rate_limit]\nlogin_per_ip_per_minute = {ip}\nlogin_per_account_per_minute = {account}\n\
             register_per_ip_per_minute = {register}\n\n{extra}"
        ),
        ..Spawn::default()
    })
    .await
}

fn assert_429(a: &Answer, detail: &str) {
    assert_eq!(a.status, 429, "{}", a.text);
    assert_eq!(a.json(), json!({ "detail": detail }));
    let retry: u64 = a
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
}

#[tokio::test]
async fn an_account_is_limited_whether_or_not_it_exists_and_even_with_the_right_password() {
    let app = limited_app(1000, 3, 1000, "").await;
    app.registered("limited@example.com", "LimitedPassword1!")
        .await;
    for _ in 0..3 {
        assert_eq!(
            app.login("limited@example.com", "wrong").await.status(),
            401
        );
    }
    let a = Answer::of(app.login("LIMITED@example.com", "LimitedPassword1!").await).await;
    assert_429(&a, "Too many login attempts, try again later");
    // An unknown account runs out the same way.
    for _ in 0..3 {
        assert_eq!(
            app.login("ghost@example.com", "whatever").await.status(),
            401
        );
    }
    assert_429(
        &Answer::of(app.login("ghost@example.com", "whatever").await).await,
        "Too many login attempts, try again later",
    );
    // Other accounts are not affected.
    assert_eq!(
        app.login("someone@example.com", "whatever").await.status(),
        401
    );
}

#[tokio::test]
async fn a_client_address_is_limited_across_accounts_and_registrations_too() {
    let app = limited_app(4, 1000, 2, "").await;
    // 4 a minute: a burst of 4, then one more each 15 s. On a loaded machine the burst may take
    // long enough to earn another, so count how many got through against the time it took.
    let started = std::time::Instant::now();
    let mut through = 0;
    let refused = loop {
        let a = Answer::of(app.login(&format!("u{through}@example.com"), "x").await).await;
        if a.status != 401 {
            break a;
        }
        through += 1;
        assert!(
            through <= 4 + started.elapsed().as_secs() / 15,
            "{through} got through"
        );
    };
    assert!(through >= 4, "{through}");
    assert_429(&refused, "Too many login attempts, try again later");
    // 2 a minute: one more each 30 s.
    let started = std::time::Instant::now();
    let mut through = 0;
    let refused = loop {
        let a = Answer::of(
            app.register(&format!("r{through}@example.com"), "Password123!")
                .await,
        )
        .await;
        if a.status != 200 {
            break a;
        }
        through += 1;
        assert!(
            through <= 2 + started.elapsed().as_secs() / 30,
            "{through} got through"
        );
    };
    assert!(through >= 2, "{through}");
    assert_429(&refused, "Too many registrations, try again later");
    // The form is checked before the limits: a malformed login is still a 422.
    let a = Answer::of(
        app.client
            .post(app.url("/auth/token"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 422);
}

#[tokio::test]
async fn proxied_traffic_and_health_ignore_the_login_limiter() {
    let up = Upstream::start().await;
    let app = limited_app(1, 1, 1, &route("/public/", &[up.addr()], "public", "")).await;
    assert_eq!(app.login("a@example.com", "x").await.status(), 401);
    assert_eq!(app.login("a@example.com", "x").await.status(), 429);
    for _ in 0..20 {
        assert_eq!(app.status("/public/x").await, 200);
        assert_eq!(app.status("/health").await, 200);
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_limited() {
    let app = limited_app(
        2,
        1000,
        1000,
        "[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n",
    )
    .await;
    let login = |xff: &'static str| {
        app.client
            .post(app.url("/auth/token"))
            .header("X-Forwarded-For", xff)
            .form(&[("username", "p@example.com"), ("password", "x")])
            .send()
    };
    assert_eq!(login("203.0.113.1").await.unwrap().status(), 401);
    assert_eq!(login("203.0.113.1").await.unwrap().status(), 401);
    assert_eq!(login("203.0.113.1").await.unwrap().status(), 429);
    // Another client behind the same proxy has its own budget.
    assert_eq!(
        login("198.51.100.7, 203.0.113.99").await.unwrap().status(),
        401
    );
}

/// A raw login from behind a trusted proxy, with the `X-Forwarded-For` lines given.
async fn login_forwarded_for(port: u16, lines: &[&str]) -> String {
    let body = "username=behind%40example.com&password=wrong";
    let forwarded: String = lines
        .iter()
        .map(|l| format!("X-Forwarded-For: {l}\r\n"))
        .collect();
    raw_within(
        port,
        format!(
            "POST /auth/token HTTP/1.1\r\nHost: x\r\n{forwarded}Content-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
        // A wrong password is hashed: on a busy machine that takes a while.
        Duration::from_secs(20),
    )
    .await
}

#[tokio::test]
async fn behind_a_proxy_that_appends_its_own_line_the_real_client_is_limited() {
    // The trusted proxy (this test, on 127.0.0.1) appends the address it saw as a line of its
    // own after the client's, as HAProxy's `option forwardfor` does. The client varies its
    // own first line on every attempt.
    let app = limited_app(
        2,
        1000,
        1000,
        "[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n",
    )
    .await;
    for i in 0..2 {
        let spoof = format!("6.6.6.{i}");
        let answer = login_forwarded_for(app.port, &[&spoof, "9.9.9.9"]).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    let answer = login_forwarded_for(app.port, &["6.6.6.99", "9.9.9.9"]).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    // Another client behind the same proxy is not limited.
    let answer = login_forwarded_for(app.port, &["6.6.6.99", "9.9.9.8"]).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

/// argon2 at its cheapest, for tests that log in thousands of times.
fn cheap_hashing(extra: &str) -> Spawn {
    Spawn {
        server_extra: "environment = \"development\"\n".into(),
        config_extra: format!(
            "[password]\nargon2_memory_kib = 64\nargon2_iterations = 1\n\n{extra}"
        ),
        ..Spawn::default()
    }
}

#[tokio::test]
async fn long_usernames_cost_the_limiter_no_more_memory_than_short_ones() {
    // Every attempt is a new account key; before, each kept its whole username.
    let app = TestApp::spawn_with(cheap_hashing("")).await;
    let app = std::sync::Arc::new(app);
    let flood = |from: usize, to: usize| {
        let app = app.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for worker in 0..16 {
                let app = app.clone();
                tasks.spawn(async move {
                    for i in (from + worker..to).step_by(16) {
                        let username = format!("{i}-{}", "u".repeat(60 * 1024));
                        let status = app.login(&username, "wrong").await.status();
                        assert_eq!(status, 401);
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        }
    };
    flood(0, 200).await;
    let (before, _) = app.rss_kib();
    flood(200, 2200).await;
    let (after, _) = app.rss_kib();
    eprintln!("RSS before {before} KiB, after 2,000 long usernames {after} KiB");
    // 2,000 usernames of 60 KiB would be 117 MiB of keys.
    assert!(
        after.saturating_sub(before) < 40 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test]
async fn a_limiter_tracking_its_most_keys_refuses_until_they_expire() {
    // Cheap hashing: the 20 attempts must come well within the minute after which the first
    // keys' buckets are full again (and forgotten), even on a loaded machine.
    let app = TestApp::spawn_with(cheap_hashing(
        "[rate_limit]\nlogin_per_ip_per_minute = 1000\nlogin_per_account_per_minute = 1\n\
         register_per_ip_per_minute = 1000\nmax_tracked_keys = 20\n",
    ))
    .await;
    for i in 0..20 {
        assert_eq!(
            app.login(&format!("full{i}@example.com"), "x")
                .await
                .status(),
            401,
            "{i}"
        );
    }
    let a = Answer::of(app.login("one-more@example.com", "x").await).await;
    assert_429(&a, "Too many login attempts, try again later");
    let (line, _) = app.log_line("max_tracked_keys").await;
    assert!(line.contains("WARN"), "{line}");
}

/// Every code point that PostgreSQL's `lower()` and Rust's lower-casing treat differently
/// (found by scanning them all, as the last letter of a local part, where a final sigma
/// counts): a spelling of an account that logs in to it is counted in that account's one
/// rate-limit bucket. Registered accounts are the PostgreSQL-lowered and the Rust-lowered
/// spellings; with the account's bucket spent, the other spelling and the right password get
/// 429 (one bucket) or 401 (not that account), never 200.
#[tokio::test]
async fn every_spelling_that_reaches_an_account_counts_against_its_one_bucket() {
    let app = TestApp::spawn_with(cheap_hashing(
        "[rate_limit]\nlogin_per_ip_per_minute = 100000\nlogin_per_account_per_minute = 1\n\
         register_per_ip_per_minute = 100000\n",
    ))
    .await;
    let db = app.db.client().await;
    // The local part `u<code point in letters>x<c>`: unique per code point, `c` last after a
    // cased letter.
    let local = |c: char| {
        let letters: String = format!("{:x}", c as u32)
            .chars()
            .map(|d| (b'a' + d.to_digit(16).unwrap() as u8) as char)
            .collect();
        format!("u{letters}x{c}")
    };
    // What PostgreSQL's lower() changes, then what Rust's does: the differences lie in these.
    let rows = db
        .query(
            "SELECT c, lower('ux' || chr(c) || '@example.com') FROM generate_series(128, 1114111) c \
             WHERE (c < 55296 OR c > 57343) AND lower(chr(c)) <> chr(c)",
            &[],
        )
        .await
        .unwrap();
    let pg_lowered: std::collections::HashMap<u32, String> = rows
        .iter()
        .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, String>(1)))
        .collect();
    let mut differing = Vec::new();
    for cp in 128u32..=0x10FFFF {
        let Some(c) = char::from_u32(cp) else {
            continue;
        };
        let address = format!("ux{c}@example.com");
        let rust = address.to_lowercase();
        let pg = pg_lowered.get(&cp).cloned().unwrap_or(address.clone());
        if rust != pg {
            differing.push(c);
        }
    }
    assert!(
        differing.contains(&'\u{130}'),
        "İ is among them: {differing:?}"
    );
    assert!(
        differing.contains(&'Σ'),
        "a final sigma is among them: {differing:?}"
    );
    let password = "BucketPassword1!";
    let mut checked = 0;
    for c in differing {
        let spelling = format!("{}@example.com", local(c));
        let pg: String = db
            .query_one("SELECT lower($1)", &[&spelling])
            .await
            .unwrap()
            .get(0);
        for (tag, account) in [("p", pg), ("r", spelling.to_lowercase())] {
            // Two accounts per code point, each under its own prefix.
            let (account, spelling) = (format!("{tag}{account}"), format!("{tag}{spelling}"));
            if account == spelling {
                continue;
            }
            let registered = app.register(&account, password).await.status();
            if registered == 422 {
                continue; // not an address registration accepts
            }
            assert_eq!(registered, 200, "register {account:?}");
            assert_eq!(
                app.login(&account, "wrong").await.status(),
                401,
                "{account:?}"
            );
            let status = app.login(&spelling, password).await.status();
            assert!(
                status == 429 || status == 401,
                "{spelling:?} logged in to {account:?} outside its bucket ({status})"
            );
            // Registration calls the spelling taken or new; never a server error.
            let again = app.register(&spelling, password).await.status();
            assert!(
                [200, 400, 422].contains(&again.as_u16()),
                "{spelling:?}: {again}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} spellings checked");
    eprintln!("{checked} spellings checked");
}

#[tokio::test]
async fn refreshes_are_limited_per_address_and_forged_tokens_are_not_counted() {
    let app = limited_app(1000, 1000, 1000, "refresh_per_ip_per_minute = 2\n").await;
    let r = app
        .register("refreshes@example.com", "RefreshPassword1!")
        .await;
    let mut refresh = r.json::<serde_json::Value>().await.unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let post = |token: String| {
        let app = &app;
        async move {
            Answer::of(
                app.client
                    .post(app.url("/auth/refresh"))
                    .json(&json!({ "refresh_token": token }))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    // Forged tokens: 400 invalid_grant however many, and the budget is untouched.
    for i in 0..5 {
        let a = post(format!("forged-{i}")).await;
        assert_eq!(a.status, 400, "{}", a.text);
    }
    for _ in 0..2 {
        let a = post(refresh.clone()).await;
        assert_eq!(a.status, 200, "{}", a.text);
        refresh = a.json()["refresh_token"].as_str().unwrap().to_string();
    }
    let a = post(refresh.clone()).await;
    assert_429(&a, "Too many refreshes, try again later");
    // The refused attempt spent nothing: the token still belongs to the session.
    let sessions = app.db.client().await;
    let live: i64 = sessions
        .query_one(
            "SELECT count(*) FROM sentinel_sessions WHERE revoked_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 1);
}
