//! Balancing and health, trusted proxies, large streaming bodies and WebSockets through the
//! gateway.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

async fn server_of(app: &TestApp, path: &str) -> Result<String, u16> {
    let r = app.client.get(app.url(path)).send().await.unwrap();
    if r.status() != 200 {
        return Err(r.status().as_u16());
    }
    let v: serde_json::Value = r.json().await.unwrap();
    Ok(v["server"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn round_robin_skips_a_dead_upstream_and_takes_it_back_when_it_recovers() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let b_port = b.port;
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "[proxy]\nhealth_check_interval_ms = 200\n\n{}",
            route("/lb/", &[a.addr(), b.addr()], "public", "")
        ),
        ..Spawn::default()
    })
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        *seen
            .entry(server_of(&app, "/lb/x").await.unwrap())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both upstreams serve: {seen:?}");
    assert!(seen.values().all(|n| *n >= 3), "round-robin: {seen:?}");

    // B dies: every request still succeeds (a refused connect moves on to A), and after the
    // next health check B gets nothing.
    drop(b);
    for _ in 0..20 {
        assert_eq!(server_of(&app, "/lb/x").await, Ok(a.addr()));
    }
    // B comes back on the same port and gets traffic again.
    let b = Upstream::start_on(b_port).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if server_of(&app, "/lb/x").await == Ok(b.addr()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recovered upstream never used again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn no_healthy_upstream_is_a_502_and_other_routes_keep_working() {
    let up = Upstream::start().await;
    let gone = Upstream::start().await;
    let gone_addr = gone.addr();
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "[proxy]\nhealth_check_interval_ms = 200\n\n{}{}",
            route("/gone/", &[gone_addr], "public", ""),
            route("/ok/", &[up.addr()], "public", "")
        ),
        ..Spawn::default()
    })
    .await;
    assert!(server_of(&app, "/gone/x").await.is_ok());
    drop(gone);
    // The next health check (every 200 ms) finds it gone; until then a pooled connection to
    // it may still answer. On a loaded machine the check can come late: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let a = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let a = app.get("/gone/x").await;
        if a.status != 200 || Instant::now() > deadline {
            break a;
        }
    };
    assert_eq!(
        (a.status, a.text.as_str()),
        (502, r#"{"detail":"Bad Gateway"}"#)
    );
    assert!(server_of(&app, "/ok/x").await.is_ok());
}

#[tokio::test]
async fn forwarded_headers_are_kept_only_from_trusted_proxies() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "[proxy]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\n{}",
            route("/p/", &[up.addr()], "public", "")
        ),
        ..Spawn::default()
    })
    .await;
    let r = app
        .client
        .get(app.url("/p/x"))
        .header("X-Forwarded-For", "203.0.113.9")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "app.example.com")
        .header("X-User-Id", "still-not-allowed")
        .send()
        .await
        .unwrap();
    let e = Echo(r.json().await.unwrap());
    assert_eq!(
        e.one("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1".into())
    );
    assert_eq!(e.one("x-forwarded-proto"), Some("https".into()));
    assert_eq!(e.one("x-forwarded-host"), Some("app.example.com".into()));
    assert_eq!(e.one("x-user-id"), None);
}

#[tokio::test]
async fn hundred_megabyte_bodies_stream_both_ways_with_flat_gateway_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: route("/api/", &[up.addr()], "required", ""),
        ..Spawn::default()
    })
    .await;
    let (token, _) = app
        .registered("stream@example.com", "StreamPassword1!")
        .await;
    let (_, peak_before) = app.rss_kib();

    // Upload: 100 MB in 1 MB chunks, counted by the upstream as it arrives.
    let chunk = bytes::Bytes::from(vec![b'u'; 1024 * 1024]);
    let body =
        futures_util::stream::iter((0..100).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let r = app
        .client
        .post(app.url("/api/upload"))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["body_bytes"].as_u64(), Some(SIZE));

    // Download: 100 MB, read as it comes.
    let r = app
        .client
        .get(app.url(&format!("/api/download?bytes={SIZE}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len() as u64;
    }
    assert_eq!(received, SIZE);

    let (_, peak_after) = app.rss_kib();
    let grew_mib = peak_after.saturating_sub(peak_before) / 1024;
    assert!(
        grew_mib < 32,
        "gateway peak RSS grew by {grew_mib} MiB for 200 MB of bodies"
    );
}

async fn websocket_handshake(port: u16, token: Option<&str>) -> (tokio::net::TcpStream, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /api/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test]
async fn websocket_upgrades_pass_on_a_protected_route() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: route("/api/", &[up.addr()], "required", ""),
        ..Spawn::default()
    })
    .await;
    let (token, _) = app.registered("ws@example.com", "WsPassword123!").await;

    let (_, head) = websocket_handshake(app.port, None).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    let (mut s, head) = websocket_handshake(app.port, Some(&token)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // RFC 6455's example: the accept value for this key.
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // A masked text frame "hello"; the demo upstream echoes the bytes back.
    let frame = [
        0x81u8, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    for _ in 0..3 {
        s.write_all(&frame).await.unwrap();
        let mut back = [0u8; 11];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, frame);
    }
}

/// An upstream that accepts connections and never answers.
async fn silent_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn an_upgrade_request_waits_no_longer_than_the_routes_read_timeout() {
    let (silent, _task) = silent_upstream().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: route("/quiet/", &[silent], "public", "read_timeout_ms = 500"),
        ..Spawn::default()
    })
    .await;
    for upgrade in ["foo", "websocket"] {
        let started = std::time::Instant::now();
        let answer = raw(
            app.port,
            format!(
                "GET /quiet/x HTTP/1.1\r\nHost: x\r\nUpgrade: {upgrade}\r\nConnection: Upgrade\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 504"), "{upgrade}: {answer}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{upgrade}: {:?}",
            started.elapsed()
        );
    }
}

/// Reads until the gateway closes the socket; how long that took, or `None` within `limit`.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// A masked text frame "hello"; the demo upstream echoes the bytes back.
const HELLO_FRAME: [u8; 11] = [
    0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
];

async fn echoes(s: &mut tokio::net::TcpStream) {
    s.write_all(&HELLO_FRAME).await.unwrap();
    let mut back = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, HELLO_FRAME);
}

#[tokio::test]
async fn an_upgraded_connection_is_closed_after_the_routes_read_timeout_of_silence() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: route("/api/", &[up.addr()], "required", "read_timeout_ms = 700"),
        ..Spawn::default()
    })
    .await;
    let (token, _) = app.registered("idle@example.com", "IdlePassword1!").await;
    let (mut s, head) = websocket_handshake(app.port, Some(&token)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        echoes(&mut s).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // ... silence ends it.
    let closed = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "an idle upgraded connection stayed open");
}

#[tokio::test]
async fn open_websockets_of_a_deactivated_user_are_closed_within_a_second() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: route("/api/", &[up.addr()], "required", ""),
        ..Spawn::default()
    })
    .await;
    let (token, id) = app
        .registered("socket@example.com", "SocketPassword1!")
        .await;
    let (other_token, _) = app
        .registered("bystander@example.com", "SocketPassword1!")
        .await;
    let (mut s, head) = websocket_handshake(app.port, Some(&token)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (mut other, head) = websocket_handshake(app.port, Some(&other_token)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echoes(&mut s).await;
    let db = app.db.client().await;
    // A change that does not shut the user out leaves the socket open.
    db.execute(
        "UPDATE users SET full_name = 'Renamed' WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    echoes(&mut s).await;
    db.execute("UPDATE users SET is_active = false WHERE id = $1", &[&id])
        .await
        .unwrap();
    let closed = closed_within(&mut s, Duration::from_secs(3)).await;
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(1)),
        "the deactivated user's socket: {closed:?}"
    );
    // Other users' sockets are untouched.
    echoes(&mut other).await;
}

/// Upstreams and the listener by name (as Docker Compose and Kubernetes name services): every
/// address a name resolves to is balanced over and health-checked on its own, and a changed
/// answer is followed without a restart. The gateway resolves with a hosts file of the test's.
#[tokio::test]
async fn upstream_names_are_resolved_per_address_and_again_when_they_change() {
    let port = free_port();
    let a = Upstream::start_at(&format!("127.0.0.2:{port}")).await;
    let b = Upstream::start_at(&format!("127.0.0.3:{port}")).await;
    let c = Upstream::start_at(&format!("127.0.0.4:{port}")).await;
    let names = TempDir::new();
    let hosts = names.0.join("hosts");
    let write_hosts = |api: &[&str]| {
        let mut text = String::from("127.0.0.1 localhost gateway.test\n");
        for ip in api {
            text.push_str(&format!("{ip} api.test\n"));
        }
        // In place: the gateway's /etc/hosts is this very file.
        std::fs::write(&hosts, text).unwrap();
    };
    write_hosts(&["127.0.0.2", "127.0.0.3"]);
    let gateway_port = free_port();
    let app = TestApp::spawn_with(Spawn {
        server_extra: format!("listen = \"gateway.test:{gateway_port}\"\n"),
        config_extra: format!(
            "[proxy]\nhealth_check_interval_ms = 200\nupstream_dns_refresh_seconds = 1\n\n{}",
            route("/api/", &[format!("api.test:{port}")], "public", "")
        ),
        hosts_file: Some(hosts.clone()),
        port: Some(gateway_port),
        ..Spawn::default()
    })
    .await;
    assert_eq!(app.port, gateway_port, "listening on the name's address");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        *seen
            .entry(server_of(&app, "/api/x").await.unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        seen.keys().collect::<std::collections::BTreeSet<_>>(),
        [a.addr(), b.addr()].iter().collect(),
        "both addresses of the name serve"
    );
    // One address dies: its health check takes it out, the other keeps serving.
    drop(b);
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..10 {
        assert_eq!(server_of(&app, "/api/x").await, Ok(a.addr()));
    }
    // The name now points elsewhere: followed within the refresh interval, no restart.
    write_hosts(&["127.0.0.4"]);
    let changed = Instant::now();
    while server_of(&app, "/api/x").await != Ok(c.addr()) {
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "new address not followed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..10 {
        assert_eq!(server_of(&app, "/api/x").await, Ok(c.addr()));
    }
}

#[tokio::test]
async fn an_open_websocket_ends_with_its_session() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: route("/api/", &[up.addr()], "required", ""),
        ..Spawn::default()
    })
    .await;
    app.registered("wslogout@example.com", "SocketPassword1!")
        .await;
    let login = |_: ()| app.login("wslogout@example.com", "SocketPassword1!");
    let ended: serde_json::Value = login(()).await.json().await.unwrap();
    let kept: serde_json::Value = login(()).await.json().await.unwrap();
    let token = |t: &serde_json::Value| t["access_token"].as_str().unwrap().to_string();
    let (mut s, head) = websocket_handshake(app.port, Some(&token(&ended))).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (mut other, head) = websocket_handshake(app.port, Some(&token(&kept))).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echoes(&mut s).await;
    let r = app
        .client
        .post(app.url("/auth/logout"))
        .bearer_auth(token(&ended))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let closed = closed_within(&mut s, Duration::from_secs(3)).await;
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(1)),
        "the ended session's socket: {closed:?}"
    );
    // The same user's other session keeps its socket.
    echoes(&mut other).await;
}

/// An upstream that answers the first request on each connection with keep-alive and closes
/// the connection, unanswered, when a second request arrives on it (as an upstream whose
/// keep-alive timeout ends just as the proxy reuses the connection). Counts the connections.
async fn closing_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if s.write_all(answer).await.is_err() {
                    return;
                }
                // The next request is read, then the connection dropped without an answer.
                let _ = s.read(&mut buf).await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn a_kept_alive_upstream_connection_closed_under_a_request_costs_the_client_nothing() {
    let (addr, connections) = closing_upstream().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: route("/public/", &[addr], "public", ""),
        ..Spawn::default()
    })
    .await;
    for round in 0..3 {
        let a = app.get("/public/x").await;
        assert_eq!((a.status, a.text.as_str()), (200, "ok"), "round {round}");
        // Idle long enough for the pooled connection to count as possibly closed.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Every answer came on a connection of its own; the reused ones were given up.
    assert!(connections.load(std::sync::atomic::Ordering::SeqCst) >= 3);
}
