//! Prometheus metrics on the admin listener (`[admin] listen`): scraped over HTTP, parsed by
//! the Prometheus project's own text parser (`prometheus_client`, tests/support/prom_parse.py),
//! and checked to move as requests are made. Never served on the public port.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::*;

const PASSWORD: &str = "MetricsPassword1!";

/// Every sample of one scrape: (name, sorted labels) -> value.
#[derive(Debug)]
struct Scrape(BTreeMap<(String, Vec<(String, String)>), f64>);

impl Scrape {
    /// The value of `name` with exactly these labels (0 when absent).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        self.0
            .get(&(name.to_string(), want))
            .copied()
            .unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.0.keys().any(|(n, _)| n == name)
    }
}

fn parse(text: &str) -> Scrape {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/prom_parse.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition (is prometheus-client installed? \
         scripts/test.sh installs tests/support/requirements.txt): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    Scrape(
        samples
            .into_iter()
            .map(|(name, labels, value)| ((name, labels.into_iter().collect()), value))
            .collect(),
    )
}

async fn scrape(admin: &str) -> Scrape {
    let r = reqwest::get(format!("{admin}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse(&r.text().await.unwrap())
}

async fn gateway_with_admin(config_extra: String) -> (TestApp, String) {
    let admin_port = free_port();
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n{config_extra}"),
        ..Spawn::default()
    })
    .await;
    (app, format!("http://127.0.0.1:{admin_port}"))
}

#[tokio::test]
async fn counters_move_as_requests_are_made() {
    let upstream = Upstream::start().await;
    let (app, admin) = gateway_with_admin(format!(
        "[rate_limit]\nlogin_per_ip_per_minute = 1000\nlogin_per_account_per_minute = 1\n\
         register_per_ip_per_minute = 1000\n\n{}",
        route("/api/", &[upstream.addr()], "required", "")
    ))
    .await;
    let before = scrape(&admin).await;
    assert_eq!(before.get("sentinel_ready", &[]), 1.0);
    assert_eq!(before.get("sentinel_db_listen_connected", &[]), 1.0);
    assert_eq!(
        before.get(
            "sentinel_upstream_healthy",
            &[("route", "/api/"), ("upstream", &upstream.addr())]
        ),
        1.0
    );

    let (token, _) = app.registered("metrics@example.com", PASSWORD).await;
    // One attempt a minute per account (a quota no slow machine refills within the test): a
    // success, a failure on another account, then the first account refused.
    assert_eq!(
        app.login("metrics@example.com", PASSWORD).await.status(),
        200
    );
    assert_eq!(
        app.login("nobody@example.com", "wrong-password")
            .await
            .status(),
        401
    );
    assert_eq!(
        app.login("metrics@example.com", PASSWORD).await.status(),
        429
    );
    for _ in 0..3 {
        assert_eq!(app.get_as("/api/x", &token).await.status, 200);
    }
    assert_eq!(app.status("/api/x").await, 401);
    assert_eq!(app.status("/nowhere").await, 404);

    let after = scrape(&admin).await;
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    let requests = "sentinel_http_requests_total";
    assert_eq!(
        delta(
            requests,
            &[("kind", "own"), ("route", "token"), ("status_class", "2xx")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            requests,
            &[("kind", "own"), ("route", "token"), ("status_class", "4xx")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            requests,
            &[
                ("kind", "own"),
                ("route", "register"),
                ("status_class", "2xx")
            ]
        ),
        1.0
    );
    assert_eq!(
        delta(
            requests,
            &[
                ("kind", "proxied"),
                ("route", "/api/"),
                ("status_class", "2xx")
            ]
        ),
        3.0
    );
    assert_eq!(
        delta(
            requests,
            &[
                ("kind", "proxied"),
                ("route", "/api/"),
                ("status_class", "4xx")
            ]
        ),
        1.0
    );
    assert_eq!(
        delta(
            requests,
            &[
                ("kind", "unmatched"),
                ("route", ""),
                ("status_class", "4xx")
            ]
        ),
        1.0
    );
    // The route's histogram counts the same requests (all four: the 200s and the 401), and
    // its buckets are cumulative.
    let histogram = "sentinel_http_request_duration_seconds";
    let proxied = [("kind", "proxied"), ("route", "/api/")];
    assert_eq!(delta(&format!("{histogram}_count"), &proxied), 4.0);
    assert!(delta(&format!("{histogram}_sum"), &proxied) > 0.0);
    let mut inf = proxied.to_vec();
    inf.push(("le", "+Inf"));
    assert_eq!(delta(&format!("{histogram}_bucket"), &inf), 4.0);

    let logins = "sentinel_logins_total";
    assert_eq!(delta(logins, &[("outcome", "success")]), 1.0);
    assert_eq!(delta(logins, &[("outcome", "failure")]), 1.0);
    assert_eq!(delta(logins, &[("outcome", "rate_limited")]), 1.0);
    assert_eq!(
        delta(
            "sentinel_rate_limit_rejections_total",
            &[("limit", "login_account")]
        ),
        1.0
    );
    // The token was verified once and then found in the cache; the user was read once at most
    // per change and otherwise served from memory.
    let lookups = "sentinel_cache_lookups_total";
    assert!(delta(lookups, &[("cache", "token"), ("result", "hit")]) >= 2.0);
    assert!(delta(lookups, &[("cache", "user"), ("result", "hit")]) >= 1.0);
    assert!(
        after.get(
            "sentinel_db_pool_connections",
            &[("pool", "api"), ("state", "open")]
        ) >= 1.0
    );
    assert_eq!(
        after.get(
            "sentinel_db_pool_connections",
            &[("pool", "api"), ("state", "max")]
        ),
        16.0
    );
    assert_eq!(after.get("sentinel_hash_queue_depth", &[]), 0.0);
    assert!(after.get("sentinel_hash_queue_capacity", &[]) > 0.0);
    assert!(after.has("process_resident_memory_bytes"));
    // The registration wrote a verification mail; the log transport sends it at once, so the
    // outbox reaches zero and the gauge says so.
    let outbox_empty = async {
        loop {
            let now = scrape(&admin).await;
            let pending: i64 = app
                .db
                .client()
                .await
                .query_one(
                    "SELECT count(*) FROM sentinel_outbox WHERE sent_at IS NULL AND abandoned_at IS NULL",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if pending == 0 && now.get("sentinel_mail_outbox_depth", &[]) == 0.0 {
                return now.get("sentinel_mail_sent_total", &[]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let sent = tokio::time::timeout(Duration::from_secs(10), outbox_empty)
        .await
        .expect("the outbox gauge never reached 0");
    assert!(sent >= 1.0);
}

#[tokio::test]
async fn the_outbox_gauge_counts_mail_waiting_for_a_dead_smtp_server() {
    let dead = free_port();
    let (app, admin) = gateway_with_admin(format!(
        "[mail]\ntransport = \"smtp\"\nsmtp_url = \"smtp://127.0.0.1:{dead}\"\n"
    ))
    .await;
    for i in 0..3 {
        app.registered(&format!("waiting{i}@example.com"), PASSWORD)
            .await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = scrape(&admin).await;
        if now.get("sentinel_mail_outbox_depth", &[]) == 3.0
            && now.get("sentinel_mail_failed_attempts_total", &[]) >= 3.0
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn metrics_are_never_on_the_public_port_and_other_admin_paths_are_404() {
    let (app, admin) = gateway_with_admin(String::new()).await;
    let public = app.get("/metrics").await;
    assert_eq!(public.status, 404);
    assert!(!public.text.contains("sentinel_"), "{}", public.text);
    let other = reqwest::get(format!("{admin}/")).await.unwrap();
    assert_eq!(other.status(), 404);
    let post = reqwest::Client::new()
        .post(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
}

#[test]
fn an_admin_listener_on_the_public_port_is_refused_at_start_up() {
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    let port = free_port();
    std::fs::write(
        &config,
        config_text(
            port,
            "postgres://postgres@127.0.0.1/x",
            &format!("[admin]\nlisten = \"0.0.0.0:{port}\"\n"),
        ),
    )
    .unwrap();
    // A configuration error: exit 2, as check-config also says.
    let out = command(&dir.0, &config).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin.listen shares") && stderr.contains("with server.listen"),
        "{stderr}"
    );
}

#[test]
fn an_admin_port_in_use_stops_start_up_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap();
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        config_text(
            free_port(),
            "postgres://postgres@127.0.0.1/x",
            &format!("[admin]\nlisten = \"{admin}\"\n"),
        ),
    )
    .unwrap();
    let out = command(&dir.0, &config).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {admin} (admin.listen)")),
        "{stderr}"
    );
}

/// The `sentinel_` series a scrape of `admin` holds, and its size in bytes.
async fn series(admin: &str) -> (usize, usize) {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = parse(&text)
        .0
        .keys()
        .filter(|(name, _)| name.starts_with("sentinel_"))
        .count();
    (count, text.len())
}

#[tokio::test]
async fn two_routes_cost_at_most_600_series_and_each_route_17_plus_its_upstreams() {
    let up = Upstream::start().await;
    let routes = |n: usize| -> String {
        (0..n)
            .map(|i| route(&format!("/r{i}/"), &[up.addr()], "required", ""))
            .collect()
    };
    let (_two, admin) = gateway_with_admin(routes(2)).await;
    let (two, bytes) = series(&admin).await;
    assert!(two <= 600, "{two} series for two routes");
    assert!(bytes < 64 * 1024, "{bytes} bytes a scrape");
    // Each more route: six status classes, a histogram of eight buckets (eleven series), and
    // one health series per upstream address (docs/operations.md gives this formula).
    let (_six, admin) = gateway_with_admin(routes(6)).await;
    let (six, _) = series(&admin).await;
    assert_eq!(six - two, 4 * (6 + 11 + 1), "{two} then {six}");
}
