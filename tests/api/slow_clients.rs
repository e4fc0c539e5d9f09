//! Slow and oversized requests: request heads have a deadline (not just a per-read timeout),
//! own bodies a total time limit, heads a size limit; none of it cuts off a slow *response*.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Short limits so that the tests run quickly: 1 s per head, 1 s per own body, 1 s idle.
const LIMITS: &str = "header_timeout_ms = 1000\nbody_timeout_ms = 1000\nkeepalive_seconds = 1\n";

async fn spawn(routes: &str) -> TestApp {
    TestApp::spawn_with(Spawn {
        server_extra: LIMITS.to_string(),
        config_extra: routes.to_string(),
        ..Spawn::default()
    })
    .await
}

/// A gateway with these `[server]` keys (and no routes).
async fn spawn_server(server_extra: &str) -> TestApp {
    TestApp::spawn_with(Spawn {
        server_extra: server_extra.to_string(),
        ..Spawn::default()
    })
    .await
}

/// Asserts that `took` lies in `from_ms..to_ms`.
fn assert_took(took: Duration, from_ms: u64, to_ms: u64) {
    assert!(
        took >= Duration::from_millis(from_ms) && took < Duration::from_millis(to_ms),
        "closed after {took:?}"
    );
}

/// Reads until the peer closes the connection; returns what arrived and when it closed, or
/// `None` if it was still open after `limit`.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> Option<(String, Instant)> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((String::from_utf8_lossy(&out).into_owned(), Instant::now()))
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends one more header line every 200 ms (each read is quick, the head never ends) until the
/// gateway closes the connection; when it did, or `None` if it was still open after 8 s.
async fn trickle_until_closed(s: &mut TcpStream) -> Option<Instant> {
    let mut probe = [0u8; 1];
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if s.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            return Some(Instant::now());
        }
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await
        {
            return Some(Instant::now());
        }
    }
    None
}

#[tokio::test]
async fn a_request_head_trickled_slowly_is_cut_off_at_the_deadline() {
    let app = spawn("").await;
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let opened = Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let closed = trickle_until_closed(&mut s)
        .await
        .expect("a trickled head was still accepted after 8 s");
    assert_took(closed - opened, 900, 3000);
    assert_eq!(app.status("/health").await, 200);
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_head_deadline() {
    // A long keep-alive, so that only the head deadline can close it.
    let app = spawn_server("header_timeout_ms = 1000\nkeepalive_seconds = 30\n").await;
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let opened = Instant::now();
    let (answer, closed) = until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("an idle new connection was kept for 5 s");
    assert_eq!(
        answer, "",
        "nothing is answered to a connection that sent nothing"
    );
    assert!(closed - opened < Duration::from_millis(2500));
}

/// Answers one `GET /health` on `s` and returns when the answer arrived.
async fn one_health_check(s: &mut TcpStream) -> Instant {
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    Instant::now()
}

#[tokio::test]
async fn a_kept_alive_connection_must_complete_its_next_head_within_the_keepalive_time() {
    // Keep-alive 1 s, a longer head time for new connections: the keep-alive time rules.
    let app = spawn_server("header_timeout_ms = 5000\nkeepalive_seconds = 1\n").await;
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let answered = one_health_check(&mut s).await;
    // The next head starts at once but never finishes.
    s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let closed = trickle_until_closed(&mut s)
        .await
        .expect("a trickled second head was still accepted after 8 s");
    assert_took(closed - answered, 900, 2500);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_keepalive_time() {
    let app = spawn_server("header_timeout_ms = 5000\nkeepalive_seconds = 1\n").await;
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let answered = one_health_check(&mut s).await;
    let (rest, closed) = until_closed(&mut s, Duration::from_secs(4))
        .await
        .expect("an idle kept-alive connection was still open after 4 s");
    assert_eq!(rest, "");
    assert_took(closed - answered, 900, 2000);
}

#[tokio::test]
async fn keepalive_seconds_zero_closes_every_connection_after_its_answer() {
    let app = spawn_server("keepalive_seconds = 0\n").await;
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = until_closed(&mut s, Duration::from_secs(3))
        .await
        .expect("still open 3 s after the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn slow_responses_and_prompt_keepalive_requests_are_not_cut() {
    let upstream = Upstream::start().await;
    let app = spawn(&route(
        "/slow/",
        &[upstream.addr()],
        "public",
        "read_timeout_ms = 10000",
    ))
    .await;
    // The head arrives at once; the answer takes 2.5 s, longer than the head deadline.
    let r = app
        .client
        .get(app.url("/slow/x?delay_ms=2500"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Several requests on one kept-alive connection, each well inside keep-alive.
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..3 {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

#[tokio::test]
async fn an_own_body_that_does_not_arrive_in_time_gets_408() {
    let app = spawn("").await;
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let sent = Instant::now();
    s.write_all(
        b"POST /auth/token HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nusername=",
    )
    .await
    .unwrap();
    let (answer, closed) = until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("a stalled body kept its connection for 5 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.ends_with(r#"{"detail":"Request body not received in time"}"#),
        "{answer}"
    );
    assert!(closed - sent < Duration::from_millis(2500));
}

#[tokio::test]
async fn oversized_heads_get_431_and_never_reach_an_upstream() {
    let upstream = Upstream::start().await;
    let app = spawn(&route("/api/", &[upstream.addr()], "public", "")).await;
    let big = "a".repeat(40 * 1024);
    for path in ["/health", "/auth/token", "/api/x"] {
        let r = app
            .client
            .get(app.url(path))
            .header("x-padding", big.as_str())
            .send()
            .await
            .unwrap();
        let a = Answer::of(r).await;
        assert_eq!(
            (a.status, a.text.as_str()),
            (431, r#"{"detail":"Request header fields too large"}"#),
            "{path}"
        );
        assert!(a.header("x-request-id").is_some());
    }
    assert_eq!(upstream.served().await, 0);
    // Just under the limit (32 KiB for the whole head) passes.
    let fits = "a".repeat(30 * 1024);
    let r = app
        .client
        .get(app.url("/api/x"))
        .header("x-padding", fits.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.served().await, 1);
    // Far past pingora's own 1 MiB buffer: refused, and the gateway carries on.
    let huge = format!(
        "GET /api/x HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(2 * 1024 * 1024)
    );
    let answer = raw(app.port, huge.as_bytes()).await;
    assert!(
        !answer.contains(" 200 ") && !answer.contains(" 500 "),
        "{answer}"
    );
    assert_eq!(upstream.served().await, 1);
    assert_eq!(app.status("/health").await, 200);
}

#[tokio::test]
async fn connections_the_client_did_not_ask_to_keep_are_closed_after_the_answer() {
    let upstream = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        // A long keep-alive and head time, so that only the answer can end the connection.
        server_extra: "header_timeout_ms = 30000\nkeepalive_seconds = 30\n".into(),
        config_extra: route("/api/", &[upstream.addr()], "public", ""),
        ..Spawn::default()
    })
    .await;
    for request in [
        &b"GET /health HTTP/1.0\r\n\r\n"[..],
        b"GET /api/x HTTP/1.0\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let shown = String::from_utf8_lossy(request).into_owned();
        let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
        s.write_all(request).await.unwrap();
        let (answer, _) = until_closed(&mut s, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("still open 3 s after answering {shown:?}"));
        // Pingora's engine answers an HTTP/1.0 request in HTTP/1.1, hyper's in HTTP/1.0.
        let one_point = if shown.contains("HTTP/1.0") {
            ["HTTP/1.1 200", "HTTP/1.0 200"]
        } else {
            ["HTTP/1.1 200"; 2]
        };
        assert!(
            one_point.iter().any(|line| answer.starts_with(line)),
            "{shown:?}: {answer}"
        );
        assert!(
            !answer
                .to_ascii_lowercase()
                .contains("connection: keep-alive"),
            "{shown:?}: {answer}"
        );
    }
    // HTTP/1.0 that asks for keep-alive keeps it.
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    s.write_all(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    assert!(until_closed(&mut s, Duration::from_millis(1500))
        .await
        .is_none());
}

#[tokio::test]
async fn a_client_that_stops_reading_a_proxied_body_is_dropped_after_the_send_timeout() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        server_extra: "send_timeout_ms = 1000\n".into(),
        config_extra: route("/files/", &[up.addr()], "public", ""),
        ..Spawn::default()
    })
    .await;
    const SIZE: usize = 200 * 1024 * 1024;
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    s.write_all(format!("GET /files/big?bytes={SIZE} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Not reading: the gateway's writes stall once the socket buffers are full.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n,
            Err(_) => panic!("neither closed nor sending after {received} bytes"),
        }
    }
    assert!(
        received < SIZE / 2,
        "{received} bytes arrived: the stalled response was not cut off"
    );
    // Other clients are served as before.
    assert_eq!(app.status("/health").await, 200);
}
